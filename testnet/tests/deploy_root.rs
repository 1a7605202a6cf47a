//! The packages and the operator's guide, end to end (root; under CI it must run).
//!
//! `packaging/build.sh --no-build` packs the debug binaries the build made (a release build
//! takes too long on CI's two cores); the packages' contents are checked (binaries, units
//! that `systemd-analyze verify` accepts, man pages, bash completions, example configs that
//! their daemon loads), then every `sh MACHINE` block of docs/DEPLOY.md runs in order on its
//! machine: a network namespace this test makes on a bridge of its own, with the machine's
//! files in a directory of its own. What differs from a real machine is said once, in the
//! shell functions [`SHIMS`] defines: `apt-get install` unpacks a package into the machine's
//! root (and makes the directories its postinst makes), `systemctl` starts a unit's
//! `ExecStart` in the background and waits for the daemon's "running" line, `journalctl -u`
//! prints its log, `scp` copies into another machine's home, `sudo -u USER` runs the command
//! as root; `/etc/planetmesh` and `/var/lib/planetmesh` in a block are the machine's own
//! directories. The build block packs with `--no-build` into the test's directory.

// A failed unwrap fails the run; synchronous test code polling processes (no async runtime
// here to block) sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One fenced block of the guide: the machine it runs on and its text.
#[derive(Debug)]
struct Block {
    machine: String,
    line: usize,
    text: String,
}

/// The `sh MACHINE` blocks of `markdown`, in order.
fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for (n, line) in markdown.lines().enumerate() {
        match &mut current {
            None => {
                if let Some(machine) = line.strip_prefix("```sh ") {
                    current = Some(Block {
                        machine: machine.trim().to_owned(),
                        line: n + 1,
                        text: String::new(),
                    });
                }
            }
            Some(block) => {
                if line.starts_with("```") {
                    out.extend(current.take());
                } else {
                    block.text.push_str(line);
                    block.text.push('\n');
                }
            }
        }
    }
    out
}

const MACHINES: [&str; 4] = ["alpha", "beta", "gamma", "laptop"];

