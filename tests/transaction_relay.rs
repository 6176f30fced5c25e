//! The shared transaction relay (`pipeline = transaction`, `transaction_relay = shared`, the
//! default): a worker logs its client in and hands it to one relay process, which serves every
//! client; `transaction_relay = worker` keeps a worker per client.
//!
//! What these tests prove, against a real PostgreSQL 15:
//! * with 40 clients connected, the daemon has one child left (the relay): workers end after the
//!   hand-over, and every client is still served and counted by `pgcorral-ctl status`;
//! * clients that find the pool busy wait in arrival order, and one that waits `blocking_timeout`
//!   gets FATAL 53300; a client whose own pool has room is not held up by another pool's waiters;
//! * a relay killed with SIGKILL: its clients are disconnected, the row lock one of them held is
//!   released, main starts a new relay, and new clients are served;
//! * a malformed message from one client ends that client only (08P01);
//! * a graceful shutdown waits for the relay's clients;
//! * `transaction_relay = worker` still relays in the client's worker.

mod common;
use common::*;

use pgcorral_testkit::raw;
use std::time::{Duration, Instant};

/// The daemon's children whose title says they are the transaction relay.
fn relay_pids(pooler: &Pgcorral) -> Vec<i32> {
    pooler
        .worker_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("transaction relay"))
                .unwrap_or(false)
        })
        .collect()
}

/// Waits until there is exactly one relay and returns its pid.
fn the_relay(pooler: &Pgcorral) -> i32 {
    let mut found = Vec::new();
    let ok = wait_until(Duration::from_secs(10), || {
        found = relay_pids(pooler);
        found.len() == 1
    });
    assert!(ok, "expected one transaction relay, found {found:?}");
    found[0]
}

/// The error a query ended with: a FATAL comes, then the connection closes (no ReadyForQuery after a
/// FATAL).
fn fatal_of(outcome: raw::Outcome) -> raw::ErrorFields {
    let msgs = match &outcome {
        raw::Outcome::Closed(m) | raw::Outcome::Error(_, m) => m.clone(),
        other => panic!("expected a FATAL and a close, got {other:?}"),
    };
    msgs.iter()
        .find_map(|m| m.error())
        .unwrap_or_else(|| panic!("no ErrorResponse in {msgs:?}"))
}

