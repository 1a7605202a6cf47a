//! `nodemgr`: the PlanetMesh node manager.
//!
//! `nodemgr init` writes a commented config and a key; `nodemgr run --config node.toml` runs
//! the daemon until SIGTERM or ctrl-c, then shuts down gracefully (slivers keep running).
//! `nodemgr reload` has the running daemon re-read node.toml (as SIGHUP does) and prints
//! what changed; `nodemgr delegations` lists the delegations in force. Both talk to the
//! daemon's local HTTP endpoint (`http` in node.toml).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use federation::daemon::DaemonKind;
use federation::daemon::cli::{Failure, exit, load_config, usage};
use federation::daemon::config::ConfigError;
use federation::daemon::join::{JoinArgs, KeyArgs, init_joined, key_command, next_after_init};
use federation::daemon::runtime::describe_key;
use node::daemon::config::{NodeKind, NodeManagerConfig, default_config};

#[derive(Parser, Debug)]
#[command(
    name = "nodemgr",
    version,
    long_version = federation::manual::long_version(),
    about = "PlanetMesh node manager: redeems tickets into isolated slivers and returns signed leases"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    json_logs: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a commented default config (node.toml) and a new key (node.key, mode 0600).
    Init {
        /// Directory to write into (created if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[command(flatten)]
        join: JoinArgs,
    },
    /// Run the daemon.
    Run {
        /// The config file.
        #[arg(long, short, default_value = "node.toml")]
        config: PathBuf,
    },
    /// Decommission a stopped node: destroy every sliver and remove every lease.
    Wipe {
        /// The config file.
        #[arg(long, short, default_value = "node.toml")]
        config: PathBuf,
    },
    /// Have the running daemon re-read its config and apply delegations, capacity and new
    /// trust entries without a restart (as SIGHUP does); prints what changed, or why nothing
    /// did.
    Reload {
        /// The config file (its `http` address reaches the daemon).
        #[arg(long, short, default_value = "node.toml")]
        config: PathBuf,
    },
    /// List the delegations the running daemon has in force: agent, share, scope, end.
    Delegations {
        /// The config file (its `http` address reaches the daemon).
        #[arg(long, short, default_value = "node.toml")]
        config: PathBuf,
    },
    /// Print this node's public key and peer id (for `fedctl certify --subject` and for
    /// others' bootstrap addresses).
    Key {
        #[command(flatten)]
        args: KeyArgs,
    },
    #[command(flatten)]
    Manual(federation::manual::ManualCommand),
}

fn main() -> ExitCode {
    // Before anything else runs, the command line's parsing included.
    if let Err(e) = node::sliver::enter::shield_node_process()
        .context("clearing the dumpable flag and closing inherited descriptors at exec")
    {
        return exit(NodeKind::PROGRAM, Err(e.into()));
    }
    exit(NodeKind::PROGRAM, run(Cli::parse()))
}

fn run(cli: Cli) -> Result<(), Failure> {
    federation::daemon::init_tracing(cli.json_logs);
    match cli.command {
        Command::Manual(manual) => Ok(manual.run::<Cli>()?),
        Command::Init { dir, join } => {
            let key = init_joined::<NodeKind>(&dir, "node.toml", default_config, &join)?;
            println!(
                "wrote {} and {}",
                dir.join("node.toml").display(),
                dir.join(NodeKind::KEY_FILE).display()
            );
            println!("{}", describe_key::<NodeKind>(&key.public()));
            println!(
                "{}",
                next_after_init::<NodeKind>(&join, &dir, "node.toml", &key.public())
            );
            Ok(())
        }
        Command::Wipe { config } => {
            let config = load_config(NodeKind::PROGRAM, &config, NodeManagerConfig::load)?;
            let removed =
                tokio::runtime::Runtime::new()?.block_on(node::daemon::run::wipe(config))?;
            println!("destroyed every sliver; removed {removed} leases");
            Ok(())
        }
        Command::Reload { config } => {
            let body = call_daemon(&config, "POST", "/reload")?;
            let report: node::daemon::reload::ReloadReport = serde_json::from_str(&body)
                .with_context(|| format!("the daemon answered {body:?}"))?;
            println!("reloaded: {report}");
            Ok(())
        }
        Command::Delegations { config } => {
            let body = call_daemon(&config, "GET", "/delegations")?;
            let list: Vec<node::daemon::delegated::DelegationView> = serde_json::from_str(&body)
                .with_context(|| format!("the daemon answered {body:?}"))?;
            if list.is_empty() {
                println!("no delegation: no agent can issue tickets for this node");
            }
            let now = federation::unix_now();
            for d in list {
                println!(
                    "{}  {}  {}  ends in {} s (signed {} s ago)",
                    d.agent,
                    d.share,
                    d.scope,
                    d.not_after.saturating_sub(now),
                    now.saturating_sub(d.issued_at)
                );
            }
            Ok(())
        }
        Command::Key { args } => {
            println!("{}", key_command::<NodeKind>(&args, "node.toml")?);
            Ok(())
        }
        Command::Run { config } => {
            let config = load_config(NodeKind::PROGRAM, &config, NodeManagerConfig::load)?;
            let runtime = tokio::runtime::Runtime::new()?;
            let ran: anyhow::Result<()> = runtime.block_on(async move {
                let (running, shutdown) = node::daemon::run::start(config).await?;
                tracing::info!(
                    node = %running.overlay.local_key(),
                    addrs = ?running.overlay.listen_addrs().await.unwrap_or_default(),
                    http = ?running.http,
                    "nodemgr running"
                );
                let died = running
                    .overlay
                    .alive_until(federation::daemon::shutdown_signal())
                    .await;
                tracing::info!("shutting down: finishing requests in flight; slivers keep running");
                shutdown.await;
                died.context("the node manager lost its overlay")
            });
            Ok(ran?)
        }
    }
}

/// One request to the running daemon's HTTP endpoint (loopback, HTTP/1.1, closed after);
/// the body of a 200, or the daemon's sentence as the error.
fn call_daemon(config: &Path, method: &str, path: &str) -> Result<String, Failure> {
    use std::io::{Read, Write};
    let loaded = load_config(NodeKind::PROGRAM, config, NodeManagerConfig::load)?;
    let Some(addr) = loaded.common.http else {
        return Err(usage(format!(
            "http is off in {}: send SIGHUP to the nodemgr process instead",
            config.display()
        ))
        .into());
    };
    let unreachable = |e: std::io::Error| {
        anyhow::Error::new(e).context(format!(
            "the node's HTTP endpoint {addr} does not answer: is `nodemgr run --config {}` running?",
            config.display()
        ))
    };
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(unreachable)?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(unreachable)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(unreachable)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split(' ').nth(1).unwrap_or("");
    if status == "200" {
        return Ok(body.to_owned());
    }
    Err(ConfigError::Invalid {
        path: config.to_owned(),
        detail: format!("the daemon refused ({status}): {}", body.trim()),
    }
    .into())
}
