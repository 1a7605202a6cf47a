//! The dashboard in a real browser: a small loopback testnet (2 federations, 4 nodes, 2 agents,
//! memory isolation) runs as real processes, the dashboard is served in-process, and headless
//! Chromium loads the page; the DOM it renders must show every federation, node and agent.
//!
//! Needs `chromium` (Debian package `chromium`) and the daemon binaries (`cargo test
//! --workspace` builds them). Without either, the test is skipped with a reason, unless `CI`
//! is set, in which case it fails. `PLANETMESH_DASHBOARD_SCREENSHOT=/tmp/dash.png` also saves
//! a screenshot.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testnet::generate::{Manifest, Network, generate};
use testnet::topology::{HostRole, Topology};
use testnet::{dashboard, launch, probe};

/// Ends the testnet's daemons whatever happens (the temp dir goes with it).
struct Running {
    manifest: Manifest,
    dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Err(e) = launch::stop_all(&self.manifest, self.dir.path()) {
            eprintln!("stopping the testnet: {e:#}");
        }
    }
}

/// `Some(reason)` when the test cannot run here.
fn missing_prerequisite() -> Option<String> {
    if find_chromium().is_none() {
        return Some("chromium is not installed (apt-get install chromium)".into());
    }
    let bins = launch::bin_dir().ok()?;
    for daemon in ["nodemgr", "agentd"] {
        if !bins.join(daemon).exists() {
            return Some(format!(
                "{} is missing: build the daemons with `cargo build --workspace --bins` (or run `cargo test --workspace`)",
                bins.join(daemon).display()
            ));
        }
    }
    None
}

fn find_chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// Runs headless Chromium on `url` with `extra` arguments; returns its stdout. Killed (by its
/// own handle) if it takes longer than `limit`.
fn chromium(url: &str, profile: &Path, extra: &[&str], limit: Duration) -> String {
    let binary = find_chromium().expect("chromium");
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("waiting for chromium") {
            Some(_) => break,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium took longer than {limit:?}");
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    reader.join().expect("reader")
}

#[test]
fn chromium_shows_every_federation_node_and_agent() {
    if let Some(reason) = missing_prerequisite() {
        if std::env::var_os("CI").is_some() {
            panic!("dashboard test cannot run: {reason}");
        }
        eprintln!("skipped: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let topology = Topology {
        federations: 2,
        nodes: 4,
        agents: 2,
        brokers: 0,
    };
    let manifest = generate(dir.path(), topology, Network::Loopback, "memory").unwrap();
    let running = Running {
        manifest: manifest.clone(),
        dir,
    };
    launch::start_all(&running.manifest).unwrap();
    probe::wait_converged(&running.manifest, Duration::from_secs(90), |_, _| {}).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(dashboard::serve(
        listener,
        running.dir.path().to_path_buf(),
        async move {
            let _ = stop_rx.await;
        },
    ));

    let profile = tempfile::tempdir().unwrap();
    let dom = chromium(
        &url,
        profile.path(),
        &["--virtual-time-budget=8000", "--dump-dom"],
        Duration::from_secs(90),
    );
    if let Some(path) = std::env::var_os("PLANETMESH_DASHBOARD_SCREENSHOT") {
        let shot = format!("--screenshot={}", PathBuf::from(path).display());
        chromium(
            &url,
            profile.path(),
            &[
                "--virtual-time-budget=8000",
                "--window-size=1400,900",
                &shot,
            ],
            Duration::from_secs(90),
        );
    }
    let _ = stop_tx.send(());
    runtime.block_on(server).unwrap().unwrap();

    // The page rendered a state (the script stamps the body with the snapshot's time).
    assert!(
        !dom.contains(r#"data-updated="0""#) && dom.contains("data-updated="),
        "the page never rendered a state:\n{dom}"
    );
    for federation in &running.manifest.federations {
        assert!(
            dom.contains(&format!(r#"data-federation="{}""#, federation.name)),
            "{} is not drawn",
            federation.name
        );
    }
    let nodes: Vec<_> = running.manifest.of_role(HostRole::Node).collect();
    for node in &nodes {
        let name = &node.plan.name;
        assert!(
            dom.contains(&format!(r#"data-node="{name}" data-state="up""#)),
            "{name} is not drawn as up"
        );
        assert!(
            dom.contains(&format!(r#"data-row-node="{name}""#)),
            "{name} has no row"
        );
    }
    // One box per node in the picture (the script's own source holds `data-node="${…}"`).
    assert_eq!(dom.matches(r#"data-node="node"#).count(), nodes.len());
    for agent in running.manifest.of_role(HostRole::Agent) {
        let name = &agent.plan.name;
        assert!(
            dom.contains(&format!(r#"data-agent="{name}" data-state="up""#)),
            "{name} is not drawn as up"
        );
    }
    // Convergence as the agents report it: every delegation known.
    let delegations: usize = nodes.iter().map(|n| n.plan.delegates_to.len()).sum();
    assert!(
        dom.contains(&format!("{delegations}<small> / {delegations}</small>")),
        "the page does not show {delegations} of {delegations} delegations known"
    );
}
