//! The in-process simulation at a small scale: 10 nodes in two federations converge (every
//! node holds an ad of every node of its federation, the broker one of every node), single
//! updates reach everyone, and the planner plans over the broker's view. Debug builds run
//! libp2p and signature checks many times slower than release builds, so the scale is small
//! and nodes re-announce to repair what a starved peer dropped; `testnet sim` (release) is the
//! measurement.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::time::{Duration, Instant};

use testnet::sim::{SimConfig, run};

#[test]
fn ten_nodes_converge_and_the_broker_plans_over_their_ads() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = SimConfig {
        nodes: 10,
        federations: 2,
        degree: 3,
        heartbeat: Duration::from_millis(500),
        settle: Duration::ZERO,
        reannounce: Duration::from_secs(3),
        updates: 2,
        slivers: 4,
        timeout: Duration::from_secs(60),
        ..SimConfig::default()
    };
    let started = Instant::now();
    let report = runtime
        .block_on(run(&config, |line| eprintln!("{line}")))
        .unwrap();
    eprintln!("{report}");
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
    assert!(report.converged, "{report}");
    assert_eq!(report.delivered.0, report.delivered.1);
    // 5 nodes per federation: each node gets the 4 others' ads.
    assert!(report.ads_per_node >= 4.0, "{report}");
    assert_eq!(report.completion.len(), 11);
    assert!(report.broker_complete.is_some());
    assert_eq!(report.spread.len(), 10);
    assert_eq!(report.candidates, 10);
    assert_eq!(report.updates.len() + report.updates_lost, 2);
    assert_eq!(report.updates_lost, 0, "{report}");
    assert!(report.satisfiable, "{report}");
    assert_eq!(report.chosen, 4);
}

/// `testnet sim` fails when the ads did not converge: here they cannot, since the first ads
/// are spread over a minute and the run may wait no time at all. The exit is non-zero and the
/// last line of stderr says why in one line.
#[test]
fn sim_exits_non_zero_with_a_reason_when_ads_do_not_converge() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_testnet"))
        .args([
            "sim",
            "--nodes",
            "4",
            "--degree",
            "2",
            "--heartbeat-ms",
            "500",
            "--boot-secs",
            "60",
            "--timeout",
            "0",
            "--updates",
            "0",
            "--slivers",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a sim that did not converge must fail:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("NOT converged"), "{stdout}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("testnet: ads did not converge (4 nodes: ") && last.contains("--timeout"),
        "one line saying why and what to do: {last:?}\n{stderr}"
    );
}
