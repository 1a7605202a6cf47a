//! Sequencing of sliver creation, rollback, destroy and re-adoption, on the recording host.

use capability_schema::Resources;

use super::host::{Call, RecordingHost};
use super::*;

fn config(dir: &std::path::Path) -> NodeConfig {
    NodeConfig::new(dir, "/nonexistent/sliver-init")
}

fn spec(id: &str) -> SliverSpec {
    SliverSpec::regular(
        SliverId::new(id).unwrap(),
        Resources {
            cpu_millis: 250,
            memory_bytes: 64 << 20,
            disk_bytes: 1 << 30,
            egress_kbps: 8_000,
            ports: 0,
        },
    )
}

fn engine(dir: &std::path::Path) -> Slivers<RecordingHost> {
    Slivers::open(RecordingHost::new(), config(dir)).unwrap().0
}

/// The steps of a create, in order (the hard CPU quota is set once the sliver is ready).
const CREATE: [&str; 7] = [
    "prepare_dirs",
    "cgroup_create",
    "spawn_init",
    "net_attach",
    "shape_add",
    "start_init",
    "cgroup_cpu_quota",
];

#[test]
fn create_runs_every_step_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    assert_eq!(e.host().call_names(), ["prepare_image", "shaping_setup"]);
    e.host().clear_calls();
    let rec = e.create(spec("alpha")).unwrap();
    assert_eq!(e.host().call_names(), CREATE);
    let calls = e.host().calls();
    assert_eq!(calls[0], Call::PrepareDirs("alpha".into(), 1 << 28));
    assert_eq!(
        calls[1],
        Call::CgroupCreate(
            "planetmesh/alpha".into(),
            CgroupLimits {
                cpu_weight_millis: 250,
                cpu_quota_millis: None,
                memory_bytes: Some(64 << 20),
                pids_max: Some(1024)
            }
        )
    );
    assert_eq!(
        calls[2],
        Call::SpawnInit("planetmesh/alpha".into(), 1 << 28, false)
    );
    assert_eq!(
        calls[3],
        Call::NetAttach("pmv0".into(), Ipv4Addr::new(10, 199, 0, 1))
    );
    assert_eq!(calls[4], Call::ShapeAdd(0x10, 8_000, 1_000_000));
    assert_eq!(calls[5], Call::StartInit(rec.init_pid, "alpha".into()));
    assert_eq!(
        calls[6],
        Call::CgroupCpuQuota("planetmesh/alpha".into(), 250)
    );
    assert_eq!(e.list().len(), 1);
    assert!(tmp.path().join("records/alpha.json").is_file());
}

#[test]
fn a_failure_at_any_step_undoes_everything_before_it() {
    for (i, step) in CREATE.iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let e = engine(tmp.path());
        let baseline = e.host().held();
        e.host().clear_calls();
        e.host().fail_at(step);
        let err = e.create(spec("beta")).unwrap_err();
        assert!(
            matches!(&err, SliverError::Create { rollback, .. } if rollback.is_empty()),
            "{step}: {err}"
        );
        assert_eq!(e.host().held(), baseline, "{step}: something leaked");
        let names = e.host().call_names();
        assert_eq!(&names[..=i], &CREATE[..=i], "{step}");
        // Undo: only the completed steps, init killed first, then in reverse dependency order.
        let undo: Vec<&str> = names[i + 1..].to_vec();
        let completed = &CREATE[..i];
        let expected: Vec<&str> = [
            ("spawn_init", "kill_init"),
            ("shape_add", "shape_remove"),
            ("net_attach", "net_detach"),
            ("cgroup_create", "cgroup_destroy"),
            ("prepare_dirs", "remove_dirs"),
        ]
        .into_iter()
        .filter(|(d, _)| completed.contains(d))
        .map(|(_, u)| u)
        .collect();
        assert_eq!(undo, expected, "{step}");
        assert!(e.list().is_empty());
        assert!(!tmp.path().join("records/beta.json").exists());
        // The slot is free again.
        e.host().clear_failures();
        assert_eq!(e.create(spec("beta")).unwrap().slot.slot, 0);
    }
}

