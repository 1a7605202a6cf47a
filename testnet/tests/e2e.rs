//! The end-to-end suite on real testnets: every scenario file of `testnet/scenarios/`, each on
//! its own testnet of two federations with the daemons as processes —
//!
//! - `two-federations.toml`: acquisition through the broker across both federations, status
//!   with what each node measured, exec in every sliver (its own hostname and pid namespace,
//!   and a failing command), spawn and its log, SSH keys added, listed and removed, renew,
//!   delete; then through the agents directly;
//! - `node-restart.toml`: a node killed and restarted mid-slice keeps its lease and sliver;
//! - `partition-heal.toml`: renew during a partition reaches the others, all after healing;
//! - `all-or-nothing-node-down.toml`: a node dying during an all-or-nothing create, with no
//!   node left to replace it, leaves no lease anywhere; a best-effort create keeps the rest and
//!   `sync` completes it once the node is back, when the all-or-nothing slice can be had whole;
//! - `node-killed.toml`: a dead node leaves every plan within seconds (the time is printed) and is
//!   planned again once restarted; a node killed as a create starts is replaced within the
//!   create, which completes all-or-nothing;
//! - `egress.toml`: every sliver reaches the internet host over HTTP and UDP, which sees the
//!   sliver's node's address (namespaces and real slivers: root only, skipped otherwise);
//! - `slice-network.toml`: a sliver in fed0 serves HTTP and UDP on its leased port, and a
//!   sliver in fed1 reaches it through its node's public address (root only, as egress);
//!
//! - `revoke-principal.toml`: a revoked principal's leases end at every node within a second of
//!   `fedctl revoke --publish` (the time is printed), its exec and acquire are refused;
//! - `revoke-node-agent.toml`: a revoked node leaves the agents' inventories and is planned no
//!   more; a revoked agent's leases end everywhere and nodes refuse its tickets;
//!
//! - `broker-killed.toml`: with two brokers, one killed mid-acquisition and the other
//!   mid-slice: every create completes through the broker still up;
//! - `agent-killed.toml`: an agent killed mid-acquisition: slices are still had through the
//!   other agent of those nodes, and a node that delegated only to the dead agent is not
//!   planned;
//! - `bootstrap-killed.toml`: the bootstrap peer killed mid-acquisition: the running daemons
//!   keep working, and a node started afresh joins through the other bootstrap peer;
//!
//! each ending with `down`: nothing of the testnet is left (processes, namespaces, links,
//! cgroups). As root: hosts in network namespaces and real slivers. Without root: loopback and
//! no isolation (the test says so). The runner takes every testnet down even when a step fails
//! or the test panics (drop guard), and its error names the step, the line, why, and the logs.
//!
//! The scenarios run one at a time: namespaced testnets share the 10.250.0.0/16 address plan.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use testnet::launch;
use testnet::scenario::{self, RunOptions};

/// The scenario files this suite runs; `every_scenario_file_is_in_the_suite` keeps it
/// complete.
const SUITE: [&str; 12] = [
    "two-federations.toml",
    "node-restart.toml",
    "partition-heal.toml",
    "all-or-nothing-node-down.toml",
    "node-killed.toml",
    "egress.toml",
    "slice-network.toml",
    "revoke-principal.toml",
    "revoke-node-agent.toml",
    "broker-killed.toml",
    "agent-killed.toml",
    "bootstrap-killed.toml",
];

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
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

/// Runs one scenario file on a fresh testnet in a temporary directory.
fn run(file: &str) {
    if !daemons_built() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the end-to-end suite runs as root under CI"
        );
        eprintln!("note: not root: loopback network, no isolation");
    }
    let path = scenarios_dir().join(file);
    let scenario = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let _serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        dir: dir.path().join("testnet"),
        keep: false,
    };
    match scenario::run(&scenario, &options) {
        Ok(report) => {
            assert_eq!(report.steps.len(), scenario.steps.len());
            assert!(
                !options.dir.exists(),
                "the runner removes the testnet it brought up"
            );
        }
        Err(e) => panic!("{e:#}"),
    }
}

