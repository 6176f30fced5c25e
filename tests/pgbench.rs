//! Acceptance 4: pgbench through pgcorral: initialisation, a 20-client run and a
//! connection-per-transaction (-C) run, without failed or aborted transactions.

mod common;
use common::*;

use std::process::{Command, Stdio};

fn pgbench(port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new("pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            BENCH_USER.user,
        ])
        .args(args)
        .arg(TEST_DB)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGSSLMODE", "disable")
        .env("PGGSSENCMODE", "disable")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run pgbench ({e}): install it with `apt-get install postgresql-15`")
        });
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn check_pgbench(pipeline: &'static str) {
    let mut o = opts(pipeline, &["pgcorral_test bench_user 30"]);
    o.max_connections = 40;
    let s = setup(o);
    let port = s.pooler.port;

    let (ok, text) = pgbench(port, &["-i", "-s", "1"]);
    assert!(
        ok,
        "pgbench -i through pgcorral ({pipeline}) failed:\n{text}"
    );
    assert_eq!(
        s.cluster
            .psql_db(TEST_DB, "SELECT count(*) FROM pgbench_accounts"),
        "100000"
    );

    let (ok, text) = pgbench(port, &["-c", "20", "-j", "2", "-T", "10"]);
    assert!(ok, "pgbench -c 20 ({pipeline}) exited non-zero:\n{text}");
    assert!(
        text.contains("number of failed transactions: 0 "),
        "failed transactions ({pipeline}):\n{text}"
    );
    assert!(
        !text.contains("aborted"),
        "aborted clients ({pipeline}):\n{text}"
    );
    assert!(
        pgbench_processed(&text) > 0,
        "no transaction processed ({pipeline}):\n{text}"
    );
    let backends = s.cluster.backend_count(BENCH_USER.user);
    assert!(
        backends <= 30,
        "{backends} backends of bench_user (limit 30)"
    );

    let (ok, text) = pgbench(port, &["-C", "-c", "10", "-T", "5"]);
    assert!(ok, "pgbench -C ({pipeline}) exited non-zero:\n{text}");
    assert!(
        !text.contains("aborted"),
        "aborted clients with -C ({pipeline}):\n{text}"
    );
    assert!(
        text.contains("number of failed transactions: 0 "),
        "failed transactions with -C ({pipeline}):\n{text}"
    );
    assert!(
        pgbench_processed(&text) > 0,
        "no transaction processed with -C ({pipeline}):\n{text}"
    );
    assert_pool_works(&s.pooler);
}

#[test]
fn pgbench_performance() {
    check_pgbench("performance");
}

#[test]
fn pgbench_session() {
    check_pgbench("session");
}
