//! The command line, and how each command maps to a request of the control protocol.

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

/// `-c` when it is not given.
pub const DEFAULT_CONF: &str = "/etc/pgcorral/pgcorral.conf";
/// The protocol version this client speaks.
pub const PROTOCOL_VERSION: u64 = 1;

#[derive(Parser, Debug)]
#[command(
    name = "pgcorral-ctl",
    version,
    about = "Control a running pgcorral over its control socket, or remotely (-h) over its management port",
    disable_help_subcommand = true,
    // -h is the host, as in psql and pgagroal-cli; help is --help only.
    disable_help_flag = true
)]
pub struct Cli {
    /// pgcorral.conf of the daemon (read for unix_socket_dir and port; not used with -h)
    #[arg(short = 'c', long = "config", value_name = "CONF", default_value = DEFAULT_CONF, global = true)]
    pub config: PathBuf,
    /// Remote management: the daemon's host (its `management` port is -p); skips the local socket
    #[arg(short = 'h', long = "host", value_name = "HOST", global = true)]
    pub host: Option<String>,
    /// Remote management: the daemon's `management` port (with -h)
    #[arg(short = 'p', long = "port", value_name = "PORT", global = true)]
    pub port: Option<u16>,
    /// Remote management: the admin user (with -h; an entry of the daemon's admins file -A)
    #[arg(short = 'U', long = "user", value_name = "USER", global = true)]
    pub user: Option<String>,
    /// Remote management: the admin's password (else $PGCORRAL_PASSWORD, else a prompt on a terminal)
    #[arg(short = 'P', long = "password", value_name = "PASSWORD", global = true)]
    pub password: Option<String>,
    /// Print help
    #[arg(long = "help", action = ArgAction::Help, global = true)]
    pub help: Option<bool>,
    /// Output format
    #[arg(short = 'F', long = "format", value_enum, default_value_t = Format::Text, global = true)]
    pub format: Format,
    #[command(subcommand)]
    pub command: Cmd,
}

/// Where a remote request goes (-h, -p, -U): the password is resolved separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
}