#[test]
fn destroy_removes_every_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let baseline = e.host().held();
    e.create(spec("gamma")).unwrap();
    assert!(e.host().held().len() > baseline.len());
    e.host().clear_calls();
    e.destroy(&SliverId::new("gamma").unwrap(), false).unwrap();
    assert_eq!(
        e.host().call_names(),
        [
            "kill_init",
            "shape_remove",
            "net_detach",
            "cgroup_destroy",
            "remove_dirs"
        ]
    );
    assert_eq!(e.host().held(), baseline);
    assert!(!tmp.path().join("records/gamma.json").exists());
    assert!(matches!(
        e.destroy(&SliverId::new("gamma").unwrap(), false),
        Err(SliverError::NotFound(_))
    ));
}

#[test]
fn failed_destroy_keeps_the_record_for_a_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    e.create(spec("delta")).unwrap();
    e.host().fail_at("net_detach");
    let id = SliverId::new("delta").unwrap();
    assert!(matches!(
        e.destroy(&id, true),
        Err(SliverError::Destroy { .. })
    ));
    assert!(e.get(&id).is_some());
    assert!(tmp.path().join("records/delta.json").exists());
    e.host().clear_failures();
    e.destroy(&id, true).unwrap();
    assert!(
        e.host()
            .calls()
            .contains(&Call::RemoveDirs("delta".into(), true))
    );
}

#[test]
fn slots_are_distinct_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let a = e.create(spec("a")).unwrap();
    let b = e.create(spec("b")).unwrap();
    assert_ne!(a.slot.uids.host_base, b.slot.uids.host_base);
    assert_ne!(a.net.sliver_addr, b.net.sliver_addr);
    assert!(matches!(e.create(spec("a")), Err(SliverError::Exists(_))));
    e.destroy(&a.spec.id, false).unwrap();
    assert_eq!(e.create(spec("c")).unwrap().slot.slot, 0);
}

#[test]
fn reopening_adopts_live_slivers_and_reaps_dead_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (e, _) = Slivers::open(RecordingHost::new(), config(tmp.path())).unwrap();
    let live = e.create(spec("live")).unwrap();
    let dead = e.create(spec("dead")).unwrap();
    // The same host (its processes) outlives the engine: move it into a new engine.
    let host = e.host;
    host.kill_behind_the_back(dead.init_pid);
    host.clear_calls();
    let (e2, report) = Slivers::open(host, config(tmp.path())).unwrap();
    assert_eq!(report.adopted, vec![live.spec.id.clone()]);
    assert_eq!(report.reaped, vec![dead.spec.id.clone()]);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(e2.list(), vec![live.clone()]);
    assert!(
        e2.host()
            .calls()
            .contains(&Call::CgroupDestroy("planetmesh/dead".into()))
    );
    assert!(!tmp.path().join("records/dead.json").exists());
    // The adopted sliver's slot stays taken.
    assert_eq!(e2.create(spec("next")).unwrap().slot.slot, 1);
}

#[test]
fn invalid_specs_touch_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    e.host().clear_calls();
    let mut s = spec("eps");
    s.capabilities = vec!["CAP_SYS_ADMIN".into()];
    assert!(matches!(e.create(s), Err(SliverError::Spec(_))));
    assert!(e.host().calls().is_empty());
}

#[test]
fn admin_slivers_get_their_capabilities_and_host_view() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let mut s = spec("admin");
    s.kind = SliverKind::Admin;
    s.capabilities = vec!["CAP_NET_RAW".into(), "CAP_SYS_PTRACE".into()];
    s.host_pid_view = true;
    let rec = e.create(s).unwrap();
    assert!(
        rec.caps
            .contains(::caps::Capability::CAP_SYS_PTRACE.index())
    );
    assert!(
        e.host()
            .calls()
            .contains(&Call::SpawnInit("planetmesh/admin".into(), 1 << 28, true))
    );
}

#[test]
fn egress_ceiling_defaults_to_the_node_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let mut s = spec("capped");
    s.egress_ceil_kbps = Some(8_000);
    assert_eq!(e.create(s).unwrap().shape.ceil_kbps, 8_000);
    let mut s = spec("zero");
    s.resources.egress_kbps = 0;
    let rec = e.create(s).unwrap();
    assert_eq!((rec.shape.rate_kbps, rec.shape.ceil_kbps), (8, 1_000_000));
}

