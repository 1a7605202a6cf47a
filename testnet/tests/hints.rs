//! The commands `testnet up` prints for a newcomer to run next work exactly as printed: a
//! loopback testnet (no isolation) is brought up by the `testnet` binary, and every line it
//! marks with `  $ ` is run by `sh -c` in order (acquire a slice, look at it, delete it, the
//! testnet's status, take it down); each must exit 0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::path::{Path, PathBuf};
use std::process::Command;

use testnet::launch;

const TESTNET: &str = env!("CARGO_BIN_EXE_testnet");

/// The testnets of this file come up one at a time: each picks free loopback ports for its
/// daemons, and two picking at once can be handed the same one (seen in CI: a node that never
/// listened, so its agent never learned it).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn daemons_built() -> bool {
    let dir = launch::bin_dir().unwrap();
    let all = ["nodemgr", "agentd", "broker", "slicectl"]
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

/// The config directory the commands of the testnet in `dir` use (`XDG_CONFIG_HOME`, beside
/// it in the test's temporary directory): the slicectl contexts `testnet up` writes go there,
/// not to the user's.
fn xdg(dir: &Path) -> PathBuf {
    dir.with_file_name("xdg")
}

/// Takes the testnet down however the test ends.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        if self.0.join("testnet.toml").exists() {
            let _ = Command::new(TESTNET)
                .args(["down", "--dir"])
                .arg(&self.0)
                .env("XDG_CONFIG_HOME", xdg(&self.0))
                .status();
        }
    }
}

