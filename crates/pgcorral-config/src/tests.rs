use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Writes `text` to a file with a unique name under the temp directory.
fn temp(name: &str, text: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let path = std::env::temp_dir().join(format!(
        "pgcorral-config-test-{}-{n}-{name}",
        std::process::id()
    ));
    std::fs::write(&path, text).expect("write temp file");
    path
}

const MINIMAL: &str = "[pgcorral]\nhost = localhost\nport = 2345\nunix_socket_dir = /tmp\n\n[primary]\nhost = localhost\nport = 5432\n";
const HBA_ALL: &str = "host all all all all\n";

fn load(conf: &str, hba: &str, limits: Option<&str>) -> Result<(Config, Vec<String>), ConfigError> {
    let conf = temp("pgcorral.conf", conf);
    let hba = temp("pgcorral_hba.conf", hba);
    let limits = limits.map(|l| temp("pgcorral_databases.conf", l));
    let result = Config::load(&conf, &hba, limits.as_deref());
    let _ = std::fs::remove_file(&conf);
    let _ = std::fs::remove_file(&hba);
    if let Some(l) = limits {
        let _ = std::fs::remove_file(l);
    }
    result
}

fn load_ok(conf: &str, hba: &str, limits: Option<&str>) -> (Config, Vec<String>) {
    match load(conf, hba, limits) {
        Ok(v) => v,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn load_err(conf: &str, hba: &str, limits: Option<&str>) -> ConfigError {
    match load(conf, hba, limits) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn with_main(extra: &str) -> String {
    format!("[pgcorral]\nhost = localhost\nport = 2345\nunix_socket_dir = /tmp\n{extra}\n[primary]\nhost = localhost\nport = 5432\n")
}

#[test]
fn defaults() {
    let (c, warnings) = load_ok(MINIMAL, HBA_ALL, None);
    assert!(warnings.is_empty(), "{warnings:?}");
    let m = &c.main;
    assert_eq!(m.host, "localhost");
    assert_eq!(m.port, 2345);
    assert_eq!(m.unix_socket_dir, PathBuf::from("/tmp"));
    assert_eq!(m.max_connections, 100);
    assert_eq!(m.pipeline, Pipeline::Auto);
    assert_eq!(m.log_type, LogType::Console);
    assert_eq!(m.log_level, LogLevel::Info);
    assert_eq!(m.log_path, PathBuf::from("pgcorral.log"));
    assert_eq!(m.blocking_timeout, Duration::from_secs(30));
    assert_eq!(m.authentication_timeout, Duration::from_secs(5));
    assert!(m.keep_alive);
    assert!(m.nodelay);
    assert_eq!(m.backlog, 25);
    assert_eq!(m.server_reset_query, "DISCARD ALL");
    assert_eq!(m.pidfile, None);
    assert_eq!(c.servers.len(), 1);
    assert_eq!(c.servers[0].name, "primary");
    assert!(!c.servers[0].primary);
    assert_eq!(c.primary_index(), 0);
    assert!(c.limits.is_empty());

    let (c, _) = load_ok(&with_main("max_connections = 20"), HBA_ALL, None);
    assert_eq!(c.main.backlog, 16);
}

#[test]
fn every_key() {
    let conf = "\
; full configuration
[pgagroal]
host = *
port = 6432
unix_socket_dir = '/var/run/pgcorral'
max_connections = 200   # comment
pipeline = session
log_type = file
log_level = debug3
log_path = \"/var/log/pgcorral log.txt\"
blocking_timeout = 0
authentication_timeout = 1m
keep_alive = off
nodelay = no
backlog = 7
server_reset_query = \"RESET ALL; SET x = 1\"
pidfile = /run/p.pid

[a]
host = /var/run/postgresql
port = 5432

[b]
host = 10.0.0.2
port = 5433
primary = yes
";
    let (c, warnings) = load_ok(conf, HBA_ALL, None);
    assert!(warnings.is_empty(), "{warnings:?}");
    let m = &c.main;
    assert_eq!(m.host, "*");
    assert_eq!(m.port, 6432);
    assert_eq!(m.unix_socket_dir, PathBuf::from("/var/run/pgcorral"));
    assert_eq!(m.max_connections, 200);
    assert_eq!(m.pipeline, Pipeline::Session);
    assert_eq!(m.log_type, LogType::File);
    assert_eq!(m.log_level, LogLevel::Debug(3));
    assert_eq!(m.log_path, PathBuf::from("/var/log/pgcorral log.txt"));
    assert_eq!(m.blocking_timeout, Duration::ZERO);
    assert_eq!(m.authentication_timeout, Duration::from_secs(60));
    assert!(!m.keep_alive);
    assert!(!m.nodelay);
    assert_eq!(m.backlog, 7);
    assert_eq!(m.server_reset_query, "RESET ALL; SET x = 1");
    assert_eq!(m.pidfile, Some(PathBuf::from("/run/p.pid")));
    assert_eq!(c.servers.len(), 2);
    assert!(c.servers[0].is_unix());
    assert_eq!(
        c.servers[0].unix_path(),
        PathBuf::from("/var/run/postgresql/.s.PGSQL.5432")
    );
    assert!(!c.servers[1].is_unix());
    assert!(c.servers[1].primary);
    assert_eq!(c.primary_index(), 1);

    let (c, _) = load_ok(
        &with_main("pipeline = performance\nserver_reset_query = \"\""),
        HBA_ALL,
        None,
    );
    assert_eq!(c.main.pipeline, Pipeline::Performance);
    assert_eq!(c.main.server_reset_query, "");
}

#[test]
fn log_levels() {
    for (text, level, filter) in [
        ("fatal", LogLevel::Fatal, log::LevelFilter::Error),
        ("error", LogLevel::Error, log::LevelFilter::Error),
        ("warn", LogLevel::Warn, log::LevelFilter::Warn),
        ("INFO", LogLevel::Info, log::LevelFilter::Info),
        ("debug", LogLevel::Debug(1), log::LevelFilter::Debug),
        ("debug1", LogLevel::Debug(1), log::LevelFilter::Debug),
        ("debug5", LogLevel::Debug(5), log::LevelFilter::Trace),
        ("trace", LogLevel::Trace, log::LevelFilter::Trace),
    ] {
        let (c, _) = load_ok(&with_main(&format!("log_level = {text}")), HBA_ALL, None);
        assert_eq!(c.main.log_level, level);
        assert_eq!(level.to_filter(), filter);
    }
    assert!(matches!(
        load_err(&with_main("log_level = debug6"), HBA_ALL, None),
        ConfigError::BadValue { .. }
    ));
}

#[test]
fn pgagroal_section_and_exactly_one_main() {
    let conf = MINIMAL.replace("[pgcorral]", "[pgagroal]");
    let (c, _) = load_ok(&conf, HBA_ALL, None);
    assert_eq!(c.main.port, 2345);

    let both = format!("{MINIMAL}[pgagroal]\nhost = x\n");
    let e = load_err(&both, HBA_ALL, None);
    assert!(matches!(e, ConfigError::Syntax { line: 9, .. }), "{e}");

    let none = "[primary]\nhost = localhost\nport = 5432\n";
    assert!(matches!(
        load_err(none, HBA_ALL, None),
        ConfigError::Invalid { .. }
    ));
}

#[test]
fn bad_value_names_file_line_and_key() {
    let e = load_err(&with_main("max_connections = lots"), HBA_ALL, None);
    let text = e.to_string();
    assert!(matches!(e, ConfigError::BadValue { line: 5, .. }), "{text}");
    assert!(text.contains("pgcorral.conf:5:"), "{text}");
    assert!(text.contains("max_connections"), "{text}");
    assert!(text.contains("lots"), "{text}");

    for bad in [
        "max_connections = 0",
        "max_connections = 10001",
        "port = 70000",
        "keep_alive = sometimes",
        "blocking_timeout = 5x",
        "authentication_timeout = 0",
        "backlog = -1",
        "log_type = elsewhere",
        "pipeline = fast",
        "host =",
    ] {
        match load_err(&with_main(bad), HBA_ALL, None) {
            ConfigError::BadValue { line, key, .. } => {
                assert_eq!(line, 5, "{bad}");
                assert!(bad.starts_with(&key), "{bad}: {key}");
            }
            e => panic!("{bad}: {e}"),
        }
    }
}

#[test]
fn transaction_pipeline_and_its_keys() {
    let (c, _) = load_ok(
        &with_main(
            "pipeline = transaction\nmax_prepared_statements = 7\nserver_reset_query_always = on",
        ),
        HBA_ALL,
        None,
    );
    assert_eq!(c.main.pipeline, Pipeline::Transaction);
    assert_eq!(c.main.max_prepared_statements, 7);
    assert!(c.main.server_reset_query_always);
    let (d, _) = load_ok(&with_main("pipeline = transaction"), HBA_ALL, None);
    assert_eq!(d.main.max_prepared_statements, 256);
    assert!(!d.main.server_reset_query_always);
    let e = load_err(&with_main("max_prepared_statements = 5000"), HBA_ALL, None).to_string();
    assert!(e.contains(":5: key 'max_prepared_statements'"), "{e}");
    let e = load_err(&with_main("pipeline = statement"), HBA_ALL, None).to_string();
    assert!(
        e.contains("expected auto, performance, session or transaction"),
        "{e}"
    );
}

#[test]
fn syslog_accepted() {
    let (c, _) = load_ok(&with_main("log_type = syslog"), HBA_ALL, None);
    assert_eq!(c.main.log_type, crate::LogType::Syslog);
}

#[test]
fn unknown_and_unsupported_keys_warn() {
    let (_, warnings) = load_ok(
        &with_main("frobnicate = 1\nidle_timeout = 600\nmetrics = 9187"),
        HBA_ALL,
        None,
    );
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings[0]
        .contains("pgcorral.conf:5: unknown key 'frobnicate' in section [pgcorral], ignored"));
    assert!(warnings[1].contains(":6:") && warnings[1].contains("'idle_timeout'"));
    assert!(warnings[1].contains("not supported yet, ignored"));
    assert!(warnings[2].contains(":7:") && warnings[2].contains("'metrics'"));

    let conf = format!("{MINIMAL}tls = off\nweird = 1\n\n[prometheus]\nx = 1\n");
    let (c, warnings) = load_ok(&conf, HBA_ALL, None);
    assert_eq!(c.servers.len(), 1);
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings[0].contains(":9: key 'tls' in section [primary] is not supported yet"),
        "{warnings:?}"
    );
    assert!(warnings[1].contains(":10: unknown key 'weird' in section [primary]"));
    assert!(warnings[2].contains(":12: section [prometheus]"));
}

#[test]
fn time_suffixes() {
    for (text, secs) in [
        ("1", 1),
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86400),
        ("1w", 604800),
    ] {
        let (c, _) = load_ok(
            &with_main(&format!("blocking_timeout = {text}")),
            HBA_ALL,
            None,
        );
        assert_eq!(c.main.blocking_timeout, Duration::from_secs(secs), "{text}");
    }
}

