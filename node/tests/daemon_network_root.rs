//! The node manager's firewall table as a daemon keeps it (root; skipped otherwise unless CI):
//! made at start, removed by a clean shutdown with no live sliver.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::process::Command;

use common::daemon::LinuxNode;
use common::root_or_skip;

fn table_exists(name: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", name])
        .output()
        .expect("run nft")
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_with_no_sliver_leaves_no_firewall_table() {
    if !root_or_skip() {
        return;
    }
    let mut node = LinuxNode::start("pmfw").await;
    let table = node.firewall_table();
    assert!(table_exists(&table), "nodemgr makes its table at start");
    // Before the fixture's drop guard, which would remove it anyway.
    node.shut_down().await;
    assert!(!table_exists(&table), "and removes it at a clean shutdown");
    drop(node);
}
