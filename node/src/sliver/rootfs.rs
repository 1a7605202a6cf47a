//! A sliver's root filesystem: reference images, per-sliver dirs, and the mount plan.
//!
//! The root is an overlay: a read-only reference image below, the sliver's own upper dir
//! above (the copy-on-write the paper wished for, §3.1.3). The default image,
//! [`Image::HostSystem`], needs no download: a small skeleton made once per node (top-level
//! dirs, the host's merged-`/usr` symlinks, a few `/etc` files) with the host's system
//! directories (`/usr`, …) bound read-only on top. An operator may instead name any directory
//! tree ([`Image::Directory`]). [`mount_plan`] is a pure function from these to the steps the
//! sliver's init performs, so the layout is unit-tested without root.
//!
//! Disk: a sliver's footprint is its writable layer. What backs it ([`DiskBacking`]) is a
//! node setting:
//! - [`DiskBacking::Directory`] (the default): the upper dir on the state dir's filesystem.
//!   The kernel cannot cap it (that would need project quotas, which this node's filesystem
//!   lacks), so the node's disk watchdog measures it ([`disk_usage`]) and freezes a sliver
//!   found over its grant until it is back under (see [`super::Slivers::check_disk`]).
//! - [`DiskBacking::Tmpfs`]: the init mounts a tmpfs of exactly the granted size over the
//!   upper dir, inside the sliver's own mount namespace, and puts the overlay's upper and work
//!   dirs in it. Writes past the grant fail with `ENOSPC` at once; the filesystem needs no
//!   cleanup (it goes with the namespace, so nothing is ever mounted on the host). The price:
//!   its pages are memory, charged to the sliver's memory cgroup (disk and memory share the
//!   memory limit), and its content does not outlive the sliver (a kept upper dir stays empty).

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::init::MountStep;

/// A reference image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Image {
    /// A skeleton directory plus the host's system directories bound read-only.
    HostSystem {
        /// The skeleton (made by [`make_skeleton`]).
        skeleton: PathBuf,
        /// Host directories bound read-only at the same path inside (e.g. `/usr`).
        binds: Vec<PathBuf>,
    },
    /// Any directory tree, used as the overlay's lower layer as is.
    Directory(PathBuf),
}

impl Image {
    /// The overlay's lower layer.
    pub fn lower(&self) -> &Path {
        match self {
            Image::HostSystem { skeleton, .. } => skeleton,
            Image::Directory(dir) => dir,
        }
    }
}

/// What backs a sliver's writable layer (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskBacking {
    /// A directory on the state dir's filesystem, capped by the disk watchdog.
    #[default]
    Directory,
    /// A tmpfs of the granted size in the sliver's mount namespace, capped by the kernel.
    Tmpfs,
}

/// The host-side directories of one sliver, under the node's state dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliverDirs {
    /// `<state>/slivers/<id>`.
    pub root: PathBuf,
    /// The overlay's upper dir: everything the sliver writes.
    pub upper: PathBuf,
    /// The overlay's work dir.
    pub work: PathBuf,
    /// Where the id-mapped image is attached (inside the sliver's mount namespace only).
    pub lower: PathBuf,
    /// The mount point of the merged root (inside the sliver's mount namespace only).
    pub rootfs: PathBuf,
    /// The sliver's SSH authorized keys, bound read-only at `/root/.ssh/authorized_keys`.
    pub keys: PathBuf,
}

impl SliverDirs {
    /// The dirs of sliver `id` under `state_dir`.
    pub fn new(state_dir: &Path, id: &str) -> Self {
        let root = state_dir.join("slivers").join(id);
        SliverDirs {
            upper: root.join("upper"),
            work: root.join("work"),
            lower: root.join("lower"),
            rootfs: root.join("rootfs"),
            keys: root.join("authorized_keys"),
            root,
        }
    }
}

