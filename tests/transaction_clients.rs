//! `pipeline = transaction` with real client libraries that use protocol-level prepared
//! statements while clients outnumber backends: pgbench `-M prepared` and `-M extended`, Python
//! psycopg 3 (`prepare=True`), asyncpg (`conn.prepare`) and node-postgres (named queries).
//!
//! The Python and Node clients are the scripts tests/clients/tx_prepared_*. Each opens several
//! connections at once on a smaller pool, runs 10,000 executions in all with every result
//! checked, and exits 0 only if nothing went wrong. The SQL differs per connection, and psycopg
//! (`_pg3_0`, …) and node-postgres (`q1`, …) use the same statement names in every connection, so
//! a statement served from another client's cache shows as a wrong result (asyncpg numbers its
//! `__asyncpg_stmt_N__` names across the whole process, so its names do not collide).
//! Nothing is skipped: a missing python3/node/pgbench or client package fails the test with the
//! command that installs it (scripts/test.sh installs them all).

mod common;
use common::*;

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "run scripts/test.sh (it installs the client packages), or: \
     python3 -m pip install 'psycopg[binary]>=3.1' 'asyncpg>=0.29' && \
     npm install --no-audit --no-fund --prefix tests/clients";

/// Executions per script run, over all its connections.
const TOTAL: usize = 10_000;

/// How long a client program may run: a healthy run takes a few seconds.
const DEADLINE: Duration = Duration::from_secs(90);

/// Runs `cmd` to completion, or kills it (by its PID) once `DEADLINE` has passed and panics
/// with what it printed so far, so that a hung pooler fails the test instead of hanging it.
/// `what` names the program in messages; `hint` is the install hint when it cannot be spawned.
fn run_bounded(mut cmd: Command, what: &str, hint: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}): {hint}"));
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the client program") {
            break st;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {DEADLINE:?} (killed): a hang\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.join().unwrap_or_default()),
                String::from_utf8_lossy(&err.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

// ---- pgbench --------------------------------------------------------------------------------

/// Each script run: a prepared statement in its own (implicit) transaction, then an explicit
/// transaction of three statements.
const BENCH_SCRIPT: &str = "\\set a random(1, 1000)\n\
SELECT :a::int + 1 AS x;\n\
BEGIN;\n\
UPDATE tx_bench SET n = n + 1 WHERE id = :a;\n\
SELECT n FROM tx_bench WHERE id = :a;\n\
END;\n";

/// pgbench with 8 clients (connected for the whole run) on a pool of 3, `-M <mode>`,
/// 1,250 script runs each: 10,000 in all, none failed, no client aborted, no prepared-statement
/// error (42P05 "already exists", 26000 "does not exist") in the output, and every UPDATE
/// counted exactly once in the table.
fn check_pgbench(mode: &str) {
    let mut o = tx_opts(BENCH_USER.user, 3, &[]);
    // A healthy run never waits long for a backend: fail a stuck one in 10 s, not 30.
    o.blocking_timeout = 10;
    let s = setup(o);
    s.cluster.psql_db(
        TEST_DB,
        "CREATE TABLE tx_bench(id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0); \
         INSERT INTO tx_bench(id) SELECT g FROM generate_series(1, 1000) g; \
         GRANT ALL ON tx_bench TO PUBLIC",
    );
    let dir = TempDir::new("pgcorral-txbench-");
    let script = dir.path().join("tx.sql");
    std::fs::write(&script, BENCH_SCRIPT).unwrap();
    let mut cmd = Command::new("pgbench");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &s.pooler.port.to_string(),
        "-U",
        BENCH_USER.user,
        "-n",
        "-M",
        mode,
        "-c",
        "8",
        "-j",
        "2",
        "-t",
        "1250",
        "-f",
    ])
    .arg(&script)
    .arg(TEST_DB)
    .env("PGCONNECT_TIMEOUT", "10")
    .env("PGSSLMODE", "disable")
    .env("PGGSSENCMODE", "disable")
    .env_remove("PGSERVICE")
    .env_remove("PGOPTIONS");
    let out = run_bounded(
        cmd,
        &format!("pgbench -M {mode}"),
        "install it with `apt-get install postgresql-15`",
    );
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert!(
        out.status.success(),
        "pgbench -M {mode} through pgcorral (transaction) exited {}:\n{text}",
        out.status
    );
    assert!(
        text.contains("number of failed transactions: 0 "),
        "pgbench -M {mode}: failed transactions:\n{text}"
    );
    assert!(
        !text.contains("aborted"),
        "pgbench -M {mode}: aborted clients:\n{text}"
    );
    let err = stderr(&out);
    for bad in [
        "42P05",
        "26000",
        "already exists",
        "does not exist",
        "ERROR",
    ] {
        assert!(
            !err.contains(bad),
            "pgbench -M {mode}: {bad:?} in its stderr:\n{err}"
        );
    }
    assert_eq!(
        pgbench_processed(&text),
        10_000,
        "pgbench -M {mode}:\n{text}"
    );
    let sum = s.cluster.psql_db(TEST_DB, "SELECT sum(n) FROM tx_bench");
    assert_eq!(sum, "10000", "pgbench -M {mode}: UPDATEs counted");
    let n = s.cluster.backend_count(BENCH_USER.user);
    assert!(n <= 3, "pgbench -M {mode}: {n} backends (pool of 3)");
}

