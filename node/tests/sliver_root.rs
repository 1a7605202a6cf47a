//! Acceptance tests of sliver isolation on the real host (root; skipped otherwise unless CI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::{Buckets, Fixture, id, spec};
use node::sliver::ExecCommand;
use node::sliver::netlink::Netlink;

fn sh(f: &Fixture, sliver: &str, script: &str) -> node::sliver::ExecOutput {
    f.engine
        .exec(&id(sliver), &ExecCommand::shell(script))
        .expect("exec")
}

#[test]
fn pid_view_and_hostname_are_the_slivers_own() {
    let Some(f) = Fixture::new() else { return };
    f.engine.create(spec("pidview")).expect("create");
    let out = sh(
        &f,
        "pidview",
        "hostname; cat /proc/1/comm; ls /proc | grep -c '^[0-9]'",
    );
    assert!(out.success(), "{out:?}");
    let text = out.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "pidview");
    assert_eq!(lines[1], "sliver-init");
    let pids: usize = lines[2].trim().parse().unwrap();
    assert!(pids <= 5, "the sliver sees {pids} processes");
    let host_pids = fs::read_dir("/proc").unwrap().filter(|e| {
        e.as_ref()
            .map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .unwrap_or(false)
    });
    assert!(host_pids.count() > pids);
}

#[test]
fn root_in_the_sliver_is_a_mapped_uid_on_the_host() {
    let Some(f) = Fixture::new() else { return };
    let rec = f.engine.create(spec("uidmap")).expect("create");
    let out = sh(
        &f,
        "uidmap",
        "id -u; touch /made-by-root && stat -c %u /made-by-root",
    );
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout_text(), "0\n0\n");
    let meta = fs::metadata(rec.dirs.upper.join("made-by-root")).unwrap();
    assert_eq!(meta.uid(), rec.slot.uids.host_base);
    assert_ne!(meta.uid(), 0);
}

#[test]
fn writes_land_in_the_upper_dir_and_the_image_is_unchanged() {
    let Some(f) = Fixture::new() else { return };
    let rec = f.engine.create(spec("fs")).expect("create");
    let out = sh(
        &f,
        "fs",
        "echo hi > /etc/motd-sliver && echo x > /root/note && rm -f /etc/hosts && ls /usr/bin/env",
    );
    assert!(out.success(), "{out:?}");
    assert_eq!(
        fs::read_to_string(rec.dirs.upper.join("etc/motd-sliver")).unwrap(),
        "hi\n"
    );
    assert!(rec.dirs.upper.join("root/note").exists());
    let skeleton = f.state.path().join("images/host");
    assert!(!skeleton.join("etc/motd-sliver").exists());
    assert!(
        skeleton.join("etc/hosts").exists(),
        "deleting in the sliver must not touch the image"
    );
    // The image's files belong to the sliver's root (the image is id-mapped), so it may edit
    // them in place; the change lands in the upper dir only.
    let out = sh(
        &f,
        "fs",
        "stat -c %u /etc/passwd && echo 'sliver:x:1000:1000::/home:/bin/sh' >> /etc/passwd",
    );
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout_text(), "0\n");
    assert!(
        fs::read_to_string(rec.dirs.upper.join("etc/passwd"))
            .unwrap()
            .contains("sliver:x:1000")
    );
    assert!(
        !fs::read_to_string(skeleton.join("etc/passwd"))
            .unwrap()
            .contains("sliver:x:1000")
    );
    let out = sh(&f, "fs", "echo y > /usr/bin/sliver-was-here");
    assert!(!out.success(), "the host system dirs are read-only");
    assert!(f.engine.disk_usage(&id("fs")).unwrap() > 0);
    let mut small = spec("small");
    small.resources.disk_bytes = 1 << 20;
    f.engine.create(small).expect("create");
    assert!(sh(&f, "small", "head -c 2000000 /dev/zero > /root/blob").success());
    let report = f.engine.disk_report();
    let small = report.iter().find(|r| r.id.as_str() == "small").unwrap();
    assert!(small.over && small.used.unwrap() > 2_000_000, "{small:?}");
    assert!(!report.iter().find(|r| r.id.as_str() == "fs").unwrap().over);
}

