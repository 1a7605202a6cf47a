//! Redeem end to end over libp2p on loopback: a client sends a ticket, the node verifies it,
//! admits it, creates the sliver, makes the lease durable and answers with the signed lease.
//!
//! Prints p50/p99 latency of sequential redeems and the sustained rate of concurrent ones.
//! Targets: p50 ≤ 10 ms, ≥ 100 redeems/s. As root the node makes real slivers (`linux`
//! isolation; every sliver is released at the end); otherwise slivers are in memory, which the
//! output says. `REDEEM_BENCH_ISOLATION=memory|linux` forces one.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use capability_schema::identity::SecretKey;
use capability_schema::protocol::{NodeRequest, NodeResponse, TicketBytes};
use capability_schema::ticket::{Operation, Ticket, TicketSpec, Window};
use capability_schema::{Resources, SliceKind, codec};
use federation::overlay::NodeProtocol;
use federation::testing::TestFederation;
use federation::{Overlay, OverlayConfig, TrustStore, unix_now};
use node::daemon::config::NodeManagerConfig;

const SEQUENTIAL: usize = 100;
const CONCURRENT: usize = 200;
const IN_FLIGHT: usize = 16;

fn main() -> anyhow::Result<()> {
    let isolation = std::env::var("REDEEM_BENCH_ISOLATION").unwrap_or_else(|_| {
        if nix::unistd::geteuid().is_root() {
            "linux".into()
        } else {
            "memory".into()
        }
    });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench(&isolation))
}

async fn bench(isolation: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut plc = TestFederation::new("plc", 100);
    let node_key = SecretKey::generate();
    let agent = SecretKey::generate();
    let client_key = SecretKey::generate();
    node_key.save(&dir.path().join("node.key"))?;
    std::fs::write(
        dir.path().join("membership.cbor"),
        codec::encode(&plc.node_with_key(node_key.clone(), "bench").cert),
    )?;
    let tag: u32 = rand::random::<u32>() % 1000;
    std::fs::write(
        dir.path().join("node.toml"),
        format!(
            "federation = \"plc\"\nisolation = {isolation:?}\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nhttp = \"\"\n\
             capacity = \"cpu=1000 cores,memory=1000GiB,disk=1000GiB,egress=10000Mbit\"\n\
             cgroup_parent = \"pmbench{tag}\"\nifname_prefix = \"pb{tag}\"\naddress_pool = \"10.198.0.0/16\"\n\
             [[trust]]\nname = \"plc\"\nauthority = \"{}\"\n\
             [[delegations]]\nagent = \"{}\"\nshare = \"cpu=1000 cores,memory=1000GiB,disk=1000GiB,egress=10000Mbit\"\n",
            plc.authority.public(),
            agent.public()
        ),
    )?;
    let config = NodeManagerConfig::load(&dir.path().join("node.toml"))?;
    let (running, shutdown) = node::daemon::run::start(config).await?;
    let mut trust = TrustStore::new();
    plc.trust(&mut trust);
    let addr = running.overlay.listen_addrs().await?[0].clone();
    let client = Overlay::start(
        &client_key,
        OverlayConfig {
            bootstrap: vec![addr],
            ..OverlayConfig::loopback()
        },
        Arc::new(RwLock::new(trust)),
    )
    .await?;
    let now = unix_now();
    let ticket = |i: usize| -> Vec<u8> {
        let spec = TicketSpec {
            federation: "plc".into(),
            node: node_key.public(),
            slice: format!("bench_s{i}"),
            kind: SliceKind::Regular,
            resources: Resources {
                cpu_millis: 10,
                memory_bytes: 16 << 20,
                disk_bytes: 1 << 20,
                egress_kbps: 100,
            },
            window: Window::new(now - 5, now + 3600),
            holder: client_key.public(),
            operations: BTreeSet::from([Operation::Redeem]),
        };
        Ticket::mint(&agent, &spec)
            .and_then(|t| t.to_bytes())
            .expect("mint")
    };
    let redeem = |bytes: Vec<u8>| {
        let client = client.clone();
        let node = node_key.public();
        async move {
            match client
                .request::<NodeProtocol>(
                    &node,
                    NodeRequest::Redeem {
                        ticket: TicketBytes(bytes),
                        until: None,
                    },
                    Duration::from_secs(30),
                )
                .await
            {
                Ok(NodeResponse::Lease(lease)) => Ok(lease.verify()?.lease_id),
                Ok(other) => anyhow::bail!("unexpected {other:?}"),
                Err(e) => anyhow::bail!("redeem: {e}"),
            }
        }
    };
    // Warm up the connection.
    let mut leases = vec![redeem(ticket(usize::MAX)).await?];
    let mut latencies = Vec::with_capacity(SEQUENTIAL);
    for i in 0..SEQUENTIAL {
        let bytes = ticket(i);
        let start = Instant::now();
        leases.push(redeem(bytes).await?);
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "redeem over libp2p ({isolation} isolation), {SEQUENTIAL} sequential: p50 {:.2} ms, p99 {:.2} ms (target p50 ≤ 10 ms)",
        ms(latencies[SEQUENTIAL / 2]),
        ms(latencies[SEQUENTIAL * 99 / 100])
    );
    let tickets: Vec<Vec<u8>> = (SEQUENTIAL..SEQUENTIAL + CONCURRENT).map(ticket).collect();
    let start = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::new();
    for bytes in tickets {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let fut = redeem(bytes);
        tasks.push(tokio::spawn(async move {
            let out = fut.await;
            drop(permit);
            out
        }));
    }
    for task in tasks {
        leases.push(task.await??);
    }
    let took = start.elapsed();
    println!(
        "redeem over libp2p ({isolation} isolation), {CONCURRENT} with {IN_FLIGHT} in flight: {:.0} redeems/s (target ≥ 100/s)",
        CONCURRENT as f64 / took.as_secs_f64()
    );
    // Release every lease, so no sliver outlives the bench.
    for lease_id in leases {
        client
            .request::<NodeProtocol>(
                &node_key.public(),
                NodeRequest::Release { lease_id },
                Duration::from_secs(30),
            )
            .await?;
    }
    running
        .state
        .service
        .decommission()
        .map_err(|e| anyhow::anyhow!("decommission: {e}"))?;
    shutdown.await;
    client.shutdown().await;
    Ok(())
}
