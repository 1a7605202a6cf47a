//! The hostile-tenant suite (root; skipped otherwise unless CI): each test runs an attack from
//! inside a real sliver and fails if it succeeds. See docs/SECURITY.md for the threat model.
//!
//! - host programs and node descriptors named as the program (`/proc/self/exe`,
//!   `/proc/<pid>/fd/N`, `/proc/1/exe`);
//! - descriptors the node holds or inherited, seen from the sliver's init and its commands;
//! - an admin sliver with `CAP_SYS_PTRACE` reading the memory of whatever the node runs to
//!   enter it;
//! - an exec whose background job holds its output, and one that outlives its timeout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::{Fixture, id, spec};
use node::sliver::{ExecCommand, ExecOutput, SliverKind};

fn run(f: &Fixture, sliver: &str, argv: &[&str]) -> ExecOutput {
    f.engine
        .exec(&id(sliver), &ExecCommand::new(argv.iter().copied()))
        .expect("exec")
}

fn sh(f: &Fixture, sliver: &str, script: &str) -> ExecOutput {
    f.engine
        .exec(&id(sliver), &ExecCommand::shell(script))
        .expect("exec")
}

/// Opens `path` without close-on-exec, as a careless starter or library would.
fn leaky_open(path: &std::path::Path, flags: nix::fcntl::OFlag) -> OwnedFd {
    nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()).expect("open")
}

#[test]
fn magic_links_never_run_a_host_program() {
    let Some(f) = Fixture::new() else { return };
    f.engine.create(spec("magic")).expect("create");
    let held = leaky_open(
        &std::env::current_exe().unwrap(),
        nix::fcntl::OFlag::O_RDONLY,
    );
    let by_fd = format!("/proc/self/fd/{}", held.as_raw_fd());
    for program in [
        "/proc/self/exe",
        "/proc/1/exe",
        by_fd.as_str(),
        "/proc/self/fd/0",
        "/proc/self/cwd/bin/sh",
        "/proc/1/root/bin/sh",
    ] {
        let out = run(&f, "magic", &[program, "--version"]);
        assert!(
            !out.success(),
            "{program} ran: {}{}",
            out.stdout_text(),
            out.stderr_text()
        );
        assert!(
            matches!(out.code, Some(126 | 127)),
            "{program}: {out:?} (expected a refusal by the enter helper)"
        );
        assert!(
            !out.stdout_text().contains("nodemgr") && !out.stdout_text().contains("escape_root"),
            "{program} printed {}",
            out.stdout_text()
        );
    }
    // Followed by the kernel from a program of the sliver's, /proc/1/exe is the sealed copy
    // of the init, and a command's own exe is the sliver's file.
    let out = sh(&f, "magic", "readlink /proc/1/exe; readlink /proc/$$/exe");
    assert!(out.success(), "{out:?}");
    let text = out.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("/memfd:"),
        "init's exe is {}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("/usr/bin/") || lines[1].starts_with("/bin/"),
        "the shell's exe is {}",
        lines[1]
    );
    // The sealed copy cannot be written, even by root of the sliver.
    let out = sh(&f, "magic", "echo x >> /proc/1/exe");
    assert!(!out.success(), "the init's image took a write");
}

/// Descriptor targets of `pid` in the sliver (`self`: the listing program's own), as
/// `fd -> target` lines; the listing runs as the sliver's program, not through a shell.
fn fd_targets(f: &Fixture, sliver: &str, pid: &str) -> Vec<String> {
    let list = || run(f, sliver, &["/bin/ls", "-l", &format!("/proc/{pid}/fd")]);
    let mut out = list();
    // Just after ready, the init still holds the capabilities it needs to detach the host's
    // old root; until it drops them (moments later), the kernel lets no one with fewer
    // (the sliver's root) read its descriptors (`cap_ptrace_access_check`). Wait for that,
    // within 5 s, rather than read nothing.
    for _ in 0..50 {
        if !out.stderr_text().contains("Permission denied") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        out = list();
    }
    // A descriptor may close between the listing and its readlink (ls then exits 1 and says
    // so); anything else is a failure.
    let vanished = out
        .stderr_text()
        .lines()
        .all(|l| l.contains("No such file or directory"));
    assert!(
        out.success() || (out.code == Some(1) && vanished),
        "{out:?}"
    );
    out.stdout_text()
        .lines()
        .filter_map(|l| {
            l.find(" -> ")
                .map(|i| l[..i].rsplit(' ').next().unwrap_or("").to_owned() + &l[i..])
        })
        .collect()
}

#[test]
fn descriptors_of_the_node_never_reach_a_sliver() {
    let Some(f) = Fixture::new() else { return };
    // A host file and a host directory the node holds without close-on-exec, open before
    // the sliver exists and while commands run in it.
    let secret = f.state.path().join("host-secret");
    std::fs::write(&secret, "the node's secret").unwrap();
    let _file = leaky_open(&secret, nix::fcntl::OFlag::O_RDWR);
    let _dir = leaky_open(
        f.state.path(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
    );
    f.engine.create(spec("fds")).expect("create");
    let state = f.state.path().display().to_string();
    for (who, pid) in [("init", "1"), ("a command", "self")] {
        let targets = fd_targets(&f, "fds", pid);
        for line in &targets {
            assert!(
                !line.contains(&state),
                "{who} of the sliver holds a node descriptor: {line} (all: {targets:?})"
            );
        }
        let extra: Vec<&String> = targets
            .iter()
            .filter(|l| !["0 ", "1 ", "2 "].iter().any(|p| l.starts_with(p)))
            // The listing's own directory.
            .filter(|l| !l.ends_with("/fd"))
            .collect();
        assert!(
            extra.is_empty(),
            "{who} holds descriptors beyond stdio: {extra:?}"
        );
    }
    // Writing through any descriptor number of the init fails.
    let out = sh(
        &f,
        "fds",
        "for n in $(seq 3 64); do (echo pwned > /proc/1/fd/$n) 2>/dev/null && echo wrote $n; done; true",
    );
    assert!(
        !out.stdout_text().contains("wrote"),
        "{}",
        out.stdout_text()
    );
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "the node's secret"
    );
}