/// Everything a sliver leaves on the host, as names to look for.
struct Traces {
    netns_inode: u64,
    veth: String,
    cgroups: Vec<std::path::PathBuf>,
    dir: std::path::PathBuf,
    class_minor: u16,
}

fn traces(f: &Fixture, rec: &node::sliver::SliverRecord) -> Traces {
    let netns_inode = fs::metadata(format!("/proc/{}/ns/net", rec.init_pid))
        .unwrap()
        .ino();
    Traces {
        netns_inode,
        veth: rec.net.host_if.clone(),
        cgroups: f.cgroup_dirs(rec.spec.id.as_str()),
        dir: rec.dirs.root.clone(),
        class_minor: rec.shape.class_minor,
    }
}

fn assert_gone(f: &Fixture, t: &Traces) {
    let holders: Vec<String> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            fs::metadata(e.path().join("ns/net"))
                .map(|m| m.ino() == t.netns_inode)
                .unwrap_or(false)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        holders.is_empty(),
        "processes still in the sliver netns: {holders:?}"
    );
    let mut nl = Netlink::open().unwrap();
    assert_eq!(
        nl.link_index(&t.veth).unwrap(),
        None,
        "veth {} remains",
        t.veth
    );
    let ifb = nl
        .link_index(&f.engine.config().shaping.ifb)
        .unwrap()
        .unwrap();
    let classes = nl.classes(ifb).unwrap();
    assert!(
        !classes
            .iter()
            .any(|h| h.minor == t.class_minor && h.major == 1),
        "class remains: {classes:?}"
    );
    for dir in &t.cgroups {
        assert!(!dir.exists(), "cgroup {} remains", dir.display());
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&t.dir.display().to_string()),
        "a mount of the sliver remains"
    );
    assert!(!t.dir.exists(), "sliver dir remains");
}

#[test]
fn destroy_and_failed_create_leave_nothing_behind() {
    let Some(f) = Fixture::new() else { return };
    let rec = f.engine.create(spec("teardown")).expect("create");
    let t = traces(&f, &rec);
    assert!(t.cgroups.iter().all(|d| d.exists()));
    let mut nl = Netlink::open().unwrap();
    assert!(nl.link_index(&t.veth).unwrap().is_some());
    f.engine.destroy(&rec.spec.id, false).expect("destroy");
    assert_gone(&f, &t);

    // A create that fails late (the image does not exist) rolls everything back.
    let mut bad = spec("badimage");
    bad.image = Some(f.state.path().join("no-such-image"));
    let err = f.engine.create(bad).expect_err("must fail");
    assert!(err.to_string().contains("start init"), "{err}");
    assert!(f.engine.list().is_empty());
    let dir = f.state.path().join("slivers/badimage");
    assert!(!dir.exists());
    for d in f.cgroup_dirs("badimage") {
        assert!(!d.exists(), "{}", d.display());
    }
    let links = nl
        .links_with_prefix(&f.engine.config().slots.ifname_prefix)
        .unwrap();
    assert!(links.is_empty(), "{links:?}");
}

const RAW_SOCKET: &str = "/usr/bin/python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP); print(\"raw-ok\")'";

