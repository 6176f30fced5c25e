//! Issue 3 acceptance: with the user vault pgcorral authenticates clients itself and pools every
//! method; auth_query; frontend users; prefill.

mod common;
use common::*;

use pgcorral_testkit::raw::{password_message, startup_message, Outcome, RawConn};
use pgcorral_wire::{md5_password_hash, md5_salted};
use std::time::{Duration, Instant};

fn vault_opts(vault: Vault, hba: &[&str], limits: &[&str], extra: &[&str]) -> PgcorralOptions {
    PgcorralOptions {
        hba: hba.iter().map(|s| s.to_string()).collect(),
        limits: limits.iter().map(|s| s.to_string()).collect(),
        extra_main: extra.iter().map(|s| s.to_string()).collect(),
        vault: Some(vault),
        ..Default::default()
    }
}

/// Runs `n` consecutive clients of `role` and checks the backends stay within `max_size`.
fn consecutive_clients(s: &Setup, user: &str, password: &str, n: usize, max_size: usize) {
    let port = s.pooler.port;
    let mut max_seen = 0;
    for i in 0..n {
        let mut c = connect(port, user, Some(password))
            .unwrap_or_else(|e| panic!("client {i} of {user}: {e} ({})", sqlstate(&e)));
        let who: String = c
            .query_one("SELECT current_user", &[])
            .expect("query")
            .get(0);
        assert_eq!(who, user);
        if i % 200 == 100 {
            max_seen = max_seen.max(s.cluster.backend_count(user));
        }
    }
    let after = s.cluster.backend_count(user);
    assert!(
        max_seen <= max_size,
        "{max_seen} backends of {user} during the run (max_size {max_size})"
    );
    assert!(
        (1..=max_size).contains(&after),
        "{after} backends of {user} after {n} clients (max_size {max_size})"
    );
}

fn count_in_log(p: &Pgcorral, needle: &str) -> usize {
    p.log().matches(needle).count()
}

#[test]
fn thousand_scram_clients_are_pooled_and_each_runs_scram() {
    let s = setup(vault_opts(
        Vault::users(&[(SCRAM_USER.user, SCRAM_USER.password)]),
        &["host all all all scram-sha-256"],
        &["pgcorral_test scram_user 3"],
        &["log_level = debug"],
    ));
    // A wrong password with no pooled backend yet (a new connection would be needed).
    let e = connect(s.pooler.port, SCRAM_USER.user, Some("wrong"))
        .err()
        .expect("wrong password accepted");
    assert_eq!(sqlstate(&e), "28P01");
    consecutive_clients(&s, SCRAM_USER.user, SCRAM_USER.password, 1000, 3);
    let needle = "\"scram_user\" authenticated by pgcorral (scram-sha-256)";
    assert_eq!(
        count_in_log(&s.pooler, needle),
        1000,
        "every client ran SCRAM against pgcorral"
    );
    // A wrong password while pooled backends wait: still refused.
    let e = connect(s.pooler.port, SCRAM_USER.user, Some("wrong"))
        .err()
        .expect("wrong password accepted");
    assert_eq!(sqlstate(&e), "28P01");
    // A user pgcorral holds no secret for cannot pass scram-sha-256 through a trusting server.
    let e = connect(s.pooler.port, TRUST_USER.user, None)
        .err()
        .expect("trust_user let in");
    assert_eq!(sqlstate(&e), "28000");
    must_connect(s.pooler.port, SCRAM_USER.user, Some(SCRAM_USER.password));
}

#[test]
fn md5_and_password_roles_are_pooled() {
    let s = setup(vault_opts(
        Vault::users(&[
            (MD5_USER.user, MD5_USER.password),
            (PASSWORD_USER.user, PASSWORD_USER.password),
        ]),
        &[
            "host all md5_user all md5",
            "host all password_user all password",
        ],
        &["pgcorral_test md5_user 2", "pgcorral_test password_user 2"],
        &["log_level = debug"],
    ));
    consecutive_clients(&s, MD5_USER.user, MD5_USER.password, 1000, 2);
    consecutive_clients(&s, PASSWORD_USER.user, PASSWORD_USER.password, 1000, 2);
    assert_eq!(
        count_in_log(&s.pooler, "\"md5_user\" authenticated by pgcorral (md5)"),
        1000
    );
    assert_eq!(
        count_in_log(
            &s.pooler,
            "\"password_user\" authenticated by pgcorral (password)"
        ),
        1000
    );
    for role in [MD5_USER, PASSWORD_USER] {
        let e = connect(s.pooler.port, role.user, Some("wrong"))
            .err()
            .expect("wrong password accepted");
        assert_eq!(sqlstate(&e), "28P01", "{}", role.user);
    }
}