#[test]
fn missing_and_syntax_errors() {
    let e = load_err(
        "[pgcorral]\nhost = x\nport = 1\n[s]\nhost=a\nport=1\n",
        HBA_ALL,
        None,
    );
    assert!(
        matches!(&e, ConfigError::Missing { key, section, .. } if key == "unix_socket_dir" && section == "pgcorral"),
        "{e}"
    );
    let e = load_err(&format!("{MINIMAL}[s2]\nhost = b\n"), HBA_ALL, None);
    assert!(
        matches!(&e, ConfigError::Missing { key, section, .. } if key == "port" && section == "s2"),
        "{e}"
    );
    let e = load_err(&with_main("this is not ini"), HBA_ALL, None);
    assert!(matches!(e, ConfigError::Syntax { line: 5, .. }), "{e}");
    let e = load_err(&format!("host = x\n{MINIMAL}"), HBA_ALL, None);
    assert!(matches!(e, ConfigError::Syntax { line: 1, .. }), "{e}");
    // No servers.
    let e = load_err(
        "[pgcorral]\nhost = x\nport = 1\nunix_socket_dir = /tmp\n",
        HBA_ALL,
        None,
    );
    assert!(matches!(e, ConfigError::Invalid { .. }), "{e}");
    // Missing file.
    let e = Config::load(
        Path::new("/nonexistent/pgcorral.conf"),
        Path::new("/nonexistent/hba"),
        None,
    )
    .err();
    assert!(matches!(e, Some(ConfigError::Io { .. })));
    // Binary garbage.
    let e = load_err("[pgcorral]\n\u{0}\u{1}\n", HBA_ALL, None);
    assert!(matches!(e, ConfigError::Syntax { line: 2, .. }), "{e}");
}