#[test]
fn a_regular_sliver_cannot_mount_load_modules_or_open_raw_sockets() {
    let Some(f) = Fixture::new() else { return };
    f.engine.create(spec("caps")).expect("create");
    let out = sh(&f, "caps", "mkdir -p /mnt/x && mount -t tmpfs none /mnt/x");
    assert!(!out.success(), "mount must fail: {out:?}");
    let out = sh(&f, "caps", "mount --bind /tmp /mnt/x");
    assert!(!out.success(), "bind mount must fail: {out:?}");
    // init_module(NULL, 0, "") and finit_module(-1, "", 0): EPERM before any argument check.
    let out = sh(
        &f,
        "caps",
        "/usr/bin/python3 -c 'import ctypes,os; l=ctypes.CDLL(None,use_errno=True); \
         r1=l.syscall(175,0,0,b\"\"); e1=ctypes.get_errno(); r2=l.syscall(313,-1,b\"\",0); e2=ctypes.get_errno(); \
         print(r1,os.strerror(e1),r2,os.strerror(e2))'",
    );
    assert!(out.success(), "{out:?}");
    // EPERM, or ENOSYS on a kernel built without modules; either way it fails, and the
    // capability is not in the bounding set (checked below).
    let text = out.stdout_text();
    assert!(text.starts_with("-1 ") && text.contains(" -1 "), "{text}");
    let out = sh(&f, "caps", RAW_SOCKET);
    assert!(
        !out.success() && out.stderr_text().contains("PermissionError"),
        "{out:?}"
    );
    let out = sh(
        &f,
        "caps",
        "grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status",
    );
    let status = out.stdout_text();
    assert!(status.contains("NoNewPrivs:\t1"), "{out:?}");
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:\t"))
        .unwrap();
    let bnd = u64::from_str_radix(bnd.trim(), 16).unwrap();
    // CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_ADMIN, CAP_SYS_BOOT, CAP_SYS_TIME, CAP_NET_RAW.
    for cap in [16, 17, 21, 22, 25, 13] {
        assert_eq!(
            bnd & (1 << cap),
            0,
            "capability {cap} in the bounding set {bnd:x}"
        );
    }
}

#[test]
fn an_admin_sliver_granted_net_raw_can_open_raw_sockets() {
    let Some(f) = Fixture::new() else { return };
    let mut s = spec("admin");
    s.kind = node::sliver::SliverKind::Admin;
    s.capabilities = vec!["CAP_NET_RAW".into()];
    f.engine.create(s).expect("create");
    let out = sh(&f, "admin", RAW_SOCKET);
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout_text().trim(), "raw-ok");
    // Still no mounting.
    assert!(!sh(&f, "admin", "mount -t tmpfs none /mnt").success());
}

#[test]
fn an_admin_sliver_may_see_the_host_processes() {
    let Some(f) = Fixture::new() else { return };
    let mut s = spec("hostview");
    s.kind = node::sliver::SliverKind::Admin;
    s.host_pid_view = true;
    f.engine.create(s).expect("create");
    let me = std::process::id();
    let out = sh(&f, "hostview", &format!("test -d /proc/{me} && echo seen"));
    assert_eq!(out.stdout_text().trim(), "seen", "{out:?}");
}

#[test]
fn memory_past_the_limit_is_killed_and_nobody_else_is_hurt() {
    let Some(f) = Fixture::new() else { return };
    let mut a = spec("hog");
    a.resources.memory_bytes = 48 << 20;
    f.engine.create(a).expect("create");
    f.engine.create(spec("bystander")).expect("create");
    let out = sh(
        &f,
        "hog",
        "/usr/bin/python3 -c 'a = bytearray(200 * 1024 * 1024); print(len(a))'",
    );
    assert!(!out.success(), "{out:?}");
    assert!(
        out.code == Some(137) || out.signal == Some(9),
        "killed by the OOM killer: {out:?}"
    );
    let rec = f.engine.get(&id("hog")).unwrap();
    use node::sliver::Host;
    assert!(
        f.engine
            .host()
            .init_alive(rec.init_pid, rec.init_start_time),
        "the hog's init survives"
    );
    assert!(sh(&f, "hog", "echo alive").success());
    let out = sh(
        &f,
        "bystander",
        "/usr/bin/python3 -c 'a = bytearray(64 * 1024 * 1024); print(len(a))'",
    );
    assert!(out.success(), "{out:?}");
}

