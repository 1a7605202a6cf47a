//! A federation is its authority's key: two federations both named `fed0` (two testbeds
//! created apart) share one overlay, each on its own topics, and a rogue authority also
//! calling itself `fed0` changes nothing for either — its ads and lists are refused and cost
//! the relaying peer gossip score.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::time::Duration;

use capability_schema::SecretKey;
use common::*;
use federation::testing::TestFederation;
use federation::trust::qualified;
use federation::unix_now;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_federations_of_one_name_coexist_and_a_rogue_of_that_name_changes_nothing() {
    let mut a = TestFederation::new("fed0", 211);
    let mut b = TestFederation::new("fed0", 212);
    let mut rogue = TestFederation::new("fed0", 213);
    let a_ref = qualified("fed0", &a.authority.public());
    let b_ref = qualified("fed0", &b.authority.public());

    // A node of each testbed follows "fed0": for each, the one it trusts. A hub (a broker
    // that peers the two) trusts both and must name them by key.
    let a_node = peer(&["fed0"], trust(&[&a])).await;
    let b_node = peer(&["fed0"], trust(&[&b])).await;
    let hub_trust = trust(&[&a, &b]);
    let ambiguous =
        federation::Overlay::start(&SecretKey::generate(), config(&["fed0"]), hub_trust.clone())
            .await;
    let Err(error) = ambiguous else {
        panic!("following an ambiguous name must be refused");
    };
    let message = error.to_string();
    assert!(
        message.contains(&a_ref) && message.contains(&b_ref) && message.contains("NAME@"),
        "the refusal names both candidates and the fix: {message}"
    );
    let hub = peer(&[&a_ref, &b_ref], hub_trust.clone()).await;
    // The rogue anchors A's key too (its store is its own) so that it can write on A's
    // topics, and signs with its own authority.
    let rogue_node = peer(&[&a_ref], trust(&[&a])).await;
    for p in [&a_node, &b_node, &rogue_node] {
        connect(p, &hub).await;
    }
    mesh(&hub, &a_ref, 2).await;
    mesh(&hub, &b_ref, 1).await;
    mesh(&a_node, "fed0", 1).await;
    mesh(&b_node, "fed0", 1).await;
    mesh(&rogue_node, &a_ref, 1).await;

    let mut hub_rx = hub.ads();
    let mut a_rx = a_node.ads();
    let mut b_rx = b_node.ads();
    let now = unix_now();
    let na = a.node_with_key(SecretKey::generate(), "sa");
    let nb = b.node_with_key(SecretKey::generate(), "sb");
    within(a_node.publish_ad(na.ad(1, now, 300))).await.unwrap();
    within(b_node.publish_ad(nb.ad(1, now, 300))).await.unwrap();
    let mut seen = [next_ad(&mut hub_rx).await, next_ad(&mut hub_rx).await];
    seen.sort_by_key(|e| e.ad.node != na.key.public());
    assert_eq!(seen[0].ad.node, na.key.public());
    assert_eq!(seen[1].ad.node, nb.key.public());
    assert!(seen.iter().all(|e| e.ad.federation == "fed0"));

    // The rogue's fed0 node ad and its fed0 revocation list, on A's topics.
    let nr = rogue.node_with_key(SecretKey::generate(), "sr");
    within(rogue_node.publish_raw(&a_ref, nr.ad(1, now, 300).to_bytes()))
        .await
        .unwrap();
    let rogue_list = rogue.authority.revoke(&[1], &[na.key.public()], now);
    within(rogue_node.publish_raw_revocation(&a_ref, rogue_list.to_bytes()))
        .await
        .unwrap();
    eventually("the hub rejects the rogue's ad and list", || async {
        let stats = hub.stats().await.unwrap();
        stats.ads_rejected >= 1 && stats.revocations_rejected >= 1
    })
    .await;
    // B's genuine list, revoking B's node, reaches the hub and touches nobody of A.
    let b_list = b.authority.revoke(&[], &[nb.key.public()], now);
    within(b_node.publish_revocation(b_list)).await.unwrap();
    eventually("the hub holds B's list", || async {
        hub_trust
            .read()
            .unwrap()
            .revocation_list_of(&b.authority.public())
            .is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let store = hub_trust.read().unwrap();
        assert!(store.revocation_list_of(&a.authority.public()).is_none());
        assert!(
            store
                .revocation_list_of(&rogue.authority.public())
                .is_none()
        );
        assert!(
            store.revoking_key(&na.key.public()).is_none(),
            "A's node lives"
        );
        assert!(store.revoking_key(&nb.key.public()).is_some());
    }
    // A's node saw nothing of B nor of the rogue; B's node nothing of A.
    assert!(
        drain(&mut hub_rx).is_empty(),
        "the rogue's ad was not taken"
    );
    assert!(
        drain(&mut a_rx).is_empty(),
        "nothing of B or the rogue reached A"
    );
    assert!(drain(&mut b_rx).is_empty(), "nothing of A reached B");
    assert_eq!(a_node.stats().await.unwrap().revocations_applied, 0);
    for p in [&a_node, &b_node, &rogue_node, &hub] {
        p.shutdown().await;
    }
}

/// A daemon that anchors another authority while running (as `nodemgr reload` does with a
/// new `[[trust]]` entry) follows its revocation lists within a second, with no new
/// connection: the second `fed0`'s list reaches it by gossip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anchor_added_while_running_brings_its_revocation_lists() {
    let a = TestFederation::new("fed0", 221);
    let mut b = TestFederation::new("fed0", 222);
    let a_trust = trust(&[&a]);
    let a_node = peer(&["fed0"], a_trust.clone()).await;
    let b_node = peer(&["fed0"], trust(&[&b])).await;
    connect(&a_node, &b_node).await;
    // Let the exchange of the new connection end first: the list must come by gossip.
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.trust(&mut a_trust.write().unwrap());
    let revoked = SecretKey::generate().public();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // A new version each time, until one reaches A's store by gossip.
        let list = b.authority.revoke(&[], &[revoked], unix_now());
        within(b_node.publish_revocation(list)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let held = a_trust
            .read()
            .unwrap()
            .revocation_list_of(&b.authority.public())
            .is_some();
        if held {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B's list never reached A after A anchored B"
        );
    }
    assert!(a_trust.read().unwrap().revoking_key(&revoked).is_some());
    assert!(
        a_trust
            .read()
            .unwrap()
            .revocation_list_of(&a.authority.public())
            .is_none()
    );
    a_node.shutdown().await;
    b_node.shutdown().await;
}
