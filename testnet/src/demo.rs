//! `testnet demo`: the whole flow a newcomer wants to see, each step a real `slicectl` call
//! against the running testnet, printed with its time: acquire a slice spanning both
//! federations through the broker, look at it, run a command in every sliver, reach the
//! internet host from every sliver (namespaced testnets with real slivers: the source it sees
//! must be the sliver's node's address), renew, delete.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::generate::{HostInfo, InternetHost, Manifest};
use crate::launch::bin_dir;

/// The demo slice's name: the principal's site prefix plus `demo`.
pub const DEMO_SLICE: &str = "fed0-site0_demo";

/// One step of the demo.
enum DemoStep {
    /// A `slicectl` call: its title and arguments (after `--config`), printed as it runs.
    Slicectl(&'static str, Vec<String>),
    /// Every sliver fetches the internet host's page, which names the source it saw.
    ReachTheInternet,
}

/// The demo's steps, in order.
fn steps(manifest: &Manifest) -> Vec<DemoStep> {
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
        DemoStep::Slicectl(
            "acquire a slice across the federations (broker → agents → tickets → redeem at every node)",
            create,
        ),
        DemoStep::Slicectl(
            "status of every sliver",
            words(&["slice", "status", DEMO_SLICE]),
        ),
        DemoStep::Slicectl(
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
        DemoStep::ReachTheInternet,
        DemoStep::Slicectl(
            "renew every lease for 1h (each node says what it granted)",
            words(&["slice", "renew", DEMO_SLICE, "--for", "1h"]),
        ),
        DemoStep::Slicectl(
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
    for (n, step) in steps(&manifest).into_iter().enumerate() {
        match step {
            DemoStep::Slicectl(title, args) => run_slicectl_step(&slicectl, n + 1, title, &args)?,
            DemoStep::ReachTheInternet => reach_the_internet(&manifest, &slicectl, n + 1)?,
        }
    }
    Ok(total.elapsed())
}

/// Step `n`: one `slicectl` call, printed with its output and time; an error if it failed.
fn run_slicectl_step(
    slicectl: &Slicectl,
    n: usize,
    title: &str,
    args: &[String],
) -> anyhow::Result<()> {
    println!("\n[{n}] {title}");
    println!("    $ slicectl {}", args.join(" "));
    let out = slicectl.run(args, Duration::from_secs(300))?;
    for line in out.stdout.lines() {
        println!("    {line}");
    }
    if out.code != 0 {
        for line in out.stderr.lines() {
            println!("    {line}");
        }
        anyhow::bail!(
            "step {n} failed (exit {}) after {:.2}s",
            out.code,
            out.elapsed.as_secs_f64()
        );
    }
    println!("    ({:.2}s)", out.elapsed.as_secs_f64());
    Ok(())
}

/// Step `n`: every sliver fetches the internet host's page (bash's `/dev/tcp`, within 10 s);
/// the source address it names must be the sliver's node's own (its `public_address`: the
/// node's egress, with source NAT). A one-line note instead where slivers have no egress.
fn reach_the_internet(manifest: &Manifest, slicectl: &Slicectl, n: usize) -> anyhow::Result<()> {
    let skip = |why: &str| {
        println!("\n[{n}] reach the internet host from every sliver: skipped ({why})");
        Ok(())
    };
    let internet = match (&manifest.internet, manifest.isolation.as_str()) {
        (Some(internet), "linux") => internet,
        (None, _) => {
            return skip(
                "a loopback testnet has no internet host, and its nodes give slivers no egress",
            );
        }
        (Some(_), isolation) => {
            return skip(&format!("{isolation} isolation makes no real slivers"));
        }
    };
    println!(
        "\n[{n}] reach the internet host ({}) from every sliver: its traffic leaves through its \
         node, with the node's address as its source",
        internet.url()
    );
    let (slivers, out) = fetch_in_every_sliver(slicectl, internet)?;
    let mut failed = Vec::new();
    for sliver in &slivers {
        match reached_from(manifest, internet, sliver) {
            Ok(line) => println!("    {line}"),
            Err(problem) => {
                println!("    {problem}");
                failed.push(problem);
            }
        }
    }
    if slivers.is_empty() {
        failed.push(format!(
            "no sliver answered (exit {}): {}",
            out.code,
            out.stderr.trim()
        ));
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "step {n} failed: {} of {} slivers did not reach the internet host from their node's \
             address ({}); see each node's log (`testnet logs NODE`) for its egress",
            failed.len(),
            slivers.len().max(1),
            failed.join("; ")
        );
    }
    println!("    ({:.2}s)", out.elapsed.as_secs_f64());
    Ok(())
}

/// Runs the internet host's [fetch script](crate::internet::fetch_script) in every sliver of
/// the demo slice (`slicectl --json slice exec`, printed as one would type it); returns each
/// sliver's entry of the answer, and the call.
fn fetch_in_every_sliver(
    slicectl: &Slicectl,
    internet: &InternetHost,
) -> anyhow::Result<(Vec<serde_json::Value>, SlicectlRun)> {
    let script = crate::internet::fetch_script(&internet.ip, internet.http_port);
    let command = [
        "slice", "exec", DEMO_SLICE, "--", "timeout", "10", "bash", "-c",
    ];
    println!(
        "    $ slicectl {} '{}'",
        command.join(" "),
        script.replace('\n', "; ")
    );
    let args: Vec<String> = std::iter::once("--json")
        .chain(command)
        .map(str::to_owned)
        .chain([script])
        .collect();
    let out = slicectl.run(&args, Duration::from_secs(120))?;
    let json = out
        .stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .with_context(|| {
            format!(
                "slicectl slice exec printed no JSON (exit {}): {}",
                out.code,
                out.stderr.trim()
            )
        })?;
    let slivers = json["slivers"].as_array().cloned().unwrap_or_default();
    Ok((slivers, out))
}

/// What one sliver's fetch showed (`slicectl --json slice exec`'s entry): a line naming the
/// source the internet host saw if it is the node's own address, else why not.
fn reached_from(
    manifest: &Manifest,
    internet: &InternetHost,
    sliver: &serde_json::Value,
) -> Result<String, String> {
    let key = sliver["node"].as_str().unwrap_or("?");
    let node: Option<&HostInfo> = manifest.hosts.iter().find(|h| h.key.to_string() == key);
    let name = node.map_or(key, |h| h.plan.name.as_str());
    if let Some(error) = sliver["error"].as_str() {
        return Err(format!("{name}: {error}"));
    }
    let stdout = sliver["stdout"].as_str().unwrap_or("");
    let Some(seen) = crate::internet::seen_peer(stdout) else {
        let why = sliver["stderr"]
            .as_str()
            .and_then(|e| e.lines().find(|l| !l.trim().is_empty()))
            .map_or_else(|| "no answer".to_owned(), str::to_owned);
        let code = sliver["exit_code"].as_i64().unwrap_or(-1);
        let timed_out = if code == 124 { ", timed out" } else { "" };
        return Err(format!(
            "{name}: cannot reach {} (exit {code}{timed_out}): {why}",
            internet.url()
        ));
    };
    match node {
        Some(node) if seen.ip().to_string() == node.ip => Ok(format!(
            "{name}: the internet host saw {seen}, {name}'s own address"
        )),
        Some(node) => Err(format!(
            "{name}: the internet host saw {seen}, not {name}'s address {}",
            node.ip
        )),
        None => Err(format!("{name}: not a node of this testnet (saw {seen})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_sliver_passes_only_if_the_internet_host_saw_its_nodes_address() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = crate::generate::generate(
            dir.path(),
            crate::topology::Topology::default(),
            crate::generate::Network::Namespaces,
            "linux",
        )
        .unwrap();
        let internet = manifest.internet.clone().unwrap();
        let node = manifest.host("node1").unwrap();
        let other = manifest.host("node2").unwrap();
        let answer = |ip: &str| {
            format!(
                "HTTP/1.0 200 OK\r\n\r\n{}",
                crate::internet::greeting(format!("{ip}:40404").parse().unwrap())
            )
        };
        let sliver = |stdout: String| json!({"node": node.key.to_string(), "exit_code": 0, "stdout": stdout, "stderr": ""});
        let ok = reached_from(&manifest, &internet, &sliver(answer(&node.ip))).unwrap();
        assert!(ok.contains("node1's own address"), "{ok}");
        let wrong = reached_from(&manifest, &internet, &sliver(answer(&other.ip))).unwrap_err();
        assert!(
            wrong.contains(&format!("not node1's address {}", node.ip)),
            "{wrong}"
        );
        let sliver_ip = reached_from(&manifest, &internet, &sliver(answer("10.200.1.1")));
        assert!(
            sliver_ip.is_err(),
            "the sliver's own address is not the node's"
        );
        let refused = json!({
            "node": node.key.to_string(), "exit_code": 7, "stdout": "",
            "stderr": "bash: connect: Connection refused\nbash: line 1: /dev/tcp/10.250.255.254/80: Connection refused",
        });
        let refused = reached_from(&manifest, &internet, &refused).unwrap_err();
        assert!(
            refused.contains("node1: cannot reach http://10.250.255.254/ (exit 7): bash: connect: Connection refused"),
            "{refused}"
        );
        let timed_out =
            json!({"node": node.key.to_string(), "exit_code": 124, "stdout": "", "stderr": ""});
        let timed_out = reached_from(&manifest, &internet, &timed_out).unwrap_err();
        assert!(
            timed_out.contains("(exit 124, timed out): no answer"),
            "{timed_out}"
        );
        let unreachable = json!({"node": node.key.to_string(), "error": "node unreachable"});
        assert_eq!(
            reached_from(&manifest, &internet, &unreachable).unwrap_err(),
            "node1: node unreachable"
        );
    }
}