/// The `clients_waited` counter of `pgcorral-ctl status`.
fn clients_waited(pooler: &Pgcorral) -> u64 {
    let line = status_line(pooler, "stats:");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("clients_waited="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no clients_waited in {line}"))
}

fn status_line(pooler: &Pgcorral, key: &str) -> String {
    let out = pooler.ctl(&["status"]);
    let text = stdout(&out);
    text.lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no '{key}' in status:\n{text}"))
        .to_string()
}

/// Waits up to 10 s for the `pgcorral-ctl status` line starting with `key` to satisfy `holds`;
/// fails with `what` and the line otherwise.
fn wait_for_status(pooler: &Pgcorral, key: &str, holds: impl Fn(&str) -> bool, what: &str) {
    let ok = wait_until(Duration::from_secs(10), || holds(&status_line(pooler, key)));
    assert!(ok, "{what}: {}", status_line(pooler, key));
}

#[test]
fn forty_clients_one_relay_process() {
    let s = setup(tx_opts(TRUST_USER.user, 5, &[]));
    let relay = the_relay(&s.pooler);
    let mut clients: Vec<Client> = (0..40)
        .map(|_| must_connect(s.pooler.port, TRUST_USER.user, Some(TRUST_USER.password)))
        .collect();
    // Workers exit once their client is handed over: only the relay stays.
    let ok = wait_until(Duration::from_secs(10), || {
        s.pooler.worker_pids() == vec![relay]
    });
    assert!(
        ok,
        "with 40 clients connected the daemon's children should be the relay alone, got {:?}",
        s.pooler.worker_pids()
    );
    for (i, c) in clients.iter_mut().enumerate() {
        let v: i32 = c
            .query_one("SELECT $1::int + 1", &[&(i as i32)])
            .expect("query through the relay")
            .get(0);
        assert_eq!(v, i as i32 + 1);
    }
    let line = status_line(&s.pooler, "clients:");
    assert!(
        line.ends_with(" 40"),
        "status should count 40 clients: {line}"
    );
    drop(clients);
    wait_for_status(
        &s.pooler,
        "clients:",
        |l| l.ends_with(" 0"),
        "clients still counted after they left",
    );
    let mut admin = cluster_admin(s.cluster.port);
    assert!(
        backends_of(&mut admin, TRUST_USER.user) <= 5,
        "more backends than the pool"
    );
}

#[test]
fn busy_pool_fifo_then_53300() {
    let mut o = tx_opts(TRUST_USER.user, 1, &[]);
    o.blocking_timeout = 1;
    let s = setup(o);
    let port = s.pooler.port;
    let mut holder = must_connect(port, TRUST_USER.user, Some(TRUST_USER.password));
    // Connect the waiters first: their logins need the one backend too.
    let waiters: Vec<Client> = (0..3)
        .map(|_| must_connect(port, TRUST_USER.user, Some(TRUST_USER.password)))
        .collect();
    holder.batch_execute("BEGIN").unwrap();
    holder.query_one("SELECT 1", &[]).unwrap();

    // Three clients queue behind the holder, each sent once the one before is parked; each query
    // returns when PostgreSQL started it.
    let mut threads = Vec::new();
    let base = clients_waited(&s.pooler);
    for (i, mut c) in waiters.into_iter().enumerate() {
        threads.push(std::thread::spawn(move || {
            // One simple Query: one turn on the backend. (rust-postgres's query_one takes two, the
            // prepare and the execute, and its execute queues again behind the other waiters.)
            let msgs = c
                .simple_query("SELECT pg_sleep(0.05), statement_timestamp()::text")
                .map_err(|e| sqlstate(&e))?;
            msgs.iter()
                .find_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => r.get(1).map(str::to_string),
                    _ => None,
                })
                .ok_or_else(|| "no row".to_string())
        }));
        let ok = wait_until(Duration::from_secs(5), || {
            clients_waited(&s.pooler) == base + i as u64 + 1
        });
        assert!(ok, "waiter {i} was not parked");
    }
    std::thread::sleep(Duration::from_millis(200));
    holder.batch_execute("COMMIT").unwrap();
    let started: Vec<String> = threads
        .into_iter()
        .map(|t| t.join().unwrap().expect("a waiter failed"))
        .collect();
    let mut sorted = started.clone();
    sorted.sort();
    assert_eq!(started, sorted, "waiters not served in order of arrival");

    // Now hold the backend past blocking_timeout. A raw client reads exactly what pgcorral sends:
    // rust-postgres may report the closed connection instead of a FATAL that arrives with the close.
    let mut late = raw_login(port, TRUST_USER.user);
    holder.batch_execute("BEGIN; SELECT 1").unwrap();
    let started = Instant::now();
    let e = fatal_of(late.simple_query("SELECT 1"));
    let waited = started.elapsed();
    assert_eq!(e.code, "53300", "{e:?}");
    assert_eq!(e.severity, "FATAL", "{e:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(2),
        "53300 after {waited:?}, expected about blocking_timeout = 1 s"
    );
    holder.batch_execute("COMMIT").unwrap();
    assert_pool_works(&s.pooler);
}

#[test]
fn waiters_of_a_full_pool_do_not_hold_up_another_pool() {
    let mut o = tx_opts(TRUST_USER.user, 1, &[]);
    o.limits.push(format!("{TEST_DB} {} 1", BENCH_USER.user));
    o.blocking_timeout = 10;
    let s = setup(o);
    let port = s.pooler.port;
    let mut holder = must_connect(port, TRUST_USER.user, Some(TRUST_USER.password));
    let mut waiter = must_connect(port, TRUST_USER.user, Some(TRUST_USER.password));
    let mut other = must_connect(port, BENCH_USER.user, Some(BENCH_USER.password));
    holder.batch_execute("BEGIN; SELECT 1").unwrap();
    let waiting = std::thread::spawn(move || {
        let started = Instant::now();
        waiter
            .query_one("SELECT 1", &[])
            .map(|_| started.elapsed())
            .map_err(|e| sqlstate(&e))
    });
    std::thread::sleep(Duration::from_millis(300)); // the waiter is parked by now
    let took = with_timeout(
        Duration::from_secs(5),
        "the other pool's client",
        move || {
            let started = Instant::now();
            let v: i32 = other.query_one("SELECT 5", &[]).unwrap().get(0);
            (v, started.elapsed())
        },
    );
    assert_eq!(took.0, 5);
    assert!(
        took.1 < Duration::from_millis(500),
        "a client of another pool waited {:?} behind a parked client",
        took.1
    );
    std::thread::sleep(Duration::from_millis(200));
    holder.batch_execute("COMMIT").unwrap();
    let waited = waiting
        .join()
        .unwrap()
        .expect("the parked client is served after COMMIT");
    assert!(
        waited >= Duration::from_millis(400),
        "served before the holder committed: {waited:?}"
    );
}

