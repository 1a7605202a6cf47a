//! The real host: clone/setns, id maps, cgroupfs, netlink, procfs.
//!
//! The init is cloned straight into new user, mount, uts, ipc, net (and pid) namespaces. Until
//! the node writes its id maps and puts it in its cgroup, it blocks on a pipe; it then becomes
//! root of its user namespace and execs the init program, which builds the root filesystem
//! from the plan it reads on a second pipe and answers on a third. Code between `clone`/`fork`
//! and `exec` makes raw system calls only, on data prepared beforehand.
//!
//! Exec into a sliver forks from a thread that has joined the sliver's pid namespace; the child
//! joins the sliver's cgroup, then its user namespace and the others, becomes the asked user,
//! drops the capabilities the sliver's root lacks, sets `no_new_privs` and execs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use super::alloc::UidRange;
use super::caps;
use super::cgroup::{CgroupLimits, CgroupUsage, Cgroups};
use super::enter::EnterPlan;
use super::firewall::Firewall;
use super::host::{
    DiskTarget, ExecCommand, ExecOutput, ExecTarget, Host, HostError, InitHandle, InitRequest,
    NetAttach, NodeShaping, Orphan, OrphanScope, Shape, Spawned,
};
use super::init::{self, InitPlan};
use super::mountfd;
use super::netlink::Netlink;
use super::output::{self, pidfd_open};
use super::rootfs::{self, Image, SliverDirs};
use super::sealed::SealedImage;

mod clone;
mod control;
mod dirs;
mod exec;
mod forwarding;
mod nfset;
mod nft;
pub mod plan;
pub mod wire;

pub use clone::Pending;
use clone::read_status;

/// How long an init may take to build its sliver.
const INIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a killed init may take to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// The host, for real.
#[derive(Debug, Clone)]
pub struct LinuxHost {
    cgroups: Cgroups,
    proc_root: PathBuf,
    host_root: PathBuf,
}

fn sys(op: impl Into<String>) -> impl FnOnce(Errno) -> HostError {
    let op = op.into();
    move |source| HostError::Sys { op, source }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> HostError + use<> {
    let path = path.to_path_buf();
    move |source| HostError::Io { op, path, source }
}

impl LinuxHost {
    /// Every command's way into a sliver (exec, spawn, an SSH session): the helper of
    /// [`super::enter`] forked in the sliver's pid namespace and cgroup, with piped standard
    /// streams or the terminal `tty`.
    fn enter(
        &self,
        target: &ExecTarget,
        cmd: &ExecCommand,
        tty: Option<std::os::fd::OwnedFd>,
    ) -> Result<Spawned, HostError> {
        if !self.init_alive(target.init_pid, target.start_time) {
            return Err(HostError::Init(format!(
                "sliver init {} is not running",
                target.init_pid
            )));
        }
        if cmd.argv.is_empty() {
            return Err(HostError::Init("empty command".into()));
        }
        let image = SealedImage::shared(&target.enter_program)
            .map_err(io_err("copy", &target.enter_program))?;
        let open_ns = |name: &str| -> Result<File, HostError> {
            let p = self.proc_path(target.init_pid, &format!("ns/{name}"));
            File::open(&p).map_err(io_err("open", &p))
        };
        // Joined in this order by the helper (see exec::NAMESPACES).
        let mut namespaces = Vec::with_capacity(exec::NAMESPACES.len());
        for (name, flag) in exec::NAMESPACES {
            namespaces.push((open_ns(name)?, flag));
        }
        let pidns = if target.host_pid {
            None
        } else {
            Some(open_ns("pid")?)
        };
        let mut cgroup_files = Vec::new();
        for p in self.cgroups.exec_procs_files(&target.cgroup)? {
            cgroup_files.push(
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(io_err("open", &p))?,
            );
        }
        let plan = EnterPlan {
            namespaces: namespaces
                .iter()
                .map(|(f, flag)| (f.as_raw_fd(), *flag))
                .collect(),
            cwd: cmd.cwd.clone(),
            uid: cmd.uid,
            gid: cmd.gid,
            keep_caps: target.caps,
            last_cap: caps::last_cap(),
            seccomp: target.seccomp,
            controlling_tty: tty.is_some(),
        };
        let child = exec::fork_enter(
            &image.proc_path(),
            &plan,
            pidns.as_ref(),
            &cgroup_files,
            cmd,
            tty,
        )?;
        drop(namespaces);
        drop(cgroup_files);
        Ok(Spawned { child })
    }

    /// A host with the given cgroup hierarchies, `/proc` and `/` as the host root.
    pub fn new(cgroups: Cgroups) -> Self {
        LinuxHost {
            cgroups,
            proc_root: "/proc".into(),
            host_root: "/".into(),
        }
    }

    /// A host whose cgroups are found in `/proc/self/mountinfo`.
    pub fn detect() -> Result<Self, HostError> {
        Ok(LinuxHost::new(Cgroups::detect(Path::new(
            "/proc/self/mountinfo",
        ))?))
    }

    /// Makes moving processes between cgroups cheap, host-wide (see
    /// [`super::cgroup::favor_dynamic_modifications`]); for a node dedicated to slivers.
    pub fn favor_dynamic_cgroups(&self) -> Result<Option<PathBuf>, HostError> {
        Ok(super::cgroup::favor_dynamic_modifications(
            &self.proc_root.join("self/mountinfo"),
        )?)
    }

    /// The cgroup hierarchies.
    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    fn proc_path(&self, pid: u32, rest: &str) -> PathBuf {
        self.proc_root.join(pid.to_string()).join(rest)
    }

    /// The start time of process `pid` (field 22 of its stat) and whether it is a zombie.
    fn stat(&self, pid: u32) -> Option<(u64, bool)> {
        plan::parse_stat(&fs::read_to_string(self.proc_path(pid, "stat")).ok()?)
    }

    /// The image at `lower`, id-mapped through the user namespace of `pid`; `None` when this
    /// host or filesystem cannot id-map it (the init then binds it unmapped).
    fn idmap_layer(&self, pid: u32, lower: &Path) -> Option<OwnedFd> {
        let userns = File::open(self.proc_path(pid, "ns/user")).ok()?;
        match mountfd::idmapped_clone(lower, userns.as_fd()) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::debug!("cannot id-map {}: {e}", lower.display());
                None
            }
        }
    }

    fn netlink() -> Result<Netlink, HostError> {
        Ok(Netlink::open()?)
    }

    fn attach_inner(&self, init_pid: u32, net: &NetAttach) -> Result<(), HostError> {
        wire::attach(&mut Self::netlink()?, &self.proc_root, init_pid, net)
    }

    fn shape_inner(&self, shape: &Shape) -> Result<(), HostError> {
        wire::shape(&mut Self::netlink()?, shape)
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), HostError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"))
}

