//! Revocation at a running agent daemon: a list handed to it over the overlay applies at
//! once, and a revoked caller (a broker, or a principal asking directly) is refused naming
//! the list, while others are still served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use agentd::daemon::config::AgentConfig;
use capability_schema::codec;
use capability_schema::identity::test_key;
use capability_schema::membership::RevocationVerdict;
use capability_schema::protocol::{AdQuery, AgentRequest, AgentResponse};
use capability_schema::{PublicKey, Rejection, Role, SecretKey};
use federation::overlay::{AgentProtocol, Multiaddr};
use federation::testing::TestFederation;
use federation::{Overlay, OverlayConfig, OverlayError, OverlayHandle, TrustStore, unix_now};

const WAIT: Duration = Duration::from_secs(20);

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("no answer within the test's bound")
}

async fn client(key: &SecretKey, plc: &TestFederation, agent: Multiaddr) -> OverlayHandle {
    let mut trust = TrustStore::new();
    plc.trust(&mut trust);
    let client = Overlay::start(
        key,
        OverlayConfig {
            kademlia: false,
            target_peers: 0,
            ..OverlayConfig::loopback()
        },
        Arc::new(RwLock::new(trust)),
    )
    .await
    .unwrap();
    within(client.dial(agent)).await.unwrap();
    client
}

async fn get_ads(client: &OverlayHandle, agent: &PublicKey) -> Result<AgentResponse, Rejection> {
    let request = AgentRequest::GetAds(AdQuery::default());
    match within(client.request::<AgentProtocol>(agent, request, WAIT)).await {
        Ok(answer) => Ok(answer),
        Err(OverlayError::Rejected(reply)) => Err(reply.reason),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_caller_is_refused_naming_the_list_others_are_served() {
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
    let (rogue_key, honest_key) = (SecretKey::generate(), SecretKey::generate());
    let rogue = client(&rogue_key, &plc, addr.clone()).await;
    let honest = client(&honest_key, &plc, addr).await;
    let agent = key.public();
    assert_eq!(
        get_ads(&rogue, &agent).await,
        Ok(AgentResponse::Ads(Vec::new()))
    );

    // The honest peer hands the agent a list revoking the rogue broker's key.
    let list = plc.authority.revoke(&[], &[rogue_key.public()], unix_now());
    let verdict = within(honest.offer_revocation(&agent, list, WAIT))
        .await
        .unwrap();
    assert_eq!(
        verdict,
        RevocationVerdict::Applied {
            federation: "plc".into(),
            version: 1
        }
    );
    match get_ads(&rogue, &agent).await {
        Err(Rejection::Policy { rule, detail }) => {
            assert_eq!(rule, "revoked_caller");
            assert!(
                detail.contains(&rogue_key.public().short())
                    && detail.contains("\"plc\"'s revocation list v1 (issued at"),
                "{detail}"
            );
        }
        other => panic!("a revoked caller was not refused: {other:?}"),
    }
    assert_eq!(
        get_ads(&honest, &agent).await,
        Ok(AgentResponse::Ads(Vec::new()))
    );
    rogue.shutdown().await;
    honest.shutdown().await;
    within(shutdown).await;
}
