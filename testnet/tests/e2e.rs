//! The end-to-end suite on a real testnet: two federations, daemons as processes, acquisition
//! through the broker across both federations, exec in every sliver, renew, a node killed and
//! restarted mid-slice (its leases survive), a partition healed, delete; nothing left.
//!
//! As root: hosts in network namespaces and real slivers. Without root: loopback and no
//! isolation (the test says so). Everything the testnet made is removed by a drop guard.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testnet::generate::{Manifest, Network, generate};
use testnet::launch;
use testnet::probe;
use testnet::topology::{HostRole, Topology};

const SLICE: &str = "fed0-site0_e2e";

/// Stops the testnet and removes its directory, even when the test fails.
struct Guard {
    manifest: Manifest,
    dir: tempfile::TempDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = launch::stop_all(&self.manifest, self.dir.path()) {
            eprintln!("warning: testnet teardown: {e:#}");
        }
    }
}

fn slicectl(dir: &Path, args: &[&str]) -> (bool, String) {
    slicectl_within(dir, 20, args)
}

fn slicectl_within(dir: &Path, timeout_secs: u64, args: &[&str]) -> (bool, String) {
    let bin: PathBuf = launch::bin_dir().unwrap().join("slicectl");
    let out = Command::new(bin)
        .arg("--config")
        .arg(dir.join("slicectl.toml"))
        .args(["--timeout", &timeout_secs.to_string()])
        .args(args)
        .output()
        .expect("run slicectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn leases_on(manifest: &Manifest, node: &str) -> usize {
    let host = manifest.host(node).unwrap();
    probe::get_json(host, "/leases")
        .map(|v| v.as_array().map_or(0, Vec::len))
        .unwrap_or(0)
}

fn daemons_built() -> bool {
    let dir = launch::bin_dir().unwrap();
    let all = ["nodemgr", "agentd", "broker", "slicectl", "sliver-init"]
        .iter()
        .all(|b| dir.join(b).exists());
    if !all {
        assert!(
            std::env::var_os("CI").is_none(),
            "daemon binaries missing in {}: run `cargo build --workspace --bins`",
            dir.display()
        );
        eprintln!("skipped: daemon binaries not built (cargo build --workspace --bins)");
    }
    all
}

#[test]
fn slice_lifecycle_with_a_crash_and_a_partition() {
    if !daemons_built() {
        return;
    }
    let root = nix::unistd::geteuid().is_root();
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "the end-to-end suite runs as root under CI"
        );
        eprintln!("note: not root: loopback network, no isolation");
    }
    let (network, isolation) = if root {
        (Network::Namespaces, "linux")
    } else {
        (Network::Loopback, "memory")
    };
    let dir = tempfile::tempdir().unwrap();
    let topology = Topology {
        federations: 2,
        nodes: 4,
        agents: 2,
        brokers: 1,
    };
    let manifest = generate(dir.path(), topology, network, isolation).unwrap();
    let guard = Guard {
        manifest: manifest.clone(),
        dir,
    };
    let dir = guard.dir.path().canonicalize().unwrap();
    launch::start_all(&manifest).unwrap();
    probe::wait_converged(&manifest, Duration::from_secs(90), |_, _| {}).unwrap();

    // Acquire across both federations: 4 slivers, one per node.
    let (ok, out) = slicectl(
        &dir,
        &[
            "slice",
            "create",
            "--name",
            SLICE,
            "--slivers",
            "4",
            "--resources",
            "cpu=200m,memory=96MiB,disk=128MiB,egress=2Mbit",
            "--duration",
            "1h",
            "--federation",
            "fed0",
            "--federation",
            "fed1",
        ],
    );
    assert!(ok, "create failed:\n{out}");
    assert!(out.contains("4 of 4"), "{out}");
    let nodes: Vec<String> = manifest
        .of_role(HostRole::Node)
        .map(|h| h.plan.name.clone())
        .collect();
    for node in &nodes {
        assert_eq!(
            leases_on(&manifest, node),
            1,
            "{node} should hold one lease"
        );
    }

    // Exec in every sliver: each answers with its own hostname (the slice's name).
    let (ok, out) = slicectl(&dir, &["slice", "exec", SLICE, "--", "/bin/hostname"]);
    assert!(ok, "exec failed:\n{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains(SLICE)).count(),
        4,
        "{out}"
    );

    // A node killed and restarted mid-slice: its lease survives, its sliver still answers.
    let victim = manifest.host("node1").unwrap();
    assert!(launch::stop_host(victim, Duration::from_secs(5), true).unwrap());
    launch::start_host(&manifest, victim).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while probe::get_json(victim, "/status").is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "node1 did not come back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        leases_on(&manifest, "node1"),
        1,
        "node1 lost its lease in the crash"
    );
    let (ok, out) = slicectl(&dir, &["slice", "exec", SLICE, "--", "/bin/hostname"]);
    assert!(ok, "exec after restart failed:\n{out}");

    // A partition: node2 is cut off; renew reaches the others and says node2 did not answer;
    // after healing, renew reaches all four.
    testnet::netns::partition(&manifest, manifest.host("node2").unwrap(), true).unwrap();
    let (_, out) = slicectl_within(&dir, 5, &["slice", "renew", SLICE, "--for", "50m"]);
    assert!(
        out.lines().filter(|l| l.contains("granted until")).count() >= 3,
        "{out}"
    );
    for host in &manifest.hosts {
        testnet::netns::partition(&manifest, host, false).unwrap();
    }
    let mut renewed = String::new();
    for _ in 0..10 {
        let (ok, out) = slicectl(&dir, &["slice", "renew", SLICE, "--for", "50m"]);
        renewed = out;
        if ok
            && renewed
                .lines()
                .filter(|l| l.contains("granted until"))
                .count()
                == 4
        {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        renewed
            .lines()
            .filter(|l| l.contains("granted until"))
            .count(),
        4,
        "after heal:\n{renewed}"
    );

    // Delete: no lease anywhere.
    let (ok, out) = slicectl(&dir, &["slice", "delete", SLICE]);
    assert!(ok, "delete failed:\n{out}");
    for node in &nodes {
        assert_eq!(leases_on(&manifest, node), 0, "{node} still holds a lease");
    }
    drop(guard);
    if root {
        let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(
            !String::from_utf8_lossy(&netns.stdout).contains(&format!("pmtn-{}", manifest.tag)),
            "namespaces left"
        );
        assert!(
            !Path::new(&format!(
                "/sys/fs/cgroup/memory/planetmesh-tn{}",
                manifest.tag
            ))
            .exists(),
            "cgroups left"
        );
    }
}
