//! What [`super::LinuxHost`] does, decided without touching the host: the directories of a
//! sliver, its network wiring and shaping, an init's control writes, whether a pid is still
//! its init, how its disk use is measured, and which host traces are slivers'. Pure functions,
//! unit-tested without root; `linux.rs` executes the plans with thin privileged primitives.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use rtnetlink::packet_route::tc::TcHandle;

use crate::sliver::about;
use crate::sliver::host::{NetAttach, NodeShaping, OrphanScope, Shape};
use crate::sliver::rootfs::{SliverDirs, UPPER_OWNED_DIRS};

/// The node's root HTB qdisc, `1:`.
pub const ROOT_QDISC: TcHandle = TcHandle { major: 1, minor: 0 };
/// The node's root bucket, class `1:1`; every sliver's bucket is its child.
pub const ROOT_CLASS: TcHandle = TcHandle { major: 1, minor: 1 };
/// The smallest class minor a sliver's bucket has (below are the node's own).
pub const FIRST_SLIVER_MINOR: u16 = 0x10;
/// The prefix length of the host side's address on a sliver's veth (a /31 pair).
pub const VETH_PREFIX: u8 = 31;
/// The filter priority of the redirect on a veth's ingress (the only filter there).
pub const REDIRECT_PRIO: u16 = 1;

/// One step of making a sliver's dirs, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirStep {
    /// Make a dir (and its parents) with `mode`; `owned`: chown it to the sliver's root.
    Make {
        /// The dir.
        path: PathBuf,
        /// Its mode.
        mode: u32,
        /// Whether the sliver's root owns it.
        owned: bool,
    },
    /// An upper dir kept from an earlier sliver may belong to another uid range: shift it.
    ShiftOwners(PathBuf),
    /// A stale work dir (from a kept upper) must not be reused: remove it.
    RemoveStale(PathBuf),
    /// Create the (empty) file if absent.
    Touch(PathBuf),
}

/// The steps of [`crate::sliver::host::Host::prepare_dirs`].
pub fn prepare_dirs(dirs: &SliverDirs) -> Vec<DirStep> {
    let make = |path: &Path, mode: u32, owned: bool| DirStep::Make {
        path: path.to_path_buf(),
        mode,
        owned,
    };
    let mut steps = vec![
        make(&dirs.root, 0o755, false),
        make(&dirs.rootfs, 0o755, false),
        make(&dirs.lower, 0o755, false),
        DirStep::ShiftOwners(dirs.upper.clone()),
        make(&dirs.upper, 0o755, true),
        DirStep::RemoveStale(dirs.work.clone()),
        make(&dirs.work, 0o700, true),
    ];
    steps.extend(
        UPPER_OWNED_DIRS
            .iter()
            .map(|(mode, rel)| make(&dirs.upper.join(rel), *mode, true)),
    );
    steps.push(DirStep::Touch(dirs.keys.clone()));
    steps.push(DirStep::Touch(dirs.about()));
    steps
}

/// What destroying a sliver with its upper dir kept removes.
pub fn removed_keeping_upper(dirs: &SliverDirs) -> [PathBuf; 5] {
    [
        dirs.work.clone(),
        dirs.rootfs.clone(),
        dirs.lower.clone(),
        dirs.keys.clone(),
        dirs.about(),
    ]
}

/// Where a sliver's dir is moved to be deleted in the background (`<state>/trash`), and its
/// name there; `None` when the dir has no such place.
pub fn trash_target(dirs: &SliverDirs, nanos: u128) -> Option<(PathBuf, PathBuf)> {
    let trash = dirs.root.parent().and_then(Path::parent)?.join("trash");
    let name = dirs
        .root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = trash.join(format!("{name}-{nanos}"));
    Some((trash, target))
}

