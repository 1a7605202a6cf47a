//! Entering a sliver: the fresh helper process behind every exec and spawn.
//!
//! How a command reaches a sliver:
//! 1. nodemgr ([`super::linux::LinuxHost`]'s `spawn`) opens the sliver's namespaces and cgroup
//!    files and forks from a thread that joined the sliver's pid namespace.
//! 2. The fork, still the node's image but in the host's user namespace (which no sliver can
//!    trace or signal), joins the sliver's cgroup, marks every descriptor but 0–2 and the
//!    namespaces' close-on-exec, and execs the sealed copy of `sliver-init`
//!    ([`super::sealed`]) as `sliver-enter enter <plan> -- <argv>`.
//! 3. This helper is a fresh image that never held the node's key, ledger or descriptors. It
//!    makes itself non-dumpable first: once it joins the sliver's user namespace, the sliver's
//!    root could otherwise trace it until it has become the sliver's user; non-dumpable, it is
//!    traceable only with a capability in the host's user namespace, where its memory was made.
//!    It closes every descriptor but 0–2 and the namespaces', starts its own session (so a
//!    timeout ends the command's whole process group), joins the namespaces (user first, mount
//!    last), changes directory, drops capabilities and becomes the asked user, resolves the
//!    program inside the sliver's root only ([`resolve`]: `openat2` with `RESOLVE_IN_ROOT |
//!    RESOLVE_NO_MAGICLINKS`, so neither `/proc/self/exe`, `/proc/<pid>/fd/N` nor `..` lead
//!    out), installs the sliver's seccomp filter ([`super::seccomp`]) and execs the program by
//!    descriptor.
//!
//! Failures before the program runs go to stderr with a shell's exit codes: 127 when the
//! program is not found, 126 when it cannot be executed, 125 when entering failed.

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, FcntlArg, FdFlag, OFlag, OpenHow, ResolveFlag, fcntl, openat2};
use nix::sched::CloneFlags;
use nix::sys::stat::{SFlag, fstat};
use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};

use super::caps::{self, CapMask};
use super::seccomp::SeccompPlan;

/// The `sliver-init` subcommand that runs this helper.
pub const SUBCOMMAND: &str = "enter";
/// The helper's `argv[0]` (what `ps` on the host shows until it execs the program).
pub const ARGV0: &str = "sliver-enter";

/// What the helper does before it execs the program (built by the node, read from argv).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnterPlan {
    /// The sliver's namespaces as inherited descriptors and their `CLONE_NEW*` flags, in the
    /// order they are joined (user first, mount last). The pid namespace is not among them:
    /// the node forks the helper inside it.
    pub namespaces: Vec<(RawFd, i32)>,
    /// Working directory inside the sliver.
    pub cwd: String,
    /// User id inside the sliver.
    pub uid: u32,
    /// Group id inside the sliver.
    pub gid: u32,
    /// The capabilities the sliver's root keeps.
    pub keep_caps: CapMask,
    /// The highest capability number of the running kernel.
    pub last_cap: u8,
    /// The sliver's seccomp filter, compiled by the helper and installed right before the
    /// program's exec.
    #[serde(default)]
    pub seccomp: SeccompPlan,
    /// Standard input is a terminal (a pty's slave the node allocated, for an SSH session)
    /// that the helper makes its new session's controlling terminal, so job control, `^C`
    /// and window-size changes reach the program.
    #[serde(default)]
    pub controlling_tty: bool,
}

/// Why entering failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{step}: {errno}")]
pub struct EnterError {
    /// What was being done.
    pub step: &'static str,
    /// The errno.
    pub errno: Errno,
}

impl EnterError {
    /// The exit status a shell would give for this failure.
    pub fn exit_code(&self) -> i32 {
        match (self.step, self.errno) {
            ("resolve program", Errno::ENOENT | Errno::ENOTDIR) => 127,
            ("resolve program" | "exec", _) => 126,
            _ => 125,
        }
    }
}

fn at(step: &'static str) -> impl FnOnce(Errno) -> EnterError {
    move |errno| EnterError { step, errno }
}

