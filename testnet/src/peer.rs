//! Peering two running testnets as two operators peer two testbeds (`testnet peer A B`).
//!
//! Each testnet was made apart, with its own authorities, and both call their federations
//! `fed0`, `fed1`, …: a federation is known by its authority key, the name is a label. The
//! procedure, for each side X facing the other side Y (the same as `docs/DEPLOY.md`,
//! "Peering two testbeds", by hand):
//! 1. every authority of X signs what it serves of every federation of Y (`fedctl peer
//!    --with-name NAME --with-key KEY --roles principal,broker --max-slivers N`), into
//!    `X/peering/`; Y keeps a copy in `Y/peering/received/` (the exchange of the files);
//! 2. every config of X (hosts and `slicectl.toml`) trusts Y's authorities (`[[trust]]`, same
//!    names, other keys); X's agents load the agreements their federation signed
//!    (`peering`); X's brokers follow every federation of both sides by `name@KEY` (bare
//!    names would now be ambiguous) and know Y's agents (`[[agents]]`, and `agents` in
//!    `slicectl.toml`); X's agents, brokers and `slicectl.toml` bootstrap also from one
//!    address of Y (its first node);
//! 3. X's nodes take the new trust live (`nodemgr reload`: no lease is touched, and the
//!    overlay follows the new authorities' revocation lists within a second); X's agents
//!    and brokers restart (their ticket ledgers are on disk and kept), after the nodes of
//!    both sides have reloaded, so the first connection between the two testbeds already
//!    exchanges revocation lists both ways.
//!
//! Afterwards a principal of X acquires slivers in Y through X's broker (`--federation
//! fed0@KEY`), within Y's agreement, and a list X's authority publishes reaches Y's nodes,
//! which end the revoked principal's leases there.
//!
//! Both testnets must be on loopback: namespaced testnets share one address plan.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::generate::{FederationInfo, HostInfo, Manifest, Network};
use crate::launch;
use crate::probe;
use crate::topology::HostRole;

/// What `testnet peer` agrees to on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeeringTerms {
    /// At most this many slivers at once per principal of the other side.
    pub max_slivers: u32,
    /// Days the agreements are valid.
    pub days: u64,
}

impl Default for PeeringTerms {
    fn default() -> PeeringTerms {
        PeeringTerms {
            max_slivers: 4,
            days: 30,
        }
    }
}

/// What peering did, step by step (lines to print), and how long it took.
#[derive(Debug, Clone, Default)]
pub struct Peered {
    /// One line per step.
    pub lines: Vec<String>,
    /// The agreements each side signed (`X/peering/…`).
    pub agreements: Vec<PathBuf>,
    /// Seconds from start to both sides serving with the new trust.
    pub secs: f64,
}

/// `name@ed25519/<hex>`: a federation as configs name it when two trusted federations share a
/// name.
pub fn federation_ref(f: &FederationInfo) -> String {
    format!("{}@{}", f.name, f.authority)
}

/// The agreement file X's federation `own` signs for Y's federation `other` (in `X/peering/`).
fn agreement_file(dir: &Path, own: &FederationInfo, other: &FederationInfo) -> PathBuf {
    dir.join("peering").join(format!(
        "{}-serves-{}@{}.cbor",
        own.name,
        other.name,
        other.authority.short()
    ))
}

/// Peers the running testnets in `dir_a` and `dir_b` (see the module docs).
pub fn peer(dir_a: &Path, dir_b: &Path, terms: PeeringTerms) -> anyhow::Result<Peered> {
    let started = Instant::now();
    let a = Manifest::load(dir_a)?;
    let b = Manifest::load(dir_b)?;
    let (dir_a, dir_b) = (dir_a.canonicalize()?, dir_b.canonicalize()?);
    if dir_a == dir_b || a.tag == b.tag {
        anyhow::bail!(
            "{} is the same testnet twice; name two testnets",
            dir_a.display()
        );
    }
    for (dir, m) in [(&dir_a, &a), (&dir_b, &b)] {
        if m.network != Network::Loopback {
            anyhow::bail!(
                "{} is a namespaced testnet; two testnets on one machine peer on loopback only \
                 (bring both up with `testnet up --network loopback`)",
                dir.display()
            );
        }
        for host in &m.hosts {
            if launch::running_pid(host).is_none() {
                anyhow::bail!(
                    "{} of {} is not running; start it (`testnet restart {} --dir {}`) and peer again",
                    host.plan.name,
                    dir.display(),
                    host.plan.name,
                    dir.display()
                );
            }
        }
    }
    let already = a
        .federations
        .iter()
        .any(|f| b.federations.iter().any(|g| g.authority == f.authority));
    if already || trusts(&a, &b.federations[0])? {
        anyhow::bail!(
            "{} and {} are peered already (or share an authority); nothing to do",
            dir_a.display(),
            dir_b.display()
        );
    }
    let mut out = Peered::default();
    for (x_dir, x, y_dir, y) in [(&dir_a, &a, &dir_b, &b), (&dir_b, &b, &dir_a, &a)] {
        let signed = sign_agreements(x_dir, x, y_dir, y, terms)?;
        out.lines.push(format!(
            "{}: {} agreements signed (principals and brokers of {}, at most {} slivers each), \
             copied to {}",
            x_dir.display(),
            signed.len(),
            y_dir.display(),
            terms.max_slivers,
            y_dir.join("peering/received").display()
        ));
        rewrite_configs(x_dir, x, y)?;
        out.agreements.extend(signed);
    }
    for (x_dir, x) in [(&dir_a, &a), (&dir_b, &b)] {
        let mut reloaded = Vec::new();
        for node in x.of_role(HostRole::Node) {
            reload_node(node)?;
            reloaded.push(node.plan.name.clone());
        }
        out.lines.push(format!(
            "{}: {} reloaded with the other side's trust",
            x_dir.display(),
            reloaded.join(", ")
        ));
    }
    for (x_dir, x) in [(&dir_a, &a), (&dir_b, &b)] {
        let mut restarted = Vec::new();
        for host in x.hosts.iter().filter(|h| h.plan.role != HostRole::Node) {
            restart(x, host)?;
            restarted.push(host.plan.name.clone());
        }
        out.lines.push(format!(
            "{}: {} restarted (ledgers kept) with the agreements, the other side's trust and \
             bootstrap",
            x_dir.display(),
            restarted.join(", ")
        ));
    }
    out.secs = started.elapsed().as_secs_f64();
    Ok(out)
}

