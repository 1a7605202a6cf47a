//! The resource monitor and disk limits on the real host (root; skipped otherwise unless CI):
//! per-sliver CPU, memory and egress move with real work; a sliver past its disk grant is
//! frozen (directory-backed) or refused by the kernel (tmpfs-backed); nothing is left behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::{Fixture, id, spec};
use node::daemon::monitor::{SliverMonitor, sliver_usage};
use node::sliver::netlink::Netlink;
use node::sliver::{DiskBacking, ExecCommand, SliverRecord};

/// A fixture like [`Fixture::new`] whose slivers' writable layers are backed by `backing`.
fn fixture(backing: DiskBacking) -> Option<Fixture> {
    Fixture::configured(|config| config.disk_backing = backing)
}

fn sh(f: &Fixture, sliver: &str, script: &str) -> node::sliver::ExecOutput {
    f.engine
        .exec(&id(sliver), &ExecCommand::shell(script))
        .expect("exec")
}

fn sample(f: &Fixture, sliver: &str) -> node::sliver::UsageSample {
    f.engine
        .usage()
        .into_iter()
        .find(|u| u.id.as_str() == sliver)
        .expect("a sample of the sliver")
}

/// Accepts one connection on `addr` and counts what it delivers (at most 20 s).
fn sink(addr: Ipv4Addr) -> (u16, std::thread::JoinHandle<u64>) {
    let listener = TcpListener::bind((addr, 0)).expect("bind");
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return 0;
        };
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        while Instant::now() < deadline {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        total
    });
    (port, handle)
}