#[test]
fn server_checks() {
    let dup_name = format!("{MINIMAL}[primary]\nhost = other\nport = 1\n");
    assert!(matches!(
        load_err(&dup_name, HBA_ALL, None),
        ConfigError::Syntax { line: 9, .. }
    ));
    let dup_addr = format!("{MINIMAL}[second]\nhost = LOCALHOST\nport = 5432\n");
    assert!(matches!(
        load_err(&dup_addr, HBA_ALL, None),
        ConfigError::Syntax { line: 9, .. }
    ));
    let two_primaries = format!(
        "{}[b]\nhost = b\nport = 1\nprimary = on\n",
        MINIMAL.replace("port = 5432", "port = 5432\nprimary = true")
    );
    assert!(matches!(
        load_err(&two_primaries, HBA_ALL, None),
        ConfigError::Syntax { .. }
    ));
    let mut many = with_main("");
    for i in 0..64 {
        many.push_str(&format!("[s{i}]\nhost = h\nport = {}\n", 1000 + i));
    }
    assert!(matches!(
        load_err(&many, HBA_ALL, None),
        ConfigError::Syntax { .. }
    ));
}

fn hba_config(hba: &str, limits: Option<&str>) -> Config {
    load_ok(MINIMAL, hba, limits).0
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
}

