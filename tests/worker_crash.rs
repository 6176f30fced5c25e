//! Acceptance 6: a worker killed with SIGKILL in the middle of a query does not take the daemon or
//! the pool slot with it.

mod common;
use common::*;

use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Backend pids of trust_user running the test's pg_sleep(30).
fn running_sleepers(cluster: &PgCluster) -> Vec<i32> {
    cluster
        .psql(
            "SELECT pid FROM pg_stat_activity WHERE usename = 'trust_user' \
             AND state = 'active' AND query LIKE 'SELECT pg_sleep(30)%'",
        )
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

fn check_worker_kill(pipeline: &'static str) {
    let mut o = opts(pipeline, &["pgcorral_test trust_user 1"]);
    // A slot that never comes back shows up as 53300 after 5 s instead of a 30 s wait.
    o.blocking_timeout = 5;
    let mut s = setup(o);
    let port = s.pooler.port;
    for round in 0..3 {
        let before = s.pooler.worker_pids();
        let sleepers_before = running_sleepers(&s.cluster);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = connect(port, TRUST_USER.user, None)
                .and_then(|mut c| c.execute("SELECT pg_sleep(30)", &[]).map(|_| ()));
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
        assert!(
            wait_until(Duration::from_secs(10), || {
                running_sleepers(&s.cluster)
                    .iter()
                    .any(|p| !sleepers_before.contains(p))
            }),
            "round {round}: the client's pg_sleep(30) never started"
        );
        let new: Vec<i32> = s
            .pooler
            .worker_pids()
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        assert_eq!(
            new.len(),
            1,
            "round {round}: expected exactly one new worker, got {new:?}"
        );
        let worker = new[0];
        // SAFETY: plain kill(2) of a pid we just found as a child of the daemon.
        assert_eq!(unsafe { libc::kill(worker, libc::SIGKILL) }, 0);

        let r = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the client hung after its worker died");
        assert!(
            r.is_err(),
            "round {round}: the query survived the worker's death"
        );
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            s.pooler.is_running(),
            "round {round}: the daemon died with its worker\n{}",
            s.pooler.log()
        );
        assert!(
            !pid_alive(worker),
            "round {round}: worker {worker} still alive"
        );

        // The only slot of trust_user came back: a new client is served.
        let start = Instant::now();
        let v: Result<i32, String> = with_timeout(
            Duration::from_secs(15),
            "client after the kill",
            move || {
                let mut c = connect(port, TRUST_USER.user, None)
                    .map_err(|e| format!("{e} ({})", sqlstate(&e)))?;
                c.query_one("SELECT 1", &[])
                    .map(|r| r.get(0))
                    .map_err(|e| format!("{e} ({})", sqlstate(&e)))
            },
        );
        assert_eq!(
            v,
            Ok(1),
            "round {round} ({pipeline}): no client served after the kill"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "round {round}: took {:?}",
            start.elapsed()
        );
    }
    assert!(s.pooler.is_running());
    assert_pool_works(&s.pooler);
}

#[test]
fn worker_sigkill_performance() {
    check_worker_kill("performance");
}

#[test]
fn worker_sigkill_session() {
    check_worker_kill("session");
}
