//! `testnet demo`: the whole flow a newcomer wants to see, each step a real `slicectl` call
//! against the running testnet, printed with its time: acquire a slice spanning both
//! federations through the broker, look at it, run a command in every sliver, reach the
//! internet host from every sliver (namespaced testnets with real slivers: the source it sees
//! must be the sliver's node's address), use the slice as one network across the federations
//! (a sliver of the first federation serves on its leased port; every sliver, one of the other
//! federation among them, and the internet host fetch it through its node's public address),
//! renew, delete.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use capability_schema::PublicEndpoint;
use serde_json::Value;

use crate::generate::{HostInfo, InternetHost, Manifest};
use crate::launch::bin_dir;

/// The demo slice's name: the principal's site prefix plus `demo`.
pub const DEMO_SLICE: &str = "fed0-site0_demo";

/// One step of the demo.
enum DemoStep {
    /// A `slicectl` call: its title and arguments (after `--config`), printed as it runs.
    Slicectl(&'static str, Vec<String>),
    /// `slicectl slice exec`: as [`DemoStep::Slicectl`] where slivers are real; where nodes
    /// have no isolation nothing runs, which the step says, and the call must answer so.
    Exec(&'static str, Vec<String>),
    /// Every sliver fetches the internet host's page, which names the source it saw.
    ReachTheInternet,
    /// A sliver of the first federation serves on its leased port; the others (one of another
    /// federation among them) and the internet host fetch it through its node's address.
    AcrossTheFederations,
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
        DemoStep::Exec(
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
        DemoStep::AcrossTheFederations,
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

/// A path as a shell word: as is when it needs no quoting, else in single quotes.
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// The commands `testnet up` suggests next, each a shell line that works as printed on the
/// testnet in `dir`: the binaries by their full paths (they need not be on `PATH`), making the
/// testnet's slicectl context current (when `testnet up` could write one; else every slicectl
/// line gives `--config`), a slice acquired, looked at and deleted, the testnet's status, and
/// taking it down (last).
pub fn first_steps(manifest: &Manifest, dir: &Path) -> anyhow::Result<Vec<String>> {
    let bins = bin_dir()?;
    let bin = shell_word(&bins.join("slicectl"));
    // With the context `testnet up` wrote, slicectl needs no --config once it is current.
    let context = slicectl::context::testnet_context(dir);
    let slicectl = match &context {
        Some(_) => bin.clone(),
        None => format!("{bin} --config {}", shell_word(&dir.join("slicectl.toml"))),
    };
    let testnet = shell_word(&std::env::current_exe().context("locating the testnet binary")?);
    let dir = shell_word(dir);
    let slivers = manifest.topology.nodes.clamp(1, 4);
    let use_context =
        context.map(|name| format!("{bin} context use {}", shell_word(Path::new(&name))));
    Ok(use_context
        .into_iter()
        .chain([
            format!("{slicectl} slice create --name {DEMO_SLICE} --slivers {slivers}"),
            format!("{slicectl} slice status {DEMO_SLICE}"),
            format!("{slicectl} slice delete {DEMO_SLICE}"),
            format!("{testnet} status --dir {dir}"),
            format!("{testnet} down --dir {dir}"),
        ])
        .collect())
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
    let isolated = manifest.isolation == "linux";
    if !isolated {
        println!("\nnote: {NO_ISOLATION_NOTE}");
    }
    for (n, step) in steps(&manifest).into_iter().enumerate() {
        match step {
            DemoStep::Slicectl(title, args) => {
                run_slicectl_step(&slicectl, n + 1, title, &args, 0)?;
            }
            DemoStep::Exec(title, args) if isolated => {
                run_slicectl_step(&slicectl, n + 1, title, &args, 0)?;
            }
            DemoStep::Exec(title, args) => {
                let title = format!("{title}: not run here ({NO_ISOLATION_NOTE})");
                let not_run = slicectl::exit::ExitClass::NotRun.code();
                run_slicectl_step(&slicectl, n + 1, &title, &args, not_run)?;
            }
            DemoStep::ReachTheInternet => reach_the_internet(&manifest, &slicectl, n + 1)?,
            DemoStep::AcrossTheFederations => {
                across_the_federations(&manifest, &slicectl, n + 1)?;
            }
        }
    }
    Ok(total.elapsed())
}

/// What the demo says where nodes have no isolation (a testnet without root).
pub const NO_ISOLATION_NOTE: &str = "this testnet's nodes have no isolation \
     (isolation = \"memory\"): commands sent to slivers do not run, and each node answers \
     that nothing ran; as root, `testnet demo` makes real slivers";

/// Step `n`: one `slicectl` call, printed with its output and time; an error if it did not
/// exit with `expected` (0, or the class a step on nodes without isolation must end with).
fn run_slicectl_step(
    slicectl: &Slicectl,
    n: usize,
    title: &str,
    args: &[String],
    expected: i32,
) -> anyhow::Result<()> {
    println!("\n[{n}] {title}");
    println!("    $ slicectl {}", args.join(" "));
    let out = slicectl.run(args, Duration::from_secs(300))?;
    for line in out.stdout.lines() {
        println!("    {line}");
    }
    if out.code != expected {
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
    let internet = match real_network(manifest) {
        Ok(internet) => internet,
        Err(why) => {
            println!("\n[{n}] reach the internet host from every sliver: skipped ({why})");
            return Ok(());
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

/// The internet host, where slivers are real and have egress (a namespaced testnet with
/// linux isolation); else why the network steps are skipped.
fn real_network(manifest: &Manifest) -> Result<&InternetHost, String> {
    match (&manifest.internet, manifest.isolation.as_str()) {
        (Some(internet), "linux") => Ok(internet),
        (None, _) => Err(
            "a loopback testnet has no internet host, and its nodes give slivers no egress"
                .to_owned(),
        ),
        (Some(_), isolation) => Err(format!("{isolation} isolation makes no real slivers")),
    }
}

/// Runs `slicectl --json ARGS…` (within `limit`); returns its JSON answer (the last line that
/// is JSON) and the call.
fn slicectl_json(
    slicectl: &Slicectl,
    args: &[String],
    limit: Duration,
) -> anyhow::Result<(Value, SlicectlRun)> {
    let full: Vec<String> = std::iter::once("--json".to_owned())
        .chain(args.iter().cloned())
        .collect();
    let out = slicectl.run(&full, limit)?;
    let json = out
        .stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .with_context(|| {
            format!(
                "slicectl {} printed no JSON (exit {}): {}",
                args.iter().take(2).cloned().collect::<Vec<_>>().join(" "),
                out.code,
                out.stderr.trim()
            )
        })?;
    Ok((json, out))
}

/// `slice exec DEMO_SLICE -- timeout 10 bash -c SCRIPT` in every sliver, printed as one would
/// type it (the script's lines joined with `; `); returns each sliver's entry of the answer,
/// and the call.
fn bash_in_every_sliver(
    slicectl: &Slicectl,
    script: String,
) -> anyhow::Result<(Vec<Value>, SlicectlRun)> {
    let command = [
        "slice", "exec", DEMO_SLICE, "--", "timeout", "10", "bash", "-c",
    ];
    println!(
        "    $ slicectl {} '{}'",
        command.join(" "),
        script.replace('\n', "; ")
    );
    let args: Vec<String> = command
        .into_iter()
        .map(str::to_owned)
        .chain([script])
        .collect();
    let (json, out) = slicectl_json(slicectl, &args, Duration::from_secs(120))?;
    let slivers = json["slivers"].as_array().cloned().unwrap_or_default();
    Ok((slivers, out))
}

/// Runs the internet host's [fetch script](crate::internet::fetch_script) in every sliver of
/// the demo slice; returns each sliver's entry of the answer, and the call.
fn fetch_in_every_sliver(
    slicectl: &Slicectl,
    internet: &InternetHost,
) -> anyhow::Result<(Vec<Value>, SlicectlRun)> {
    bash_in_every_sliver(
        slicectl,
        crate::internet::fetch_script(&internet.ip, internet.http_port),
    )
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

/// A small server a sliver runs on its leased port (`python3 -c SLIVER_SERVER ADDR PORT
/// NAME`, Python 3.8 or later, which the hosts' system dirs the slivers see must hold): it
/// binds the sliver's own address `ADDR` and port `PORT` (TCP and UDP) and for 60 s answers
/// each HTTP request (its head read whole, at most 8 KiB within 5 s, so a request sent in
/// pieces is never cut off by a reset) `hello from NAME at ADDR:PORT; you are PEER` and echoes
/// each datagram after `NAME at ADDR:PORT echoes PEER-IP: `, then exits. Where `ADDR` is not the sliver's
/// (slice spawn starts it in every sliver) the bind fails and it exits at once, saying so.
/// `testnet demo` and `scenarios/slice-network.toml` run it.
pub const SLIVER_SERVER: &str = r#"import select, socket, sys, time
addr, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tcp, udp = socket.socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    tcp.bind((addr, port))
    udp.bind((addr, port))
except OSError as e:
    sys.exit(print(f"{addr}:{port}: {e.strerror}: not this sliver's, nothing to serve here") or 0)
tcp.listen(16)
print(f"{name} serves HTTP and UDP echo on {addr}:{port} for 60 s", flush=True)
end = time.time() + 60
while (left := end - time.time()) > 0:
    for s in select.select([tcp, udp], [], [], left)[0]:
        if s is udp:
            data, peer = udp.recvfrom(1024)
            udp.sendto(f"{name} at {addr}:{port} echoes {peer[0]}: ".encode() + data, peer)
            continue
        conn, peer = tcp.accept()
        conn.settimeout(5)
        try:
            head, until = b"", time.time() + 5
            while not (b"\n\r\n" in head or b"\n\n" in head or len(head) > 8192):
                chunk = conn.recv(8192) if time.time() < until else b""
                if not chunk:
                    break
                head += chunk
            body = f"hello from {name} at {addr}:{port}; you are {peer[0]}:{peer[1]}\n"
            reply = f"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            conn.sendall(f"{reply}Connection: close\r\n\r\n{body}".encode())
        except OSError:
            pass
        conn.close()
"#;

/// How long the demo waits for the server to say it listens.
const SERVER_START: Duration = Duration::from_secs(15);

/// One sliver of the demo slice as `slice status --json` shows it.
#[derive(Debug, Clone)]
struct Placed<'m> {
    /// Its node.
    host: &'m HostInfo,
    /// Its own address on its node (the lease's `address`).
    address: Option<String>,
    /// Where it is reached (the lease's `public`).
    public: Option<PublicEndpoint>,
}

impl Placed<'_> {
    /// `node3 (fed1)`.
    fn label(&self) -> String {
        format!("{} ({})", self.host.plan.name, self.host.plan.federation)
    }

    /// Its first leased port, and its address, if it has both.
    fn served_at(&self) -> Option<(&PublicEndpoint, u16, &str)> {
        let public = self.public.as_ref()?;
        Some((public, *public.ports.first()?, self.address.as_deref()?))
    }
}

/// The slivers of `slice status --json`'s answer, in the testnet's host order (a sliver on a
/// node the testnet does not know is left out).
fn placed_slivers<'m>(manifest: &'m Manifest, status: &Value) -> Vec<Placed<'m>> {
    let mut placed: Vec<(usize, Placed<'m>)> = status["slivers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let key = v["node"].as_str()?;
            let order = manifest
                .hosts
                .iter()
                .position(|h| h.key.to_string() == key)?;
            Some((
                order,
                Placed {
                    host: &manifest.hosts[order],
                    address: v["address"].as_str().map(str::to_owned),
                    public: serde_json::from_value(v["public"].clone()).ok(),
                },
            ))
        })
        .collect();
    placed.sort_by_key(|(order, _)| *order);
    placed.into_iter().map(|(_, p)| p).collect()
}

/// Which sliver serves and which one the step is about: the first sliver of `federation`
/// with a leased port (else the first with one), and the first on another node of another
/// federation (else of the same one); `None` if no sliver has a leased port, or none is on
/// another node.
fn pick_pair(slivers: &[Placed<'_>], federation: &str) -> Option<(usize, usize)> {
    let serves = |s: &Placed<'_>| s.served_at().is_some();
    let server = slivers
        .iter()
        .position(|s| s.host.plan.federation == federation && serves(s))
        .or_else(|| slivers.iter().position(serves))?;
    let (name, federation) = (
        &slivers[server].host.plan.name,
        &slivers[server].host.plan.federation,
    );
    let on_another_node = |s: &Placed<'_>| s.host.plan.name != *name;
    let client = slivers
        .iter()
        .position(|s| on_another_node(s) && s.host.plan.federation != *federation)
        .or_else(|| slivers.iter().position(on_another_node))?;
    Some((server, client))
}

/// What `peer` (a sliver's node, or the internet host) must read back from the server: the
/// page names the server and the address the fetch came from.
fn expected_page(server_name: &str, address: &str, port: u16, peer_ip: &str) -> String {
    format!("hello from {server_name} at {address}:{port}; you are {peer_ip}:")
}

/// What one sliver's fetch of the server showed (`slicectl --json slice exec`'s entry): the
/// page it read back, if it is the one expected (its node's address as the peer), else why
/// not, naming the sliver, the address and port, and the server.
fn fetched_page(
    manifest: &Manifest,
    url: &str,
    server_name: &str,
    (address, port): (&str, u16),
    sliver: &Value,
) -> Result<(String, String), String> {
    let key = sliver["node"].as_str().unwrap_or("?");
    let node: Option<&HostInfo> = manifest.hosts.iter().find(|h| h.key.to_string() == key);
    let name = node.map_or_else(
        || key.to_owned(),
        |h| format!("{} ({})", h.plan.name, h.plan.federation),
    );
    if let Some(error) = sliver["error"].as_str() {
        return Err(format!("{name}: {error}"));
    }
    let stdout = sliver["stdout"].as_str().unwrap_or("");
    let page = stdout
        .lines()
        .find(|l| l.starts_with("hello from "))
        .map(str::to_owned);
    let Some(page) = page else {
        let why = sliver["stderr"]
            .as_str()
            .and_then(|e| e.lines().find(|l| !l.trim().is_empty()))
            .map_or_else(|| "no page".to_owned(), str::to_owned);
        let code = sliver["exit_code"].as_i64().unwrap_or(-1);
        let timed_out = if code == 124 { ", timed out" } else { "" };
        return Err(format!(
            "{name}: cannot fetch {url} ({server_name} at {address}:{port}) (exit {code}{timed_out}): {why}"
        ));
    };
    let Some(node) = node else {
        return Err(format!("{name}: not a node of this testnet ({page})"));
    };
    let want = expected_page(server_name, address, port, &node.ip);
    if page.starts_with(&want) {
        Ok((name, page))
    } else {
        Err(format!(
            "{name}: fetched {url} but read {page:?}, not a page starting {want:?}"
        ))
    }
}

/// Step `n`: the slice as one network across the federations. The first sliver of the first
/// federation with a leased port serves [`SLIVER_SERVER`] on it (`slice spawn`; the other
/// slivers' copies exit at once); every sliver fetches `http://PUBLIC:PORT/` through the
/// server's node (the one on a node of another federation is the point; the server's own goes
/// out and back through its node), and so does the internet host; each must read the page
/// naming the server and its own address. A one-line note where slivers have no egress.
fn across_the_federations(
    manifest: &Manifest,
    slicectl: &Slicectl,
    n: usize,
) -> anyhow::Result<()> {
    let title = "the slice is one network across the federations";
    let internet = match real_network(manifest) {
        Ok(internet) => internet,
        Err(why) => {
            println!("\n[{n}] {title}: skipped ({why})");
            return Ok(());
        }
    };
    let started = Instant::now();
    let status_args: Vec<String> = ["slice", "status", DEMO_SLICE].map(str::to_owned).to_vec();
    let (status, _) = slicectl_json(slicectl, &status_args, Duration::from_secs(60))?;
    let slivers = placed_slivers(manifest, &status);
    let first = manifest
        .federations
        .first()
        .map_or("fed0", |f| f.name.as_str());
    let mut nodes: Vec<&str> = slivers.iter().map(|s| s.host.plan.name.as_str()).collect();
    nodes.dedup();
    if nodes.len() < 2 {
        println!(
            "\n[{n}] {title}: skipped (the slice has slivers on {} node(s); it takes two)",
            nodes.len()
        );
        return Ok(());
    }
    let Some((server_at, client_at)) = pick_pair(&slivers, first) else {
        let shown: Vec<String> = slivers
            .iter()
            .map(|s| {
                let reached = s
                    .public
                    .as_ref()
                    .map_or_else(|| "no public endpoint".to_owned(), |p| p.to_string());
                format!("{}: reached at {reached}", s.label())
            })
            .collect();
        anyhow::bail!(
            "step {n} failed: no sliver of {DEMO_SLICE} leases a public port, though its nodes \
             have egress (slice status: {}); see the nodes' `public_ports` and logs",
            shown.join("; ")
        );
    };
    let (server, client) = (&slivers[server_at], &slivers[client_at]);
    let Some((public, port, address)) = server.served_at() else {
        anyhow::bail!("step {n}: {} has no leased port", server.label());
    };
    let server_name = format!("the sliver on {}", server.label());
    let url = format!("http://{}:{port}/", public.address);
    println!(
        "\n[{n}] {title}: {server_name} serves on its leased port; every sliver ({} among \
         them) and the internet host fetch {url} through {}'s public address",
        client.label(),
        server.host.plan.name
    );
    println!("    $ slicectl slice status {DEMO_SLICE}    (where each sliver is reached)");
    for sliver in &slivers {
        let reached = sliver
            .public
            .as_ref()
            .map_or_else(|| "no public endpoint".to_owned(), |p| p.to_string());
        let role = if sliver.host.plan.name == server.host.plan.name {
            "    ← serves"
        } else {
            ""
        };
        println!("    {}: reached at {reached}{role}", sliver.label());
    }

    // The server, in every sliver: only the one holding `address` keeps running.
    println!(
        "    $ slicectl slice spawn {DEMO_SLICE} -- python3 -c \"$SLIVER_SERVER\" {address} {port} '{server_name}'"
    );
    println!(
        "      (SLIVER_SERVER: testnet::demo's small Python server: HTTP and UDP echo on ADDR:PORT for 60 s; a sliver not holding ADDR exits)"
    );
    let spawn_args: Vec<String> = ["slice", "spawn", DEMO_SLICE, "--", "python3", "-c"]
        .into_iter()
        .map(str::to_owned)
        .chain([
            SLIVER_SERVER.to_owned(),
            address.to_owned(),
            port.to_string(),
            server_name.clone(),
        ])
        .collect();
    let (spawned, out) = slicectl_json(slicectl, &spawn_args, Duration::from_secs(60))?;
    let server_key = server.host.key.to_string();
    let entry = |json: &Value| -> Option<Value> {
        json["slivers"]
            .as_array()?
            .iter()
            .find(|v| v["node"].as_str() == Some(server_key.as_str()))
            .cloned()
    };
    let Some(pid) = entry(&spawned).and_then(|v| v["pid"].as_u64()) else {
        anyhow::bail!(
            "step {n} failed: {server_name} did not start the server (exit {}): {}",
            out.code,
            entry(&spawned)
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| out.stderr.trim().to_owned())
        );
    };
    let logs_args: Vec<String> = ["slice", "logs", DEMO_SLICE].map(str::to_owned).to_vec();
    let listening = format!("serves HTTP and UDP echo on {address}:{port}");
    let deadline = Instant::now() + SERVER_START;
    let log = loop {
        let (logs, _) = slicectl_json(slicectl, &logs_args, Duration::from_secs(60))?;
        let log = entry(&logs)
            .and_then(|v| v["logs"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains(&listening)) {
            println!("    {}: pid {pid}: {line}", server.host.plan.name);
            break Ok(());
        }
        if Instant::now() >= deadline {
            break Err(log);
        }
        crate::pause(Duration::from_millis(250));
    };
    if let Err(log) = log {
        anyhow::bail!(
            "step {n} failed: {server_name} (pid {pid}) did not listen on {address}:{port} \
             within {} s; its spawn log: {}",
            SERVER_START.as_secs(),
            log.lines().rev().take(5).collect::<Vec<_>>().join(" / ")
        );
    }

    // Every sliver fetches it through the server's node's public address.
    let (mut fetched, out) = bash_in_every_sliver(
        slicectl,
        crate::internet::fetch_script(&public.address, port),
    )?;
    let client_key = client.host.key.to_string();
    let across_federations = client.host.plan.federation != server.host.plan.federation;
    fetched.sort_by_key(|v| {
        let key = v["node"].as_str().unwrap_or("");
        manifest.hosts.iter().position(|h| h.key.to_string() == key)
    });
    let mut failed = Vec::new();
    let mut client_read = false;
    for sliver in &fetched {
        match fetched_page(manifest, &url, &server_name, (address, port), sliver) {
            Ok((name, page)) => {
                let node = sliver["node"].as_str();
                let note = if node == Some(client_key.as_str()) {
                    client_read = true;
                    if across_federations {
                        "    ← across the federations"
                    } else {
                        "    ← from another node"
                    }
                } else if node == Some(server_key.as_str()) {
                    "    ← its own, out and back through its node"
                } else {
                    ""
                };
                println!("    {name} → {url}: {page}{note}");
            }
            Err(problem) => {
                println!("    {problem}");
                failed.push(problem);
            }
        }
    }
    if !client_read && failed.is_empty() {
        failed.push(format!(
            "{} did not answer (exit {}): {}",
            client.label(),
            out.code,
            out.stderr.trim()
        ));
    }

    // The rest of the Internet reaches it the same way.
    let script = crate::internet::fetch_script(&public.address, port);
    let seen = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", internet.netns))
        .args(["--", "timeout", "10", "bash", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running nsenter into {}", internet.netns))?;
    let stdout = String::from_utf8_lossy(&seen.stdout);
    let page = stdout.lines().find(|l| l.starts_with("hello from "));
    let want = expected_page(&server_name, address, port, &internet.ip);
    match page {
        Some(page) if page.starts_with(&want) => {
            println!(
                "    {} ({}) → {url}: {page}",
                InternetHost::NAME,
                internet.ip
            );
        }
        _ => {
            use std::os::unix::process::ExitStatusExt as _;
            let how = match (seen.status.code(), seen.status.signal()) {
                (Some(124), _) => "exit 124, timed out".to_owned(),
                (Some(code), _) => format!("exit {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => seen.status.to_string(),
            };
            let stderr = String::from_utf8_lossy(&seen.stderr);
            let why = match page {
                Some(page) => format!("read {page:?}"),
                None => stderr
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .map_or_else(|| "no page".to_owned(), str::to_owned),
            };
            let problem = format!(
                "{} ({}): cannot fetch {url} ({server_name} at {address}:{port}) ({how}): {why}",
                InternetHost::NAME,
                internet.ip,
            );
            println!("    {problem}");
            failed.push(problem);
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "step {n} failed: {} of {} fetches of {url} ({} of {server_name} at {address}) did \
             not read its page ({}); see the nodes' logs (`testnet logs {}`, `testnet logs {}`) \
             for their firewall",
            failed.len(),
            fetched.len() + 1,
            public,
            failed.join("; "),
            server.host.plan.name,
            client.host.plan.name
        );
    }
    let across = if across_federations {
        "across the federations".to_owned()
    } else {
        format!(
            "from another node of {} (no sliver of the slice is in another federation)",
            server.host.plan.federation
        )
    };
    println!(
        "    {} reached {server_name} {across}: {public} of the sliver at {address}",
        client.label()
    );
    println!("    ({:.2}s)", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn namespaced() -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        let manifest = crate::generate::generate(
            dir.path(),
            crate::topology::Topology::default(),
            crate::generate::Network::Namespaces,
            "linux",
        )
        .unwrap();
        (dir, manifest)
    }

    /// `slice status --json`'s entry of a sliver on `node` (leased port `port`, if any).
    fn status_entry(manifest: &Manifest, node: &str, port: Option<u16>) -> Value {
        let host = manifest.host(node).unwrap();
        let n = host.plan.index;
        json!({
            "node": host.key.to_string(),
            "federation": host.plan.federation,
            "address": format!("10.200.{n}.1"),
            "public": port.map(|p| json!({"address": host.ip, "ports": [p]})),
        })
    }

    #[test]
    fn a_sliver_of_the_first_federation_serves_one_of_another_fetches() {
        let (_dir, manifest) = namespaced();
        let status = |entries: Vec<Value>| json!({ "slivers": entries });
        let pick = |entries: Vec<Value>| {
            let slivers = placed_slivers(&manifest, &status(entries));
            pick_pair(&slivers, "fed0").map(|(s, c)| {
                (
                    slivers[s].host.plan.name.clone(),
                    slivers[c].host.plan.name.clone(),
                )
            })
        };
        // Round robin: node0, node2, node4 are fed0's, node1, node3, node5 fed1's.
        let e = |node: &str, port: Option<u16>| status_entry(&manifest, node, port);
        assert_eq!(
            pick(vec![
                e("node3", Some(40000)),
                e("node2", Some(40001)),
                e("node4", Some(40000))
            ]),
            Some(("node2".to_owned(), "node3".to_owned())),
            "the first of fed0 in host order serves, one of fed1 fetches"
        );
        assert_eq!(
            pick(vec![
                e("node0", None),
                e("node2", Some(40000)),
                e("node1", Some(40000))
            ]),
            Some(("node2".to_owned(), "node1".to_owned())),
            "a sliver without a leased port cannot serve"
        );
        assert_eq!(
            pick(vec![e("node0", Some(40000)), e("node2", Some(40000))]),
            Some(("node0".to_owned(), "node2".to_owned())),
            "no sliver of fed1: another node of fed0"
        );
        assert_eq!(
            pick(vec![e("node1", Some(40000)), e("node3", Some(40000))]),
            Some(("node1".to_owned(), "node3".to_owned())),
            "no sliver of fed0: one of fed1 serves"
        );
        assert_eq!(pick(vec![e("node0", Some(40000))]), None, "one node");
        assert_eq!(
            pick(vec![e("node0", None), e("node1", None)]),
            None,
            "no leased port"
        );
        let slivers = placed_slivers(&manifest, &status(vec![e("node0", Some(40000))]));
        assert_eq!(slivers[0].label(), "node0 (fed0)");
        let (public, port, address) = slivers[0].served_at().unwrap();
        assert_eq!(
            (public.to_string(), port, address),
            (
                format!("{}:40000 → 40000", manifest.host("node0").unwrap().ip),
                40000,
                "10.200.0.1"
            )
        );
    }

    #[test]
    fn a_fetch_passes_only_with_the_servers_page_naming_the_fetchers_node() {
        let (_dir, manifest) = namespaced();
        let node = manifest.host("node3").unwrap();
        let server = "the sliver on node0 (fed0)";
        let url = "http://10.250.0.2:40000/";
        let at = ("10.200.0.1", 40000);
        let answer = |peer: &str| {
            json!({
                "node": node.key.to_string(), "exit_code": 0, "stderr": "",
                "stdout": format!(
                    "HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n{}40404\n",
                    expected_page(server, at.0, at.1, peer)
                ),
            })
        };
        let (name, page) = fetched_page(&manifest, url, server, at, &answer(&node.ip)).unwrap();
        assert_eq!(name, "node3 (fed1)");
        assert_eq!(
            page,
            format!(
                "hello from the sliver on node0 (fed0) at 10.200.0.1:40000; you are {}:40404",
                node.ip
            )
        );
        let wrong = fetched_page(&manifest, url, server, at, &answer("10.200.3.1")).unwrap_err();
        assert!(
            wrong.starts_with("node3 (fed1): fetched http://10.250.0.2:40000/ but read"),
            "{wrong}"
        );
        let refused = json!({
            "node": node.key.to_string(), "exit_code": 7, "stdout": "",
            "stderr": "bash: connect: Connection refused\n",
        });
        assert_eq!(
            fetched_page(&manifest, url, server, at, &refused).unwrap_err(),
            "node3 (fed1): cannot fetch http://10.250.0.2:40000/ (the sliver on node0 (fed0) at \
             10.200.0.1:40000) (exit 7): bash: connect: Connection refused"
        );
        let timed_out = json!({"node": node.key.to_string(), "exit_code": 124, "stdout": ""});
        assert!(
            fetched_page(&manifest, url, server, at, &timed_out)
                .unwrap_err()
                .ends_with("(exit 124, timed out): no page")
        );
        let unreachable = json!({"node": node.key.to_string(), "error": "node unreachable"});
        assert_eq!(
            fetched_page(&manifest, url, server, at, &unreachable).unwrap_err(),
            "node3 (fed1): node unreachable"
        );
    }

    /// The scenario runs the demo's server, not a copy that drifted.
    #[test]
    fn the_slice_network_scenario_runs_the_demos_server() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scenarios")
            .join("slice-network.toml");
        let scenario = crate::scenario::load(&path).unwrap();
        let spawned = scenario.steps.iter().any(|s| match &s.step {
            crate::scenario::Step::Spawn(sp) => {
                sp.command.to_vec().iter().any(|a| a == SLIVER_SERVER)
            }
            _ => false,
        });
        assert!(spawned, "{} spawns SLIVER_SERVER", path.display());
    }

    /// The server on real sockets, in a network namespace of the test's own (a thread that
    /// unshared it; its children are in it): HTTP and UDP name the server and the peer; an
    /// address that is not the sliver's makes it exit at once. Root and python3 only.
    #[test]
    fn the_sliver_server_names_itself_and_each_peer_in_a_private_namespace() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "root tests run as root under CI"
            );
            eprintln!("skipped: needs root (a network namespace of its own)");
            return;
        }
        if Command::new("python3").arg("--version").output().is_err() {
            eprintln!("skipped: no python3 (the slivers' server is a Python script)");
            return;
        }
        /// Kills and reaps the server whatever happens.
        struct Reaped(std::process::Child);
        impl Drop for Reaped {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let outcome = std::thread::spawn(|| -> anyhow::Result<(String, String, String)> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            let up = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()?;
            anyhow::ensure!(up.success(), "ip link set lo up: {up}");
            let serve = |address: &str| {
                let mut c = Command::new("timeout");
                c.args([
                    "70",
                    "python3",
                    "-c",
                    SLIVER_SERVER,
                    address,
                    "40000",
                    "the test sliver",
                ]);
                c
            };
            let elsewhere = serve("192.0.2.1").stdin(Stdio::null()).output()?;
            anyhow::ensure!(elsewhere.status.success(), "{elsewhere:?}");
            let _server = Reaped(
                serve("127.0.0.1")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()?,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            let page = loop {
                let fetched = Command::new("timeout")
                    .args([
                        "5",
                        "bash",
                        "-c",
                        &crate::internet::fetch_script("127.0.0.1", 40000),
                    ])
                    .output()?;
                let stdout = String::from_utf8_lossy(&fetched.stdout).into_owned();
                if let Some(page) = stdout.lines().find(|l| l.starts_with("hello from")) {
                    break page.to_owned();
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "no page within 10 s: {fetched:?}"
                );
                crate::pause(Duration::from_millis(100));
            };
            // A request in two pieces: nothing is answered before its head is whole.
            let mut stream = std::net::TcpStream::connect("127.0.0.1:40000")?;
            std::io::Write::write_all(&mut stream, b"GET / HTTP/1.0\r\n")?;
            stream.set_read_timeout(Some(Duration::from_millis(300)))?;
            let early = stream.read(&mut [0u8; 64]);
            anyhow::ensure!(
                early.as_ref().is_err_and(|e| matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )),
                "answered half a request head: {early:?}"
            );
            std::io::Write::write_all(&mut stream, b"Host: 127.0.0.1\r\n\r\n")?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut whole = String::new();
            stream.read_to_string(&mut whole)?;
            anyhow::ensure!(
                whole.contains("\r\n\r\nhello from the test sliver"),
                "{whole:?}"
            );
            let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
            socket.set_read_timeout(Some(Duration::from_secs(5)))?;
            socket.send_to(b"ping", "127.0.0.1:40000")?;
            let mut buf = [0u8; 256];
            let (n, _) = socket.recv_from(&mut buf)?;
            let echo = String::from_utf8_lossy(&buf[..n]).into_owned();
            Ok((
                page,
                echo,
                String::from_utf8_lossy(&elsewhere.stdout).into_owned(),
            ))
        })
        .join()
        .unwrap();
        let (page, echo, elsewhere) = outcome.unwrap();
        let want = expected_page("the test sliver", "127.0.0.1", 40000, "127.0.0.1");
        assert!(page.starts_with(&want), "{page:?} should start {want:?}");
        assert_eq!(
            echo,
            "the test sliver at 127.0.0.1:40000 echoes 127.0.0.1: ping"
        );
        assert_eq!(
            elsewhere,
            "192.0.2.1:40000: Cannot assign requested address: not this sliver's, nothing to serve here\n"
        );
    }

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
