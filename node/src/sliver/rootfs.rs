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
//!   lacks), so the node's disk watchdog measures it and freezes a sliver found over its grant
//!   until it is back under (see [`super::Slivers::check_disk`]). What is measured is what the
//!   sliver costs the host: every inode of its upper and work dirs, at its allocated blocks
//!   plus [`INODE_CHARGE`] ([`disk_usage`], a walk relative to directory fds with no path
//!   length limit and bounded memory), and files its processes deleted but keep open
//!   ([`deleted_open_usage`]). A walk that cannot complete is an error, which the watchdog
//!   counts as over the grant.
//! - [`DiskBacking::Quota`]: the sliver's dir is a btrfs subvolume on a filesystem the node
//!   keeps in a sparse image under its state dir, and the kernel caps the subvolume's quota
//!   group at the grant: writes past it fail with `EDQUOT` at once, the data stays on disk,
//!   deleted-but-open files and metadata count (see [`super::quota`]).
//! - [`DiskBacking::Tmpfs`]: the init mounts a tmpfs of exactly the granted size over the
//!   upper dir, inside the sliver's own mount namespace, and puts the overlay's upper and work
//!   dirs in it. Writes past the grant fail with `ENOSPC` at once; the filesystem needs no
//!   cleanup (it goes with the namespace, so nothing is ever mounted on the host). The price:
//!   its pages are memory, charged to the sliver's memory cgroup (disk and memory share the
//!   memory limit), and its content does not outlive the sliver (a kept upper dir stays empty).

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
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
    /// A btrfs subvolume whose quota group the kernel caps at the grant, on the node's own
    /// loop-mounted filesystem (see [`super::quota`]).
    Quota,
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

    /// What the sliver is told about where it is ([`super::about`]), bound read-only at
    /// [`super::about::PATH_IN_SLIVER`]. Derived from the root, not a field, so the records of
    /// slivers made before it still load.
    pub fn about(&self) -> PathBuf {
        self.root.join(super::about::FILE_NAME)
    }
}

