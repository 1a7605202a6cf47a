//! Running a scenario: bringing its testnet up (or using one that runs), each step in order
//! with its time, a failure's report (its line, slicectl's output, the daemons' last
//! warnings), and taking down what the run brought up, whatever happens (a drop guard, and
//! SIGINT or SIGTERM stopping at the next step).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::demo::Slicectl;
use crate::generate::{Manifest, Network, generate};
use crate::launch;
use crate::probe;
use crate::topology::Topology;

use super::ScenarioError;
use super::model::{IsolationChoice, NetworkChoice, Scenario};
use super::runner::{Runner, StepFailure, run_step};
use super::validate::validate_against;

// ---------------------------------------------------------------------------------------------
// Bringing a testnet up.
// ---------------------------------------------------------------------------------------------

/// Turns `auto` into what this machine can do: namespaces and real slivers as root, loopback
/// and no isolation otherwise. Asking for namespaces or linux isolation without root is an
/// error that says what to use instead.
pub fn resolve(
    network: NetworkChoice,
    isolation: IsolationChoice,
) -> anyhow::Result<(Network, &'static str)> {
    let root = nix::unistd::geteuid().is_root();
    let network = match network {
        NetworkChoice::Namespaces => Network::Namespaces,
        NetworkChoice::Loopback => Network::Loopback,
        NetworkChoice::Auto if root => Network::Namespaces,
        NetworkChoice::Auto => Network::Loopback,
    };
    let isolation = match isolation {
        IsolationChoice::Linux => "linux",
        IsolationChoice::Memory => "memory",
        IsolationChoice::Auto if root => "linux",
        IsolationChoice::Auto => "memory",
    };
    if !root && (network == Network::Namespaces || isolation == "linux") {
        anyhow::bail!(
            "namespaces and linux isolation need root; run as root, or use loopback and memory \
             (`testnet up --network loopback --isolation memory`; in a scenario's [testnet]: \
             network = \"loopback\", isolation = \"memory\")"
        );
    }
    Ok((network, isolation))
}

/// Generates a testnet in `dir` and starts every daemon (without waiting for convergence:
/// see [`probe::wait_converged`]). If a daemon cannot start, those started are ended and what
/// the testnet made on the machine is removed.
pub fn start(
    dir: &Path,
    topology: Topology,
    network: Network,
    isolation: &str,
) -> anyhow::Result<Manifest> {
    let manifest = generate(dir, topology, network, isolation)?;
    if let Err(e) = launch::start_all(&manifest) {
        let _ = launch::stop_all(&manifest, dir);
        return Err(e);
    }
    Ok(manifest)
}

// ---------------------------------------------------------------------------------------------
// Running.
// ---------------------------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// A signal asked the run to stop.
pub(super) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// From now on SIGINT and SIGTERM stop a running scenario at its next step (or its next look
/// while waiting), which then takes its testnet down as after a failure, instead of ending
/// the process with the daemons still running. For programs (`testnet scenario run`); a
/// library caller decides its own signal handling.
pub fn stop_on_signals() -> anyhow::Result<()> {
    // One message: whether the handlers are installed.
    let (ready, answer) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
    std::thread::Builder::new()
        .name("scenario-signals".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (mut int, mut term) =
                    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
                        (Ok(i), Ok(t)) => (i, t),
                        (Err(e), _) | (_, Err(e)) => {
                            let _ = ready.send(Err(e.to_string()));
                            return;
                        }
                    };
                let _ = ready.send(Ok(()));
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    if INTERRUPTED.swap(true, Ordering::SeqCst) {
                        eprintln!("testnet: taking the testnet down; please wait");
                    } else {
                        eprintln!(
                            "\ntestnet: interrupted: stopping at the next step and taking the testnet down"
                        );
                    }
                }
            });
        })
        .context("starting the signal thread")?;
    answer
        .recv()
        .context("the signal thread ended")?
        .map_err(|e| anyhow::anyhow!("installing signal handlers: {e}"))
}

/// Where and how to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where to bring the scenario's testnet up. If a testnet runs there already (or the
    /// scenario says `reuse`), the scenario runs on it and leaves it running.
    pub dir: PathBuf,
    /// Leave a testnet the run brought up running afterwards.
    pub keep: bool,
}

/// What a passed run took.
#[derive(Debug, Clone)]
pub struct Report {
    /// Bringing the testnet up until ads converged (`None`: it ran already).
    pub up: Option<Duration>,
    /// Each step's summary and time.
    pub steps: Vec<(String, Duration)>,
    /// The whole run, teardown included.
    pub total: Duration,
}

/// The testnet a run uses; ends what it brought up, whatever happens (drop guard).
pub(super) struct Running {
    pub(super) manifest: Manifest,
    pub(super) dir: PathBuf,
    /// The run made the directory (so it may remove all of it).
    fresh_dir: bool,
    /// The run brought it up (so it takes it down).
    owned: bool,
    keep: bool,
    /// Taken down already.
    down: bool,
}

