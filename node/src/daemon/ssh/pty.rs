//! The node side of an SSH session's terminal: a pty opened by the node (never inside the
//! sliver), whose slave becomes the sliver process's standard streams and controlling
//! terminal, and whose master the session reads and writes without blocking a thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::{OpenptyResult, Winsize, openpty};
use tokio::io::unix::AsyncFd;

/// A terminal size (columns, rows; pixels when the client tells them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
    /// Width in pixels (0: unknown).
    pub width_px: u16,
    /// Height in pixels (0: unknown).
    pub height_px: u16,
}

impl WindowSize {
    /// From an SSH request's fields (clamped to what a terminal can hold; 0 becomes 80×24).
    pub fn from_request(cols: u32, rows: u32, width_px: u32, height_px: u32) -> Self {
        let clamp = |v: u32, default: u16| {
            if v == 0 {
                default
            } else {
                u16::try_from(v).unwrap_or(u16::MAX)
            }
        };
        WindowSize {
            cols: clamp(cols, 80),
            rows: clamp(rows, 24),
            width_px: clamp(width_px, 0),
            height_px: clamp(height_px, 0),
        }
    }

    fn winsize(self) -> Winsize {
        Winsize {
            ws_row: self.rows,
            ws_col: self.cols,
            ws_xpixel: self.width_px,
            ws_ypixel: self.height_px,
        }
    }
}

/// A pty's master, for the session's relay.
#[derive(Debug)]
pub struct PtyMaster(AsyncFd<OwnedFd>);

/// Opens a pty of `size`: its master (non-blocking) and its slave.
pub fn open(size: WindowSize) -> io::Result<(PtyMaster, OwnedFd)> {
    let OpenptyResult { master, slave } = openpty(Some(&size.winsize()), None)?;
    for fd in [&master, &slave] {
        let flags = fcntl(fd, FcntlArg::F_GETFD)?;
        let flags = nix::fcntl::FdFlag::from_bits_retain(flags) | nix::fcntl::FdFlag::FD_CLOEXEC;
        fcntl(fd, FcntlArg::F_SETFD(flags))?;
    }
    let flags = OFlag::from_bits_retain(fcntl(&master, FcntlArg::F_GETFL)?);
    fcntl(&master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    // SAFETY: `master` is an open descriptor the AsyncFd owns from here on: it stays open and
    // the same until the AsyncFd drops it.
    let master = unsafe { AsyncFd::register(master) }.map_err(|e| e.into_parts().1)?;
    Ok((PtyMaster(master), slave))
}

impl PtyMaster {
    /// Reads what the program wrote; `Ok(0)` once no process holds the slave any more.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Ok(n)) => return Ok(n),
                // The last holder of the slave closed it.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` as typed input.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Tells the terminal its new size (the program gets `SIGWINCH`).
    pub fn resize(&self, size: WindowSize) -> io::Result<()> {
        let ws = size.winsize();
        // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which outlives the call.
        let rc =
            unsafe { libc::ioctl(self.0.get_ref().as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        nix::errno::Errno::result(rc)
            .map(drop)
            .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sizes_from_requests_are_clamped() {
        let s = WindowSize::from_request(0, 0, 0, 0);
        assert_eq!((s.cols, s.rows), (80, 24));
        let s = WindowSize::from_request(100_000, 50, 0, 0);
        assert_eq!((s.cols, s.rows), (u16::MAX, 50));
    }

    #[tokio::test]
    async fn bytes_cross_the_pty_and_sizes_reach_the_slave() {
        let (master, slave) = open(WindowSize::from_request(100, 30, 0, 0)).unwrap();
        let mut slave = std::fs::File::from(slave);
        use std::io::{Read, Write};
        slave.write_all(b"hi\n").unwrap();
        let mut buf = [0u8; 64];
        let n = master.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"hi"), "{:?}", &buf[..n]);
        master
            .resize(WindowSize::from_request(120, 40, 0, 0))
            .unwrap();
        let mut ws = Winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` to the pointer, which outlives the call.
        let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (120, 40));
        master.write_all(b"typed\n").await.unwrap();
        let n = slave.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"typed"), "{:?}", &buf[..n]);
    }
}
