//! Issue 5 acceptance, logging: rotation by size produces files and loses no line; SIGUSR1 reopens the
//! log file; log_line_prefix; process titles.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn file_logging(dir: &Path, extra: &[&str]) -> PgcorralOptions {
    let mut lines = vec![
        "log_type = file".to_string(),
        format!("log_path = {}", dir.join("pgcorral.log").display()),
        "log_connections = on".to_string(),
    ];
    lines.extend(extra.iter().map(|s| s.to_string()));
    PgcorralOptions {
        extra_main: lines,
        ..Default::default()
    }
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("pgcorral.log"))
        })
        .collect();
    v.sort();
    v
}

fn count_all(dir: &Path, needle: &str) -> usize {
    log_files(dir)
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .matches(needle)
                .count()
        })
        .sum()
}

#[test]
fn rotation_by_size_produces_files_and_loses_no_line() {
    let dir = TempDir::new("pgcorral-logs-");
    let s = setup(file_logging(dir.path(), &["log_rotation_size = 4K"]));
    let clients = 240;
    let started = Instant::now();
    for i in 0..clients {
        let mut c = must_connect(s.pooler.port, TRUST_USER.user, None);
        c.query_one("SELECT 1", &[]).unwrap();
        drop(c);
        // Spread the clients over a few maintenance intervals (rotation is checked every 2 s).
        if i % 40 == 39 {
            std::thread::sleep(Duration::from_millis(800));
        }
    }
    // Let the last lines land and one more rotation check pass.
    std::thread::sleep(Duration::from_secs(3));
    let files = log_files(dir.path());
    assert!(
        files.len() >= 3,
        "rotation by size made {} file(s): {files:?} in {:?}",
        files.len(),
        started.elapsed()
    );
    assert_eq!(
        count_all(dir.path(), "connection authorized: user=trust_user"),
        clients,
        "every client's line is in some file"
    );
    let rotated = count_all(dir.path(), "log file rotated");
    assert!(rotated >= 2, "rotations logged: {rotated}");
}

#[test]
fn sigusr1_reopens_the_log_file() {
    let dir = TempDir::new("pgcorral-logs-");
    let s = setup(file_logging(dir.path(), &[]));
    let log = dir.path().join("pgcorral.log");
    must_connect(s.pooler.port, TRUST_USER.user, None)
        .query_one("SELECT 1", &[])
        .unwrap();
    // logrotate's way: move the file away, then tell the daemon.
    let moved = dir.path().join("moved.log");
    std::fs::rename(&log, &moved).unwrap();
    s.pooler.signal(libc::SIGUSR1);
    assert!(
        wait_until(Duration::from_secs(5), || log.exists()),
        "SIGUSR1 created a new log file"
    );
    must_connect(s.pooler.port, TRUST_USER.user, None)
        .query_one("SELECT 1", &[])
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("connection authorized: user=trust_user")
    }));
    let old = std::fs::read_to_string(&moved).unwrap();
    assert_eq!(
        old.matches("connection authorized").count(),
        1,
        "the moved file keeps the lines written before"
    );
}

#[test]
fn log_line_prefix_is_applied() {
    let dir = TempDir::new("pgcorral-logs-");
    let s = setup(file_logging(
        dir.path(),
        &["log_line_prefix = corral<%Y|%p>"],
    ));
    must_connect(s.pooler.port, TRUST_USER.user, None)
        .query_one("SELECT 1", &[])
        .unwrap();
    let text = std::fs::read_to_string(dir.path().join("pgcorral.log")).unwrap();
    let first = text.lines().next().expect("a log line");
    assert!(first.starts_with("corral<20"), "prefix: {first}");
    assert!(
        first.contains(&format!("|{}>", s.pooler.pid())),
        "%p is the pid: {first}"
    );
}

fn args_of(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default()
}

#[test]
fn process_titles_name_main_and_each_client() {
    let s = setup(opts("performance", &[]));
    assert!(
        wait_until(Duration::from_secs(5), || args_of(s.pooler.pid())
            == "pgcorral: main"),
        "main's title: {:?}",
        args_of(s.pooler.pid())
    );
    let _c = must_connect(s.pooler.port, TRUST_USER.user, None);
    let want = "pgcorral: trust_user@127.0.0.1/pgcorral_test";
    assert!(
        wait_until(Duration::from_secs(5), || s
            .pooler
            .worker_pids()
            .iter()
            .any(|p| args_of(*p) == want)),
        "no worker titled {want:?}: {:?}",
        s.pooler
            .worker_pids()
            .iter()
            .map(|p| args_of(*p))
            .collect::<Vec<_>>()
    );
}

#[test]
fn syslog_gets_one_datagram_per_record() {
    let dir = TempDir::new("pgcorral-syslog-");
    let path = dir.path().join("log.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let s = setup(PgcorralOptions {
        extra_main: vec!["log_type = syslog".into(), "log_connections = on".into()],
        env: vec![("PGCORRAL_SYSLOG_SOCKET".into(), path.display().to_string())],
        ..Default::default()
    });
    must_connect(s.pooler.port, TRUST_USER.user, None)
        .query_one("SELECT 1", &[])
        .unwrap();
    let mut records = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let n = sock.recv(&mut buf).expect("a syslog datagram");
        let record = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = record.contains("connection authorized: user=trust_user");
        records.push(record);
        if done {
            break;
        }
    }
    let started = records
        .iter()
        .find(|r| r.contains("started"))
        .expect("start-up record");
    // Facility daemon (3) and severity info (6): priority 30; tag with the pid.
    assert!(
        started.starts_with(&format!("<30>pgcorral[{}]: INFO ", s.pooler.pid())),
        "{started}"
    );
    let client = records.last().unwrap();
    assert!(client.starts_with("<30>pgcorral["), "{client}");
    assert!(
        !client.ends_with('\n'),
        "one record per datagram, no newline"
    );
}
