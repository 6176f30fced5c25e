//! Talking to a PostgreSQL server outside the relay: connecting, cancelling, draining and resetting a
//! backend before it goes back to the pool.

use crate::io::{self, write_all, IoError};
use crate::pipeline::{note_server_message, SessionEnd};
use pgcorral_config::ServerConfig;
use pgcorral_wire::messages::{self, tag, ReceivedError};
use pgcorral_wire::{FrameEvent, FrameTracker, MAX_MESSAGE_LENGTH};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// How long cleaning a returned backend may take before it is closed instead.
pub const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a socket to a server (TCP with nodelay/keepalive as configured, or its Unix socket).
pub fn connect(
    server: &ServerConfig,
    nodelay: bool,
    keep_alive: bool,
    timeout: Duration,
) -> std::io::Result<OwnedFd> {
    if server.is_unix() {
        let stream = std::os::unix::net::UnixStream::connect(server.unix_path())?;
        stream.set_nonblocking(true)?;
        return Ok(stream.into());
    }
    let addrs = std::net::ToSocketAddrs::to_socket_addrs(&(server.host.as_str(), server.port))?;
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "host name resolved to no address",
    );
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_nodelay(nodelay)?;
                if keep_alive {
                    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::KeepAlive, &true)?;
                }
                s.set_nonblocking(true)?;
                return Ok(s.into());
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Sends a CancelRequest for a backend's key on a new connection to its server.
pub fn cancel(server: &ServerConfig, key: (i32, i32)) -> std::io::Result<()> {
    let fd = connect(server, true, false, Duration::from_secs(2))?;
    write_all(
        fd.as_raw_fd(),
        &messages::cancel_request(key.0, key.1),
        io::deadline_in(Duration::from_secs(2)),
    )
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    // PostgreSQL closes the connection when it has handled the request.
    let mut b = [0u8; 1];
    let _ = io::read_some(
        fd.as_raw_fd(),
        &mut b,
        io::deadline_in(Duration::from_secs(2)),
    );
    Ok(())
}

/// Reads server messages until `expected` ReadyForQuery answers arrived, continuing from the relay's
/// tracker state (the server may have been mid-message). Returns whether an ErrorResponse was seen.
fn await_ready(
    fd: RawFd,
    end: &mut SessionEnd,
    tracker: &mut FrameTracker,
    deadline: Instant,
) -> Result<bool, IoError> {
    let mut buf = [0u8; 8192];
    let mut saw_error = false;
    let mut fatal = false;
    while end.outstanding > 0 {
        let n = io::read_some(fd, &mut buf, deadline)?;
        tracker
            .feed(&buf[..n], |ev| {
                if let FrameEvent::End { tag, prefix, .. } = ev {
                    if tag == tag::ERROR_RESPONSE {
                        saw_error = true;
                    }
                    note_server_message(end, tag, prefix, &mut fatal);
                }
                true
            })
            .map_err(IoError::Protocol)?;
        if fatal {
            return Err(IoError::Closed);
        }
    }
    Ok(saw_error)
}

/// Runs one simple query and waits for its ReadyForQuery; Ok(false) when it failed.
pub fn simple_query(
    fd: RawFd,
    sql: &str,
    end: &mut SessionEnd,
    deadline: Instant,
) -> Result<bool, IoError> {
    let mut q = Vec::with_capacity(sql.len() + 6);
    messages::query(&mut q, sql);
    write_all(fd, &q, deadline)?;
    end.outstanding += 1;
    let mut tracker = FrameTracker::new(
        MAX_MESSAGE_LENGTH,
        &[tag::ERROR_RESPONSE, tag::READY_FOR_QUERY],
    );
    Ok(!await_ready(fd, end, &mut tracker, deadline)?)
}

/// Brings a backend whose client left back to an idle, clean state: finish what is in flight (cancel
/// it, end a COPY, close an unsynced batch), roll back an open transaction, run `server_reset_query`.
/// Returns false when the backend cannot be trusted any more and must be closed.
pub fn clean(
    fd: RawFd,
    server: &ServerConfig,
    backend_key: (i32, i32),
    mut end: SessionEnd,
    mut tracker: FrameTracker,
    reset_query: &str,
) -> bool {
    let deadline = Instant::now() + RESET_TIMEOUT;
    if end.needs_drain() {
        if end.outstanding > 0 {
            // A long query would hold the backend: ask the server to cancel it.
            let _ = cancel(server, backend_key);
        }
        let mut msgs = Vec::with_capacity(32);
        if end.copy_in {
            let at = msgs.len();
            msgs.push(tag::COPY_FAIL);
            msgs.extend_from_slice(&[0, 0, 0, 0]);
            msgs.extend_from_slice(b"client disconnected\0");
            let len = (msgs.len() - at - 1) as u32;
            msgs[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
        }
        messages::sync(&mut msgs);
        if write_all(fd, &msgs, deadline).is_err() {
            return false;
        }
        end.outstanding += 1;
        // The relay's tracker knows where the server stream stands, even mid-message.
        if await_ready(fd, &mut end, &mut tracker, deadline).is_err() {
            return false;
        }
    }
    if end.last_status != b'I' {
        match simple_query(fd, "ROLLBACK", &mut end, deadline) {
            Ok(true) => {}
            _ => return false,
        }
    }
    if !reset_query.is_empty() {
        match simple_query(fd, reset_query, &mut end, deadline) {
            Ok(true) => {}
            Ok(false) => {
                log::warn!("server_reset_query '{reset_query}' failed; closing the backend");
                return false;
            }
            Err(_) => return false,
        }
    }
    end.last_status == b'I'
}

/// Runs statements that prepare a pooled backend for a new client and collects the ParameterStatus
/// messages they cause. Err carries the server's error message.
pub fn run_setup(fd: RawFd, sql: &str, deadline: Instant) -> Result<Vec<(String, String)>, String> {
    let mut q = Vec::with_capacity(sql.len() + 6);
    messages::query(&mut q, sql);
    write_all(fd, &q, deadline).map_err(|e| e.to_string())?;
    let mut changed = Vec::new();
    let mut error = None;
    loop {
        let msg = io::read_message(fd, MAX_MESSAGE_LENGTH.min(1 << 20), deadline)
            .map_err(|e| e.to_string())?;
        match msg.tag {
            tag::PARAMETER_STATUS => {
                if let Ok((k, v)) = messages::parse_parameter_status(&msg.body) {
                    changed.push((
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    ));
                }
            }
            tag::ERROR_RESPONSE => {
                let e = ReceivedError::parse(&msg.body);
                error = Some(String::from_utf8_lossy(e.message).into_owned());
            }
            tag::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(changed),
    }
}
