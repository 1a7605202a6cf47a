//! Disk grants capped by the kernel at write time ([`super::rootfs::DiskBacking::Quota`]).
//!
//! Project quotas on ext4 would do, but this kernel has no ext4 quota support
//! (`CONFIG_QFMT_V2` is off: a `-O quota,project` filesystem refuses to mount) and its XFS has
//! no quotas either. Its btrfs has quota groups, which cap what a subvolume references; a
//! write past the cap fails with `EDQUOT` at once. So the node keeps its slivers' dirs on a
//! btrfs filesystem of its own, in a sparse image under its state dir:
//!
//! - `disk.img`: the image, of the node's disk capacity (sparse: it takes what is written;
//!   mounted with `discard=async`, so what slivers delete goes back to the host);
//! - `disk/`: where it is loop-mounted (`nosuid,nodev,noatime,commit=5`), the loop device
//!   set to clear itself once unmounted;
//! - `slivers -> disk/slivers` and `trash -> disk/trash`: every sliver dir lives on it, and a
//!   destroyed sliver's dir is still renamed into the trash at once, to be deleted in the
//!   background.
//!
//! [`setup`] makes all this once and re-adopts it at every start (idempotent); [`teardown`]
//! removes it (`nodemgr wipe`). Each capped sliver's dir is a subvolume ([`cap`], before its
//! dirs are made: its upper and work dirs must share it, for the overlay's renames) whose quota
//! group has a hard limit on referenced bytes equal to the grant. The group counts data,
//! the metadata of its inodes and directories (btrfs keeps them in the subvolume's own tree),
//! and deleted files held open (their extents stay until the last close). Not counted: the
//! filesystem's shared bookkeeping of its extents (checksums, extent records: about 100 bytes
//! per extent of at least 4 KiB, so at most 2.5 % of the grant). Creating a subvolume and
//! setting its limit are two ioctls (about 0.1 ms).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// The image file, under the engine's state dir.
pub const IMAGE: &str = "disk.img";
/// Where the image is mounted, under the engine's state dir.
pub const MOUNT: &str = "disk";
/// Smallest image made (btrfs needs about 110 MiB for its own structures).
pub const MIN_IMAGE_BYTES: u64 = 256 << 20;
/// The dirs of the state dir that live on the filesystem (as symlinks into it).
const LINKED: [&str; 2] = ["slivers", "trash"];
/// The inode number of a btrfs subvolume's root directory.
const SUBVOLUME_ROOT_INO: u64 = 256;
/// btrfs's magic number in `statfs`.
const BTRFS_MAGIC: i64 = 0x9123_683e;

mod sys {
    //! The ioctls (`linux/btrfs.h`, `linux/loop.h`).
    #![allow(unreachable_pub)]

