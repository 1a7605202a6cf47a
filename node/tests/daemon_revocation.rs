//! Revocation at a running node manager (in-process, loopback TCP, no isolation): a list
//! handed to the node over the overlay ends the live leases of a revoked principal, issuing
//! agent or ticket at once (the time it took is printed), later requests on such a lease and
//! the holder's status get the reason, and redeems touching anything revoked are refused
//! naming the rule and the list; an older list is ignored; a list named in the config applies
//! from the start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use capability_schema::identity::{SecretKey, test_key};
use capability_schema::membership::{RevocationVerdict, RevokedDelegation};
use capability_schema::protocol::{NodeRequest, NodeResponse, NodeStatus, TicketBytes};
use capability_schema::ticket::{Operation, Ticket, TicketSpec, Window};
use capability_schema::{Lease, PublicKey, Rejection, Resources, SliceKind, codec};
use common::principal_overlay;
use federation::overlay::NodeProtocol;
use federation::testing::TestFederation;
use federation::trust::Revoke;
use federation::{OverlayError, OverlayHandle, unix_now};
use node::daemon::config::NodeManagerConfig;
use node::daemon::run::RunningNode;

const WAIT: Duration = Duration::from_secs(20);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

struct Node {
    _dir: tempfile::TempDir,
    key: SecretKey,
    running: RunningNode,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

fn agent_a() -> SecretKey {
    test_key(20)
}
fn agent_b() -> SecretKey {
    test_key(21)
}

/// A node of `plc` delegating to agents A and B, with `extra` config lines (top level).
async fn start_node(plc: &mut TestFederation, extra: &str, files: &[(&str, Vec<u8>)]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    key.save(&dir.path().join("node.key")).unwrap();
    let cert = plc.node_with_key(key.clone(), "princeton").cert;
    std::fs::write(dir.path().join("membership.cbor"), codec::encode(&cert)).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let config_text = format!(
        "federation = \"plc\"\nisolation = \"memory\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nhttp = \"off\"\n\
         capacity = \"cpu=8 cores,memory=8GiB,disk=10GiB,egress=100Mbit\"\n{extra}\n\
         [[trust]]\nname = \"plc\"\nauthority = \"{}\"\n\
         [[delegations]]\nagent = \"{}\"\nshare = \"cpu=4 cores,memory=4GiB,disk=5GiB,egress=50Mbit\"\n\
         [[delegations]]\nagent = \"{}\"\nshare = \"cpu=2 cores,memory=2GiB,disk=2GiB,egress=20Mbit\"\n",
        plc.authority.public(),
        agent_a().public(),
        agent_b().public(),
    );
    std::fs::write(dir.path().join("node.toml"), config_text).unwrap();
    let config = NodeManagerConfig::load(&dir.path().join("node.toml")).unwrap();
    let (running, shutdown) = within(node::daemon::run::start(config)).await.unwrap();
    Node {
        _dir: dir,
        key,
        running,
        shutdown: Box::pin(shutdown),
    }
}

impl Node {
    async fn client(&self, key: &SecretKey, plc: &TestFederation) -> OverlayHandle {
        let addr = self.running.overlay.listen_addrs().await.unwrap()[0].clone();
        principal_overlay(key, plc, addr).await
    }

    fn ticket(&self, issuer: &SecretKey, holder: &PublicKey, slice: &str) -> Ticket {
        let now = unix_now();
        let spec = TicketSpec {
            federation: "plc".into(),
            node: self.key.public(),
            slice: slice.into(),
            kind: SliceKind::Regular,
            resources: Resources {
                cpu_millis: 100,
                memory_bytes: 64 << 20,
                disk_bytes: 0,
                egress_kbps: 0,
                ports: 0,
            },
            window: Window::new(now - 5, now + 600),
            holder: *holder,
            operations: BTreeSet::from([Operation::Redeem]),
            net: Default::default(),
        };
        Ticket::mint(issuer, &spec).unwrap()
    }

    async fn redeem(&self, client: &OverlayHandle, ticket: &Ticket) -> Result<Lease, Rejection> {
        let request = NodeRequest::Redeem {
            ticket: TicketBytes(ticket.to_bytes().unwrap()),
            until: None,
        };
        match within(client.request::<NodeProtocol>(&self.key.public(), request, WAIT)).await {
            Ok(NodeResponse::Lease(lease)) => Ok(lease.verify_by(&self.key.public()).unwrap()),
            Ok(other) => panic!("{other:?}"),
            Err(OverlayError::Rejected(reply)) => Err(reply.reason),
            Err(e) => panic!("{e}"),
        }
    }

