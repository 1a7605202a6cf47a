//! The node manager with real slivers (root; skipped otherwise unless CI): a sliver's CPU and
//! memory use reach the node's signed ad, and `/slivers` and `/metrics`; the disk watchdog
//! freezes a sliver written past its grant and says so on `/slivers`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use capability_schema::identity::{SecretKey, test_key};
use capability_schema::protocol::{NodeRequest, NodeResponse, TicketBytes};
use capability_schema::ticket::{Operation, Ticket, TicketSpec, Window};
use capability_schema::{Resources, SliceKind, codec};
use common::{principal_overlay, root_or_skip};
use federation::overlay::NodeProtocol;
use federation::testing::TestFederation;
use federation::unix_now;
use node::daemon::config::NodeManagerConfig;
use node::sliver::linux::LinuxHost;
use node::sliver::{NodeConfig, Slivers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

/// Destroys whatever slivers the daemon left (it leaves them running by design), its shaping
/// device and cgroup parent, even when the test fails.
struct Cleanup {
    engine: NodeConfig,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        match LinuxHost::detect().map(|h| Slivers::open(h, self.engine.clone())) {
            Ok(Ok((slivers, _))) => {
                if let Err(e) = slivers.destroy_all() {
                    eprintln!("cleanup: {e}");
                }
                // The daemon made its own parent, `<node id>.node`, below the configured one.
                let (cgroups, parent) = (slivers.host().cgroups(), &self.engine.cgroup_parent);
                for own in cgroups.children(parent) {
                    let _ = cgroups.remove_parent(&format!("{parent}/{own}"));
                }
                let _ = cgroups.remove_parent(parent);
            }
            Ok(Err(e)) => eprintln!("cleanup: {e}"),
            Err(e) => eprintln!("cleanup: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliver_use_reaches_the_ad_and_http_and_the_watchdog_freezes_a_disk_hog() {
    if !root_or_skip() {
        return;
    }
    let r: u32 = rand::random();
    let tag = format!("{:04x}", r & 0xffff);
    let pool = Ipv4Addr::new(10, 150 + (r >> 16) as u8 % 40, (r >> 8) as u8, 0);
    let dir = tempfile::Builder::new()
        .prefix("pmdaemon-")
        .tempdir()
        .unwrap();
    let mut engine = NodeConfig::new(
        dir.path().join("state/slivers"),
        env!("CARGO_BIN_EXE_sliver-init"),
    );
    engine.cgroup_parent = format!("pmdu{tag}");
    engine.slots.ifname_prefix = format!("pd{tag}");
    engine.shaping.ifb = format!("pd{tag}ifb");
    engine.slots.pool = pool;
    engine.slots.pool_prefix = 24;
    let _cleanup = Cleanup {
        engine: engine.clone(),
    };

    let mut plc = TestFederation::new("plc", 100);
    let node_key = SecretKey::generate();
    let agent = test_key(20);
    let alice = test_key(50);
    node_key.save(&dir.path().join("node.key")).unwrap();
    let cert = plc.node_with_key(node_key.clone(), "princeton").cert;
    std::fs::write(dir.path().join("membership.cbor"), codec::encode(&cert)).unwrap();
    let config_text = format!(
        "federation = \"plc\"\nisolation = \"linux\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nhttp = \"127.0.0.1:0\"\n\
         capacity = \"cpu=2 cores,memory=2GiB,disk=10GiB,egress=100Mbit\"\nad_interval_secs = 1\nad_ttl_secs = 30\n\
         disk_check_secs = 1\ndisk_backing = \"directory\"\ncgroup_parent = \"{}\"\nifname_prefix = \"{}\"\naddress_pool = \"{pool}/24\"\nclaim_dir = \"claims\"\n\
         [[trust]]\nname = \"plc\"\nauthority = \"{}\"\n\
         [[delegations]]\nagent = \"{}\"\nshare = \"cpu=2 cores,memory=1GiB,disk=5GiB,egress=50Mbit\"\n",
        engine.cgroup_parent,
        engine.slots.ifname_prefix,
        plc.authority.public(),
        agent.public()
    );
    std::fs::write(dir.path().join("node.toml"), config_text).unwrap();
    let config = NodeManagerConfig::load(&dir.path().join("node.toml")).unwrap();
    let (running, shutdown) = within(node::daemon::run::start(config)).await.unwrap();

    let node_addr = running.overlay.listen_addrs().await.unwrap()[0].clone();
    let client = principal_overlay(&alice, &plc, node_addr).await;
    let mut ads = client.ads();

    let now = unix_now();
    let spec = TicketSpec {
        federation: "plc".into(),
        node: node_key.public(),
        slice: "princeton_usage".into(),
        kind: SliceKind::Regular,
        resources: Resources {
            cpu_millis: 500,
            memory_bytes: 128 << 20,
            disk_bytes: 2 << 20,
            egress_kbps: 1000,
        },
        window: Window::new(now - 5, now + 600),
        holder: alice.public(),
        operations: BTreeSet::from([Operation::Redeem]),
    };
    let ticket = Ticket::mint(&agent, &spec).unwrap().to_bytes().unwrap();
    let redeem = NodeRequest::Redeem {
        ticket: TicketBytes(ticket),
        until: None,
    };
    let lease = match within(client.request::<NodeProtocol>(&node_key.public(), redeem, WAIT))
        .await
        .unwrap()
    {
        NodeResponse::Lease(lease) => lease.verify_by(&node_key.public()).unwrap(),
        other => panic!("{other:?}"),
    };
    let exec = |script: &str| NodeRequest::Exec {
        lease_id: lease.lease_id.clone(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        stdin: vec![],
        timeout_ms: 10_000,
    };
    // A bounded CPU burn (0.6 s of spinning).
    let burn =
        exec("end=$(( $(date +%s%N) + 600000000 )); while [ $(date +%s%N) -lt $end ]; do :; done");
    match within(client.request::<NodeProtocol>(&node_key.public(), burn, WAIT))
        .await
        .unwrap()
    {
        NodeResponse::Exec(out) => assert_eq!(out.exit_code, 0, "{out:?}"),
        other => panic!("{other:?}"),
    }

    // The node's next ads carry the sliver's use.
    let usage = within(async {
        loop {
            let event = ads.recv().await.unwrap();
            if event.ad.node != node_key.public() {
                continue;
            }
            if let Some(u) = event
                .ad
                .measured
                .slivers
                .iter()
                .find(|s| s.slice == "princeton_usage" && s.cpu_time_ms >= 150)
            {
                break u.clone();
            }
        }
    })
    .await;
    eprintln!("in the ad: {usage:?}");
    assert!(usage.memory_bytes > 0, "{usage:?}");

    let http = running.http.unwrap();
    let slivers = http_get(http, "/slivers").await;
    assert!(
        slivers.contains("\"slice\":\"princeton_usage\"") && slivers.contains("\"cpu_time_ms\":"),
        "{slivers}"
    );
    let metrics = http_get(http, "/metrics").await;
    assert!(
        metrics.contains("planetmesh_sliver_cpu_seconds_total{sliver=\"princeton_usage\"}"),
        "{metrics}"
    );

    // Written past its 2 MiB grant: the watchdog freezes it within a check or two.
    match within(client.request::<NodeProtocol>(
        &node_key.public(),
        exec("head -c 3000000 /dev/zero > /root/blob"),
        WAIT,
    ))
    .await
    .unwrap()
    {
        NodeResponse::Exec(out) => assert_eq!(out.exit_code, 0, "{out:?}"),
        other => panic!("{other:?}"),
    }
    let frozen = within(async {
        loop {
            let slivers = http_get(http, "/slivers").await;
            if slivers.contains("\"frozen\":true") {
                break slivers;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    eprintln!("/slivers: {frozen}");
    assert!(
        frozen.contains("over disk limit: 2.9 MiB of 2.0 MiB"),
        "{frozen}"
    );
    let metrics = http_get(http, "/metrics").await;
    assert!(
        metrics.contains("planetmesh_sliver_frozen{sliver=\"princeton_usage\"} 1"),
        "{metrics}"
    );
    // Cleaning up through exec thaws it at the next check.
    match within(client.request::<NodeProtocol>(&node_key.public(), exec("rm /root/blob"), WAIT))
        .await
        .unwrap()
    {
        NodeResponse::Exec(out) => assert_eq!(out.exit_code, 0, "{out:?}"),
        other => panic!("{other:?}"),
    }
    within(async {
        loop {
            let slivers = http_get(http, "/slivers").await;
            if slivers.contains("\"frozen\":false") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    within(shutdown).await;
    client.shutdown().await;
    drop(running);
}
