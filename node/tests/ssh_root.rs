//! The node's SSH endpoint with real slivers, driven by the OpenSSH client (root; skipped
//! otherwise unless CI): a command's output and exit status, stdin, the sliver's view (pid
//! namespace, capabilities, seccomp, cgroup) equal to an `Exec`'s, an interactive shell under
//! a pty the test opened (size, window change, `^C`), scp both ways (SFTP and the legacy
//! protocol), local port forwarding to the sliver's own port and nowhere else, and refusals:
//! wrong key, unknown slice, an expired lease, a sliver gone, a flood from one address (while
//! another address still gets in), and the authentication deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use capability_schema::Lease;
use capability_schema::identity::test_key;
use capability_schema::protocol::{NodeRequest, NodeResponse, SshEndpoint};
use common::daemon::{LinuxNode, WAIT, within};
use common::root_or_skip;
use federation::overlay::NodeProtocol;
use federation::{OverlayHandle, unix_now};
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;

/// A user's side: a key pair on disk, a known_hosts pinning the node, and `ssh` arguments.
struct User {
    dir: tempfile::TempDir,
    key: PathBuf,
    public: String,
    endpoint: SshEndpoint,
}

impl User {
    fn new(seed: u8, endpoint: SshEndpoint) -> User {
        let dir = tempfile::Builder::new().prefix("pmssh-").tempdir().unwrap();
        let private = russh::keys::PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]));
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, private.to_openssh(LineEnding::LF).unwrap().as_bytes()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let public = private.public_key().to_openssh().unwrap();
        std::fs::write(
            dir.path().join("known_hosts"),
            format!("[127.0.0.1]:{} {}\n", endpoint.port, endpoint.host_key),
        )
        .unwrap();
        User {
            dir,
            key,
            public,
            endpoint,
        }
    }

    /// Options every client run takes: this key only, the pinned host key only, no
    /// prompts, no user or system configuration.
    fn options(&self) -> Vec<String> {
        let known = self.dir.path().join("known_hosts");
        [
            "-F",
            "/dev/null",
            "-i",
            self.key.to_str().unwrap(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &format!("UserKnownHostsFile={}", known.display()),
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "LogLevel=ERROR",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn ssh(&self, slice: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(self.options())
            .args(["-p", &self.endpoint.port.to_string()])
            .args(extra)
            .arg(format!("{slice}@127.0.0.1"))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `command` in `slice`'s sliver over SSH.
    fn run(&self, slice: &str, command: &str) -> Output {
        run_bounded(self.ssh(slice, &["-T"]).arg(command))
    }
}

/// Runs `cmd` to its end, killed past [`WAIT`].
fn run_bounded(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = std::sync::Arc::clone(&done);
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < WAIT {
                if done.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        })
    };
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::Release);
    watchdog.join().unwrap();
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Kills a child (an `ssh` left running) when dropped.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn exec(node: &LinuxNode, client: &OverlayHandle, lease: &Lease, script: &str) -> String {
    let request = NodeRequest::Exec {
        lease_id: lease.lease_id.clone(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        stdin: vec![],
        timeout_ms: 10_000,
    };
    match within(client.request::<NodeProtocol>(&node.key.public(), request, WAIT))
        .await
        .unwrap()
    {
        NodeResponse::Exec(out) => {
            assert_eq!(out.exit_code, 0, "{out:?}");
            text(&out.stdout)
        }
        other => panic!("{other:?}"),
    }
}

async fn add_key(node: &LinuxNode, client: &OverlayHandle, lease: &Lease, key: &str) {
    let request = NodeRequest::AddKey {
        lease_id: lease.lease_id.clone(),
        key: key.to_owned(),
    };
    match within(client.request::<NodeProtocol>(&node.key.public(), request, WAIT))
        .await
        .unwrap()
    {
        NodeResponse::Keys(keys) => assert!(keys.iter().any(|k| k == key), "{keys:?}"),
        other => panic!("{other:?}"),
    }
}

/// The endpoint as `Status` tells it to the lease holder.
async fn endpoint(node: &LinuxNode, client: &OverlayHandle) -> SshEndpoint {
    match within(client.request::<NodeProtocol>(&node.key.public(), NodeRequest::Status, WAIT))
        .await
        .unwrap()
    {
        NodeResponse::Status(status) => status.ssh.clone().expect("the node tells its endpoint"),
        other => panic!("{other:?}"),
    }
}

/// What a process sees of its sliver: ids, capabilities, seccomp, namespaces, cgroup.
const VIEW: &str = "grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' \
    /proc/self/status; readlink /proc/self/ns/pid /proc/self/ns/net /proc/self/ns/mnt \
    /proc/self/ns/user /proc/self/ns/uts; cat /proc/self/cgroup; hostname";

const SSH_CONFIG: &str =
    "[ssh]\nlisten = \"127.0.0.1:0\"\nmax_per_source = 3\nauth_timeout_secs = 3\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_shells_copies_and_forwards_run_inside_the_sliver() {
    if !root_or_skip() {
        return;
    }
    let node = LinuxNode::start_with("pmsh", SSH_CONFIG).await;
    let alice = test_key(60);
    let client = node.principal(&alice).await;
    let lease = node.redeem(&client, "princeton_ssh", &alice).await;
    let endpoint = endpoint(&node, &client).await;
    assert_eq!(
        Some(&endpoint),
        node.running.state.service.ssh_endpoint().as_ref()
    );
    assert_eq!(endpoint.address.as_deref(), Some("127.0.0.1"));
    assert!(
        endpoint.host_key.starts_with("ssh-ed25519 "),
        "{endpoint:?}"
    );
    let user = User::new(1, endpoint);
    add_key(&node, &client, &lease, &user.public).await;
    let slice = "princeton_ssh";

    // A command: output, stderr, exit status, in the sliver's filesystem.
    let marker = format!("pm-ssh-{}", rand::random::<u32>());
    let out = tokio::task::block_in_place(|| {
        user.run(
            slice,
            &format!("echo out; echo err >&2; echo {marker} > /tmp/mark; exit 7"),
        )
    });
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(
        exec(&node, &client, &lease, "cat /tmp/mark").await.trim(),
        marker
    );
    assert!(
        !Path::new("/tmp/mark").exists()
            || std::fs::read_to_string("/tmp/mark").unwrap().trim() != marker,
        "the command wrote the host's /tmp"
    );

    // Standard input streams through.
    let mut cat = user.ssh(slice, &["-T"]);
    cat.arg("wc -c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = Reap(cat.spawn().unwrap());
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(&vec![b'x'; 100_000]).unwrap();
    drop(stdin);
    let mut counted = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut counted)
        .unwrap();
    assert_eq!(counted.trim(), "100000");

    // The sliver's view over SSH is an exec's.
    let by_exec = exec(&node, &client, &lease, VIEW).await;
    let by_ssh = tokio::task::block_in_place(|| user.run(slice, VIEW));
    assert!(by_ssh.status.success(), "{}", text(&by_ssh.stderr));
    assert_eq!(text(&by_ssh.stdout), by_exec);
    assert!(by_exec.contains("Seccomp:\t2"), "{by_exec}");
    // Its own pid namespace: the shell's pid is small and pid 1 is the sliver's init.
    let pids = tokio::task::block_in_place(|| {
        user.run(
            slice,
            "echo $$; ls /proc | grep -E '^[0-9]+$' | sort -n | head -1",
        )
    });
    let pids = text(&pids.stdout);
    let mut lines = pids.lines();
    let shell: u32 = lines.next().unwrap().parse().unwrap();
    assert!(shell < 1000, "{pids}");
    assert_eq!(lines.next(), Some("1"), "{pids}");

    // What a login costs: key exchange, authentication, a program started in the sliver.
    let logins = tokio::task::block_in_place(|| {
        let start = Instant::now();
        for _ in 0..10 {
            assert!(user.run(slice, "true").status.success());
        }
        start.elapsed() / 10
    });
    eprintln!("ssh login + `true` in the sliver: {logins:?} on average over 10");
    assert!(logins < Duration::from_secs(5), "{logins:?}");

    tokio::task::block_in_place(|| interactive_shell(&user, slice));
    tokio::task::block_in_place(|| copies(&user, slice));
    forwards(&node, &client, &lease, &user, slice).await;
    node.stop().await;
}

/// A pty opened by the test for `ssh -tt`: the shell's terminal is the node's pty, sized as
/// the test's, resized when the test's is, and `^C` interrupts the foreground job.
fn interactive_shell(user: &User, slice: &str) {
    let winsize = nix::pty::Winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&winsize), None).unwrap();
    let (master, slave) = (pty.master, pty.slave);
    let mut ssh = user.ssh(slice, &["-tt"]);
    let (s0, s1, s2) = (
        slave.try_clone().unwrap(),
        slave.try_clone().unwrap(),
        slave.try_clone().unwrap(),
    );
    ssh.stdin(s0).stdout(s1).stderr(s2).env("TERM", "vt220");
    // SAFETY: setsid and the TIOCSCTTY ioctl are async-signal-safe; fd 0 is the slave.
    unsafe {
        ssh.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = Reap(ssh.spawn().unwrap());
    drop(slave);
    let flags = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(
            nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK,
        ),
    )
    .unwrap();
    let mut seen = Vec::new();
    say(
        &master,
        "test -t 0 && echo TTY-$((6*7)); stty size; echo TERM=$TERM\n",
    );
    expect(&master, &mut seen, "TTY-42");
    expect(&master, &mut seen, "30 100");
    expect(&master, &mut seen, "TERM=vt220");
    // The window changes: the client tells the node, the node the sliver's terminal.
    let bigger = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &bigger) };
    assert_eq!(rc, 0);
    std::thread::sleep(Duration::from_millis(500));
    say(&master, "stty size\n");
    expect(&master, &mut seen, "40 120");
    // ^C reaches the foreground job through the sliver's terminal.
    say(&master, "sleep 100; echo SLEPT\n");
    std::thread::sleep(Duration::from_millis(500));
    let interrupted = Instant::now();
    say(&master, "\x03");
    say(&master, "echo AFTER-$((1+1))\n");
    expect(&master, &mut seen, "AFTER-2");
    assert!(interrupted.elapsed() < Duration::from_secs(20));
    assert!(!text(&seen).contains("SLEPT\r\n"), "{}", text(&seen));
    say(&master, "exit 3\n");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < WAIT, "ssh did not end: {}", text(&seen));
        let _ = drain(&master, &mut seen);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(3), "{}", text(&seen));
}

