//! Acceptance 7: malformed and unusual client input, sent over a raw TCP socket, is answered with
//! the right SQLSTATE or a clean close, never a hang, and leaves the pool unharmed. HBA refusals.

mod common;
use common::*;

use pgcorral_testkit::raw::{self, Outcome, RawConn};
use std::time::{Duration, Instant};

/// A pooler for bad-input tests: authentication_timeout 10 s, so that a pooler which waits for
/// more bytes instead of refusing at once fails the 5 s read timeout.
fn pooler() -> Setup {
    let mut o = opts("performance", &["pgcorral_test trust_user 5"]);
    o.authentication_timeout = 10;
    setup(o)
}

/// Sends `bytes`, then wants an ErrorResponse with one of `codes` or (when `close_ok`) a close.
fn refused(p: &Pgcorral, bytes: &[u8], codes: &[&str], close_ok: bool, what: &str) {
    let mut c = RawConn::connect(p.port);
    let _ = c.send(bytes); // the pooler may close before reading everything
    match c.expect_error_or_close(Duration::from_secs(5)) {
        Some(e) => assert!(
            codes.contains(&e.code.as_str()),
            "{what}: got {e:?}, want one of {codes:?}"
        ),
        None => assert!(
            close_ok,
            "{what}: closed without an ErrorResponse, want one of {codes:?}"
        ),
    }
    assert_pool_works(p);
}

#[test]
fn startup_length_too_big() {
    let s = pooler();
    let mut b = 100_000u32.to_be_bytes().to_vec();
    b.extend_from_slice(&raw::PROTOCOL_3_0.to_be_bytes());
    b.extend_from_slice(b"user\0trust_user\0database\0pgcorral_test\0\0");
    refused(&s.pooler, &b, &["08P01"], true, "length 100000");
}

#[test]
fn startup_length_too_small() {
    let s = pooler();
    refused(
        &s.pooler,
        &[0, 0, 0, 4, 0, 3, 0, 0],
        &["08P01"],
        true,
        "length 4",
    );
    refused(
        &s.pooler,
        &[0, 0, 0, 7, 0, 3, 0],
        &["08P01"],
        true,
        "length 7",
    );
    refused(&s.pooler, &[0, 0, 0, 0], &["08P01"], true, "length 0");
}

#[test]
fn protocol_2_refused() {
    let s = pooler();
    let pkt = raw::startup_packet(
        raw::PROTOCOL_2_0,
        &raw::startup_body(&[("user", TRUST_USER.user), ("database", TEST_DB)]),
    );
    let mut c = RawConn::connect(s.pooler.port);
    c.send(&pkt).unwrap();
    let e = c
        .expect_error_or_close(Duration::from_secs(5))
        .expect("an ErrorResponse for protocol 2.0");
    // A v3 ErrorResponse with 0A000, or PostgreSQL's own protocol-2 style text error (which has
    // no SQLSTATE field) naming the protocol.
    assert!(
        e.code == "0A000" || (e.code.is_empty() && e.message.to_lowercase().contains("protocol")),
        "protocol 2.0: {e:?}"
    );
    assert_pool_works(&s.pooler);
}

fn negotiation_then_startup(request: Vec<u8>, what: &str) {
    let s = pooler();
    let mut c = RawConn::connect(s.pooler.port);
    c.send(&request).unwrap();
    match c.read_byte() {
        raw::Read1::Got(b'N') => {}
        other => panic!("{what}: want a single 'N', got {other:?}"),
    }
    let out = c.startup(TRUST_USER.user, TEST_DB);
    assert!(
        matches!(out, Outcome::Ready(_)),
        "{what}: startup after 'N': {out:?}"
    );
    assert!(
        out.messages().iter().any(|m| m.auth_code() == Some(0)),
        "{what}: no AuthenticationOk"
    );
    assert!(
        out.messages().iter().any(|m| m.backend_key().is_some()),
        "{what}: no BackendKeyData"
    );
    let q = c.simple_query("SELECT current_user, 40+2");
    assert_eq!(
        q.rows(),
        vec![vec![Some("trust_user".into()), Some("42".into())]],
        "{what}: {q:?}"
    );
    c.send(&raw::terminate()).unwrap();
    assert_pool_works(&s.pooler);
}

#[test]
fn ssl_request_answered_n() {
    negotiation_then_startup(raw::ssl_request(), "SSLRequest");
}

#[test]
fn gssenc_request_answered_n() {
    negotiation_then_startup(raw::gssenc_request(), "GSSENCRequest");
}

#[test]
fn garbage_refused() {
    let s = pooler();
    refused(
        &s.pooler,
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        &["08P01"],
        true,
        "HTTP request",
    );
    refused(&s.pooler, &[0xff; 64], &["08P01"], true, "0xff bytes");
}

