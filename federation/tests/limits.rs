//! Connection limits and the serve queue: `max_connections` refuses connections beyond it,
//! `max_peers` trims idle peers (never gossip mesh peers), and a full serve queue refuses
//! requests as busy without losing the ones already queued.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::time::Duration;

use capability_schema::SecretKey;
use capability_schema::protocol::{NodeRequest, NodeResponse};
use capability_schema::rejection::Rejection;
use common::*;
use federation::overlay::NodeProtocol;
use federation::{Overlay, OverlayConfig, OverlayError, SharedTrust};

const CALL: Duration = Duration::from_secs(5);

async fn start(config: OverlayConfig, trust: SharedTrust) -> federation::OverlayHandle {
    Overlay::start(&SecretKey::generate(), config, trust)
        .await
        .expect("overlay starts")
}

fn release(id: &str) -> NodeRequest {
    NodeRequest::Release {
        lease_id: id.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_refused() {
    let trust = trust(&[]);
    let server = start(
        OverlayConfig {
            max_connections: 2,
            ..config(&[])
        },
        trust.clone(),
    )
    .await;
    let a = peer(&[], trust.clone()).await;
    let b = peer(&[], trust.clone()).await;
    let c = peer(&[], trust.clone()).await;
    connect(&a, &server).await;
    connect(&b, &server).await;
    eventually("two peers at the server", || async {
        server.connected_peers().await.unwrap().len() == 2
    })
    .await;

    // The third connection completes its handshake at c's end (or not), but the server
    // refuses to establish it, so c ends up without it.
    let _ = within(c.dial(addr(&server).await)).await;
    eventually("c without a connection to the server", || async {
        !c.connected_peers()
            .await
            .unwrap()
            .contains(&server.local_key())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut at_server = server.connected_peers().await.unwrap();
    at_server.sort();
    let mut expected = vec![a.local_key(), b.local_key()];
    expected.sort();
    assert_eq!(at_server, expected);
    let stats = server.stats().await.unwrap();
    assert_eq!(stats.connections_opened, 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_above_max_peers_are_trimmed_but_mesh_peers_kept() {
    let [f1, _, _] = three_federations();
    let trust = trust(&[&f1]);
    let server = start(
        OverlayConfig {
            max_peers: 1,
            trim_grace: Duration::ZERO,
            discovery_interval: Duration::from_millis(100),
            ..config(&["f1"])
        },
        trust.clone(),
    )
    .await;
    // `meshed` follows f1 with the server; `idle` follows nothing, so nothing keeps it.
    let meshed = peer(&["f1"], trust.clone()).await;
    let idle = peer(&[], trust.clone()).await;
    connect(&meshed, &server).await;
    mesh(&server, "f1", 1).await;
    connect(&idle, &server).await;

    eventually("the server trimming the idle peer", || async {
        server.stats().await.unwrap().connections_trimmed == 1
            && server.connected_peers().await.unwrap() == vec![meshed.local_key()]
    })
    .await;
    let stats = server.stats().await.unwrap();
    assert_eq!(stats.connections_opened, 2, "{stats:?}");
    eventually("the idle peer seeing its connection trimmed", || async {
        !idle
            .connected_peers()
            .await
            .unwrap()
            .contains(&server.local_key())
    })
    .await;
    // Nothing dials it back (no Kademlia, no target), and the mesh peer stays.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        server.connected_peers().await.unwrap(),
        vec![meshed.local_key()]
    );
    assert_eq!(server.stats().await.unwrap().connections_trimmed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_serve_queue_refuses_as_busy_and_keeps_what_it_queued() {
    let trust = trust(&[]);
    let server = start(
        OverlayConfig {
            serve_queue: 1,
            ..config(&[])
        },
        trust.clone(),
    )
    .await;
    let client = peer(&[], trust.clone()).await;
    // Served, but nobody takes requests off the stream yet.
    let mut stream = server.serve::<NodeProtocol>().await.unwrap();
    connect(&client, &server).await;
    let server_key = server.local_key();

    let queued = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .request::<NodeProtocol>(&server_key, release("queued"), CALL)
                .await
        }
    });
    eventually("the first request in the serve queue", || async {
        server.stats().await.unwrap().requests_received == 1
    })
    .await;

    // The queue holds one: the next request is refused at once, with a reason.
    let result =
        within(client.request::<NodeProtocol>(&server_key, release("refused"), CALL)).await;
    assert!(
        matches!(
            &result,
            Err(OverlayError::Rejected(reply))
                if matches!(&reply.reason, Rejection::Unavailable { detail } if detail.contains("busy"))
        ),
        "{result:?}"
    );

    // The queued request was kept and is answered once the daemon takes it.
    let incoming = within(stream.next()).await.expect("the queued request");
    assert_eq!(incoming.request, release("queued"));
    incoming
        .responder
        .send(Ok(NodeResponse::Released {
            lease_id: "queued".into(),
        }))
        .await
        .unwrap();
    assert_eq!(
        within(queued).await.unwrap().unwrap(),
        NodeResponse::Released {
            lease_id: "queued".into()
        }
    );

    // With room again, requests go through.
    let again = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .request::<NodeProtocol>(&server_key, release("again"), CALL)
                .await
        }
    });
    let incoming = within(stream.next()).await.expect("the next request");
    assert_eq!(incoming.request, release("again"));
    incoming
        .responder
        .send(Ok(NodeResponse::Released {
            lease_id: "again".into(),
        }))
        .await
        .unwrap();
    assert!(within(again).await.unwrap().is_ok());
}