/// Whether `x`'s first node already trusts federation `f` (its config names the key).
fn trusts(x: &Manifest, f: &FederationInfo) -> anyhow::Result<bool> {
    let Some(node) = x.of_role(HostRole::Node).next() else {
        return Ok(false);
    };
    let table = read_table(&node.config_file())?;
    Ok(table
        .get("trust")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .any(|t| {
            t.get("authority").and_then(toml::Value::as_str) == Some(&f.authority.to_string())
        }))
}

/// Step 1 for side `x`: `fedctl peer` for every pair (own federation, other's federation),
/// and a copy of each file in the other's `peering/received/`.
fn sign_agreements(
    x_dir: &Path,
    x: &Manifest,
    y_dir: &Path,
    y: &Manifest,
    terms: PeeringTerms,
) -> anyhow::Result<Vec<PathBuf>> {
    let fedctl = launch::bin_dir()?.join("fedctl");
    let received = y_dir.join("peering").join("received");
    std::fs::create_dir_all(&received)
        .with_context(|| format!("creating {}", received.display()))?;
    let mut signed = Vec::new();
    for own in &x.federations {
        for other in &y.federations {
            let out = agreement_file(x_dir, own, other);
            let ran = Command::new(&fedctl)
                .arg("peer")
                .arg("--authority")
                .arg(x_dir.join("authorities").join(&own.name))
                .args(["--with-name", &other.name])
                .args(["--with-key", &other.authority.to_string()])
                .args(["--roles", "principal,broker"])
                .args(["--max-slivers", &terms.max_slivers.to_string()])
                .args(["--days", &terms.days.to_string()])
                .arg("--out")
                .arg(&out)
                .output()
                .with_context(|| {
                    format!(
                        "running {} (build it with `cargo build --workspace --bins`)",
                        fedctl.display()
                    )
                })?;
            if !ran.status.success() {
                anyhow::bail!(
                    "fedctl peer for {} serving {}: {}",
                    own.name,
                    federation_ref(other),
                    String::from_utf8_lossy(&ran.stderr).trim()
                );
            }
            let copy = received.join(out.file_name().unwrap_or_default());
            std::fs::copy(&out, &copy)
                .with_context(|| format!("copying {} to {}", out.display(), copy.display()))?;
            signed.push(out);
        }
    }
    Ok(signed)
}

fn read_table(path: &Path) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

fn write_table(path: &Path, table: &toml::Table) -> anyhow::Result<()> {
    let text = format!(
        "# Generated by `testnet up`, peered by `testnet peer`.\n{}",
        toml::to_string(table)?
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The array `key` of `table` (made empty if missing).
fn array<'t>(table: &'t mut toml::Table, key: &str) -> &'t mut Vec<toml::Value> {
    let value = table
        .entry(key)
        .or_insert_with(|| toml::Value::Array(Vec::new()));
    if !value.is_array() {
        *value = toml::Value::Array(Vec::new());
    }
    match value {
        toml::Value::Array(items) => items,
        _ => unreachable!("made an array just above"),
    }
}

fn trust_entry(f: &FederationInfo) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("name".into(), f.name.clone().into());
    t.insert("authority".into(), f.authority.to_string().into());
    toml::Value::Table(t)
}

