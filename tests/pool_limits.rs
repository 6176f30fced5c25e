//! Acceptance 2: many consecutive clients of one user open at most max_size backends, and no
//! session state survives from one client to the next on a reused backend.

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

fn check_thousand_connections(pipeline: &'static str) {
    let s = setup(opts(pipeline, &["pgcorral_test trust_user 5"]));
    let (cluster, port) = (&s.cluster, s.pooler.port);
    let done = AtomicBool::new(false);
    let max_seen = AtomicUsize::new(0);
    let samples = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let n = cluster.backend_count(TRUST_USER.user);
                max_seen.fetch_max(n, Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        let run = || {
            for i in 0..1000 {
                let mut c = connect(port, TRUST_USER.user, None)
                    .unwrap_or_else(|e| panic!("client {i} ({pipeline}): {e} ({})", sqlstate(&e)));
                let v: i32 = c
                    .query_one("SELECT $1::int4 + 1", &[&i])
                    .expect("query")
                    .get(0);
                assert_eq!(v, i + 1);
                if i % 100 == 50 {
                    // Also sampled in the middle of a client's life.
                    let n = cluster.backend_count(TRUST_USER.user);
                    assert!(
                        (1..=5).contains(&n),
                        "{n} backends of trust_user while client {i} is connected"
                    );
                }
            }
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
        done.store(true, Ordering::Relaxed);
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    });
    let after = cluster.backend_count(TRUST_USER.user);
    let max_seen = max_seen.load(Ordering::Relaxed);
    assert!(samples.load(Ordering::Relaxed) > 0);
    assert!(
        max_seen <= 5,
        "{max_seen} backends of trust_user seen during the loop (max_size 5)"
    );
    assert!(
        (1..=5).contains(&after),
        "{after} backends of trust_user after the loop: want 1..=5 (pooled)"
    );
}

fn check_no_state_leak(pipeline: &'static str) {
    let s = setup(opts(pipeline, &["pgcorral_test trust_user 1"]));
    let port = s.pooler.port;
    let leak_count = "SELECT count(*) FROM pg_tables WHERE tablename = 't_leak'";
    let prepared = "SELECT count(*) FROM pg_prepared_statements WHERE name = 'leaky'";

    let mut a = must_connect(port, TRUST_USER.user, None);
    a.batch_execute(
        "SET work_mem = '77MB'; CREATE TEMP TABLE t_leak(x int); PREPARE leaky AS SELECT 1",
    )
    .expect("client A's session state");
    // The checks below can see the state where it exists.
    let wm: String = a.query_one("SHOW work_mem", &[]).unwrap().get(0);
    assert_eq!(wm, "77MB");
    let n: i64 = a.query_one(leak_count, &[]).unwrap().get(0);
    assert_eq!(n, 1, "client A sees its temp table");
    let n: i64 = a.query_one(prepared, &[]).unwrap().get(0);
    assert_eq!(n, 1);
    let pid_a: i32 = a.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    drop(a);

    for i in 0..20 {
        let mut c = must_connect(port, TRUST_USER.user, None);
        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        assert_eq!(
            pid, pid_a,
            "client {i} ({pipeline}) did not reuse the only backend (max_size 1)"
        );
        let wm: String = c.query_one("SHOW work_mem", &[]).unwrap().get(0);
        assert_ne!(wm, "77MB", "client {i} ({pipeline}) inherited SET work_mem");
        let n: i64 = c.query_one(leak_count, &[]).unwrap().get(0);
        assert_eq!(n, 0, "client {i} ({pipeline}) sees client A's temp table");
        let n: i64 = c.query_one(prepared, &[]).unwrap().get(0);
        assert_eq!(
            n, 0,
            "client {i} ({pipeline}) sees client A's prepared statement"
        );
        // Leave some state behind for the next one, too.
        c.batch_execute(
            "SET work_mem = '77MB'; CREATE TEMP TABLE t_leak(x int); PREPARE leaky AS SELECT 1",
        )
        .expect("set state");
    }
    assert_eq!(s.cluster.backend_count(TRUST_USER.user), 1);
}

#[test]
fn thousand_connections_performance() {
    check_thousand_connections("performance");
}

#[test]
fn thousand_connections_session() {
    check_thousand_connections("session");
}

#[test]
fn no_state_leak_performance() {
    check_no_state_leak("performance");
}

#[test]
fn no_state_leak_session() {
    check_no_state_leak("session");
}
