//! `pipeline = transaction` (transaction pooling): a client holds a backend only while a
//! transaction is open and gives it back at every ReadyForQuery with status `I`.
//!
//! What these tests prove, against a real PostgreSQL 15:
//! * the protocol stream stays framed however the client's bytes are split, and results carrying
//!   every byte value (including the tag bytes `Z`, `I`, `T`) reach the client intact;
//! * 200 clients on a pool of 10 run 10,000 transactions with no error, no lost or duplicated
//!   write, and never more than 10 backends;
//! * session state set by one client (GUCs, temporary tables, advisory locks, LISTEN, SQL-level
//!   PREPARE, WITH HOLD cursors) never reaches another client of the same backend, and an idle
//!   client never holds a backend;
//! * protocol-level prepared statements work when clients outnumber backends, including when the
//!   per-backend cache (`max_prepared_statements`) must evict;
//! * a client that vanishes mid-transaction releases its row locks at once;
//! * a cancel reaches the cancelled client's query only.
//!
//! The client libraries (pgbench, psycopg 3, asyncpg, node-postgres) are in
//! tests/transaction_clients.rs.

mod common;
use common::*;

use pgcorral_testkit::raw::{self, Message, Outcome, RawConn};
use postgres::SimpleQueryMessage;
use std::collections::BTreeSet;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

// ---- helpers --------------------------------------------------------------------------------

/// Makes `n` threads wait until all of them have arrived (e.g. all clients are connected at the
/// same time), without hanging when one of them fails first.
struct Gate {
    n: usize,
    arrived: AtomicUsize,
    failed: AtomicBool,
}

impl Gate {
    fn new(n: usize) -> Arc<Gate> {
        Arc::new(Gate {
            n,
            arrived: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
        })
    }

    fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Arrives and waits up to `timeout` for the others.
    fn wait(&self, timeout: Duration) -> Result<(), String> {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.arrived.load(Ordering::SeqCst);
            if n >= self.n {
                return Ok(());
            }
            if self.failed.load(Ordering::SeqCst) {
                return Err("gave up: another client failed".into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "only {n} of {} clients were connected after {timeout:?}",
                    self.n
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The first column of the first row of a simple-protocol query, as text (panics on errors).
fn text1(c: &mut Client, sql: &str) -> String {
    let msgs = c
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e} ({})", sqlstate(&e)));
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("<NULL>").to_string()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

fn backend_pid(c: &mut Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .unwrap_or_else(|e| panic!("SELECT pg_backend_pid(): {e} ({})", sqlstate(&e)))
        .get(0)
}

/// The SQLSTATE a simple-protocol statement fails with, or "ok".
fn outcome_of(c: &mut Client, sql: &str) -> String {
    match c.batch_execute(sql) {
        Ok(()) => "ok".into(),
        Err(e) => sqlstate(&e),
    }
}

/// The tags of the messages only ("12TDCZ"), leaving out the asynchronous ones the protocol
/// allows anywhere (ParameterStatus, NoticeResponse, NotificationResponse).
fn tag_string(msgs: &[Message]) -> String {
    msgs.iter()
        .filter(|m| !matches!(m.tag, b'S' | b'N' | b'A'))
        .map(|m| m.tag as char)
        .collect()
}

fn data_rows(msgs: &[Message]) -> Vec<Vec<Option<String>>> {
    msgs.iter().filter_map(|m| m.data_row()).collect()
}

fn ready_statuses(msgs: &[Message]) -> Vec<u8> {
    msgs.iter()
        .filter(|m| m.tag == b'Z')
        .map(|m| m.body.first().copied().unwrap_or(b'?'))
        .collect()
}

// ---- 1. framing -----------------------------------------------------------------------------

/// One framing case: the bytes a client sends and what it must get back.
struct Case {
    bytes: Vec<u8>,
    /// Message tags expected up to and including the second ReadyForQuery.
    tags: &'static str,
    /// DataRow values expected, in order.
    rows: Vec<String>,
    /// SQLSTATE of the one ErrorResponse expected, if any.
    error: Option<&'static str>,
}

/// Parse (named `name`) `SELECT $1::int + 1`, Bind with parameter `n` (4 digits, so every case
/// has the same length), Describe portal, Execute, Sync, then a simple Query `SELECT 42`.
fn ok_case(name: &str, n: u32) -> Case {
    let p = format!("{n:04}");
    Case {
        bytes: [
            ext::parse(name, "SELECT $1::int + 1"),
            ext::bind("", name, &[Some(p.as_bytes())]),
            ext::describe_portal(""),
            ext::execute(""),
            ext::sync(),
            raw::query("SELECT 42"),
        ]
        .concat(),
        tags: "12TDCZTDCZ",
        rows: vec![(n + 1).to_string(), "42".into()],
        error: None,
    }
}

/// The same shape with a syntax error in the Parse: the server skips to Sync (E, Z), then the
/// simple Query runs normally.
fn error_case(name: &str, n: u32) -> Case {
    let p = format!("{n:04}");
    Case {
        bytes: [
            ext::parse(name, "SELEC $1::int + 1"),
            ext::bind("", name, &[Some(p.as_bytes())]),
            ext::describe_portal(""),
            ext::execute(""),
            ext::sync(),
            raw::query("SELECT 42"),
        ]
        .concat(),
        tags: "EZTDCZ",
        rows: vec!["42".into()],
        error: Some("42601"),
    }
}

fn check_case(c: &mut RawConn, case: &Case, what: &str) {
    let msgs = read_ready_n(c, 2).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        tag_string(&msgs),
        case.tags,
        "{what}: message sequence (in detail: {})",
        tags(&msgs)
    );
    let rows: Vec<String> = data_rows(&msgs)
        .into_iter()
        .map(|r| r.into_iter().next().flatten().unwrap_or_default())
        .collect();
    assert_eq!(rows, case.rows, "{what}: result values");
    let errors: Vec<String> = msgs
        .iter()
        .filter_map(|m| m.error())
        .map(|e| e.code)
        .collect();
    assert_eq!(
        errors,
        case.error.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "{what}: errors ({})",
        tags(&msgs)
    );
    assert_eq!(
        ready_statuses(&msgs),
        b"II",
        "{what}: ReadyForQuery status after each Sync/Query"
    );
}

/// The client's bytes can arrive in any two pieces: an extended-protocol batch followed by a
/// simple Query, written as two writes split at every byte position (with TCP_NODELAY and a
/// 2 ms pause between them), always gets exactly the right answers (2..n+1 and 42), both for
/// a batch that succeeds and one whose Parse fails. A fresh statement name per iteration, since
/// named statements persist per client.
#[test]
fn framing_split_at_every_byte() {
    let s = setup(tx_opts(TRUST_USER.user, 2, &[]));
    let mut c = raw_login(s.pooler.port, TRUST_USER.user);
    for (kind, make) in [
        ("ok", ok_case as fn(&str, u32) -> Case),
        ("error", error_case),
    ] {
        let len = make("s_0000", 0).bytes.len();
        for k in 1..len {
            let name = format!("s_{k:04}");
            let case = make(&name, k as u32);
            assert_eq!(case.bytes.len(), len);
            let what = format!("{kind} batch of {len} bytes split at byte {k}");
            c.send(&case.bytes[..k])
                .unwrap_or_else(|e| panic!("{what}: first write: {e}"));
            std::thread::sleep(Duration::from_millis(2));
            c.send(&case.bytes[k..])
                .unwrap_or_else(|e| panic!("{what}: second write: {e}"));
            check_case(&mut c, &case, &what);
        }
    }
    match c.simple_query("SELECT 'still in sync'") {
        Outcome::Ready(m) => {
            assert_eq!(data_rows(&m), vec![vec![Some("still in sync".to_string())]])
        }
        other => panic!("after the split writes: {other:?}"),
    }
}

/// The same batches written one byte per write (TCP_NODELAY; no pause, 200 µs and 1 ms between
/// bytes): the answers are still exactly right.
#[test]
fn framing_one_byte_at_a_time() {
    let s = setup(tx_opts(TRUST_USER.user, 2, &[]));
    let mut c = raw_login(s.pooler.port, TRUST_USER.user);
    let mut i = 0u32;
    for pause_us in [0u64, 200, 1000] {
        for make in [ok_case as fn(&str, u32) -> Case, error_case, ok_case] {
            i += 1;
            let case = make(&format!("b_{i:04}"), i);
            let what = format!("batch {i} written a byte at a time ({pause_us} µs apart)");
            for b in &case.bytes {
                c.send(std::slice::from_ref(b))
                    .unwrap_or_else(|e| panic!("{what}: write: {e}"));
                if pause_us > 0 {
                    std::thread::sleep(Duration::from_micros(pause_us));
                }
            }
            check_case(&mut c, &case, &what);
        }
    }
}

/// Two clients on a pool of one backend both use the statement name "q" for different SQL,
/// alternating Bind/Execute/Sync on it 50 times each: every client always runs its own "q".
#[test]
fn same_statement_name_in_two_clients() {
    let s = setup(tx_opts(TRUST_USER.user, 1, &[]));
    let port = s.pooler.port;
    let mut a = raw_login(port, TRUST_USER.user);
    let mut b = raw_login(port, TRUST_USER.user);
    for (c, who) in [(&mut a, "A"), (&mut b, "B")] {
        let sql = format!("SELECT '{who}:' || $1::text");
        c.send(&[ext::parse("q", &sql), ext::sync()].concat())
            .unwrap();
        let m = read_ready_n(c, 1).unwrap_or_else(|e| panic!("client {who}: Parse: {e}"));
        assert_eq!(tag_string(&m), "1Z", "client {who}: Parse ({})", tags(&m));
    }
    for i in 0..50 {
        for (c, who) in [(&mut a, "A"), (&mut b, "B")] {
            let p = i.to_string();
            c.send(
                &[
                    ext::bind("", "q", &[Some(p.as_bytes())]),
                    ext::execute(""),
                    ext::sync(),
                ]
                .concat(),
            )
            .unwrap();
            let m = read_ready_n(c, 1).unwrap_or_else(|e| panic!("client {who}, round {i}: {e}"));
            assert_eq!(
                tag_string(&m),
                "2DCZ",
                "client {who}, round {i}: {}",
                tags(&m)
            );
            assert_eq!(
                data_rows(&m),
                vec![vec![Some(format!("{who}:{i}"))]],
                "client {who}, round {i}: ran another client's statement \"q\""
            );
        }
    }
}

// ---- 2. every byte value --------------------------------------------------------------------

/// The 256 byte values starting at `shift` (wrapping), and their hex.
fn rotated(shift: usize) -> (String, Vec<u8>) {
    let unit: Vec<u8> = (0..256).map(|i| ((i + shift) % 256) as u8).collect();
    let hex: String = unit.iter().map(|b| format!("{b:02x}")).collect();
    (hex, unit)
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then_some(a.len().min(b.len())))
}

/// One client's share of the bytea test; `Err` describes the first wrong answer.
fn bytea_rounds(port: u16, who: usize, rounds: usize) -> Result<(), String> {
    let mut c =
        connect(port, TRUST_USER.user, None).map_err(|e| format!("client {who}: connect: {e}"))?;
    for i in 0..rounds {
        let what = format!("client {who}, round {i}");
        let (hex, unit) = rotated((who * 101 + i * 37) % 256);
        let expected = unit.repeat(4000);

        // Server → client, binary: ~1 MB holding every byte value.
        let got: Vec<u8> = c
            .query_one(&format!("SELECT decode(repeat('{hex}', 4000), 'hex')"), &[])
            .map_err(|e| format!("{what}: bytea result: {e}"))?
            .get(0);
        if let Some(p) = first_difference(&got, &expected) {
            return Err(format!(
                "{what}: bytea result differs at byte {p} (got {} bytes, expected {})",
                got.len(),
                expected.len()
            ));
        }

        // A small query in between: the stream is still in step.
        let v: i32 = c
            .query_one("SELECT $1::int * 2", &[&(i as i32)])
            .map_err(|e| format!("{what}: small query: {e}"))?
            .get(0);
        if v != 2 * i as i32 {
            return Err(format!("{what}: SELECT {i} * 2 returned {v}"));
        }

        // Client → server: the same megabyte as a parameter, compared by the server.
        let row = c
            .query_one(
                "SELECT $1::bytea = decode(repeat($2::text, 4000), 'hex'), length($1::bytea)",
                &[&expected, &hex],
            )
            .map_err(|e| format!("{what}: bytea parameter: {e}"))?;
        let (same, len): (bool, i32) = (row.get(0), row.get(1));
        if !same || len as usize != expected.len() {
            return Err(format!(
                "{what}: the server got a different parameter (equal: {same}, length {len})"
            ));
        }

        // Both directions inside an explicit transaction.
        let mut tx = c.transaction().map_err(|e| format!("{what}: BEGIN: {e}"))?;
        let echoed: Vec<u8> = tx
            .query_one("SELECT $1::bytea", &[&expected])
            .map_err(|e| format!("{what}: echo: {e}"))?
            .get(0);
        tx.commit().map_err(|e| format!("{what}: COMMIT: {e}"))?;
        if let Some(p) = first_difference(&echoed, &expected) {
            return Err(format!("{what}: echoed bytea differs at byte {p}"));
        }

        // The simple protocol, text format (2 MB of hex in one DataRow).
        let msgs = c
            .simple_query(&format!(
                "SELECT decode(repeat('{hex}', 4000), 'hex'); SELECT {i}"
            ))
            .map_err(|e| format!("{what}: simple query: {e}"))?;
        let texts: Vec<String> = msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
                _ => None,
            })
            .collect();
        let want = format!("\\x{}", hex.repeat(4000));
        if texts.len() != 2 || texts[0] != want || texts[1] != i.to_string() {
            return Err(format!(
                "{what}: simple query returned {} rows (first {} chars, expected {}; second {:?})",
                texts.len(),
                texts.first().map(|t| t.len()).unwrap_or(0),
                want.len(),
                texts.get(1)
            ));
        }
    }
    Ok(())
}

