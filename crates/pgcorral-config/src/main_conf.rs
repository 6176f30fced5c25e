//! `pgcorral.conf`: the `[pgcorral]` (or `[pgagroal]`) section and the server sections.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ini::{self, Item};
use crate::values::{parse_bool, parse_either, parse_size, parse_time, parse_uint};
use crate::{ConfigError, LogLevel, LogType, MainConfig, Pipeline, ProcessTitle, ServerConfig};

/// The most server sections pgagroal accepts.
pub const MAX_SERVERS: usize = 64;
/// The largest `max_connections` pgagroal accepts.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Most protocol-level prepared statements kept per backend by the transaction pipeline.
pub const MAX_PREPARED_STATEMENTS: usize = 4096;

/// Names accepted for the main section.
const MAIN_SECTIONS: [&str; 2] = ["pgcorral", "pgagroal"];

/// Global sections pgagroal knows that pgcorral does not support yet.
const UNSUPPORTED_SECTIONS: [&str; 2] = ["health_check", "prometheus"];

/// pgagroal keys of the main section that pgcorral does not support yet.
const UNSUPPORTED_MAIN_KEYS: &[&str] = &[
    "metrics",
    "metrics_cache_max_age",
    "metrics_cache_max_size",
    "metrics_cert_file",
    "metrics_key_file",
    "metrics_ca_file",
    "console",
    "connection_retry_delay",
    "idle_timeout",
    "rotate_frontend_password_timeout",
    "rotate_frontend_password_length",
    "max_connection_age",
    "flush_timeout",
    "validation",
    "background_interval",
    "max_retries",
    "failover",
    "failover_script",
    "failover_notify_script",
    "tls",
    "tls_cert_file",
    "tls_key_file",
    "tls_ca_file",
    "ev_backend",
    "libev",
    "hugepage",
    "tracker",
    "track_prepared_statements",
    "server_reset_query_behavior_on_failure",
    "health_check",
    "health_check_period",
    "health_check_timeout",
    "health_check_user",
    "startup_validation",
    "disconnect_client",
    "disconnect_client_force",
    "buffer_size",
    "non_blocking",
];

/// pgagroal keys of a server section that pgcorral does not support yet.
const UNSUPPORTED_SERVER_KEYS: &[&str] = &[
    "tls",
    "tls_cert_file",
    "tls_key_file",
    "tls_ca_file",
    "channel_binding",
];

struct Entry {
    key: String,
    value: String,
    line: usize,
}

struct Section {
    name: String,
    line: usize,
    entries: Vec<Entry>,
}

/// Parses pgcorral.conf into the main section and the servers.
pub(crate) fn load(
    path: &Path,
    out: &mut Vec<String>,
) -> Result<(MainConfig, Vec<ServerConfig>), ConfigError> {
    // (line, text), sorted by line at the end so warnings come in file order.
    let mut warnings: Vec<(usize, String)> = Vec::new();
    let warnings = &mut warnings;
    let lines = ini::read_lines(path)?;
    let items = ini::parse(path, &lines)?;
    let sections = group(path, items)?;

    let mut main: Option<&Section> = None;
    let mut server_sections: Vec<&Section> = Vec::new();
    for section in &sections {
        if MAIN_SECTIONS.contains(&section.name.as_str()) {
            if let Some(first) = main {
                return Err(ConfigError::Syntax {
                    path: path.to_path_buf(),
                    line: section.line,
                    message: format!(
                        "section [{}] is defined again (first [{}] on line {}); \
                         exactly one [pgcorral] or [pgagroal] section is allowed",
                        section.name, first.name, first.line
                    ),
                });
            }
            main = Some(section);
        } else if UNSUPPORTED_SECTIONS.contains(&section.name.as_str()) {
            warnings.push((
                section.line,
                format!(
                    "{}:{}: section [{}] is not supported yet, ignored",
                    path.display(),
                    section.line,
                    section.name
                ),
            ));
        } else {
            server_sections.push(section);
        }
    }
    let Some(main) = main else {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            message: "no [pgcorral] (or [pgagroal]) section".to_string(),
        });
    };
    let main_config = parse_main(path, main, warnings)?;
    let servers = parse_servers(path, &server_sections, warnings)?;
    warnings.sort_by_key(|(line, _)| *line);
    out.extend(warnings.drain(..).map(|(_, text)| text));
    Ok((main_config, servers))
}