#[test]
fn ssh_keys_are_managed_per_sliver() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let id = e.create(spec("keys")).unwrap().spec.id;
    let k1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOd alice@lab";
    let k2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIXy bob@lab";
    e.add_key(&id, k1).unwrap();
    e.add_key(&id, k2).unwrap();
    e.add_key(&id, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOd renamed")
        .unwrap();
    assert_eq!(
        e.list_keys(&id).unwrap(),
        vec![k1.to_string(), k2.to_string()]
    );
    assert!(e.remove_key(&id, k1).unwrap());
    assert!(!e.remove_key(&id, k1).unwrap());
    assert_eq!(e.list_keys(&id).unwrap(), vec![k2.to_string()]);
    assert!(matches!(
        e.add_key(&id, "ssh-rsa AAA\nssh-rsa BBB"),
        Err(SliverError::InvalidKey { .. })
    ));
    assert!(matches!(
        e.add_key(&id, "hello world"),
        Err(SliverError::InvalidKey { .. })
    ));
}

#[test]
fn exec_reaches_the_host_with_the_sliver() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let id = e.create(spec("ex")).unwrap().spec.id;
    let out = e.exec(&id, &ExecCommand::shell("true")).unwrap();
    assert!(out.success());
    assert!(matches!(
        e.exec(&SliverId::new("nope").unwrap(), &ExecCommand::shell("true")),
        Err(SliverError::NotFound(_))
    ));
}

#[test]
fn reopening_removes_traces_no_record_accounts_for() {
    let tmp = tempfile::tempdir().unwrap();
    let (e, _) = Slivers::open(RecordingHost::new(), config(tmp.path())).unwrap();
    e.create(spec("kept")).unwrap();
    let host = e.host;
    let strays = [
        Orphan::Cgroup("ghost".into()),
        Orphan::Link("pmv7".into()),
        Orphan::Class(0x17),
    ];
    for s in &strays {
        host.leave_stray(s.clone());
    }
    host.clear_calls();
    let (e2, mut report) = Slivers::open(host, config(tmp.path())).unwrap();
    report.orphans.sort();
    let mut expected = strays.to_vec();
    expected.sort();
    assert_eq!(report.orphans, expected);
    assert!(e2.host().strays().is_empty());
    // The adopted sliver's own traces are left alone.
    assert_eq!(
        e2.host()
            .call_names()
            .iter()
            .filter(|n| **n == "remove_orphan")
            .count(),
        strays.len()
    );
    assert_eq!(e2.list().len(), 1);
}

#[test]
fn the_disk_watchdog_freezes_a_sliver_over_its_grant_and_thaws_it_back_under() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let mut s = spec("hog");
    s.resources.disk_bytes = 1 << 20;
    let rec = e.create(s).unwrap();
    e.create(spec("calm")).unwrap();
    e.host().set_disk("hog", 3 << 20);
    e.host().set_disk("calm", 1 << 20);
    e.host().clear_calls();
    let reports = e.check_disk();
    assert_eq!(
        e.host().calls(),
        [Call::CgroupFreeze(rec.cgroup.clone(), true)]
    );
    let hog = reports.iter().find(|r| r.id.as_str() == "hog").unwrap();
    assert!(hog.over && hog.frozen, "{hog:?}");
    let calm = reports.iter().find(|r| r.id.as_str() == "calm").unwrap();
    assert!(!calm.over && !calm.frozen, "{calm:?}");
    let id = SliverId::new("hog").unwrap();
    let condition = e.condition(&id).unwrap();
    assert!(
        condition.starts_with("over disk limit: 3.0 MiB of 1.0 MiB"),
        "{condition}"
    );
    assert_eq!(e.condition(&SliverId::new("calm").unwrap()), None);
    // Still over: nothing more is done.
    e.host().clear_calls();
    e.check_disk();
    assert!(e.host().calls().is_empty(), "{:?}", e.host().calls());
    // A command run meanwhile (outside the freezer) gets until the check after next.
    e.host().set_stragglers(&rec.cgroup, vec![4242, 4343]);
    e.check_disk();
    assert!(e.host().calls().is_empty(), "{:?}", e.host().calls());
    e.host().set_stragglers(&rec.cgroup, vec![4242, 4444]);
    e.check_disk();
    assert_eq!(
        e.host().calls(),
        [Call::FreezeStragglers(rec.cgroup.clone(), vec![4242])]
    );
    e.host().clear_calls();
    // Back under: thawed, condition cleared.
    e.host().set_disk("hog", 512 << 10);
    e.check_disk();
    assert_eq!(
        e.host().calls(),
        [Call::CgroupFreeze(rec.cgroup.clone(), false)]
    );
    assert!(e.host().frozen().is_empty());
    assert_eq!(e.condition(&id), None);
}

