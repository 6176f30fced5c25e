//! `pipeline = transaction`: protocol corner cases where pgcorral must track exactly which answers
//! the server owes (its expectation queue), checked message by message with the raw client against
//! a real PostgreSQL 15, and wherever the sequence is not obvious, against the same bytes sent to
//! the cluster directly.
//!
//! What these tests prove:
//! * unsynced extended-protocol work of a client that vanishes (socket closed, or Terminate without
//!   Sync) is rolled back, as PostgreSQL alone would, and the backend serves the next client;
//! * a Terminate right after a request lets that request finish and commit;
//! * COPY IN in the extended protocol (Syncs sent during COPY are ignored by the server) and a
//!   simple-protocol COPY that fails on its data with more messages behind it keep the stream in
//!   step, for the client and for the next client of the same backend;
//! * after an error in an extended-protocol batch the server skips everything up to Sync (Parse,
//!   Bind, Execute and even a simple Query), whether the rest came in the same write or later, and
//!   the client sees exactly what PostgreSQL sends; a statement whose Parse was skipped, or refused,
//!   does not exist afterwards;
//! * a client closing pgcorral's own renamed statements (`pgc_…`) on a shared backend cannot break
//!   another client's prepared statement;
//! * a named Parse + Sync is answered while every backend is held by another client's transaction.
//!
//! Every scenario runs on a pool of one backend, so that what one client leaves behind is what the
//! next one gets; the backend's PID shows it was the same backend.

mod common;
use common::*;

use pgcorral_testkit::raw::{self, Message, RawConn, Read1};
use std::time::{Duration, Instant};

// ---- helpers --------------------------------------------------------------------------------

/// How long "nothing more arrives" is waited for after an expected sequence.
const SILENCE: Duration = Duration::from_millis(300);

/// Flush ('H').
fn flush() -> Vec<u8> {
    raw::message(b'H', &[])
}

/// CopyData ('d').
fn copy_data(data: &[u8]) -> Vec<u8> {
    raw::message(b'd', data)
}

/// CopyDone ('c').
fn copy_done() -> Vec<u8> {
    raw::message(b'c', &[])
}

/// The messages as a string of tags, leaving out the asynchronous ones (ParameterStatus, notices,
/// notifications), an ErrorResponse spelled `E[SQLSTATE]`: "12E[22012]Z".
fn seq(msgs: &[Message]) -> String {
    let mut s = String::new();
    for m in msgs {
        match m.tag {
            b'S' | b'N' | b'A' => {}
            b'E' => s.push_str(&format!(
                "E[{}]",
                m.error().map(|e| e.code).unwrap_or_default()
            )),
            t => s.push(t as char),
        }
    }
    s
}

/// The first column of every DataRow.
fn col0(msgs: &[Message]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| m.data_row())
        .map(|r| {
            r.into_iter()
                .next()
                .flatten()
                .unwrap_or_else(|| "<NULL>".into())
        })
        .collect()
}

/// The transaction status of every ReadyForQuery ("II").
fn statuses(msgs: &[Message]) -> String {
    msgs.iter()
        .filter(|m| m.tag == b'Z')
        .map(|m| m.body.first().copied().unwrap_or(b'?') as char)
        .collect()
}

/// The text of every CommandComplete.
fn command_tags(msgs: &[Message]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag == b'C')
        .map(|m| String::from_utf8_lossy(m.body.strip_suffix(&[0]).unwrap_or(&m.body)).into_owned())
        .collect()
}