/// The sysctls set on a sliver's host-side veth (path, value), in order: strict reverse-path
/// filtering, forwarding (what the node's firewall lets through leaves by routing; see
/// [`crate::sliver::firewall`]), and (if the host has IPv6) no IPv6, which would bypass the
/// shaper and the filter; the last is skipped when its file is absent.
pub fn veth_sysctls(proc_root: &Path, net: &NetAttach) -> [(PathBuf, &'static str); 3] {
    let conf = |family: &str, knob: &str| {
        proc_root
            .join("sys/net")
            .join(family)
            .join("conf")
            .join(&net.host_if)
            .join(knob)
    };
    [
        (conf("ipv4", "rp_filter"), "1"),
        (forwarding(proc_root, &net.host_if), "1"),
        (conf("ipv6", "disable_ipv6"), "1"),
    ]
}

/// The IPv4 forwarding switch of one interface: the node turns it on for its uplink and its
/// slivers' veths only, never host-wide (`net.ipv4.ip_forward`).
pub fn forwarding(proc_root: &Path, ifname: &str) -> PathBuf {
    proc_root
        .join("sys/net/ipv4/conf")
        .join(ifname)
        .join("forwarding")
}

/// The class of a sliver's bucket.
pub fn sliver_class(minor: u16) -> TcHandle {
    TcHandle { major: 1, minor }
}

/// A sliver's bucket on the node's shaping device, and how its egress is steered there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapePlan {
    /// The bucket, a child of [`ROOT_CLASS`].
    pub classid: TcHandle,
    /// Guaranteed rate, kbit/s.
    pub rate_kbps: u64,
    /// Ceiling, kbit/s.
    pub ceil_kbps: u64,
    /// Handle major of the bucket's FIFO (the class minor).
    pub fifo_major: u16,
    /// The FIFO's length, packets.
    pub fifo_limit: u32,
    /// Priority of the classifier on the shaping device (under [`ROOT_QDISC`]).
    pub filter_prio: u16,
    /// The sliver's address, which both filters match as source.
    pub src: Ipv4Addr,
}

/// The plan of [`crate::sliver::host::Host::shape_add`].
pub fn shape(shape: &Shape) -> ShapePlan {
    ShapePlan {
        classid: sliver_class(shape.class_minor),
        rate_kbps: shape.rate_kbps,
        ceil_kbps: shape.ceil_kbps,
        fifo_major: shape.class_minor,
        fifo_limit: fifo_limit(shape.ceil_kbps),
        filter_prio: shape.filter_prio,
        src: shape.src,
    }
}

/// A bucket's FIFO: about 50 ms of traffic at the ceiling, between 16 and 1000 packets.
pub fn fifo_limit(ceil_kbps: u64) -> u32 {
    let limit = (ceil_kbps.saturating_mul(1000) / 8 / 20 / 1500).clamp(16, 1000);
    u32::try_from(limit).unwrap_or(1000)
}

/// The node's root bucket: rate and ceiling both the node's cap.
pub fn root_bucket(node: &NodeShaping) -> (u64, u64) {
    (node.node_kbps, node.node_kbps)
}

/// Whether `name` is a sliver's host-side veth: the prefix then a slot number.
pub fn is_sliver_link(prefix: &str, name: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|slot| !slot.is_empty() && slot.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether class `handle` on the shaping device is a sliver's bucket.
pub fn is_sliver_class(handle: TcHandle) -> bool {
    handle.major == 1 && handle.minor >= FIRST_SLIVER_MINOR
}

/// Whether the sliver dir `dir` was kept on purpose (destroyed with its upper dir kept): it
/// holds none of the other entries. `exists` asks the file system.
pub fn is_kept_dir(dir: &Path, exists: impl Fn(&Path) -> bool) -> bool {
    !["work", "rootfs", "authorized_keys", about::FILE_NAME]
        .iter()
        .any(|entry| exists(&dir.join(entry)))
}

/// The full path of an orphaned cgroup.
pub fn orphan_cgroup(scope: &OrphanScope, name: &str) -> String {
    format!("{}/{name}", scope.cgroup_parent)
}

/// The dirs of an orphaned sliver dir, or `None` when `path` is not a sliver dir of `scope`.
pub fn orphan_dirs(scope: &OrphanScope, path: &Path) -> Option<SliverDirs> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dirs = SliverDirs::new(
        scope
            .slivers_dir
            .parent()
            .unwrap_or(Path::new("/nonexistent")),
        &name,
    );
    (dirs.root == path).then_some(dirs)
}

