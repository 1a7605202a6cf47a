//! Shared fixture of the root tests: an engine on the real host with unique names, torn down
//! by a drop guard even when the test fails.

#![allow(dead_code, unreachable_pub)]

use std::net::Ipv4Addr;
use std::path::PathBuf;

use std::sync::{Arc, RwLock};

use capability_schema::Resources;
use capability_schema::identity::SecretKey;
use federation::overlay::Multiaddr;
use federation::testing::TestFederation;
use federation::{Overlay, OverlayConfig, OverlayHandle, TrustStore};
use node::sliver::linux::LinuxHost;
use node::sliver::{NodeConfig, SliverId, SliverSpec, Slivers};

/// Whether root tests run: as root always; not as root they are skipped, unless CI is set,
/// where they fail.
pub fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("root tests must run as root under CI");
    }
    eprintln!("skipping: not root");
    false
}

/// An engine with unique cgroup parent, veth prefix, IFB, address pool and state dir.
pub struct Fixture {
    pub engine: Slivers<LinuxHost>,
    pub tag: String,
    pub state: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Option<Fixture> {
        Self::with_node_cap(1_000_000)
    }

    /// A fixture whose node-wide egress bucket is `node_kbps`.
    pub fn with_node_cap(node_kbps: u64) -> Option<Fixture> {
        Self::configured(|config| config.shaping.node_kbps = node_kbps)
    }

    /// A fixture with unique names (cgroup parent, links, address pool, uid range), then
    /// `adjust`ed.
    pub fn configured(adjust: impl FnOnce(&mut NodeConfig)) -> Option<Fixture> {
        if !root_or_skip() {
            return None;
        }
        let r: u32 = rand::random();
        let tag = format!("{:04x}", r & 0xffff);
        let state = tempfile::Builder::new()
            .prefix("pmtest-")
            .tempdir()
            .expect("state dir");
        let mut config = NodeConfig::new(state.path(), env!("CARGO_BIN_EXE_sliver-init"));
        config.cgroup_parent = format!("pmtest-{tag}");
        config.slots.ifname_prefix = format!("pt{tag}");
        config.slots.pool = Ipv4Addr::new(10, 201 + (r >> 16) as u8 % 50, (r >> 8) as u8, 0);
        config.slots.pool_prefix = 24;
        config.slots.uid_base = (1 << 28) + ((r & 0xff) << 24 >> 4);
        config.shaping.ifb = format!("pb{tag}");
        config.shaping.node_kbps = 1_000_000;
        config.tmp_bytes = 16 << 20;
        adjust(&mut config);
        let host = LinuxHost::detect().expect("cgroups");
        let (engine, _) = Slivers::open(host, config).expect("open engine");
        Some(Fixture { engine, tag, state })
    }

    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        self.engine
            .host()
            .cgroups()
            .dirs(&format!("{}/{id}", self.engine.config().cgroup_parent))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Err(e) = self.engine.destroy_all() {
            eprintln!("fixture teardown: {e}");
        }
        let parent = self.engine.config().cgroup_parent.clone();
        let _ = self.engine.host().cgroups().remove_parent(&parent);
    }
}

/// The node's shaping device, read for what slivers' egress buckets have sent (netlink opened
/// in the calling thread's network namespace).
pub struct Buckets {
    nl: node::sliver::netlink::Netlink,
    ifb: u32,
}

impl Buckets {
    /// The buckets of `f`'s node.
    pub fn of(f: &Fixture) -> Buckets {
        let mut nl = node::sliver::netlink::Netlink::open().expect("netlink");
        let ifb = nl
            .link_index(&f.engine.config().shaping.ifb)
            .expect("shaping device")
            .expect("the node's shaping device exists");
        Buckets { nl, ifb }
    }

    /// Bytes sent so far by each bucket (class `1:minor`), in the order given; 0 for one not
    /// (yet) there.
    pub fn sent(&mut self, minors: &[u16]) -> Vec<u64> {
        let all = self.nl.class_bytes(self.ifb).expect("class counters");
        minors
            .iter()
            .map(|minor| {
                all.iter()
                    .find(|(h, _)| h.major == 1 && h.minor == *minor)
                    .map_or(0, |(_, b)| *b)
            })
            .collect()
    }
}

pub fn id(name: &str) -> SliverId {
    SliverId::new(name).expect("id")
}

/// A regular sliver with 0.5 core, 128 MiB, 1 GiB of disk, 10 Mbit/s.
pub fn spec(name: &str) -> SliverSpec {
    SliverSpec::regular(
        id(name),
        Resources {
            cpu_millis: 500,
            memory_bytes: 128 << 20,
            disk_bytes: 1 << 30,
            egress_kbps: 10_000,
            ports: 0,
        },
    )
}

