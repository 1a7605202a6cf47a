//! Hosts in network namespaces on a bridge (root only): each host gets a namespace, a veth
//! pair into the testnet's bridge and an address in 10.250.0.0/16; the bridge holds
//! 10.250.0.1 so the machine itself reaches every host. The internet host
//! ([`crate::internet`]) gets one the same way (`pmtn-<tag>-inet`, link `t<tag>hinet`).
//! Everything is named after the testnet's tag, and [`remove`] deletes exactly those names.
//!
//! This is a tool for people and tests, not a daemon: it drives iproute2's `ip`, which every
//! machine of this kind has (the daemons themselves use netlink).

use std::process::Command;

use anyhow::Context;

use crate::generate::Manifest;

/// The bridge's name.
pub fn bridge(manifest: &Manifest) -> String {
    format!("pmtn{}", manifest.tag)
}

fn host_veth(manifest: &Manifest, n: usize) -> String {
    format!("t{}h{n}", manifest.tag)
}

fn internet_veth(manifest: &Manifest) -> String {
    format!("t{}hinet", manifest.tag)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        anyhow::bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates the bridge, and a namespace with a veth and an address per host and for the
/// internet host.
pub fn create(manifest: &Manifest) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("network namespaces need root; run as root or use --network loopback");
    }
    let br = bridge(manifest);
    ip(&["link", "add", &br, "type", "bridge"])?;
    ip(&["addr", "add", "10.250.0.1/16", "dev", &br])?;
    ip(&["link", "set", &br, "up"])?;
    for (n, host) in manifest.hosts.iter().enumerate() {
        let Some(ns) = &host.netns else { continue };
        add_namespace(&br, ns, &host_veth(manifest, n), &host.ip)?;
    }
    if let Some(internet) = &manifest.internet {
        add_namespace(&br, &internet.netns, &internet_veth(manifest), &internet.ip)?;
    }
    Ok(())
}

/// Namespace `ns` with its end of veth `outside` (on bridge `br`) as `eth0` holding
/// `address`/16, and a default route via the bridge.
fn add_namespace(br: &str, ns: &str, outside: &str, address: &str) -> anyhow::Result<()> {
    let inside = format!("{outside}i");
    ip(&["netns", "add", ns])?;
    ip(&[
        "link", "add", outside, "type", "veth", "peer", "name", &inside,
    ])?;
    ip(&["link", "set", &inside, "netns", ns])?;
    ip(&["link", "set", outside, "master", br])?;
    ip(&["link", "set", outside, "up"])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&["-n", ns, "link", "set", &inside, "name", "eth0"])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{address}/16"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", ns, "route", "add", "default", "via", "10.250.0.1"])
}

/// Removes every namespace, veth and the bridge of this testnet, the internet host's too (what
/// exists of them; a failure does not stop the rest, and the error names every one).
pub fn remove(manifest: &Manifest) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (n, host) in manifest.hosts.iter().enumerate() {
        if let Some(ns) = &host.netns {
            remove_namespace(ns, &host_veth(manifest, n), &mut problems);
        }
    }
    if let Some(internet) = &manifest.internet {
        remove_namespace(&internet.netns, &internet_veth(manifest), &mut problems);
    }
    let br = bridge(manifest);
    if std::path::Path::new(&format!("/sys/class/net/{br}")).exists()
        && let Err(e) = ip(&["link", "del", &br])
    {
        problems.push(e.to_string());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("cleanup left: {}", problems.join("; "))
    }
}

/// Deletes veth `outside` (its peer goes with it) and namespace `ns`, if they exist.
fn remove_namespace(ns: &str, outside: &str, problems: &mut Vec<String>) {
    if std::path::Path::new(&format!("/sys/class/net/{outside}")).exists()
        && let Err(e) = ip(&["link", "del", outside])
    {
        problems.push(e.to_string());
    }
    if std::path::Path::new(&format!("/run/netns/{ns}")).exists()
        && let Err(e) = ip(&["netns", "del", ns])
    {
        problems.push(e.to_string());
    }
}

/// Cuts a host off (or reconnects it). Namespaces: its bridge-side link goes down (up).
/// Loopback has no links to cut: the daemon is frozen with SIGSTOP (thawed with SIGCONT),
/// which its peers see as a host that stopped answering.
pub fn partition(
    manifest: &Manifest,
    host: &crate::generate::HostInfo,
    cut: bool,
) -> anyhow::Result<()> {
    let n = manifest
        .hosts
        .iter()
        .position(|h| h.plan.name == host.plan.name)
        .context("host not in this testnet")?;
    if host.netns.is_some() {
        return ip(&[
            "link",
            "set",
            &host_veth(manifest, n),
            if cut { "down" } else { "up" },
        ]);
    }
    let Some(pid) = crate::launch::running_pid(host) else {
        if cut {
            anyhow::bail!("{} is not running", host.plan.name);
        }
        return Ok(());
    };
    let signal = if cut {
        nix::sys::signal::Signal::SIGSTOP
    } else {
        nix::sys::signal::Signal::SIGCONT
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
        .with_context(|| format!("signalling {}", host.plan.name))
}
