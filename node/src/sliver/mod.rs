//! Slivers: isolated Linux contexts made from admitted grants, and taken down without a trace.
//!
//! How a sliver comes to be ([`Slivers::create`]), each step undone in reverse if a later
//! one fails:
//! 1. a slot is reserved: uid range, address pair, veth name, HTB class ([`alloc`]);
//! 2. its dirs are made (overlay upper and work dirs owned by the sliver's root);
//! 3. its cgroup is made with its limits ([`cgroup`]);
//! 4. its init is cloned into new user, pid, mount, uts, ipc and net namespaces, its id maps
//!    written, it is put in the cgroup and the image is id-mapped for it ([`mountfd`]), all
//!    while it waits before exec;
//! 5. its veth is made (the sliver's end straight in its namespace), with the host side's
//!    address and anti-spoofing;
//! 6. its egress bucket is added under the node's root bucket ([`htb`]);
//! 7. the init execs, configures its network end, builds the overlay root from the plan
//!    ([`rootfs`], [`init`]), pivots, drops capabilities ([`caps`]) and reports ready;
//! 8. its record is saved ([`store`]), so a restarted node re-adopts it ([`Slivers::open`]).
//!
//! A sliver is told where it is ([`about`]): a read-only `/etc/planetmesh/sliver.json`,
//! written with its dirs, and `PLANETMESH_*` variables in every command run there.
//!
//! Destroy kills the init (its pid namespace goes with it), removes the bucket, the veth, the
//! cgroup, the dirs (moved aside at once, deleted in the background; the upper dir stays when
//! asked) and the record. [`Slivers::open`] re-adopts slivers whose init still runs, tears down
//! the others, and removes traces no record accounts for (a crash mid-creation).
//!
//! Several nodes on one machine: a node made with [`NodeConfig::for_node`] has a cgroup parent,
//! veth prefix, shaping device and uid range of its own, derived from its [`claim::NodeId`],
//! and claims them with its state dir and address pool when its engine opens ([`claim`]): a
//! second node that would share any of them is refused at start, with the holder named. So
//! one node's orphan sweep, which looks only under its own parent, at its own link names and
//! in its own state dir (and only at cgroups named like slivers), never meets another's
//! slivers, and a slice's slivers on two nodes get two cgroups and two uid ranges.
//!
//! Every privileged call goes through [`host::Host`]; [`linux::LinuxHost`] is the machine,
//! [`host::RecordingHost`] the fake used by the unit tests below.
//!
//! Use: [`Slivers::usage`] reads each live sliver's CPU time and memory from its cgroup and
//! the bytes its egress bucket has sent from the HTB class counters (one netlink dump for all
//! slivers), for the node's resource monitor and its ads.
//!
//! Disk: [`Slivers::check_disk`] is the node's disk watchdog (in the spirit of PlanetLab's
//! `pl_mom`). A sliver whose writable layer costs the host more than its `disk_bytes` grant
//! (allocated blocks plus a charge per inode, deleted files it holds open included; see
//! [`rootfs::disk_usage`]), or whose use cannot be measured (fail closed), has every
//! process frozen (cgroup freezer), is logged, and reports `over disk limit: X of Y`
//! ([`Slivers::condition`]); a command run in it afterwards is not frozen at once on a v1
//! host, so the holder can delete files (one still running at the second check after it
//! started, while the sliver is still over, is frozen too: a workload cannot escape by being
//! started anew), and the sliver is thawed at the first check that finds it back under its
//! grant. A node may instead have the kernel cap each sliver at write time: its dir a btrfs
//! subvolume capped at the grant on the node's own loop-mounted image
//! ([`rootfs::DiskBacking::Quota`], [`quota`]), or its layer a tmpfs of the granted size
//! ([`rootfs::DiskBacking::Tmpfs`]).
//!
//! Speed: creating a sliver costs a few milliseconds when the node has called
//! [`linux::LinuxHost::favor_dynamic_cgroups`] (`nodemgr` does at start unless configured
//! not to; without it, moving the init into its cgroup waits for an RCU grace period, about
//! 10 ms here); `sliver-bench` (`node/bench.sh`) measures
//! it against `runc` and the bare-clone floor.

// The engine's host code is synchronous (between fork and exec there is no runtime to wait
// on): it may wait with a thread sleep where the kernel offers nothing to wait for.
#![allow(clippy::disallowed_methods)]

pub mod about;
pub mod alloc;
pub mod caps;
pub mod cgroup;
pub mod claim;
pub mod enter;
pub mod firewall;
pub mod host;
pub mod htb;
pub mod init;
pub mod keyline;
pub mod linux;
pub mod mountfd;
pub mod netlink;
pub mod output;
pub mod quota;
pub mod rootfs;
pub mod sealed;
pub mod seccomp;
pub mod spec;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

pub use alloc::{AllocError, SlotAssignment, SlotLayout, UidRange};
pub use cgroup::{CgroupLimits, CgroupUsage};
pub use host::{
    DiskTarget, ExecCommand, ExecOutput, Host, HostError, NetAttach, NodeShaping, Orphan,
    OrphanScope, Shape, Spawned,
};
pub use rootfs::{DiskBacking, Image, SliverDirs};
pub use spec::{SliverAbout, SliverId, SliverKind, SliverSpec, SpecError};
pub use store::{SliverRecord, StoreError};

use host::{ExecTarget, InitRequest};
use rootfs::PlanOptions;
use store::Store;