/// Groups entries under their sections, refusing entries before the first section.
fn group(path: &Path, items: Vec<Item>) -> Result<Vec<Section>, ConfigError> {
    let mut sections: Vec<Section> = Vec::new();
    for item in items {
        match item {
            Item::Section { name, line } => sections.push(Section {
                name,
                line,
                entries: Vec::new(),
            }),
            Item::Entry { key, value, line } => match sections.last_mut() {
                Some(section) => section.entries.push(Entry { key, value, line }),
                None => {
                    return Err(ConfigError::Syntax {
                        path: path.to_path_buf(),
                        line,
                        message: format!("key '{key}' outside of any [section]"),
                    })
                }
            },
        }
    }
    Ok(sections)
}

/// The shared relay's default nice value (see `doc/performance.md` for the measurement behind it).
pub const DEFAULT_RELAY_NICE: i32 = -10;

/// A nice value, -20 (highest priority) to 19.
pub fn parse_nice(value: &str) -> Result<i32, String> {
    match value.trim().parse::<i32>() {
        Ok(n) if (-20..=19).contains(&n) => Ok(n),
        _ => Err("use a nice value from -20 to 19".to_string()),
    }
}

fn bad(path: &Path, entry: &Entry, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        path: path.to_path_buf(),
        line: entry.line,
        key: entry.key.clone(),
        value: entry.value.clone(),
        reason: reason.into(),
    }
}

/// Warns about a key seen twice in one section; the last value wins.
fn note_duplicate(
    path: &Path,
    section: &Section,
    entry: &Entry,
    seen: &mut HashMap<String, usize>,
    warnings: &mut Vec<(usize, String)>,
) {
    if let Some(first) = seen.insert(entry.key.clone(), entry.line) {
        warnings.push((entry.line, format!(
            "{}:{}: key '{}' in section [{}] is set again (also on line {}), the last value is used",
            path.display(),
            entry.line,
            entry.key,
            section.name,
            first
        )));
    }
}

/// The warning for a key pgcorral ignores: one of pgagroal's it does not support yet, or an unknown one.
fn ignored_key(
    path: &Path,
    section: &Section,
    entry: &Entry,
    key: &str,
    not_yet: &[&str],
) -> (usize, String) {
    let (at, line, name) = (path.display(), entry.line, &section.name);
    let text = if not_yet.contains(&key) {
        format!("{at}:{line}: key '{key}' in section [{name}] is not supported yet, ignored")
    } else {
        format!("{at}:{line}: unknown key '{key}' in section [{name}], ignored")
    };
    (line, text)
}

fn non_empty(path: &Path, entry: &Entry) -> Result<String, ConfigError> {
    if entry.value.is_empty() {
        Err(bad(path, entry, "must not be empty"))
    } else {
        Ok(entry.value.clone())
    }
}

