//! Ad gossip across three federations on the in-process memory transport.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::collections::BTreeSet;

use capability_schema::PublicKey;
use common::*;
use federation::testing::TestFederation;
use federation::unix_now;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certified_ads_of_three_federations_reach_every_subscriber() {
    let [mut f1, mut f2, mut f3] = three_federations();
    let trust = trust(&[&f1, &f2, &f3]);
    // A broker follows all three federations; two nodes of each federation follow their own.
    let broker = peer(&["f1", "f2", "f3"], trust.clone()).await;
    let mut nodes = Vec::new();
    for (fed, name) in [(&mut f1, "f1"), (&mut f2, "f2"), (&mut f3, "f3")] {
        for i in 0..2u8 {
            let handle = peer(&[name], trust.clone()).await;
            connect(&handle, &broker).await;
            let node = fed.node_with_key(
                capability_schema::SecretKey::generate(),
                &format!("site{i}"),
            );
            nodes.push((name, handle, node));
        }
    }
    for name in ["f1", "f2", "f3"] {
        mesh(&broker, name, 2).await;
    }
    for (name, handle, _) in &nodes {
        mesh(handle, name, 1).await;
    }
    let mut broker_rx = broker.ads();
    let mut node_rx: Vec<_> = nodes.iter().map(|(_, h, _)| h.ads()).collect();

    let now = unix_now();
    for (_, handle, node) in &nodes {
        within(handle.publish_ad(node.ad(1, now, 300)))
            .await
            .unwrap();
    }

    // The broker sees every node's ad once.
    let mut seen = BTreeSet::new();
    for _ in 0..nodes.len() {
        let event = next_ad(&mut broker_rx).await;
        assert!(seen.insert(event.ad.node), "duplicate ad");
    }
    let all: BTreeSet<PublicKey> = nodes.iter().map(|(_, _, n)| n.key.public()).collect();
    assert_eq!(seen, all);

    // Each node sees the ad of the other node of its federation (relayed by the broker, or
    // directly once Kademlia has introduced the two), and nothing of the other federations.
    for (i, rx) in node_rx.iter_mut().enumerate() {
        let (_, sibling_handle, sibling) = &nodes[i ^ 1];
        let event = next_ad(rx).await;
        assert_eq!(event.ad.node, sibling.key.public());
        assert_eq!(event.ad.federation, nodes[i].0);
        assert!([broker.local_key(), sibling_handle.local_key()].contains(&event.relayed_by));
        assert_eq!(event.signed.to_bytes(), sibling.ad(1, now, 300).to_bytes());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(drain(&mut broker_rx).is_empty());
    for rx in &mut node_rx {
        assert!(
            drain(rx).is_empty(),
            "an ad reached a peer twice or across federations"
        );
    }
    // A node cannot publish an ad the others would reject (here: a stale seq).
    let (_, handle, node) = &nodes[0];
    assert!(matches!(
        handle.publish_ad(node.ad(1, now, 300)).await,
        Err(federation::OverlayError::InvalidAd(
            federation::AdRejection::Stale { .. }
        ))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_ads_are_dropped_never_relayed_and_repeat_offenders_are_cut_off() {
    let [mut f1, f2, _] = three_federations();
    let trust = trust(&[&f1, &f2]);
    // Two rogue publishers and an honest publisher around a relay; an observer behind it.
    let relay = peer(&["f1"], trust.clone()).await;
    let observer = peer(&["f1"], trust.clone()).await;
    let rogue1 = peer(&["f1"], trust.clone()).await;
    let rogue2 = peer(&["f1"], trust.clone()).await;
    for p in [&observer, &rogue1, &rogue2] {
        connect(p, &relay).await;
    }
    mesh(&relay, "f1", 3).await;
    for p in [&observer, &rogue1, &rogue2] {
        mesh(p, "f1", 1).await;
    }
    let mut observed = observer.ads();
    let mut relayed = relay.ads();

    let now = unix_now();
    let node = f1.node(1, "s1");
    let ad = |seq| node.ad(seq, now, 300).to_bytes();
    // An uncertified node: its certificate is from an authority nobody trusts.
    let mut impostor = TestFederation::new("f1", 250);
    let uncertified = impostor.node(2, "s1").ad(1, now, 300).to_bytes();
    let mut bad_signature = node.ad(8, now, 300);
    bad_signature.signature[0] ^= 1;
    let expired = node.ad(9, now - 1000, 10).to_bytes();
    let mut f2_member = TestFederation::new("f2", 202);
    let wrong_topic = f2_member.node(3, "s1").ad(1, now, 300).to_bytes();

    // rogue1: a valid ad, a replay of an older seq, two invalid ads, then a valid marker.
    let publish = |who: &federation::OverlayHandle, bytes: Vec<u8>| {
        let who = who.clone();
        async move { within(who.publish_raw("f1", bytes)).await.unwrap() }
    };
    let seqs = |events: &[federation::overlay::AdEvent]| -> Vec<u64> {
        events.iter().map(|e| e.ad.seq).collect()
    };
    publish(&rogue1, ad(5)).await;
    publish(&rogue1, ad(3)).await;
    publish(&rogue1, uncertified).await;
    publish(&rogue1, bad_signature.to_bytes()).await;
    publish(&rogue1, ad(6)).await;
    // One connection delivers in order: once the relay has the marker, it has judged the rest.
    let mut at_relay = vec![next_ad(&mut relayed).await, next_ad(&mut relayed).await];
    assert_eq!(seqs(&at_relay), vec![5, 6]);
    // rogue2: two more invalid ads (expired; another federation's ad on f1's topic), a marker.
    publish(&rogue2, expired).await;
    publish(&rogue2, wrong_topic).await;
    publish(&rogue2, ad(7)).await;
    at_relay.push(next_ad(&mut relayed).await);
    assert_eq!(seqs(&at_relay), vec![5, 6, 7]);
    assert!(drain(&mut relayed).is_empty());

    // The observer behind the relay got exactly the valid ads, in order.
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(next_ad(&mut observed).await);
    }
    assert_eq!(seqs(&got), vec![5, 6, 7]);
    assert!(got.iter().all(|e| e.relayed_by == relay.local_key()));
    assert!(drain(&mut observed).is_empty());
    // The observer validates ads itself, so what its stream shows cannot tell whether the
    // relay forwarded the bad ones: its counters can. It judged only the valid ads, so nothing
    // invalid or stale was relayed to it; the relay judged (and dropped) all of them.
    // Rejected: uncertified, bad signature, expired, wrong topic. Ignored: the replay of 3.
    assert_judged(&observer, (3, 0, 0)).await;
    assert_judged(&relay, (3, 4, 1)).await;

    // A third invalid ad brings rogue1 under the graylist threshold: the relay disconnects
    // and blocks it, while rogue2 (two strikes) stays connected.
    publish(&rogue1, b"not an ad".to_vec()).await;
    eventually("the relay cutting rogue1 off", || async {
        !relay
            .connected_peers()
            .await
            .unwrap()
            .contains(&rogue1.local_key())
    })
    .await;
    let connected = relay.connected_peers().await.unwrap();
    assert!(connected.contains(&rogue2.local_key()));
    assert!(connected.contains(&observer.local_key()));
    // Nothing of it reached the observer.
    publish(&rogue2, ad(10)).await;
    assert_eq!(next_ad(&mut observed).await.ad.seq, 10);
    assert!(drain(&mut observed).is_empty());

    // Still nothing invalid relayed; the relay rejected "not an ad" too.
    assert_judged(&observer, (4, 0, 0)).await;
    assert_judged(&relay, (4, 5, 1)).await;
    assert_eq!(relay.stats().await.unwrap().peers_blocked, 1);
}

/// Asserts the ads `handle` judged so far: (accepted, rejected, ignored).
async fn assert_judged(handle: &federation::OverlayHandle, expected: (u64, u64, u64)) {
    let stats = handle.stats().await.unwrap();
    assert_eq!(
        (stats.ads_accepted, stats.ads_rejected, stats.ads_ignored),
        expected,
        "ads judged by {} (accepted, rejected, ignored): {stats:?}",
        handle.local_key()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_loopback_and_bootstrap_from_config() {
    let [mut f1, _, _] = three_federations();
    let trust = trust(&[&f1]);
    let tcp = |bootstrap| federation::OverlayConfig {
        bootstrap,
        ..federation::OverlayConfig {
            listen: federation::OverlayConfig::loopback().listen,
            ..config_with_kademlia(&["f1"])
        }
    };
    let first = federation::Overlay::start(
        &capability_schema::SecretKey::generate(),
        tcp(vec![]),
        trust.clone(),
    )
    .await
    .unwrap();
    let first_addr = addr(&first).await;
    assert!(
        first_addr.to_string().starts_with("/ip4/127.0.0.1/tcp/"),
        "{first_addr}"
    );
    let second = federation::Overlay::start(
        &capability_schema::SecretKey::generate(),
        tcp(vec![first_addr]),
        trust.clone(),
    )
    .await
    .unwrap();
    mesh(&first, "f1", 1).await;
    mesh(&second, "f1", 1).await;
    let mut rx = second.ads();
    let node = f1.node(9, "s9");
    first.publish_ad(node.ad(1, unix_now(), 300)).await.unwrap();
    assert_eq!(next_ad(&mut rx).await.ad.node, node.key.public());
}
