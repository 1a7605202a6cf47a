//! Delegations over running node managers (loopback TCP, no isolation: every check here
//! happens before a sliver would be made):
//! - scoped: a ticket outside its issuer's delegation scope, minted by a library minter that
//!   ignores the scope, is refused at redeem naming the delegation; one inside is redeemed;
//! - renewed: a short-lived delegation is re-signed before its end, the ad carries the new
//!   one, and redeems keep working past the original end;
//! - reloaded: the `nodemgr` process takes an edited node.toml on `nodemgr reload` and on
//!   SIGHUP (an agent added can redeem at once; one removed cannot, while its live lease
//!   runs on), and refuses an edit of a setting that cannot change live, naming it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use capability_schema::identity::{SecretKey, test_key};
use capability_schema::protocol::{NodeRequest, NodeResponse, TicketBytes};
use capability_schema::ticket::{Operation, Ticket, TicketSpec, Window};
use capability_schema::{Lease, PublicKey, ResourceAd, Resources, SliceKind, codec};
use common::principal_overlay;
use federation::overlay::NodeProtocol;
use federation::testing::TestFederation;
use federation::{OverlayError, OverlayHandle, unix_now};
use node::daemon::config::NodeManagerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODEMGR: &str = env!("CARGO_BIN_EXE_nodemgr");
const WAIT: Duration = Duration::from_secs(30);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

fn small() -> Resources {
    Resources {
        cpu_millis: 100,
        memory_bytes: 64 << 20,
        disk_bytes: 64 << 20,
        egress_kbps: 1000,
        ports: 0,
    }
}

/// A ticket minted by `agent`'s library minter, which knows nothing of delegation scopes.
fn ticket(
    agent: &SecretKey,
    node: &PublicKey,
    holder: &PublicKey,
    slice: &str,
    kind: SliceKind,
) -> NodeRequest {
    let now = unix_now();
    let spec = TicketSpec {
        federation: "plc".into(),
        node: *node,
        slice: slice.into(),
        kind,
        resources: small(),
        window: Window::new(now - 5, now + 600),
        holder: *holder,
        operations: BTreeSet::from([Operation::Redeem, Operation::Renew]),
        net: Default::default(),
    };
    NodeRequest::Redeem {
        ticket: TicketBytes(Ticket::mint(agent, &spec).unwrap().to_bytes().unwrap()),
        until: None,
    }
}

fn admin(capabilities: &[&str], host_pid_view: bool) -> SliceKind {
    SliceKind::Admin {
        capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        host_pid_view,
    }
}

/// Redeems; the lease, or the refusal's check and sentence.
async fn redeem(
    client: &OverlayHandle,
    node: &PublicKey,
    request: NodeRequest,
) -> Result<Lease, (String, String)> {
    match within(client.request::<NodeProtocol>(node, request, WAIT)).await {
        Ok(NodeResponse::Lease(lease)) => Ok(lease.verify_by(node).unwrap()),
        Err(OverlayError::Rejected(reply)) => {
            let check = match &reply.reason {
                capability_schema::Rejection::Ticket { check, .. } => check.clone(),
                other => other.code().to_owned(),
            };
            Err((check, reply.to_string()))
        }
        other => panic!("{other:?}"),
    }
}

/// A node's files: key, membership certificate, node.toml with `extra` settings and
/// `delegations` sections.
fn write_node(
    dir: &Path,
    plc: &mut TestFederation,
    key: &SecretKey,
    extra: &str,
    delegations: &str,
) {
    key.save(&dir.join("node.key")).unwrap();
    let cert = plc.node_with_key(key.clone(), "princeton").cert;
    std::fs::write(dir.join("membership.cbor"), codec::encode(&cert)).unwrap();
    write_config(dir, plc, extra, delegations);
}

fn write_config(dir: &Path, plc: &TestFederation, extra: &str, delegations: &str) {
    let text = format!(
        "federation = \"plc\"\nisolation = \"memory\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n\
         capacity = \"cpu=4 cores,memory=4GiB,disk=10GiB,egress=100Mbit\"\n{extra}\n\
         [[trust]]\nname = \"plc\"\nauthority = \"{}\"\n{delegations}",
        plc.authority.public()
    );
    std::fs::write(dir.join("node.toml"), text).unwrap();
}

