//! Pipelines: how a worker relays a session between its client and its backend.
//!
//! As in pgagroal, a pipeline is a small set of callbacks around one relay loop. The loop moves bytes
//! in both directions through one fixed buffer per direction (allocated once per worker), follows
//! message boundaries with a [`FrameTracker`] per direction without copying, and stops at the client's
//! Terminate, at either side closing, at a FATAL error from the server, or on a stop request. What the
//! trackers saw decides whether the backend can go back to the pool and what must be done first.

mod performance;
mod session;
pub mod transaction;

pub use performance::Performance;
pub use session::Session;

use crate::io::STOP_REQUESTED;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use pgcorral_shmem::Slot;
use pgcorral_wire::messages::{tag, ErrorFields, ReceivedError};
use pgcorral_wire::{FrameEvent, FrameTracker, MAX_MESSAGE_LENGTH};
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Size of each direction's relay buffer.
pub const RELAY_BUFFER: usize = 32 * 1024;

/// The callbacks of a pipeline.
pub trait Pipeline {
    /// Name for logs and configuration.
    fn name(&self) -> &'static str;
    /// Before the first byte is relayed.
    fn start(&mut self, _slot: &Slot) {}
    /// After bytes from the client were forwarded to the server.
    fn client(&mut self, _slot: &Slot, _bytes: usize) {}
    /// After bytes from the server were forwarded to the client.
    fn server(&mut self, _slot: &Slot, _bytes: usize) {}
    /// When the loop has been idle for [`Pipeline::periodic_interval`].
    fn periodic(&mut self, _slot: &Slot) {}
    /// How often `periodic` runs while the session is idle (`None`: never).
    fn periodic_interval(&self) -> Option<Duration> {
        None
    }
    /// After the session ended, before the backend is returned or killed.
    fn stop(&mut self, _slot: &Slot, _end: &SessionEnd) {}
}

/// How the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client sent Terminate.
    ClientTerminated,
    /// The client's socket closed without Terminate.
    ClientGone,
    /// The server closed its socket or sent a FATAL error.
    ServerGone,
    /// A message from a peer could not be followed (bad length).
    ProtocolError,
    /// The worker was asked to stop.
    Stopped,
}

/// What the relay knows about the backend when the session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionEnd {
    pub reason: EndReason,
    /// ReadyForQuery answers the server still owes (queries and Syncs sent, not yet answered).
    pub outstanding: u32,
    /// Extended-protocol messages were sent since the last Sync.
    pub unsynced: bool,
    /// The server is in COPY IN mode waiting for the client's data.
    pub copy_in: bool,
    /// Syncs sent since the last Execute: if that Execute starts a COPY IN, the server ignores them.
    pub syncs_after_execute: u32,
    /// The transaction status of the last ReadyForQuery.
    pub last_status: u8,
    /// The server stream stopped in the middle of a message.
    pub server_mid_message: bool,
    /// Part of a client message reached the server.
    pub client_mid_message: bool,
}

impl SessionEnd {
    /// Whether the backend may be cleaned and reused at all.
    pub fn backend_usable(&self) -> bool {
        matches!(
            self.reason,
            EndReason::ClientTerminated | EndReason::ClientGone
        ) && !self.client_mid_message
    }

    /// Whether the backend owes answers or waits for the client: it must be drained first.
    pub fn needs_drain(&self) -> bool {
        self.outstanding > 0 || self.unsynced || self.copy_in || self.server_mid_message
    }
}

