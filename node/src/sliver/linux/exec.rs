//! Running a command in a sliver, a privileged primitive of [`super::LinuxHost`]: the fork
//! from a thread in the sliver's pid namespace, what crosses into the `sliver-init enter`
//! helper ([`crate::sliver::enter`]), and the order in which it joins the namespaces.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;

use nix::sched::CloneFlags;

use crate::sliver::caps;
use crate::sliver::enter::{self, EnterPlan};
use crate::sliver::host::{ExecCommand, HostError};

/// The namespaces a command joins, in order (`/proc/<pid>/ns/<name>`, flag): user first (it
/// grants the rights for the rest), mount last. The pid namespace is joined apart, by the
/// thread that forks.
pub(super) const NAMESPACES: [(&str, libc::c_int); 6] = [
    ("user", libc::CLONE_NEWUSER),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("mnt", libc::CLONE_NEWNS),
];

/// The environment a command starts from (the command's own entries come after and win).
pub(super) fn base_env(uid: u32) -> [(&'static str, &'static str); 3] {
    [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", if uid == 0 { "/root" } else { "/" }),
        ("TERM", "xterm"),
    ]
}

/// Forks `program` (the sealed helper) as `sliver-init enter` with `plan`: the fork joins the
/// sliver's cgroup by writing to `cgroup_files`, keeps only 0-2 and the plan's namespace
/// descriptors across exec, and is forked from a thread that joined `pidns` (when given).
/// Its standard streams are pipes to the caller, or all three the terminal `tty` (a pty's
/// slave; the plan then makes it the controlling terminal).
pub(super) fn fork_enter(
    program: &Path,
    plan: &EnterPlan,
    pidns: Option<&File>,
    cgroup_files: &[File],
    cmd: &ExecCommand,
    tty: Option<OwnedFd>,
) -> Result<Child, HostError> {
    let mut command = Command::new(program);
    command
        .arg0(enter::ARGV0)
        .args(enter::helper_args(plan, &cmd.argv))
        .env_clear()
        .envs(base_env(cmd.uid))
        .envs(cmd.env.iter().map(|(k, v)| (k, v)));
    match tty {
        Some(tty) => {
            let dup = |fd: &OwnedFd| {
                fd.try_clone().map_err(|e| HostError::Io {
                    op: "duplicate terminal",
                    path: PathBuf::from(&cmd.argv[0]),
                    source: e,
                })
            };
            command
                .stdin(Stdio::from(dup(&tty)?))
                .stdout(Stdio::from(dup(&tty)?))
                .stderr(Stdio::from(tty));
        }
        None => {
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
    }
    let ns_fds: Vec<RawFd> = plan.namespaces.iter().map(|(fd, _)| *fd).collect();
    let cg_fds: Vec<RawFd> = cgroup_files.iter().map(|f| f.as_raw_fd()).collect();
    // Between fork and exec this is still the node's image (in the host's user namespace,
    // beyond any sliver's reach): it joins the sliver's cgroup, and lets nothing but 0-2
    // and the namespaces cross the exec into the helper.
    let pre_exec = move || -> io::Result<()> {
        let fail = || Err(io::Error::from_raw_os_error(caps::errno()));
        for fd in &cg_fds {
            // SAFETY: writing a constant to an fd opened before the fork.
            if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
                return fail();
            }
        }
        // SAFETY: close_range and fcntl take descriptor numbers and flags only.
        unsafe {
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                return fail();
            }
            for fd in &ns_fds {
                if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                    return fail();
                }
            }
        }
        Ok(())
    };
    // SAFETY: the closure makes raw system calls only, on data prepared before the fork.
    unsafe {
        command.pre_exec(pre_exec);
    }
    // The pid namespace for children is per thread: fork from a thread that joined it.
    thread::scope(|s| {
        s.spawn(|| -> Result<std::process::Child, HostError> {
            if let Some(ns) = pidns {
                nix::sched::setns(ns, CloneFlags::CLONE_NEWPID).map_err(|source| {
                    HostError::Sys {
                        op: "join sliver pid namespace".into(),
                        source,
                    }
                })?;
            }
            command.spawn().map_err(|e| HostError::Io {
                op: "spawn",
                path: PathBuf::from(&cmd.argv[0]),
                source: e,
            })
        })
        .join()
        .unwrap_or_else(|_| Err(HostError::Init("spawn thread panicked".into())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_namespace_first_mount_last_and_pid_apart() {
        assert_eq!(NAMESPACES[0], ("user", libc::CLONE_NEWUSER));
        assert_eq!(NAMESPACES[5], ("mnt", libc::CLONE_NEWNS));
        assert!(NAMESPACES.iter().all(|(name, _)| *name != "pid"));
        let mut flags: Vec<_> = NAMESPACES.iter().map(|(_, f)| *f).collect();
        flags.dedup();
        assert_eq!(flags.len(), 6);
    }

    #[test]
    fn root_starts_home_in_root_others_in_slash() {
        assert_eq!(base_env(0)[1], ("HOME", "/root"));
        assert_eq!(base_env(1000)[1], ("HOME", "/"));
        assert_eq!(base_env(0)[0].0, "PATH");
        assert_eq!(base_env(0)[2], ("TERM", "xterm"));
    }
}
