//! Request-response over the overlay: typed calls, size caps, malformed frames, timeouts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::time::Duration;

use capability_schema::codec;
use capability_schema::protocol::{
    AgentRequest, Envelope, ExecOutput, MAX_REQUEST_BYTES, NodeRequest, NodeResponse, Reply,
};
use capability_schema::rejection::Rejection;
use capability_schema::{ErrorReply, PublicKey, SecretKey};
use common::*;
use federation::OverlayError;
use federation::overlay::{AgentProtocol, Frame, NodeProtocol, ProtocolKind, ServeStream};

const CALL: Duration = Duration::from_secs(5);

/// A node server that answers `Release` with `Released`, `Exec` with output of the asked
/// size (in `timeout_ms`), and never answers `Status`.
async fn serve_node(mut stream: ServeStream<NodeProtocol>) {
    let mut held = Vec::new();
    while let Some(incoming) = stream.next().await {
        let reply: Reply<NodeResponse> = match incoming.request {
            NodeRequest::Release { lease_id } => Ok(NodeResponse::Released { lease_id }),
            NodeRequest::Exec { timeout_ms, .. } => Ok(NodeResponse::Exec(ExecOutput {
                exit_code: 0,
                stdout: vec![b'x'; usize::try_from(timeout_ms).unwrap()],
                stderr: Vec::new(),
                truncated: false,
                timed_out: false,
            })),
            NodeRequest::Status => {
                held.push(incoming.responder);
                continue;
            }
            _ => Err(ErrorReply::from(Rejection::Internal {
                detail: "not in this test".into(),
            })),
        };
        incoming.responder.send(reply).await.unwrap();
    }
}

fn release(id: &str) -> NodeRequest {
    NodeRequest::Release {
        lease_id: id.into(),
    }
}

fn exec(output_bytes: u64) -> NodeRequest {
    NodeRequest::Exec {
        lease_id: "l".into(),
        argv: vec!["true".into()],
        stdin: Vec::new(),
        timeout_ms: output_bytes,
    }
}

