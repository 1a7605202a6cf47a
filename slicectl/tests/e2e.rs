//! End to end on real daemons in this process (two federations, two agents, memory-isolation
//! nodes, a broker) over loopback TCP: a slice spanning both federations is created, used,
//! renewed and deleted; a node is down during create; an impossible request is explained;
//! the `slicectl` binary itself is driven for exit codes and JSON.

mod testnet;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use capability_schema::protocol::BrokerResponse;
use capability_schema::slice::SliverTarget;
use capability_schema::{AcquireMode, SecretKey};
use federation::{Overlay, OverlayConfig, OverlayError};
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

    // Exec in every sliver, output prefixed by node.
    let out = within(m.exec("plc-site0_demo", vec!["hostname".into()], 5000))
        .await
        .unwrap();
    assert_eq!(out.class, ExitClass::Ok);
    assert_eq!(out.lines.len(), 4, "{:#?}", out.lines);
    for l in &leases {
        assert!(
            out.lines
                .iter()
                .any(|line| line.starts_with(&format!("[{}]", l.label()))
                    && line.contains("hostname")),
            "{:#?}",
            out.lines
        );
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
        "echo",
        "hi",
    ];
    let (code, stdout, stderr) = cli(&args).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| l.contains("echo hi")).count(),
        2,
        "{stdout}"
    );
    // Unknown slice: exit 8.
    let args = ["--config", &cfg_agents, "slice", "status", "plc-site0_nope"];
    let (code, _, stderr) = cli(&args).await;
    assert_eq!(code, ExitClass::NotFound.code(), "{stderr}");
    let args = ["--config", &cfg_agents, "slice", "delete", "plc-site0_cli"];
    let (code, stdout, stderr) = cli(&args).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(net.all_leases().is_empty());

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