/// Step 2 for side `x`: its configs trust `y`, agents load their agreements, brokers follow
/// both sides by key and know `y`'s agents, and one address of `y` joins the bootstraps.
fn rewrite_configs(x_dir: &Path, x: &Manifest, y: &Manifest) -> anyhow::Result<()> {
    let seed = y
        .of_role(HostRole::Node)
        .next()
        .context("the other testnet has no node to bootstrap from")?
        .multiaddr();
    for host in &x.hosts {
        let path = host.config_file();
        let mut table = read_table(&path)?;
        array(&mut table, "trust").extend(y.federations.iter().map(trust_entry));
        match host.plan.role {
            HostRole::Node => {}
            HostRole::Agent => {
                array(&mut table, "bootstrap").push(seed.clone().into());
                let own = x
                    .federations
                    .iter()
                    .find(|f| f.name == host.plan.federation)
                    .with_context(|| {
                        format!("{}: no federation {}", host.plan.name, host.plan.federation)
                    })?;
                array(&mut table, "peering").extend(y.federations.iter().map(|other| {
                    agreement_file(x_dir, own, other)
                        .display()
                        .to_string()
                        .into()
                }));
            }
            HostRole::Broker => {
                array(&mut table, "bootstrap").push(seed.clone().into());
                *array(&mut table, "follow") = x
                    .federations
                    .iter()
                    .chain(&y.federations)
                    .map(|f| federation_ref(f).into())
                    .collect();
                let by_key = |name: &str| {
                    x.federations
                        .iter()
                        .find(|f| f.name == name)
                        .map(federation_ref)
                        .unwrap_or_else(|| name.to_owned())
                };
                // Own agents' federations by key too, then the other side's agents.
                for entry in array(&mut table, "agents").iter_mut() {
                    if let Some(toml::Value::String(f)) = entry.get_mut("federation") {
                        *f = by_key(f);
                    }
                }
                let theirs: Vec<toml::Value> = y
                    .of_role(HostRole::Agent)
                    .map(|agent| {
                        let mut t = toml::Table::new();
                        t.insert("key".into(), agent.key.to_string().into());
                        t.insert("address".into(), agent.multiaddr().into());
                        let federation = y
                            .federations
                            .iter()
                            .find(|f| f.name == agent.plan.federation)
                            .map(federation_ref)
                            .unwrap_or_else(|| agent.plan.federation.clone());
                        t.insert("federation".into(), federation.into());
                        toml::Value::Table(t)
                    })
                    .collect();
                array(&mut table, "agents").extend(theirs);
            }
        }
        write_table(&path, &table)?;
    }
    let slicectl = x_dir.join("slicectl.toml");
    let mut table = read_table(&slicectl)?;
    array(&mut table, "trust").extend(y.federations.iter().map(trust_entry));
    array(&mut table, "bootstrap").push(seed.into());
    // The agents slicectl asks itself when it cannot reach a broker (the integrated broker).
    array(&mut table, "agents").extend(
        y.of_role(HostRole::Agent)
            .map(|agent| agent.multiaddr().into()),
    );
    write_table(&slicectl, &table)?;
    // `slicectl --agent` configs the scenario runner derives from slicectl.toml.
    let derived = x_dir.join("slicectl-agents.toml");
    if derived.exists() {
        std::fs::remove_file(&derived)
            .with_context(|| format!("removing {}", derived.display()))?;
    }
    Ok(())
}

/// Step 3 for a node: `nodemgr reload --config node.toml`.
fn reload_node(node: &HostInfo) -> anyhow::Result<()> {
    let nodemgr = launch::bin_dir()?.join("nodemgr");
    let ran = Command::new(&nodemgr)
        .arg("reload")
        .arg("--config")
        .arg(node.config_file())
        .output()
        .with_context(|| format!("running {}", nodemgr.display()))?;
    if !ran.status.success() {
        anyhow::bail!(
            "nodemgr reload on {}: {}",
            node.plan.name,
            String::from_utf8_lossy(&ran.stderr).trim()
        );
    }
    Ok(())
}

/// Step 3 for an agent or a broker: a graceful stop, a start, and a wait until it answers.
fn restart(manifest: &Manifest, host: &HostInfo) -> anyhow::Result<()> {
    launch::stop_host(host, Duration::from_secs(10), false)?;
    let pid = launch::start_host(manifest, host)?;
    let started = Instant::now();
    loop {
        if probe::status(host).is_ok() {
            return Ok(());
        }
        // Right after the fork the child's command line is still ours: only a daemon gone for
        // a while has exited.
        if launch::running_pid(host).is_none() && started.elapsed() > Duration::from_secs(2) {
            anyhow::bail!(
                "{} exited right after starting with the peered config (see {})",
                host.plan.name,
                host.log_file().display()
            );
        }
        if started.elapsed() > Duration::from_secs(30) {
            anyhow::bail!(
                "{} (pid {pid}) did not answer within 30 s of its restart (see {})",
                host.plan.name,
                host.log_file().display()
            );
        }
        crate::pause(Duration::from_millis(100));
    }
}
