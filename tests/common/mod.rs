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
