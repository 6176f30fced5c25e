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

/// Takes every setting back to the values the backend was opened with (RESET ALL leaves the
/// session authorization alone).
pub const RESET_SETTINGS: &str = "SET SESSION AUTHORIZATION DEFAULT;RESET ALL;";

/// `query` followed by [`RESET_SETTINGS`] unless it already resets every
/// setting (`DISCARD ALL`), so that no setting survives it; with whether the query
/// deallocates prepared statements (`DISCARD`, `DEALLOCATE`).
pub fn resetting_all(query: &str) -> (String, bool) {
    let words = query
        .split_ascii_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_uppercase();
    let mut sql = query.trim().to_string();
    // DISCARD ALL is the one statement that resets everything; RESET ALL leaves the session
    // authorization.
    if !words.contains("DISCARD ALL") {
        // A new line first: the query may end in a -- comment. The empty statement a second
        // semicolon makes is allowed.
        if !sql.is_empty() {
            sql.push_str("\n;");
        }
        sql.push_str(RESET_SETTINGS);
    }
    (
        sql,
        words.contains("DISCARD") || words.contains("DEALLOCATE"),
    )
}

/// Why preparing a pooled backend for a client failed.
#[derive(Debug)]
pub enum SetupError {
    /// The server refused a statement (the backend is idle and clean again).
    Server(String),
    /// The conversation broke off: the backend's state is unknown.
    Io(String),
}

/// Runs statements that prepare a pooled backend for a new client and collects the ParameterStatus
/// messages they cause.
pub fn run_setup(
    fd: RawFd,
    sql: &str,
    deadline: Instant,
) -> Result<Vec<(String, String)>, SetupError> {
    let mut q = Vec::with_capacity(sql.len() + 6);
    messages::query(&mut q, sql);
    write_all(fd, &q, deadline).map_err(|e| SetupError::Io(e.to_string()))?;
    let mut changed = Vec::new();
    let mut error = None;
    loop {
        let msg = io::read_message(fd, MAX_MESSAGE_LENGTH.min(1 << 20), deadline)
            .map_err(|e| SetupError::Io(e.to_string()))?;
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
        Some(e) => Err(SetupError::Server(e)),
        None => Ok(changed),
    }
}

/// Opens a new backend for a fresh lease and logs in as the pooler with `credential`; records what a
/// later client needs in the slot and moves it INIT→IN_USE. The flag says whether the record fit
/// (otherwise the backend must not be pooled). On error the caller kills the lease.
pub fn open_as_pooler(
    ctx: &crate::context::Context,
    lease: &mut crate::pool::Lease,
    startup: &pgcorral_wire::StartupMessage,
    credential: &crate::security::BackendCredential,
    rng: &dyn ring::rand::SecureRandom,
    deadline: Instant,
) -> Result<(crate::security::BackendLogin, bool), crate::security::AuthError> {
    use crate::security::AuthError;
    let server_index = ctx.config.primary_index();
    let server = &ctx.config.servers[server_index];
    let slot = ctx.region.slot(lease.slot);
    slot.set_server(server_index);
    let conn = connect(
        server,
        ctx.config.main.nodelay,
        ctx.config.main.keep_alive,
        ctx.config.main.authentication_timeout,
    )
    .map_err(|e| {
        AuthError::refuse(
            "08006",
            format!(
                "could not connect to server \"{}\" at {}:{}: {e}",
                server.name, server.host, server.port
            ),
        )
    })?;
    let fd = conn.as_raw_fd();
    lease.fd = Some(conn);
    let login = crate::security::login_backend_as_pooler(fd, startup, credential, rng, deadline)?;
    let recorded = record_new_backend(ctx, lease.slot, startup, &login);
    Ok((login, recorded))
}