fn say(master: &OwnedFd, line: &str) {
    nix::unistd::write(master, line.as_bytes()).unwrap();
}

fn drain(master: &OwnedFd, seen: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    match nix::unistd::read(master, &mut buf) {
        Ok(0) => false,
        Ok(n) => {
            seen.extend_from_slice(&buf[..n]);
            true
        }
        Err(_) => false,
    }
}

/// Reads the test's pty until `pattern` shows (bounded by [`WAIT`]).
fn expect(master: &OwnedFd, seen: &mut Vec<u8>, pattern: &str) {
    let start = Instant::now();
    while !text(seen).contains(pattern) {
        assert!(
            start.elapsed() < WAIT,
            "{pattern:?} never came: {:?}",
            text(seen)
        );
        if !drain(master, seen) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // What matched is consumed, so a later pattern is not met by old output.
    let at = text(seen).find(pattern).unwrap() + pattern.len();
    let rest = text(seen).as_bytes()[at..].to_vec();
    *seen = rest;
}

/// scp into the sliver and back, with the SFTP protocol (the sliver's sftp-server) and the
/// legacy one (`scp -t` in the sliver).
fn copies(user: &User, slice: &str) {
    let local = user.dir.path().join("payload");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &payload).unwrap();
    let remote = format!("/tmp/pm-scp-{}", rand::random::<u32>());
    for (mode, flag) in [("sftp", None), ("legacy", Some("-O"))] {
        let scp = |from: &str, to: &str| {
            let mut cmd = Command::new("scp");
            cmd.args(user.options())
                .args(["-P", &user.endpoint.port.to_string()])
                .args(flag)
                .args([from, to])
                .stdin(Stdio::null());
            run_bounded(&mut cmd)
        };
        let there = format!("{slice}@127.0.0.1:{remote}-{mode}");
        let up = scp(local.to_str().unwrap(), &there);
        assert!(up.status.success(), "{mode} up: {}", text(&up.stderr));
        assert!(
            !Path::new(&format!("{remote}-{mode}")).exists(),
            "{mode}: the copy landed on the host"
        );
        let sum = user.run(slice, &format!("wc -c < {remote}-{mode}"));
        assert_eq!(text(&sum.stdout).trim(), "200000", "{mode}");
        let back = user.dir.path().join(format!("back-{mode}"));
        let down = scp(&there, back.to_str().unwrap());
        assert!(down.status.success(), "{mode} down: {}", text(&down.stderr));
        assert_eq!(std::fs::read(&back).unwrap(), payload, "{mode}");
    }
}