/// Starts an md5 login and returns the connection and the salt pgcorral sent.
fn md5_challenge(port: u16) -> (RawConn, [u8; 4]) {
    let mut c = RawConn::connect(port);
    c.set_read_timeout(Duration::from_secs(5));
    c.send(&startup_message(&[
        ("user", MD5_USER.user),
        ("database", TEST_DB),
    ]))
    .unwrap();
    let m = match c.read_message() {
        pgcorral_testkit::raw::Read1::Got(m) => m,
        other => panic!("no challenge: {other:?}"),
    };
    assert_eq!(m.auth_code(), Some(5), "AuthenticationMD5Password expected");
    (c, [m.body[4], m.body[5], m.body[6], m.body[7]])
}

#[test]
fn a_replayed_md5_answer_is_refused() {
    let s = setup(vault_opts(
        Vault::users(&[(MD5_USER.user, MD5_USER.password)]),
        &["host all all all md5"],
        &["pgcorral_test md5_user 2"],
        &[],
    ));
    let stored = md5_password_hash(MD5_USER.user, MD5_USER.password);
    let (mut first, salt1) = md5_challenge(s.pooler.port);
    let answer = md5_salted(&stored, salt1);
    first.send(&password_message(&answer)).unwrap();
    assert!(
        matches!(first.read_until_ready(None), Outcome::Ready(_)),
        "the honest answer works"
    );
    drop(first);
    let (mut second, salt2) = md5_challenge(s.pooler.port);
    assert_ne!(salt1, salt2, "a fresh salt per client");
    second.send(&password_message(&answer)).unwrap();
    match second.read_until_ready(None) {
        Outcome::Error(e, _) => assert_eq!(e.code, "28P01"),
        other => panic!("replayed answer: {other:?}"),
    }
}

/// Every readable byte of a process's memory contains `needle`?
fn memory_contains(pid: i32, needle: &[u8]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let Ok(mut mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else {
        return false;
    };
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.contains("[vvar") || line.contains("[vsyscall]") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        if buf.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    false
}

#[test]
fn auth_query_pools_a_scram_role_without_holding_its_password() {
    let s = setup(vault_opts(
        Vault {
            users: vec![(SCRAM_USER.user.into(), SCRAM_USER.password.into())],
            superuser: Some(("postgres".into(), "superuser-password-unused".into())),
            ..Default::default()
        },
        &["host all all all scram-sha-256"],
        &["pgcorral_test aq_role 2"],
        &["auth_query = on"],
    ));
    let secret = "aq-cleartext-7f3e9c";
    s.cluster.psql(&format!(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE aq_role LOGIN PASSWORD '{secret}'; \
         GRANT CONNECT ON DATABASE pgcorral_test TO aq_role"
    ));
    let port = s.pooler.port;
    let mut pids = std::collections::HashSet::new();
    for _ in 0..20 {
        let mut c = connect(port, "aq_role", Some(secret))
            .unwrap_or_else(|e| panic!("aq_role: {e} ({})", sqlstate(&e)));
        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        pids.insert(pid);
    }
    assert!(
        pids.len() <= 2,
        "auth_query clients are pooled: {} backends",
        pids.len()
    );
    assert_eq!(
        s.cluster.backend_count("aq_role"),
        pids.len(),
        "every backend seen is still pooled"
    );

    // While a client is connected (its worker alive), no pgcorral process holds the cleartext.
    let held = connect(port, "aq_role", Some(secret)).expect("aq_role");
    let mut procs = vec![s.pooler.pid()];
    procs.extend(s.pooler.worker_pids());
    assert!(procs.len() >= 2, "a worker is alive: {procs:?}");
    for pid in &procs {
        assert!(
            !memory_contains(*pid, secret.as_bytes()),
            "process {pid} holds aq_role's cleartext password"
        );
    }
    // The scan can see a password when one is there: the vault user's is in main's memory.
    assert!(
        memory_contains(s.pooler.pid(), SCRAM_USER.password.as_bytes()),
        "memory scan control failed"
    );
    drop(held);

    let e = connect(port, "aq_role", Some("wrong"))
        .err()
        .expect("wrong password accepted");
    assert_eq!(sqlstate(&e), "28P01");
    let t = Instant::now();
    let e = connect(port, "no_such_role", Some("whatever"))
        .err()
        .expect("unknown role accepted");
    assert_eq!(sqlstate(&e), "28P01");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "unknown role answered quickly, not a hang"
    );
    // The right password still works after the failures (the cache was refreshed, not poisoned).
    must_connect(port, "aq_role", Some(secret));
}