#[test]
fn a_sliver_whose_disk_use_cannot_be_measured_counts_as_over_and_is_frozen() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let mut s = spec("murky");
    s.resources.disk_bytes = 1 << 20;
    let rec = e.create(s).unwrap();
    let mut s = spec("free");
    s.resources.disk_bytes = 0;
    e.create(s).unwrap();
    e.host().fail_disk("murky");
    e.host().fail_disk("free");
    e.host().clear_calls();
    let reports = e.check_disk();
    let murky = reports.iter().find(|r| r.id.as_str() == "murky").unwrap();
    assert!(
        murky.over && murky.frozen && murky.used.is_none(),
        "{murky:?}"
    );
    assert!(
        murky
            .error
            .as_deref()
            .unwrap()
            .contains("cannot measure murky")
    );
    assert_eq!(
        e.host().calls(),
        [Call::CgroupFreeze(rec.cgroup.clone(), true)],
        "only the sliver with a grant is frozen"
    );
    let condition = e.condition(&SliverId::new("murky").unwrap()).unwrap();
    assert!(
        condition.starts_with("over disk limit: its use could not be measured")
            && condition.contains("frozen until a measurement completes"),
        "{condition}"
    );
    let free = reports.iter().find(|r| r.id.as_str() == "free").unwrap();
    assert!(!free.over && !free.frozen, "no grant, no limit: {free:?}");
    // Still failing: stays frozen; measured under its grant again: thawed.
    e.host().clear_calls();
    e.check_disk();
    assert!(e.host().calls().is_empty(), "{:?}", e.host().calls());
    e.host().set_disk("murky", 1000);
    e.check_disk();
    assert_eq!(
        e.host().calls(),
        [Call::CgroupFreeze(rec.cgroup.clone(), false)]
    );
    assert_eq!(e.condition(&SliverId::new("murky").unwrap()), None);
}

#[test]
fn a_kernel_capped_sliver_is_not_frozen_when_its_use_cannot_be_measured() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.disk_backing = DiskBacking::Tmpfs;
    let e = Slivers::open(RecordingHost::new(), c).unwrap().0;
    let mut s = spec("capped");
    s.resources.disk_bytes = 1 << 20;
    e.create(s).unwrap();
    e.host().fail_disk("capped");
    e.host().clear_calls();
    let reports = e.check_disk();
    assert!(!reports[0].over && !reports[0].frozen, "{reports:?}");
    assert!(e.host().calls().is_empty());
    let condition = e.condition(&SliverId::new("capped").unwrap()).unwrap();
    assert!(
        condition.starts_with("disk use could not be measured"),
        "{condition}"
    );
}

#[test]
fn a_frozen_sliver_is_thawed_before_its_init_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let mut s = spec("icy");
    s.resources.disk_bytes = 1 << 20;
    e.create(s).unwrap();
    e.host().set_disk("icy", 2 << 20);
    e.check_disk();
    e.host().clear_calls();
    e.destroy(&SliverId::new("icy").unwrap(), false).unwrap();
    assert_eq!(
        e.host().call_names(),
        [
            "cgroup_freeze",
            "kill_init",
            "shape_remove",
            "net_detach",
            "cgroup_destroy",
            "remove_dirs"
        ]
    );
    assert!(e.host().frozen().is_empty());
    assert_eq!(e.condition(&SliverId::new("icy").unwrap()), None);
}

