//! What the node has delegated, as one snapshot the service swaps whole: the shares and
//! scopes admission checks ([`Capacity`]), a ticket verifier trusting exactly the agents
//! delegated to, and the delegations as the node signed them, for its ad.
//!
//! - [`Delegated::sign`] builds a snapshot from node.toml's `[[delegations]]` ([`Terms`]) at
//!   start and at each reload, keeping the signatures of delegations whose terms did not
//!   change;
//! - [`Delegated::renewed`], called by the ad task before each ad, re-signs a delegation
//!   with a new end once less than a third of its life remains, so a delegation never ends
//!   while the node runs and agents see the new end an ad later.
//!
//! Live leases do not depend on a delegation: removing one only refuses new redeems under
//! its agent.

use std::collections::BTreeMap;
use std::sync::Arc;

use capability_schema::ticket::TrustedIssuers;
use capability_schema::{
    Delegation, DelegationScope, PublicKey, Rejection, Resources, SecretKey, Signed, TicketVerifier,
};
use serde::{Deserialize, Serialize};

use super::config::DelegationConfig;
use crate::admission::{Capacity, Share};

/// One delegation's terms, as configured: what the node signs, and re-signs as it ages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// The agent.
    pub agent: PublicKey,
    /// At most this much committed at once under its tickets.
    pub share: Resources,
    /// What kinds of slices it may mint.
    pub scope: DelegationScope,
    /// Seconds each signature lasts.
    pub lifetime_secs: u64,
}

impl From<&DelegationConfig> for Terms {
    fn from(d: &DelegationConfig) -> Self {
        Terms {
            agent: d.agent,
            share: d.share,
            scope: d.scope(),
            lifetime_secs: d.lifetime(),
        }
    }
}

/// One delegation in force: its terms and the signed delegation the ad carries.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The terms.
    pub terms: Terms,
    /// The delegation as signed.
    pub body: Delegation,
    /// Its signature, for the ad.
    pub signed: Signed<Delegation>,
    /// When the node first signed a delegation on these terms; renewals keep it, so a
    /// revocation of this node's delegations signed up to a time still covers a renewed one.
    pub first_issued_at: u64,
}

/// What the node has delegated now.
#[derive(Debug, Clone)]
pub struct Delegated {
    capacity: Capacity,
    verifier: TicketVerifier,
    entries: Vec<Entry>,
}

impl Delegated {
    /// Shares and scopes without signed delegations (the service alone, tests, wiping).
    pub fn unsigned(capacity: Capacity) -> Delegated {
        let issuers: TrustedIssuers = capacity.shares.keys().copied().collect();
        Delegated {
            verifier: TicketVerifier::new(issuers, capacity.node).with_chain_cache(Arc::default()),
            capacity,
            entries: Vec::new(),
        }
    }

    /// Signs `terms` for node `key` offering `total` at `now`. A delegation of `previous`
    /// with the very same terms keeps its signature (a reload changes only what changed).
    pub fn sign(
        key: &SecretKey,
        total: Resources,
        terms: Vec<Terms>,
        previous: Option<&Delegated>,
        now: u64,
    ) -> Delegated {
        let entries = terms
            .into_iter()
            .map(|terms| {
                previous
                    .and_then(|p| p.entries.iter().find(|e| e.terms == terms))
                    .cloned()
                    .unwrap_or_else(|| sign_entry(key, terms, now, now))
            })
            .collect();
        Delegated::from_entries(key.public(), total, entries)
    }

    fn from_entries(node: PublicKey, total: Resources, entries: Vec<Entry>) -> Delegated {
        let shares: BTreeMap<PublicKey, Share> = entries
            .iter()
            .map(|e| {
                (
                    e.terms.agent,
                    Share {
                        limit: e.terms.share,
                        not_after: e.body.not_after,
                        scope: e.terms.scope.clone(),
                    },
                )
            })
            .collect();
        let capacity = Capacity {
            node,
            total,
            shares,
        };
        let issuers: TrustedIssuers = capacity.shares.keys().copied().collect();
        Delegated {
            verifier: TicketVerifier::new(issuers, node).with_chain_cache(Arc::default()),
            capacity,
            entries,
        }
    }

    /// The same delegations with each one that has less than a third of its life left at
    /// `now` signed anew (issued now, ending a lifetime from now); `None` when none needs it.
    pub fn renewed(&self, key: &SecretKey, now: u64) -> Option<Delegated> {
        if !self.entries.iter().any(|e| needs_renewal(&e.body, now)) {
            return None;
        }
        let entries = self
            .entries
            .iter()
            .map(|e| {
                if needs_renewal(&e.body, now) {
                    sign_entry(key, e.terms.clone(), now, e.first_issued_at)
                } else {
                    e.clone()
                }
            })
            .collect();
        Some(Delegated::from_entries(
            self.capacity.node,
            self.capacity.total,
            entries,
        ))
    }

    /// The refusal of a ticket whose issuer this node has no delegation to (never had, or
    /// no longer has: delegations change with a reload); `key_hint` is the issuer's as the
    /// ticket names it.
    pub fn no_delegation(key_hint: &str) -> Rejection {
        Rejection::Ticket {
            check: "unknown_issuer".into(),
            detail: format!(
                "no delegation: this node delegates nothing to agent key {key_hint} (it never \
                 did, or that delegation was removed); get a ticket from an agent this node \
                 delegates to"
            ),
        }
    }

