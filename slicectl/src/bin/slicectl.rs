//! `slicectl`: the PlanetMesh service manager. Creates slices across federations through a
//! broker (or its own integrated broker with `--agent`), redeems their tickets at every node in
//! parallel, and runs, renews and deletes them.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use capability_schema::{AcquireMode, SecretKey};
use clap::{Args, Parser, Subcommand};
use slicectl::client::{Endpoints, Session, Settings};
use slicectl::config::{ClientConfig, Identity, default_key_file, parse_trust};
use slicectl::context::{ContextError, Contexts, Source, config_dir, find_config};
use slicectl::exit::{EXIT_CODES_HELP, ExitClass};
use slicectl::ops::{self, KeyAction, Manager, OpError, Outcome, Progress};
use slicectl::spec::{SliceSpec, SpecError, parse_duration};
use slicectl::state::State;

#[derive(Parser, Debug)]
#[command(
    name = "slicectl",
    version,
    long_version = federation::manual::long_version(),
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
    /// Without it: --context, else the current context (`slicectl context use`), else
    /// $XDG_CONFIG_HOME/planetmesh/slicectl.toml (~/.config/planetmesh/slicectl.toml).
    #[arg(long, global = true, env = "PLANETMESH_CONFIG")]
    config: Option<PathBuf>,
    /// Use this context's config instead of the current context's (see `slicectl context`).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The principal's key (default ~/.config/planetmesh/principal.key).
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// The principal's membership certificate (from `fedctl certify --role principal`).
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// A broker to ask: multiaddress with /p2p/<peer id>; repeatable (tried healthiest first,
    /// the next when one does not answer). With --broker or --agent, the config's brokers and
    /// agents are not used to acquire.
    #[arg(long, global = true)]
    broker: Vec<String>,
    /// Broker in-process, asking this agent (multiaddress with /p2p/); repeatable. After
    /// --broker: the last resort when no broker answers.
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
    /// Print machine-readable JSON on stdout (times as Unix seconds; no progress). Without
    /// it, times print as local times and durations ("in 29m").
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
    /// Named contexts, like kubectl's: which slicectl.toml to use when --config is not given.
    /// Kept in $XDG_CONFIG_HOME/planetmesh/contexts.toml (~/.config/planetmesh/contexts.toml).
    #[command(subcommand)]
    Context(ContextCommand),
    /// Tickets in your hands: acquire without redeeming, show, narrow (attenuate), hand to a
    /// collaborator by their public key (delegate), import and redeem one handed to you.
    /// Only acquire and redeem use the network.
    #[command(subcommand)]
    Ticket(TicketCli),
    #[command(flatten)]
    Manual(federation::manual::ManualCommand),
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum TicketCli {
    /// Acquire tickets as `slice create` does, and keep them unredeemed in the local state
    /// (as SLICE/NODE) to show, narrow and hand on; `slice sync` redeems those you keep.
    Acquire(SpecFlags),
    #[command(flatten)]
    Offline(slicectl::ticket::TicketCommand),
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
    /// A node to put a sliver on (instead of --slivers); repeatable. Its name as its ad says
    /// it (node2), site/short-key as slicectl prints it, 4 or more hex digits of its key, or
    /// the full key.
    #[arg(long)]
    node: Vec<String>,
    /// Resources per sliver, e.g. cpu=500m,memory=256MiB,ports=2 (default, unless the spec
    /// says: cpu=250m,memory=256MiB,disk=1GiB,egress=1Mbit and one public port).
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
    /// A node never to use; repeatable (named as for --node).
    #[arg(long)]
    exclude: Vec<String>,
    /// At most this price per sliver (micro-credits, whole duration).
    #[arg(long)]
    max_price: Option<u64>,
    /// Raw sockets in each sliver's own network namespace (ping, traceroute, measurement);
    /// an agent grants them only to principals its policy names.
    #[arg(long)]
    net_raw: bool,
    /// Hold each sliver's egress to its granted rate instead of sharing the node's excess.
    #[arg(long)]
    egress_cap: bool,
}

impl SpecFlags {
    /// Whether a node argument names no node known yet (agents may know it).
    fn names_unknown_nodes(&self) -> bool {
        self.spec().is_ok_and(|spec| spec.names_unknown_nodes())
    }

