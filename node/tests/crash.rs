//! Crash safety of the real daemon (root: real slivers). A client redeems tickets in a loop and
//! marks each sliver it got a lease for; the daemon is killed with SIGKILL mid-loop and
//! restarted. Then: every lease the client got an answer for is present and its sliver alive
//! and the same one (the mark is still there: re-adopted, not recreated); no sliver exists
//! without a lease; no ticket was spent twice.
//!
//! Needs root; skipped without root unless `CI` is set, in which case it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use capability_schema::identity::SecretKey;
use capability_schema::protocol::{NodeRequest, NodeResponse, TicketBytes};
use capability_schema::ticket::{Operation, Ticket, TicketSpec, Window};
use capability_schema::{Resources, SliceKind, codec};
use federation::overlay::NodeProtocol;
use federation::testing::TestFederation;
use federation::{Overlay, OverlayConfig, OverlayError, OverlayHandle, TrustStore, unix_now};

const WAIT: Duration = Duration::from_secs(20);

fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "this test needs root, and CI is set"
    );
    eprintln!("skipped: needs root");
    false
}

/// The daemon process; killed and the node wiped when dropped, even if the test fails.
struct Daemon {
    child: Option<Child>,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(config: &std::path::Path, log_path: &std::path::Path) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_nodemgr"))
            .args(["run", "--config"])
            .arg(config)
            .env("PLANETMESH_SLIVER_INIT", env!("CARGO_BIN_EXE_sliver-init"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            config: config.to_owned(),
            log: log_path.to_owned(),
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("nodemgr log (last lines):");
            for line in tail.into_iter().rev() {
                eprintln!("  {line}");
            }
        }
        let status = Command::new(env!("CARGO_BIN_EXE_nodemgr"))
            .args(["wipe", "--config"])
            .arg(&self.config)
            .env("PLANETMESH_SLIVER_INIT", env!("CARGO_BIN_EXE_sliver-init"))
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!(
                "warning: nodemgr wipe failed; slivers of {} may remain",
                self.config.display()
            );
        }
        // The engine removes each sliver's cgroup; the test's parent directories go here.
        let parent = std::fs::read_to_string(&self.config).ok().and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("cgroup_parent = \"")
                    .map(|v| v.trim_end_matches('"').to_owned())
            })
        });
        if let (Some(name), Ok(hierarchies)) = (parent, std::fs::read_dir("/sys/fs/cgroup")) {
            for h in hierarchies.flatten() {
                let _ = std::fs::remove_dir(h.path().join(&name));
            }
        }
    }
}

async fn request(
    client: &OverlayHandle,
    node: &capability_schema::PublicKey,
    req: NodeRequest,
) -> Result<NodeResponse, OverlayError> {
    client
        .request::<NodeProtocol>(node, req, Duration::from_secs(10))
        .await
}

#[test]
fn kill_9_mid_redeem_loses_nothing_and_spends_nothing_twice() {
    if !root_or_skip() {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario());
}