impl Cli {
    /// `Ok(None)`: local control socket; `Ok(Some)`: remote management. `Err`: a usage error
    /// (-p, -U or -P without -h, or -h without -p or -U).
    pub fn remote_target(&self) -> Result<Option<RemoteTarget>, String> {
        match &self.host {
            None => {
                if self.port.is_some() || self.user.is_some() || self.password.is_some() {
                    return Err("-p, -U and -P are for remote management and need -h HOST".into());
                }
                Ok(None)
            }
            Some(host) => {
                if host.is_empty() {
                    return Err("-h needs a host name or address".into());
                }
                let port = self
                    .port
                    .ok_or("-h needs -p PORT (the daemon's management port)")?;
                if port == 0 {
                    return Err("-p 0 is not a port".into());
                }
                let user = self
                    .user
                    .clone()
                    .filter(|u| !u.is_empty())
                    .ok_or("-h needs -U USER (an admin of the daemon's admins file)")?;
                Ok(Some(RemoteTarget {
                    host: host.clone(),
                    port,
                    user,
                }))
            }
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    Gracefully,
    Immediate,
    Cancel,
}

impl ShutdownMode {
    fn as_str(self) -> &'static str {
        match self {
            ShutdownMode::Gracefully => "gracefully",
            ShutdownMode::Immediate => "immediate",
            ShutdownMode::Cancel => "cancel",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Check that the daemon is alive
    Ping,
    /// Alias of `ping` (pgagroal 1.x)
    IsAlive,
    /// Show the pool status (`details`: also every slot)
    Status {
        #[arg(value_parser = ["details"])]
        details: Option<String>,
    },
    /// Alias of `status details` (pgagroal 1.x)
    Details,
    /// Close pooled backends: flush [idle|gracefully|all] [DATABASE|all]
    Flush {
        /// idle, gracefully (default) or all
        #[arg(value_name = "MODE")]
        first: Option<String>,
        /// a database name, or all (default)
        #[arg(value_name = "DATABASE")]
        second: Option<String>,
    },
    /// Alias of `flush idle` (pgagroal 1.x)
    FlushIdle { database: Option<String> },
    /// Alias of `flush gracefully` (pgagroal 1.x)
    FlushGracefully { database: Option<String> },
    /// Alias of `flush all` (pgagroal 1.x)
    FlushAll { database: Option<String> },
    /// Let new clients into a database again (default all)
    Enable { database: Option<String> },
    /// Refuse new clients of a database (default all)
    Disable { database: Option<String> },
    /// Stop the daemon: shutdown [gracefully|immediate|cancel] [--timeout SECONDS]
    Shutdown {
        #[arg(value_enum)]
        mode: Option<ShutdownMode>,
        /// With gracefully: escalate to immediate after this many seconds
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
    },
    /// Alias of `shutdown gracefully` (pgagroal 1.x)
    Gracefully {
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
    },
    /// Alias of `shutdown immediate` (pgagroal 1.x)
    Stop,
    /// Alias of `shutdown cancel` (pgagroal 1.x)
    CancelShutdown,
    /// Configuration: reload, get [KEY], ls, set KEY VALUE
    #[command(subcommand)]
    Conf(ConfCmd),
    /// Alias of `conf reload` (pgagroal 1.x)
    Reload,
    /// Alias of `conf get [KEY]` (pgagroal 1.x)
    ConfigGet { key: Option<String> },
    /// Alias of `conf set KEY VALUE` (pgagroal 1.x)
    ConfigSet { key: String, value: String },
    /// Reset statistics: clear prometheus, clear server NAME
    #[command(subcommand)]
    Clear(ClearCmd),
    /// Alias of `clear prometheus` (pgagroal 1.x)
    Reset,
    /// Alias of `clear server NAME` (pgagroal 1.x)
    ResetServer { name: String },
    /// Make SERVER the primary
    SwitchTo { server: String },
}

#[derive(Subcommand, Debug)]
pub enum ConfCmd {
    /// Re-read every configuration file
    Reload,
    /// Show every key, or one
    Get { key: Option<String> },
    /// Show the paths of the configuration files
    Ls,
    /// Change a key that needs no restart (in the running daemon only)
    Set { key: String, value: String },
}

#[derive(Subcommand, Debug)]
pub enum ClearCmd {
    /// Reset the Prometheus statistics
    Prometheus,
    /// Reset the state of a server
    Server { name: String },
}

/// One request: the protocol command name and its arguments (`None`: the command takes none).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub command: &'static str,
    pub args: Option<Map<String, Value>>,
}

impl Request {
    fn new(command: &'static str, args: Value) -> Request {
        let args = match args {
            Value::Object(m) => Some(m),
            Value::Null => None,
            other => unreachable!("args must be an object: {other}"),
        };
        Request { command, args }
    }

    /// The JSON document sent to the daemon.
    pub fn to_json(&self) -> Value {
        let mut doc = Map::new();
        doc.insert("version".into(), json!(PROTOCOL_VERSION));
        doc.insert("command".into(), json!(self.command));
        if let Some(a) = &self.args {
            doc.insert("args".into(), Value::Object(a.clone()));
        }
        Value::Object(doc)
    }
}

const FLUSH_MODES: [&str; 3] = ["idle", "gracefully", "all"];

fn flush(mode: &str, database: Option<String>) -> Request {
    Request::new(
        "flush",
        json!({"mode": mode, "database": database.unwrap_or_else(|| "all".into())}),
    )
}

fn shutdown(mode: ShutdownMode, timeout: Option<u64>) -> Request {
    let mut args = json!({"mode": mode.as_str()});
    if let Some(t) = timeout {
        args["timeout"] = json!(t);
    }
    Request::new("shutdown", args)
}

fn conf_get(key: Option<String>) -> Request {
    let args = match key {
        Some(k) => json!({"key": k}),
        None => json!({}),
    };
    Request::new("conf_get", args)
}

impl Cmd {
    /// The request for this command; `Err` is a usage error.
    pub fn to_request(&self) -> Result<Request, String> {
        Ok(match self {
            Cmd::Ping | Cmd::IsAlive => Request::new("ping", Value::Null),
            Cmd::Status { details } => {
                Request::new("status", json!({"details": details.is_some()}))
            }
            Cmd::Details => Request::new("status", json!({"details": true})),
            Cmd::Flush { first, second } => match (first.as_deref(), second) {
                (None, _) => flush("gracefully", None),
                (Some(m), db) if FLUSH_MODES.contains(&m) => flush(m, db.clone()),
                (Some(db), None) => flush("gracefully", Some(db.to_string())),
                (Some(m), Some(_)) => {
                    return Err(format!(
                        "invalid flush mode '{m}' (expected one of: idle, gracefully, all)"
                    ))
                }
            },
            Cmd::FlushIdle { database } => flush("idle", database.clone()),
            Cmd::FlushGracefully { database } => flush("gracefully", database.clone()),
            Cmd::FlushAll { database } => flush("all", database.clone()),
            Cmd::Enable { database } => Request::new(
                "enable",
                json!({"database": database.clone().unwrap_or_else(|| "all".into())}),
            ),
            Cmd::Disable { database } => Request::new(
                "disable",
                json!({"database": database.clone().unwrap_or_else(|| "all".into())}),
            ),
            Cmd::Shutdown { mode, timeout } => {
                let mode = mode.unwrap_or(ShutdownMode::Gracefully);
                if timeout.is_some() && mode != ShutdownMode::Gracefully {
                    return Err("--timeout applies only to `shutdown gracefully`".into());
                }
                shutdown(mode, *timeout)
            }
            Cmd::Gracefully { timeout } => shutdown(ShutdownMode::Gracefully, *timeout),
            Cmd::Stop => shutdown(ShutdownMode::Immediate, None),
            Cmd::CancelShutdown => shutdown(ShutdownMode::Cancel, None),
            Cmd::Conf(ConfCmd::Reload) | Cmd::Reload => Request::new("conf_reload", Value::Null),
            Cmd::Conf(ConfCmd::Get { key }) | Cmd::ConfigGet { key } => conf_get(key.clone()),
            Cmd::Conf(ConfCmd::Ls) => Request::new("conf_ls", Value::Null),
            Cmd::Conf(ConfCmd::Set { key, value }) | Cmd::ConfigSet { key, value } => {
                Request::new("conf_set", json!({"key": key, "value": value}))
            }
            Cmd::Clear(ClearCmd::Prometheus) | Cmd::Reset => {
                Request::new("clear", json!({"what": "prometheus"}))
            }
            Cmd::Clear(ClearCmd::Server { name }) | Cmd::ResetServer { name } => {
                Request::new("clear", json!({"what": "server", "name": name}))
            }
            Cmd::SwitchTo { server } => Request::new("switch_to", json!({"server": server})),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pgcorral-ctl").chain(args.iter().copied()))
    }

    /// The request document for a command line.
    fn req(args: &[&str]) -> Value {
        parse(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
            .to_request()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .to_json()
    }

    fn expect(args: &[&str], command: &str, a: Option<Value>) {
        let mut want = json!({"version": 1, "command": command});
        if let Some(a) = a {
            want["args"] = a;
        }
        assert_eq!(req(args), want, "{args:?}");
    }

    fn usage_error(args: &[&str]) {
        match parse(args) {
            Err(e) => assert_eq!(e.exit_code(), 2, "{args:?}: {e}"),
            Ok(cli) => assert!(cli.command.to_request().is_err(), "{args:?} accepted"),
        }
    }

    #[test]
    fn ping_and_alias() {
        expect(&["ping"], "ping", None);
        expect(&["is-alive"], "ping", None);
    }

    #[test]
    fn status_and_details() {
        expect(&["status"], "status", Some(json!({"details": false})));
        expect(
            &["status", "details"],
            "status",
            Some(json!({"details": true})),
        );
        expect(&["details"], "status", Some(json!({"details": true})));
        usage_error(&["status", "everything"]);
    }

    #[test]
    fn flush_forms() {
        let f = |m: &str, d: &str| Some(json!({"mode": m, "database": d}));
        expect(&["flush"], "flush", f("gracefully", "all"));
        expect(&["flush", "idle"], "flush", f("idle", "all"));
        expect(&["flush", "gracefully"], "flush", f("gracefully", "all"));
        expect(&["flush", "all"], "flush", f("all", "all"));
        expect(&["flush", "idle", "db1"], "flush", f("idle", "db1"));
        expect(&["flush", "all", "all"], "flush", f("all", "all"));
        expect(
            &["flush", "gracefully", "db1"],
            "flush",
            f("gracefully", "db1"),
        );
        expect(&["flush", "db1"], "flush", f("gracefully", "db1"));
        usage_error(&["flush", "sometimes", "db1"]);
        usage_error(&["flush", "idle", "db1", "extra"]);
    }

    #[test]
    fn flush_aliases() {
        let f = |m: &str, d: &str| Some(json!({"mode": m, "database": d}));
        expect(&["flush-idle"], "flush", f("idle", "all"));
        expect(&["flush-idle", "db1"], "flush", f("idle", "db1"));
        expect(&["flush-gracefully"], "flush", f("gracefully", "all"));
        expect(
            &["flush-gracefully", "db1"],
            "flush",
            f("gracefully", "db1"),
        );
        expect(&["flush-all"], "flush", f("all", "all"));
        expect(&["flush-all", "db1"], "flush", f("all", "db1"));
    }

    #[test]
    fn enable_disable() {
        expect(&["enable"], "enable", Some(json!({"database": "all"})));
        expect(
            &["enable", "db1"],
            "enable",
            Some(json!({"database": "db1"})),
        );
        expect(
            &["enable", "all"],
            "enable",
            Some(json!({"database": "all"})),
        );
        expect(&["disable"], "disable", Some(json!({"database": "all"})));
        expect(
            &["disable", "db1"],
            "disable",
            Some(json!({"database": "db1"})),
        );
        usage_error(&["disable", "a", "b"]);
    }

    #[test]
    fn shutdown_forms() {
        let s = |m: &str| Some(json!({"mode": m}));
        expect(&["shutdown"], "shutdown", s("gracefully"));
        expect(&["shutdown", "gracefully"], "shutdown", s("gracefully"));
        expect(&["shutdown", "immediate"], "shutdown", s("immediate"));
        expect(&["shutdown", "cancel"], "shutdown", s("cancel"));
        expect(
            &["shutdown", "gracefully", "--timeout", "30"],
            "shutdown",
            Some(json!({"mode": "gracefully", "timeout": 30})),
        );
        expect(
            &["shutdown", "--timeout", "5"],
            "shutdown",
            Some(json!({"mode": "gracefully", "timeout": 5})),
        );
        usage_error(&["shutdown", "now"]);
        usage_error(&["shutdown", "gracefully", "--timeout", "soon"]);
        usage_error(&["shutdown", "immediate", "--timeout", "3"]);
    }

    #[test]
    fn shutdown_aliases() {
        expect(
            &["gracefully"],
            "shutdown",
            Some(json!({"mode": "gracefully"})),
        );
        expect(
            &["gracefully", "--timeout", "7"],
            "shutdown",
            Some(json!({"mode": "gracefully", "timeout": 7})),
        );
        expect(&["stop"], "shutdown", Some(json!({"mode": "immediate"})));
        expect(
            &["cancel-shutdown"],
            "shutdown",
            Some(json!({"mode": "cancel"})),
        );
    }

    #[test]
    fn conf_commands() {
        expect(&["conf", "reload"], "conf_reload", None);
        expect(&["conf", "get"], "conf_get", Some(json!({})));
        expect(
            &["conf", "get", "port"],
            "conf_get",
            Some(json!({"key": "port"})),
        );
        expect(&["conf", "ls"], "conf_ls", None);
        expect(
            &["conf", "set", "log_level", "debug"],
            "conf_set",
            Some(json!({"key": "log_level", "value": "debug"})),
        );
        usage_error(&["conf"]);
        usage_error(&["conf", "set", "log_level"]);
        usage_error(&["conf", "edit"]);
    }

    #[test]
    fn conf_aliases() {
        expect(&["reload"], "conf_reload", None);
        expect(&["config-get"], "conf_get", Some(json!({})));
        expect(
            &["config-get", "max_connections"],
            "conf_get",
            Some(json!({"key": "max_connections"})),
        );
        expect(
            &["config-set", "log_level", "info"],
            "conf_set",
            Some(json!({"key": "log_level", "value": "info"})),
        );
        usage_error(&["config-set", "log_level"]);
    }

    #[test]
    fn clear_and_aliases() {
        expect(
            &["clear", "prometheus"],
            "clear",
            Some(json!({"what": "prometheus"})),
        );
        expect(&["reset"], "clear", Some(json!({"what": "prometheus"})));
        expect(
            &["clear", "server", "primary"],
            "clear",
            Some(json!({"what": "server", "name": "primary"})),
        );
        expect(
            &["reset-server", "replica"],
            "clear",
            Some(json!({"what": "server", "name": "replica"})),
        );
        usage_error(&["clear"]);
        usage_error(&["clear", "server"]);
        usage_error(&["reset-server"]);
    }

    #[test]
    fn switch_to() {
        expect(
            &["switch-to", "replica"],
            "switch_to",
            Some(json!({"server": "replica"})),
        );
        usage_error(&["switch-to"]);
    }

    #[test]
    fn global_options() {
        let cli = parse(&["ping"]).unwrap();
        assert_eq!(cli.config, PathBuf::from(DEFAULT_CONF));
        assert_eq!(cli.format, Format::Text);
        let cli = parse(&["-c", "/x/p.conf", "--format", "json", "status"]).unwrap();
        assert_eq!(cli.config, PathBuf::from("/x/p.conf"));
        assert_eq!(cli.format, Format::Json);
        let cli = parse(&["status", "details", "-c", "/y.conf", "-F", "json"]).unwrap();
        assert_eq!(cli.config, PathBuf::from("/y.conf"));
        assert_eq!(cli.format, Format::Json);
        usage_error(&["--format", "xml", "ping"]);
        usage_error(&[]);
        usage_error(&["frobnicate"]);
        usage_error(&["ping", "extra"]);
    }

    #[test]
    fn remote_options() {
        let cli = parse(&["ping"]).unwrap();
        assert_eq!(cli.remote_target().unwrap(), None);
        let cli = parse(&["-h", "db.example", "-p", "2346", "-U", "admin", "ping"]).unwrap();
        assert_eq!(
            cli.remote_target().unwrap(),
            Some(RemoteTarget {
                host: "db.example".into(),
                port: 2346,
                user: "admin".into()
            })
        );
        assert_eq!(cli.password, None);
        let cli = parse(&[
            "status",
            "--host",
            "::1",
            "--port",
            "9",
            "--user",
            "a",
            "--password",
            "pw",
        ])
        .unwrap();
        assert_eq!(cli.remote_target().unwrap().unwrap().host, "::1");
        assert_eq!(cli.password.as_deref(), Some("pw"));
        let cli = parse(&[
            "-h", "x", "-p", "1", "-U", "a", "-P", "s", "-F", "json", "ping",
        ])
        .unwrap();
        assert_eq!(cli.password.as_deref(), Some("s"));
        assert_eq!(cli.format, Format::Json);
        // Incomplete or misplaced remote options are usage errors.
        for args in [
            &["-h", "x", "ping"][..],
            &["-h", "x", "-p", "1", "ping"],
            &["-h", "x", "-U", "a", "ping"],
            &["-h", "x", "-p", "0", "-U", "a", "ping"],
            &["-p", "1", "ping"],
            &["-U", "a", "ping"],
            &["-P", "pw", "ping"],
        ] {
            let cli = parse(args).unwrap();
            assert!(cli.remote_target().is_err(), "{args:?} accepted");
        }
        usage_error(&["-h", "x", "-p", "notaport", "-U", "a", "ping"]);
        usage_error(&["-h", "x", "-p", "70000", "-U", "a", "ping"]);
        // --help still works (exit 0), -h is no longer help.
        match parse(&["--help"]) {
            Err(e) => assert_eq!(e.exit_code(), 0),
            Ok(_) => panic!("--help parsed as a command line"),
        }
        usage_error(&["-h"]);
    }
}
