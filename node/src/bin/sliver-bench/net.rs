//! `sliver-bench --network`: what slice networking costs, measured in one run.
//!
//! Two "nodes" are network namespaces joined by a veth pair (`a` at `10.252.<n>.1`, `b` at
//! `.2`), each with its own engine, run on a thread that joined its namespace:
//! 1. create/destroy cycles on node `a` with the node's firewall off (no network policy, as
//!    before slice networking) and on (uplink, NAT, fence, one leased port per sliver, its map
//!    entry added and removed over netlink): p50/p99 of each;
//! 2. a bounded TCP transfer from a sliver on `a` to a sliver on `b` through `b`'s public
//!    address and leased port (SNAT out of `a`, DNAT into `b`, both shapers), against the same
//!    transfer host to host on the same veth: throughput of each and their ratio.
//!
//! Everything is named after the run's pid and removed at the end.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use capability_schema::Resources;
use node::sliver::firewall::{Policy, PublicPorts, Uplink};
use node::sliver::host::ExecCommand;
use node::sliver::linux::LinuxHost;
use node::sliver::{NodeConfig, SliverId, SliverSpec, Slivers};

use crate::{ms, percentile};

/// Bytes of each transfer.
const TRANSFER: u64 = 400 << 20;
/// Transfers of each kind (the median is reported).
const ROUNDS: usize = 3;
/// The leased port of the receiving sliver (the first of node `b`'s range).
const PORT: u16 = 45000;

