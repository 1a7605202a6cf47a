//! A sliver's disk grant against the tricks that got past it (issue 13), run from inside real
//! slivers (root; skipped otherwise unless CI): a directory chain longer than `PATH_MAX`, a
//! deleted file kept open by a background process, 30,000 empty files, a write burst.
//!
//! Directory backing: the watchdog's next check must find the sliver over its grant (counting
//! at least what the trick put on the host's disk) and freeze it. Everything a test makes is
//! removed by the fixture's drop guard, even when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::{Fixture, id, spec};
use node::sliver::{DiskBacking, DiskReport, ExecCommand, SliverRecord};

const MIB: u64 = 1 << 20;

fn fixture(backing: DiskBacking) -> Option<Fixture> {
    Fixture::configured(|config| config.disk_backing = backing)
}

/// A sliver named `name` granted `disk` bytes.
fn sliver(f: &Fixture, name: &str, disk: u64) -> SliverRecord {
    let mut s = spec(name);
    s.resources.disk_bytes = disk;
    f.engine.create(s).expect("create")
}

/// Runs `script` with bash in the sliver (dash cannot `cd` past `PATH_MAX`).
fn sh(f: &Fixture, name: &str, script: &str) -> node::sliver::ExecOutput {
    let mut cmd = ExecCommand::new(["/bin/bash", "-c", script]);
    cmd.timeout = Duration::from_secs(120);
    f.engine.exec(&id(name), &cmd).expect("exec")
}

fn check(f: &Fixture, name: &str) -> DiskReport {
    f.engine
        .check_disk()
        .into_iter()
        .find(|r| r.id.as_str() == name)
        .expect("a report of the sliver")
}

/// The watchdog finds the sliver over its grant, counting at least `at_least` bytes, and
/// freezes it.
fn assert_caught(f: &Fixture, name: &str, at_least: u64) {
    let report = check(f, name);
    eprintln!("{name}: {report:?}");
    assert!(report.over && report.frozen, "{report:?}");
    let used = report.used.expect("measured");
    assert!(
        used >= at_least,
        "counted {used}, the trick holds {at_least}"
    );
    let condition = f.engine.condition(&id(name)).expect("a condition");
    assert!(condition.starts_with("over disk limit"), "{condition}");
}

/// Fresh, the sliver is within its grant.
fn assert_within(f: &Fixture, name: &str) {
    let report = check(f, name);
    assert!(!report.over && !report.frozen, "{report:?}");
}

#[test]
fn directory_a_chain_longer_than_path_max_is_measured_and_frozen() {
    let Some(f) = fixture(DiskBacking::Directory) else {
        return;
    };
    sliver(&f, "deep", 2 * MIB);
    assert_within(&f, "deep");
    // 2100 levels of `d/`: 4200 bytes of path below /root, past PATH_MAX (4096), then a
    // 3 MB file at the bottom (relative mkdir and chdir: shells cannot `cd` that deep fast).
    let out = sh(
        &f,
        "deep",
        "cd /root && python3 -c \"
import os
for _ in range(2100):
    os.mkdir('d'); os.chdir('d')
open('blob', 'wb').write(bytes(3000000))
print('done')\"",
    );
    assert_eq!(out.stdout_text(), "done\n", "{out:?}");
    assert_caught(&f, "deep", 3_000_000 + 2100 * 256);
}

#[test]
fn directory_a_deleted_file_held_open_is_counted_and_frozen() {
    let Some(f) = fixture(DiskBacking::Directory) else {
        return;
    };
    sliver(&f, "held", 2 * MIB);
    assert_within(&f, "held");
    let mut cmd = ExecCommand::shell(
        "exec 3>/root/held; head -c 3000000 /dev/zero >&3; rm /root/held; echo ready; \
         exec sleep 60",
    );
    cmd.timeout = Duration::from_secs(90);
    let mut child = f.engine.spawn(&id("held"), &cmd).expect("spawn").child;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line, "ready\n");
    let ls = sh(&f, "held", "ls /root");
    assert!(!ls.stdout_text().contains("held"), "{ls:?}");
    assert_caught(&f, "held", 3_000_000);
    // The process is this test's child: the sliver's pid namespace goes only once it is
    // reaped, and a frozen process dies only once thawed. Kill (pending), destroy (which
    // thaws) while reaping.
    let _ = child.kill();
    std::thread::scope(|s| {
        let destroy = s.spawn(|| f.engine.destroy(&id("held"), false));
        let _ = child.wait();
        destroy.join().unwrap().expect("destroy");
    });
}