/// Writes what a new backend's login left in its slot (startup parameters, ParameterStatus, key,
/// authentication record) and moves the slot INIT→IN_USE. Returns false when the record did not fit
/// (the backend then must not be pooled).
pub fn record_new_backend(
    ctx: &crate::context::Context,
    slot_index: usize,
    startup: &pgcorral_wire::StartupMessage,
    login: &crate::security::BackendLogin,
) -> bool {
    let slot = ctx.region.slot(slot_index);
    let mut recorded = true;
    ctx.region.slot_data(slot_index).with_data_mut(|d| {
        // A name or `options` too long to keep could never be matched again: not poolable.
        recorded &= d.user.set(startup.user().unwrap_or("").as_bytes());
        recorded &= d.database.set(startup.database().as_bytes());
        recorded &= d
            .options
            .set(startup.get("options").unwrap_or("").as_bytes());
        d.appname
            .set(startup.get("application_name").unwrap_or("").as_bytes());
        d.auth_method = login.method as u8;
        d.password_salt = login.password_salt;
        d.password_hash = login.password_hash;
        recorded &= d.startup.set(&encode_params(startup));
        d.forget_session_params();
        recorded &= d.params.set(&login.params);
    });
    slot.set_backend_key(login.backend_key.0, login.backend_key.1);
    if !slot.transition(
        pgcorral_shmem::SlotState::Init,
        pgcorral_shmem::SlotState::InUse,
    ) {
        log::error!("slot {slot_index}: state changed under its owner");
    }
    recorded
}

/// Whether a startup parameter is a setting SET can change (not user, database, options or
/// replication). Setting names are case-insensitive.
pub fn names_a_setting(name: &str) -> bool {
    !["user", "database", "options", "replication"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
}

/// Startup parameters worth recording for a backend (what SET can change later).
pub fn encode_params(startup: &pgcorral_wire::StartupMessage) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in &startup.params {
        if !names_a_setting(k) {
            continue;
        }
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Runs a query returning one value (first column of the first row; None for no row or NULL).
pub fn query_value(fd: RawFd, sql: &str, deadline: Instant) -> Result<Option<String>, String> {
    let mut q = Vec::with_capacity(sql.len() + 6);
    messages::query(&mut q, sql);
    write_all(fd, &q, deadline).map_err(|e| e.to_string())?;
    let mut value = None;
    let mut error = None;
    loop {
        let msg = io::read_message(fd, 1 << 20, deadline).map_err(|e| e.to_string())?;
        match msg.tag {
            b'D' if value.is_none() => {
                let b = &msg.body;
                if b.len() >= 6 && i16::from_be_bytes([b[0], b[1]]) >= 1 {
                    let len = i32::from_be_bytes([b[2], b[3], b[4], b[5]]);
                    if len >= 0 && b.len() >= 6 + len as usize {
                        value = Some(String::from_utf8_lossy(&b[6..6 + len as usize]).into_owned());
                    }
                }
            }
            tag::ERROR_RESPONSE => {
                error = Some(
                    String::from_utf8_lossy(ReceivedError::parse(&msg.body).message).into_owned(),
                )
            }
            tag::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(value),
    }
}

/// A string as an SQL literal, as PostgreSQL's quote_literal writes it.
pub fn quote_literal(v: &str) -> String {
    if v.contains('\\') {
        format!("E'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", v.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::resetting_all;

    #[test]
    fn reset_queries_reset_every_setting() {
        assert_eq!(
            resetting_all("DISCARD ALL"),
            ("DISCARD ALL".to_string(), true)
        );
        assert_eq!(
            resetting_all(" discard\n  all; "),
            ("discard\n  all;".to_string(), true)
        );
        assert_eq!(
            resetting_all("DEALLOCATE ALL -- ours"),
            (
                "DEALLOCATE ALL -- ours\n;SET SESSION AUTHORIZATION DEFAULT;RESET ALL;".to_string(),
                true
            )
        );
        assert_eq!(
            resetting_all(""),
            (
                "SET SESSION AUTHORIZATION DEFAULT;RESET ALL;".to_string(),
                false
            )
        );
        assert_eq!(
            resetting_all("RESET ALL").0,
            "RESET ALL\n;SET SESSION AUTHORIZATION DEFAULT;RESET ALL;"
        );
    }
}
