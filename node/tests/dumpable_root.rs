//! `nodemgr` clears its own dumpable flag the moment it starts, before any sliver exists (root;
//! skipped otherwise unless CI): run as an unprivileged user, a dumpable process's `/proc`
//! files belong to that user and anything of it may trace it; a non-dumpable one's belong
//! to root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use capability_schema::codec;
use capability_schema::identity::SecretKey;
use common::root_or_skip;
use federation::testing::TestFederation;

const NOBODY: u32 = 65534;

/// Ends the daemon this test started, by its pid, even when the test fails.
struct Started(std::process::Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chown_nobody(path: &std::path::Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

#[test]
fn a_fresh_nodemgr_is_not_dumpable() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut plc = TestFederation::new("plc", 100);
    let key = SecretKey::generate();
    key.save(&dir.path().join("node.key")).unwrap();
    std::fs::write(
        dir.path().join("membership.cbor"),
        codec::encode(&plc.node_with_key(key.clone(), "dump").cert),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        format!(
            "federation = \"plc\"\nisolation = \"memory\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n\
             http = \"off\"\ncapacity = \"cpu=1 cores,memory=1GiB,disk=1GiB,egress=10Mbit\"\n\
             [[trust]]\nname = \"plc\"\nauthority = \"{}\"\n",
            plc.authority.public()
        ),
    )
    .unwrap();
    // A copy of the program any user may run, wherever the build tree lives.
    let program = dir.path().join("nodemgr");
    std::fs::copy(env!("CARGO_BIN_EXE_nodemgr"), &program).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["", "node.key", "membership.cbor", "node.toml", "nodemgr"] {
        chown_nobody(&dir.path().join(name));
    }
    let child = Command::new(&program)
        .args(["run", "--config"])
        .arg(dir.path().join("node.toml"))
        .current_dir(dir.path())
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut started = Started(child);
    let pid = started.0.id();
    let environ = format!("/proc/{pid}/environ");
    // Well past the first instructions of its main, where it clears the flag.
    std::thread::sleep(Duration::from_secs(1));
    if let Some(status) = started.0.try_wait().unwrap() {
        let mut err = String::new();
        std::io::Read::read_to_string(started.0.stderr.as_mut().unwrap(), &mut err).ok();
        panic!("nodemgr ended ({status}): {err}");
    }
    let owner = std::fs::metadata(&environ).unwrap().uid();
    assert_eq!(
        owner, 0,
        "nodemgr's /proc files belong to uid {owner}: it is dumpable, so anything running as \
         its user could trace it"
    );
}
