//! `slicectl`: the PlanetMesh service manager. Creates slices across federations through a
//! broker (or its own integrated broker with `--agent`), redeems their tickets at every node in
//! parallel, and runs, renews and deletes them.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use capability_schema::{AcquireMode, PublicKey, SecretKey};
use clap::{Args, Parser, Subcommand};
use slicectl::client::{Endpoints, Session, Settings};
use slicectl::config::{ClientConfig, Identity, default_key_file, parse_trust};
use slicectl::exit::{EXIT_CODES_HELP, ExitClass};
use slicectl::ops::{self, KeyAction, Manager, OpError, Outcome, Progress};
use slicectl::spec::{SliceSpec, SpecError, parse_duration};
use slicectl::state::State;

#[derive(Parser, Debug)]
#[command(
    name = "slicectl",
    version,
    about = "PlanetMesh service manager: create, run, renew and delete slices across federations",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Global {
    /// Config file (slicectl.toml): key, certificate, broker or agents, trust, state dir.
    #[arg(long, global = true, env = "PLANETMESH_CONFIG")]
    config: Option<PathBuf>,
    /// The principal's key (default ~/.config/planetmesh/principal.key).
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// The principal's membership certificate (from `fedctl certify --role principal`).
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// A broker to ask: multiaddress with /p2p/<peer id>.
    #[arg(long, global = true)]
    broker: Option<String>,
    /// Broker in-process, asking this agent (multiaddress with /p2p/); repeatable.
    #[arg(long, global = true)]
    agent: Vec<String>,
    /// A peer to join the overlay through; repeatable.
    #[arg(long, global = true)]
    bootstrap: Vec<String>,
    /// A federation to trust, name=ed25519/<hex>; repeatable (needed with --agent).
    #[arg(long, global = true)]
    trust: Vec<String>,
    /// Where the local state lives (default $XDG_DATA_HOME/planetmesh).
    #[arg(long, global = true, env = "PLANETMESH_STATE")]
    state_dir: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// The longest one remote call may take, in seconds (default 20).
    #[arg(long, global = true)]
    timeout: Option<u64>,
    /// Remote calls in flight at once (default 32).
    #[arg(long, global = true)]
    concurrency: Option<usize>,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Make a principal key (then: fedctl certify --role principal --subject <key>).
    Keygen {
        /// Where to write it (default: --key, or ~/.config/planetmesh/principal.key).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Slices.
    #[command(subcommand)]
    Slice(SliceCommand),
}

#[derive(Args, Debug, Default)]
struct SpecFlags {
    /// The slice spec (TOML); flags override it.
    spec: Option<PathBuf>,
    /// The slice's name (<site>_<name>).
    #[arg(long)]
    name: Option<String>,
    /// How many slivers.
    #[arg(long)]
    slivers: Option<u32>,
    /// A node to put a sliver on (instead of --slivers); repeatable.
    #[arg(long)]
    node: Vec<PublicKey>,
    /// Resources per sliver, e.g. cpu=500m,memory=256MiB.
    #[arg(long)]
    resources: Option<String>,
    /// The tickets' window, e.g. 2h.
    #[arg(long)]
    duration: Option<String>,
    /// The first lease, when shorter than the window.
    #[arg(long)]
    lease: Option<String>,
    /// all-or-nothing or best-effort.
    #[arg(long)]
    mode: Option<String>,
    /// A federation allowed; repeatable.
    #[arg(long)]
    federation: Vec<String>,
    /// At least this many distinct sites.
    #[arg(long)]
    min_sites: Option<u32>,
    /// A node never to use; repeatable.
    #[arg(long)]
    exclude: Vec<PublicKey>,
    /// At most this price per sliver (micro-credits, whole duration).
    #[arg(long)]
    max_price: Option<u64>,
}

impl SpecFlags {
    fn spec(&self) -> Result<SliceSpec, OpError> {
        let mut spec = match &self.spec {
            Some(path) => SliceSpec::load(path)?,
            None => SliceSpec::named(self.name.as_deref().ok_or_else(|| {
                OpError::Usage("give a spec file or --name (and --slivers, --resources)".into())
            })?),
        };
        if let Some(v) = &self.name {
            spec.name = v.clone();
        }
        if let Some(v) = self.slivers {
            spec.slivers = Some(v);
        }
        if !self.node.is_empty() {
            spec.nodes = self.node.clone();
        }
        if let Some(v) = &self.resources {
            spec.resources = v.clone();
        }
        if let Some(v) = &self.duration {
            spec.duration = v.clone();
        }
        if let Some(v) = &self.lease {
            spec.lease = Some(v.clone());
        }
        if let Some(v) = &self.mode {
            spec.mode = match v.as_str() {
                "all-or-nothing" => AcquireMode::AllOrNothing,
                "best-effort" => AcquireMode::BestEffort,
                other => {
                    return Err(SpecError::Invalid(format!(
                        "mode {other:?}: all-or-nothing or best-effort"
                    ))
                    .into());
                }
            };
        }
        if !self.federation.is_empty() {
            spec.constraints.federations = self.federation.clone();
        }
        if let Some(v) = self.min_sites {
            spec.constraints.min_sites = v;
        }
        if !self.exclude.is_empty() {
            spec.constraints
                .exclude_nodes
                .extend(self.exclude.iter().copied());
        }
        if let Some(v) = self.max_price {
            spec.constraints.max_price = Some(v);
        }
        Ok(spec)
    }
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum SliceCommand {
    /// Acquire tickets and redeem them at every node in parallel.
    Create(SpecFlags),
    /// Show what would be picked, and why the rest was not (nothing is acquired).
    Plan(SpecFlags),
    /// Each sliver as its node sees it now.
    Status {
        /// The slice.
        name: String,
    },
    /// Extend every lease; shows the end each node granted.
    Renew {
        /// The slice.
        name: String,
        /// From now, e.g. 1h (default: the slice's lease, else its duration).
        #[arg(long = "for")]
        for_: Option<String>,
    },
    /// Release every lease and forget the slice.
    Delete {
        /// The slice.
        name: String,
    },
    /// Run a command in every sliver at once; output prefixed by node.
    Exec {
        /// The slice.
        name: String,
        /// Kill the command after this long (default 60s).
        #[arg(long, default_value = "60s")]
        timeout_cmd: String,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Start a command in the background in every sliver.
    Spawn {
        /// The slice.
        name: String,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Output of spawned commands, prefixed by node.
    Logs {
        /// The slice.
        name: String,
        /// At most this many bytes per sliver, from the end.
        #[arg(long, default_value_t = 65536)]
        tail: u64,
    },
    /// SSH keys of every sliver.
    Keys {
        /// The slice.
        name: String,
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// Redeem unredeemed tickets and acquire missing slivers.
    Sync {
        /// The slice (default: every slice).
        name: Option<String>,
    },
    /// The slices in the local state.
    List,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Authorize a key (an OpenSSH public key line).
    Add {
        /// The key line.
        key: String,
    },
    /// Remove a key (the line or its comment).
    Del {
        /// The key line.
        key: String,
    },
    /// List keys.
    List,
}

fn print(outcome: &Outcome, json: bool) {
    if json {
        let mut value = outcome.json.clone();
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("exit_code".into(), outcome.class.code().into());
        }
        println!("{value}");
    } else {
        for line in &outcome.lines {
            println!("{line}");
        }
    }
}

fn fail(e: &OpError, json: bool) -> i32 {
    if json {
        println!("{}", e.to_json());
    } else {
        eprintln!("slicectl: {e}");
    }
    e.class().code()
}

fn main() {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        federation::daemon::init_tracing(false);
    }
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("slicectl: {e:#}");
            ExitClass::Internal.code()
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let g = &cli.global;
    let config = match &g.config {
        Some(path) => match ClientConfig::load(path) {
            Ok(c) => c,
            Err(e) => return Ok(fail(&e.into(), g.json)),
        },
        None => ClientConfig::default(),
    };
    let key_file = g
        .key
        .clone()
        .or(config.key_file.clone())
        .or_else(default_key_file)
        .context("no key file: give --key")?;
    if let Command::Keygen { out } = &cli.command {
        let path = out.clone().unwrap_or(key_file);
        if path.exists() {
            eprintln!("slicectl: {} exists; not overwriting it", path.display());
            return Ok(ExitClass::Usage.code());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let key = SecretKey::generate();
        key.save(&path)?;
        println!("wrote {}", path.display());
        println!("principal key: {}", key.public());
        println!(
            "next: fedctl certify --role principal --subject {} --site <site>",
            key.public()
        );
        return Ok(0);
    }
    let Command::Slice(command) = cli.command else {
        return Ok(0);
    };
    let state_dir = g
        .state_dir
        .clone()
        .or(config.state_dir.clone())
        .or_else(slicectl::state::default_dir)
        .context("no state directory: give --state-dir")?;
    let state = match State::open(&state_dir) {
        Ok(s) => s,
        Err(e) => return Ok(fail(&e.into(), g.json)),
    };
    if let SliceCommand::List = command {
        return Ok(match ops::list(&state) {
            Ok(o) => {
                print(&o, g.json);
                o.class.code()
            }
            Err(e) => fail(&e, g.json),
        });
    }
    let cert = g.cert.clone().or(config.membership.clone());
    let identity = match Identity::load(&key_file, cert.as_deref()) {
        Ok(i) => i,
        Err(e) => return Ok(fail(&e.into(), g.json)),
    };
    let mut trust = config.trust.clone();
    for t in &g.trust {
        match parse_trust(t) {
            Ok(t) => trust.push(t),
            Err(e) => return Ok(fail(&e.into(), g.json)),
        }
    }
    let endpoints = Endpoints {
        broker: g.broker.clone().or(config.broker.clone()),
        agents: if g.agent.is_empty() {
            config.agents.clone()
        } else {
            g.agent.clone()
        },
        bootstrap: [config.bootstrap.clone(), g.bootstrap.clone()].concat(),
        trust,
    };
    let settings = Settings {
        timeout: Duration::from_secs(g.timeout.or(config.timeout_secs).unwrap_or(20).max(1)),
        concurrency: g.concurrency.or(config.concurrency).unwrap_or(32).max(1),
    };
    let progress = Progress {
        visible: !g.json && std::io::stdout().is_terminal(),
    };
    let json = g.json;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    Ok(runtime.block_on(async move {
        let session = match Session::connect(identity, &endpoints, settings).await {
            Ok(s) => s,
            Err(e) => return fail(&e.into(), json),
        };
        let manager = Manager {
            session,
            state,
            progress,
        };
        let result = dispatch(&manager, command).await;
        manager.session.shutdown().await;
        match result {
            Ok(o) => {
                print(&o, json);
                o.class.code()
            }
            Err(e) => fail(&e, json),
        }
    }))
}

async fn dispatch(m: &Manager, command: SliceCommand) -> Result<Outcome, OpError> {
    match command {
        SliceCommand::Create(flags) => m.create(&flags.spec()?).await,
        SliceCommand::Plan(flags) => m.plan(&flags.spec()?).await,
        SliceCommand::Status { name } => m.status(&name).await,
        SliceCommand::Renew { name, for_ } => {
            let secs = for_.as_deref().map(parse_duration).transpose()?;
            m.renew(&name, secs).await
        }
        SliceCommand::Delete { name } => m.delete(&name).await,
        SliceCommand::Exec {
            name,
            timeout_cmd,
            command,
        } => {
            let ms = parse_duration(&timeout_cmd)?.saturating_mul(1000);
            m.exec(&name, command, ms).await
        }
        SliceCommand::Spawn { name, command } => m.spawn(&name, command).await,
        SliceCommand::Logs { name, tail } => m.logs(&name, tail).await,
        SliceCommand::Keys { name, action } => {
            let action = match action {
                KeysCommand::Add { key } => KeyAction::Add(key),
                KeysCommand::Del { key } => KeyAction::Del(key),
                KeysCommand::List => KeyAction::List,
            };
            m.keys(&name, action).await
        }
        SliceCommand::Sync { name } => m.sync(name.as_deref()).await,
        SliceCommand::List => ops::list(&m.state),
    }
}