async fn released(client: &federation::OverlayHandle, server: &PublicKey, id: &str) {
    let answer = client
        .request::<NodeProtocol>(server, release(id), CALL)
        .await
        .unwrap();
    assert_eq!(
        answer,
        NodeResponse::Released {
            lease_id: id.into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_and_bad_frames_refused_without_losing_the_connection() {
    let trust = trust(&[]);
    let server = peer(&[], trust.clone()).await;
    let client = peer(&[], trust.clone()).await;
    tokio::spawn(serve_node(server.serve::<NodeProtocol>().await.unwrap()));
    assert_eq!(
        server.serve::<NodeProtocol>().await.unwrap_err(),
        OverlayError::AlreadyServed(ProtocolKind::Node)
    );
    connect(&client, &server).await;
    let server_key = server.local_key();

    // A typed call and its answer.
    released(&client, &server_key, "lease-1").await;

    // An oversized frame is not sent, even raw (tests/caps.rs has a peer that sends one
    // anyway, and the server's typed refusal of it).
    let huge = vec![0u8; MAX_REQUEST_BYTES + 1];
    let result = within(client.request_raw(ProtocolKind::Node, &server_key, huge, CALL)).await;
    assert!(
        matches!(
            result,
            Err(OverlayError::RequestTooLarge { size, limit })
                if size == MAX_REQUEST_BYTES + 1 && limit == MAX_REQUEST_BYTES
        ),
        "{result:?}"
    );
    // Nor does the typed API.
    let too_big = NodeRequest::AddKey {
        lease_id: "l".into(),
        key: "k".repeat(MAX_REQUEST_BYTES),
    };
    assert!(matches!(
        client
            .request::<NodeProtocol>(&server_key, too_big, CALL)
            .await,
        Err(OverlayError::RequestTooLarge { .. })
    ));

    // Malformed frames: not CBOR at all, and CBOR of the wrong shape (with its request id).
    for (bytes, id) in [
        (vec![0xff, 0x00, 0x13], 0),
        (
            codec::encode(&Envelope {
                request_id: 77,
                body: "hello",
            }),
            77,
        ),
    ] {
        let Frame::Bytes(answer) =
            within(client.request_raw(ProtocolKind::Node, &server_key, bytes, CALL))
                .await
                .unwrap()
        else {
            panic!("a refusal fits in a frame")
        };
        let refusal: Envelope<Reply<NodeResponse>> = codec::decode(&answer).unwrap();
        assert_eq!(refusal.request_id, id);
        assert!(matches!(
            refusal.body.unwrap_err().reason,
            Rejection::Malformed { .. }
        ));
    }

    // The connection and the server survived all of it.
    assert!(
        client
            .connected_peers()
            .await
            .unwrap()
            .contains(&server_key)
    );
    released(&client, &server_key, "lease-2").await;

    // An answer over the response cap comes back as a typed error reply.
    let big = client
        .request::<NodeProtocol>(&server_key, exec(5 * 1024 * 1024), CALL)
        .await;
    assert!(
        matches!(&big, Err(OverlayError::Rejected(reply)) if matches!(reply.reason, Rejection::Internal { .. })),
        "{big:?}"
    );
    // A large answer under the cap arrives whole.
    let Ok(NodeResponse::Exec(output)) = client
        .request::<NodeProtocol>(&server_key, exec(3 * 1024 * 1024), CALL)
        .await
    else {
        panic!("exec answer expected")
    };
    assert_eq!(output.stdout.len(), 3 * 1024 * 1024);

    // A protocol nobody serves there is refused with a reason.
    let unserved = client
        .request::<AgentProtocol>(
            &server_key,
            AgentRequest::Released {
                ticket_ids: Vec::new(),
            },
            CALL,
        )
        .await;
    assert!(
        matches!(&unserved, Err(OverlayError::Rejected(reply)) if matches!(reply.reason, Rejection::Unavailable { .. })),
        "{unserved:?}"
    );
    released(&client, &server_key, "lease-3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_unreachable_peers_are_typed_errors() {
    let trust = trust(&[]);
    let server = peer(&[], trust.clone()).await;
    let client = peer(&[], trust.clone()).await;
    tokio::spawn(serve_node(server.serve::<NodeProtocol>().await.unwrap()));
    connect(&client, &server).await;
    let server_key = server.local_key();

    // The server holds `Status` forever: the caller's timeout fires.
    let started = std::time::Instant::now();
    let result = client
        .request::<NodeProtocol>(&server_key, NodeRequest::Status, Duration::from_millis(300))
        .await;
    assert!(
        matches!(
            result,
            Err(OverlayError::Timeout {
                protocol: ProtocolKind::Node,
                ..
            })
        ),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // And the connection still serves other requests.
    released(&client, &server_key, "after-timeout").await;

    // A peer nobody knows an address of.
    let stranger = SecretKey::generate().public();
    let result = within(client.request::<NodeProtocol>(&stranger, NodeRequest::Status, CALL)).await;
    assert!(
        matches!(result, Err(OverlayError::Unreachable { peer, .. }) if peer == stranger),
        "{result:?}"
    );

    // After the server stops, calls fail with a typed error instead of hanging: its address
    // no longer answers, and without Kademlia there is nowhere else to look.
    server.shutdown().await;
    eventually(
        "the client seeing the server's connection close",
        || async {
            !client
                .connected_peers()
                .await
                .unwrap()
                .contains(&server_key)
        },
    )
    .await;
    let result = within(client.request::<NodeProtocol>(&server_key, release("x"), CALL)).await;
    assert!(
        matches!(&result, Err(OverlayError::Unreachable { peer, .. }) if *peer == server_key),
        "{result:?}"
    );
    assert_eq!(
        server.connected_peers().await.unwrap_err(),
        OverlayError::Closed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_found_through_kademlia() {
    // a knows b, b knows c: a reaches c by key alone, through b's routing table.
    let trust = trust(&[]);
    let a = peer_with_kademlia(&[], trust.clone()).await;
    let b = peer_with_kademlia(&[], trust.clone()).await;
    let c = peer_with_kademlia(&[], trust.clone()).await;
    tokio::spawn(serve_node(c.serve::<NodeProtocol>().await.unwrap()));
    connect(&a, &b).await;
    connect(&c, &b).await;
    // Identify tells b how to reach c; give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    released(&a, &c.local_key(), "via-kademlia").await;
    // A key nobody in the network has is reported unreachable once the lookup ends.
    let stranger = SecretKey::generate().public();
    let result = within(a.request::<NodeProtocol>(&stranger, NodeRequest::Status, CALL)).await;
    assert!(
        matches!(result, Err(OverlayError::Unreachable { peer, .. }) if peer == stranger),
        "{result:?}"
    );
}