#[test]
fn directory_thirty_thousand_empty_files_cost_their_inodes() {
    let Some(f) = fixture(DiskBacking::Directory) else {
        return;
    };
    sliver(&f, "many", 4 * MIB);
    assert_within(&f, "many");
    let out = sh(
        &f,
        "many",
        "mkdir /root/many && cd /root/many && seq 1 30000 | xargs touch && ls | wc -l",
    );
    assert_eq!(out.stdout_text().trim(), "30000", "{out:?}");
    // 30,000 inodes at 256 bytes (7.3 MiB) plus the directory's blocks.
    assert_caught(&f, "many", 30_000 * 256);
}

#[test]
fn directory_a_write_burst_is_frozen_at_the_next_check() {
    let Some(f) = fixture(DiskBacking::Directory) else {
        return;
    };
    let rec = sliver(&f, "burst", 4 * MIB);
    assert_within(&f, "burst");
    // The directory backing has no write-time cap: the burst lands, the next check freezes.
    let out = sh(
        &f,
        "burst",
        "head -c 64000000 /dev/zero > /root/burst; echo $?",
    );
    assert_eq!(out.stdout_text(), "0\n", "{out:?}");
    assert_caught(&f, "burst", 64_000_000);
    assert!(rec.dirs.upper.join("root/burst").exists());
}

// Quota backing: the kernel refuses writes past the grant with EDQUOT, whatever the layout.

/// A fixture whose slivers' dirs are capped by the kernel, on a 2 GiB image.
fn quota_fixture() -> Option<Fixture> {
    let f = Fixture::configured(|config| {
        config.disk_backing = DiskBacking::Quota;
        config.disk_capacity = Some(2 << 30);
    })?;
    assert_eq!(
        f.engine.config().disk_backing,
        DiskBacking::Quota,
        "this host can cap disk grants in the kernel (btrfs, loop devices, mkfs.btrfs): {}",
        node::sliver::quota::available().err().unwrap_or_default()
    );
    Some(f)
}

/// Bytes the host's disk holds for the node's image.
fn image_bytes(f: &Fixture) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let image = f.engine.config().state_dir.join(node::sliver::quota::IMAGE);
    std::fs::metadata(image).expect("image").blocks() * 512
}

/// What the kernel counts for the sliver, once pending writes are committed; must be within
/// the grant.
fn assert_held(f: &Fixture, rec: &SliverRecord) -> u64 {
    node::sliver::quota::sync(&rec.dirs.root).expect("sync");
    let used = f.engine.disk_usage(&rec.spec.id).expect("measured");
    let grant = rec.spec.resources.disk_bytes;
    eprintln!("{}: {used} bytes of {grant}", rec.spec.id);
    assert!(used <= grant, "{used} past the grant {grant}");
    let report = check(f, rec.spec.id.as_str());
    assert!(!report.over && !report.frozen, "{report:?}");
    used
}

fn edquot(out: &node::sliver::ExecOutput) -> bool {
    out.stderr_text().contains("Disk quota exceeded") || out.stdout_text().contains("122")
}

#[test]
fn quota_a_write_burst_fails_at_the_grant() {
    let Some(f) = quota_fixture() else {
        return;
    };
    let rec = sliver(&f, "qburst", 64 * MIB);
    assert_eq!(rec.disk_backing, DiskBacking::Quota);
    let before = image_bytes(&f);
    let t0 = std::time::Instant::now();
    let out = sh(
        &f,
        "qburst",
        "head -c 1000000000 /dev/zero > /root/burst; echo rc=$?; stat -c %s /root/burst",
    );
    eprintln!(
        "writing past a 64 MiB grant took {:?}: {out:?}",
        t0.elapsed()
    );
    assert!(out.stdout_text().starts_with("rc=1\n"), "{out:?}");
    assert!(edquot(&out), "{}", out.stderr_text());
    let size: u64 = out.stdout_text().lines().nth(1).unwrap().parse().unwrap();
    assert!((32 * MIB..=64 * MIB).contains(&size), "stopped at {size}");
    assert_held(&f, &rec);
    // The host's disk: what the sliver holds plus the filesystem's bookkeeping.
    let grown = image_bytes(&f).saturating_sub(before);
    eprintln!("the image grew by {grown} bytes");
    assert!(grown <= 64 * MIB + SLACK, "the host's disk grew by {grown}");
    // Freeing space makes room again.
    let out = sh(
        &f,
        "qburst",
        "rm /root/burst && head -c 1000000 /dev/zero > /root/small && echo ok",
    );
    assert_eq!(out.stdout_text(), "ok\n", "{out:?}");
}

