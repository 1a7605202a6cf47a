//! What a broker does with revocation lists: agents whose key is revoked are forgotten at
//! once (configured or learned) and not learned again, so no slice is asked of them.
//!
//! Revoked nodes need nothing here: every offer's ad is checked by the trust store, which
//! refuses an ad whose node key or certificate a list names, and agents drop such nodes
//! (and nodes whose delegation is revoked) from their inventories.

use std::sync::{Arc, PoisonError};

use capability_schema::PublicKey;
use federation::SharedTrust;
use tokio::sync::watch;

use super::run::BrokerState;

/// The sentence naming the list that revokes `agent`, if one does.
pub fn revoked_agent(trust: &SharedTrust, agent: &PublicKey) -> Option<String> {
    let store = trust.read().unwrap_or_else(PoisonError::into_inner);
    store
        .revoking_key(agent)
        .map(|list| format!("agent {} is revoked by {}", agent.short(), list.describe()))
}

/// Forgets revoked agents whenever a newer list applies (and once at start), until `stop`
/// turns true or the overlay ends.
pub async fn watch(
    state: Arc<BrokerState>,
    trust: SharedTrust,
    mut news: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        news.borrow_and_update();
        {
            let mut agents = state.agents.write().unwrap_or_else(PoisonError::into_inner);
            agents.retain(|agent, _| match revoked_agent(&trust, agent) {
                Some(reason) => {
                    tracing::warn!(%agent, %reason, "agent forgotten");
                    false
                }
                None => true,
            });
        }
        tokio::select! {
            result = news.changed() => if result.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}