#[test]
fn a_restarted_node_keeps_a_frozen_sliver_frozen_until_it_is_back_under() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let mut s = spec("cold");
    s.resources.disk_bytes = 1 << 20;
    let rec = e.create(s).unwrap();
    let host = e.host;
    host.freeze_behind_the_back(&rec.cgroup);
    host.set_disk("cold", 2 << 20);
    host.clear_calls();
    let (e2, report) = Slivers::open(host, config(tmp.path())).unwrap();
    assert_eq!(report.adopted, vec![rec.spec.id.clone()]);
    // Still over: found frozen, left frozen, reported.
    let reports = e2.check_disk();
    assert!(reports[0].frozen && reports[0].over, "{reports:?}");
    assert!(!e2.host().call_names().contains(&"cgroup_freeze"));
    e2.host().set_disk("cold", 0);
    e2.check_disk();
    assert_eq!(
        e2.host().calls().last(),
        Some(&Call::CgroupFreeze(rec.cgroup.clone(), false))
    );
}

#[test]
fn a_quota_capped_sliver_dir_is_capped_before_it_is_made_and_the_filesystem_goes_with_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.disk_backing = DiskBacking::Quota;
    let e = Slivers::open(RecordingHost::new(), c).unwrap().0;
    assert_eq!(e.config().disk_backing, DiskBacking::Quota);
    assert!(e.host().call_names().contains(&"disk_quota_setup"));
    e.host().clear_calls();
    let mut s = spec("capped");
    s.resources.disk_bytes = 5 << 20;
    let rec = e.create(s).unwrap();
    assert_eq!(rec.disk_backing, DiskBacking::Quota);
    let names = e.host().call_names();
    assert_eq!(&names[..2], ["disk_quota_cap", "prepare_dirs"], "{names:?}");
    assert_eq!(
        e.host().calls()[0],
        Call::DiskQuotaCap("capped".into(), 5 << 20)
    );
    // A sliver without a grant gets a plain dir.
    let mut s = spec("free");
    s.resources.disk_bytes = 0;
    e.host().clear_calls();
    assert_eq!(e.create(s).unwrap().disk_backing, DiskBacking::Directory);
    assert!(!e.host().call_names().contains(&"disk_quota_cap"));
    // A cap that fails fails the create, undone.
    e.host().fail_at("disk_quota_cap");
    let err = e.create(spec("nocap")).unwrap_err();
    assert!(err.to_string().contains("cap disk"), "{err}");
    assert!(e.get(&SliverId::new("nocap").unwrap()).is_none());
    e.host().clear_calls();
    e.destroy_all().unwrap();
    assert_eq!(e.host().call_names().last(), Some(&"disk_quota_teardown"));
}

#[test]
fn a_node_that_cannot_cap_disks_in_the_kernel_falls_back_to_the_watchdog() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.disk_backing = DiskBacking::Quota;
    let host = RecordingHost::new();
    host.fail_at("disk_quota_setup");
    let e = Slivers::open(host, c).unwrap().0;
    assert_eq!(e.config().disk_backing, DiskBacking::Directory);
    assert_eq!(
        e.create(spec("watched")).unwrap().disk_backing,
        DiskBacking::Directory
    );
    e.destroy_all().unwrap();
    assert!(!e.host().call_names().contains(&"disk_quota_teardown"));
}

#[test]
fn tmpfs_backing_applies_to_slivers_with_a_disk_grant_only() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.disk_backing = DiskBacking::Tmpfs;
    let (e, _) = Slivers::open(RecordingHost::new(), c).unwrap();
    let capped = e.create(spec("capped")).unwrap();
    assert_eq!(capped.disk_backing, DiskBacking::Tmpfs);
    let mut s = spec("unlimited");
    s.resources.disk_bytes = 0;
    assert_eq!(e.create(s).unwrap().disk_backing, DiskBacking::Directory);
    // A record written before the field existed reads as directory-backed.
    let text = std::fs::read_to_string(tmp.path().join("records/capped.json")).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value.as_object_mut().unwrap().remove("disk_backing");
    let old: SliverRecord = serde_json::from_value(value).unwrap();
    assert_eq!(old.disk_backing, DiskBacking::Directory);
}

