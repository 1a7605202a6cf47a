//! `sliver-bench`: how fast slivers come and go, and what an idle one costs (root only).
//!
//! 1. creates and destroys `--cycles` slivers (user+pid+mount+uts+ipc+net+cgroup namespaces,
//!    overlay root, cgroup limits, veth, HTB bucket) one after the other: p50/p99 of each;
//! 2. holds `--hold` idle slivers at once: host memory per sliver (MemAvailable drop);
//! 3. for reference, the kernel floor (a bare clone into the same namespaces, then wait) and,
//!    when `runc` and a busybox bundle are present (see `node/bench.sh`), `runc run` of an
//!    equivalent busybox container.
//!
//! `sliver-bench [--cycles N] [--hold N] [--runc-bundle DIR] [--init PATH]
//! [--disk-backing directory|quota|tmpfs]` (each sliver is granted 1 GiB of disk)
//! `sliver-bench --network [--cycles N]`: what slice networking costs (see [`net`]).
//! `sliver-bench --reclaim PID`: removes what an interrupted run `PID` left.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use capability_schema::Resources;
use node::sliver::linux::LinuxHost;
use node::sliver::{DiskBacking, NodeConfig, SliverId, SliverSpec, Slivers};

struct Args {
    cycles: usize,
    hold: usize,
    runc_bundle: Option<PathBuf>,
    init: PathBuf,
    reclaim: Option<u32>,
    disk_backing: DiskBacking,
    network: bool,
}

/// Prints a line; a closed stdout must not abort the run before it cleans up.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod net;

