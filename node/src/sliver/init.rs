//! The sliver's pid 1: builds the sliver's root from a plan, drops capabilities, then reaps.
//!
//! The node clones a child into fresh namespaces, writes its id maps, puts it in its cgroup
//! and wires its network, then lets it exec the init program (`sliver-init`, or the daemon
//! re-executed). [`run`] is that program: it reads an [`InitPlan`] (JSON) from one inherited
//! fd, enters a fresh cgroup namespace, sets the hostname, performs the [`MountStep`]s (overlay
//! root, `/proc`, a minimal `/dev`, `/tmp`, read-only host system dirs, …), pivots into the new
//! root (what each step becomes, the exact calls with their flags and paths, is planned by the
//! pure `calls` module, unit-tested without root; this file only makes them), reduces its capability bounding set and sets `no_new_privs`, installs the sliver's
//! seccomp filter ([`super::seccomp`], compiled here from the plan's [`SeccompPlan`]), writes
//! `ready` (or the error) on a second fd, and then only reaps children until it is sent SIGTERM
//! or SIGINT. As pid 1 of the sliver's pid namespace, its exit takes every process of the
//! sliver with it. The filter is in place before `ready`, so a filter that cannot be compiled
//! or installed fails the create like any other step.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
use std::path::PathBuf;

use nix::mount::{MsFlags, mount, umount2};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{Pid, chdir, pivot_root, sethostname};
use serde::{Deserialize, Serialize};

use super::caps::{self, CapMask};
use super::netlink::Netlink;
use super::seccomp::{self, SeccompPlan};

pub mod calls;
use calls::{Call, Planned};

/// The status line an init writes once its sliver is ready.
pub const READY: &str = "ready";

/// One step of building a sliver's root, run by its init inside the sliver's namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MountStep {
    /// Stops mount events propagating to the host (`MS_REC | MS_PRIVATE` on `/`).
    MakePrivate,
    /// Attaches the id-mapped image the node sent at `target`; without one (the host cannot
    /// id-map it), binds `source` there read-only.
    IdmappedLayer {
        /// The image on the host.
        source: PathBuf,
        /// Where to attach it.
        target: PathBuf,
    },
    /// Mounts an overlay at `target`.
    Overlay {
        /// Read-only layers, top first.
        lower: Vec<PathBuf>,
        /// The sliver's writable layer.
        upper: PathBuf,
        /// Overlayfs' scratch dir, on the same filesystem as `upper`.
        work: PathBuf,
        /// Where the merged tree goes.
        target: PathBuf,
    },
    /// Bind-mounts `source` on `target` (made if missing), read-only if asked.
    Bind {
        /// What to bind.
        source: PathBuf,
        /// Where.
        target: PathBuf,
        /// Remount read-only.
        readonly: bool,
        /// `source` is a file, not a directory.
        file: bool,
    },
    /// A fresh procfs.
    Proc {
        /// Where.
        target: PathBuf,
    },
    /// A read-only sysfs (this network namespace's view).
    Sysfs {
        /// Where.
        target: PathBuf,
    },
    /// A tmpfs.
    Tmpfs {
        /// Where.
        target: PathBuf,
        /// Mode of its root, e.g. 0o1777.
        mode: u32,
        /// Size cap in bytes.
        size: u64,
    },
    /// Directories made with these modes (parents 0755), owned by whoever the init is.
    Dirs {
        /// (path, mode) pairs, parents first.
        dirs: Vec<(PathBuf, u32)>,
    },
    /// A private devpts instance.
    Devpts {
        /// Where.
        target: PathBuf,
    },
    /// A symbolic link `path` → `to`.
    Symlink {
        /// The link.
        path: PathBuf,
        /// Its target.
        to: PathBuf,
    },
    /// Makes `new_root` the root and detaches the old one.
    PivotRoot {
        /// The new root (a mount point).
        new_root: PathBuf,
    },
}

