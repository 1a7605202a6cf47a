//! Nodes behind NAT, in process on loopback: a node that lists a relay reserves a slot on it
//! and advertises a `/p2p-circuit` address; a caller that knows only that address reaches
//! the node through the relay (then DCUtR may punch a direct connection); bad relay entries
//! (no `/p2p/`, unreachable) are reported while the overlay keeps working; a relay refuses
//! reservations beyond its limit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::time::Duration;

use capability_schema::SecretKey;
use capability_schema::protocol::{NodeRequest, NodeResponse};
use common::*;
use federation::overlay::relay::is_relayed;
use federation::overlay::{Multiaddr, NodeProtocol, peer_id};
use federation::overlay::{NatConfig, RelayConfig};
use federation::{Overlay, OverlayConfig, OverlayHandle};

fn loopback(federations: &[&str]) -> OverlayConfig {
    OverlayConfig {
        quic: false,
        nat: NatConfig {
            autonat: false,
            ..NatConfig::default()
        },
        ..OverlayConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            ..config(federations)
        }
    }
}

async fn relay(limits: RelayConfig) -> OverlayHandle {
    let [f1, _, _] = three_federations();
    let config = OverlayConfig {
        relay: limits,
        ..loopback(&["f1"])
    };
    Overlay::start(&SecretKey::generate(), config, trust(&[&f1]))
        .await
        .unwrap()
}

async fn behind_nat(relays: Vec<Multiaddr>) -> OverlayHandle {
    let [f1, _, _] = three_federations();
    let config = OverlayConfig {
        nat: NatConfig {
            relays,
            autonat: false,
            ..NatConfig::default()
        },
        relay: RelayConfig::default(),
        ..loopback(&["f1"])
    };
    Overlay::start(&SecretKey::generate(), config, trust(&[&f1]))
        .await
        .unwrap()
}

/// The `/p2p-circuit` address of `node`, once a relay accepted its reservation.
async fn circuit_addr(node: &OverlayHandle) -> Multiaddr {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let addrs = node.listen_addrs().await.unwrap();
        if let Some(found) = addrs.into_iter().find(is_relayed) {
            return found;
        }
        let report = node.nat().await.unwrap();
        assert!(
            tokio::time::Instant::now() < deadline,
            "no relay reservation: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_relay_is_reached_through_its_circuit_address() {
    let relay = relay(RelayConfig::default()).await;
    let relay_addr = addr(&relay).await;
    let node = behind_nat(vec![relay_addr.clone()]).await;
    let circuit = circuit_addr(&node).await;
    let text = circuit.to_string();
    assert!(
        text.starts_with(&relay_addr.to_string())
            && text.ends_with(&format!("/p2p-circuit/p2p/{}", peer_id(&node.local_key()))),
        "{text}"
    );
    let report = node.nat().await.unwrap();
    assert!(report.behind_nat && !report.serving, "{report:?}");
    assert_eq!(report.relays[0].reserved.as_deref(), Some(text.as_str()));

    // A caller that knows only the circuit address.
    let mut serving = node.serve::<NodeProtocol>().await.unwrap();
    let server = tokio::spawn(async move {
        let incoming = serving.next().await.expect("a request");
        let NodeRequest::Release { lease_id } = incoming.request else {
            panic!("a release expected")
        };
        incoming
            .responder
            .send(Ok(NodeResponse::Released { lease_id }))
            .await
            .unwrap();
    });
    let caller = Overlay::start(
        &SecretKey::generate(),
        loopback(&["f1"]),
        trust(&[&three_federations()[0]]),
    )
    .await
    .unwrap();
    // Already connected to the relay, as a user is to the broker it asks.
    within(caller.dial(relay_addr.clone())).await.unwrap();
    caller
        .add_addresses(&node.local_key(), vec![circuit])
        .await
        .unwrap();
    let answer = within(caller.request::<NodeProtocol>(
        &node.local_key(),
        NodeRequest::Release {
            lease_id: "through-the-relay".into(),
        },
        Duration::from_secs(5),
    ))
    .await
    .unwrap();
    assert_eq!(
        answer,
        NodeResponse::Released {
            lease_id: "through-the-relay".into()
        }
    );
    within(server).await.unwrap();
    let served = relay.nat().await.unwrap();
    assert!(served.serving, "{served:?}");
    assert!(served.reservations_accepted >= 1, "{served:?}");
    assert!(served.circuits_accepted >= 1, "{served:?}");
    let seen = caller.nat().await.unwrap();
    assert!(seen.relayed_connections >= 1, "{seen:?}");
    // On loopback nothing stands in the way of a hole punch: DCUtR makes the connection
    // direct (from either side), and the report says how the node is connected now.
    let node_peer = peer_id(&node.local_key()).to_string();
    eventually("a direct connection after the hole punch", || {
        let (caller, node, node_peer) = (caller.clone(), node.clone(), node_peer.clone());
        async move {
            let punched =
                node.nat().await.unwrap().hole_punches + caller.nat().await.unwrap().hole_punches;
            let direct = caller
                .nat()
                .await
                .unwrap()
                .peers
                .iter()
                .any(|p| p.peer == node_peer && p.direct >= 1);
            punched >= 1 && direct
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_relay_entries_are_reported_and_the_good_one_is_used() {
    let relay = relay(RelayConfig::default()).await;
    let good = addr(&relay).await;
    let no_peer_id: Multiaddr = "/ip4/127.0.0.1/tcp/9".parse().unwrap();
    // A port nobody listens on, with a peer id: unreachable.
    let nobody = SecretKey::generate().public();
    let unreachable: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{}", peer_id(&nobody))
        .parse()
        .unwrap();
    let node = behind_nat(vec![no_peer_id, unreachable.clone(), good.clone()]).await;
    circuit_addr(&node).await;
    let report = node.nat().await.unwrap();
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert!(
        report.refused[0].contains("has no /p2p/<peer id>")
            && report.refused[0].contains("/ip4/127.0.0.1/tcp/9/p2p/"),
        "{report:?}"
    );
    eventually("the unreachable relay's error", || {
        let node = node.clone();
        let unreachable = unreachable.to_string();
        async move {
            node.nat().await.unwrap().relays.iter().any(|r| {
                r.relay == unreachable
                    && r.reserved.is_none()
                    && r.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("unreachable"))
            })
        }
    })
    .await;
    // The overlay keeps working.
    assert!(node.stats().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_refuses_reservations_beyond_its_limit() {
    let relay = relay(RelayConfig {
        max_reservations: 1,
        ..RelayConfig::default()
    })
    .await;
    let relay_addr = addr(&relay).await;
    let first = behind_nat(vec![relay_addr.clone()]).await;
    circuit_addr(&first).await;
    let second = behind_nat(vec![relay_addr.clone()]).await;
    eventually("the second reservation refused", || {
        let (relay, second) = (relay.clone(), second.clone());
        async move {
            let refused = relay.nat().await.unwrap().reservations_denied >= 1;
            let told = second.nat().await.unwrap().relays[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("refused") || e.contains("limit"));
            refused && told
        }
    })
    .await;
    assert!(!second.listen_addrs().await.unwrap().iter().any(is_relayed));
}