    /// `struct btrfs_ioctl_vol_args`.
    #[repr(C)]
    pub struct VolArgs {
        pub fd: i64,
        pub name: [u8; 4088],
    }
    /// `struct btrfs_ioctl_ino_lookup_args`.
    #[repr(C)]
    pub struct InoLookupArgs {
        pub treeid: u64,
        pub objectid: u64,
        pub name: [u8; 4080],
    }
    /// `struct btrfs_ioctl_fs_info_args`.
    #[repr(C)]
    pub struct FsInfoArgs {
        pub max_id: u64,
        pub num_devices: u64,
        pub fsid: [u8; 16],
        pub nodesize: u32,
        pub sectorsize: u32,
        pub clone_alignment: u32,
        pub csum_type: u16,
        pub csum_size: u16,
        pub flags: u64,
        pub generation: u64,
        pub metadata_uuid: [u8; 16],
        pub reserved: [u8; 944],
    }
    /// `struct btrfs_ioctl_quota_ctl_args`.
    #[repr(C)]
    pub struct QuotaCtlArgs {
        pub cmd: u64,
        pub status: u64,
    }
    /// `struct btrfs_ioctl_qgroup_limit_args`.
    #[repr(C)]
    pub struct QgroupLimitArgs {
        pub qgroupid: u64,
        pub flags: u64,
        pub max_rfer: u64,
        pub max_excl: u64,
        pub rsv_rfer: u64,
        pub rsv_excl: u64,
    }
    /// `struct loop_info64`.
    #[repr(C)]
    pub struct LoopInfo64 {
        pub device: u64,
        pub inode: u64,
        pub rdevice: u64,
        pub offset: u64,
        pub sizelimit: u64,
        pub number: u32,
        pub encrypt_type: u32,
        pub encrypt_key_size: u32,
        pub flags: u32,
        pub file_name: [u8; 64],
        pub crypt_name: [u8; 64],
        pub encrypt_key: [u8; 32],
        pub init: [u64; 2],
    }
    /// `struct loop_config`.
    #[repr(C)]
    pub struct LoopConfig {
        pub fd: u32,
        pub block_size: u32,
        pub info: LoopInfo64,
        pub reserved: [u64; 8],
    }
    const _: () = assert!(size_of::<VolArgs>() == 4096);
    const _: () = assert!(size_of::<InoLookupArgs>() == 4096);
    const _: () = assert!(size_of::<FsInfoArgs>() == 1024);
    const _: () = assert!(size_of::<QgroupLimitArgs>() == 48);
    const _: () = assert!(size_of::<LoopInfo64>() == 232);
    const _: () = assert!(size_of::<LoopConfig>() == 304);

    pub const QUOTA_CTL_ENABLE: u64 = 1;
    pub const QGROUP_LIMIT_MAX_RFER: u64 = 1;
    pub const LO_FLAGS_AUTOCLEAR: u32 = 4;

    nix::ioctl_write_ptr!(subvol_create, 0x94, 14, VolArgs);
    nix::ioctl_readwrite!(ino_lookup, 0x94, 18, InoLookupArgs);
    nix::ioctl_read!(fs_info, 0x94, 31, FsInfoArgs);
    nix::ioctl_readwrite!(quota_ctl, 0x94, 40, QuotaCtlArgs);
    // `_IOR` in the header although the kernel only reads the argument.
    nix::ioctl_read!(qgroup_limit, 0x94, 43, QgroupLimitArgs);
    nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
    nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
}

fn ctx(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
    .map_err(ctx(format!("open {}", path.display())))
}

/// Whether this host can cap disk grants in the kernel: loop devices, btrfs and
/// `mkfs.btrfs` (Debian's `btrfs-progs`). `Err` says what is missing.
pub fn available() -> Result<(), String> {
    if !Path::new("/dev/loop-control").exists() {
        return Err("no loop devices (/dev/loop-control)".into());
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.split_whitespace().any(|f| f == "btrfs") {
        return Err("the kernel has no btrfs".into());
    }
    match Command::new("mkfs.btrfs").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("mkfs.btrfs is missing (install btrfs-progs)".into()),
    }
}

/// Whether the filesystem is mounted at `<state_dir>/disk`.
fn mounted(state_dir: &Path) -> io::Result<bool> {
    let mount = state_dir.join(MOUNT);
    let st = match nix::sys::statfs::statfs(&mount) {
        Ok(st) => st,
        Err(nix::Error::ENOENT) => return Ok(false),
        Err(e) => return Err(ctx(format!("statfs {}", mount.display()))(e.into())),
    };
    let here = fs::metadata(&mount)?.dev();
    let parent = fs::metadata(state_dir)?.dev();
    Ok(st.filesystem_type().0 as i64 == BTRFS_MAGIC && here != parent)
}