/// Directories made in each upper dir, owned by the sliver's root, so that root in the sliver
/// owns them although the image's copies belong to the host (mode, path).
pub const UPPER_OWNED_DIRS: &[(u32, &str)] = &[
    (0o755, "etc"),
    (0o755, "etc/planetmesh"),
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
    steps.push(MountStep::Bind {
        source: dirs.about(),
        target: at(super::about::PATH_IN_SLIVER),
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

/// Bytes charged for every inode on top of its allocated blocks: the size of an ext4 inode,
/// so that a file without data, or a directory, costs the sliver what it costs the host's
/// inode table (30,000 empty files: about 7.3 MiB, not nothing).
pub const INODE_CHARGE: u64 = 256;
/// Deepest directory nesting [`disk_usage`] follows; a deeper tree fails the measurement
/// (which the disk watchdog counts as over the grant).
pub const MAX_WALK_DEPTH: usize = 1 << 14;
/// Most directory entries one [`disk_usage`] reads (re-reads included); past it the
/// measurement fails. Bounds the time of a walk whatever the layout.
pub const MAX_WALK_ENTRIES: u64 = 1 << 26;
/// Hard-linked inodes a walk remembers so each counts once; links to further ones count once
/// per link (more, never less).
const MAX_REMEMBERED_LINKS: usize = 1 << 18;
/// Size of the buffer directory entries are read into.
const DIRENT_BUF: usize = 4096;

/// What one inode costs: its allocated blocks (data, directory blocks, extent and xattr
/// blocks, as `st_blocks` counts them) plus [`INODE_CHARGE`].
fn footprint(st: &libc::stat) -> u64 {
    u64::try_from(st.st_blocks)
        .unwrap_or(0)
        .saturating_mul(512)
        .saturating_add(INODE_CHARGE)
}

fn errno_at(op: &str, depth: usize, name: &std::ffi::CStr, e: nix::Error) -> io::Error {
    io::Error::new(
        io::Error::from(e).kind(),
        format!("{op} {name:?} at depth {depth}: {e}"),
    )
}

/// One directory the walk will come back to: its identity (checked when it is reopened
/// through `..` from its child) and where reading it goes on.
#[derive(Debug, Clone, Copy)]
struct Frame {
    dev: u64,
    ino: u64,
    resume: i64,
}

/// Reads directory entries of `fd` into `buf` (the raw `getdents64` layout).
fn getdents(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call and `fd` is an
    // open file descriptor; the kernel writes at most `buf.len()` bytes.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

/// One entry of a `getdents64` buffer: (next offset, record length, name).
fn dirent(buf: &[u8], at: usize) -> io::Result<(i64, usize, &std::ffi::CStr)> {
    let bad = || io::Error::other("malformed directory entry");
    let head = buf.get(at..at + 19).ok_or_else(bad)?;
    let off = i64::from_ne_bytes(head[8..16].try_into().map_err(|_| bad())?);
    let reclen = usize::from(u16::from_ne_bytes(
        head[16..18].try_into().map_err(|_| bad())?,
    ));
    if reclen < 20 {
        return Err(bad());
    }
    let name = buf.get(at + 19..at + reclen).ok_or_else(bad)?;
    let name = std::ffi::CStr::from_bytes_until_nul(name).map_err(|_| bad())?;
    Ok((off, reclen, name))
}

/// The walk's running totals, shared by the trees it measures.
#[derive(Debug, Default)]
struct Tally {
    bytes: u64,
    inodes: u64,
    entries: u64,
    linked: std::collections::HashSet<(u64, u64)>,
}

impl Tally {
    fn add(&mut self, st: &libc::stat) {
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if !is_dir && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if self.linked.contains(&key) {
                return;
            }
            if self.linked.len() < MAX_REMEMBERED_LINKS {
                self.linked.insert(key);
            }
        }
        self.bytes = self.bytes.saturating_add(footprint(st));
        self.inodes += 1;
    }

    /// Walks the tree at `dir` depth first, relative to directory fds: no path is ever built
    /// (so no `PATH_MAX` limit), no symlink is followed, one directory is open at a time (a
    /// parent is reopened through `..` and checked to be the same inode), and the stack holds
    /// 24 bytes per level up to [`MAX_WALK_DEPTH`].
    fn tree(&mut self, dir: &Path) -> io::Result<()> {
        use nix::fcntl::{AtFlags, OFlag, openat};
        use nix::sys::stat::{Mode, fstat, fstatat};
        let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut cur = nix::fcntl::open(dir, dir_flags, Mode::empty()).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("open {}: {e}", dir.display()),
            )
        })?;
        let root = fstat(&cur).map_err(io::Error::from)?;
        self.add(&root);
        let dev = root.st_dev;
        let mut stack: Vec<Frame> = Vec::new();
        let mut buf = vec![0u8; DIRENT_BUF];
        'dirs: loop {
            let depth = stack.len();
            let n = getdents(cur.as_fd(), &mut buf)
                .map_err(|e| io::Error::new(e.kind(), format!("read dir at depth {depth}: {e}")))?;
            if n == 0 {
                // Done with this directory: back to its parent, where reading goes on.
                let Some(frame) = stack.pop() else {
                    return Ok(());
                };
                let parent = openat(&cur, c"..", dir_flags, Mode::empty())
                    .map_err(|e| errno_at("open", depth, c"..", e))?;
                let st = fstat(&parent).map_err(io::Error::from)?;
                if (st.st_dev, st.st_ino) != (frame.dev, frame.ino) {
                    return Err(io::Error::other(format!(
                        "a directory moved while it was measured (depth {depth})"
                    )));
                }
                nix::unistd::lseek(&parent, frame.resume, nix::unistd::Whence::SeekSet)
                    .map_err(|e| errno_at("seek", depth - 1, c"..", e))?;
                cur = parent;
                continue;
            }
            let mut at = 0;
            while at < n {
                let (next, reclen, name) = dirent(&buf[..n], at)?;
                at += reclen;
                self.entries += 1;
                if self.entries > MAX_WALK_ENTRIES {
                    return Err(io::Error::other(format!(
                        "more than {MAX_WALK_ENTRIES} directory entries"
                    )));
                }
                if name == c"." || name == c".." {
                    continue;
                }
                let st = match fstatat(&cur, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    // Deleted since it was listed.
                    Err(nix::Error::ENOENT) => continue,
                    Err(e) => return Err(errno_at("stat", depth, name, e)),
                };
                self.add(&st);
                if st.st_mode & libc::S_IFMT != libc::S_IFDIR || st.st_dev != dev {
                    continue;
                }
                if depth + 1 > MAX_WALK_DEPTH {
                    return Err(io::Error::other(format!(
                        "directories nested deeper than {MAX_WALK_DEPTH}"
                    )));
                }
                let child = match openat(&cur, name, dir_flags, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(nix::Error::ENOENT) => continue,
                    Err(e) => return Err(errno_at("open", depth, name, e)),
                };
                let cst = fstat(&child).map_err(io::Error::from)?;
                if (cst.st_dev, cst.st_ino) != (st.st_dev, st.st_ino) {
                    return Err(io::Error::other(format!(
                        "{name:?} at depth {depth} was replaced while it was measured"
                    )));
                }
                let here = fstat(&cur).map_err(io::Error::from)?;
                // The rest of this buffer is read again on the way back (from `next`, the
                // offset after this entry): one buffer of memory for any depth.
                stack.push(Frame {
                    dev: here.st_dev,
                    ino: here.st_ino,
                    resume: next,
                });
                cur = child;
                continue 'dirs;
            }
        }
    }
}

