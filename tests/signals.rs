//! Acceptance 8: SIGTERM (and SIGINT) stop the daemon cleanly: it exits within 10 s, removes its
//! Unix socket and pidfile, and leaves no backend and no worker behind.

mod common;
use common::*;

use std::time::Duration;

fn check_shutdown(sig: i32, name: &str) {
    let mut s = setup(opts("performance", &["pgcorral_test trust_user 5"]));
    let port = s.pooler.port;
    // Some pooled idle backends, and one client still connected.
    {
        let mut a = must_connect(port, TRUST_USER.user, None);
        let mut b = must_connect(port, TRUST_USER.user, None);
        a.execute("SELECT 1", &[]).unwrap();
        b.execute("SELECT 1", &[]).unwrap();
    }
    let mut active = must_connect(port, TRUST_USER.user, None);
    active.execute("SELECT 1", &[]).unwrap();
    assert!(s.cluster.backend_count(TRUST_USER.user) >= 1);
    let socket = s.pooler.unix_socket();
    let pidfile = s.pooler.pidfile();
    assert!(
        socket.exists(),
        "Unix socket {} missing while running",
        socket.display()
    );
    let pid_text = std::fs::read_to_string(&pidfile)
        .unwrap_or_else(|e| panic!("pidfile {}: {e}", pidfile.display()));
    assert_eq!(
        pid_text.trim().parse::<i32>().ok(),
        Some(s.pooler.pid()),
        "pidfile content {pid_text:?}"
    );
    let workers = s.pooler.worker_pids();
    assert!(!workers.is_empty(), "the connected client has a worker");

    s.pooler.signal(sig);
    let status = s.pooler.wait_exit(Duration::from_secs(10));
    let status =
        status.unwrap_or_else(|| panic!("still running 10 s after {name}\n{}", s.pooler.log()));
    assert!(
        status.success(),
        "exit status after {name}: {status}\n{}",
        s.pooler.log()
    );
    assert!(!socket.exists(), "Unix socket left behind after {name}");
    assert!(!pidfile.exists(), "pidfile left behind after {name}");
    let left = s
        .cluster
        .wait_backend_count(TRUST_USER.user, 0, Duration::from_secs(5));
    assert_eq!(left, 0, "backends of trust_user left after {name}");
    assert!(
        wait_until(Duration::from_secs(5), || workers
            .iter()
            .all(|&p| !pid_alive(p))),
        "workers left running after {name}"
    );
    assert!(
        active.execute("SELECT 1", &[]).is_err(),
        "the connected client still works after {name}"
    );
}

#[test]
fn sigterm_shutdown() {
    check_shutdown(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_shutdown() {
    check_shutdown(libc::SIGINT, "SIGINT");
}
