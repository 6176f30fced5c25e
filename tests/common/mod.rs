//! Helpers shared by the end-to-end test files (each file is its own crate and uses a part).
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;
use std::sync::mpsc;
use std::time::Duration;

pub use pgcorral_testkit::*;
pub use postgres::{Client, NoTls};

/// The pipelines every connectivity-level acceptance point runs in.
pub const PIPELINES: [&str; 2] = ["performance", "session"];

/// Default options with a pipeline and limits lines.
pub fn opts(pipeline: &'static str, limits: &[&str]) -> PgcorralOptions {
    PgcorralOptions {
        pipeline,
        limits: limits.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A private cluster and a pgcorral in front of it. Struct fields drop in declaration order, so
/// the pooler stops before the cluster.
pub struct Setup {
    pub pooler: Pgcorral,
    pub cluster: PgCluster,
}

pub fn setup(o: PgcorralOptions) -> Setup {
    let cluster = PgCluster::start();
    let pooler = Pgcorral::start(&cluster, o);
    Setup { pooler, cluster }
}

fn base_config(user: &str, password: Option<&str>) -> postgres::Config {
    let mut c = postgres::Config::new();
    c.user(user)
        .dbname(TEST_DB)
        .connect_timeout(Duration::from_secs(10));
    if let Some(p) = password {
        c.password(p);
    }
    c
}

/// The Rust `postgres` client over TCP to 127.0.0.1:`port`, database pgcorral_test.
pub fn connect(port: u16, user: &str, password: Option<&str>) -> Result<Client, postgres::Error> {
    let mut c = base_config(user, password);
    c.host("127.0.0.1").port(port);
    c.connect(NoTls)
}

/// The Rust `postgres` client over the Unix socket `<dir>/.s.PGSQL.<port>`.
pub fn connect_unix(
    dir: &Path,
    port: u16,
    user: &str,
    password: Option<&str>,
) -> Result<Client, postgres::Error> {
    let mut c = base_config(user, password);
    c.host_path(dir).port(port);
    c.connect(NoTls)
}

/// [`connect`] that panics with the error (and SQLSTATE).
pub fn must_connect(port: u16, user: &str, password: Option<&str>) -> Client {
    connect(port, user, password)
        .unwrap_or_else(|e| panic!("connect as {user} to port {port}: {e} ({})", sqlstate(&e)))
}

/// The SQLSTATE of an error, or a description of why there is none.
pub fn sqlstate(e: &postgres::Error) -> String {
    match e.code() {
        Some(c) => c.code().to_string(),
        None => format!("<no SQLSTATE: {e:?}>"),
    }
}

/// Runs `f` on a thread and waits at most `timeout` for it (the test fails instead of hanging).
pub fn with_timeout<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(timeout) {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {timeout:?} (hang)"),
    }
}

/// A normal client still gets served: the pool is unharmed.
pub fn assert_pool_works(pooler: &Pgcorral) {
    let port = pooler.port;
    let v: i32 = with_timeout(
        Duration::from_secs(15),
        "a normal client after the test",
        move || {
            let mut c = must_connect(port, TRUST_USER.user, Some(TRUST_USER.password));
            c.query_one("SELECT 1+1", &[]).expect("SELECT 1+1").get(0)
        },
    );
    assert_eq!(v, 2);
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

// ---- transaction pipeline helpers (tests/transaction.rs, tests/transaction_clients.rs) --------

/// Options for `pipeline = transaction` with a pool of `max_size` backends for `user` in the test
/// database, plus extra `pgcorral.conf` lines (e.g. `max_prepared_statements = 2`).
/// `PGCORRAL_TEST_TX_RELAY=worker` runs them with a worker per client instead of the shared relay
/// (scripts/test.sh runs the transaction tests both ways); lines in `extra_main` win.
pub fn tx_opts(user: &str, max_size: usize, extra_main: &[&str]) -> PgcorralOptions {
    let mut extra: Vec<String> = Vec::new();
    if let Ok(mode) = std::env::var("PGCORRAL_TEST_TX_RELAY") {
        extra.push(format!("transaction_relay = {mode}"));
    }
    extra.extend(extra_main.iter().map(|s| s.to_string()));
    PgcorralOptions {
        pipeline: "transaction",
        limits: vec![format!("{TEST_DB} {user} {max_size}")],
        extra_main: extra,
        ..Default::default()
    }
}

/// The Rust `postgres` client over TCP with an `application_name`.
pub fn connect_app(port: u16, user: &str, app: &str) -> Client {
    let mut c = base_config(user, None);
    c.host("127.0.0.1").port(port).application_name(app);
    c.connect(NoTls).unwrap_or_else(|e| {
        panic!(
            "connect as {user} (application_name {app}) to port {port}: {e} ({})",
            sqlstate(&e)
        )
    })
}

/// A direct connection to the cluster (not through pgcorral) as superuser `postgres` in the
/// test database, for watching the backends and preparing tables.
pub fn cluster_admin(cluster_port: u16) -> Client {
    let mut c = base_config("postgres", None);
    c.host("127.0.0.1")
        .port(cluster_port)
        .application_name("testkit_admin");
    c.connect(NoTls)
        .unwrap_or_else(|e| panic!("direct connection to the cluster as postgres: {e}"))
}

/// Backends of `user` on the cluster right now, seen through a direct `cluster_admin` client.
pub fn backends_of(admin: &mut Client, user: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 \
             AND backend_type = 'client backend'",
            &[&user],
        )
        .expect("count backends")
        .get(0)
}

/// Extended-protocol frontend messages for the raw client (`pgcorral_testkit::raw` has the simple
/// protocol only). Parameters and results are in text format.
pub mod ext {
    use pgcorral_testkit::raw::message;

    fn cstr(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    }

    /// Parse ('P') of `sql` as statement `name`, parameter types left to the server.
    pub fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, name);
        cstr(&mut b, sql);
        b.extend_from_slice(&0i16.to_be_bytes());
        message(b'P', &b)
    }

    /// Bind ('B') of statement `stmt` into `portal` with text parameters (None = NULL).
    pub fn bind(portal: &str, stmt: &str, params: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, portal);
        cstr(&mut b, stmt);
        b.extend_from_slice(&0i16.to_be_bytes()); // all parameters in text
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&0i16.to_be_bytes()); // all results in text
        message(b'B', &b)
    }

    /// Describe ('D') of a portal.
    pub fn describe_portal(portal: &str) -> Vec<u8> {
        let mut b = vec![b'P'];
        cstr(&mut b, portal);
        message(b'D', &b)
    }

    /// Describe ('D') of a statement.
    pub fn describe_statement(name: &str) -> Vec<u8> {
        let mut b = vec![b'S'];
        cstr(&mut b, name);
        message(b'D', &b)
    }

    /// Execute ('E') of `portal`, all rows.
    pub fn execute(portal: &str) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, portal);
        b.extend_from_slice(&0i32.to_be_bytes());
        message(b'E', &b)
    }

    /// Close ('C') of a statement.
    pub fn close_statement(name: &str) -> Vec<u8> {
        let mut b = vec![b'S'];
        cstr(&mut b, name);
        message(b'C', &b)
    }

    /// Sync ('S').
    pub fn sync() -> Vec<u8> {
        message(b'S', &[])
    }
}

