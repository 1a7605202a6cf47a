//! `nodemgr`: the PlanetMesh node manager.
//!
//! `nodemgr init` writes a commented config and a key; `nodemgr run --config node.toml` runs
//! the daemon until SIGTERM or ctrl-c, then shuts down gracefully (slivers keep running).

use std::path::PathBuf;

use anyhow::Context;
use capability_schema::SecretKey;
use clap::{Parser, Subcommand};
use node::daemon::config::{DEFAULT_CONFIG, NodeManagerConfig};

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
    /// Print this node's public key (for `fedctl certify --subject`).
    Key {
        /// The key file.
        #[arg(long, default_value = "node.key")]
        key: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    node::sliver::enter::shield_node_process()
        .context("clearing the dumpable flag and closing inherited descriptors at exec")?;
    let cli = Cli::parse();
    federation::daemon::init_tracing(cli.json_logs);
    match cli.command {
        Command::Init { dir, federation } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let config = dir.join("node.toml");
            if config.exists() {
                anyhow::bail!("{} exists already; not overwriting it", config.display());
            }
            let key = SecretKey::generate();
            key.save(&dir.join("node.key"))?;
            std::fs::write(&config, DEFAULT_CONFIG.replace("{federation}", &federation))?;
            println!(
                "wrote {} and {}",
                config.display(),
                dir.join("node.key").display()
            );
            println!("node key: {}", key.public());
            println!(
                "next: have your federation authority certify it (fedctl certify --role node --subject {})",
                key.public()
            );
            Ok(())
        }
        Command::Wipe { config } => {
            let config = NodeManagerConfig::load(&config)?;
            let removed =
                tokio::runtime::Runtime::new()?.block_on(node::daemon::run::wipe(config))?;
            println!("destroyed every sliver; removed {removed} leases");
            Ok(())
        }
        Command::Key { key } => {
            println!("{}", SecretKey::load(&key)?.public());
            Ok(())
        }
        Command::Run { config } => {
            let config = NodeManagerConfig::load(&config)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async move {
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
            })
        }
    }
}