impl Host for LinuxHost {
    /// The node's ends of the init's pipes and the memory its clone child runs on.
    type Pending = Pending;

    fn warm_up(&self, init_path: &Path) -> Result<(), HostError> {
        SealedImage::shared(init_path)
            .map(drop)
            .map_err(io_err("copy", init_path))
    }

    fn prepare_image(&self, skeleton: &Path) -> Result<Image, HostError> {
        rootfs::make_skeleton(skeleton, &self.host_root).map_err(io_err("make skeleton", skeleton))
    }

    fn prepare_dirs(&self, dirs: &SliverDirs, uids: &UidRange) -> Result<(), HostError> {
        self::dirs::prepare(dirs, uids)
    }

    fn remove_dirs(&self, dirs: &SliverDirs, keep_upper: bool) -> Result<(), HostError> {
        self::dirs::remove(dirs, keep_upper)
    }

    fn cgroup_create(&self, cgroup: &str, limits: &CgroupLimits) -> Result<(), HostError> {
        if let Err(e) = self.cgroups.create(cgroup, limits) {
            let _ = self.cgroups.destroy(cgroup);
            return Err(e.into());
        }
        Ok(())
    }

    fn cgroup_destroy(&self, cgroup: &str) -> Result<(), HostError> {
        Ok(self.cgroups.destroy(cgroup)?)
    }

    fn cgroup_cpu_quota(&self, cgroup: &str, millis: u64) -> Result<(), HostError> {
        Ok(self.cgroups.set_cpu_quota(cgroup, Some(millis))?)
    }

