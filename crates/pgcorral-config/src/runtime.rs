//! What the running daemon needs beyond loading: reading the main section alone (for pgcorral-ctl),
//! showing and changing keys at run time, and deciding whether a reload needs a restart.

use crate::values::{parse_bool, parse_time, parse_uint};
use crate::{Config, ConfigError, LogLevel, LogType, MainConfig, Pipeline, ProcessTitle};
use std::path::Path;

impl Config {
    /// Reads only the `[pgcorral]` section of pgcorral.conf (what a client tool needs to find the
    /// daemon's sockets).
    pub fn load_main(conf: &Path) -> Result<MainConfig, ConfigError> {
        let mut warnings = Vec::new();
        crate::main_conf::load(conf, &mut warnings).map(|(main, _)| main)
    }

    /// What changed between `self` (running) and `new` (re-read) that only a restart can apply.
    pub fn restart_required(&self, new: &Config) -> Vec<String> {
        let (a, b) = (&self.main, &new.main);
        let mut changed = Vec::new();
        let mut check = |key: &str, differs: bool| {
            if differs {
                changed.push(key.to_string());
            }
        };
        check("host", a.host != b.host);
        check("port", a.port != b.port);
        check("unix_socket_dir", a.unix_socket_dir != b.unix_socket_dir);
        check("max_connections", a.max_connections != b.max_connections);
        check("pipeline", a.pipeline != b.pipeline);
        check(
            "transaction_relay_nice",
            a.transaction_relay_nice != b.transaction_relay_nice,
        );
        check(
            "transaction_relay",
            a.transaction_relay_shared != b.transaction_relay_shared,
        );
        check(
            "max_prepared_statements",
            a.max_prepared_statements != b.max_prepared_statements,
        );
        check("log_type", a.log_type != b.log_type);
        check("pidfile", a.pidfile != b.pidfile);
        check("management", a.management != b.management);
        let servers = |c: &Config| -> Vec<(String, String, u16)> {
            c.servers
                .iter()
                .map(|s| (s.name.clone(), s.host.clone(), s.port))
                .collect()
        };
        check("servers", servers(self) != servers(new));
        let limits = |c: &Config| -> Vec<(String, String, usize, usize, usize)> {
            c.limits
                .iter()
                .map(|l| {
                    (
                        l.database.clone(),
                        l.user.clone(),
                        l.max_size,
                        l.initial_size,
                        l.min_size,
                    )
                })
                .collect()
        };
        check("limits", limits(self) != limits(new));
        changed
    }
}

/// Keys `MainConfig::get` knows, in the order `conf get` lists them.
pub const MAIN_KEYS: &[&str] = &[
    "host",
    "port",
    "unix_socket_dir",
    "max_connections",
    "pipeline",
    "log_type",
    "log_level",
    "log_path",
    "log_line_prefix",
    "log_rotation_size",
    "log_rotation_age",
    "log_mode",
    "log_connections",
    "log_disconnections",
    "update_process_title",
    "worker_scheduler",
    "transaction_relay",
    "transaction_relay_nice",
    "blocking_timeout",
    "authentication_timeout",
    "keep_alive",
    "nodelay",
    "backlog",
    "server_reset_query",
    "server_reset_query_always",
    "max_prepared_statements",
    "pidfile",
    "management",
    "allow_unknown_users",
    "auth_query",
    "auth_query_function",
    "auth_query_cache",
];

fn on_off(b: bool) -> String {
    if b { "on" } else { "off" }.to_string()
}

impl MainConfig {
    /// A key's current value as text (`None` for an unknown key).
    pub fn get(&self, key: &str) -> Option<String> {
        Some(match key {
            "host" => self.host.clone(),
            "port" => self.port.to_string(),
            "unix_socket_dir" => self.unix_socket_dir.display().to_string(),
            "max_connections" => self.max_connections.to_string(),
            "pipeline" => match self.pipeline {
                Pipeline::Auto => "auto",
                Pipeline::Performance => "performance",
                Pipeline::Session => "session",
                Pipeline::Transaction => "transaction",
            }
            .to_string(),
            "log_type" => match self.log_type {
                LogType::Console => "console",
                LogType::File => "file",
                LogType::Syslog => "syslog",
            }
            .to_string(),
            "log_level" => match self.log_level {
                LogLevel::Fatal => "fatal".to_string(),
                LogLevel::Error => "error".to_string(),
                LogLevel::Warn => "warn".to_string(),
                LogLevel::Info => "info".to_string(),
                LogLevel::Debug(n) => format!("debug{n}"),
                LogLevel::Trace => "trace".to_string(),
            },
            "log_path" => self.log_path.display().to_string(),
            "log_line_prefix" => self.log_line_prefix.clone(),
            "log_rotation_size" => self.log_rotation_size.to_string(),
            "log_rotation_age" => format!("{}s", self.log_rotation_age.as_secs()),
            "log_mode" => if self.log_mode_append {
                "append"
            } else {
                "create"
            }
            .to_string(),
            "log_connections" => on_off(self.log_connections),
            "transaction_relay_nice" => self.transaction_relay_nice.to_string(),
            "transaction_relay" => if self.transaction_relay_shared {
                "shared"
            } else {
                "worker"
            }
            .to_string(),
            "worker_scheduler" => if self.worker_sched_batch {
                "batch"
            } else {
                "normal"
            }
            .to_string(),
            "log_disconnections" => on_off(self.log_disconnections),
            "update_process_title" => match self.update_process_title {
                ProcessTitle::Never => "never",
                ProcessTitle::Strict => "strict",
                ProcessTitle::Minimal => "minimal",
                ProcessTitle::Verbose => "verbose",
            }
            .to_string(),
            "blocking_timeout" => format!("{}s", self.blocking_timeout.as_secs()),
            "authentication_timeout" => format!("{}s", self.authentication_timeout.as_secs()),
            "keep_alive" => on_off(self.keep_alive),
            "nodelay" => on_off(self.nodelay),
            "backlog" => self.backlog.to_string(),
            "server_reset_query" => self.server_reset_query.clone(),
            "server_reset_query_always" => on_off(self.server_reset_query_always),
            "max_prepared_statements" => self.max_prepared_statements.to_string(),
            "pidfile" => self
                .pidfile
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            "management" => self.management.to_string(),
            "allow_unknown_users" => on_off(self.allow_unknown_users),
            "auth_query" => on_off(self.auth_query),
            "auth_query_function" => self.auth_query_function.clone(),
            "auth_query_cache" => format!("{}s", self.auth_query_cache.as_secs()),
            _ => return None,
        })
    }