/// `ssh -L` to a port the sliver listens on (on its own loopback, unreachable from the
/// host), and a refused forward to an address that is not the sliver.
async fn forwards(
    node: &LinuxNode,
    client: &OverlayHandle,
    lease: &Lease,
    user: &User,
    slice: &str,
) {
    let server = "perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalAddr => \
        \"127.0.0.1:7070\", Listen => 5, ReuseAddr => 1) or die; alarm 60; \
        while ($c = $s->accept) { $l = <$c>; print $c \"sliver says $l\"; close $c }'";
    let spawn = NodeRequest::Spawn {
        lease_id: lease.lease_id.clone(),
        argv: vec!["/bin/sh".into(), "-c".into(), server.into()],
    };
    match within(client.request::<NodeProtocol>(&node.key.public(), spawn, WAIT))
        .await
        .unwrap()
    {
        NodeResponse::Spawned { .. } => {}
        other => panic!("{other:?}"),
    }
    let local = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = local.local_addr().unwrap().port();
    drop(local);
    let bad_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _ssh = Reap(
        user.ssh(
            slice,
            &[
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                &format!("{port}:localhost:7070"),
                "-L",
                &format!("{bad_port}:192.0.2.1:80"),
            ],
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let answer = tokio::task::block_in_place(|| {
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < WAIT, "the forward never answered");
            std::thread::sleep(Duration::from_millis(200));
            let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
                continue;
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            if stream.write_all(b"hello\n").is_err() {
                continue;
            }
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if !answer.is_empty() {
                break answer;
            }
        }
    });
    assert_eq!(answer, "sliver says hello\n");
    // The other forward names an address outside the sliver: the node refuses the channel.
    let refused = tokio::task::block_in_place(|| {
        let bad: SocketAddr = format!("127.0.0.1:{bad_port}").parse().unwrap();
        let mut stream = TcpStream::connect_timeout(&bad, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        answer
    });
    assert!(refused.is_empty(), "{}", text(&refused));
}

fn refused(out: &Output) {
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("Permission denied (publickey)"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_strangers_ended_leases_and_floods_get_a_clear_refusal() {
    if !root_or_skip() {
        return;
    }
    let node = LinuxNode::start_with("pmsr", SSH_CONFIG).await;
    let alice = test_key(61);
    let client = node.principal(&alice).await;
    let lease = node.redeem(&client, "princeton_door", &alice).await;
    let endpoint = endpoint(&node, &client).await;
    let user = User::new(2, endpoint.clone());
    add_key(&node, &client, &lease, &user.public).await;
    let stranger = User::new(3, endpoint.clone());
    // Sanity: the right key gets in.
    let ok = tokio::task::block_in_place(|| user.run("princeton_door", "echo in"));
    assert_eq!(text(&ok.stdout), "in\n", "{}", text(&ok.stderr));

    // A key the sliver does not list; a slice with no lease here.
    tokio::task::block_in_place(|| {
        refused(&stranger.run("princeton_door", "echo in"));
        refused(&user.run("princeton_nobody", "echo in"));
    });

    // A lease that ended.
    let short = {
        let ticket = node.ticket("princeton_brief", &alice);
        let redeem = NodeRequest::Redeem {
            ticket,
            until: Some(unix_now() + 3),
        };
        match within(client.request::<NodeProtocol>(&node.key.public(), redeem, WAIT))
            .await
            .unwrap()
        {
            NodeResponse::Lease(lease) => lease.verify_by(&node.key.public()).unwrap(),
            other => panic!("{other:?}"),
        }
    };
    add_key(&node, &client, &short, &user.public).await;
    let brief = tokio::task::block_in_place(|| user.run("princeton_brief", "echo in"));
    assert_eq!(text(&brief.stdout), "in\n", "{}", text(&brief.stderr));
    // A session open when the lease ends ends with it (the reaper destroys the sliver).
    let mut open = Reap(
        user.ssh("princeton_brief", &["-T"])
            .arg("sleep 120")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::block_in_place(|| refused(&user.run("princeton_brief", "echo in")));
    let ended = tokio::task::block_in_place(|| {
        let start = Instant::now();
        loop {
            if let Some(status) = open.0.try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed() < WAIT, "the session outlived its lease");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(!ended.success(), "{ended:?}");

    // A lease whose sliver is gone from this node.
    let gone = node.redeem(&client, "princeton_gone", &alice).await;
    add_key(&node, &client, &gone, &user.public).await;
    let service = std::sync::Arc::clone(&node.running.state.service);
    let sliver = node::daemon::service::sliver_id_for("princeton_gone");
    tokio::task::spawn_blocking(move || service.backend().destroy(&sliver))
        .await
        .unwrap()
        .unwrap();
    tokio::task::block_in_place(|| refused(&user.run("princeton_gone", "echo in")));

    // A flood from one address: it holds its three places, the fourth connection is closed
    // before any SSH is spoken, and another address still gets in at once.
    let addr: SocketAddr = format!("127.0.0.1:{}", endpoint.port).parse().unwrap();
    let flood: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Each admitted one hears the server's identification.
    for stream in &flood {
        let mut stream = stream.try_clone().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 8];
        stream.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"SSH-2.0-");
    }
    tokio::task::block_in_place(|| {
        let mut extra = TcpStream::connect(addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = Vec::new();
        let closed_at = Instant::now();
        let _ = extra.read_to_end(&mut buf);
        assert!(buf.is_empty(), "{}", text(&buf));
        assert!(closed_at.elapsed() < Duration::from_secs(5));
        // Another address (the same machine's 127.0.0.2) is not slowed by the flood.
        let elsewhere = Instant::now();
        let from_elsewhere = run_bounded(
            user.ssh("princeton_door", &["-T", "-b", "127.0.0.2"])
                .arg("echo from elsewhere"),
        );
        assert_eq!(
            text(&from_elsewhere.stdout),
            "from elsewhere\n",
            "{}",
            text(&from_elsewhere.stderr)
        );
        assert!(elsewhere.elapsed() < Duration::from_secs(10));
    });
    // The flood never authenticated: the deadline closes it (auth_timeout_secs = 3).
    tokio::task::block_in_place(|| {
        for mut stream in flood {
            stream
                .set_read_timeout(Some(Duration::from_secs(15)))
                .unwrap();
            let start = Instant::now();
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
            assert!(start.elapsed() < Duration::from_secs(15));
        }
    });
    node.stop().await;
}
