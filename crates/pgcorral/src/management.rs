//! The control protocol (doc/management.md): one length-prefixed JSON request and one response per
//! connection on `unix_socket_dir/.s.pgcorral.<port>` (mode 0600). Every command runs in main and does
//! only non-blocking work (reading the region, closing sockets main holds, signalling workers), so no
//! command needs a child.

use crate::daemon::{terminate_fd, Daemon};
use pgcorral_config::{Config, MAIN_KEYS};
use pgcorral_shmem::SlotState;
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Protocol version spoken.
pub const VERSION: u64 = 1;
/// Largest request accepted.
pub const MAX_REQUEST: usize = 65_536;
/// Time a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The files the daemon was started with (for reload and `conf ls`).
#[derive(Debug, Clone)]
pub struct Files {
    pub main: PathBuf,
    pub hba: PathBuf,
    pub limits: Option<PathBuf>,
    pub users: Option<PathBuf>,
    pub frontend: Option<PathBuf>,
    pub admins: Option<PathBuf>,
    pub superuser: Option<PathBuf>,
}

/// A control connection being read.
pub struct ControlConn {
    pub stream: UnixStream,
    pub buf: Vec<u8>,
    pub deadline: Instant,
}

impl ControlConn {
    /// Reads what is available; Some(request bytes) once complete, Err when the connection must close.
    pub fn read_request(&mut self) -> Result<Option<Vec<u8>>, String> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("closed before a whole request arrived".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            }
            if self.buf.len() > MAX_REQUEST + 4 {
                return Err("request too large".into());
            }
        }
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_REQUEST {
            return Err(format!(
                "request of {len} bytes refused (at most {MAX_REQUEST})"
            ));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        Ok(Some(self.buf[4..4 + len].to_vec()))
    }

    /// Writes the response (blocking, bounded: only the pgcorral user can connect here).
    pub fn respond(&mut self, response: &Value) {
        let body = response.to_string();
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body.as_bytes());
        let _ = self.stream.set_nonblocking(false);
        let _ = self.stream.set_write_timeout(Some(Duration::from_secs(5)));
        let _ = self.stream.write_all(&frame);
    }
}

fn ok(command: &str, result: Value) -> Value {
    json!({"version": VERSION, "command": command, "status": "ok", "result": result})
}

fn error(command: &str, message: impl Into<String>) -> Value {
    json!({"version": VERSION, "command": command, "status": "error", "error": message.into()})
}

fn arg<'a>(args: &'a Value, key: &str) -> Option<&'a str> {
    args.get(key).and_then(Value::as_str)
}

