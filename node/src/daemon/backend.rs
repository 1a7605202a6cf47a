//! Which sliver backend the node manager runs on, and how it is set up: the Linux engine
//! (`node::sliver`) with this node's own share of the host (cgroup parent, veth prefix,
//! shaping device, uid range, claims; see [`sliver_config`]), or in-memory slivers for tests
//! and simulation.

use std::sync::Arc;

use anyhow::{Context, bail};
use capability_schema::SecretKey;
use federation::daemon::DaemonError;

use super::config::{Isolation, NodeManagerConfig};
use super::memory::InMemorySlivers;
use super::monitor::SliverMonitor;
use super::service::SliverBackend;

/// The `sliver-init` program: `PLANETMESH_SLIVER_INIT`, or next to this program (or one
/// directory up, for test and bench binaries in cargo's `deps/`).
fn sliver_init_path() -> anyhow::Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("PLANETMESH_SLIVER_INIT") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().context("locating nodemgr")?;
    let dir = exe.parent().context("nodemgr has no directory")?;
    let beside = dir.join("sliver-init");
    if beside.exists() || !dir.ends_with("deps") {
        return Ok(beside);
    }
    Ok(dir.parent().unwrap_or(dir).join("sliver-init"))
}

/// The sliver backend, and its monitor when it has real slivers to measure.
pub(crate) type Backend = (Arc<dyn SliverBackend>, Option<Arc<dyn SliverMonitor>>);

/// The sliver engine's configuration of node `node` (its key's [`NodeId`]) under `config`:
/// its own cgroup parent `<cgroup_parent>/<id>.node`, veth prefix and shaping device `<veth
/// prefix>ifb` (configured, else derived from the id), uid range (configured, else picked when
/// the engine opens) and claims in `claim_dir`.
///
/// [`NodeId`]: crate::sliver::claim::NodeId
pub fn sliver_config(
    config: &NodeManagerConfig,
    node: &crate::sliver::claim::NodeId,
    init: std::path::PathBuf,
) -> anyhow::Result<crate::sliver::NodeConfig> {
    let mut engine =
        crate::sliver::NodeConfig::for_node(config.state_dir.join("slivers"), init, node);
    engine.cgroup_parent = node.cgroup_parent(&config.cgroup_parent);
    if let Some(prefix) = &config.ifname_prefix {
        engine.slots.ifname_prefix = prefix.clone();
    }
    // One IFB per node manager, so several can share a host.
    engine.shaping.ifb = format!("{}ifb", engine.slots.ifname_prefix);
    let (pool, prefix) = config.pool().map_err(anyhow::Error::msg)?;
    engine.slots.pool = pool;
    engine.slots.pool_prefix = prefix;
    if let Some(share) = &mut engine.share {
        share.claim_dir = config.claim_dir.clone();
        if let Some(base) = config.uid_base {
            engine.slots.uid_base = base;
            share.uid_auto = false;
        }
    }
    if let Some(image) = &config.image {
        engine.image = Some(crate::sliver::rootfs::Image::Directory(image.clone()));
    }
    engine.disk_backing = config.disk_backing;
    // What the node offers is what it shares: the image holding kernel-capped sliver dirs is
    // as large as its disk capacity, and its root egress bucket as fast as the egress it
    // advertises (paper §3.3).
    let capacity = config.capacity.unwrap_or_else(|| {
        super::monitor::measured_capacity(
            &super::monitor::HostProbe::default(),
            &config.state_dir,
            &config.reserve,
        )
    });
    engine.disk_capacity = Some(capacity.disk_bytes);
    engine.shaping.node_kbps = capacity.egress_kbps.max(8);
    // The uplink is found on the host when the engine opens ([`open_backend`]).
    engine.network = Some(crate::sliver::firewall::Policy {
        uplink: None,
        icmp_per_sec: config.icmp_rate,
        ports: Some(config.public_ports),
    });
    Ok(engine)
}

/// The backend of `config` on a node of `site` (told to its slivers).
fn open_backend(config: &NodeManagerConfig, site: &str) -> anyhow::Result<Backend> {
    match config.isolation {
        Isolation::Memory => Ok((Arc::new(InMemorySlivers::new()), None)),
        Isolation::Linux => {
            use crate::sliver::Slivers;
            use crate::sliver::claim::NodeId;
            use crate::sliver::linux::LinuxHost;
            let init = sliver_init_path()?;
            if !init.exists() {
                bail!(
                    "{} is missing: install sliver-init next to nodemgr",
                    init.display()
                );
            }
            let key = SecretKey::load(&config.common.key_file).context("loading the node key")?;
            let mut engine = sliver_config(config, &NodeId::of_key(&key.public()), init)?;
            drop(key);
            let uplink =
                super::uplink::resolve(config.public_address).map_err(anyhow::Error::msg)?;
            match &uplink {
                Some(u) => tracing::info!(
                    address = %u.address,
                    device = %u.device,
                    "slivers' traffic leaves with the node's public address"
                ),
                None => tracing::info!(
                    "no public address (public_address off, or no default route): slivers reach nothing outside the node"
                ),
            }
            if let Some(network) = &mut engine.network {
                network.uplink = uplink;
            }
            let host = LinuxHost::detect()
                .context("finding cgroup hierarchies (is this Linux, and are you root?)")?;
            if config.favor_dynamic_cgroups {
                // Host-wide and lasting (a cgroup2 mount option): moving each new init into
                // its cgroup then skips an RCU grace period, the largest cost of a create.
                match host.favor_dynamic_cgroups() {
                    Ok(Some(mount)) => tracing::info!(
                        mount = %mount.display(),
                        "cgroup2 remounted with favordynmods"
                    ),
                    Ok(None) => tracing::debug!("no cgroup2 mount: favordynmods not applied"),
                    // Kernels before 6.1 lack the option; slivers are only slower to create.
                    Err(e) => tracing::warn!("cannot apply favordynmods (creates are slower): {e}"),
                }
            }
            let (slivers, reconciled) = Slivers::open(host, engine)
                .context("opening the sliver engine (root is needed for isolation = \"linux\")")?;
            let own = slivers.config();
            let (uid_first, uid_end) = own.slots.uid_span();
            tracing::info!(
                adopted = reconciled.adopted.len(),
                reaped = reconciled.reaped.len(),
                cgroup_parent = %own.cgroup_parent,
                veths = %format!("{}<n>", own.slots.ifname_prefix),
                uids = %format!("{uid_first}..{uid_end}"),
                "sliver engine ready"
            );
            for problem in reconciled.problems {
                tracing::warn!(%problem, "sliver engine");
            }
            let slivers = Arc::new(slivers);
            let backend = super::engine::EngineBackend::new(Arc::clone(&slivers), site);
            Ok((Arc::new(backend), Some(slivers)))
        }
    }
}

/// The sliver backend of `config` on a node of `site` (from its membership certificate; told
/// to its slivers), opened on the blocking pool (it touches the host).
pub(crate) async fn backend_of(
    config: &NodeManagerConfig,
    site: &str,
) -> Result<Backend, DaemonError> {
    let (config, site) = (config.clone(), site.to_owned());
    tokio::task::spawn_blocking(move || open_backend(&config, &site))
        .await
        .map_err(|e| DaemonError::Host(format!("opening the sliver engine: {e}")))?
        .map_err(|e| DaemonError::Host(format!("{e:#}")))
}
