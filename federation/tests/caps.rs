//! Request and response caps end to end, against a raw libp2p peer that breaks the rules the
//! overlay keeps: answers over the response cap, answers that do not decode, answers with
//! another request id, and requests over the request cap. After each, the same connection
//! carries a good request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::time::Duration;

use capability_schema::codec;
use capability_schema::protocol::{
    Envelope, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, NodeRequest, NodeResponse, Reply,
};
use capability_schema::rejection::Rejection;
use capability_schema::{PublicKey, SecretKey};
use common::*;
use federation::OverlayError;
use federation::overlay::{Frame, FrameCodec, Multiaddr, NodeProtocol, ProtocolKind, ServeStream};
use futures::StreamExt;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade::Version;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, StreamProtocol, Swarm, Transport, noise, yamux};
use tokio::sync::{mpsc, oneshot};

const CALL: Duration = Duration::from_secs(5);

/// What the raw peer answers to `Release { lease_id }`.
const TOO_LARGE: &str = "answer-too-large";
const GARBAGE: &str = "answer-garbage";
const WRONG_ID: &str = "answer-wrong-id";
/// The request id offset of the [`WRONG_ID`] answer.
const ID_SKEW: u64 = 1000;

/// A request the raw peer sends: raw bytes to a peer at an address, the raw answer back.
type RawCall = (
    PeerId,
    Multiaddr,
    Vec<u8>,
    oneshot::Sender<Result<Frame, String>>,
);

/// A libp2p peer on the memory transport speaking the node protocol with caps twice the
/// overlay's, so it can send and answer frames the overlay never would. Its task stops when
/// it is dropped.
struct RawPeer {
    key: PublicKey,
    addr: Multiaddr,
    calls: mpsc::Sender<RawCall>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawPeer {
    async fn start() -> RawPeer {
        let secret = SecretKey::generate();
        let keypair = federation::overlay::keypair(&secret);
        let transport = MemoryTransport::default()
            .upgrade(Version::V1Lazy)
            .authenticate(noise::Config::new(&keypair).expect("noise config"))
            .multiplex(yamux::Config::default())
            .boxed();
        let loose = FrameCodec {
            request_limit: 2 * MAX_REQUEST_BYTES,
            response_limit: 2 * MAX_RESPONSE_BYTES,
        };
        let behaviour = request_response::Behaviour::with_codec(
            loose,
            [(
                StreamProtocol::new(ProtocolKind::Node.name()),
                ProtocolSupport::Full,
            )],
            request_response::Config::default().with_request_timeout(CALL),
        );
        let mut swarm = Swarm::new(
            transport,
            behaviour,
            keypair.public().to_peer_id(),
            libp2p::swarm::Config::with_tokio_executor()
                .with_idle_connection_timeout(Duration::from_secs(60)),
        );
        swarm
            .listen_on("/memory/0".parse().expect("memory address"))
            .expect("listen");
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } =
                within(swarm.next()).await.expect("swarm running")
            {
                break address;
            }
        };
        let (calls, rx) = mpsc::channel(8);
        let task = tokio::spawn(run(swarm, rx));
        RawPeer {
            key: secret.public(),
            addr: addr.with(libp2p::multiaddr::Protocol::P2p(
                keypair.public().to_peer_id(),
            )),
            calls,
            task,
        }
    }

    /// Sends `bytes` to the overlay peer `to` and returns its raw answer.
    async fn call(&self, to: &federation::OverlayHandle, bytes: Vec<u8>) -> Frame {
        let (tx, rx) = oneshot::channel();
        let addr = addr(to).await;
        self.calls
            .send((to.local_peer_id(), addr, bytes, tx))
            .await
            .expect("raw peer running");
        within(rx)
            .await
            .expect("raw peer answers")
            .expect("the call succeeds")
    }
}

/// The answer the raw peer gives to a request frame.
fn raw_answer(request: &Frame) -> Frame {
    let Frame::Bytes(bytes) = request else {
        return Frame::Bytes(b"refused".to_vec());
    };
    let Ok(envelope) = codec::decode::<Envelope<NodeRequest>>(bytes) else {
        return Frame::Bytes(b"refused".to_vec());
    };
    let lease_id = match envelope.body {
        NodeRequest::Release { lease_id } => lease_id,
        _ => String::new(),
    };
    let mut request_id = envelope.request_id;
    match lease_id.as_str() {
        TOO_LARGE => return Frame::Bytes(vec![0x61; MAX_RESPONSE_BYTES + 1]),
        GARBAGE => return Frame::Bytes(vec![0xff, 0x00, 0x13]),
        WRONG_ID => request_id += ID_SKEW,
        _ => {}
    }
    let reply: Reply<NodeResponse> = Ok(NodeResponse::Released { lease_id });
    Frame::Bytes(codec::encode(&Envelope {
        request_id,
        body: reply,
    }))
}