/// The start time (field 22, clock ticks since boot) and whether the process is a zombie (or
/// dead), from the text of `/proc/<pid>/stat`; the command name (field 2, in parentheses)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat(text: &str) -> Option<(u64, bool)> {
    let after = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after.split(' ').collect();
    let zombie = matches!(fields.first(), Some(&"Z") | Some(&"X"));
    Some((fields.get(19)?.parse().ok()?, zombie))
}

/// A control file the node writes to let a cloned init go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitWrite {
    /// One of its id maps (`/proc/<pid>/uid_map` or `gid_map`).
    IdMap {
        /// The file.
        path: PathBuf,
        /// The map line.
        line: String,
    },
    /// One of its cgroup's `cgroup.procs` files.
    Cgroup {
        /// The file.
        path: PathBuf,
        /// Its pid.
        pid: String,
    },
}

/// What the node writes once the init `pid` is cloned, in order: its uid map, then its gid
/// map, under `proc_root` (both the sliver's id range, see
/// [`crate::sliver::alloc::UidRange::map_line`]; the node holds `CAP_SETGID`, so its
/// `setgroups` is left as it is), then its pid into each `cgroup.procs` file of `cgroup` (one
/// per hierarchy, see [`crate::sliver::cgroup::Cgroups::procs_files`]).
pub fn init_writes(
    proc_root: &Path,
    pid: u32,
    uids: &crate::sliver::alloc::UidRange,
    cgroups: &crate::sliver::cgroup::Cgroups,
    cgroup: &str,
) -> Vec<InitWrite> {
    let line = uids.map_line();
    let mut writes: Vec<InitWrite> = ["uid_map", "gid_map"]
        .into_iter()
        .map(|file| InitWrite::IdMap {
            path: proc_root.join(pid.to_string()).join(file),
            line: line.clone(),
        })
        .collect();
    writes.extend(
        cgroups
            .procs_files(cgroup)
            .into_iter()
            .map(|path| InitWrite::Cgroup {
                path,
                pid: pid.to_string(),
            }),
    );
    writes
}

/// The traces among `entries` of the slivers dir: every one but the dirs kept on purpose (see
/// [`is_kept_dir`]; `exists` asks the file system).
pub fn dir_traces(
    entries: impl IntoIterator<Item = PathBuf>,
    exists: impl Fn(&Path) -> bool,
) -> Vec<crate::sliver::host::Orphan> {
    entries
        .into_iter()
        .filter(|p| !is_kept_dir(p, &exists))
        .map(crate::sliver::host::Orphan::Dir)
        .collect()
}

/// What an init's answer on its status pipe means, `sent` being how sending it its plan
/// went: [`crate::sliver::init::READY`] is success, whatever the send did; an empty answer
/// (the init exited without a word) after a failed send is that failure; any other answer
/// is the init's own error.
pub fn init_outcome(
    status: String,
    sent: std::io::Result<()>,
) -> Result<(), crate::sliver::host::HostError> {
    use crate::sliver::host::HostError;
    if status == crate::sliver::init::READY {
        return Ok(());
    }
    if let (Err(e), true) = (sent, status.is_empty()) {
        return Err(HostError::Io {
            op: "send plan",
            path: PathBuf::new(),
            source: e,
        });
    }
    Err(HostError::Init(if status.is_empty() {
        "init exited without a word".into()
    } else {
        status
    }))
}

/// Whether the process whose `/proc/<pid>/stat` reads `stat` (see [`parse_stat`]; `None`:
/// gone) is the init that started at `start_time`: a pid another process reuses is not. A
/// zombie init still is (killing it is what reaps it).
pub fn is_same_init(stat: Option<(u64, bool)>, start_time: u64) -> bool {
    matches!(stat, Some((t, _)) if t == start_time)
}

