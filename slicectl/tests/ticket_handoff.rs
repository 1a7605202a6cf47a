//! Tickets in users' hands, over real daemons (the in-process testnet: agents, memory-isolation
//! nodes, a broker) and the `slicectl` binary: alice acquires a ticket without redeeming it,
//! reads it, narrows it and hands it to bob by his public key, all offline; bob redeems it at
//! the node, which walks the holder chain, and uses the sliver. Alice (no longer the last
//! holder) and carol (never in the chain) presenting bob's ticket are refused by the node; a
//! widening is refused by slicectl before any node sees it, and by the node when crafted by
//! hand. A ticket imported offline is redeemed by `slice sync`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod testnet;

use std::path::Path;
use std::process::Command;

use biscuit_auth::builder::BlockBuilder;
use capability_schema::protocol::{NodeRequest, NodeResponse, TicketBytes};
use capability_schema::ticket::Ticket;
use capability_schema::{PublicKey, Rejection, SecretKey};
use slicectl::client::{Endpoints, Session, Settings};
use slicectl::config::Identity;
use slicectl::exit::ExitClass;
use testnet::{CALL_TIMEOUT, Testnet, within};

const SLICE: &str = "plc-site0_shared";

/// Runs the binary off the runtime's threads, bounded in time; answers the exit code, stdout
/// and stderr.
async fn cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
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

/// Runs the binary with `--json`; answers the exit code and the JSON it printed.
async fn cli_json(args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = cli(&all).await;
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (code, json)
}

/// A collaborator with a key file and a state directory, and no broker: what bob and carol
/// have.
struct Person {
    key: SecretKey,
    key_file: String,
    state_dir: String,
}

impl Person {
    fn new(dir: &Path, name: &str) -> Person {
        let key = SecretKey::generate();
        let key_file = dir.join(format!("{name}.key"));
        key.save(&key_file).unwrap();
        Person {
            key,
            key_file: key_file.to_str().unwrap().to_owned(),
            state_dir: dir
                .join(format!("{name}-state"))
                .to_str()
                .unwrap()
                .to_owned(),
        }
    }

