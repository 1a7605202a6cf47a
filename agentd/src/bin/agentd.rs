//! `agentd`: a PlanetMesh agent. Mints tickets for the nodes that delegated a share to it.
//!
//! `agentd init` writes a commented config and a key; `agentd run --config agent.toml` runs the
//! daemon until SIGTERM or ctrl-c (the ledger is durable; a restart keeps every ticket).

use std::path::PathBuf;
use std::process::ExitCode;

use agentd::daemon::config::{
    AgentConfig, AgentKind, POLICY_FILE, POLICY_TEMPLATE, default_config,
};
use anyhow::Context;
use clap::{Parser, Subcommand};
use federation::daemon::DaemonKind;
use federation::daemon::cli::{Failure, exit, load_config};
use federation::daemon::join::{JoinArgs, KeyArgs, init_joined, key_command, next_after_init};
use federation::daemon::runtime::describe_key;

#[derive(Parser, Debug)]
#[command(
    name = "agentd",
    version,
    long_version = federation::manual::long_version(),
    about = "PlanetMesh agent: mints capability tickets for the nodes that delegated a share to it"
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
    /// Write a commented default config (agent.toml) and a new key (agent.key, mode 0600).
    Init {
        /// Directory to write into (created if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[command(flatten)]
        join: JoinArgs,
    },
    /// Print this agent's public key and peer id (for `fedctl certify --subject` and for
    /// others' bootstrap addresses).
    Key {
        #[command(flatten)]
        args: KeyArgs,
    },
    /// Run the daemon.
    Run {
        /// The config file.
        #[arg(long, short, default_value = "agent.toml")]
        config: PathBuf,
    },
    #[command(flatten)]
    Manual(federation::manual::ManualCommand),
}

fn main() -> ExitCode {
    exit(AgentKind::PROGRAM, run(Cli::parse()))
}

fn run(cli: Cli) -> Result<(), Failure> {
    federation::daemon::init_tracing(cli.json_logs);
    match cli.command {
        Command::Manual(manual) => Ok(manual.run::<Cli>()?),
        Command::Init { dir, join } => {
            let key = init_joined::<AgentKind>(&dir, "agent.toml", default_config, &join)?;
            let policy = dir.join(POLICY_FILE);
            let kept = policy.exists();
            if !kept {
                std::fs::write(&policy, POLICY_TEMPLATE)
                    .with_context(|| format!("cannot write {}", policy.display()))?;
            }
            println!(
                "wrote {} and {}; {} {} (who gets tickets)",
                dir.join("agent.toml").display(),
                dir.join(AgentKind::KEY_FILE).display(),
                if kept { "kept the existing" } else { "wrote" },
                policy.display()
            );
            println!("{}", describe_key::<AgentKind>(&key.public()));
            println!(
                "{}",
                next_after_init::<AgentKind>(&join, &dir, "agent.toml", &key.public())
            );
            Ok(())
        }
        Command::Key { args } => {
            println!("{}", key_command::<AgentKind>(&args, "agent.toml")?);
            Ok(())
        }
        Command::Run { config } => {
            let config = load_config(AgentKind::PROGRAM, &config, AgentConfig::load)?;
            let ran: anyhow::Result<()> = tokio::runtime::Runtime::new()?.block_on(async move {
                let (running, shutdown) = agentd::daemon::run::start(config).await?;
                tracing::info!(
                    agent = %running.overlay.local_key(),
                    addrs = ?running.overlay.listen_addrs().await.unwrap_or_default(),
                    http = ?running.http,
                    "agentd running"
                );
                let died = running
                    .overlay
                    .alive_until(federation::daemon::shutdown_signal())
                    .await;
                tracing::info!("shutting down: finishing requests in flight");
                shutdown.await;
                died.context("the agent lost its overlay")
            });
            Ok(ran?)
        }
    }
}