#[test]
fn a_busy_loop_under_a_quarter_core_quota_uses_a_quarter_core() {
    let Some(f) = Fixture::new() else { return };
    let mut s = spec("cpu");
    s.resources.cpu_millis = 250;
    let rec = f.engine.create(s).expect("create");
    let mut cmd = ExecCommand::new(["/bin/sh", "-c", "while :; do :; done"]);
    cmd.timeout = std::time::Duration::from_secs(30);
    let mut busy = f.engine.spawn(&id("cpu"), &cmd).expect("spawn").child;
    let cg = f.engine.host().cgroups();
    // What is tested is the quota (the cap), not the weight: on a host busy with other work a
    // sliver's weight may get it less than its quota, so give it the largest weight here.
    for dir in cg.dirs(&rec.cgroup) {
        let shares = dir.join("cpu.shares");
        if shares.exists() {
            fs::write(&shares, "262144").unwrap();
        }
        let weight = dir.join("cpu.weight");
        if weight.exists() {
            fs::write(&weight, "10000").unwrap();
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    let u0 = cg.cpu_usage_ns(&rec.cgroup).unwrap().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let u1 = cg.cpu_usage_ns(&rec.cgroup).unwrap().unwrap();
    let share = (u1 - u0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
    let _ = busy.kill();
    let _ = busy.wait();
    assert!((20.0..=30.0).contains(&share), "used {share:.1}% of a core");
}

/// Bytes received on one connection over time.
type Samples = std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, u64)>>>;

/// Listens on `addr` (a host-side veth address) and records what one connection delivers.
fn listen(addr: std::net::Ipv4Addr) -> (u16, Samples, std::thread::JoinHandle<()>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind((addr, 0)).expect("bind");
    // A large receive window (inherited by the accepted socket), so that a reader starved of
    // CPU on a busy host does not throttle the sender: the shaper alone must set the rate.
    nix::sys::socket::setsockopt(
        &listener,
        nix::sys::socket::sockopt::RcvBufForce,
        &(8 << 20),
    )
    .expect("SO_RCVBUFFORCE");
    let port = listener.local_addr().unwrap().port();
    let samples: Samples = Default::default();
    let s = samples.clone();
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
            s.lock().unwrap().push((std::time::Instant::now(), total));
        }
    });
    (port, samples, handle)
}

fn send_cmd(to: std::net::Ipv4Addr, port: u16, bytes: u64) -> ExecCommand {
    let mut cmd = ExecCommand::new([
        "/bin/bash".to_string(),
        "-c".to_string(),
        format!("head -c {bytes} /dev/zero > /dev/tcp/{to}/{port}"),
    ]);
    cmd.timeout = std::time::Duration::from_secs(20);
    cmd
}

#[test]
fn egress_runs_at_the_slivers_cap() {
    let Some(f) = Fixture::new() else { return };
    let mut s = spec("egress");
    s.resources.egress_kbps = 8_000;
    s.egress_ceil_kbps = Some(8_000);
    let rec = f.engine.create(s).expect("create");
    let (port, samples, listener) = listen(rec.net.host_addr);
    let mut child = f
        .engine
        .spawn(&id("egress"), &send_cmd(rec.net.host_addr, port, 3_000_000))
        .expect("spawn")
        .child;
    // The rate its bucket lets through, in the middle of the transfer.
    let mut buckets = Buckets::of(&f);
    let mut sent = || buckets.sent(&[rec.shape.class_minor])[0];
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (t0, c0) = (std::time::Instant::now(), sent());
    std::thread::sleep(std::time::Duration::from_millis(2000));
    let (t1, c1) = (std::time::Instant::now(), sent());
    let mbit = (c1 - c0) as f64 * 8.0 / (t1 - t0).as_secs_f64() / 1e6;
    assert!(child.wait().unwrap().success());
    listener.join().unwrap();
    let delivered = samples.lock().unwrap().last().map(|(_, b)| *b);
    eprintln!("egress at an 8 Mbit/s cap: {mbit:.2} Mbit/s");
    assert_eq!(delivered, Some(3_000_000), "the whole transfer arrives");
    assert!(
        (6.8..=9.2).contains(&mbit),
        "8 Mbit/s cap, measured {mbit:.2} Mbit/s"
    );
}

