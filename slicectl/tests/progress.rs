//! Progress of `slice create` (issue 17: progress on long work), on real daemons in this
//! process over loopback: with standard error a terminal (a pseudo-terminal this test opens)
//! each ticket and each node's redeem is shown there as it completes, and nothing of it
//! reaches standard output; with standard error not a terminal, or under `--json`, nothing
//! is shown at all.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod testnet;

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

use testnet::{Testnet, within};

/// A pseudo-terminal: (master, slave), 24 by 100.
fn pty() -> (File, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: both out-pointers are valid; no name buffer or termios is passed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty answered two new descriptors that nothing else owns.
    unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// Runs slicectl with `args`; standard error a terminal when `tty`. Answers (exit code,
/// stdout, what reached stderr).
async fn run(args: Vec<String>, tty: bool) -> (i32, String, String) {
    within(tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_slicectl"));
        command
            .args(&args)
            .env_remove("PLANETMESH_STATE")
            .env_remove("PLANETMESH_CONFIG")
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if !tty {
            let out = command.stderr(Stdio::piped()).output().unwrap();
            return (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        let (mut master, slave) = pty();
        let child = command.stderr(Stdio::from(slave)).spawn().unwrap();
        // The command's own stderr is the only slave left open: reading ends (EIO) when it
        // exits.
        drop(command);
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            String::from_utf8_lossy(&seen).into_owned()
        });
        let out = child.wait_with_output().unwrap();
        let seen = reader.join().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            seen,
        )
    }))
    .await
    .unwrap()
}

fn args(cfg: &str, json: bool, rest: &[&str]) -> Vec<String> {
    let mut all = vec!["--config".to_owned(), cfg.to_owned()];
    if json {
        all.push("--json".to_owned());
    }
    all.extend(rest.iter().map(|a| (*a).to_owned()));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_shows_each_ticket_and_redeem_on_a_terminal_only() {
    let net = Testnet::start(2).await;
    let state = tempfile::tempdir().unwrap();
    let cfg = net.cli_config(state.path(), false);
    let cfg = cfg.to_str().unwrap();
    let create = [
        "slice",
        "create",
        "--name",
        "plc-site0_prog",
        "--slivers",
        "4",
    ];
    let delete = ["slice", "delete", "plc-site0_prog"];

    // A terminal: a line per ticket and per redeemed node on stderr, none on stdout.
    let (code, stdout, stderr) = run(args(cfg, false, &create), true).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stderr.matches("ticket for ").count(), 4, "{stderr:?}");
    assert_eq!(
        stderr.matches(": redeemed, lease ").count(),
        4,
        "{stderr:?}"
    );
    for leases in net.all_leases() {
        assert!(stderr.contains(&leases.lease_id), "{stderr:?}");
    }
    assert!(
        !stdout.contains("ticket for ") && !stdout.contains("redeemed"),
        "{stdout}"
    );
    assert!(
        !stdout.contains('\u{1b}'),
        "no terminal codes on stdout: {stdout:?}"
    );
    assert!(
        stdout.starts_with("slice plc-site0_prog: 4 of 4 slivers"),
        "{stdout}"
    );
    let (code, _, stderr) = run(args(cfg, false, &delete), false).await;
    assert_eq!(code, 0, "{stderr}");

    // Not a terminal: nothing on stderr.
    let (code, stdout, stderr) = run(args(cfg, false, &create), false).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stderr, "", "quiet when stderr is not a terminal");
    let (code, _, stderr) = run(args(cfg, false, &delete), false).await;
    assert_eq!(code, 0, "{stderr}");

    // --json on a terminal: no progress, and stdout is one JSON document.
    let (code, stdout, stderr) = run(args(cfg, true, &create), true).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        !stderr.contains("ticket for ") && !stderr.contains("redeemed"),
        "{stderr:?}"
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let (code, _, stderr) = run(args(cfg, false, &delete), false).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(net.all_leases().is_empty());
    net.stop().await;
}