fn delegation(agent: &SecretKey, extra: &str) -> String {
    format!(
        "[[delegations]]\nagent = \"{}\"\nshare = \"cpu=2 cores,memory=2GiB,disk=5GiB,egress=50Mbit\"\n{extra}",
        agent.public()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_outside_its_delegation_scope_is_refused_at_redeem() {
    let dir = tempfile::tempdir().unwrap();
    let mut plc = TestFederation::new("plc", 100);
    let node_key = SecretKey::generate();
    let node = node_key.public();
    let (regular_agent, admin_agent, alice) = (test_key(20), test_key(21), test_key(50));
    write_node(
        dir.path(),
        &mut plc,
        &node_key,
        "http = \"off\"\nad_interval_secs = 1\nad_ttl_secs = 30",
        &format!(
            "{}{}",
            delegation(&regular_agent, ""),
            delegation(
                &admin_agent,
                "kinds = [\"regular\", \"admin\"]\ncapabilities = [\"CAP_NET_ADMIN\"]\n"
            )
        ),
    );
    let config = NodeManagerConfig::load(&dir.path().join("node.toml")).unwrap();
    let (running, shutdown) = within(node::daemon::run::start(config)).await.unwrap();
    let node_addr = running.overlay.listen_addrs().await.unwrap()[0].clone();
    let client = principal_overlay(&alice, &plc, node_addr).await;

    // The ad says what each agent may mint.
    let ad = running.state.ad.read().unwrap().clone().unwrap();
    let scopes: Vec<(PublicKey, String)> = ad
        .peek_unverified()
        .unwrap()
        .delegations
        .iter()
        .map(|d| d.verify_by(&node).unwrap())
        .map(|d| (d.agent, d.scope.to_string()))
        .collect();
    assert!(
        scopes.contains(&(regular_agent.public(), "regular slices".into())),
        "{scopes:?}"
    );
    assert!(
        scopes.contains(&(
            admin_agent.public(),
            "regular and admin slices (CAP_NET_ADMIN)".into()
        )),
        "{scopes:?}"
    );

    // A regular-only delegation: an admin ticket with CAP_SYS_ADMIN and host pids is refused,
    // naming the delegation, what it allows and what the ticket asked.
    let (check, sentence) = redeem(
        &client,
        &node,
        ticket(
            &regular_agent,
            &node,
            &alice.public(),
            "pl_escape",
            admin(&["CAP_SYS_ADMIN"], true),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(check, "outside_delegation_scope", "{sentence}");
    for part in [
        regular_agent.public().short().as_str(),
        "allows regular slices",
        "admin[CAP_SYS_ADMIN]+host-pids",
        "admin slices are not delegated",
    ] {
        assert!(sentence.contains(part), "{part:?} not in {sentence}");
    }
    // Nothing was spent or committed by the refusal.
    assert!(running.state.service.ledger().leases().unwrap().is_empty());
    // Within its scope, the same agent's ticket is redeemed.
    let lease = redeem(
        &client,
        &node,
        ticket(
            &regular_agent,
            &node,
            &alice.public(),
            "pl_regular",
            SliceKind::Regular,
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        (lease.agent, lease.kind),
        (regular_agent.public(), SliceKind::Regular)
    );

    // An admin delegation: the capability it names is redeemed, anything more is refused.
    let lease = redeem(
        &client,
        &node,
        ticket(
            &admin_agent,
            &node,
            &alice.public(),
            "pl_admin",
            admin(&["CAP_NET_ADMIN"], false),
        ),
    )
    .await
    .unwrap();
    assert_eq!(lease.kind, admin(&["CAP_NET_ADMIN"], false));
    for (slice, kind, says) in [
        (
            "pl_pids",
            admin(&["CAP_NET_ADMIN"], true),
            "the host pid view is not delegated",
        ),
        (
            "pl_sysadmin",
            admin(&["CAP_SYS_ADMIN"], false),
            "CAP_SYS_ADMIN not delegated",
        ),
    ] {
        let (check, sentence) = redeem(
            &client,
            &node,
            ticket(&admin_agent, &node, &alice.public(), slice, kind),
        )
        .await
        .unwrap_err();
        assert_eq!(check, "outside_delegation_scope", "{sentence}");
        assert!(
            sentence.contains(says)
                && sentence.contains("allows regular and admin slices (CAP_NET_ADMIN)"),
            "{sentence}"
        );
    }
    assert_eq!(running.state.service.ledger().leases().unwrap().len(), 2);

    within(shutdown).await;
    client.shutdown().await;
}

/// The delegation to `agent` in the node's latest ad.
fn delegation_in(
    ad: &ResourceAd,
    node: &PublicKey,
    agent: &PublicKey,
) -> capability_schema::Delegation {
    ad.delegations
        .iter()
        .map(|d| d.verify_by(node).unwrap())
        .find(|d| d.agent == *agent)
        .expect("a delegation to the agent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_delegation_is_renewed_and_redeems_work_past_its_first_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut plc = TestFederation::new("plc", 100);
    let node_key = SecretKey::generate();
    let node = node_key.public();
    let (agent, alice) = (test_key(20), test_key(50));
    write_node(
        dir.path(),
        &mut plc,
        &node_key,
        "http = \"off\"\nad_interval_secs = 1\nad_ttl_secs = 5",
        &delegation(&agent, "lifetime_secs = 6\n"),
    );
    let config = NodeManagerConfig::load(&dir.path().join("node.toml")).unwrap();
    let (running, shutdown) = within(node::daemon::run::start(config)).await.unwrap();
    let node_addr = running.overlay.listen_addrs().await.unwrap()[0].clone();
    let client = principal_overlay(&alice, &plc, node_addr).await;
    let mut ads = client.ads();

    let first = {
        let ad = running.state.ad.read().unwrap().clone().unwrap();
        delegation_in(&ad.peek_unverified().unwrap(), &node, &agent.public())
    };
    assert_eq!(first.not_after - first.issued_at, 6);
    let lease = redeem(
        &client,
        &node,
        ticket(
            &agent,
            &node,
            &alice.public(),
            "pl_before",
            SliceKind::Regular,
        ),
    )
    .await
    .unwrap();

    // Past the first delegation's end, a peer's copy of the ad carries a renewed one.
    let renewed = within(async {
        loop {
            let event = ads.recv().await.unwrap();
            if event.ad.node != node || unix_now() <= first.not_after + 1 {
                continue;
            }
            let d = delegation_in(&event.ad, &node, &agent.public());
            if d.issued_at > first.issued_at {
                break d;
            }
        }
    })
    .await;
    assert!(
        renewed.not_after > first.not_after && renewed.not_after > unix_now(),
        "{renewed:?}"
    );
    assert_eq!(renewed.not_after - renewed.issued_at, 6);
    assert!(unix_now() > first.not_after);
    let after = redeem(
        &client,
        &node,
        ticket(
            &agent,
            &node,
            &alice.public(),
            "pl_after",
            SliceKind::Regular,
        ),
    )
    .await
    .unwrap();
    assert_eq!(after.agent, agent.public());
    // The lease redeemed under the first signature runs on.
    let status = within(client.request::<NodeProtocol>(&node, NodeRequest::Status, WAIT))
        .await
        .unwrap();
    let NodeResponse::Status(status) = status else {
        panic!("{status:?}")
    };
    let live: Vec<String> = status
        .leases
        .iter()
        .map(|l| l.verify_by(&node).unwrap().lease_id)
        .collect();
    assert!(
        live.contains(&lease.lease_id) && live.contains(&after.lease_id),
        "{live:?}"
    );

    within(shutdown).await;
    client.shutdown().await;
}

/// The `nodemgr run` process, killed on drop if the test fails first.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn http(addr: &str, method: &str, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await.ok()?;
    Some(out)
}

fn nodemgr(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(NODEMGR)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodemgr_reload_and_sighup_change_delegations_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut plc = TestFederation::new("plc", 100);
    let node_key = SecretKey::generate();
    let node = node_key.public();
    let (old_agent, new_agent, alice) = (test_key(20), test_key(21), test_key(50));
    let http_addr = format!("127.0.0.1:{}", free_port());
    // A long heartbeat, so an ad soon after a reload is the reload's own.
    let settings = format!("http = \"{http_addr}\"\nad_interval_secs = 30\nad_ttl_secs = 90");
    write_node(
        dir.path(),
        &mut plc,
        &node_key,
        &settings,
        &delegation(&old_agent, ""),
    );
    let daemon = Daemon(
        Command::new(NODEMGR)
            .args(["run", "--config", "node.toml"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.0.id()).unwrap());
    // Its ad, once it serves, names where it listens.
    let status = within(async {
        loop {
            if let Some(body) = http(&http_addr, "GET", "/status").await
                && body.contains("/ip4/127.0.0.1/tcp/")
            {
                break body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let json: serde_json::Value =
        serde_json::from_str(status.split_once("\r\n\r\n").unwrap().1).unwrap();
    let node_addr = json["addresses"][0].as_str().unwrap().parse().unwrap();
    let client = principal_overlay(&alice, &plc, node_addr).await;
    let mut ads = client.ads();

    let old_lease = redeem(
        &client,
        &node,
        ticket(
            &old_agent,
            &node,
            &alice.public(),
            "pl_old",
            SliceKind::Regular,
        ),
    )
    .await
    .unwrap();
    let (check, _) = redeem(
        &client,
        &node,
        ticket(
            &new_agent,
            &node,
            &alice.public(),
            "pl_new",
            SliceKind::Regular,
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(check, "unknown_issuer");

    // `nodemgr reload`: the new agent is delegated to at once, and says so.
    write_config(
        dir.path(),
        &plc,
        &settings,
        &format!(
            "{}{}",
            delegation(&old_agent, ""),
            delegation(&new_agent, "")
        ),
    );
    let reloaded = std::time::Instant::now();
    let out = nodemgr(dir.path(), &["reload", "--config", "node.toml"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("delegations: 1 added") && said.contains(&new_agent.public().short()),
        "{said}"
    );
    // The new ad goes out at once, not at the next heartbeat.
    within(async {
        loop {
            let event = ads.recv().await.unwrap();
            if event.ad.node == node && event.ad.share_of(&new_agent.public()).is_some() {
                break;
            }
        }
    })
    .await;
    let took = reloaded.elapsed();
    eprintln!("reload to the new ad at a peer: {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let new_lease = redeem(
        &client,
        &node,
        ticket(
            &new_agent,
            &node,
            &alice.public(),
            "pl_new2",
            SliceKind::Regular,
        ),
    )
    .await
    .unwrap();
    assert_eq!(new_lease.agent, new_agent.public());
    let listed = nodemgr(dir.path(), &["delegations", "--config", "node.toml"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(&new_agent.public().to_string()) && listed.contains("regular slices"),
        "{listed}"
    );

    // A setting that cannot change live: refused, naming it; the delegations stay.
    write_config(
        dir.path(),
        &plc,
        &format!("{settings}\nstate_dir = \"elsewhere\""),
        &delegation(&new_agent, ""),
    );
    let out = nodemgr(dir.path(), &["reload", "--config", "node.toml"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("state_dir") && said.contains("cannot change live"),
        "{said}"
    );
    let (_, sentence) = redeem(
        &client,
        &node,
        ticket(
            &old_agent,
            &node,
            &alice.public(),
            "pl_old_dup",
            SliceKind::Regular,
        ),
    )
    .await
    .map(|_| ((), String::new()))
    .unwrap_or_else(|e| ((), e.1));
    assert!(
        sentence.is_empty(),
        "the old agent is still delegated to: {sentence}"
    );

    // SIGHUP with the old agent removed: its new redeems are refused, its live lease runs on.
    write_config(dir.path(), &plc, &settings, &delegation(&new_agent, ""));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    within(async {
        loop {
            let listed = http(&http_addr, "GET", "/delegations")
                .await
                .unwrap_or_default();
            if !listed.contains(&old_agent.public().to_string()) && listed.contains("200 OK") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let (check, sentence) = redeem(
        &client,
        &node,
        ticket(
            &old_agent,
            &node,
            &alice.public(),
            "pl_old_again",
            SliceKind::Regular,
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(check, "unknown_issuer", "{sentence}");
    assert!(
        sentence.contains("no delegation") && sentence.contains(&old_agent.public().short()),
        "{sentence}"
    );
    let leases = http(&http_addr, "GET", "/leases").await.unwrap();
    assert!(leases.contains(&old_lease.lease_id), "{leases}");
    let exec = NodeRequest::Exec {
        lease_id: old_lease.lease_id.clone(),
        argv: vec!["true".into()],
        stdin: vec![],
        timeout_ms: 1000,
    };
    assert!(matches!(
        within(client.request::<NodeProtocol>(&node, exec, WAIT)).await,
        Ok(NodeResponse::Exec(_))
    ));

    client.shutdown().await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    drop(daemon);
}