#[test]
fn two_busy_slivers_share_a_saturated_node_bucket_equally() {
    // Node cap 16 Mbit/s; each sliver guaranteed 2 Mbit/s and may borrow up to the cap.
    let Some(f) = Fixture::with_node_cap(16_000) else {
        return;
    };
    let mut recs = Vec::new();
    for name in ["fair-a", "fair-b"] {
        let mut s = spec(name);
        s.resources.egress_kbps = 2_000;
        recs.push(f.engine.create(s).expect("create"));
    }
    let mut runs = Vec::new();
    for rec in &recs {
        let (port, samples, listener) = listen(rec.net.host_addr);
        let child = f
            .engine
            .spawn(&rec.spec.id, &send_cmd(rec.net.host_addr, port, 4_000_000))
            .expect("spawn")
            .child;
        runs.push((samples, listener, child));
    }
    // Measured at the shaper: what each sliver's bucket let through between two moments
    // (the readers' timing on a busy host does not blur it).
    let mut buckets = Buckets::of(&f);
    let minors: Vec<u16> = recs.iter().map(|r| r.shape.class_minor).collect();
    let mut counters = || buckets.sent(&minors);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (t0, c0) = (std::time::Instant::now(), counters());
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (t1, c1) = (std::time::Instant::now(), counters());
    let secs = (t1 - t0).as_secs_f64();
    let rates: Vec<f64> = c0
        .iter()
        .zip(&c1)
        .map(|(a, b)| (b - a) as f64 * 8.0 / secs / 1e6)
        .collect();
    for (_samples, listener, mut child) in runs {
        let _ = child.wait();
        listener.join().unwrap();
    }
    eprintln!("two slivers under a 16 Mbit/s node bucket: {rates:.2?} Mbit/s");
    // Each gets half of what the node bucket delivers (TCP payload is ~95% of the wire rate
    // HTB counts), and together they fill it.
    let total: f64 = rates.iter().sum();
    assert!(
        (13.6..=18.4).contains(&total),
        "the node bucket is saturated: {rates:?}"
    );
    for r in &rates {
        assert!(
            (r - total / 2.0).abs() <= 0.15 * total / 2.0,
            "each should get half: {rates:?}"
        );
    }
}