#[test]
fn two_federations_acquire_exec_renew_delete() {
    run("two-federations.toml");
}

#[test]
fn a_revoked_principal_loses_its_leases_at_every_node_at_once() {
    run("revoke-principal.toml");
}

#[test]
fn a_revoked_node_is_planned_no_more_and_a_revoked_agents_tickets_are_refused() {
    run("revoke-node-agent.toml");
}

#[test]
fn node_killed_and_restarted_mid_slice_keeps_its_lease() {
    run("node-restart.toml");
}

#[test]
fn partition_then_heal() {
    run("partition-heal.toml");
}

#[test]
fn node_down_during_all_or_nothing_create_leaves_no_lease() {
    run("all-or-nothing-node-down.toml");
}

#[test]
fn a_dead_node_leaves_the_plans_and_a_node_killed_mid_create_is_replaced() {
    run("node-killed.toml");
}

#[test]
fn a_broker_killed_mid_acquisition_or_mid_slice_leaves_the_other_to_serve() {
    run("broker-killed.toml");
}

#[test]
fn an_agent_killed_leaves_its_nodes_to_the_other_agent_and_unplanned_otherwise() {
    run("agent-killed.toml");
}

#[test]
fn the_bootstrap_peer_killed_leaves_running_and_new_daemons_working() {
    run("bootstrap-killed.toml");
}

/// Egress needs what only root has: namespaces (for the internet host) and real slivers.
#[test]
fn slivers_reach_the_internet_host_from_their_nodes_address() {
    if !nix::unistd::geteuid().is_root() && std::env::var_os("CI").is_none() {
        eprintln!("skipped: egress needs root (namespaces and real slivers)");
        return;
    }
    run("egress.toml");
}

/// Leased ports need what egress needs: namespaces and real slivers.
#[test]
fn a_sliver_serves_on_its_leased_port_to_another_federations_sliver() {
    if !nix::unistd::geteuid().is_root() && std::env::var_os("CI").is_none() {
        eprintln!("skipped: leased ports need root (namespaces and real slivers)");
        return;
    }
    run("slice-network.toml");
}

/// A step that fails: the error names the step, its line and why, points at the logs; the
/// testnet is taken down (nothing left) and its directory kept for the logs.
#[test]
fn a_failing_step_is_reported_and_the_testnet_taken_down() {
    if !daemons_built() {
        return;
    }
    let text = r#"
description = "fails on purpose at step 2"
[testnet]
federations = 1
nodes = 1
agents = 1
brokers = 0

[[step]]
do = "expect_leases"
total = 0

[[step]]
do = "expect_leases"
title = "a lease nobody acquired"
total = 1

[[step]]
do = "down"
"#;
    let scenario = scenario::parse(text, "inline").unwrap();
    let _serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        dir: dir.path().join("testnet"),
        keep: false,
    };
    let error = format!("{:#}", scenario::run(&scenario, &options).unwrap_err());
    for part in [
        "step 2 of 3 (line 13 of inline: a lease nobody acquired",
        "0 in all, expected 1",
        "logs: ",
        "taken down; its directory",
    ] {
        assert!(error.contains(part), "{part:?} missing from:\n{error}");
    }
    let manifest = testnet::generate::Manifest::load(&options.dir).unwrap();
    assert!(manifest.hosts[0].log_file().exists(), "logs kept");
    let left = scenario::leftovers(&manifest);
    assert!(left.is_empty(), "left after a failed run: {left:?}");
}

#[test]
fn every_scenario_file_is_in_the_suite() {
    let mut files: Vec<String> = std::fs::read_dir(scenarios_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    files.sort();
    let mut suite: Vec<String> = SUITE.iter().map(|s| (*s).to_owned()).collect();
    suite.sort();
    assert_eq!(
        files, suite,
        "every file in testnet/scenarios/ runs in this suite: add a test for a new one"
    );
}