/// The helper's arguments after `argv[0]`: the subcommand, the plan, `--`, the program's argv.
pub fn helper_args(plan: &EnterPlan, argv: &[String]) -> Vec<String> {
    let mut args = vec![
        SUBCOMMAND.to_owned(),
        serde_json::to_string(plan).unwrap_or_default(),
        "--".to_owned(),
    ];
    args.extend(argv.iter().cloned());
    args
}

/// Entry point of `sliver-init enter <plan> -- <argv...>`; returns only on failure.
pub fn main_from_args(args: &[String]) -> i32 {
    let parsed = match (args.get(1), args.get(2), args.get(3)) {
        (Some(sub), Some(plan), Some(dashes)) if sub == SUBCOMMAND && dashes == "--" => {
            serde_json::from_str::<EnterPlan>(plan).ok()
        }
        _ => None,
    };
    let (Some(plan), Some(argv)) = (parsed, args.get(4..).filter(|a| !a.is_empty())) else {
        eprintln!("usage: sliver-init enter <plan> -- <program> [args...] (run by the node)");
        return 125;
    };
    match enter(&plan, argv) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("{}: {e}", argv[0]);
            e.exit_code()
        }
    }
}

/// Becomes the sliver's process and execs `argv` (see the module docs for the order).
pub fn enter(plan: &EnterPlan, argv: &[String]) -> Result<Infallible, EnterError> {
    nix::sys::prctl::set_dumpable(false).map_err(at("clear dumpable"))?;
    let keep: Vec<RawFd> = plan.namespaces.iter().map(|(fd, _)| *fd).collect();
    close_all_but(&keep).map_err(at("close inherited descriptors"))?;
    nix::unistd::setsid().map_err(at("setsid"))?;
    if plan.controlling_tty {
        // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal a terminal another
        // session holds); fd 0 is the terminal the node passed.
        let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
        Errno::result(rc).map_err(at("set controlling terminal"))?;
    }
    for (fd, flag) in &plan.namespaces {
        // SAFETY: the node passed these descriptors to this process for this use only; each is
        // owned here once and closed after the join.
        let ns = unsafe { OwnedFd::from_raw_fd(*fd) };
        nix::sched::setns(&ns, CloneFlags::from_bits_retain(*flag)).map_err(at("setns"))?;
    }
    nix::unistd::chdir(plan.cwd.as_str()).map_err(at("chdir"))?;
    caps::restrict_raw(plan.keep_caps, plan.last_cap)
        .map_err(|e| EnterError::from_raw("drop capabilities", e))?;
    nix::unistd::setgroups(&[]).map_err(at("setgroups"))?;
    let (uid, gid) = (Uid::from_raw(plan.uid), Gid::from_raw(plan.gid));
    nix::unistd::setresgid(gid, gid, gid).map_err(at("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(at("setresuid"))?;
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(at("open root"))?;
    let filter = plan.seccomp.compile(plan.keep_caps).map_err(|e| {
        eprintln!("seccomp: {e}");
        EnterError::from_raw("compile seccomp filter", libc::EINVAL)
    })?;
    let path_var = std::env::var("PATH").ok();
    let program = resolve(root.as_fd(), &plan.cwd, &argv[0], path_var.as_deref())
        .map_err(at("resolve program"))?;
    drop(root);
    let args = c_strings(argv.iter().map(|a| OsString::from(a.clone())))?;
    let env = c_strings(std::env::vars_os().map(|(k, v)| {
        let mut kv = k;
        kv.push("=");
        kv.push(v);
        kv
    }))?;
    // Last: nothing between the filter and the exec may need what it refuses.
    crate::sliver::seccomp::install_raw(&filter)
        .map_err(|e| EnterError::from_raw("install seccomp filter", e))?;
    exec_fd(&program, &args, &env)
}

impl EnterError {
    fn from_raw(step: &'static str, errno: i32) -> Self {
        EnterError {
            step,
            errno: Errno::from_raw(errno),
        }
    }
}

fn c_strings(items: impl Iterator<Item = OsString>) -> Result<Vec<CString>, EnterError> {
    items
        .map(|s| CString::new(s.into_vec()).map_err(|_| EnterError::from_raw("argv", libc::EINVAL)))
        .collect()
}

/// Execs the program open at `program`. A script opened close-on-exec cannot be run by
/// descriptor (its interpreter opens `/dev/fd/N` after the exec), so that case is tried again
/// with the descriptor left open; it then names the sliver's own file.
fn exec_fd(program: &OwnedFd, args: &[CString], env: &[CString]) -> Result<Infallible, EnterError> {
    let first = nix::unistd::execveat(program, c"", args, env, AtFlags::AT_EMPTY_PATH);
    match first {
        Err(Errno::ENOENT) => {
            fcntl(program, FcntlArg::F_SETFD(FdFlag::empty())).map_err(at("exec"))?;
            nix::unistd::execveat(program, c"", args, env, AtFlags::AT_EMPTY_PATH)
                .map_err(at("exec"))
        }
        other => other.map_err(at("exec")),
    }
}

/// Shields the node's own process at start: not dumpable (no process of a sliver can trace
/// it or read its memory, even one that shares a user namespace with it for a moment), and
/// every descriptor it inherited from whoever started it close-on-exec.
pub fn shield_node_process() -> Result<(), Errno> {
    nix::sys::prctl::set_dumpable(false)?;
    // SAFETY: close_range takes two descriptor numbers and flags; it touches no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Errno::result(rc).map(drop)
}

/// Closes every descriptor from 3 up but those in `keep`.
pub fn close_all_but(keep: &[RawFd]) -> Result<(), Errno> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|fd| u32::try_from(*fd).ok())
        .filter(|fd| *fd > 2)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from = 3u32;
    for fd in keep.iter().copied().chain([u32::MAX]) {
        if fd > from {
            close_range(from, fd - 1)?;
        }
        from = fd.saturating_add(1);
    }
    Ok(())
}

