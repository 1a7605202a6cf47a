//! The init's clone, a privileged primitive of [`super::LinuxHost`]: the child that shares
//! the node's memory until it execs, the arguments and stack it runs on, and the status it
//! answers with. Code between `clone` and `exec` makes raw system calls only.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::sliver::caps;
use crate::sliver::host::HostError;

/// Stack of the cloned child (it only reads a pipe, changes ids and execs).
const CLONE_STACK: usize = 64 * 1024;

/// What the init holds between spawn and start: the node's ends of the three pipes, and the
/// memory the child runs on until it execs (it shares the node's address space till then).
#[derive(Debug)]
pub struct Pending {
    pub(super) go: OwnedFd,
    pub(super) plan: OwnedFd,
    pub(super) status: OwnedFd,
    pub(super) child: ChildMemory,
    /// The image, id-mapped for this sliver, when the host can id-map it.
    pub(super) layer: Option<OwnedFd>,
}

/// What the cloned child reads before exec: fds, the init's path, argv and envp.
#[derive(Debug)]
struct ChildArgs {
    go_fd: RawFd,
    /// The go pipe's write end (the node's; the child closes its copy).
    go_write_fd: RawFd,

    plan_fd: RawFd,
    status_fd: RawFd,
    /// The sealed copy of the init program ([`super::sealed`]), executed by descriptor.
    image_fd: RawFd,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: [*const libc::c_char; 1],
}

/// The child's arguments and stack, kept alive (and unmoved) until it has exec'd or died.
#[derive(Debug)]
pub(super) struct ChildMemory {
    _args: Box<ChildArgs>,
    _stack: Vec<u8>,
}

// SAFETY: the raw pointers in ChildArgs point into the CStrings it owns (heap memory that does
// not move with the Box); nothing reads them from another thread but the cloned child.
unsafe impl Send for ChildMemory {}

/// The cloned child: waits for the node, becomes root of its user namespace, execs the init.
/// It shares the node's memory until exec, so it makes raw system calls only and writes
/// nothing but its own stack (and, on failure, errno).
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildArgs the node keeps alive until this child has exec'd or died.
    let a = unsafe { &*arg.cast::<ChildArgs>() };
    // Until exec the child holds copies of the node's descriptors (its ledger's lock among
    // them): if the node dies meanwhile (kill -9), the child must die too, not wait forever
    // and keep a restarted node from opening its ledger. So it is killed with its parent, and
    // drops its copy of the go pipe's write end so that a node that died before the signal
    // was armed reads as end of file. (getppid cannot tell: in a new pid namespace it is 0.)
    // SAFETY: prctl and close with integer arguments on this task.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::close(a.go_write_fd);
    }
    let mut byte = [0u8; 1];
    // SAFETY: reading one byte into a local buffer from our pipe.
    if unsafe { libc::read(a.go_fd, byte.as_mut_ptr().cast(), 1) } != 1 {
        return child_fail(a.status_fd, b"error: node went away before start");
    }
    // SAFETY: raw id syscalls with integer arguments (glibc's wrappers would signal threads of
    // the node), fcntl on our fds, execve with NUL-terminated arrays prepared by the node.
    unsafe {
        if libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0 {
            return child_fail(a.status_fd, b"error: setresgid 0");
        }
        if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0 {
            return child_fail(a.status_fd, b"error: setgroups");
        }
        if libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0 {
            return child_fail(a.status_fd, b"error: setresuid 0");
        }
        // Nothing the node holds reaches the init: every descriptor but the two pipes is
        // closed at exec, whoever opened it and however.
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            return child_fail(a.status_fd, b"error: close_range");
        }
        libc::fcntl(a.plan_fd, libc::F_SETFD, 0);
        libc::fcntl(a.status_fd, libc::F_SETFD, 0);
        // The sliver outlives the thread that made it: no parent-death signal after exec.
        libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0);
        libc::syscall(
            libc::SYS_execveat,
            a.image_fd,
            c"".as_ptr(),
            a.argv_ptrs.as_ptr(),
            a.envp_ptrs.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    child_fail(a.status_fd, b"error: exec init")
}

/// Writes a fixed message and an errno to `fd` (async-signal-safe).
fn child_fail(fd: RawFd, msg: &[u8]) -> libc::c_int {
    let err = caps::errno();
    let mut buf = [0u8; 16];
    let mut n = err.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    // SAFETY: fd is the status pipe's write end, msg and buf are valid for their lengths.
    unsafe {
        libc::write(fd, msg.as_ptr().cast(), msg.len());
        libc::write(fd, b" errno ".as_ptr().cast(), 7);
        libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i);
    }
    1
}

