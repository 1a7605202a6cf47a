//! Running a testnet's daemons as real processes, and ending them.
//!
//! Each daemon runs detached (its own process group) with its log in `hosts/NAME/daemon.log`;
//! its pid is kept in `hosts/NAME/pid`. A pid is only ever signalled after checking that the
//! process still runs this testnet's binary with this host's config, so a stale pid file can
//! never end someone else's process. The internet host of a namespaced testnet
//! ([`crate::internet`]) runs the same way from `internet/`: `testnet --dir DIR internet-host`
//! in its namespace, checked against that command line.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::generate::{HostInfo, InternetHost, Manifest, Network};
use crate::netns;

/// Where the daemon binaries are: next to this program (cargo builds every workspace binary
/// into the same directory), or `PLANETMESH_BIN_DIR`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PLANETMESH_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the testnet binary")?;
    let dir = exe
        .parent()
        .context("the testnet binary has no directory")?;
    // Integration tests run from target/<profile>/deps.
    if dir.ends_with("deps") {
        return Ok(dir.parent().unwrap_or(dir).to_path_buf());
    }
    Ok(dir.to_path_buf())
}

fn binary(host: &HostInfo) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(host.plan.role.binary());
    if !path.exists() {
        anyhow::bail!(
            "{} is missing: build the daemons first with `cargo build --workspace --bins`",
            path.display()
        );
    }
    Ok(path)
}

fn pid_file(host: &HostInfo) -> PathBuf {
    host.dir.join("pid")
}

/// Starts one host's daemon; returns its pid.
pub fn start_host(manifest: &Manifest, host: &HostInfo) -> anyhow::Result<u32> {
    if let Some(pid) = running_pid(host) {
        anyhow::bail!("{} runs already (pid {pid})", host.plan.name);
    }
    let bin = binary(host)?;
    let netns = match manifest.network {
        Network::Namespaces => host.netns.as_deref(),
        Network::Loopback => None,
    };
    let mut command = in_netns(netns, &bin);
    command
        .arg("run")
        .arg("--config")
        .arg(host.config_file())
        .current_dir(&host.dir);
    spawn_detached(command, &host.log_file(), &pid_file(host))
}

