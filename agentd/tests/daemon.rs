//! The agent daemon over the real request-response protocol: malformed CBOR is refused with a
//! typed reply on the same stream, an oversized frame is never sent, and the daemon keeps
//! serving typed requests (from the same peer, on the same connection) afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use agentd::daemon::config::AgentConfig;
use capability_schema::codec;
use capability_schema::identity::test_key;
use capability_schema::protocol::{
    AdQuery, AgentRequest, AgentResponse, Envelope, MAX_REQUEST_BYTES, Reply, SliverAsk,
    TicketRequest,
};
use capability_schema::{
    AskGrant, PublicKey, Rejection, Resources, Role, SecretKey, Signed, SliceKind,
};
use federation::overlay::{AgentProtocol, Frame, ProtocolKind};
use federation::testing::TestFederation;
use federation::{Overlay, OverlayConfig, OverlayError, OverlayHandle, TrustStore};

const WAIT: Duration = Duration::from_secs(20);

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("no answer within the test's bound")
}

/// Sends `bytes` as an agent-protocol frame and decodes the daemon's answer.
async fn raw(
    client: &OverlayHandle,
    agent: &PublicKey,
    bytes: Vec<u8>,
) -> Envelope<Reply<AgentResponse>> {
    let frame = within(client.request_raw(ProtocolKind::Agent, agent, bytes, WAIT))
        .await
        .expect("the daemon answers a bad frame on the same stream");
    let Frame::Bytes(answer) = frame else {
        panic!("a refusal fits in a frame")
    };
    codec::decode(&answer).expect("the answer is a well-formed envelope")
}

fn malformed_detail(envelope: &Envelope<Reply<AgentResponse>>) -> String {
    match &envelope.body {
        Err(reply) => match &reply.reason {
            Rejection::Malformed { detail } => detail.clone(),
            other => panic!("refused, but not as malformed: {other:?}"),
        },
        Ok(ok) => panic!("a bad frame was accepted: {ok:?}"),
    }
}

/// A typed `GetAds`: proof the daemon still serves.
async fn still_serving(client: &OverlayHandle, agent: &PublicKey) {
    let answer = within(client.request::<AgentProtocol>(
        agent,
        AgentRequest::GetAds(AdQuery::default()),
        WAIT,
    ))
    .await
    .expect("the daemon still serves typed requests");
    assert_eq!(answer, AgentResponse::Ads(Vec::new()));
}

