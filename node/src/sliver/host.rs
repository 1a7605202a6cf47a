//! The one seam for every privileged operation on the node, and a recording fake.
//!
//! [`Host`] is what the sliver engine asks of the machine: directories, cgroups, the init
//! process, veths, shaping, exec. [`super::linux::LinuxHost`] does it for real (nix, netlink,
//! cgroupfs); [`RecordingHost`] records each call, keeps a set of the resources it "holds" and
//! fails on demand, so creation order and rollback are unit-tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::alloc::UidRange;
use super::caps::CapMask;
use super::cgroup::{CgroupError, CgroupLimits, CgroupUsage};
use super::firewall::Firewall;
use super::init::InitPlan;
use super::netlink::NetlinkError;
use super::rootfs::{DiskBacking, Image, SliverDirs};

/// A failed privileged operation.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file system operation.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A system call.
    #[error("{op}: {source}")]
    Sys {
        /// What was being done.
        op: String,
        /// The errno.
        source: nix::errno::Errno,
    },
    /// A cgroup operation.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A netlink operation.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The sliver's init reported a failure or died while building the sliver.
    #[error("sliver init: {0}")]
    Init(String),
    /// An exec'd program ran past its deadline.
    #[error("exec timed out after {0:?}")]
    Timeout(Duration),
    /// The operation is not available on this host.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The node's firewall table could not be made, read or removed.
    #[error("firewall: {0}")]
    Firewall(String),
    /// A failure injected by the fake.
    #[error("injected failure at {0}")]
    Injected(String),
}

/// The init process of a sliver being created; `P` is what the host keeps between spawn and
/// start ([`Host::Pending`]).
#[derive(Debug)]
pub struct InitHandle<P> {
    /// Its pid on the host.
    pub pid: u32,
    /// Its start time (clock ticks since boot, `/proc/<pid>/stat` field 22), against pid reuse.
    pub start_time: u64,
    /// Host-specific state kept between spawn and start (the real host's sync pipes); taken
    /// by [`Host::start_init`].
    pub pending: Option<P>,
}

/// How to spawn a sliver's init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitRequest {
    /// The sliver (for messages).
    pub id: String,
    /// Host ids backing the sliver's ids.
    pub uids: UidRange,
    /// The cgroup to join before anything runs.
    pub cgroup: String,
    /// Stay in the host's pid namespace (admin host view).
    pub host_pid: bool,
    /// The init program.
    pub init_path: PathBuf,
    /// The image's lower layer, to be id-mapped for the sliver (see [`super::mountfd`]).
    pub lower: Option<PathBuf>,
}

/// A sliver's network attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAttach {
    /// Host-side veth name.
    pub host_if: String,
    /// The veth's name inside the sliver.
    pub sliver_if: String,
    /// Host-side address (the sliver's gateway).
    pub host_addr: Ipv4Addr,
    /// The sliver's address.
    pub sliver_addr: Ipv4Addr,
}

/// The node-wide egress bucket (paper §3.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeShaping {
    /// The IFB device all sliver egress is redirected through.
    pub ifb: String,
    /// The root bucket's rate: the node's egress cap, kbit/s.
    pub node_kbps: u64,
}

/// A sliver's egress bucket: a child of the node's root bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// The node's bucket.
    pub node: NodeShaping,
    /// The sliver's host-side veth.
    pub host_if: String,
    /// The sliver's address (its packets' only valid source).
    pub src: Ipv4Addr,
    /// HTB class minor (class `1:minor`).
    pub class_minor: u16,
    /// Filter priority of the classifier on the IFB.
    pub filter_prio: u16,
    /// Guaranteed rate, kbit/s.
    pub rate_kbps: u64,
    /// Most it may borrow up to, kbit/s.
    pub ceil_kbps: u64,
}

/// Where the node's slivers leave traces, to find the ones no record accounts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanScope {
    /// Parent of every sliver cgroup.
    pub cgroup_parent: String,
    /// Prefix of host-side veth names (followed by the slot number).
    pub ifname_prefix: String,
    /// The node's shaping device (its classes with minor 0x10 and up are slivers').
    pub ifb: String,
    /// `<state>/slivers`.
    pub slivers_dir: PathBuf,
}