#[test]
fn usage_reads_cgroups_and_bucket_counters_through_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    assert!(e.usage().is_empty());
    let a = e.create(spec("a")).unwrap();
    let b = e.create(spec("b")).unwrap();
    e.host().set_usage(
        &b.cgroup,
        CgroupUsage {
            cpu_ns: Some(42),
            memory_bytes: Some(4096),
        },
    );
    e.host().set_egress(a.shape.class_minor, 1000);
    e.host().set_egress(b.shape.class_minor, 2000);
    let usage = e.usage();
    assert_eq!(usage.len(), 2);
    assert_eq!(usage[0].id, a.spec.id);
    assert_eq!(usage[0].egress_bytes, Some(1000));
    assert_eq!(usage[1].cpu_ns, Some(42));
    assert_eq!(usage[1].memory_bytes, Some(4096));
    assert_eq!(usage[1].egress_bytes, Some(2000));
    assert_eq!(usage[1].disk, None, "no disk check yet");
}

fn networked(dir: &std::path::Path) -> Slivers<RecordingHost> {
    let mut config = config(dir);
    config.network = Some(firewall::Policy {
        uplink: Some(firewall::Uplink {
            device: "eth0".into(),
            address: std::net::Ipv4Addr::new(192, 0, 2, 7),
        }),
        icmp_per_sec: 10,
        ports: Some(firewall::PublicPorts {
            first: 40000,
            count: 8,
            per_sliver: 2,
        }),
    });
    Slivers::open(RecordingHost::new(), config).unwrap().0
}

#[test]
fn a_networked_node_makes_its_table_at_open_and_no_create_touches_it() {
    let tmp = tempfile::tempdir().unwrap();
    let e = networked(tmp.path());
    assert_eq!(
        e.host().calls(),
        [
            Call::PrepareImage,
            Call::ShapingSetup("pmifb0".into()),
            Call::FirewallSetup(
                "planetmesh_pmv".into(),
                Some(std::net::Ipv4Addr::new(192, 0, 2, 7))
            ),
        ]
    );
    e.host().clear_calls();
    e.create(spec("alpha")).unwrap();
    e.destroy(&SliverId::new("alpha").unwrap(), false).unwrap();
    assert!(
        !e.host()
            .call_names()
            .iter()
            .any(|c| c.starts_with("firewall")),
        "a sliver's create and destroy leave the table alone: {:?}",
        e.host().call_names()
    );
}

#[test]
fn the_reconciler_restores_a_deleted_table_once_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let e = networked(tmp.path());
    assert!(!e.ensure_firewall().unwrap(), "present: nothing to do");
    e.host().delete_firewall_behind_the_back("planetmesh_pmv");
    assert!(e.ensure_firewall().unwrap(), "gone: restored");
    assert!(!e.ensure_firewall().unwrap(), "and only once");
    assert!(e.host().held().contains("firewall:planetmesh_pmv"));
    // Without a network policy the host's firewall is never touched.
    let other = tempfile::tempdir().unwrap();
    let plain = engine(other.path());
    assert!(!plain.ensure_firewall().unwrap());
}

#[test]
fn a_clean_shutdown_removes_the_table_only_when_no_sliver_lives_and_wipe_always() {
    let tmp = tempfile::tempdir().unwrap();
    let e = networked(tmp.path());
    e.create(spec("alpha")).unwrap();
    e.close().unwrap();
    assert!(
        e.host().held().contains("firewall:planetmesh_pmv"),
        "a live sliver keeps its egress while the daemon is down"
    );
    e.destroy(&SliverId::new("alpha").unwrap(), false).unwrap();
    e.close().unwrap();
    assert!(!e.host().held().contains("firewall:planetmesh_pmv"));
    let other = tempfile::tempdir().unwrap();
    let wiped = networked(other.path());
    wiped.create(spec("beta")).unwrap();
    wiped.destroy_all().unwrap();
    assert!(wiped.host().held().is_empty(), "{:?}", wiped.host().held());
}

