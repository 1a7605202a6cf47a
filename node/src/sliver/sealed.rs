//! A sealed in-memory copy of the node's `sliver-init` program.
//!
//! Every process that enters a sliver (its init, and the helper behind each exec and spawn)
//! starts from this copy rather than from the host file: its `/proc/<pid>/exe` then names an
//! anonymous, sealed memory file, never a path of the host, so nothing a sliver can reach
//! through that magic link is the node's (no host binary to run again, no file to write).
//! The copy is made once per program path and shared by every sliver of the process.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

/// A sealed memory file holding a program image.
#[derive(Debug)]
pub struct SealedImage {
    fd: OwnedFd,
}

impl SealedImage {
    /// Copies `path` into a new memory file and seals it against every change.
    pub fn copy_of(path: &Path) -> io::Result<Self> {
        let mut source = File::open(path)?;
        let fd = memfd_create(
            c"sliver-init",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        let mut copy = File::from(fd);
        io::copy(&mut source, &mut copy)?;
        let seals = SealFlag::F_SEAL_SEAL
            | SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE;
        fcntl(&copy, FcntlArg::F_ADD_SEALS(seals))?;
        Ok(SealedImage { fd: copy.into() })
    }

    /// The shared copy of `path`, made on first use.
    pub fn shared(path: &Path) -> io::Result<Arc<SealedImage>> {
        static IMAGES: OnceLock<Mutex<HashMap<PathBuf, Arc<SealedImage>>>> = OnceLock::new();
        let images = IMAGES.get_or_init(Default::default);
        let mut images = images
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(image) = images.get(path) {
            return Ok(Arc::clone(image));
        }
        let image = Arc::new(SealedImage::copy_of(path)?);
        images.insert(path.to_path_buf(), Arc::clone(&image));
        Ok(image)
    }

    /// The memory file's descriptor (close-on-exec; exec it with `execveat(fd, "",
    /// AT_EMPTY_PATH)`, or through `/proc/self/fd/<fd>` before the descriptor closes).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A path that names the image in this process (and in a child before it execs).
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.raw_fd()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    #[test]
    fn the_copy_is_equal_and_cannot_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prog");
        std::fs::write(&path, b"#!/bin/sh\necho hi\n").unwrap();
        let image = SealedImage::copy_of(&path).unwrap();
        let mut file = File::from(image.fd.try_clone().unwrap());
        file.seek(SeekFrom::Start(0)).unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "#!/bin/sh\necho hi\n");
        assert!(file.write_all(b"x").is_err(), "a sealed image took a write");
        assert!(file.set_len(0).is_err(), "a sealed image was truncated");
        let shared = SealedImage::shared(&path).unwrap();
        assert!(Arc::ptr_eq(&shared, &SealedImage::shared(&path).unwrap()));
    }
}