#[test]
fn malformed_startup_parameters() {
    let s = pooler();
    let p = &s.pooler;
    let v3 = |body: &[u8]| raw::startup_packet(raw::PROTOCOL_3_0, body);
    refused(
        p,
        &v3(b"user\0trust_user\0database\0pgcorral_test\0"),
        &["08P01"],
        false,
        "missing final terminator",
    );
    refused(
        p,
        &v3(b"user\0trust_user\0orphan"),
        &["08P01"],
        false,
        "key without value, unterminated",
    );
    refused(
        p,
        &v3(b"user\0trust_user"),
        &["08P01"],
        false,
        "unterminated value",
    );
}

#[test]
fn startup_without_user() {
    let s = pooler();
    refused(
        &s.pooler,
        &raw::startup_message(&[("database", TEST_DB)]),
        &["28000"],
        false,
        "no user",
    );
}

#[test]
fn silent_client_closed_after_authentication_timeout() {
    let mut o = opts("performance", &["pgcorral_test trust_user 5"]);
    o.authentication_timeout = 1;
    let s = setup(o);
    let mut c = RawConn::connect(s.pooler.port);
    let start = Instant::now();
    let closed = c.wait_closed(Duration::from_secs(5));
    let elapsed = start.elapsed();
    assert!(
        closed.is_some(),
        "a silent client was not closed within 5 s (authentication_timeout = 1)"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "closed after {elapsed:?}; authentication_timeout = 1"
    );
    assert!(
        elapsed >= Duration::from_millis(800),
        "closed after only {elapsed:?}; authentication_timeout = 1"
    );
    // Also a client that stops in the middle of its startup packet.
    let mut c = RawConn::connect(s.pooler.port);
    c.send(&[0, 0, 0, 40, 0, 3]).unwrap();
    let start = Instant::now();
    assert!(
        c.wait_closed(Duration::from_secs(5)).is_some(),
        "half a startup packet: not closed"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_pool_works(&s.pooler);
}

#[test]
fn bogus_cancel_request_is_harmless() {
    let s = pooler();
    let mut running = must_connect(s.pooler.port, TRUST_USER.user, None);
    let mut c = RawConn::connect(s.pooler.port);
    c.send(&raw::cancel_request(12345, 67890)).unwrap();
    assert!(
        c.wait_closed(Duration::from_secs(5)).is_some(),
        "CancelRequest connection not closed"
    );
    let v: i32 = running.query_one("SELECT 7", &[]).unwrap().get(0);
    assert_eq!(v, 7);
    assert_pool_works(&s.pooler);
}

#[test]
fn unknown_database_relayed() {
    let s = pooler();
    match connect_db(s.pooler.port, TRUST_USER.user, "no_such_database") {
        Ok(_) => panic!("connected to a database that does not exist"),
        Err(e) => assert_eq!(sqlstate(&e), "3D000", "{e}"),
    }
    assert_pool_works(&s.pooler);
}

fn connect_db(port: u16, user: &str, db: &str) -> Result<Client, postgres::Error> {
    let mut c = postgres::Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname(db)
        .connect_timeout(Duration::from_secs(10));
    c.connect(NoTls)
}

#[test]
fn hba_no_match() {
    let mut o = opts("performance", &[]);
    o.hba = vec!["host pgcorral_test trust_user 127.0.0.1/32 trust".into()];
    let s = setup(o);
    let err = match connect(s.pooler.port, MD5_USER.user, Some(MD5_USER.password)) {
        Ok(_) => panic!("md5_user accepted although no HBA line matches"),
        Err(e) => e,
    };
    assert_eq!(sqlstate(&err), "28000", "{err}");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.severity(), "FATAL");
    let msg = db.message();
    for part in ["127.0.0.1", MD5_USER.user, TEST_DB] {
        assert!(
            msg.contains(part),
            "HBA refusal {msg:?} does not name {part}"
        );
    }
    // Same refusal over a raw socket, and the allowed user still works.
    let mut c = RawConn::connect(s.pooler.port);
    let out = c.startup(SCRAM_USER.user, TEST_DB);
    assert_eq!(
        out.error().map(|e| e.code.as_str()),
        Some("28000"),
        "{out:?}"
    );
    assert_pool_works(&s.pooler);
}

#[test]
fn hba_reject() {
    let mut o = opts("performance", &[]);
    o.hba = vec![
        "host all trust_user all reject".into(),
        "host all all all all".into(),
    ];
    let s = setup(o);
    match connect(s.pooler.port, TRUST_USER.user, None) {
        Ok(_) => panic!("trust_user accepted although its HBA line says reject"),
        Err(e) => assert_eq!(sqlstate(&e), "28000", "{e}"),
    }
    let mut c = must_connect(s.pooler.port, SCRAM_USER.user, Some(SCRAM_USER.password));
    let v: i32 = c.query_one("SELECT 5", &[]).unwrap().get(0);
    assert_eq!(v, 5);
}