#[test]
fn hba_parsing_and_errors() {
    let c = hba_config(
        "# TYPE DATABASE USER ADDRESS METHOD\n\nhost mydb bob 10.0.0.0/8 md5 # c\nhostssl all all ::1/128 scram-sha-256\nlocal all all trust\nhost all all 192.168.1.1 password\nhost all all all reject\n",
        None,
    );
    assert_eq!(c.hba.len(), 5);
    assert_eq!(c.hba[0].line, 3);
    assert_eq!(c.hba[0].kind, HbaType::Host);
    assert_eq!(c.hba[0].method, HbaMethod::Md5);
    assert_eq!(
        c.hba[0].address,
        HbaAddress::Cidr(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8)
    );
    assert_eq!(c.hba[1].kind, HbaType::HostSsl);
    assert_eq!(c.hba[1].method, HbaMethod::ScramSha256);
    assert_eq!(c.hba[2].kind, HbaType::Local);
    assert_eq!(c.hba[2].address, HbaAddress::All);
    assert_eq!(
        c.hba[3].address,
        HbaAddress::Cidr(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)), 32)
    );
    assert_eq!(c.hba[4].method, HbaMethod::Reject);

    let empty = hba_config("# nothing\n", None);
    assert!(empty.hba.is_empty());
    assert!(empty.find_hba(v4(127, 0, 0, 1), "db", "u", false).is_none());

    for (text, line, column) in [
        ("\nhost all all 10.0.0.0/33 trust\n", 2, "ADDRESS"),
        ("hots all all all trust\n", 1, "TYPE"),
        ("host all all all md4\n", 1, "METHOD"),
        ("local all all magic\n", 1, "METHOD"),
        ("host all all nothere trust\n", 1, "ADDRESS"),
        ("host all all ::1/129 trust\n", 1, "ADDRESS"),
    ] {
        match load_err(MINIMAL, text, None) {
            ConfigError::Syntax {
                line: l,
                message,
                path,
            } => {
                assert_eq!(l, line, "{text}");
                assert!(message.contains(column), "{text}: {message}");
                assert!(path.to_string_lossy().contains("pgcorral_hba.conf"));
            }
            e => panic!("{text}: {e}"),
        }
    }
    for text in [
        "host all all trust\n",
        "local all all all trust\n",
        "host all\n",
    ] {
        assert!(
            matches!(
                load_err(MINIMAL, text, None),
                ConfigError::Syntax { line: 1, .. }
            ),
            "{text}"
        );
    }
}

