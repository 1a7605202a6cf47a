//! The QUIC transport on loopback: two overlays listening on `/udp/0/quic-v1` only, one
//! request-response round trip and one ad between them; and QUIC turned off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::time::Duration;

use capability_schema::SecretKey;
use capability_schema::protocol::{NodeRequest, NodeResponse};
use common::*;
use federation::overlay::NodeProtocol;
use federation::{Overlay, OverlayConfig, OverlayError, unix_now};

fn quic_loopback(federations: &[&str]) -> OverlayConfig {
    OverlayConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        ..config(federations)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_overlays_talk_over_quic() {
    let [mut f1, _, _] = three_federations();
    let trust = trust(&[&f1]);
    let first = Overlay::start(
        &SecretKey::generate(),
        quic_loopback(&["f1"]),
        trust.clone(),
    )
    .await
    .unwrap();
    let second = Overlay::start(
        &SecretKey::generate(),
        quic_loopback(&["f1"]),
        trust.clone(),
    )
    .await
    .unwrap();
    let first_addr = addr(&first).await;
    let text = first_addr.to_string();
    assert!(
        text.starts_with("/ip4/127.0.0.1/udp/") && text.contains("/quic-v1/p2p/"),
        "{text}"
    );
    assert_eq!(
        within(second.dial(first_addr)).await.unwrap(),
        first.local_key()
    );

    // A request and its answer.
    let mut serving = first.serve::<NodeProtocol>().await.unwrap();
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
    let answer = within(second.request::<NodeProtocol>(
        &first.local_key(),
        NodeRequest::Release {
            lease_id: "over-quic".into(),
        },
        Duration::from_secs(5),
    ))
    .await
    .unwrap();
    assert_eq!(
        answer,
        NodeResponse::Released {
            lease_id: "over-quic".into()
        }
    );
    within(server).await.unwrap();

    // An ad.
    mesh(&first, "f1", 1).await;
    mesh(&second, "f1", 1).await;
    let mut ads = second.ads();
    let node = f1.node(11, "s11");
    first.publish_ad(node.ad(1, unix_now(), 300)).await.unwrap();
    let event = next_ad(&mut ads).await;
    assert_eq!(event.ad.node, node.key.public());
    assert_eq!(event.relayed_by, first.local_key());

    // Nothing but QUIC carried it: the only listen addresses are QUIC ones.
    for handle in [&first, &second] {
        for addr in handle.listen_addrs().await.unwrap() {
            assert!(addr.to_string().contains("/quic-v1"), "{addr}");
        }
    }
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_addresses_are_refused_with_quic_off() {
    let trust = trust(&[]);
    let result = Overlay::start(
        &SecretKey::generate(),
        OverlayConfig {
            quic: false,
            ..quic_loopback(&[])
        },
        trust,
    )
    .await;
    assert!(
        matches!(&result, Err(OverlayError::Listen { addr, .. }) if addr.contains("quic-v1")),
        "{result:?}"
    );
}