/// A sliver engine error.
#[derive(Debug, thiserror::Error)]
pub enum SliverError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A port forward named something other than the sliver itself.
    #[error("sliver {id}: {detail}")]
    NotTheSliver {
        /// The sliver.
        id: SliverId,
        /// What was asked and what may be.
        detail: String,
    },
    /// No slot is free.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// Every block of the node's public port range is leased.
    #[error(
        "no public ports free: {leased} slivers lease all of public_ports {first}-{last} \
         ({per_sliver} each); 0 free"
    )]
    PortsFull {
        /// Slivers holding blocks.
        leased: u32,
        /// The range's first port.
        first: u16,
        /// Its last.
        last: u16,
        /// Ports per block.
        per_sliver: u16,
    },
    /// The node's share of the host is claimed by another node (or cannot be claimed).
    #[error("claiming this node's share of the host: {0}")]
    Claim(#[from] claim::ClaimError),
    /// A sliver with this id exists (or is being made).
    #[error("sliver {0} already exists")]
    Exists(SliverId),
    /// No such sliver.
    #[error("no sliver {0}")]
    NotFound(SliverId),
    /// The record store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A creation step failed; everything done before it was undone (`rollback` lists what
    /// could not be).
    #[error("creating sliver {id}: {step}: {source}{}", rollback_note(rollback))]
    Create {
        /// The sliver.
        id: SliverId,
        /// The step that failed.
        step: &'static str,
        /// Why.
        source: Box<HostError>,
        /// Undo steps that failed too.
        rollback: Vec<String>,
    },
    /// Some teardown steps failed; the record is kept so a retry can finish.
    #[error("destroying sliver {id}: {}", failures.join("; "))]
    Destroy {
        /// The sliver.
        id: SliverId,
        /// What failed.
        failures: Vec<String>,
    },
    /// Some slivers or node-wide objects could not be removed.
    #[error("destroying all slivers: {}", failures.join("; "))]
    DestroyAll {
        /// What failed.
        failures: Vec<String>,
    },
    /// Another host operation failed.
    #[error("sliver {id}: {op}: {source}")]
    Host {
        /// The sliver.
        id: String,
        /// What was being done.
        op: &'static str,
        /// Why.
        source: Box<HostError>,
    },
    /// An SSH key is malformed.
    #[error("sliver {id}: invalid SSH public key: {reason}")]
    InvalidKey {
        /// The sliver.
        id: SliverId,
        /// What is wrong.
        reason: &'static str,
    },
    /// The keys file could not be read or written.
    #[error("sliver {id}: authorized keys {path}: {source}")]
    Keys {
        /// The sliver.
        id: SliverId,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn rollback_note(rollback: &[String]) -> String {
    if rollback.is_empty() {
        String::new()
    } else {
        format!(" (rollback also failed: {})", rollback.join("; "))
    }
}

/// The node's sliver configuration. Every host path is here, none is a literal deeper down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Where records, sliver dirs and the default image skeleton live.
    pub state_dir: PathBuf,
    /// The init program (`sliver-init`, or the daemon with its hidden init subcommand).
    pub init_path: PathBuf,
    /// The reference image; `None`: the host-system skeleton under `<state>/images/host`.
    pub image: Option<Image>,
    /// Parent of every sliver cgroup, relative to each hierarchy root.
    pub cgroup_parent: String,
    /// Uid ranges, address pool and names.
    pub slots: SlotLayout,
    /// The node-wide egress bucket.
    pub shaping: NodeShaping,
    /// Size cap of each sliver's `/tmp` and `/dev/shm`.
    pub tmp_bytes: u64,
    /// What backs the writable layer of a sliver with a disk grant (one of 0 always gets a
    /// directory).
    pub disk_backing: DiskBacking,
    /// Size of the filesystem that holds kernel-capped sliver dirs
    /// ([`DiskBacking::Quota`]), made once (`None`: the state dir's free space then).
    pub disk_capacity: Option<u64>,
    /// How the node shares the machine with other nodes (`None`: it claims nothing, for tests
    /// and tools that pick unique names themselves).
    pub share: Option<HostShare>,
    /// The node's network policy: with one, the node keeps its own firewall table (egress NAT
    /// through the uplink, the fence, ICMP limits; [`firewall`]); `None` leaves the host's
    /// firewall alone (slivers then reach their gateway, as the engine's own tests use).
    pub network: Option<firewall::Policy>,
}

/// A node's place among the nodes of one machine (see [`claim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostShare {
    /// The node's id: it names the node's claims.
    pub node_id: claim::NodeId,
    /// The host-wide claims directory.
    pub claim_dir: PathBuf,
    /// Whether the node picks its uid range: `slots.uid_base` is then chosen when the engine
    /// opens (the range it held before, else the first free block from the one its id
    /// picks; [`SlotLayout::auto_uid_bases`]).
    pub uid_auto: bool,
}

impl NodeConfig {
    /// The defaults under `state_dir`: cgroup `planetmesh`, uids from 2^28, pool
    /// 10.199.0.0/16, veths `pmv<slot>`, IFB `pmifb0` with a 1 Gbit/s node cap.
    pub fn new(state_dir: impl Into<PathBuf>, init_path: impl Into<PathBuf>) -> Self {
        NodeConfig {
            state_dir: state_dir.into(),
            init_path: init_path.into(),
            image: None,
            cgroup_parent: "planetmesh".into(),
            slots: SlotLayout {
                uid_base: 1 << 28,
                uid_count: 65536,
                pool: Ipv4Addr::new(10, 199, 0, 0),
                pool_prefix: 16,
                ifname_prefix: "pmv".into(),
                max_slots: 4096,
            },
            shaping: NodeShaping {
                ifb: "pmifb0".into(),
                node_kbps: 1_000_000,
            },
            tmp_bytes: 64 << 20,
            disk_backing: DiskBacking::Directory,
            disk_capacity: None,
            share: None,
            network: None,
        }
    }

    /// The node's firewall table under its network policy, named after its veth prefix.
    pub fn firewall(&self) -> Option<firewall::Firewall> {
        let policy = self.network.as_ref()?;
        let mut table = firewall::Firewall::for_prefix(
            &self.slots.ifname_prefix,
            self.slots.pool,
            self.slots.pool_prefix,
        );
        table.uplink = policy.uplink.clone();
        table.icmp_per_sec = policy.icmp_per_sec;
        table.leases_ports = self.leased_range().is_some();
        table.forwarding_note = Some(self.state_dir.join("uplink-forwarding"));
        Some(table)
    }

    /// Where a sliver in `slot` granted `ports` public ports is reached from outside: the
    /// node's public address and the ports it leases (the same ports inside the sliver);
    /// `None` without an uplink or a port range.
    pub fn public_endpoint(&self, slot: u32, ports: u32) -> Option<(std::net::Ipv4Addr, Vec<u16>)> {
        let (uplink, range) = self.leased_range()?;
        Some((uplink.address, range.leased(slot, ports)))
    }

    /// The uplink and the public port range, when the node leases ports at all (ports are
    /// forwarded from the uplink's address, so a range without an uplink leases none).
    fn leased_range(&self) -> Option<(&firewall::Uplink, firewall::PublicPorts)> {
        let policy = self.network.as_ref()?;
        Some((policy.uplink.as_ref()?, policy.ports?))
    }

    /// Why no slot is free, naming the public port range when it is what bounds the slivers.
    fn full_reason(&self, e: AllocError) -> SliverError {
        match (e, self.leased_range().map(|(_, range)| range)) {
            (AllocError::Full(n), Some(ports)) if n == ports.blocks() => SliverError::PortsFull {
                leased: n,
                first: ports.first,
                last: ports.last(),
                per_sliver: ports.per_sliver,
            },
            (e, _) => SliverError::Alloc(e),
        }
    }

    /// The most public ports one sliver may lease here (`None`: no port range).
    fn ports_per_sliver(&self) -> Option<u32> {
        self.leased_range()
            .map(|(_, range)| u32::from(range.per_sliver))
    }