#[test]
fn cidr_matching() {
    let net = |s: &str| HbaAddress::parse(s).expect("valid");
    let ip = |s: &str| s.parse::<IpAddr>().expect("valid ip");
    assert!(net("127.0.0.1/32").matches(ip("127.0.0.1")));
    assert!(!net("127.0.0.1/32").matches(ip("127.0.0.2")));
    assert!(net("10.1.2.3/8").matches(ip("10.200.0.1")));
    assert!(!net("10.0.0.0/8").matches(ip("11.0.0.1")));
    assert!(net("0.0.0.0/0").matches(ip("8.8.8.8")));
    assert!(!net("0.0.0.0/0").matches(ip("::1")));
    assert!(net("::1/128").matches(ip("::1")));
    assert!(!net("::1/128").matches(ip("::2")));
    assert!(net("fe80::/10").matches(ip("fe80::1234")));
    assert!(!net("fe80::/10").matches(ip("fec0::1")));
    assert!(net("::0/0").matches(ip("2001:db8::1")));
    assert!(!net("::0/0").matches(ip("127.0.0.1")));
    assert!(net("::1").matches(ip("::1")));
    // IPv4-mapped IPv6 clients match IPv4 ranges.
    assert!(net("127.0.0.1/32").matches(ip("::ffff:127.0.0.1")));
    assert!(net("10.0.0.0/8").matches(ip("::ffff:10.9.8.7")));
    assert!(!net("10.0.0.0/8").matches(ip("::ffff:11.9.8.7")));
    assert!(net("0.0.0.0/0").matches(ip("::ffff:1.2.3.4")));
    // And mapped rules match IPv4 clients.
    assert!(net("::ffff:127.0.0.1/128").matches(ip("127.0.0.1")));
    assert!(net("::ffff:10.0.0.0/104").matches(ip("10.1.1.1")));
    assert!(net("all").matches(ip("::ffff:1.2.3.4")));
    assert!(HbaAddress::parse("1.2.3.4/x").is_err());
    assert!(HbaAddress::parse("1.2.3.4/+1").is_err());
    assert!(HbaAddress::parse("").is_err());
}