/// A sliver trace that no record accounts for (a crash mid-creation, a lost record).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Orphan {
    /// A cgroup under the parent (its processes are killed with it).
    Cgroup(String),
    /// A host-side veth.
    Link(String),
    /// An HTB class (minor) on the shaping device, and its classifier.
    Class(u16),
    /// A sliver dir.
    Dir(PathBuf),
}

/// A sliver's writable layer, whose disk use is measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskTarget {
    /// The sliver's dirs (the upper dir is the layer when directory-backed).
    pub dirs: SliverDirs,
    /// What backs the layer.
    pub backing: DiskBacking,
    /// The sliver's init (a tmpfs-backed layer is reached through its root).
    pub init_pid: u32,
    /// The sliver's cgroup: its processes may hold deleted files open.
    pub cgroup: String,
    /// Its grant, in bytes (a kernel cap found above it is an error).
    pub limit: u64,
}

/// Where to run a command: a live sliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecTarget {
    /// The sliver's init pid (its namespaces are reached through `/proc/<pid>/ns`).
    pub init_pid: u32,
    /// Its start time.
    pub start_time: u64,
    /// Its cgroup.
    pub cgroup: String,
    /// Capabilities root keeps there.
    pub caps: CapMask,
    /// The sliver shares the host's pid namespace.
    pub host_pid: bool,
    /// The program that enters the sliver (`sliver-init`, run as `sliver-init enter`; see
    /// [`super::enter`]).
    pub enter_program: PathBuf,
    /// The sliver's seccomp filter, installed in every command run there.
    pub seccomp: super::seccomp::SeccompPlan,
}

/// A command to run in a sliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecCommand {
    /// Program (absolute path inside the sliver) and arguments.
    pub argv: Vec<String>,
    /// Environment; `PATH`, `HOME` and `TERM` get defaults when absent.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// User id inside the sliver.
    #[serde(default)]
    pub uid: u32,
    /// Group id inside the sliver.
    #[serde(default)]
    pub gid: u32,
    /// Working directory inside the sliver.
    #[serde(default = "default_cwd")]
    pub cwd: String,
    /// Bytes fed to standard input.
    #[serde(default)]
    pub stdin: Vec<u8>,
    /// Deadline; the program is killed past it.
    pub timeout: Duration,
    /// Most bytes kept of each of stdout and stderr.
    pub output_limit: usize,
}

fn default_cwd() -> String {
    "/".to_string()
}

impl ExecCommand {
    /// A command with default settings: root, `/`, 30 s, 1 MiB of output.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        ExecCommand {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            uid: 0,
            gid: 0,
            cwd: default_cwd(),
            stdin: Vec::new(),
            timeout: Duration::from_secs(30),
            output_limit: 1 << 20,
        }
    }

    /// `sh -c script`.
    pub fn shell(script: &str) -> Self {
        ExecCommand::new(["/bin/sh", "-c", script])
    }
}

/// What a finished command left.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecOutput {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal, when it was killed.
    pub signal: Option<i32>,
    /// Standard output (at most the limit).
    pub stdout: Vec<u8>,
    /// Standard error (at most the limit).
    pub stderr: Vec<u8>,
    /// Output was cut at the limit.
    pub truncated: bool,
}