fn parse_main(
    path: &Path,
    section: &Section,
    warnings: &mut Vec<(usize, String)>,
) -> Result<MainConfig, ConfigError> {
    let mut host = None;
    let mut port = None;
    let mut unix_socket_dir = None;
    let mut max_connections = 100usize;
    let mut pipeline = Pipeline::Auto;
    let mut log_type = LogType::Console;
    let mut log_level = LogLevel::Info;
    let mut log_path = PathBuf::from("pgcorral.log");
    let mut blocking_timeout = Duration::from_secs(30);
    let mut authentication_timeout = Duration::from_secs(5);
    let mut keep_alive = true;
    let mut nodelay = true;
    let mut backlog = None;
    let mut server_reset_query = "DISCARD ALL".to_string();
    let mut server_reset_query_always = false;
    let mut max_prepared_statements = 256usize;
    let mut pidfile = None;
    let mut management = 0u16;
    let mut log_line_prefix = "%Y-%m-%d %H:%M:%S".to_string();
    let mut log_rotation_size = 0u64;
    let mut log_rotation_age = Duration::ZERO;
    let mut log_mode_append = true;
    let mut log_connections = false;
    let mut log_disconnections = false;
    let mut update_process_title = ProcessTitle::Verbose;
    let mut worker_sched_batch = true;
    let mut transaction_relay_shared = true;
    let mut transaction_relay_nice = DEFAULT_RELAY_NICE;
    let mut allow_unknown_users = true;
    let mut auth_query = false;
    let mut auth_query_function = String::new();
    let mut auth_query_cache = Duration::from_secs(60);

    let mut seen = HashMap::new();
    for entry in &section.entries {
        note_duplicate(path, section, entry, &mut seen, warnings);
        let value = entry.value.as_str();
        match entry.key.as_str() {
            "host" => host = Some(non_empty(path, entry)?),
            "port" => {
                let n = parse_uint(value, 1, u16::MAX.into()).map_err(|r| bad(path, entry, r))?;
                port = Some(n as u16);
            }
            "unix_socket_dir" => unix_socket_dir = Some(PathBuf::from(non_empty(path, entry)?)),
            "max_connections" => {
                max_connections = parse_uint(value, 1, MAX_CONNECTIONS as u64)
                    .map_err(|r| bad(path, entry, r))? as usize;
            }
            "pipeline" => {
                pipeline = match value.to_ascii_lowercase().as_str() {
                    "auto" => Pipeline::Auto,
                    "performance" => Pipeline::Performance,
                    "session" => Pipeline::Session,
                    "transaction" => Pipeline::Transaction,
                    _ => {
                        return Err(bad(
                            path,
                            entry,
                            "expected auto, performance, session or transaction",
                        ))
                    }
                }
            }
            "log_type" => {
                log_type = match value.to_ascii_lowercase().as_str() {
                    "console" => LogType::Console,
                    "file" => LogType::File,
                    "syslog" => LogType::Syslog,
                    _ => return Err(bad(path, entry, "expected console, file or syslog")),
                }
            }
            "log_level" => {
                log_level = LogLevel::parse(value).ok_or_else(|| {
                    bad(
                        path,
                        entry,
                        "expected fatal, error, warn, info, debug, debug1 to debug5 or trace",
                    )
                })?
            }
            "log_path" => log_path = PathBuf::from(non_empty(path, entry)?),
            "blocking_timeout" => {
                blocking_timeout = parse_time(value).map_err(|r| bad(path, entry, r))?
            }
            "authentication_timeout" => {
                let t = parse_time(value).map_err(|r| bad(path, entry, r))?;
                if t.is_zero() {
                    return Err(bad(path, entry, "must be greater than 0"));
                }
                authentication_timeout = t;
            }
            "keep_alive" => keep_alive = parse_bool(value).map_err(|r| bad(path, entry, r))?,
            "nodelay" => nodelay = parse_bool(value).map_err(|r| bad(path, entry, r))?,
            "backlog" => {
                backlog = Some(
                    parse_uint(value, 1, i32::MAX as u64).map_err(|r| bad(path, entry, r))? as u32,
                )
            }
            "server_reset_query" => server_reset_query = value.to_string(),
            "server_reset_query_always" => {
                server_reset_query_always = parse_bool(value).map_err(|r| bad(path, entry, r))?
            }
            "max_prepared_statements" => {
                max_prepared_statements = parse_uint(value, 0, MAX_PREPARED_STATEMENTS as u64)
                    .map_err(|r| bad(path, entry, r))?
                    as usize
            }
            "log_line_prefix" => log_line_prefix = value.to_string(),
            "log_rotation_size" => {
                log_rotation_size = parse_size(value).map_err(|r| bad(path, entry, r))?
            }
            "log_rotation_age" => {
                log_rotation_age = parse_time(value).map_err(|r| bad(path, entry, r))?
            }
            "log_mode" => {
                log_mode_append =
                    parse_either(value, "append", "create").map_err(|r| bad(path, entry, r))?
            }
            "log_connections" => {
                log_connections = parse_bool(value).map_err(|r| bad(path, entry, r))?
            }
            "log_disconnections" => {
                log_disconnections = parse_bool(value).map_err(|r| bad(path, entry, r))?
            }
            "update_process_title" => {
                update_process_title = ProcessTitle::parse(value).ok_or_else(|| {
                    bad(
                        path,
                        entry,
                        "use never, off, strict, minimal, verbose or full",
                    )
                })?
            }
            "worker_scheduler" => {
                worker_sched_batch =
                    parse_either(value, "batch", "normal").map_err(|r| bad(path, entry, r))?
            }
            "transaction_relay" => {
                transaction_relay_shared =
                    parse_either(value, "shared", "worker").map_err(|r| bad(path, entry, r))?
            }
            "transaction_relay_nice" => {
                transaction_relay_nice = parse_nice(value).map_err(|r| bad(path, entry, r))?
            }
            "management" => {
                management = parse_uint(value, 0, 65535).map_err(|r| bad(path, entry, r))? as u16
            }
            "allow_unknown_users" => {
                allow_unknown_users = parse_bool(value).map_err(|r| bad(path, entry, r))?
            }
            "auth_query" => auth_query = parse_bool(value).map_err(|r| bad(path, entry, r))?,
            "auth_query_function" => {
                if !value.is_empty() && !is_qualified_name(value) {
                    return Err(bad(
                        path,
                        entry,
                        "must be a function name, optionally schema-qualified (letters, digits, _ and one .)"
                            .to_string(),
                    ));
                }
                auth_query_function = value.to_string()
            }
            "auth_query_cache" => {
                auth_query_cache = parse_time(value).map_err(|r| bad(path, entry, r))?
            }
            "pidfile" => {
                pidfile = if value.is_empty() {
                    None
                } else {
                    Some(PathBuf::from(value))
                }
            }
            key => warnings.push(ignored_key(
                path,
                section,
                entry,
                key,
                UNSUPPORTED_MAIN_KEYS,
            )),
        }
    }

    let missing = |key: &str| ConfigError::Missing {
        path: path.to_path_buf(),
        section: section.name.clone(),
        key: key.to_string(),
    };
    let host = host.ok_or_else(|| missing("host"))?;
    let port = port.ok_or_else(|| missing("port"))?;
    let unix_socket_dir = unix_socket_dir.ok_or_else(|| missing("unix_socket_dir"))?;
    let backlog = backlog.unwrap_or_else(|| (max_connections / 4).max(16) as u32);

    Ok(MainConfig {
        host,
        port,
        unix_socket_dir,
        max_connections,
        pipeline,
        log_type,
        log_level,
        log_path,
        blocking_timeout,
        authentication_timeout,
        keep_alive,
        nodelay,
        backlog,
        server_reset_query,
        server_reset_query_always,
        max_prepared_statements,
        pidfile,
        management,
        log_line_prefix,
        log_rotation_size,
        log_rotation_age,
        log_mode_append,
        log_connections,
        log_disconnections,
        update_process_title,
        worker_sched_batch,
        transaction_relay_shared,
        transaction_relay_nice,
        allow_unknown_users,
        auth_query,
        auth_query_function,
        auth_query_cache,
    })
}