/// What a directory tree costs the host: every inode's allocated blocks (`st_blocks`,
/// directories and hard-linked files once) plus [`INODE_CHARGE`] per inode. The walk never
/// builds a path, follows no symlink, stays on the tree's filesystem and holds bounded memory
/// (see [`MAX_WALK_DEPTH`], [`MAX_WALK_ENTRIES`]). Any error fails the whole measurement
/// (entries deleted while it runs are skipped): the caller must count a failure as over.
pub fn disk_usage(dir: &Path) -> io::Result<u64> {
    let mut tally = Tally::default();
    tally.tree(dir)?;
    Ok(tally.bytes)
}

/// Bytes held by files that processes `pids` keep open or mapped after every name of theirs
/// was deleted (`st_nlink == 0`), on the filesystem of device `dev` (the upper dir's) or on an
/// overlay (the sliver's root: its files report the overlay's device or a per-layer one):
/// allocated blocks plus [`INODE_CHARGE`] each, each inode once. Each file is reached through
/// `/proc/<pid>/fd/<n>` and `/proc/<pid>/map_files/<range>` (magic links to the open file
/// itself, which no tenant can redirect; stat opens nothing). A process that exits, or a
/// descriptor closed, while it runs is skipped; any other error fails the measurement.
pub fn deleted_open_usage(proc_root: &Path, pids: &[u32], dev: u64) -> io::Result<u64> {
    use nix::fcntl::{AtFlags, OFlag, openat};
    use nix::sys::stat::{Mode, fstatat};
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let gone = |e: nix::Error| matches!(e, nix::Error::ENOENT | nix::Error::ESRCH);
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; DIRENT_BUF];
    for pid in pids {
        let proc_dir = proc_root.join(pid.to_string());
        let process = match nix::fcntl::open(&proc_dir, dir_flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if gone(e) => continue,
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("open {}: {e}", proc_dir.display()),
                ));
            }
        };
        for table in [c"fd", c"map_files"] {
            let dir = match openat(&process, table, dir_flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(e) if gone(e) => continue,
                Err(e) => return Err(errno_at("open", 0, table, e)),
            };
            loop {
                let n = match getdents(dir.as_fd(), &mut buf) {
                    Ok(n) => n,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => 0,
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    break;
                }
                let mut at = 0;
                while at < n {
                    let (_, reclen, name) = dirent(&buf[..n], at)?;
                    at += reclen;
                    if name == c"." || name == c".." {
                        continue;
                    }
                    // Follows the magic link to the open file (stat opens nothing, so a FIFO
                    // or a device cannot block or act).
                    let st = match fstatat(&dir, name, AtFlags::empty()) {
                        Ok(st) => st,
                        Err(e) if gone(e) => continue,
                        Err(e) => return Err(errno_at("stat", 0, name, e)),
                    };
                    if st.st_nlink != 0 || seen.contains(&(st.st_dev, st.st_ino)) {
                        continue;
                    }
                    let ours = st.st_dev == dev || {
                        match fstatfs_at(&dir, name) {
                            Ok(magic) => magic == libc::OVERLAYFS_SUPER_MAGIC,
                            Err(e)
                                if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) =>
                            {
                                false
                            }
                            Err(e) => return Err(e),
                        }
                    };
                    if ours {
                        seen.insert((st.st_dev, st.st_ino));
                        total = total.saturating_add(footprint(&st));
                    }
                }
            }
        }
    }
    Ok(total)
}

