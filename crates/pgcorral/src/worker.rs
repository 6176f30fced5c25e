//! The worker: one forked process per client (pgagroal's worker.c). It negotiates the startup,
//! authenticates the client, gets a backend from the pool, runs the pipeline, and returns or closes
//! the backend before it exits.

use crate::backend;
use crate::context::Context;
use crate::io::{self, write_all};
use crate::pipeline::{self, Pipeline};
use crate::pool::{self, PoolError, PoolKey};
use crate::security::{self, send_fatal, AuthError};
use pgcorral_config::{HbaMethod, Pipeline as PipelineKind};
use pgcorral_shmem::{AuthMethod, SlotData, SlotState};
use pgcorral_wire::messages;
use pgcorral_wire::{StartupMessage, StartupRequest};
use ring::rand::{SecureRandom, SystemRandom};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Puts this worker under SCHED_BATCH. A woken batch task does not preempt the running one, so with many
/// clients on few cores a relay that has a message to pass waits for the end of the current slice
/// instead of forcing a switch on every message: measured +15-20% TPS at 50 clients on 2 cores, not
/// worse at 10 (doc/performance.md). `worker_scheduler = normal` turns it off.
fn batch_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on this process (pid 0) with a valid, initialised parameter block;
    // SCHED_BATCH needs no privilege and priority 0 is its only valid value.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        log::debug!(
            "SCHED_BATCH not applied: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Serves one client to the end; returns the process exit code.
pub fn run(ctx: &Context, client: OwnedFd, peer: Option<IpAddr>) -> i32 {
    if ctx.config.main.worker_sched_batch {
        batch_scheduling();
    }
    let fd = client.as_raw_fd();
    if let Err(e) = io::set_nonblocking(&client) {
        log::warn!("cannot set the client socket non-blocking: {e}");
        return 1;
    }
    let auth_deadline = Instant::now() + ctx.config.main.authentication_timeout;
    let request = match security::negotiate_startup(fd, auth_deadline) {
        Ok(r) => r,
        Err(e) => {
            report(fd, peer, &e);
            return 1;
        }
    };
    match request {
        StartupRequest::Cancel { pid, secret } => {
            forward_cancel(ctx, pid, secret);
            0
        }
        StartupRequest::Startup(startup) => serve(ctx, fd, peer, startup, auth_deadline),
        StartupRequest::Ssl | StartupRequest::GssEnc => 1,
    }
}

/// The secret pgcorral verifies this client with: the vault's (frontend or backend) password, or the
/// role's secret from auth_query. `None`: pass-through authentication.
fn held_secret(
    ctx: &Context,
    user: &str,
    database: &str,
    rng: &SystemRandom,
) -> Result<Option<security::ClientSecret>, AuthError> {
    if let Some(p) = ctx.secrets.client_password(user) {
        return Ok(Some(security::ClientSecret::Password(p.to_string())));
    }
    if ctx.config.main.auth_query && ctx.secrets.superuser().is_some() {
        let stored = crate::auth_query::fetch_secret(ctx, user, database, rng)?;
        return Ok(Some(
            match stored
                .as_deref()
                .and_then(security::ClientSecret::from_stored)
            {
                Some(secret) => secret,
                None => {
                    // No such role (or no usable secret): run the exchange against a random secret, so the
                    // client gets 28P01 like for a wrong password and learns nothing about the role.
                    let mut noise = [0u8; 16];
                    let _ = rng.fill(&mut noise);
                    let pw: String = noise.iter().map(|b| format!("{b:02x}")).collect();
                    security::ClientSecret::Password(pw)
                }
            },
        ));
    }
    if !ctx.config.main.allow_unknown_users && !ctx.secrets.is_empty() {
        return Err(AuthError::refuse(
            "28000",
            format!(
                "user \"{user}\" is not in pgcorral's users file and allow_unknown_users is off"
            ),
        ));
    }
    Ok(None)
}

