//! No single broker (issue 16, item 5), through the `slicectl` binary against real daemons on
//! loopback: several brokers tried healthiest first, the next one when a broker cannot be
//! reached or says it cannot serve now (and stderr says which and why), not when it refuses
//! on the merits; `--agent` overriding a configured broker; the agents as the last resort;
//! brokers found through one bootstrap address. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod testnet;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use broker::wire::BrokerCallProtocol;
use capability_schema::{ErrorReply, Rejection, SecretKey};
use federation::{Overlay, OverlayConfig, OverlayHandle, TrustStore};
use slicectl::exit::ExitClass;
use testnet::{Testnet, within};

/// Runs the binary off the runtime's threads; answers the exit code, stdout and stderr.
async fn slicectl(args: Vec<String>) -> (i32, String, String) {
    within(tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_slicectl"))
            .args(&args)
            .env_remove("PLANETMESH_STATE")
            .env_remove("PLANETMESH_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }))
    .await
    .unwrap()
}

/// A config with the principal, the trust entries and `how` (brokers, agents, bootstrap).
fn config(net: &Testnet, state: &Path, how: &str) -> String {
    let path = state.join("slicectl.toml");
    let base = std::fs::read_to_string(net.cli_config(state, false)).unwrap();
    // The harness's config names its broker: keep everything else.
    let rest: String = base
        .lines()
        .filter(|l| !l.starts_with("broker ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, format!("{how}\n{rest}")).unwrap();
    path.to_str().unwrap().to_owned()
}

/// An address where nothing listens (connection refused), with a peer id nobody has.
fn dead_broker() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let peer = federation::overlay::peer_id(&SecretKey::generate().public());
    format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn plan(config: &str, name: &str, extra: &[&str]) -> Vec<String> {
    let mut a = args(&["--config", config]);
    a.extend(args(extra));
    a.extend(args(&["slice", "plan", "--name", name, "--slivers", "2"]));
    a
}

/// A peer that serves the broker protocol and refuses every call with `reason`; answers its
/// address and the overlay (shut it down at the end).
async fn refusing_broker(reason: Rejection) -> (String, OverlayHandle) {
    let config = OverlayConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..OverlayConfig::default()
    };
    let overlay = Overlay::start(
        &SecretKey::generate(),
        config,
        Arc::new(RwLock::new(TrustStore::new())),
    )
    .await
    .unwrap();
    let mut calls = overlay.serve::<BrokerCallProtocol>().await.unwrap();
    tokio::spawn(async move {
        while let Some(call) = calls.next().await {
            let _ = call
                .responder
                .send(Err(ErrorReply::from(reason.clone())))
                .await;
        }
    });
    let addr = overlay.listen_addrs().await.unwrap()[0].to_string();
    (addr, overlay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_cannot_be_reached_is_left_for_the_next_and_remembered() {
    let net = Testnet::start(1).await;
    let state = tempfile::tempdir().unwrap();
    let dead = dead_broker();
    let cfg = config(
        &net,
        state.path(),
        &format!("brokers = [{dead:?}, {:?}]", net.broker_addr),
    );
    // A create through the second broker; stderr names the first and why it was left.
    let started = Instant::now();
    let (code, out, err) = slicectl(args(&[
        "--config",
        &cfg,
        "--json",
        "slice",
        "create",
        "--name",
        "plc-site0_failover",
        "--slivers",
        "2",
        "--resources",
        "cpu=100m,memory=64MiB",
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!("leaving broker {dead}"))
            && err.contains("connection refused")
            && err.contains(&format!("trying broker {}", net.broker_addr)),
        "stderr says which broker was left, why, and which is next: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a refused connection is left at once: {:?}",
        started.elapsed()
    );
    // The outcome is kept: the next command asks the broker that answered first.
    let kept = std::fs::read_to_string(state.path().join(slicectl::brokers::FILE)).unwrap();
    assert!(kept.contains("connection refused"), "{kept}");
    let (code, out, err) = slicectl(plan(&cfg, "plc-site0_again", &[])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !err.contains("leaving"),
        "the last known good broker is asked first ({kept}): {err}"
    );
    let (code, out, err) = slicectl(args(&[
        "--config",
        &cfg,
        "slice",
        "delete",
        "plc-site0_failover",
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    // With every broker down and no agent, the error names each broker and its reason.
    let other = dead_broker();
    let (code, out, err) = slicectl(plan(
        &cfg,
        "plc-site0_none",
        &["--broker", &dead, "--broker", &other],
    ))
    .await;
    assert_eq!(code, ExitClass::Unreachable.code(), "{out}{err}");
    assert!(
        err.contains("none of the 2 brokers") && err.contains(&other) && err.contains(&dead),
        "{err}"
    );
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_cannot_serve_now_is_left_one_that_refuses_on_the_merits_is_not() {
    let net = Testnet::start(1).await;
    let state = tempfile::tempdir().unwrap();
    let cfg = config(&net, state.path(), "");
    let (busy, busy_overlay) = refusing_broker(Rejection::Unavailable {
        detail: "draining for an upgrade".into(),
    })
    .await;
    let (code, out, err) = slicectl(plan(
        &cfg,
        "plc-site0_busy",
        &["--broker", &busy, "--broker", &net.broker_addr],
    ))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!("leaving broker {busy}: it cannot serve now"))
            && err.contains("draining"),
        "{err}"
    );
    // A fresh state: with the first one's, the broker that answered would be asked first.
    let fresh = tempfile::tempdir().unwrap();
    let cfg = config(&net, fresh.path(), "");
    let (judge, judge_overlay) = refusing_broker(Rejection::Unsatisfiable {
        detail: "no node has 64 cores".into(),
    })
    .await;
    let (code, out, err) = slicectl(plan(
        &cfg,
        "plc-site0_merits",
        &["--broker", &judge, "--broker", &net.broker_addr],
    ))
    .await;
    assert_eq!(code, ExitClass::Unsatisfiable.code(), "{out}{err}");
    assert!(
        !err.contains("leaving") && err.contains("64 cores"),
        "a refusal on the merits is the answer: {err}"
    );
    busy_overlay.shutdown().await;
    judge_overlay.shutdown().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_the_command_line_override_a_configured_broker_and_are_the_last_resort() {
    let net = Testnet::start(1).await;
    let state = tempfile::tempdir().unwrap();
    let dead = dead_broker();
    let cfg = config(&net, state.path(), &format!("broker = {dead:?}"));
    let agents: Vec<String> = net.agents.iter().map(|a| a.addr.clone()).collect();
    // --agent while the config names a broker: the agents, and the broker is never asked.
    let mut extra = Vec::new();
    for a in &agents {
        extra.extend(["--agent", a.as_str()]);
    }
    let (code, out, err) = slicectl(plan(&cfg, "plc-site0_cli", &extra)).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !err.contains(&dead),
        "the configured broker is not asked: {err}"
    );
    assert!(
        !state.path().join(slicectl::brokers::FILE).exists(),
        "no outcome recorded: no broker was asked"
    );
    // The config's agents after its broker: the last resort when it does not answer.
    let list = agents
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let cfg = config(
        &net,
        state.path(),
        &format!("brokers = [{dead:?}]\nagents = [{list}]"),
    );
    let (code, out, err) = slicectl(plan(&cfg, "plc-site0_last", &[])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!("leaving broker {dead}"))
            && err.contains("trying the agents in-process"),
        "{err}"
    );
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_are_found_through_one_bootstrap_address() {
    let net = Testnet::start(1).await;
    let state = tempfile::tempdir().unwrap();
    // Only an agent's address: the broker announced itself there.
    let cfg = config(
        &net,
        state.path(),
        &format!("bootstrap = [{:?}]", net.agents[0].addr),
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("agents ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cfg, text).unwrap();
    // The broker announces itself within seconds of starting; retry for a bounded while.
    let deadline = Instant::now() + Duration::from_secs(40);
    let (code, out, err) = loop {
        let got = slicectl(plan(&cfg, "plc-site0_found", &["--json"])).await;
        if got.0 == 0 || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(code, 0, "a broker is found on the overlay: {out}{err}");
    let json: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert!(
        json["plan"]["chosen"]
            .as_array()
            .is_some_and(|p| p.len() == 2),
        "the discovered broker planned two slivers: {json}"
    );
    net.stop().await;
}