    /// Capacity, shares and scopes, for admission.
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// The ticket verifier, trusting the agents delegated to.
    pub fn verifier(&self) -> &TicketVerifier {
        &self.verifier
    }

    /// The delegations in force, with their terms.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The signed delegations, for the ad.
    pub fn signed(&self) -> Vec<Signed<Delegation>> {
        self.entries.iter().map(|e| e.signed.clone()).collect()
    }

    /// The delegations in force, for people (`/delegations`, `nodemgr delegations`).
    pub fn view(&self) -> Vec<DelegationView> {
        self.entries
            .iter()
            .map(|e| DelegationView {
                agent: e.body.agent,
                share: e.body.share.to_string(),
                scope: e.body.scope.to_string(),
                issued_at: e.body.issued_at,
                not_after: e.body.not_after,
            })
            .collect()
    }
}

/// `/delegations`: one delegation in force, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationView {
    /// The agent.
    pub agent: PublicKey,
    /// Its share (`cpu=2 cores,memory=4GiB,…`).
    pub share: String,
    /// What kinds of slices it may mint (`regular slices`, `regular and admin slices (…)`).
    pub scope: String,
    /// Unix seconds the delegation was signed (it is re-signed as it ages).
    pub issued_at: u64,
    /// Unix seconds after which it ends unless renewed.
    pub not_after: u64,
}

/// Whether less than a third of `d`'s life remains at `now`.
fn needs_renewal(d: &Delegation, now: u64) -> bool {
    let life = d.not_after.saturating_sub(d.issued_at);
    let left = d.not_after.saturating_sub(now);
    left.saturating_mul(3) < life
}

/// `terms` signed at `now`, first signed at `since` (`now` for new terms; a renewal keeps the
/// first signing, which the delegation carries so that agents judge revocations by it too).
fn sign_entry(key: &SecretKey, terms: Terms, now: u64, since: u64) -> Entry {
    let body = Delegation {
        node: key.public(),
        agent: terms.agent,
        share: terms.share,
        scope: terms.scope.clone(),
        issued_at: now,
        since,
        not_after: now.saturating_add(terms.lifetime_secs),
    };
    let signed = Signed::sign(key, &body);
    Entry {
        terms,
        body,
        signed,
        first_issued_at: since,
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::SliceKind;
    use capability_schema::identity::test_key;

    use super::*;

    fn terms(agent: u8, lifetime_secs: u64) -> Terms {
        Terms {
            agent: test_key(agent).public(),
            share: Resources {
                cpu_millis: 1000,
                ..Resources::ZERO
            },
            scope: DelegationScope::default(),
            lifetime_secs,
        }
    }

    #[test]
    fn a_delegation_is_renewed_once_a_third_of_its_life_remains() {
        let key = test_key(1);
        let d = Delegated::sign(
            &key,
            Resources::ZERO,
            vec![terms(10, 90), terms(11, 900)],
            None,
            1000,
        );
        assert_eq!(d.capacity().shares[&test_key(10).public()].not_after, 1090);
        assert!(d.renewed(&key, 1060).is_none(), "30 s of 90 left: not yet");
        let r = d.renewed(&key, 1061).unwrap();
        let renewed = &r.entries()[0].body;
        assert_eq!((renewed.issued_at, renewed.not_after), (1061, 1151));
        assert_eq!(r.capacity().shares[&test_key(10).public()].not_after, 1151);
        r.entries()[0].signed.verify_by(&key.public()).unwrap();
        assert_eq!(r.entries()[0].first_issued_at, 1000);
        // The renewed delegation says so itself, signed: agents judge revocations by it.
        assert_eq!(renewed.since, 1000);
        assert_eq!(
            r.entries()[0]
                .signed
                .verify_by(&key.public())
                .unwrap()
                .since,
            1000
        );
        // The other, far from its end, keeps its signature.
        assert_eq!(r.entries()[1].signed, d.entries()[1].signed);
    }

    #[test]
    fn a_reload_keeps_unchanged_delegations_and_trusts_only_the_agents_delegated_to() {
        let key = test_key(1);
        let d = Delegated::sign(
            &key,
            Resources::ZERO,
            vec![terms(10, 900), terms(11, 900)],
            None,
            1000,
        );
        let mut wider = terms(11, 900);
        wider.scope = DelegationScope::with_admin(Vec::new(), true);
        let r = Delegated::sign(
            &key,
            Resources::ZERO,
            vec![terms(10, 900), wider, terms(12, 900)],
            Some(&d),
            1500,
        );
        assert_eq!(r.entries()[0].signed, d.entries()[0].signed);
        assert_eq!(r.entries()[1].body.issued_at, 1500);
        assert!(
            r.capacity().shares[&test_key(11).public()]
                .scope
                .check(&SliceKind::Admin {
                    capabilities: Vec::new(),
                    host_pid_view: true
                })
                .is_ok()
        );
        let trusted: Vec<PublicKey> = r.verifier().issuers().iter().copied().collect();
        assert_eq!(trusted.len(), 3);
        let fewer = Delegated::sign(&key, Resources::ZERO, vec![terms(12, 900)], Some(&r), 1600);
        assert!(!fewer.verifier().issuers().contains(&test_key(10).public()));
        assert_eq!(fewer.signed().len(), 1);
    }
}