impl ExecOutput {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Standard output as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A process started in a sliver whose output streams to the caller.
#[derive(Debug)]
pub struct Spawned {
    /// The process (pipes for stdin/stdout/stderr).
    pub child: std::process::Child,
}

/// Every privileged operation the sliver engine needs.
pub trait Host: Send + Sync {
    /// What the host keeps of an init between [`Host::spawn_init`] and [`Host::start_init`].
    type Pending: Send + std::fmt::Debug;
    /// Makes the reference image skeleton (once per node).
    fn prepare_image(&self, skeleton: &std::path::Path) -> Result<Image, HostError>;
    /// Makes a sliver's dirs; the upper and work dirs belong to the sliver's root (the first id
    /// of `uids`). A kept upper dir from another range is moved to this one.
    fn prepare_dirs(&self, dirs: &SliverDirs, uids: &UidRange) -> Result<(), HostError>;
    /// Removes a sliver's dirs (keeping the upper dir if asked).
    fn remove_dirs(&self, dirs: &SliverDirs, keep_upper: bool) -> Result<(), HostError>;
    /// Creates a cgroup with its limits.
    fn cgroup_create(&self, cgroup: &str, limits: &CgroupLimits) -> Result<(), HostError>;
    /// Kills what is left in a cgroup and removes it.
    fn cgroup_destroy(&self, cgroup: &str) -> Result<(), HostError>;
    /// Sets the hard CPU quota of a cgroup, in thousandths of a core.
    fn cgroup_cpu_quota(&self, cgroup: &str, millis: u64) -> Result<(), HostError>;
    /// Clones the init into new namespaces, writes its id maps and puts it in its cgroup. It
    /// waits, before exec, for [`Host::start_init`].
    fn spawn_init(&self, req: &InitRequest) -> Result<InitHandle<Self::Pending>, HostError>;
    /// Lets the init exec, sends it the plan and waits until it reports the sliver ready.
    fn start_init(
        &self,
        init: &mut InitHandle<Self::Pending>,
        plan: &InitPlan,
    ) -> Result<(), HostError>;
    /// Kills an init (and with it the sliver's pid namespace) and waits until it is gone.
    fn kill_init(&self, pid: u32, start_time: u64) -> Result<(), HostError>;
    /// Whether the init `pid` started at `start_time` is alive.
    fn init_alive(&self, pid: u32, start_time: u64) -> bool;
    /// Creates the sliver's veth, addresses, routes and anti-spoofing.
    fn net_attach(&self, init_pid: u32, net: &NetAttach) -> Result<(), HostError>;
    /// Removes the sliver's veth (and with it its host-side routes and filters).
    fn net_detach(&self, net: &NetAttach) -> Result<(), HostError>;
    /// Makes the node-wide shaping device and root bucket (idempotent).
    fn shaping_setup(&self, node: &NodeShaping) -> Result<(), HostError>;
    /// Removes the node-wide shaping device.
    fn shaping_teardown(&self, node: &NodeShaping) -> Result<(), HostError>;
    /// Adds a sliver's bucket and steers its egress into it.
    fn shape_add(&self, shape: &Shape) -> Result<(), HostError>;
    /// Removes a sliver's bucket.
    fn shape_remove(&self, shape: &Shape) -> Result<(), HostError>;
    /// Every sliver trace in `scope` (records decide which are orphans).
    fn traces(&self, scope: &OrphanScope) -> Result<Vec<Orphan>, HostError>;
    /// Removes one orphaned trace.
    fn remove_orphan(&self, scope: &OrphanScope, orphan: &Orphan) -> Result<(), HostError>;
    /// Runs a command in a sliver and collects its output.
    fn exec(&self, target: &ExecTarget, cmd: &ExecCommand) -> Result<ExecOutput, HostError>;
    /// Starts a command in a sliver with piped standard streams.
    fn spawn(&self, target: &ExecTarget, cmd: &ExecCommand) -> Result<Spawned, HostError>;
    /// Starts a command in a sliver the way [`Host::spawn`] does, with the terminal `tty` (a
    /// pty's slave the node allocated) as its standard streams and controlling terminal.
    /// Hosts that cannot enter a sliver refuse.
    fn spawn_tty(
        &self,
        _target: &ExecTarget,
        _cmd: &ExecCommand,
        _tty: std::os::fd::OwnedFd,
    ) -> Result<Spawned, HostError> {
        Err(HostError::Init(
            "this host cannot give a sliver's command a terminal".into(),
        ))
    }
    /// Connects to `addr` from inside the sliver's network namespace (an SSH client's local
    /// port forward reaches the sliver's own ports and nothing else). Hosts that cannot enter
    /// a sliver refuse.
    fn connect_inside(
        &self,
        _target: &ExecTarget,
        _addr: std::net::SocketAddr,
    ) -> Result<std::net::TcpStream, HostError> {
        Err(HostError::Init(
            "this host cannot connect inside a sliver".into(),
        ))
    }
    /// CPU time and memory a cgroup has used.
    fn cgroup_usage(&self, cgroup: &str) -> Result<CgroupUsage, HostError>;
    /// Bytes each sliver bucket (by HTB class minor) on the node's shaping device has sent.
    fn egress_counters(&self, node: &NodeShaping) -> Result<BTreeMap<u16, u64>, HostError>;
    /// Freezes (every process stopped, beyond any signal) or thaws a cgroup.
    fn cgroup_freeze(&self, cgroup: &str, frozen: bool) -> Result<(), HostError>;
    /// Whether a cgroup is frozen.
    fn cgroup_frozen(&self, cgroup: &str) -> Result<bool, HostError>;
    /// The processes of a frozen cgroup that its freezer does not hold (commands run in the
    /// sliver while it was frozen; always none where such commands cannot run).
    fn frozen_stragglers(&self, cgroup: &str) -> Result<Vec<u32>, HostError>;
    /// Freezes processes `pids` of a frozen cgroup too.
    fn freeze_stragglers(&self, cgroup: &str, pids: &[u32]) -> Result<(), HostError>;
    /// Bytes a sliver's writable layer holds.
    fn disk_used(&self, target: &DiskTarget) -> Result<u64, HostError>;
    /// Makes ready what the first sliver would otherwise wait for (the real host copies the
    /// init program into its sealed image); nothing by default.
    fn warm_up(&self, _init_path: &std::path::Path) -> Result<(), HostError> {
        Ok(())
    }
    /// Makes (once) or re-adopts the filesystem whose quotas cap disk grants in the kernel
    /// ([`DiskBacking::Quota`]) under `state_dir`, of `capacity` bytes (`None`: the free space).
    fn disk_quota_setup(
        &self,
        state_dir: &std::path::Path,
        capacity: Option<u64>,
    ) -> Result<(), HostError>;
    /// Caps a sliver's dir (before its dirs are made) at `limit` bytes in the kernel.
    fn disk_quota_cap(&self, dirs: &SliverDirs, limit: u64) -> Result<(), HostError>;
    /// Removes the filesystem [`Host::disk_quota_setup`] made.
    fn disk_quota_teardown(&self, state_dir: &std::path::Path) -> Result<(), HostError>;
    /// Makes (or remakes, replacing what it held) the node's firewall table, and turns
    /// forwarding on for its uplink ([`Firewall`]).
    fn firewall_setup(&self, firewall: &Firewall) -> Result<(), HostError>;
    /// Removes the node's firewall table (and nothing else); one that is gone is no error.
    fn firewall_teardown(&self, firewall: &Firewall) -> Result<(), HostError>;
    /// Whether the node's firewall table exists.
    fn firewall_present(&self, firewall: &Firewall) -> Result<bool, HostError>;
    /// Adds (`add`) or removes entries of the node's leased-port map: public port → sliver
    /// address.
    fn ports_forward(
        &self,
        firewall: &Firewall,
        add: bool,
        entries: &[(u16, Ipv4Addr)],
    ) -> Result<(), HostError>;
}

/// One recorded call on the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// [`Host::prepare_image`].
    PrepareImage,
    /// [`Host::prepare_dirs`] (sliver dir name, owner).
    PrepareDirs(String, u32),
    /// [`Host::remove_dirs`] (sliver dir name, keep upper).
    RemoveDirs(String, bool),
    /// [`Host::cgroup_create`].
    CgroupCreate(String, CgroupLimits),
    /// [`Host::cgroup_cpu_quota`].
    CgroupCpuQuota(String, u64),
    /// [`Host::cgroup_destroy`].
    CgroupDestroy(String),
    /// [`Host::spawn_init`] (cgroup, uid base, host pid).
    SpawnInit(String, u32, bool),
    /// [`Host::start_init`] (pid, hostname).
    StartInit(u32, String),
    /// [`Host::kill_init`].
    KillInit(u32),
    /// [`Host::net_attach`] (host veth, sliver address).
    NetAttach(String, Ipv4Addr),
    /// [`Host::net_detach`].
    NetDetach(String),
    /// [`Host::shaping_setup`].
    ShapingSetup(String),
    /// [`Host::shaping_teardown`].
    ShapingTeardown(String),
    /// [`Host::shape_add`] (class minor, rate, ceil).
    ShapeAdd(u16, u64, u64),
    /// [`Host::shape_remove`].
    ShapeRemove(u16),
    /// [`Host::remove_orphan`].
    RemoveOrphan(Orphan),
    /// [`Host::exec`] (argv).
    Exec(Vec<String>),
    /// [`Host::cgroup_freeze`] (cgroup, frozen).
    CgroupFreeze(String, bool),
    /// [`Host::freeze_stragglers`] (cgroup, pids).
    FreezeStragglers(String, Vec<u32>),
    /// [`Host::disk_quota_setup`].
    DiskQuotaSetup,
    /// [`Host::disk_quota_cap`] (sliver dir name, limit).
    DiskQuotaCap(String, u64),
    /// [`Host::disk_quota_teardown`].
    DiskQuotaTeardown,
    /// [`Host::firewall_setup`] (table, uplink address).
    FirewallSetup(String, Option<Ipv4Addr>),
    /// [`Host::firewall_teardown`] (table).
    FirewallTeardown(String),
    /// [`Host::ports_forward`] (add, ports).
    PortsForward(bool, Vec<u16>),
}