async fn run(
    mut swarm: Swarm<request_response::Behaviour<FrameCodec>>,
    mut calls: mpsc::Receiver<RawCall>,
) {
    let mut pending = std::collections::HashMap::new();
    loop {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(request_response::Event::Message { message, .. }) => {
                    match message {
                        request_response::Message::Request { request, channel, .. } => {
                            let answer = raw_answer(&request);
                            let _ = swarm.behaviour_mut().send_response(channel, answer);
                        }
                        request_response::Message::Response { request_id, response } => {
                            if let Some(reply) = pending.remove(&request_id) {
                                let _: Result<(), _> = oneshot::Sender::send(reply, Ok(response));
                            }
                        }
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    request_id, error, ..
                }) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let _: Result<(), _> =
                            oneshot::Sender::send(reply, Err(error.to_string()));
                    }
                }
                _ => {}
            },
            call = calls.recv() => {
                let Some((peer, addr, bytes, reply)) = call else { break };
                let id = swarm.behaviour_mut().send_request_with_addresses(
                    &peer,
                    Frame::Bytes(bytes),
                    vec![addr],
                );
                pending.insert(id, reply);
            }
        }
    }
}

fn release(id: &str) -> NodeRequest {
    NodeRequest::Release {
        lease_id: id.into(),
    }
}

async fn released(client: &federation::OverlayHandle, server: &PublicKey, id: &str) {
    let answer = within(client.request::<NodeProtocol>(server, release(id), CALL))
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
async fn bad_answers_are_typed_errors_and_the_connection_carries_on() {
    let trust = trust(&[]);
    let client = peer(&[], trust).await;
    let raw = RawPeer::start().await;
    assert_eq!(
        within(client.dial(raw.addr.clone())).await.unwrap(),
        raw.key
    );
    released(&client, &raw.key, "first").await;

    // An answer over the response cap: read no further than the cap, a typed error.
    let result = within(client.request::<NodeProtocol>(&raw.key, release(TOO_LARGE), CALL)).await;
    assert!(
        matches!(
            &result,
            Err(OverlayError::ResponseTooLarge { peer, limit })
                if *peer == raw.key && *limit == MAX_RESPONSE_BYTES
        ),
        "{result:?}"
    );
    released(&client, &raw.key, "after-too-large").await;

    // An answer that is not CBOR.
    let result = within(client.request::<NodeProtocol>(&raw.key, release(GARBAGE), CALL)).await;
    assert!(
        matches!(&result, Err(OverlayError::Decode { peer, .. }) if *peer == raw.key),
        "{result:?}"
    );
    released(&client, &raw.key, "after-garbage").await;

    // An answer to another request.
    let result = within(client.request::<NodeProtocol>(&raw.key, release(WRONG_ID), CALL)).await;
    let Err(OverlayError::WrongRequestId {
        peer,
        expected,
        found,
    }) = result
    else {
        panic!("a wrong request id error expected, got {result:?}")
    };
    assert_eq!(peer, raw.key);
    assert_eq!(found, expected + ID_SKEW);
    released(&client, &raw.key, "after-wrong-id").await;

    // All of it on the one connection the dial opened.
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.connections_opened, 1, "{stats:?}");
    assert_eq!(stats.connections_closed, 0, "{stats:?}");
    assert!(client.connected_peers().await.unwrap().contains(&raw.key));
}

/// Answers every `Release` with `Released`.
async fn serve_releases(mut stream: ServeStream<NodeProtocol>) {
    while let Some(incoming) = stream.next().await {
        let reply: Reply<NodeResponse> = match incoming.request {
            NodeRequest::Release { lease_id } => Ok(NodeResponse::Released { lease_id }),
            _ => Err(Rejection::Internal {
                detail: "not in this test".into(),
            }
            .into()),
        };
        incoming.responder.send(reply).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused_with_a_typed_reply_on_a_live_connection() {
    let trust = trust(&[]);
    let server = peer(&[], trust).await;
    tokio::spawn(serve_releases(
        server.serve::<NodeProtocol>().await.unwrap(),
    ));
    let raw = RawPeer::start().await;

    // The overlay would never send this; the raw peer does.
    let Frame::Bytes(answer) = raw.call(&server, vec![0; MAX_REQUEST_BYTES + 1]).await else {
        panic!("a refusal fits in a frame")
    };
    let refusal: Envelope<Reply<NodeResponse>> = codec::decode(&answer).unwrap();
    assert_eq!(
        refusal.request_id, 0,
        "the request id of an unread frame is unknown"
    );
    let reason = refusal.body.unwrap_err().reason;
    assert!(
        matches!(&reason, Rejection::Malformed { detail } if detail.contains("limit")),
        "{reason:?}"
    );
    assert!(server.connected_peers().await.unwrap().contains(&raw.key));

    // The same connection then carries a good request to the daemon.
    let good = codec::encode(&Envelope {
        request_id: 5,
        body: release("after-oversized"),
    });
    let Frame::Bytes(answer) = raw.call(&server, good).await else {
        panic!("a small answer")
    };
    let answer: Envelope<Reply<NodeResponse>> = codec::decode(&answer).unwrap();
    assert_eq!(answer.request_id, 5);
    assert_eq!(
        answer.body.unwrap(),
        NodeResponse::Released {
            lease_id: "after-oversized".into()
        }
    );
    let stats = server.stats().await.unwrap();
    assert_eq!(stats.connections_opened, 1, "{stats:?}");
    assert_eq!(stats.requests_received, 2, "{stats:?}");
}
