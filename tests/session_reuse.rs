//! What a client gets on a reused backend: its own startup parameters (application_name) both as
//! ParameterStatus and in the session, pgcorral's own BackendKeyData, and a clean backend even when
//! the previous client left in the middle of a result or of a transaction.

mod common;
use common::*;

use pgcorral_testkit::raw::{query, startup_message, Message, Outcome, RawConn};
use std::time::Duration;

/// Logs in with raw bytes, returning the connection and the login messages.
fn login(port: u16, app: Option<&str>) -> (RawConn, Vec<Message>) {
    let mut c = RawConn::connect(port);
    c.set_read_timeout(Duration::from_secs(10));
    let mut params = vec![("user", TRUST_USER.user), ("database", TEST_DB)];
    if let Some(a) = app {
        params.push(("application_name", a));
    }
    c.send(&startup_message(&params)).expect("send startup");
    match c.read_until_ready(None) {
        Outcome::Ready(m) => (c, m),
        other => panic!("login failed: {other:?}"),
    }
}

fn one_value(c: &mut RawConn, sql: &str) -> String {
    match c.simple_query(sql) {
        Outcome::Ready(m) => {
            let rows: Vec<_> = m.iter().filter_map(|x| x.data_row()).collect();
            rows[0][0].clone().unwrap_or_default()
        }
        other => panic!("{sql}: {other:?}"),
    }
}

fn check_startup_parameters(pipeline: &'static str) {
    let s = setup(opts(pipeline, &["pgcorral_test trust_user 1"]));
    let port = s.pooler.port;

    let (mut a, msgs) = login(port, Some("alpha"));
    assert_eq!(
        parameter(&msgs, "application_name").as_deref(),
        Some("alpha")
    );
    let pid_a = one_value(&mut a, "SELECT pg_backend_pid()");
    assert_eq!(one_value(&mut a, "SHOW application_name"), "alpha");
    let _ = a.send(&pgcorral_testkit::raw::terminate());
    drop(a);

    // Same (only) backend, another application name.
    let (mut b, msgs) = login(port, Some("beta"));
    assert_eq!(
        one_value(&mut b, "SELECT pg_backend_pid()"),
        pid_a,
        "{pipeline}: backend reused"
    );
    assert_eq!(
        parameter(&msgs, "application_name").as_deref(),
        Some("beta"),
        "{pipeline}: ParameterStatus"
    );
    assert_eq!(
        one_value(&mut b, "SHOW application_name"),
        "beta",
        "{pipeline}: session value"
    );
    assert!(parameter(&msgs, "server_version").is_some_and(|v| v.starts_with("15")));
    let key = msgs
        .iter()
        .find_map(|m| m.backend_key())
        .expect("BackendKeyData on a pooled login");
    assert_ne!(
        key.0.to_string(),
        pid_a,
        "the client gets pgcorral's key, not the backend's"
    );
    assert_eq!(
        one_value(
            &mut b,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'beta'"
        ),
        "1"
    );
    let _ = b.send(&pgcorral_testkit::raw::terminate());
    drop(b);

    // No application name at all: not the previous client's.
    let (mut c, msgs) = login(port, None);
    assert_eq!(one_value(&mut c, "SELECT pg_backend_pid()"), pid_a);
    assert_eq!(parameter(&msgs, "application_name").as_deref(), Some(""));
    assert_eq!(one_value(&mut c, "SHOW application_name"), "");
}

fn check_client_leaves_mid_result(pipeline: &'static str) {
    let s = setup(opts(pipeline, &["pgcorral_test trust_user 1"]));
    let port = s.pooler.port;
    let (mut a, _) = login(port, None);
    let pid_a = one_value(&mut a, "SELECT pg_backend_pid()");
    // A large result: read a little of it and vanish without Terminate.
    a.send(&query(
        "SELECT repeat('x', 1000) FROM generate_series(1, 200000)",
    ))
    .unwrap();
    let _ = a.read_message();
    let _ = a.read_message();
    drop(a);

    let (mut b, _) = login(port, None);
    assert_eq!(
        one_value(&mut b, "SELECT pg_backend_pid()"),
        pid_a,
        "{pipeline}: the drained backend is reused"
    );
    assert_eq!(one_value(&mut b, "SELECT 41 + 1"), "42");
    assert_eq!(
        one_value(&mut b, "SELECT count(*) FROM generate_series(1, 3)"),
        "3"
    );
}