    /// `--key … --state-dir …` then `args`.
    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["--key", &self.key_file, "--state-dir", &self.state_dir];
        all.extend_from_slice(args);
        all
    }

    async fn session(&self) -> Session {
        let key_file = Path::new(&self.key_file);
        let identity = Identity::load(key_file, None).unwrap();
        let settings = Settings {
            timeout: CALL_TIMEOUT,
            concurrency: 4,
        };
        within(Session::connect(identity, &Endpoints::default(), settings))
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_narrows_and_hands_a_ticket_to_bob_who_redeems_and_uses_it() {
    let net = Testnet::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let alice_state = dir.path().join("alice-state");
    let alice_cfg = net.cli_config(&alice_state, false);
    let alice_cfg = alice_cfg.to_str().unwrap();
    let bob = Person::new(dir.path(), "bob");
    let carol = Person::new(dir.path(), "carol");
    let node = net.nodes.iter().find(|n| n.federation == "plc").unwrap();
    let node_key = node.key.to_string();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    // Alice acquires a ticket and keeps it unredeemed: no lease anywhere.
    let (code, acquired) = cli_json(&[
        "--config",
        alice_cfg,
        "ticket",
        "acquire",
        "--name",
        SLICE,
        "--node",
        &node_key,
        "--resources",
        "cpu=500m,memory=256MiB,ports=0",
        "--duration",
        "1h",
    ])
    .await;
    assert_eq!(code, 0, "{acquired}");
    let reference = acquired["tickets"][0]["ref"].as_str().unwrap().to_owned();
    assert!(net.all_leases().is_empty(), "nothing is redeemed yet");

    // The offline commands never touch the network: they run with a broker that does not
    // exist (any command that connected would fail to reach it).
    let dead_broker = format!("/ip4/127.0.0.1/tcp/9/p2p/{}", peer_id_of_nobody());
    let offline = |args: &[&str]| -> Vec<String> {
        let mut all = vec![
            "--config",
            alice_cfg,
            "--broker",
            &dead_broker,
            "--timeout",
            "1",
        ];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect()
    };

    // Show: what the ticket grants, read without the agent's key.
    let args = offline(&["ticket", "show", &reference]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = cli(&refs).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    for want in [
        &format!("slice {SLICE} (regular)"),
        &node_key,
        "federation plc",
        "cpu=500m",
        "valid now, ends in",
        "redeem, renew",
        "(you)",
        "micro-credits",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from\n{stdout}");
    }
    let (code, shown) = cli_json(&refs).await;
    assert_eq!(code, 0, "{shown}");
    assert_eq!(shown["holders"].as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown["node"], node_key.as_str(), "{shown}");
    assert_eq!(shown["slice"], SLICE, "{shown}");
    let expires = shown["expires_in_secs"].as_u64().unwrap();
    assert!((3500..=3600).contains(&expires), "{shown}");

    // A widening is refused locally, and writes nothing.
    let too_much = path("too-much.ticket");
    let args = offline(&[
        "ticket",
        "attenuate",
        &reference,
        "--resources",
        "cpu=2",
        "--out",
        &too_much,
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = cli(&refs).await;
    assert_eq!(code, ExitClass::Usage.code(), "{stdout}{stderr}");
    assert!(
        stderr.contains("cpu: 2 cores asked but the ticket grants only 500m"),
        "{stderr}"
    );
    assert!(!Path::new(&too_much).exists());

    // Narrowed: a quarter core, half an hour, no renew.
    let narrowed = path("narrowed.ticket");
    let args = offline(&[
        "ticket",
        "attenuate",
        &reference,
        "--resources",
        "cpu=250m",
        "--until",
        "30m",
        "--no-renew",
        "--out",
        &narrowed,
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = cli(&refs).await;
    assert_eq!(code, 0, "{stdout}{stderr}");

    // Handed to bob by his public key (which `ticket key` tells him), signed with alice's key.
    let for_bob = path("bob.ticket");
    let bob_key = bob.key.public().to_string();
    let (code, me) = cli_json(&bob.args(&["ticket", "key"])).await;
    assert_eq!(code, 0, "{me}");
    assert_eq!(me["principal"], bob_key.as_str(), "{me}");
    let args = offline(&[
        "ticket", "delegate", &narrowed, "--to", &bob_key, "--out", &for_bob,
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = cli(&refs).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let alice_state_handle = slicectl::state::State::open(&alice_state).unwrap();
    assert!(
        alice_state_handle.slice(SLICE).is_err(),
        "a slice whose only ticket was handed on is forgotten by alice: {stdout}"
    );
    assert!(alice_state_handle.tickets(SLICE).unwrap().is_empty());
    drop(alice_state_handle);

    // Bob reads it: alice then him, narrowed.
    let (code, shown) = cli_json(&bob.args(&["ticket", "show", &for_bob])).await;
    assert_eq!(code, 0, "{shown}");
    assert_eq!(
        shown["holders"],
        serde_json::json!([net.principal.public().to_string(), bob_key]),
        "{shown}"
    );
    assert_eq!(shown["you_hold_it"], true, "{shown}");
    assert_eq!(shown["grant"]["cpu_millis"], 250, "{shown}");
    assert_eq!(
        shown["operations"],
        serde_json::json!(["redeem"]),
        "{shown}"
    );
    assert!(
        shown["expires_in_secs"].as_u64().unwrap() <= 1800,
        "{shown}"
    );
    assert_eq!(shown["delegations"], 1, "{shown}");
    assert_eq!(shown["attenuations"], 1, "{shown}");

    // Alice, no longer the last holder, presents bob's ticket: the node refuses her.
    let (code, refused) = cli_json(&["--config", alice_cfg, "ticket", "redeem", &for_bob]).await;
    assert_eq!(code, ExitClass::Refused.code(), "{refused}");
    assert_eq!(refused["reason"], "ticket", "{refused}");
    assert_eq!(refused["check"], "wrong_presenter", "{refused}");
    // Carol, never in the chain, is refused too, and keeps nothing of it.
    let (code, refused) = cli_json(&carol.args(&["ticket", "redeem", &for_bob])).await;
    assert_eq!(code, ExitClass::Refused.code(), "{refused}");
    assert_eq!(refused["check"], "wrong_presenter", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains(&format!("presented by {}", carol.key.public())),
        "{refused}"
    );
    assert!(
        net.all_leases().is_empty(),
        "no refused redeem left a lease"
    );

    // A widening crafted by hand: bob appends a block claiming more cpu than the agent
    // granted. slicectl refuses to present it; presented anyway, the node refuses it.
    let bob_ticket = Ticket::read_text(
        std::fs::read_to_string(&for_bob)
            .unwrap()
            .lines()
            .find(|l| !l.starts_with('#') && !l.trim().is_empty())
            .unwrap(),
    )
    .unwrap();
    let widened = bob_ticket
        .as_biscuit()
        .append(
            BlockBuilder::new()
                .code("attenuation({\"cpu_millis\": 4000});")
                .unwrap(),
        )
        .unwrap();
    let widened_file = path("widened.ticket");
    std::fs::write(&widened_file, format!("{}\n", widened.to_base64().unwrap())).unwrap();
    let (code, stdout, stderr) = cli(&bob.args(&["ticket", "redeem", &widened_file])).await;
    assert_eq!(code, ExitClass::Usage.code(), "{stdout}{stderr}");
    assert!(stderr.contains("tries to grant more resources"), "{stderr}");
    let session = bob.session().await;
    let addresses: Vec<String> = node
        .running
        .as_ref()
        .unwrap()
        .overlay
        .listen_addrs()
        .await
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    let answer = within(session.node_call(
        node.key,
        &addresses,
        NodeRequest::Redeem {
            ticket: TicketBytes(widened.to_vec().unwrap()),
            until: None,
        },
    ))
    .await;
    match answer {
        Err(broker::acquire::CallError::Refused(reply)) => {
            assert!(
                matches!(&reply.reason, Rejection::Ticket { check, .. } if check == "widened"),
                "{reply:?}"
            );
        }
        other => panic!("the node must refuse a widened ticket: {other:?}"),
    }
    assert!(net.all_leases().is_empty());

    // Bob redeems his ticket: he holds the lease, for what alice granted him.
    let (code, redeemed) = cli_json(&bob.args(&["ticket", "redeem", &for_bob])).await;
    assert_eq!(code, 0, "{redeemed}");
    assert_eq!(redeemed["holder"], bob_key.as_str(), "{redeemed}");
    let leases = net.all_leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].holder, bob.key.public());
    assert_eq!(leases[0].resources.cpu_millis, 250);
    assert_eq!(leases[0].slice, SLICE);
    let lease_id = leases[0].lease_id.clone();

    // And uses it: exec reaches the sliver (memory isolation runs nothing and says so, the
    // `not_run` class, after the node checked bob holds the lease).
    let (code, out) = cli_json(&bob.args(&["slice", "exec", SLICE, "--", "hostname"])).await;
    assert_eq!(code, ExitClass::NotRun.code(), "{out}");
    assert_eq!(out["slivers"][0]["not_run"], true, "{out}");
    // Alice cannot use bob's lease.
    let alice_session = within(Session::connect(
        net.identity(),
        &Endpoints::default(),
        Settings {
            timeout: CALL_TIMEOUT,
            concurrency: 4,
        },
    ))
    .await
    .unwrap();
    let answer = within(alice_session.node_call(
        node.key,
        &addresses,
        NodeRequest::Exec {
            lease_id: lease_id.clone(),
            argv: vec!["hostname".into()],
            stdin: Vec::new(),
            timeout_ms: 5000,
        },
    ))
    .await;
    assert!(
        matches!(&answer, Err(broker::acquire::CallError::Refused(r)) if r.reason.code() == "not_holder"),
        "{answer:?}"
    );
    // No renew: alice took that away.
    let (code, out) = cli_json(&bob.args(&["slice", "renew", SLICE, "--for", "20m"])).await;
    assert_eq!(code, ExitClass::Refused.code(), "{out}");

    // Redeemed once: presenting it again finds the lease, never a second sliver.
    let (code, again) = cli_json(&bob.args(&["ticket", "redeem", &for_bob])).await;
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["already_redeemed"], true, "{again}");
    assert_eq!(again["lease_id"], lease_id.as_str(), "{again}");
    assert_eq!(net.all_leases().len(), 1);
    let bob_state = slicectl::state::State::open(Path::new(&bob.state_dir)).unwrap();
    assert!(
        bob_state.tickets(SLICE).unwrap().is_empty(),
        "no ticket left over"
    );
    assert_eq!(bob_state.leases(SLICE).unwrap().len(), 1);
    drop(bob_state);

    // Bob's slice commands work as for his own slices: delete releases the lease.
    let (code, out) = cli_json(&bob.args(&["slice", "delete", SLICE])).await;
    assert_eq!(code, 0, "{out}");
    assert!(net.all_leases().is_empty());
    assert!(matches!(
        answer_of(&session, node.key, &addresses, &lease_id).await,
        Some(false)
    ));

    // The other way in: a ticket of alice's slices handed on whole, to the key file bob
    // sent; bob imports it offline and `slice sync` redeems it.
    let other = net.nodes.iter().find(|n| n.federation == "ple").unwrap();
    let (code, acquired) = cli_json(&[
        "--config",
        alice_cfg,
        "ticket",
        "acquire",
        "--name",
        "plc-site0_second",
        "--node",
        &other.key.to_string(),
        "--resources",
        "cpu=100m,memory=64MiB,ports=0",
        "--duration",
        "1h",
    ])
    .await;
    assert_eq!(code, 0, "{acquired}");
    let reference = acquired["tickets"][0]["ref"].as_str().unwrap().to_owned();
    let bob_key_file = path("bob.pub");
    std::fs::write(&bob_key_file, format!("{bob_key}\n")).unwrap();
    let second = path("second.ticket");
    let (code, stdout, stderr) = cli(&[
        "--config",
        alice_cfg,
        "ticket",
        "delegate",
        &reference,
        "--to",
        &bob_key_file,
        "--out",
        &second,
    ])
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    // Bob imports the bare text (as pasted from a message: no `#` hints), with the node's
    // address given by hand.
    let text = std::fs::read_to_string(&second)
        .unwrap()
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap()
        .to_owned();
    let other_address = other
        .running
        .as_ref()
        .unwrap()
        .overlay
        .listen_addrs()
        .await
        .unwrap()[0]
        .to_string();
    let (code, imported) =
        cli_json(&bob.args(&["ticket", "import", &text, "--address", &other_address])).await;
    assert_eq!(code, 0, "{imported}");
    assert_eq!(
        imported["addresses"],
        serde_json::json!([other_address]),
        "{imported}"
    );
    assert!(net.all_leases().is_empty(), "importing redeems nothing");
    let (code, synced) = cli_json(&bob.args(&["slice", "sync", "plc-site0_second"])).await;
    assert_eq!(code, 0, "{synced}");
    let leases = net.all_leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].holder, bob.key.public());
    assert_eq!(leases[0].node, other.key);
    let (code, out) = cli_json(&bob.args(&["slice", "delete", "plc-site0_second"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(net.all_leases().is_empty());

    alice_session.shutdown().await;
    session.shutdown().await;
    net.stop().await;
}

/// Whether the node still has lease `lease_id` (none: no answer).
async fn answer_of(
    session: &Session,
    node: PublicKey,
    addresses: &[String],
    lease_id: &str,
) -> Option<bool> {
    match within(session.node_call(node, addresses, NodeRequest::Status)).await {
        Ok(NodeResponse::Status(status)) => Some(
            status
                .leases
                .iter()
                .any(|l| l.verify_by(&node).is_ok_and(|l| l.lease_id == lease_id)),
        ),
        _ => None,
    }
}

/// A peer id no daemon has: a fresh key's.
fn peer_id_of_nobody() -> String {
    let key = SecretKey::generate().public();
    federation::overlay::peer_id(&key).to_string()
}

/// `slicectl ticket --help` lists every ticket command, and each one's help says what it
/// takes and that it is offline where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_help_explains_each_command() {
    let (code, stdout, stderr) = cli(&["ticket", "--help"]).await;
    assert_eq!(code, 0, "{stderr}");
    for sub in [
        "acquire",
        "show",
        "attenuate",
        "delegate",
        "key",
        "import",
        "redeem",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing from:\n{stdout}"
        );
    }
    for (sub, says) in [
        ("show", vec!["SLICE/NODE", "Offline", "holder chain"]),
        (
            "attenuate",
            vec!["--resources", "--until", "--no-renew", "--out", "refused"],
        ),
        ("delegate", vec!["--to", "public key", "Offline"]),
        ("import", vec!["slice sync", "Offline"]),
        ("redeem", vec!["--lease", "holder chain"]),
        ("acquire", vec!["unredeemed", "--slivers"]),
    ] {
        let (code, stdout, stderr) = cli(&["ticket", sub, "--help"]).await;
        assert_eq!(code, 0, "{sub}: {stderr}");
        for s in says {
            assert!(stdout.contains(s), "ticket {sub} lacks {s:?}:\n{stdout}");
        }
    }
    // A ticket that is no file, no SLICE/NODE and no ticket text is a usage failure, in
    // text and in JSON.
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().to_str().unwrap();
    let (code, _, stderr) = cli(&["--state-dir", dir, "ticket", "show", "no/such"]).await;
    assert_eq!(code, ExitClass::Usage.code(), "{stderr}");
    assert!(stderr.contains("is not a ticket file"), "{stderr}");
    let (code, json) = cli_json(&["--state-dir", dir, "ticket", "show", "AAAA"]).await;
    assert_eq!(code, ExitClass::Usage.code(), "{json}");
    assert_eq!(json["ok"], false, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("not readable"),
        "{json}"
    );
}