fn close_range(first: u32, last: u32) -> Result<(), Errno> {
    // SAFETY: close_range takes two descriptor numbers and flags; it touches no memory.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    Errno::result(rc).map(drop)
}

/// Opens the program `name` inside the root `root`: a path with a `/` is taken from `root`
/// (relative paths from `cwd`), a bare name is looked up in `path_var`'s directories as
/// `execvp` does. Symbolic links resolve inside `root` (an absolute link is taken from it,
/// `..` stops at it) and magic links (`/proc/self/exe`, `/proc/<pid>/fd/N`) are refused.
/// Returns an `O_PATH` descriptor of a regular file.
pub fn resolve(
    root: BorrowedFd<'_>,
    cwd: &str,
    name: &str,
    path_var: Option<&str>,
) -> Result<OwnedFd, Errno> {
    if name.is_empty() {
        return Err(Errno::ENOENT);
    }
    if name.contains('/') {
        return open_in_root(root, &join(cwd, name));
    }
    let mut denied = false;
    let dirs = path_var.unwrap_or("/usr/local/bin:/usr/bin:/bin");
    for dir in dirs.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        match open_in_root(root, &join(&join(cwd, dir), name)) {
            Ok(fd) => return Ok(fd),
            Err(Errno::EACCES) => denied = true,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {}
            Err(e) => return Err(e),
        }
    }
    Err(if denied { Errno::EACCES } else { Errno::ENOENT })
}

fn join(dir: &str, name: &str) -> String {
    if name.starts_with('/') {
        name.to_owned()
    } else {
        format!("{}/{name}", dir.trim_end_matches('/'))
    }
}

fn open_in_root(root: BorrowedFd<'_>, path: &str) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root, path, how)?;
    let stat = fstat(&fd)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(Errno::EACCES);
    }
    Ok(fd)
}

