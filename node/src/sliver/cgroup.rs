//! Control groups for slivers: cgroup v1 (one hierarchy per controller) and v2 (unified).
//!
//! [`Cgroups::detect`] reads a mountinfo file (normally `/proc/self/mountinfo`, injectable) and
//! picks v1 when the memory controller is mounted as a v1 hierarchy (a hybrid host), else v2.
//! Paths are relative to the hierarchy roots found there, so tests build a fake tree in a temp
//! dir with a fake mountinfo. Limits ([`CgroupLimits`]) map to:
//!
//! | limit | v1 | v2 |
//! |---|---|---|
//! | CPU weight | `cpu.shares` (1024 per core) | `cpu.weight` (100 per core) |
//! | CPU quota | `cpu.cfs_quota_us` / `cpu.cfs_period_us` | `cpu.max` |
//! | memory | `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes` the same) | `memory.max` (and `memory.swap.max` 0) |
//! | pids | `pids.max` | `pids.max` |
//!
//! Swap counts against the memory limit where the host has swap: a v1 host with swap
//! accounting has `memory.memsw.limit_in_bytes` (memory + swap), set to the memory limit; v2's
//! `memory.swap.max` is set to 0. Either way a sliver cannot push its pages out to swap to hold
//! more than its grant. (Without those files the host has no swap to account.)
//!
//! Use is read back for the resource monitor ([`Cgroups::usage`]): CPU time from
//! `cpuacct.usage` (v1) or `cpu.stat`'s `usage_usec` (v2), memory from
//! `memory.usage_in_bytes` (v1) or `memory.current` (v2). The disk watchdog stops a sliver's
//! processes with the freezer ([`Cgroups::freeze`]): `freezer.state` in the v1 `freezer`
//! hierarchy, `cgroup.freeze` in v2.
//!
//! A node dedicated to slivers may make moving processes between cgroups cheap
//! ([`favor_dynamic_modifications`]): which cgroup2 mount to remount and with which options
//! is decided from mountinfo text ([`dynamic_modifications_plan`], unit-tested), and
//! [`remount`] is the one privileged call.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// The CFS period used for quotas, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// A cgroup error, naming the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The mountinfo file could not be read.
    #[error("reading mountinfo {path}: {source}")]
    ReadMountinfo {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// No usable cgroup hierarchy was found.
    #[error("no usable cgroup hierarchy in {0}: need v1 cpu and memory, or v2 with controllers")]
    NotFound(String),
    /// A cgroup directory could not be made.
    #[error("creating cgroup {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A control file could not be written.
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The cause.
        source: io::Error,
    },
    /// A control file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A cgroup directory could not be removed.
    #[error("removing cgroup {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// This host has no freezer (a v1 host without the `freezer` hierarchy).
    #[error("cgroup {0}: no freezer hierarchy on this host")]
    NoFreezer(String),
    /// The cgroup is frozen and a command cannot join it without freezing too.
    #[error("cgroup {0} is frozen (its sliver is over its disk grant)")]
    Frozen(PathBuf),
    /// The cgroup2 hierarchy could not be remounted.
    #[error("remounting {path} with {options:?}: {source}")]
    Remount {
        /// The mount point.
        path: PathBuf,
        /// The options asked.
        options: String,
        /// The cause.
        source: nix::errno::Errno,
    },
    /// Processes stayed in a cgroup after being killed.
    #[error("cgroup {path} still holds processes {pids:?} after kill")]
    Busy {
        /// The directory.
        path: PathBuf,
        /// What is left.
        pids: Vec<u32>,
    },
}

/// The limits of one sliver's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupLimits {
    /// CPU weight, in thousandths of a core (0: leave the default).
    pub cpu_weight_millis: u64,
    /// Hard CPU quota in thousandths of a core (`None`: no quota).
    pub cpu_quota_millis: Option<u64>,
    /// Hard memory limit in bytes (`None`: none).
    pub memory_bytes: Option<u64>,
    /// Most processes (`None`: none).
    pub pids_max: Option<u64>,
}

/// What a cgroup has used, each `None` when this host does not account it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupUsage {
    /// CPU time, nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Memory in use (page cache and tmpfs pages charged to it included), bytes.
    pub memory_bytes: Option<u64>,
}

/// Which cgroup version a host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller.
    V1,
    /// The unified hierarchy.
    V2,
}

/// The cgroup hierarchies of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v1: a mount point per controller (the same for co-mounted controllers).
    V1 {
        /// The `cpu` hierarchy.
        cpu: PathBuf,
        /// The `cpuacct` hierarchy, when mounted.
        cpuacct: Option<PathBuf>,
        /// The `memory` hierarchy.
        memory: PathBuf,
        /// The `pids` hierarchy, when mounted.
        pids: Option<PathBuf>,
        /// The `freezer` hierarchy, when mounted.
        freezer: Option<PathBuf>,
    },
    /// cgroup v2: the unified root.
    V2 {
        /// The mount point.
        root: PathBuf,
    },
}

