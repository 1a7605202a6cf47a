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