impl Daemon {
    /// Executes one request document.
    pub(crate) fn control(&mut self, request: &[u8]) -> Value {
        let doc: Value = match serde_json::from_slice(request) {
            Ok(v) => v,
            Err(e) => return error("", format!("malformed request: {e}")),
        };
        let command = doc
            .get("command")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if doc.get("version").and_then(Value::as_u64) != Some(VERSION) {
            return error(
                &command,
                format!("unsupported protocol version (this pgcorral speaks {VERSION})"),
            );
        }
        let args = doc.get("args").cloned().unwrap_or(Value::Null);
        log::info!("management: {command} {args}");
        match command.as_str() {
            "ping" => ok(
                &command,
                json!({"pid": std::process::id(), "version": env!("CARGO_PKG_VERSION")}),
            ),
            "status" => ok(
                &command,
                self.status(
                    args.get("details")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                ),
            ),
            "flush" => self.flush_command(
                &command,
                arg(&args, "mode").unwrap_or("gracefully"),
                arg(&args, "database").unwrap_or("all"),
            ),
            "enable" => {
                self.ctx
                    .region
                    .enable(arg(&args, "database").unwrap_or("all"));
                ok(&command, json!({"disabled": self.ctx.region.disabled()}))
            }
            "disable" => {
                let db = arg(&args, "database").unwrap_or("all");
                if !self.ctx.region.disable(db) {
                    return error(
                        &command,
                        format!(
                            "cannot disable \"{db}\": {} databases are disabled already",
                            pgcorral_shmem::MAX_DISABLED
                        ),
                    );
                }
                ok(&command, json!({"disabled": self.ctx.region.disabled()}))
            }
            "shutdown" => {
                let mode = arg(&args, "mode").unwrap_or("gracefully");
                let timeout = args.get("timeout").and_then(Value::as_u64);
                match mode {
                    "gracefully" => self.begin_graceful(timeout.map(Duration::from_secs)),
                    "immediate" => self.begin_stop(),
                    "cancel" => {
                        if self.is_stopping() {
                            return error(
                                &command,
                                "an immediate shutdown is under way and cannot be cancelled",
                            );
                        }
                        self.cancel_graceful();
                    }
                    other => return error(&command, format!("unknown shutdown mode \"{other}\"")),
                }
                ok(
                    &command,
                    json!({"mode": mode, "clients": self.client_count()}),
                )
            }
            "conf_reload" => match self.reload() {
                Ok((warnings, _)) => ok(
                    &command,
                    json!({"applied": true, "restart_required": [], "warnings": warnings}),
                ),
                Err(ReloadError::Restart(keys)) => error(
                    &command,
                    format!(
                        "reload refused: restart required for {}; running configuration kept",
                        keys.join(", ")
                    ),
                ),
                Err(ReloadError::Invalid(e)) => error(
                    &command,
                    format!("reload refused: {e}; running configuration kept"),
                ),
            },
            "conf_get" => {
                let main = &self.ctx.config.main;
                match arg(&args, "key") {
                    Some(key) => match main.get(key) {
                        Some(v) => ok(&command, json!({ key: v })),
                        None => error(&command, format!("unknown key \"{key}\"")),
                    },
                    None => {
                        let mut m = Map::new();
                        for k in MAIN_KEYS {
                            m.insert(
                                k.to_string(),
                                Value::String(main.get(k).unwrap_or_default()),
                            );
                        }
                        ok(&command, Value::Object(m))
                    }
                }
            }
            "conf_ls" => {
                let f = &self.files;
                let p = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
                ok(
                    &command,
                    json!({"main": f.main.display().to_string(), "hba": f.hba.display().to_string(),
                           "limits": p(&f.limits), "users": p(&f.users), "frontend_users": p(&f.frontend),
                           "admins": p(&f.admins), "superuser": p(&f.superuser)}),
                )
            }
            "conf_set" => {
                let (Some(key), Some(value)) = (arg(&args, "key"), arg(&args, "value")) else {
                    return error(&command, "conf_set needs a key and a value");
                };
                if let Err(e) = self.ctx.config.main.set(key, value) {
                    return error(&command, e);
                }
                self.replace_relay();
                if key == "log_level" {
                    log::set_max_level(self.ctx.config.main.log_level.to_filter());
                }
                if key == "log_line_prefix" {
                    crate::logging::set_prefix(&self.ctx.config.main.log_line_prefix);
                }
                ok(
                    &command,
                    json!({"key": key, "value": self.ctx.config.main.get(key)}),
                )
            }
            "clear" => match arg(&args, "what").unwrap_or("") {
                "prometheus" => {
                    self.ctx.region.reset_statistics();
                    ok(&command, json!({}))
                }
                "server" => match arg(&args, "name") {
                    // pgcorral keeps no failure state per server yet: clearing is valid and changes nothing.
                    Some(name) if self.ctx.config.servers.iter().any(|s| s.name == name) => {
                        ok(&command, json!({}))
                    }
                    Some(name) => error(&command, format!("unknown server \"{name}\"")),
                    None => error(&command, "clear server needs a server name"),
                },
                other => error(
                    &command,
                    format!("unknown clear target \"{other}\": use prometheus or server"),
                ),
            },
            "switch_to" => {
                let Some(name) = arg(&args, "server") else {
                    return error(&command, "switch_to needs a server name");
                };
                let Some(new) = self.ctx.config.servers.iter().position(|s| s.name == name) else {
                    return error(&command, format!("unknown server \"{name}\""));
                };
                let old = self.ctx.config.primary_index();
                for (i, s) in self.ctx.config.servers.iter_mut().enumerate() {
                    s.primary = i == new;
                }
                let flushed = if old != new {
                    self.flush_server(old)
                } else {
                    0
                };
                ok(&command, json!({"primary": name, "flushed": flushed}))
            }
            "" => error("", "request without a command"),
            other => error(other, format!("unknown command \"{other}\"")),
        }
    }