impl Running {
    /// Ends its daemons (see [`launch::stop_all`]); what they were.
    pub(super) fn take_down(&mut self) -> anyhow::Result<Vec<String>> {
        self.down = true;
        launch::stop_all(&self.manifest, &self.dir)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.owned && !self.keep && !self.down {
            self.down = true;
            if let Err(e) = launch::stop_all(&self.manifest, &self.dir) {
                eprintln!("warning: taking the testnet down: {e:#}");
            }
        }
    }
}

/// What is left on the machine of a testnet that was taken down: processes, namespaces,
/// links, cgroups.
pub fn leftovers(manifest: &Manifest) -> Vec<String> {
    let mut left = Vec::new();
    for host in &manifest.hosts {
        if let Some(pid) = launch::running_pid(host) {
            left.push(format!("{} still runs (pid {pid})", host.plan.name));
        }
        if let Some(ns) = &host.netns
            && Path::new(&format!("/run/netns/{ns}")).exists()
        {
            left.push(format!("network namespace {ns}"));
        }
    }
    if let Some(internet) = &manifest.internet {
        if let Some(pid) = launch::internet_pid(internet) {
            left.push(format!("the internet host still runs (pid {pid})"));
        }
        if Path::new(&format!("/run/netns/{}", internet.netns)).exists() {
            left.push(format!("network namespace {}", internet.netns));
        }
    }
    let bridge = crate::netns::bridge(manifest);
    if Path::new(&format!("/sys/class/net/{bridge}")).exists() {
        left.push(format!("bridge {bridge}"));
    }
    let veth = format!("t{}h", manifest.tag);
    if let Ok(links) = std::fs::read_dir("/sys/class/net") {
        for link in links.flatten() {
            let name = link.file_name().to_string_lossy().into_owned();
            if name.starts_with(&veth) {
                left.push(format!("link {name}"));
            }
        }
    }
    let cgroup = format!("planetmesh-tn{}", manifest.tag);
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(
            hierarchies
                .flatten()
                .filter(|h| h.file_type().is_ok_and(|t| t.is_dir()))
                .map(|h| h.path()),
        );
    }
    for root in roots {
        let dir = root.join(&cgroup);
        if dir.is_dir() {
            left.push(format!("cgroup {}", dir.display()));
        }
    }
    left
}

/// `text` without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last warnings and errors of every host's log, for a failure report.
fn log_excerpts(manifest: &Manifest, per_host: usize) -> Vec<String> {
    let mut out = Vec::new();
    for host in &manifest.hosts {
        let Ok(text) = std::fs::read_to_string(host.log_file()) else {
            continue;
        };
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
            .collect();
        for line in &lines[lines.len().saturating_sub(per_host)..] {
            let line: String = strip_ansi(line).chars().take(300).collect();
            out.push(format!("{}: {line}", host.plan.name));
        }
    }
    out
}