/// A raw protocol client logged in (trust) through pgcorral, 10 s read timeout.
pub fn raw_login(port: u16, user: &str) -> raw::RawConn {
    let mut c = raw::RawConn::connect(port);
    c.set_read_timeout(Duration::from_secs(10));
    match c.startup(user, TEST_DB) {
        raw::Outcome::Ready(_) => c,
        other => panic!("raw login as {user} through port {port}: {other:?}"),
    }
}

/// Reads messages until the `n`th ReadyForQuery (ErrorResponses are kept, not fatal). Err on a
/// close or a read timeout, with the messages read so far.
pub fn read_ready_n(c: &mut raw::RawConn, n: usize) -> Result<Vec<raw::Message>, String> {
    let mut msgs = Vec::new();
    let mut ready = 0;
    while ready < n {
        match c.read_message() {
            raw::Read1::Got(m) => {
                if m.tag == b'Z' {
                    ready += 1;
                }
                msgs.push(m);
            }
            raw::Read1::Closed => {
                return Err(format!(
                    "connection closed after {ready} of {n} ReadyForQuery; read: {}",
                    tags(&msgs)
                ))
            }
            raw::Read1::TimedOut => {
                return Err(format!(
                    "read timeout after {ready} of {n} ReadyForQuery; read: {}",
                    tags(&msgs)
                ))
            }
        }
    }
    Ok(msgs)
}

/// The tags of messages as a string ("12TDCZ"), errors spelled out.
pub fn tags(msgs: &[raw::Message]) -> String {
    let mut s = String::new();
    for m in msgs {
        match m.error() {
            Some(e) => s.push_str(&format!("E[{} {}]", e.code, e.message)),
            None => s.push(m.tag as char),
        }
    }
    s
}

/// Runs `f` on a thread and waits at most `timeout` for it. Unlike [`with_timeout`], a panic in
/// `f` is re-raised as it is (its own message is the test failure), and only a real overrun is
/// reported as a hang. Whatever owns the pooler and the cluster should stay outside `f`, so that
/// they are stopped when the test fails.
pub fn run_within<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let h = std::thread::spawn(f);
    let deadline = std::time::Instant::now() + timeout;
    while !h.is_finished() {
        if std::time::Instant::now() >= deadline {
            panic!("{what}: not finished within {timeout:?} (hang)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    match h.join() {
        Ok(v) => v,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// "number of transactions actually processed: N" (optionally "N/M").
pub fn pgbench_processed(text: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with("number of transactions actually processed:"))
        .unwrap_or_else(|| panic!("no 'transactions actually processed' line in:\n{text}"));
    let v = line.split(':').nth(1).unwrap().trim();
    v.split('/')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("cannot parse {line:?}"))
}

/// The client scripts (Python, Node) the end-to-end tests run.
pub fn clients_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// A finished program's status and output, for assertion messages.
pub fn describe(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    )
}

/// The value of a ParameterStatus among messages a raw client read (e.g. its login's).
pub fn parameter(msgs: &[raw::Message], name: &str) -> Option<String> {
    msgs.iter().filter(|m| m.tag == b'S').find_map(|m| {
        let mut parts = m.body.split(|&b| b == 0);
        let k = parts.next()?;
        let v = parts.next()?;
        (k == name.as_bytes()).then(|| String::from_utf8_lossy(v).into_owned())
    })
}

/// A raw protocol client logged in (trust) through pgcorral with these startup parameters besides
/// user and database; the login's messages with it. 10 s read timeout.
pub fn raw_login_params(
    port: u16,
    user: &str,
    params: &[(&str, &str)],
) -> (raw::RawConn, Vec<raw::Message>) {
    let mut c = raw::RawConn::connect(port);
    c.set_read_timeout(Duration::from_secs(10));
    let mut all = vec![("user", user), ("database", TEST_DB)];
    all.extend_from_slice(params);
    c.send(&raw::startup_message(&all))
        .unwrap_or_else(|e| panic!("raw: sending StartupMessage to port {port}: {e}"));
    match c.read_until_ready(None) {
        raw::Outcome::Ready(msgs) => (c, msgs),
        other => panic!("raw login as {user} with {params:?} through port {port}: {other:?}"),
    }
}
