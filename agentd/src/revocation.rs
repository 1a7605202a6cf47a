//! What an agent does with revocation lists: nodes revoked (by key or certificate serial),
//! and nodes whose delegation to this agent is revoked, leave the inventory at once and are
//! kept out of it, so they are never offered, planned or minted on.
//!
//! A principal's certificate is checked by the trust store
//! ([`federation::TrustStore::check_member`]), which consults the lists it holds and refuses a
//! revoked one naming the list (federation, version, time of issue). The caller itself (a
//! broker, or a principal asking directly) is checked here ([`check_caller`]): a revoked key
//! gets no ads and no tickets; it may still report tickets released.

use capability_schema::protocol::AgentRequest;
use capability_schema::{MembershipCert, PublicKey, Rejection, ResourceAd, RevocationList};
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
    // The delegation the inventory would use: the newest this node signed to this agent,
    // judged by when its terms were first signed (`since`: a renewal keeps it, so a
    // delegation revoked up to a time stays revoked once the node renews it).
    let issued = ad
        .delegations
        .iter()
        .filter_map(|d| d.verify_by(&ad.node).ok())
        .filter(|d| d.agent == *agent)
        .max_by_key(|d| d.issued_at)
        .map(|d| d.since)?;
    store
        .revoking_delegation(&ad.node, agent, issued)
        .map(|list| {
            named(
                format!(
                    "node {}'s delegation to this agent (first signed at {issued})",
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

/// Refuses `request` if its caller's key is revoked by a list `store` holds (rule
/// `revoked_caller`, naming the list); `Released` is always taken (it only frees shares).
pub fn check_caller(
    store: &TrustStore,
    caller: &PublicKey,
    request: &AgentRequest,
) -> Result<(), Rejection> {
    if matches!(request, AgentRequest::Released { .. }) {
        return Ok(());
    }
    match store.revoking_key(caller) {
        Some(list) => Err(Rejection::Policy {
            rule: "revoked_caller".into(),
            detail: format!(
                "the caller {} is revoked by {}: a revoked broker or principal gets no ads and \
                 no tickets",
                caller.short(),
                list.describe()
            ),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;
    use capability_schema::membership::RevokedDelegation;
    use capability_schema::protocol::AdQuery;
    use capability_schema::{Delegation, Resources, Signed};
    use federation::testing::TestFederation;
    use federation::trust::Revoke;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    /// A delegation revoked "signed up to T" stays revoked when the node renews it after T
    /// (a new `issued_at`, the same `since`); new terms signed after T are a new delegation.
    #[test]
    fn a_renewed_delegation_stays_revoked_and_new_terms_do_not() {
        let mut plc = TestFederation::new("plc", 100);
        let mut store = TrustStore::new();
        plc.trust(&mut store);
        let agent = test_key(20).public();
        let node = plc.node(5, "s1");
        let ad_with = |issued_at: u64, since: u64| {
            let mut body = node.ad_body(1, NOW + 120, 60);
            body.delegations.push(Signed::sign(
                &node.key,
                &Delegation {
                    node: node.key.public(),
                    agent,
                    share: Resources::ZERO,
                    scope: Default::default(),
                    issued_at,
                    since,
                    not_after: issued_at + 3600,
                },
            ));
            body
        };
        let list = plc.authority.revoke_with(
            &Revoke {
                delegations: vec![RevokedDelegation {
                    node: node.key.public(),
                    agent,
                    issued_until: NOW,
                }],
                ..Revoke::default()
            },
            NOW,
        );
        store.add_revocation(&list).unwrap();
        let renewed = ad_with(NOW + 100, NOW - 10);
        let why = revoked_node(&store, &agent, &renewed).unwrap();
        assert!(
            why.contains(&format!("first signed at {}", NOW - 10)),
            "{why}"
        );
        let new_terms = ad_with(NOW + 100, NOW + 100);
        assert_eq!(revoked_node(&store, &agent, &new_terms), None);
    }

    #[test]
    fn revoked_nodes_delegations_and_callers_are_named_with_their_list() {
        let mut plc = TestFederation::new("plc", 100);
        let mut store = TrustStore::new();
        plc.trust(&mut store);
        let agent = test_key(20).public();
        // Each node delegates to `agent` (and node 4 to another agent too).
        let mut ad = |seed: u8| {
            let node = plc.node(seed, "s1");
            let mut body = node.ad_body(1, NOW, 60);
            for to in [agent, test_key(21).public()] {
                body.delegations.push(Signed::sign(
                    &node.key,
                    &Delegation {
                        node: node.key.public(),
                        agent: to,
                        share: Resources::ZERO,
                        scope: Default::default(),
                        issued_at: NOW - 10,
                        since: NOW - 10,
                        not_after: NOW + 3600,
                    },
                ));
            }
            (Signed::sign(&node.key, &body), body)
        };
        let kept = ad(1);
        let by_key = ad(2);
        let by_serial = ad(3);
        let by_delegation = ad(4);
        let serial = by_serial.1.membership.verify().unwrap().serial;
        let list = plc.authority.revoke_with(
            &Revoke {
                serials: vec![serial],
                keys: vec![by_key.1.node, test_key(60).public()],
                delegations: vec![RevokedDelegation {
                    node: by_delegation.1.node,
                    agent,
                    issued_until: NOW,
                }],
                ..Revoke::default()
            },
            NOW,
        );
        store.add_revocation(&list).unwrap();
        assert_eq!(revoked_node(&store, &agent, &kept.1), None);
        let why = revoked_node(&store, &agent, &by_key.1).unwrap();
        assert!(why.contains("\"plc\"'s revocation list v1"), "{why}");
        let why = revoked_node(&store, &agent, &by_serial.1).unwrap();
        assert!(
            why.contains(&format!("certificate serial {serial}")),
            "{why}"
        );
        let why = revoked_node(&store, &agent, &by_delegation.1).unwrap();
        assert!(why.contains("delegation to this agent"), "{why}");
        // Another agent's delegation from the same node is not revoked.
        assert_eq!(
            revoked_node(&store, &test_key(21).public(), &by_delegation.1),
            None
        );

        let mut inventory = Inventory::new(agent);
        for (signed, body) in [&kept, &by_key, &by_serial, &by_delegation] {
            inventory.offer(signed.clone(), body.clone(), NOW).unwrap();
        }
        let dropped = drop_revoked(&mut inventory, &store);
        assert_eq!(dropped.len(), 3);
        assert_eq!(inventory.len(), 1);
        assert!(inventory.get(&kept.1.node).is_some());

        let asks = AgentRequest::GetAds(AdQuery::default());
        assert!(check_caller(&store, &test_key(61).public(), &asks).is_ok());
        let Err(Rejection::Policy { rule, detail }) =
            check_caller(&store, &test_key(60).public(), &asks)
        else {
            panic!("a revoked caller is refused");
        };
        assert_eq!(rule, "revoked_caller");
        assert!(detail.contains("revocation list v1"), "{detail}");
    }
}
