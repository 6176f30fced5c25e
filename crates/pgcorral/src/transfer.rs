//! Moving backend sockets between workers and main over the Unix management socket.
//!
//! The socket is `SOCK_SEQPACKET`, so each request and reply is one datagram-like record: no framing to
//! get wrong, and an fd rides in the same `sendmsg` as the request it belongs to (SCM_RIGHTS). Every
//! request carries the slot and its generation, so a late message about an older backend of a slot can
//! never touch the newer one.

use nix::sys::socket::{
    connect, recvmsg, sendmsg, socket, AddressFamily, ControlMessage, ControlMessageOwned,
    MsgFlags, SockFlag, SockType, UnixAddr,
};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// What a worker asks main.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// "Here is the socket of a new backend for this slot; keep it" (an fd is attached).
    Transfer,
    /// "Send me your copy of this slot's socket."
    Get,
    /// "This slot's backend is gone (or must go): terminate and close your copy."
    Kill,
}

impl Request {
    fn code(self) -> u8 {
        match self {
            Request::Transfer => 1,
            Request::Get => 2,
            Request::Kill => 3,
        }
    }
    fn from_code(c: u8) -> Option<Request> {
        match c {
            1 => Some(Request::Transfer),
            2 => Some(Request::Get),
            3 => Some(Request::Kill),
            _ => None,
        }
    }
}

/// Failures of the transfer protocol.
#[derive(Debug, Error)]
pub enum TransferError {
    #[error("cannot reach the main process at {path}: {source}")]
    Connect { path: String, source: nix::Error },
    #[error("management socket I/O failed: {0}")]
    Io(#[from] nix::Error),
    #[error("the main process refused the request (it does not hold that slot's socket)")]
    Refused,
    #[error("malformed management record")]
    Malformed,
}

/// A decoded request.
#[derive(Debug)]
pub struct Record {
    pub request: Request,
    pub slot: u32,
    pub generation: u32,
    pub fd: Option<OwnedFd>,
}

fn encode(request: Request, slot: u32, generation: u32) -> [u8; 9] {
    let mut b = [0u8; 9];
    b[0] = request.code();
    b[1..5].copy_from_slice(&slot.to_be_bytes());
    b[5..9].copy_from_slice(&generation.to_be_bytes());
    b
}

/// Sends one record, with an fd when given.
pub fn send_record(sock: RawFd, bytes: &[u8], fd: Option<RawFd>) -> Result<(), TransferError> {
    let iov = [IoSlice::new(bytes)];
    let fds;
    let cmsgs: Vec<ControlMessage<'_>> = match fd {
        Some(f) => {
            fds = [f];
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => Vec::new(),
    };
    sendmsg::<()>(sock, &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives one record of at most `buf.len()` bytes and the fd attached to it, if any.
pub fn recv_record(sock: RawFd, buf: &mut [u8]) -> Result<(usize, Option<OwnedFd>), TransferError> {
    let mut cmsg_space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock,
        &mut iov,
        Some(&mut cmsg_space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(list) = c {
            for (i, raw) in list.into_iter().enumerate() {
                // SAFETY: the kernel just installed this fd in our table for us; we own it now.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if i == 0 && fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
    }
    Ok((msg.bytes, fd))
}

/// Decodes a request record.
pub fn decode(bytes: &[u8], fd: Option<OwnedFd>) -> Result<Record, TransferError> {
    if bytes.len() != 9 {
        return Err(TransferError::Malformed);
    }
    let request = Request::from_code(bytes[0]).ok_or(TransferError::Malformed)?;
    let slot = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let generation = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
    Ok(Record {
        request,
        slot,
        generation,
        fd,
    })
}

/// A worker's side: one connection to main per request.
pub struct MainLink {
    sock: OwnedFd,
}

impl MainLink {
    /// Connects to main's management socket.
    pub fn connect(path: &Path) -> Result<MainLink, TransferError> {
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let addr = UnixAddr::new(path)?;
        connect(sock.as_raw_fd(), &addr).map_err(|source| TransferError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        let tv = nix::sys::time::TimeVal::new(MAIN_REPLY_TIMEOUT.as_secs() as i64, 0);
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv)?;
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::SendTimeout, &tv)?;
        Ok(MainLink { sock })
    }

    fn round_trip(
        self,
        request: Request,
        slot: usize,
        generation: u32,
        fd: Option<RawFd>,
    ) -> Result<Option<OwnedFd>, TransferError> {
        send_record(
            self.sock.as_raw_fd(),
            &encode(request, slot as u32, generation),
            fd,
        )?;
        let mut reply = [0u8; 1];
        let (n, fd) = recv_record(self.sock.as_raw_fd(), &mut reply)?;
        if n != 1 || reply[0] != 0 {
            return Err(TransferError::Refused);
        }
        Ok(fd)
    }

    /// Hands a new backend's socket to main; returns once main holds it.
    pub fn transfer(self, slot: usize, generation: u32, fd: RawFd) -> Result<(), TransferError> {
        self.round_trip(Request::Transfer, slot, generation, Some(fd))
            .map(|_| ())
    }

    /// Gets main's copy of a pooled backend's socket.
    pub fn get(self, slot: usize, generation: u32) -> Result<OwnedFd, TransferError> {
        self.round_trip(Request::Get, slot, generation, None)?
            .ok_or(TransferError::Refused)
    }

    /// Tells main to terminate and close its copy of a backend's socket; returns once it has.
    pub fn kill(self, slot: usize, generation: u32) -> Result<(), TransferError> {
        self.round_trip(Request::Kill, slot, generation, None)
            .map(|_| ())
    }
}

/// Timeout a worker allows main to answer in.
pub const MAIN_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::socketpair;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn an_fd_travels_with_its_record() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (mut x, y) = UnixStream::pair().unwrap();
        send_record(
            a.as_raw_fd(),
            &encode(Request::Transfer, 3, 9),
            Some(y.as_raw_fd()),
        )
        .unwrap();
        drop(y);
        let mut buf = [0u8; 16];
        let (n, fd) = recv_record(b.as_raw_fd(), &mut buf).unwrap();
        let rec = decode(&buf[..n], fd).unwrap();
        assert_eq!(
            (rec.request, rec.slot, rec.generation),
            (Request::Transfer, 3, 9)
        );
        let mut y2 = UnixStream::from(rec.fd.unwrap());
        x.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        y2.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }

    #[test]
    fn malformed_records_are_refused() {
        assert!(decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0], None).is_err());
        assert!(decode(&[1, 0], None).is_err());
    }
}