/// The filesystem type of what `name` in `dir` (a `/proc/<pid>/fd`-like directory) leads to,
/// through an `O_PATH` descriptor (nothing is opened for real).
fn fstatfs_at(dir: &OwnedFd, name: &std::ffi::CStr) -> io::Result<libc::c_long> {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::Mode;
    let fd = openat(dir, name, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(io::Error::from)?;
    let st = nix::sys::statfs::fstatfs(&fd).map_err(io::Error::from)?;
    Ok(st.filesystem_type().0 as libc::c_long)
}

/// The processes of a cgroup and of every cgroup below it, given its directory in each
/// hierarchy (`cgroup.procs`, union). A directory that does not exist is an error: the caller
/// measures a live sliver.
pub fn cgroup_pids(dirs: &[PathBuf]) -> io::Result<Vec<u32>> {
    let mut pids = std::collections::BTreeSet::new();
    let mut todo: Vec<(PathBuf, usize)> = dirs.iter().map(|d| (d.clone(), 0)).collect();
    while let Some((dir, depth)) = todo.pop() {
        let procs = dir.join("cgroup.procs");
        let text = match fs::read_to_string(&procs) {
            Ok(text) => text,
            // A child cgroup removed while it was listed.
            Err(e) if depth > 0 && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("read {}: {e}", procs.display()),
                ));
            }
        };
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
        if depth >= 64 {
            return Err(io::Error::other(format!(
                "cgroups nested deeper than 64 under {}",
                dir.display()
            )));
        }
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                todo.push((entry.path(), depth + 1));
            }
        }
    }
    Ok(pids.into_iter().collect())
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
        assert!(steps.contains(&MountStep::Bind {
            source: "/state/slivers/s1/sliver.json".into(),
            target: "/state/slivers/s1/rootfs/etc/planetmesh/sliver.json".into(),
            readonly: true,
            file: true
        }));
        assert!(UPPER_OWNED_DIRS.contains(&(0o755, "etc/planetmesh")));
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

    /// What `paths` cost by the walk's rule, read with the standard library.
    fn expected(paths: &[PathBuf]) -> u64 {
        use std::os::unix::fs::MetadataExt;
        paths
            .iter()
            .map(|p| p.symlink_metadata().unwrap().blocks() * 512 + INODE_CHARGE)
            .sum()
    }

    #[test]
    fn disk_usage_counts_allocated_blocks_and_every_inode() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("a")).unwrap();
        fs::write(d.path().join("a/f"), vec![1u8; 10_000]).unwrap();
        // A sparse file costs its allocated blocks, not its length.
        let sparse = fs::File::create(d.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        fs::hard_link(d.path().join("a/f"), d.path().join("link")).unwrap();
        symlink("a/f", d.path().join("sym")).unwrap();
        let paths: Vec<PathBuf> = ["", "a", "a/f", "sparse", "sym"]
            .iter()
            .map(|p| d.path().join(p))
            .collect();
        let used = disk_usage(d.path()).unwrap();
        assert_eq!(used, expected(&paths), "hard link counted once");
        assert!((10_000..1 << 20).contains(&used), "{used}");
        let missing = disk_usage(&d.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn many_empty_files_cost_their_inodes_and_directory_blocks() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("many");
        fs::create_dir(&dir).unwrap();
        for i in 0..30_000 {
            fs::File::create(dir.join(format!("file-{i:05}"))).unwrap();
        }
        let used = disk_usage(d.path()).unwrap();
        let dir_blocks = expected(std::slice::from_ref(&dir)) - INODE_CHARGE;
        eprintln!("30,000 empty files: {used} bytes ({dir_blocks} in directory blocks)");
        assert!(used >= 30_002 * INODE_CHARGE + dir_blocks, "{used}");
        assert_eq!(
            used,
            30_000 * INODE_CHARGE + expected(&[d.path().into(), dir])
        );
    }

    /// Makes a chain of `depth` directories named `d` under `root` (relative to fds: the full
    /// path is longer than `PATH_MAX`).
    fn make_chain(root: &Path, depth: usize) {
        use nix::fcntl::{OFlag, open, openat};
        use nix::sys::stat::{Mode, mkdirat};
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut cur = open(root, flags, Mode::empty()).unwrap();
        for _ in 0..depth {
            mkdirat(&cur, "d", Mode::from_bits_truncate(0o755)).unwrap();
            cur = openat(&cur, "d", flags, Mode::empty()).unwrap();
        }
        let file = openat(
            &cur,
            "bottom",
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        nix::unistd::write(&file, &[7u8; 5000]).unwrap();
    }

    /// Removes what [`make_chain`] made (the standard library's removal holds one fd per
    /// level).
    fn remove_chain(root: &Path, depth: usize) {
        use nix::fcntl::{OFlag, open, openat};
        use nix::sys::stat::Mode;
        use nix::unistd::{UnlinkatFlags, unlinkat};
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut cur = open(root, flags, Mode::empty()).unwrap();
        for _ in 0..depth {
            cur = openat(&cur, "d", flags, Mode::empty()).unwrap();
        }
        unlinkat(&cur, "bottom", UnlinkatFlags::NoRemoveDir).unwrap();
        for _ in 0..depth {
            cur = openat(&cur, "..", flags, Mode::empty()).unwrap();
            unlinkat(&cur, "d", UnlinkatFlags::RemoveDir).unwrap();
        }
    }

    #[test]
    fn a_chain_longer_than_path_max_is_measured_and_one_past_the_cap_fails() {
        let d = tempfile::tempdir().unwrap();
        let depth = 3000; // 6000 bytes of path, PATH_MAX is 4096
        make_chain(d.path(), depth);
        let used = disk_usage(d.path());
        remove_chain(d.path(), depth);
        let used = used.expect("a deep chain is measured");
        let dir = expected(&[d.path().into()]);
        assert!(
            used >= (depth as u64 + 2) * INODE_CHARGE + 5000 && used > dir * depth as u64,
            "{used}"
        );

        let deep = tempfile::tempdir().unwrap();
        make_chain(deep.path(), MAX_WALK_DEPTH + 1);
        let result = disk_usage(deep.path());
        remove_chain(deep.path(), MAX_WALK_DEPTH + 1);
        let err = result.expect_err("deeper than the cap fails");
        assert!(err.to_string().contains("nested deeper"), "{err}");
    }

    #[test]
    fn symlink_loops_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("a")).unwrap();
        symlink(".", d.path().join("here")).unwrap();
        symlink("..", d.path().join("a/up")).unwrap();
        symlink("self", d.path().join("self")).unwrap();
        symlink("/", d.path().join("a/root")).unwrap();
        let paths: Vec<PathBuf> = ["", "a", "here", "a/up", "self", "a/root"]
            .iter()
            .map(|p| d.path().join(p))
            .collect();
        assert_eq!(disk_usage(d.path()).unwrap(), expected(&paths));
        // A symlink given as the tree itself is refused, not followed.
        assert!(disk_usage(&d.path().join("here")).is_err());
    }

    #[test]
    fn an_unreadable_directory_fails_the_measurement() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(d.path().join("open/locked/inner")).unwrap();
        fs::write(d.path().join("open/locked/inner/big"), vec![1u8; 100_000]).unwrap();
        fs::set_permissions(
            d.path().join("open/locked"),
            fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        let path = d.path().to_path_buf();
        // Root reads anything: measure with the file system ids (and so the permission checks)
        // of an unprivileged user, on a thread of its own (the ids are per thread).
        let result = std::thread::spawn(move || {
            let root = nix::unistd::geteuid().is_root();
            if root {
                nix::unistd::setfsuid(nix::unistd::Uid::from_raw(65534));
                nix::unistd::setfsgid(nix::unistd::Gid::from_raw(65534));
            }
            let result = disk_usage(&path);
            if root {
                nix::unistd::setfsuid(nix::unistd::Uid::from_raw(0));
                nix::unistd::setfsgid(nix::unistd::Gid::from_raw(0));
            }
            result
        })
        .join()
        .unwrap();
        fs::set_permissions(
            d.path().join("open/locked"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let err = result.expect_err("an unreadable directory is a failure, not zero");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert!(err.to_string().contains("locked"), "{err}");
    }

    #[test]
    fn deleted_files_held_open_are_counted_once_and_others_not() {
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;
        use std::process::{Command, Stdio};
        if !nix::unistd::geteuid().is_root() {
            // Following /proc/<pid>/map_files links needs CAP_CHECKPOINT_RESTORE.
            eprintln!("skipping: not root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().metadata().unwrap().dev();
        let mut held = fs::File::create(d.path().join("held")).unwrap();
        held.write_all(&vec![1u8; 3 << 20]).unwrap();
        held.sync_all().unwrap();
        let blocks = held.metadata().unwrap().blocks() * 512;
        let kept = fs::File::create(d.path().join("kept")).unwrap();
        kept.set_len(1 << 20).unwrap();
        // An anonymous memory file: on another filesystem, not the layer's.
        let memfd =
            nix::sys::memfd::memfd_create(c"pm-test", nix::sys::memfd::MFdFlags::empty()).unwrap();
        nix::unistd::write(&memfd, &[1u8; 4096]).unwrap();
        // Two processes hold the file (one also the linked file and the memory file).
        let mut one = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::from(held.try_clone().unwrap()))
            .stdout(Stdio::from(kept))
            .stderr(Stdio::from(fs::File::from(memfd)))
            .spawn()
            .unwrap();
        let mut two = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::from(held))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pids = [one.id(), two.id()];
        let proc_root = Path::new("/proc");
        let linked = deleted_open_usage(proc_root, &pids, dev);
        fs::remove_file(d.path().join("held")).unwrap();
        let deleted = deleted_open_usage(proc_root, &pids, dev);
        let _ = (one.kill(), two.kill(), one.wait(), two.wait());
        let gone = deleted_open_usage(proc_root, &pids, dev);
        assert_eq!(linked.unwrap(), 0, "files with a name are not counted here");
        assert_eq!(
            deleted.unwrap(),
            blocks + INODE_CHARGE,
            "one deleted file held by two processes counts once; the others not at all"
        );
        assert_eq!(gone.unwrap(), 0, "processes that exited are skipped");
    }

    #[test]
    fn cgroup_pids_include_child_cgroups_and_a_missing_cgroup_fails() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("cg/child")).unwrap();
        fs::write(d.path().join("cg/cgroup.procs"), "10\n11\n").unwrap();
        fs::write(d.path().join("cg/child/cgroup.procs"), "12\n10\n").unwrap();
        assert_eq!(
            cgroup_pids(&[d.path().join("cg")]).unwrap(),
            vec![10, 11, 12]
        );
        assert!(cgroup_pids(&[d.path().join("gone")]).is_err());
    }
}