    fn spawn_init(&self, req: &InitRequest) -> Result<InitHandle<Pending>, HostError> {
        let (go_r, go_w) = pipe()?;
        let (plan_r, plan_w) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(sys("socketpair"))?;
        let (status_r, status_w) = pipe()?;
        let image = SealedImage::shared(&req.init_path).map_err(io_err("copy", &req.init_path))?;
        let argv = init::argv("sliver-init", plan_r.as_raw_fd(), status_w.as_raw_fd());
        let fds = clone::InitFds {
            go: go_r.as_raw_fd(),
            go_write: go_w.as_raw_fd(),
            plan: plan_r.as_raw_fd(),
            status: status_w.as_raw_fd(),
            image: image.raw_fd(),
        };
        let (pid, child) =
            clone::clone_init(fds, argv, req.host_pid).map_err(|source| HostError::Sys {
                op: format!("clone init of {}", req.id),
                source,
            })?;
        drop((go_r, plan_r, status_w));
        let pid_u = u32::try_from(pid).unwrap_or(0);
        let setup = || -> Result<u64, HostError> {
            control::write(&plan::init_writes(
                &self.proc_root,
                pid_u,
                &req.uids,
                &self.cgroups,
                &req.cgroup,
            ))?;
            self.stat(pid_u)
                .map(|(t, _)| t)
                .ok_or_else(|| HostError::Init("init vanished".into()))
        };
        match setup() {
            Ok(start_time) => Ok(InitHandle {
                pid: pid_u,
                start_time,
                pending: Some(Pending {
                    go: go_w,
                    plan: plan_w,
                    status: status_r,
                    child,
                    layer: req
                        .lower
                        .as_deref()
                        .and_then(|lower| self.idmap_layer(pid_u, lower)),
                }),
            }),
            Err(e) => {
                let raw = Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(raw, Signal::SIGKILL);
                let _ = waitpid(raw, None);
                drop(child);
                Err(e)
            }
        }
    }