fn host_name(peer: Option<IpAddr>) -> String {
    match peer {
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        Some(ip) => ip.to_string(),
        None => "[local]".to_string(),
    }
}

fn report(fd: RawFd, peer: Option<IpAddr>, e: &AuthError) {
    match e {
        AuthError::Refuse { code, message } => {
            log::info!("client {}: refused ({code}): {message}", host_name(peer));
            send_fatal(fd, code, message);
        }
        AuthError::Server { code, message } => {
            log::info!(
                "client {}: the server refused pgcorral's login ({code}): {message}",
                host_name(peer)
            );
            send_fatal(fd, code, message);
        }
        AuthError::ServerRefused(m) => log::info!(
            "client {}: the server refused the login: {m}",
            host_name(peer)
        ),
        AuthError::Io(e) => log::info!("client {}: startup ended: {e}", host_name(peer)),
    }
}

fn refuse(fd: RawFd, peer: Option<IpAddr>, code: &'static str, message: String) -> i32 {
    report(fd, peer, &AuthError::Refuse { code, message });
    1
}

fn serve(
    ctx: &Context,
    fd: RawFd,
    peer: Option<IpAddr>,
    mut startup: StartupMessage,
    auth_deadline: Instant,
) -> i32 {
    let Some(user) = startup.user().map(str::to_string) else {
        return refuse(
            fd,
            peer,
            "28000",
            "no PostgreSQL user name specified in startup packet".into(),
        );
    };
    if let Some(r) = startup.get("replication") {
        if !matches!(
            r.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0"
        ) {
            return refuse(
                fd,
                peer,
                "0A000",
                "replication connections are not supported by pgcorral".into(),
            );
        }
    }
    // Protocol 3.x with x > 0 and `_pq_.` options: say what pgcorral speaks, as PostgreSQL does.
    let unsupported: Vec<String> = startup
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if startup.minor > 0 || !unsupported.is_empty() {
        let names: Vec<&str> = unsupported.iter().map(String::as_str).collect();
        let mut buf = Vec::new();
        messages::negotiate_protocol_version(&mut buf, 0, &names);
        if write_all(fd, &buf, auth_deadline).is_err() {
            return 1;
        }
        startup.params.retain(|(k, _)| !k.starts_with("_pq_."));
        startup.minor = 0;
    }
    let requested_db = startup.database().to_string();
    let host = host_name(peer);
    if ctx.region.header().shutting_down.load(Ordering::Acquire) != 0 || ctx.region.gracefully() {
        return refuse(fd, peer, "57P03", "pgcorral is shutting down".into());
    }
    let Some(hba) = ctx.config.find_hba(peer, &requested_db, &user, false) else {
        return refuse(
            fd,
            peer,
            "28000",
            format!("no pgcorral_hba.conf entry for host \"{host}\", user \"{user}\", database \"{requested_db}\""),
        );
    };
    let method = hba.method;
    if method == HbaMethod::Reject {
        return refuse(
            fd,
            peer,
            "28000",
            format!("pgcorral_hba.conf rejects connection for host \"{host}\", user \"{user}\", database \"{requested_db}\""),
        );
    }
    let database = ctx.config.resolve_database(&requested_db).to_string();
    if ctx.region.is_disabled(&database) {
        return refuse(
            fd,
            peer,
            "57P03",
            format!("database \"{database}\" is disabled by pgcorral"),
        );
    }
    if database != requested_db {
        startup.set("database", &database);
    }
    let options = startup.get("options").unwrap_or("").to_string();
    let key = PoolKey::new(&user, &database, &options);
    let rule = ctx.config.find_limit(&database, &user);
    let rng = SystemRandom::new();
    // pgcorral verifies the client itself when it holds (or can fetch) the user's secret.
    let held = match held_secret(ctx, &user, &database, &rng) {
        Ok(h) => h,
        Err(e) => {
            report(fd, peer, &e);
            return 1;
        }
    };
    let mut backend_credential = None;
    if let Some(secret) = &held {
        match security::authenticate_client(fd, method, &user, secret, &rng, auth_deadline) {
            Ok(learned) => {
                log::debug!(
                    "client {host}: \"{user}\" authenticated by pgcorral ({})",
                    security::effective_method_name(method, secret)
                );
                backend_credential = match ctx.secrets.backend_password(&user) {
                    Some(p) => Some(security::BackendCredential::Password(p.to_string())),
                    None => learned,
                }
            }
            Err(e) => {
                if matches!(e, AuthError::Refuse { code: "28P01", .. }) {
                    // A cached secret may be stale (the role's password changed): fetch it next time.
                    ctx.region.forget_secret(&user);
                }
                report(fd, peer, &e);
                return 1;
            }
        }
    }
    let verified_by_pooler = held.is_some();
    let any: fn(&SlotData) -> bool = |_| true;
    let policy = if verified_by_pooler {
        Some(any)
    } else {
        security::reuse_policy(method)
    };
    let reusable: Option<&dyn Fn(&SlotData) -> bool> =
        policy.as_ref().map(|f| f as &dyn Fn(&SlotData) -> bool);
    let checkout = match pool::checkout(
        ctx,
        &key,
        rule,
        reusable,
        ctx.config.main.blocking_timeout,
        None,
    ) {
        Ok(c) => c,
        Err(PoolError::Full) => {
            return refuse(fd, peer, "53300", "connection pool is full".into());
        }
        Err(PoolError::ShuttingDown) => {
            return refuse(fd, peer, "57P03", "pgcorral is shutting down".into())
        }
        Err(e) => return refuse(fd, peer, "08006", e.to_string()),
    };
    let mut lease = checkout.lease;
    let slot = ctx.region.slot(lease.slot);
    let slot_data = ctx.region.slot_data(lease.slot);
    let mut secret = [0u8; 4];
    if rng.fill(&mut secret).is_err() {
        pool::kill(ctx, lease);
        return refuse(fd, peer, "58000", "no randomness available".into());
    }
    let client_key = (std::process::id() as i32, i32::from_be_bytes(secret));
    let server_index = if lease.fresh {
        ctx.config.primary_index()
    } else {
        slot.server()
    };
    let server = &ctx.config.servers[server_index];
    let poolable;
    let mut setup_applied = false;
    // After SETs at login: the session's ParameterStatus values (for the transaction pipeline's
    // record of the session).
    let mut session_reported = None;
    if lease.fresh && verified_by_pooler {
        let Some(credential) = backend_credential.as_ref() else {
            pool::kill(ctx, lease);
            return refuse(
                fd,
                peer,
                "28000",
                format!("pgcorral holds no secret to log in to the server as user \"{user}\""),
            );
        };
        let (login, recorded) = match backend::open_as_pooler(
            ctx,
            &mut lease,
            &startup,
            credential,
            &rng,
            auth_deadline,
        ) {
            Ok(l) => l,
            Err(e) => {
                pool::kill(ctx, lease);
                report(fd, peer, &e);
                return 1;
            }
        };
        let mut greeting = Vec::with_capacity(512 + login.params.len());
        messages::authentication_ok(&mut greeting);
        greeting.extend_from_slice(&login.params);
        messages::backend_key_data(&mut greeting, client_key.0, client_key.1);
        messages::ready_for_query(&mut greeting, b'I');
        slot.set_client_key(client_key.0, client_key.1);
        if write_all(fd, &greeting, auth_deadline).is_err() {
            pool::kill(ctx, lease);
            return 1;
        }
        poolable = recorded;
    } else if lease.fresh {
        slot.set_server(server_index);
        slot_data.with_data_mut(|d| {
            d.user.set(user.as_bytes());
            d.database.set(database.as_bytes());
            d.options.set(options.as_bytes());
            d.appname
                .set(startup.get("application_name").unwrap_or("").as_bytes());
        });
        let conn = match backend::connect(
            server,
            ctx.config.main.nodelay,
            ctx.config.main.keep_alive,
            ctx.config.main.authentication_timeout,
        ) {
            Ok(c) => c,
            Err(e) => {
                pool::kill(ctx, lease);
                return refuse(
                    fd,
                    peer,
                    "08006",
                    format!(
                        "could not connect to server \"{}\" at {}:{}: {e}",
                        server.name, server.host, server.port
                    ),
                );
            }
        };
        let server_fd = conn.as_raw_fd();
        lease.fd = Some(conn);
        let login = match security::login_backend(
            fd,
            server_fd,
            &startup,
            method,
            client_key,
            &rng,
            auth_deadline,
        ) {
            Ok(l) => l,
            Err(e) => {
                report(fd, peer, &e);
                pool::kill(ctx, lease);
                return 1;
            }
        };
        let recorded = backend::record_new_backend(ctx, lease.slot, &startup, &login);
        slot.set_client_key(client_key.0, client_key.1);
        // md5 and SCRAM answers are never replayed: such backends serve one client and close.
        poolable = recorded && matches!(login.method, AuthMethod::Trust | AuthMethod::Password);
    } else {
        let record = slot_data.data();
        if !verified_by_pooler {
            if let Err(e) =
                security::verify_pooled_client(fd, method, &record, &user, auth_deadline)
            {
                report(fd, peer, &e);
                pool::give_back(ctx, lease);
                return 1;
            }
        }
        let server_fd = lease.fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        let setup = setup_sql(&startup, &record);
        let mut changed = Vec::new();
        if !setup.is_empty() {
            setup_applied = true;
            match backend::run_setup(server_fd, &setup, Instant::now() + backend::RESET_TIMEOUT) {
                Ok(c) => changed = c,
                Err(backend::SetupError::Server(message)) => {
                    pool::give_back(ctx, lease);
                    return refuse(fd, peer, "22023", message);
                }
                Err(backend::SetupError::Io(message)) => {
                    pool::kill(ctx, lease);
                    return refuse(
                        fd,
                        peer,
                        "08006",
                        format!("preparing the pooled connection failed: {message}"),
                    );
                }
            }
        }
        let mut greeting = Vec::with_capacity(1024);
        messages::authentication_ok(&mut greeting);
        let reported = reported_params(record.session_reported(), &changed);
        greeting.extend_from_slice(&reported);
        if setup_applied {
            session_reported = Some(reported);
        }
        messages::backend_key_data(&mut greeting, client_key.0, client_key.1);
        messages::ready_for_query(&mut greeting, b'I');
        slot_data.with_data_mut(|d| {
            d.appname
                .set(startup.get("application_name").unwrap_or("").as_bytes())
        });
        slot.set_client_key(client_key.0, client_key.1);
        if write_all(fd, &greeting, auth_deadline).is_err() {
            if setup_applied {
                // The session has this client's parameters, which nobody will reset: close it.
                pool::kill(ctx, lease);
            } else {
                pool::give_back(ctx, lease);
            }
            return 1;
        }
        poolable = true;
    }
    log::debug!(
        "client {host}: {user}@{database} on slot {} ({}, waited {:?})",
        lease.slot,
        if lease.fresh {
            "new backend"
        } else {
            "pooled backend"
        },
        checkout.waited
    );
    ctx.region
        .header()
        .clients_served
        .fetch_add(1, Ordering::Relaxed);
    crate::title::set(
        ctx.config.main.update_process_title,
        &crate::title::worker_title(
            ctx.config.main.update_process_title,
            &user,
            &host,
            &database,
        ),
    );
    if ctx.config.main.log_connections {
        log::info!(
            "connection authorized: user={user} database={database} application_name={} host={host}",
            startup.get("application_name").unwrap_or("")
        );
    }
    let session_started = Instant::now();
    if ctx.config.main.pipeline == PipelineKind::Transaction {
        let login = if poolable {
            Some(pipeline::transaction::LoginBackend {
                lease,
                session_reported,
            })
        } else {
            pool::kill(ctx, lease);
            None
        };
        let client = pipeline::transaction::TxClient {
            fd,
            key: key.clone(),
            rule,
            startup: startup.clone(),
            client_key,
            credential: backend_credential.clone(),
        };
        // With the shared relay, this worker's work ends here: the relay serves the client.
        let (client, login) = match crate::relay::hand_over(ctx, client, login, &host) {
            Ok(()) => {
                log::debug!("client {host}: handed to the transaction relay");
                return 0;
            }
            Err(back) => *back,
        };
        let end = pipeline::transaction::run(ctx, client, login);
        log::debug!("transaction session ended: {end:?}");
        if ctx.config.main.log_disconnections {
            log_disconnection(session_started.elapsed(), &user, &database, &host);
        }
        return 0;
    }

    let server_fd = lease.fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
    let mut pipe: Box<dyn Pipeline> = match ctx.config.main.pipeline {
        PipelineKind::Session => Box::new(pipeline::Session::default()),
        PipelineKind::Auto | PipelineKind::Performance | PipelineKind::Transaction => {
            Box::new(pipeline::Performance)
        }
    };
    let outcome = pipeline::relay(fd, server_fd, slot, pipe.as_mut());
    let (end, tracker) = match outcome {
        Ok(o) => o,
        Err(e) => {
            log::warn!("relay failed: {e}");
            pool::kill(ctx, lease);
            return 1;
        }
    };
    log::debug!(
        "{} session on slot {} ended: {:?}",
        pipe.name(),
        lease.slot,
        end
    );
    if ctx.config.main.log_disconnections {
        log_disconnection(session_started.elapsed(), &user, &database, &host);
    }
    // The SETs that adapted a pooled backend to this client must not outlive it, whatever
    // server_reset_query is.
    let reset_query = if setup_applied {
        backend::resetting_all(&ctx.config.main.server_reset_query).0
    } else {
        ctx.config.main.server_reset_query.clone()
    };
    if poolable
        && end.backend_usable()
        && backend::clean(
            server_fd,
            server,
            slot.backend_key(),
            end,
            tracker,
            &reset_query,
        )
    {
        pool::give_back(ctx, lease);
    } else {
        pool::kill(ctx, lease);
    }
    0
}

