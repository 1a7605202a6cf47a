//! Acceptance tests of sliver isolation on the real host (root; skipped otherwise unless CI).

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::{Fixture, id, spec};
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
    let out = sh(&f, "fs", "echo y > /usr/bin/sliver-was-here");
    assert!(!out.success(), "the host system dirs are read-only");
    assert!(f.engine.disk_usage(&id("fs")).unwrap() > 0);
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