/// The descriptor numbers open in this process, from `/proc/self/fd`.
pub fn open_descriptors() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut fds: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn root_with_program() -> (tempfile::TempDir, OwnedFd) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("home/u")).unwrap();
        let prog = dir.path().join("bin/prog");
        std::fs::write(&prog, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let fd = nix::fcntl::open(
            dir.path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        (dir, fd)
    }

    fn same_file(a: &OwnedFd, b: &std::path::Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let st = fstat(a).unwrap();
        let meta = std::fs::metadata(b).unwrap();
        st.st_ino == meta.ino() && st.st_dev == meta.dev()
    }

    #[test]
    fn programs_are_found_by_path_and_by_name() {
        let (dir, root) = root_with_program();
        let prog = dir.path().join("bin/prog");
        let fd = resolve(root.as_fd(), "/", "/bin/prog", None).unwrap();
        assert!(same_file(&fd, &prog));
        let fd = resolve(root.as_fd(), "/", "prog", Some("/nowhere:/bin")).unwrap();
        assert!(same_file(&fd, &prog));
        let fd = resolve(root.as_fd(), "/home/u", "../../bin/prog", None).unwrap();
        assert!(same_file(&fd, &prog));
        assert_eq!(
            resolve(root.as_fd(), "/", "missing", Some("/bin")).unwrap_err(),
            Errno::ENOENT
        );
        assert_eq!(
            resolve(root.as_fd(), "/", "/bin", None).unwrap_err(),
            Errno::EACCES,
            "a directory is not a program"
        );
    }

    #[test]
    fn nothing_outside_the_root_can_be_named() {
        let (dir, root) = root_with_program();
        // `..` stops at the root; an absolute symlink is taken from the root.
        let fd = resolve(root.as_fd(), "/", "/../../../../bin/prog", None).unwrap();
        assert!(same_file(&fd, &dir.path().join("bin/prog")));
        symlink("/bin/sh", dir.path().join("bin/host-sh")).unwrap();
        assert_eq!(
            resolve(root.as_fd(), "/", "/bin/host-sh", None).unwrap_err(),
            Errno::ENOENT,
            "an absolute link must resolve inside the root, where /bin/sh is absent"
        );
        // Magic links: with the host's own /proc inside the root, still refused.
        std::fs::create_dir(dir.path().join("proc")).unwrap();
        symlink("/proc/self/exe", dir.path().join("bin/exe")).unwrap();
        assert!(resolve(root.as_fd(), "/", "/bin/exe", None).is_err());
        let host_root = nix::fcntl::open(
            "/",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        assert_eq!(
            resolve(host_root.as_fd(), "/", "/proc/self/exe", None).unwrap_err(),
            Errno::ELOOP
        );
        let open = std::fs::File::open("/proc/self/stat").unwrap();
        let by_fd = format!("/proc/self/fd/{}", open.as_raw_fd());
        assert_eq!(
            resolve(host_root.as_fd(), "/", &by_fd, None).unwrap_err(),
            Errno::ELOOP
        );
    }

    #[test]
    fn plans_travel_in_argv() {
        let plan = EnterPlan {
            namespaces: vec![(5, libc::CLONE_NEWUSER), (6, libc::CLONE_NEWNS)],
            cwd: "/root".into(),
            uid: 0,
            gid: 0,
            keep_caps: CapMask(0b1011),
            last_cap: 40,
            seccomp: SeccompPlan::default(),
            controlling_tty: true,
        };
        let args = helper_args(&plan, &["/bin/true".into(), "x".into()]);
        assert_eq!(args[0], SUBCOMMAND);
        assert_eq!(serde_json::from_str::<EnterPlan>(&args[1]).unwrap(), plan);
        assert_eq!(&args[2..], ["--", "/bin/true", "x"]);
    }

    #[test]
    fn bad_arguments_are_a_usage_error() {
        assert_eq!(main_from_args(&["sliver-enter".into()]), 125);
        assert_eq!(
            main_from_args(&[
                "sliver-enter".into(),
                SUBCOMMAND.into(),
                "{}".into(),
                "--".into(),
                "/bin/true".into()
            ]),
            125
        );
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        let e = |step, errno| EnterError { step, errno }.exit_code();
        assert_eq!(e("resolve program", Errno::ENOENT), 127);
        assert_eq!(e("resolve program", Errno::EACCES), 126);
        assert_eq!(e("exec", Errno::ENOEXEC), 126);
        assert_eq!(e("setns", Errno::EPERM), 125);
    }
}