/// The `log_disconnections` line (PostgreSQL's wording), for workers and the transaction relay.
pub fn log_disconnection(session: std::time::Duration, user: &str, database: &str, host: &str) {
    log::info!(
        "disconnection: session time: {:.3} s user={user} database={database} host={host}",
        session.as_secs_f64()
    );
}

fn decode_params(bytes: &[u8]) -> Vec<(&str, &str)> {
    let mut parts = bytes
        .split(|&b| b == 0)
        .map(|p| std::str::from_utf8(p).unwrap_or(""));
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
        if k.is_empty() {
            break;
        }
        out.push((k, v));
    }
    out
}

fn quote_ident(v: &str) -> String {
    format!("\"{}\"", v.replace('"', "\"\""))
}

/// SET statements that make a pooled backend (whose session has `record`'s parameters) match the new
/// client's startup parameters.
pub(crate) fn setup_sql(startup: &StartupMessage, record: &SlotData) -> String {
    session_setup(startup, record.session_params(), record.startup.get())
}

/// SET and RESET statements that take a session with the startup parameters `session` to the
/// client's; `opener`: the parameters the backend was opened with (what RESET goes back to).
fn session_setup(startup: &StartupMessage, session: &[u8], opener: &[u8]) -> String {
    let old = decode_params(session);
    let opener = decode_params(opener);
    // Setting names are case-insensitive (TimeZone from one driver, timezone from another).
    let sent = |name: &str| {
        startup
            .params
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    };
    let mut sql = String::new();
    for (k, v) in &startup.params {
        if !backend::names_a_setting(k) {
            continue;
        }
        if old
            .iter()
            .any(|(ok, ov)| ok.eq_ignore_ascii_case(k) && ov == v)
        {
            continue;
        }
        sql.push_str(&format!(
            "SET {} TO {};",
            quote_ident(k),
            backend::quote_literal(v)
        ));
    }
    // What an earlier client set and this one did not send goes back to the opener's value, as if
    // this client had the backend to itself from its start (application_name: below).
    for (k, v) in &old {
        if k.eq_ignore_ascii_case("application_name") || sent(k) {
            continue;
        }
        if opener
            .iter()
            .any(|(ok, ov)| ok.eq_ignore_ascii_case(k) && ov == v)
        {
            continue;
        }
        sql.push_str(&format!("RESET {};", quote_ident(&k.to_ascii_lowercase())));
    }
    // A client that sent no application_name must not inherit the previous one.
    if !sent("application_name")
        && old
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("application_name") && !v.is_empty())
    {
        sql.push_str("SET application_name TO '';");
    }
    sql
}