/// A principal's overlay with `key`, trusting `fed`, joined through `node` and following the
/// ads of `fed`.
pub async fn principal_overlay(
    key: &SecretKey,
    fed: &TestFederation,
    node: Multiaddr,
) -> OverlayHandle {
    let mut trust = TrustStore::new();
    fed.trust(&mut trust);
    Overlay::start(
        key,
        OverlayConfig {
            bootstrap: vec![node],
            federations: vec![fed.name().to_owned()],
            ..OverlayConfig::loopback()
        },
        Arc::new(RwLock::new(trust)),
    )
    .await
    .expect("principal overlay")
}

pub mod daemon;

/// Several nodes on this machine, as an operator or a testnet runs them: each node made by
/// [`NodeConfig::for_node`] from a fresh key's id (its own cgroup parent, veth prefix, IFB and
/// uid range, all derived), under a cgroup base and a claims dir unique to the test, with an
/// address pool of its own (nodes sharing a network namespace need disjoint pools). The base
/// cgroup is removed on drop; drop the nodes first.
pub struct SharedHost {
    pub tag: String,
    pub claims: tempfile::TempDir,
    base: String,
    pools: std::sync::atomic::AtomicU8,
    pool_seed: u32,
}

impl SharedHost {
    pub fn new() -> Option<SharedHost> {
        if !root_or_skip() {
            return None;
        }
        let r: u32 = rand::random();
        let tag = format!("{:04x}", r & 0xffff);
        let claims = tempfile::Builder::new()
            .prefix("pmclaims-")
            .tempdir()
            .expect("claims dir");
        Some(SharedHost {
            base: format!("pmshare-{tag}"),
            tag,
            claims,
            pools: std::sync::atomic::AtomicU8::new(0),
            pool_seed: r >> 16,
        })
    }

    /// A new node on the host (its engine opened).
    pub fn node(&self) -> HostNode {
        let key = SecretKey::generate();
        let id = node::sliver::claim::NodeId::of_key(&key.public());
        let state = tempfile::Builder::new()
            .prefix("pmnode-")
            .tempdir()
            .expect("state dir");
        let mut config = NodeConfig::for_node(state.path(), env!("CARGO_BIN_EXE_sliver-init"), &id);
        config.cgroup_parent = id.cgroup_parent(&self.base);
        let n = self
            .pools
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        config.slots.pool = Ipv4Addr::new(
            10,
            201 + (self.pool_seed % 50) as u8,
            ((self.pool_seed >> 8) as u8).wrapping_add(n),
            0,
        );
        config.slots.pool_prefix = 24;
        config.tmp_bytes = 16 << 20;
        if let Some(share) = &mut config.share {
            share.claim_dir = self.claims.path().to_path_buf();
        }
        let mut node = HostNode {
            engine: None,
            config,
            id,
            state,
        };
        node.start();
        node
    }
}

impl Drop for SharedHost {
    fn drop(&mut self) {
        if let Ok(host) = LinuxHost::detect()
            && let Err(e) = host.cgroups().remove_parent(&self.base)
        {
            eprintln!("shared host teardown: {e}");
        }
    }
}

/// One node of a [`SharedHost`]: its engine can be stopped and started again on its state dir
/// (a restart); every sliver it made is destroyed on drop.
pub struct HostNode {
    pub engine: Option<Slivers<LinuxHost>>,
    /// The node's configuration as made (the uid range is picked when the engine opens).
    pub config: NodeConfig,
    pub id: node::sliver::claim::NodeId,
    pub state: tempfile::TempDir,
}

impl HostNode {
    /// The running engine.
    pub fn engine(&self) -> &Slivers<LinuxHost> {
        self.engine.as_ref().expect("the node runs")
    }

    /// Stops the engine (its slivers keep running, as when nodemgr stops).
    pub fn stop(&mut self) {
        self.engine = None;
    }

    /// Starts the engine on the node's state dir: it re-adopts, reaps and sweeps orphans.
    pub fn start(&mut self) -> node::sliver::Reconciled {
        assert!(self.engine.is_none(), "the node runs already");
        let host = LinuxHost::detect().expect("cgroups");
        let (engine, report) = Slivers::open(host, self.config.clone()).expect("open engine");
        self.engine = Some(engine);
        report
    }

    /// A restart: stop, then start.
    pub fn restart(&mut self) -> node::sliver::Reconciled {
        self.stop();
        self.start()
    }
}

impl Drop for HostNode {
    fn drop(&mut self) {
        if self.engine.is_none()
            && let Ok(host) = LinuxHost::detect()
        {
            match Slivers::open(host, self.config.clone()) {
                Ok((engine, _)) => self.engine = Some(engine),
                Err(e) => eprintln!("node {} teardown: {e}", self.id),
            }
        }
        if let Some(engine) = &self.engine
            && let Err(e) = engine.destroy_all()
        {
            eprintln!("node {} teardown: {e}", self.id);
        }
    }
}
