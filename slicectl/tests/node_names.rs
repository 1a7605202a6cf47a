//! One name per node (issue 17, defect 6), on real daemons in this process over loopback: the
//! `slicectl` binary takes a node by its ad's name, by `site/short-key`, by a hex prefix of its
//! key or by its full key; a too-short prefix or an unknown name is a usage error saying which
//! forms work; output names each node by its ad's name, and prints times as local times with
//! durations ("in 59m") while `--json` keeps Unix seconds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod testnet;

use std::process::Command;

use slicectl::exit::ExitClass;
use testnet::{Testnet, within};

/// Runs the binary off the runtime's threads, bounded in time, away from any user config.
async fn cli(home: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let home = home.to_owned();
    within(tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_slicectl"))
            .args(&args)
            .env_remove("PLANETMESH_STATE")
            .env_remove("PLANETMESH_CONFIG")
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join("xdg"))
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

/// A line saying "in about an hour" (1h, or 59m or 58m as the seconds pass).
fn about_an_hour(line: &str) -> bool {
    ["(in 1h)", "(in 59m)", "(in 58m)"]
        .iter()
        .any(|d| line.contains(d))
}

/// No Unix time (a word of nine digits or more; hex keys and ids have letters) in human output.
fn assert_no_epoch(text: &str) {
    for line in text.lines() {
        assert!(
            !line
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|word| word.len() >= 9 && word.bytes().all(|b| b.is_ascii_digit())),
            "Unix-epoch time in {line:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_has_one_name_in_and_out() {
    let net = Testnet::start(1).await;
    let state = tempfile::tempdir().unwrap();
    let cfg = net.cli_config(state.path(), true);
    let cfg = cfg.to_str().unwrap();
    let home = state.path();
    let node = &net.nodes[0];
    // The ad's name: the node's certificate names it (federation::testing).
    let name = format!("node-{}", node.key.short());
    let hex = node
        .key
        .to_string()
        .trim_start_matches("ed25519/")
        .to_owned();
    let other = &net.nodes[1];

    // Every form of a node argument plans onto that node.
    let printed = format!("{}/{}", node.site, node.key.short());
    for given in [
        name.as_str(),
        &printed,
        &hex[..6],
        &hex,
        &node.key.to_string(),
    ] {
        let (code, stdout, stderr) = cli(
            home,
            &[
                "--config",
                cfg,
                "--json",
                "slice",
                "plan",
                "--name",
                "plc-site0_named",
                "--node",
                given,
            ],
        )
        .await;
        assert_eq!(code, 0, "--node {given}: {stdout}{stderr}");
        let plan: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(
            plan["plan"]["chosen"][0]["node"],
            node.key.to_string(),
            "--node {given}: {plan}"
        );
    }
    // So does a spec file's `nodes`.
    let spec = home.join("named.toml");
    std::fs::write(
        &spec,
        format!("name = \"plc-site0_named\"\nnodes = [{name:?}]\nduration = \"1h\"\n"),
    )
    .unwrap();
    let (code, stdout, stderr) = cli(
        home,
        &[
            "--config",
            cfg,
            "--json",
            "slice",
            "plan",
            spec.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let plan: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        plan["plan"]["chosen"][0]["node"],
        node.key.to_string(),
        "{plan}"
    );
    // --exclude takes the same forms.
    let (code, stdout, stderr) = cli(
        home,
        &[
            "--config",
            cfg,
            "--json",
            "slice",
            "plan",
            "--name",
            "plc-site0_named",
            "--slivers",
            "1",
            "--exclude",
            &name,
        ],
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let plan: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        plan["plan"]["chosen"][0]["node"],
        other.key.to_string(),
        "{plan}"
    );

    // Too short a prefix, and an unknown name: usage errors saying what works.
    for (given, says) in [
        ("ab", "at least 4 hex digits"),
        ("nosuchnode", "site/short-key"),
    ] {
        let (code, stdout, stderr) = cli(
            home,
            &[
                "--config",
                cfg,
                "slice",
                "plan",
                "--name",
                "plc-site0_named",
                "--node",
                given,
            ],
        )
        .await;
        assert_eq!(code, ExitClass::Usage.code(), "{stdout}{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }

    // Create on it: the lease line names the node by its ad's name, with a local time.
    let (code, stdout, stderr) = cli(
        home,
        &[
            "--config",
            cfg,
            "slice",
            "create",
            "--name",
            "plc-site0_named",
            "--node",
            &name,
            "--duration",
            "1h",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("{name}: lease ")) && about_an_hour(l)),
        "{stdout}"
    );
    assert_no_epoch(&stdout);

    // Status names it the same way, with the lease's end as a local time and a duration;
    // under --json the end stays in Unix seconds.
    let (code, stdout, stderr) = cli(
        home,
        &["--config", cfg, "slice", "status", "plc-site0_named"],
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.lines().any(
            |l| l.trim_start().starts_with(&format!("{name}: live, lease ")) && about_an_hour(l)
        ),
        "{stdout}"
    );
    assert_no_epoch(&stdout);
    let (_, stdout, _) = cli(
        home,
        &[
            "--config",
            cfg,
            "--json",
            "slice",
            "status",
            "plc-site0_named",
        ],
    )
    .await;
    let status: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let end = status["slivers"][0]["end"].as_u64().unwrap();
    assert!(end > federation::unix_now() + 3000, "{status}");
    let (code, stdout, _) = cli(home, &["--config", cfg, "slice", "list"]).await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("first lease ends in 1h") || stdout.contains("first lease ends in 5"),
        "{stdout}"
    );

    let (code, stdout, stderr) = cli(
        home,
        &["--config", cfg, "slice", "delete", "plc-site0_named"],
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(net.all_leases().is_empty());

    // Through a broker, with a fresh state: the agents the config lists beside the broker
    // (as testnet up writes it) tell the names.
    let fresh = tempfile::tempdir().unwrap();
    let broker_cfg = net.cli_config(fresh.path(), false);
    let text = std::fs::read_to_string(&broker_cfg).unwrap();
    let agents: Vec<String> = net.agents.iter().map(|a| format!("{:?}", a.addr)).collect();
    let text = text.replacen(
        "[[trust]]",
        &format!("agents = [{}]\n[[trust]]", agents.join(", ")),
        1,
    );
    std::fs::write(&broker_cfg, text).unwrap();
    let (code, stdout, stderr) = cli(
        fresh.path(),
        &[
            "--config",
            broker_cfg.to_str().unwrap(),
            "--json",
            "slice",
            "plan",
            "--name",
            "plc-site0_named",
            "--node",
            &name,
        ],
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let plan: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        plan["plan"]["chosen"][0]["node"],
        node.key.to_string(),
        "{plan}"
    );
    net.stop().await;
}