/// Everything the init needs to build the sliver, sent by the node on the plan fd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitPlan {
    /// The sliver's hostname.
    pub hostname: String,
    /// Steps, in order; the last is normally [`MountStep::PivotRoot`].
    pub steps: Vec<MountStep>,
    /// Capabilities the sliver's root keeps.
    pub caps: CapMask,
    /// Whether to enter a new cgroup namespace (after the node put the init in its cgroup).
    pub cgroup_ns: bool,
    /// The sliver's side of its veth, configured by the init inside its network namespace.
    #[serde(default)]
    pub net: Option<SliverNet>,
    /// Detach the host's old root only after reporting ready (it is covered by an empty
    /// read-only tmpfs meanwhile). Saves the grace period an unmount waits for; used only
    /// when the sliver's root lacks CAP_SYS_ADMIN, so it cannot lift the cover.
    #[serde(default)]
    pub defer_detach: bool,
    /// What the sliver's seccomp filter is built from (with [`InitPlan::caps`]); absent, the
    /// strictest (a regular sliver's default).
    #[serde(default)]
    pub seccomp: SeccompPlan,
}

/// The sliver's end of its veth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliverNet {
    /// Interface name inside the sliver.
    pub ifname: String,
    /// The sliver's address.
    pub addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway (the host side).
    pub gateway: Ipv4Addr,
}

/// Where the host's root hangs between `pivot_root` and its detachment.
const OLD_ROOT: &str = "/.oldroot";

/// An init failure: which step, and why.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The plan could not be read.
    #[error("reading the plan: {0}")]
    Plan(String),
    /// A step failed.
    #[error("{step}: {detail}")]
    Step {
        /// The step, described.
        step: String,
        /// The cause.
        detail: String,
    },
}

fn step_err(step: impl Into<String>, detail: impl ToString) -> InitError {
    InitError::Step {
        step: step.into(),
        detail: detail.to_string(),
    }
}

/// The init program: `plan_fd` (a unix socket) carries the id-mapped image, if any, then the
/// plan; `status_fd` receives `ready` or the error.
/// Returns only on failure to build the sliver, or when told to stop (the exit code).
pub fn run(plan_fd: RawFd, status_fd: RawFd) -> i32 {
    // SAFETY: the node passes these two fds to the init and nothing else owns them.
    let mut plan_file = unsafe { File::from_raw_fd(plan_fd) };
    // SAFETY: as above.
    let mut status = unsafe { File::from_raw_fd(status_fd) };
    quiet_stdio();
    let result = receive_plan(&mut plan_file)
        .and_then(|(plan, layer)| build(&plan, layer.as_ref()).map(|()| plan));
    drop(plan_file);
    match result {
        Ok(plan) => {
            if status.write_all(READY.as_bytes()).is_err() {
                return 1;
            }
            drop(status);
            if finish(&plan).is_err() {
                // The old root could not be detached: the sliver must not live on with it.
                return 1;
            }
            reap_until_told()
        }
        Err(e) => {
            let _ = status.write_all(format!("error: {e}").as_bytes());
            1
        }
    }
}

/// Entry point for a binary: `sliver-init <plan-fd> <status-fd>`.
pub fn main_from_args(args: &[String]) -> i32 {
    let parse = |i: usize| args.get(i).and_then(|s| s.parse::<RawFd>().ok());
    match (parse(1), parse(2)) {
        (Some(plan), Some(status)) => run(plan, status),
        _ => {
            eprintln!(
                "usage: sliver-init <plan-fd> <status-fd> (started by the node, not by hand)"
            );
            2
        }
    }
}

