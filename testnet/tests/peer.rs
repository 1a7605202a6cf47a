//! Two testbeds made apart, peered as operators peer them (issue 15, item 7), for real: the
//! `sh peering` blocks of docs/DEPLOY.md ("Peering two testbeds") run in order, as written,
//! in a directory of this test's — two loopback testnets `a` and `b`, each with its own
//! authorities and both calling their federations `fed0` and `fed1`, brought up apart
//! (`testnet up`), peered (`testnet peer a b`: `fedctl peer` on each side, the files
//! exchanged, one bootstrap address, nodes reloaded, agents and brokers restarted), a user of
//! `a` acquiring slivers in `b`'s `fed0` (`--federation fed0@KEY`), and `a`'s authority
//! revoking that user (`fedctl revoke --publish` through one of `a`'s nodes). Between the
//! blocks the test checks what each must have brought about: the slivers are on `b`'s `fed0`
//! nodes and nowhere else, a sliver beyond the agreement's `--max-slivers` is refused by
//! `b`'s agent naming the agreement, and after the revocation `b`'s nodes end the user's
//! leases (the time from the hand-over to the last lease gone is printed).
//!
//! Both testnets are taken down and their slicectl contexts removed whatever happens (drop
//! guard); the shell's HOME is the test's directory, so no context of the user's is touched.
//! Loopback and no isolation need no root, so the test runs as any user once the daemons are
//! built.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap fails the run

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testnet::generate::Manifest;
use testnet::launch;
use testnet::probe;
use testnet::topology::HostRole;

fn daemons_built() -> bool {
    let dir = launch::bin_dir().unwrap();
    let all = [
        "nodemgr", "agentd", "broker", "slicectl", "fedctl", "testnet",
    ]
    .iter()
    .all(|b| dir.join(b).exists());
    if !all {
        assert!(
            std::env::var_os("CI").is_none(),
            "binaries missing in {}: run `cargo build --workspace --bins`",
            dir.display()
        );
        eprintln!("skipped: binaries not built (cargo build --workspace --bins)");
    }
    all
}

/// The `sh peering` blocks of the guide, with the line each starts on.
fn peering_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in markdown.lines().enumerate() {
        match &mut current {
            None if line.trim_end() == "```sh peering" => current = Some((n + 1, String::new())),
            None => {}
            Some((_, text)) if !line.starts_with("```") => {
                text.push_str(line);
                text.push('\n');
            }
            Some(_) => out.extend(current.take()),
        }
    }
    out
}

/// Takes down every testnet brought up in `dir` (`a`, `b`) and removes their slicectl
/// contexts, even when the test fails half-way.
struct Testbeds {
    dir: tempfile::TempDir,
}