fn parse_args() -> Result<Args, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut args = Args {
        cycles: 200,
        hold: 500,
        runc_bundle: None,
        init: exe.with_file_name("sliver-init"),
        reclaim: None,
        disk_backing: DiskBacking::Directory,
        network: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--cycles" => args.cycles = value()?.parse().map_err(|e| format!("--cycles: {e}"))?,
            "--hold" => args.hold = value()?.parse().map_err(|e| format!("--hold: {e}"))?,
            "--runc-bundle" => args.runc_bundle = Some(value()?.into()),
            "--init" => args.init = value()?.into(),
            "--network" => args.network = true,
            "--disk-backing" => {
                let v = value()?;
                args.disk_backing = serde_json::from_value(serde_json::Value::String(v.clone()))
                    .map_err(|_| format!("--disk-backing: unknown backing {v}"))?
            }
            "--reclaim" => {
                args.reclaim = Some(value()?.parse().map_err(|e| format!("--reclaim: {e}"))?)
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i.min(samples.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Lets the kernel finish freeing and accounting before memory is read.
#[allow(
    clippy::disallowed_methods,
    reason = "a synchronous benchmark waits for the host, not for a task"
)]
fn settle() {
    std::thread::sleep(Duration::from_secs(2));
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn spec(i: usize) -> Result<SliverSpec, String> {
    let id = SliverId::new(format!("bench{i}")).map_err(|e| e.to_string())?;
    Ok(SliverSpec::regular(
        id,
        Resources {
            cpu_millis: 100,
            memory_bytes: 64 << 20,
            disk_bytes: 1 << 30,
            egress_kbps: 1_000,
            ports: 0,
        },
    ))
}

/// A bare clone into the namespaces a sliver gets, child exits at once; parent waits.
fn kernel_floor(n: usize) -> Result<Vec<Duration>, String> {
    use nix::sched::CloneFlags;
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWCGROUP;
    let mut out = Vec::with_capacity(n);
    let mut stack = vec![0u8; 64 * 1024];
    for _ in 0..n {
        let t = Instant::now();
        // SAFETY: the child only returns 0 (no allocation, no locks).
        let pid =
            unsafe { nix::sched::clone(Box::new(|| 0), &mut stack, flags, Some(libc::SIGCHLD)) }
                .map_err(|e| format!("clone: {e}"))?;
        nix::sys::wait::waitpid(pid, None).map_err(|e| format!("wait: {e}"))?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// Makes `bundle/config.json` (from `runc spec`) for a container equivalent to a sliver: the
/// same namespaces (user with a 65536-id map, pid, mount, uts, ipc, net, cgroup), the same
/// limits, `bundle/rootfs` holding a static busybox; the process is `/bin/true`.
fn prepare_runc_bundle(bundle: &PathBuf) -> Result<(), String> {
    let rootfs = bundle.join("rootfs");
    if !rootfs.join("bin/busybox").exists() {
        return Err(format!(
            "{} has no bin/busybox (node/bench.sh makes it)",
            rootfs.display()
        ));
    }
    let config = bundle.join("config.json");
    let _ = std::fs::remove_file(&config);
    let status = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(bundle)
        .status()
        .map_err(|e| format!("runc spec: {e}"))?;
    if !status.success() {
        return Err(format!("runc spec exited with {status}"));
    }
    let text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
    let mut spec: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    spec["process"]["args"] = serde_json::json!(["/bin/busybox", "true"]);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["root"]["readonly"] = serde_json::json!(true);
    let map = serde_json::json!([{ "containerID": 0, "hostID": 0x2000_0000u32, "size": 65536 }]);
    spec["linux"]["uidMappings"] = map.clone();
    spec["linux"]["gidMappings"] = map;
    spec["linux"]["namespaces"] = serde_json::json!([
        { "type": "pid" }, { "type": "network" }, { "type": "ipc" }, { "type": "uts" },
        { "type": "mount" }, { "type": "user" }, { "type": "cgroup" }
    ]);
    spec["linux"]["resources"] = serde_json::json!({
        "memory": { "limit": 64u64 << 20 },
        "cpu": { "quota": 10000, "period": 100000, "shares": 102 },
        "pids": { "limit": 1024 }
    });
    std::fs::write(
        &config,
        serde_json::to_vec_pretty(&spec).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("writing {}: {e}", config.display()))
}

fn runc(bundle: &PathBuf, n: usize) -> Result<Vec<Duration>, String> {
    prepare_runc_bundle(bundle)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("pmbench-{}-{i}", std::process::id());
        let t = Instant::now();
        let status = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .status()
            .map_err(|e| format!("runc: {e}"))?;
        out.push(t.elapsed());
        if !status.success() {
            let _ = Command::new("runc")
                .args(["delete", "--force", &id])
                .status();
            return Err(format!("runc run exited with {status}"));
        }
    }
    Ok(out)
}

/// The configuration of the run with process id `pid` (unique names, so runs never clash).
fn config_for(pid: u32, init: &std::path::Path, disk_backing: DiskBacking) -> NodeConfig {
    let state = std::env::temp_dir().join(format!("pmbench-{pid}"));
    let mut config = NodeConfig::new(&state, init);
    config.cgroup_parent = format!("pmbench-{pid}");
    config.slots.ifname_prefix = "pmb".into();
    config.shaping.ifb = format!("pmbifb{}", pid % 1000);
    config.tmp_bytes = 16 << 20;
    config.disk_backing = disk_backing;
    config.disk_capacity = Some(64 << 30);
    config
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    if !nix::unistd::geteuid().is_root() {
        return Err("sliver-bench must run as root".into());
    }
    let host = LinuxHost::detect().map_err(|e| e.to_string())?;
    if let Some(pid) = args.reclaim {
        let config = config_for(pid, &args.init, args.disk_backing);
        let state = config.state_dir.clone();
        let (engine, found) = Slivers::open(host, config).map_err(|e| e.to_string())?;
        say!(
            "run {pid}: {} slivers to remove, {} already dead",
            found.adopted.len(),
            found.reaped.len()
        );
        let result = engine.destroy_all().map_err(|e| e.to_string());
        let parent = engine.config().cgroup_parent.clone();
        let _ = engine.host().cgroups().remove_parent(&parent);
        let _ = std::fs::remove_dir_all(&state);
        return result;
    }
    if args.network {
        let _ = host.favor_dynamic_cgroups();
        return net::run(&args.init, args.cycles);
    }
    match host.favor_dynamic_cgroups() {
        Ok(Some(p)) => say!(
            "cgroup moves without grace periods ({} has favordynmods)",
            p.display()
        ),
        Ok(None) => say!("no cgroup2 mount: cgroup moves wait for RCU grace periods"),
        Err(e) => say!("could not set favordynmods: {e}"),
    }
    let config = config_for(std::process::id(), &args.init, args.disk_backing);
    let state = config.state_dir.clone();
    let (engine, _) = Slivers::open(host, config).map_err(|e| e.to_string())?;
    say!("disk backing: {:?}", engine.config().disk_backing);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bench(&engine, &args)))
        .unwrap_or_else(|_| Err("the benchmark panicked".into()));
    let teardown = engine.destroy_all();
    let parent = engine.config().cgroup_parent.clone();
    let _ = engine.host().cgroups().remove_parent(&parent);
    let _ = std::fs::remove_dir_all(&state);
    teardown.map_err(|e| e.to_string())?;
    result
}

fn bench(engine: &Slivers<LinuxHost>, args: &Args) -> Result<(), String> {
    // Warm up (page cache, image skeleton, first netns).
    for i in 0..5 {
        let rec = engine.create(spec(i)?).map_err(|e| e.to_string())?;
        engine
            .destroy(&rec.spec.id, false)
            .map_err(|e| e.to_string())?;
    }
    let (mut create, mut destroy) = (Vec::new(), Vec::new());
    for i in 0..args.cycles {
        let t = Instant::now();
        let rec = engine
            .create(spec(i)?)
            .map_err(|e| format!("create {i}: {e}"))?;
        create.push(t.elapsed());
        let t = Instant::now();
        engine
            .destroy(&rec.spec.id, false)
            .map_err(|e| format!("destroy {i}: {e}"))?;
        destroy.push(t.elapsed());
    }
    say!("create/destroy of {} slivers, one at a time:", args.cycles);
    say!(
        "  create  p50 {}  p99 {}",
        ms(percentile(&mut create, 0.5)),
        ms(percentile(&mut create, 0.99))
    );
    say!(
        "  destroy p50 {}  p99 {}",
        ms(percentile(&mut destroy, 0.5)),
        ms(percentile(&mut destroy, 0.99))
    );

    settle();
    let before = mem_available_kib();
    let t = Instant::now();
    for i in 0..args.hold {
        engine
            .create(spec(i)?)
            .map_err(|e| format!("holding sliver {i}: {e}"))?;
    }
    let held = t.elapsed();
    settle();
    let after = mem_available_kib();
    let per = before.saturating_sub(after) as f64 / args.hold.max(1) as f64 / 1024.0;
    // What the kernel charges to the slivers' own memory cgroups (their inits' pages and the
    // kernel objects accounted to them): a view other work on the host does not blur.
    let charged: u64 = engine
        .list()
        .iter()
        .filter_map(|r| {
            engine
                .host()
                .cgroups()
                .memory_usage(&r.cgroup)
                .ok()
                .flatten()
        })
        .sum();
    let charged = charged as f64 / args.hold.max(1) as f64 / 1_048_576.0;
    say!(
        "{} idle slivers held at once (made in {:.1} s): {:.2} MiB of host memory each \
         (MemAvailable drop; {:.2} MiB charged to each sliver's memory cgroup)",
        args.hold,
        held.as_secs_f64(),
        per,
        charged
    );
    let t = Instant::now();
    for rec in engine.list() {
        engine
            .destroy(&rec.spec.id, false)
            .map_err(|e| e.to_string())?;
    }
    say!("  destroyed them in {:.1} s", t.elapsed().as_secs_f64());

    let mut floor = kernel_floor(200)?;
    say!(
        "kernel floor (bare clone into user+pid+mnt+uts+ipc+net+cgroup namespaces, wait): p50 {}  p99 {}",
        ms(percentile(&mut floor, 0.5)),
        ms(percentile(&mut floor, 0.99))
    );
    match &args.runc_bundle {
        Some(bundle) => {
            let mut r = runc(bundle, 30)?;
            say!(
                "runc run (busybox true; same namespaces, id map and limits): p50 {}  p99 {}",
                ms(percentile(&mut r, 0.5)),
                ms(percentile(&mut r, 0.99))
            );
        }
        None => say!("runc: no bundle given (node/bench.sh prepares one)"),
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("sliver-bench: {e}");
        std::process::exit(1);
    }
}
