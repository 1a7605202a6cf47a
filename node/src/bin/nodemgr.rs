//! `nodemgr`: the PlanetMesh node manager.
//!
//! `nodemgr init` writes a commented config and a key; `nodemgr run --config node.toml` runs
//! the daemon until SIGTERM or ctrl-c, then shuts down gracefully (slivers keep running).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use federation::daemon::DaemonKind;
use federation::daemon::cli::{Failure, exit, load_config};
use federation::daemon::runtime::{describe_key, init, load_key};
use node::daemon::config::{NodeKind, NodeManagerConfig, default_config};

#[derive(Parser, Debug)]
#[command(
    name = "nodemgr",
    version,
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
        /// The federation this node belongs to.
        #[arg(long)]
        federation: String,
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
    /// Print this node's public key and peer id (for `fedctl certify --subject` and for
    /// others' bootstrap addresses).
    Key {
        /// The key file.
        #[arg(long, default_value = NodeKind::KEY_FILE)]
        key: PathBuf,
    },
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
        Command::Init { dir, federation } => {
            let key = init::<NodeKind>(&dir, "node.toml", &default_config(&federation))?;
            println!(
                "wrote {} and {}",
                dir.join("node.toml").display(),
                dir.join(NodeKind::KEY_FILE).display()
            );
            println!("{}", describe_key::<NodeKind>(&key.public()));
            println!(
                "next: have your federation authority certify it (fedctl certify --role node --subject {})",
                key.public()
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
        Command::Key { key } => {
            println!(
                "{}",
                describe_key::<NodeKind>(&load_key::<NodeKind>(&key)?.public())
            );
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