/// Points fds 0, 1 and 2 at `/dev/null`: the init must not hold the node's terminal or pipes.
fn quiet_stdio() {
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

/// Byte sent before the plan when an id-mapped image fd comes with it.
pub const WITH_LAYER: u8 = b'L';
/// Byte sent before the plan when no image fd comes with it.
pub const WITHOUT_LAYER: u8 = b'P';

fn receive_plan(file: &mut File) -> Result<(InitPlan, Option<std::os::fd::OwnedFd>), InitError> {
    use std::os::fd::AsFd;
    let (marker, layer) =
        super::mountfd::recv_fd(file.as_fd()).map_err(|e| InitError::Plan(e.to_string()))?;
    if marker == WITH_LAYER && layer.is_none() {
        return Err(InitError::Plan("the image fd did not arrive".into()));
    }
    Ok((read_plan(file)?, layer))
}

fn read_plan(file: &mut File) -> Result<InitPlan, InitError> {
    let mut text = Vec::new();
    file.take(1 << 20)
        .read_to_end(&mut text)
        .map_err(|e| InitError::Plan(e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| InitError::Plan(e.to_string()))
}

/// Builds the sliver from the plan (runs inside its namespaces), up to the point where it
/// may be reported ready.
pub fn build(plan: &InitPlan, layer: Option<&std::os::fd::OwnedFd>) -> Result<(), InitError> {
    if plan.cgroup_ns {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| step_err("unshare cgroup namespace", e))?;
    }
    sethostname(&plan.hostname).map_err(|e| step_err("sethostname", e))?;
    if let Some(net) = &plan.net {
        configure_net(net)?;
    }
    for step in &plan.steps {
        for call in calls::calls(step, plan.defer_detach, layer.is_some()) {
            perform(&call, layer)?;
        }
    }
    chdir("/").map_err(|e| step_err("chdir /", e))?;
    let filter = plan
        .seccomp
        .compile(plan.caps)
        .map_err(|e| step_err("compile seccomp filter", e))?;
    caps::restrict_raw(plan.caps, caps::last_cap())
        .map_err(|errno| step_err("drop capabilities", nix::errno::Errno::from_raw(errno)))?;
    if !plan.defer_detach {
        drop_own_caps(plan.caps)?;
    }
    // After `no_new_privs` (set above), which an unprivileged filter needs. What is left to do
    // after ready (detaching the old root, dropping the init's own capabilities) is allowed.
    seccomp::install_raw(&filter)
        .map_err(|errno| step_err("install seccomp filter", nix::errno::Errno::from_raw(errno)))?;
    Ok(())
}

/// What is left after the sliver was reported ready: detach the host's old root (when
/// deferred) and drop the init's own capabilities to the sliver's set.
pub fn finish(plan: &InitPlan) -> Result<(), InitError> {
    if let Some(detach) = calls::deferred_detach(plan.defer_detach, &plan.steps) {
        for call in &detach {
            perform(call, None)?;
        }
        drop_own_caps(plan.caps)?;
    }
    Ok(())
}

/// The init keeps no more capabilities than the sliver's root.
fn drop_own_caps(mask: CapMask) -> Result<(), InitError> {
    let keep: ::caps::CapsHashSet = ::caps::all()
        .into_iter()
        .filter(|c| mask.contains(c.index()))
        .collect();
    for set in [
        ::caps::CapSet::Effective,
        ::caps::CapSet::Permitted,
        ::caps::CapSet::Inheritable,
    ] {
        ::caps::set(None, set, &keep).map_err(|e| step_err("set capabilities", e))?;
    }
    Ok(())
}

/// Brings up `lo` and the sliver's veth end with its address and default route.
fn configure_net(net: &SliverNet) -> Result<(), InitError> {
    let nl_err = |what: &str| {
        let what = what.to_string();
        move |e: super::netlink::NetlinkError| step_err(what, e)
    };
    let mut nl = Netlink::open().map_err(nl_err("open netlink"))?;
    if let Some(lo) = nl.link_index("lo").map_err(nl_err("find lo"))? {
        nl.link_up(lo).map_err(nl_err("set lo up"))?;
    }
    let idx = nl
        .link_index(&net.ifname)
        .map_err(nl_err("find veth"))?
        .ok_or_else(|| step_err("find veth", format!("{} missing", net.ifname)))?;
    nl.addr_add(idx, net.addr, net.prefix)
        .map_err(nl_err("add address"))?;
    nl.link_up(idx).map_err(nl_err("set veth up"))?;
    nl.default_route(idx, net.gateway)
        .map_err(nl_err("add default route"))?;
    Ok(())
}

/// Makes one planned call (see [`calls`]); `layer` is the id-mapped image the node sent.
fn perform(planned: &Planned, layer: Option<&std::os::fd::OwnedFd>) -> Result<(), InitError> {
    let err = |e: &dyn std::fmt::Display| step_err(&planned.what, e);
    match &planned.call {
        Call::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => {
            mount(source.as_deref(), target, *fstype, *flags, data.as_deref()).map_err(|e| err(&e))
        }
        Call::RemountKeepingLocked { target, flags } => {
            let locked = nix::sys::statvfs::statvfs(target)
                .map(|st| calls::locked(st.flags()))
                .unwrap_or(MsFlags::empty());
            let none: Option<&str> = None;
            mount(none, target, none, *flags | locked, none).map_err(|e| err(&e))
        }
        Call::AttachLayer { target } => {
            use std::os::fd::AsFd;
            let fd = layer.ok_or_else(|| err(&"the image fd did not arrive"))?;
            super::mountfd::attach(fd.as_fd(), target).map_err(|e| err(&e))
        }
        Call::Unmount { target, flags } => umount2(target, *flags).map_err(|e| err(&e)),
        Call::MakeDir { path } => {
            if path.is_dir() {
                return Ok(());
            }
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path)
                .map_err(|e| err(&e))
        }
        Call::CreateFile { path } => {
            if path.exists() {
                return Ok(());
            }
            File::create(path).map(drop).map_err(|e| err(&e))
        }
        Call::Chmod { path, mode } => {
            fs::set_permissions(path, fs::Permissions::from_mode(*mode)).map_err(|e| err(&e))
        }
        Call::Symlink { path, to } => {
            if path.symlink_metadata().is_ok() {
                return Ok(());
            }
            symlink(to, path).map_err(|e| err(&e))
        }
        Call::PivotRoot { new_root, put_old } => pivot_root(new_root, put_old).map_err(|e| err(&e)),
        Call::Chdir { path } => chdir(path).map_err(|e| err(&e)),
        Call::RemoveDir { path } => fs::remove_dir(path).map_err(|e| err(&e)),
        Call::MakeSticky { path } => {
            if let Ok(meta) = fs::metadata(path) {
                let mut perm = meta.permissions();
                if perm.mode() & 0o7777 != 0o1777 {
                    perm.set_mode(0o1777);
                    let _ = fs::set_permissions(path, perm);
                }
            }
            Ok(())
        }
    }
}

