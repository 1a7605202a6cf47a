//! What an agent does with revocation lists: nodes revoked (by key or certificate serial),
//! and nodes whose delegation to this agent is revoked, leave the inventory at once and are
//! kept out of it, so they are never offered, planned or minted on.
//!
//! Requests of revoked principals and brokers need nothing here: their certificates are
//! checked by the trust store ([`federation::TrustStore::check_member`]), which consults the
//! lists it holds and refuses naming the list (federation, version, time of issue).

use capability_schema::{MembershipCert, PublicKey, ResourceAd, RevocationList};
use federation::TrustStore;

use crate::inventory::Inventory;

/// Why `ad`'s node must not be in `agent`'s inventory under `store`'s lists, if it must not.
pub fn revoked_node(store: &TrustStore, agent: &PublicKey, ad: &ResourceAd) -> Option<String> {
    let named =
        |what: String, list: &RevocationList| format!("{what} is revoked by {}", list.describe());
    if let Some(list) = store.revoking_key(&ad.node) {
        return Some(named(format!("node {}", ad.node.short()), list));
    }
    if let Ok(cert) = ad.membership.verify()
        && let Some(list) = store.revoking_member(&cert)
    {
        return Some(named(member(&cert), list));
    }
    // The delegation the inventory would use: the newest this node signed to this agent.
    let issued = ad
        .delegations
        .iter()
        .filter_map(|d| d.verify_by(&ad.node).ok())
        .filter(|d| d.agent == *agent)
        .map(|d| d.issued_at)
        .max()?;
    store
        .revoking_delegation(&ad.node, agent, issued)
        .map(|list| {
            named(
                format!(
                    "node {}'s delegation to this agent (signed at {issued})",
                    ad.node.short()
                ),
                list,
            )
        })
}

fn member(cert: &MembershipCert) -> String {
    format!(
        "node {} (certificate serial {})",
        cert.subject.short(),
        cert.serial
    )
}

/// Drops every node of `inventory` that `store`'s lists revoke; returns them with why.
pub fn drop_revoked(inventory: &mut Inventory, store: &TrustStore) -> Vec<(PublicKey, String)> {
    let agent = inventory.agent();
    let mut dropped = Vec::new();
    inventory.retain(|entry| match revoked_node(store, &agent, &entry.ad) {
        Some(reason) => {
            dropped.push((entry.ad.node, reason));
            false
        }
        None => true,
    });
    dropped
}

/// Drops revoked nodes from `agent`'s inventory whenever a newer list applies (and once at
/// start), until `stop` turns true or the overlay ends.
pub async fn watch(
    agent: std::sync::Arc<crate::agent::Agent>,
    trust: federation::SharedTrust,
    mut news: tokio::sync::watch::Receiver<u64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        news.borrow_and_update();
        let dropped = {
            let store = trust
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            agent.with_inventory(|inventory| drop_revoked(inventory, &store))
        };
        for (node, reason) in dropped {
            tracing::warn!(node = %node, %reason, "node dropped from the inventory");
        }
        tokio::select! {
            result = news.changed() => if result.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

/// Whether an ad may enter `agent`'s inventory under the lists `trust` holds now.
pub fn admissible(trust: &federation::SharedTrust, agent: &PublicKey, ad: &ResourceAd) -> bool {
    let store = trust
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    revoked_node(&store, agent, ad).is_none()
}
