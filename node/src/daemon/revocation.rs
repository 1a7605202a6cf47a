//! What a node does with revocation lists: refuse revoked tickets at redeem, and end live
//! leases of revoked parties.
//!
//! How it flows:
//! 1. The overlay applies every newer list to the node's trust store and bumps
//!    `OverlayHandle::revocations`; [`watch()`] wakes on it (and once at start, for the lists
//!    the config named) and runs [`end_revoked`] when the node's `end_revoked_leases` policy
//!    is on (the default).
//! 2. [`RevocationGuard`] lives in the [`NodeService`]; the service asks it at every redeem
//!    ([`RevocationGuard::check_redeem`]) whether the ticket's issuing agent, any of its
//!    holders, the presenter, the ticket id, or the node's delegation to the agent is
//!    revoked, and refuses with a [`Rejection::Policy`] naming the rule and the list (whose,
//!    which version, issued when).
//! 3. A lease ended here leaves its reason behind ([`RevocationGuard::ended`]): exec, logs,
//!    spawn and key requests on it are refused with "lease ended: principal revoked by …",
//!    and the holder's status lists it with the reason ([`RevocationGuard::ended_of`]).
//!
//! Which lists apply: every list the node's trust store holds, that is lists signed by an
//! authority the node trusts (its own federation's, or a peer federation's named by an
//! agreement). Trusting a federation includes trusting what it revokes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use capability_schema::protocol::LeaseEnded;
use capability_schema::ticket::TicketContents;
use capability_schema::{PublicKey, Rejection, RevocationList, TicketId};
use federation::SharedTrust;
use tokio::sync::{Notify, watch};

use super::service::NodeService;
use crate::ledger::LeaseState;

/// Most ended leases whose reason is remembered (the oldest are forgotten first).
pub const MAX_ENDED_REASONS: usize = 4096;

/// How often revoked leases are looked for again between lists: a release that failed is
/// retried, and a redeem that passed its check just before a list applied is caught.
pub const SWEEP: std::time::Duration = std::time::Duration::from_secs(10);

/// The node's view of revocations, consulted at redeem and on lease requests.
#[derive(Debug, Default)]
pub struct RevocationGuard {
    /// The trust store holding the lists (none until the daemon installs it: a node service
    /// without a network, as in tests and `nodemgr wipe`, revokes nothing).
    trust: RwLock<Option<SharedTrust>>,
    /// When this node signed its current delegation to each agent.
    delegations: RwLock<BTreeMap<PublicKey, u64>>,
    /// Leases ended by a revocation: id, holder, why (bounded).
    ended: Mutex<VecDeque<(String, PublicKey, String)>>,
}

/// A revoked party or ticket: which rule, and the sentence naming the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The rule (`revoked_agent`, `revoked_principal`, `revoked_ticket`,
    /// `revoked_delegation`).
    pub rule: &'static str,
    /// What is revoked, by whom, which version, when.
    pub detail: String,
}

impl Revoked {
    fn new(rule: &'static str, what: String, list: &RevocationList) -> Self {
        Revoked {
            rule,
            detail: format!("{what} is revoked by {}", list.describe()),
        }
    }