    async fn exec(&self, client: &OverlayHandle, lease: &Lease) -> Result<(), Rejection> {
        let request = NodeRequest::Exec {
            lease_id: lease.lease_id.clone(),
            argv: vec!["hostname".into()],
            stdin: vec![],
            timeout_ms: 1000,
        };
        match within(client.request::<NodeProtocol>(&self.key.public(), request, WAIT)).await {
            Ok(NodeResponse::Exec(_)) => Ok(()),
            Ok(other) => panic!("{other:?}"),
            Err(OverlayError::Rejected(reply)) => Err(reply.reason),
            Err(e) => panic!("{e}"),
        }
    }

    /// The caller's status (once the node has built its first ad).
    async fn status(&self, client: &OverlayHandle) -> NodeStatus {
        within(async {
            loop {
                let request = NodeRequest::Status;
                match client
                    .request::<NodeProtocol>(&self.key.public(), request, WAIT)
                    .await
                {
                    Ok(NodeResponse::Status(status)) => return *status,
                    Ok(other) => panic!("{other:?}"),
                    Err(OverlayError::Rejected(reply)) if reply.reason.code() == "unavailable" => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await
    }

    fn live(&self, lease: &Lease) -> bool {
        let ledger = self.running.state.service.ledger();
        ledger.get(&lease.lease_id).unwrap().is_some()
    }

    /// Waits until none of `leases` is live; returns how long that took.
    async fn ended(&self, leases: &[&Lease], since: Instant) -> Duration {
        within(async {
            while leases.iter().any(|l| self.live(l)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        since.elapsed()
    }
}

/// The refusal's rule and sentence (`Rejection::Policy`).
fn policy(refusal: Result<impl std::fmt::Debug, Rejection>) -> (String, String) {
    match refusal {
        Err(Rejection::Policy { rule, detail }) => (rule, detail),
        other => panic!("expected a policy refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_end_leases_and_refuse_redeems_naming_the_list() {
    let mut plc = TestFederation::new("plc", 100);
    let node = start_node(&mut plc, "", &[]).await;
    let (alice, bob) = (test_key(50), test_key(51));
    let alice_client = node.client(&alice, &plc).await;
    let bob_client = node.client(&bob, &plc).await;

    let alice_1 = node
        .redeem(
            &alice_client,
            &node.ticket(&agent_a(), &alice.public(), "p_a1"),
        )
        .await
        .unwrap();
    let alice_2 = node
        .redeem(
            &alice_client,
            &node.ticket(&agent_b(), &alice.public(), "p_a2"),
        )
        .await
        .unwrap();
    let bob_by_b = node
        .redeem(&bob_client, &node.ticket(&agent_b(), &bob.public(), "p_b1"))
        .await
        .unwrap();
    let bob_ticket = node.ticket(&agent_a(), &bob.public(), "p_b2");
    let bob_by_ticket = node.redeem(&bob_client, &bob_ticket).await.unwrap();
    assert!(node.exec(&alice_client, &alice_1).await.is_ok());

    // v1 revokes alice: both her leases end, bob's stay.
    let v1 = plc.authority.revoke(&[], &[alice.public()], unix_now());
    let started = Instant::now();
    let verdict = within(bob_client.offer_revocation(&node.key.public(), v1.clone(), WAIT))
        .await
        .unwrap();
    assert_eq!(
        verdict,
        RevocationVerdict::Applied {
            federation: "plc".into(),
            version: 1
        }
    );
    let took = node.ended(&[&alice_1, &alice_2], started).await;
    println!(
        "principal revoked: her 2 leases ended at the node {took:?} after the list was handed over"
    );
    assert!(node.live(&bob_by_b) && node.live(&bob_by_ticket));
    let (rule, detail) = policy(node.exec(&alice_client, &alice_1).await);
    assert_eq!(rule, "lease_ended");
    assert!(
        detail.contains("ended: principal revoked by \"plc\" list v1"),
        "{detail}"
    );
    // Her status lists both as ended, with the reason; bob's shows nothing ended.
    let status = node.status(&alice_client).await;
    assert!(status.leases.is_empty());
    let mut ended: Vec<&str> = status.ended.iter().map(|e| e.lease_id.as_str()).collect();
    ended.sort_unstable();
    let mut expected = [alice_1.lease_id.as_str(), alice_2.lease_id.as_str()];
    expected.sort_unstable();
    assert_eq!(ended, expected);
    assert!(
        status.ended[0]
            .reason
            .starts_with("principal revoked by \"plc\" list v1 (issued at "),
        "{:?}",
        status.ended
    );
    let bobs = node.status(&bob_client).await;
    assert!(bobs.ended.is_empty() && bobs.leases.len() == 2);
    let (rule, detail) = policy(
        node.redeem(
            &alice_client,
            &node.ticket(&agent_a(), &alice.public(), "p_a3"),
        )
        .await,
    );
    assert_eq!(rule, "revoked_principal");
    assert!(
        detail.contains(&alice.public().short())
            && detail.contains("\"plc\"'s revocation list v1 (issued at"),
        "{detail}"
    );

    // v2 revokes agent B and bob's ticket by agent A: both of bob's leases end; his tickets
    // from B and that ticket are refused; a fresh ticket from A is not.
    let v2 = plc.authority.revoke_with(
        &Revoke {
            keys: vec![agent_b().public()],
            tickets: vec![bob_ticket.id()],
            ..Revoke::default()
        },
        unix_now(),
    );
    let started = Instant::now();
    within(bob_client.offer_revocation(&node.key.public(), v2, WAIT))
        .await
        .unwrap();
    let took = node.ended(&[&bob_by_b, &bob_by_ticket], started).await;
    println!(
        "agent and ticket revoked: 2 leases ended at the node {took:?} after the list was handed over"
    );
    let (rule, detail) = policy(node.exec(&bob_client, &bob_by_b).await);
    assert_eq!(rule, "lease_ended");
    assert!(
        detail.contains("issuing agent revoked by \"plc\" list v2"),
        "{detail}"
    );
    let (rule, _) = policy(
        node.redeem(&bob_client, &node.ticket(&agent_b(), &bob.public(), "p_b3"))
            .await,
    );
    assert_eq!(rule, "revoked_agent");
    let (rule, detail) = policy(node.redeem(&bob_client, &bob_ticket).await);
    assert_eq!(rule, "revoked_ticket");
    assert!(detail.contains(&bob_ticket.id().short()), "{detail}");
    let bob_again = node
        .redeem(&bob_client, &node.ticket(&agent_a(), &bob.public(), "p_b4"))
        .await
        .unwrap();

    // v3 revokes the node's delegation to agent A (signed before now): A's new tickets are
    // refused; the live lease is not ended (delegations refuse redeems only).
    let v3 = plc.authority.revoke_with(
        &Revoke {
            delegations: vec![RevokedDelegation {
                node: node.key.public(),
                agent: agent_a().public(),
                issued_until: unix_now(),
            }],
            ..Revoke::default()
        },
        unix_now(),
    );
    within(bob_client.offer_revocation(&node.key.public(), v3, WAIT))
        .await
        .unwrap();
    let (rule, detail) = policy(
        node.redeem(&bob_client, &node.ticket(&agent_a(), &bob.public(), "p_b5"))
            .await,
    );
    assert_eq!(rule, "revoked_delegation");
    assert!(detail.contains("list v3"), "{detail}");
    assert!(node.live(&bob_again));

    // The older v1 again: ignored, v3 stays.
    let verdict = within(bob_client.offer_revocation(&node.key.public(), v1, WAIT))
        .await
        .unwrap();
    assert_eq!(
        verdict,
        RevocationVerdict::Stale {
            federation: "plc".into(),
            version: 1,
            have: 3
        }
    );
    assert!(node.live(&bob_again));

    alice_client.shutdown().await;
    bob_client.shutdown().await;
    within(node.shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_named_in_the_config_applies_from_the_start() {
    let mut plc = TestFederation::new("plc", 100);
    let alice = test_key(50);
    let list = plc.authority.revoke(&[], &[alice.public()], unix_now());
    let node = start_node(
        &mut plc,
        "revocations = [\"plc-revoked.cbor\"]\nend_revoked_leases = false",
        &[("plc-revoked.cbor", list.to_bytes())],
    )
    .await;
    let client = node.client(&alice, &plc).await;
    let (rule, _) = policy(
        node.redeem(&client, &node.ticket(&agent_a(), &alice.public(), "p_c1"))
            .await,
    );
    assert_eq!(rule, "revoked_principal");
    client.shutdown().await;
    within(node.shutdown).await;
}