impl Cgroups {
    /// Reads `mountinfo` (e.g. `/proc/self/mountinfo`) and picks the hierarchies.
    pub fn detect(mountinfo: &Path) -> Result<Self, CgroupError> {
        let text = fs::read_to_string(mountinfo).map_err(|source| CgroupError::ReadMountinfo {
            path: mountinfo.to_path_buf(),
            source,
        })?;
        Self::from_mountinfo(&text)
            .ok_or_else(|| CgroupError::NotFound(mountinfo.display().to_string()))
    }

    /// Picks the hierarchies from mountinfo text: v1 when cpu and memory are v1 hierarchies,
    /// else v2 when the unified mount has the cpu and memory controllers available.
    pub fn from_mountinfo(text: &str) -> Option<Self> {
        let mut v1: Vec<(PathBuf, Vec<String>)> = Vec::new();
        let mut v2: Option<PathBuf> = None;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (Some(mount_point), Some(fstype)) = (left.get(4), right.first()) else {
                continue;
            };
            let mount_point = PathBuf::from(unescape(mount_point));
            match *fstype {
                "cgroup" => {
                    let opts = right.get(2).copied().unwrap_or("");
                    v1.push((mount_point, opts.split(',').map(str::to_string).collect()));
                }
                "cgroup2" => v2 = Some(mount_point),
                _ => {}
            }
        }
        let find = |name: &str| {
            v1.iter()
                .find(|(_, opts)| opts.iter().any(|o| o == name))
                .map(|(p, _)| p.clone())
        };
        if let (Some(cpu), Some(memory)) = (find("cpu"), find("memory")) {
            return Some(Cgroups::V1 {
                cpu,
                cpuacct: find("cpuacct"),
                memory,
                pids: find("pids"),
                freezer: find("freezer"),
            });
        }
        let root = v2?;
        let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        (has("cpu") && has("memory")).then_some(Cgroups::V2 { root })
    }

    /// The version in use.
    pub fn version(&self) -> CgroupVersion {
        match self {
            Cgroups::V1 { .. } => CgroupVersion::V1,
            Cgroups::V2 { .. } => CgroupVersion::V2,
        }
    }

    /// Every directory that makes up cgroup `rel` (one per v1 hierarchy, deduplicated).
    pub fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        match self {
            Cgroups::V1 {
                cpu,
                cpuacct,
                memory,
                pids,
                freezer,
            } => {
                for root in [
                    Some(cpu),
                    cpuacct.as_ref(),
                    Some(memory),
                    pids.as_ref(),
                    freezer.as_ref(),
                ]
                .into_iter()
                .flatten()
                {
                    let dir = root.join(rel);
                    if !out.contains(&dir) {
                        out.push(dir);
                    }
                }
            }
            Cgroups::V2 { root } => out.push(root.join(rel)),
        }
        out
    }

    /// The `cgroup.procs` files a process must be written to, to join cgroup `rel`.
    pub fn procs_files(&self, rel: &str) -> Vec<PathBuf> {
        self.dirs(rel)
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// The `cgroup.procs` files a command run in the sliver joins: all of them, except, when
    /// the sliver is frozen, the v1 freezer's (so its holder can still clean up); a frozen v2
    /// cgroup would freeze the command too, so it is refused.
    pub fn exec_procs_files(&self, rel: &str) -> Result<Vec<PathBuf>, CgroupError> {
        let files = self.procs_files(rel);
        if !self.frozen(rel)? {
            return Ok(files);
        }
        match self {
            Cgroups::V1 {
                freezer: Some(f), ..
            } => {
                let skip = f.join(rel).join("cgroup.procs");
                Ok(files.into_iter().filter(|p| *p != skip).collect())
            }
            _ => Err(CgroupError::Frozen(self.dirs(rel).remove(0))),
        }
    }

    /// Whether cgroup `rel` exists (in any hierarchy).
    pub fn exists(&self, rel: &str) -> bool {
        self.dirs(rel).iter().any(|d| d.is_dir())
    }

    /// Sets (or, with `None`, lifts) the hard CPU quota of cgroup `rel`.
    pub fn set_cpu_quota(&self, rel: &str, millis: Option<u64>) -> Result<(), CgroupError> {
        match self {
            Cgroups::V1 { cpu, .. } => {
                let dir = cpu.join(rel);
                let quota = millis.map_or_else(|| "-1".to_string(), |q| quota_us(q).to_string());
                write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota)
            }
            Cgroups::V2 { root } => {
                let quota = millis.map_or_else(|| "max".to_string(), |q| quota_us(q).to_string());
                write(
                    &root.join(rel).join("cpu.max"),
                    &format!("{quota} {CPU_PERIOD_US}"),
                )
            }
        }
    }

    /// Creates cgroup `rel` (and its parents) and writes its limits.
    pub fn create(&self, rel: &str, limits: &CgroupLimits) -> Result<(), CgroupError> {
        match self {
            Cgroups::V1 {
                cpu, memory, pids, ..
            } => {
                for dir in self.dirs(rel) {
                    create_dir(&dir)?;
                }
                let cpu_dir = cpu.join(rel);
                if limits.cpu_weight_millis > 0 {
                    let shares = (limits.cpu_weight_millis.saturating_mul(1024) / 1000).max(2);
                    write(&cpu_dir.join("cpu.shares"), &shares.to_string())?;
                }
                if let Some(q) = limits.cpu_quota_millis {
                    write(
                        &cpu_dir.join("cpu.cfs_period_us"),
                        &CPU_PERIOD_US.to_string(),
                    )?;
                    write(&cpu_dir.join("cpu.cfs_quota_us"), &quota_us(q).to_string())?;
                }
                if let Some(bytes) = limits.memory_bytes {
                    set_memory_v1(&memory.join(rel), bytes)?;
                }
                if let (Some(max), Some(pids)) = (limits.pids_max, pids) {
                    write(&pids.join(rel).join("pids.max"), &max.to_string())?;
                }
            }
            Cgroups::V2 { root } => {
                // Enable the controllers on every ancestor, top down.
                let mut dir = root.clone();
                for part in Path::new(rel)
                    .parent()
                    .into_iter()
                    .flat_map(|p| p.components())
                {
                    write(&dir.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
                    dir = dir.join(part);
                    create_dir(&dir)?;
                }
                write(&dir.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
                let leaf = root.join(rel);
                create_dir(&leaf)?;
                if limits.cpu_weight_millis > 0 {
                    let weight = (limits.cpu_weight_millis / 10).clamp(1, 10_000);
                    write(&leaf.join("cpu.weight"), &weight.to_string())?;
                }
                if let Some(q) = limits.cpu_quota_millis {
                    write(
                        &leaf.join("cpu.max"),
                        &format!("{} {}", quota_us(q), CPU_PERIOD_US),
                    )?;
                }
                if let Some(bytes) = limits.memory_bytes {
                    write(&leaf.join("memory.max"), &bytes.to_string())?;
                    let swap = leaf.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, "0")?;
                    }
                }
                if let Some(max) = limits.pids_max {
                    write(&leaf.join("pids.max"), &max.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Moves process `pid` into cgroup `rel`.
    pub fn attach(&self, rel: &str, pid: u32) -> Result<(), CgroupError> {
        for file in self.procs_files(rel) {
            write(&file, &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in cgroup `rel` (union over hierarchies).
    pub fn procs(&self, rel: &str) -> Result<Vec<u32>, CgroupError> {
        let mut pids = Vec::new();
        for file in self.procs_files(rel) {
            let text = match fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupError::Read { path: file, source }),
            };
            for pid in text
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
            {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        Ok(pids)
    }

    /// Kills every process left in cgroup `rel`, then removes it from every hierarchy.
    /// A cgroup that does not exist is not an error.
    pub fn destroy(&self, rel: &str) -> Result<(), CgroupError> {
        // A frozen process cannot die (v1): thaw first.
        if self.exists(rel) && self.frozen(rel).unwrap_or(false) {
            self.freeze(rel, false)?;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.procs(rel)?;
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Busy {
                    path: self.dirs(rel).remove(0),
                    pids,
                });
            }
            for pid in pids {
                if let Ok(pid) = i32::try_from(pid) {
                    // Best effort: the process may already be gone.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
        for dir in self.dirs(rel) {
            remove_cgroup_dir(&dir, deadline)?;
        }
        Ok(())
    }

    /// The CPU time used by cgroup `rel`, in nanoseconds, when accounted.
    pub fn cpu_usage_ns(&self, rel: &str) -> Result<Option<u64>, CgroupError> {
        match self {
            Cgroups::V1 {
                cpuacct: Some(acct),
                ..
            } => {
                let path = acct.join(rel).join("cpuacct.usage");
                Ok(read_to_string(&path)?.trim().parse().ok())
            }
            Cgroups::V1 { .. } => Ok(None),
            Cgroups::V2 { root } => {
                let path = root.join(rel).join("cpu.stat");
                let text = read_to_string(&path)?;
                Ok(text
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|us| us.saturating_mul(1000)))
            }
        }
    }

    /// The memory used by cgroup `rel`, in bytes.
    pub fn memory_usage(&self, rel: &str) -> Result<Option<u64>, CgroupError> {
        let path = match self {
            Cgroups::V1 { memory, .. } => memory.join(rel).join("memory.usage_in_bytes"),
            Cgroups::V2 { root } => root.join(rel).join("memory.current"),
        };
        Ok(read_to_string(&path)?.trim().parse().ok())
    }

    /// CPU time and memory in use of cgroup `rel`, each `None` when not accounted here.
    pub fn usage(&self, rel: &str) -> Result<CgroupUsage, CgroupError> {
        Ok(CgroupUsage {
            cpu_ns: self.cpu_usage_ns(rel)?,
            memory_bytes: self.memory_usage(rel)?,
        })
    }

    /// The freezer's control file of cgroup `rel`.
    fn freezer_file(&self, rel: &str) -> Result<PathBuf, CgroupError> {
        match self {
            Cgroups::V1 {
                freezer: Some(f), ..
            } => Ok(f.join(rel).join("freezer.state")),
            Cgroups::V1 { .. } => Err(CgroupError::NoFreezer(rel.to_string())),
            Cgroups::V2 { root } => Ok(root.join(rel).join("cgroup.freeze")),
        }
    }

    /// Freezes (stops, in a state no signal ends) or thaws every process of cgroup `rel`.
    /// In v1 the processes of the sliver that are not in its freezer cgroup (commands run
    /// while it was frozen join every hierarchy but that one) are moved there first.
    pub fn freeze(&self, rel: &str, frozen: bool) -> Result<(), CgroupError> {
        let file = self.freezer_file(rel)?;
        if let (Cgroups::V1 { .. }, true) = (self, frozen)
            && let Some(dir) = file.parent()
        {
            let procs = dir.join("cgroup.procs");
            let inside: Vec<u32> = read_to_string(&procs)
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            for pid in self.procs(rel)? {
                if !inside.contains(&pid) {
                    move_pid(&procs, pid)?;
                }
            }
        }
        let value = match (self, frozen) {
            (Cgroups::V1 { .. }, true) => "FROZEN",
            (Cgroups::V1 { .. }, false) => "THAWED",
            (Cgroups::V2 { .. }, true) => "1",
            (Cgroups::V2 { .. }, false) => "0",
        };
        write(&file, value)
    }

    /// The processes of cgroup `rel` outside its v1 freezer cgroup: commands run while it was
    /// frozen (empty in v2, where no command runs in a frozen cgroup, or without a freezer).
    pub fn outside_freezer(&self, rel: &str) -> Result<Vec<u32>, CgroupError> {
        let Cgroups::V1 {
            freezer: Some(f), ..
        } = self
        else {
            return Ok(Vec::new());
        };
        let file = f.join(rel).join("cgroup.procs");
        let inside: Vec<u32> = match fs::read_to_string(&file) {
            Ok(t) => t
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(CgroupError::Read { path: file, source }),
        };
        Ok(self
            .procs(rel)?
            .into_iter()
            .filter(|p| !inside.contains(p))
            .collect())
    }

    /// Moves processes `pids` into the v1 freezer cgroup of `rel` (frozen: they freeze).
    pub fn join_freezer(&self, rel: &str, pids: &[u32]) -> Result<(), CgroupError> {
        let Cgroups::V1 {
            freezer: Some(f), ..
        } = self
        else {
            return Ok(());
        };
        let procs = f.join(rel).join("cgroup.procs");
        for &pid in pids {
            move_pid(&procs, pid)?;
        }
        Ok(())
    }

    /// Moves process `pid` out of whatever v1 freezer cgroup holds it (to the hierarchy's
    /// root, which is never frozen), which thaws it; for a command to be killed. No-op in v2
    /// (a fatal signal reaches a frozen v2 process) or without a freezer.
    pub fn release_from_freezer(&self, pid: u32) -> Result<(), CgroupError> {
        match self {
            Cgroups::V1 {
                freezer: Some(root),
                ..
            } => {
                let procs = root.join("cgroup.procs");
                match fs::write(&procs, pid.to_string()) {
                    Ok(()) => Ok(()),
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                    Err(source) => Err(CgroupError::Write {
                        path: procs,
                        value: pid.to_string(),
                        source,
                    }),
                }
            }
            _ => Ok(()),
        }
    }

    /// Whether cgroup `rel` is frozen (or freezing). A host without a freezer reads `false`.
    pub fn frozen(&self, rel: &str) -> Result<bool, CgroupError> {
        let file = match self.freezer_file(rel) {
            Ok(f) => f,
            Err(CgroupError::NoFreezer(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let text = match fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(CgroupError::Read { path: file, source }),
        };
        Ok(matches!(text.trim(), "FROZEN" | "FREEZING" | "1"))
    }

    /// The names of the child cgroups of `parent` (in the memory or unified hierarchy).
    pub fn children(&self, parent: &str) -> Vec<String> {
        let dir = match self {
            Cgroups::V1 { memory, .. } => memory.join(parent),
            Cgroups::V2 { root } => root.join(parent),
        };
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    /// Removes the (empty) parent cgroup `rel` from every hierarchy, if it has no children.
    pub fn remove_parent(&self, rel: &str) -> Result<(), CgroupError> {
        for dir in self.dirs(rel) {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(CgroupError::Remove { path: dir, source }),
            }
        }
        Ok(())
    }
}

/// Remounts the host's cgroup2 hierarchy (found in `mountinfo`) with `favordynmods`, keeping its
/// other options. Moving a process between cgroups then no longer waits for an RCU grace
/// period (about 10 ms here, the largest single cost of creating a sliver); forks and exits
/// pay a little instead. The setting is global to the cgroup core, so it helps v1 hierarchies
/// too. Returns the mount point, or `None` when there is no cgroup2 mount. Meant for a node
/// dedicated to slivers: the daemon applies it at start when configured to. What to do is
/// [`dynamic_modifications_plan`]; the remount, [`remount`].
pub fn favor_dynamic_modifications(mountinfo: &Path) -> Result<Option<PathBuf>, CgroupError> {
    let text = fs::read_to_string(mountinfo).map_err(|source| CgroupError::ReadMountinfo {
        path: mountinfo.to_path_buf(),
        source,
    })?;
    match dynamic_modifications_plan(&text) {
        DynamicModifications::NoCgroup2 => Ok(None),
        DynamicModifications::Already(path) => Ok(Some(path)),
        DynamicModifications::Remount { path, options } => {
            remount(&path, options)?;
            Ok(Some(path))
        }
    }
}

/// What favoring dynamic cgroup modifications takes on a host (see
/// [`favor_dynamic_modifications`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DynamicModifications {
    /// There is no cgroup2 mount: nothing to do.
    NoCgroup2,
    /// The cgroup2 mount at this point has `favordynmods` already: nothing to do.
    Already(PathBuf),
    /// Remount the cgroup2 mount at `path` with `options` (its own, but `rw`/`ro`, then
    /// `favordynmods`).
    Remount {
        /// The mount point.
        path: PathBuf,
        /// The options of the remount.
        options: String,
    },
}

/// What to do, from the text of `/proc/self/mountinfo`: the first cgroup2 mount decides (its
/// mount point unescaped; its superblock options, but `rw` and `ro`, kept).
pub fn dynamic_modifications_plan(mountinfo: &str) -> DynamicModifications {
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if right.first() != Some(&"cgroup2") {
            continue;
        }
        let Some(mount_point) = left.get(4) else {
            continue;
        };
        let path = PathBuf::from(unescape(mount_point));
        let opts: Vec<&str> = right
            .get(2)
            .copied()
            .unwrap_or("")
            .split(',')
            .filter(|o| !o.is_empty() && *o != "rw" && *o != "ro")
            .collect();
        if opts.contains(&"favordynmods") {
            return DynamicModifications::Already(path);
        }
        let mut options = opts.join(",");
        if !options.is_empty() {
            options.push(',');
        }
        options.push_str("favordynmods");
        return DynamicModifications::Remount { path, options };
    }
    DynamicModifications::NoCgroup2
}

/// Remounts the mount at `path` (`MS_REMOUNT`, no other flag) with `options`.
pub fn remount(path: &Path, options: String) -> Result<(), CgroupError> {
    let none: Option<&str> = None;
    nix::mount::mount(
        none,
        path,
        none,
        nix::mount::MsFlags::MS_REMOUNT,
        Some(options.as_str()),
    )
    .map_err(|source| CgroupError::Remount {
        path: path.to_path_buf(),
        options,
        source,
    })
}

/// Moves process `pid` into the cgroup whose `cgroup.procs` is `procs`. A process may exit
/// meanwhile: ESRCH is not a failure.
fn move_pid(procs: &Path, pid: u32) -> Result<(), CgroupError> {
    match fs::write(procs, pid.to_string()) {
        Err(e) if e.raw_os_error() != Some(libc::ESRCH) => Err(CgroupError::Write {
            path: procs.to_owned(),
            value: pid.to_string(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The CFS quota for `millis` thousandths of a core.
fn quota_us(millis: u64) -> u64 {
    (millis.saturating_mul(CPU_PERIOD_US) / 1000).max(1000)
}

/// The v1 memory limit file.
const V1_LIMIT: &str = "memory.limit_in_bytes";
/// The v1 memory + swap limit file (present only with swap accounting).
const V1_MEMSW: &str = "memory.memsw.limit_in_bytes";

/// Sets the v1 memory limit of the cgroup at `dir` to `bytes`, and its memory + swap limit
/// to the same where swap is accounted.
fn set_memory_v1(dir: &Path, bytes: u64) -> Result<(), CgroupError> {
    let limit = dir.join(V1_LIMIT);
    let memsw = dir.join(V1_MEMSW);
    if !memsw.exists() {
        return write(&limit, &bytes.to_string());
    }
    let current = fs::read_to_string(&limit)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    for file in v1_memory_order(current, bytes) {
        write(&dir.join(file), &bytes.to_string())?;
    }
    Ok(())
}

/// The order to write the v1 memory files in: the kernel refuses a memory + swap limit below
/// the memory limit, so going down the memory limit is written first, going up the memory +
/// swap limit is. (`current` is the memory limit now; unknown counts as going down, which is
/// always the case from a new cgroup's unlimited value.)
fn v1_memory_order(current: Option<u64>, bytes: u64) -> [&'static str; 2] {
    match current {
        Some(now) if bytes > now => [V1_MEMSW, V1_LIMIT],
        _ => [V1_LIMIT, V1_MEMSW],
    }
}

fn create_dir(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(source) => Err(CgroupError::Create {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

fn read_to_string(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn remove_cgroup_dir(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // The kernel may still be releasing the last task or its memory.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_uses_v1_with_comounted_controllers() {
        let cg = Cgroups::from_mountinfo(HYBRID).unwrap();
        assert_eq!(cg.version(), CgroupVersion::V1);
        assert_eq!(
            cg.dirs("pm/s1"),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/pm/s1"),
                PathBuf::from("/sys/fs/cgroup/memory/pm/s1"),
                PathBuf::from("/sys/fs/cgroup/pids/pm/s1"),
            ]
        );
    }

    #[test]
    fn favordynmods_is_added_to_the_first_cgroup2_mount_once() {
        // A hybrid host: its cgroup2 mount has no options but `rw`.
        assert_eq!(
            dynamic_modifications_plan(HYBRID),
            DynamicModifications::Remount {
                path: "/sys/fs/cgroup/unified".into(),
                options: "favordynmods".into(),
            }
        );
        // A v2 host keeps its options (but `rw`), in order, with the new one last.
        let v2 = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
        assert_eq!(
            dynamic_modifications_plan(v2),
            DynamicModifications::Remount {
                path: "/sys/fs/cgroup".into(),
                options: "nsdelegate,memory_recursiveprot,favordynmods".into(),
            }
        );
        // Already there: nothing to do, whichever its place among the options.
        let done = v2.replace("rw,nsdelegate", "rw,nsdelegate,favordynmods");
        assert_eq!(
            dynamic_modifications_plan(&done),
            DynamicModifications::Already("/sys/fs/cgroup".into())
        );
        // Only the first cgroup2 mount counts; its mount point is unescaped; `ro` is dropped.
        let two = "\
1 1 0:1 / /c\\040g ro - cgroup2 cgroup2 ro
2 1 0:2 / /other rw - cgroup2 cgroup2 rw,favordynmods
";
        assert_eq!(
            dynamic_modifications_plan(two),
            DynamicModifications::Remount {
                path: "/c g".into(),
                options: "favordynmods".into(),
            }
        );
        // No cgroup2 mount (v1 only), a line cut short, or nothing at all: nothing to do.
        let v1_only: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            dynamic_modifications_plan(&v1_only),
            DynamicModifications::NoCgroup2
        );
        assert_eq!(
            dynamic_modifications_plan("1 1 0:1 / - cgroup2 cgroup2 rw\n"),
            DynamicModifications::NoCgroup2
        );
        assert_eq!(
            dynamic_modifications_plan(""),
            DynamicModifications::NoCgroup2
        );
    }

    #[test]
    fn a_failed_remount_names_the_mount_and_the_options() {
        let tmp = tempfile::tempdir().unwrap();
        // Not a mount point (or, unprivileged, not allowed): the error says what was asked.
        let err = remount(tmp.path(), "favordynmods".into()).unwrap_err();
        assert!(
            matches!(&err, CgroupError::Remount { path, options, .. }
                if path == tmp.path() && options == "favordynmods"),
            "{err}"
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    fn fake_v1(dir: &Path) -> Cgroups {
        let text = format!(
            "1 1 0:1 / {d}/cpu rw - cgroup cgroup rw,cpu\n\
             2 1 0:2 / {d}/cpuacct rw - cgroup cgroup rw,cpuacct\n\
             3 1 0:3 / {d}/memory rw - cgroup cgroup rw,memory\n\
             4 1 0:4 / {d}/pids rw - cgroup cgroup rw,pids\n",
            d = dir.display()
        );
        Cgroups::from_mountinfo(&text).unwrap()
    }

    #[test]
    fn v1_limits_land_in_each_controller() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake_v1(tmp.path());
        let limits = CgroupLimits {
            cpu_weight_millis: 500,
            cpu_quota_millis: Some(250),
            memory_bytes: Some(64 << 20),
            pids_max: Some(100),
        };
        cg.create("pm/s1", &limits).unwrap();
        let read = |p: &str| fs::read_to_string(tmp.path().join(p)).unwrap();
        assert_eq!(read("cpu/pm/s1/cpu.shares"), "512");
        assert_eq!(read("cpu/pm/s1/cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu/pm/s1/cpu.cfs_quota_us"), "25000");
        cg.set_cpu_quota("pm/s1", None).unwrap();
        assert_eq!(read("cpu/pm/s1/cpu.cfs_quota_us"), "-1");
        cg.set_cpu_quota("pm/s1", Some(10)).unwrap();
        assert_eq!(read("cpu/pm/s1/cpu.cfs_quota_us"), "1000");
        assert_eq!(
            read("memory/pm/s1/memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(read("pids/pm/s1/pids.max"), "100");
        assert!(tmp.path().join("cpuacct/pm/s1").is_dir());
        cg.attach("pm/s1", 4242).unwrap();
        assert_eq!(read("memory/pm/s1/cgroup.procs"), "4242");
        assert_eq!(cg.procs("pm/s1").unwrap(), vec![4242]);
        assert_eq!(cg.children("pm"), vec!["s1".to_string()]);
    }

    #[test]
    fn v1_memory_and_swap_share_one_limit_where_swap_is_accounted() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake_v1(tmp.path());
        let limits = CgroupLimits {
            cpu_weight_millis: 0,
            cpu_quota_millis: None,
            memory_bytes: Some(64 << 20),
            pids_max: None,
        };
        // Without swap accounting there is no memsw file, and none is made.
        cg.create("pm/noswap", &limits).unwrap();
        let dir = tmp.path().join("memory/pm/noswap");
        assert!(!dir.join(V1_MEMSW).exists());
        // With it, the kernel's files exist as soon as the cgroup does (unlimited).
        let dir = tmp.path().join("memory/pm/swap");
        fs::create_dir_all(&dir).unwrap();
        let unlimited = "9223372036854771712\n";
        fs::write(dir.join(V1_LIMIT), unlimited).unwrap();
        fs::write(dir.join(V1_MEMSW), unlimited).unwrap();
        cg.create("pm/swap", &limits).unwrap();
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read(V1_LIMIT), (64u64 << 20).to_string());
        assert_eq!(read(V1_MEMSW), (64u64 << 20).to_string());
        // Lower again and raise: both files follow.
        set_memory_v1(&dir, 32 << 20).unwrap();
        assert_eq!(read(V1_MEMSW), (32u64 << 20).to_string());
        set_memory_v1(&dir, 128 << 20).unwrap();
        assert_eq!(read(V1_LIMIT), (128u64 << 20).to_string());
        assert_eq!(read(V1_MEMSW), (128u64 << 20).to_string());
    }

    #[test]
    fn v1_memory_files_are_written_so_memsw_never_drops_below_the_limit() {
        // Down (and from a new cgroup's unlimited value): the limit first.
        assert_eq!(
            v1_memory_order(Some(u64::MAX / 2), 64 << 20),
            [V1_LIMIT, V1_MEMSW]
        );
        assert_eq!(
            v1_memory_order(Some(128 << 20), 64 << 20),
            [V1_LIMIT, V1_MEMSW]
        );
        assert_eq!(v1_memory_order(None, 64 << 20), [V1_LIMIT, V1_MEMSW]);
        assert_eq!(
            v1_memory_order(Some(64 << 20), 64 << 20),
            [V1_LIMIT, V1_MEMSW]
        );
        // Up: memory + swap first.
        assert_eq!(
            v1_memory_order(Some(64 << 20), 128 << 20),
            [V1_MEMSW, V1_LIMIT]
        );
    }

    #[test]
    fn v2_enables_controllers_top_down() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            tmp.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids",
        )
        .unwrap();
        let text = format!(
            "9 1 0:9 / {} rw - cgroup2 cgroup2 rw\n",
            tmp.path().display()
        );
        let cg = Cgroups::from_mountinfo(&text).unwrap();
        assert_eq!(cg.version(), CgroupVersion::V2);
        let limits = CgroupLimits {
            cpu_weight_millis: 2000,
            cpu_quota_millis: Some(1500),
            memory_bytes: Some(1 << 30),
            pids_max: None,
        };
        cg.create("pm/s1", &limits).unwrap();
        let read = |p: &str| fs::read_to_string(tmp.path().join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+cpu +memory +pids");
        assert_eq!(read("pm/cgroup.subtree_control"), "+cpu +memory +pids");
        assert_eq!(read("pm/s1/cpu.weight"), "200");
        assert_eq!(read("pm/s1/cpu.max"), "150000 100000");
        cg.set_cpu_quota("pm/s1", None).unwrap();
        assert_eq!(read("pm/s1/cpu.max"), "max 100000");
        cg.set_cpu_quota("pm/s1", Some(10)).unwrap();
        assert_eq!(read("pm/s1/cpu.max"), "1000 100000");
        assert_eq!(read("pm/s1/memory.max"), (1u64 << 30).to_string());
        assert!(
            !tmp.path().join("pm/s1/memory.swap.max").exists(),
            "no swap controller, nothing made"
        );
        assert!(!tmp.path().join("pm/s1/pids.max").exists());
        // Where the host has swap, the kernel makes memory.swap.max: it is set to 0.
        fs::create_dir_all(tmp.path().join("pm/s2")).unwrap();
        fs::write(tmp.path().join("pm/s2/memory.swap.max"), "max\n").unwrap();
        cg.create("pm/s2", &limits).unwrap();
        assert_eq!(read("pm/s2/memory.swap.max"), "0");
        fs::write(
            tmp.path().join("pm/s1/cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\n",
        )
        .unwrap();
        assert_eq!(cg.cpu_usage_ns("pm/s1").unwrap(), Some(1_500_000));
    }

    #[test]
    fn v1_usage_and_freezer() {
        let tmp = tempfile::tempdir().unwrap();
        let text = format!(
            "1 1 0:1 / {d}/cpu rw - cgroup cgroup rw,cpu\n\
             2 1 0:2 / {d}/cpuacct rw - cgroup cgroup rw,cpuacct\n\
             3 1 0:3 / {d}/memory rw - cgroup cgroup rw,memory\n\
             5 1 0:5 / {d}/freezer rw - cgroup cgroup rw,freezer\n",
            d = tmp.path().display()
        );
        let cg = Cgroups::from_mountinfo(&text).unwrap();
        cg.create("pm/s1", &CgroupLimits::default()).unwrap();
        let put = |p: &str, v: &str| fs::write(tmp.path().join(p), v).unwrap();
        let read = |p: &str| fs::read_to_string(tmp.path().join(p)).unwrap();
        put("cpuacct/pm/s1/cpuacct.usage", "123456789\n");
        put("memory/pm/s1/memory.usage_in_bytes", "8192\n");
        assert_eq!(
            cg.usage("pm/s1").unwrap(),
            CgroupUsage {
                cpu_ns: Some(123_456_789),
                memory_bytes: Some(8192)
            }
        );
        // A process outside the freezer cgroup (a command run while frozen) is moved in.
        put("cpu/pm/s1/cgroup.procs", "77\n");
        put("freezer/pm/s1/cgroup.procs", "");
        assert!(!cg.frozen("pm/s1").unwrap());
        cg.freeze("pm/s1", true).unwrap();
        assert_eq!(read("freezer/pm/s1/freezer.state"), "FROZEN");
        assert_eq!(read("freezer/pm/s1/cgroup.procs"), "77");
        assert!(cg.frozen("pm/s1").unwrap());
        // Commands run in a frozen sliver join every hierarchy but the freezer's.
        let files = cg.exec_procs_files("pm/s1").unwrap();
        assert_eq!(files.len(), 3);
        assert!(
            !files
                .iter()
                .any(|f| f.starts_with(tmp.path().join("freezer")))
        );
        cg.freeze("pm/s1", false).unwrap();
        assert_eq!(read("freezer/pm/s1/freezer.state"), "THAWED");
        assert_eq!(cg.exec_procs_files("pm/s1").unwrap().len(), 4);
        // Without a freezer hierarchy freezing is refused, and nothing reads as frozen.
        let bare = fake_v1(tmp.path());
        assert!(matches!(
            bare.freeze("pm/s1", true),
            Err(CgroupError::NoFreezer(_))
        ));
        assert!(!bare.frozen("pm/s1").unwrap());
    }

    #[test]
    fn v2_usage_and_freezer() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        let text = format!(
            "9 1 0:9 / {} rw - cgroup2 cgroup2 rw\n",
            tmp.path().display()
        );
        let cg = Cgroups::from_mountinfo(&text).unwrap();
        cg.create("pm/s2", &CgroupLimits::default()).unwrap();
        let put = |p: &str, v: &str| fs::write(tmp.path().join(p), v).unwrap();
        put(
            "pm/s2/cpu.stat",
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        );
        put("pm/s2/memory.current", "1048576\n");
        assert_eq!(
            cg.usage("pm/s2").unwrap(),
            CgroupUsage {
                cpu_ns: Some(2_500_000_000),
                memory_bytes: Some(1 << 20)
            }
        );
        assert!(!cg.frozen("pm/s2").unwrap());
        cg.freeze("pm/s2", true).unwrap();
        assert_eq!(
            fs::read_to_string(tmp.path().join("pm/s2/cgroup.freeze")).unwrap(),
            "1"
        );
        assert!(cg.frozen("pm/s2").unwrap());
        // A command would freeze too: refused with the reason.
        assert!(matches!(
            cg.exec_procs_files("pm/s2"),
            Err(CgroupError::Frozen(_))
        ));
        cg.freeze("pm/s2", false).unwrap();
        assert!(!cg.frozen("pm/s2").unwrap());
        assert_eq!(cg.exec_procs_files("pm/s2").unwrap().len(), 1);
        // A missing figure is an error naming the file.
        fs::remove_file(tmp.path().join("pm/s2/memory.current")).unwrap();
        let err = cg.usage("pm/s2").unwrap_err().to_string();
        assert!(err.contains("memory.current"), "{err}");
    }

    #[test]
    fn v2_without_controllers_is_not_usable() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("cgroup.controllers"), "").unwrap();
        let text = format!(
            "9 1 0:9 / {} rw - cgroup2 cgroup2 rw\n",
            tmp.path().display()
        );
        assert_eq!(Cgroups::from_mountinfo(&text), None);
    }
}