#[test]
fn hba_first_match_and_unix_clients() {
    let c = hba_config(
        "host mydb bob 127.0.0.1/32 reject\nhost all all 127.0.0.0/8 md5\nlocal all alice trust\nhostssl all all all scram-sha-256\nhost all all all password\n",
        None,
    );
    let m = |addr, db, user, tls| c.find_hba(addr, db, user, tls).map(|r| r.line);
    assert_eq!(m(v4(127, 0, 0, 1), "mydb", "bob", false), Some(1));
    assert_eq!(m(v4(127, 0, 0, 1), "other", "bob", false), Some(2));
    assert_eq!(m(v4(127, 0, 0, 1), "mydb", "carol", false), Some(2));
    let mapped = Some(IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped()));
    assert_eq!(m(mapped, "mydb", "bob", false), Some(1));
    assert_eq!(m(v4(10, 0, 0, 1), "mydb", "bob", true), Some(4));
    assert_eq!(m(v4(10, 0, 0, 1), "mydb", "bob", false), Some(5));
    assert_eq!(
        m(Some(IpAddr::V6(Ipv6Addr::LOCALHOST)), "x", "y", false),
        Some(5)
    );
    // Unix socket: local rules and `all` addresses only.
    assert_eq!(m(None, "mydb", "alice", false), Some(3));
    assert_eq!(m(None, "mydb", "bob", false), Some(5));

    let c = hba_config("host all all 127.0.0.1/32 trust\n", None);
    assert!(c.find_hba(None, "db", "u", false).is_none());
    let c = hba_config("local all all trust\n", None);
    assert!(c.find_hba(v4(127, 0, 0, 1), "db", "u", false).is_none());
    assert!(c.find_hba(None, "db", "u", false).is_some());
}

#[test]
fn hba_with_aliases() {
    let c = hba_config(
        "host production_db all all trust\nhost all all all reject\n",
        Some("production_db=prod,main all 10\n"),
    );
    assert_eq!(
        c.find_hba(v4(1, 1, 1, 1), "prod", "u", false)
            .map(|r| r.line),
        Some(1)
    );
    let c = hba_config(
        "host prod all all trust\nhost all all all reject\n",
        Some("production_db=prod,main all 10\n"),
    );
    assert_eq!(
        c.find_hba(v4(1, 1, 1, 1), "production_db", "u", false)
            .map(|r| r.line),
        Some(1)
    );
    assert_eq!(
        c.find_hba(v4(1, 1, 1, 1), "main", "u", false)
            .map(|r| r.line),
        Some(1)
    );
    assert_eq!(
        c.find_hba(v4(1, 1, 1, 1), "other", "u", false)
            .map(|r| r.line),
        Some(2)
    );
}

#[test]
fn limits_parse_and_best_match() {
    let limits = "\
# DATABASE USER MAX INITIAL MIN
mydb      bob   10  5  3
all       bob   5
mydb      all   4
production_db=prod,main,primary  bob 10 5 2
all all 2
";
    let c = hba_config(HBA_ALL, Some(limits));
    assert_eq!(c.limits.len(), 5);
    let r = &c.limits[0];
    assert_eq!(
        (r.max_size, r.initial_size, r.min_size, r.line),
        (10, 5, 3, 2)
    );
    assert_eq!(c.limits[1].initial_size, 0);
    assert_eq!(c.limits[3].aliases, vec!["prod", "main", "primary"]);

    assert_eq!(c.find_limit("mydb", "bob"), Some(0));
    assert_eq!(c.find_limit("otherdb", "bob"), Some(1));
    assert_eq!(c.find_limit("mydb", "alice"), Some(2));
    assert_eq!(c.find_limit("prod", "bob"), Some(3));
    assert_eq!(c.find_limit("production_db", "bob"), Some(3));
    assert_eq!(c.find_limit("otherdb", "alice"), Some(4));

    let c = hba_config(HBA_ALL, Some("mydb bob 10\n"));
    assert_eq!(c.find_limit("mydb", "alice"), None);
    assert_eq!(c.find_limit("x", "bob"), None);
}

