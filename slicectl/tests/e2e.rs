//! End to end on real daemons in this process (two federations, two agents, memory-isolation
//! nodes, a broker) over loopback TCP: a slice spanning both federations is created, used,
//! renewed and deleted (exec, spawn, logs and keys on memory slivers, which run nothing and
//! answer documented stand-ins); a node is down during create; a lease gone from its node is
//! acquired again by sync; an impossible request is explained; the `slicectl` binary itself is
//! driven for exit codes, JSON errors and help.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod testnet;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use capability_schema::protocol::BrokerResponse;
use capability_schema::protocol::ExecOutput;
use capability_schema::slice::SliverTarget;
use capability_schema::{AcquireMode, SecretKey};
use federation::{Overlay, OverlayConfig, OverlayError};
use node::daemon::memory::{FIRST_SYNTHETIC_PID, NOT_RUN_MESSAGE, SPAWN_LOG_PREFIX};
use slicectl::exit::ExitClass;
use slicectl::spec::SliceSpec;
use testnet::{Testnet, within};

fn spec(name: &str, slivers: u32, mode: AcquireMode) -> SliceSpec {
    let mut spec = SliceSpec::named(name);
    spec.slivers = Some(slivers);
    spec.resources = "cpu=250m,memory=128MiB".into();
    spec.duration = "1h".into();
    spec.lease = Some("10m".into());
    spec.mode = mode;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_exec_renew_delete_across_two_federations() {
    let net = Testnet::start(2).await;
    let state = tempfile::tempdir().unwrap();
    let m = net.manager(state.path(), false).await;

    let mut s = spec("plc-site0_demo", 4, AcquireMode::AllOrNothing);
    s.constraints.min_sites = 4;
    let created = within(m.create(&s)).await.unwrap();
    assert_eq!(created.class, ExitClass::Ok, "{:#?}", created.lines);
    let leases = m.state.leases("plc-site0_demo").unwrap();
    assert_eq!(leases.len(), 4);
    let feds: BTreeSet<_> = leases.iter().map(|l| l.lease.federation.clone()).collect();
    assert_eq!(feds.len(), 2, "the slice spans both federations");
    assert!(m.state.tickets("plc-site0_demo").unwrap().is_empty());
    // Every node holds exactly the lease slicectl stored.
    let on_nodes: BTreeSet<String> = net.all_leases().into_iter().map(|l| l.lease_id).collect();
    let stored: BTreeSet<String> = leases.iter().map(|l| l.lease.lease_id.clone()).collect();
    assert_eq!(on_nodes, stored);

    // Exec in every sliver. Memory isolation runs nothing and says so: every node answers
    // `ExecOutput::NOT_RUN` with `NOT_RUN_MESSAGE` on stderr (node::daemon::memory), and the
    // outcome is the `not_run` class, not `ok`; what a real sliver answers is checked by
    // testnet/scenarios/two-federations.toml.
    let out = within(m.exec("plc-site0_demo", vec!["hostname".into()], 5000))
        .await
        .unwrap();
    assert_eq!(out.class, ExitClass::NotRun, "{:#?}", out.lines);
    let message = NOT_RUN_MESSAGE.trim_end();
    for l in &leases {
        let label = l.label();
        assert!(
            out.lines.contains(&format!("[{label}] (stderr) {message}")),
            "{:#?}",
            out.lines
        );
        assert!(
            out.lines
                .iter()
                .any(|line| line.starts_with(&format!("[{label}] not run:"))),
            "{:#?}",
            out.lines
        );
    }
    let slivers = out.json["slivers"].as_array().unwrap();
    assert_eq!(slivers.len(), 4);
    for s in slivers {
        assert_eq!(s["not_run"], true, "{s}");
        assert_eq!(s["exit_code"], ExecOutput::NOT_RUN, "{s}");
        assert_eq!(s["stdout"], "", "{s}");
        assert_eq!(s["stderr"], NOT_RUN_MESSAGE, "{s}");
    }
    assert_eq!(out.json["ok"], false);

    // Spawn: memory isolation answers synthetic pids (2, then 3, … per sliver) and logs a
    // line per spawn instead of running anything; the protocol path is what this checks.
    let spawned = within(m.spawn("plc-site0_demo", vec!["sleep".into(), "60".into()]))
        .await
        .unwrap();
    assert_eq!(spawned.class, ExitClass::Ok, "{:#?}", spawned.lines);
    let pids: Vec<u64> = spawned.json["slivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids, vec![u64::from(FIRST_SYNTHETIC_PID); 4]);
    let again = within(m.spawn("plc-site0_demo", vec!["true".into()]))
        .await
        .unwrap();
    assert_eq!(again.class, ExitClass::Ok, "{:#?}", again.lines);
    for l in &leases {
        assert!(
            again
                .lines
                .contains(&format!("[{}] pid {}", l.label(), FIRST_SYNTHETIC_PID + 1)),
            "{:#?}",
            again.lines
        );
    }
    // Logs: the tail of each sliver's spawn log, prefixed by node.
    let logs = within(m.logs("plc-site0_demo", 65536)).await.unwrap();
    assert_eq!(logs.class, ExitClass::Ok, "{:#?}", logs.lines);
    for s in logs.json["slivers"].as_array().unwrap() {
        assert_eq!(
            s["logs"],
            format!("{SPAWN_LOG_PREFIX}sleep 60\n{SPAWN_LOG_PREFIX}true\n"),
            "{s}"
        );
    }
    for l in &leases {
        assert!(
            logs.lines
                .contains(&format!("[{}] {SPAWN_LOG_PREFIX}true", l.label())),
            "{:#?}",
            logs.lines
        );
    }
    let tail = within(m.logs("plc-site0_demo", 5)).await.unwrap();
    for s in tail.json["slivers"].as_array().unwrap() {
        assert_eq!(s["logs"], "true\n", "{s}");
    }

    // Status: all live.
    let status = within(m.status("plc-site0_demo")).await.unwrap();
    assert_eq!(status.class, ExitClass::Ok, "{:#?}", status.lines);

    // Renew to 30 min: granted as asked. Renew past the tickets: each node grants its
    // ticket's end, and the answer says so.
    let renewed = within(m.renew("plc-site0_demo", Some(1800))).await.unwrap();
    assert_eq!(renewed.class, ExitClass::Ok, "{:#?}", renewed.lines);
    for l in m.state.leases("plc-site0_demo").unwrap() {
        assert!(l.lease.end >= federation::unix_now() + 1700, "{l:?}");
    }
    let capped = within(m.renew("plc-site0_demo", Some(7200))).await.unwrap();
    assert_eq!(capped.class, ExitClass::Ok, "{:#?}", capped.lines);
    assert!(
        capped
            .lines
            .iter()
            .filter(|l| l.contains("capped: the ticket ends"))
            .count()
            == 4,
        "{:#?}",
        capped.lines
    );
    for l in m.state.leases("plc-site0_demo").unwrap() {
        assert_eq!(l.lease.end, l.ticket_not_after);
    }
    let granted: Vec<u64> = capped.json["slivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["granted"].as_u64().unwrap())
        .collect();
    assert_eq!(granted.len(), 4);

    // Keys.
    let key_line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample alice@laptop";
    let keys = within(m.keys(
        "plc-site0_demo",
        slicectl::ops::KeyAction::Add(key_line.into()),
    ))
    .await
    .unwrap();
    assert_eq!(keys.class, ExitClass::Ok, "{:#?}", keys.lines);
    assert_eq!(
        keys.lines
            .iter()
            .filter(|l| l.contains("alice@laptop"))
            .count(),
        4
    );
    let listed = within(m.keys("plc-site0_demo", slicectl::ops::KeyAction::List))
        .await
        .unwrap();
    assert_eq!(listed.class, ExitClass::Ok, "{:#?}", listed.lines);
    for s in listed.json["slivers"].as_array().unwrap() {
        assert_eq!(s["keys"], serde_json::json!([key_line]), "{s}");
    }
    // Removed by its comment: every sliver says it has none left.
    let removed = within(m.keys(
        "plc-site0_demo",
        slicectl::ops::KeyAction::Del("alice@laptop".into()),
    ))
    .await
    .unwrap();
    assert_eq!(removed.class, ExitClass::Ok, "{:#?}", removed.lines);
    assert_eq!(
        removed
            .lines
            .iter()
            .filter(|l| l.ends_with("(no keys)"))
            .count(),
        4,
        "{:#?}",
        removed.lines
    );
    let listed = within(m.keys("plc-site0_demo", slicectl::ops::KeyAction::List))
        .await
        .unwrap();
    for s in listed.json["slivers"].as_array().unwrap() {
        assert_eq!(s["keys"], serde_json::json!([]), "{s}");
    }

    // Delete: nothing left on any node or in the state.
    let deleted = within(m.delete("plc-site0_demo")).await.unwrap();
    assert_eq!(deleted.class, ExitClass::Ok, "{:#?}", deleted.lines);
    assert!(net.all_leases().is_empty(), "{:?}", net.all_leases());
    assert!(m.state.slices().unwrap().is_empty());
    // The agents were told: nothing outstanding for the principal.
    for a in &net.agents {
        let out = a
            .running
            .state
            .agent
            .ledger()
            .outstanding(federation::unix_now())
            .unwrap();
        assert!(out.by_principal.is_empty(), "{out:?}");
    }

    m.session.shutdown().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_during_create() {
    let mut net = Testnet::start(2).await;
    let state = tempfile::tempdir().unwrap();
    let m = net.manager(state.path(), false).await;
    // The node stops; its ad is still in the agent's inventory (TTL 120 s), so it gets planned.
    let down = 3;
    net.nodes[down].stop().await;
    let down_key = net.nodes[down].key;

    // All or nothing: the create fails and no lease is left anywhere.
    let out = within(m.create(&spec("plc-site0_aon", 4, AcquireMode::AllOrNothing)))
        .await
        .unwrap();
    assert_eq!(out.class, ExitClass::Unreachable, "{:#?}", out.lines);
    assert!(
        out.lines.iter().any(|l| l.contains("no lease is left")),
        "{:#?}",
        out.lines
    );
    assert!(net.all_leases().is_empty(), "{:?}", net.all_leases());
    assert!(m.state.slices().unwrap().is_empty());

    // Best effort: three slivers, the missing one reported with its unredeemed ticket.
    let out = within(m.create(&spec("plc-site0_be", 4, AcquireMode::BestEffort)))
        .await
        .unwrap();
    assert_eq!(out.class, ExitClass::Partial, "{:#?}", out.lines);
    assert_eq!(m.state.leases("plc-site0_be").unwrap().len(), 3);
    let unredeemed = m.state.tickets("plc-site0_be").unwrap();
    assert_eq!(unredeemed.len(), 1);
    assert_eq!(unredeemed[0].ticket.node, down_key);
    assert!(
        out.lines
            .iter()
            .any(|l| l.contains("not redeemed") && l.contains(&down_key.short())),
        "{:#?}",
        out.lines
    );
    assert_eq!(out.json["missing"], 1);

    // Sync while the node is still down: still partial, the ticket kept.
    let synced = within(m.sync(Some("plc-site0_be"))).await.unwrap();
    assert_eq!(synced.class, ExitClass::Partial, "{:#?}", synced.lines);
    assert_eq!(m.state.tickets("plc-site0_be").unwrap().len(), 1);

    // The node comes back (same state, same port); sync completes the slice.
    net.nodes[down].start().await;
    let synced = within(m.sync(None)).await.unwrap();
    assert_eq!(synced.class, ExitClass::Ok, "{:#?}", synced.lines);
    assert_eq!(m.state.leases("plc-site0_be").unwrap().len(), 4);
    assert!(m.state.tickets("plc-site0_be").unwrap().is_empty());
    assert_eq!(net.nodes[down].leases().len(), 1);

    let deleted = within(m.delete("plc-site0_be")).await.unwrap();
    assert_eq!(deleted.class, ExitClass::Ok, "{:#?}", deleted.lines);
    assert!(net.all_leases().is_empty());
    m.session.shutdown().await;
    net.stop().await;
}

fn slicectl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_slicectl"))
        .args(args)
        .env_remove("PLANETMESH_STATE")
        .env_remove("PLANETMESH_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary off the runtime's threads, bounded in time.
async fn cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    within(tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        slicectl(&refs)
    }))
    .await
    .unwrap()
}

/// The README's first command names a slice and a sliver count and nothing else: each sliver
/// gets the default resources (`slicectl::spec::DEFAULT_RESOURCES`, one public port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_with_a_name_and_a_count_only_asks_for_the_default_resources() {
    let net = Testnet::start(2).await;
    let state = tempfile::tempdir().unwrap();
    let cfg = net.cli_config(state.path(), false);
    let cfg = cfg.to_str().unwrap();
    // As README.md prints it (with this testnet's site prefix).
    let args = [
        "--config",
        cfg,
        "--json",
        "slice",
        "create",
        "--name",
        "plc-site0_mine",
        "--slivers",
        "3",
    ];
    let (code, stdout, stderr) = cli(&args).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let created: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(created["leases"].as_array().unwrap().len(), 3, "{stdout}");
    let want: capability_schema::Resources = slicectl::spec::DEFAULT_RESOURCES.parse().unwrap();
    let leases = net.all_leases();
    assert_eq!(leases.len(), 3);
    for lease in &leases {
        assert_eq!(lease.resources.cpu_millis, want.cpu_millis, "{lease:?}");
        assert_eq!(lease.resources.memory_bytes, want.memory_bytes, "{lease:?}");
        assert_eq!(
            lease.resources.ports,
            slicectl::spec::DEFAULT_PORTS,
            "{lease:?}"
        );
    }
    let args = ["--config", cfg, "slice", "delete", "plc-site0_mine"];
    let (code, stdout, stderr) = cli(&args).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_explains_impossible_requests_and_brokers_itself() {
    let net = Testnet::start(1).await;
    let state = tempfile::tempdir().unwrap();
    let via_broker = net.cli_config(state.path(), false);
    let via_agents = net.cli_config(state.path(), true);
    let cfg = via_broker.to_str().unwrap().to_owned();
    let cfg_agents = via_agents.to_str().unwrap().to_owned();

    // Impossible: more memory than any node has. Exit 4, the binding constraint named.
    let args = [
        "--config",
        &cfg,
        "slice",
        "create",
        "--name",
        "plc-site0_big",
        "--slivers",
        "2",
        "--resources",
        "cpu=1,memory=64GiB",
        "--duration",
        "1h",
    ];
    let (code, stdout, stderr) = cli(&args).await;
    assert_eq!(code, ExitClass::Unsatisfiable.code(), "{stdout}{stderr}");
    assert!(
        stderr.contains("binding constraint: memory"),
        "{stdout}{stderr}"
    );
    assert!(stderr.contains("64GiB"), "{stderr}");
    // Nothing was recorded.
    let args = ["--config", &cfg, "--json", "slice", "list"];
    let (code, stdout, _) = cli(&args).await;
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list["slices"].as_array().unwrap().len(), 0);

    // `slice plan` explains too, grouping the nodes left out.
    let args = [
        "--config",
        &cfg,
        "--json",
        "slice",
        "plan",
        "--name",
        "plc-site0_big",
        "--slivers",
        "2",
        "--resources",
        "cpu=1,memory=64GiB",
    ];
    let (code, stdout, _) = cli(&args).await;
    assert_eq!(code, ExitClass::Unsatisfiable.code(), "{stdout}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["plan"]["rejected"][0]["reason"], "memory", "{stdout}");
    assert_eq!(plan["plan"]["rejected"][0]["count"], 2, "{stdout}");
    assert!(plan["plan"]["alternatives"].is_array(), "{stdout}");
    let unsatisfiable_plan = plan;

    // A plan that fits: the alternatives are the nodes not chosen, as the same objects as
    // the chosen ones (not a count).
    let args = [
        "--config",
        &cfg,
        "--json",
        "slice",
        "plan",
        "--name",
        "plc-site0_small",
        "--slivers",
        "1",
        "--resources",
        "cpu=100m,memory=64MiB",
    ];
    let (code, stdout, stderr) = cli(&args).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let keys = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object()
            .unwrap_or_else(|| panic!("an object: {v}"))
            .keys()
            .cloned()
            .collect()
    };
    let chosen = plan["plan"]["chosen"].as_array().unwrap();
    let alternatives = plan["plan"]["alternatives"]
        .as_array()
        .unwrap_or_else(|| panic!("alternatives is an array: {stdout}"));
    assert_eq!(chosen.len(), 1, "{stdout}");
    assert_eq!(alternatives.len(), 1, "the other node: {stdout}");
    assert_eq!(keys(&alternatives[0]), keys(&chosen[0]), "{stdout}");
    assert_ne!(alternatives[0]["node"], chosen[0]["node"], "{stdout}");

    // A federation not allowed is named as such.
    let args = [
        "--config",
        &cfg,
        "slice",
        "create",
        "--name",
        "plc-site0_fed",
        "--slivers",
        "2",
        "--resources",
        "cpu=1",
        "--federation",
        "plc",
    ];
    let (code, stdout, stderr) = cli(&args).await;
    assert_eq!(code, ExitClass::Unsatisfiable.code(), "{stdout}{stderr}");
    assert!(
        stderr.contains("binding constraint: federation not allowed"),
        "{stderr}"
    );

    // Under --json a failed create carries the plan and the report, through a broker and
    // through the integrated broker alike.
    for config in [&cfg, &cfg_agents] {
        let args = [
            "--config",
            config,
            "--json",
            "slice",
            "create",
            "--name",
            "plc-site0_bigjson",
            "--slivers",
            "2",
            "--resources",
            "cpu=1,memory=64GiB",
        ];
        let (code, stdout, stderr) = cli(&args).await;
        assert_eq!(code, ExitClass::Unsatisfiable.code(), "{stdout}{stderr}");
        let failed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(failed["ok"], false, "{stdout}");
        assert_eq!(failed["reason"], "unsatisfiable", "{stdout}");
        assert_eq!(
            failed["plan"]["rejected"][0]["reason"], "memory",
            "{stdout}"
        );
        assert_eq!(failed["plan"]["rejected"][0]["count"], 2, "{stdout}");
        assert!(failed["report"].is_array(), "{stdout}");
        // The plan has the shape `slice plan --json` gives it.
        assert_eq!(
            keys(&failed["plan"]),
            keys(&unsatisfiable_plan["plan"]),
            "{stdout}"
        );
        assert!(failed["plan"]["alternatives"].is_array(), "{stdout}");
    }

    // The integrated broker (--agent): a two-federation slice, JSON out, exit 0; then exec
    // and delete through the CLI.
    let args = [
        "--config",
        &cfg_agents,
        "--json",
        "slice",
        "create",
        "--name",
        "plc-site0_cli",
        "--slivers",
        "2",
        "--resources",
        "cpu=100m,memory=64MiB",
        "--duration",
        "10m",
    ];
    let (code, stdout, stderr) = cli(&args).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let created: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(created["leases"].as_array().unwrap().len(), 2, "{stdout}");
    assert_eq!(net.all_leases().len(), 2);
    let args = [
        "--config",
        &cfg_agents,
        "slice",
        "exec",
        "plc-site0_cli",
        "--",
        "sh",
        "-c",
        "exit 3",
    ];
    // Nothing runs on memory slivers: not exit 0 (nor the command's 3) but `not_run`, and
    // every sliver's line says nothing ran.
    let (code, stdout, stderr) = cli(&args).await;
    assert_eq!(code, ExitClass::NotRun.code(), "{stdout}{stderr}");
    assert_eq!(code, 10, "not_run's documented exit code");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains(NOT_RUN_MESSAGE.trim_end()))
            .count(),
        2,
        "{stdout}"
    );
    assert!(!stdout.contains("exit 3"), "{stdout}");
    // Keys through the binary: add (one quoted argument), list, del by comment.
    let key_line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample bob@cli";
    for (action, arg, want) in [
        ("add", Some(key_line), serde_json::json!([key_line])),
        ("list", None, serde_json::json!([key_line])),
        ("del", Some("bob@cli"), serde_json::json!([])),
    ] {
        let mut args = vec![
            "--config",
            &cfg_agents,
            "--json",
            "slice",
            "keys",
            "plc-site0_cli",
            action,
        ];
        args.extend(arg);
        let (code, stdout, stderr) = cli(&args).await;
        assert_eq!(code, 0, "keys {action}: {stdout}{stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let slivers = v["slivers"].as_array().unwrap();
        assert_eq!(slivers.len(), 2, "{v}");
        for s in slivers {
            assert_eq!(s["keys"], want, "keys {action}: {v}");
        }
    }
    // Unknown slice: exit 8.
    let args = ["--config", &cfg_agents, "slice", "status", "plc-site0_nope"];
    let (code, _, stderr) = cli(&args).await;
    assert_eq!(code, ExitClass::NotFound.code(), "{stderr}");
    let args = ["--config", &cfg_agents, "slice", "delete", "plc-site0_cli"];
    let (code, stdout, stderr) = cli(&args).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(net.all_leases().is_empty());

    // Refused, 5: the principal (site plc-site0) asks for a slice under another site's prefix,
    // which the agents' policy does not allow it; the rule is named, nothing is recorded.
    for json in [false, true] {
        let mut args = vec!["--config", &cfg_agents];
        if json {
            args.push("--json");
        }
        args.extend([
            "slice",
            "create",
            "--name",
            "ple-site0_theirs",
            "--slivers",
            "1",
            "--resources",
            "cpu=100m,memory=64MiB",
            "--duration",
            "10m",
        ]);
        let (code, stdout, stderr) = cli(&args).await;
        assert_eq!(code, ExitClass::Refused.code(), "{stdout}{stderr}");
        if json {
            let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            assert_eq!(v["ok"], false, "{v}");
            assert_eq!(v["exit_code"], 5, "{v}");
            assert_eq!(v["reason"], "policy", "{v}");
            assert!(v["error"].as_str().unwrap().contains("slice-prefix"), "{v}");
        } else {
            assert!(stderr.contains("slice-prefix"), "{stderr}");
        }
    }
    assert!(net.all_leases().is_empty());
    let args = ["--config", &cfg_agents, "--json", "slice", "list"];
    let (code, stdout, _) = cli(&args).await;
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list["slices"].as_array().unwrap().len(), 0, "{stdout}");

    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_acquires_only_for_its_caller() {
    let net = Testnet::start(1).await;
    let mallory = SecretKey::generate();
    let client = Overlay::start(
        &mallory,
        OverlayConfig {
            listen: vec![],
            ..OverlayConfig::loopback()
        },
        Default::default(),
    )
    .await
    .unwrap();
    let addr: federation::overlay::Multiaddr = net.broker_addr.parse().unwrap();
    let broker_key = net.broker.overlay.local_key();
    client.add_addresses(&broker_key, vec![addr]).await.unwrap();
    let mut request = spec("plc-site0_x", 1, AcquireMode::AllOrNothing)
        .to_request(net.principal.public(), "plc")
        .unwrap();
    let call =
        broker::wire::BrokerCall::AcquireSlice(broker::wire::SliceAsk::new(request.clone(), None));
    match within(client.request::<broker::wire::BrokerCallProtocol>(
        &broker_key,
        call,
        Duration::from_secs(10),
    ))
    .await
    {
        Err(OverlayError::Rejected(reply)) => {
            assert_eq!(reply.reason.code(), "policy");
            assert!(reply.message.contains("only for the caller"), "{reply}");
        }
        other => panic!("{other:?}"),
    }
    // FindSlice is open to anyone, and works with the plain schema message too.
    request.target = SliverTarget::Count(2);
    let plain = capability_schema::protocol::BrokerRequest::FindSlice(request);
    match within(client.request::<federation::overlay::BrokerProtocol>(
        &broker_key,
        plain,
        Duration::from_secs(10),
    ))
    .await
    .unwrap()
    {
        BrokerResponse::Plan(plan) => {
            assert!(plan.satisfiable, "{}", plan.explanation);
            let feds: BTreeSet<_> = plan.chosen.iter().map(|s| s.federation.clone()).collect();
            assert_eq!(feds.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    // The broker's HTTP endpoint counts it.
    let http = net.broker.http.unwrap();
    let body = within(tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(http).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }))
    .await
    .unwrap();
    assert!(body.contains("planetmesh_broker_finds_total 1"), "{body}");
    assert!(
        body.contains("planetmesh_broker_acquisitions_total{outcome=\"refused\"} 1"),
        "{body}"
    );
    client.shutdown().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_adopts_a_lease_granted_just_before_a_crash() {
    let net = Testnet::start(1).await;
    let state = tempfile::tempdir().unwrap();
    let m = net.manager(state.path(), false).await;
    let request = spec("plc-site0_crash", 2, AcquireMode::AllOrNothing)
        .to_request(net.principal.public(), "plc")
        .unwrap();
    let name = request.name.clone();
    // What `create` does up to the redeems: the slice and its tickets are stored first.
    m.state
        .create_slice(&slicectl::state::SliceRecord {
            request: request.clone(),
            lease_secs: None,
            created_at: federation::unix_now(),
        })
        .unwrap();
    let acquired = within(m.session.acquire(&request)).await.unwrap();
    let tickets: Vec<slicectl::state::TicketEntry> = acquired
        .tickets
        .iter()
        .map(|t| slicectl::state::TicketEntry {
            ticket: t.clone(),
            site: "?".into(),
            not_after: federation::unix_now() + 3600,
        })
        .collect();
    m.state.add_tickets(&name, &tickets).unwrap();
    // One node grants its lease, and the process dies before storing it.
    let t = &tickets[0].ticket;
    let redeem = capability_schema::protocol::NodeRequest::Redeem {
        ticket: t.ticket.clone(),
        until: None,
    };
    within(m.session.node_call(t.node, &t.addresses, redeem))
        .await
        .unwrap();
    // Sync redeems the other ticket and adopts the lease of the spent one.
    let synced = within(m.sync(Some(&name))).await.unwrap();
    assert_eq!(synced.class, ExitClass::Ok, "{:#?}", synced.lines);
    assert_eq!(m.state.leases(&name).unwrap().len(), 2);
    assert!(m.state.tickets(&name).unwrap().is_empty());
    assert_eq!(net.all_leases().len(), 2, "no lease was made twice");
    let deleted = within(m.delete(&name)).await.unwrap();
    assert_eq!(deleted.class, ExitClass::Ok, "{:#?}", deleted.lines);
    assert!(net.all_leases().is_empty());
    m.session.shutdown().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_acquires_again_a_lease_gone_from_its_node() {
    let net = Testnet::start(2).await;
    let state = tempfile::tempdir().unwrap();
    let m = net.manager(state.path(), false).await;
    let name = "plc-site0_gone";
    // One sliver per site: min_sites 4 of the four nodes.
    let mut s = spec(name, 4, AcquireMode::AllOrNothing);
    s.constraints.min_sites = 4;
    let created = within(m.create(&s)).await.unwrap();
    assert_eq!(created.class, ExitClass::Ok, "{:#?}", created.lines);
    let leases = m.state.leases(name).unwrap();
    assert_eq!(leases.len(), 4);

    // Behind slicectl's back, the lease on one node is released at the node itself.
    let victim = leases[1].clone();
    let release = capability_schema::protocol::NodeRequest::Release {
        lease_id: victim.lease.lease_id.clone(),
    };
    within(
        m.session
            .node_call(victim.lease.node, &victim.addresses, release),
    )
    .await
    .unwrap();
    let node = net
        .nodes
        .iter()
        .find(|n| n.key == victim.lease.node)
        .unwrap();
    assert!(node.leases().is_empty());
    // The local state still believes in it; status says the node does not.
    assert_eq!(m.state.leases(name).unwrap().len(), 4);
    let status = within(m.status(name)).await.unwrap();
    assert_eq!(status.class, ExitClass::Partial, "{:#?}", status.lines);

    // Sync asks every node, forgets the gone lease and acquires the sliver again. With
    // min_sites kept, the only placement is the node that lost it (the fourth site).
    let synced = within(m.sync(Some(name))).await.unwrap();
    assert_eq!(synced.class, ExitClass::Ok, "{:#?}", synced.lines);
    let slice = &synced.json["slices"][0];
    assert_eq!(slice["gone"].as_array().unwrap().len(), 1, "{slice}");
    assert_eq!(
        slice["gone"][0]["lease_id"],
        victim.lease.lease_id.as_str(),
        "{slice}"
    );
    assert_eq!(slice["held"], 4, "{slice}");
    assert_eq!(slice["sites"], 4, "{slice}");
    assert!(
        synced
            .lines
            .iter()
            .any(|l| l.contains("gone from its node")),
        "{:#?}",
        synced.lines
    );
    let after = m.state.leases(name).unwrap();
    assert_eq!(after.len(), 4);
    let renewed = after
        .iter()
        .find(|l| l.lease.node == victim.lease.node)
        .expect("the sliver is back on its node");
    assert_ne!(renewed.lease.lease_id, victim.lease.lease_id);
    assert_eq!(node.leases().len(), 1);
    let on_nodes: BTreeSet<String> = net.all_leases().into_iter().map(|l| l.lease_id).collect();
    let stored: BTreeSet<String> = after.iter().map(|l| l.lease.lease_id.clone()).collect();
    assert_eq!(on_nodes, stored);
    // A second sync finds nothing to do.
    let again = within(m.sync(Some(name))).await.unwrap();
    assert_eq!(again.class, ExitClass::Ok, "{:#?}", again.lines);
    assert_eq!(again.json["slices"][0]["gone"], serde_json::json!([]));

    let deleted = within(m.delete(name)).await.unwrap();
    assert_eq!(deleted.class, ExitClass::Ok, "{:#?}", deleted.lines);
    assert!(net.all_leases().is_empty());
    m.session.shutdown().await;
    net.stop().await;
}

/// The JSON error `--json` prints on stdout, checked against the exit code.
fn json_error(code: i32, stdout: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"));
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["exit_code"], code, "{v}");
    assert_eq!(v["reason"], ExitClass::of_code(code).unwrap().name(), "{v}");
    v
}

#[test]
fn bad_flags_and_missing_setup_have_their_exit_codes_in_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let missing_key = dir.path().join("no-such.key");
    let missing_key = missing_key.to_str().unwrap();

    // A flag slicectl does not have: usage, 2 (clap's own message, and as JSON).
    let (code, stdout, stderr) = slicectl(&["slice", "list", "--no-such-flag"]);
    assert_eq!(code, ExitClass::Usage.code(), "{stdout}{stderr}");
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
    let (code, stdout, stderr) = slicectl(&["--json", "slice", "list", "--no-such-flag"]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    let v = json_error(code, &stdout);
    assert!(
        v["error"].as_str().unwrap().contains("--no-such-flag"),
        "{v}"
    );
    // A bad value for a flag: usage too.
    let (code, stdout, _) = slicectl(&["--json", "--timeout", "soon", "slice", "list"]);
    json_error(code, &stdout);
    assert_eq!(code, 2);
    // A bad spec value is slicectl's own usage failure.
    let args = [
        "--json",
        "--key",
        missing_key,
        "--state-dir",
        state,
        "slice",
        "create",
        "--name",
        "plc-site0_x",
        "--slivers",
        "1",
        "--mode",
        "sometimes",
    ];
    let (code, stdout, _) = slicectl(&args);
    assert_eq!(code, 2, "{stdout}");
    let v = json_error(code, &stdout);
    assert!(v["error"].as_str().unwrap().contains("sometimes"), "{v}");

    // The key file is missing: setup, 3, naming the file.
    let args = [
        "--key",
        missing_key,
        "--state-dir",
        state,
        "slice",
        "status",
        "x",
    ];
    let (code, stdout, stderr) = slicectl(&args);
    assert_eq!(code, ExitClass::Setup.code(), "{stdout}{stderr}");
    assert!(stderr.contains("no-such.key"), "{stderr}");
    let args = [
        "--json",
        "--key",
        missing_key,
        "--state-dir",
        state,
        "slice",
        "status",
        "x",
    ];
    let (code, stdout, stderr) = slicectl(&args);
    assert_eq!(code, 3, "{stdout}{stderr}");
    let v = json_error(code, &stdout);
    assert!(v["error"].as_str().unwrap().contains("no-such.key"), "{v}");
    // No key and no home to find one in: setup, 3, saying what to give.
    let out = Command::new(env!("CARGO_BIN_EXE_slicectl"))
        .args(["--json", "--state-dir", state, "slice", "status", "x"])
        .env_clear()
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let v = json_error(3, &stdout);
    assert!(v["error"].as_str().unwrap().contains("give --key"), "{v}");
    // No state directory either.
    let out = Command::new(env!("CARGO_BIN_EXE_slicectl"))
        .args(["--json", "slice", "list"])
        .env_clear()
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let v = json_error(3, &stdout);
    assert!(
        v["error"].as_str().unwrap().contains("give --state-dir"),
        "{v}"
    );

    // keygen answers JSON; a second keygen to the same file is refused (usage), in JSON.
    let key = dir.path().join("keys/principal.key");
    let key = key.to_str().unwrap();
    let (code, stdout, stderr) = slicectl(&["--json", "keygen", "--out", key]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let made: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(made["ok"], true, "{made}");
    assert_eq!(made["key_file"], key, "{made}");
    assert!(
        made["principal"].as_str().unwrap().starts_with("ed25519/"),
        "{made}"
    );
    assert_eq!(made["exit_code"], 0, "{made}");
    let (code, stdout, _) = slicectl(&["--json", "keygen", "--out", key]);
    assert_eq!(code, 2, "{stdout}");
    let v = json_error(code, &stdout);
    assert!(v["error"].as_str().unwrap().contains("exists"), "{v}");
}

#[test]
fn help_lists_exit_codes_and_explains_each_command() {
    let (code, stdout, stderr) = slicectl(&["--help"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("Exit codes:"), "{stdout}");
    for class in ExitClass::ALL {
        let row = format!("  {:<2} {}", class.code(), class.name().replace('_', " "));
        assert!(stdout.contains(&row), "{row:?} missing from:\n{stdout}");
    }
    for word in ["keygen", "slice"] {
        assert!(stdout.contains(word), "{stdout}");
    }
    let (code, stdout, _) = slicectl(&["slice", "--help"]);
    assert_eq!(code, 0);
    for sub in [
        "create", "plan", "status", "renew", "delete", "exec", "spawn", "logs", "keys", "sync",
        "list",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing from:\n{stdout}"
        );
    }
    // Spot checks: each subcommand's help says what it does and what it takes.
    for (args, says) in [
        (
            vec!["slice", "sync", "--help"],
            vec!["acquired again", "unredeemed tickets"],
        ),
        (
            vec!["slice", "exec", "--help"],
            vec!["prefixed by node", "--timeout-cmd"],
        ),
        (
            vec!["slice", "spawn", "--help"],
            vec!["pid", "slicectl slice logs"],
        ),
        (vec!["slice", "logs", "--help"], vec!["--tail", "spawn"]),
        (vec!["slice", "keys", "--help"], vec!["add", "del", "list"]),
        (vec!["slice", "renew", "--help"], vec!["--for", "granted"]),
        (
            vec!["slice", "create", "--help"],
            vec!["--min-sites", "--mode", "in parallel"],
        ),
    ] {
        let (code, stdout, stderr) = slicectl(&args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        for s in says {
            assert!(stdout.contains(s), "{args:?} lacks {s:?}:\n{stdout}");
        }
    }
}