/// `program` run in network namespace `netns` (if any). `nsenter --net` enters only the
/// network namespace; `ip netns exec` would also remount /sys, hiding the cgroup hierarchies
/// the node manager needs.
fn in_netns(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Starts `command` detached (its own process group, no descriptor but stdio, output appended
/// to `log`) and records its pid in `pid_file`; returns the pid.
fn spawn_detached(mut command: Command, log: &Path, pid_file: &Path) -> anyhow::Result<u32> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .process_group(0);
    stdio_only(&mut command);
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", command.get_program().to_string_lossy()))?;
    let pid = child.id();
    std::fs::write(pid_file, pid.to_string())
        .with_context(|| format!("writing {}", pid_file.display()))?;
    // The child is detached (own process group) and outlives this program; not waiting on it
    // is intended.
    std::mem::forget(child);
    Ok(pid)
}

/// Lets no descriptor but 0–2 reach the started program, whatever this process inherited or
/// opened without close-on-exec (a daemon must not hold its starter's files).
fn stdio_only(command: &mut Command) -> &mut Command {
    let close_rest = || {
        // SAFETY: close_range takes two descriptor numbers and flags and touches no memory;
        // std's own exec-error pipe is close-on-exec already, so marking it changes nothing.
        let rc = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_close_range,
                3u32,
                u32::MAX,
                nix::libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the closure makes one raw system call, which is async-signal-safe.
    unsafe { command.pre_exec(close_rest) }
}

/// The pid of the host's daemon if it runs (checked against its command line).
pub fn running_pid(host: &HostInfo) -> Option<u32> {
    let config = host.config_file();
    live_pid(&pid_file(host), |cmdline| {
        let cmdline = cmdline.join(" ");
        cmdline.contains(host.plan.role.binary()) && cmdline.contains(&*config.to_string_lossy())
    })
}

/// The pid of the internet host if it runs: a `testnet` whose command line names this
/// testnet's directory (`--dir DIR`) and `internet-host`.
pub fn internet_pid(internet: &InternetHost) -> Option<u32> {
    let dir = internet.testnet_dir().to_string_lossy().into_owned();
    live_pid(&internet.dir.join("pid"), |args| {
        args.first().is_some_and(|a| a.ends_with("testnet"))
            && args.windows(2).any(|w| w[0] == "--dir" && w[1] == dir)
            && args.iter().any(|a| a == INTERNET_HOST_COMMAND)
    })
}

/// The pid in `pid_file` if that process runs (not a zombie) and `ours` accepts its command
/// line (its arguments).
fn live_pid(pid_file: &Path, ours: impl Fn(&[String]) -> bool) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // A zombie (exited, not yet reaped by its parent) no longer runs.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = state
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'));
    (ours(&args) && !zombie).then_some(pid)
}

/// Ends a host's daemon: SIGTERM (graceful), then SIGKILL after `grace`. With `kill9`, SIGKILL
/// at once (fault injection).
pub fn stop_host(host: &HostInfo, grace: Duration, kill9: bool) -> anyhow::Result<bool> {
    let ended = end_process(&host.plan.name, || running_pid(host), grace, kill9)?;
    let _ = std::fs::remove_file(pid_file(host));
    Ok(ended)
}

/// Ends the process `running` finds (re-checked at every look, so only ever one whose command
/// line is ours): SIGTERM, or SIGKILL with `kill9`; SIGKILL after `grace`. False if none ran.
fn end_process(
    what: &str,
    running: impl Fn() -> Option<u32>,
    grace: Duration,
    kill9: bool,
) -> anyhow::Result<bool> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Some(pid) = running() else {
        return Ok(false);
    };
    let target = Pid::from_raw(pid as i32);
    let first = if kill9 {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    kill(target, first).with_context(|| format!("signalling {what} (pid {pid})"))?;
    let deadline = Instant::now() + grace;
    while running().is_some() {
        if Instant::now() > deadline {
            let _ = kill(target, Signal::SIGKILL);
            crate::pause(Duration::from_millis(100));
            break;
        }
        crate::pause(Duration::from_millis(50));
    }
    Ok(true)
}

/// The hidden `testnet` subcommand the internet host runs.
pub const INTERNET_HOST_COMMAND: &str = "internet-host";

/// Starts the internet host in its namespace (`testnet --dir DIR internet-host --http P --udp
/// Q`, this testnet's own binary); returns its pid.
pub fn start_internet(internet: &InternetHost) -> anyhow::Result<u32> {
    if let Some(pid) = internet_pid(internet) {
        anyhow::bail!("the internet host runs already (pid {pid})");
    }
    let bin = bin_dir()?.join("testnet");
    if !bin.exists() {
        anyhow::bail!(
            "{} is missing: build it with `cargo build --workspace --bins`",
            bin.display()
        );
    }
    let mut command = in_netns(Some(&internet.netns), &bin);
    command
        .arg("--dir")
        .arg(internet.testnet_dir())
        .arg(INTERNET_HOST_COMMAND)
        .arg("--http")
        .arg(internet.http_port.to_string())
        .arg("--udp")
        .arg(internet.udp_port.to_string())
        .current_dir(&internet.dir);
    spawn_detached(command, &internet.log_file(), &internet.dir.join("pid"))
}

/// Ends the internet host (SIGTERM, SIGKILL after `grace`); false if it was not running.
pub fn stop_internet(internet: &InternetHost, grace: Duration) -> anyhow::Result<bool> {
    let ended = end_process(InternetHost::NAME, || internet_pid(internet), grace, false)?;
    let _ = std::fs::remove_file(internet.dir.join("pid"));
    Ok(ended)
}

/// Removes the (empty, once every sliver is gone) cgroup directories the testnet's nodes used,
/// in every hierarchy: `planetmesh-tn<tag>` (each node's own parent, `<id>.node`, is below it,
/// and `nodemgr wipe` removed it already) and below, deepest first; rmdir never removes a
/// cgroup that still has processes.
fn remove_cgroup_parents(manifest: &Manifest) {
    let name = crate::generate::cgroup_base(&manifest.tag);
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for hierarchy in hierarchies.flatten() {
        let root = hierarchy.path().join(&name);
        if root.is_dir() {
            remove_dirs_deepest_first(&root);
        }
    }
}

fn remove_dirs_deepest_first(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_dirs_deepest_first(&entry.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        eprintln!("warning: cgroup {} not removed: {e}", dir.display());
    }
}

/// Destroys every sliver of a stopped node (`nodemgr wipe`, in the node's namespace).
fn wipe_node(manifest: &Manifest, host: &HostInfo) -> anyhow::Result<()> {
    let bin = binary(host)?;
    let netns = match manifest.network {
        Network::Namespaces => host.netns.as_deref(),
        Network::Loopback => None,
    };
    let out = in_netns(netns, &bin)
        .arg("wipe")
        .arg("--config")
        .arg(host.config_file())
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "nodemgr wipe: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Starts every host: the internet host (if any), then nodes (they are the bootstrap seeds),
/// agents and brokers.
pub fn start_all(manifest: &Manifest) -> anyhow::Result<()> {
    if manifest.network == Network::Namespaces {
        netns::create(manifest)?;
    }
    if let Some(internet) = &manifest.internet {
        start_internet(internet)?;
    }
    for host in &manifest.hosts {
        start_host(manifest, host)?;
    }
    Ok(())
}

/// Ends every host and the internet host, and removes what the testnet made on the machine
/// (its namespaces even when the internet host could not be ended: the error says so after).
pub fn stop_all(manifest: &Manifest, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut stopped = Vec::new();
    for host in manifest.hosts.iter().rev() {
        if stop_host(host, Duration::from_secs(10), false)? {
            stopped.push(host.plan.name.clone());
        }
    }
    let mut internet_error = None;
    if let Some(internet) = &manifest.internet {
        match stop_internet(internet, Duration::from_secs(5)) {
            Ok(true) => stopped.push(InternetHost::NAME.to_owned()),
            Ok(false) => {}
            Err(e) => internet_error = Some(e),
        }
    }
    // Slivers outlive their node manager by design (they are leased); a testnet going away
    // takes them too, before their namespaces go. Wiping a node also removes its own cgroup
    // parent and gives up its claims on the machine (cgroup parent, uid range, link names,
    // address pool); a node that cannot be wiped keeps them, since its slivers may remain.
    if manifest.isolation == "linux" {
        for host in manifest.of_role(crate::topology::HostRole::Node) {
            if let Err(e) = wipe_node(manifest, host) {
                eprintln!("warning: {}: {e:#}", host.plan.name);
            }
        }
    }
    if manifest.isolation == "linux" {
        remove_cgroup_parents(manifest);
    }
    if manifest.network == Network::Namespaces {
        netns::remove(manifest)?;
    }
    if let Some(e) = internet_error {
        return Err(e.context("ending the internet host"));
    }
    let _ = dir;
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemons_get_no_descriptor_but_stdio() {
        let dir = tempfile::tempdir().unwrap();
        let leaked = nix::fcntl::open(
            &dir.path().join("leak"),
            nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_RDWR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let mut command = Command::new("/bin/ls");
        command.arg("/proc/self/fd");
        let out = stdio_only(&mut command).output().unwrap();
        let fds: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        // 0-2, and the listing's own directory.
        assert_eq!(fds.len(), 4, "{fds:?}");
        let mut plain = Command::new("/bin/ls");
        plain.arg("/proc/self/fd");
        let out = plain.output().unwrap();
        drop(leaked);
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .count()
                > 4,
            "the leak did not reach a plain child, so this test shows nothing"
        );
    }
}