struct Pair {
    tag: String,
    a: (String, Ipv4Addr),
    b: (String, Ipv4Addr),
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Pair {
    fn new() -> Result<Pair, String> {
        let pid = std::process::id();
        let n = (pid % 250) as u8;
        let tag = format!("{}", pid % 100_000);
        let pair = Pair {
            a: (format!("pmnb-{tag}-a"), Ipv4Addr::new(10, 252, n, 1)),
            b: (format!("pmnb-{tag}-b"), Ipv4Addr::new(10, 252, n, 2)),
            tag,
        };
        let (va, vb) = (format!("pmnba{}", pair.tag), format!("pmnbb{}", pair.tag));
        for (ns, _) in [&pair.a, &pair.b] {
            ip(&["netns", "add", ns])?;
        }
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        for ((ns, addr), dev) in [(&pair.a, &va), (&pair.b, &vb)] {
            ip(&["link", "set", dev, "netns", ns, "name", "up0"])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "up0"])?;
            ip(&["-n", ns, "link", "set", "up0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for (ns, _) in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread that joined namespace `ns` (so does everything it starts).
fn within<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> std::thread::JoinHandle<Result<T, String>> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns {path}: {e}"))?;
        f()
    })
}

fn joined<T>(h: std::thread::JoinHandle<Result<T, String>>) -> Result<T, String> {
    h.join()
        .map_err(|_| "a benchmark thread panicked".to_string())?
}

/// A node's engine config: unique names, a 100 Gbit/s root bucket (so the shaper is in the
/// path but never the limit), and, `networked`, the uplink `up0` at `address` with ports.
fn node_config(
    init: &std::path::Path,
    name: &str,
    pool: u8,
    networked: Option<Ipv4Addr>,
) -> NodeConfig {
    let pid = std::process::id();
    let mut config = NodeConfig::new(
        std::env::temp_dir().join(format!("pmbench-net-{pid}-{name}")),
        init,
    );
    config.cgroup_parent = format!("pmbench-net-{pid}-{name}");
    config.slots.ifname_prefix = format!("pmn{name}");
    config.slots.pool = Ipv4Addr::new(10, 196, pool, 0);
    config.slots.pool_prefix = 24;
    config.shaping.ifb = format!("pmn{name}ifb");
    config.shaping.node_kbps = 100_000_000;
    config.tmp_bytes = 16 << 20;
    config.network = networked.map(|address| Policy {
        uplink: Some(Uplink {
            device: "up0".into(),
            address,
        }),
        icmp_per_sec: 10,
        ports: Some(PublicPorts {
            first: PORT,
            count: 64,
            per_sliver: 1,
        }),
    });
    config
}

fn sliver(i: usize) -> Result<SliverSpec, String> {
    sliver_with_ports(i, 1)
}

fn sliver_with_ports(i: usize, ports: u32) -> Result<SliverSpec, String> {
    let id = SliverId::new(format!("netbench{i}")).map_err(|e| e.to_string())?;
    Ok(SliverSpec::regular(
        id,
        Resources {
            cpu_millis: 1000,
            memory_bytes: 256 << 20,
            disk_bytes: 0,
            egress_kbps: 50_000_000,
            ports,
        },
    ))
}

/// Opens an engine, runs `f` with it, and removes everything it made.
fn with_engine<T>(
    config: NodeConfig,
    f: impl FnOnce(&Slivers<LinuxHost>) -> Result<T, String>,
) -> Result<T, String> {
    let host = LinuxHost::detect().map_err(|e| e.to_string())?;
    let state = config.state_dir.clone();
    let (engine, _) = Slivers::open(host, config).map_err(|e| e.to_string())?;
    let result = f(&engine);
    let teardown = engine.destroy_all();
    let parent = engine.config().cgroup_parent.clone();
    let _ = engine.host().cgroups().remove_parent(&parent);
    let _ = std::fs::remove_dir_all(&state);
    teardown.map_err(|e| e.to_string())?;
    result
}

/// p50 and p99 of `cycles` creates of slivers leasing `ports` on an engine of `config`.
fn create_cycles(
    config: NodeConfig,
    cycles: usize,
    ports: u32,
) -> Result<(Duration, Duration), String> {
    with_engine(config, |engine| {
        let mut create = Vec::with_capacity(cycles);
        for i in 0..cycles + 5 {
            let t = Instant::now();
            let rec = engine
                .create(sliver_with_ports(i, ports)?)
                .map_err(|e| format!("create {i}: {e}"))?;
            if i >= 5 {
                create.push(t.elapsed());
            }
            engine
                .destroy(&rec.spec.id, false)
                .map_err(|e| format!("destroy {i}: {e}"))?;
        }
        Ok((percentile(&mut create, 0.5), percentile(&mut create, 0.99)))
    })
}

/// The sink: accepts one connection on `port`, reads to its end, prints the byte count.
fn sink_program(port: u16) -> String {
    format!(
        "import socket\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('0.0.0.0',{port})); s.listen(1); s.settimeout(60)\n\
         c,a=s.accept(); n=0; buf=bytearray(1<<22)\n\
         while True:\n\
         \tk=c.recv_into(buf)\n\
         \tif not k: break\n\
         \tn+=k\n\
         print(n)\n"
    )
}

/// The sender: connects and sends `TRANSFER` bytes in 4 MiB writes.
fn sender_program(to: Ipv4Addr, port: u16) -> String {
    format!(
        "import socket\n\
         s=socket.create_connection(('{to}',{port}),timeout=60)\n\
         b=memoryview(bytes(1<<22)); n={TRANSFER}\n\
         while n>0:\n\
         \tk=min(n,len(b)); s.sendall(b[:k]); n-=k\n\
         s.close()\n"
    )
}

fn gbit(elapsed: Duration) -> f64 {
    TRANSFER as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
}

/// One host-to-host transfer on the veth: Gbit/s.
#[allow(
    clippy::disallowed_methods,
    reason = "a synchronous benchmark waits for a process to listen"
)]
fn host_to_host(pair: &Pair) -> Result<f64, String> {
    let port = PORT + 100;
    let mut sink = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.b.0,
            "python3",
            "-c",
            &sink_program(port),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("sink: {e}"))?;
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let status = Command::new("ip")
        .args(["netns", "exec", &pair.a.0, "python3", "-c"])
        .arg(sender_program(pair.b.1, port))
        .status()
        .map_err(|e| format!("sender: {e}"))?;
    let elapsed = t.elapsed();
    let _ = sink.wait();
    if !status.success() {
        return Err(format!("host-to-host transfer failed: {status}"));
    }
    Ok(gbit(elapsed))
}

