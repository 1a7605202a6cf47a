//! `nodemgr` fails as every PlanetMesh program does: one line that says what to do, the exit
//! code of its class, no backtrace even with `RUST_BACKTRACE=1` (issue 17, defect 2).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

#[path = "../../federation/tests/common/cli.rs"]
mod cli;

use cli::{SETUP, daemon_errors, ordinary_error, run};

const NODEMGR: &str = env!("CARGO_BIN_EXE_nodemgr");

#[test]
fn nodemgr_errors_are_one_line_of_their_class_without_a_backtrace() {
    let tmp = tempfile::tempdir().unwrap();
    daemon_errors(NODEMGR, "nodemgr", "node.toml", tmp.path());
    let wipe = run(NODEMGR, &["wipe", "--config", "nope.toml"], tmp.path());
    ordinary_error(&wipe, "nodemgr", SETUP, "run `nodemgr init`");
}

#[test]
fn nodemgr_has_completions_man_pages_and_a_long_version() {
    let tmp = tempfile::tempdir().unwrap();
    cli::manual(env!("CARGO_BIN_EXE_nodemgr"), "nodemgr", tmp.path());
}
