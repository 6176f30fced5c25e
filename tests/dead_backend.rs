//! A pooled backend that PostgreSQL ended while it was idle (pg_terminate_backend, idle_session_timeout,
//! a restart) is never handed to a client. Two mechanisms provide this: main's maintenance sweeps the
//! idle backends every 2 s, and a checkout looks at a backend idle for a second or more and closes it
//! if its socket is closed or holds a message (FATAL 57P01), then serves the client from another
//! backend (unit test `idle_backend_alive_sees_closed_and_chatty_peers` in pool.rs). These tests check
//! the behaviour, whichever of the two sees the dead backend first.

mod common;
use common::*;

use std::time::{Duration, Instant};

fn pid(c: &mut postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .unwrap_or_else(|e| panic!("query through pgcorral failed: {e} ({})", sqlstate(&e)))
        .get(0)
}

fn terminate(s: &Setup, pid: i32) {
    let mut admin = cluster_admin(s.cluster.port);
    let ok: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap()
        .get(0);
    assert!(ok, "pg_terminate_backend({pid})");
    // Wait until PostgreSQL has really ended it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("backend {pid} still alive 5 s after pg_terminate_backend");
}

/// Transaction mode, pool of 1: the client's next transaction after its backend was terminated runs on
/// a new backend, without an error.
#[test]
fn transaction_mode_client_never_gets_a_terminated_backend() {
    let s = setup(tx_opts(TRUST_USER.user, 1, &[]));
    let mut c = must_connect(s.pooler.port, TRUST_USER.user, None);
    for round in 0..3 {
        let before = pid(&mut c);
        terminate(&s, before);
        std::thread::sleep(Duration::from_millis(1050));
        let after = pid(&mut c);
        assert_ne!(
            after, before,
            "round {round}: served by the terminated backend"
        );
    }
}

/// Session mode: a new client is not given the pooled backend that was terminated while idle.
#[test]
fn session_mode_new_client_never_gets_a_terminated_backend() {
    let s = setup(opts("session", &["pgcorral_test trust_user 1"]));
    for round in 0..3 {
        let before = {
            let mut c = must_connect(s.pooler.port, TRUST_USER.user, None);
            pid(&mut c)
        };
        terminate(&s, before);
        std::thread::sleep(Duration::from_millis(1050));
        let mut c = must_connect(s.pooler.port, TRUST_USER.user, None);
        let after = pid(&mut c);
        assert_ne!(
            after, before,
            "round {round}: served by the terminated backend"
        );
    }
}
