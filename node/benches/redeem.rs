//! Redeem end to end over libp2p on loopback: a client sends a ticket, the node verifies it,
//! admits it, creates the sliver, makes the lease durable and answers with the signed lease.
//!
//! For each isolation (`linux`, as root, then `memory`) it prints p50/p99 latency of sequential
//! redeems, the sustained rate of concurrent ones, where the node's time went (mean per step)
//! and how many ops each ledger commit carried. As root it first prints the floor: a bare
//! sliver create (the engine alone, no ticket, no ledger, no network). Targets: p50 ≤ 10 ms,
//! ≥ 100 redeems/s. `REDEEM_BENCH_ISOLATION=memory|linux` runs only one.
//!
//! Everything the bench makes is removed even when it fails: every lease is released, the node
//! decommissioned, and a drop guard removes the cgroup parent directories (`pmbench<tag>`) and
//! any link left with the bench's prefix.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::collections::BTreeSet;
use std::path::PathBuf;
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
use node::daemon::service::{NodeService, RedeemStep};

const SEQUENTIAL: usize = 100;
const CONCURRENT: usize = 200;
const IN_FLIGHT: usize = 16;
const BARE_CREATES: usize = 30;

const RESOURCES: Resources = Resources {
    cpu_millis: 10,
    memory_bytes: 16 << 20,
    disk_bytes: 1 << 20,
    egress_kbps: 100,
    ports: 0,
};