/// Makes (the first time) or re-adopts (mounting it again after a reboot) the capped
/// filesystem under `state_dir`, of `capacity` bytes (`None`: the state dir's free space),
/// and links the sliver and trash dirs into it. Idempotent. Fails when `<state_dir>/slivers`
/// is a directory holding slivers (directory-backed ones, from before).
pub fn setup(state_dir: &Path, capacity: Option<u64>) -> io::Result<()> {
    available().map_err(io::Error::other)?;
    let image = state_dir.join(IMAGE);
    let mount = state_dir.join(MOUNT);
    for name in LINKED {
        let path = state_dir.join(name);
        if let Ok(meta) = fs::symlink_metadata(&path)
            && meta.is_dir()
            && name == "slivers"
            && fs::read_dir(&path)?.next().is_some()
        {
            return Err(io::Error::other(format!(
                "{} holds slivers whose dirs are not capped by the kernel",
                path.display()
            )));
        }
    }
    fs::create_dir_all(&mount).map_err(ctx(format!("create {}", mount.display())))?;
    if !mounted(state_dir)? {
        if fs::symlink_metadata(&image).is_err() {
            let size = match capacity {
                Some(bytes) => bytes,
                None => {
                    let st = nix::sys::statvfs::statvfs(state_dir).map_err(io::Error::from)?;
                    st.blocks_available().saturating_mul(st.fragment_size())
                }
            };
            make_image(&image, size.max(MIN_IMAGE_BYTES))?;
        }
        attach_and_mount(&image, &mount)?;
    }
    let root = open_dir(&mount)?;
    let mut args = sys::QuotaCtlArgs {
        cmd: sys::QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: `root` is an open directory on the filesystem and `args` a valid
    // `btrfs_ioctl_quota_ctl_args` that outlives the call.
    unsafe { sys::quota_ctl(root.as_raw_fd(), &mut args) }
        .map_err(|e| ctx("enable quota groups")(e.into()))?;
    for name in LINKED {
        let inside = mount.join(name);
        fs::create_dir_all(&inside).map_err(ctx(format!("create {}", inside.display())))?;
        link(&state_dir.join(name), &Path::new(MOUNT).join(name))?;
    }
    Ok(())
}

/// Makes `path` a symlink to `to` (relative), replacing an empty dir or a trash dir.
fn link(path: &Path, to: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if fs::read_link(path)? == to {
                return Ok(());
            }
            fs::remove_file(path)?;
        }
        // Checked by `setup`: an empty sliver dir, or a trash dir (whose content is garbage).
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path)?,
        Ok(_) => fs::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(to, path).map_err(ctx(format!("link {}", path.display())))
}

/// A sparse file of `size` bytes holding a new btrfs filesystem (single copies of data and
/// metadata: the host's disk already is the one copy). Removed again if anything fails.
fn make_image(image: &Path, size: u64) -> io::Result<()> {
    let made = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(image)?;
        file.set_len(size)?;
        drop(file);
        let out = Command::new("mkfs.btrfs")
            .args([
                "-q",
                "-f",
                "-m",
                "single",
                "-d",
                "single",
                "-L",
                "planetmesh",
            ])
            .arg(image)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "mkfs.btrfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    })();
    if made.is_err() {
        let _ = fs::remove_file(image);
    }
    made.map_err(ctx(format!("make {}", image.display())))
}