    /// The defaults of node `node_id` under `state_dir`, unique to it on the machine: cgroup
    /// parent `planetmesh/<id>.node`, veths `pm<id[..5]>v<slot>`, IFB `<veth prefix>ifb`, at
    /// most 1024 slivers, a uid range picked when the engine opens, claims in
    /// [`claim::DEFAULT_CLAIM_DIR`]; otherwise as [`NodeConfig::new`].
    pub fn for_node(
        state_dir: impl Into<PathBuf>,
        init_path: impl Into<PathBuf>,
        node_id: &claim::NodeId,
    ) -> Self {
        let mut config = NodeConfig::new(state_dir, init_path);
        config.cgroup_parent = node_id.cgroup_parent("planetmesh");
        config.slots.ifname_prefix = node_id.ifname_prefix();
        config.slots.max_slots = 1024;
        config.shaping.ifb = format!("{}ifb", config.slots.ifname_prefix);
        config.share = Some(HostShare {
            node_id: node_id.clone(),
            claim_dir: claim::DEFAULT_CLAIM_DIR.into(),
            uid_auto: true,
        });
        config
    }
}

/// One sliver's disk use against its grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskReport {
    /// The sliver.
    pub id: SliverId,
    /// What its writable layer costs the host (`None` when it could not be measured); see
    /// [`rootfs::disk_usage`].
    pub used: Option<u64>,
    /// Its granted `disk_bytes` (0: no limit).
    pub limit: u64,
    /// Whether it uses more than granted. A sliver with a grant whose use could not be
    /// measured counts as over (fail closed): for a directory-backed one only the watchdog
    /// holds the grant, and a quota-capped one is measured through its kernel cap, so a
    /// failure may mean the cap is gone. (A tmpfs cannot pass its size, whatever is measured.)
    pub over: bool,
    /// Why its use could not be measured.
    pub error: Option<String>,
    /// What backs the layer.
    pub backing: DiskBacking,
    /// Whether the disk watchdog holds its processes frozen.
    pub frozen: bool,
}

impl DiskReport {
    /// What the holder is told about a sliver over its grant (`None` when it is within it).
    pub fn condition(&self) -> Option<String> {
        if !self.over {
            return self
                .error
                .as_ref()
                .map(|e| format!("disk use could not be measured: {e}"));
        }
        let Some(used) = self.used else {
            let error = self.error.as_deref().unwrap_or("unknown error");
            let frozen = if self.frozen {
                "; its processes are frozen until a measurement completes under it"
            } else {
                ""
            };
            return Some(format!(
                "over disk limit: its use could not be measured ({error}), which counts as over \
                 its grant of {}{frozen}",
                human_bytes(self.limit)
            ));
        };
        Some(if self.frozen {
            format!(
                "over disk limit: {} of {}; its processes are frozen until it is back under \
                 (delete files with exec, or release the sliver)",
                human_bytes(used),
                human_bytes(self.limit)
            )
        } else {
            format!(
                "over disk limit: {} of {}",
                human_bytes(used),
                human_bytes(self.limit)
            )
        })
    }
}

pub use capability_schema::resources::human_bytes;

/// What one live sliver has used, as the host counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSample {
    /// The sliver.
    pub id: SliverId,
    /// CPU time since it was created, nanoseconds (`None`: not accounted or unreadable).
    pub cpu_ns: Option<u64>,
    /// Memory in use, bytes.
    pub memory_bytes: Option<u64>,
    /// Bytes its egress bucket has sent (IPv4 with its own source address, headers included).
    pub egress_bytes: Option<u64>,
    /// Its disk use at the last watchdog check (`None` before the first).
    pub disk: Option<DiskReport>,
}

/// What [`Slivers::open`] found on the host.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Slivers still running, re-adopted.
    pub adopted: Vec<SliverId>,
    /// Slivers whose init had died; their remains were removed.
    pub reaped: Vec<SliverId>,
    /// Traces that no record accounted for, removed.
    pub orphans: Vec<Orphan>,
    /// Problems met (unreadable records, failed cleanups).
    pub problems: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    live: BTreeMap<SliverId, SliverRecord>,
    creating: BTreeMap<SliverId, u32>,
    /// Slivers the disk watchdog froze (or found frozen when the node started).
    frozen: BTreeSet<SliverId>,
    /// The disk watchdog's last report of each live sliver.
    disk: BTreeMap<SliverId, DiskReport>,
    /// Per frozen sliver, the processes its freezer did not hold at the last check.
    stragglers: BTreeMap<SliverId, BTreeSet<u32>>,
}

/// Which creation steps are done, so teardown undoes exactly those.
#[derive(Debug, Clone, Copy, Default)]
struct Done {
    dirs: bool,
    cgroup: bool,
    init: bool,
    net: bool,
    shape: bool,
    ports: bool,
    record: bool,
}

impl Done {
    const ALL: Done = Done {
        dirs: true,
        cgroup: true,
        init: true,
        net: true,
        shape: true,
        ports: true,
        record: true,
    };
}

/// The slivers of one node.
#[derive(Debug)]
pub struct Slivers<H: Host> {
    host: H,
    config: NodeConfig,
    image: Image,
    store: Store,
    state: Mutex<State>,
    /// The node's claims on the host, held while the engine lives.
    claims: Mutex<Option<claim::Claims>>,
}

impl<H: Host> Slivers<H> {
    /// Opens the engine: claims the node's share of the host (when it has one, before
    /// touching anything: [`claim`]), prepares the image and the node's shaping, then
    /// re-adopts the slivers whose init still runs and removes the remains of the others.
    pub fn open(host: H, mut config: NodeConfig) -> Result<(Self, Reconciled), SliverError> {
        let store = Store::open(&config.state_dir)?;
        // The first sliver's create would otherwise copy the init program.
        if let Err(e) = host.warm_up(&config.init_path) {
            tracing::warn!(
                "sealing the init program in memory: {e}; the first create will try again"
            );
        }
        // Each sliver holds a block of the public port range: the blocks bound how many live
        // at once.
        if let Some((_, range)) = config.leased_range() {
            config.slots.max_slots = config.slots.max_slots.min(range.blocks());
        }
        // Before anything on the host is touched: nothing of another node's is.
        let claims = Self::claim(&mut config)?;
        if config.disk_backing == DiskBacking::Quota
            && let Err(e) = host.disk_quota_setup(&config.state_dir, config.disk_capacity)
        {
            // Fails closed all the same: the watchdog freezes what it cannot measure.
            tracing::warn!(
                "disk grants cannot be capped by the kernel here ({e}): new slivers' dirs are \
                 plain directories, held to their grants by the disk watchdog"
            );
            config.disk_backing = DiskBacking::Directory;
        }
        let image = match &config.image {
            Some(image) => image.clone(),
            None => host
                .prepare_image(&config.state_dir.join("images").join("host"))
                .map_err(|source| SliverError::Host {
                    id: String::new(),
                    op: "prepare image",
                    source: Box::new(source),
                })?,
        };
        host.shaping_setup(&config.shaping)
            .map_err(|source| SliverError::Host {
                id: String::new(),
                op: "set up shaping",
                source: Box::new(source),
            })?;
        if let Some(table) = config.firewall() {
            // Made afresh at every start: a restart re-adopts it with what it held.
            host.firewall_setup(&table)
                .map_err(|source| SliverError::Host {
                    id: String::new(),
                    op: "set up the firewall",
                    source: Box::new(source),
                })?;
        }
        let engine = Slivers {
            host,
            config,
            image,
            store,
            state: Mutex::new(State::default()),
            claims: Mutex::new(claims),
        };
        let mut report = Reconciled::default();
        let (records, bad) = engine.store.load_all()?;
        report.problems.extend(bad.iter().map(ToString::to_string));
        for record in records {
            let id = record.spec.id.clone();
            if engine
                .host
                .init_alive(record.init_pid, record.init_start_time)
            {
                // Only the disk watchdog freezes slivers: one frozen by an earlier run of the
                // node stays so until the next check finds it back under its grant.
                let frozen = engine.host.cgroup_frozen(&record.cgroup).unwrap_or(false);
                let mut st = engine.lock();
                if frozen {
                    st.frozen.insert(id.clone());
                }
                st.live.insert(id.clone(), record);
                drop(st);
                report.adopted.push(id);
            } else {
                let failures = engine.teardown(&record, Done::ALL, false);
                report
                    .problems
                    .extend(failures.into_iter().map(|f| format!("{id}: {f}")));
                report.reaped.push(id);
            }
        }
        engine.remove_orphans(&mut report);
        // The table was made afresh: the slivers re-adopted lease their ports again.
        if let Err(e) = engine.forward_live_ports() {
            report
                .problems
                .push(format!("forwarding the live slivers' leased ports: {e}"));
        }
        Ok((engine, report))
    }

