//! Running a sliver's command to its end under a deadline, with no unbounded wait.
//!
//! One thread polls the command's pipes and a pidfd of its process: it feeds standard input
//! without blocking, keeps at most the limit of standard output and error (reading on past it,
//! so the command never blocks on a full pipe), and stops:
//! - when the command has exited and both output pipes are closed;
//! - [`LINGER`] after the command exited while something it left behind (a background job)
//!   still holds an output pipe: what was read is the output, and the job keeps running;
//! - at the deadline: the command's whole process group (the enter helper starts a session,
//!   so every process it forks without leaving it) is killed, and the exec times out.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::Child;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::host::{ExecOutput, HostError};

/// How long output is still read after the command exited while a process it left holds its
/// output pipes.
pub const LINGER: Duration = Duration::from_millis(500);

/// A pidfd for `pid` (readable once the process has exited).
pub fn pidfd_open(pid: u32) -> Result<OwnedFd, Errno> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or(Errno::ESRCH)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|e| Errno::from_raw(e.raw_os_error()))
}

fn nonblocking(fd: &impl AsFd) -> Result<(), HostError> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(sys("F_GETFL"))?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(sys("F_SETFL"))?;
    Ok(())
}

fn sys(op: &'static str) -> impl FnOnce(Errno) -> HostError {
    move |source| HostError::Sys {
        op: op.into(),
        source,
    }
}

/// A bounded capture of one output stream.
#[derive(Debug, Default)]
struct Capture {
    kept: Vec<u8>,
    truncated: bool,
}