/// Directories made in each upper dir, owned by the sliver's root, so that root in the sliver
/// owns them although the image's copies belong to the host (mode, path).
pub const UPPER_OWNED_DIRS: &[(u32, &str)] = &[
    (0o755, "etc"),
    (0o700, "root"),
    (0o700, "root/.ssh"),
    (0o755, "home"),
    (0o755, "var"),
    (0o1777, "var/tmp"),
    (0o755, "opt"),
    (0o755, "srv"),
    (0o755, "mnt"),
    (0o755, "run"),
];

/// Options of the mount plan that come from the node's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// Size cap of the sliver's `/tmp` and `/dev/shm` tmpfs, in bytes.
    pub tmp_bytes: u64,
    /// Bind the host's `/proc` (admin host view) instead of a fresh one.
    pub host_proc: bool,
    /// Back the writable layer with a tmpfs of this many bytes (`None`: the upper dir).
    pub upper_tmpfs_bytes: Option<u64>,
}

/// The steps that build the sliver's root from `image` over `dirs`.
pub fn mount_plan(dirs: &SliverDirs, image: &Image, opts: &PlanOptions) -> Vec<MountStep> {
    let root = &dirs.rootfs;
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let mut steps = vec![
        MountStep::MakePrivate,
        MountStep::IdmappedLayer {
            source: image.lower().to_path_buf(),
            target: dirs.lower.clone(),
        },
    ];
    let (upper, work) = match opts.upper_tmpfs_bytes {
        None => (dirs.upper.clone(), dirs.work.clone()),
        Some(size) => {
            // Upper and work dirs must share a filesystem: both go in the tmpfs.
            let (upper, work) = (dirs.upper.join("layer"), dirs.upper.join("work"));
            steps.push(MountStep::Tmpfs {
                target: dirs.upper.clone(),
                mode: 0o755,
                size,
            });
            let mut made = vec![(upper.clone(), 0o755), (work.clone(), 0o700)];
            made.extend(
                UPPER_OWNED_DIRS
                    .iter()
                    .map(|(mode, dir)| (upper.join(dir), *mode)),
            );
            steps.push(MountStep::Dirs { dirs: made });
            (upper, work)
        }
    };
    steps.push(MountStep::Overlay {
        lower: vec![dirs.lower.clone()],
        upper,
        work,
        target: root.clone(),
    });
    if let Image::HostSystem { binds, .. } = image {
        for dir in binds {
            steps.push(MountStep::Bind {
                source: dir.clone(),
                target: at(&dir.to_string_lossy()),
                readonly: true,
                file: false,
            });
        }
    }
    steps.push(MountStep::Bind {
        source: dirs.keys.clone(),
        target: at("root/.ssh/authorized_keys"),
        readonly: true,
        file: true,
    });
    if opts.host_proc {
        steps.push(MountStep::Bind {
            source: "/proc".into(),
            target: at("proc"),
            readonly: false,
            file: false,
        });
    } else {
        steps.push(MountStep::Proc { target: at("proc") });
    }
    steps.push(MountStep::Sysfs { target: at("sys") });
    steps.push(MountStep::Tmpfs {
        target: at("dev"),
        mode: 0o755,
        size: 1 << 20,
    });
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        steps.push(MountStep::Bind {
            source: Path::new("/dev").join(dev),
            target: at(&format!("dev/{dev}")),
            readonly: false,
            file: true,
        });
    }
    steps.push(MountStep::Devpts {
        target: at("dev/pts"),
    });
    steps.push(MountStep::Symlink {
        path: at("dev/ptmx"),
        to: "pts/ptmx".into(),
    });
    steps.push(MountStep::Tmpfs {
        target: at("dev/shm"),
        mode: 0o1777,
        size: opts.tmp_bytes,
    });
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        steps.push(MountStep::Symlink {
            path: at(&format!("dev/{name}")),
            to: to.into(),
        });
    }
    steps.push(MountStep::Tmpfs {
        target: at("tmp"),
        mode: 0o1777,
        size: opts.tmp_bytes,
    });
    steps.push(MountStep::PivotRoot {
        new_root: root.clone(),
    });
    steps
}