    /// As the refusal sent to the caller.
    pub fn rejection(&self) -> Rejection {
        Rejection::Policy {
            rule: self.rule.to_owned(),
            detail: self.detail.clone(),
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

impl RevocationGuard {
    /// Consults `trust` from now on.
    pub fn install(&self, trust: SharedTrust) {
        *self.trust.write().unwrap_or_else(PoisonError::into_inner) = Some(trust);
    }

    /// Records when this node signed its delegation to each agent (a revoked delegation
    /// covers those signed up to a time).
    pub fn set_delegations(&self, issued: impl IntoIterator<Item = (PublicKey, u64)>) {
        *self
            .delegations
            .write()
            .unwrap_or_else(PoisonError::into_inner) = issued.into_iter().collect();
    }

    /// Whether a redeem of `ticket` on `node` by `presenter` touches anything revoked.
    pub fn check_redeem(
        &self,
        node: &PublicKey,
        ticket: &TicketContents,
        presenter: &PublicKey,
    ) -> Result<(), Rejection> {
        let trust = read(&self.trust).clone();
        let Some(trust) = trust else {
            return Ok(());
        };
        let store = read(&trust);
        if let Some(list) = store.revoking_ticket(&ticket.ticket_id) {
            let what = format!("ticket {}", ticket.ticket_id.short());
            return Err(Revoked::new("revoked_ticket", what, list).rejection());
        }
        if let Some(list) = store.revoking_key(&ticket.issuer) {
            let what = format!("the issuing agent {}", ticket.issuer.short());
            return Err(Revoked::new("revoked_agent", what, list).rejection());
        }
        let issued = read(&self.delegations).get(&ticket.issuer).copied();
        if let Some(issued) = issued
            && let Some(list) = store.revoking_delegation(node, &ticket.issuer, issued)
        {
            let what = format!(
                "this node's delegation to agent {} (signed at {issued})",
                ticket.issuer.short()
            );
            return Err(Revoked::new("revoked_delegation", what, list).rejection());
        }
        for key in ticket.holders.iter().chain([presenter]) {
            if let Some(list) = store.revoking_key(key) {
                let what = format!("principal {}", key.short());
                return Err(Revoked::new("revoked_principal", what, list).rejection());
            }
        }
        Ok(())
    }

    /// Why `lease_id` was ended by a revocation, if it was (and is still remembered).
    pub fn ended(&self, lease_id: &str) -> Option<Rejection> {
        let ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        ended
            .iter()
            .find(|(id, _, _)| id == lease_id)
            .map(|(_, _, reason)| Rejection::Policy {
                rule: "lease_ended".to_owned(),
                detail: format!("lease {lease_id} ended: {reason}"),
            })
    }

    /// The leases of `holder` ended by a revocation (still remembered), for its status.
    pub fn ended_of(&self, holder: &PublicKey) -> Vec<LeaseEnded> {
        let ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        ended
            .iter()
            .filter(|(_, h, _)| h == holder)
            .map(|(lease_id, _, reason)| LeaseEnded {
                lease_id: lease_id.clone(),
                reason: reason.clone(),
            })
            .collect()
    }

    fn remember_ended(&self, lease_id: &str, holder: &PublicKey, reason: &str) {
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        ended.push_back((lease_id.to_owned(), *holder, reason.to_owned()));
        while ended.len() > MAX_ENDED_REASONS {
            ended.pop_front();
        }
    }

    /// Why a lease held by `holder`, under `agent`, paid by ticket `ticket_id`, must end.
    fn lease_revoked(
        &self,
        holder: &PublicKey,
        agent: &PublicKey,
        ticket_id: &str,
    ) -> Option<String> {
        let trust = read(&self.trust).clone()?;
        let store = read(&trust);
        let named = |what: &str, list: &RevocationList| {
            format!(
                "{what} revoked by {:?} list v{} (issued at {})",
                list.federation, list.version, list.issued_at
            )
        };
        if let Some(list) = store.revoking_key(holder) {
            return Some(named("principal", list));
        }
        if let Some(list) = store.revoking_key(agent) {
            return Some(named("issuing agent", list));
        }
        let id = ticket_id.parse::<TicketId>().ok()?;
        store.revoking_ticket(&id).map(|list| named("ticket", list))
    }
}

/// A lease ended because of a revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedLease {
    /// The lease.
    pub lease_id: String,
    /// Its holder.
    pub holder: PublicKey,
    /// Why ("principal revoked by "plc" list v3 (issued at …)").
    pub reason: String,
}

/// Ends every live lease of a revoked principal, or under a revoked agent or ticket: the
/// lease ends (its sliver destroyed, its ticket reported to the agent as ended, an `ended`
/// lease event with the reason in the ledger) and the reason is logged and kept for the
/// holder's next request.
pub fn end_revoked(service: &NodeService) -> Vec<EndedLease> {
    let guard = service.revocation();
    let leases = match service.ledger().leases() {
        Ok(leases) => leases,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the ledger to end revoked leases");
            return Vec::new();
        }
    };
    let mut ended = Vec::new();
    for record in leases {
        if record.state != LeaseState::Active {
            continue;
        }
        let lease = &record.lease;
        let Some(reason) = guard.lease_revoked(&lease.holder, &lease.agent, &lease.ticket_id)
        else {
            continue;
        };
        guard.remember_ended(&lease.lease_id, &lease.holder, &reason);
        match service.end_early(lease, &reason) {
            Ok(()) => {
                tracing::warn!(lease = %lease.lease_id, slice = %lease.slice, holder = %lease.holder, %reason, "lease ended");
                ended.push(EndedLease {
                    lease_id: lease.lease_id.clone(),
                    holder: lease.holder,
                    reason,
                });
            }
            Err(e) => {
                tracing::error!(lease = %lease.lease_id, %reason, error = %e, "a revoked lease could not be ended; will retry at the next list");
            }
        }
    }
    ended
}

/// Applies every revocation list as it arrives (and those held at start): ends revoked
/// leases when `end_leases` is on (and again every [`SWEEP`]), then wakes the ad loop
/// (`changed`). Returns when `stop` turns true or the overlay ends.
pub async fn watch(
    service: Arc<NodeService>,
    trust: SharedTrust,
    mut news: watch::Receiver<u64>,
    end_leases: bool,
    changed: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    service.revocation().install(trust);
    loop {
        news.borrow_and_update();
        if end_leases {
            let service = Arc::clone(&service);
            match tokio::task::spawn_blocking(move || end_revoked(&service)).await {
                Ok(ended) if !ended.is_empty() => changed.notify_one(),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "ending revoked leases failed"),
            }
        }
        tokio::select! {
            result = news.changed() => if result.is_err() { return },
            _ = stop.changed() => return,
            () = tokio::time::sleep(SWEEP), if end_leases => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;

    use super::*;

    #[test]
    fn a_guard_without_a_store_revokes_nothing_and_remembers_ended_leases() {
        let guard = RevocationGuard::default();
        assert_eq!(
            guard.lease_revoked(&test_key(1).public(), &test_key(2).public(), "x"),
            None
        );
        assert_eq!(guard.ended("l1"), None);
        for i in 0..=MAX_ENDED_REASONS {
            guard.remember_ended(
                &format!("l{i}"),
                &test_key(1).public(),
                "principal revoked by \"plc\" list v1",
            );
        }
        assert_eq!(guard.ended("l0"), None, "the oldest is forgotten");
        assert_eq!(
            guard.ended_of(&test_key(1).public()).len(),
            MAX_ENDED_REASONS
        );
        assert!(guard.ended_of(&test_key(2).public()).is_empty());
        let refusal = guard.ended("l1").unwrap();
        assert_eq!(refusal.code(), "policy");
        assert!(
            refusal
                .to_string()
                .contains("lease l1 ended: principal revoked by \"plc\" list v1"),
            "{refusal}"
        );
    }
}