impl Capture {
    /// Reads what is there; false once the stream is closed (or failed).
    fn drain(&mut self, pipe: &mut impl Read, limit: usize) -> bool {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    let room = limit.saturating_sub(self.kept.len());
                    self.kept.extend_from_slice(&buf[..n.min(room)]);
                    self.truncated |= n > room;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// Runs `child` to its end: `input` to its stdin, at most `limit` bytes of each output kept,
/// its process group killed at `timeout` (then `thaw` is called with its pid, for a command
/// that cannot die while frozen, and the exec fails with [`HostError::Timeout`]).
pub fn run_to_end(
    child: &mut Child,
    input: &[u8],
    limit: usize,
    timeout: Duration,
    thaw: impl FnOnce(u32),
) -> Result<ExecOutput, HostError> {
    let deadline = Instant::now() + timeout;
    let pid = child.id();
    let exit_fd = pidfd_open(pid).map_err(sys("pidfd_open"))?;
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    for fd in [
        stdin.as_ref().map(|p| p.as_fd()),
        stdout.as_ref().map(|p| p.as_fd()),
        stderr.as_ref().map(|p| p.as_fd()),
    ]
    .into_iter()
    .flatten()
    {
        nonblocking(&fd)?;
    }
    if input.is_empty() {
        stdin = None;
    }
    let (mut out, mut err) = (Capture::default(), Capture::default());
    let mut written = 0usize;
    let mut exited_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let streams_open = stdout.is_some() || stderr.is_some();
        if exited_at.is_some() && !streams_open {
            break;
        }
        if exited_at.is_some_and(|t| now >= t + LINGER) {
            break;
        }
        if now >= deadline {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = child.kill();
            thaw(pid);
            let _ = child.wait();
            return Err(HostError::Timeout(timeout));
        }
        let mut wait = deadline - now;
        if let Some(t) = exited_at {
            wait = wait.min((t + LINGER).saturating_duration_since(now));
        }
        let ms = u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = Vec::with_capacity(4);
        let mut slots = [None; 4];
        if exited_at.is_none() {
            slots[0] = Some(fds.len());
            fds.push(PollFd::new(exit_fd.as_fd(), PollFlags::POLLIN));
        }
        if let Some(p) = &stdout {
            slots[1] = Some(fds.len());
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        if let Some(p) = &stderr {
            slots[2] = Some(fds.len());
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        if let Some(p) = &stdin {
            slots[3] = Some(fds.len());
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLOUT));
        }
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(sys("poll exec")(e)),
        }
        let ready: Vec<bool> = slots
            .iter()
            .map(|slot| {
                slot.and_then(|i| fds[i].revents())
                    .is_some_and(|r| !r.is_empty())
            })
            .collect();
        drop(fds);
        if ready[0] {
            exited_at = Some(Instant::now());
        }
        if ready[1] && !stdout.as_mut().is_some_and(|p| out.drain(p, limit)) {
            stdout = None;
        }
        if ready[2] && !stderr.as_mut().is_some_and(|p| err.drain(p, limit)) {
            stderr = None;
        }
        if ready[3] {
            let done = match stdin.as_mut().map(|p| p.write(&input[written..])) {
                Some(Ok(n)) => {
                    written += n;
                    written >= input.len()
                }
                Some(Err(e)) => e.kind() != io::ErrorKind::WouldBlock,
                None => true,
            };
            if done {
                stdin = None;
            }
        }
    }
    let status = child.wait().map_err(|source| HostError::Io {
        op: "wait",
        path: Default::default(),
        source,
    })?;
    use std::os::unix::process::ExitStatusExt;
    Ok(ExecOutput {
        code: status.code(),
        signal: status.signal(),
        stdout: out.kept,
        stderr: err.kept,
        truncated: out.truncated || err.truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    fn sh(script: &str) -> Child {
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        command.spawn().unwrap()
    }

    fn alive(pid: i32) -> bool {
        nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
    }

    #[test]
    fn output_and_status_come_back() {
        let mut child = sh("read x; echo \"got $x\"; echo oops >&2; exit 3");
        let out = run_to_end(
            &mut child,
            b"hello\n",
            1 << 20,
            Duration::from_secs(10),
            |_| {},
        )
        .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout_text(), "got hello\n");
        assert_eq!(out.stderr_text(), "oops\n");
    }

    #[test]
    fn output_past_the_limit_is_cut_and_drained() {
        let mut child = sh("head -c 300000 /dev/zero");
        let out = run_to_end(&mut child, b"", 1000, Duration::from_secs(10), |_| {}).unwrap();
        assert_eq!(out.code, Some(0));
        assert_eq!(out.stdout.len(), 1000);
        assert!(out.truncated);
    }

    #[test]
    fn a_background_job_holding_stdout_does_not_hold_the_exec() {
        let started = Instant::now();
        let mut child = sh("sleep 30 & echo $!");
        let out = run_to_end(&mut child, b"", 1 << 20, Duration::from_secs(20), |_| {}).unwrap();
        assert_eq!(out.code, Some(0));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let job: i32 = out.stdout_text().trim().parse().unwrap();
        // The job is left running (it is not a timeout); end it here, as its starter.
        assert!(alive(job));
        let _ = nix::sys::signal::kill(Pid::from_raw(job), Signal::SIGKILL);
    }

    /// Gone, or a zombie waiting for its new parent.
    fn dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        }
    }

    #[test]
    fn a_timeout_ends_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("job");
        let mut child = sh(&format!("sleep 30 & echo $! >{}; sleep 30", file.display()));
        let pid = child.id();
        let mut thawed = None;
        let started = Instant::now();
        let err = run_to_end(&mut child, b"", 1 << 20, Duration::from_millis(300), |p| {
            thawed = Some(p)
        })
        .unwrap_err();
        assert!(matches!(err, HostError::Timeout(_)), "{err}");
        assert_eq!(thawed, Some(pid));
        assert!(started.elapsed() < Duration::from_secs(10));
        let job: i32 = std::fs::read_to_string(&file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !dead(job) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !dead(job) {
            let _ = nix::sys::signal::kill(Pid::from_raw(job), Signal::SIGKILL);
            panic!("the background job outlived the timeout");
        }
    }

    #[test]
    fn stdin_the_command_never_reads_does_not_block() {
        let mut child = sh("exec 0<&-; echo done");
        let input = vec![b'x'; 1 << 20];
        let out = run_to_end(&mut child, &input, 1 << 20, Duration::from_secs(10), |_| {}).unwrap();
        assert_eq!(out.stdout_text(), "done\n");
    }
}