/// Attaches `image` to a free loop device (cleared by the kernel once nothing uses it) and
/// mounts it at `mount`.
fn attach_and_mount(image: &Path, mount: &Path) -> io::Result<()> {
    let file = OpenOptions::new().read(true).write(true).open(image)?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    let mut tries = 0;
    let (device, path) = loop {
        tries += 1;
        // SAFETY: `control` is the open loop control device; the request takes no argument.
        let n = unsafe { sys::loop_ctl_get_free(control.as_raw_fd()) }
            .map_err(|e| ctx("find a free loop device")(e.into()))?;
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let device = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(d) => d,
            Err(e) if tries < 20 => {
                tracing::debug!("{}: {e}; trying another", path.display());
                continue;
            }
            Err(e) => return Err(ctx(format!("open {}", path.display()))(e)),
        };
        let mut file_name = [0u8; 64];
        let bytes = image.as_os_str().as_encoded_bytes();
        let keep = bytes.len().min(63);
        file_name[..keep].copy_from_slice(&bytes[..keep]);
        let config = sys::LoopConfig {
            fd: u32::try_from(file.as_raw_fd()).unwrap_or(u32::MAX),
            block_size: 0,
            info: sys::LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: sys::LO_FLAGS_AUTOCLEAR,
                file_name,
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: `device` is an open loop device, `config` a valid `struct loop_config` whose
        // `fd` is open for the whole call.
        match unsafe { sys::loop_configure(device.as_raw_fd(), &config) } {
            Ok(_) => break (device, path),
            // Taken by someone else meanwhile.
            Err(nix::Error::EBUSY) if tries < 20 => continue,
            Err(e) => return Err(ctx(format!("attach {}", path.display()))(e.into())),
        }
    };
    nix::mount::mount(
        Some(&path),
        mount,
        Some("btrfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOATIME,
        Some("discard=async,commit=5"),
    )
    .map_err(|e| {
        ctx(format!(
            "mount {} ({}) at {}",
            path.display(),
            image.display(),
            mount.display()
        ))(e.into())
    })?;
    // The mount holds the device now; closing ours lets it clear itself once unmounted (and
    // at once, had the mount failed).
    drop(device);
    Ok(())
}

/// Removes what [`setup`] made: unmounts the filesystem (lazily when something still uses
/// it; the loop device then goes with its last user), removes the links, the mount point and
/// the image. Nothing there is not an error.
pub fn teardown(state_dir: &Path) -> io::Result<()> {
    let mount = state_dir.join(MOUNT);
    if mounted(state_dir)?
        && let Err(e) = nix::mount::umount2(&mount, nix::mount::MntFlags::empty())
    {
        tracing::debug!("unmount {}: {e}; detaching it", mount.display());
        nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| ctx(format!("unmount {}", mount.display()))(e.into()))?;
    }
    for name in LINKED {
        let path = state_dir.join(name);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&path)?;
        }
    }
    match fs::remove_dir(&mount) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(ctx(format!("remove {}", mount.display()))(e));
        }
        _ => {}
    }
    match fs::remove_file(state_dir.join(IMAGE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes `root` (a sliver's dir, on the filesystem) a subvolume whose referenced bytes the
/// kernel caps at `limit`. A dir kept from an earlier sliver of the same id (its upper dir)
/// is one already and gets the new limit; any other existing dir is refused.
pub fn cap(root: &Path, limit: u64) -> io::Result<()> {
    match fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = root
                .parent()
                .ok_or_else(|| io::Error::other("a sliver dir has a parent"))?;
            let name = root
                .file_name()
                .ok_or_else(|| io::Error::other("a sliver dir has a name"))?;
            let name = CString::new(name.as_encoded_bytes())
                .map_err(|_| io::Error::other("a NUL in a sliver dir's name"))?;
            let bytes = name.as_bytes_with_nul();
            let mut args = sys::VolArgs {
                fd: 0,
                name: [0; 4088],
            };
            if bytes.len() > args.name.len() {
                return Err(io::Error::other("sliver dir name too long"));
            }
            args.name[..bytes.len()].copy_from_slice(bytes);
            // The parent is the node's own (`<state>/slivers`, a symlink into the mount).
            let dir = File::open(parent).map_err(ctx(format!("open {}", parent.display())))?;
            // SAFETY: `dir` is an open directory and `args` a valid, NUL-terminated
            // `btrfs_ioctl_vol_args` that outlives the call.
            unsafe { sys::subvol_create(dir.as_raw_fd(), &args) }
                .map_err(|e| ctx(format!("make subvolume {}", root.display()))(e.into()))?;
        }
        Err(e) => return Err(e),
        Ok(meta) if meta.is_dir() && meta.ino() == SUBVOLUME_ROOT_INO => {}
        Ok(_) => {
            return Err(io::Error::other(format!(
                "{} exists and is not a subvolume (kept from a sliver whose disk was not \
                 capped): it cannot be capped",
                root.display()
            )));
        }
    }
    let dir = open_dir(root)?;
    let mut args = sys::QgroupLimitArgs {
        qgroupid: 0,
        flags: sys::QGROUP_LIMIT_MAX_RFER,
        max_rfer: limit,
        max_excl: 0,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    // SAFETY: `dir` is the subvolume's open root (quota group 0 means its own) and `args` a
    // valid `btrfs_ioctl_qgroup_limit_args` that outlives the call.
    unsafe { sys::qgroup_limit(dir.as_raw_fd(), &mut args) }
        .map_err(|e| ctx(format!("limit {}", root.display()))(e.into()))?;
    Ok(())
}

/// The sysfs dir of the quota group of the subvolume whose root is `dir`.
fn qgroup_dir(dir: &OwnedFd) -> io::Result<PathBuf> {
    let st = nix::sys::stat::fstat(dir).map_err(io::Error::from)?;
    if st.st_ino != SUBVOLUME_ROOT_INO {
        return Err(io::Error::other(
            "not a subvolume: not capped by the kernel",
        ));
    }
    let mut lookup = sys::InoLookupArgs {
        treeid: 0,
        objectid: SUBVOLUME_ROOT_INO,
        name: [0; 4080],
    };
    // SAFETY: `dir` is open on btrfs and `lookup` a valid `btrfs_ioctl_ino_lookup_args`.
    unsafe { sys::ino_lookup(dir.as_raw_fd(), &mut lookup) }
        .map_err(|e| ctx("find the subvolume's id")(e.into()))?;
    let mut info = sys::FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        nodesize: 0,
        sectorsize: 0,
        clone_alignment: 0,
        csum_type: 0,
        csum_size: 0,
        flags: 0,
        generation: 0,
        metadata_uuid: [0; 16],
        reserved: [0; 944],
    };
    // SAFETY: `dir` is open on btrfs and `info` a valid `btrfs_ioctl_fs_info_args`.
    unsafe { sys::fs_info(dir.as_raw_fd(), &mut info) }
        .map_err(|e| ctx("read the filesystem's id")(e.into()))?;
    let h: Vec<String> = info.fsid.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    );
    Ok(PathBuf::from(format!(
        "/sys/fs/btrfs/{uuid}/qgroups/0_{}",
        lookup.treeid
    )))
}

