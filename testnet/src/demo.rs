//! `testnet demo`: the whole flow a newcomer wants to see, each step a real `slicectl` call
//! against the running testnet, printed with its time: acquire a slice spanning both
//! federations through the broker, look at it, run a command in every sliver, renew, delete.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::generate::Manifest;
use crate::launch::bin_dir;

/// The demo slice's name: the principal's site prefix plus `demo`.
pub const DEMO_SLICE: &str = "fed0-site0_demo";

/// One step: its title and `slicectl` arguments (after `--config`).
fn steps(manifest: &Manifest) -> Vec<(&'static str, Vec<String>)> {
    let federations: Vec<String> = manifest
        .federations
        .iter()
        .flat_map(|f| ["--federation".to_owned(), f.name.clone()])
        .collect();
    let slivers = manifest.topology.nodes.min(4).to_string();
    let mut create = vec![
        "slice".to_owned(),
        "create".to_owned(),
        "--name".to_owned(),
        DEMO_SLICE.to_owned(),
        "--slivers".to_owned(),
        slivers,
        "--resources".to_owned(),
        "cpu=250m,memory=128MiB,disk=256MiB,egress=5Mbit".to_owned(),
        "--duration".to_owned(),
        "1h".to_owned(),
        "--lease".to_owned(),
        "30m".to_owned(),
    ];
    create.extend(federations);
    let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    vec![
        (
            "acquire a slice across the federations (broker → agents → tickets → redeem at every node)",
            create,
        ),
        (
            "status of every sliver",
            words(&["slice", "status", DEMO_SLICE]),
        ),
        (
            "run a command in every sliver",
            words(&[
                "slice",
                "exec",
                DEMO_SLICE,
                "--",
                "/bin/sh",
                "-c",
                "echo $(hostname) sees $(ls /proc | grep -c '^[0-9]') processes",
            ]),
        ),
        (
            "renew every lease for 1h (each node says what it granted)",
            words(&["slice", "renew", DEMO_SLICE, "--for", "1h"]),
        ),
        (
            "delete the slice (every lease released, every sliver destroyed)",
            words(&["slice", "delete", DEMO_SLICE]),
        ),
    ]
}

/// `slicectl` as the demo and scenarios run it: the workspace's binary with a testnet's
/// config, one process per command.
#[derive(Debug, Clone)]
pub struct Slicectl {
    /// The binary.
    pub bin: PathBuf,
    /// The config file (`DIR/slicectl.toml`).
    pub config: PathBuf,
}

/// What one `slicectl` call did.
#[derive(Debug, Clone)]
pub struct SlicectlRun {
    /// Its exit code (slicectl's failure class; -1 if it died of a signal).
    pub code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// How long it took.
    pub elapsed: Duration,
}

impl Slicectl {
    /// The binary next to this program, with the config of the testnet in `dir`.
    pub fn for_testnet(dir: &Path) -> anyhow::Result<Slicectl> {
        let bin = bin_dir()?.join("slicectl");
        if !bin.exists() {
            anyhow::bail!(
                "{} is missing: build it with `cargo build --workspace --bins`",
                bin.display()
            );
        }
        Ok(Slicectl {
            bin,
            config: dir.join("slicectl.toml"),
        })
    }

    /// Runs `slicectl --config CONFIG ARGS…`, killing it (by its own handle) after `limit`.
    pub fn run(&self, args: &[String], limit: Duration) -> anyhow::Result<SlicectlRun> {
        let start = Instant::now();
        let mut child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.bin.display()))?;
        // Read both pipes on threads so a chatty child never blocks on a full pipe.
        let mut out_pipe = child.stdout.take().context("slicectl stdout")?;
        let mut err_pipe = child.stderr.take().context("slicectl stderr")?;
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out_pipe.read_to_end(&mut buf);
            buf
        });
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err_pipe.read_to_end(&mut buf);
            buf
        });
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!(
                    "slicectl {} did not finish in {:.0}s (killed)",
                    args.join(" "),
                    limit.as_secs_f64()
                );
            }
            crate::pause(Duration::from_millis(20));
        };
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        Ok(SlicectlRun {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            elapsed: start.elapsed(),
        })
    }
}

/// Runs the demo against the testnet in `dir`; returns the total time.
pub fn run(dir: &Path) -> anyhow::Result<Duration> {
    let manifest = Manifest::load(dir)?;
    let slicectl = Slicectl::for_testnet(dir)?;
    let total = Instant::now();
    for (n, (title, args)) in steps(&manifest).into_iter().enumerate() {
        println!("\n[{}] {title}", n + 1);
        println!("    $ slicectl {}", args.join(" "));
        let out = slicectl.run(&args, Duration::from_secs(300))?;
        for line in out.stdout.lines() {
            println!("    {line}");
        }
        if out.code != 0 {
            for line in out.stderr.lines() {
                println!("    {line}");
            }
            anyhow::bail!(
                "step {} failed (exit {}) after {:.2}s",
                n + 1,
                out.code,
                out.elapsed.as_secs_f64()
            );
        }
        println!("    ({:.2}s)", out.elapsed.as_secs_f64());
    }
    Ok(total.elapsed())
}