pub(super) fn read_status(fd: OwnedFd, timeout: Duration) -> Result<String, HostError> {
    let deadline = Instant::now() + timeout;
    let mut file = File::from(fd);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HostError::Timeout(timeout));
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            file.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(HostError::Sys {
                    op: "poll init status".into(),
                    source: e,
                });
            }
        }
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > 64 * 1024 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(HostError::Io {
                    op: "read init status",
                    path: PathBuf::new(),
                    source: e,
                });
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The init's descriptors, as the child sees them.
#[derive(Debug, Clone, Copy)]
pub(super) struct InitFds {
    /// The go pipe's read end: the child waits on it.
    pub go: RawFd,
    /// The go pipe's write end (the node's; the child closes its copy).
    pub go_write: RawFd,
    /// The plan socket's child end.
    pub plan: RawFd,
    /// The status pipe's write end.
    pub status: RawFd,
    /// The sealed init program.
    pub image: RawFd,
}

/// The namespaces an init is cloned into: new user, mount, uts, ipc and net namespaces, and a
/// new pid namespace unless it shares the host's (`host_pid`). `CLONE_VM` spares copying the
/// node's page tables.
pub(super) fn clone_flags(host_pid: bool) -> libc::c_int {
    let mut flags = libc::CLONE_VM
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET;
    if !host_pid {
        flags |= libc::CLONE_NEWPID;
    }
    flags | libc::SIGCHLD
}

/// Clones the init (see [`clone_flags`]); the child waits on the go pipe, then execs the
/// sealed init with `argv`. Returns its pid and the memory to keep until it has exec'd or died.
pub(super) fn clone_init(
    fds: InitFds,
    argv: Vec<CString>,
    host_pid: bool,
) -> Result<(libc::pid_t, ChildMemory), Errno> {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let args = Box::new(ChildArgs {
        go_fd: fds.go,
        go_write_fd: fds.go_write,
        plan_fd: fds.plan,
        status_fd: fds.status,
        image_fd: fds.image,
        _argv: argv,
        argv_ptrs,
        envp_ptrs: [std::ptr::null()],
    });
    let mut stack = vec![0u8; CLONE_STACK];
    // SAFETY: the stack grows down from its (16-byte aligned) top; `args` and `stack` are
    // kept alive in the returned ChildMemory (kept in Pending) until the child has exec'd or
    // died, and the child only runs `child_main`.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(CLONE_STACK);
        let top = top.sub(top as usize % 16);
        libc::clone(
            child_main,
            top.cast(),
            clone_flags(host_pid),
            std::ptr::from_ref::<ChildArgs>(&args).cast_mut().cast(),
        )
    };
    if pid < 0 {
        return Err(Errno::last());
    }
    Ok((
        pid,
        ChildMemory {
            _args: args,
            _stack: stack,
        },
    ))
}

/// Kills the process behind `pidfd` (the init `pid`, named in errors) and waits until it has
/// exited, at most `timeout` (it is left for its parent to reap). A process already gone is
/// no error.
pub(super) fn kill_and_wait(pidfd: &OwnedFd, pid: u32, timeout: Duration) -> Result<(), HostError> {
    match rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::SRCH => {}
        Err(e) => {
            return Err(HostError::Sys {
                op: format!("kill init {pid}"),
                source: Errno::from_raw(e.raw_os_error()),
            });
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        let mut fds = [nix::poll::PollFd::new(
            pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)) {
            Ok(n) if n > 0 => break,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                return Err(HostError::Sys {
                    op: format!("wait for init {pid}"),
                    source: e,
                });
            }
        }
        if Instant::now() > deadline {
            return Err(HostError::Timeout(timeout));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_init_gets_every_namespace_but_the_host_pid_one_when_asked() {
        let all = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWNET;
        let own = clone_flags(false);
        assert_eq!(own & all, all);
        assert_ne!(own & libc::CLONE_NEWPID, 0);
        assert_ne!(own & libc::CLONE_VM, 0);
        assert_eq!(own & 0xff, libc::SIGCHLD);
        assert_eq!(clone_flags(true), own & !libc::CLONE_NEWPID);
        // Never a shared file table or a thread of the node.
        assert_eq!(own & (libc::CLONE_FILES | libc::CLONE_THREAD), 0);
    }

    #[test]
    fn kill_and_wait_returns_once_the_process_has_exited() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = crate::sliver::output::pidfd_open(child.id()).unwrap();
        let started = Instant::now();
        kill_and_wait(&pidfd, child.id(), Duration::from_secs(10)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Gone (a zombie reaped): killing again is no error.
        kill_and_wait(&pidfd, child.id(), Duration::from_secs(1)).unwrap();
    }
}