fn check_client_leaves_mid_transaction(pipeline: &'static str) {
    let s = setup(opts(pipeline, &["pgcorral_test trust_user 1"]));
    s.cluster.psql_db(
        TEST_DB,
        "CREATE TABLE left_open(x int); GRANT ALL ON left_open TO PUBLIC",
    );
    let port = s.pooler.port;
    let (mut a, _) = login(port, None);
    let pid_a = one_value(&mut a, "SELECT pg_backend_pid()");
    assert!(matches!(a.simple_query("BEGIN"), Outcome::Ready(_)));
    assert!(matches!(
        a.simple_query("INSERT INTO left_open VALUES (1)"),
        Outcome::Ready(_)
    ));
    // A statement still running when the client goes.
    a.send(&query("SELECT pg_sleep(30)")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(a);

    let started = std::time::Instant::now();
    let (mut b, _) = login(port, None);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the running query was cancelled, not waited for"
    );
    assert_eq!(
        one_value(&mut b, "SELECT pg_backend_pid()"),
        pid_a,
        "{pipeline}: backend reused"
    );
    assert_eq!(
        one_value(&mut b, "SELECT count(*) FROM left_open"),
        "0",
        "{pipeline}: rolled back"
    );
    assert_eq!(
        one_value(&mut b, "SELECT txid_current_if_assigned() IS NULL"),
        "t"
    );
}

/// With a `server_reset_query` that resets no settings (empty here), the SET that adapted a pooled
/// backend to one client's application_name is still undone when that client leaves: the next
/// client with the opener's application_name sees its own, in the session and in its greeting.
fn check_setup_undone_without_reset_query(pipeline: &'static str) {
    let mut o = opts(pipeline, &["pgcorral_test trust_user 1"]);
    o.extra_main.push("server_reset_query =".to_string());
    let s = setup(o);
    let port = s.pooler.port;
    let (mut a, _) = login(port, Some("alpha"));
    let pid = one_value(&mut a, "SELECT pg_backend_pid()");
    let _ = a.send(&pgcorral_testkit::raw::terminate());
    drop(a);
    let (mut b, _) = login(port, Some("beta"));
    assert_eq!(one_value(&mut b, "SHOW application_name"), "beta");
    let _ = b.send(&pgcorral_testkit::raw::terminate());
    drop(b);
    let (mut c, msgs) = login(port, Some("alpha"));
    assert_eq!(
        one_value(&mut c, "SELECT pg_backend_pid()"),
        pid,
        "{pipeline}: the one backend is reused"
    );
    assert_eq!(
        one_value(&mut c, "SHOW application_name"),
        "alpha",
        "{pipeline}: the previous client's application_name survived an empty server_reset_query"
    );
    assert_eq!(
        parameter(&msgs, "application_name").as_deref(),
        Some("alpha")
    );
}

#[test]
fn setup_undone_without_reset_query_performance() {
    check_setup_undone_without_reset_query("performance");
}

#[test]
fn setup_undone_without_reset_query_session() {
    check_setup_undone_without_reset_query("session");
}

#[test]
fn startup_parameters_performance() {
    check_startup_parameters("performance");
}

#[test]
fn startup_parameters_session() {
    check_startup_parameters("session");
}

#[test]
fn client_leaves_mid_result_performance() {
    check_client_leaves_mid_result("performance");
}

#[test]
fn client_leaves_mid_result_session() {
    check_client_leaves_mid_result("session");
}

#[test]
fn client_leaves_mid_transaction_performance() {
    check_client_leaves_mid_transaction("performance");
}

#[test]
fn client_leaves_mid_transaction_session() {
    check_client_leaves_mid_transaction("session");
}