/// Reads up to and including the `n`th ReadyForQuery; panics (with what was read) otherwise.
fn read_ready(c: &mut RawConn, n: usize, what: &str) -> Vec<Message> {
    read_ready_n(c, n).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Reads exactly `k` messages, not counting asynchronous ones.
fn read_k(c: &mut RawConn, k: usize, what: &str) -> Vec<Message> {
    let mut msgs: Vec<Message> = Vec::new();
    while msgs.iter().filter(|m| !is_async(m)).count() < k {
        match c.read_message() {
            Read1::Got(m) => msgs.push(m),
            Read1::Closed => panic!("{what}: closed after {}", seq(&msgs)),
            Read1::TimedOut => panic!("{what}: read timeout after {}", seq(&msgs)),
        }
    }
    msgs
}

fn is_async(m: &Message) -> bool {
    matches!(m.tag, b'S' | b'N' | b'A')
}

/// Reads until a message with tag `t` (included); panics (with what was read) otherwise.
fn read_until_tag(c: &mut RawConn, t: u8, what: &str) -> Vec<Message> {
    let mut msgs = Vec::new();
    loop {
        match c.read_message() {
            Read1::Got(m) => {
                let done = m.tag == t;
                msgs.push(m);
                if done {
                    return msgs;
                }
            }
            Read1::Closed => panic!("{what}: closed before {:?}; read {}", t as char, seq(&msgs)),
            Read1::TimedOut => panic!(
                "{what}: read timeout before {:?}; read {}",
                t as char,
                seq(&msgs)
            ),
        }
    }
}

/// Nothing more arrives within [`SILENCE`] (no stray answers behind the expected ones).
fn expect_silence(c: &mut RawConn, what: &str) {
    c.set_read_timeout(SILENCE);
    match c.read_message() {
        Read1::TimedOut => {}
        Read1::Got(m) => {
            let mut extra = vec![m];
            c.set_read_timeout(SILENCE);
            while let Read1::Got(m) = c.read_message() {
                extra.push(m);
            }
            panic!(
                "{what}: stray messages after the expected answers: {}",
                seq(&extra)
            );
        }
        Read1::Closed => panic!("{what}: connection closed instead of staying idle"),
    }
    c.set_read_timeout(Duration::from_secs(10));
}

/// Sends `bytes` (panics on a write error).
fn send(c: &mut RawConn, bytes: &[u8], what: &str) {
    c.send(bytes)
        .unwrap_or_else(|e| panic!("{what}: write: {e}"));
}

/// A simple Query that must not fail; returns its answers up to ReadyForQuery.
fn simple_ok(c: &mut RawConn, sql: &str) -> Vec<Message> {
    send(c, &raw::query(sql), sql);
    let m = read_ready(c, 1, sql);
    assert!(
        !seq(&m).contains('E'),
        "{sql}: unexpected error: {}",
        tags(&m)
    );
    m
}

/// The single value of a one-row, one-column simple query.
fn value(c: &mut RawConn, sql: &str) -> String {
    let m = simple_ok(c, sql);
    let v = col0(&m);
    assert_eq!(v.len(), 1, "{sql}: rows {v:?} ({})", seq(&m));
    v[0].clone()
}

/// A raw client logged in with an `application_name` (to find its backend in pg_stat_activity).
fn raw_login_app(port: u16, app: &str) -> RawConn {
    let mut c = RawConn::connect(port);
    c.set_read_timeout(Duration::from_secs(10));
    send(
        &mut c,
        &raw::startup_message(&[
            ("user", TRUST_USER.user),
            ("database", TEST_DB),
            ("application_name", app),
        ]),
        "startup",
    );
    match c.read_until_ready(None) {
        raw::Outcome::Ready(_) => c,
        other => panic!("raw login ({app}) to port {port}: {other:?}"),
    }
}

/// A pool of one backend for trust_user, `blocking_timeout` 10 s, and tables created by
/// `postgres` that everyone may use.
fn setup_one(tables_sql: &str) -> Setup {
    let mut o = tx_opts(TRUST_USER.user, 1, &[]);
    o.blocking_timeout = 10;
    let s = setup(o);
    if !tables_sql.is_empty() {
        s.cluster.psql_db(TEST_DB, tables_sql);
    }
    s
}

/// PID of the pool's one backend, asked through pgcorral.
fn pooled_pid(port: u16) -> String {
    let mut c = raw_login(port, TRUST_USER.user);
    value(&mut c, "SELECT pg_backend_pid()")
}

/// A new client of the pool of one gets exactly the right answers, in step: `SELECT 42` is
/// T, one DataRow 42, C "SELECT 1", ReadyForQuery 'I' and nothing more, on the same backend as
/// before (`pid`).
fn assert_next_client_in_sync(port: u16, pid: &str, what: &str) {
    let what = format!("next client after {what}");
    let mut c = RawConn::connect(port);
    c.set_read_timeout(Duration::from_secs(10));
    match c.startup(TRUST_USER.user, TEST_DB) {
        raw::Outcome::Ready(_) => {}
        other => panic!(
            "{what}: login failed: {other:?} (on a pool of one, a backend that is never given \
             back makes the login wait until authentication_timeout)"
        ),
    }
    send(&mut c, &raw::query("SELECT 42"), &what);
    let m = read_ready(&mut c, 1, &what);
    assert_eq!(
        seq(&m),
        "TDCZ",
        "{what}: SELECT 42 answered with {}",
        tags(&m)
    );
    assert_eq!(col0(&m), ["42"], "{what}: SELECT 42 rows");
    assert_eq!(command_tags(&m), ["SELECT 1"], "{what}: command tag");
    assert_eq!(statuses(&m), "I", "{what}: transaction status");
    expect_silence(&mut c, &what);
    assert_eq!(
        value(&mut c, "SELECT pg_backend_pid()"),
        pid,
        "{what}: the pool's one backend was replaced instead of given back clean"
    );
}

/// `SELECT count(*) FROM <table>` through a new client of pgcorral.
fn count_through(port: u16, table: &str) -> i64 {
    let mut c = raw_login(port, TRUST_USER.user);
    value(&mut c, &format!("SELECT count(*) FROM {table}"))
        .parse()
        .unwrap()
}

/// `SELECT count(*) FROM <table>` over a direct connection to the cluster.
fn count_direct(cluster_port: u16, table: &str) -> i64 {
    cluster_admin(cluster_port)
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .expect("count")
        .get(0)
}

/// Waits (up to 10 s) until no backend of `app` is left: whatever it had open has ended.
fn wait_app_gone(cluster_port: u16, app: &str) {
    let mut admin = cluster_admin(cluster_port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the direct backend of {app} did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- 1. unsynced work of a vanished client --------------------------------------------------

/// How the client of [`unsynced_insert_then_leave`] goes.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// Reads ParseComplete, BindComplete, CommandComplete, then closes the socket (no Terminate).
    CloseAfterAnswers,
    /// Reads the three answers, then sends Terminate and closes.
    TerminateAfterAnswers,
    /// Closes the socket right after writing the batch, reading nothing.
    CloseAtOnce,
    /// Writes Terminate in the same write as the batch.
    TerminateSameWrite,
}

/// Parse/Bind/Execute(`INSERT INTO <table> VALUES (<v>)`)/Flush, no Sync, then leaves `how`.
fn unsynced_insert_then_leave(port: u16, app: &str, table: &str, v: i32, how: Leave) {
    let what = format!("{how:?} ({app})");
    let mut c = raw_login_app(port, app);
    let batch = [
        ext::parse("", &format!("INSERT INTO {table} VALUES ({v})")),
        ext::bind("", "", &[]),
        ext::execute(""),
        flush(),
    ]
    .concat();
    match how {
        Leave::CloseAfterAnswers | Leave::TerminateAfterAnswers => {
            send(&mut c, &batch, &what);
            let m = read_k(&mut c, 3, &what);
            assert_eq!(seq(&m), "12C", "{what}: answers to the flushed batch");
            assert_eq!(command_tags(&m), ["INSERT 0 1"], "{what}");
            if let Leave::TerminateAfterAnswers = how {
                send(&mut c, &raw::terminate(), &what);
            }
        }
        Leave::CloseAtOnce => send(&mut c, &batch, &what),
        Leave::TerminateSameWrite => send(&mut c, &[batch, raw::terminate()].concat(), &what),
    }
    drop(c);
}

/// A client whose extended-protocol INSERT ran but was never followed by a Sync (so it sits in an
/// implicit transaction) and that then vanishes — socket closed after reading the answers,
/// Terminate after reading them, socket closed without reading, Terminate in the same write — has
/// its INSERT rolled back: the same bytes sent to PostgreSQL directly leave no row, and through
/// pgcorral the next client (served by the same, only backend) counts 0 rows and gets exactly
/// `SELECT 42`'s answers. A synced INSERT afterwards is committed (the table and backend work).
#[test]
fn unsynced_work_of_vanished_client_is_rolled_back() {
    let s = setup_one(
        "CREATE TABLE t(i int); CREATE TABLE t_direct(i int); \
         GRANT ALL ON t, t_direct TO PUBLIC",
    );
    let (port, cport) = (s.pooler.port, s.cluster.port);
    run_within(Duration::from_secs(60), "vanished clients", move || {
        let pid = pooled_pid(port);
        for (k, how) in [
            Leave::CloseAfterAnswers,
            Leave::TerminateAfterAnswers,
            Leave::CloseAtOnce,
            Leave::TerminateSameWrite,
        ]
        .into_iter()
        .enumerate()
        {
            // PostgreSQL alone.
            let app = format!("direct_{k}");
            unsynced_insert_then_leave(cport, &app, "t_direct", k as i32, how);
            wait_app_gone(cport, &app);
            assert_eq!(
                count_direct(cport, "t_direct"),
                0,
                "{how:?} straight to PostgreSQL: the premise (unsynced work is rolled back) fails"
            );
            // Through pgcorral.
            unsynced_insert_then_leave(port, &format!("pooled_{k}"), "t", k as i32, how);
            assert_eq!(
                count_through(port, "t"),
                0,
                "{how:?}: the vanished client's unsynced INSERT is visible through pgcorral"
            );
            assert_eq!(
                count_direct(cport, "t"),
                0,
                "{how:?}: the vanished client's unsynced INSERT was committed"
            );
            assert_next_client_in_sync(port, &pid, &format!("{how:?}"));
        }
        // Positive control: the same INSERT with a Sync is committed.
        let mut c = raw_login(port, TRUST_USER.user);
        send(
            &mut c,
            &[
                ext::parse("", "INSERT INTO t VALUES (100)"),
                ext::bind("", "", &[]),
                ext::execute(""),
                ext::sync(),
            ]
            .concat(),
            "synced INSERT",
        );
        let m = read_ready(&mut c, 1, "synced INSERT");
        assert_eq!(seq(&m), "12CZ", "synced INSERT");
        drop(c);
        assert_eq!(count_direct(cport, "t"), 1, "synced INSERT committed");
    });
}

// ---- 2. Terminate right after a request -----------------------------------------------------

/// Polls (up to 2 s) until `SELECT count(*) FROM t WHERE i = <v>` through pgcorral is 1.
fn poll_row(port: u16, v: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut c = raw_login(port, TRUST_USER.user);
    loop {
        let n = value(&mut c, &format!("SELECT count(*) FROM t WHERE i = {v}"));
        if n == "1" {
            return;
        }
        assert_eq!(n, "0", "{what}: rows with i = {v}");
        assert!(
            Instant::now() < deadline,
            "{what}: the row {v} did not appear within 2 s: the request sent before Terminate \
             was lost"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A request written in the same write as a Terminate (then the socket closed) still runs to its
/// end and commits, as it would on PostgreSQL directly: a simple `INSERT … VALUES (9)`, and an
/// extended Parse/Bind/Execute/Sync `INSERT … VALUES (10)`; another client finds each row within
/// 2 s, and the one backend then serves the next client in step.
#[test]
fn terminate_right_after_a_request_lets_it_finish() {
    let s = setup_one("CREATE TABLE t(i int); GRANT ALL ON t TO PUBLIC");
    let (port, cport) = (s.pooler.port, s.cluster.port);
    run_within(
        Duration::from_secs(30),
        "terminate after request",
        move || {
            let pid = pooled_pid(port);
            // The premise, on PostgreSQL directly.
            let mut d = raw_login(cport, TRUST_USER.user);
            send(
                &mut d,
                &[raw::query("INSERT INTO t VALUES (8)"), raw::terminate()].concat(),
                "direct",
            );
            drop(d);
            poll_row(port, 8, "direct INSERT + Terminate");

            let mut c = raw_login(port, TRUST_USER.user);
            send(
                &mut c,
                &[raw::query("INSERT INTO t VALUES (9)"), raw::terminate()].concat(),
                "Query + Terminate",
            );
            drop(c);
            poll_row(port, 9, "Query + Terminate");
            assert_next_client_in_sync(port, &pid, "Query + Terminate");

            let mut c = raw_login(port, TRUST_USER.user);
            send(
                &mut c,
                &[
                    ext::parse("", "INSERT INTO t VALUES (10)"),
                    ext::bind("", "", &[]),
                    ext::execute(""),
                    ext::sync(),
                    raw::terminate(),
                ]
                .concat(),
                "Parse/Bind/Execute/Sync + Terminate",
            );
            drop(c);
            poll_row(port, 10, "Parse/Bind/Execute/Sync + Terminate");
            assert_next_client_in_sync(port, &pid, "Parse/Bind/Execute/Sync + Terminate");
            assert_eq!(
                count_direct(cport, "t"),
                3,
                "rows 8, 9, 10 and nothing else"
            );
        },
    );
}

// ---- 3. extended-protocol COPY IN -----------------------------------------------------------

/// The messages of the extended-protocol COPY IN scenario, as written in one or two writes.
fn extended_copy_head(table: &str) -> Vec<u8> {
    [
        ext::parse("", &format!("COPY {table} FROM STDIN")),
        ext::bind("", "", &[]),
        ext::execute(""),
        ext::sync(),
    ]
    .concat()
}

fn extended_copy_tail(data: &[u8]) -> Vec<u8> {
    [
        copy_data(data),
        copy_done(),
        ext::sync(),
        raw::query("SELECT 77"),
    ]
    .concat()
}

/// Parse/Bind/Execute(`COPY <table> FROM STDIN`), Sync, CopyData `data`, CopyDone, Sync, Query
/// `SELECT 77`: in one write, or (`split`) the tail only after the CopyInResponse was read, as a
/// client that waits for it does. Returns every answer up to the second ReadyForQuery, after
/// checking that nothing more comes.
fn extended_copy_in(
    c: &mut RawConn,
    table: &str,
    data: &[u8],
    split: bool,
    what: &str,
) -> Vec<Message> {
    let mut m = Vec::new();
    if split {
        send(c, &extended_copy_head(table), what);
        m = read_until_tag(c, b'G', what);
        send(c, &extended_copy_tail(data), what);
    } else {
        send(
            c,
            &[extended_copy_head(table), extended_copy_tail(data)].concat(),
            what,
        );
    }
    m.extend(read_ready(c, 2, what));
    expect_silence(c, what);
    m
}

/// Extended-protocol COPY IN with a Sync right after the Execute (PostgreSQL ignores Sync while in
/// COPY IN), the data "5", CopyDone, a second Sync and a simple Query `SELECT 77`: through
/// pgcorral the client gets exactly what PostgreSQL sends directly — ParseComplete, BindComplete,
/// CopyInResponse, CommandComplete "COPY 1", a single ReadyForQuery (for the second Sync), then
/// RowDescription, DataRow 77, CommandComplete, ReadyForQuery — whether everything comes in one
/// write or the data only after the CopyInResponse was read; the rows are committed, and the
/// next client of the one backend gets `SELECT 42` right.
#[test]
fn extended_copy_in_one_write_or_split() {
    let s = setup_one(
        "CREATE TABLE t(i int); CREATE TABLE t_direct(i int); \
         GRANT ALL ON t, t_direct TO PUBLIC",
    );
    let (port, cport) = (s.pooler.port, s.cluster.port);
    run_within(Duration::from_secs(30), "extended COPY IN", move || {
        let pid = pooled_pid(port);
        for (split, data) in [(false, b"5\n"), (true, b"6\n")] {
            let what = if split {
                "data after the CopyInResponse"
            } else {
                "one write"
            };
            let mut d = raw_login(cport, TRUST_USER.user);
            let direct = extended_copy_in(&mut d, "t_direct", data, split, "directly");
            let mut c = raw_login(port, TRUST_USER.user);
            let pooled = extended_copy_in(&mut c, "t", data, split, "through pgcorral");
            assert_eq!(
                seq(&direct),
                "12GCZTDCZ",
                "{what}: PostgreSQL's own answers (the premise): {}",
                tags(&direct)
            );
            assert_eq!(
                seq(&pooled),
                seq(&direct),
                "{what}: through pgcorral vs directly: {} vs {}",
                tags(&pooled),
                tags(&direct)
            );
            assert_eq!(command_tags(&pooled), ["COPY 1", "SELECT 1"], "{what}");
            assert_eq!(col0(&pooled), ["77"], "{what}");
            assert_eq!(statuses(&pooled), "II", "{what}");
            // The same client goes on in step.
            assert_eq!(value(&mut c, "SELECT 'after copy'"), "after copy", "{what}");
            drop(c);
            assert_next_client_in_sync(port, &pid, &format!("extended COPY IN, {what}"));
        }
        assert_eq!(
            value(
                &mut raw_login(port, TRUST_USER.user),
                "SELECT string_agg(i::text, ',' ORDER BY i) FROM t"
            ),
            "5,6",
            "the copied rows"
        );
    });
}

// ---- 4. COPY with bad data, more behind it --------------------------------------------------

/// `COPY <table>(i) FROM STDIN`, read CopyInResponse, then CopyData "notanint\n", CopyDone and
/// Query `SELECT 78` in one write; returns the answers after the CopyInResponse.
fn bad_copy_then_query(c: &mut RawConn, table: &str, what: &str) -> Vec<Message> {
    send(c, &raw::query(&format!("COPY {table}(i) FROM STDIN")), what);
    let g = read_until_tag(c, b'G', what);
    assert_eq!(seq(&g), "G", "{what}: COPY starts");
    send(
        c,
        &[
            copy_data(b"notanint\n"),
            copy_done(),
            raw::query("SELECT 78"),
        ]
        .concat(),
        what,
    );
    let m = read_ready(c, 2, what);
    expect_silence(c, what);
    m
}

/// A simple-protocol COPY IN whose data is bad (`notanint` for an int column), with CopyDone and
/// a Query `SELECT 78` in the same write behind the data: the client gets ErrorResponse 22P02,
/// ReadyForQuery 'I', then `SELECT 78`'s answers, exactly as from PostgreSQL directly. The same
/// in the extended protocol (Parse/Bind/Execute, Sync, bad CopyData, CopyDone, Sync, Query in one
/// write): ParseComplete, BindComplete, CopyInResponse, ErrorResponse 22P02, one ReadyForQuery,
/// then `SELECT 77`'s answers, as directly. Nothing was copied, and the next client of the one
/// backend is in step.
#[test]
fn copy_bad_data_with_more_behind() {
    let s = setup_one(
        "CREATE TABLE t(i int); CREATE TABLE t_direct(i int); \
         GRANT ALL ON t, t_direct TO PUBLIC",
    );
    let (port, cport) = (s.pooler.port, s.cluster.port);
    run_within(Duration::from_secs(30), "COPY with bad data", move || {
        let pid = pooled_pid(port);
        let mut d = raw_login(cport, TRUST_USER.user);
        let direct = bad_copy_then_query(&mut d, "t_direct", "simple, directly");
        let mut c = raw_login(port, TRUST_USER.user);
        let pooled = bad_copy_then_query(&mut c, "t", "simple, through pgcorral");
        assert_eq!(
            seq(&direct),
            "E[22P02]ZTDCZ",
            "simple COPY: PostgreSQL's own answers (the premise): {}",
            tags(&direct)
        );
        assert_eq!(
            seq(&pooled),
            seq(&direct),
            "simple COPY: through pgcorral vs directly: {} vs {}",
            tags(&pooled),
            tags(&direct)
        );
        assert_eq!(col0(&pooled), ["78"]);
        assert_eq!(statuses(&pooled), "II");
        assert_eq!(value(&mut c, "SELECT 'after copy'"), "after copy");
        drop(c);
        assert_next_client_in_sync(port, &pid, "simple COPY with bad data");

        let direct = extended_copy_in(&mut d, "t_direct", b"notanint\n", false, "directly");
        let mut c = raw_login(port, TRUST_USER.user);
        let pooled = extended_copy_in(&mut c, "t", b"notanint\n", false, "through pgcorral");
        assert_eq!(
            seq(&direct),
            "12GE[22P02]ZTDCZ",
            "extended COPY: PostgreSQL's own answers (the premise): {}",
            tags(&direct)
        );
        assert_eq!(
            seq(&pooled),
            seq(&direct),
            "extended COPY: through pgcorral vs directly: {} vs {}",
            tags(&pooled),
            tags(&direct)
        );
        assert_eq!(col0(&pooled), ["77"]);
        assert_eq!(statuses(&pooled), "II");
        assert_eq!(value(&mut c, "SELECT 'after copy'"), "after copy");
        drop(c);
        assert_next_client_in_sync(port, &pid, "extended COPY with bad data");
        assert_eq!(count_direct(cport, "t"), 0, "nothing copied");
    });
}

// ---- 5. an error, then more messages before the Sync ----------------------------------------

/// Two division-by-zero statements: `SELECT 1/0` is folded by the planner, so PostgreSQL already
/// fails at Bind (ParseComplete, then the ErrorResponse); `SELECT 1/(random()*0)::int` fails at
/// Execute (ParseComplete, BindComplete, ErrorResponse). With PostgreSQL's answers up to the error.
const DIV_ERRORS: [(&str, &str); 2] = [
    ("SELECT 1/0", "1E[22012]"),
    ("SELECT 1/(random()*0)::int", "12E[22012]"),
];

/// Parse/Bind/Execute(`sql`), Parse "s_after" (`SELECT 2`), Bind, Execute, Query `SELECT 3`,
/// Sync — one write. Returns the answers up to ReadyForQuery (nothing more comes).
fn error_then_more(c: &mut RawConn, sql: &str, what: &str) -> Vec<Message> {
    send(
        c,
        &[
            ext::parse("", sql),
            ext::bind("", "", &[]),
            ext::execute(""),
            ext::parse("s_after", "SELECT 2"),
            ext::bind("", "s_after", &[]),
            ext::execute(""),
            raw::query("SELECT 3"),
            ext::sync(),
        ]
        .concat(),
        what,
    );
    let m = read_ready(c, 1, what);
    expect_silence(c, what);
    m
}

/// After a division by zero in an extended-protocol batch (failing at Bind, or at Execute),
/// PostgreSQL skips everything up to the Sync — a named Parse, its Bind and Execute, and a simple
/// Query in the middle — and answers up to the ErrorResponse 22012, then ReadyForQuery 'I' and
/// nothing else. Through pgcorral the client gets exactly the same, goes on in step, and so does
/// the next client of the one backend.
#[test]
fn error_skips_everything_up_to_sync() {
    let s = setup_one("");
    let (port, cport) = (s.pooler.port, s.cluster.port);
    run_within(Duration::from_secs(30), "error then more", move || {
        let pid = pooled_pid(port);
        let mut d = raw_login(cport, TRUST_USER.user);
        let mut c = raw_login(port, TRUST_USER.user);
        for (sql, answers) in DIV_ERRORS {
            let direct = error_then_more(&mut d, sql, "directly");
            let pooled = error_then_more(&mut c, sql, "through pgcorral");
            assert_eq!(
                seq(&direct),
                format!("{answers}Z"),
                "{sql}: PostgreSQL's own answers (the premise): {}",
                tags(&direct)
            );
            assert_eq!(
                seq(&pooled),
                seq(&direct),
                "{sql}: through pgcorral vs directly: {} vs {}",
                tags(&pooled),
                tags(&direct)
            );
            assert_eq!(statuses(&pooled), "I", "{sql}");
            assert_eq!(value(&mut c, "SELECT 'after skip'"), "after skip", "{sql}");
        }
        drop(c);
        assert_next_client_in_sync(port, &pid, "an error with more messages before the Sync");
    });
}

/// Bind/Execute/Sync of statement `name`, then the answers (nothing more comes).
fn bind_execute_sync(c: &mut RawConn, name: &str, what: &str) -> Vec<Message> {
    send(
        c,
        &[ext::bind("", name, &[]), ext::execute(""), ext::sync()].concat(),
        what,
    );
    let m = read_ready(c, 1, what);
    expect_silence(c, what);
    m
}

/// Parse of `name` as `SELECT 22`, Bind, Execute, Sync: "12DCZ" with 22, on both connections.
fn reparse_works(d: &mut RawConn, c: &mut RawConn, name: &str) {
    for (who, conn) in [("directly", d), ("through pgcorral", c)] {
        send(
            conn,
            &[
                ext::parse(name, "SELECT 22"),
                ext::bind("", name, &[]),
                ext::execute(""),
                ext::sync(),
            ]
            .concat(),
            who,
        );
        let m = read_ready(conn, 1, who);
        assert_eq!(seq(&m), "12DCZ", "{who}: a fresh Parse of {name}");
        assert_eq!(col0(&m), ["22"], "{who}: a fresh Parse of {name}");
        expect_silence(conn, who);
    }
}

/// A statement whose Parse the server skipped (it came after an error, before the Sync) was never
/// created: on PostgreSQL a later Bind to it fails with 26000 (ErrorResponse, ReadyForQuery); the
/// client must get the same through pgcorral, not a result of the skipped statement's SQL. (A
/// fresh Parse of the name then works in both, and the next client is in step.)
#[test]
fn statement_whose_parse_was_skipped_does_not_exist() {
    let s = setup_one("");
    let (port, cport) = (s.pooler.port, s.cluster.port);
    run_within(Duration::from_secs(30), "skipped Parse", move || {
        let pid = pooled_pid(port);
        let mut d = raw_login(cport, TRUST_USER.user);
        let mut c = raw_login(port, TRUST_USER.user);
        let (sql, _) = DIV_ERRORS[0];
        let (dd, pd) = (
            error_then_more(&mut d, sql, "directly"),
            error_then_more(&mut c, sql, "through pgcorral"),
        );
        assert_eq!(seq(&pd), seq(&dd), "the batch with the error");

        let direct = bind_execute_sync(&mut d, "s_after", "directly: Bind to s_after");
        let pooled = bind_execute_sync(&mut c, "s_after", "through pgcorral: Bind to s_after");
        assert_eq!(
            seq(&direct),
            "E[26000]Z",
            "PostgreSQL's own answers (the premise): {}",
            tags(&direct)
        );
        let same = seq(&pooled) == seq(&direct);

        // Whatever happened, a new Parse of the name works and the stream is in step.
        reparse_works(&mut d, &mut c, "s_after");
        drop(c);
        assert_next_client_in_sync(port, &pid, "a Bind to a skipped statement");

        assert!(
            same,
            "Bind/Execute/Sync of \"s_after\", whose Parse PostgreSQL skipped after an error: \
             PostgreSQL answers {}; pgcorral answers {} (rows {:?})",
            tags(&direct),
            tags(&pooled),
            col0(&pooled)
        );
    });
}

/// A named Parse that PostgreSQL refuses (`SELEC 1`: 42601) creates no statement: a later
/// Bind/Execute/Sync of the name fails with 26000 directly, and must fail the same way through
/// pgcorral (not with the Parse's 42601 again). A fresh Parse of the name then works in both, and
/// the next client is in step.
#[test]
fn statement_whose_parse_failed_does_not_exist() {
    let s = setup_one("");
    let (port, cport) = (s.pooler.port, s.cluster.port);
    run_within(Duration::from_secs(30), "failed Parse", move || {
        let pid = pooled_pid(port);
        let mut d = raw_login(cport, TRUST_USER.user);
        let mut c = raw_login(port, TRUST_USER.user);
        let mut first = Vec::new();
        for (who, conn) in [("directly", &mut d), ("through pgcorral", &mut c)] {
            send(
                conn,
                &[ext::parse("bad_s", "SELEC 1"), ext::sync()].concat(),
                who,
            );
            let m = read_ready(conn, 1, who);
            expect_silence(conn, who);
            first.push(seq(&m));
        }
        assert_eq!(first[0], "E[42601]Z", "the premise: the Parse fails");
        assert_eq!(first[1], first[0], "the failing Parse through pgcorral");

        let direct = bind_execute_sync(&mut d, "bad_s", "directly: Bind to bad_s");
        let pooled = bind_execute_sync(&mut c, "bad_s", "through pgcorral: Bind to bad_s");
        assert_eq!(
            seq(&direct),
            "E[26000]Z",
            "PostgreSQL's own answers (the premise): {}",
            tags(&direct)
        );
        let same = seq(&pooled) == seq(&direct);

        reparse_works(&mut d, &mut c, "bad_s");
        drop(c);
        assert_next_client_in_sync(port, &pid, "a Bind to a statement whose Parse failed");

        assert!(
            same,
            "Bind/Execute/Sync of \"bad_s\", whose Parse PostgreSQL refused: PostgreSQL answers \
             {}; pgcorral answers {}",
            tags(&direct),
            tags(&pooled)
        );
    });
}

// ---- 6. an error, the rest in a later write -------------------------------------------------

/// Parse/Bind/Execute(`sql`)/Flush; read up to the ErrorResponse; then Parse "x1" (`SELECT 5`)/
/// Bind/Execute/Sync; returns (first answers, second answers).
fn error_then_later_write(c: &mut RawConn, sql: &str, what: &str) -> (Vec<Message>, Vec<Message>) {
    send(
        c,
        &[
            ext::parse("", sql),
            ext::bind("", "", &[]),
            ext::execute(""),
            flush(),
        ]
        .concat(),
        what,
    );
    let first = read_until_tag(c, b'E', what);
    send(
        c,
        &[
            ext::parse("x1", "SELECT 5"),
            ext::bind("", "x1", &[]),
            ext::execute(""),
            ext::sync(),
        ]
        .concat(),
        what,
    );
    let second = read_ready(c, 1, what);
    expect_silence(c, what);
    (first, second)
}

/// A client that reads the ErrorResponse of a flushed batch (failing at Bind, or at Execute)
/// before sending the rest (libpq's pipeline mode does this): its next Parse "x1"/Bind/Execute/
/// Sync is skipped by the server, so the answer is a lone ReadyForQuery 'I' — no ParseComplete or
/// BindComplete — exactly as directly. "x1" does not exist afterwards (Bind: 26000 in both), a new
/// batch works, and the next client of the one backend is in step.
#[test]
fn error_then_rest_in_a_later_write() {
    let s = setup_one("");
    let (port, cport) = (s.pooler.port, s.cluster.port);
    run_within(
        Duration::from_secs(30),
        "error then later write",
        move || {
            let pid = pooled_pid(port);
            let mut d = raw_login(cport, TRUST_USER.user);
            let mut c = raw_login(port, TRUST_USER.user);
            for (sql, answers) in DIV_ERRORS {
                let (d1, d2) = error_then_later_write(&mut d, sql, "directly");
                let (p1, p2) = error_then_later_write(&mut c, sql, "through pgcorral");
                assert_eq!(
                    (seq(&d1), seq(&d2)),
                    (answers.to_string(), "Z".to_string()),
                    "{sql}: PostgreSQL's own answers (the premise)"
                );
                assert_eq!(
                    (seq(&p1), seq(&p2)),
                    (seq(&d1), seq(&d2)),
                    "{sql}: through pgcorral vs directly: {} then {}",
                    tags(&p1),
                    tags(&p2)
                );
                assert_eq!(statuses(&p2), "I", "{sql}");

                let direct = bind_execute_sync(&mut d, "x1", "directly: Bind to x1");
                let pooled = bind_execute_sync(&mut c, "x1", "through pgcorral: Bind to x1");
                assert_eq!(
                    seq(&direct),
                    "E[26000]Z",
                    "{sql}: the premise: x1 was never created"
                );
                assert_eq!(
                    seq(&pooled),
                    seq(&direct),
                    "{sql}: Bind to the skipped x1 through pgcorral: {}",
                    tags(&pooled)
                );

                send(
                    &mut c,
                    &[
                        ext::parse("", "SELECT 6"),
                        ext::bind("", "", &[]),
                        ext::execute(""),
                        ext::sync(),
                    ]
                    .concat(),
                    "a new batch",
                );
                let m = read_ready(&mut c, 1, "a new batch");
                assert_eq!(seq(&m), "12DCZ", "{sql}: a new batch after the skip");
                assert_eq!(col0(&m), ["6"], "{sql}");
                expect_silence(&mut c, "a new batch");
            }
            drop(c);
            assert_next_client_in_sync(port, &pid, "an error with the rest in a later write");
        },
    );
}

// ---- 7. a client closing pgcorral's statements ----------------------------------------------

/// Names of pgcorral's statements on the backend (`pgc_…`), listed by `c` with a simple query.
fn pgc_names(c: &mut RawConn) -> Vec<String> {
    let m = simple_ok(
        c,
        "SELECT name FROM pg_prepared_statements WHERE name LIKE 'pgc\\_%' ORDER BY name",
    );
    col0(&m)
}

/// Client A (the Rust client) prepares `SELECT $1::int + 100` and runs it; client B, on the same
/// single backend, lists pgcorral's statements (`pgc_…`) in pg_prepared_statements and drops them
/// behind pgcorral's back — with Close messages inside its own transaction (BEGIN … COMMIT), with
/// Close messages in an implicit transaction, and with SQL `DEALLOCATE`. After each, A runs its
/// statement 20 times with no error and the right results.
#[test]
fn client_cannot_break_shared_statements() {
    let s = setup_one("");
    let port = s.pooler.port;
    run_within(
        Duration::from_secs(30),
        "closing pgc_ statements",
        move || {
            let mut a = must_connect(port, TRUST_USER.user, None);
            let st = a.prepare("SELECT $1::int + 100").expect("A: prepare");
            let run_a = |a: &mut Client, round: &str| {
                for i in 0..20 {
                    let v: i32 = a
                        .query_one(&st, &[&i])
                        .unwrap_or_else(|e| {
                            panic!("A, {round}, execution {i}: {e} ({})", sqlstate(&e))
                        })
                        .get(0);
                    assert_eq!(v, i + 100, "A, {round}, execution {i}");
                }
            };
            run_a(&mut a, "before B");
            let mut b = raw_login(port, TRUST_USER.user);
            for round in ["Close in BEGIN…COMMIT", "Close + Sync", "DEALLOCATE"] {
                let explicit = round.starts_with("Close in");
                if explicit {
                    let m = simple_ok(&mut b, "BEGIN");
                    assert_eq!(statuses(&m), "T", "B: BEGIN");
                }
                let names = pgc_names(&mut b);
                assert!(
                !names.is_empty(),
                "{round}: the backend holds none of pgcorral's statements: the test proves nothing"
            );
                if round == "DEALLOCATE" {
                    for n in &names {
                        simple_ok(&mut b, &format!("DEALLOCATE {n}"));
                    }
                } else {
                    let mut bytes: Vec<u8> =
                        names.iter().flat_map(|n| ext::close_statement(n)).collect();
                    bytes.extend(ext::sync());
                    send(&mut b, &bytes, round);
                    let m = read_ready(&mut b, 1, round);
                    assert_eq!(
                        seq(&m),
                        format!("{}Z", "3".repeat(names.len())),
                        "B: {round}"
                    );
                    assert_eq!(statuses(&m), if explicit { "T" } else { "I" }, "B: {round}");
                    if explicit {
                        // Really gone on the backend.
                        assert!(
                            pgc_names(&mut b).is_empty(),
                            "{round}: still listed after Close"
                        );
                        let m = simple_ok(&mut b, "COMMIT");
                        assert_eq!(statuses(&m), "I", "B: COMMIT");
                    }
                }
                run_a(&mut a, round);
            }
            expect_silence(&mut b, "B at the end");
        },
    );
}

// ---- 8. Sync between transactions without a backend -----------------------------------------

/// With the pool's one backend held by client A's open transaction (BEGIN, no COMMIT), client B's
/// named Parse + Sync is answered ParseComplete + ReadyForQuery 'I' within 1 s, without a backend;
/// after A commits, B's Bind/Execute/Sync of that statement returns the right value (21 for 7),
/// and A is served again.
#[test]
fn sync_between_transactions_needs_no_backend() {
    let s = setup_one("");
    let (port, cport) = (s.pooler.port, s.cluster.port);
    run_within(
        Duration::from_secs(30),
        "Sync without a backend",
        move || {
            let mut b = raw_login(port, TRUST_USER.user);
            let mut a = must_connect(port, TRUST_USER.user, None);
            a.batch_execute("BEGIN").expect("A: BEGIN");
            let pid: i32 = a
                .query_one("SELECT pg_backend_pid()", &[])
                .expect("A: pid")
                .get(0);
            let state: String = cluster_admin(cport)
                .query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .expect("A's backend")
                .get(0);
            assert_eq!(state, "idle in transaction", "A holds the only backend");

            let sent = Instant::now();
            send(
                &mut b,
                &[ext::parse("b_stmt", "SELECT $1::int * 3"), ext::sync()].concat(),
                "B: Parse + Sync",
            );
            b.set_read_timeout(Duration::from_secs(3));
            let m = read_ready(&mut b, 1, "B: Parse + Sync while A holds the backend");
            let took = sent.elapsed();
            assert_eq!(seq(&m), "1Z", "B: Parse + Sync");
            assert_eq!(statuses(&m), "I", "B: Parse + Sync");
            assert!(
                took < Duration::from_secs(1),
                "B's Parse + Sync took {took:?} while A held the backend"
            );
            expect_silence(&mut b, "B after Parse + Sync");

            a.batch_execute("COMMIT").expect("A: COMMIT");
            send(
                &mut b,
                &[
                    ext::bind("", "b_stmt", &[Some(b"7")]),
                    ext::execute(""),
                    ext::sync(),
                ]
                .concat(),
                "B: Bind/Execute/Sync",
            );
            b.set_read_timeout(Duration::from_secs(10));
            let m = read_ready(&mut b, 1, "B: Bind/Execute/Sync after A's COMMIT");
            assert_eq!(seq(&m), "2DCZ", "B: Bind/Execute/Sync ({})", tags(&m));
            assert_eq!(col0(&m), ["21"], "B: b_stmt(7)");
            expect_silence(&mut b, "B at the end");
            let v: i32 = a.query_one("SELECT 5", &[]).expect("A again").get(0);
            assert_eq!(v, 5);
        },
    );
}

// ---- 9. COPY data after the COPY failed; a client that does not read ------------------------

/// A COPY whose first row is bad, and a client that goes on sending rows and CopyDone after the
/// server's ErrorResponse and ReadyForQuery (as libpq does for a large COPY): PostgreSQL drops that
/// data, and so must pgcorral, without waiting for answers that never come. The next Query on the
/// same connection gets exactly its own answers, and the next client of the one backend is in step.
#[test]
fn copy_data_after_a_failed_copy_is_dropped() {
    let s = setup_one("CREATE TABLE t(i int); GRANT ALL ON t TO PUBLIC");
    let port = s.pooler.port;
    run_within(
        Duration::from_secs(30),
        "COPY data after failure",
        move || {
            let pid = pooled_pid(port);
            let mut c = raw_login(port, TRUST_USER.user);
            send(&mut c, &raw::query("COPY t(i) FROM STDIN"), "COPY");
            let g = read_until_tag(&mut c, b'G', "COPY starts");
            assert_eq!(seq(&g), "G");
            send(&mut c, &copy_data(b"bad\n"), "bad row");
            let m = read_ready(&mut c, 1, "the COPY fails");
            assert_eq!(seq(&m), "E[22P02]Z", "{}", tags(&m));
            // The client only now notices; it had more rows on the way.
            send(
                &mut c,
                &[copy_data(b"1\n"), copy_data(b"2\n"), copy_done()].concat(),
                "stray rows",
            );
            expect_silence(&mut c, "after stray COPY data");
            send(&mut c, &raw::query("SELECT 42"), "query after");
            let m = read_ready(&mut c, 1, "query after");
            assert_eq!(seq(&m), "TDCZ", "{}", tags(&m));
            assert_eq!(col0(&m), ["42"]);
            expect_silence(&mut c, "after SELECT 42");
            drop(c);
            assert_next_client_in_sync(port, &pid, "stray COPY data");
        },
    );
}

/// CPU time (user + system) of a process so far, from /proc/PID/stat.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let after = stat.rsplit_once(") ").expect("stat format").1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// A client that asks for a large result and then does not read it: the worker must sleep while
/// its buffers are full (a level-triggered poll that still asks to read the server would spin a CPU
/// core), and the result must arrive whole once the client reads.
#[test]
fn a_client_that_does_not_read_costs_no_cpu() {
    let s = setup_one("");
    let port = s.pooler.port;
    let mut c = raw_login(port, TRUST_USER.user);
    // Main may still have a short-lived child (a startup or maintenance job): wait until the one
    // client's worker is its only child.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut workers = s.pooler.worker_pids();
    while workers.len() != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        workers = s.pooler.worker_pids();
    }
    assert_eq!(workers.len(), 1, "one client, one worker: {workers:?}");
    let worker = workers[0];
    send(
        &mut c,
        &raw::query("SELECT repeat('x', 1000) FROM generate_series(1, 50000)"),
        "large result",
    );
    std::thread::sleep(Duration::from_millis(500)); // the buffers fill up
    let start = cpu_time(worker);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_time(worker) - start;
    assert!(
        used < Duration::from_millis(300),
        "the worker used {used:?} of CPU in 2 s while its client did not read"
    );
    let m = read_ready(&mut c, 1, "large result, read at last");
    assert_eq!(
        m.iter().filter(|m| m.tag == b'D').count(),
        50000,
        "every row arrives"
    );
    assert_eq!(command_tags(&m), ["SELECT 50000"]);
}