#[test]
fn a_forged_source_address_does_not_leave_the_sliver() {
    let Some(f) = Fixture::new() else { return };
    let mut s = spec("spoofer");
    s.capabilities = vec!["CAP_NET_RAW".into()];
    let rec = f.engine.create(s).expect("create");
    let other = f.engine.create(spec("victim")).expect("create");
    let sock = std::net::UdpSocket::bind((rec.net.host_addr, 0)).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(700)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    let send = |src: std::net::Ipv4Addr, tag: &str| {
        let script = format!(
            "/usr/bin/python3 -c 'import socket,struct\n\
             p=b\"{tag}\"\n\
             u=struct.pack(\"!HHHH\",40000,{port},8+len(p),0)+p\n\
             h=struct.pack(\"!BBHHHBBH4s4s\",0x45,0,20+len(u),1,0,64,17,0,socket.inet_aton(\"{src}\"),socket.inet_aton(\"{dst}\"))\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_RAW)\n\
             s.sendto(h+u,(\"{dst}\",0))'",
            dst = rec.net.host_addr
        );
        let out = sh(&f, "spoofer", &script);
        assert!(out.success(), "{out:?}");
    };
    let mut received = Vec::new();
    let drain = |received: &mut Vec<String>| {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            received.push(format!(
                "{} from {}",
                String::from_utf8_lossy(&buf[..n]),
                from.ip()
            ));
        }
    };
    // Forged: another sliver's address, and an address that is nobody's on this node.
    send(other.net.sliver_addr, "forged-neighbour");
    send(std::net::Ipv4Addr::new(192, 0, 2, 1), "forged-foreign");
    // Control: the sliver's own address, through the same raw socket path.
    send(rec.net.sliver_addr, "genuine");
    drain(&mut received);
    assert_eq!(
        received,
        vec![format!("genuine from {}", rec.net.sliver_addr)]
    );
    // IPv6 from the sliver is dropped on the host side.
    let v6 = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", rec.net.host_if);
    if std::path::Path::new(&v6).exists() {
        assert_eq!(fs::read_to_string(&v6).unwrap().trim(), "1");
    }
    // Control: without the host's reverse-path filter the forged packet would come out, so the
    // test does see spoofing when it happens.
    let rp = format!("/proc/sys/net/ipv4/conf/{}/rp_filter", rec.net.host_if);
    fs::write(&rp, "0").unwrap();
    send(std::net::Ipv4Addr::new(192, 0, 2, 1), "forged-foreign");
    let mut leaked = Vec::new();
    drain(&mut leaked);
    fs::write(&rp, "1").unwrap();
    assert_eq!(leaked, vec!["forged-foreign from 192.0.2.1".to_string()]);
}

#[test]
fn a_restarted_node_readopts_live_slivers_and_clears_dead_ones() {
    use node::sliver::linux::LinuxHost;
    use node::sliver::{Host, Slivers};
    let Some(f) = Fixture::new() else { return };
    let survivor = f.engine.create(spec("survivor")).expect("create");
    let casualty = f.engine.create(spec("casualty")).expect("create");
    assert!(sh(&f, "survivor", "echo kept > /root/state").success());
    let t = traces(&f, &casualty);
    // The casualty's init dies while the node manager is away.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(casualty.init_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while f
        .engine
        .host()
        .init_alive(casualty.init_pid, casualty.init_start_time)
    {
        assert!(std::time::Instant::now() < deadline, "init did not die");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // A new engine over the same state, as after a restart.
    let host = LinuxHost::detect().unwrap();
    let (again, report) = Slivers::open(host, f.engine.config().clone()).expect("reopen");
    assert_eq!(report.adopted, vec![survivor.spec.id.clone()]);
    assert_eq!(report.reaped, vec![casualty.spec.id.clone()]);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(again.get(&survivor.spec.id).as_ref(), Some(&survivor));
    let out = again
        .exec(&survivor.spec.id, &ExecCommand::shell("cat /root/state"))
        .unwrap();
    assert_eq!(out.stdout_text(), "kept\n");
    assert_gone(&f, &t);
    again
        .destroy(&survivor.spec.id, false)
        .expect("destroy by the new engine");
    assert!(!survivor.dirs.root.exists());
}

#[test]
fn ssh_keys_reach_the_sliver_read_only() {
    let Some(f) = Fixture::new() else { return };
    f.engine.create(spec("keys")).expect("create");
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGt5 alice@lab";
    f.engine.add_key(&id("keys"), key).unwrap();
    let out = sh(&f, "keys", "cat /root/.ssh/authorized_keys");
    assert_eq!(out.stdout_text(), format!("{key}\n"));
    assert!(!sh(&f, "keys", "echo evil >> /root/.ssh/authorized_keys").success());
    assert!(f.engine.remove_key(&id("keys"), key).unwrap());
    assert_eq!(
        sh(&f, "keys", "cat /root/.ssh/authorized_keys").stdout_text(),
        ""
    );
}

#[test]
fn exec_bounds_output_switches_users_feeds_stdin_and_times_out() {
    let Some(f) = Fixture::new() else { return };
    f.engine.create(spec("exec")).expect("create");
    let mut cmd = ExecCommand::shell("head -c 100000 /dev/zero; echo done >&2");
    cmd.output_limit = 1000;
    let out = f.engine.exec(&id("exec"), &cmd).unwrap();
    assert_eq!(
        (out.stdout.len(), out.truncated, out.stderr_text().as_str()),
        (1000, true, "done\n")
    );
    let mut cmd = ExecCommand::shell("id -u; id -g; cat");
    cmd.uid = 1000;
    cmd.gid = 1000;
    cmd.stdin = b"hello".to_vec();
    let out = f.engine.exec(&id("exec"), &cmd).unwrap();
    assert_eq!(out.stdout_text(), "1000\n1000\nhello");
    let mut cmd = ExecCommand::shell("sleep 10");
    cmd.timeout = std::time::Duration::from_millis(300);
    let t = std::time::Instant::now();
    assert!(f.engine.exec(&id("exec"), &cmd).is_err());
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    let out = f
        .engine
        .exec(&id("exec"), &ExecCommand::shell("exit 3"))
        .unwrap();
    assert_eq!(out.code, Some(3));
}

#[test]
fn traces_without_a_record_are_removed_when_the_node_starts() {
    use node::sliver::linux::LinuxHost;
    use node::sliver::{Orphan, Slivers};
    let Some(f) = Fixture::new() else { return };
    let lost = f.engine.create(spec("lost")).expect("create");
    let t = traces(&f, &lost);
    // As if the node crashed before saving the record.
    fs::remove_file(f.state.path().join("records/lost.json")).unwrap();
    let (_again, report) =
        Slivers::open(LinuxHost::detect().unwrap(), f.engine.config().clone()).expect("reopen");
    assert!(report.adopted.is_empty());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        report.orphans.contains(&Orphan::Cgroup("lost".into())),
        "{:?}",
        report.orphans
    );
    assert!(
        report
            .orphans
            .contains(&Orphan::Link(lost.net.host_if.clone()))
    );
    assert!(
        report
            .orphans
            .contains(&Orphan::Class(lost.shape.class_minor))
    );
    assert_gone(&f, &t);
}

