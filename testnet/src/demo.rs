//! `testnet demo`: the whole flow a newcomer wants to see, each step a real `slicectl` call
//! against the running testnet, printed with its time: acquire a slice spanning both
//! federations through the broker, look at it, run a command in every sliver, renew, delete.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

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

/// Runs the demo against the testnet in `dir`; returns the total time.
pub fn run(dir: &Path) -> anyhow::Result<std::time::Duration> {
    let manifest = Manifest::load(dir)?;
    let slicectl = bin_dir()?.join("slicectl");
    if !slicectl.exists() {
        anyhow::bail!(
            "{} is missing: build it with `cargo build --workspace --bins`",
            slicectl.display()
        );
    }
    let config = dir.join("slicectl.toml");
    let total = Instant::now();
    for (n, (title, args)) in steps(&manifest).into_iter().enumerate() {
        println!("\n[{}] {title}", n + 1);
        println!("    $ slicectl {}", args.join(" "));
        let start = Instant::now();
        let out = Command::new(&slicectl)
            .arg("--config")
            .arg(&config)
            .args(&args)
            .output()
            .with_context(|| format!("running {}", slicectl.display()))?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("    {line}");
        }
        if !out.status.success() {
            for line in String::from_utf8_lossy(&out.stderr).lines() {
                println!("    {line}");
            }
            anyhow::bail!(
                "step {} failed ({}) after {:.2}s",
                n + 1,
                out.status,
                start.elapsed().as_secs_f64()
            );
        }
        println!("    ({:.2}s)", start.elapsed().as_secs_f64());
    }
    Ok(total.elapsed())
}
