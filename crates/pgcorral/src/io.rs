//! Blocking socket I/O with deadlines, for the phases of a worker that are a plain conversation
//! (startup, authentication, resetting a backend). The relay itself is non-blocking, in `pipeline`.

use pgcorral_wire::messages::Header;
use pgcorral_wire::WireError;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a conversation with a peer stopped.
#[derive(Debug, Error)]
pub enum IoError {
    #[error("timed out")]
    Timeout,
    #[error("the peer closed the connection")]
    Closed,
    #[error("interrupted by a shutdown request")]
    Interrupted,
    #[error("protocol violation: {0}")]
    Protocol(#[from] WireError),
    #[error("{0}")]
    Os(#[from] io::Error),
}

/// Set by the worker's signal handler: stop as soon as possible.
pub static STOP_REQUESTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn stop_requested() -> bool {
    STOP_REQUESTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Waits until `fd` is readable (or writable) or the deadline passes.
pub fn wait_fd(fd: RawFd, writable: bool, deadline: Instant) -> Result<(), IoError> {
    loop {
        if stop_requested() {
            return Err(IoError::Interrupted);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(IoError::Timeout);
        }
        let mut pfd = libc::pollfd {
            fd,
            events: if writable {
                libc::POLLOUT
            } else {
                libc::POLLIN
            },
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd on the stack, count 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        if n > 0 {
            return Ok(());
        }
    }
}

/// Reads at most `buf.len()` bytes (at least one) before the deadline. `fd` must be non-blocking (every
/// worker socket is), or a silent peer would hold the read past the deadline.
pub fn read_some(fd: RawFd, buf: &mut [u8], deadline: Instant) -> Result<usize, IoError> {
    loop {
        // Try first: the data is usually there already, and poll would cost a syscall for nothing.
        match nix::unistd::read(fd, buf) {
            Ok(0) => return Err(IoError::Closed),
            Ok(n) => return Ok(n),
            Err(nix::errno::Errno::EAGAIN) => wait_fd(fd, false, deadline)?,
            Err(nix::errno::Errno::EINTR) => {
                if stop_requested() {
                    return Err(IoError::Interrupted);
                }
            }
            Err(nix::errno::Errno::ECONNRESET) => return Err(IoError::Closed),
            Err(e) => return Err(io::Error::from(e).into()),
        }
    }
}

/// Fills `buf` exactly before the deadline.
pub fn read_exact(fd: RawFd, buf: &mut [u8], deadline: Instant) -> Result<(), IoError> {
    let mut have = 0;
    while have < buf.len() {
        have += read_some(fd, &mut buf[have..], deadline)?;
    }
    Ok(())
}

/// Writes all of `buf` before the deadline.
pub fn write_all(fd: RawFd, buf: &[u8], deadline: Instant) -> Result<(), IoError> {
    let mut done = 0;
    // SAFETY: the caller passes an fd it keeps open for the duration of the call.
    let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
    while done < buf.len() {
        match nix::unistd::write(bfd, &buf[done..]) {
            Ok(n) => done += n,
            Err(nix::errno::Errno::EAGAIN) => wait_fd(fd, true, deadline)?,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EPIPE) | Err(nix::errno::Errno::ECONNRESET) => {
                return Err(IoError::Closed)
            }
            Err(e) => return Err(io::Error::from(e).into()),
        }
    }
    Ok(())
}

/// One whole message read from a peer: the tag and the body (the 4-byte length is checked and dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Message {
    /// The message re-encoded as it was on the wire (for forwarding).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.tag);
        out.extend_from_slice(&((self.body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&self.body);
    }
}

/// Reads one message, refusing a declared length above `max` before allocating for it. Reads exactly
/// the message's bytes, so nothing that follows it is consumed.
pub fn read_message(fd: RawFd, max: usize, deadline: Instant) -> Result<Message, IoError> {
    let mut header = [0u8; 5];
    read_exact(fd, &mut header, deadline)?;
    let h = Header::parse(header, max)?;
    let mut body = vec![0u8; h.body_len()];
    read_exact(fd, &mut body, deadline)?;
    Ok(Message { tag: h.tag, body })
}

/// A deadline `d` from now.
pub fn deadline_in(d: Duration) -> Instant {
    Instant::now() + d
}

/// Puts an fd in non-blocking mode (all worker I/O waits through poll with deadlines).
pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on an fd the caller owns; only the O_NONBLOCK flag is added.
    unsafe {
        let flags = libc::fcntl(raw, libc::F_GETFL);
        if flags < 0 || libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// This process's PID, cached: the pool asks for it on every checkout, once per transaction in the
/// transaction pipeline. `fork_child` refreshes it in each new child.
static MY_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

pub fn my_pid() -> i32 {
    match MY_PID.load(std::sync::atomic::Ordering::Relaxed) {
        0 => refresh_pid(),
        pid => pid,
    }
}

/// Re-reads the PID (call first thing in a forked child).
pub fn refresh_pid() -> i32 {
    let pid = std::process::id() as i32;
    MY_PID.store(pid, std::sync::atomic::Ordering::Relaxed);
    pid
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn read_message_caps_length_before_allocating() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        a.write_all(b"p\x7f\xff\xff\xff").unwrap();
        let err =
            read_message(b.as_raw_fd(), 8192, deadline_in(Duration::from_secs(1))).unwrap_err();
        assert!(matches!(err, IoError::Protocol(_)), "{err}");
    }

    #[test]
    fn read_message_reads_exactly_one_message() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        a.write_all(b"p\0\0\0\x08abc\0Q\0\0\0\x05x").unwrap();
        let m = read_message(b.as_raw_fd(), 8192, deadline_in(Duration::from_secs(1))).unwrap();
        assert_eq!(
            m,
            Message {
                tag: b'p',
                body: b"abc\0".to_vec()
            }
        );
        let m = read_message(b.as_raw_fd(), 8192, deadline_in(Duration::from_secs(1))).unwrap();
        assert_eq!(m.tag, b'Q');
    }

    #[test]
    fn silence_times_out() {
        let (_a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let t = Instant::now();
        let err =
            read_message(b.as_raw_fd(), 10, deadline_in(Duration::from_millis(100))).unwrap_err();
        assert!(matches!(err, IoError::Timeout));
        assert!(t.elapsed() >= Duration::from_millis(90));
    }
}