#[test]
fn killed_relay_is_replaced_and_frees_its_locks() {
    let s = setup(tx_opts(TRUST_USER.user, 4, &[]));
    let port = s.pooler.port;
    let mut admin = cluster_admin(s.cluster.port);
    admin
        .batch_execute(&format!(
            "CREATE TABLE relay_lock (id int PRIMARY KEY); INSERT INTO relay_lock VALUES (1); \
             GRANT ALL ON relay_lock TO {}",
            TRUST_USER.user
        ))
        .unwrap();
    let relay = the_relay(&s.pooler);
    let mut locker = must_connect(port, TRUST_USER.user, Some(TRUST_USER.password));
    let mut idle = must_connect(port, TRUST_USER.user, Some(TRUST_USER.password));
    idle.query_one("SELECT 1", &[]).unwrap();
    locker
        .batch_execute("BEGIN; SELECT * FROM relay_lock WHERE id = 1 FOR UPDATE")
        .unwrap();

    kill_pid(relay, libc::SIGKILL);

    // Its clients lose their connections (never a hang, never a wrong answer).
    let r = with_timeout(
        Duration::from_secs(10),
        "a query after the relay died",
        move || {
            idle.query_one("SELECT 1", &[])
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
    assert!(
        r.is_err(),
        "a client of the killed relay still got an answer"
    );
    drop(locker);

    // Main starts a new relay; new clients are served by it.
    let mut second = 0;
    let ok = wait_until(Duration::from_secs(10), || {
        let r = relay_pids(&s.pooler);
        second = r.first().copied().unwrap_or(0);
        r.len() == 1 && second != relay
    });
    assert!(ok, "no new relay after the first was killed");
    // The row lock of the dead relay's client is gone: a new client takes it at once.
    let got = with_timeout(Duration::from_secs(10), "taking the row lock", move || {
        let mut c = must_connect(port, TRUST_USER.user, Some(TRUST_USER.password));
        c.batch_execute("SET lock_timeout = '5s'").unwrap();
        let started = Instant::now();
        let mut t = c.transaction().unwrap();
        let r = t.query_one("SELECT id FROM relay_lock WHERE id = 1 FOR UPDATE", &[]);
        r.map(|_| started.elapsed()).map_err(|e| sqlstate(&e))
    });
    let took = got.expect("row lock after the relay died");
    assert!(took < Duration::from_secs(2), "row lock took {took:?}");
    assert!(
        s.pooler.log().contains("transaction relay"),
        "the relay's death is logged"
    );
    // No slot stays in use for the dead relay.
    wait_for_status(
        &s.pooler,
        "states:",
        |l| l.contains(" in_use=0 "),
        "slots still in use",
    );
    assert_pool_works(&s.pooler);
}

#[test]
fn malformed_message_ends_only_its_client() {
    let s = setup(tx_opts(TRUST_USER.user, 2, &[]));
    let port = s.pooler.port;
    let mut good = must_connect(port, TRUST_USER.user, Some(TRUST_USER.password));
    let mut bad = raw_login(port, TRUST_USER.user);
    // A Query whose length says 4 GB: refused before anything is allocated.
    bad.send(&[b'Q', 0xff, 0xff, 0xff, 0xff]).unwrap();
    match bad.read_until_ready(None) {
        raw::Outcome::Error(e, _) => assert_eq!(e.code, "08P01", "{e:?}"),
        other => panic!("expected 08P01, got {other:?}"),
    }
    let v: i32 = good.query_one("SELECT 41 + 1", &[]).unwrap().get(0);
    assert_eq!(v, 42);
    assert_pool_works(&s.pooler);
}

#[test]
fn graceful_shutdown_waits_for_relay_clients() {
    let mut s = setup(tx_opts(TRUST_USER.user, 2, &[]));
    let mut c = must_connect(s.pooler.port, TRUST_USER.user, Some(TRUST_USER.password));
    c.query_one("SELECT 1", &[]).unwrap();
    let out = s.pooler.ctl(&["shutdown", "gracefully"]);
    assert!(
        out.status.success(),
        "shutdown gracefully: {}",
        describe(&out)
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        s.pooler.is_running(),
        "stopped while a relay client was connected"
    );
    let v: i32 = c.query_one("SELECT 2", &[]).unwrap().get(0);
    assert_eq!(v, 2, "the connected client is still served");
    drop(c);
    assert!(
        s.pooler.wait_exit(Duration::from_secs(10)).is_some(),
        "pgcorral did not stop after the last relay client left"
    );
}

#[test]
fn worker_mode_relays_in_each_worker() {
    let s = setup(tx_opts(TRUST_USER.user, 2, &["transaction_relay = worker"]));
    let mut clients: Vec<Client> = (0..4)
        .map(|_| must_connect(s.pooler.port, TRUST_USER.user, Some(TRUST_USER.password)))
        .collect();
    for c in clients.iter_mut() {
        let v: i32 = c.query_one("SELECT 7", &[]).unwrap().get(0);
        assert_eq!(v, 7);
    }
    assert!(relay_pids(&s.pooler).is_empty(), "no relay in worker mode");
    let ok = wait_until(Duration::from_secs(5), || s.pooler.worker_pids().len() == 4);
    assert!(
        ok,
        "one worker per client expected: {:?}",
        s.pooler.worker_pids()
    );
}

fn kill_pid(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid this test read from /proc as the daemon's child.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid}");
}

#[test]
fn reload_starts_a_new_relay_and_the_old_one_drains() {
    let mut o = tx_opts(TRUST_USER.user, 1, &[]);
    o.blocking_timeout = 30;
    let s = setup(o);
    let port = s.pooler.port;
    let first = the_relay(&s.pooler);
    let mut old_client = must_connect(port, TRUST_USER.user, Some(TRUST_USER.password));
    old_client.query_one("SELECT 1", &[]).unwrap();

    // blocking_timeout 30 -> 1, then reload.
    let conf = s.pooler.conf_path();
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("blocking_timeout = 30"), "{text}");
    std::fs::write(
        &conf,
        text.replace("blocking_timeout = 30", "blocking_timeout = 1"),
    )
    .unwrap();
    let out = s.pooler.ctl(&["conf", "reload"]);
    assert!(out.status.success(), "conf reload: {}", describe(&out));

    // A new relay serves new clients; the old one keeps its client, unchanged.
    let mut second = 0;
    let ok = wait_until(Duration::from_secs(10), || {
        let r = relay_pids(&s.pooler);
        second = r.iter().copied().find(|&p| p != first).unwrap_or(0);
        r.len() == 2 && second != 0
    });
    assert!(
        ok,
        "after a reload: the new relay and the retiring one, got {:?}",
        relay_pids(&s.pooler)
    );
    let v: i32 = old_client.query_one("SELECT 3", &[]).unwrap().get(0);
    assert_eq!(v, 3, "the old relay's client is still served");

    // The new relay uses the new blocking_timeout (1 s) while the old client holds the backend.
    let mut new_client = raw_login(port, TRUST_USER.user);
    old_client.batch_execute("BEGIN; SELECT 1").unwrap();
    let started = Instant::now();
    let e = fatal_of(new_client.simple_query("SELECT 1"));
    let waited = started.elapsed();
    assert_eq!(e.code, "53300", "{e:?}");
    assert!(
        waited < Duration::from_secs(3),
        "the new relay waited {waited:?}: it did not take blocking_timeout = 1"
    );
    old_client.batch_execute("COMMIT").unwrap();

    // The old relay ends once its last client leaves.
    drop(old_client);
    let ok = wait_until(Duration::from_secs(10), || {
        relay_pids(&s.pooler) == vec![second]
    });
    assert!(
        ok,
        "the retiring relay did not end: {:?}",
        relay_pids(&s.pooler)
    );
    assert_pool_works(&s.pooler);
}

#[test]
fn relay_logs_disconnections() {
    let s = setup(tx_opts(TRUST_USER.user, 2, &["log_disconnections = on"]));
    let mut c = must_connect(s.pooler.port, TRUST_USER.user, Some(TRUST_USER.password));
    c.query_one("SELECT 1", &[]).unwrap();
    drop(c);
    let line = format!("user={} database={TEST_DB} host=127.0.0.1", TRUST_USER.user);
    let ok = wait_until(Duration::from_secs(5), || {
        s.pooler
            .log()
            .lines()
            .any(|l| l.contains("disconnection: session time:") && l.contains(&line))
    });
    assert!(
        ok,
        "no disconnection line with {line} in:\n{}",
        s.pooler.log()
    );
}
