//! A certified node gossips an ad delegating to an agent whose key is no ed25519 point. The
//! broker, which learns agents from ads and asks every one of them, must neither learn that
//! key nor lose its overlay: it keeps learning agents and answering requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use broker::daemon::config::{BrokerConfig, TrustedFederation};
use broker::wire::{BrokerAnswer, BrokerAnswerProtocol, BrokerCall, SliceAsk};
use capability_schema::ad::ShareState;
use capability_schema::identity::test_key;
use capability_schema::protocol::{AgentRequest, AgentResponse, Reply};
use capability_schema::slice::{SliceConstraints, SliceKind, SliverTarget};
use capability_schema::{
    AcquireMode, PublicKey, Resources, SecretKey, SignatureError, Signed, SliceRequest,
};
use federation::daemon::CommonConfig;
use federation::overlay::{AgentProtocol, ServeStream};
use federation::testing::TestFederation;
use federation::{Overlay, OverlayConfig, OverlayHandle, TrustStore, unix_now};

const WAIT: Duration = Duration::from_secs(20);

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("timed out waiting")
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `bytes` with the one occurrence of `key` replaced by 32 bytes that are no point.
fn swap_for_a_non_point(bytes: &[u8], key: &PublicKey) -> Vec<u8> {
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2; // y = 2 has no x on the curve
    assert!(PublicKey::from_bytes(&not_a_point).is_err());
    let at = bytes
        .windows(32)
        .position(|w| w == key.as_bytes())
        .expect("the key is in the body");
    let mut out = bytes.to_vec();
    out[at..at + 32].copy_from_slice(&not_a_point);
    out
}

/// An agent that offers nothing.
async fn serve_agent(mut stream: ServeStream<AgentProtocol>) {
    while let Some(incoming) = stream.next().await {
        let reply: Reply<AgentResponse> = match incoming.request {
            AgentRequest::GetAds(_) => Ok(AgentResponse::Ads(Vec::new())),
            AgentRequest::GetTickets(_) => Ok(AgentResponse::Tickets {
                issued: Vec::new(),
                refused: Vec::new(),
            }),
            AgentRequest::Released { .. } => Ok(AgentResponse::Released { known: 0 }),
        };
        let _ = incoming.responder.send(reply).await;
    }
}

fn find(principal: PublicKey) -> BrokerCall {
    BrokerCall::FindSlice(SliceAsk::new(
        SliceRequest {
            name: "site_s".into(),
            principal,
            principal_federation: "f1".into(),
            kind: SliceKind::Regular,
            per_sliver: Resources::ZERO,
            target: SliverTarget::Count(1),
            constraints: SliceConstraints::default(),
            duration_secs: 60,
            mode: AcquireMode::AllOrNothing,
            net: Default::default(),
        },
        None,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ad_naming_an_agent_key_that_is_no_point_does_not_take_the_broker_down() {
    let mut f1 = TestFederation::new("f1", 221);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("broker.key");
    SecretKey::generate().save(&key_file).unwrap();
    let mut common = CommonConfig::new("f1");
    common.key_file = key_file;
    common.membership = dir.path().join("membership.cbor");
    common.trust = vec![TrustedFederation {
        name: "f1".into(),
        authority: f1.authority.public(),
    }];
    common.listen = vec!["/memory/0".parse().unwrap()];
    common.http = None;
    common.max_in_flight = 4;
    let config = BrokerConfig {
        common,
        follow: vec!["f1".into()],
        agents: Vec::new(),
        discover_agents: true,
        call_timeout_secs: 5,
        concurrency: 4,
        max_rounds: 2,
        acquire_deadline_secs: 0,
    };
    let (running, shutdown) = broker::daemon::run::start(config).await.unwrap();
    let broker_key = running.overlay.local_key();

    // A peer holding a certified node's key, which also serves the agent protocol.
    let mut store = TrustStore::new();
    f1.trust(&mut store);
    let rogue: OverlayHandle = Overlay::start(
        &SecretKey::generate(),
        OverlayConfig {
            federations: vec!["f1".into()],
            gossip_heartbeat: Duration::from_millis(100),
            kademlia: false,
            target_peers: 0,
            ..OverlayConfig::memory()
        },
        Arc::new(RwLock::new(store)),
    )
    .await
    .unwrap();
    tokio::spawn(serve_agent(rogue.serve::<AgentProtocol>().await.unwrap()));
    let broker_addr = running.overlay.listen_addrs().await.unwrap()[0].clone();
    assert_eq!(within(rogue.dial(broker_addr)).await.unwrap(), broker_key);
    eventually("the broker in the rogue's f1 mesh", || async {
        rogue.mesh_peers("f1").await.unwrap().contains(&broker_key)
    })
    .await;

    // The node signs an ad delegating to an agent whose key is no point (a valid ad, the
    // agent's bytes swapped, the body signed again by the node).
    let node = f1.node(1, "s1");
    let now = unix_now();
    let ad = |seq, agent| {
        let mut body = node.ad_body(seq, now, 300);
        body.shares = vec![ShareState {
            agent,
            share: Resources::ZERO,
            committed: Resources::ZERO,
            free: Resources::ZERO,
        }];
        Signed::sign(&node.key, &body)
    };
    let named = test_key(60).public();
    let mut bad = ad(1, named);
    bad.body = swap_for_a_non_point(&bad.body, &named);
    let mut message = b"planetmesh-signed/v1\0".to_vec();
    message.extend_from_slice(bad.domain.as_bytes());
    message.push(0);
    message.extend_from_slice(&bad.body);
    bad.signature = node.key.sign(&message).to_vec();
    assert!(matches!(bad.verify(), Err(SignatureError::Body(_))));
    within(rogue.publish_raw("f1", bad.to_bytes()))
        .await
        .unwrap();
    // Then a valid ad delegating to the rogue peer, which answers as an agent.
    within(rogue.publish_raw("f1", ad(2, rogue.local_key()).to_bytes()))
        .await
        .unwrap();
    eventually("the broker learning the valid agent", || async {
        running.state.agent_keys().contains(&rogue.local_key())
    })
    .await;
    let stats = running.overlay.stats().await.unwrap();
    assert_eq!(
        (stats.ads_accepted, stats.ads_rejected),
        (1, 1),
        "{stats:?}"
    );
    // Only the valid agent was learned.
    assert_eq!(running.state.agent_keys(), vec![rogue.local_key()]);

    // The broker asks every agent it knows, and answers.
    let answer = within(rogue.request::<BrokerAnswerProtocol>(
        &broker_key,
        find(rogue.local_key()),
        Duration::from_secs(15),
    ))
    .await
    .unwrap();
    assert!(matches!(answer, BrokerAnswer::Plan(_)), "{answer:?}");
    assert_eq!(running.overlay.exit(), None);

    within(shutdown).await;
    assert!(within(running.overlay.closed()).await.is_clean());
}
