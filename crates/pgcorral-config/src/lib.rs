//! Configuration of pgcorral, a pgagroal-compatible PostgreSQL connection pooler.
//!
//! This crate reads and validates the three files pgcorral shares with
//! pgagroal, in pgagroal's formats:
//!
//! * `pgcorral.conf`: an INI file with one `[pgcorral]` (or `[pgagroal]`)
//!   section and one section per PostgreSQL server;
//! * `pgcorral_hba.conf`: the client access rules (`TYPE DATABASE USER ADDRESS METHOD`);
//! * `pgcorral_databases.conf` (optional): per database/user pool limits and aliases.
//!
//! [`Config::load`] returns a fully validated [`Config`] plus a list of
//! warnings (unknown or not yet supported keys, adjusted limits). Every error
//! names the file, and the line whenever there is one; no input makes this
//! crate panic. The lookups the daemon needs per client ([`Config::find_hba`],
//! [`Config::find_limit`], [`Config::resolve_database`]) follow pgagroal's rules.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod hba;
mod ini;
mod limits;
mod runtime;
pub use runtime::MAIN_KEYS;
mod main_conf;
mod values;

pub use limits::MAX_ALIASES;
pub use main_conf::{MAX_CONNECTIONS, MAX_PREPARED_STATEMENTS, MAX_SERVERS};

/// Everything that can go wrong while loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line that cannot be parsed, or a bad column of the HBA or limits file.
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A key of pgcorral.conf with a value that is refused.
    #[error("{path}:{line}: key '{key}': invalid value '{value}': {reason}")]
    BadValue {
        path: PathBuf,
        line: usize,
        key: String,
        value: String,
        reason: String,
    },
    /// A required key is absent.
    #[error("{path}: missing required key '{key}' in section [{section}]")]
    Missing {
        path: PathBuf,
        section: String,
        key: String,
    },
    /// A check across several lines or keys failed (e.g. the limits add up to too much).
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Which pipeline serves the clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipeline {
    /// pgagroal's `auto`: performance unless a feature needs session.
    Auto,
    Performance,
    Session,
    /// A backend per transaction, returned at ReadyForQuery with status `I`.
    Transaction,
}

/// Where the log goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogType {
    /// RFC 3164 datagrams to /dev/log (or `$PGCORRAL_SYSLOG_SOCKET`), facility daemon.
    Syslog,
    Console,
    File,
}

/// pgagroal's log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Fatal,
    Error,
    Warn,
    Info,
    /// `debug` is `Debug(1)`, `debug1`..`debug5` are `Debug(1..=5)`.
    Debug(u8),
    Trace,
}

impl LogLevel {
    /// Parses a pgagroal log level name (case-insensitive).
    pub fn parse(text: &str) -> Option<LogLevel> {
        Some(match text.to_ascii_lowercase().as_str() {
            "fatal" => LogLevel::Fatal,
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" | "debug1" => LogLevel::Debug(1),
            "debug2" => LogLevel::Debug(2),
            "debug3" => LogLevel::Debug(3),
            "debug4" => LogLevel::Debug(4),
            "debug5" => LogLevel::Debug(5),
            "trace" => LogLevel::Trace,
            _ => return None,
        })
    }