    /// Claims the node's share of the host (when it has one), picking its uid range if asked.
    fn claim(config: &mut NodeConfig) -> Result<Option<claim::Claims>, SliverError> {
        use claim::{ClaimError, Claims, Owner, Resource};
        let Some(share) = config.share.clone() else {
            return Ok(None);
        };
        let state_dir = config
            .state_dir
            .canonicalize()
            .map_err(|source| ClaimError::Io {
                op: "resolving",
                path: config.state_dir.clone(),
                source,
            })?;
        let owner = Owner {
            node: share.node_id.clone(),
            records_dir: state_dir.join("records"),
            state_dir: state_dir.clone(),
        };
        let netns = claim::current_netns()?;
        let mut wanted = vec![
            Resource::State { dir: state_dir },
            Resource::Cgroup {
                parent: config.cgroup_parent.clone(),
            },
            Resource::Links {
                netns,
                prefix: config.slots.ifname_prefix.clone(),
            },
            Resource::Link {
                netns,
                name: config.shaping.ifb.clone(),
            },
            Resource::Pool {
                netns,
                net: config.slots.pool,
                len: config.slots.pool_prefix,
            },
        ];
        let uids = |slots: &SlotLayout| {
            let (first, end) = slots.uid_span();
            Resource::Uids { first, end }
        };
        if !share.uid_auto {
            wanted.push(uids(&config.slots));
            return Ok(Some(Claims::take(&share.claim_dir, &owner, &wanted)?));
        }
        let bases = config.slots.auto_uid_bases(share.node_id.number());
        let choices: Vec<Resource> = bases
            .iter()
            .map(|&uid_base| {
                uids(&SlotLayout {
                    uid_base,
                    ..config.slots.clone()
                })
            })
            .collect();
        if choices.is_empty() {
            return Err(AllocError::OutOfRange(config.slots.capacity()).into());
        }
        let (claims, picked) =
            Claims::take_with_choice(&share.claim_dir, &owner, &wanted, &choices)?;
        if let Resource::Uids { first, .. } = picked {
            config.slots.uid_base = first;
        }
        Ok(Some(claims))
    }

    /// Where this node's sliver traces live.
    fn orphan_scope(&self) -> OrphanScope {
        OrphanScope {
            cgroup_parent: self.config.cgroup_parent.clone(),
            ifname_prefix: self.config.slots.ifname_prefix.clone(),
            ifb: self.config.shaping.ifb.clone(),
            slivers_dir: self.config.state_dir.join("slivers"),
        }
    }