/// For 4 s, tries to read the memory of every process entering the sliver (the next pids of
/// its namespace) while it is not yet the sliver's own (owned by an unmapped host uid, shown
/// as the overflow uid, or still the node's enter helper); prints `READ <pid> ...` on success.
const MEMORY_SCAN: &str = r#"
import os, time
me = os.getpid()

def looks(p):
    """The process's first argument and uid, or None when it is gone."""
    try:
        status = open(f'/proc/{p}/status').read()
        cmd = open(f'/proc/{p}/cmdline', 'rb').read().split(b'\0')[0].decode(errors='replace')
    except OSError:
        return None
    uid = [l.split()[1] for l in status.splitlines() if l.startswith('Uid:')]
    return cmd, (uid[0] if uid else '')

def foreign(seen):
    return seen is not None and (seen[1] == '65534' or 'sliver-enter' in seen[0])

import ctypes
libc = ctypes.CDLL(None, use_errno=True)

class Iovec(ctypes.Structure):
    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]

buf = ctypes.create_string_buffer(16)

def attack(p):
    """Reads the process's memory as a tracer does (process_vm_readv: the ptrace access
    check, no file permission in the way); reports it when the process was foreign."""
    try:
        maps = open(f'/proc/{p}/maps').read().splitlines()
        start = int(maps[0].split('-')[0], 16)
    except (OSError, ValueError, IndexError):
        start = 0x400000
    local = Iovec(ctypes.cast(buf, ctypes.c_void_p), 16)
    remote = Iovec(start, 16)
    before = looks(p)
    n = libc.process_vm_readv(int(p), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    after = looks(p)
    if n > 0 and foreign(before) and foreign(after):
        print('READ', p, after, flush=True)

# Each command entering the sliver takes the next pid of its namespace: spin on it.
end = time.time() + 4
while time.time() < end:
    last = int(open('/proc/sys/kernel/ns_last_pid').read())
    for p in (last, last + 1):
        if p != me:
            attack(p)
print('scanned', flush=True)
"#;

#[test]
fn an_admin_with_ptrace_cannot_read_what_the_node_runs_to_enter_it() {
    let Some(f) = Fixture::new() else { return };
    let mut s = spec("tracer");
    s.kind = SliverKind::Admin;
    s.capabilities = vec!["CAP_SYS_PTRACE".into()];
    f.engine.create(s).expect("create");
    let scan = std::thread::scope(|scope| {
        let scanner = scope.spawn(|| {
            let mut cmd = ExecCommand::new(["/usr/bin/python3", "-c", MEMORY_SCAN]);
            cmd.timeout = Duration::from_secs(30);
            f.engine.exec(&id("tracer"), &cmd).expect("scan")
        });
        // Commands entering the sliver while it scans.
        let deadline = Instant::now() + Duration::from_secs(4);
        let mut entered = 0;
        while Instant::now() < deadline && entered < 400 {
            assert!(run(&f, "tracer", &["/bin/true"]).success());
            entered += 1;
        }
        assert!(entered > 10, "only {entered} commands entered the sliver");
        scanner.join().expect("scanner")
    });
    assert!(scan.success(), "{scan:?}");
    let text = scan.stdout_text();
    assert!(text.contains("scanned"), "{text}");
    assert!(
        !text.contains("READ"),
        "the sliver read memory it must not: {text}"
    );
}

fn sleepers(f: &Fixture, sliver: &str) -> usize {
    let out = sh(
        f,
        sliver,
        "n=0; for c in /proc/[0-9]*/comm; do [ \"$(cat $c 2>/dev/null)\" = sleep ] && n=$((n+1)); done; echo $n",
    );
    out.stdout_text().trim().parse().expect("count")
}

#[test]
fn a_timeout_ends_the_whole_command_and_a_background_job_never_holds_the_exec() {
    let Some(f) = Fixture::new() else { return };
    f.engine.create(spec("timeout")).expect("create");
    // A job left in the background holding stdout: the exec answers when its shell ends.
    let started = Instant::now();
    let mut cmd = ExecCommand::shell("sleep 60 & echo started");
    cmd.timeout = Duration::from_secs(30);
    let out = f.engine.exec(&id("timeout"), &cmd).expect("exec");
    assert_eq!(out.stdout_text(), "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sleepers(&f, "timeout"), 1);
    // Past its timeout, the command and every process of its group end.
    let started = Instant::now();
    let mut cmd = ExecCommand::shell("sleep 60 & sleep 61 & sleep 62");
    cmd.timeout = Duration::from_secs(2);
    let err = f.engine.exec(&id("timeout"), &cmd).unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout took {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while sleepers(&f, "timeout") > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        sleepers(&f, "timeout"),
        1,
        "the timed-out command's jobs live on"
    );
}
