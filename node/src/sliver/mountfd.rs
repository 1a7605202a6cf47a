//! Detached, id-mapped mounts and passing them to a sliver's init.
//!
//! The reference image belongs to host ids; seen from a sliver's user namespace its files
//! would belong to nobody, and the sliver's root could not change them (even through the
//! overlay). So the node clones the image as a detached mount (`open_tree`), id-maps it with
//! the sliver's user namespace (`mount_setattr` with `MOUNT_ATTR_IDMAP`: host root's files
//! appear as the sliver root's), and sends the mount's fd to the init over a unix socket
//! (`SCM_RIGHTS`, through nix); the init attaches it in its own mount namespace
//! (`move_mount`) and uses it as the overlay's lower layer. `open_tree` and `move_mount` go
//! through rustix; `mount_setattr` is a raw system call, as neither rustix (1.1), nix nor libc
//! wraps it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use rustix::mount::{MoveMountFlags, OpenTreeFlags};

/// `MOUNT_ATTR_RDONLY`.
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
/// `MOUNT_ATTR_IDMAP`.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached, read-only copy of the mount tree at `path`, with the file ids mapped through
/// the user namespace `userns` (an open `/proc/<pid>/ns/user`).
pub fn idmapped_clone(path: &Path, userns: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let fd = rustix::mount::open_tree(
        rustix::fs::CWD,
        path,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::try_from(userns.as_raw_fd()).unwrap_or(u64::MAX),
    };
    // Raw: rustix (1.1) has no mount_setattr.
    // SAFETY: mount_setattr on our fd with an empty path and a valid, correctly sized attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Attaches the detached mount `fd` at `target` in the caller's mount namespace.
pub fn attach(fd: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    Ok(rustix::mount::move_mount(
        fd,
        c"",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?)
}

/// Sends one byte and, if given, one fd over the unix socket `sock`.
pub fn send_fd(sock: BorrowedFd<'_>, byte: u8, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let data = [byte];
    let iov = [io::IoSlice::new(&data)];
    let fds: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    if sent != 1 {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the byte was not sent",
        ));
    }
    Ok(())
}

/// Receives one byte and, if one was sent with it, one fd (close-on-exec).
pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<(u8, Option<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut data = [0u8];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [io::IoSliceMut::new(&mut data)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg_buf),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    if msg.bytes != 1 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no message"));
    }
    let mut received = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor in this process for us;
                // nothing else owns it. A second one (never sent by the node) is closed.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                received.get_or_insert(owned);
            }
        }
    }
    Ok((data[0], received))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn fds_travel_over_unix_sockets() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"through the socket").unwrap();
        send_fd(a.as_fd(), b'F', Some(file.as_fd())).unwrap();
        send_fd(a.as_fd(), b'N', None).unwrap();
        let (byte, fd) = recv_fd(b.as_fd()).unwrap();
        assert_eq!(byte, b'F');
        let mut got = std::fs::File::from(fd.unwrap());
        use std::io::Seek;
        got.seek(std::io::SeekFrom::Start(0)).unwrap();
        let mut text = String::new();
        got.read_to_string(&mut text).unwrap();
        assert_eq!(text, "through the socket");
        assert_eq!(recv_fd(b.as_fd()).unwrap().0, b'N');
    }
}