/// pgbench `-M prepared` (named statements prepared once per connection): see `check_pgbench`.
#[test]
fn pgbench_prepared_eight_clients_pool_of_three() {
    check_pgbench("prepared");
}

/// pgbench `-M extended` (unnamed statements, Parse/Bind/Execute each time): see `check_pgbench`.
#[test]
fn pgbench_extended_eight_clients_pool_of_three() {
    check_pgbench("extended");
}

// ---- Python and Node scripts ----------------------------------------------------------------

/// Connections each script opens at once, and the pool they share.
const CONNS: usize = 6;
const POOL: usize = 2;

/// Runs `interpreter tests/clients/<script> 127.0.0.1 <port> <user> <password> <db> <conns>
/// <total>` and checks it: exit 0, the summary line `ok executions=<total> backends=<pids>`, at
/// most POOL distinct backends, and no more than POOL backends of the user on PostgreSQL.
fn check_script(interpreter: &str, script: &str) {
    let mut opts = tx_opts(TRUST_USER.user, POOL, &[]);
    opts.blocking_timeout = 10;
    let s = setup(opts);
    let path = clients_dir().join(script);
    assert!(path.is_file(), "{} is missing", path.display());
    let mut cmd = Command::new(interpreter);
    cmd.arg(&path)
        .args([
            "127.0.0.1",
            &s.pooler.port.to_string(),
            TRUST_USER.user,
            TRUST_USER.password,
            TEST_DB,
            &CONNS.to_string(),
            &TOTAL.to_string(),
        ])
        .current_dir(clients_dir())
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS");
    let o = run_bounded(
        cmd,
        &format!("{interpreter} {script}"),
        &format!("install {interpreter}; then {INSTALL_HINT}"),
    );
    if o.status.code() == Some(2) {
        panic!(
            "{script}: client package missing: {}\n{INSTALL_HINT}",
            stderr(&o)
        );
    }
    assert!(
        o.status.success(),
        "{script}: {CONNS} connections on a pool of {POOL} failed:\n{}",
        describe(&o)
    );
    let out = stdout(&o);
    let summary = out
        .lines()
        .rev()
        .find(|l| l.starts_with("ok "))
        .unwrap_or_else(|| panic!("{script}: no summary line:\n{}", describe(&o)));
    let field = |k: &str| -> String {
        summary
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("{script}: no {k}= in {summary:?}"))
    };
    assert_eq!(
        field("executions"),
        TOTAL.to_string(),
        "{script}: executions"
    );
    let pids: BTreeSet<String> = field("backends")
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    assert!(
        !pids.is_empty() && pids.len() <= POOL,
        "{script}: served by backends {pids:?} (pool of {POOL})"
    );
    let n = s.cluster.backend_count(TRUST_USER.user);
    assert!(n <= POOL, "{script}: {n} backends (pool of {POOL})");
}

/// psycopg 3 with `prepare=True`: 6 connections at once on a pool of 2, 10,000 executions of
/// three statements per connection (every 25th in an explicit transaction), all right.
#[test]
fn psycopg3_prepared_six_connections_pool_of_two() {
    check_script("python3", "tx_prepared_psycopg.py");
}

/// asyncpg `conn.prepare` then repeated fetches: 6 connections at once on a pool of 2, 10,000
/// executions (every 25th in an explicit transaction), all right.
#[test]
fn asyncpg_prepared_six_connections_pool_of_two() {
    check_script("python3", "tx_prepared_asyncpg.py");
}

/// node-postgres named queries (`{name: 'q1', text, values}`): 6 connections at once on a pool
/// of 2, 10,000 executions (every 25th in an explicit transaction), all right.
#[test]
fn node_postgres_named_queries_six_connections_pool_of_two() {
    check_script("node", "tx_prepared_node.js");
}
