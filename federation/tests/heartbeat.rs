//! Heartbeat gossip on the in-process memory transport: a node's heartbeat reaches a follower
//! through a relay only once its ad is held there; stale, skewed and forged heartbeats never
//! reach the daemon, and forging ones gets the relaying peer cut off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::time::Duration;

use capability_schema::{Heartbeat, SecretKey, Signed};
use common::*;
use federation::overlay::HeartbeatEvent;
use federation::unix_now;
use tokio::sync::broadcast;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn beat(key: &SecretKey, seq: u64) -> Signed<Heartbeat> {
    Signed::sign(key, &Heartbeat { seq, ad_seq: 1 })
}

fn drain_beats(rx: &mut broadcast::Receiver<HeartbeatEvent>) -> Vec<HeartbeatEvent> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        out.push(event);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_of_known_nodes_only_fresh_and_signed_reach_the_daemon() {
    let [mut f1, _, _] = three_federations();
    let trust = trust(&[&f1]);
    // The node's overlay and a rogue one around a relay; an observer (an agent) behind it.
    let relay = peer(&["f1"], trust.clone()).await;
    let observer = peer(&["f1"], trust.clone()).await;
    let publisher = peer(&["f1"], trust.clone()).await;
    let rogue = peer(&["f1"], trust.clone()).await;
    for p in [&observer, &publisher, &rogue] {
        connect(p, &relay).await;
    }
    mesh(&relay, "f1", 3).await;
    for p in [&observer, &publisher, &rogue] {
        mesh(p, "f1", 1).await;
    }
    let mut beats = observer.heartbeats();
    let mut ads = observer.ads();
    let node = f1.node(1, "s1");
    let authority = f1.authority.public();

    // Before its ad is known, a node's heartbeat vouches for nothing and is not relayed.
    within(publisher.publish_heartbeat(authority, beat(&node.key, now_ms())))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(drain_beats(&mut beats).is_empty());

    // With its ad held, its fresh heartbeat arrives, signer and body intact.
    within(publisher.publish_ad(node.ad(now_ms(), unix_now(), 300)))
        .await
        .unwrap();
    next_ad(&mut ads).await;
    let first = now_ms();
    within(publisher.publish_heartbeat(authority, beat(&node.key, first)))
        .await
        .unwrap();
    let event = within(beats.recv()).await.unwrap();
    assert_eq!(event.node, node.key.public());
    assert_eq!(event.heartbeat.seq, first);

    // An older seq (a replay or a reordering), one sent a minute ago, one a minute ahead: all
    // dropped without blame.
    for seq in [first - 1, now_ms() - 60_000, now_ms() + 60_000] {
        within(publisher.publish_heartbeat(authority, beat(&node.key, seq)))
            .await
            .unwrap();
    }
    // Forged heartbeats (another key's signature under the node's name) cost the rogue.
    let forger = SecretKey::generate();
    for i in 0..4 {
        let mut forged = beat(&forger, now_ms() + i);
        forged.signer = node.key.public();
        let _ = within(rogue.publish_heartbeat(authority, forged)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A marker: the next real heartbeat is the next event; nothing of the above came first.
    let marker = now_ms() + 10;
    tokio::time::sleep(Duration::from_millis(20)).await;
    within(publisher.publish_heartbeat(authority, beat(&node.key, marker)))
        .await
        .unwrap();
    let event = within(beats.recv()).await.unwrap();
    assert_eq!(
        event.heartbeat.seq, marker,
        "a dropped heartbeat got through"
    );
    eventually("the forging peer cut off", || async {
        !relay
            .connected_peers()
            .await
            .unwrap()
            .contains(&rogue.local_key())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(drain_beats(&mut beats).is_empty());
}