/// Whether that init is alive: the same init (see [`is_same_init`]) and not a zombie.
pub fn is_live_init(stat: Option<(u64, bool)>, start_time: u64) -> bool {
    matches!(stat, Some((t, false)) if t == start_time)
}

/// How the disk a sliver uses is measured, by what backs its writable layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskMeasure {
    /// Everything the sliver can hold on the host's disk: walk its upper dir and the
    /// overlay's work dir, and add the files its cgroup's processes deleted but keep open on
    /// the upper dir's filesystem.
    Walk {
        /// The upper dir (whose filesystem the held files are looked for on).
        upper: PathBuf,
        /// The overlay's work dir.
        work: PathBuf,
        /// The sliver's cgroup.
        cgroup: String,
    },
    /// The quota group of the sliver's subvolume, which may not be found above `limit`.
    Quota {
        /// The subvolume.
        root: PathBuf,
        /// The grant.
        limit: u64,
    },
    /// `statvfs` of the sliver's root seen through its init: the tmpfs lives in the sliver's
    /// mount namespace only, and an overlay reports its upper layer's filesystem's statistics.
    Statvfs {
        /// `/proc/<init>/root/`.
        root: PathBuf,
    },
}

/// How [`crate::sliver::host::Host::disk_used`] measures `target`.
pub fn disk_measure(proc_root: &Path, target: &crate::sliver::host::DiskTarget) -> DiskMeasure {
    use crate::sliver::rootfs::DiskBacking;
    match target.backing {
        DiskBacking::Directory => DiskMeasure::Walk {
            upper: target.dirs.upper.clone(),
            work: target.dirs.work.clone(),
            cgroup: target.cgroup.clone(),
        },
        DiskBacking::Quota => DiskMeasure::Quota {
            root: target.dirs.root.clone(),
            limit: target.limit,
        },
        DiskBacking::Tmpfs => DiskMeasure::Statvfs {
            root: proc_root.join(target.init_pid.to_string()).join("root/"),
        },
    }
}