    fn start_init(&self, init: &mut InitHandle<Pending>, plan: &InitPlan) -> Result<(), HostError> {
        let pending = init
            .pending
            .take()
            .ok_or_else(|| HostError::Init("init was already started".into()))?;
        let Pending {
            go,
            plan: plan_sock,
            status: status_r,
            child,
            layer,
        } = pending;
        let mut go = File::from(go);
        go.write_all(b"g").map_err(|e| HostError::Io {
            op: "release init",
            path: PathBuf::new(),
            source: e,
        })?;
        drop(go);
        let text = serde_json::to_vec(plan).map_err(|e| HostError::Init(e.to_string()))?;
        let marker = if layer.is_some() {
            init::WITH_LAYER
        } else {
            init::WITHOUT_LAYER
        };
        // The init may have died before reading: its error is on the status pipe.
        let wrote = mountfd::send_fd(plan_sock.as_fd(), marker, layer.as_ref().map(|f| f.as_fd()))
            .and_then(|()| File::from(plan_sock).write_all(&text));
        drop(layer);
        let status = read_status(status_r, INIT_TIMEOUT);
        // The child has exec'd (the status pipe's write end is only the init's now) or died.
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                let _ = self.kill_init(init.pid, init.start_time);
                drop(child);
                return Err(e);
            }
        };
        drop(child);
        plan::init_outcome(status, wrote)
    }

    fn kill_init(&self, pid: u32, start_time: u64) -> Result<(), HostError> {
        let raw = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        let Ok(pidfd) = pidfd_open(pid) else {
            // Gone already; reap it if it was ours.
            let _ = waitpid(raw, Some(WaitPidFlag::WNOHANG));
            return Ok(());
        };
        if !plan::is_same_init(self.stat(pid), start_time) {
            // Another process reuses the pid: ours is gone.
            return Ok(());
        }
        clone::kill_and_wait(&pidfd, pid, KILL_TIMEOUT)?;
        let _ = waitpid(raw, Some(WaitPidFlag::WNOHANG));
        Ok(())
    }

    fn init_alive(&self, pid: u32, start_time: u64) -> bool {
        plan::is_live_init(self.stat(pid), start_time)
    }

    fn net_attach(&self, init_pid: u32, net: &NetAttach) -> Result<(), HostError> {
        let result = self.attach_inner(init_pid, net);
        if result.is_err() {
            let _ = self.net_detach(net);
        }
        result
    }

    fn net_detach(&self, net: &NetAttach) -> Result<(), HostError> {
        wire::link_remove(&mut Self::netlink()?, &net.host_if)
    }

    fn shaping_setup(&self, node: &NodeShaping) -> Result<(), HostError> {
        wire::shaping_setup(&mut Self::netlink()?, node)
    }

    fn shaping_teardown(&self, node: &NodeShaping) -> Result<(), HostError> {
        wire::link_remove(&mut Self::netlink()?, &node.ifb)
    }

    fn shape_add(&self, shape: &Shape) -> Result<(), HostError> {
        let result = self.shape_inner(shape);
        if result.is_err() {
            let _ = self.shape_remove(shape);
        }
        result
    }

    fn shape_remove(&self, shape: &Shape) -> Result<(), HostError> {
        wire::bucket_remove(
            &mut Self::netlink()?,
            &shape.node.ifb,
            shape.class_minor,
            shape.filter_prio,
        )
    }

    fn traces(&self, scope: &OrphanScope) -> Result<Vec<Orphan>, HostError> {
        let mut out: Vec<Orphan> = self
            .cgroups
            .children(&scope.cgroup_parent)
            .into_iter()
            .map(Orphan::Cgroup)
            .collect();
        out.extend(wire::traces(&mut Self::netlink()?, scope)?);
        // A slivers dir that cannot be read holds no traces.
        let entries: Vec<PathBuf> = fs::read_dir(&scope.slivers_dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        out.extend(plan::dir_traces(entries, Path::exists));
        Ok(out)
    }

    fn remove_orphan(&self, scope: &OrphanScope, orphan: &Orphan) -> Result<(), HostError> {
        match orphan {
            Orphan::Cgroup(name) => self.cgroup_destroy(&plan::orphan_cgroup(scope, name)),
            Orphan::Link(name) => wire::link_remove(&mut Self::netlink()?, name),
            // A sliver's classifier has its class minor as priority.
            Orphan::Class(minor) => {
                wire::bucket_remove(&mut Self::netlink()?, &scope.ifb, *minor, *minor)
            }
            Orphan::Dir(path) => {
                let Some(dirs) = plan::orphan_dirs(scope, path) else {
                    return Err(HostError::Init(format!(
                        "{} is not a sliver dir",
                        path.display()
                    )));
                };
                self.remove_dirs(&dirs, false)
            }
        }
    }

    fn exec(&self, target: &ExecTarget, cmd: &ExecCommand) -> Result<ExecOutput, HostError> {
        let Spawned { mut child } = self.spawn(target, cmd)?;
        output::run_to_end(
            &mut child,
            &cmd.stdin,
            cmd.output_limit,
            cmd.timeout,
            |pid| {
                // Frozen by the disk watchdog while it ran, it would not die (v1): out of the
                // freezer it goes, so the kill lands and this thread is not stuck.
                if self.cgroups.frozen(&target.cgroup).unwrap_or(false)
                    && let Err(e) = self.cgroups.release_from_freezer(pid)
                {
                    tracing::warn!("exec timed out in a frozen sliver: {e}");
                }
            },
        )
    }

    fn spawn(&self, target: &ExecTarget, cmd: &ExecCommand) -> Result<Spawned, HostError> {
        self.enter(target, cmd, None)
    }

    fn connect_inside(
        &self,
        target: &ExecTarget,
        addr: std::net::SocketAddr,
    ) -> Result<std::net::TcpStream, HostError> {
        if !self.init_alive(target.init_pid, target.start_time) {
            return Err(HostError::Init(format!(
                "sliver init {} is not running",
                target.init_pid
            )));
        }
        let p = self.proc_path(target.init_pid, "ns/net");
        let netns = File::open(&p).map_err(io_err("open", &p))?;
        // The network namespace is per thread: a thread that joins it makes the socket there
        // and ends (it never serves anything else).
        std::thread::scope(|s| {
            s.spawn(|| -> Result<std::net::TcpStream, HostError> {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                    |source| HostError::Sys {
                        op: "join sliver network namespace".into(),
                        source,
                    },
                )?;
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10))
                    .map_err(|e| HostError::Io {
                        op: "connect",
                        path: PathBuf::from(addr.to_string()),
                        source: e,
                    })
            })
            .join()
            .unwrap_or_else(|_| Err(HostError::Init("connect thread panicked".into())))
        })
    }

    fn spawn_tty(
        &self,
        target: &ExecTarget,
        cmd: &ExecCommand,
        tty: std::os::fd::OwnedFd,
    ) -> Result<Spawned, HostError> {
        self.enter(target, cmd, Some(tty))
    }

    fn cgroup_usage(&self, cgroup: &str) -> Result<CgroupUsage, HostError> {
        Ok(self.cgroups.usage(cgroup)?)
    }

    fn egress_counters(
        &self,
        node: &NodeShaping,
    ) -> Result<std::collections::BTreeMap<u16, u64>, HostError> {
        wire::egress_counters(&mut Self::netlink()?, node)
    }

    fn cgroup_freeze(&self, cgroup: &str, frozen: bool) -> Result<(), HostError> {
        Ok(self.cgroups.freeze(cgroup, frozen)?)
    }

    fn cgroup_frozen(&self, cgroup: &str) -> Result<bool, HostError> {
        Ok(self.cgroups.frozen(cgroup)?)
    }

    fn frozen_stragglers(&self, cgroup: &str) -> Result<Vec<u32>, HostError> {
        Ok(self.cgroups.outside_freezer(cgroup)?)
    }

    fn freeze_stragglers(&self, cgroup: &str, pids: &[u32]) -> Result<(), HostError> {
        Ok(self.cgroups.join_freezer(cgroup, pids)?)
    }

    fn disk_used(&self, target: &DiskTarget) -> Result<u64, HostError> {
        match plan::disk_measure(&self.proc_root, target) {
            plan::DiskMeasure::Walk {
                upper,
                work,
                cgroup,
            } => {
                let mut used = 0u64;
                for dir in [&upper, &work] {
                    used = used
                        .saturating_add(rootfs::disk_usage(dir).map_err(io_err("measure", dir))?);
                }
                let dev = {
                    use std::os::unix::fs::MetadataExt;
                    fs::symlink_metadata(&upper)
                        .map_err(io_err("stat", &upper))?
                        .dev()
                };
                let cgroups = self.cgroups.dirs(&cgroup);
                let pids = rootfs::cgroup_pids(&cgroups).map_err(io_err(
                    "list processes",
                    cgroups.first().map_or(Path::new("/"), PathBuf::as_path),
                ))?;
                let held = rootfs::deleted_open_usage(&self.proc_root, &pids, dev)
                    .map_err(io_err("measure deleted files held open", &self.proc_root))?;
                Ok(used.saturating_add(held))
            }
            plan::DiskMeasure::Quota { root, limit } => {
                super::quota::usage(&root, limit).map_err(io_err("measure", &root))
            }
            plan::DiskMeasure::Statvfs { root } => {
                let st = nix::sys::statvfs::statvfs(&root).map_err(sys(format!(
                    "statvfs {} (tmpfs-backed layer)",
                    root.display()
                )))?;
                Ok(plan::fs_used(
                    st.blocks(),
                    st.blocks_free(),
                    st.fragment_size(),
                ))
            }
        }
    }

    fn disk_quota_setup(&self, state_dir: &Path, capacity: Option<u64>) -> Result<(), HostError> {
        super::quota::setup(state_dir, capacity).map_err(io_err("set up disk quotas", state_dir))
    }

    fn disk_quota_cap(&self, dirs: &SliverDirs, limit: u64) -> Result<(), HostError> {
        super::quota::cap(&dirs.root, limit).map_err(io_err("cap disk", &dirs.root))
    }

    fn disk_quota_teardown(&self, state_dir: &Path) -> Result<(), HostError> {
        super::quota::teardown(state_dir).map_err(io_err("remove disk quotas", state_dir))
    }

    fn firewall_setup(&self, firewall: &Firewall) -> Result<(), HostError> {
        if let Some(uplink) = &firewall.uplink {
            let knob = plan::forwarding(&self.proc_root, &uplink.device);
            forwarding::enable(&knob, firewall.forwarding_note.as_deref())?;
        }
        nft::apply(&firewall.ruleset())
    }

    fn firewall_teardown(&self, firewall: &Firewall) -> Result<(), HostError> {
        nft::apply(&firewall.removal())?;
        if let Some(uplink) = &firewall.uplink {
            let knob = plan::forwarding(&self.proc_root, &uplink.device);
            let still_needed = nft::other_node_tables(firewall)?;
            forwarding::restore(&knob, firewall.forwarding_note.as_deref(), still_needed)?;
        }
        Ok(())
    }

    fn firewall_present(&self, firewall: &Firewall) -> Result<bool, HostError> {
        nft::present(firewall)
    }

    fn ports_forward(
        &self,
        firewall: &Firewall,
        add: bool,
        entries: &[(u16, std::net::Ipv4Addr)],
    ) -> Result<(), HostError> {
        let change = if add {
            nfset::Change::Add
        } else {
            nfset::Change::Remove
        };
        nfset::apply(
            &firewall.table,
            super::firewall::LEASED_PORTS,
            change,
            entries,
        )
    }
}