#[test]
fn alias_resolution() {
    let c = hba_config(
        HBA_ALL,
        Some("production_db=prod,main bob 10\nother alice 5\n"),
    );
    assert_eq!(c.resolve_database("prod"), "production_db");
    assert_eq!(c.resolve_database("main"), "production_db");
    assert_eq!(c.resolve_database("production_db"), "production_db");
    assert_eq!(c.resolve_database("other"), "other");
    assert_eq!(c.resolve_database("unknown"), "unknown");

    // Alias errors.
    for bad in [
        "all=x bob 1\n",
        "db=a,b,c,d,e,f,g,h,i bob 1\n",
        "db=a,,b bob 1\n",
        "db=all bob 1\n",
        "db=a,a bob 1\n",
        "=a bob 1\n",
    ] {
        assert!(
            matches!(
                load_err(MINIMAL, HBA_ALL, Some(bad)),
                ConfigError::Syntax { line: 1, .. }
            ),
            "{bad}"
        );
    }
    let ok = load_ok(MINIMAL, HBA_ALL, Some("db=a,b,c,d,e,f,g,h bob 1\n")).0;
    assert_eq!(ok.limits[0].aliases.len(), 8);
    // Aliases unique across rules, and not a real database name.
    let e = load_err(MINIMAL, HBA_ALL, Some("db1=a bob 1\ndb2=a bob 1\n"));
    assert!(matches!(e, ConfigError::Syntax { line: 2, .. }), "{e}");
    let e = load_err(MINIMAL, HBA_ALL, Some("db1=db2 bob 1\ndb2 bob 1\n"));
    assert!(matches!(e, ConfigError::Syntax { line: 1, .. }), "{e}");
}

#[test]
fn limits_errors_and_adjustments() {
    let e = load_err(MINIMAL, HBA_ALL, Some("db bob 1\nother x 1\ndb bob 2\n"));
    let text = e.to_string();
    assert!(matches!(e, ConfigError::Syntax { line: 3, .. }), "{text}");
    assert!(
        text.contains("duplicate") && text.contains("line 1"),
        "{text}"
    );
    for bad in [
        "db bob 0\n",
        "db bob x\n",
        "db bob -1\n",
        "db bob 1 x\n",
        "db bob 1 1 -2\n",
        "db bob\n",
        "db bob 1 1 1 1\n",
    ] {
        assert!(
            matches!(
                load_err(MINIMAL, HBA_ALL, Some(bad)),
                ConfigError::Syntax { line: 1, .. }
            ),
            "{bad}"
        );
    }

    let (c, warnings) = load_ok(
        MINIMAL,
        HBA_ALL,
        Some("db bob 5 10 2\ndb alice 5 1 3\ndb carol 4 all all\ndb dave 4 0 9\n"),
    );
    assert_eq!((c.limits[0].initial_size, c.limits[0].min_size), (5, 2));
    assert_eq!((c.limits[1].initial_size, c.limits[1].min_size), (3, 3));
    assert_eq!((c.limits[2].initial_size, c.limits[2].min_size), (4, 4));
    assert_eq!((c.limits[3].initial_size, c.limits[3].min_size), (4, 4));
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert!(
        warnings[0].contains("pgcorral_databases.conf:1:"),
        "{warnings:?}"
    );
    assert!(warnings[1].contains(":2:"), "{warnings:?}");
    assert!(warnings[3].contains(":4:"), "{warnings:?}");
}

#[test]
fn limits_sum_check() {
    let conf = with_main("max_connections = 10");
    let e = load_err(&conf, HBA_ALL, Some("a u 6\nb u 5\n"));
    let text = e.to_string();
    assert!(matches!(e, ConfigError::Invalid { .. }), "{text}");
    assert!(
        text.contains(
            "too many connections defined: the limits add up to 11 but max_connections is 10"
        ),
        "{text}"
    );
    assert!(text.contains("pgcorral_databases.conf"), "{text}");
    load_ok(&conf, HBA_ALL, Some("a u 5\nb u 5\n"));
}