fn run(program: &str, args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(program)
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("XDG_CONFIG_HOME", xdg(dir))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_command_testnet_up_prints_works_as_printed() {
    if !daemons_built() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("testnet");
    let _down = Down(dir.clone());
    let (code, stdout, stderr) = run(
        TESTNET,
        &[
            "up",
            "--network",
            "loopback",
            "--isolation",
            "memory",
            "--nodes",
            "4",
            "--agents",
            "2",
        ],
        &dir,
    );
    assert_eq!(code, 0, "testnet up failed:\n{stdout}\n{stderr}");
    // The same state for scripts: every host with its process and its daemon's own status.
    let (code, json, stderr) = run(TESTNET, &["status", "--json"], &dir);
    assert_eq!(code, 0, "testnet status --json failed:\n{stderr}");
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    let hosts = status["hosts"].as_array().unwrap();
    assert!(hosts.len() >= 6, "{status:#}");
    for host in hosts {
        assert!(
            host["pid"].is_u64() && host["status"].is_object() && host["error"].is_null(),
            "every host runs and answers its /status: {host:#}"
        );
    }
    let hints: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("  $ "))
        .collect();
    assert!(
        hints.iter().any(|h| h.contains(" slice create ")),
        "testnet up suggests acquiring a slice:\n{stdout}"
    );
    assert!(
        hints.last().is_some_and(|h| h.contains(" down ")),
        "the last suggestion takes the testnet down:\n{stdout}"
    );
    // The first makes the testnet's slicectl context current; slicectl needs no --config then.
    assert!(
        hints[0].ends_with(" context use testnet"),
        "testnet up suggests its slicectl context first:\n{stdout}"
    );
    assert!(
        hints.iter().all(|h| !h.contains("--config")),
        "with the context current, no --config:\n{stdout}"
    );
    let contexts = xdg(&dir).join("planetmesh/contexts.toml");
    for hint in &hints {
        let out = Command::new("sh")
            .args(["-c", hint])
            .env("XDG_CONFIG_HOME", xdg(&dir))
            .env_remove("PLANETMESH_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the printed hint `{hint}` failed (exit {:?}); fix what `testnet up` prints:\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // `testnet down` (the last hint) removed the context it had added.
    let left = std::fs::read_to_string(&contexts).unwrap();
    assert!(!left.contains("testnet"), "{left}");
}

/// The README's commands for a running testnet (the block after `scripts/demo.sh --keep`),
/// run as printed from a directory laid out like the workspace (`target/debug` holding the
/// binaries, the testnet in `.testnet`); each must exit 0, but `slice exec`, which on this
/// testnet's nodes (no isolation) must answer that nothing ran. `testnet dashboard` serves
/// until interrupted and is left out (`tests/dashboard.rs` runs it).
#[test]
fn every_command_the_readme_prints_for_a_running_testnet_works_as_printed() {
    if !daemons_built() {
        return;
    }
    let _serial = serial();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let block = readme
        .split("leaves the testnet running; then:")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("README.md: the commands after `scripts/demo.sh --keep`");
    let lines: Vec<&str> = block
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("testnet dashboard"))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("slice create")),
        "the README's block: {block}"
    );
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("target")).unwrap();
    std::os::unix::fs::symlink(launch::bin_dir().unwrap(), tmp.path().join("target/debug"))
        .unwrap();
    let dir = tmp.path().join(".testnet");
    let _down = Down(dir.clone());
    let (code, stdout, stderr) = run(
        TESTNET,
        &[
            "up",
            "--network",
            "loopback",
            "--isolation",
            "memory",
            "--nodes",
            "4",
            "--agents",
            "2",
        ],
        &dir,
    );
    assert_eq!(code, 0, "testnet up failed:\n{stdout}\n{stderr}");
    for line in lines {
        let out = Command::new("sh")
            .args(["-c", line])
            .current_dir(tmp.path())
            .env("XDG_CONFIG_HOME", xdg(&dir))
            .env_remove("PLANETMESH_TESTNET")
            .env_remove("PLANETMESH_CONFIG")
            .output()
            .unwrap();
        if line.contains(" slice exec ") {
            // This testnet's nodes have no isolation: nothing runs, and slicectl says so
            // with its own exit code (10, not_run), as the README says.
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(slicectl::exit::ExitClass::NotRun.code()),
                "README.md's `{line}` on nodes without isolation: {stdout}"
            );
            assert!(stdout.contains("nothing ran"), "{stdout}");
            continue;
        }
        assert!(
            out.status.success(),
            "README.md's `{line}` failed (exit {:?}); fix the README or the command:\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `testnet demo` on a loopback testnet (no isolation) says that commands do not run there,
/// and its exec step shows every node answering that nothing ran, instead of pretending.
#[test]
fn the_demo_on_nodes_without_isolation_says_nothing_runs() {
    if !daemons_built() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("testnet");
    let _down = Down(dir.clone());
    let up = [
        "up",
        "--network",
        "loopback",
        "--isolation",
        "memory",
        "--nodes",
        "4",
        "--agents",
        "2",
    ];
    let (code, stdout, stderr) = run(TESTNET, &up, &dir);
    assert_eq!(code, 0, "testnet up failed:\n{stdout}\n{stderr}");
    let (code, stdout, stderr) = run(TESTNET, &["demo"], &dir);
    assert_eq!(code, 0, "testnet demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(testnet::demo::NO_ISOLATION_NOTE),
        "the demo says commands do not run here:\n{stdout}"
    );
    let nothing_ran = stdout
        .lines()
        .filter(|l| l.contains(node::daemon::memory::NOT_RUN_MESSAGE.trim_end()))
        .count();
    assert_eq!(
        nothing_ran, 4,
        "every sliver's node says nothing ran:\n{stdout}"
    );
}

/// A scenario's exec step on nodes without isolation cannot see its command's output: it
/// passes only when slicectl ends with `not_run` and every sliver's node says nothing ran.
#[test]
fn a_scenario_exec_on_nodes_without_isolation_expects_that_nothing_ran() {
    if !daemons_built() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("memory-exec.toml");
    std::fs::write(
        &file,
        r#"description = "exec where nodes have no isolation"
[testnet]
nodes = 2
network = "loopback"
isolation = "memory"

[[step]]
do = "acquire"
slice = "fed0-site0_x"
slivers = 2
resources = "cpu=100m,memory=64MiB"
expect_slivers = 2

[[step]]
do = "exec"
slice = "fed0-site0_x"
command = ["/bin/hostname"]
expect_output = "fed0-site0_x"
expect_slivers = 2

[[step]]
do = "down"
"#,
    )
    .unwrap();
    let dir = tmp.path().join("testnet");
    let _down = Down(dir.clone());
    let (code, stdout, stderr) = run(TESTNET, &["scenario", "run", file.to_str().unwrap()], &dir);
    assert_eq!(code, 0, "the scenario failed:\n{stdout}\n{stderr}");
    assert_eq!(
        stdout.matches("not run (no isolation)").count(),
        2,
        "each sliver's line says nothing ran:\n{stdout}"
    );
}