fn main() -> anyhow::Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let only = std::env::var("REDEEM_BENCH_ISOLATION").ok();
    let runs: Vec<&str> = ["linux", "memory"]
        .into_iter()
        .filter(|i| only.as_deref().is_none_or(|o| o == *i))
        .filter(|i| *i != "linux" || root || only.is_some())
        .collect();
    println!("load average at start: {}", load_average());
    if root && runs.contains(&"linux") {
        bare_create_floor()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for isolation in runs {
        runtime.block_on(bench(isolation))?;
    }
    println!("load average at end: {}", load_average());
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// `sliver-init`: `PLANETMESH_SLIVER_INIT`, or in the target dir above this bench's `deps/`.
fn sliver_init() -> PathBuf {
    if let Some(path) = std::env::var_os("PLANETMESH_SLIVER_INIT") {
        return path.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let deps = exe.parent().map(PathBuf::from).unwrap_or_default();
    deps.parent().unwrap_or(&deps).join("sliver-init")
}

/// What a run leaves on the host that nothing else removes: the cgroup parent directories
/// and, should a teardown fail, links with the run's prefix. Removed on drop, even on failure.
struct HostGuard {
    cgroup_parent: String,
    ifname_prefix: String,
    service: Option<Arc<NodeService>>,
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        if let Some(service) = self.service.take()
            && let Err(e) = service.decommission()
        {
            eprintln!("warning: decommissioning the bench node: {e}");
        }
        // A parent is busy until the kernel has let go of its last child cgroup: retry briefly.
        let parents: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .map(|hierarchies| {
                hierarchies
                    .flatten()
                    .map(|h| h.path().join(&self.cgroup_parent))
                    .collect()
            })
            .unwrap_or_default();
        for attempt in 0..100 {
            let left: Vec<(&PathBuf, std::io::Error)> = parents
                .iter()
                .filter(|dir| dir.exists())
                .filter_map(|dir| std::fs::remove_dir(dir).err().map(|e| (dir, e)))
                .collect();
            if left.is_empty() {
                break;
            }
            if attempt == 99 {
                for (dir, e) in left {
                    eprintln!("warning: removing {}: {e}", dir.display());
                }
            } else {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let links = std::process::Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for line in links.lines() {
            let name = line.split(": ").nth(1).unwrap_or("");
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with(&self.ifname_prefix) {
                eprintln!("warning: link {name} was left; removing it");
                let _ = std::process::Command::new("ip")
                    .args(["link", "del", name])
                    .status();
            }
        }
    }
}

/// The floor: bare sliver creates through the engine (no ticket, ledger or network).
fn bare_create_floor() -> anyhow::Result<()> {
    use node::sliver::linux::LinuxHost;
    use node::sliver::{NodeConfig, SliverId, SliverSpec, Slivers};
    let tag: u32 = rand::random::<u32>() % 1000;
    let dir = tempfile::tempdir()?;
    let mut config = NodeConfig::new(dir.path().join("slivers"), sliver_init());
    config.cgroup_parent = format!("pmbench{tag}f");
    config.slots.ifname_prefix = format!("pf{tag}");
    config.slots.pool = std::net::Ipv4Addr::new(10, 196, 0, 0);
    config.shaping.ifb = format!("pf{tag}ifb");
    config.tmp_bytes = 16 << 20;
    let _guard = HostGuard {
        cgroup_parent: config.cgroup_parent.clone(),
        ifname_prefix: config.slots.ifname_prefix.clone(),
        service: None,
    };
    let (engine, _) = Slivers::open(LinuxHost::detect()?, config)?;
    let spec = |name: String| SliverSpec::regular(SliverId::new(name).expect("id"), RESOURCES);
    let timed = |name: String| -> anyhow::Result<Duration> {
        let start = Instant::now();
        engine
            .create(spec(name))
            .map_err(|e| anyhow::anyhow!("bare create: {e}"))?;
        Ok(start.elapsed())
    };
    // One at a time (created, then destroyed), then accumulating (every sliver kept, as the
    // redeem bench keeps its leases).
    let run = || -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
        let mut alone = Vec::with_capacity(BARE_CREATES);
        for i in 0..BARE_CREATES {
            alone.push(timed(format!("alone{i}"))?);
            engine.destroy(&SliverId::new(format!("alone{i}"))?, false)?;
        }
        let mut kept = Vec::with_capacity(BARE_CREATES);
        for i in 0..BARE_CREATES {
            kept.push(timed(format!("kept{i}"))?);
        }
        Ok((alone, kept))
    };
    let result = run();
    let teardown = engine.destroy_all();
    let (mut alone, mut kept) = result?;
    teardown?;
    alone.sort();
    kept.sort();
    println!(
        "floor: bare sliver create (engine only, no ticket, ledger or network), {BARE_CREATES} sequential: \
         one live at a time p50 {:.2} ms, p99 {:.2} ms; kept (0 to {BARE_CREATES} live) p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&alone, 50)),
        ms(percentile(&alone, 99)),
        ms(percentile(&kept, 50)),
        ms(percentile(&kept, 99))
    );
    Ok(())
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
    let mut guard = HostGuard {
        cgroup_parent: format!("pmbench{tag}"),
        ifname_prefix: format!("pb{tag}"),
        service: None,
    };
    std::fs::write(
        dir.path().join("node.toml"),
        format!(
            "federation = \"plc\"\nisolation = {isolation:?}\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nhttp = \"\"\n\
             capacity = \"cpu=1000 cores,memory=1000GiB,disk=1000GiB,egress=10000Mbit\"\n\
             cgroup_parent = \"{}\"\nifname_prefix = \"{}\"\naddress_pool = \"10.198.0.0/16\"\n\
             [[trust]]\nname = \"plc\"\nauthority = \"{}\"\n\
             [[delegations]]\nagent = \"{}\"\nshare = \"cpu=1000 cores,memory=1000GiB,disk=1000GiB,egress=10000Mbit\"\n",
            guard.cgroup_parent,
            guard.ifname_prefix,
            plc.authority.public(),
            agent.public()
        ),
    )?;
    let config = NodeManagerConfig::load(&dir.path().join("node.toml"))?;
    let (running, shutdown) = node::daemon::run::start(config).await?;
    let service = Arc::clone(&running.state.service);
    guard.service = Some(Arc::clone(&service));
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
            resources: RESOURCES,
            window: Window::new(now - 5, now + 3600),
            holder: client_key.public(),
            operations: BTreeSet::from([Operation::Redeem]),
            net: Default::default(),
        };
        Ticket::mint(&agent, &spec)
            .and_then(|t| t.to_bytes())
            .expect("mint")
    };
    let node = node_key.public();
    let request = |req: NodeRequest| {
        let client = client.clone();
        async move {
            client
                .request::<NodeProtocol>(&node, req, Duration::from_secs(30))
                .await
        }
    };
    let redeem = |bytes: Vec<u8>| {
        let req = request(NodeRequest::Redeem {
            ticket: TicketBytes(bytes),
            until: None,
        });
        async move {
            match req.await {
                Ok(NodeResponse::Lease(lease)) => Ok(lease.verify()?.lease_id),
                Ok(other) => anyhow::bail!("unexpected {other:?}"),
                Err(e) => anyhow::bail!("redeem: {e}"),
            }
        }
    };
    let mut leases = Vec::new();
    let measured = async {
        // Warm up the connection.
        leases.push(redeem(ticket(usize::MAX)).await?);
        let mut latencies = Vec::with_capacity(SEQUENTIAL);
        for i in 0..SEQUENTIAL {
            let bytes = ticket(i);
            let start = Instant::now();
            leases.push(redeem(bytes).await?);
            latencies.push(start.elapsed());
        }
        latencies.sort();
        println!(
            "redeem over libp2p ({isolation} isolation), {SEQUENTIAL} sequential: p50 {:.2} ms, p99 {:.2} ms (target p50 ≤ 10 ms)",
            ms(percentile(&latencies, 50)),
            ms(percentile(&latencies, 99))
        );
        println!("  node, mean per step: {}", service.timings().summary());
        let tickets: Vec<Vec<u8>> = (SEQUENTIAL..SEQUENTIAL + CONCURRENT).map(ticket).collect();
        let before = service.ledger().commit_stats();
        let (create_before, creates_before) = service.timings().mean(RedeemStep::Create);
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
        let mut failed = None;
        for task in tasks {
            match task.await? {
                Ok(lease) => leases.push(lease),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let took = start.elapsed();
        let after = service.ledger().commit_stats();
        let (create_all, creates_all) = service.timings().mean(RedeemStep::Create);
        let create_concurrent = (create_all.as_secs_f64() * creates_all as f64
            - create_before.as_secs_f64() * creates_before as f64)
            / (creates_all - creates_before).max(1) as f64;
        println!(
            "redeem over libp2p ({isolation} isolation), {CONCURRENT} with {IN_FLIGHT} in flight: {:.0} redeems/s (target ≥ 100/s); \
             {:.1} ledger ops per commit, sliver create mean {:.2} ms",
            CONCURRENT as f64 / took.as_secs_f64(),
            (after.ops - before.ops) as f64 / (after.batches - before.batches).max(1) as f64,
            create_concurrent * 1000.0
        );
        Ok::<(), anyhow::Error>(())
    }
    .await;
    // Release every lease, so no sliver outlives the bench.
    let start = Instant::now();
    let released = leases.len();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::new();
    for lease_id in leases {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let fut = request(NodeRequest::Release { lease_id });
        tasks.push(tokio::spawn(async move {
            let out = fut.await;
            drop(permit);
            out
        }));
    }
    for task in tasks {
        if let Err(e) = task.await? {
            eprintln!("warning: release: {e}");
        }
    }
    println!(
        "  teardown: {released} leases released in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    client.shutdown().await;
    shutdown.await;
    // The guard decommissions the node (any sliver left) and removes the cgroup parents.
    drop(guard);
    measured
}