/// `ROUNDS` transfers from a sliver on `a` to a sliver on `b`'s leased port: Gbit/s each.
#[allow(
    clippy::disallowed_methods,
    reason = "a synchronous benchmark waits for a process to listen"
)]
fn sliver_to_sliver(pair: &Pair, init: &std::path::Path) -> Result<Vec<f64>, String> {
    let ready = Arc::new(Barrier::new(2));
    let done = Arc::new(Barrier::new(2));
    let (b_public, init_b) = (pair.b.1, init.to_path_buf());
    let (r, d) = (Arc::clone(&ready), Arc::clone(&done));
    let receiver = within(&pair.b.0, move || {
        with_engine(node_config(&init_b, "b", 2, Some(b_public)), |engine| {
            let rec = engine.create(sliver(0)?).map_err(|e| e.to_string())?;
            for _ in 0..ROUNDS {
                let mut sink = ExecCommand::new(["/usr/bin/python3", "-c", &sink_program(PORT)]);
                sink.timeout = Duration::from_secs(90);
                let mut child = engine
                    .spawn(&rec.spec.id, &sink)
                    .map_err(|e| e.to_string())?
                    .child;
                std::thread::sleep(Duration::from_millis(300));
                r.wait();
                d.wait();
                let _ = child.wait();
            }
            Ok(())
        })
    });
    let (a_public, init_a) = (pair.a.1, init.to_path_buf());
    let sender = within(&pair.a.0, move || {
        with_engine(node_config(&init_a, "a", 1, Some(a_public)), |engine| {
            let rec = engine.create(sliver(0)?).map_err(|e| e.to_string())?;
            let mut rates = Vec::new();
            for _ in 0..ROUNDS {
                ready.wait();
                let mut send =
                    ExecCommand::new(["/usr/bin/python3", "-c", &sender_program(b_public, PORT)]);
                send.timeout = Duration::from_secs(60);
                let t = Instant::now();
                let out = engine.exec(&rec.spec.id, &send);
                let elapsed = t.elapsed();
                done.wait();
                let out = out.map_err(|e| e.to_string())?;
                if !out.success() {
                    return Err(format!("sliver transfer failed: {}", out.stderr_text()));
                }
                rates.push(gbit(elapsed));
            }
            Ok(rates)
        })
    });
    let rates = joined(sender);
    joined(receiver)?;
    rates
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The whole network benchmark.
pub(crate) fn run(init: &std::path::Path, cycles: usize) -> Result<(), String> {
    let pair = Pair::new()?;
    let (init_off, init_on, a_public) = (init.to_path_buf(), init.to_path_buf(), pair.a.1);
    let init_bare = init.to_path_buf();
    let off = joined(within(&pair.a.0, move || {
        create_cycles(node_config(&init_off, "a", 1, None), cycles, 0)
    }))?;
    let bare = joined(within(&pair.a.0, move || {
        create_cycles(node_config(&init_bare, "a", 1, Some(a_public)), cycles, 0)
    }))?;
    let on = joined(within(&pair.a.0, move || {
        create_cycles(node_config(&init_on, "a", 1, Some(a_public)), cycles, 1)
    }))?;
    say!("sliver create, {cycles} one at a time (same run, same namespace):");
    say!(
        "  networking off (no firewall table, no leased port)  p50 {}  p99 {}",
        ms(off.0),
        ms(off.1)
    );
    say!(
        "  networking on, no leased port (NAT, fence)          p50 {}  p99 {}",
        ms(bare.0),
        ms(bare.1)
    );
    say!(
        "  networking on (NAT, fence, one leased port)         p50 {}  p99 {}",
        ms(on.0),
        ms(on.1)
    );
    let hosts = median(
        (0..ROUNDS)
            .map(|_| host_to_host(&pair))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let slivers = median(sliver_to_sliver(&pair, init)?);
    say!(
        "TCP transfer of {} MiB across two nodes (median of {ROUNDS}):",
        TRANSFER >> 20
    );
    say!("  host to host on the same veth                  {hosts:.2} Gbit/s");
    say!("  sliver to sliver through both NATs and shapers {slivers:.2} Gbit/s");
    say!("  ratio {:.2}", slivers / hosts.max(f64::MIN_POSITIVE));
    Ok(())
}
