//! End-to-end benchmark: a 20-sliver slice across two federations, from `slice create` to all
//! leases held, on a local testnet in this process (10 memory-isolation nodes per federation,
//! one agent each, one broker, loopback TCP; real daemons, no sliver isolation).
//!
//! Measured three ways, each run on a fresh client and a new slice name, deleted after:
//! - through the broker (`Manager::create` over `/planetmesh/broker/1`);
//! - with the integrated broker (`--agent`: the client asks both agents itself);
//! - the `slicectl` binary through the broker (process start to exit, JSON output);
//! - the binary with two brokers configured, from a fresh state each run: the first up, then
//!   the first down (its address refuses connections, as a killed broker's does), so each
//!   create is left by the first broker and completed through the second (≤ 3 s).
//!
//! `cargo bench -p slicectl --bench e2e` (release build). Prints min / median / max, and the
//! median against the target (≤ 2 s) as PASS or MISS. The same on real slivers (namespaced
//! testnet, as root): `slicectl/bench-testnet.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

#[path = "../tests/testnet/mod.rs"]
mod testnet;

use std::time::{Duration, Instant};

use capability_schema::AcquireMode;
use slicectl::exit::ExitClass;
use slicectl::spec::SliceSpec;

const SLIVERS: u32 = 20;
const RUNS: usize = 7;

fn spec(name: &str) -> SliceSpec {
    let mut spec = SliceSpec::named(name);
    spec.slivers = Some(SLIVERS);
    spec.resources = "cpu=100m,memory=64MiB".into();
    spec.duration = "1h".into();
    spec.mode = AcquireMode::AllOrNothing;
    spec
}

/// The target: a 20-sliver slice across two federations, create to all leases held.
const TARGET: Duration = Duration::from_secs(2);

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = times[times.len() / 2];
    println!(
        "{what:<44} {SLIVERS} slivers: min {:>7.1} ms  median {:>7.1} ms  max {:>7.1} ms  ({} runs)  \
         target ≤ {} s: {}",
        ms(times[0]),
        ms(median),
        ms(times[times.len() - 1]),
        times.len(),
        TARGET.as_secs(),
        if median <= TARGET { "PASS" } else { "MISS" }
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run once then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let runs = if quick { 1 } else { RUNS };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let started = Instant::now();
        let net = testnet::Testnet::start(SLIVERS as usize / 2).await;
        println!(
            "testnet: 2 federations, {} nodes (memory isolation), 2 agents, 1 broker, up in {:.1} s",
            net.nodes.len(),
            started.elapsed().as_secs_f64()
        );
        for integrated in [false, true] {
            let mut times = Vec::new();
            for run in 0..runs {
                let dir = tempfile::tempdir().expect("tempdir");
                let name = format!("plc-site0_b{}{run}", u8::from(integrated));
                let t = Instant::now();
                let m = net.manager(dir.path(), integrated).await;
                let out = testnet::within(m.create(&spec(&name))).await.expect("create");
                let elapsed = t.elapsed();
                assert_eq!(out.class, ExitClass::Ok, "{:#?}", out.lines);
                assert_eq!(m.state.leases(&name).expect("state").len(), SLIVERS as usize);
                times.push(elapsed);
                let deleted = testnet::within(m.delete(&name)).await.expect("delete");
                assert_eq!(deleted.class, ExitClass::Ok, "{:#?}", deleted.lines);
                m.session.shutdown().await;
            }
            report(
                if integrated {
                    "create, integrated broker (--agent)"
                } else {
                    "create through the broker"
                },
                times,
            );
        }
        // The binary, process start to exit.
        let dir = tempfile::tempdir().expect("tempdir");
        let config = net.cli_config(dir.path(), false);
        let mut times = Vec::new();
        for run in 0..runs {
            let name = format!("plc-site0_cli{run}");
            let config = config.clone();
            let t = Instant::now();
            let out = testnet::within(tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_slicectl"))
                    .arg("--config")
                    .arg(&config)
                    .args(["--json", "slice", "create", "--name", &name])
                    .args(["--slivers", &SLIVERS.to_string()])
                    .args(["--resources", "cpu=100m,memory=64MiB", "--duration", "1h"])
                    .output()
                    .expect("slicectl runs")
            }))
            .await
            .expect("joined");
            times.push(t.elapsed());
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let name = format!("plc-site0_cli{run}");
            let config = net.cli_config(dir.path(), false);
            let out = testnet::within(tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_slicectl"))
                    .arg("--config")
                    .arg(&config)
                    .args(["slice", "delete", &name])
                    .output()
                    .expect("slicectl runs")
            }))
            .await
            .expect("joined");
            assert!(out.status.success());
        }
        report("`slicectl slice create` binary via broker", times);
        // No single broker: the same, each run from a fresh state, with the first configured
        // broker up, then down (its address refuses connections, as a killed broker's does).
        let down = {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let peer = federation::overlay::peer_id(&capability_schema::SecretKey::generate().public());
            format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}")
        };
        let base = std::fs::read_to_string(&config).expect("config");
        for (what, first) in [
            ("binary, first broker up", net.broker_addr.clone()),
            ("binary, first broker down (target ≤ 3 s)", down),
        ] {
            let text: String = base
                .lines()
                .filter(|l| !l.starts_with("broker ="))
                .map(|l| format!("{l}\n"))
                .collect();
            let brokers = format!("brokers = [{first:?}, {:?}]\n{text}", net.broker_addr);
            let mut times = Vec::new();
            for run in 0..runs {
                let state = tempfile::tempdir().expect("tempdir");
                let config = state.path().join("slicectl.toml");
                std::fs::write(&config, &brokers).expect("config written");
                let name = format!("plc-site0_two{run}");
                let slicectl = |args: Vec<String>| {
                    let config = config.clone();
                    let state = state.path().to_owned();
                    tokio::task::spawn_blocking(move || {
                        std::process::Command::new(env!("CARGO_BIN_EXE_slicectl"))
                            .arg("--config")
                            .arg(&config)
                            .arg("--state-dir")
                            .arg(&state)
                            .args(args)
                            .output()
                            .expect("slicectl runs")
                    })
                };
                let t = Instant::now();
                let out = testnet::within(slicectl(vec![
                    "--json".into(),
                    "slice".into(),
                    "create".into(),
                    "--name".into(),
                    name.clone(),
                    "--slivers".into(),
                    SLIVERS.to_string(),
                    "--resources".into(),
                    "cpu=100m,memory=64MiB".into(),
                    "--duration".into(),
                    "1h".into(),
                ]))
                .await
                .expect("joined");
                times.push(t.elapsed());
                assert!(
                    out.status.success(),
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let out = testnet::within(slicectl(vec!["slice".into(), "delete".into(), name]))
                    .await
                    .expect("joined");
                assert!(out.status.success());
            }
            report(what, times);
        }
        assert!(net.all_leases().is_empty());
        net.stop().await;
    });
}
