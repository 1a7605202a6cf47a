//! The cost model end to end (`testnet::vsim`): 200 nodes all publishing, every ad verified
//! for real once, convergence reported and consistent with what the run counted; and
//! `testnet sim --model virtual` printing it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap fails the run

use std::time::Duration;

use testnet::sim::SimConfig;
use testnet::vsim::{ModelArgs, VirtualConfig, run};

#[test]
fn two_hundred_nodes_all_publishing_converge_and_the_report_adds_up() {
    let sim = SimConfig {
        nodes: 200,
        federations: 2,
        updates: 5,
        ..SimConfig::default()
    };
    let config = VirtualConfig::new(&sim, &ModelArgs::default());
    let report = run(&config).unwrap();
    eprintln!("{report}");
    // Every ad verified for real, once.
    assert_eq!(report.verification.ads, 200);
    assert_eq!(report.verification.times.len(), 200);
    assert!(report.charged > Duration::ZERO);
    // 100 ads per federation, each to the 99 other nodes of it and the broker.
    assert_eq!(report.cold.delivered, (20_000, 20_000));
    let all = report.convergence().expect("converged");
    let completion = report.completion();
    assert_eq!(completion.len(), 201, "every node and the broker complete");
    assert_eq!(completion.last().copied(), Some(all));
    let spread = report.spread();
    assert_eq!(spread.len(), 200);
    assert!(spread.iter().all(|d| *d <= all));
    // Nothing arrives faster than one link, nor is verified faster than once.
    let lower = config.latency.lo + report.charged;
    assert!(spread[0] >= lower, "{:?} < {lower:?}", spread[0]);
    // Copies: each first copy plus the duplicates dropped by id.
    assert_eq!(
        report.cold.copies,
        report.cold.delivered.0 + report.cold.duplicates
    );
    assert!(report.cold.copies_per_delivery() >= 1.0);
    assert!(report.bytes_per_node() > 0.0);
    assert_eq!(report.updates.len() + report.updates_lost, 5);
    assert_eq!(report.updates_lost, 0);
    assert!(
        report.updates[0] >= lower,
        "{:?} < {lower:?}",
        report.updates[0]
    );
    // The same seed and the same charge, the same figures (the measured charge varies from
    // run to run, so the second run is given the first's).
    let again = run(&VirtualConfig {
        delivery_cost: Some(report.charged),
        ..config
    })
    .unwrap();
    assert_eq!(again.convergence(), Some(all));
    assert_eq!(again.cold.copies, report.cold.copies);
}

#[test]
fn testnet_sim_model_virtual_prints_convergence() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_testnet"))
        .args([
            "sim",
            "--model",
            "virtual",
            "--nodes",
            "60",
            "--updates",
            "3",
            "--latency-ms",
            "10-30",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("links 10-30 ms"), "{stdout}");
    assert!(
        stdout.contains("every peer holds every ad after"),
        "{stdout}"
    );
    assert!(stdout.contains("copies per delivery"), "{stdout}");
    assert!(stdout.contains("3 updates"), "{stdout}");
}
