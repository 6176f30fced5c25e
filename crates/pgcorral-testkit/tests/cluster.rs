//! Checks the PostgreSQL half of the test kit against a real PostgreSQL 15 (no pgcorral needed):
//! cluster life cycle, roles and their authentication methods, and the raw protocol helper
//! (PostgreSQL's own answers to the bad input the end-to-end tests send to pgcorral).

use std::time::Duration;

use pgcorral_testkit::raw::{self, Outcome, RawConn};
use pgcorral_testkit::{
    free_port, pid_alive, psql, psql_unix, PgCluster, Role, BENCH_USER, MD5_USER, PASSWORD_USER,
    SCRAM_USER, TEST_DB, TRUST_USER,
};

fn auth_request(cluster: &PgCluster, user: &str) -> u32 {
    let mut c = RawConn::connect(cluster.port);
    c.send(&raw::startup_message(&[
        ("user", user),
        ("database", TEST_DB),
    ]))
    .unwrap();
    match c.read_message() {
        raw::Read1::Got(m) => m
            .auth_code()
            .unwrap_or_else(|| panic!("not an auth request: {m:?}")),
        other => panic!("no answer to startup for {user}: {other:?}"),
    }
}

#[test]
fn cluster_roles_and_methods() {
    let cluster = PgCluster::start();
    assert_eq!(cluster.psql("SELECT 1+1"), "2");
    assert!(
        cluster.psql("SHOW server_version").starts_with("15"),
        "PostgreSQL 15 expected"
    );
    assert_eq!(cluster.psql("SHOW max_connections"), "300");
    assert_eq!(cluster.psql("SHOW fsync"), "off");
    assert_eq!(cluster.psql("SHOW listen_addresses"), "127.0.0.1");

    // How each password is stored.
    let stored = |u: &str| {
        cluster.psql(&format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = '{u}'"
        ))
    };
    assert!(
        stored(MD5_USER.user).starts_with("md5"),
        "md5_user stored as md5"
    );
    assert!(stored(SCRAM_USER.user).starts_with("SCRAM-SHA-256$"));
    assert!(stored(PASSWORD_USER.user).starts_with("SCRAM-SHA-256$"));

    // What the server asks for over TCP: 0 ok (trust), 3 cleartext, 5 md5, 10 SASL.
    assert_eq!(auth_request(&cluster, TRUST_USER.user), 0);
    assert_eq!(auth_request(&cluster, BENCH_USER.user), 0);
    assert_eq!(auth_request(&cluster, "postgres"), 0);
    assert_eq!(auth_request(&cluster, PASSWORD_USER.user), 3);
    assert_eq!(auth_request(&cluster, MD5_USER.user), 5);
    assert_eq!(auth_request(&cluster, SCRAM_USER.user), 10);
    cluster.psql("CREATE ROLE other_user LOGIN PASSWORD 'other_pw'");
    assert_eq!(auth_request(&cluster, "other_user"), 10);

    // psql over TCP with right and wrong passwords.
    for role in [TRUST_USER, PASSWORD_USER, MD5_USER, SCRAM_USER, BENCH_USER] {
        let out = psql(
            "127.0.0.1",
            cluster.port,
            role.user,
            Some(role.password),
            TEST_DB,
            "SELECT current_user, 1+1",
        );
        assert!(
            out.status.success(),
            "{}: {}",
            role.user,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{}|2", role.user)
        );
        let bad = psql(
            "127.0.0.1",
            cluster.port,
            role.user,
            Some("wrong"),
            TEST_DB,
            "SELECT 1",
        );
        let trusted = role == TRUST_USER || role == BENCH_USER;
        assert_eq!(
            bad.status.success(),
            trusted,
            "{} with a wrong password",
            role.user
        );
        if !trusted {
            assert!(String::from_utf8_lossy(&bad.stderr).contains("password authentication failed"));
        }
    }
    // Unix socket: trust for everyone.
    let out = psql_unix(
        &cluster.socket_dir,
        cluster.port,
        SCRAM_USER.user,
        None,
        TEST_DB,
        "SELECT current_user",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Everyone can create tables in pgcorral_test (pgbench needs it).
    let out = psql(
        "127.0.0.1",
        cluster.port,
        BENCH_USER.user,
        None,
        TEST_DB,
        "CREATE TABLE bench_t(x int); DROP TABLE bench_t",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn backend_count_and_drop() {
    let cluster = PgCluster::start();
    assert_eq!(cluster.backend_count(TRUST_USER.user), 0);
    let mut c = RawConn::connect(cluster.port);
    assert!(matches!(
        c.startup(TRUST_USER.user, TEST_DB),
        Outcome::Ready(_)
    ));
    let mut c2 = RawConn::connect(cluster.port);
    assert!(matches!(
        c2.startup(TRUST_USER.user, TEST_DB),
        Outcome::Ready(_)
    ));
    assert_eq!(cluster.backend_count(TRUST_USER.user), 2);
    assert_eq!(cluster.backend_pids(TRUST_USER.user).len(), 2);
    let rows = c.simple_query("SELECT current_user, 1+1").rows();
    assert_eq!(
        rows,
        vec![vec![Some("trust_user".to_string()), Some("2".to_string())]]
    );
    c.send(&raw::terminate()).unwrap();
    drop(c2);
    assert_eq!(
        cluster.wait_backend_count(TRUST_USER.user, 0, Duration::from_secs(5)),
        0
    );

    let pid = cluster.postmaster_pid().expect("postmaster.pid");
    let base = cluster.data_dir.parent().unwrap().to_path_buf();
    drop(cluster);
    assert!(!pid_alive(pid), "postmaster {pid} still running after drop");
    assert!(!base.exists(), "{} not removed", base.display());
}

/// `codes` empty: PostgreSQL must close without an ErrorResponse.
fn expect_code(port: u16, bytes: &[u8], codes: &[&str]) {
    let mut c = RawConn::connect(port);
    let _ = c.send(bytes);
    match c.expect_error_or_close(Duration::from_secs(5)) {
        Some(e) => assert!(
            codes.contains(&e.code.as_str()),
            "got {e:?}, wanted one of {codes:?}"
        ),
        None => assert!(
            codes.is_empty(),
            "closed without an ErrorResponse, wanted one of {codes:?}"
        ),
    }
}

/// PostgreSQL's own answers to the bad input the pooler tests use (the pooler should behave alike).
#[test]
fn raw_protocol_against_postgres() {
    let cluster = PgCluster::start();
    let port = cluster.port;
    // Length 100000 (only the header and a few bytes sent).
    let mut big = 100_000u32.to_be_bytes().to_vec();
    big.extend_from_slice(&raw::PROTOCOL_3_0.to_be_bytes());
    big.extend_from_slice(b"user\0trust_user\0");
    // PostgreSQL logs "invalid length of startup packet" (COMMERROR) and closes silently.
    expect_code(port, &big, &[]);
    // Length < 8: the same.
    expect_code(port, &[0, 0, 0, 4, 0, 3, 0, 0], &[]);
    // Protocol 2.0.
    let v2 = raw::startup_packet(
        raw::PROTOCOL_2_0,
        &raw::startup_body(&[("user", "trust_user"), ("database", TEST_DB)]),
    );
    // PostgreSQL answers a 2.0 client in protocol 2 (no SQLSTATE), FATAL "unsupported frontend protocol".
    let mut c = RawConn::connect(port);
    c.send(&v2).unwrap();
    let e = c
        .expect_error_or_close(Duration::from_secs(5))
        .expect("an error for protocol 2.0");
    assert!(e.message.contains("unsupported frontend protocol"), "{e:?}");
    // Missing terminator, value-less key.
    expect_code(
        port,
        &raw::startup_packet(
            raw::PROTOCOL_3_0,
            b"user\0trust_user\0database\0pgcorral_test\0",
        ),
        &["08P01"],
    );
    expect_code(
        port,
        &raw::startup_packet(raw::PROTOCOL_3_0, b"user\0trust_user\0orphan"),
        &["08P01"],
    );
    // No user.
    expect_code(
        port,
        &raw::startup_message(&[("database", TEST_DB)]),
        &["28000"],
    );
    // Unknown database.
    expect_code(
        port,
        &raw::startup_message(&[("user", "trust_user"), ("database", "no_such_db")]),
        &["3D000"],
    );
    // Garbage.
    let mut c = RawConn::connect(port);
    let _ = c.send(b"GET / HTTP/1.1\r\n\r\n");
    let _ = c.expect_error_or_close(Duration::from_secs(5));
    // SSLRequest: 'N' (ssl = off), then a normal startup on the same socket.
    let mut c = RawConn::connect(port);
    c.send(&raw::ssl_request()).unwrap();
    let b = c.read_byte();
    assert!(matches!(b, raw::Read1::Got(b'N')), "{b:?}");
    let out = c.startup(TRUST_USER.user, TEST_DB);
    assert!(matches!(out, Outcome::Ready(_)), "{out:?}");
    assert!(out.messages().iter().any(|m| m.auth_code() == Some(0)));
    assert!(out.messages().iter().any(|m| m.backend_key().is_some()));
    assert_eq!(
        c.simple_query("SELECT 42").rows(),
        vec![vec![Some("42".to_string())]]
    );
    // GSSENCRequest: Debian's PostgreSQL is built with GSSAPI and answers 'G' over TCP (the
    // pooler, which has no GSSAPI, must answer 'N').
    let mut c = RawConn::connect(port);
    c.send(&raw::gssenc_request()).unwrap();
    let b = c.read_byte();
    assert!(
        matches!(b, raw::Read1::Got(b'N') | raw::Read1::Got(b'G')),
        "{b:?}"
    );
    // Cleartext password through the raw helper.
    let mut c = RawConn::connect(port);
    c.send(&raw::startup_message(&[
        ("user", PASSWORD_USER.user),
        ("database", TEST_DB),
    ]))
    .unwrap();
    assert!(matches!(
        c.read_until_ready(Some(PASSWORD_USER.password)),
        Outcome::Ready(_)
    ));
    let mut c = RawConn::connect(port);
    c.send(&raw::startup_message(&[
        ("user", PASSWORD_USER.user),
        ("database", TEST_DB),
    ]))
    .unwrap();
    let out = c.read_until_ready(Some("wrong"));
    assert_eq!(
        out.error().map(|e| e.code.as_str()),
        Some("28P01"),
        "{out:?}"
    );
    let e = out.error().unwrap();
    assert_eq!(e.severity, "FATAL");
}

#[test]
fn free_ports_are_bindable_and_distinct() {
    let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
    for p in &ports {
        std::net::TcpListener::bind(("127.0.0.1", *p)).expect("free_port gave a bound port");
    }
    let mut d = ports.clone();
    d.sort();
    d.dedup();
    assert!(d.len() >= 18, "free_port repeats itself: {ports:?}");
    let _ = Role {
        user: "x",
        password: "y",
    };
}
