//! Transaction pipeline, points 7 and 8: the counters kept in the shared region. Queries and
//! transactions are counted per slot (and summed by `pgcorral-ctl status`); clients that waited for a
//! backend, and how long, are counted in the region's header.

mod common;
use common::*;

use serde_json::Value;
use std::time::{Duration, Instant};

fn status(s: &Setup) -> Value {
    let o = s.pooler.ctl(&["--format", "json", "status", "details"]);
    assert!(
        o.status.success(),
        "pgcorral-ctl status: {}\n{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    let doc: Value = serde_json::from_str(&stdout(&o)).expect("status is JSON");
    doc["result"].clone()
}

fn stat(st: &Value, key: &str) -> u64 {
    st["stats"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no stats.{key} in {st}"))
}

/// The status once no backend is in use and one is free (fails after 5 s).
fn wait_until_backend_free(s: &Setup) -> Value {
    let mut st = Value::Null;
    let free = wait_until(Duration::from_secs(5), || {
        st = status(s);
        st["states"]["in_use"].as_u64() == Some(0)
            && st["states"]["free"].as_u64().is_some_and(|n| n >= 1)
    });
    assert!(free, "no backend became free: {st}");
    st
}

/// 10 statements in autocommit and 5 explicit transactions of 4 statements: 30 queries in 15
/// transactions, counted exactly (the login itself is neither), and the per-slot counts add up.
#[test]
fn queries_and_transactions_are_counted_per_slot() {
    let s = setup(tx_opts(TRUST_USER.user, 2, &[]));
    let mut c = must_connect(s.pooler.port, TRUST_USER.user, None);
    for i in 0..10 {
        c.batch_execute(&format!("SELECT {i}")).unwrap();
    }
    for _ in 0..5 {
        for sql in ["BEGIN", "SELECT 1", "SELECT 2", "COMMIT"] {
            c.batch_execute(sql).unwrap();
        }
    }
    let st = status(&s);
    assert_eq!(stat(&st, "queries"), 30, "{st}");
    assert_eq!(stat(&st, "transactions"), 15, "{st}");
    let slots = st["slots"].as_array().expect("slots with --details");
    let per_slot: u64 = slots
        .iter()
        .map(|v| v["transactions"].as_u64().expect("transactions per slot"))
        .sum();
    assert_eq!(per_slot, 15, "{st}");
    drop(c);
}

/// A client that finds the only backend busy waits in the queue: counted in `clients_waited`, its
/// wait in `wait_time_us`; one that finds it free in `checkouts_without_wait`.
#[test]
fn waiting_is_counted_with_its_time() {
    let s = setup(tx_opts(TRUST_USER.user, 1, &[]));
    let mut a = must_connect(s.pooler.port, TRUST_USER.user, None);
    let mut b = must_connect(s.pooler.port, TRUST_USER.user, None);
    // A login's worker gives its backend back just after the client has its ReadyForQuery, so B's
    // may still hold it here: A's BEGIN would then rightly count as a (short) wait.
    let before = wait_until_backend_free(&s);
    a.batch_execute("BEGIN").unwrap();
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        b.batch_execute("SELECT 1").unwrap();
        (t.elapsed(), b)
    });
    std::thread::sleep(Duration::from_millis(400));
    a.batch_execute("COMMIT").unwrap();
    let (waited, _b) = waiter.join().unwrap();
    assert!(
        waited >= Duration::from_millis(300),
        "B did not wait: {waited:?}"
    );
    let after = status(&s);
    assert!(
        stat(&after, "clients_waited") > stat(&before, "clients_waited"),
        "{before}\n{after}"
    );
    let waited_us = stat(&after, "wait_time_us") - stat(&before, "wait_time_us");
    assert!(
        waited_us >= 300_000,
        "wait_time_us grew by {waited_us}: {after}"
    );
    assert!(
        stat(&after, "checkouts_without_wait") > stat(&before, "checkouts_without_wait"),
        "A's BEGIN found the backend free: {after}"
    );
}
