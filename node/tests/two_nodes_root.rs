//! Several nodes on one machine never touch each other's slivers (issue 13, part 5): each has
//! its own cgroup parent, uid range, link names and state, and removes only what it made, also
//! when it restarts. Root; skipped otherwise unless CI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use capability_schema::Resources;
use common::{HostNode, SharedHost, id};
use node::sliver::netlink::Netlink;
use node::sliver::{ExecCommand, Orphan, SliverError, SliverRecord, SliverSpec};

/// A regular sliver of slice `plc_web` with `memory_mib` of memory.
fn web(memory_mib: u64) -> SliverSpec {
    SliverSpec::regular(
        id("plc_web"),
        Resources {
            cpu_millis: 250,
            memory_bytes: memory_mib << 20,
            disk_bytes: 0,
            egress_kbps: 1000,
            ports: 0,
        },
    )
}

fn sh(node: &HostNode, script: &str) -> node::sliver::ExecOutput {
    node.engine()
        .exec(&id("plc_web"), &ExecCommand::shell(script))
        .expect("exec")
}

/// The memory limit the host applies to cgroup `rel` (v1 or v2).
fn memory_limit(node: &HostNode, rel: &str) -> u64 {
    node.engine()
        .host()
        .cgroups()
        .dirs(rel)
        .into_iter()
        .find_map(|dir| {
            ["memory.limit_in_bytes", "memory.max"]
                .iter()
                .find_map(|f| fs::read_to_string(dir.join(f)).ok())
        })
        .expect("a memory limit")
        .trim()
        .parse()
        .expect("a number")
}

/// Checks that `node`'s sliver `rec` is as it was made: its init runs, every cgroup dir and
/// its veth exist, its files are intact, and it still answers.
fn assert_untouched(node: &HostNode, rec: &SliverRecord, mark: &str) {
    let engine = node.engine();
    assert!(
        node::sliver::Host::init_alive(engine.host(), rec.init_pid, rec.init_start_time),
        "the init of node {}'s sliver died",
        node.id
    );
    assert_eq!(engine.get(&rec.spec.id).as_ref(), Some(rec));
    for dir in engine.host().cgroups().dirs(&rec.cgroup) {
        assert!(dir.is_dir(), "cgroup {} is gone", dir.display());
    }
    let mut nl = Netlink::open().unwrap();
    assert!(
        nl.link_index(&rec.net.host_if).unwrap().is_some(),
        "veth {} is gone",
        rec.net.host_if
    );
    assert_eq!(
        sh(node, "cat /root/mark").stdout_text(),
        format!("{mark}\n")
    );
}