#[test]
fn frontend_password_accepted_backend_password_refused() {
    let front = "front-only-pw-31";
    let s = setup(vault_opts(
        Vault {
            users: vec![(SCRAM_USER.user.into(), SCRAM_USER.password.into())],
            frontend: vec![(SCRAM_USER.user.into(), front.into())],
            ..Default::default()
        },
        &["host all all all scram-sha-256"],
        &["pgcorral_test scram_user 2"],
        &[],
    ));
    for _ in 0..2 {
        let mut c = must_connect(s.pooler.port, SCRAM_USER.user, Some(front));
        let who: String = c.query_one("SELECT current_user", &[]).unwrap().get(0);
        assert_eq!(who, SCRAM_USER.user);
    }
    let e = connect(s.pooler.port, SCRAM_USER.user, Some(SCRAM_USER.password))
        .err()
        .expect("backend password accepted");
    assert_eq!(sqlstate(&e), "28P01");
}

#[test]
fn prefill_opens_initial_size_and_keeps_min_size() {
    let s = setup(vault_opts(
        Vault::users(&[(SCRAM_USER.user, SCRAM_USER.password)]),
        &["host all all all scram-sha-256"],
        &["pgcorral_test scram_user 5 3 2"],
        &[],
    ));
    let n = s
        .cluster
        .wait_backend_count(SCRAM_USER.user, 3, Duration::from_secs(15));
    assert_eq!(n, 3, "INITIAL_SIZE backends after start");
    s.cluster.terminate_backends(SCRAM_USER.user);
    let n = s
        .cluster
        .wait_backend_count(SCRAM_USER.user, 2, Duration::from_secs(20));
    assert_eq!(
        n, 2,
        "MIN_SIZE backends come back after they were terminated"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        s.cluster.backend_count(SCRAM_USER.user),
        2,
        "and no more than that"
    );
    // The refilled backends work.
    let mut c = must_connect(s.pooler.port, SCRAM_USER.user, Some(SCRAM_USER.password));
    assert_eq!(c.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0), 1);
}

#[test]
fn auth_query_through_an_operator_function() {
    let s = setup(vault_opts(
        Vault {
            users: vec![],
            superuser: Some(("postgres".into(), "superuser-password-unused".into())),
            ..Default::default()
        },
        &["host all all all scram-sha-256"],
        &["pgcorral_test fn_role 2"],
        &[
            "auth_query = on",
            "auth_query_function = public.pgcorral_secret",
        ],
    ));
    let secret = "fn-cleartext-41b";
    s.cluster.psql(&format!(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE fn_role LOGIN PASSWORD '{secret}'; \
         GRANT CONNECT ON DATABASE pgcorral_test TO fn_role"
    ));
    // The function only answers for fn_role: a role it hides cannot log in through pgcorral.
    s.cluster.psql_db(
        TEST_DB,
        "CREATE FUNCTION public.pgcorral_secret(u text) RETURNS text LANGUAGE sql SECURITY DEFINER AS \
         $$ SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = u AND u = 'fn_role' $$",
    );
    let mut c = connect(s.pooler.port, "fn_role", Some(secret))
        .unwrap_or_else(|e| panic!("fn_role: {e} ({})", sqlstate(&e)));
    let who: String = c.query_one("SELECT current_user", &[]).unwrap().get(0);
    assert_eq!(who, "fn_role");
    drop(c);
    let e = connect(s.pooler.port, "fn_role", Some("wrong"))
        .err()
        .expect("wrong password accepted");
    assert_eq!(sqlstate(&e), "28P01");
    let e = connect(s.pooler.port, SCRAM_USER.user, Some(SCRAM_USER.password))
        .err()
        .expect("a role the function hides was let in");
    assert_eq!(sqlstate(&e), "28P01");
}