#[test]
fn limits_all_max_size() {
    let conf = with_main("max_connections = 10");
    let (c, _) = load_ok(&conf, HBA_ALL, Some("a u 3\nb u all all\n"));
    assert_eq!(c.limits[1].max_size, 7);
    assert_eq!(c.limits[1].initial_size, 7);
    assert_eq!(c.limits[1].min_size, 0);
    // Several `all` rules share the remainder.
    let (c, _) = load_ok(&conf, HBA_ALL, Some("a u 3\nb u all\nc u all\n"));
    assert_eq!((c.limits[1].max_size, c.limits[2].max_size), (4, 3));
    // Nothing left for `all`.
    let e = load_err(&conf, HBA_ALL, Some("a u 10\nb u all\n"));
    assert!(matches!(e, ConfigError::Invalid { .. }), "{e}");
    // The default max_connections is 100.
    let (c, _) = load_ok(MINIMAL, HBA_ALL, Some("all all all\n"));
    assert_eq!(c.limits[0].max_size, 100);
}

#[test]
fn garbage_never_panics() {
    let samples = [
        "",
        "\n",
        "[",
        "]",
        "=",
        "[pgcorral]\n=\n",
        "[pgcorral]\nport = 99999999999999999999999\n",
        "[pgcorral]\nblocking_timeout = 99999999999999999999w\n",
        "'",
        "\"",
        "[pgcorral]\nhost='\n",
        "\u{feff}[pgcorral]\n",
        "[[x]]\n",
        "[x]]\n",
    ];
    for s in samples {
        let _ = load(s, s, Some(s));
        let _ = load(MINIMAL, s, Some(s));
    }
    for s in [
        "host",
        "host a",
        "local",
        "x y z w v u",
        "host a b 1.2.3.4/ trust",
        "host a b / trust",
        "host a b ::ffff:1.2.3.4/96 trust",
    ] {
        let _ = load(MINIMAL, s, None);
    }
    for s in [
        "a",
        "a b",
        "a=b",
        "a= b c",
        "a b 99999999999999999999999",
        "a b all all all",
        "=,=, b 1",
    ] {
        let _ = load(MINIMAL, HBA_ALL, Some(s));
    }
}

#[test]
fn duplicate_key_last_wins_with_warning() {
    let (c, warnings) = load_ok(&with_main("port = 7000"), HBA_ALL, None);
    assert_eq!(c.main.port, 7000);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(":5: key 'port' in section [pgcorral] is set again (also on line 3)")
    );
}

#[test]
fn transaction_relay_keys() {
    let (c, _) = load_ok(&with_main("pipeline = transaction"), HBA_ALL, None);
    assert!(c.main.transaction_relay_shared, "shared by default");
    assert_eq!(c.main.transaction_relay_nice, -10);
    let (d, _) = load_ok(
        &with_main(
            "pipeline = transaction\ntransaction_relay = worker\ntransaction_relay_nice = 5",
        ),
        HBA_ALL,
        None,
    );
    assert!(!d.main.transaction_relay_shared);
    assert_eq!(d.main.transaction_relay_nice, 5);
    let e = load_err(&with_main("transaction_relay = maybe"), HBA_ALL, None).to_string();
    assert!(
        e.contains("key 'transaction_relay'") && e.contains("use shared or worker"),
        "{e}"
    );
    let e = load_err(&with_main("transaction_relay_nice = -21"), HBA_ALL, None).to_string();
    assert!(
        e.contains("key 'transaction_relay_nice'") && e.contains("-20 to 19"),
        "{e}"
    );
    assert_eq!(d.main.get("transaction_relay").as_deref(), Some("worker"));
    assert_eq!(d.main.get("transaction_relay_nice").as_deref(), Some("5"));
    let mut m = d.main.clone();
    assert!(m
        .set("transaction_relay", "shared")
        .unwrap_err()
        .contains("restart"));
    assert_eq!(
        c.restart_required(&d),
        vec!["transaction_relay_nice", "transaction_relay"]
    );
}