/// Top-level host entries that hold the system's programs and libraries.
const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// Empty top-level dirs of the skeleton.
const SKELETON_DIRS: &[&str] = &[
    "proc", "sys", "dev", "tmp", "root", "home", "etc", "var", "run", "mnt", "opt", "srv", "usr",
];
/// `/etc` entries copied from the host into the skeleton.
const ETC_ENTRIES: &[&str] = &[
    "passwd",
    "group",
    "hosts",
    "nsswitch.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "os-release",
    "profile",
    "bash.bashrc",
    "shells",
    "localtime",
];

/// Makes the host-system skeleton at `skeleton` from the host tree at `host_root` (normally
/// `/`) and returns the image: the host's system dirs that are real directories are bound,
/// the ones that are symlinks (merged `/usr`) are copied as symlinks.
pub fn make_skeleton(skeleton: &Path, host_root: &Path) -> io::Result<Image> {
    fs::create_dir_all(skeleton)?;
    for dir in SKELETON_DIRS {
        fs::create_dir_all(skeleton.join(dir))?;
    }
    let mut binds = Vec::new();
    for name in SYSTEM_DIRS {
        let host = host_root.join(name);
        let Ok(meta) = host.symlink_metadata() else {
            continue;
        };
        let here = skeleton.join(name);
        if meta.file_type().is_symlink() {
            if here.symlink_metadata().is_err() {
                symlink(fs::read_link(&host)?, &here)?;
            }
        } else if meta.is_dir() {
            fs::create_dir_all(&here)?;
            binds.push(Path::new("/").join(name));
        }
    }
    for entry in ETC_ENTRIES {
        copy_tree(
            &host_root.join("etc").join(entry),
            &skeleton.join("etc").join(entry),
            3,
        )?;
    }
    Ok(Image::HostSystem {
        skeleton: skeleton.to_path_buf(),
        binds,
    })
}

/// Copies files, symlinks and (to `depth`) directories; missing sources are skipped.
fn copy_tree(from: &Path, to: &Path, depth: u32) -> io::Result<()> {
    let Ok(meta) = from.symlink_metadata() else {
        return Ok(());
    };
    if to.symlink_metadata().is_ok() {
        return Ok(());
    }
    if meta.file_type().is_symlink() {
        symlink(fs::read_link(from)?, to)
    } else if meta.is_dir() {
        if depth == 0 {
            return Ok(());
        }
        fs::create_dir_all(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()), depth - 1)?;
        }
        Ok(())
    } else if meta.is_file() {
        fs::copy(from, to).map(|_| ())
    } else {
        Ok(())
    }
}