/// Reaps children until SIGTERM or SIGINT; returns the exit code.
fn reap_until_told() -> i32 {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(sig);
    }
    if set.thread_block().is_err() {
        return 1;
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => return 0,
            Ok(_) | Err(_) => {
                // Reap every child that has exited.
                while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    if status == nix::sys::wait::WaitStatus::StillAlive {
                        break;
                    }
                }
            }
        }
    }
}

/// Builds the argv of the init program for the given fds.
pub fn argv(init_name: &str, plan_fd: RawFd, status_fd: RawFd) -> Vec<CString> {
    [
        init_name.to_string(),
        plan_fd.to_string(),
        status_fd.to_string(),
    ]
    .into_iter()
    .filter_map(|s| CString::new(s).ok())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_round_trip_as_json() {
        let plan = InitPlan {
            hostname: "s1".into(),
            steps: vec![
                MountStep::MakePrivate,
                MountStep::Tmpfs {
                    target: "/r/tmp".into(),
                    mode: 0o1777,
                    size: 1 << 20,
                },
                MountStep::PivotRoot {
                    new_root: "/r".into(),
                },
            ],
            caps: CapMask(5),
            cgroup_ns: true,
            net: Some(SliverNet {
                ifname: "eth0".into(),
                addr: Ipv4Addr::new(10, 0, 0, 1),
                prefix: 31,
                gateway: Ipv4Addr::new(10, 0, 0, 0),
            }),
            defer_detach: true,
            seccomp: SeccompPlan {
                profile: seccomp::SeccompProfile {
                    nested_userns: true,
                },
                kind: crate::sliver::SliverKind::Admin,
            },
        };
        let json = serde_json::to_string(&plan).unwrap();
        assert!(json.contains("\"op\":\"make_private\""));
        assert_eq!(serde_json::from_str::<InitPlan>(&json).unwrap(), plan);
        // A plan without the field gets the strictest filter.
        let mut value = serde_json::to_value(&plan).unwrap();
        value.as_object_mut().unwrap().remove("seccomp");
        let bare: InitPlan = serde_json::from_value(value).unwrap();
        assert_eq!(bare.seccomp, SeccompPlan::default());
    }

    #[test]
    fn argv_names_the_fds() {
        let a = argv("sliver-init", 3, 4);
        assert_eq!(a.len(), 3);
        assert_eq!(a[1].to_str().unwrap(), "3");
        assert_eq!(main_from_args(&["x".into()]), 2);
    }
}