#[test]
fn cpu_memory_and_egress_use_move_with_real_work() {
    let Some(f) = Fixture::new() else { return };
    let rec = f.engine.create(spec("busy")).expect("create");
    let before = sample(&f, "busy");
    let (cpu0, egress0) = (
        before.cpu_ns.expect("cpu"),
        before.egress_bytes.expect("egress"),
    );
    assert!(before.memory_bytes.expect("memory") > 0, "{before:?}");

    // A bounded CPU burn: 0.8 s of spinning in the sliver (its quota is half a core).
    let out = sh(
        &f,
        "busy",
        "end=$(( $(date +%s%N) + 800000000 )); while [ $(date +%s%N) -lt $end ]; do :; done",
    );
    assert!(out.success(), "{out:?}");
    // A bounded transfer of 2 MB to the host side of its veth, and 16 MiB held in memory.
    let (port, received) = sink(rec.net.host_addr);
    let mut send = ExecCommand::new([
        "/bin/bash".to_string(),
        "-c".to_string(),
        format!(
            "head -c 2000000 /dev/zero > /dev/tcp/{}/{port}",
            rec.net.host_addr
        ),
    ]);
    send.timeout = Duration::from_secs(20);
    let out = f.engine.exec(&id("busy"), &send).expect("send");
    assert!(out.success(), "{out:?}");
    assert_eq!(received.join().unwrap(), 2_000_000);
    let hold = f
        .engine
        .spawn(
            &id("busy"),
            &ExecCommand::shell("head -c 16777216 /dev/zero > /dev/shm/hold; sleep 20"),
        )
        .expect("spawn")
        .child;
    let mut hold = Guard(hold);
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let s = sample(&f, "busy");
        if s.memory_bytes.unwrap_or(0) > before.memory_bytes.unwrap() + (12 << 20)
            || Instant::now() > deadline
        {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = hold.0.kill();
    let _ = hold.0.wait();

    let cpu_ms = (after.cpu_ns.unwrap() - cpu0) / 1_000_000;
    let sent = after.egress_bytes.unwrap() - egress0;
    let grew = after.memory_bytes.unwrap() - before.memory_bytes.unwrap();
    eprintln!("measured: cpu +{cpu_ms} ms, egress +{sent} bytes, memory +{grew} bytes");
    assert!(
        (250..=600).contains(&cpu_ms),
        "a 0.8 s burn at half a core: {cpu_ms} ms"
    );
    // 2 MB of payload plus headers and the handshake; the bucket counts whole frames.
    assert!(
        (2_000_000..2_300_000).contains(&sent),
        "2 MB sent, bucket counted {sent}"
    );
    assert!(
        grew >= 12 << 20,
        "16 MiB held in /dev/shm, memory grew {grew}"
    );

    // The same figures, as the daemon puts them in its ad.
    let monitor: &dyn SliverMonitor = &f.engine;
    let slices = BTreeMap::from([("busy".to_string(), "princeton_busy".to_string())]);
    let ad = sliver_usage(&monitor.usage(), &slices);
    assert_eq!(ad.len(), 1);
    assert_eq!(ad[0].slice, "princeton_busy");
    assert!(ad[0].cpu_time_ms >= cpu_ms, "{ad:?}");
    assert!(ad[0].egress_bytes >= egress0 + sent, "{ad:?}");
}

/// Kills and reaps a child even when the test fails.
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines in the sliver's `/root/ticks`, read on the host through its upper dir.
fn ticks(rec: &SliverRecord) -> usize {
    fs::read_to_string(rec.dirs.upper.join("root/ticks"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_sliver_over_its_disk_grant_is_frozen_until_it_cleans_up() {
    let Some(f) = fixture(DiskBacking::Directory) else {
        return;
    };
    let mut s = spec("hog");
    s.resources.disk_bytes = 2 << 20;
    let rec = f.engine.create(s).expect("create");
    let traces = Traces::of(&f, &rec);
    // A workload that keeps writing (bounded: at most 3000 ticks, 20 ms apart), in the
    // background so that the sliver's init is its parent.
    let out = sh(
        &f,
        "hog",
        "sh -c 'i=0; while [ $i -lt 3000 ]; do echo $i >> /root/ticks; i=$((i+1)); \
         sleep 0.02; done' </dev/null >/dev/null 2>&1 &",
    );
    assert!(out.success(), "{out:?}");
    wait_until("the ticker to start", || ticks(&rec) > 2);
    assert!(f.engine.check_disk().iter().all(|r| !r.over && !r.frozen));

    // Past the grant: the next check freezes every process of the sliver.
    assert!(sh(&f, "hog", "head -c 3000000 /dev/zero > /root/blob").success());
    let reports = f.engine.check_disk();
    let hog = reports.iter().find(|r| r.id.as_str() == "hog").unwrap();
    assert!(hog.over && hog.frozen, "{hog:?}");
    let condition = f.engine.condition(&id("hog")).expect("a condition");
    eprintln!("condition: {condition}");
    assert!(
        condition.starts_with("over disk limit: 2.9 MiB of 2.0 MiB"),
        "{condition}"
    );
    let frozen_at = ticks(&rec);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(ticks(&rec), frozen_at, "a frozen sliver wrote on");
    let state = fs::read_to_string(
        traces
            .cgroups
            .iter()
            .find(|d| d.starts_with("/sys/fs/cgroup/freezer"))
            .map(|d| d.join("freezer.state"))
            .unwrap_or_else(|| traces.cgroups[0].join("cgroup.freeze")),
    )
    .unwrap();
    assert!(matches!(state.trim(), "FROZEN" | "1"), "{state}");

    // A workload started anew while frozen runs (commands must, to clean up) until the check
    // after next, when it is frozen too.
    let lines = |name: &str| {
        fs::read_to_string(rec.dirs.upper.join("root").join(name))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let out = sh(
        &f,
        "hog",
        "sh -c 'i=0; while [ $i -lt 3000 ]; do echo $i >> /root/again; i=$((i+1)); \
         sleep 0.02; done' </dev/null >/dev/null 2>&1 &",
    );
    assert!(out.success(), "{out:?}");
    wait_until("the new workload to run", || lines("again") > 2);
    f.engine.check_disk();
    let seen = lines("again");
    wait_until("the new workload to run on", || lines("again") > seen + 2);
    f.engine.check_disk();
    let stopped_at = lines("again");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        lines("again"),
        stopped_at,
        "a workload started anew escaped"
    );
    assert_eq!(ticks(&rec), frozen_at);

    // The holder cleans up with exec (not frozen), and the next check thaws the sliver.
    let out = sh(&f, "hog", "rm /root/blob && echo cleaned");
    assert_eq!(out.stdout_text(), "cleaned\n", "{out:?}");
    let reports = f.engine.check_disk();
    let hog = reports.iter().find(|r| r.id.as_str() == "hog").unwrap();
    assert!(!hog.over && !hog.frozen, "{hog:?}");
    assert_eq!(f.engine.condition(&id("hog")), None);
    wait_until("the ticker to resume", || ticks(&rec) > frozen_at + 2);

    // Frozen again, then destroyed while frozen: nothing is left.
    assert!(sh(&f, "hog", "head -c 3000000 /dev/zero > /root/blob").success());
    assert!(f.engine.check_disk()[0].frozen);
    f.engine.destroy(&id("hog"), false).expect("destroy");
    traces.assert_gone(&f);
}

#[test]
fn a_command_frozen_mid_run_still_times_out() {
    let Some(f) = fixture(DiskBacking::Directory) else {
        return;
    };
    let mut s = spec("midrun");
    s.resources.disk_bytes = 1 << 20;
    let rec = f.engine.create(s).expect("create");
    let traces = Traces::of(&f, &rec);
    // A command that goes over the grant, then lingers; frozen while it lingers.
    let mut cmd = ExecCommand::shell("head -c 2000000 /dev/zero > /root/blob; sleep 30");
    cmd.timeout = Duration::from_secs(3);
    let t0 = Instant::now();
    let result = std::thread::scope(|scope| {
        let running = scope.spawn(|| f.engine.exec(&id("midrun"), &cmd));
        wait_until("the blob to be written", || {
            fs::metadata(rec.dirs.upper.join("root/blob")).is_ok_and(|m| m.len() == 2_000_000)
        });
        let reports = f.engine.check_disk();
        assert!(reports[0].frozen, "{reports:?}");
        running.join().unwrap()
    });
    let took = t0.elapsed();
    eprintln!("a command frozen mid-run returned after {took:?}: {result:?}");
    assert!(
        matches!(
            result,
            Err(node::sliver::SliverError::Host { ref source, .. })
                if matches!(**source, node::sliver::HostError::Timeout(_))
        ),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    f.engine.destroy(&id("midrun"), false).expect("destroy");
    traces.assert_gone(&f);
}

#[test]
fn a_tmpfs_backed_sliver_cannot_write_past_its_grant() {
    let Some(f) = fixture(DiskBacking::Tmpfs) else {
        return;
    };
    let mut s = spec("capped");
    s.resources.disk_bytes = 4 << 20;
    let rec = f.engine.create(s).expect("create");
    assert_eq!(rec.disk_backing, DiskBacking::Tmpfs);
    let traces = Traces::of(&f, &rec);
    let t0 = Instant::now();
    let out = sh(
        &f,
        "capped",
        "head -c 8000000 /dev/zero > /root/blob; echo rc=$?; stat -c %s /root/blob; \
         echo ok > /etc/fits || echo full",
    );
    eprintln!("writing past a 4 MiB tmpfs grant took {:?}", t0.elapsed());
    let text = out.stdout_text();
    let stderr = out.stderr_text();
    assert!(text.starts_with("rc=1\n"), "{text} {stderr}");
    assert!(stderr.contains("No space left"), "{stderr}");
    let size: u64 = text.lines().nth(1).unwrap().parse().unwrap();
    assert!(size <= 4 << 20, "the file grew to {size}");
    assert!(size > 3 << 20, "the file stopped at {size}");
    // Measured through the sliver's root: the tmpfs, not the host's disk.
    let used = f.engine.disk_usage(&id("capped")).expect("disk usage");
    eprintln!("tmpfs-backed layer: {used} bytes used of {}", 4 << 20);
    assert!((3 << 20..=4 << 20).contains(&used), "{used}");
    // Nothing reached the host's disk, and nothing is mounted in the host's namespace.
    assert!(!rec.dirs.upper.join("root/blob").exists());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&rec.dirs.root.display().to_string()));
    // Freeing space makes room again; the kernel, not the watchdog, holds the limit.
    let out = sh(
        &f,
        "capped",
        "rm /root/blob && echo ok > /etc/fits && cat /etc/fits",
    );
    assert_eq!(out.stdout_text(), "ok\n", "{out:?}");
    let report = f.engine.check_disk();
    assert!(!report[0].over && !report[0].frozen, "{report:?}");
    f.engine.destroy(&id("capped"), false).expect("destroy");
    traces.assert_gone(&f);
}

/// What a sliver leaves on the host.
struct Traces {
    netns_inode: u64,
    veth: String,
    cgroups: Vec<std::path::PathBuf>,
    dir: std::path::PathBuf,
}

impl Traces {
    fn of(f: &Fixture, rec: &SliverRecord) -> Traces {
        Traces {
            netns_inode: fs::metadata(format!("/proc/{}/ns/net", rec.init_pid))
                .unwrap()
                .ino(),
            veth: rec.net.host_if.clone(),
            cgroups: f.cgroup_dirs(rec.spec.id.as_str()),
            dir: rec.dirs.root.clone(),
        }
    }

    fn assert_gone(&self, f: &Fixture) {
        let holders = fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                fs::metadata(e.path().join("ns/net"))
                    .map(|m| m.ino() == self.netns_inode)
                    .unwrap_or(false)
            })
            .count();
        assert_eq!(holders, 0, "processes remain in the sliver's netns");
        let mut nl = Netlink::open().unwrap();
        assert_eq!(nl.link_index(&self.veth).unwrap(), None);
        for dir in &self.cgroups {
            assert!(!dir.exists(), "cgroup {} remains", dir.display());
        }
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&self.dir.display().to_string()));
        assert!(!self.dir.exists(), "sliver dir remains");
        let ifb = nl
            .link_index(&f.engine.config().shaping.ifb)
            .unwrap()
            .unwrap();
        assert_eq!(
            nl.classes(ifb)
                .unwrap()
                .iter()
                .filter(|h| h.minor >= 0x10)
                .count(),
            0
        );
    }
}