    /// The `log` crate filter for this level: `Debug(1)` is `Debug`, higher debug levels are `Trace`.
    pub fn to_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Fatal | LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug(n) if n <= 1 => log::LevelFilter::Debug,
            LogLevel::Debug(_) | LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// The `[pgcorral]` section.
#[derive(Debug, Clone)]
pub struct MainConfig {
    /// Bind address; `*` means all IPv4 and IPv6 addresses.
    pub host: String,
    pub port: u16,
    pub unix_socket_dir: PathBuf,
    /// 1..=10000, default 100.
    pub max_connections: usize,
    pub pipeline: Pipeline,
    pub log_type: LogType,
    pub log_level: LogLevel,
    pub log_path: PathBuf,
    /// How long a client waits for a pool slot; zero means do not wait.
    pub blocking_timeout: Duration,
    pub authentication_timeout: Duration,
    pub keep_alive: bool,
    pub nodelay: bool,
    /// Default `max(max_connections / 4, 16)`.
    pub backlog: u32,
    /// Run when a backend returns to the pool; empty means off.
    pub server_reset_query: String,
    /// Transaction pipeline: run `server_reset_query` after every transaction, not only when the
    /// client changed session state.
    pub server_reset_query_always: bool,
    /// Transaction pipeline: protocol-level prepared statements kept per backend (LRU); 0 = none kept.
    pub max_prepared_statements: usize,
    /// `None`: the daemon uses `unix_socket_dir/pgcorral.<port>.pid`.
    pub pidfile: Option<PathBuf>,
    /// Remote management TCP port (0 = off): the control protocol after SCRAM against the admins file.
    pub management: u16,
    /// strftime-style prefix of every log line (%Y %m %d %H %M %S %z %p %%; UTC).
    pub log_line_prefix: String,
    /// Rotate the log file when it grows past this many bytes (0 = never).
    pub log_rotation_size: u64,
    /// Rotate the log file after this long (0 = never).
    pub log_rotation_age: Duration,
    /// `log_mode = append` (true) or `create` (false: truncate at start).
    pub log_mode_append: bool,
    pub log_connections: bool,
    pub log_disconnections: bool,
    pub update_process_title: ProcessTitle,
    /// Workers run under SCHED_BATCH (`worker_scheduler = batch`, the default) or SCHED_OTHER (`normal`).
    pub worker_sched_batch: bool,
    /// `transaction_relay = shared` (the default): in the transaction pipeline one relay process
    /// serves every logged-in client; `worker`: each client's worker relays its own client.
    pub transaction_relay_shared: bool,
    /// Nice value of the shared relay (`transaction_relay_nice`, -20..19, default -10): every
    /// transaction passes through it, so a woken backend or client should not preempt it mid-batch.
    pub transaction_relay_nice: i32,
    /// Users not in the users vault may log in with pass-through authentication (default on).
    pub allow_unknown_users: bool,
    /// Look up the secret of users not in the vault in PostgreSQL, as the `-S` superuser.
    pub auth_query: bool,
    /// Function `f(name) -> text` returning the secret, instead of reading `pg_authid`; empty = none.
    pub auth_query_function: String,
    /// How long a secret fetched by auth_query is cached.
    pub auth_query_cache: Duration,
}

/// `update_process_title`: what `ps` shows for each process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessTitle {
    /// never / off: the command line is left alone.
    Never,
    /// strict: like minimal, never longer than the original command line (pgcorral never is).
    Strict,
    /// minimal: `pgcorral: user/database`.
    Minimal,
    /// verbose / full: `pgcorral: user@host/database`.
    Verbose,
}

impl ProcessTitle {
    pub fn parse(s: &str) -> Option<ProcessTitle> {
        Some(match s.to_ascii_lowercase().as_str() {
            "never" | "off" => ProcessTitle::Never,
            "strict" => ProcessTitle::Strict,
            "minimal" => ProcessTitle::Minimal,
            "verbose" | "full" => ProcessTitle::Verbose,
            _ => return None,
        })
    }
}

/// A server section.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    /// A host name, an IP address, or (starting with `/`) a Unix socket directory.
    pub host: String,
    pub port: u16,
    pub primary: bool,
}

impl ServerConfig {
    /// Whether the server is reached through a Unix socket.
    pub fn is_unix(&self) -> bool {
        self.host.starts_with('/')
    }

    /// The Unix socket path: `host/.s.PGSQL.<port>`.
    pub fn unix_path(&self) -> PathBuf {
        Path::new(&self.host).join(format!(".s.PGSQL.{}", self.port))
    }
}

/// HBA connection type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaType {
    /// TCP, with or without TLS.
    Host,
    /// TCP with TLS only.
    HostSsl,
    /// Unix socket.
    Local,
}

/// HBA authentication method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaMethod {
    Trust,
    Reject,
    Password,
    Md5,
    ScramSha256,
    /// Use whatever the backend asks for.
    All,
}

/// HBA address column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaAddress {
    All,
    /// Network address and prefix length (host bits are ignored when matching).
    Cidr(IpAddr, u8),
}

/// One line of pgcorral_hba.conf.
#[derive(Debug, Clone)]
pub struct HbaRule {
    pub kind: HbaType,
    /// A database name (or alias), or `all`.
    pub database: String,
    /// A user name, or `all`.
    pub user: String,
    /// `All` for `local` rules.
    pub address: HbaAddress,
    pub method: HbaMethod,
    /// 1-based line in the HBA file.
    pub line: usize,
}