    /// Removes the traces no live sliver accounts for (a crash mid-creation, a lost record).
    fn remove_orphans(&self, report: &mut Reconciled) {
        let scope = self.orphan_scope();
        let traces = match self.host.traces(&scope) {
            Ok(t) => t,
            Err(e) => {
                report.problems.push(format!("listing sliver traces: {e}"));
                return;
            }
        };
        let live: Vec<SliverRecord> = self.list();
        // Under its parent, only what is named like a sliver can be one of this node's: a
        // dir named otherwise (another node's own parent, `<id>.node`) is never touched.
        let not_a_sliver =
            |o: &Orphan| matches!(o, Orphan::Cgroup(name) if SliverId::new(name.as_str()).is_err());
        let accounted = |o: &Orphan| {
            live.iter().any(|r| match o {
                Orphan::Cgroup(name) => name == r.spec.id.as_str(),
                Orphan::Link(name) => *name == r.net.host_if,
                Orphan::Class(minor) => *minor == r.shape.class_minor,
                Orphan::Dir(path) => *path == r.dirs.root,
            })
        };
        for orphan in traces
            .into_iter()
            .filter(|o| !accounted(o) && !not_a_sliver(o))
        {
            match self.host.remove_orphan(&scope, &orphan) {
                Ok(()) => report.orphans.push(orphan),
                Err(e) => report.problems.push(format!("removing {orphan:?}: {e}")),
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host this engine drives.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The live slivers.
    pub fn list(&self) -> Vec<SliverRecord> {
        self.lock().live.values().cloned().collect()
    }

    /// One live sliver.
    pub fn get(&self, id: &SliverId) -> Option<SliverRecord> {
        self.lock().live.get(id).cloned()
    }

    /// Everything a sliver will be, derived from its spec and slot (pure).
    fn plan_record(
        &self,
        spec: &SliverSpec,
        slot: SlotAssignment,
    ) -> Result<SliverRecord, SliverError> {
        let caps = caps::sliver_mask(spec.kind, &spec.capabilities).map_err(SpecError::from)?;
        let dirs = SliverDirs::new(&self.config.state_dir, spec.id.as_str());
        let node_kbps = self.config.shaping.node_kbps;
        let rate = spec.resources.egress_kbps.clamp(8, node_kbps.max(8));
        let ceil = spec
            .egress_ceil_kbps
            .unwrap_or(node_kbps)
            .clamp(rate, node_kbps.max(rate));
        Ok(SliverRecord {
            cgroup: format!("{}/{}", self.config.cgroup_parent, spec.id),
            net: NetAttach {
                host_if: slot.host_if.clone(),
                sliver_if: "eth0".into(),
                host_addr: slot.host_addr,
                sliver_addr: slot.sliver_addr,
            },
            shape: Shape {
                node: self.config.shaping.clone(),
                host_if: slot.host_if.clone(),
                src: slot.sliver_addr,
                class_minor: slot.class_minor,
                filter_prio: slot.filter_prio,
                rate_kbps: rate,
                ceil_kbps: ceil,
            },
            caps,
            dirs,
            spec: self.told_where(spec, slot.slot),
            slot,
            init_pid: 0,
            init_start_time: 0,
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            disk_backing: if spec.resources.disk_bytes > 0 {
                self.config.disk_backing
            } else {
                DiskBacking::Directory
            },
        })
    }

    /// The spec with the public face its slot gives it in what it is told (the node's public
    /// address and its leased ports), whatever the spec said there.
    fn told_where(&self, spec: &SliverSpec, slot: u32) -> SliverSpec {
        let mut spec = spec.clone();
        if let Some(about) = &mut spec.about {
            let public = self.config.public_endpoint(slot, spec.resources.ports);
            about.public_address = public.as_ref().map(|(address, _)| address.to_string());
            about.ports = public.map(|(_, ports)| ports).unwrap_or_default();
        }
        spec
    }

    fn limits(spec: &SliverSpec) -> CgroupLimits {
        let r = &spec.resources;
        CgroupLimits {
            cpu_weight_millis: r.cpu_millis,
            cpu_quota_millis: (spec.cpu_hard_cap && r.cpu_millis > 0).then_some(r.cpu_millis),
            memory_bytes: (r.memory_bytes > 0).then_some(r.memory_bytes),
            pids_max: Some(spec.pids_max),
        }
    }

    /// The public port map entries of a sliver: each leased port → its address.
    fn leased_ports(&self, record: &SliverRecord) -> Vec<(u16, std::net::Ipv4Addr)> {
        self.config
            .public_endpoint(record.slot.slot, record.spec.resources.ports)
            .map(|(_, ports)| {
                ports
                    .into_iter()
                    .map(|p| (p, record.net.sliver_addr))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Puts every live sliver's leased ports back in the node's map (after the table was
    /// made afresh).
    fn forward_live_ports(&self) -> Result<(), HostError> {
        let Some(table) = self.config.firewall() else {
            return Ok(());
        };
        let live: Vec<SliverRecord> = self.lock().live.values().cloned().collect();
        let entries: Vec<(u16, std::net::Ipv4Addr)> =
            live.iter().flat_map(|r| self.leased_ports(r)).collect();
        if entries.is_empty() {
            return Ok(());
        }
        self.host.ports_forward(&table, true, &entries)
    }

    /// Creates a sliver. On failure every step already done is undone.
    pub fn create(&self, spec: SliverSpec) -> Result<SliverRecord, SliverError> {
        spec.validate()?;
        // A node without a public address or port range leases none: its slivers are made
        // without, and their leases say so (no public endpoint).
        if let Some(most) = self.config.ports_per_sliver()
            && spec.resources.ports > most
        {
            return Err(SliverError::Spec(SpecError::Ports {
                id: spec.id.to_string(),
                asked: spec.resources.ports,
                most,
            }));
        }
        let slot = {
            let mut st = self.lock();
            if st.live.contains_key(&spec.id) || st.creating.contains_key(&spec.id) {
                return Err(SliverError::Exists(spec.id.clone()));
            }
            let used = st
                .live
                .values()
                .map(|r| r.slot.slot)
                .chain(st.creating.values().copied());
            let slot = self
                .config
                .slots
                .first_free(used)
                .map_err(|e| self.config.full_reason(e))?;
            st.creating.insert(spec.id.clone(), slot);
            slot
        };
        let result = self
            .config
            .slots
            .assign(slot)
            .map_err(SliverError::from)
            .and_then(|assignment| self.plan_record(&spec, assignment))
            .and_then(|record| self.build(record));
        let mut st = self.lock();
        st.creating.remove(&spec.id);
        if let Ok(record) = &result {
            st.live.insert(spec.id.clone(), record.clone());
        }
        result
    }

    fn build(&self, mut record: SliverRecord) -> Result<SliverRecord, SliverError> {
        let mut done = Done::default();
        match self.build_steps(&mut record, &mut done) {
            Ok(()) => Ok(record),
            Err((step, source)) => {
                let rollback = self.teardown(&record, done, false);
                Err(SliverError::Create {
                    id: record.spec.id.clone(),
                    step,
                    source: Box::new(source),
                    rollback,
                })
            }
        }
    }

    fn build_steps(
        &self,
        record: &mut SliverRecord,
        done: &mut Done,
    ) -> Result<(), (&'static str, HostError)> {
        let spec = record.spec.clone();
        if record.disk_backing == DiskBacking::Quota {
            // Before the dirs are made: they must all be in the capped subvolume.
            done.dirs = true;
            self.host
                .disk_quota_cap(&record.dirs, spec.resources.disk_bytes)
                .map_err(|e| ("cap disk", e))?;
        }
        self.host
            .prepare_dirs(&record.dirs, &record.slot.uids)
            .map_err(|e| ("prepare dirs", e))?;
        done.dirs = true;
        Self::write_about(record).map_err(|e| ("tell the sliver where it is", e))?;
        // The hard CPU quota waits until the sliver is ready: setting it up (mounts, pivot,
        // network) is the node's work, and under a small quota (10 millicores: 1 ms of CPU per
        // 100 ms period) the init would be throttled for hundreds of milliseconds.
        let limits = Self::limits(&spec);
        self.host
            .cgroup_create(
                &record.cgroup,
                &CgroupLimits {
                    cpu_quota_millis: None,
                    ..limits
                },
            )
            .map_err(|e| ("create cgroup", e))?;
        done.cgroup = true;
        let image = match &spec.image {
            Some(dir) => Image::Directory(dir.clone()),
            None => self.image.clone(),
        };
        let req = InitRequest {
            id: spec.id.to_string(),
            uids: record.slot.uids,
            cgroup: record.cgroup.clone(),
            host_pid: spec.host_pid_view,
            init_path: self.config.init_path.clone(),
            lower: Some(image.lower().to_path_buf()),
        };
        let mut init = self.host.spawn_init(&req).map_err(|e| ("spawn init", e))?;
        record.init_pid = init.pid;
        record.init_start_time = init.start_time;
        done.init = true;
        self.host
            .net_attach(init.pid, &record.net)
            .map_err(|e| ("attach network", e))?;
        done.net = true;
        self.host
            .shape_add(&record.shape)
            .map_err(|e| ("add egress bucket", e))?;
        done.shape = true;
        let entries = self.leased_ports(record);
        if let Some(table) = self.config.firewall()
            && !entries.is_empty()
        {
            done.ports = true;
            self.host
                .ports_forward(&table, true, &entries)
                .map_err(|e| ("forward leased ports", e))?;
        }
        let plan = init::InitPlan {
            hostname: spec.id.to_string(),
            steps: rootfs::mount_plan(
                &record.dirs,
                &image,
                &PlanOptions {
                    tmp_bytes: self.config.tmp_bytes,
                    host_proc: spec.host_pid_view,
                    upper_tmpfs_bytes: (record.disk_backing == DiskBacking::Tmpfs)
                        .then_some(spec.resources.disk_bytes),
                },
            ),
            caps: record.caps,
            cgroup_ns: true,
            net: Some(init::SliverNet {
                ifname: record.net.sliver_if.clone(),
                addr: record.net.sliver_addr,
                prefix: 31,
                gateway: record.net.host_addr,
            }),
            defer_detach: !record
                .caps
                .contains(::caps::Capability::CAP_SYS_ADMIN.index()),
            seccomp: seccomp::SeccompPlan::for_spec(&spec),
        };
        self.host
            .start_init(&mut init, &plan)
            .map_err(|e| ("start init", e))?;
        if let Some(millis) = limits.cpu_quota_millis {
            self.host
                .cgroup_cpu_quota(&record.cgroup, millis)
                .map_err(|e| ("set cpu quota", e))?;
        }
        self.store.save(record).map_err(|e| {
            (
                "save record",
                HostError::Io {
                    op: "save record",
                    path: record.dirs.root.clone(),
                    source: std::io::Error::other(e.to_string()),
                },
            )
        })?;
        done.record = true;
        Ok(())
    }

    /// Writes what the sliver is told about where it is in its dir, for its init to bind.
    fn write_about(record: &SliverRecord) -> Result<(), HostError> {
        let path = record.dirs.about();
        let facts = about::SliverFacts::of(record.spec.about.as_ref(), record.net.sliver_addr);
        about::write(&path, &facts).map_err(|source| HostError::Io {
            op: "write",
            path,
            source,
        })
    }

    /// Undoes the steps in `done`, in the order that frees things safely: stop every process
    /// first, then the network, the cgroup, the dirs, the record. Returns what failed.
    fn teardown(&self, record: &SliverRecord, done: Done, keep_upper: bool) -> Vec<String> {
        let mut failures = Vec::new();
        let mut note = |what: &str, r: Result<(), HostError>| {
            if let Err(e) = r {
                tracing::warn!(sliver = %record.spec.id, "{what}: {e}");
                failures.push(format!("{what}: {e}"));
            }
        };
        if done.init && done.cgroup && self.host.cgroup_frozen(&record.cgroup).unwrap_or(false) {
            // A frozen init does not die.
            note("thaw", self.host.cgroup_freeze(&record.cgroup, false));
        }
        if done.init {
            note(
                "kill init",
                self.host.kill_init(record.init_pid, record.init_start_time),
            );
        }
        if done.shape {
            note(
                "remove egress bucket",
                self.host.shape_remove(&record.shape),
            );
        }
        if done.ports
            && let Some(table) = self.config.firewall()
        {
            let leased = self.leased_ports(record);
            if !leased.is_empty() {
                note(
                    "stop forwarding leased ports",
                    self.host.ports_forward(&table, false, &leased),
                );
            }
        }
        if done.net {
            note("detach network", self.host.net_detach(&record.net));
        }
        if done.cgroup {
            note("destroy cgroup", self.host.cgroup_destroy(&record.cgroup));
        }
        if done.dirs {
            note(
                "remove dirs",
                self.host.remove_dirs(&record.dirs, keep_upper),
            );
        }
        if done.record
            && failures.is_empty()
            && let Err(e) = self.store.remove(record.spec.id.as_str())
        {
            failures.push(format!("remove record: {e}"));
        }
        failures
    }

    /// Destroys a sliver: every process, its veth and bucket, cgroup, dirs (the upper dir is
    /// kept when `keep_upper`) and record.
    pub fn destroy(&self, id: &SliverId, keep_upper: bool) -> Result<(), SliverError> {
        let record = self
            .lock()
            .live
            .remove(id)
            .ok_or_else(|| SliverError::NotFound(id.clone()))?;
        let failures = self.teardown(&record, Done::ALL, keep_upper);
        if failures.is_empty() {
            let mut st = self.lock();
            st.frozen.remove(id);
            st.disk.remove(id);
            st.stragglers.remove(id);
            Ok(())
        } else {
            self.lock().live.insert(id.clone(), record);
            Err(SliverError::Destroy {
                id: id.clone(),
                failures,
            })
        }
    }

    /// Restores the node's firewall table when it is gone (deleted by hand, or by a tool
    /// that flushed the ruleset); returns whether it had to. The reconciler calls it.
    pub fn ensure_firewall(&self) -> Result<bool, SliverError> {
        let Some(table) = self.config.firewall() else {
            return Ok(false);
        };
        let host_err = |op, source| SliverError::Host {
            id: String::new(),
            op,
            source: Box::new(source),
        };
        if self
            .host
            .firewall_present(&table)
            .map_err(|e| host_err("read the firewall", e))?
        {
            return Ok(false);
        }
        self.host
            .firewall_setup(&table)
            .map_err(|e| host_err("restore the firewall", e))?;
        self.forward_live_ports()
            .map_err(|e| host_err("restore the leased ports", e))?;
        tracing::warn!(
            table = %table.table,
            "the node's firewall table was gone (changed by hand?); restored it"
        );
        Ok(true)
    }

    /// What a clean shutdown leaves: with no live sliver, the node's firewall table is
    /// removed (slivers outlive the daemon, so with any left it stays, and the next start
    /// makes it afresh).
    pub fn close(&self) -> Result<(), SliverError> {
        if !self.lock().live.is_empty() {
            return Ok(());
        }
        if let Some(table) = self.config.firewall() {
            self.host
                .firewall_teardown(&table)
                .map_err(|source| SliverError::Host {
                    id: String::new(),
                    op: "remove the firewall",
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }

    /// Destroys every sliver and removes the node-wide shaping device (used when a node is
    /// decommissioned, and by tests). A node with a share of the host ([`HostShare`]) also
    /// removes its own cgroup parent and gives up its claims once every sliver is gone.
    pub fn destroy_all(&self) -> Result<(), SliverError> {
        let ids: Vec<SliverId> = self.lock().live.keys().cloned().collect();
        let mut failures = Vec::new();
        for id in ids {
            if let Err(e) = self.destroy(&id, false) {
                failures.push(e.to_string());
            }
        }
        if let Err(e) = self.host.shaping_teardown(&self.config.shaping) {
            failures.push(format!("remove shaping: {e}"));
        }
        if let Some(table) = self.config.firewall()
            && let Err(e) = self.host.firewall_teardown(&table)
        {
            failures.push(format!("remove the firewall table: {e}"));
        }
        if failures.is_empty()
            && self.config.disk_backing == DiskBacking::Quota
            && let Err(e) = self.host.disk_quota_teardown(&self.config.state_dir)
        {
            failures.push(format!("remove the disk quota filesystem: {e}"));
        }
        if failures.is_empty() && self.config.share.is_some() {
            // The node's own parent: its claim kept every other node out of it.
            if let Err(e) = self.host.cgroup_destroy(&self.config.cgroup_parent) {
                failures.push(format!("remove cgroup parent: {e}"));
            } else if let Some(claims) =
                self.claims.lock().unwrap_or_else(|p| p.into_inner()).take()
                && let Err(e) = claims.retire()
            {
                failures.push(format!("give up claims: {e}"));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(SliverError::DestroyAll { failures })
        }
    }

    /// Where `cmd` runs, and `cmd` with what the sliver is told in its environment.
    fn command_for(
        &self,
        id: &SliverId,
        cmd: &ExecCommand,
    ) -> Result<(ExecTarget, ExecCommand), SliverError> {
        let record = self
            .get(id)
            .ok_or_else(|| SliverError::NotFound(id.clone()))?;
        let facts = about::SliverFacts::of(record.spec.about.as_ref(), record.net.sliver_addr);
        let cmd = ExecCommand {
            env: about::command_env(&cmd.env, &facts),
            ..cmd.clone()
        };
        let target = ExecTarget {
            init_pid: record.init_pid,
            start_time: record.init_start_time,
            cgroup: record.cgroup,
            caps: record.caps,
            host_pid: record.spec.host_pid_view,
            enter_program: self.config.init_path.clone(),
            seccomp: seccomp::SeccompPlan::for_spec(&record.spec),
        };
        Ok((target, cmd))
    }

    /// Runs a command in a sliver and returns its (bounded) output. Its environment also
    /// holds what the sliver is told about where it is ([`about`]).
    pub fn exec(&self, id: &SliverId, cmd: &ExecCommand) -> Result<ExecOutput, SliverError> {
        let (target, cmd) = self.command_for(id, cmd)?;
        self.host
            .exec(&target, &cmd)
            .map_err(|source| SliverError::Host {
                id: id.to_string(),
                op: "exec",
                source: Box::new(source),
            })
    }

    /// Starts a command in a sliver, its standard streams piped to the caller (its
    /// environment as [`Slivers::exec`]'s).
    pub fn spawn(&self, id: &SliverId, cmd: &ExecCommand) -> Result<Spawned, SliverError> {
        let (target, cmd) = self.command_for(id, cmd)?;
        self.host
            .spawn(&target, &cmd)
            .map_err(|source| SliverError::Host {
                id: id.to_string(),
                op: "spawn",
                source: Box::new(source),
            })
    }

    /// Starts a command in a sliver as [`Slivers::spawn`] does, with the terminal `tty` (a
    /// pty's slave) as its standard streams and controlling terminal (an SSH login).
    pub fn spawn_tty(
        &self,
        id: &SliverId,
        cmd: &ExecCommand,
        tty: std::os::fd::OwnedFd,
    ) -> Result<Spawned, SliverError> {
        let (target, cmd) = self.command_for(id, cmd)?;
        self.host
            .spawn_tty(&target, &cmd, tty)
            .map_err(|source| SliverError::Host {
                id: id.to_string(),
                op: "spawn",
                source: Box::new(source),
            })
    }

    /// Connects to port `port` of the sliver itself, from inside its network namespace: `host`
    /// must name the sliver (`localhost`, a loopback address, or the sliver's own address);
    /// anything else is refused, so a forward never reaches past the sliver.
    pub fn connect_inside(
        &self,
        id: &SliverId,
        host: &str,
        port: u16,
    ) -> Result<std::net::TcpStream, SliverError> {
        let record = self
            .get(id)
            .ok_or_else(|| SliverError::NotFound(id.clone()))?;
        let ip: std::net::IpAddr = match host {
            "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
            other => match other.parse::<std::net::IpAddr>() {
                Ok(ip)
                    if ip.is_loopback() || ip == std::net::IpAddr::V4(record.net.sliver_addr) =>
                {
                    ip
                }
                _ => {
                    return Err(SliverError::NotTheSliver {
                        id: id.clone(),
                        detail: format!(
                            "only the sliver's own ports can be reached: forward to localhost \
                             or {}, not {host}",
                            record.net.sliver_addr
                        ),
                    });
                }
            },
        };
        let (target, _) = self.command_for(id, &ExecCommand::new(["/bin/true"]))?;
        self.host
            .connect_inside(&target, std::net::SocketAddr::new(ip, port))
            .map_err(|source| SliverError::Host {
                id: id.to_string(),
                op: "connect",
                source: Box::new(source),
            })
    }

    fn disk_target(record: &SliverRecord) -> DiskTarget {
        DiskTarget {
            dirs: record.dirs.clone(),
            backing: record.disk_backing,
            init_pid: record.init_pid,
            cgroup: record.cgroup.clone(),
            limit: record.spec.resources.disk_bytes,
        }
    }

    /// Disk use of every live sliver against its grant, measured now (nothing is acted on;
    /// see [`Slivers::check_disk`]).
    pub fn disk_report(&self) -> Vec<DiskReport> {
        let frozen = self.lock().frozen.clone();
        self.list()
            .into_iter()
            .map(|r| {
                let (used, error) = match self.host.disk_used(&Self::disk_target(&r)) {
                    Ok(used) => (Some(used), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                let limit = r.spec.resources.disk_bytes;
                let over = match used {
                    Some(used) => used > limit,
                    // Fail closed (see `DiskReport::over`).
                    None => r.disk_backing != DiskBacking::Tmpfs,
                };
                DiskReport {
                    over: limit > 0 && over,
                    error,
                    frozen: frozen.contains(&r.spec.id),
                    backing: r.disk_backing,
                    id: r.spec.id,
                    used,
                    limit,
                }
            })
            .collect()
    }

    /// The disk watchdog's pass: measures every live sliver; freezes each one over its grant
    /// (a tmpfs-backed one cannot be: the kernel caps it) and thaws each frozen one that is
    /// back under it. Returns the reports (also kept for [`Slivers::usage`] and
    /// [`Slivers::condition`]).
    pub fn check_disk(&self) -> Vec<DiskReport> {
        let mut reports = self.disk_report();
        for report in &mut reports {
            let Some(record) = self.get(&report.id) else {
                continue;
            };
            let used = report.used.unwrap_or(0);
            if let (Some(error), false) = (&report.error, report.over) {
                tracing::warn!(sliver = %report.id, "disk use could not be measured: {error}");
            }
            if report.over && !report.frozen {
                match self.host.cgroup_freeze(&record.cgroup, true) {
                    Ok(()) => {
                        tracing::warn!(
                            sliver = %report.id,
                            used,
                            limit = report.limit,
                            error = ?report.error,
                            "over its disk grant (or not measurable): processes frozen"
                        );
                        report.frozen = true;
                        self.lock().frozen.insert(report.id.clone());
                    }
                    Err(e) => tracing::error!(
                        sliver = %report.id,
                        used,
                        limit = report.limit,
                        error = ?report.error,
                        "over its disk grant (or not measurable), but cannot freeze it: {e}"
                    ),
                }
            } else if report.over && report.frozen {
                self.freeze_stragglers(&record);
            } else if report.frozen && !report.over && report.used.is_some() {
                match self.host.cgroup_freeze(&record.cgroup, false) {
                    Ok(()) => {
                        tracing::info!(
                            sliver = %report.id,
                            used,
                            limit = report.limit,
                            "back under its disk grant: thawed"
                        );
                        report.frozen = false;
                        let mut st = self.lock();
                        st.frozen.remove(&report.id);
                        st.stragglers.remove(&report.id);
                    }
                    Err(e) => tracing::error!(sliver = %report.id, "cannot thaw: {e}"),
                }
            }
        }
        let mut st = self.lock();
        st.disk = reports
            .iter()
            .filter(|r| st.live.contains_key(&r.id))
            .map(|r| (r.id.clone(), r.clone()))
            .collect();
        reports
    }

    /// Freezes the processes of a frozen sliver that ran outside its freezer at this check
    /// and the one before (commands started while it is over its grant get one to two
    /// periods to clean up).
    fn freeze_stragglers(&self, record: &SliverRecord) {
        let id = &record.spec.id;
        let now: BTreeSet<u32> = match self.host.frozen_stragglers(&record.cgroup) {
            Ok(pids) => pids.into_iter().collect(),
            Err(e) => {
                tracing::warn!(sliver = %id, "listing processes outside the freezer: {e}");
                return;
            }
        };
        let seen = self.lock().stragglers.get(id).cloned().unwrap_or_default();
        let late: Vec<u32> = now.intersection(&seen).copied().collect();
        let mut left = now;
        if !late.is_empty() {
            match self.host.freeze_stragglers(&record.cgroup, &late) {
                Ok(()) => {
                    tracing::warn!(
                        sliver = %id,
                        pids = ?late,
                        "still over its disk grant: commands run since were frozen too"
                    );
                    left.retain(|p| !late.contains(p));
                }
                Err(e) => tracing::error!(sliver = %id, "cannot freeze {late:?}: {e}"),
            }
        }
        self.lock().stragglers.insert(id.clone(), left);
    }

    /// What is wrong with a sliver, for its holder (`None`: nothing): today, being over its
    /// disk grant, as of the last [`Slivers::check_disk`].
    pub fn condition(&self, id: &SliverId) -> Option<String> {
        self.lock().disk.get(id).and_then(DiskReport::condition)
    }

    /// What every live sliver has used: CPU time and memory from its cgroup, egress bytes from
    /// its bucket's counters, disk as of the last watchdog check. A figure the host cannot
    /// read is `None` (and logged at debug level).
    pub fn usage(&self) -> Vec<UsageSample> {
        let records = self.list();
        if records.is_empty() {
            return Vec::new();
        }
        let egress = match self.host.egress_counters(&self.config.shaping) {
            Ok(counters) => Some(counters),
            Err(e) => {
                tracing::debug!("reading egress counters: {e}");
                None
            }
        };
        let disk = self.lock().disk.clone();
        records
            .into_iter()
            .map(|r| {
                let cg = self
                    .host
                    .cgroup_usage(&r.cgroup)
                    .map_err(|e| tracing::debug!(sliver = %r.spec.id, "reading cgroup use: {e}"))
                    .unwrap_or_default();
                UsageSample {
                    cpu_ns: cg.cpu_ns,
                    memory_bytes: cg.memory_bytes,
                    egress_bytes: egress
                        .as_ref()
                        .and_then(|c| c.get(&r.shape.class_minor).copied()),
                    disk: disk.get(&r.spec.id).cloned(),
                    id: r.spec.id,
                }
            })
            .collect()
    }

    /// Bytes the sliver has written to its root filesystem (its writable layer).
    pub fn disk_usage(&self, id: &SliverId) -> Result<u64, SliverError> {
        let record = self
            .get(id)
            .ok_or_else(|| SliverError::NotFound(id.clone()))?;
        self.host
            .disk_used(&Self::disk_target(&record))
            .map_err(|source| SliverError::Host {
                id: id.to_string(),
                op: "disk usage",
                source: Box::new(source),
            })
    }

    /// The SSH public keys that may log in to the sliver as root.
    pub fn list_keys(&self, id: &SliverId) -> Result<Vec<String>, SliverError> {
        let record = self
            .get(id)
            .ok_or_else(|| SliverError::NotFound(id.clone()))?;
        read_keys(id, &record.dirs.keys)
    }

    /// Adds an SSH public key (a no-op when it is there already).
    pub fn add_key(&self, id: &SliverId, key: &str) -> Result<(), SliverError> {
        let key = check_key(id, key)?;
        let record = self
            .get(id)
            .ok_or_else(|| SliverError::NotFound(id.clone()))?;
        let mut keys = read_keys(id, &record.dirs.keys)?;
        if !keys.iter().any(|k| key_blob(k) == key_blob(&key)) {
            keys.push(key);
            write_keys(id, &record.dirs.keys, &keys)?;
        }
        Ok(())
    }

    /// Removes an SSH public key (matched on its key material); `false` when it was not there.
    pub fn remove_key(&self, id: &SliverId, key: &str) -> Result<bool, SliverError> {
        let key = check_key(id, key)?;
        let record = self
            .get(id)
            .ok_or_else(|| SliverError::NotFound(id.clone()))?;
        let mut keys = read_keys(id, &record.dirs.keys)?;
        let before = keys.len();
        keys.retain(|k| key_blob(k) != key_blob(&key));
        if keys.len() == before {
            return Ok(false);
        }
        write_keys(id, &record.dirs.keys, &keys)?;
        Ok(true)
    }
}

fn check_key(id: &SliverId, key: &str) -> Result<String, SliverError> {
    keyline::check(key)
        .map(str::to_owned)
        .map_err(|reason| SliverError::InvalidKey {
            id: id.clone(),
            reason,
        })
}

fn key_blob(key: &str) -> &str {
    keyline::blob(key)
}

fn read_keys(id: &SliverId, path: &std::path::Path) -> Result<Vec<String>, SliverError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(SliverError::Keys {
            id: id.clone(),
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Rewrites the keys file in place: it is bind-mounted into the sliver, so its inode must stay.
fn write_keys(id: &SliverId, path: &std::path::Path, keys: &[String]) -> Result<(), SliverError> {
    let err = |source| SliverError::Keys {
        id: id.clone(),
        path: path.to_path_buf(),
        source,
    };
    let mut text = keys.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(path)
        .map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests;