/// What differs from a real machine (see the module doc). `$M` is the machine's directory,
/// `$MACHINES` holds every machine's.
const SHIMS: &str = r#"
apt-get() {
    local a pkg
    for a in "$@"; do
        case "$a" in
        *.deb)
            dpkg-deb -x "$a" "$M/root"
            pkg=$(dpkg-deb -f "$a" Package)
            case "$pkg" in
            planetmesh-node) install -d -m 0700 "$M/root/etc/planetmesh/node" && install -d -m 0755 "$M/root/var/lib/planetmesh/node" ;;
            planetmesh-agent) install -d -m 0700 "$M/root/etc/planetmesh/agent" "$M/root/var/lib/planetmesh/agent" ;;
            planetmesh-broker) install -d -m 0700 "$M/root/etc/planetmesh/broker" "$M/root/var/lib/planetmesh/broker" ;;
            esac
            echo "unpacked $pkg into $M/root"
            ;;
        esac
    done
}
sudo() {
    if [ "$1" = -u ]; then shift 2; fi
    "$@"
}
scp() {
    local srcs=() dests=() a host path
    for a in "$@"; do
        case "$a" in
        *:*) dests+=("$a") ;;
        *) srcs+=("$a") ;;
        esac
    done
    for a in "${dests[@]}"; do
        host=${a%%:*}
        path=${a#*:}
        cp "${srcs[@]}" "$MACHINES/$host/home/$path"
    done
}
pm_start() {
    local unit=$1 cmd before pid i
    cmd=$(sed -n 's/^ExecStart=//p' "$M/root/lib/systemd/system/$unit.service")
    cmd=${cmd//\/etc\/planetmesh/$M/root/etc/planetmesh}
    cmd=${cmd/\/usr\/bin\//$M/root/usr/bin/}
    touch "$M/log/$unit.log"
    before=$(wc -l < "$M/log/$unit.log")
    setsid $cmd >>"$M/log/$unit.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$M/run/$unit.pid"
    for i in $(seq 1 300); do
        if tail -n +"$((before + 1))" "$M/log/$unit.log" | grep -q ' running'; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$unit exited:" >&2
            tail -n +"$((before + 1))" "$M/log/$unit.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "$unit did not say it was running within 30 s" >&2
    return 1
}
pm_stop() {
    local unit=$1 pid i
    [ -f "$M/run/$unit.pid" ] || return 0
    pid=$(cat "$M/run/$unit.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$M/run/$unit.pid"; return 0; }
        sleep 0.1
    done
    echo "$unit did not stop within 30 s" >&2
    return 1
}
systemctl() {
    local verb=$1 unit
    shift
    if [ "$verb" = enable ] && [ "$1" = --now ]; then verb=start; shift; fi
    for unit in "$@"; do
        case "$verb" in
        start) pm_start "$unit" ;;
        stop) pm_stop "$unit" ;;
        restart) pm_stop "$unit" && pm_start "$unit" ;;
        *) echo "systemctl $verb: not something the guide does" >&2; return 2 ;;
        esac
    done
}
journalctl() {
    local unit=
    while [ $# -gt 0 ]; do
        [ "$1" = -u ] && unit=$2
        shift
    done
    cat "$M/log/$unit.log"
}
"#;

/// The test's machines and what they leave behind: namespaces, a bridge, processes, slivers.
struct Testbed {
    dir: tempfile::TempDir,
    tag: String,
}

impl Testbed {
    fn ns(&self, machine: &str) -> String {
        format!("pmdg{}-{machine}", self.tag)
    }
    fn bridge(&self) -> String {
        format!("pmdg{}", self.tag)
    }
    fn machine_dir(&self, machine: &str) -> PathBuf {
        self.dir.path().join("machines").join(machine)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for machine in MACHINES {
            let ns = self.ns(machine);
            // Stop the daemons, then destroy any sliver a node left.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-TERM", pid]).status();
                }
                std::thread::sleep(Duration::from_millis(500));
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let root = self.machine_dir(machine).join("root");
            let config = root.join("etc/planetmesh/node/node.toml");
            if config.exists() {
                let _ = Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{ns}"))
                    .arg(root.join("usr/bin/nodemgr"))
                    .args(["wipe", "--config"])
                    .arg(&config)
                    .output();
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .output();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// Makes the machines: one namespace each on a bridge, 10.252.<n>.0/24, a default route
/// through the bridge, loopback up.
fn make_machines(bed: &Testbed, subnet: u8) {
    let bridge = bed.bridge();
    ip(&["link", "add", &bridge, "type", "bridge"]);
    ip(&[
        "addr",
        "add",
        &format!("10.252.{subnet}.1/24"),
        "dev",
        &bridge,
    ]);
    ip(&["link", "set", &bridge, "up"]);
    for (n, machine) in MACHINES.iter().enumerate() {
        let ns = bed.ns(machine);
        let (host, peer) = (
            format!("pmdg{}h{n}", bed.tag),
            format!("pmdg{}p{n}", bed.tag),
        );
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["-n", &ns, "link", "set", &peer, "name", "eth0"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.252.{subnet}.{}/24", n + 2),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["link", "set", &host, "master", &bridge]);
        ip(&["link", "set", &host, "up"]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("10.252.{subnet}.1"),
        ]);
        for sub in ["root", "home", "log", "run"] {
            std::fs::create_dir_all(bed.machine_dir(machine).join(sub)).unwrap();
        }
    }
}

/// Runs `script` with bash, killed past `limit`; its output, or the failure with it.
fn bash(mut cmd: Command, script: &Path, limit: Duration) -> Result<String, String> {
    let mut child = cmd
        .arg("bash")
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match status {
        Some(s) if s.success() => Ok(text),
        Some(s) => Err(format!("{s}: {text}")),
        None => Err(format!("still running after {limit:?}: {text}")),
    }
}

/// Checks what the packages hold; returns where they were unpacked together.
fn check_packages(packages: &Path, into: &Path) {
    let mut names: Vec<String> = std::fs::read_dir(packages)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let expected = ["agent", "broker", "node", "tools"].map(|p| format!("planetmesh-{p}_"));
    for prefix in &expected {
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(prefix.as_str()) && n.ends_with(".deb")),
            "no {prefix}*.deb among {names:?}"
        );
    }
    for name in &names {
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(packages.join(name))
            .arg(into));
    }
    for bin in [
        "nodemgr",
        "sliver-init",
        "agentd",
        "broker",
        "fedctl",
        "slicectl",
    ] {
        let path = into.join("usr/bin").join(bin);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o755, 0o755, "{} is not executable", path.display());
    }
    for daemon in ["nodemgr", "agentd", "broker"] {
        for page in [
            format!("{daemon}.1.gz"),
            format!("{daemon}-init.1.gz"),
            format!("{daemon}-key.1.gz"),
        ] {
            assert!(
                into.join("usr/share/man/man1").join(&page).exists(),
                "no man page {page}"
            );
        }
        let completion = std::fs::read_to_string(
            into.join("usr/share/bash-completion/completions")
                .join(daemon),
        )
        .unwrap();
        assert!(
            completion.contains("complete "),
            "{daemon}'s completion: {completion}"
        );
    }
    // Every program that documents itself (`man`, `completions`) is packed with both.
    for bin in ["slicectl", "fedctl"] {
        let documents = Command::new(into.join("usr/bin").join(bin))
            .args(["man", "--help"])
            .output()
            .is_ok_and(|o| o.status.success());
        if bin == "slicectl" {
            assert!(documents, "slicectl has no man subcommand");
        }
        if documents {
            assert!(
                into.join(format!("usr/share/man/man1/{bin}.1.gz")).exists(),
                "no man page for {bin}"
            );
            assert!(
                into.join("usr/share/bash-completion/completions")
                    .join(bin)
                    .exists(),
                "no completion for {bin}"
            );
        }
    }
    for (package, config) in [
        ("node", "node.toml"),
        ("agent", "agent.toml"),
        ("broker", "broker.toml"),
    ] {
        let example = into
            .join(format!("usr/share/doc/planetmesh-{package}/examples"))
            .join(config);
        let text = std::fs::read_to_string(&example).unwrap();
        assert!(
            text.contains("federation = \"example\""),
            "{}",
            example.display()
        );
    }
    assert!(into.join("usr/lib/sysusers.d/planetmesh.conf").exists());
    // The units: hardened as their comments say, and accepted by systemd-analyze with their
    // ExecStart pointing at the unpacked binaries.
    let units = into.join("lib/systemd/system");
    let verify = tempfile::tempdir().unwrap();
    for unit in [
        "planetmesh-nodemgr",
        "planetmesh-agentd",
        "planetmesh-broker",
    ] {
        let text = std::fs::read_to_string(units.join(format!("{unit}.service"))).unwrap();
        if unit != "planetmesh-nodemgr" {
            for line in [
                "User=planetmesh",
                "NoNewPrivileges=yes",
                "ProtectSystem=strict",
                "CapabilityBoundingSet=\n",
                "StateDirectory=planetmesh/",
            ] {
                assert!(text.contains(line), "{unit} lacks {line:?}");
            }
        } else {
            assert!(
                text.contains("CapabilityBoundingSet=CAP_SYS_ADMIN"),
                "{text}"
            );
            assert!(text.contains("KillMode=process"), "{text}");
        }
        let local = text.replace(
            "ExecStart=/usr/bin/",
            &format!("ExecStart={}/", into.join("usr/bin").display()),
        );
        std::fs::write(verify.path().join(format!("{unit}.service")), local).unwrap();
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let mut cmd = Command::new("systemd-analyze");
        cmd.args(["verify", "--man=no"]);
        for unit in [
            "planetmesh-nodemgr",
            "planetmesh-agentd",
            "planetmesh-broker",
        ] {
            cmd.arg(verify.path().join(format!("{unit}.service")));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The unprivileged daemons' exposure, as systemd scores it (0 to 10; 1.6 today):
        // at most 2 ("OK").
        for unit in ["planetmesh-agentd", "planetmesh-broker"] {
            let out = Command::new("systemd-analyze")
                .args(["security", "--offline=true", "--threshold=20"])
                .arg(verify.path().join(format!("{unit}.service")))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("unrecognized option") {
                eprintln!("systemd-analyze is too old to score units offline: not scored");
                break;
            }
            assert!(
                out.status.success(),
                "{unit} is exposed: {}",
                text.lines().last().unwrap_or_default()
            );
        }
    }
    // The maintainer scripts parse.
    for name in &names {
        let control = tempfile::tempdir().unwrap();
        run(Command::new("dpkg-deb")
            .arg("-e")
            .arg(packages.join(name))
            .arg(control.path()));
        for script in ["postinst", "prerm"] {
            let path = control.path().join(script);
            if path.exists() {
                run(Command::new("sh").arg("-n").arg(&path));
            }
        }
    }
}

#[test]
fn the_packages_hold_what_they_should_and_the_guide_runs_as_written() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the guide's test runs as root under CI"
        );
        eprintln!("skipped: the guide's machines are network namespaces (run as root)");
        return;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let guide = std::fs::read_to_string(workspace.join("docs/DEPLOY.md")).unwrap();
    // `sh peering` blocks run on one machine's loopback testnets: tests/peer.rs runs them.
    let blocks: Vec<Block> = blocks(&guide)
        .into_iter()
        .filter(|b| b.machine != "peering")
        .collect();
    assert!(blocks.len() > 20, "{} blocks", blocks.len());
    let pid = std::process::id();
    let bed = Testbed {
        dir: tempfile::tempdir().unwrap(),
        tag: format!("{:03x}", pid & 0xfff),
    };
    // Slivers' own users must reach their directories under the machines' state dirs, as
    // under /var/lib on a real machine.
    std::fs::set_permissions(
        bed.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    make_machines(&bed, (pid % 250) as u8);
    let packages = bed.dir.path().join("packages");
    let machines = bed.dir.path().join("machines");
    let mut outputs = Vec::new();
    for (n, block) in blocks.iter().enumerate() {
        let started = Instant::now();
        let (cmd, text) = if block.machine == "build" {
            // The one substitution besides paths: pack the debug binaries already built.
            let text = block
                .text
                .replace(
                    "--release",
                    &format!("--no-build --out {}", packages.display()),
                )
                .replace("target/packages", &packages.display().to_string());
            let mut cmd = Command::new("env");
            cmd.current_dir(workspace)
                .arg(format!("M={}", bed.dir.path().display()));
            (cmd, text)
        } else {
            assert!(
                MACHINES.contains(&block.machine.as_str()),
                "DEPLOY.md line {}: unknown machine {}",
                block.line,
                block.machine
            );
            let m = bed.machine_dir(&block.machine);
            let root = m.join("root");
            let text = block
                .text
                .replace(
                    "/etc/planetmesh",
                    &root.join("etc/planetmesh").display().to_string(),
                )
                .replace(
                    "/var/lib/planetmesh",
                    &root.join("var/lib/planetmesh").display().to_string(),
                );
            // nsenter enters the network namespace only: `ip netns exec` would remount /sys
            // without the cgroup hierarchy a node needs.
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net=/run/netns/{}", bed.ns(&block.machine)))
                .arg("env")
                .arg(format!("M={}", m.display()))
                .arg(format!("HOME={}", m.join("home").display()))
                .arg(format!(
                    "PATH={}:/usr/sbin:/usr/bin:/sbin:/bin",
                    root.join("usr/bin").display()
                ))
                .current_dir(m.join("home"));
            (cmd, text)
        };
        let script = bed.dir.path().join(format!("block-{n}.sh"));
        std::fs::write(
            &script,
            format!(
                "set -euo pipefail\nMACHINES={}\n{SHIMS}\nset -x\n{text}",
                machines.display()
            ),
        )
        .unwrap();
        let result = bash(cmd, &script, Duration::from_secs(240));
        eprintln!(
            "DEPLOY.md line {} ({}), {:.1} s",
            block.line,
            block.machine,
            started.elapsed().as_secs_f64()
        );
        match result {
            Ok(out) => {
                eprintln!("{out}");
                outputs.push(out);
            }
            Err(e) => {
                let mut logs = String::new();
                for machine in MACHINES {
                    if let Ok(dir) = std::fs::read_dir(bed.machine_dir(machine).join("log")) {
                        for log in dir.flatten() {
                            let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                            let tail: Vec<&str> = text.lines().rev().take(15).collect();
                            logs.push_str(&format!(
                                "\n--- {machine} {}:\n{}",
                                log.file_name().to_string_lossy(),
                                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                            ));
                        }
                    }
                }
                panic!(
                    "DEPLOY.md line {} on {} failed: {e}{logs}",
                    block.line, block.machine
                );
            }
        }
        if block.machine == "build" {
            check_packages(&packages, &bed.dir.path().join("unpacked"));
        }
    }
    // fedctl and init said what to run next, as the guide runs it.
    let all = outputs.join("\n");
    for next in [
        "agentd init --dir /etc/planetmesh/agent --federation-cert agent.cert --state-dir \
         /var/lib/planetmesh/agent --bootstrap",
        "nodemgr init --dir /etc/planetmesh/node --federation-cert node.cert --state-dir \
         /var/lib/planetmesh/node --bootstrap",
        "broker init --dir /etc/planetmesh/broker --federation-cert broker.cert --bootstrap",
        "next: systemctl enable --now planetmesh-agentd",
        "next: systemctl enable --now planetmesh-nodemgr",
        "next: systemctl enable --now planetmesh-broker",
    ] {
        assert!(all.contains(next), "never printed {next:?}");
    }
    bad_input_is_refused_with_the_fix(&bed);
}

/// On the guide's machine alpha, after the guide: a second init and a bootstrap address
/// without its peer id are refused, saying what to do, and nothing is changed.
fn bad_input_is_refused_with_the_fix(bed: &Testbed) {
    let m = bed.machine_dir("alpha");
    let nodemgr = m.join("root/usr/bin/nodemgr");
    let dir = m.join("root/etc/planetmesh/node");
    let config = dir.join("node.toml");
    let before = std::fs::read(&config).unwrap();
    let out = Command::new(&nodemgr)
        .arg("init")
        .arg("--dir")
        .arg(&dir)
        .arg("--federation-cert")
        .arg(m.join("home/node.cert"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{} exists already", config.display())),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&config).unwrap(), before);
    let fresh = bed.dir.path().join("fresh");
    let out = Command::new(&nodemgr)
        .arg("init")
        .arg("--dir")
        .arg(&fresh)
        .args([
            "--federation",
            "plc",
            "--bootstrap",
            "/ip4/10.0.0.1/tcp/4001",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("has no /p2p/<peer id>") && stderr.contains("/p2p/12D3KooW"),
        "{stderr}"
    );
    assert!(
        !fresh.join("node.toml").exists(),
        "a refused init wrote a config"
    );
}