    fn flush_command(&mut self, command: &str, mode: &str, database: &str) -> Value {
        let mode = match mode {
            "idle" => FlushMode::Idle,
            "gracefully" => FlushMode::Gracefully,
            "all" => FlushMode::All,
            other => {
                return error(
                    command,
                    format!("unknown flush mode \"{other}\": use idle, gracefully or all"),
                )
            }
        };
        let real = self.ctx.config.resolve_database(database).to_string();
        let (closed, marked, signalled) = self.flush(mode, |d| real == "all" || d == real);
        ok(
            command,
            json!({"closed": closed, "marked": marked, "signalled": signalled}),
        )
    }

    /// Flushes the slots whose database matches: FREE ones are closed now; with `Gracefully` and `All`
    /// IN_USE ones are marked to close on return; with `All` their workers are told to stop.
    pub(crate) fn flush(
        &mut self,
        mode: FlushMode,
        matches: impl Fn(&str) -> bool,
    ) -> (usize, usize, usize) {
        let (mut closed, mut marked, mut signalled) = (0, 0, 0);
        let me = std::process::id() as i32;
        for i in 0..self.ctx.region.capacity() {
            let slot = self.ctx.region.slot(i);
            let state = slot.state();
            if !matches!(
                state,
                SlotState::Free | SlotState::InUse | SlotState::Gracefully
            ) {
                continue;
            }
            let database = self
                .ctx
                .region
                .slot_data(i)
                .with_data(|d| d.database.as_str().to_string());
            if !matches(&database) {
                continue;
            }
            match state {
                SlotState::Free if slot.transition(SlotState::Free, SlotState::Flush) => {
                    slot.set_owner(me);
                    if let Some((fd, _)) = self.ctx.main_fds[i].take() {
                        terminate_fd(fd);
                    }
                    self.ctx.region.release_slot(i, SlotState::Flush);
                    closed += 1;
                }
                SlotState::InUse | SlotState::Gracefully if mode != FlushMode::Idle => {
                    if state == SlotState::InUse
                        && slot.transition(SlotState::InUse, SlotState::Gracefully)
                    {
                        marked += 1;
                    }
                    if mode == FlushMode::All {
                        let owner = slot.owner();
                        if owner > 0 && self.is_client(owner) {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(owner),
                                nix::sys::signal::Signal::SIGTERM,
                            );
                            signalled += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        (closed, marked, signalled)
    }

    fn flush_server(&mut self, server: usize) -> usize {
        let on_server: Vec<bool> = (0..self.ctx.region.capacity())
            .map(|i| self.ctx.region.slot(i).server() == server)
            .collect();
        let names: Vec<String> = (0..self.ctx.region.capacity())
            .map(|i| {
                self.ctx
                    .region
                    .slot_data(i)
                    .with_data(|d| d.database.as_str().to_string())
            })
            .collect();
        let targets: std::collections::HashSet<String> = names
            .iter()
            .zip(&on_server)
            .filter(|(_, on)| **on)
            .map(|(n, _)| n.clone())
            .collect();
        let (closed, marked, _) = self.flush(FlushMode::Gracefully, |d| targets.contains(d));
        closed + marked
    }

    fn status(&self, details: bool) -> Value {
        let region = &self.ctx.region;
        let mut states: Map<String, Value> = Map::new();
        for name in [
            "init",
            "free",
            "in_use",
            "gracefully",
            "flush",
            "idle_check",
            "max_connection_age",
            "validation",
            "remove",
        ] {
            states.insert(name.into(), json!(0));
        }
        let mut slots = Vec::new();
        for (i, slot) in region.slots() {
            let state = slot.state();
            if state == SlotState::NotInit {
                continue;
            }
            if let Some(Value::Number(n)) = states.get(state.name()) {
                let v = n.as_u64().unwrap_or(0) + 1;
                states.insert(state.name().into(), json!(v));
            }
            if details {
                let d = region.slot_data(i).data();
                let server = self
                    .ctx
                    .config
                    .servers
                    .get(slot.server())
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                slots.push(json!({
                    "slot": i, "state": state.name(), "user": d.user.as_str(), "database": d.database.as_str(),
                    "application_name": d.appname.as_str(), "owner_pid": slot.owner(), "backend_pid": slot.backend_key().0,
                    "server": server, "since": slot.start_time(), "last_use": slot.last_use(),
                    "queries": region.slot_stats(i).queries.load(std::sync::atomic::Ordering::Relaxed),
                    "transactions": region.slot_stats(i).transactions.load(std::sync::atomic::Ordering::Relaxed),
                }));
            }
        }
        let limits: Vec<Value> = self
            .ctx
            .config
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| json!({"database": l.database, "user": l.user, "max_size": l.max_size, "backends": region.rule_count(i)}))
            .collect();
        let h = region.header();
        use std::sync::atomic::Ordering::Relaxed;
        let mut doc = json!({
            "pid": std::process::id(),
            "pipeline": self.ctx.config.main.get("pipeline"),
            "max_connections": self.ctx.config.main.max_connections,
            "active_backends": region.active(),
            "clients": self.client_count(),
            "waiting": region.waiting(),
            "shutdown": if self.is_stopping() { "immediate" } else if region.gracefully() { "gracefully" } else { "none" },
            "disabled": region.disabled(),
            "states": states,
            "limits": limits,
            "stats": {
                "clients_served": h.clients_served.load(Relaxed), "clients_waited": h.clients_waited.load(Relaxed),
                "wait_timeouts": h.wait_timeouts.load(Relaxed), "backends_created": h.backends_created.load(Relaxed),
                "backends_killed": h.backends_killed.load(Relaxed),
                "wait_time_us": h.wait_time_us.load(Relaxed), "checkouts_without_wait": h.checkouts.load(Relaxed),
                "queries": region.used_slots().map(|(i, _)| region.slot_stats(i).queries.load(Relaxed)).sum::<u64>(),
                "transactions": region.used_slots().map(|(i, _)| region.slot_stats(i).transactions.load(Relaxed)).sum::<u64>(),
            },
        });
        if details {
            doc["slots"] = Value::Array(slots);
        }
        doc
    }

    /// Re-reads every file; applies them only when nothing that needs a restart changed.
    pub(crate) fn reload(&mut self) -> Result<(Vec<String>, ()), ReloadError> {
        crate::notify::notify("RELOADING=1");
        let outcome = self.reload_files();
        crate::notify::notify("READY=1");
        outcome
    }

    fn reload_files(&mut self) -> Result<(Vec<String>, ()), ReloadError> {
        let f = self.files.clone();
        let (config, warnings) = Config::load(&f.main, &f.hba, f.limits.as_deref())
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let restart = self.ctx.config.restart_required(&config);
        if !restart.is_empty() {
            return Err(ReloadError::Restart(restart));
        }
        let secrets = self
            .ctx
            .secrets
            .reload(
                f.users.as_deref(),
                f.frontend.as_deref(),
                f.admins.as_deref(),
                f.superuser.as_deref(),
            )
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        if config.main.auth_query && secrets.superuser().is_none() {
            return Err(ReloadError::Invalid(
                "auth_query = on needs the superuser file (-S)".into(),
            ));
        }
        log::set_max_level(config.main.log_level.to_filter());
        crate::logging::set_prefix(&config.main.log_line_prefix);
        self.ctx.config = config;
        self.ctx.secrets = secrets;
        self.replace_relay();
        log::info!("configuration reloaded: new clients use it, connected ones go on unchanged");
        Ok((warnings, ()))
    }
}

/// Why a reload was refused.
#[derive(Debug)]
pub enum ReloadError {
    Restart(Vec<String>),
    Invalid(String),
}

/// `flush` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    Idle,
    Gracefully,
    All,
}