/// The bytes a filesystem holds, from its `statvfs` answer: the blocks not free, at the
/// fragment size (saturating, never negative).
pub fn fs_used(blocks: u64, blocks_free: u64, fragment_size: u64) -> u64 {
    blocks
        .saturating_sub(blocks_free)
        .saturating_mul(fragment_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> SliverDirs {
        SliverDirs::new(Path::new("/state"), "s1")
    }

    fn scope() -> OrphanScope {
        OrphanScope {
            cgroup_parent: "planetmesh".into(),
            ifname_prefix: "pm".into(),
            ifb: "pmifb0".into(),
            slivers_dir: "/state/slivers".into(),
        }
    }

    fn shape_of(ceil_kbps: u64) -> Shape {
        Shape {
            node: NodeShaping {
                ifb: "pmifb0".into(),
                node_kbps: 1_000_000,
            },
            host_if: "pm3".into(),
            src: Ipv4Addr::new(10, 1, 0, 7),
            class_minor: 0x13,
            filter_prio: 0x13,
            rate_kbps: 1_000,
            ceil_kbps,
        }
    }

    #[test]
    fn dirs_are_made_root_first_owned_by_the_sliver_from_the_upper_dir_down() {
        let steps = prepare_dirs(&dirs());
        let make = |p: &str, mode: u32, owned: bool| DirStep::Make {
            path: p.into(),
            mode,
            owned,
        };
        assert_eq!(
            steps[..7],
            [
                make("/state/slivers/s1", 0o755, false),
                make("/state/slivers/s1/rootfs", 0o755, false),
                make("/state/slivers/s1/lower", 0o755, false),
                DirStep::ShiftOwners("/state/slivers/s1/upper".into()),
                make("/state/slivers/s1/upper", 0o755, true),
                DirStep::RemoveStale("/state/slivers/s1/work".into()),
                make("/state/slivers/s1/work", 0o700, true),
            ]
        );
        assert_eq!(steps.len(), 7 + UPPER_OWNED_DIRS.len() + 2);
        assert!(steps.contains(&make("/state/slivers/s1/upper/var/tmp", 0o1777, true)));
        assert!(steps.contains(&make("/state/slivers/s1/upper/root/.ssh", 0o700, true)));
        assert!(steps.contains(&make("/state/slivers/s1/upper/etc/planetmesh", 0o755, true)));
        assert_eq!(
            steps[steps.len() - 2..],
            [
                DirStep::Touch("/state/slivers/s1/authorized_keys".into()),
                DirStep::Touch("/state/slivers/s1/sliver.json".into()),
            ]
        );
    }

    #[test]
    fn keeping_the_upper_dir_removes_everything_else_and_trash_sits_beside_slivers() {
        let d = dirs();
        let removed = removed_keeping_upper(&d);
        assert!(!removed.contains(&d.upper));
        assert!(!removed.contains(&d.root));
        assert!(removed.contains(&d.keys));
        assert!(removed.contains(&"/state/slivers/s1/sliver.json".into()));
        assert_eq!(
            trash_target(&d, 42),
            Some(("/state/trash".into(), "/state/trash/s1-42".into()))
        );
        let rootless = SliverDirs {
            root: "/".into(),
            ..d
        };
        assert_eq!(trash_target(&rootless, 1), None);
    }

    #[test]
    fn veth_sysctls_are_strict_rp_filter_forwarding_and_no_ipv6_under_the_proc_root() {
        let net = NetAttach {
            host_if: "pm3".into(),
            sliver_if: "eth0".into(),
            host_addr: Ipv4Addr::new(10, 1, 0, 6),
            sliver_addr: Ipv4Addr::new(10, 1, 0, 7),
        };
        assert_eq!(
            veth_sysctls(Path::new("/fakeproc"), &net),
            [
                ("/fakeproc/sys/net/ipv4/conf/pm3/rp_filter".into(), "1"),
                ("/fakeproc/sys/net/ipv4/conf/pm3/forwarding".into(), "1"),
                ("/fakeproc/sys/net/ipv6/conf/pm3/disable_ipv6".into(), "1"),
            ]
        );
    }

    #[test]
    fn a_sliver_bucket_is_a_child_class_with_a_fifo_of_about_50_ms() {
        let plan = shape(&shape_of(100_000));
        assert_eq!(
            plan.classid,
            TcHandle {
                major: 1,
                minor: 0x13
            }
        );
        assert_eq!(plan.fifo_major, 0x13);
        assert_eq!((plan.rate_kbps, plan.ceil_kbps), (1_000, 100_000));
        // 100 Mbit/s for 50 ms = 625 000 bytes = 416 full frames.
        assert_eq!(plan.fifo_limit, 416);
        assert_eq!(plan.src, Ipv4Addr::new(10, 1, 0, 7));
        assert_eq!(fifo_limit(0), 16);
        assert_eq!(fifo_limit(1_000), 16);
        assert_eq!(fifo_limit(10_000_000), 1000);
        assert_eq!(fifo_limit(u64::MAX), 1000);
        assert_eq!(root_bucket(&shape_of(1).node), (1_000_000, 1_000_000));
    }

    #[test]
    fn only_prefix_then_slot_names_and_minors_from_0x10_are_slivers() {
        assert!(is_sliver_link("pm", "pm0"));
        assert!(is_sliver_link("pm", "pm123"));
        assert!(!is_sliver_link("pm", "pm"));
        assert!(!is_sliver_link("pm", "pmifb0"));
        assert!(!is_sliver_link("pm", "pm1a"));
        assert!(!is_sliver_link("pm", "eth0"));
        assert!(is_sliver_class(TcHandle {
            major: 1,
            minor: 0x10
        }));
        assert!(!is_sliver_class(TcHandle {
            major: 1,
            minor: 0x0f
        }));
        assert!(!is_sliver_class(ROOT_CLASS));
        assert!(!is_sliver_class(TcHandle {
            major: 2,
            minor: 0x10
        }));
    }

    #[test]
    fn a_dir_holding_only_its_upper_dir_was_kept() {
        let d = Path::new("/state/slivers/s1");
        assert!(is_kept_dir(d, |_| false));
        assert!(is_kept_dir(d, |p| p.ends_with("upper")));
        for entry in ["work", "rootfs", "authorized_keys", "sliver.json"] {
            assert!(!is_kept_dir(d, |p| p.ends_with(entry)), "{entry}");
        }
        // Whatever destroying with the upper dir kept removes marks a dir not kept (but the
        // lower dir, always made along with `rootfs`, which does).
        for gone in removed_keeping_upper(&dirs()) {
            let name = gone.file_name().unwrap().to_owned();
            if name != "lower" {
                assert!(!is_kept_dir(d, |p| p.ends_with(&name)), "{name:?}");
            }
        }
    }

    #[test]
    fn orphans_resolve_inside_their_scope_only() {
        let s = scope();
        assert_eq!(orphan_cgroup(&s, "s1"), "planetmesh/s1");
        assert_eq!(
            orphan_dirs(&s, Path::new("/state/slivers/s1")).map(|d| d.root),
            Some("/state/slivers/s1".into())
        );
        assert_eq!(orphan_dirs(&s, Path::new("/elsewhere/s1")), None);
        assert_eq!(orphan_dirs(&s, Path::new("/state/slivers/s1/upper")), None);
        assert_eq!(orphan_dirs(&s, Path::new("/")), None);
    }

    #[test]
    fn stat_is_read_after_the_last_parenthesis() {
        let line = |name: &str, state: &str| {
            format!(
                "4242 ({name}) {state} 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                 987654 12345678 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0\n"
            )
        };
        assert_eq!(parse_stat(&line("sliver-init", "S")), Some((987654, false)));
        assert_eq!(parse_stat(&line("a) Z (b", "S")), Some((987654, false)));
        assert_eq!(parse_stat(&line("init", "Z")), Some((987654, true)));
        assert_eq!(parse_stat(&line("init", "X")), Some((987654, true)));
        assert_eq!(parse_stat("4242 (init) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x)"), None);
    }

    #[test]
    fn an_init_gets_its_id_maps_then_joins_each_hierarchy_of_its_cgroup_once() {
        use crate::sliver::alloc::UidRange;
        use crate::sliver::cgroup::Cgroups;
        let uids = UidRange {
            host_base: 100_000,
            count: 65_536,
        };
        let v1 = Cgroups::V1 {
            cpu: "/sys/fs/cgroup/cpu,cpuacct".into(),
            cpuacct: Some("/sys/fs/cgroup/cpu,cpuacct".into()),
            memory: "/sys/fs/cgroup/memory".into(),
            pids: None,
            freezer: Some("/sys/fs/cgroup/freezer".into()),
        };
        let id_map = |file: &str| InitWrite::IdMap {
            path: format!("/fakeproc/4242/{file}").into(),
            line: "0 100000 65536\n".into(),
        };
        let procs = |root: &str| InitWrite::Cgroup {
            path: format!("{root}/planetmesh/s1/cgroup.procs").into(),
            pid: "4242".into(),
        };
        assert_eq!(
            init_writes(Path::new("/fakeproc"), 4242, &uids, &v1, "planetmesh/s1"),
            [
                id_map("uid_map"),
                id_map("gid_map"),
                procs("/sys/fs/cgroup/cpu,cpuacct"),
                procs("/sys/fs/cgroup/memory"),
                procs("/sys/fs/cgroup/freezer"),
            ]
        );
        let v2 = Cgroups::V2 {
            root: "/sys/fs/cgroup".into(),
        };
        assert_eq!(
            init_writes(Path::new("/fakeproc"), 4242, &uids, &v2, "planetmesh/s1"),
            [
                id_map("uid_map"),
                id_map("gid_map"),
                procs("/sys/fs/cgroup"),
            ]
        );
    }

    #[test]
    fn every_entry_of_the_slivers_dir_is_a_trace_but_a_kept_dir() {
        use crate::sliver::host::Orphan;
        let entries: Vec<PathBuf> = ["kept", "half-made", "whole", "empty"]
            .iter()
            .map(|n| Path::new("/state/slivers").join(n))
            .collect();
        let exists = |p: &Path| {
            [
                "/state/slivers/kept/upper",
                "/state/slivers/half-made/work",
                "/state/slivers/whole/rootfs",
                "/state/slivers/whole/authorized_keys",
            ]
            .iter()
            .any(|e| p == Path::new(e))
        };
        // `kept` holds only its upper dir, `empty` nothing: neither is a trace.
        assert_eq!(
            dir_traces(entries, exists),
            [
                Orphan::Dir("/state/slivers/half-made".into()),
                Orphan::Dir("/state/slivers/whole".into()),
            ]
        );
        assert!(dir_traces(Vec::new(), |_| true).is_empty());
    }

    #[test]
    fn an_init_is_ready_or_says_why_not_and_a_silent_one_blames_the_failed_send() {
        use crate::sliver::host::HostError;
        let broken = || Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(init_outcome("ready".into(), Ok(())).is_ok());
        assert!(init_outcome("ready".into(), broken()).is_ok());
        let err = init_outcome(String::new(), broken()).unwrap_err();
        assert!(
            matches!(&err, HostError::Io { op: "send plan", source, .. }
                if source.kind() == std::io::ErrorKind::BrokenPipe),
            "{err}"
        );
        let err = init_outcome(String::new(), Ok(())).unwrap_err();
        assert!(
            matches!(&err, HostError::Init(m) if m == "init exited without a word"),
            "{err}"
        );
        let err = init_outcome("mount /proc: EPERM".into(), broken()).unwrap_err();
        assert!(
            matches!(&err, HostError::Init(m) if m == "mount /proc: EPERM"),
            "{err}"
        );
    }

    #[test]
    fn only_the_init_that_started_then_is_the_same_and_a_zombie_is_not_alive() {
        assert!(is_same_init(Some((7, false)), 7));
        assert!(is_same_init(Some((7, true)), 7));
        assert!(!is_same_init(Some((8, false)), 7));
        assert!(!is_same_init(None, 7));
        assert!(is_live_init(Some((7, false)), 7));
        assert!(!is_live_init(Some((7, true)), 7));
        assert!(!is_live_init(Some((8, false)), 7));
        assert!(!is_live_init(None, 7));
    }

    #[test]
    fn disk_is_measured_by_what_backs_the_layer() {
        use crate::sliver::host::DiskTarget;
        use crate::sliver::rootfs::DiskBacking;
        let target = |backing| DiskTarget {
            dirs: dirs(),
            backing,
            init_pid: 4242,
            cgroup: "planetmesh/s1".into(),
            limit: 1 << 30,
        };
        let proc_root = Path::new("/fakeproc");
        assert_eq!(
            disk_measure(proc_root, &target(DiskBacking::Directory)),
            DiskMeasure::Walk {
                upper: "/state/slivers/s1/upper".into(),
                work: "/state/slivers/s1/work".into(),
                cgroup: "planetmesh/s1".into(),
            }
        );
        assert_eq!(
            disk_measure(proc_root, &target(DiskBacking::Quota)),
            DiskMeasure::Quota {
                root: "/state/slivers/s1".into(),
                limit: 1 << 30,
            }
        );
        assert_eq!(
            disk_measure(proc_root, &target(DiskBacking::Tmpfs)),
            DiskMeasure::Statvfs {
                root: "/fakeproc/4242/root/".into(),
            }
        );
        assert_eq!(fs_used(1000, 250, 4096), 750 * 4096);
        assert_eq!(fs_used(1000, 1000, 4096), 0);
        // A free count above the total (a racing filesystem) is nothing used, not a wrap.
        assert_eq!(fs_used(10, 11, 4096), 0);
        assert_eq!(fs_used(u64::MAX, 0, 4096), u64::MAX);
    }
}
