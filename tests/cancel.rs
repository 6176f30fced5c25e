//! Acceptance 5: a CancelRequest through pgcorral cancels the running query (SQLSTATE 57014) and
//! the client's session goes on.

mod common;
use common::*;

use std::sync::mpsc;
use std::time::{Duration, Instant};

fn check_cancel(pipeline: &'static str) {
    let s = setup(opts(pipeline, &["pgcorral_test trust_user 5"]));
    let mut client = must_connect(s.pooler.port, TRUST_USER.user, None);
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let token = client.cancel_token();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let r = client.execute("SELECT pg_sleep(30)", &[]);
        let _ = tx.send((
            r.map(|_| ()).map_err(|e| sqlstate(&e)),
            start.elapsed(),
            client,
        ));
    });
    std::thread::sleep(Duration::from_millis(300));
    token
        .cancel_query(NoTls)
        .expect("sending the CancelRequest to pgcorral");
    let (r, elapsed, mut client) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("query not cancelled within 10 s");
    assert_eq!(
        r,
        Err("57014".to_string()),
        "{pipeline}: pg_sleep(30) after a cancel"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "{pipeline}: cancelled only after {elapsed:?}"
    );

    let v: i32 = client
        .query_one("SELECT 1", &[])
        .expect("SELECT 1 after the cancel")
        .get(0);
    assert_eq!(v, 1);
    let again: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    assert_eq!(again, backend, "the client kept its backend");

    // A cancel with nothing running does no harm.
    client
        .cancel_token()
        .cancel_query(NoTls)
        .expect("idle cancel");
    std::thread::sleep(Duration::from_millis(200));
    let v: i32 = client
        .query_one("SELECT 2", &[])
        .expect("SELECT 2 after an idle cancel")
        .get(0);
    assert_eq!(v, 2);
}

/// A second client's cancel does not hit a different client's query.
fn check_cancel_isolated(pipeline: &'static str) {
    let s = setup(opts(pipeline, &["pgcorral_test trust_user 5"]));
    let port = s.pooler.port;
    let mut a = must_connect(port, TRUST_USER.user, None);
    let b = must_connect(port, TRUST_USER.user, None);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = a.execute("SELECT pg_sleep(1.5)", &[]);
        let _ = tx.send(r.map(|_| ()).map_err(|e| sqlstate(&e)));
    });
    std::thread::sleep(Duration::from_millis(300));
    b.cancel_token()
        .cancel_query(NoTls)
        .expect("cancel for the idle client b");
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a's query did not finish");
    assert_eq!(r, Ok(()), "{pipeline}: b's cancel hit a's query");
}

#[test]
fn cancel_performance() {
    check_cancel("performance");
}

#[test]
fn cancel_session() {
    check_cancel("session");
}

#[test]
fn cancel_isolated_performance() {
    check_cancel_isolated("performance");
}

#[test]
fn cancel_isolated_session() {
    check_cancel_isolated("session");
}