/// What the host's disk may hold beyond a grant: the filesystem's bookkeeping of the
/// sliver's extents (at most 2.5 % of the grant) and blocks written since freed and not yet
/// discarded.
const SLACK: u64 = 16 * MIB;

#[test]
fn quota_a_deleted_file_held_open_still_counts() {
    let Some(f) = quota_fixture() else {
        return;
    };
    let rec = sliver(&f, "qheld", 16 * MIB);
    let mut cmd = ExecCommand::shell(
        "exec 3>/root/held; head -c 12000000 /dev/zero >&3; rm /root/held; echo ready; \
         exec sleep 60",
    );
    cmd.timeout = Duration::from_secs(90);
    let mut child = f.engine.spawn(&id("qheld"), &cmd).expect("spawn").child;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line, "ready\n");
    let out = sh(
        &f,
        "qheld",
        "head -c 8000000 /dev/zero > /root/more; echo rc=$?",
    );
    assert!(out.stdout_text().starts_with("rc=1"), "{out:?}");
    assert!(edquot(&out), "{}", out.stderr_text());
    assert!(assert_held(&f, &rec) >= 12_000_000);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn quota_thirty_thousand_empty_files_hit_the_grant() {
    let Some(f) = quota_fixture() else {
        return;
    };
    let rec = sliver(&f, "qmany", 4 * MIB);
    let out = sh(
        &f,
        "qmany",
        "mkdir /root/many && cd /root/many && seq 1 30000 | xargs touch 2>&1 | tail -1; ls | wc -l",
    );
    eprintln!("{out:?}");
    assert!(out.stdout_text().contains("Disk quota exceeded"), "{out:?}");
    let made: u64 = out
        .stdout_text()
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(made < 30_000, "{made} files under a 4 MiB grant");
    assert_held(&f, &rec);
}

#[test]
fn quota_a_chain_longer_than_path_max_hits_the_grant() {
    let Some(f) = quota_fixture() else {
        return;
    };
    let rec = sliver(&f, "qdeep", 2 * MIB);
    let out = sh(
        &f,
        "qdeep",
        "cd /root && python3 -c \"
import os
try:
    for _ in range(2100):
        os.mkdir('d'); os.chdir('d')
    open('blob', 'wb').write(bytes(3000000))
    print('done')
except OSError as e:
    print(e.errno)\"",
    );
    assert_eq!(out.stdout_text(), "122\n", "{out:?}");
    assert_held(&f, &rec);
}

#[test]
fn quota_filesystem_is_reused_at_restart_and_removed_by_destroy_all() {
    let Some(f) = quota_fixture() else {
        return;
    };
    let state = f.engine.config().state_dir.clone();
    let rec = sliver(&f, "qkeep", 8 * MIB);
    assert!(sh(&f, "qkeep", "echo kept > /root/file").success());
    // A second engine on the same state dir (a restarted node) adopts the mount.
    let host = node::sliver::linux::LinuxHost::detect().expect("host");
    let mut config = f.engine.config().clone();
    config.disk_backing = DiskBacking::Quota;
    assert!(node::sliver::quota::setup(&state, config.disk_capacity).is_ok());
    drop(host);
    assert_eq!(
        std::fs::read_to_string(rec.dirs.upper.join("root/file")).unwrap(),
        "kept\n"
    );
    f.engine.destroy_all().expect("destroy all");
    assert!(!state.join(node::sliver::quota::IMAGE).exists());
    assert!(!state.join(node::sliver::quota::MOUNT).exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&state.display().to_string()), "{mounts}");
}
