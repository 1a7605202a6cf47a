//! `testnet`: a whole PlanetMesh on one machine.
//!
//! `testnet up` generates authorities, keys, certificates, peering and configs, starts every
//! daemon as a real process (and, on a namespaced testnet, the internet host slivers reach
//! through their nodes' egress), waits until ads have converged and prints how to use it;
//! `testnet down` ends every process and removes everything it made on the machine;
//! `testnet scenario run FILE` runs a scenario file (acquisitions, faults, checks) on one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use testnet::generate::Manifest;
use testnet::launch;
use testnet::probe::{self, HostStatus};
use testnet::scenario::{IsolationChoice, NetworkChoice};
use testnet::topology::Topology;

#[derive(Parser, Debug)]
#[command(
    name = "testnet",
    version,
    long_version = federation::manual::long_version(),
    about = "Run a whole PlanetMesh (federations, nodes, agents, brokers) on this machine",
    long_about = "Run a whole PlanetMesh on this machine: every daemon is a real process. As root, each \
                  host gets its own network namespace on a bridge and nodes make real isolated slivers, \
                  whose traffic leaves through their node to an internet host (10.250.255.254: HTTP and \
                  UDP echo naming the address they saw); without root, hosts share loopback and slivers \
                  are not isolated."
)]
struct Cli {
    /// The testnet's directory.
    #[arg(
        long,
        global = true,
        default_value = ".testnet",
        env = "PLANETMESH_TESTNET"
    )]
    dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NetworkArg {
    /// Each host in its own network namespace on a bridge (root).
    Namespaces,
    /// Every host on 127.0.0.1.
    Loopback,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum IsolationArg {
    /// Real slivers: namespaces, overlayfs, cgroups, veth + HTB (root).
    Linux,
    /// No isolation (slivers exist only in the ledgers).
    Memory,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create and start a testnet, and wait until ads have converged.
    Up {
        /// Federations.
        #[arg(long, default_value_t = 2)]
        federations: u32,
        /// Nodes.
        #[arg(long, default_value_t = 6)]
        nodes: u32,
        /// Agents (at least one per federation).
        #[arg(long, default_value_t = 3)]
        agents: u32,
        /// Brokers.
        #[arg(long, default_value_t = 1)]
        brokers: u32,
        /// How hosts are connected (default: namespaces as root, else loopback).
        #[arg(long)]
        network: Option<NetworkArg>,
        /// How nodes make slivers (default: linux as root, else memory).
        #[arg(long)]
        isolation: Option<IsolationArg>,
        /// Longest wait for ads to converge, in seconds.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Bring a testnet up (unless one runs in --dir), then acquire a slice across both
    /// federations, exec in every sliver, reach the internet host from every sliver, serve on a
    /// sliver's leased port and fetch it from the other federation's slivers (as root), renew
    /// and delete it, printing each step and its time.
    Demo {
        /// Leave the testnet running afterwards (default: take it down).
        #[arg(long)]
        keep: bool,
    },
    /// Scenario files (TOML): a testnet to bring up and steps to run on it — acquire, exec,
    /// renew, delete, kill, restart, partition, heal, and checks.
    #[command(subcommand)]
    Scenario(ScenarioCmd),
    /// End every daemon and remove every namespace, link and state the testnet made.
    Down {
        /// Also delete the testnet directory.
        #[arg(long)]
        purge: bool,
    },
    /// Show every host: role, federation, site, process and state.
    Status {
        /// One JSON object on stdout: every host with its process and its daemon's `/status`
        /// as the daemon wrote it (or why it did not answer), and the internet host.
        #[arg(long)]
        json: bool,
    },
    /// Peer two running loopback testnets as two operators peer their testbeds: each side's
    /// authorities sign an agreement for the other's federations (`fedctl peer`, files
    /// exchanged), every config trusts the other side's authorities (same names, other keys),
    /// brokers follow both sides by `name@KEY`, agents, brokers and slicectl bootstrap from
    /// one address of the other side; nodes reload, agents and brokers restart (ledgers kept).
    /// Ignores --dir.
    Peer {
        /// One testnet's directory.
        a: PathBuf,
        /// The other testnet's directory.
        b: PathBuf,
        /// At most this many slivers at once per principal of the other side.
        #[arg(long, default_value_t = testnet::peer::PeeringTerms::default().max_slivers)]
        max_slivers: u32,
    },
    /// Print a host's log.
    Logs {
        /// The host (`node0`, `agent1`, `broker0`, …).
        host: String,
        /// Only the last N lines.
        #[arg(long, short = 'n', default_value_t = 50)]
        lines: usize,
    },
    /// Kill a host's daemon at once (SIGKILL), as a crash would.
    Kill {
        /// The host.
        host: String,
    },
    /// Stop a host's daemon gracefully (if it runs) and start it again.
    Restart {
        /// The host.
        host: String,
    },
    /// Cut hosts off the network (namespaces: their link goes down; loopback: they are frozen).
    Partition {
        /// The hosts.
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// Undo every partition.
    Heal,
    /// Serve a live web page of the testnet: federations, nodes and their load, agents and
    /// shares, slices and leases.
    Dashboard {
        /// Address to serve on.
        #[arg(long, default_value = "127.0.0.1:8088")]
        listen: std::net::SocketAddr,
    },
    /// The internet host's service (HTTP and UDP echo, each naming the peer's address), as
    /// `testnet up` starts it in a namespaced testnet's internet namespace.
    #[command(name = "internet-host", hide = true)]
    InternetHost {
        /// TCP port of the HTTP service.
        #[arg(long, default_value_t = testnet::internet::HTTP_PORT)]
        http: u16,
        /// UDP port of the echo service.
        #[arg(long, default_value_t = testnet::internet::UDP_PORT)]
        udp: u16,
    },
    /// Simulate thousands of nodes in one process (libp2p memory transport): ad convergence,
    /// messages per node and broker planning at scale. Exits 1, saying so in one line, when
    /// ads did not converge within --timeout.
    Sim {
        /// Node counts, one run each (e.g. `1000,5000`).
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        nodes: Vec<usize>,
        /// Federations.
        #[arg(long, default_value_t = 2)]
        federations: usize,
        /// Earlier peers of its federation each node dials.
        #[arg(long, default_value_t = 6)]
        degree: usize,
        /// Gossip heartbeat, in milliseconds (the daemons use 1000).
        #[arg(long, default_value_t = 1000)]
        heartbeat_ms: u64,
        /// Most connections per peer (0: 3 × degree + 2).
        #[arg(long, default_value_t = 0)]
        max_connections: u32,
        /// Nodes that publish, a random sample (0: every node).
        #[arg(long, default_value_t = 0)]
        publishers: usize,
        /// Spread the first ads over this many seconds (0: every node at the same moment).
        #[arg(long, default_value_t = 0.0)]
        boot_secs: f64,
        /// Every node re-announces this often until convergence, in seconds, as the daemons'
        /// heartbeat does (0: never; the daemons' default is 15).
        #[arg(long, default_value_t = 0.0)]
        reannounce_secs: f64,
        /// Single ad updates to time after convergence.
        #[arg(long, default_value_t = 20)]
        updates: usize,
        /// Slivers the broker's planner is asked for.
        #[arg(long, default_value_t = 500)]
        slivers: u32,
        /// Longest wait for convergence, in seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// The benchmark: 1,000 nodes all publishing over a 150 s boot window, then 5,000 nodes
        /// with 100 publishers over 90 s (instead of --nodes, --publishers, --boot-secs and
        /// --reannounce-secs; one machine validates every node's ads, see `sim::bench_configs`).
        /// With --model virtual: 5,000 nodes, then 20,000, all publishing at once.
        #[arg(long)]
        bench: bool,
        /// full: real overlays in wall time; virtual: the cost model, a discrete-event
        /// simulation in simulated time (each distinct ad verified once for real, its time
        /// charged to every receiver; link latency, uplink, gossipsub's mesh, IHAVE/IWANT and
        /// IDONTWANT); compare: full, then the model calibrated to it, side by side.
        #[arg(long, value_enum, default_value = "full")]
        model: testnet::vsim::Model,
        #[command(flatten)]
        model_args: testnet::vsim::ModelArgs,
    },
    #[command(flatten)]
    Manual(federation::manual::ManualCommand),
}

#[derive(Subcommand, Debug)]
enum ScenarioCmd {
    /// Run a scenario: bring its [testnet] up in --dir (or use the testnet running there, or
    /// the one its `reuse` names), run every step in order printing each and its time, and
    /// take down what it brought up — after a failure too, keeping the directory's logs.
    #[command(after_help = SCENARIO_HELP)]
    Run {
        /// The scenario file.
        file: PathBuf,
        /// Leave the testnet running afterwards (default: take it down).
        #[arg(long)]
        keep: bool,
    },
    /// Parse and validate scenario files without running anything; errors name the line and
    /// the field.
    #[command(after_help = SCENARIO_HELP)]
    Check {
        /// The scenario files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

const SCENARIO_HELP: &str = "\
A scenario file (see testnet/scenarios/ for examples):

  description = \"what it shows\"
  [testnet]                 # federations, nodes, agents, brokers, network, isolation,
  nodes = 4                 # converge_secs; or: reuse = \".testnet\" (a running testnet)
  [[step]]
  do = \"acquire\"            # then: slice, slivers | nodes, resources, duration, lease,
  slice = \"fed0-site0_x\"    #   federations, min_sites, mode, via = broker | agents, agents
  slivers = 4
  resources = \"cpu=200m,memory=96MiB\"
  expect_slivers = 4

Steps (do = ...): acquire, exec (command, expect_output, expect_exit), status (expect_live,
expect_measured), renew (for, expect_renewed), sync (expect_held), delete (expect_released),
spawn (command), logs (expect_output), keys (add | del, expect_keys), kill, restart,
partition (hosts), heal, wait_converged, sleep (secs), expect_leases (nodes, slice, each,
total, within_secs), down (last: take the testnet down, expect nothing left).
slicectl steps take expect = \"<class>\" or a list: ok, internal, usage, setup, unsatisfiable,
refused, unreachable, partial, not_found, command_failed, not_run; timeout_secs; exec, status, renew,
sync and logs also retry_secs. Every step takes a title. In expect_output (exec, logs),
{node_address} stands for the address of each sliver's node; on a namespaced testnet slivers
reach the internet host at 10.250.255.254 (HTTP on port 80 and UDP echo on port 7, each
naming the address it saw).";

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("testnet: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = cli.dir;
    match cli.command {
        Cmd::Manual(manual) => Ok(manual.run::<Cli>()?),
        Cmd::Up {
            federations,
            nodes,
            agents,
            brokers,
            network,
            isolation,
            wait,
        } => {
            let started = Instant::now();
            let topology = Topology {
                federations,
                nodes,
                agents,
                brokers,
            };
            let network = match network {
                Some(NetworkArg::Namespaces) => NetworkChoice::Namespaces,
                Some(NetworkArg::Loopback) => NetworkChoice::Loopback,
                None => NetworkChoice::Auto,
            };
            let isolation = match isolation {
                Some(IsolationArg::Linux) => IsolationChoice::Linux,
                Some(IsolationArg::Memory) => IsolationChoice::Memory,
                None => IsolationChoice::Auto,
            };
            let (network, isolation) = testnet::scenario::resolve(network, isolation)?;
            println!(
                "generating {federations} federations, {nodes} nodes, {agents} agents, {brokers} brokers in {} ({network:?} network, {isolation} isolation)",
                dir.display()
            );
            let manifest = testnet::scenario::start(&dir, topology, network, isolation)?;
            let dir = dir.canonicalize()?;
            println!("started {} daemons", manifest.hosts.len());
            let took =
                probe::wait_converged(&manifest, Duration::from_secs(wait), |known, expected| {
                    eprintln!("  ads: {known}/{expected} node-agent pairs known");
                });
            eprintln!();
            let took = took?;
            println!(
                "converged in {:.1}s ({:.1}s in all)",
                took.as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
            // A slicectl context for this testnet (`slicectl context use NAME` is the first hint).
            if let Err(e) = slicectl::context::add_testnet(&dir) {
                println!("(no slicectl context: {e})");
            }
            print_usage(&manifest, &dir);
            Ok(())
        }
        Cmd::Demo { keep } => {
            let fresh = !dir.join("testnet.toml").exists();
            if fresh {
                run(Cli {
                    dir: dir.clone(),
                    command: default_up(),
                })?;
            }
            let result = testnet::demo::run(&dir);
            if fresh && !keep {
                let manifest = Manifest::load(&dir)?;
                launch::stop_all(&manifest, &dir)?;
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
                println!("\ntestnet taken down (use --keep to leave it running)");
            }
            let took = result?;
            println!("\ndemo done in {:.2}s", took.as_secs_f64());
            Ok(())
        }
        Cmd::Scenario(ScenarioCmd::Check { files }) => {
            let mut bad = 0;
            for file in &files {
                match testnet::scenario::load(file) {
                    Ok(s) => println!(
                        "{}: ok ({} steps{})",
                        file.display(),
                        s.steps.len(),
                        s.testnet
                            .reuse
                            .as_ref()
                            .map(|r| format!(", on the testnet in {}", r.display()))
                            .unwrap_or_default()
                    ),
                    Err(e) => {
                        eprintln!("{e}");
                        bad += 1;
                    }
                }
            }
            if bad > 0 {
                anyhow::bail!("{bad} of {} scenario files are not valid", files.len());
            }
            Ok(())
        }
        Cmd::Scenario(ScenarioCmd::Run { file, keep }) => {
            let scenario = testnet::scenario::load(&file)?;
            testnet::scenario::stop_on_signals()?;
            testnet::scenario::run(&scenario, &testnet::scenario::RunOptions { dir, keep })
                .map(|_| ())
        }
        Cmd::Peer { a, b, max_slivers } => {
            let terms = testnet::peer::PeeringTerms {
                max_slivers,
                ..Default::default()
            };
            let peered = testnet::peer::peer(&a, &b, terms)?;
            for line in &peered.lines {
                println!("{line}");
            }
            println!("peered in {:.1}s", peered.secs);
            Ok(())
        }
        Cmd::Down { purge } => {
            let manifest = Manifest::load(&dir)?;
            let stopped = launch::stop_all(&manifest, &dir)?;
            println!("stopped {} daemons", stopped.len());
            if let Ok(gone) = slicectl::context::remove_testnet(&dir.canonicalize()?) {
                for name in gone {
                    println!("removed slicectl context {name}");
                }
            }
            if purge {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
                println!("removed {}", dir.display());
            }
            Ok(())
        }
        Cmd::Status { json } => {
            let manifest = Manifest::load(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status_json(&manifest))?);
                return Ok(());
            }
            println!(
                "{:<9} {:<7} {:<6} {:<12} {:<8} state",
                "host", "role", "fed", "site", "pid"
            );
            for host in &manifest.hosts {
                let pid = launch::running_pid(host).map_or("down".to_owned(), |p| p.to_string());
                let state = match probe::status(host) {
                    Ok(HostStatus::Node(s)) => {
                        format!("committed {} of {}", s.committed, s.capacity)
                    }
                    Ok(HostStatus::Agent(s)) => format!("{} nodes in inventory", s.nodes.len()),
                    Ok(HostStatus::Broker(s)) => format!(
                        "{} agents; {} finds, {} acquired, {} failed, {} refused",
                        s.agents.len(),
                        s.finds,
                        s.acquired,
                        s.failed,
                        s.refused
                    ),
                    Err(e) => e.to_string(),
                };
                println!(
                    "{:<9} {:<7} {:<6} {:<12} {:<8} {state}",
                    host.plan.name,
                    host.plan.role.binary(),
                    host.plan.federation,
                    host.plan.site,
                    pid
                );
            }
            if let Some(internet) = &manifest.internet {
                print_internet_status(internet);
            }
            Ok(())
        }
        Cmd::Logs { host, lines } => {
            let manifest = Manifest::load(&dir)?;
            let host = manifest.host(&host)?;
            let text = std::fs::read_to_string(host.log_file())
                .with_context(|| format!("reading {}", host.log_file().display()))?;
            let all: Vec<&str> = text.lines().collect();
            for line in &all[all.len().saturating_sub(lines)..] {
                println!("{line}");
            }
            Ok(())
        }
        Cmd::Kill { host } => {
            let manifest = Manifest::load(&dir)?;
            let host = manifest.host(&host)?;
            if launch::stop_host(host, Duration::from_secs(5), true)? {
                println!("killed {}", host.plan.name);
            } else {
                println!("{} was not running", host.plan.name);
            }
            Ok(())
        }
        Cmd::Restart { host } => {
            let manifest = Manifest::load(&dir)?;
            let host = manifest.host(&host)?;
            launch::stop_host(host, Duration::from_secs(10), false)?;
            let pid = launch::start_host(&manifest, host)?;
            println!("restarted {} (pid {pid})", host.plan.name);
            Ok(())
        }
        Cmd::Partition { hosts } => {
            let manifest = Manifest::load(&dir)?;
            for name in hosts {
                testnet::netns::partition(&manifest, manifest.host(&name)?, true)?;
                println!("partitioned {name}");
            }
            Ok(())
        }
        Cmd::Heal => {
            let manifest = Manifest::load(&dir)?;
            for host in &manifest.hosts {
                testnet::netns::partition(&manifest, host, false)?;
            }
            println!("healed");
            Ok(())
        }
        Cmd::Dashboard { listen } => testnet::dashboard::run_until_interrupted(&dir, listen),
        Cmd::InternetHost { http, udp } => testnet::internet::run(http, udp),
        Cmd::Sim {
            nodes,
            federations,
            degree,
            heartbeat_ms,
            max_connections,
            publishers,
            boot_secs,
            reannounce_secs,
            updates,
            slivers,
            timeout,
            bench,
            model,
            model_args,
        } => {
            let config = testnet::sim::SimConfig {
                federations,
                degree,
                heartbeat: Duration::from_millis(heartbeat_ms),
                max_connections,
                publishers,
                boot: Duration::from_secs_f64(boot_secs.max(0.0)),
                reannounce: Duration::from_secs_f64(reannounce_secs.max(0.0)),
                updates,
                slivers,
                timeout: Duration::from_secs(timeout),
                ..testnet::sim::SimConfig::default()
            };
            let configs = if bench {
                testnet::sim::bench_configs(&config)
            } else {
                nodes
                    .iter()
                    .map(|&nodes| testnet::sim::SimConfig {
                        nodes,
                        ..config.clone()
                    })
                    .collect()
            };
            if model != testnet::vsim::Model::Full {
                return testnet::vsim::run_cli(model, &configs, bench, &model_args);
            }
            let reports = testnet::sim::run_configs(&configs)?;
            testnet::sim::check_converged(&reports, &configs)
        }
    }
}

fn default_up() -> Cmd {
    Cmd::Up {
        federations: 2,
        nodes: 6,
        agents: 3,
        brokers: 1,
        network: None,
        isolation: None,
        wait: 60,
    }
}

/// The internet host's `status` line: its process, its address and what it answers the
/// machine (which reaches it through the bridge).
/// `testnet status --json`: every host with its pid (null: down) and its daemon's `/status`
/// (or the error that stood for it), then the internet host (null on loopback).
fn status_json(manifest: &Manifest) -> serde_json::Value {
    let hosts: Vec<serde_json::Value> = manifest
        .hosts
        .iter()
        .map(|host| {
            let (status, error) = match probe::status(host) {
                Ok(HostStatus::Node(s)) => (serde_json::to_value(s).ok(), None),
                Ok(HostStatus::Agent(s)) => (serde_json::to_value(s).ok(), None),
                Ok(HostStatus::Broker(s)) => (serde_json::to_value(s).ok(), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            serde_json::json!({
                "host": host.plan.name,
                "role": host.plan.role.binary(),
                "federation": host.plan.federation,
                "site": host.plan.site,
                "key": host.key.to_string(),
                "pid": launch::running_pid(host),
                "http": host.http_url(),
                "status": status,
                "error": error,
            })
        })
        .collect();
    let internet = manifest.internet.as_ref().map(|internet| {
        serde_json::json!({
            "address": internet.ip,
            "url": internet.url(),
            "udp_port": internet.udp_port,
            "pid": launch::internet_pid(internet),
        })
    });
    serde_json::json!({ "hosts": hosts, "internet": internet })
}

fn print_internet_status(internet: &testnet::generate::InternetHost) {
    let pid = launch::internet_pid(internet).map_or("down".to_owned(), |p| p.to_string());
    let answer = match probe::fetch(&internet.url()) {
        Ok(reply) if reply.status == 200 => reply.body.trim().to_owned(),
        Ok(reply) => format!("HTTP {}: {}", reply.status, reply.body.trim()),
        Err(e) => format!("not answering: {e:#}"),
    };
    println!(
        "{:<9} {:<7} {:<6} {:<12} {:<8} {} (HTTP {}, UDP echo port {}): {answer}",
        testnet::generate::InternetHost::NAME,
        "testnet",
        "-",
        "-",
        pid,
        internet.ip,
        internet.url(),
        internet.udp_port
    );
}

fn print_usage(manifest: &Manifest, dir: &std::path::Path) {
    println!();
    println!(
        "federations: {}",
        manifest
            .federations
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for host in &manifest.hosts {
        println!(
            "  {:<9} {:<7} {:<6} {:<12} {}  http {}",
            host.plan.name,
            host.plan.role.binary(),
            host.plan.federation,
            host.plan.site,
            host.multiaddr(),
            host.http_url()
        );
    }
    if let Some(internet) = &manifest.internet {
        println!(
            "  {:<9} the Internet, for slivers: {} and UDP echo on {}:{} (each names the peer's address)",
            testnet::generate::InternetHost::NAME,
            internet.url(),
            internet.ip,
            internet.udp_port
        );
    }
    println!();
    println!(
        "principal key: {}/principal/principal.key (member of fed0, slices named fed0-site0_*)",
        dir.display()
    );
    println!("slicectl config: {}/slicectl.toml", dir.display());
    match testnet::demo::first_steps(manifest, dir) {
        Ok(lines) => {
            println!("next (each line runs as printed; the last takes the testnet down):");
            for line in lines {
                println!("{HINT_PREFIX}{line}");
            }
        }
        Err(e) => println!("(no next steps: {e:#})"),
    }
}

/// How `testnet up` marks a command to run next (tests find them by it).
const HINT_PREFIX: &str = "  $ ";