#[test]
fn a_kept_upper_dir_comes_back_with_the_next_sliver_of_that_id() {
    use node::sliver::linux::LinuxHost;
    use node::sliver::{Orphan, Slivers};
    let Some(f) = Fixture::new() else { return };
    f.engine.create(spec("first")).expect("create");
    let old = f.engine.create(spec("keeper")).expect("create");
    assert!(
        sh(
            &f,
            "keeper",
            "echo mine > /root/mine && chown 1000:1000 /root/mine"
        )
        .success()
    );
    f.engine
        .destroy(&id("keeper"), true)
        .expect("destroy keeping the upper dir");
    assert!(old.dirs.upper.join("root/mine").exists());
    // A restarted node does not take the kept dir for an orphan.
    let (_again, report) =
        Slivers::open(LinuxHost::detect().unwrap(), f.engine.config().clone()).expect("reopen");
    assert!(
        !report.orphans.contains(&Orphan::Dir(old.dirs.root.clone())),
        "{:?}",
        report.orphans
    );
    f.engine.destroy(&id("first"), false).expect("destroy");
    // The new sliver gets another slot, hence another uid range: the kept files follow it.
    let new = f.engine.create(spec("keeper")).expect("create again");
    assert_ne!(new.slot.uids.host_base, old.slot.uids.host_base);
    let out = sh(&f, "keeper", "cat /root/mine; stat -c '%u %g' /root/mine");
    assert_eq!(out.stdout_text(), "mine\n1000 1000\n", "{out:?}");
    let meta = fs::metadata(new.dirs.upper.join("root/mine")).unwrap();
    assert_eq!(meta.uid(), new.slot.uids.host_base + 1000);
}
