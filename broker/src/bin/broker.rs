//! `broker`: a PlanetMesh resource broker. Turns a service's "what I need" into a plan and
//! tickets from the agents of several federations.
//!
//! `broker init` writes a commented config and a key; `broker run --config broker.toml` runs
//! the daemon until SIGTERM or ctrl-c (requests in flight finish first).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use broker::daemon::config::{BrokerConfig, BrokerKind, default_config};
use clap::{Parser, Subcommand};
use federation::daemon::DaemonKind;
use federation::daemon::cli::{Failure, exit, load_config};
use federation::daemon::join::{JoinArgs, KeyArgs, init_joined, key_command, next_after_init};
use federation::daemon::runtime::describe_key;

#[derive(Parser, Debug)]
#[command(
    name = "broker",
    version,
    long_version = federation::manual::long_version(),
    about = "PlanetMesh broker: plans slices across federations and obtains their tickets"
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
    /// Write a commented default config (broker.toml) and a new key (broker.key, mode 0600).
    Init {
        /// Directory to write into (created if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[command(flatten)]
        join: JoinArgs,
    },
    /// Print this broker's public key and peer id (for `fedctl certify --subject` and for
    /// others' bootstrap addresses).
    Key {
        #[command(flatten)]
        args: KeyArgs,
    },
    /// Run the daemon.
    Run {
        /// The config file.
        #[arg(long, short, default_value = "broker.toml")]
        config: PathBuf,
    },
    #[command(flatten)]
    Manual(federation::manual::ManualCommand),
}

fn main() -> ExitCode {
    exit(BrokerKind::PROGRAM, run(Cli::parse()))
}

fn run(cli: Cli) -> Result<(), Failure> {
    federation::daemon::init_tracing(cli.json_logs);
    match cli.command {
        Command::Manual(manual) => Ok(manual.run::<Cli>()?),
        Command::Init { dir, join } => {
            let key = init_joined::<BrokerKind>(&dir, "broker.toml", default_config, &join)?;
            println!(
                "wrote {} and {}",
                dir.join("broker.toml").display(),
                dir.join(BrokerKind::KEY_FILE).display()
            );
            println!("{}", describe_key::<BrokerKind>(&key.public()));
            println!(
                "list the agents to ask under [[agents]] in broker.toml (or let it find them in ads)"
            );
            println!(
                "{}",
                next_after_init::<BrokerKind>(&join, &dir, "broker.toml", &key.public())
            );
            Ok(())
        }
        Command::Key { args } => {
            println!("{}", key_command::<BrokerKind>(&args, "broker.toml")?);
            Ok(())
        }
        Command::Run { config } => {
            let config = load_config(BrokerKind::PROGRAM, &config, BrokerConfig::load)?;
            let ran: anyhow::Result<()> = tokio::runtime::Runtime::new()?.block_on(async move {
                let (running, shutdown) = broker::daemon::run::start(config).await?;
                tracing::info!(
                    broker = %running.overlay.local_key(),
                    addrs = ?running.overlay.listen_addrs().await.unwrap_or_default(),
                    http = ?running.http,
                    agents = running.state.agent_keys().len(),
                    "broker running"
                );
                let died = running
                    .overlay
                    .alive_until(federation::daemon::shutdown_signal())
                    .await;
                tracing::info!("shutting down: finishing requests in flight");
                shutdown.await;
                died.context("the broker lost its overlay")
            });
            Ok(ran?)
        }
    }
}