/// A function name pgcorral may put into SQL unquoted: `name` or `schema.name`, identifier characters.
fn is_qualified_name(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() < 64
                && p.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

fn parse_servers(
    path: &Path,
    sections: &[&Section],
    warnings: &mut Vec<(usize, String)>,
) -> Result<Vec<ServerConfig>, ConfigError> {
    let mut servers: Vec<ServerConfig> = Vec::new();
    // Line of each server's section header, parallel to `servers`.
    let mut header_lines: Vec<usize> = Vec::new();
    for section in sections {
        if let Some(i) = servers.iter().position(|s| s.name == section.name) {
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                line: section.line,
                message: format!(
                    "duplicate server section [{}] (first defined on line {})",
                    section.name, header_lines[i]
                ),
            });
        }
        if servers.len() == MAX_SERVERS {
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                line: section.line,
                message: format!("too many server sections: at most {MAX_SERVERS} are allowed"),
            });
        }
        let mut host = None;
        let mut port = None;
        let mut primary = false;
        let mut seen = HashMap::new();
        for entry in &section.entries {
            note_duplicate(path, section, entry, &mut seen, warnings);
            match entry.key.as_str() {
                "host" => host = Some(non_empty(path, entry)?),
                "port" => {
                    let n = parse_uint(&entry.value, 1, u16::MAX.into())
                        .map_err(|r| bad(path, entry, r))?;
                    port = Some(n as u16);
                }
                "primary" => {
                    primary = parse_bool(&entry.value).map_err(|r| bad(path, entry, r))?;
                }
                key => warnings.push(ignored_key(
                    path,
                    section,
                    entry,
                    key,
                    UNSUPPORTED_SERVER_KEYS,
                )),
            }
        }
        let missing = |key: &str| ConfigError::Missing {
            path: path.to_path_buf(),
            section: section.name.clone(),
            key: key.to_string(),
        };
        let host = host.ok_or_else(|| missing("host"))?;
        let port = port.ok_or_else(|| missing("port"))?;
        if let Some(i) = servers
            .iter()
            .position(|s| s.port == port && s.host.eq_ignore_ascii_case(&host))
        {
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                line: section.line,
                message: format!(
                    "server [{}] has the same host and port ({}:{}) as server [{}] on line {}",
                    section.name, host, port, servers[i].name, header_lines[i]
                ),
            });
        }
        if primary {
            if let Some(i) = servers.iter().position(|s| s.primary) {
                return Err(ConfigError::Syntax {
                    path: path.to_path_buf(),
                    line: section.line,
                    message: format!(
                        "server [{}] is marked primary, but server [{}] on line {} already is; \
                         at most one primary is allowed",
                        section.name, servers[i].name, header_lines[i]
                    ),
                });
            }
        }
        servers.push(ServerConfig {
            name: section.name.clone(),
            host,
            port,
            primary,
        });
        header_lines.push(section.line);
    }
    if servers.is_empty() {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            message:
                "no server section: at least one [server] section with host and port is required"
                    .to_string(),
        });
    }
    Ok(servers)
}
