//! A node behind NAT, end to end (root; under CI it must run).
//!
//! A testnet of one federation (two nodes, an agent, a broker) in network namespaces on a
//! bridge, except `node1`: it lives in a "home" namespace with a private subnet
//! (192.168.77.0/24) behind a router namespace that masquerades it (nft) onto the bridge. The
//! public side cannot reach the home subnet at all (its route there is `unreachable`, so no
//! packet leaves the test's namespaces). The node's config takes docs/DEPLOY.md's `nat-node`
//! block (its relay: the broker) and the broker's takes the `nat-relay` block. Then, with
//! `slicectl` on the public side: the node is found (its ad, with its `/p2p-circuit` address,
//! reaches the broker), planned, redeemed at and exec'd in. The node's log says the user's
//! connection came through the relay, and whether a hole punch then made it direct.
//!
//! Everything the test makes (processes, slivers, namespaces, links, cgroups) goes when it
//! ends, failed or not (drop guard).

// A failed unwrap fails the run; synchronous test code polling processes sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testnet::generate::{self, Manifest, Network};
use testnet::launch;
use testnet::topology::Topology;

const HOME_SUBNET: &str = "192.168.77.0/24";
const HOME_ROUTER: &str = "192.168.77.1";
const HOME_NODE: &str = "192.168.77.2";
/// The router's address on the testnet's bridge (hosts are numbered from 10.250.0.2 up).
const ROUTER_PUBLIC: &str = "10.250.254.254";
const NATED: &str = "node1";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(ns: &str, program: &str, args: &[&str]) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {} in {ns}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The testnet, the NAT around `node1`, and their removal.
struct Testbed {
    dir: tempfile::TempDir,
    manifest: Manifest,
    router: String,
    home: String,
}