/// Bytes used by a directory tree (apparent sizes of regular files plus 4 KiB per directory);
/// the disk footprint of a sliver is this of its upper dir.
pub fn disk_usage(dir: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        total = total.saturating_add(4096);
        for entry in entries {
            let entry = entry?;
            let meta = entry.path().symlink_metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_overlays_then_pivots() {
        let dirs = SliverDirs::new(Path::new("/state"), "s1");
        let image = Image::HostSystem {
            skeleton: "/state/images/host".into(),
            binds: vec!["/usr".into()],
        };
        let steps = mount_plan(
            &dirs,
            &image,
            &PlanOptions {
                tmp_bytes: 1 << 20,
                host_proc: false,
                upper_tmpfs_bytes: None,
            },
        );
        assert_eq!(steps[0], MountStep::MakePrivate);
        assert_eq!(
            steps[1],
            MountStep::IdmappedLayer {
                source: "/state/images/host".into(),
                target: "/state/slivers/s1/lower".into()
            }
        );
        assert_eq!(
            steps[2],
            MountStep::Overlay {
                lower: vec!["/state/slivers/s1/lower".into()],
                upper: "/state/slivers/s1/upper".into(),
                work: "/state/slivers/s1/work".into(),
                target: "/state/slivers/s1/rootfs".into(),
            }
        );
        assert_eq!(
            steps[3],
            MountStep::Bind {
                source: "/usr".into(),
                target: "/state/slivers/s1/rootfs/usr".into(),
                readonly: true,
                file: false
            }
        );
        assert!(steps.contains(&MountStep::Proc {
            target: "/state/slivers/s1/rootfs/proc".into()
        }));
        assert_eq!(
            steps.last(),
            Some(&MountStep::PivotRoot {
                new_root: "/state/slivers/s1/rootfs".into()
            })
        );
    }

    #[test]
    fn host_view_binds_host_proc() {
        let dirs = SliverDirs::new(Path::new("/state"), "a");
        let steps = mount_plan(
            &dirs,
            &Image::Directory("/img".into()),
            &PlanOptions {
                tmp_bytes: 1,
                host_proc: true,
                upper_tmpfs_bytes: None,
            },
        );
        assert!(
            steps.iter().any(
                |s| matches!(s, MountStep::Bind { source, .. } if source == Path::new("/proc"))
            )
        );
        assert!(!steps.iter().any(|s| matches!(s, MountStep::Proc { .. })));
    }

    #[test]
    fn a_tmpfs_backed_layer_holds_upper_and_work_dirs() {
        let dirs = SliverDirs::new(Path::new("/state"), "t");
        let steps = mount_plan(
            &dirs,
            &Image::Directory("/img".into()),
            &PlanOptions {
                tmp_bytes: 1,
                host_proc: false,
                upper_tmpfs_bytes: Some(5 << 20),
            },
        );
        assert_eq!(
            steps[2],
            MountStep::Tmpfs {
                target: "/state/slivers/t/upper".into(),
                mode: 0o755,
                size: 5 << 20
            }
        );
        let MountStep::Dirs { dirs: made } = &steps[3] else {
            panic!("expected dirs, got {:?}", steps[3]);
        };
        assert_eq!(made[0], ("/state/slivers/t/upper/layer".into(), 0o755));
        assert_eq!(made[1], ("/state/slivers/t/upper/work".into(), 0o700));
        assert!(made.contains(&("/state/slivers/t/upper/layer/var/tmp".into(), 0o1777)));
        assert_eq!(
            steps[4],
            MountStep::Overlay {
                lower: vec!["/state/slivers/t/lower".into()],
                upper: "/state/slivers/t/upper/layer".into(),
                work: "/state/slivers/t/upper/work".into(),
                target: "/state/slivers/t/rootfs".into(),
            }
        );
    }

    #[test]
    fn skeleton_mirrors_merged_usr() {
        let host = tempfile::tempdir().unwrap();
        fs::create_dir_all(host.path().join("usr/bin")).unwrap();
        fs::create_dir_all(host.path().join("lib")).unwrap();
        symlink("usr/bin", host.path().join("bin")).unwrap();
        fs::create_dir_all(host.path().join("etc/alternatives")).unwrap();
        symlink("/usr/bin/mawk", host.path().join("etc/alternatives/awk")).unwrap();
        fs::write(
            host.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n",
        )
        .unwrap();
        fs::write(host.path().join("etc/shadow"), "secret").unwrap();
        let skel = tempfile::tempdir().unwrap();
        let image = make_skeleton(skel.path(), host.path()).unwrap();
        assert_eq!(
            image,
            Image::HostSystem {
                skeleton: skel.path().to_path_buf(),
                binds: vec!["/usr".into(), "/lib".into()]
            }
        );
        assert_eq!(
            fs::read_link(skel.path().join("bin")).unwrap(),
            PathBuf::from("usr/bin")
        );
        assert!(skel.path().join("etc/passwd").is_file());
        assert!(!skel.path().join("etc/shadow").exists());
        assert!(
            skel.path()
                .join("etc/alternatives/awk")
                .symlink_metadata()
                .is_ok()
        );
        assert!(skel.path().join("proc").is_dir());
    }

    #[test]
    fn disk_usage_counts_files_and_dirs() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("a")).unwrap();
        fs::write(d.path().join("a/f"), vec![0u8; 10_000]).unwrap();
        assert_eq!(disk_usage(d.path()).unwrap(), 2 * 4096 + 10_000);
        assert_eq!(disk_usage(&d.path().join("missing")).unwrap(), 0);
    }
}
