//! A sliver's disk grant against the tricks that got past it (issue 13), run from inside real
//! slivers (root; skipped otherwise unless CI): a directory chain longer than `PATH_MAX`, a
//! deleted file kept open by a background process, 30,000 empty files, a write burst.
//!
//! Directory backing: the watchdog's next check must find the sliver over its grant (counting
//! at least what the trick put on the host's disk) and freeze it. Everything a test makes is
//! removed by the fixture's drop guard, even when it fails.

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