impl Testbed {
    fn testnet_dir(&self) -> PathBuf {
        self.dir.path().join("testnet")
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Daemons, slivers, cgroups, the hosts' namespaces (the home one among them) and the
        // bridge; then the router's namespace (its links go with it).
        if let Err(e) = launch::stop_all(&self.manifest, &self.testnet_dir()) {
            eprintln!("warning: taking the testnet down: {e:#}");
        }
        for ns in [&self.home, &self.router] {
            if Path::new(&format!("/run/netns/{ns}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
}

/// The fenced block of docs/DEPLOY.md whose fence says ```` ```toml NAME ````.
fn guide_block(name: &str) -> String {
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/DEPLOY.md"))
            .unwrap();
    let fence = format!("```toml {name}");
    let start = guide
        .lines()
        .position(|l| l.trim() == fence)
        .unwrap_or_else(|| panic!("docs/DEPLOY.md has no {fence} block"));
    guide
        .lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with("```"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Builds the NAT: router namespace on the bridge masquerading the home subnet; `node1`'s
/// namespace becomes the home one. Public hosts get an `unreachable` route to the home subnet.
fn make_nat(bed: &Testbed) {
    let bridge = testnet::netns::bridge(&bed.manifest);
    let tag = &bed.manifest.tag;
    let (up_out, home_out) = (format!("t{tag}rtr"), format!("t{tag}hom"));
    ip(&["netns", "add", &bed.router]);
    ip(&["netns", "add", &bed.home]);
    // Router <-> bridge.
    ip(&[
        "link",
        "add",
        &up_out,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{up_out}i"),
    ]);
    ip(&["link", "set", &format!("{up_out}i"), "netns", &bed.router]);
    ip(&["link", "set", &up_out, "master", &bridge]);
    ip(&["link", "set", &up_out, "up"]);
    let r = bed.router.as_str();
    ip(&["-n", r, "link", "set", "lo", "up"]);
    ip(&["-n", r, "link", "set", &format!("{up_out}i"), "name", "wan"]);
    ip(&[
        "-n",
        r,
        "addr",
        "add",
        &format!("{ROUTER_PUBLIC}/16"),
        "dev",
        "wan",
    ]);
    ip(&["-n", r, "link", "set", "wan", "up"]);
    // Router <-> home.
    ip(&[
        "-n", r, "link", "add", "lan", "type", "veth", "peer", "name", &home_out,
    ]);
    ip(&["-n", r, "link", "set", &home_out, "netns", &bed.home]);
    ip(&[
        "-n",
        r,
        "addr",
        "add",
        &format!("{HOME_ROUTER}/24"),
        "dev",
        "lan",
    ]);
    ip(&["-n", r, "link", "set", "lan", "up"]);
    let h = bed.home.as_str();
    ip(&["-n", h, "link", "set", "lo", "up"]);
    ip(&["-n", h, "link", "set", &home_out, "name", "eth0"]);
    ip(&[
        "-n",
        h,
        "addr",
        "add",
        &format!("{HOME_NODE}/24"),
        "dev",
        "eth0",
    ]);
    ip(&["-n", h, "link", "set", "eth0", "up"]);
    ip(&["-n", h, "route", "add", "default", "via", HOME_ROUTER]);
    // Forwarding and masquerade, inside the router's namespace only.
    in_ns(r, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);
    in_ns(r, "nft", &["add", "table", "ip", "pmnat"]);
    in_ns(
        r,
        "nft",
        &[
            "add",
            "chain",
            "ip",
            "pmnat",
            "post",
            "{ type nat hook postrouting priority 100 ; }",
        ],
    );
    in_ns(
        r,
        "nft",
        &[
            "add",
            "rule",
            "ip",
            "pmnat",
            "post",
            "oifname",
            "wan",
            "ip",
            "saddr",
            HOME_SUBNET,
            "masquerade",
        ],
    );
    // No public host can reach the home subnet; a dial there fails at once.
    for host in &bed.manifest.hosts {
        if host.plan.name != NATED
            && let Some(ns) = &host.netns
        {
            ip(&["-n", ns, "route", "add", "unreachable", HOME_SUBNET]);
        }
    }
    if let Some(internet) = &bed.manifest.internet {
        ip(&[
            "-n",
            &internet.netns,
            "route",
            "add",
            "unreachable",
            HOME_SUBNET,
        ]);
    }
}

/// `node1`'s config behind NAT: listens on every address (its home one), announces nothing
/// (its ads carry its bound and relayed addresses), HTTP on loopback, other services on its
/// home address, no egress, and the guide's `[nat]` block with the broker as its relay.
fn nated_config(text: &str, own_ip: &str, relay: &str) -> String {
    // Other services bound to its bridge address (e.g. `[ssh] listen`) move to its home one.
    let text = text.replace(&format!("\"{own_ip}:"), &format!("\"{HOME_NODE}:"));
    let mut out: String = text
        .lines()
        .filter(|l| !l.starts_with("announce = "))
        .map(|l| {
            if l.starts_with("http = ") {
                "http = \"127.0.0.1:9180\"".to_owned()
            } else if l.starts_with("public_address = ") {
                "public_address = \"off\"".to_owned()
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let block = guide_block("nat-node");
    let start = block.find("relays = [\"").unwrap() + "relays = [\"".len();
    let end = start + block[start..].find('"').unwrap();
    out.push('\n');
    out.push_str(&format!("{}{relay}{}", &block[..start], &block[end..]));
    out
}

/// Runs `slicectl --json` in namespace `ns` (the public side): its stdout, stderr and exit.
fn slicectl(bed: &Testbed, ns: &str, args: &[&str]) -> (String, String, i32) {
    let bin = launch::bin_dir().unwrap().join("slicectl");
    let config = bed.testnet_dir().join("slicectl.toml");
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(bin)
        .arg("--config")
        .arg(&config)
        .args(["--json", "--timeout", "30"])
        .args(args)
        .current_dir(bed.testnet_dir())
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

fn log_of(bed: &Testbed, host: &str) -> String {
    let host = bed.manifest.host(host).unwrap();
    std::fs::read_to_string(host.log_file()).unwrap_or_default()
}

/// Polls `check` every 200 ms for up to `limit`; panics with `what` and the node's log.
fn wait_for(bed: &Testbed, what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}\n--- {NATED} log:\n{}",
            log_of(bed, NATED)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_node_behind_nat_is_found_planned_redeemed_and_execd_through_a_relay() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the NAT test runs as root under CI"
        );
        eprintln!("skipped: network namespaces and NAT need root");
        return;
    }
    let bins = launch::bin_dir().unwrap();
    let built = ["nodemgr", "agentd", "broker", "slicectl", "sliver-init"]
        .iter()
        .all(|b| bins.join(b).exists());
    if !built {
        assert!(
            std::env::var_os("CI").is_none(),
            "daemon binaries missing in {}: run `cargo build --workspace --bins`",
            bins.display()
        );
        eprintln!("skipped: daemon binaries not built (cargo build --workspace --bins)");
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let topology = Topology {
        federations: 1,
        nodes: 2,
        agents: 1,
        brokers: 1,
    };
    let mut manifest = generate::generate(
        &dir.path().join("testnet"),
        topology,
        Network::Namespaces,
        "linux",
    )
    .unwrap();
    let tag = manifest.tag.clone();
    let router = format!("pmnat{tag}-router");
    let home = format!("pmnat{tag}-home");
    // node1 is not put on the bridge: its namespace is the home one, made below.
    let nated = manifest
        .hosts
        .iter()
        .position(|h| h.plan.name == NATED)
        .unwrap();
    manifest.hosts[nated].netns = None;
    let mut bed = Testbed {
        dir,
        manifest,
        router,
        home,
    };
    testnet::netns::create(&bed.manifest).unwrap();
    bed.manifest.hosts[nated].netns = Some(bed.home.clone());
    make_nat(&bed);

    // The broker relays (the guide's [relay] block: the defaults, written out); node1 names
    // it in the guide's [nat] block.
    let broker = bed.manifest.host("broker0").unwrap().clone();
    let relay = broker.multiaddr();
    let broker_config = std::fs::read_to_string(broker.config_file()).unwrap();
    std::fs::write(
        broker.config_file(),
        format!("{broker_config}\n{}", guide_block("nat-relay")),
    )
    .unwrap();
    let node = bed.manifest.hosts[nated].clone();
    // A node behind NAT is nobody's bootstrap peer: its bridge address no longer exists.
    let gone = format!("{:?}", node.multiaddr());
    let configs = bed
        .manifest
        .hosts
        .iter()
        .map(|h| h.config_file())
        .chain([bed.testnet_dir().join("slicectl.toml")]);
    for file in configs {
        let text = std::fs::read_to_string(&file).unwrap();
        let text = text
            .replace(&format!("{gone}, "), "")
            .replace(&format!(", {gone}"), "")
            .replace(&gone, "");
        std::fs::write(&file, text).unwrap();
    }
    let text = std::fs::read_to_string(node.config_file()).unwrap();
    std::fs::write(node.config_file(), nated_config(&text, &node.ip, &relay)).unwrap();

    if let Some(internet) = &bed.manifest.internet {
        launch::start_internet(internet).unwrap();
    }
    for host in &bed.manifest.hosts {
        launch::start_host(&bed.manifest, host).unwrap();
    }

    // The reservation, and the address through the relay in the node's ad.
    wait_for(
        &bed,
        "the relay reservation",
        Duration::from_secs(30),
        || log_of(&bed, NATED).contains("relay reservation accepted"),
    );
    let circuit_in_ad = || {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", bed.home))
            .args(["--", "curl", "-sf", "http://127.0.0.1:9180/status"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("/p2p-circuit/p2p/")
    };
    wait_for(
        &bed,
        "the /p2p-circuit address in the node's ad",
        Duration::from_secs(30),
        circuit_in_ad,
    );

    // Found and planned: the broker plans a sliver on node1 (retried while the agent learns
    // of the node from its ads).
    let public_ns = bed.manifest.host("agent0").unwrap().netns.clone().unwrap();
    let node_key = node.key.to_string();
    let slice = "fed0-site0_nat";
    let started = Instant::now();
    let created = loop {
        let (stdout, stderr, code) = slicectl(
            &bed,
            &public_ns,
            &[
                "slice",
                "create",
                "--name",
                slice,
                "--node",
                &node_key,
                "--resources",
                "cpu=100m,memory=64MiB,disk=64MiB",
                "--duration",
                "1h",
                "--mode",
                "all-or-nothing",
            ],
        );
        if code == 0 {
            break stdout;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "slice create kept failing (exit {code}):\n{stdout}\n{stderr}\n--- {NATED} log:\n{}",
            log_of(&bed, NATED)
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let create_secs = started.elapsed().as_secs_f64();
    let json: serde_json::Value = serde_json::from_str(&created).unwrap();
    let leases = json["leases"].as_array().cloned().unwrap_or_default();
    assert_eq!(leases.len(), 1, "{created}");
    assert!(
        created.contains(&node_key) || created.contains(&node.plan.name),
        "the lease is on {NATED}: {created}"
    );

    // Exec'd in, through the relay (or the punched connection).
    let (stdout, stderr, code) = slicectl(
        &bed,
        &public_ns,
        &["slice", "exec", slice, "--", "echo", "behind-the-nat"],
    );
    assert_eq!(code, 0, "exec: {stdout}\n{stderr}");
    assert!(stdout.contains("behind-the-nat"), "{stdout}\n{stderr}");

    // Which path: the user's first connection to the node came through the relay (nothing
    // else can reach the home subnet); then a hole punch may have made it direct.
    let user = federation::overlay::peer_id(&bed.manifest.principal).to_string();
    let log = log_of(&bed, NATED);
    let relayed = log
        .lines()
        .any(|l| l.contains("relayed connection") && l.contains(&user));
    assert!(
        relayed,
        "the node's log shows no relayed connection from the user {user}:\n{log}"
    );
    let punched = log
        .lines()
        .any(|l| l.contains("hole punched") && l.contains(&user));
    eprintln!(
        "node behind NAT: slice created in {create_secs:.1} s; the user reached it through the relay{}",
        if punched {
            ", then directly after a hole punch"
        } else {
            " (no hole punch)"
        }
    );

    let (stdout, stderr, code) = slicectl(&bed, &public_ns, &["slice", "delete", slice]);
    assert_eq!(code, 0, "delete: {stdout}\n{stderr}");
}