/// Results holding every byte value (about 1 MB of bytea, full of `Z`, `I`, `T` bytes) cross
/// pgcorral intact in both directions, in binary and text, six times per client interleaved
/// with other queries and transactions, by two clients at once on a pool of two.
#[test]
fn every_byte_value_in_large_results() {
    let s = setup(tx_opts(TRUST_USER.user, 2, &[]));
    let port = s.pooler.port;
    let results = run_within(Duration::from_secs(90), "bytea clients", move || {
        let hs: Vec<_> = (0..2)
            .map(|who| std::thread::spawn(move || bytea_rounds(port, who, 6)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
            .collect::<Vec<_>>()
    });
    for r in results {
        r.unwrap_or_else(|e| panic!("{e}"));
    }
}

// ---- 3. 200 clients on a pool of 10 ---------------------------------------------------------

/// 200 clients, all connected at the same time, on a pool of 10 backends, each run 50
/// transactions `BEGIN; UPDATE counter …; INSERT INTO log(client, seq) …; COMMIT` (a third as
/// the Rust client's transactions with parameters, a third as one multi-statement simple query,
/// a third as four simple queries). No client sees an error, the counter is exactly 10,000,
/// the log holds every (client, seq) exactly once, and PostgreSQL never has more than 10
/// backends of the user (sampled every 10 ms).
#[test]
fn two_hundred_clients_pool_of_ten() {
    const CLIENTS: usize = 200;
    const TX: usize = 50;
    let s = setup(tx_opts(TRUST_USER.user, 10, &[]));
    s.cluster.psql_db(
        TEST_DB,
        "CREATE TABLE counter(id int PRIMARY KEY, n int NOT NULL); \
         INSERT INTO counter VALUES (1, 0); \
         CREATE TABLE log(client int NOT NULL, seq int NOT NULL, UNIQUE (client, seq)); \
         GRANT ALL ON counter, log TO PUBLIC",
    );
    let (port, cluster_port) = (s.pooler.port, s.cluster.port);

    let done = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicI64::new(0));
    let samples = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (done, max_seen, samples) = (done.clone(), max_seen.clone(), samples.clone());
        std::thread::spawn(move || {
            let mut admin = cluster_admin(cluster_port);
            while !done.load(Ordering::SeqCst) {
                max_seen.fetch_max(backends_of(&mut admin, TRUST_USER.user), Ordering::SeqCst);
                samples.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let start = Instant::now();
    let errors = run_within(
        Duration::from_secs(150),
        "200 clients × 50 transactions",
        move || {
            let gate = Gate::new(CLIENTS);
            let handles: Vec<_> = (0..CLIENTS)
                .map(|i| {
                    let gate = gate.clone();
                    std::thread::spawn(move || -> Result<(), String> {
                        let mut c = match connect(port, TRUST_USER.user, None) {
                            Ok(c) => c,
                            Err(e) => {
                                gate.fail();
                                return Err(format!("client {i}: connect: {e} ({})", sqlstate(&e)));
                            }
                        };
                        gate.wait(Duration::from_secs(60))
                            .map_err(|e| format!("client {i}: {e}"))?;
                        for seq in 0..TX {
                            let err = |e: postgres::Error| {
                                format!("client {i}, transaction {seq}: {e} ({})", sqlstate(&e))
                            };
                            let insert =
                                format!("INSERT INTO log(client, seq) VALUES ({i}, {seq})");
                            match i % 3 {
                                0 => {
                                    let mut tx = c.transaction().map_err(err)?;
                                    tx.execute("UPDATE counter SET n = n + 1 WHERE id = 1", &[])
                                        .map_err(err)?;
                                    let n = tx
                                        .execute(
                                            "INSERT INTO log(client, seq) VALUES ($1, $2)",
                                            &[&(i as i32), &(seq as i32)],
                                        )
                                        .map_err(err)?;
                                    if n != 1 {
                                        return Err(format!(
                                            "client {i}, transaction {seq}: INSERT {n}"
                                        ));
                                    }
                                    tx.commit().map_err(err)?;
                                }
                                1 => c
                                    .batch_execute(&format!(
                                        "BEGIN; UPDATE counter SET n = n + 1 WHERE id = 1; \
                                         {insert}; COMMIT"
                                    ))
                                    .map_err(err)?,
                                _ => {
                                    for sql in [
                                        "BEGIN",
                                        "UPDATE counter SET n = n + 1 WHERE id = 1",
                                        &insert,
                                        "COMMIT",
                                    ] {
                                        c.batch_execute(sql).map_err(err)?;
                                    }
                                }
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| match h.join() {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some("a client thread panicked".into()),
                })
                .collect::<Vec<String>>()
        },
    );
    let elapsed = start.elapsed();
    done.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler");
    eprintln!("200 clients × 50 transactions took {elapsed:?}");

    assert!(
        errors.is_empty(),
        "{} clients failed, e.g.: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    let mut admin = cluster_admin(s.cluster.port);
    let n: i32 = admin
        .query_one("SELECT n FROM counter WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, (CLIENTS * TX) as i32, "counter after 10,000 increments");
    let row = admin
        .query_one(
            "SELECT count(*), count(DISTINCT (client, seq)) FROM log",
            &[],
        )
        .unwrap();
    let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        (rows, distinct),
        (10_000, 10_000),
        "log rows and distinct (client, seq)"
    );
    let complete: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT client FROM log GROUP BY client \
             HAVING count(*) = 50 AND min(seq) = 0 AND max(seq) = 49 \
             AND min(client) >= 0 AND max(client) < 200) x",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(complete, CLIENTS as i64, "clients with all 50 log rows");

    let (max_seen, samples) = (
        max_seen.load(Ordering::SeqCst),
        samples.load(Ordering::SeqCst),
    );
    assert!(samples > 0, "the backend sampler never ran");
    assert!(
        (1..=10).contains(&max_seen),
        "{max_seen} backends of {} seen at once (pool of 10; {samples} samples)",
        TRUST_USER.user
    );
    let after = backends_of(&mut admin, TRUST_USER.user);
    assert!(after <= 10, "{after} backends after the run");
}

// ---- 4. session state never leaks -----------------------------------------------------------

/// The values a fresh session of B has, read by B before A changes anything.
struct Defaults {
    work_mem: String,
    statement_timeout: String,
    search_path: String,
}

/// A kind of session state: what client A does, and what B (then on the same backend) checks.
/// `check` returns the leaks it found, each described.
struct StateKind {
    name: &'static str,
    set: fn(&mut Client),
    check: fn(&mut Client, &mut Client, &Defaults) -> Vec<String>,
}

fn a_run(a: &mut Client, sql: &str) {
    a.batch_execute(sql)
        .unwrap_or_else(|e| panic!("client A: {sql}: {e} ({})", sqlstate(&e)));
}

fn a_query(a: &mut Client, sql: &str) {
    a.query(sql, &[])
        .unwrap_or_else(|e| panic!("client A: {sql}: {e} ({})", sqlstate(&e)));
}

fn expect_eq(leaks: &mut Vec<String>, what: &str, got: String, want: &str) {
    if got != want {
        leaks.push(format!("{what}: got {got:?}, expected {want:?}"));
    }
}

const WORK_MEM: StateKind = StateKind {
    name: "SET work_mem / SET LOCAL statement_timeout",
    set: |a| {
        a_run(a, "SET work_mem = '77MB'");
        a_run(a, "BEGIN");
        a_run(a, "SET LOCAL statement_timeout = '7s'");
        let inside = text1(a, "SHOW statement_timeout");
        assert_eq!(inside, "7s", "client A: SET LOCAL inside its transaction");
        a_run(a, "COMMIT");
    },
    check: |b, _, d| {
        let mut leaks = Vec::new();
        expect_eq(
            &mut leaks,
            "B: SHOW work_mem",
            text1(b, "SHOW work_mem"),
            &d.work_mem,
        );
        expect_eq(
            &mut leaks,
            "B: SHOW statement_timeout",
            text1(b, "SHOW statement_timeout"),
            &d.statement_timeout,
        );
        leaks
    },
};

const APPLICATION_NAME: StateKind = StateKind {
    name: "set_config('application_name')",
    set: |a| a_query(a, "SELECT set_config('application_name', 'leak', false)"),
    check: |b, admin, _| {
        let mut leaks = Vec::new();
        expect_eq(
            &mut leaks,
            "B: SHOW application_name",
            text1(b, "SHOW application_name"),
            "client_b",
        );
        let pid = backend_pid(b);
        let seen: Option<String> = admin
            .query_one(
                "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .map(|r| r.get(0))
            .ok();
        if seen.as_deref() == Some("leak") {
            leaks.push(format!(
                "pg_stat_activity shows application_name 'leak' for B's backend {pid}"
            ));
        }
        leaks
    },
};

const SEARCH_PATH: StateKind = StateKind {
    name: "set_config('search_path')",
    set: |a| a_query(a, "SELECT set_config('search_path', 'leaky', false)"),
    check: |b, _, d| {
        let mut leaks = Vec::new();
        expect_eq(
            &mut leaks,
            "B: current_setting('search_path')",
            text1(b, "SELECT current_setting('search_path')"),
            &d.search_path,
        );
        leaks
    },
};

const TEMP_TABLE: StateKind = StateKind {
    name: "CREATE TEMP TABLE",
    set: |a| {
        a_run(
            a,
            "CREATE TEMP TABLE leak_t(x int); INSERT INTO leak_t VALUES (1)",
        )
    },
    check: |b, _, _| {
        let mut leaks = Vec::new();
        expect_eq(
            &mut leaks,
            "B: SELECT count(*) FROM leak_t (SQLSTATE)",
            outcome_of(b, "SELECT count(*) FROM leak_t"),
            "42P01",
        );
        expect_eq(
            &mut leaks,
            "B: temporary relations named leak_t in pg_class",
            text1(
                b,
                "SELECT count(*) FROM pg_class WHERE relname = 'leak_t' AND relpersistence = 't'",
            ),
            "0",
        );
        leaks
    },
};

const ADVISORY_LOCK: StateKind = StateKind {
    name: "pg_advisory_lock",
    set: |a| a_query(a, "SELECT pg_advisory_lock(4242)"),
    check: |b, admin, _| {
        let mut leaks = Vec::new();
        expect_eq(
            &mut leaks,
            "B: advisory locks held by its backend",
            text1(
                b,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                 AND pid = pg_backend_pid()",
            ),
            "0",
        );
        expect_eq(
            &mut leaks,
            "advisory locks held by any backend",
            text1(
                b,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
            ),
            "0",
        );
        // Another session (not through pgcorral) can take the lock: nobody holds it.
        let free: bool = admin
            .query_one("SELECT pg_try_advisory_lock(4242)", &[])
            .unwrap()
            .get(0);
        if free {
            admin
                .query_one("SELECT pg_advisory_unlock(4242)", &[])
                .unwrap();
        } else {
            leaks.push("a direct session cannot take advisory lock 4242: still held".into());
        }
        expect_eq(
            &mut leaks,
            "B: pg_try_advisory_lock(4242)",
            text1(b, "SELECT pg_try_advisory_lock(4242)"),
            "t",
        );
        let _ = b.batch_execute("SELECT pg_advisory_unlock_all()");
        leaks
    },
};

const LISTEN: StateKind = StateKind {
    name: "LISTEN",
    set: |a| a_run(a, "LISTEN leak_channel"),
    check: |b, admin, _| {
        let mut leaks = Vec::new();
        admin
            .batch_execute("NOTIFY leak_channel, 'leaked'")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        expect_eq(
            &mut leaks,
            "B: pg_listening_channels()",
            text1(b, "SELECT count(*) FROM pg_listening_channels()"),
            "0",
        );
        let _ = b.batch_execute("SELECT 1");
        let got = b.notifications().len();
        if got != 0 {
            leaks.push(format!("B received {got} notification(s) on leak_channel"));
        }
        leaks
    },
};

const PREPARE: StateKind = StateKind {
    name: "PREPARE (SQL)",
    set: |a| a_run(a, "PREPARE leak_p AS SELECT 1"),
    check: |b, _, _| {
        let mut leaks = Vec::new();
        expect_eq(
            &mut leaks,
            "B: SQL-level prepared statements",
            text1(
                b,
                "SELECT count(*) FROM pg_prepared_statements WHERE from_sql",
            ),
            "0",
        );
        expect_eq(
            &mut leaks,
            "B: EXECUTE leak_p (SQLSTATE)",
            outcome_of(b, "EXECUTE leak_p"),
            "26000",
        );
        leaks
    },
};

const CURSOR: StateKind = StateKind {
    name: "DECLARE … CURSOR WITH HOLD",
    set: |a| {
        a_run(
            a,
            "BEGIN; DECLARE leak_c CURSOR WITH HOLD FOR SELECT 1; COMMIT",
        )
    },
    check: |b, _, _| {
        let mut leaks = Vec::new();
        expect_eq(
            &mut leaks,
            "B: holdable or leak_c cursors in pg_cursors",
            text1(
                b,
                "SELECT count(*) FROM pg_cursors WHERE is_holdable OR name = 'leak_c'",
            ),
            "0",
        );
        expect_eq(
            &mut leaks,
            "B: FETCH leak_c (SQLSTATE)",
            outcome_of(b, "FETCH leak_c"),
            "34000",
        );
        leaks
    },
};

const ALL_KINDS: [&StateKind; 8] = [
    &WORK_MEM,
    &APPLICATION_NAME,
    &SEARCH_PATH,
    &TEMP_TABLE,
    &ADVISORY_LOCK,
    &LISTEN,
    &PREPARE,
    &CURSOR,
];

/// Pool of one backend, clients A and B connected together (B first); A sets the `kinds` of
/// session state, then (when `a_leaves`) disconnects, else stays connected and idle; B, on the
/// same backend, must see none of it, and both clients keep working.
fn check_no_leak(kinds: &'static [&'static StateKind], extra: &[&str], a_leaves: bool) {
    let mut o = tx_opts(TRUST_USER.user, 1, extra);
    o.blocking_timeout = 5;
    let s = setup(o);
    let (port, cluster_port) = (s.pooler.port, s.cluster.port);
    let extra: Vec<String> = extra.iter().map(|e| e.to_string()).collect();
    run_within(Duration::from_secs(60), "session state check", move || {
        leak_scenario(port, cluster_port, kinds, &extra, a_leaves)
    });
}

fn leak_scenario(
    port: u16,
    cluster_port: u16,
    kinds: &[&StateKind],
    extra: &[String],
    a_leaves: bool,
) {
    let mut admin = cluster_admin(cluster_port);
    let mut b = connect_app(port, TRUST_USER.user, "client_b");
    let mut a = connect_app(port, TRUST_USER.user, "client_a");
    let defaults = Defaults {
        work_mem: text1(&mut b, "SHOW work_mem"),
        statement_timeout: text1(&mut b, "SHOW statement_timeout"),
        search_path: text1(&mut b, "SELECT current_setting('search_path')"),
    };
    let pid = backend_pid(&mut b);
    assert_eq!(
        backend_pid(&mut a),
        pid,
        "pool of one: A and B share the backend"
    );
    for k in kinds {
        (k.set)(&mut a);
    }
    assert_eq!(backend_pid(&mut a), pid, "A after setting its state");
    let a = if a_leaves {
        drop(a);
        std::thread::sleep(Duration::from_millis(200));
        None
    } else {
        Some(a)
    };
    assert_eq!(
        backend_pid(&mut b),
        pid,
        "B is served by the one backend while A is {}",
        if a_leaves {
            "gone"
        } else {
            "connected and idle"
        }
    );
    let mut leaks = Vec::new();
    for k in kinds {
        for l in (k.check)(&mut b, &mut admin, &defaults) {
            leaks.push(format!("[{}] {l}", k.name));
        }
    }
    assert!(
        leaks.is_empty(),
        "session state of client A reached client B{}:\n{}",
        if extra.is_empty() {
            String::new()
        } else {
            format!(" (with {extra:?})")
        },
        leaks.join("\n")
    );
    assert_eq!(text1(&mut b, "SELECT 'b ok'"), "b ok");
    if let Some(mut a) = a {
        // A is served again after B (the backend went back to the pool).
        let v: i32 = a
            .query_one("SELECT 7", &[])
            .unwrap_or_else(|e| panic!("client A after B: {e} ({})", sqlstate(&e)))
            .get(0);
        assert_eq!(v, 7);
    }
    assert!(
        backends_of(&mut admin, TRUST_USER.user) <= 1,
        "more than one backend on a pool of one"
    );
}

/// `SET work_mem` (outside a transaction) and `SET LOCAL statement_timeout` (inside one) by A
/// are not seen by B: `SHOW work_mem` and `SHOW statement_timeout` are B's defaults.
#[test]
fn no_leak_set_work_mem() {
    check_no_leak(&[&WORK_MEM], &[], false);
}

/// `set_config('application_name', 'leak', false)` by A: B still has its own application_name
/// (`client_b`), in `SHOW` and in pg_stat_activity.
#[test]
fn no_leak_application_name() {
    check_no_leak(&[&APPLICATION_NAME], &[], false);
}

/// `set_config('search_path', 'leaky', false)` by A: B's search_path is the default.
#[test]
fn no_leak_search_path() {
    check_no_leak(&[&SEARCH_PATH], &[], false);
}

/// A's `CREATE TEMP TABLE leak_t`: B cannot read leak_t (42P01) and pg_class has no temporary
/// leak_t.
#[test]
fn no_leak_temp_table() {
    check_no_leak(&[&TEMP_TABLE], &[], false);
}

/// A's `pg_advisory_lock(4242)`: no advisory lock is held by any backend afterwards, a direct
/// session and B can both take it.
#[test]
fn no_leak_advisory_lock() {
    check_no_leak(&[&ADVISORY_LOCK], &[], false);
}

/// A's `LISTEN leak_channel`: B's backend listens on nothing and a NOTIFY does not reach B.
#[test]
fn no_leak_listen() {
    check_no_leak(&[&LISTEN], &[], false);
}

/// A's SQL `PREPARE leak_p`: B sees no SQL-level prepared statement and `EXECUTE leak_p` fails
/// with 26000.
#[test]
fn no_leak_sql_prepare() {
    check_no_leak(&[&PREPARE], &[], false);
}

/// A's `DECLARE leak_c CURSOR WITH HOLD` (committed): B sees no holdable cursor and
/// `FETCH leak_c` fails with 34000.
#[test]
fn no_leak_cursor_with_hold() {
    check_no_leak(&[&CURSOR], &[], false);
}

/// Every kind of state at once, A disconnecting afterwards: none of it reaches B.
#[test]
fn no_leak_all_kinds_after_disconnect() {
    check_no_leak(&ALL_KINDS, &[], true);
}

/// Every kind of state at once with `server_reset_query_always = on`, A staying connected:
/// none of it reaches B and both keep working.
#[test]
fn no_leak_all_kinds_reset_always() {
    check_no_leak(&ALL_KINDS, &["server_reset_query_always = on"], false);
}

/// A backend opened by one client keeps the startup parameters the next client needed SET, rather
/// than being reset to the opener's after every transaction: a run of transactions by clients with
/// the same application_name pays the SET once per backend, not once per transaction. What each
/// client sees stays its own (SHOW, after another client changed the backend's parameters, and
/// after a client's own SET made pgcorral reset the session).
#[test]
fn startup_parameters_kept_between_transactions() {
    let s = setup(tx_opts(TRUST_USER.user, 1, &[]));
    let (port, cluster_port) = (s.pooler.port, s.cluster.port);
    run_within(
        Duration::from_secs(60),
        "startup parameters on a shared backend",
        move || kept_parameters_scenario(port, cluster_port),
    );
}

/// The application_name and last statement of the user's one backend, seen directly.
fn backend_app_and_query(admin: &mut Client) -> (String, String) {
    let row = admin
        .query_one(
            "SELECT application_name, query FROM pg_stat_activity WHERE usename = $1 \
             AND backend_type = 'client backend'",
            &[&TRUST_USER.user],
        )
        .expect("the user's one backend in pg_stat_activity");
    (row.get(0), row.get(1))
}

fn kept_parameters_scenario(port: u16, cluster_port: u16) {
    let mut admin = cluster_admin(cluster_port);
    let mut opener = connect_app(port, TRUST_USER.user, "opener");
    assert_eq!(text1(&mut opener, "SHOW application_name"), "opener");
    let mut second = connect_app(port, TRUST_USER.user, "second");
    let pid = backend_pid(&mut opener);
    for i in 0..3 {
        assert_eq!(backend_pid(&mut second), pid, "pool of one");
        assert_eq!(
            text1(
                &mut second,
                &format!("SELECT current_setting('application_name') || ' {i}'")
            ),
            format!("second {i}")
        );
        // After the transaction the backend still has "second", and nothing ran on it since the
        // client's statement (no reset back to "opener").
        let (app, query) = backend_app_and_query(&mut admin);
        assert_eq!(
            app, "second",
            "after transaction {i} of client 'second' the backend's application_name is '{app}' \
             (last statement: {query})"
        );
        assert!(
            query.contains(&format!("' {i}'")),
            "a statement ran on the backend after client 'second's transaction {i}: {query}"
        );
    }
    // The opener gets its own name back, and a client without application_name gets none.
    assert_eq!(text1(&mut opener, "SHOW application_name"), "opener");
    let mut anonymous = must_connect(port, TRUST_USER.user, None);
    assert_eq!(text1(&mut anonymous, "SHOW application_name"), "");
    assert_eq!(text1(&mut second, "SHOW application_name"), "second");
    // A client's own SET makes pgcorral reset the session after the transaction (RESET ALL takes
    // the backend back to the opener's parameters): the next client still sees its own.
    let work_mem = text1(&mut anonymous, "SHOW work_mem");
    a_run(&mut second, "SET work_mem = '7MB'");
    assert_eq!(text1(&mut anonymous, "SHOW work_mem"), work_mem);
    assert_eq!(text1(&mut anonymous, "SHOW application_name"), "");
    assert_eq!(text1(&mut second, "SHOW application_name"), "second");
    assert_eq!(text1(&mut second, "SHOW work_mem"), work_mem);
    assert_eq!(text1(&mut opener, "SHOW application_name"), "opener");
    // The backend's session has "second" again; a new "second" client's login must report its
    // own application_name, not the opener's the slot recorded when the backend was opened.
    assert_eq!(text1(&mut second, "SHOW application_name"), "second");
    let (_late, msgs) = raw_login_params(port, TRUST_USER.user, &[("application_name", "second")]);
    assert_eq!(
        parameter(&msgs, "application_name").as_deref(),
        Some("second"),
        "the login of a second 'second' client reported another application_name"
    );
}

/// A startup parameter one client sent and the next did not is not inherited: the next client sees
/// the value the backend was opened with (here the server's default, the opener not sending it).
#[test]
fn startup_parameters_of_an_earlier_client_are_not_inherited() {
    let s = setup(tx_opts(TRUST_USER.user, 1, &[]));
    let port = s.pooler.port;
    run_within(Duration::from_secs(60), "inherited parameters", move || {
        let mut plain = connect_app(port, TRUST_USER.user, "plain");
        let default_digits = text1(&mut plain, "SHOW extra_float_digits");
        let default_style = text1(&mut plain, "SHOW IntervalStyle");
        let (mut tuned, msgs) = raw_login_params(
            port,
            TRUST_USER.user,
            &[
                ("application_name", "tuned"),
                ("extra_float_digits", "0"),
                ("IntervalStyle", "iso_8601"),
            ],
        );
        assert_eq!(
            parameter(&msgs, "IntervalStyle").as_deref(),
            Some("iso_8601")
        );
        let show = |c: &mut raw::RawConn, sql: &str| -> String {
            match c.simple_query(sql) {
                Outcome::Ready(m) => data_rows(&m)
                    .first()
                    .and_then(|r| r.first().cloned().flatten())
                    .unwrap_or_else(|| panic!("{sql}: no row")),
                other => panic!("{sql}: {other:?}"),
            }
        };
        assert_eq!(show(&mut tuned, "SHOW extra_float_digits"), "0");
        for round in 0..2 {
            assert_eq!(
                text1(&mut plain, "SHOW extra_float_digits"),
                default_digits,
                "round {round}: client 'plain' inherited extra_float_digits from 'tuned'"
            );
            assert_eq!(text1(&mut plain, "SHOW IntervalStyle"), default_style);
            assert_eq!(show(&mut tuned, "SHOW IntervalStyle"), "iso_8601");
        }
        // A login right after 'tuned' used the backend reports the server's values.
        let (_next, msgs) =
            raw_login_params(port, TRUST_USER.user, &[("application_name", "next")]);
        assert_eq!(
            parameter(&msgs, "IntervalStyle").as_deref(),
            Some(default_style.as_str()),
            "a login after 'tuned' reported its IntervalStyle"
        );
    });
}

/// `server_reset_query_always` with a query that resets no settings (`DEALLOCATE ALL`, with a
/// comment): a client's
/// own `SET application_name` or `RESET application_name` does not reach the next client with the
/// same startup parameters.
#[test]
fn reset_always_with_a_custom_query_resets_settings() {
    let s = setup(tx_opts(
        TRUST_USER.user,
        1,
        &[
            "server_reset_query_always = on",
            // A trailing comment must not swallow what pgcorral adds.
            "server_reset_query = DEALLOCATE ALL -- custom",
        ],
    ));
    let port = s.pooler.port;
    run_within(Duration::from_secs(60), "custom reset query", move || {
        let mut opener = connect_app(port, TRUST_USER.user, "opener");
        assert_eq!(text1(&mut opener, "SHOW application_name"), "opener");
        let mut one = connect_app(port, TRUST_USER.user, "second");
        let mut two = connect_app(port, TRUST_USER.user, "second");
        assert_eq!(text1(&mut one, "SHOW application_name"), "second");
        a_run(&mut one, "SET application_name = 'changed'");
        assert_eq!(
            text1(&mut two, "SHOW application_name"),
            "second",
            "client one's SET application_name reached client two"
        );
        a_run(&mut one, "RESET application_name");
        assert_eq!(
            text1(&mut two, "SHOW application_name"),
            "second",
            "client one's RESET application_name reached client two"
        );
        assert_eq!(text1(&mut opener, "SHOW application_name"), "opener");
    });
}

/// Transaction pooling proper: two clients connected at once on a pool of one backend take turns
/// on it (same pg_backend_pid) without waiting for each other to disconnect; while A has a
/// transaction open, B's query waits, and runs as soon as A commits.
#[test]
fn idle_client_does_not_hold_the_backend() {
    let mut o = tx_opts(TRUST_USER.user, 1, &[]);
    o.blocking_timeout = 5;
    let s = setup(o);
    let port = s.pooler.port;
    run_within(
        Duration::from_secs(60),
        "two clients on one backend",
        move || turn_taking_scenario(port),
    );
}

fn turn_taking_scenario(port: u16) {
    let mut a = must_connect(port, TRUST_USER.user, None);
    let mut b = must_connect(port, TRUST_USER.user, None);
    let pid = backend_pid(&mut a);
    for i in 0..20 {
        assert_eq!(backend_pid(&mut a), pid, "A, round {i}");
        assert_eq!(backend_pid(&mut b), pid, "B, round {i}");
    }
    a.batch_execute("BEGIN").expect("A: BEGIN");
    assert_eq!(backend_pid(&mut a), pid, "A inside its transaction");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = b.query_one("SELECT pg_backend_pid()", &[]);
        let _ = tx.send((
            r.map(|r| r.get::<_, i32>(0)).map_err(|e| sqlstate(&e)),
            Instant::now(),
        ));
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        rx.try_recv().is_err(),
        "B ran a query on the only backend while A's transaction was open"
    );
    let committed = Instant::now();
    a.batch_execute("COMMIT").expect("A: COMMIT");
    let (r, at) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("B was not served within 5 s of A's COMMIT");
    assert_eq!(r, Ok(pid), "B after A's COMMIT");
    assert!(
        at.duration_since(committed) < Duration::from_secs(1),
        "B served {:?} after A's COMMIT",
        at.duration_since(committed)
    );
    assert_eq!(backend_pid(&mut a), pid, "A after B");
}

// ---- 5. prepared statements, clients outnumbering backends ----------------------------------

/// Execution `j` of client `t`: one of its three statements, result checked.
fn run_prepared<C: postgres::GenericClient>(
    q: &mut C,
    st: &[postgres::Statement; 3],
    t: i32,
    j: usize,
    pids: &mut BTreeSet<i32>,
    what: &str,
) -> Result<(), String> {
    let err = |e: postgres::Error| format!("{what}: {e} ({})", sqlstate(&e));
    let k = (j % 7) as i32 + 1;
    match j % 3 {
        0 => {
            let r = q.query_one(&st[0], &[&k]).map_err(err)?;
            let (v, pid): (i32, i32) = (r.get(0), r.get(1));
            if v != k + t {
                return Err(format!(
                    "{what}: statement 1 returned {v}, expected {}",
                    k + t
                ));
            }
            pids.insert(pid);
        }
        1 => {
            let v: String = q.query_one(&st[1], &[&k.to_string()]).map_err(err)?.get(0);
            if v != format!("{k}-{t}") {
                return Err(format!("{what}: statement 2 returned {v:?}"));
            }
        }
        _ => {
            let v: i32 = q.query_one(&st[2], &[&k]).map_err(err)?.get(0);
            if v != k + t {
                return Err(format!(
                    "{what}: statement 3 returned {v}, expected {}",
                    k + t
                ));
            }
        }
    }
    Ok(())
}

/// One Rust client: prepares three statements once (their SQL differs per client), then runs
/// `n` executions round-robin, every 50th inside an explicit transaction, checking each result.
/// Returns the backends it was served by.
fn prepared_worker(port: u16, t: i32, n: usize, gate: Arc<Gate>) -> Result<BTreeSet<i32>, String> {
    let mut c = match connect(port, TRUST_USER.user, None) {
        Ok(c) => c,
        Err(e) => {
            gate.fail();
            return Err(format!("client {t}: connect: {e}"));
        }
    };
    let prep = |c: &mut Client, sql: String| {
        c.prepare(&sql)
            .map_err(|e| format!("client {t}: prepare {sql:?}: {e} ({})", sqlstate(&e)))
    };
    let st = [
        prep(&mut c, format!("SELECT $1::int + {t}, pg_backend_pid()"))?,
        prep(&mut c, format!("SELECT $1::text || '-{t}'"))?,
        prep(
            &mut c,
            format!("SELECT count(*)::int + {t} FROM generate_series(1, $1::int)"),
        )?,
    ];
    gate.wait(Duration::from_secs(30))
        .map_err(|e| format!("client {t}: {e}"))?;
    let mut pids = BTreeSet::new();
    for j in 0..n {
        let what = format!("client {t}, execution {j}");
        if j % 50 == 49 {
            let mut tx = c
                .transaction()
                .map_err(|e| format!("{what}: BEGIN: {e} ({})", sqlstate(&e)))?;
            run_prepared(&mut tx, &st, t, j, &mut pids, &what)?;
            tx.commit()
                .map_err(|e| format!("{what}: COMMIT: {e} ({})", sqlstate(&e)))?;
        } else {
            run_prepared(&mut c, &st, t, j, &mut pids, &what)?;
        }
    }
    Ok(pids)
}

/// The Rust `postgres` client's prepared statements on a pool smaller than the client count:
/// 8 clients (connected together) on a pool of 3, each preparing 3 statements once and running
/// 10,000 executions in all (each its own transaction, every 50th in an explicit one); every
/// result is right, no error, at most 3 backends served them, and the statements did run on more
/// than one backend for the same client.
#[test]
fn prepared_statements_rust_eight_clients_pool_of_three() {
    const CLIENTS: usize = 8;
    const TOTAL: usize = 10_000;
    let s = setup(tx_opts(TRUST_USER.user, 3, &[]));
    let port = s.pooler.port;
    let results = run_within(Duration::from_secs(120), "prepared statements", move || {
        let gate = Gate::new(CLIENTS);
        let hs: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let gate = gate.clone();
                std::thread::spawn(move || {
                    prepared_worker(port, 100 * (t as i32 + 1), TOTAL / CLIENTS, gate)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
            .collect::<Vec<_>>()
    });
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(errors.is_empty(), "errors: {errors:?}");
    let sets: Vec<&BTreeSet<i32>> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let all: BTreeSet<i32> = sets.iter().flat_map(|s| s.iter().copied()).collect();
    assert!(
        all.len() <= 3,
        "the clients were served by {} backends {all:?} on a pool of 3",
        all.len()
    );
    assert!(
        sets.iter().any(|s| s.len() >= 2),
        "no client was ever moved to another backend ({sets:?}): the test proved nothing"
    );
    let n = s.cluster.backend_count(TRUST_USER.user);
    assert!(n <= 3, "{n} backends after the run (pool of 3)");
}

/// With `max_prepared_statements = 2`, two clients on a pool of one each use 5 prepared
/// statements (different SQL per client) round-robin, every 20th round all five in one
/// transaction: the per-backend cache must evict and re-prepare constantly, yet every result is
/// right, and afterwards the backend holds at most 2 protocol-level prepared statements.
#[test]
fn prepared_statements_lru_eviction() {
    let s = setup(tx_opts(
        TRUST_USER.user,
        1,
        &["max_prepared_statements = 2"],
    ));
    let port = s.pooler.port;
    let results = run_within(Duration::from_secs(90), "LRU clients", move || {
        let hs: Vec<_> = (1..=2)
            .map(|who: i32| {
                std::thread::spawn(move || -> Result<(), String> {
                    let mut c = connect(port, TRUST_USER.user, None)
                        .map_err(|e| format!("client {who}: connect: {e}"))?;
                    let mut st = Vec::new();
                    for m in 1..=5 {
                        st.push(
                            c.prepare(&format!("SELECT $1::int * {m} + {}", who * 1000))
                                .map_err(|e| format!("client {who}: prepare {m}: {e}"))?,
                        );
                    }
                    for j in 0..500i32 {
                        let what = format!("client {who}, round {j}");
                        if j % 20 == 19 {
                            // All five in one transaction: more than the cache holds.
                            let mut tx = c.transaction().map_err(|e| format!("{what}: {e}"))?;
                            for (m, s) in st.iter().enumerate() {
                                let v: i32 = tx
                                    .query_one(s, &[&j])
                                    .map_err(|e| {
                                        format!("{what}, stmt {m}: {e} ({})", sqlstate(&e))
                                    })?
                                    .get(0);
                                let want = j * (m as i32 + 1) + who * 1000;
                                if v != want {
                                    return Err(format!(
                                        "{what}, stmt {m} in a transaction: {v}, expected {want}"
                                    ));
                                }
                            }
                            tx.commit().map_err(|e| format!("{what}: COMMIT: {e}"))?;
                        } else {
                            let m = (j % 5) as usize;
                            let v: i32 = c
                                .query_one(&st[m], &[&j])
                                .map_err(|e| format!("{what}, stmt {m}: {e} ({})", sqlstate(&e)))?
                                .get(0);
                            let want = j * (m as i32 + 1) + who * 1000;
                            if v != want {
                                return Err(format!("{what}, stmt {m}: {v}, expected {want}"));
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
            .collect::<Vec<_>>()
    });
    for r in results {
        r.unwrap_or_else(|e| panic!("{e}"));
    }
    // What the (only) backend holds now, asked over the simple protocol so that the question
    // itself prepares nothing.
    let mut c = must_connect(port, TRUST_USER.user, None);
    let held = text1(
        &mut c,
        "SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql",
    );
    let held: i64 = held.parse().unwrap();
    assert!(
        held <= 2,
        "the backend holds {held} protocol-level prepared statements (max_prepared_statements = 2)"
    );
}

// ---- 6. a client killed mid-transaction -----------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Vanish {
    /// close() with SO_LINGER 0: the peer gets a RST.
    Reset,
    /// shutdown(both) then close(): an orderly FIN, but no Terminate message.
    Fin,
    /// Like Reset, while the backend is running `pg_sleep(30)` inside the transaction.
    ResetWhileRunning,
}

/// `SELECT v FROM t WHERE id = 1 FOR UPDATE NOWAIT` in a transaction: Ok(v) when the row lock
/// was free (committed), else the SQLSTATE (rolled back).
fn try_row_lock(c: &mut Client) -> Result<i32, String> {
    let mut tx = c.transaction().map_err(|e| sqlstate(&e))?;
    match tx.query_one("SELECT v FROM t WHERE id = 1 FOR UPDATE NOWAIT", &[]) {
        Ok(r) => {
            let v = r.get(0);
            tx.commit().map_err(|e| sqlstate(&e))?;
            Ok(v)
        }
        Err(e) => {
            let code = sqlstate(&e);
            tx.rollback()
                .map_err(|e| format!("ROLLBACK after {code}: {}", sqlstate(&e)))?;
            Err(code)
        }
    }
}

fn check_vanished_lock_holder(how: Vanish, bound: Duration) {
    let s = setup(tx_opts(TRUST_USER.user, 2, &[]));
    s.cluster.psql_db(
        TEST_DB,
        "CREATE TABLE t(id int PRIMARY KEY, v int NOT NULL); INSERT INTO t VALUES (1, 10); \
         GRANT ALL ON t TO PUBLIC",
    );
    let port = s.pooler.port;
    run_within(Duration::from_secs(60), "lock holder scenario", move || {
        vanish_scenario(port, how, bound)
    });
    assert!(s.cluster.backend_count(TRUST_USER.user) <= 2);
    assert_pool_works(&s.pooler);
}

fn vanish_scenario(port: u16, how: Vanish, bound: Duration) {
    let mut b = must_connect(port, TRUST_USER.user, None);
    let mut a = raw_login(port, TRUST_USER.user);
    for sql in [
        "BEGIN",
        "UPDATE t SET v = 99 WHERE id = 1",
        "SELECT * FROM t WHERE id = 1 FOR UPDATE",
    ] {
        match a.simple_query(sql) {
            Outcome::Ready(m) => assert_eq!(
                ready_statuses(&m),
                b"T",
                "client A: {sql}: in a transaction"
            ),
            other => panic!("client A: {sql}: {other:?}"),
        }
    }
    assert_eq!(
        try_row_lock(&mut b),
        Err("55P03".to_string()),
        "B while A holds the row lock (the test needs the lock held)"
    );
    if let Vanish::ResetWhileRunning = how {
        a.send(&raw::query("SELECT pg_sleep(30)")).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    match how {
        Vanish::Reset | Vanish::ResetWhileRunning => {
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid socket fd and a pointer to a linger struct of the size passed.
            let rc = unsafe {
                libc::setsockopt(
                    a.stream.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &l as *const libc::linger as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
        }
        Vanish::Fin => {
            a.stream
                .shutdown(std::net::Shutdown::Both)
                .expect("shutdown");
        }
    }
    drop(a);
    let closed = Instant::now();
    let v = loop {
        match try_row_lock(&mut b) {
            Ok(v) => break v,
            Err(code) if code == "55P03" => {
                assert!(
                    closed.elapsed() < Duration::from_secs(10),
                    "{how:?}: the row lock of the vanished client is still held after 10 s"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(code) => panic!("{how:?}: B's lock attempt failed with {code}"),
        }
    };
    let took = closed.elapsed();
    assert!(
        took < bound,
        "{how:?}: the row lock was released {took:?} after the client vanished (bound {bound:?})"
    );
    assert_eq!(
        v, 10,
        "{how:?}: the vanished client's UPDATE was rolled back"
    );
    assert_eq!(
        text1(&mut b, "SELECT v FROM t WHERE id = 1"),
        "10",
        "{how:?}: after the release"
    );
}

/// A client holding a row lock (`BEGIN; UPDATE …; SELECT … FOR UPDATE`) whose socket is reset
/// (SO_LINGER 0, no Terminate): another client gets the row with `FOR UPDATE NOWAIT` within
/// 1 s, and the vanished client's UPDATE is rolled back.
#[test]
fn vanished_client_releases_row_lock_reset() {
    check_vanished_lock_holder(Vanish::Reset, Duration::from_secs(1));
}

/// The same with an orderly close (shutdown + close, no Terminate): released within 1 s.
#[test]
fn vanished_client_releases_row_lock_fin() {
    check_vanished_lock_holder(Vanish::Fin, Duration::from_secs(1));
}

/// The same while the vanished client's backend is busy in `pg_sleep(30)` inside the
/// transaction: the query is stopped and the lock released within 2 s.
#[test]
fn vanished_client_releases_row_lock_while_running() {
    check_vanished_lock_holder(Vanish::ResetWhileRunning, Duration::from_secs(2));
}

// ---- 7. cancel ------------------------------------------------------------------------------

/// Runs `SELECT pg_sleep(0.005), $1::int + 1` in a loop until `stop`; returns how many ran and
/// every error (with its SQLSTATE).
fn busy_client(port: u16, who: usize, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let mut c = match connect(port, TRUST_USER.user, None) {
        Ok(c) => c,
        Err(e) => return (0, vec![format!("client {who}: connect: {e}")]),
    };
    let (mut n, mut errors) = (0usize, Vec::new());
    let mut i = 0i32;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        match c.query_one("SELECT pg_sleep(0.005)::text, $1::int + 1", &[&i]) {
            Ok(r) => {
                let v: i32 = r.get(1);
                if v != i + 1 {
                    errors.push(format!("client {who}: {i} + 1 = {v}"));
                }
                n += 1;
            }
            Err(e) => errors.push(format!("client {who}: {} {e}", sqlstate(&e))),
        }
    }
    (n, errors)
}

/// A cancel in transaction mode: a client's `pg_sleep(30)` ends with 57014 less than 2 s after
/// its CancelRequest while 4 other clients keep running short queries on the same pool of 3
/// (none of them gets an error, let alone 57014); the cancelled client goes on working.
#[test]
fn cancel_reaches_only_its_query() {
    let s = setup(tx_opts(TRUST_USER.user, 3, &[]));
    let port = s.pooler.port;
    run_within(Duration::from_secs(60), "cancel scenario", move || {
        cancel_scenario(port)
    });
}

fn cancel_scenario(port: u16) {
    let stop = Arc::new(AtomicBool::new(false));
    let others: Vec<_> = (0..4)
        .map(|who| {
            let stop = stop.clone();
            std::thread::spawn(move || busy_client(port, who, stop))
        })
        .collect();
    let mut c = must_connect(port, TRUST_USER.user, None);
    let token = c.cancel_token();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = c.execute("SELECT pg_sleep(30)", &[]);
        let _ = tx.send((r.map(|_| ()).map_err(|e| sqlstate(&e)), Instant::now(), c));
    });
    std::thread::sleep(Duration::from_millis(700));
    let sent = Instant::now();
    token
        .cancel_query(NoTls)
        .expect("sending the CancelRequest to pgcorral");
    let (r, ended, mut c) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("pg_sleep(30) not cancelled within 10 s");
    assert_eq!(r, Err("57014".to_string()), "pg_sleep(30) after a cancel");
    let took = ended.duration_since(sent);
    assert!(
        took < Duration::from_secs(2),
        "cancelled only {took:?} after the CancelRequest"
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for (who, h) in others.into_iter().enumerate() {
        let (n, errors) = h.join().expect("busy client panicked");
        assert!(errors.is_empty(), "client {who} got errors: {errors:?}");
        assert!(n > 0, "client {who} ran no query");
    }
    let v: i32 = c
        .query_one("SELECT 1", &[])
        .expect("the cancelled client afterwards")
        .get(0);
    assert_eq!(v, 1);
    let mut tx = c.transaction().expect("BEGIN after the cancel");
    let v: i32 = tx.query_one("SELECT 2", &[]).unwrap().get(0);
    tx.commit().expect("COMMIT after the cancel");
    assert_eq!(v, 2);
}

/// An idle client's CancelRequests (20 of them, 50 ms apart) hit nobody: the backend it last
/// used is meanwhile serving other clients' queries (3 busy clients on a pool of 2), and none
/// of those gets an error. The idle client then works normally.
#[test]
fn cancel_of_idle_client_hits_nobody() {
    let s = setup(tx_opts(TRUST_USER.user, 2, &[]));
    let port = s.pooler.port;
    run_within(Duration::from_secs(60), "idle cancel scenario", move || {
        idle_cancel_scenario(port)
    });
}

fn idle_cancel_scenario(port: u16) {
    let mut c = must_connect(port, TRUST_USER.user, None);
    c.execute("SELECT 1", &[])
        .expect("idle client's first query");
    let stop = Arc::new(AtomicBool::new(false));
    let others: Vec<_> = (0..3)
        .map(|who| {
            let stop = stop.clone();
            std::thread::spawn(move || busy_client(port, who, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20 {
        c.cancel_token()
            .cancel_query(NoTls)
            .unwrap_or_else(|e| panic!("cancel {i} of the idle client: {e}"));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for (who, h) in others.into_iter().enumerate() {
        let (n, errors) = h.join().expect("busy client panicked");
        assert!(
            errors.is_empty(),
            "client {who} was hit by another client's cancel: {errors:?}"
        );
        assert!(n > 0, "client {who} ran no query");
    }
    let v: i32 = c
        .query_one("SELECT 3", &[])
        .expect("the idle client after its cancels")
        .get(0);
    assert_eq!(v, 3);
}