/// One line of pgcorral_databases.conf, with sizes resolved and adjusted.
#[derive(Debug, Clone)]
pub struct LimitRule {
    /// A database name, or `all`.
    pub database: String,
    pub aliases: Vec<String>,
    /// A user name, or `all`.
    pub user: String,
    /// `all` in the file is resolved to the connections left by the numeric rules
    /// (shared evenly when several rules say `all`).
    pub max_size: usize,
    pub initial_size: usize,
    pub min_size: usize,
    /// 1-based line in the limits file.
    pub line: usize,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub main: MainConfig,
    /// At least one.
    pub servers: Vec<ServerConfig>,
    pub hba: Vec<HbaRule>,
    pub limits: Vec<LimitRule>,
}

impl Config {
    /// Reads pgcorral.conf, pgcorral_hba.conf and (optional) pgcorral_databases.conf.
    /// Returns warnings (unknown keys: "FILE:LINE: unknown key 'x' in section [y], ignored") alongside.
    pub fn load(
        conf: &Path,
        hba: &Path,
        limits: Option<&Path>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let (main, servers) = main_conf::load(conf, &mut warnings)?;
        let hba = hba::load(hba)?;
        let limits = match limits {
            Some(path) => limits::load(path, main.max_connections, &mut warnings)?,
            None => Vec::new(),
        };
        Ok((
            Config {
                main,
                servers,
                hba,
                limits,
            },
            warnings,
        ))
    }

    /// The primary server's index: the one with primary = on, else the first.
    pub fn primary_index(&self) -> usize {
        self.servers.iter().position(|s| s.primary).unwrap_or(0)
    }

    /// Maps an alias to its real database name (returns the input when not an alias).
    pub fn resolve_database<'a>(&'a self, database: &'a str) -> &'a str {
        self.limits
            .iter()
            .find(|rule| rule.aliases.iter().any(|a| a == database))
            .map_or(database, |rule| rule.database.as_str())
    }

    /// Best-match limit rule index for (database, user), pgagroal's rules: exact pair (alias counts as exact),
    /// else rule with that user and database `all`, else rule with that database and user `all`; else None.
    /// (A rule `all all` matches anything as the last resort.)
    pub fn find_limit(&self, database: &str, user: &str) -> Option<usize> {
        let real = self.resolve_database(database);
        let db_matches = |rule: &LimitRule| {
            rule.database != "all"
                && (rule.database == database
                    || rule.database == real
                    || rule.aliases.iter().any(|a| a == database))
        };
        let user_matches = |rule: &LimitRule| rule.user != "all" && rule.user == user;
        let find = |pred: &dyn Fn(&LimitRule) -> bool| self.limits.iter().position(pred);
        find(&|r| db_matches(r) && user_matches(r))
            .or_else(|| find(&|r| r.database == "all" && user_matches(r)))
            .or_else(|| find(&|r| db_matches(r) && r.user == "all"))
            .or_else(|| find(&|r| r.database == "all" && r.user == "all"))
    }

    /// First matching HBA rule. `addr` is None for a Unix-socket client: it matches rules of type `local`
    /// and rules whose address is `all`. `tls` says whether the client used TLS (hostssl needs it).
    pub fn find_hba(
        &self,
        addr: Option<IpAddr>,
        database: &str,
        user: &str,
        tls: bool,
    ) -> Option<&HbaRule> {
        let real = self.resolve_database(database);
        self.hba.iter().find(|rule| {
            let kind_ok = match rule.kind {
                HbaType::Local => addr.is_none(),
                HbaType::Host => true,
                HbaType::HostSsl => tls,
            };
            let addr_ok = match (addr, rule.kind) {
                (_, HbaType::Local) => true,
                (None, _) => rule.address == HbaAddress::All,
                (Some(ip), _) => rule.address.matches(ip),
            };
            let db_ok = rule.database == "all"
                || rule.database == database
                || rule.database == real
                || self.resolve_database(&rule.database) == real;
            let user_ok = rule.user == "all" || rule.user == user;
            kind_ok && addr_ok && db_ok && user_ok
        })
    }
}

#[cfg(test)]
mod tests;