/// ParameterStatus messages for the recorded ones (`recorded`, as received) with the changes a
/// server reported since applied.
pub(crate) fn reported_params(recorded: &[u8], changed: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(recorded.len() + 64);
    for (k, v) in merged_params(recorded, changed) {
        messages::parameter_status(&mut out, &k, &v);
    }
    out
}

/// The recorded ParameterStatus values with the changes applied.
fn merged_params(recorded: &[u8], changed: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut cur = recorded;
    while cur.len() >= 5 {
        let len = u32::from_be_bytes([cur[1], cur[2], cur[3], cur[4]]) as usize;
        if len < 4 || cur.len() < len + 1 {
            break;
        }
        if cur[0] == messages::tag::PARAMETER_STATUS {
            if let Ok((k, v)) = messages::parse_parameter_status(&cur[5..len + 1]) {
                out.push((
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                ));
            }
        }
        cur = &cur[len + 1..];
    }
    for (k, v) in changed {
        match out.iter_mut().find(|(ok, _)| ok == k) {
            Some(e) => e.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    out
}

/// Forwards a CancelRequest to the backend now serving the client that holds this key; a key that
/// matches no client (or a client between transactions, with no backend) is dropped, as PostgreSQL
/// drops a cancel for an idle session.
///
/// The slot's `cancels_in_flight` is raised before the key is checked a second time, and the owner
/// clears the key before it waits for that count to fall to zero when it hands the backend back: so a
/// cancel either sees that its client left the backend, or delays the hand-over until PostgreSQL has
/// taken the request (and ignored it, if the backend is idle by then). It never reaches the next client.
fn forward_cancel(ctx: &Context, pid: i32, secret: i32) {
    let matches = |key: (i32, i32)| {
        key.0 == pid && pgcorral_wire::ct_eq(&key.1.to_be_bytes(), &secret.to_be_bytes())
    };
    for (i, slot) in ctx.region.used_slots() {
        if !matches!(slot.state(), SlotState::InUse | SlotState::Gracefully) || pid == 0 {
            continue;
        }
        if !matches(slot.client_key()) {
            continue;
        }
        let stats = ctx.region.slot_stats(i);
        stats.cancels_in_flight.fetch_add(1, Ordering::SeqCst);
        // Read the backend only now that the owner cannot hand it over: then check the client is still
        // the one on it.
        let backend_key = slot.backend_key();
        let server = &ctx.config.servers[slot.server().min(ctx.config.servers.len() - 1)];
        if matches(slot.client_key()) {
            log::debug!("forwarding a cancel request to the backend of slot {i}");
            if let Err(e) = backend::cancel(server, backend_key) {
                log::warn!(
                    "cannot forward a cancel request to server \"{}\": {e}",
                    server.name
                );
            }
        } else {
            log::debug!("cancel request dropped: the client left the backend meanwhile");
        }
        stats.cancels_in_flight.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    log::debug!("cancel request for an unknown key, or a client with no backend, dropped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> StartupMessage {
        StartupMessage {
            major: 3,
            minor: 0,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn record_for(s: &StartupMessage) -> SlotData {
        let mut d = SlotData::default();
        d.startup.set(&backend::encode_params(s));
        d
    }

    #[test]
    fn setup_sets_only_what_differs() {
        let first = startup(&[
            ("user", "u"),
            ("application_name", "a"),
            ("client_encoding", "UTF8"),
        ]);
        let rec = record_for(&first);
        assert_eq!(setup_sql(&first, &rec), "");
        let second = startup(&[
            ("user", "u"),
            ("application_name", "b'x"),
            ("client_encoding", "UTF8"),
        ]);
        assert_eq!(
            setup_sql(&second, &rec),
            "SET \"application_name\" TO 'b''x';"
        );
        let third = startup(&[("user", "u")]);
        assert_eq!(setup_sql(&third, &rec), "SET application_name TO '';");
    }

    #[test]
    fn setup_resets_what_an_earlier_client_set() {
        let opener = startup(&[
            ("user", "u"),
            ("application_name", "o"),
            ("DateStyle", "ISO"),
        ]);
        let mut rec = record_for(&opener);
        let earlier = startup(&[
            ("user", "u"),
            ("application_name", "e"),
            ("extra_float_digits", "3"),
            ("DateStyle", "ISO"),
        ]);
        assert!(rec.set_session_params(&backend::encode_params(&earlier), b""));
        let next = startup(&[("user", "u"), ("application_name", "e")]);
        // extra_float_digits goes back to the opener's (none); DateStyle already is the opener's;
        // application_name is already the client's.
        assert_eq!(setup_sql(&next, &rec), "RESET \"extra_float_digits\";");
        // Once the session is back at the opener's parameters, only what differs from those counts.
        rec.forget_session_params();
        assert_eq!(setup_sql(&next, &rec), "SET \"application_name\" TO 'e';");
    }

    #[test]
    fn setting_names_compare_without_case() {
        let mut rec = record_for(&startup(&[("user", "u")]));
        let earlier = startup(&[("user", "u"), ("TimeZone", "UTC")]);
        assert!(rec.set_session_params(&backend::encode_params(&earlier), b""));
        // Another spelling of the same setting is SET, not also RESET.
        let other = startup(&[("user", "u"), ("timezone", "Europe/Paris")]);
        assert_eq!(
            setup_sql(&other, &rec),
            "SET \"timezone\" TO 'Europe/Paris';"
        );
        let same = startup(&[("user", "u"), ("timezone", "UTC")]);
        assert_eq!(setup_sql(&same, &rec), "");
        let none = startup(&[("user", "u")]);
        assert_eq!(setup_sql(&none, &rec), "RESET \"timezone\";");
    }

    #[test]
    fn merged_params_apply_changes() {
        let mut raw = Vec::new();
        messages::parameter_status(&mut raw, "application_name", "a");
        messages::parameter_status(&mut raw, "TimeZone", "UTC");
        let merged = merged_params(&raw, &[("application_name".into(), "b".into())]);
        assert_eq!(
            merged,
            vec![
                ("application_name".into(), "b".into()),
                ("TimeZone".into(), "UTC".into())
            ]
        );
        assert!(merged_params(&raw[..7], &[]).is_empty());
    }

    #[test]
    fn unix_clients_are_local() {
        assert_eq!(host_name(None), "[local]");
        assert_eq!(
            host_name(Some("::ffff:127.0.0.1".parse().unwrap())),
            "127.0.0.1"
        );
    }
}