    /// Checks the spec without the network.
    fn check(&self) -> Result<(), OpError> {
        Ok(self.spec()?.check()?)
    }

    /// The spec: the file's (if any) with the flags over it. Node arguments stay as given;
    /// the request resolves them (`SliceSpec::to_request`).
    fn spec(&self) -> Result<SliceSpec, OpError> {
        let mut spec = match &self.spec {
            Some(path) => SliceSpec::load(path)?,
            None => SliceSpec::named(self.name.as_deref().ok_or_else(|| {
                OpError::Usage("give a spec file or --name (and --slivers or --node)".into())
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
        spec.net_raw |= self.net_raw;
        spec.egress_cap |= self.egress_cap;
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
                .extend(self.exclude.iter().cloned());
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
    /// Acquire tickets and redeem them at every node in parallel. On a terminal, stderr shows
    /// each ticket and each node's redeem as they complete. The slice name, the certificate
    /// and the trust entries are checked before any network call.
    Create(SpecFlags),
    /// Show what would be picked, and why the rest was not (nothing is acquired).
    Plan(SpecFlags),
    /// Log in to a sliver with your own `ssh` (OpenSSH): the node's address and port, the
    /// slice as the user name, and the node's host key pinned; a key authorized with `slice
    /// keys` gets in. Arguments after `--` go to ssh (a command, -L ...); exits with ssh's
    /// status.
    Ssh {
        /// The slice.
        name: String,
        /// The sliver's node (any form `slice status` shows); needed when the slice has
        /// slivers on several nodes.
        node: Option<String>,
        /// Arguments for ssh, after `--` (e.g. `-- uname -a`, `-- -L 8080:localhost:80`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Each sliver as its node sees it now.
    Status {
        /// The slice.
        name: String,
        /// Ask again every --interval until Ctrl-C: on a terminal the status is drawn again
        /// when it changes; otherwise one line per sliver whose state changed (JSON objects
        /// with --json).
        #[arg(long, short = 'w')]
        watch: bool,
        /// How often --watch asks, e.g. 2s or 1m.
        #[arg(long, default_value = "2s", requires = "watch")]
        interval: String,
    },
    /// What happened to each sliver, as its nodes recorded it: created, renewed, frozen,
    /// thawed, released, reaped, lost, ended, with local times and reasons (--json: Unix
    /// times and raw values).
    Events {
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
    /// Run a command in every sliver at once; output prefixed by node. Exits 9 when the
    /// command failed on a sliver, and 10 (not run) when a node has no isolation
    /// (isolation = "memory", as on a testnet without root): there nothing runs, and each
    /// such node's line says so.
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
    /// Start a command in the background in every sliver; answers each sliver's pid. Its
    /// output goes to the sliver's spawn log (`slicectl slice logs`).
    Spawn {
        /// The slice.
        name: String,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// The output of commands started with `spawn` (the end of each sliver's spawn log),
    /// prefixed by node.
    Logs {
        /// The slice.
        name: String,
        /// At most this many bytes per sliver, from the end.
        #[arg(long, default_value_t = 65536)]
        tail: u64,
        /// Keep writing what the slivers append (within a second) until Ctrl-C, or until
        /// every lease is over (said); with --json, one object per line.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// The SSH keys authorized in every sliver: add, del (by line or comment), list.
    Keys {
        /// The slice.
        name: String,
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// Finish a slice: forget expired leases, check every lease with its node (one the node
    /// no longer has is acquired again), redeem unredeemed tickets, acquire missing slivers.
    Sync {
        /// The slice (default: every slice).
        name: Option<String>,
    },
    /// The slices in the local state.
    List,
}

#[derive(Subcommand, Debug)]
enum ContextCommand {
    /// The contexts; the current one is marked with *.
    List,
    /// Make NAME the current context: commands without --config use its config.
    Use {
        /// The context.
        name: String,
    },
    /// The config commands use now, where it comes from (--config, a context or the default
    /// file), and what it says.
    Show,
    /// Add (or replace) context NAME for the config given with --config FILE.
    Add {
        /// The context's name (letters, digits, '.', '_', '-').
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Authorize a key (an OpenSSH public key line).
    Add {
        /// The key line, e.g. "ssh-ed25519 AAAA… alice@laptop" (one argument: quote it).
        // Not named `key`: the global `--key` (the principal's key file) has that id.
        #[arg(value_name = "KEY")]
        line: String,
    },
    /// Remove a key (the line or its comment).
    Del {
        /// The key line, or its comment (e.g. alice@laptop).
        #[arg(value_name = "KEY")]
        line: String,
    },
    /// List keys.
    List,
}

fn print(outcome: &Outcome, json: bool) {
    // Watching commands wrote as they went.
    if outcome.json.is_null() && outcome.lines.is_empty() {
        return;
    }
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => std::process::exit(bad_flags(&e)),
    };
    if std::env::var_os("RUST_LOG").is_some() {
        federation::daemon::init_tracing(false);
    }
    std::process::exit(run(cli));
}

/// Clap's answer to the command line: help and version print as usual (exit 0); a bad flag is
/// a usage failure (exit 2), in JSON when `--json` was asked.
fn bad_flags(e: &clap::Error) -> i32 {
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    if !e.use_stderr() || !json {
        e.exit();
    }
    let text = e.to_string();
    let message = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("bad command line")
        .trim_start_matches("error: ");
    fail(
        &OpError::Usage(format!("{message} (see `slicectl --help`)")),
        true,
    )
}

/// Runs the command; answers the exit code. Every failure goes through [`fail`], so `--json`
/// always gets a JSON error and the code is its failure class.
fn run(cli: Cli) -> i32 {
    let json = cli.global.json;
    let result = try_run(cli);
    // Names of nodes learned on the way (ads seen) are kept for the next command.
    slicectl::nodes::save();
    match result {
        Ok(code) => code,
        Err(e) => fail(&e, json),
    }
}

fn keygen(out: Option<PathBuf>, key_file: Option<PathBuf>, json: bool) -> Result<i32, OpError> {
    let path = out.or(key_file).ok_or_else(|| {
        OpError::Setup("no place for the key: give --out (no home directory to default to)".into())
    })?;
    if path.exists() {
        return Err(OpError::Usage(format!(
            "{} exists; not overwriting it (give --out for another file)",
            path.display()
        )));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            OpError::Setup(format!(
                "cannot make {}: {e}; give --out a writable place",
                dir.display()
            ))
        })?;
    }
    let key = SecretKey::generate();
    key.save(&path).map_err(|e| {
        OpError::Setup(format!(
            "cannot write {}: {e}; give --out a writable place",
            path.display()
        ))
    })?;
    let next = format!(
        "fedctl certify --role principal --subject {} --site <site>",
        key.public()
    );
    let outcome = Outcome {
        json: serde_json::json!({
            "ok": true,
            "key_file": path.display().to_string(),
            "principal": key.public().to_string(),
            "next": next,
        }),
        lines: vec![
            format!("wrote {}", path.display()),
            format!("principal key: {}", key.public()),
            format!("next: {next}"),
        ],
        class: ExitClass::Ok,
    };
    print(&outcome, json);
    Ok(0)
}

/// `slicectl context …`: list, use, show, add (no network, no key needed).
fn context(command: &ContextCommand, g: &Global) -> Result<Outcome, OpError> {
    let dir = config_dir().ok_or(ContextError::NoConfigDir)?;
    let mut contexts = Contexts::load(&dir)?;
    let file = dir.join(slicectl::context::CONTEXTS_FILE);
    let ok = |json: serde_json::Value, lines: Vec<String>| Outcome {
        json,
        lines,
        class: ExitClass::Ok,
    };
    Ok(match command {
        ContextCommand::List => {
            let current = contexts.current.clone().unwrap_or_default();
            let mut lines: Vec<String> = contexts
                .contexts
                .iter()
                .map(|(name, c)| {
                    let mark = if *name == current { "*" } else { " " };
                    format!("{mark} {name}  {}", c.config.display())
                })
                .collect();
            if lines.is_empty() {
                lines.push(format!(
                    "no contexts in {} (add one with `slicectl context add NAME --config FILE`)",
                    file.display()
                ));
            }
            ok(
                serde_json::json!({
                    "ok": true,
                    "current": contexts.current,
                    "contexts": contexts.contexts.iter().map(|(name, c)| serde_json::json!({
                        "name": name, "config": c.config.display().to_string(),
                    })).collect::<Vec<_>>(),
                }),
                lines,
            )
        }
        ContextCommand::Use { name } => {
            contexts.use_context(name)?;
            contexts.save(&dir)?;
            let config = contexts.get(name)?.config.display().to_string();
            ok(
                serde_json::json!({"ok": true, "current": name, "config": config}),
                vec![format!("current context: {name} ({config})")],
            )
        }
        ContextCommand::Add { name } => {
            let path = g.config.as_deref().ok_or_else(|| {
                OpError::Usage(format!(
                    "give the context's config: slicectl context add {name} --config FILE"
                ))
            })?;
            let replaced = contexts.add(name, path)?;
            contexts.save(&dir)?;
            let config = contexts.get(name)?.config.display().to_string();
            let verb = if replaced { "replaced" } else { "added" };
            ok(
                serde_json::json!({
                    "ok": true, "name": name, "config": config, "replaced": replaced,
                }),
                vec![
                    format!("{verb} context {name} ({config})"),
                    format!("use it: slicectl context use {name}"),
                ],
            )
        }
        ContextCommand::Show => {
            let found = find_config(g.config.as_deref(), g.context.as_deref())?;
            let Some((path, source)) = found else {
                return Ok(ok(
                    serde_json::json!({"ok": true, "config": null, "context": null}),
                    vec![format!(
                        "no config: none given with --config, no current context, no {}",
                        dir.join(slicectl::context::CONFIG_FILE).display()
                    )],
                ));
            };
            let config = ClientConfig::load(&path)?;
            let (context, from) = match &source {
                Source::Flag => (None, "--config or PLANETMESH_CONFIG".to_owned()),
                Source::Context(name) => (Some(name.clone()), format!("context {name}")),
                Source::Default => (None, "the default file".to_owned()),
            };
            let path_text = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
            let mut lines = vec![format!("config: {} (from {from})", path.display())];
            for b in config.broker_list() {
                lines.push(format!("broker: {b}"));
            }
            if !config.agents.is_empty() {
                lines.push(format!("agents: {}", config.agents.len()));
            }
            for (what, p) in [
                ("key", &config.key_file),
                ("certificate", &config.membership),
                ("state", &config.state_dir),
            ] {
                if let Some(p) = path_text(p) {
                    lines.push(format!("{what}: {p}"));
                }
            }
            ok(
                serde_json::json!({
                    "ok": true,
                    "config": path.display().to_string(),
                    "context": context,
                    "broker": config.broker,
                    "brokers": config.broker_list(),
                    "agents": config.agents,
                    "key_file": path_text(&config.key_file),
                    "membership": path_text(&config.membership),
                    "state_dir": path_text(&config.state_dir),
                }),
                lines,
            )
        }
    })
}

fn try_run(cli: Cli) -> Result<i32, OpError> {
    if let Command::Manual(manual) = &cli.command {
        manual
            .run::<Cli>()
            .map_err(|e| OpError::Setup(format!("writing the manual: {e}")))?;
        return Ok(0);
    }
    let g = &cli.global;
    if let Command::Context(command) = &cli.command {
        let o = context(command, g)?;
        print(&o, g.json);
        return Ok(o.class.code());
    }
    let config = match find_config(g.config.as_deref(), g.context.as_deref())? {
        Some((path, _)) => ClientConfig::load(&path)?,
        None => ClientConfig::default(),
    };
    let key_file = g
        .key
        .clone()
        .or(config.key_file.clone())
        .or_else(default_key_file);
    if let Command::Keygen { out } = &cli.command {
        return keygen(out.clone(), key_file, g.json);
    }
    let state_dir = g
        .state_dir
        .clone()
        .or(config.state_dir.clone())
        .or_else(slicectl::state::default_dir);
    let cert = g.cert.clone().or(config.membership.clone());
    if let Some(dir) = &state_dir {
        slicectl::nodes::open(dir);
    }
    let command = match cli.command {
        Command::Slice(command) => Online::Slice(command),
        Command::Ticket(TicketCli::Acquire(flags)) => Online::Acquire(flags),
        Command::Ticket(TicketCli::Offline(command)) => {
            let ctx = slicectl::ticket::Context {
                state_dir: state_dir.clone(),
                key_file: key_file.clone(),
                cert: cert.clone(),
            };
            match slicectl::ticket::run_offline(command, &ctx)? {
                slicectl::ticket::Step::Done(o) => {
                    print(&o, g.json);
                    return Ok(o.class.code());
                }
                slicectl::ticket::Step::Redeem(ask) => Online::Redeem(ask),
            }
        }
        Command::Keygen { .. } | Command::Manual(_) | Command::Context(_) => return Ok(0),
    };
    let state_dir = state_dir.ok_or_else(|| {
        OpError::Setup(
            "no state directory: give --state-dir (or state_dir in the config; no home \
                 directory to default to)"
                .into(),
        )
    })?;
    let state = State::open(&state_dir)?;
    slicectl::nodes::learn_from_state(&state);
    slicectl::events::remember(&state_dir, &state);
    if let Online::Slice(SliceCommand::List) = command {
        let o = ops::list(&state)?;
        print(&o, g.json);
        return Ok(o.class.code());
    }
    // Bad flags are usage failures whatever else is missing: check them before the identity
    // and the network.
    command.check()?;
    let key_file = key_file.ok_or_else(|| {
        OpError::Setup(
            "no key file: give --key (or key_file in the config; no home directory to default \
             to); `slicectl keygen` makes one"
                .into(),
        )
    })?;
    let identity = Identity::load(&key_file, cert.as_deref())?;
    // The certificate and the trust entries are checked here, once, before any network call.
    if command.asks_agents()
        && let (Some(path), Some(member)) = (cert.as_deref(), identity.member.as_ref())
    {
        slicectl::preflight::check_certificate(path, member, federation::unix_now())?;
    }
    let (mut trust, warnings) =
        slicectl::preflight::check_trust(&config.trust, identity.member.as_ref())?;
    for warning in &warnings {
        eprintln!("slicectl: warning: {warning}");
    }
    for t in &g.trust {
        trust.push(parse_trust(t)?);
    }
    let choice = slicectl::brokers::choose(&g.broker, &g.agent, &config);
    let endpoints = Endpoints {
        brokers: choice.brokers,
        agents: choice.agents,
        ads_from: choice.ads_from,
        discover: choice.discover,
        state_dir: Some(state_dir.clone()),
        bootstrap: [config.bootstrap.clone(), g.bootstrap.clone()].concat(),
        trust,
    };
    let settings = Settings {
        timeout: Duration::from_secs(g.timeout.or(config.timeout_secs).unwrap_or(20).max(1)),
        concurrency: g.concurrency.or(config.concurrency).unwrap_or(32).max(1),
    };
    // Progress goes to standard error, and only to a terminal; never under --json.
    let progress = Progress {
        visible: !g.json && std::io::stderr().is_terminal(),
    };
    let json = g.json;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| OpError::Internal(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        let session = Session::connect(identity, &endpoints, settings).await?;
        // Watching commands keep the local state closed while they wait.
        if let Online::Slice(command) = &command
            && let Some(w) = slicectl::watch::Watch::of(&command_watch(command))
        {
            let (session, result) = w.run(session, state, &state_dir, json).await;
            if let Some(session) = session {
                session.shutdown().await;
            }
            let o = result?;
            print(&o, json);
            return Ok(o.class.code());
        }
        if command.names_unknown_nodes() {
            session.discover_nodes().await;
        }
        let manager = Manager {
            session,
            state,
            progress,
        };
        let result = match command {
            Online::Slice(command) => dispatch(&manager, command, &state_dir).await,
            Online::Acquire(flags) => slicectl::ticket::acquire(&manager, &flags.spec()?).await,
            Online::Redeem(ask) => slicectl::ticket::redeem(&manager, *ask).await,
        };
        manager.session.shutdown().await;
        let o = result?;
        print(&o, json);
        Ok(o.class.code())
    })
}

/// A command that needs the network.
#[allow(clippy::large_enum_variant)] // one per process
enum Online {
    Slice(SliceCommand),
    Acquire(SpecFlags),
    Redeem(Box<slicectl::ticket::RedeemAsk>),
}

impl Online {
    /// Whether a node argument names no node known yet.
    fn names_unknown_nodes(&self) -> bool {
        match self {
            Online::Slice(SliceCommand::Create(f) | SliceCommand::Plan(f)) | Online::Acquire(f) => {
                f.names_unknown_nodes()
            }
            _ => false,
        }
    }

    /// Whether the command asks a broker or agents (which check the principal's certificate):
    /// then slicectl checks it first.
    fn asks_agents(&self) -> bool {
        matches!(
            self,
            Online::Acquire(_)
                | Online::Slice(
                    SliceCommand::Create(_) | SliceCommand::Plan(_) | SliceCommand::Sync { .. }
                )
        )
    }

    /// Checks what can be checked without the network.
    fn check(&self) -> Result<(), OpError> {
        match self {
            Online::Slice(command) => command.check(),
            Online::Acquire(flags) => flags.check(),
            Online::Redeem(_) => Ok(()),
        }
    }
}

impl SliceCommand {
    /// Checks what can be checked without the network: specs and durations.
    fn check(&self) -> Result<(), OpError> {
        match self {
            SliceCommand::Create(flags) | SliceCommand::Plan(flags) => flags.check()?,
            SliceCommand::Renew { for_: Some(f), .. } => {
                parse_duration(f)?;
            }
            SliceCommand::Exec { timeout_cmd, .. } => {
                parse_duration(timeout_cmd)?;
            }
            SliceCommand::Status { interval, .. } => {
                parse_duration(interval)?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// What `slicectl::watch` needs of a watching command (`status --watch`, `logs --follow`).
fn command_watch(command: &SliceCommand) -> slicectl::watch::Asked {
    match command {
        SliceCommand::Status {
            name,
            watch: true,
            interval,
        } => slicectl::watch::Asked::Status {
            name: name.clone(),
            interval: interval.clone(),
        },
        SliceCommand::Logs {
            name,
            tail,
            follow: true,
        } => slicectl::watch::Asked::Logs {
            name: name.clone(),
            tail: *tail,
        },
        _ => slicectl::watch::Asked::Nothing,
    }
}

async fn dispatch(
    m: &Manager,
    command: SliceCommand,
    state_dir: &std::path::Path,
) -> Result<Outcome, OpError> {
    match command {
        SliceCommand::Create(flags) => m.create(&flags.spec()?).await,
        SliceCommand::Plan(flags) => m.plan(&flags.spec()?).await,
        SliceCommand::Status { name, .. } => m.status(&name).await,
        SliceCommand::Events { name } => m.events(&name, state_dir).await,
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
        SliceCommand::Logs { name, tail, .. } => m.logs(&name, tail).await,
        SliceCommand::Keys { name, action } => {
            let action = match action {
                KeysCommand::Add { line } => KeyAction::Add(line),
                KeysCommand::Del { line } => KeyAction::Del(line),
                KeysCommand::List => KeyAction::List,
            };
            m.keys(&name, action).await
        }
        SliceCommand::Sync { name } => m.sync(name.as_deref()).await,
        SliceCommand::List => ops::list(&m.state),
        // ssh's own terminal session; its status is slicectl's.
        SliceCommand::Ssh { name, node, args } => {
            std::process::exit(m.ssh(&name, node.as_deref(), &args).await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        // A subcommand argument that shares an id with a global one (as `keys add <key>` once
        // did with `--key`) panics only when parsed: parse it.
        let cli = Cli::try_parse_from([
            "slicectl",
            "--key",
            "/k",
            "slice",
            "keys",
            "s",
            "add",
            "ssh-ed25519 AAAA x@y",
        ])
        .unwrap();
        assert_eq!(cli.global.key.as_deref(), Some(std::path::Path::new("/k")));
    }

    #[test]
    fn create_help_names_the_default_resources() {
        let mut cli = Cli::command();
        let create = cli
            .find_subcommand_mut("slice")
            .and_then(|s| s.find_subcommand_mut("create"))
            .expect("slice create");
        let help = create.render_long_help().to_string();
        assert!(
            help.contains(slicectl::spec::DEFAULT_RESOURCES),
            "--resources' help must name the default ({}): {help}",
            slicectl::spec::DEFAULT_RESOURCES
        );
        // A name and a count make a valid create.
        let cli = Cli::try_parse_from([
            "slicectl",
            "slice",
            "create",
            "--name",
            "a_b",
            "--slivers",
            "3",
        ])
        .unwrap();
        let super::Command::Slice(command) = cli.command else {
            panic!("not a slice command");
        };
        command.check().expect("a name and a count are enough");
    }
}
