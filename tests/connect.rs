//! Acceptance 1: psql and the Rust client connect through pgcorral over TCP and the Unix socket,
//! for backend roles using trust, password, md5 and scram-sha-256, in both pipelines; a wrong
//! password is refused with SQLSTATE 28P01.

mod common;
use common::*;

const ROLES: [Role; 4] = [TRUST_USER, PASSWORD_USER, MD5_USER, SCRAM_USER];

fn check_connect(pipeline: &'static str) {
    let s = setup(opts(pipeline, &[]));
    let p = &s.pooler;
    // Twice: the second round may be served from pooled connections.
    for round in 0..2 {
        for role in ROLES {
            let ctx = format!("{pipeline}, round {round}, {}", role.user);
            let want = format!("{}|2", role.user);

            let out = psql(
                "127.0.0.1",
                p.port,
                role.user,
                Some(role.password),
                TEST_DB,
                "SELECT current_user, 1+1",
            );
            assert!(out.status.success(), "psql TCP ({ctx}): {}", stderr(&out));
            assert_eq!(stdout(&out), want, "psql TCP ({ctx})");

            let out = psql_unix(
                &p.socket_dir,
                p.port,
                role.user,
                Some(role.password),
                TEST_DB,
                "SELECT current_user, 1+1",
            );
            assert!(
                out.status.success(),
                "psql Unix socket ({ctx}): {}",
                stderr(&out)
            );
            assert_eq!(stdout(&out), want, "psql Unix socket ({ctx})");

            for unix in [false, true] {
                let c = if unix {
                    connect_unix(&p.socket_dir, p.port, role.user, Some(role.password))
                } else {
                    connect(p.port, role.user, Some(role.password))
                };
                let mut c = c.unwrap_or_else(|e| {
                    panic!("Rust client unix={unix} ({ctx}): {e} ({})", sqlstate(&e))
                });
                let row = c.query_one("SELECT current_user, 1+1", &[]).expect("query");
                let user: String = row.get(0);
                let two: i32 = row.get(1);
                assert_eq!(
                    (user.as_str(), two),
                    (role.user, 2),
                    "Rust client unix={unix} ({ctx})"
                );
            }
        }
    }
}

fn check_wrong_password(pipeline: &'static str) {
    let s = setup(opts(pipeline, &[]));
    let p = &s.pooler;
    for role in [PASSWORD_USER, MD5_USER, SCRAM_USER] {
        for attempt in 0..2 {
            let ctx = format!("{pipeline}, {}, attempt {attempt}", role.user);
            match connect(p.port, role.user, Some("not_the_password")) {
                Ok(_) => panic!("wrong password accepted over TCP ({ctx})"),
                Err(e) => assert_eq!(sqlstate(&e), "28P01", "TCP ({ctx}): {e}"),
            }
            match connect_unix(&p.socket_dir, p.port, role.user, Some("not_the_password")) {
                Ok(_) => panic!("wrong password accepted over the Unix socket ({ctx})"),
                Err(e) => assert_eq!(sqlstate(&e), "28P01", "Unix socket ({ctx}): {e}"),
            }
            let out = psql(
                "127.0.0.1",
                p.port,
                role.user,
                Some("not_the_password"),
                TEST_DB,
                "SELECT 1",
            );
            assert!(
                !out.status.success(),
                "psql with a wrong password succeeded ({ctx})"
            );
            assert!(
                stderr(&out).contains("password authentication failed"),
                "psql ({ctx}): {}",
                stderr(&out)
            );
            // The right password still works afterwards (also after a pooled connection exists).
            let mut c = must_connect(p.port, role.user, Some(role.password));
            let u: String = c.query_one("SELECT current_user", &[]).unwrap().get(0);
            assert_eq!(u, role.user);
        }
    }
    // No password at all for a password role: refused too (28P01 from PostgreSQL, or the
    // client's own "password missing" error), never accepted.
    assert!(
        connect(p.port, SCRAM_USER.user, None).is_err(),
        "scram_user without a password accepted"
    );
    assert_pool_works(p);
}

#[test]
fn connect_performance() {
    check_connect("performance");
}

#[test]
fn connect_session() {
    check_connect("session");
}

#[test]
fn wrong_password_performance() {
    check_wrong_password("performance");
}

#[test]
fn wrong_password_session() {
    check_wrong_password("session");
}