async fn scenario() {
    let dir = tempfile::tempdir().unwrap();
    let mut plc = TestFederation::new("plc", 100);
    let node_key = SecretKey::generate();
    let agent = SecretKey::generate();
    let alice = SecretKey::generate();
    node_key.save(&dir.path().join("node.key")).unwrap();
    std::fs::write(
        dir.path().join("membership.cbor"),
        codec::encode(&plc.node_with_key(node_key.clone(), "crash").cert),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tag: u32 = rand::random::<u32>() % 10_000;
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "federation = \"plc\"\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\nhttp = \"\"\n\
             capacity = \"cpu=100 cores,memory=100GiB,disk=100GiB,egress=1000Mbit\"\n\
             cgroup_parent = \"pmcrash{tag}\"\nifname_prefix = \"pc{tag}\"\naddress_pool = \"10.197.0.0/16\"\n\
             [[trust]]\nname = \"plc\"\nauthority = \"{}\"\n\
             [[delegations]]\nagent = \"{}\"\nshare = \"cpu=100 cores,memory=100GiB,disk=100GiB,egress=1000Mbit\"\n",
            plc.authority.public(),
            agent.public()
        ),
    )
    .unwrap();
    let log = dir.path().join("nodemgr.log");
    let mut daemon = Daemon::start(&config, &log);

    let mut trust = TrustStore::new();
    plc.trust(&mut trust);
    let node_addr: federation::overlay::Multiaddr = format!(
        "/ip4/127.0.0.1/tcp/{port}/p2p/{}",
        federation::overlay::peer_id(&node_key.public())
    )
    .parse()
    .unwrap();
    let client = Overlay::start(
        &alice,
        OverlayConfig::loopback(),
        Arc::new(RwLock::new(trust)),
    )
    .await
    .unwrap();
    let connect = |client: OverlayHandle, addr: federation::overlay::Multiaddr| async move {
        let deadline = Instant::now() + WAIT;
        loop {
            if client.dial(addr.clone()).await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "the daemon did not come up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    connect(client.clone(), node_addr.clone()).await;

    let now = unix_now();
    let tickets: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            let spec = TicketSpec {
                federation: "plc".into(),
                node: node_key.public(),
                slice: format!("crash_s{i}"),
                kind: SliceKind::Regular,
                resources: Resources {
                    cpu_millis: 10,
                    memory_bytes: 16 << 20,
                    disk_bytes: 1 << 20,
                    egress_kbps: 100,
                    ports: 0,
                },
                window: Window::new(now - 5, now + 3600),
                holder: alice.public(),
                operations: BTreeSet::from([Operation::Redeem, Operation::Renew]),
                net: Default::default(),
            };
            Ticket::mint(&agent, &spec).unwrap().to_bytes().unwrap()
        })
        .collect();

    // Redeem in a loop; kill -9 after the fifth answer, while redeems are still being sent.
    let mut answered: BTreeMap<usize, String> = BTreeMap::new();
    let node = node_key.public();
    for (i, bytes) in tickets.iter().enumerate() {
        if answered.len() == 5 {
            // The next redeem is in flight when the daemon dies.
            let client = client.clone();
            let bytes = bytes.clone();
            let in_flight = tokio::spawn(async move {
                request(
                    &client,
                    &node,
                    NodeRequest::Redeem {
                        ticket: TicketBytes(bytes),
                        until: None,
                    },
                )
                .await
            });
            tokio::time::sleep(Duration::from_millis(3)).await;
            daemon.kill9();
            if let Ok(Ok(NodeResponse::Lease(lease))) = in_flight.await {
                let lease = lease.verify().unwrap();
                answered.insert(i, lease.lease_id);
            }
            break;
        }
        match request(
            &client,
            &node,
            NodeRequest::Redeem {
                ticket: TicketBytes(bytes.clone()),
                until: None,
            },
        )
        .await
        {
            Ok(NodeResponse::Lease(lease)) => {
                let lease = lease.verify_by(&node).unwrap();
                // Mark the sliver, to tell a re-adopted sliver from a recreated one.
                let mark = NodeRequest::Exec {
                    lease_id: lease.lease_id.clone(),
                    argv: vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        format!("echo {} > /tmp/mark", lease.lease_id),
                    ],
                    stdin: vec![],
                    timeout_ms: 5000,
                };
                assert!(
                    matches!(request(&client, &node, mark).await, Ok(NodeResponse::Exec(out)) if out.exit_code == 0)
                );
                answered.insert(i, lease.lease_id);
            }
            other => panic!("redeem {i} before the crash: {other:?}"),
        }
    }
    assert!(answered.len() >= 5);

    // Restart and check.
    let mut daemon = Daemon::start(&config, &log);
    connect(client.clone(), node_addr).await;
    let status = match request(&client, &node, NodeRequest::Status).await {
        Ok(NodeResponse::Status(status)) => status,
        // The first ad may not be built yet; retry once after a beat.
        _ => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            match request(&client, &node, NodeRequest::Status).await {
                Ok(NodeResponse::Status(status)) => status,
                other => panic!("status after restart: {other:?}"),
            }
        }
    };
    let held: BTreeMap<String, String> = status
        .leases
        .iter()
        .map(|l| l.verify().unwrap())
        .map(|l| (l.lease_id.clone(), l.ticket_id.clone()))
        .collect();
    for (i, lease_id) in &answered {
        assert!(
            held.contains_key(lease_id),
            "lease {lease_id} (ticket {i}) lost in the crash"
        );
        let read = NodeRequest::Exec {
            lease_id: lease_id.clone(),
            argv: vec!["/bin/cat".into(), "/tmp/mark".into()],
            stdin: vec![],
            timeout_ms: 5000,
        };
        match request(&client, &node, read).await {
            Ok(NodeResponse::Exec(out)) if *i < 5 => assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                lease_id,
                "sliver was recreated"
            ),
            Ok(NodeResponse::Exec(_)) => {}
            other => panic!("sliver of lease {lease_id} not alive: {other:?}"),
        }
    }
    // No lease without its answer being possible, no ticket spent twice: every ticket held once.
    let ticket_ids: BTreeSet<&String> = held.values().collect();
    assert_eq!(ticket_ids.len(), held.len(), "a ticket backs two leases");
    // Re-redeeming answered tickets is refused; the one in flight either was completed (refused
    // now) or rolled back (succeeds now), never both.
    for (i, bytes) in tickets.iter().enumerate().take(answered.len() + 1) {
        let again = request(
            &client,
            &node,
            NodeRequest::Redeem {
                ticket: TicketBytes(bytes.clone()),
                until: None,
            },
        )
        .await;
        match again {
            Err(OverlayError::Rejected(reply)) => assert!(
                matches!(reply.reason.code(), "already_spent" | "policy"),
                "ticket {i}: {reply}"
            ),
            Ok(NodeResponse::Lease(_)) => {
                assert!(!answered.contains_key(&i), "ticket {i} spent twice")
            }
            other => panic!("ticket {i}: {other:?}"),
        }
    }
    // No sliver without a lease: the node's veths are exactly its leases.
    let links = Command::new("ip")
        .args(["-o", "link", "show", "type", "veth"])
        .output()
        .unwrap();
    let ours = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter(|l| l.contains(&format!(": pc{tag}")))
        .count();
    let status = match request(&client, &node, NodeRequest::Status).await {
        Ok(NodeResponse::Status(s)) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        ours,
        status.leases.len(),
        "slivers on the host vs leases in the ledger"
    );
    client.shutdown().await;
    daemon.kill9();
    drop(daemon);
}
