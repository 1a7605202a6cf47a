//! A sliver's host-side directories, a primitive of [`super::LinuxHost`]: the steps of
//! [`plan::prepare_dirs`] executed on the file system, removal (at once into the trash, then
//! in the background), and moving a kept upper dir to another uid range.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;

use crate::sliver::alloc::UidRange;
use crate::sliver::host::HostError;
use crate::sliver::rootfs::SliverDirs;

use super::io_err;
use super::plan::{self, DirStep};

/// Makes a sliver's dirs (see [`plan::prepare_dirs`]); the upper and work dirs and those
/// under the upper dir belong to the sliver's root, the first id of `uids`.
pub(super) fn prepare(dirs: &SliverDirs, uids: &UidRange) -> Result<(), HostError> {
    let owner = uids.host_base;
    let mkdir = |path: &Path, mode: u32| -> Result<(), HostError> {
        match fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
        {
            Ok(()) => fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(io_err("chmod", path)),
            Err(e) => Err(HostError::Io {
                op: "create",
                path: path.to_path_buf(),
                source: e,
            }),
        }
    };
    let chown = |path: &Path| {
        std::os::unix::fs::lchown(path, Some(owner), Some(owner)).map_err(io_err("chown", path))
    };
    for step in plan::prepare_dirs(dirs) {
        match step {
            DirStep::Make { path, mode, owned } => {
                mkdir(&path, mode)?;
                if owned {
                    chown(&path)?;
                }
            }
            DirStep::ShiftOwners(upper) => {
                if let Ok(meta) = fs::symlink_metadata(&upper) {
                    use std::os::unix::fs::MetadataExt;
                    if meta.uid() != owner {
                        shift_owners(&upper, meta.uid(), *uids)
                            .map_err(io_err("shift owners", &upper))?;
                    }
                }
            }
            DirStep::RemoveStale(path) => {
                if path.exists() {
                    fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
                }
            }
            DirStep::Touch(path) => {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_err("create", &path))?;
            }
        }
    }
    Ok(())
}

/// Removes a sliver's dirs, keeping its upper dir if asked; otherwise the whole dir is moved
/// to the trash and deleted in the background.
pub(super) fn remove(dirs: &SliverDirs, keep_upper: bool) -> Result<(), HostError> {
    let remove = |path: &Path| match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("remove", path)),
        _ => fs::remove_file(path).map_err(io_err("remove", path)),
    };
    if keep_upper {
        for path in plan::removed_keeping_upper(dirs) {
            remove(&path)?;
        }
        Ok(())
    } else {
        // Removing a tree costs milliseconds per directory on some disks: move it out of
        // the way at once (one rename) and delete it in the background.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let Some((trash, target)) = plan::trash_target(dirs, nanos) else {
            return remove(&dirs.root);
        };
        if fs::symlink_metadata(&dirs.root).is_err() {
            return Ok(());
        }
        fs::create_dir_all(&trash).map_err(io_err("create", &trash))?;
        match fs::rename(&dirs.root, &target) {
            Ok(()) => {
                empty_trash_later(trash);
                Ok(())
            }
            Err(_) => remove(&dirs.root),
        }
    }
}

/// Moves the owners of a kept upper dir from the uid range starting at `old_base` to `to`
/// (ids outside the old range are left alone).
fn shift_owners(dir: &Path, old_base: u32, to: UidRange) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let shift = |id: u32| {
        if id >= old_base && id - old_base < to.count {
            Some(to.host_base + (id - old_base))
        } else {
            None
        }
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path)?;
        let (uid, gid) = (shift(meta.uid()), shift(meta.gid()));
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&path, uid, gid)?;
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// Empties `trash` (every entry in it) on a background thread; one at a time, a bounded queue,
/// and inline when the queue is full.
fn empty_trash_later(trash: PathBuf) {
    use std::sync::OnceLock;
    use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
    static QUEUE: OnceLock<Option<SyncSender<PathBuf>>> = OnceLock::new();
    fn empty(trash: &Path) {
        if let Ok(entries) = fs::read_dir(trash) {
            for entry in entries.flatten() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = sync_channel::<PathBuf>(64);
        thread::Builder::new()
            .name("sliver-trash".into())
            .spawn(move || {
                while let Ok(trash) = rx.recv() {
                    empty(&trash);
                }
            })
            .ok()
            .map(|_| tx)
    });
    match queue {
        Some(tx) => match tx.try_send(trash) {
            Ok(()) => {}
            Err(TrySendError::Full(t) | TrySendError::Disconnected(t)) => empty(&t),
        },
        None => empty(&trash),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::sliver::rootfs::UPPER_OWNED_DIRS;

    fn me() -> UidRange {
        UidRange {
            // SAFETY: geteuid has no preconditions.
            host_base: unsafe { libc::geteuid() },
            count: 1,
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn prepare_makes_every_dir_with_its_mode_and_the_keys_file() {
        let state = tempfile::tempdir().unwrap();
        let d = SliverDirs::new(state.path(), "s1");
        prepare(&d, &me()).unwrap();
        assert_eq!(mode(&d.root), 0o755);
        assert_eq!(mode(&d.work), 0o700);
        for (m, rel) in UPPER_OWNED_DIRS {
            assert_eq!(mode(&d.upper.join(rel)), *m, "{rel}");
        }
        assert_eq!(fs::read(&d.keys).unwrap(), b"");
        assert_eq!(fs::read(d.about()).unwrap(), b"");
        // A stale work dir goes, the upper dir and the keys stay.
        fs::write(d.work.join("stale"), "x").unwrap();
        fs::write(d.upper.join("kept"), "x").unwrap();
        fs::write(&d.keys, "ssh-ed25519 AAAA").unwrap();
        prepare(&d, &me()).unwrap();
        assert!(!d.work.join("stale").exists());
        assert!(d.upper.join("kept").exists());
        assert_eq!(fs::read(&d.keys).unwrap(), b"ssh-ed25519 AAAA");
    }

    #[test]
    fn remove_keeps_only_the_upper_dir_or_sends_everything_to_the_trash() {
        let state = tempfile::tempdir().unwrap();
        let d = SliverDirs::new(state.path(), "s1");
        prepare(&d, &me()).unwrap();
        remove(&d, true).unwrap();
        assert!(d.upper.join("etc").exists());
        for gone in plan::removed_keeping_upper(&d) {
            assert!(!gone.exists(), "{}", gone.display());
        }
        remove(&d, false).unwrap();
        assert!(!d.root.exists());
        assert!(state.path().join("trash").is_dir());
        // Nothing there: nothing to do.
        remove(&d, false).unwrap();
    }
}