impl Call {
    /// The call's name, as used by [`RecordingHost::fail_at`].
    pub fn name(&self) -> &'static str {
        match self {
            Call::PrepareImage => "prepare_image",
            Call::PrepareDirs(..) => "prepare_dirs",
            Call::RemoveDirs(..) => "remove_dirs",
            Call::CgroupCreate(..) => "cgroup_create",
            Call::CgroupCpuQuota(..) => "cgroup_cpu_quota",
            Call::CgroupDestroy(..) => "cgroup_destroy",
            Call::SpawnInit(..) => "spawn_init",
            Call::StartInit(..) => "start_init",
            Call::KillInit(..) => "kill_init",
            Call::NetAttach(..) => "net_attach",
            Call::NetDetach(..) => "net_detach",
            Call::ShapingSetup(..) => "shaping_setup",
            Call::ShapingTeardown(..) => "shaping_teardown",
            Call::ShapeAdd(..) => "shape_add",
            Call::ShapeRemove(..) => "shape_remove",
            Call::RemoveOrphan(..) => "remove_orphan",
            Call::Exec(..) => "exec",
            Call::CgroupFreeze(..) => "cgroup_freeze",
            Call::FreezeStragglers(..) => "freeze_stragglers",
            Call::DiskQuotaSetup => "disk_quota_setup",
            Call::DiskQuotaCap(..) => "disk_quota_cap",
            Call::DiskQuotaTeardown => "disk_quota_teardown",
            Call::FirewallSetup(..) => "firewall_setup",
            Call::FirewallTeardown(..) => "firewall_teardown",
            Call::PortsForward(..) => "ports_forward",
        }
    }
}

