//! Acceptance 3 (clients): psql, pgbench, the Rust `postgres` client (tokio-postgres), Python
//! psycopg 3 and asyncpg, and node-postgres log in through pgcorral with SCRAM-SHA-256 against
//! the vault: pgcorral authenticates the client itself (hba `scram-sha-256`) and logs in to
//! PostgreSQL with the vault's password, pooling the backends. A wrong password is refused with
//! SQLSTATE 28P01, and the backends of the user never exceed the pool limit.
//!
//! The Python and Node clients are the scripts in tests/clients/. Nothing is skipped: a missing
//! python3/node or client package fails the test with the command that installs it
//! (scripts/test.sh installs them all).

mod common;
use common::*;

use std::process::{Command, Output, Stdio};

/// The pool limit for scram_user.
const LIMIT: usize = 3;
const WRONG_PASSWORD: &str = "not_the_scram_pw";
const INSTALL_HINT: &str = "run scripts/test.sh (it installs the client packages), or: \
     python3 -m pip install 'psycopg[binary]>=3.1' 'asyncpg>=0.29' && \
     npm install --no-audit --no-fund --prefix tests/clients";

/// A cluster and pgcorral holding scram_user's password in its vault, SCRAM for every client.
fn vault_setup() -> Setup {
    let o = PgcorralOptions {
        vault: Some(Vault::users(&[(SCRAM_USER.user, SCRAM_USER.password)])),
        hba: vec!["host all all all scram-sha-256".into()],
        limits: vec![format!("{TEST_DB} {} {LIMIT}", SCRAM_USER.user)],
        ..Default::default()
    };
    setup(o)
}

/// The pool is real: scram_user never has more backends than the limit.
fn assert_pool_bounded(s: &Setup, what: &str) {
    let n = s.cluster.backend_count(SCRAM_USER.user);
    assert!(
        n <= LIMIT,
        "{what}: {n} backends of {} on PostgreSQL, more than the pool limit {LIMIT}",
        SCRAM_USER.user
    );
}