#[test]
fn leased_ports_are_forwarded_at_create_and_withdrawn_at_destroy_within_the_block() {
    let tmp = tempfile::tempdir().unwrap();
    let e = networked(tmp.path());
    e.host().clear_calls();
    let mut s = spec("alpha");
    s.resources.ports = 2;
    let rec = e.create(s).unwrap();
    assert!(
        e.host()
            .calls()
            .contains(&Call::PortsForward(true, vec![40000, 40001]))
    );
    assert_eq!(
        e.config().public_endpoint(rec.slot.slot, 2),
        Some((std::net::Ipv4Addr::new(192, 0, 2, 7), vec![40000, 40001]))
    );
    let mut greedy = spec("greedy");
    greedy.resources.ports = 3;
    let refused = e.create(greedy).unwrap_err().to_string();
    assert!(refused.contains("at most 2 per sliver"), "{refused}");
    // No port asked, none forwarded; the range (8 ports in blocks of 2) holds 4 slivers.
    e.create(spec("beta")).unwrap();
    assert_eq!(e.config().slots.max_slots, 4);
    e.destroy(&SliverId::new("alpha").unwrap(), false).unwrap();
    assert!(
        e.host()
            .calls()
            .contains(&Call::PortsForward(false, vec![40000, 40001]))
    );
    assert!(!e.host().held().iter().any(|h| h.starts_with("port:")));
}

fn told(slice: &str) -> SliverAbout {
    SliverAbout {
        slice: slice.into(),
        node: format!("ed25519/{}", "cd".repeat(32)),
        federation: "plc".into(),
        site: "princeton".into(),
        // The engine decides these from the slot, whatever the spec says.
        public_address: Some("203.0.113.66".into()),
        ports: vec![1],
    }
}

#[test]
fn a_sliver_is_told_its_slice_node_and_public_face_in_a_file_written_with_its_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let e = networked(tmp.path());
    let mut s = spec("alpha");
    s.resources.ports = 2;
    s.about = Some(told("princeton_alpha"));
    let rec = e.create(s).unwrap();
    let about = rec.spec.about.clone().unwrap();
    assert_eq!(about.public_address.as_deref(), Some("192.0.2.7"));
    assert_eq!(about.ports, [40000, 40001]);
    let file: about::SliverFacts =
        serde_json::from_slice(&fs::read(rec.dirs.about()).unwrap()).unwrap();
    assert_eq!(
        file,
        about::SliverFacts::of(Some(&about), rec.net.sliver_addr)
    );
    assert_eq!(file.slice.as_deref(), Some("princeton_alpha"));
    assert_eq!(file.site.as_deref(), Some("princeton"));
    // The record keeps it: commands run after a restart are told the same.
    let saved: SliverRecord =
        serde_json::from_slice(&fs::read(tmp.path().join("records/alpha.json")).unwrap()).unwrap();
    assert_eq!(saved.spec.about, Some(about));
    // No port asked: the public address alone. No about: the private address alone.
    let mut s = spec("beta");
    s.about = Some(told("princeton_beta"));
    let beta = e.create(s).unwrap().spec.about.unwrap();
    assert_eq!(beta.public_address.as_deref(), Some("192.0.2.7"));
    assert!(beta.ports.is_empty());
    let plain = e.create(spec("gamma")).unwrap();
    let file: about::SliverFacts =
        serde_json::from_slice(&fs::read(plain.dirs.about()).unwrap()).unwrap();
    assert_eq!(file, about::SliverFacts::of(None, plain.net.sliver_addr));
}

#[test]
fn a_node_without_a_public_address_tells_none() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let mut s = spec("alpha");
    s.about = Some(told("princeton_alpha"));
    let about = e.create(s).unwrap().spec.about.unwrap();
    assert_eq!(about.public_address, None);
    assert!(about.ports.is_empty());
    let mut bad = spec("beta");
    bad.about = Some(SliverAbout {
        site: "evil\nPLANETMESH_SITE=x".into(),
        ..told("princeton_beta")
    });
    assert!(matches!(
        e.create(bad),
        Err(SliverError::Spec(SpecError::About { field: "site", .. }))
    ));
}