#[derive(Debug, Default)]
struct FakeState {
    calls: Vec<Call>,
    fail_at: BTreeSet<&'static str>,
    held: BTreeSet<String>,
    next_pid: u32,
    dead: BTreeSet<u32>,
    strays: BTreeSet<Orphan>,
    usage: BTreeMap<String, CgroupUsage>,
    egress: BTreeMap<u16, u64>,
    disk: BTreeMap<String, u64>,
    frozen: BTreeSet<String>,
    stragglers: BTreeMap<String, Vec<u32>>,
    disk_failing: BTreeSet<String>,
}

/// A fake host: records calls, tracks what it holds, fails where told.
#[derive(Debug, Default)]
pub struct RecordingHost {
    state: Mutex<FakeState>,
}

impl RecordingHost {
    /// A fake that succeeds at everything.
    pub fn new() -> Self {
        RecordingHost::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every later call named `name` (see [`Call::name`]) fail.
    pub fn fail_at(&self, name: &'static str) {
        self.lock().fail_at.insert(name);
    }

    /// Stops failing anything.
    pub fn clear_failures(&self) {
        self.lock().fail_at.clear();
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The names of the calls so far.
    pub fn call_names(&self) -> Vec<&'static str> {
        self.lock().calls.iter().map(Call::name).collect()
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// What the fake holds now: `dirs:<id>`, `cgroup:<path>`, `init:<pid>`, `veth:<name>`,
    /// `class:<minor>`, `ifb:<name>`.
    pub fn held(&self) -> BTreeSet<String> {
        self.lock().held.clone()
    }

    /// Leaves a trace on the fake host that no record accounts for.
    pub fn leave_stray(&self, orphan: Orphan) {
        self.lock().strays.insert(orphan);
    }

    /// The strays still on the fake host.
    pub fn strays(&self) -> BTreeSet<Orphan> {
        self.lock().strays.clone()
    }

    /// Marks an init as dead (as if it had crashed).
    pub fn kill_behind_the_back(&self, pid: u32) {
        let mut s = self.lock();
        s.dead.insert(pid);
        s.held.remove(&format!("init:{pid}"));
    }

    /// Sets what cgroup `cgroup` reports as used.
    pub fn set_usage(&self, cgroup: &str, usage: CgroupUsage) {
        self.lock().usage.insert(cgroup.to_string(), usage);
    }

    /// Sets the byte counter of HTB class `minor`.
    pub fn set_egress(&self, minor: u16, bytes: u64) {
        self.lock().egress.insert(minor, bytes);
    }

    /// Sets the disk use of the sliver whose dir is named `dir_name`.
    pub fn set_disk(&self, dir_name: &str, bytes: u64) {
        self.lock().disk_failing.remove(dir_name);
        self.lock().disk.insert(dir_name.to_string(), bytes);
    }

    /// Makes measuring the disk use of the sliver whose dir is named `dir_name` fail.
    pub fn fail_disk(&self, dir_name: &str) {
        self.lock().disk_failing.insert(dir_name.to_string());
    }

    /// Makes `pids` run in cgroup `cgroup` outside its freezer (as commands run while frozen).
    pub fn set_stragglers(&self, cgroup: &str, pids: Vec<u32>) {
        self.lock().stragglers.insert(cgroup.to_string(), pids);
    }

    /// The cgroups frozen now.
    pub fn frozen(&self) -> BTreeSet<String> {
        self.lock().frozen.clone()
    }

    /// Freezes a cgroup behind the engine's back (as a previous run of the node would have).
    pub fn freeze_behind_the_back(&self, cgroup: &str) {
        self.lock().frozen.insert(cgroup.to_string());
    }

    /// Deletes the node's firewall table as an operator's hand would.
    pub fn delete_firewall_behind_the_back(&self, table: &str) {
        self.release(&format!("firewall:{table}"));
    }

    fn record(&self, call: Call) -> Result<(), HostError> {
        let mut s = self.lock();
        let name = call.name();
        s.calls.push(call);
        if s.fail_at.contains(name) {
            Err(HostError::Injected(name.to_string()))
        } else {
            Ok(())
        }
    }

    fn hold(&self, what: String) {
        self.lock().held.insert(what);
    }

    fn release(&self, what: &str) {
        self.lock().held.remove(what);
    }
}

fn dir_name(dirs: &SliverDirs) -> String {
    dirs.root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Host for RecordingHost {
    /// The fake keeps nothing between spawn and start.
    type Pending = ();

    fn prepare_image(&self, skeleton: &std::path::Path) -> Result<Image, HostError> {
        self.record(Call::PrepareImage)?;
        Ok(Image::HostSystem {
            skeleton: skeleton.to_path_buf(),
            binds: vec!["/usr".into()],
        })
    }

    fn prepare_dirs(&self, dirs: &SliverDirs, uids: &UidRange) -> Result<(), HostError> {
        self.record(Call::PrepareDirs(dir_name(dirs), uids.host_base))?;
        // Plain dirs (no ownership change): enough for key files in unit tests.
        std::fs::create_dir_all(&dirs.root).map_err(|source| HostError::Io {
            op: "create",
            path: dirs.root.clone(),
            source,
        })?;
        self.hold(format!("dirs:{}", dir_name(dirs)));
        Ok(())
    }

    fn remove_dirs(&self, dirs: &SliverDirs, keep_upper: bool) -> Result<(), HostError> {
        self.record(Call::RemoveDirs(dir_name(dirs), keep_upper))?;
        let _ = std::fs::remove_dir_all(&dirs.root);
        self.release(&format!("dirs:{}", dir_name(dirs)));
        Ok(())
    }

    fn cgroup_create(&self, cgroup: &str, limits: &CgroupLimits) -> Result<(), HostError> {
        self.record(Call::CgroupCreate(cgroup.to_string(), *limits))?;
        self.hold(format!("cgroup:{cgroup}"));
        Ok(())
    }

    fn cgroup_cpu_quota(&self, cgroup: &str, millis: u64) -> Result<(), HostError> {
        self.record(Call::CgroupCpuQuota(cgroup.to_string(), millis))
    }

    fn cgroup_destroy(&self, cgroup: &str) -> Result<(), HostError> {
        self.record(Call::CgroupDestroy(cgroup.to_string()))?;
        self.release(&format!("cgroup:{cgroup}"));
        self.lock().frozen.remove(cgroup);
        Ok(())
    }

    fn spawn_init(&self, req: &InitRequest) -> Result<InitHandle<()>, HostError> {
        self.record(Call::SpawnInit(
            req.cgroup.clone(),
            req.uids.host_base,
            req.host_pid,
        ))?;
        let pid = {
            let mut s = self.lock();
            s.next_pid += 1;
            1000 + s.next_pid
        };
        self.hold(format!("init:{pid}"));
        Ok(InitHandle {
            pid,
            start_time: u64::from(pid) * 10,
            pending: Some(()),
        })
    }

    fn start_init(&self, init: &mut InitHandle<()>, plan: &InitPlan) -> Result<(), HostError> {
        init.pending = None;
        self.record(Call::StartInit(init.pid, plan.hostname.clone()))
    }

    fn kill_init(&self, pid: u32, _start_time: u64) -> Result<(), HostError> {
        self.record(Call::KillInit(pid))?;
        self.release(&format!("init:{pid}"));
        self.lock().dead.insert(pid);
        Ok(())
    }

    fn init_alive(&self, pid: u32, _start_time: u64) -> bool {
        let s = self.lock();
        !s.dead.contains(&pid) && s.held.contains(&format!("init:{pid}"))
    }

    fn net_attach(&self, _init_pid: u32, net: &NetAttach) -> Result<(), HostError> {
        self.record(Call::NetAttach(net.host_if.clone(), net.sliver_addr))?;
        self.hold(format!("veth:{}", net.host_if));
        Ok(())
    }

    fn net_detach(&self, net: &NetAttach) -> Result<(), HostError> {
        self.record(Call::NetDetach(net.host_if.clone()))?;
        self.release(&format!("veth:{}", net.host_if));
        Ok(())
    }

    fn shaping_setup(&self, node: &NodeShaping) -> Result<(), HostError> {
        self.record(Call::ShapingSetup(node.ifb.clone()))?;
        self.hold(format!("ifb:{}", node.ifb));
        Ok(())
    }

    fn shaping_teardown(&self, node: &NodeShaping) -> Result<(), HostError> {
        self.record(Call::ShapingTeardown(node.ifb.clone()))?;
        self.release(&format!("ifb:{}", node.ifb));
        Ok(())
    }

    fn shape_add(&self, shape: &Shape) -> Result<(), HostError> {
        self.record(Call::ShapeAdd(
            shape.class_minor,
            shape.rate_kbps,
            shape.ceil_kbps,
        ))?;
        self.hold(format!("class:{}", shape.class_minor));
        Ok(())
    }

    fn shape_remove(&self, shape: &Shape) -> Result<(), HostError> {
        self.record(Call::ShapeRemove(shape.class_minor))?;
        self.release(&format!("class:{}", shape.class_minor));
        Ok(())
    }

    fn traces(&self, _scope: &OrphanScope) -> Result<Vec<Orphan>, HostError> {
        let s = self.lock();
        let mut out: Vec<Orphan> = s.strays.iter().cloned().collect();
        for held in &s.held {
            if let Some(c) = held.strip_prefix("cgroup:") {
                out.push(Orphan::Cgroup(
                    c.rsplit('/').next().unwrap_or(c).to_string(),
                ));
            } else if let Some(v) = held.strip_prefix("veth:") {
                out.push(Orphan::Link(v.to_string()));
            } else if let Some(m) = held.strip_prefix("class:") {
                out.push(Orphan::Class(m.parse().unwrap_or(0)));
            }
        }
        Ok(out)
    }

    fn remove_orphan(&self, _scope: &OrphanScope, orphan: &Orphan) -> Result<(), HostError> {
        self.record(Call::RemoveOrphan(orphan.clone()))?;
        self.lock().strays.remove(orphan);
        Ok(())
    }

    fn exec(&self, _target: &ExecTarget, cmd: &ExecCommand) -> Result<ExecOutput, HostError> {
        self.record(Call::Exec(cmd.argv.clone()))?;
        Ok(ExecOutput {
            code: Some(0),
            ..ExecOutput::default()
        })
    }

    fn spawn(&self, _target: &ExecTarget, _cmd: &ExecCommand) -> Result<Spawned, HostError> {
        Err(HostError::Unsupported("spawn on the recording host"))
    }

    fn cgroup_usage(&self, cgroup: &str) -> Result<CgroupUsage, HostError> {
        let s = self.lock();
        if !s.held.contains(&format!("cgroup:{cgroup}")) {
            return Err(HostError::Injected(format!("no cgroup {cgroup}")));
        }
        Ok(s.usage.get(cgroup).copied().unwrap_or_default())
    }

    fn egress_counters(&self, node: &NodeShaping) -> Result<BTreeMap<u16, u64>, HostError> {
        let s = self.lock();
        if !s.held.contains(&format!("ifb:{}", node.ifb)) {
            return Err(HostError::Injected(format!(
                "no shaping device {}",
                node.ifb
            )));
        }
        Ok(s.held
            .iter()
            .filter_map(|h| h.strip_prefix("class:")?.parse::<u16>().ok())
            .map(|minor| (minor, s.egress.get(&minor).copied().unwrap_or(0)))
            .collect())
    }

    fn cgroup_freeze(&self, cgroup: &str, frozen: bool) -> Result<(), HostError> {
        self.record(Call::CgroupFreeze(cgroup.to_string(), frozen))?;
        let mut s = self.lock();
        if frozen {
            s.frozen.insert(cgroup.to_string());
        } else {
            s.frozen.remove(cgroup);
        }
        Ok(())
    }

    fn cgroup_frozen(&self, cgroup: &str) -> Result<bool, HostError> {
        Ok(self.lock().frozen.contains(cgroup))
    }

    fn frozen_stragglers(&self, cgroup: &str) -> Result<Vec<u32>, HostError> {
        Ok(self
            .lock()
            .stragglers
            .get(cgroup)
            .cloned()
            .unwrap_or_default())
    }

    fn freeze_stragglers(&self, cgroup: &str, pids: &[u32]) -> Result<(), HostError> {
        self.record(Call::FreezeStragglers(cgroup.to_string(), pids.to_vec()))?;
        if let Some(left) = self.lock().stragglers.get_mut(cgroup) {
            left.retain(|p| !pids.contains(p));
        }
        Ok(())
    }

    fn disk_used(&self, target: &DiskTarget) -> Result<u64, HostError> {
        let s = self.lock();
        let name = dir_name(&target.dirs);
        if s.disk_failing.contains(&name) {
            return Err(HostError::Injected(format!("cannot measure {name}")));
        }
        Ok(s.disk.get(&name).copied().unwrap_or(0))
    }

    fn disk_quota_setup(
        &self,
        _state_dir: &std::path::Path,
        _capacity: Option<u64>,
    ) -> Result<(), HostError> {
        self.record(Call::DiskQuotaSetup)
    }

    fn disk_quota_cap(&self, dirs: &SliverDirs, limit: u64) -> Result<(), HostError> {
        self.record(Call::DiskQuotaCap(dir_name(dirs), limit))
    }

    fn disk_quota_teardown(&self, _state_dir: &std::path::Path) -> Result<(), HostError> {
        self.record(Call::DiskQuotaTeardown)
    }

    fn firewall_setup(&self, firewall: &Firewall) -> Result<(), HostError> {
        self.record(Call::FirewallSetup(
            firewall.table.clone(),
            firewall.uplink.as_ref().map(|u| u.address),
        ))?;
        self.hold(format!("firewall:{}", firewall.table));
        Ok(())
    }

    fn firewall_teardown(&self, firewall: &Firewall) -> Result<(), HostError> {
        self.record(Call::FirewallTeardown(firewall.table.clone()))?;
        self.release(&format!("firewall:{}", firewall.table));
        Ok(())
    }

    fn firewall_present(&self, firewall: &Firewall) -> Result<bool, HostError> {
        Ok(self
            .lock()
            .held
            .contains(&format!("firewall:{}", firewall.table)))
    }

    fn ports_forward(
        &self,
        _firewall: &Firewall,
        add: bool,
        entries: &[(u16, Ipv4Addr)],
    ) -> Result<(), HostError> {
        let ports: Vec<u16> = entries.iter().map(|(p, _)| *p).collect();
        self.record(Call::PortsForward(add, ports.clone()))?;
        for port in ports {
            if add {
                self.hold(format!("port:{port}"));
            } else {
                self.release(&format!("port:{port}"));
            }
        }
        Ok(())
    }
}
