//! Pass-through authentication (no vault) with a specific HBA method per user: the server's matching
//! challenge is relayed and the login succeeds; a server that asks for something else (or nothing) is
//! refused, since pgcorral cannot enforce the method itself without the user's secret.

mod common;
use common::*;

#[test]
fn specific_hba_methods_relay_the_matching_challenge() {
    let s = setup(PgcorralOptions {
        hba: vec![
            "host all password_user all password".into(),
            "host all md5_user all md5".into(),
            "host all scram_user all scram-sha-256".into(),
            "host all trust_user all scram-sha-256".into(),
        ],
        ..Default::default()
    });
    let port = s.pooler.port;
    for role in [PASSWORD_USER, MD5_USER, SCRAM_USER] {
        for round in 0..2 {
            let mut c = connect(port, role.user, Some(role.password))
                .unwrap_or_else(|e| panic!("{} round {round}: {e} ({})", role.user, sqlstate(&e)));
            let who: String = c.query_one("SELECT current_user", &[]).unwrap().get(0);
            assert_eq!(who, role.user);
        }
        let e = connect(port, role.user, Some("wrong"))
            .err()
            .expect("wrong password accepted");
        assert_eq!(sqlstate(&e), "28P01", "{}", role.user);
    }
    // The server trusts trust_user, but the HBA file demands SCRAM: refused, not let in.
    let e = connect(port, TRUST_USER.user, None)
        .err()
        .expect("trust_user let in without SCRAM");
    assert_eq!(sqlstate(&e), "28000");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("scram-sha-256"), "{message}");
}