/// CBOR nested `depth` arrays deep around a zero.
fn nested(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x81; depth];
    bytes.push(0x00);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_refused_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut plc = TestFederation::new("plc", 100);
    let key = test_key(20);
    key.save(&dir.path().join("agent.key")).unwrap();
    std::fs::write(
        dir.path().join("membership.cbor"),
        codec::encode(&plc.certify(&key, Role::Agent)),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            "federation = \"plc\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nhttp = \"\"\n\
             [[trust]]\nname = \"plc\"\nauthority = \"{}\"\n",
            plc.authority.public()
        ),
    )
    .unwrap();
    let config = AgentConfig::load(&dir.path().join("agent.toml")).unwrap();
    let (running, shutdown) = within(agentd::daemon::run::start(config)).await.unwrap();
    let addr = running.overlay.listen_addrs().await.unwrap()[0].clone();

    let mut trust = TrustStore::new();
    plc.trust(&mut trust);
    let client_key = SecretKey::generate();
    let client = Overlay::start(
        &client_key,
        OverlayConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            kademlia: false,
            mdns: false,
            target_peers: 0,
            ..OverlayConfig::default()
        },
        Arc::new(RwLock::new(trust)),
    )
    .await
    .unwrap();
    let agent = within(client.dial(addr)).await.unwrap();
    assert_eq!(agent, key.public());
    still_serving(&client, &agent).await;

    // Not CBOR at all: refused with request id 0 (none could be read).
    let answer = raw(&client, &agent, vec![0xff, 0x00, 0x13]).await;
    assert_eq!(answer.request_id, 0);
    assert!(!malformed_detail(&answer).is_empty());
    still_serving(&client, &agent).await;

    // An envelope whose body is no agent request: refused, answering the request id.
    let answer = raw(
        &client,
        &agent,
        codec::encode(&Envelope {
            request_id: 77,
            body: "hello",
        }),
    )
    .await;
    assert_eq!(answer.request_id, 77);
    malformed_detail(&answer);

    // A `get_tickets` of the wrong shape (the request is a number, not a map).
    let mut wrong_shape = std::collections::BTreeMap::new();
    wrong_shape.insert("get_tickets", 5u8);
    let answer = raw(
        &client,
        &agent,
        codec::encode(&Envelope {
            request_id: 78,
            body: wrong_shape,
        }),
    )
    .await;
    assert_eq!(answer.request_id, 78);
    malformed_detail(&answer);

    // A valid request cut short, and CBOR nested past the depth cap.
    let mut cut = codec::encode(&Envelope {
        request_id: 79,
        body: AgentRequest::Released {
            ticket_ids: vec!["ab".repeat(64)],
        },
    });
    cut.truncate(cut.len() - 10);
    malformed_detail(&raw(&client, &agent, cut).await);
    malformed_detail(&raw(&client, &agent, nested(10_000)).await);
    still_serving(&client, &agent).await;

    // A frame over the request cap is not even sent, raw or typed. (A peer that breaks that
    // rule is read no further and refused naming the limit: federation/tests/caps.rs drives
    // the same server code with a raw libp2p peer.)
    let over = within(client.request_raw(
        ProtocolKind::Agent,
        &agent,
        vec![0u8; MAX_REQUEST_BYTES + 1],
        WAIT,
    ))
    .await;
    assert!(
        matches!(over, Err(OverlayError::RequestTooLarge { size, limit })
            if size == MAX_REQUEST_BYTES + 1 && limit == MAX_REQUEST_BYTES),
        "{over:?}"
    );
    let too_big = AgentRequest::Released {
        ticket_ids: vec!["x".repeat(MAX_REQUEST_BYTES)],
    };
    assert!(matches!(
        client.request::<AgentProtocol>(&agent, too_big, WAIT).await,
        Err(OverlayError::RequestTooLarge { .. })
    ));

    // Still serving, including refusals that need the agent core: an unknown principal.
    still_serving(&client, &agent).await;
    let stranger = test_key(60);
    let mut unknown = TicketRequest {
        slice: "plc_x".into(),
        principal: stranger.public(),
        principal_cert: None,
        kind: SliceKind::Regular,
        slivers: vec![SliverAsk {
            node: test_key(1).public(),
            resources: Resources {
                cpu_millis: 100,
                ..Resources::ZERO
            },
        }],
        not_before: federation::unix_now(),
        not_after: federation::unix_now() + 600,
        max_price: None,
        net: Default::default(),
        ask: None,
    };
    // It signs its own ask (carried by the client's key), so the policy gets to judge it.
    let grant = AskGrant::covering(&unknown, client_key.public(), federation::unix_now(), 300);
    unknown.ask = Some(Box::new(Signed::sign(&stranger, &grant)));
    let refusal =
        within(client.request::<AgentProtocol>(&agent, AgentRequest::GetTickets(unknown), WAIT))
            .await;
    match refusal {
        Err(OverlayError::Rejected(reply)) => {
            assert_eq!(reply.reason.code(), "unknown_principal", "{reply}")
        }
        other => panic!("{other:?}"),
    }
    // Releasing ids the agent never minted is no one's business: nothing known.
    assert_eq!(
        within(client.request::<AgentProtocol>(
            &agent,
            AgentRequest::Released {
                ticket_ids: vec!["00".repeat(64)],
            },
            WAIT,
        ))
        .await
        .unwrap(),
        AgentResponse::Released { known: 0 }
    );
    assert_eq!(
        running
            .state
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the typed refusal reached the agent core"
    );

    client.shutdown().await;
    within(shutdown).await;
}
