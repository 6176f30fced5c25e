//! Remote management (`management = PORT`): a client opens a PostgreSQL-protocol connection with
//! database `admin`, passes HBA and SCRAM-SHA-256 against the admins file (`-A`), receives
//! AuthenticationOk, then sends one control frame (doc/management.md), which is relayed to the local
//! control socket; the response frame comes back and the connection closes. Each connection is served
//! by a child of main, like a client.

use crate::context::Context;
use crate::io::{self, read_exact, write_all};
use crate::security::{self, send_fatal, AuthError, ClientSecret};
use pgcorral_config::HbaMethod;
use pgcorral_wire::{messages, StartupRequest};
use ring::rand::{SecureRandom, SystemRandom};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The database name remote management clients must ask for (as pgagroal).
pub const ADMIN_DATABASE: &str = "admin";

/// Serves one remote management connection; returns the exit code.
pub fn serve(ctx: &Context, client: OwnedFd, peer: Option<IpAddr>) -> i32 {
    let fd = client.as_raw_fd();
    if io::set_nonblocking(&client).is_err() {
        return 1;
    }
    let deadline = Instant::now() + ctx.config.main.authentication_timeout;
    let startup = match security::negotiate_startup(fd, deadline) {
        Ok(StartupRequest::Startup(s)) => s,
        Ok(_) => return 1,
        Err(AuthError::Refuse { code, message }) => {
            send_fatal(fd, code, &message);
            return 1;
        }
        Err(_) => return 1,
    };
    let Some(user) = startup.user().map(str::to_string) else {
        send_fatal(fd, "28000", "no user name specified in startup packet");
        return 1;
    };
    if startup.database() != ADMIN_DATABASE {
        send_fatal(
            fd,
            "28000",
            "remote management connections must use database \"admin\"",
        );
        return 1;
    }
    let host = peer
        .map(|p| p.to_string())
        .unwrap_or_else(|| "[local]".into());
    match ctx.config.find_hba(peer, ADMIN_DATABASE, &user, false) {
        Some(rule) if rule.method != HbaMethod::Reject => {}
        _ => {
            send_fatal(
                fd,
                "28000",
                &format!("no pgcorral_hba.conf entry for host \"{host}\", user \"{user}\", database \"admin\""),
            );
            return 1;
        }
    }
    let rng = SystemRandom::new();
    // An unknown admin runs the exchange against a random secret and fails like a wrong password.
    let secret = match ctx.secrets.admin_password(&user) {
        Some(p) => ClientSecret::Password(p.to_string()),
        None => {
            let mut noise = [0u8; 16];
            let _ = rng.fill(&mut noise);
            ClientSecret::Password(noise.iter().map(|b| format!("{b:02x}")).collect())
        }
    };
    if let Err(e) =
        security::authenticate_client(fd, HbaMethod::ScramSha256, &user, &secret, &rng, deadline)
    {
        if let AuthError::Refuse { code, message } = &e {
            send_fatal(fd, code, message);
        }
        log::info!("remote management from {host}: user \"{user}\" refused: {e}");
        return 1;
    }
    let mut ok = Vec::new();
    messages::authentication_ok(&mut ok);
    if write_all(fd, &ok, deadline).is_err() {
        return 1;
    }
    // One control frame, relayed to the local control socket.
    let frame_deadline = Instant::now() + Duration::from_secs(10);
    let mut len = [0u8; 4];
    if read_exact(fd, &mut len, frame_deadline).is_err() {
        return 1;
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > crate::management::MAX_REQUEST {
        return 1;
    }
    let mut request = vec![0u8; n];
    if read_exact(fd, &mut request, frame_deadline).is_err() {
        return 1;
    }
    log::info!("remote management from {host}: user \"{user}\"");
    let main = &ctx.config.main;
    let path = main
        .unix_socket_dir
        .join(format!(".s.pgcorral.{}", main.port));
    let response = (|| -> std::io::Result<Vec<u8>> {
        let mut local = std::os::unix::net::UnixStream::connect(&path)?;
        local.set_read_timeout(Some(Duration::from_secs(30)))?;
        local.write_all(&len)?;
        local.write_all(&request)?;
        let mut rlen = [0u8; 4];
        local.read_exact(&mut rlen)?;
        let mut body = vec![0u8; (u32::from_be_bytes(rlen) as usize).min(64 << 20)];
        local.read_exact(&mut body)?;
        let mut out = rlen.to_vec();
        out.extend_from_slice(&body);
        Ok(out)
    })();
    match response {
        Ok(frame) => {
            i32::from(write_all(fd, &frame, Instant::now() + Duration::from_secs(10)).is_err())
        }
        Err(e) => {
            log::warn!(
                "remote management: cannot reach the control socket {}: {e}",
                path.display()
            );
            1
        }
    }
}