    /// Changes a key that needs no restart. Err says why not (unknown key, restart-only key, bad value).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "log_level" => {
                self.log_level = LogLevel::parse(value).ok_or_else(|| {
                    format!(
                        "invalid log_level '{value}': use fatal, error, warn, info, debug1..debug5"
                    )
                })?
            }
            "blocking_timeout" => self.blocking_timeout = parse_time(value)?,
            "log_line_prefix" => self.log_line_prefix = value.to_string(),
            "log_rotation_size" => self.log_rotation_size = crate::values::parse_size(value)?,
            "log_rotation_age" => self.log_rotation_age = parse_time(value)?,
            "log_connections" => self.log_connections = parse_bool(value)?,
            "worker_scheduler" => {
                self.worker_sched_batch = match value.to_ascii_lowercase().as_str() {
                    "batch" => true,
                    "normal" => false,
                    _ => {
                        return Err(format!(
                            "invalid worker_scheduler '{value}': use batch or normal"
                        ))
                    }
                }
            }
            "log_disconnections" => self.log_disconnections = parse_bool(value)?,
            "update_process_title" => {
                self.update_process_title = ProcessTitle::parse(value)
                    .ok_or_else(|| format!("invalid update_process_title '{value}'"))?
            }
            "authentication_timeout" => {
                let t = parse_time(value)?;
                if t.is_zero() {
                    return Err("authentication_timeout must be greater than 0".into());
                }
                self.authentication_timeout = t;
            }
            "keep_alive" => self.keep_alive = parse_bool(value)?,
            "nodelay" => self.nodelay = parse_bool(value)?,
            "backlog" => self.backlog = parse_uint(value, 1, i32::MAX as u64)? as u32,
            "server_reset_query" => self.server_reset_query = value.to_string(),
            "server_reset_query_always" => self.server_reset_query_always = parse_bool(value)?,
            "allow_unknown_users" => self.allow_unknown_users = parse_bool(value)?,
            "auth_query" => self.auth_query = parse_bool(value)?,
            "auth_query_cache" => self.auth_query_cache = parse_time(value)?,
            "host"
            | "port"
            | "unix_socket_dir"
            | "max_connections"
            | "pipeline"
            | "transaction_relay"
            | "transaction_relay_nice"
            | "max_prepared_statements"
            | "log_type"
            | "pidfile"
            | "log_path"
            | "auth_query_function"
            | "log_mode" => {
                return Err(format!(
                    "'{key}' cannot be changed while pgcorral runs: edit the file and restart"
                ))
            }
            _ => return Err(format!("unknown key '{key}'")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn main_conf() -> MainConfig {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pgcorral-runtime-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pgcorral.conf");
        std::fs::write(
            &p,
            "[pgcorral]\nhost = *\nport = 2345\nunix_socket_dir = /tmp\n[s]\nhost=h\nport=5432\n",
        )
        .unwrap();
        let m = Config::load_main(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        m
    }

    #[test]
    fn every_listed_key_can_be_read() {
        let m = main_conf();
        for k in MAIN_KEYS {
            assert!(m.get(k).is_some(), "{k}");
        }
        assert_eq!(m.get("port").as_deref(), Some("2345"));
        assert_eq!(m.get("nope"), None);
    }

    #[test]
    fn set_changes_reloadable_keys_and_refuses_the_others() {
        let mut m = main_conf();
        m.set("log_level", "debug2").unwrap();
        assert_eq!(m.get("log_level").as_deref(), Some("debug2"));
        m.set("blocking_timeout", "5m").unwrap();
        assert_eq!(m.get("blocking_timeout").as_deref(), Some("300s"));
        assert!(m.set("port", "1").unwrap_err().contains("restart"));
        assert!(m.set("keep_alive", "maybe").is_err());
        assert!(m.set("whatever", "1").unwrap_err().contains("unknown"));
    }
}