/// The host uid map of a process.
fn uid_map(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/uid_map"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn two_nodes_on_one_machine_restarting_never_touch_each_others_slivers() {
    let Some(host) = SharedHost::new() else {
        return;
    };
    let mut a = host.node();
    let mut b = host.node();
    eprintln!(
        "nodes {} ({}, {:?}) and {} ({}, {:?})",
        a.id,
        a.engine().config().cgroup_parent,
        a.engine().config().slots.uid_span(),
        b.id,
        b.engine().config().cgroup_parent,
        b.engine().config().slots.uid_span(),
    );

    // One slice, a sliver on each node, with limits of its own.
    let ra = a.engine().create(web(128)).expect("create on a");
    let rb = b.engine().create(web(192)).expect("create on b");
    assert!(sh(&a, "echo a > /root/mark").success());
    assert!(sh(&b, "echo b > /root/mark").success());

    // Two cgroups, each under its node's own parent, each with its own limit.
    assert_eq!(
        ra.cgroup,
        format!("{}/plc_web", a.engine().config().cgroup_parent)
    );
    assert_eq!(
        rb.cgroup,
        format!("{}/plc_web", b.engine().config().cgroup_parent)
    );
    assert_ne!(ra.cgroup, rb.cgroup);
    assert_eq!(memory_limit(&a, &ra.cgroup), 128 << 20);
    assert_eq!(memory_limit(&b, &rb.cgroup), 192 << 20);
    // Two disjoint uid ranges (each node's whole span, and each sliver's root on the host).
    let (sa, sb) = (
        a.engine().config().slots.uid_span(),
        b.engine().config().slots.uid_span(),
    );
    assert!(
        sa.1 <= u64::from(sb.0) || sb.1 <= u64::from(sa.0),
        "uid ranges overlap: {sa:?} {sb:?}"
    );
    for (rec, span) in [(&ra, sa), (&rb, sb)] {
        let (first, end) = (
            u64::from(rec.slot.uids.host_base),
            u64::from(rec.slot.uids.host_base) + u64::from(rec.slot.uids.count),
        );
        assert!(
            u64::from(span.0) <= first && end <= span.1,
            "{first}..{end} is not within the node's {span:?}"
        );
    }
    assert_eq!(
        uid_map(ra.init_pid),
        format!("0 {} {}", ra.slot.uids.host_base, ra.slot.uids.count)
    );
    assert_eq!(
        uid_map(rb.init_pid),
        format!("0 {} {}", rb.slot.uids.host_base, rb.slot.uids.count)
    );
    assert_ne!(
        fs::metadata(format!("/proc/{}", ra.init_pid))
            .unwrap()
            .uid(),
        fs::metadata(format!("/proc/{}", rb.init_pid))
            .unwrap()
            .uid()
    );
    // Two link names and shaping devices.
    assert_ne!(ra.net.host_if, rb.net.host_if);
    assert_ne!(
        a.engine().config().shaping.ifb,
        b.engine().config().shaping.ifb
    );

    // While b runs, nothing can open a second engine on its share.
    match node::sliver::Slivers::open(
        node::sliver::linux::LinuxHost::detect().unwrap(),
        b.config.clone(),
    ) {
        Err(SliverError::Claim(e)) => assert!(e.to_string().contains(b.id.as_str()), "{e}"),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a second engine of node {} opened", b.id),
    }

    // a restarts: it re-adopts its sliver and sweeps nothing; b's is untouched.
    let report = a.restart();
    assert_eq!(report.adopted, vec![ra.spec.id.clone()]);
    assert!(report.orphans.is_empty(), "{:?}", report.orphans);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(a.engine().config().slots.uid_base, sa.0, "a kept its range");
    assert_untouched(&a, &ra, "a");
    assert_untouched(&b, &rb, "b");

    // a restarts having lost its record of plc_web (a crash before saving it): its sweep
    // removes its own plc_web, and b's plc_web, of the same slice, lives on.
    a.stop();
    fs::remove_file(a.state.path().join("records/plc_web.json")).unwrap();
    let report = a.start();
    assert!(report.adopted.is_empty(), "{:?}", report.adopted);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        report.orphans.contains(&Orphan::Cgroup("plc_web".into()))
            && report
                .orphans
                .contains(&Orphan::Link(ra.net.host_if.clone())),
        "{:?}",
        report.orphans
    );
    for dir in a.engine().host().cgroups().dirs(&ra.cgroup) {
        assert!(!dir.exists(), "a's orphan cgroup {} remains", dir.display());
    }
    assert_untouched(&b, &rb, "b");

    // b restarts too: a's new sliver of the slice and b's live on.
    let ra = a.engine().create(web(128)).expect("create on a again");
    assert!(sh(&a, "echo a2 > /root/mark").success());
    let report = b.restart();
    assert_eq!(report.adopted, vec![rb.spec.id.clone()]);
    assert!(report.orphans.is_empty(), "{:?}", report.orphans);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_untouched(&a, &ra, "a2");
    assert_untouched(&b, &rb, "b");

    // Decommissioned, a removes its own parent and claims, and nothing of b's.
    a.engine().destroy_all().expect("wipe a");
    for dir in a
        .engine()
        .host()
        .cgroups()
        .dirs(&a.engine().config().cgroup_parent)
    {
        assert!(!dir.exists(), "a's cgroup parent {} remains", dir.display());
    }
    assert_untouched(&b, &rb, "b");
    let claims: Vec<String> = fs::read_dir(host.claims.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(claims.len(), 6, "only b's claims are left: {claims:?}");
    assert!(
        claims.iter().all(|n| !n.contains(a.id.as_str())),
        "{claims:?}"
    );
}
