//! Acceptance 3: 100 concurrent clients on a pool of 10, waiting clients served in FIFO order, and
//! `blocking_timeout` answered with SQLSTATE 53300.

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn check_hundred_clients(pipeline: &'static str) {
    let s = setup(opts(pipeline, &["pgcorral_test trust_user 10"]));
    let (cluster, port) = (&s.cluster, s.pooler.port);
    let done = AtomicBool::new(false);
    let max_seen = AtomicUsize::new(0);
    let start = Instant::now();
    let results: Vec<Result<(), String>> = std::thread::scope(|sc| {
        let sampler = sc.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                max_seen.fetch_max(cluster.backend_count(TRUST_USER.user), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let handles: Vec<_> = (0..100)
            .map(|i| {
                sc.spawn(move || -> Result<(), String> {
                    let mut c = connect(port, TRUST_USER.user, None)
                        .map_err(|e| format!("client {i}: connect: {e} ({})", sqlstate(&e)))?;
                    c.execute("SELECT pg_sleep(0.05)", &[])
                        .map_err(|e| format!("client {i}: {e}"))?;
                    Ok(())
                })
            })
            .collect();
        let r = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
            .collect();
        done.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        r
    });
    let elapsed = start.elapsed();
    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of 100 clients failed ({pipeline}): {failures:?}",
        failures.len()
    );
    let max_seen = max_seen.load(Ordering::Relaxed);
    assert!(
        max_seen <= 10,
        "{max_seen} backends of trust_user for a pool of 10"
    );
    // With at most 10 backends, 100 sleeps of 50 ms take at least 500 ms.
    assert!(
        elapsed >= Duration::from_millis(500),
        "100 × 50 ms on 10 backends took only {elapsed:?}"
    );
    let after = cluster.backend_count(TRUST_USER.user);
    assert!((1..=10).contains(&after), "{after} backends after the run");
}

/// With a pool of 1 held by a client, clients that arrive one after the other (each already
/// waiting in the pooler before the next one starts) get the backend in arrival order.
fn check_fifo(pipeline: &'static str) {
    const N: usize = 5;
    let mut o = opts(pipeline, &["pgcorral_test trust_user 1"]);
    o.blocking_timeout = 15;
    let s = setup(o);
    let (pooler, port) = (&s.pooler, s.pooler.port);
    let mut holder = must_connect(port, TRUST_USER.user, None);
    holder.execute("SELECT 1", &[]).unwrap();
    let order = Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        let mut handles = Vec::new();
        for i in 0..N {
            let before = pooler.worker_pids();
            let order = &order;
            handles.push(sc.spawn(move || {
                let mut c = connect(port, TRUST_USER.user, None)
                    .unwrap_or_else(|e| panic!("waiter {i}: {e} ({})", sqlstate(&e)));
                // The backend is certainly ours once a query has run on it.
                c.execute("SELECT 1", &[]).unwrap();
                order.lock().unwrap().push(i);
                std::thread::sleep(Duration::from_millis(30));
            }));
            // Wait until this waiter's worker exists, then give it time to queue up.
            let queued = wait_until(Duration::from_secs(5), || {
                pooler.worker_pids().iter().any(|p| !before.contains(p))
            });
            assert!(queued, "no worker appeared for waiter {i}");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            order.lock().unwrap().is_empty(),
            "a waiter got the backend while the holder had it"
        );
        drop(holder);
        for h in handles {
            h.join().expect("waiter panicked");
        }
    });
    let order = order.into_inner().unwrap();
    assert_eq!(
        order,
        (0..N).collect::<Vec<_>>(),
        "waiters were not served in arrival order ({pipeline})"
    );
}

fn check_blocking_timeout(pipeline: &'static str) {
    let mut o = opts(pipeline, &["pgcorral_test trust_user 1"]);
    o.blocking_timeout = 1;
    let s = setup(o);
    let port = s.pooler.port;
    let mut holder = must_connect(port, TRUST_USER.user, None);
    holder.execute("SELECT 1", &[]).unwrap();

    let (code, elapsed) = with_timeout(
        Duration::from_secs(15),
        "client waiting for a full pool",
        move || {
            let start = Instant::now();
            // The refusal may come at connect time or (if the pooler defers the checkout) at the
            // first query; either way it must carry 53300.
            let r = connect(port, TRUST_USER.user, None)
                .and_then(|mut c| c.execute("SELECT 1", &[]).map(|_| ()));
            (r.err().map(|e| sqlstate(&e)), start.elapsed())
        },
    );
    assert_eq!(
        code.as_deref(),
        Some("53300"),
        "{pipeline}: client on a full pool"
    );
    assert!(
        elapsed >= Duration::from_millis(900),
        "refused after {elapsed:?}, before blocking_timeout = 1"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "refused only after {elapsed:?} (blocking_timeout = 1)"
    );

    holder
        .execute("SELECT 1", &[])
        .expect("the holder is unaffected");
    drop(holder);
    assert_pool_works(&s.pooler);
}

#[test]
fn hundred_clients_pool_of_ten_performance() {
    check_hundred_clients("performance");
}

#[test]
fn hundred_clients_pool_of_ten_session() {
    check_hundred_clients("session");
}

#[test]
fn fifo_waiting_performance() {
    check_fifo("performance");
}

#[test]
fn fifo_waiting_session() {
    check_fifo("session");
}

#[test]
fn blocking_timeout_performance() {
    check_blocking_timeout("performance");
}

#[test]
fn blocking_timeout_session() {
    check_blocking_timeout("session");
}