/// One direction's buffer: bytes read but not yet written.
struct Buffer {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buffer {
    fn new() -> Buffer {
        Buffer {
            data: vec![0u8; RELAY_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
    fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

enum ReadOutcome {
    Data(usize),
    WouldBlock,
    Closed,
}

fn read_into(fd: RawFd, buf: &mut Buffer) -> io::Result<ReadOutcome> {
    loop {
        match nix::unistd::read(fd, &mut buf.data[..]) {
            Ok(0) => return Ok(ReadOutcome::Closed),
            Ok(n) => {
                buf.start = 0;
                buf.end = n;
                return Ok(ReadOutcome::Data(n));
            }
            Err(nix::errno::Errno::EAGAIN) => return Ok(ReadOutcome::WouldBlock),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::ECONNRESET) => return Ok(ReadOutcome::Closed),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes what it can; Ok(false) when the socket would block.
fn flush(fd: RawFd, buf: &mut Buffer) -> Result<bool, ()> {
    // SAFETY: fd is one of the relay's two sockets, open for the whole relay.
    let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
    while buf.start < buf.end {
        match nix::unistd::write(bfd, &buf.data[buf.start..buf.end]) {
            Ok(n) => buf.start += n,
            Err(nix::errno::Errno::EAGAIN) => return Ok(false),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return Err(()),
        }
    }
    Ok(true)
}

/// Client-side bookkeeping from the client's message boundaries.
struct ClientSide {
    tracker: FrameTracker,
}

/// Server-side bookkeeping.
struct ServerSide {
    tracker: FrameTracker,
    fatal: bool,
}

const CLIENT: Token = Token(0);
const SERVER: Token = Token(1);

/// Relays a session until it ends. Both sockets must be non-blocking.
/// Returns how the session ended and the server-side tracker, which knows where the server's stream
/// stands (the backend may owe answers that must be drained before reuse).
pub fn relay(
    client: RawFd,
    server: RawFd,
    slot: &Slot,
    pipeline: &mut dyn Pipeline,
) -> io::Result<(SessionEnd, FrameTracker)> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4);
    // WRITABLE interest only while a write is pending: otherwise a Unix-socket peer's every read
    // would wake this process with a write-space event it has no use for.
    poll.registry()
        .register(&mut SourceFd(&client), CLIENT, Interest::READABLE)?;
    poll.registry()
        .register(&mut SourceFd(&server), SERVER, Interest::READABLE)?;
    let mut watching_client_writes = false;
    let mut watching_server_writes = false;
    let mut to_server = Buffer::new();
    let mut to_client = Buffer::new();
    let mut cs = ClientSide {
        tracker: FrameTracker::new(MAX_MESSAGE_LENGTH, b""),
    };
    let mut ss = ServerSide {
        tracker: FrameTracker::new(
            MAX_MESSAGE_LENGTH,
            &[tag::ERROR_RESPONSE, tag::READY_FOR_QUERY],
        ),
        fatal: false,
    };
    let mut end = SessionEnd {
        reason: EndReason::ClientGone,
        outstanding: 0,
        unsynced: false,
        copy_in: false,
        syncs_after_execute: 0,
        last_status: b'I',
        server_mid_message: false,
        client_mid_message: false,
    };
    // Edge-triggered readiness: a flag stays set until the socket says EAGAIN.
    let (mut client_readable, mut server_readable) = (true, true);
    let (mut client_writable, mut server_writable) = (true, true);
    let mut client_done = false; // Terminate seen: forward what precedes it, then stop.
    pipeline.start(slot);
    let interval = pipeline.periodic_interval();
    let reason = 'relay: loop {
        let mut progress = true;
        while progress {
            progress = false;
            if STOP_REQUESTED.load(Ordering::Relaxed) {
                break 'relay EndReason::Stopped;
            }
            // Client → server.
            if !to_server.is_empty() && server_writable {
                let before = to_server.start;
                match flush(server, &mut to_server) {
                    Ok(done) => server_writable = done,
                    Err(()) => break 'relay EndReason::ServerGone,
                }
                if to_server.start != before {
                    pipeline.client(slot, to_server.start - before);
                    progress = true;
                }
            }
            if to_server.is_empty() && client_done {
                break 'relay EndReason::ClientTerminated;
            }
            if to_server.is_empty() && client_readable && !client_done {
                match read_into(client, &mut to_server) {
                    Ok(ReadOutcome::Data(n)) => {
                        progress = true;
                        // A short read drained the socket; epoll (edge-triggered) reports new data,
                        // so reading again now would only return EAGAIN: one syscall saved per turn.
                        client_readable = n == to_server.data.len();
                        match scan_client(&mut cs, &mut end, &to_server.data[..n]) {
                            Ok(ClientScan::All) => {}
                            Ok(ClientScan::TerminateAt(at)) => {
                                to_server.end = at;
                                client_done = true;
                            }
                            Ok(ClientScan::TerminateSplit) => {
                                end.client_mid_message = true;
                                to_server.end = 0;
                                client_done = true;
                            }
                            Err(()) => {
                                send_client_error(
                                    client,
                                    "08P01",
                                    "invalid message length from client",
                                );
                                end.client_mid_message = !cs.tracker.at_boundary();
                                break 'relay EndReason::ProtocolError;
                            }
                        }
                    }
                    Ok(ReadOutcome::WouldBlock) => client_readable = false,
                    Ok(ReadOutcome::Closed) | Err(_) => {
                        end.client_mid_message = !cs.tracker.at_boundary();
                        break 'relay EndReason::ClientGone;
                    }
                }
            }
            // Server → client.
            if !to_client.is_empty() && client_writable {
                let before = to_client.start;
                match flush(client, &mut to_client) {
                    Ok(done) => client_writable = done,
                    Err(()) => {
                        end.client_mid_message = !cs.tracker.at_boundary();
                        break 'relay EndReason::ClientGone;
                    }
                }
                if to_client.start != before {
                    pipeline.server(slot, to_client.start - before);
                    progress = true;
                }
            }
            if to_client.is_empty() && ss.fatal {
                break 'relay EndReason::ServerGone;
            }
            if to_client.is_empty() && server_readable {
                match read_into(server, &mut to_client) {
                    Ok(ReadOutcome::Data(n)) => {
                        progress = true;
                        server_readable = n == to_client.data.len();
                        if scan_server(&mut ss, &mut end, &to_client.data[..n]).is_err() {
                            send_client_error(
                                client,
                                "08P01",
                                "invalid message length from server",
                            );
                            break 'relay EndReason::ServerGone;
                        }
                    }
                    Ok(ReadOutcome::WouldBlock) => server_readable = false,
                    Ok(ReadOutcome::Closed) | Err(_) => break 'relay EndReason::ServerGone,
                }
            }
        }
        // Before sleeping, ask for write-space events exactly where a write is pending.
        let want_server_writes = !to_server.is_empty() && !server_writable;
        if want_server_writes != watching_server_writes {
            let interest = if want_server_writes {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            poll.registry()
                .reregister(&mut SourceFd(&server), SERVER, interest)?;
            watching_server_writes = want_server_writes;
        }
        let want_client_writes = !to_client.is_empty() && !client_writable;
        if want_client_writes != watching_client_writes {
            let interest = if want_client_writes {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            poll.registry()
                .reregister(&mut SourceFd(&client), CLIENT, interest)?;
            watching_client_writes = want_client_writes;
        }
        match poll.poll(&mut events, interval) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if events.is_empty() {
            pipeline.periodic(slot);
        }
        for ev in events.iter() {
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            let writable = ev.is_writable() || ev.is_write_closed() || ev.is_error();
            match ev.token() {
                CLIENT => {
                    client_readable |= readable;
                    client_writable |= writable;
                }
                _ => {
                    server_readable |= readable;
                    server_writable |= writable;
                }
            }
        }
    };
    end.reason = reason;
    end.server_mid_message = !ss.tracker.at_boundary();
    // Client bytes still waiting for the server: part of a message may have reached it, and what did
    // not was counted as owed answers. Such a backend cannot be made clean.
    end.client_mid_message |= !to_server.is_empty();
    if reason == EndReason::Stopped {
        send_client_error(
            client,
            "57P01",
            "terminating connection due to administrator command",
        );
    }
    pipeline.stop(slot, &end);
    Ok((end, ss.tracker))
}

enum ClientScan {
    All,
    TerminateAt(usize),
    TerminateSplit,
}

fn scan_client(cs: &mut ClientSide, end: &mut SessionEnd, chunk: &[u8]) -> Result<ClientScan, ()> {
    let mut result = ClientScan::All;
    cs.tracker
        .feed(chunk, |ev| match ev {
            FrameEvent::Start {
                tag: tag::TERMINATE,
                offset,
                ..
            } => {
                result = match offset {
                    Some(at) => ClientScan::TerminateAt(at),
                    None => ClientScan::TerminateSplit,
                };
                false
            }
            FrameEvent::End { tag, .. } => {
                note_client_message(end, tag);
                true
            }
            FrameEvent::Start { .. } => true,
        })
        .map_err(|_| ())?;
    Ok(result)
}

/// What a client message implies for the answers the server owes.
pub fn note_client_message(end: &mut SessionEnd, t: u8) {
    match t {
        tag::QUERY | b'F' => {
            end.outstanding += 1;
            end.syncs_after_execute = 0;
        }
        // PostgreSQL ignores Sync (and Flush) during COPY IN, for clients that send one without
        // noticing their command was a COPY: such a Sync earns no ReadyForQuery.
        tag::SYNC if end.copy_in => {}
        tag::SYNC => {
            end.outstanding += 1;
            end.syncs_after_execute += 1;
            end.unsynced = false;
        }
        b'E' => {
            end.unsynced = true;
            end.syncs_after_execute = 0;
        }
        b'P' | b'B' | b'D' | b'C' | b'H' => end.unsynced = true,
        b'c' | tag::COPY_FAIL => end.copy_in = false,
        _ => {}
    }
}

fn scan_server(ss: &mut ServerSide, end: &mut SessionEnd, chunk: &[u8]) -> Result<(), ()> {
    let fatal = &mut ss.fatal;
    ss.tracker
        .feed(chunk, |ev| {
            if let FrameEvent::End { tag, prefix, .. } = ev {
                note_server_message(end, tag, prefix, fatal);
            }
            true
        })
        .map(|_| ())
        .map_err(|_| ())
}

/// What a server message implies.
pub fn note_server_message(end: &mut SessionEnd, t: u8, prefix: &[u8], fatal: &mut bool) {
    match t {
        tag::READY_FOR_QUERY => {
            end.outstanding = end.outstanding.saturating_sub(1);
            end.copy_in = false;
            if let Some(&s) = prefix.first() {
                end.last_status = s;
            }
        }
        tag::COPY_IN_RESPONSE => {
            // Syncs the client sent after the Execute that started this COPY reach the server during
            // COPY IN and are ignored there.
            end.copy_in = true;
            end.outstanding = end.outstanding.saturating_sub(end.syncs_after_execute);
            end.syncs_after_execute = 0;
        }
        tag::ERROR_RESPONSE if ReceivedError::parse(prefix).is_fatal() => *fatal = true,
        _ => {}
    }
}

fn send_client_error(client: RawFd, code: &str, message: &str) {
    let mut buf = Vec::with_capacity(96);
    pgcorral_wire::messages::error_response(&mut buf, &ErrorFields::fatal(code, message));
    let _ = crate::io::write_all(
        client,
        &buf,
        crate::io::deadline_in(Duration::from_millis(500)),
    );
}