/// Removes a testnet's directory once it is down: all of it if the run made it, else only
/// what `generate` and the runner wrote there (an existing directory may hold other files).
fn remove_testnet_files(dir: &Path, fresh: bool) -> anyhow::Result<()> {
    if fresh {
        return std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()));
    }
    for sub in ["authorities", "peering", "hosts", "principal"] {
        let path = dir.join(sub);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for file in ["slicectl.toml", "slicectl-agents.toml", "testnet.toml"] {
        let path = dir.join(file);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Runs a scenario: brings its testnet up (or uses the one running in `options.dir` or named
/// by `reuse`), runs every step in order, printing each and its time, and takes down what it
/// brought up — after a failure too, keeping the directory with the logs — unless
/// `options.keep`. The error names the step that failed, its line, why, and where the logs are.
pub fn run(scenario: &Scenario, options: &RunOptions) -> anyhow::Result<Report> {
    let total = Instant::now();
    println!(
        "scenario {}{}",
        scenario.source,
        scenario
            .description
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default()
    );
    // Before anything is brought up: slicectl must be there.
    Slicectl::for_testnet(&options.dir)?;
    let reuse = scenario.testnet.reuse.clone().or_else(|| {
        options
            .dir
            .join("testnet.toml")
            .exists()
            .then(|| options.dir.clone())
    });
    let (mut running, up) = match reuse {
        Some(dir) => {
            let manifest = Manifest::load(&dir)?;
            if !manifest
                .hosts
                .iter()
                .any(|h| launch::running_pid(h).is_some())
            {
                anyhow::bail!(
                    "{} holds a testnet whose daemons are all stopped (left by a failed run?): \
                     `testnet down --purge --dir {}`, or pick another --dir",
                    dir.display(),
                    dir.display()
                );
            }
            let problems = validate_against(scenario, &manifest);
            if !problems.is_empty() {
                return Err(ScenarioError {
                    source: format!("{} (on the testnet in {})", scenario.source, dir.display()),
                    problems,
                }
                .into());
            }
            println!(
                "running on the testnet in {} ({} hosts; it stays up)",
                dir.display(),
                manifest.hosts.len()
            );
            let dir = dir.canonicalize()?;
            (
                Running {
                    manifest,
                    dir,
                    fresh_dir: false,
                    owned: false,
                    keep: true,
                    down: false,
                },
                None,
            )
        }
        None => {
            let spec = &scenario.testnet;
            let topology = spec.topology();
            let (network, isolation) = resolve(spec.network, spec.isolation)?;
            println!(
                "bringing up a testnet in {} (federations {}, nodes {}, agents {}, brokers {}; {network:?} network, {isolation} isolation)",
                options.dir.display(),
                topology.federations,
                topology.nodes,
                topology.agents,
                topology.brokers,
            );
            let started = Instant::now();
            let fresh_dir = !options.dir.exists();
            let manifest = start(&options.dir, topology, network, isolation)?;
            let running = Running {
                manifest,
                dir: options.dir.canonicalize()?,
                fresh_dir,
                owned: true,
                keep: options.keep,
                down: false,
            };
            let converge = Duration::from_secs(spec.converge_secs.unwrap_or(90));
            probe::wait_converged(&running.manifest, converge, |_, _| {}).with_context(|| {
                if running.keep {
                    format!("the testnet is left running in {}", running.dir.display())
                } else {
                    format!(
                        "the testnet is taken down; its logs are kept in {}/hosts/HOST/daemon.log",
                        running.dir.display()
                    )
                }
            })?;
            let up = started.elapsed();
            println!(
                "{} daemons up, ads converged, in {:.2}s",
                running.manifest.hosts.len(),
                up.as_secs_f64()
            );
            (running, Some(up))
        }
    };
    let manifest = running.manifest.clone();
    let dir = running.dir.clone();
    let context = Runner {
        manifest: &manifest,
        dir: &dir,
        slicectl: Slicectl::for_testnet(&dir)?,
    };
    let count = scenario.steps.len();
    let mut times = Vec::new();
    for (i, placed) in scenario.steps.iter().enumerate() {
        let summary = placed.summary();
        let line = placed.common.line;
        println!("\n[{}/{count}] line {line}: {summary}", i + 1);
        let started = Instant::now();
        let result = if interrupted() {
            Err(StepFailure::new(
                "interrupted (SIGINT or SIGTERM) before it ran",
            ))
        } else {
            run_step(&context, &mut running, &placed.step)
        };
        let took = started.elapsed();
        match result {
            Ok(lines) => {
                for line in lines {
                    println!("      {line}");
                }
                println!("      ok ({:.2}s)", took.as_secs_f64());
                times.push((summary, took));
            }
            Err(failure) => {
                let mut message = format!(
                    "step {} of {count} (line {line} of {}: {summary}) failed after {:.2}s: {}",
                    i + 1,
                    scenario.source,
                    took.as_secs_f64(),
                    failure.reason
                );
                for line in &failure.detail {
                    message.push_str(&format!("\n    {line}"));
                }
                let excerpts = log_excerpts(&running.manifest, 5);
                message.push_str(&format!(
                    "\nlogs: {}/hosts/HOST/daemon.log (`testnet logs HOST --dir {}`)",
                    running.dir.display(),
                    running.dir.display()
                ));
                if !excerpts.is_empty() {
                    message.push_str("; their last warnings and errors:");
                    for line in excerpts {
                        message.push_str(&format!("\n    {line}"));
                    }
                }
                if running.owned && !running.keep && !running.down {
                    match running.take_down() {
                        Ok(_) => message.push_str(&format!(
                            "\nthe testnet was taken down; its directory {} is kept for the logs",
                            running.dir.display()
                        )),
                        Err(e) => message.push_str(&format!("\ntaking the testnet down: {e:#}")),
                    }
                } else if !running.down {
                    message.push_str(&format!(
                        "\nthe testnet is still up: `testnet down --purge --dir {}` when done",
                        running.dir.display()
                    ));
                }
                anyhow::bail!(message);
            }
        }
    }
    if running.owned && !running.keep {
        if !running.down {
            running.take_down()?;
        }
        remove_testnet_files(&running.dir, running.fresh_dir)?;
        if running.fresh_dir {
            println!("\ntestnet taken down and {} removed", running.dir.display());
        } else {
            println!(
                "\ntestnet taken down and its files removed from {}",
                running.dir.display()
            );
        }
    } else if running.owned && !running.down {
        println!(
            "\ntestnet left running in {}: `testnet down --purge --dir {}` when done",
            running.dir.display(),
            running.dir.display()
        );
    }
    let total = total.elapsed();
    println!(
        "scenario passed: {count} steps in {:.2}s{}",
        total.as_secs_f64(),
        up.map(|u| format!(" (bringing the testnet up: {:.2}s)", u.as_secs_f64()))
            .unwrap_or_default()
    );
    Ok(Report {
        up,
        steps: times,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_excerpts_lose_their_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"),
            "2026  WARN x"
        );
    }
}