/// Bytes the subvolume at `root` references (committed, plus data reserved by writes not yet
/// committed), after checking that the kernel still caps it at `limit` or less: a cap that is
/// gone or larger is an error (the caller counts it as over).
pub fn usage(root: &Path, limit: u64) -> io::Result<u64> {
    let dir = open_dir(root)?;
    let qgroup = qgroup_dir(&dir)?;
    let read = |name: &str| -> io::Result<u64> {
        let path = qgroup.join(name);
        fs::read_to_string(&path)
            .map_err(ctx(format!("read {}", path.display())))?
            .trim()
            .parse()
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
    };
    let flags = read("limit_flags")?;
    let cap = read("max_referenced")?;
    if flags & sys::QGROUP_LIMIT_MAX_RFER == 0 || cap == 0 || cap > limit {
        return Err(io::Error::other(format!(
            "the kernel no longer caps it at its grant (limit flags {flags}, cap {cap}, \
             grant {limit})"
        )));
    }
    let pending = read("rsv_data").unwrap_or(0);
    Ok(read("referenced")?.saturating_add(pending))
}

/// Flushes the filesystem's pending changes (so that [`usage`] counts them).
pub fn sync(root: &Path) -> io::Result<()> {
    let dir = File::open(root)?;
    nix::unistd::syncfs(&dir).map_err(io::Error::from)
}