/// Runs `interpreter tests/clients/<script> 127.0.0.1 <port> <user> <password> pgcorral_test`.
fn run_script(interpreter: &str, script: &str, port: u16, password: &str) -> Output {
    let path = clients_dir().join(script);
    assert!(path.is_file(), "{} is missing", path.display());
    Command::new(interpreter)
        .arg(&path)
        .args([
            "127.0.0.1",
            &port.to_string(),
            SCRAM_USER.user,
            password,
            TEST_DB,
        ])
        .current_dir(clients_dir())
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{interpreter}` for {script} ({e}): install it; then {INSTALL_HINT}")
        })
}

/// A client script: how it reports a refused login.
#[derive(Clone, Copy)]
struct Script {
    interpreter: &'static str,
    file: &'static str,
    /// Whether the client exposes the SQLSTATE of an error during connection. psycopg 3 does not:
    /// a failed connection has no PGresult, libpq has no API for the ErrorResponse's code, and
    /// `e.sqlstate` is None (the same against PostgreSQL directly). For it the refusal is checked
    /// by libpq's message for the server's FATAL "password authentication failed".
    sqlstate_on_connect: bool,
}

const PSYCOPG: Script = Script {
    interpreter: "python3",
    file: "psycopg_login.py",
    sqlstate_on_connect: false,
};
const ASYNCPG: Script = Script {
    interpreter: "python3",
    file: "asyncpg_login.py",
    sqlstate_on_connect: true,
};
const NODE_PG: Script = Script {
    interpreter: "node",
    file: "node_pg_login.js",
    sqlstate_on_connect: true,
};

/// A client script logs in with the right password (current_user = scram_user) and is refused
/// with SQLSTATE 28P01 with a wrong one.
fn check_script(sc: Script) {
    let s = vault_setup();
    check_script_on(&s, sc);
}

fn check_script_on(s: &Setup, sc: Script) {
    let (interpreter, script, port) = (sc.interpreter, sc.file, s.pooler.port);
    for round in 0..2 {
        let o = run_script(interpreter, script, port, SCRAM_USER.password);
        if o.status.code() == Some(2) {
            panic!(
                "{script}: client package missing: {}\n{INSTALL_HINT}",
                stderr(&o)
            );
        }
        assert!(
            o.status.success(),
            "{script} (round {round}) with the right password failed:\n{}",
            describe(&o)
        );
        assert_eq!(
            stdout(&o),
            format!("current_user={}", SCRAM_USER.user),
            "{script} (round {round}):\n{}",
            describe(&o)
        );
    }
    let o = run_script(interpreter, script, port, WRONG_PASSWORD);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{script} with a wrong password: expected a refusal (exit 1):\n{}",
        describe(&o)
    );
    if sc.sqlstate_on_connect {
        assert!(
            stdout(&o).starts_with("sqlstate=28P01 "),
            "{script} with a wrong password: expected SQLSTATE 28P01:\n{}",
            describe(&o)
        );
    } else {
        let fatal = format!(
            "FATAL:  password authentication failed for user \"{}\"",
            SCRAM_USER.user
        );
        let out = stdout(&o);
        assert!(
            (out.starts_with("sqlstate=None ") && out.contains(&fatal))
                || out.starts_with("sqlstate=28P01 "),
            "{script} with a wrong password: expected SQLSTATE 28P01 (or, as psycopg reports \
             connection errors, no SQLSTATE and {fatal:?}):\n{}",
            describe(&o)
        );
    }
    assert_pool_bounded(s, script);
}

/// psql: right password → scram_user; wrong one → "password authentication failed".
fn check_psql(s: &Setup) {
    let port = s.pooler.port;
    for round in 0..2 {
        let o = psql(
            "127.0.0.1",
            port,
            SCRAM_USER.user,
            Some(SCRAM_USER.password),
            TEST_DB,
            "SELECT current_user",
        );
        assert!(
            o.status.success(),
            "psql (round {round}):\n{}",
            describe(&o)
        );
        assert_eq!(stdout(&o), SCRAM_USER.user, "psql (round {round})");
    }
    let o = psql(
        "127.0.0.1",
        port,
        SCRAM_USER.user,
        Some(WRONG_PASSWORD),
        TEST_DB,
        "SELECT current_user",
    );
    assert!(
        !o.status.success(),
        "psql with a wrong password succeeded:\n{}",
        describe(&o)
    );
    assert!(
        stderr(&o).contains("password authentication failed"),
        "psql with a wrong password:\n{}",
        describe(&o)
    );
    assert_pool_bounded(s, "psql");
}

fn pgbench(port: u16, password: &str, script: &std::path::Path, args: &[&str]) -> Output {
    Command::new("pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            SCRAM_USER.user,
        ])
        .arg("-n")
        .arg("-f")
        .arg(script)
        .args(args)
        .arg(TEST_DB)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGSSLMODE", "disable")
        .env("PGGSSENCMODE", "disable")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run pgbench ({e}): install it with `apt-get install postgresql-15`")
        })
}

/// pgbench: as many clients as the pool limit, a SELECT-only custom script, no failures; a
/// wrong password makes it exit non-zero.
fn check_pgbench(s: &Setup) {
    let port = s.pooler.port;
    let dir = TempDir::new("pgcorral-clients-");
    let script = dir.path().join("select1.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    // Each pgbench client holds its connection for the whole run, so -c must not exceed the
    // limit (a client past it would wait for a free backend until blocking_timeout).
    let clients = LIMIT.to_string();
    let o = pgbench(
        port,
        SCRAM_USER.password,
        &script,
        &["-c", &clients, "-j", &clients, "-T", "3"],
    );
    let text = format!("{}\n{}", stdout(&o), stderr(&o));
    assert!(
        o.status.success(),
        "pgbench through pgcorral failed:\n{text}"
    );
    assert!(
        text.contains("number of failed transactions: 0 "),
        "pgbench: failed transactions:\n{text}"
    );
    assert!(
        !text.contains("aborted"),
        "pgbench: aborted clients:\n{text}"
    );
    assert_pool_bounded(s, "pgbench");

    let o = pgbench(port, WRONG_PASSWORD, &script, &["-c", "1", "-t", "1"]);
    assert!(
        !o.status.success(),
        "pgbench with a wrong password exited 0:\n{}",
        describe(&o)
    );
    assert!(
        stderr(&o).contains("password authentication failed"),
        "pgbench with a wrong password:\n{}",
        describe(&o)
    );
    assert_pool_bounded(s, "pgbench with a wrong password");
}

/// The Rust `postgres` client (tokio-postgres underneath): more logins in a row than the limit,
/// served by at most `LIMIT` backends; a wrong password → 28P01.
fn check_rust(s: &Setup) {
    let port = s.pooler.port;
    let mut pids = Vec::new();
    for round in 0..4 {
        let mut c = connect(port, SCRAM_USER.user, Some(SCRAM_USER.password)).unwrap_or_else(|e| {
            panic!(
                "Rust client (round {round}) with the right password: {e} ({})",
                sqlstate(&e)
            )
        });
        let row = c
            .query_one("SELECT current_user::text, pg_backend_pid()", &[])
            .expect("SELECT current_user");
        let user: String = row.get(0);
        let pid: i32 = row.get(1);
        assert_eq!(user, SCRAM_USER.user, "Rust client (round {round})");
        pids.push(pid);
    }
    pids.sort();
    pids.dedup();
    assert!(
        pids.len() <= LIMIT,
        "sequential logins used {} backends {pids:?}, more than the limit {LIMIT}",
        pids.len()
    );
    match connect(port, SCRAM_USER.user, Some(WRONG_PASSWORD)) {
        Ok(_) => panic!("Rust client: wrong password accepted"),
        Err(e) => assert_eq!(sqlstate(&e), "28P01", "Rust client, wrong password: {e}"),
    }
    assert_pool_bounded(s, "Rust client");
}

#[test]
fn psql_scram_vault() {
    let s = vault_setup();
    check_psql(&s);
}

#[test]
fn pgbench_scram_vault() {
    let s = vault_setup();
    check_pgbench(&s);
}

#[test]
fn rust_postgres_scram_vault() {
    let s = vault_setup();
    check_rust(&s);
}

#[test]
fn psycopg3_scram_vault() {
    check_script(PSYCOPG);
}

#[test]
fn asyncpg_scram_vault() {
    check_script(ASYNCPG);
}

#[test]
fn node_postgres_scram_vault() {
    check_script(NODE_PG);
}

/// Every client, one after the other, against one pooler: they all share the one pool, which
/// never grows past the limit.
#[test]
fn all_clients_share_the_pool() {
    let s = vault_setup();
    check_psql(&s);
    check_rust(&s);
    for sc in [PSYCOPG, ASYNCPG, NODE_PG] {
        check_script_on(&s, sc);
    }
    check_pgbench(&s);
    check_psql(&s);
    let n = s.cluster.backend_count(SCRAM_USER.user);
    assert!(
        (1..=LIMIT).contains(&n),
        "after every client: {n} backends of {} (expected 1..={LIMIT}: pooled, within the limit)",
        SCRAM_USER.user
    );
}