impl Testbeds {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Testbeds {
    fn drop(&mut self) {
        for name in ["a", "b"] {
            let dir = self.path(name);
            if let Ok(manifest) = Manifest::load(&dir)
                && let Err(e) = launch::stop_all(&manifest, &dir)
            {
                eprintln!("taking {name} down: {e:#}");
            }
        }
    }
}

/// Runs one guide block with `sh -e` in the test's directory; its output, or a panic naming
/// the line and showing what it printed.
fn run_block(beds: &Testbeds, line: usize, text: &str) -> String {
    let bin = launch::bin_dir().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = Instant::now();
    let out = Command::new("sh")
        .arg("-ec")
        .arg(text)
        .current_dir(beds.dir.path())
        .env("PATH", path)
        .env("HOME", beds.dir.path())
        .env_remove("PLANETMESH_TESTNET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "DEPLOY.md line {line}, {:.1} s:\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "DEPLOY.md line {line} failed ({}):\n{text}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

/// Leases of `slice` per node of `manifest`, as (`federation/node`, count).
fn leases_of(manifest: &Manifest, slice: &str) -> Vec<(String, usize)> {
    manifest
        .of_role(HostRole::Node)
        .map(|node| {
            let held = probe::leases(node)
                .unwrap_or_else(|e| panic!("{}: {e:#}", node.plan.name))
                .iter()
                .filter(|l| l.slice == slice)
                .count();
            (format!("{}/{}", node.plan.federation, node.plan.name), held)
        })
        .collect()
}

#[test]
fn two_testbeds_made_apart_peer_serve_each_others_users_and_honour_each_others_revocations() {
    if !daemons_built() {
        return;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let guide = std::fs::read_to_string(workspace.join("docs/DEPLOY.md")).unwrap();
    let blocks = peering_blocks(&guide);
    assert_eq!(
        blocks.len(),
        5,
        "the guide's peering section has five `sh peering` blocks: up, peer, acquire, revoke, down"
    );
    let beds = Testbeds {
        dir: tempfile::tempdir().unwrap(),
    };

    // 1. Two testbeds, made apart: same federation names, other authorities.
    run_block(&beds, blocks[0].0, &blocks[0].1);
    let a = Manifest::load(&beds.path("a")).unwrap();
    let b = Manifest::load(&beds.path("b")).unwrap();
    let names = |m: &Manifest| {
        m.federations
            .iter()
            .map(|f| f.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), names(&b));
    for f in &a.federations {
        assert!(b.federations.iter().all(|g| g.authority != f.authority));
    }

    // 2. Peered.
    let said = run_block(&beds, blocks[1].0, &blocks[1].1);
    assert!(said.contains("peered in"), "{said}");
    for (x, y) in [(&a, &b), (&b, &a)] {
        for own in &x.federations {
            for other in &y.federations {
                let file = x_dir(&beds, x).join("peering").join(format!(
                    "{}-serves-{}@{}.cbor",
                    own.name,
                    other.name,
                    other.authority.short()
                ));
                assert!(file.exists(), "{} missing", file.display());
                let copy = x_dir(&beds, y)
                    .join("peering/received")
                    .join(file.file_name().unwrap());
                assert!(copy.exists(), "{} missing", copy.display());
            }
        }
    }

    // 3. A user of a acquires two slivers in b's fed0, through a's broker.
    run_block(&beds, blocks[2].0, &blocks[2].1);
    let b_fed0: Vec<String> = b
        .of_role(HostRole::Node)
        .filter(|n| n.plan.federation == "fed0")
        .map(|n| format!("fed0/{}", n.plan.name))
        .collect();
    let in_b = leases_of(&b, "fed0-site0_peered");
    for (node, held) in &in_b {
        let want = usize::from(b_fed0.contains(node));
        assert_eq!(*held, want, "b's leases: {in_b:?}");
    }
    let in_a = leases_of(&a, "fed0-site0_peered");
    assert!(
        in_a.iter().all(|(_, held)| *held == 0),
        "a's leases: {in_a:?}"
    );

    // Beyond the agreement (at most two slivers at once per principal of a): refused by b's
    // agent, which names the agreement.
    let key = b
        .federations
        .iter()
        .find(|f| f.name == "fed0")
        .unwrap()
        .authority;
    let more = Command::new(launch::bin_dir().unwrap().join("slicectl"))
        .current_dir(beds.dir.path())
        .env("HOME", beds.dir.path())
        .args(["--json", "--config", "a/slicectl.toml", "slice", "create"])
        .args(["--name", "fed0-site0_beyond", "--slivers", "1"])
        .args([
            "--resources",
            "cpu=100m,memory=64MiB,disk=64MiB,egress=1Mbit",
        ])
        .args(["--duration", "1h", "--federation"])
        .arg(format!("fed0@{key}"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&more.stdout),
        String::from_utf8_lossy(&more.stderr)
    );
    assert!(
        !more.status.success(),
        "a third sliver in b was granted: {said}"
    );
    assert!(
        said.contains("peer"),
        "the refusal names the agreement: {said}"
    );
    assert!(
        leases_of(&b, "fed0-site0_beyond")
            .iter()
            .all(|(_, n)| *n == 0),
        "{said}"
    );

    // 4. a's authority revokes the user; b's nodes end its leases.
    run_block(&beds, blocks[3].0, &blocks[3].1);
    let published = Instant::now();
    let deadline = published + Duration::from_secs(20);
    loop {
        let held: usize = leases_of(&b, "fed0-site0_peered")
            .iter()
            .map(|(_, n)| n)
            .sum();
        if held == 0 {
            eprintln!(
                "revocation published through a's node0: b's nodes ended every lease of the \
                 revoked user {:.3} s after fedctl returned",
                published.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held} leases of a's revoked user still held in b 20 s after the revocation"
        );
        testnet::pause(Duration::from_millis(20));
    }
    // And the user's status says why, naming a's list.
    let status = Command::new(launch::bin_dir().unwrap().join("slicectl"))
        .current_dir(beds.dir.path())
        .env("HOME", beds.dir.path())
        .args([
            "--config",
            "a/slicectl.toml",
            "slice",
            "status",
            "fed0-site0_peered",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(said.contains("principal revoked"), "{said}");

    // 5. Both down, nothing left.
    run_block(&beds, blocks[4].0, &blocks[4].1);
    for (name, m) in [("a", &a), ("b", &b)] {
        assert!(!beds.path(name).exists(), "{name} purged");
        let left = testnet::scenario::leftovers(m);
        assert!(left.is_empty(), "{name} left {left:?}");
    }
}

fn x_dir(beds: &Testbeds, m: &Manifest) -> PathBuf {
    let a = beds.path("a");
    if Manifest::load(&a).map(|x| x.tag == m.tag).unwrap_or(false) {
        a.canonicalize().unwrap()
    } else {
        beds.path("b").canonicalize().unwrap()
    }
}
