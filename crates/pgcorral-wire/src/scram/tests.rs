use super::*;
use crate::messages::{Authentication, Header};
use ring::rand::SystemRandom;

// RFC 7677, section 3.
const RFC_PASSWORD: &str = "pencil";
const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const RFC_CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_FIRST: &[u8] =
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC_CLIENT_FINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC_SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn rfc_secret() -> ScramSecret {
    ScramSecret::from_password(RFC_PASSWORD, &BASE64.decode(RFC_SALT).unwrap(), 4096)
}

/// The vectors computed by tests/vectors/scram_vectors.py with Python's hashlib and hmac.
struct PyVectors {
    password: &'static str,
    secret: &'static str,
    client_key: [u8; 32],
    client_nonce: &'static str,
    server_nonce: &'static str,
    client_first: &'static str,
    server_first: &'static str,
    client_final: &'static str,
    server_final: &'static str,
}

fn py_vectors() -> PyVectors {
    let text = include_str!("../../tests/vectors/scram_vectors.txt");
    let get = |key: &str| -> &'static str {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{key} missing from scram_vectors.txt"))
    };
    let hex = get("client_key");
    let mut client_key = [0u8; 32];
    for (i, b) in client_key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    PyVectors {
        password: get("password"),
        secret: get("secret"),
        client_key,
        client_nonce: get("client_nonce"),
        server_nonce: get("server_nonce"),
        client_first: get("client_first"),
        server_first: get("server_first"),
        client_final: get("client_final"),
        server_final: get("server_final"),
    }
}

fn is_malformed(r: Result<impl Sized, WireError>) -> bool {
    matches!(r, Err(WireError::Malformed { .. }))
}

#[test]
fn rfc7677_client() {
    let mut c = ScramClient::new_with_nonce(RFC_PASSWORD, RFC_CLIENT_NONCE)
        .unwrap()
        .with_username("user");
    assert_eq!(c.client_first(), RFC_CLIENT_FIRST);
    assert_eq!(
        c.handle_server_first(RFC_SERVER_FIRST).unwrap(),
        RFC_CLIENT_FINAL
    );
    c.verify_server_final(RFC_SERVER_FINAL).unwrap();
}

#[test]
fn rfc7677_server() {
    let secret = rfc_secret();
    let mut s = ScramServer::with_nonce(secret.clone(), RFC_SERVER_NONCE).unwrap();
    assert_eq!(
        s.handle_client_first(RFC_CLIENT_FIRST).unwrap(),
        RFC_SERVER_FIRST
    );
    let (server_final, client_key) = s.handle_client_final(RFC_CLIENT_FINAL).unwrap();
    assert_eq!(server_final, RFC_SERVER_FINAL);
    assert!(secret.matches_client_key(&client_key));
    // The exchange is over.
    assert!(is_malformed(s.handle_client_final(RFC_CLIENT_FINAL)));
    assert!(is_malformed(s.handle_client_first(RFC_CLIENT_FIRST)));
}

#[test]
fn python_vectors() {
    let v = py_vectors();
    let secret = ScramSecret::parse(v.secret).unwrap();
    assert_eq!(secret.iterations, 4096);
    assert_eq!(secret.salt, (1..=16).collect::<Vec<u8>>());
    assert_eq!(secret.to_string(), v.secret);
    assert_eq!(
        ScramSecret::from_password(v.password, &secret.salt, 4096).to_string(),
        v.secret
    );
    assert!(secret.matches_client_key(&v.client_key));

    let mut c = ScramClient::new_with_nonce(v.password, v.client_nonce).unwrap();
    assert_eq!(c.client_first(), v.client_first.as_bytes());
    let client_final = c.handle_server_first(v.server_first.as_bytes()).unwrap();
    assert_eq!(client_final, v.client_final.as_bytes());
    c.verify_server_final(v.server_final.as_bytes()).unwrap();

    let mut s = ScramServer::with_nonce(secret, v.server_nonce).unwrap();
    assert_eq!(
        s.handle_client_first(v.client_first.as_bytes()).unwrap(),
        v.server_first.as_bytes()
    );
    let (server_final, client_key) = s.handle_client_final(v.client_final.as_bytes()).unwrap();
    assert_eq!(server_final, v.server_final.as_bytes());
    assert_eq!(client_key, v.client_key);
}

/// Runs a whole exchange; returns the recovered ClientKey or the first error.
fn exchange(client: &mut ScramClient, server: &mut ScramServer) -> Result<[u8; 32], WireError> {
    let server_first = server.handle_client_first(&client.client_first())?;
    let client_final = client.handle_server_first(&server_first)?;
    let (server_final, client_key) = server.handle_client_final(&client_final)?;
    client.verify_server_final(&server_final)?;
    Ok(client_key)
}

#[test]
fn full_exchange() {
    let rng = SystemRandom::new();
    let secret = ScramSecret::from_password("s3cret", b"0123456789abcdef", 4096);

    let mut c = ScramClient::new("s3cret", &rng).unwrap();
    let first = c.client_first();
    assert!(first.starts_with(b"n,,n=,r="));
    assert_eq!(first.len(), 8 + 24);
    let mut s = ScramServer::new(secret.clone(), &rng);
    let client_key = exchange(&mut c, &mut s).unwrap();
    let (expected_key, server_key) = keys_from_password(
        "s3cret",
        b"0123456789abcdef",
        NonZeroU32::new(4096).unwrap(),
    );
    assert_eq!(client_key, expected_key);
    assert_eq!(server_key, secret.server_key);

    // Wrong password: the distinct AuthFailed error, SQLSTATE 28P01.
    let mut c = ScramClient::new("s3cret!", &rng).unwrap();
    let mut s = ScramServer::new(secret.clone(), &rng);
    let err = exchange(&mut c, &mut s).unwrap_err();
    assert_eq!(err, WireError::AuthFailed);
    assert_eq!(err.sqlstate(), "28P01");

    // auth_query: log in with the recovered ClientKey and the stored ServerKey, no password.
    let mut c = ScramClient::with_keys(client_key, secret.server_key, &rng).unwrap();
    let mut s = ScramServer::new(secret.clone(), &rng);
    assert_eq!(exchange(&mut c, &mut s).unwrap(), client_key);

    // Keys of another password fail; a server with the wrong ServerKey is caught by the client.
    let other = ScramSecret::from_password("other", b"0123456789abcdef", 4096);
    let mut c = ScramClient::with_keys(client_key, other.server_key, &rng).unwrap();
    let mut s = ScramServer::new(secret.clone(), &rng);
    assert_eq!(
        exchange(&mut c, &mut s).unwrap_err(),
        WireError::ServerSignatureMismatch
    );
}

#[test]
fn interoperates_with_rust_postgres_client() {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    let rng = SystemRandom::new();
    // A secret in PostgreSQL's format made by rust-postgres (random salt, 4096 iterations).
    let stored = postgres_protocol::password::scram_sha_256(b"hunter2");
    let secret = ScramSecret::parse(&stored).unwrap();
    assert_eq!(secret.to_string(), stored);

    for binding in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
        let mut c = ScramSha256::new(b"hunter2", binding);
        let mut s = ScramServer::new(secret.clone(), &rng);
        let server_first = s.handle_client_first(c.message()).unwrap();
        c.update(&server_first).unwrap();
        let (server_final, client_key) = s.handle_client_final(c.message()).unwrap();
        c.finish(&server_final).unwrap();
        assert!(secret.matches_client_key(&client_key));
    }

    let mut c = ScramSha256::new(b"hunter3", ChannelBinding::unsupported());
    let mut s = ScramServer::new(secret.clone(), &rng);
    let server_first = s.handle_client_first(c.message()).unwrap();
    c.update(&server_first).unwrap();
    assert_eq!(
        s.handle_client_final(c.message()).unwrap_err(),
        WireError::AuthFailed
    );

    // Our client against the secret rust-postgres made.
    let mut c = ScramClient::new("hunter2", &rng).unwrap();
    let mut s = ScramServer::new(secret, &rng);
    exchange(&mut c, &mut s).unwrap();
}

#[test]
fn secret_parse_errors() {
    let v = py_vectors();
    let (head, keys) = v.secret.rsplit_once('$').unwrap();
    let (stored, server) = keys.split_once(':').unwrap();
    let short_key = BASE64.encode([0u8; 31]);
    let bad = [
        "",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1$4096:AQID$a:b",
        "md5c5d9a3e7e79fd1f7e6ab27b7c5ff6b23",
        &format!("{head}${stored}"),
        head,
        &format!("{head}${stored}:{short_key}"),
        &format!("{head}${stored}:{server}x"),
        &format!("SCRAM-SHA-256$0:AQID${stored}:{server}"),
        &format!("SCRAM-SHA-256$-1:AQID${stored}:{server}"),
        &format!("SCRAM-SHA-256$99999999999:AQID${stored}:{server}"),
        &format!("SCRAM-SHA-256$4096${stored}:{server}"),
        &format!("SCRAM-SHA-256$4096:${stored}:{server}"),
        &format!("SCRAM-SHA-256$4096:!!!${stored}:{server}"),
    ];
    for s in bad {
        assert!(is_malformed(ScramSecret::parse(s)), "{s:?} accepted");
    }
    for end in 0..v.secret.len() {
        assert!(ScramSecret::parse(&v.secret[..end]).is_err());
    }
    // Iteration 0 is clamped by from_password.
    assert_eq!(ScramSecret::from_password("x", b"salt", 0).iterations, 1);
    let dbg = format!("{:?}", ScramSecret::parse(v.secret).unwrap());
    assert!(!dbg.contains(stored));
}

#[test]
fn every_prefix_is_handled_without_panic() {
    let v = py_vectors();
    let secret = ScramSecret::parse(v.secret).unwrap();
    let server_first = v.server_first.as_bytes();

    // client-first-message, server side.
    let cf = v.client_first.as_bytes();
    for end in 0..cf.len() {
        let mut s = ScramServer::with_nonce(secret.clone(), v.server_nonce).unwrap();
        let r = s.handle_client_first(&cf[..end]);
        // Only cutting the client nonce short still gives a valid message.
        if end <= "n,,n=,r=".len() {
            assert!(is_malformed(r), "prefix {end} accepted");
        }
    }

    // client-final-message, server side: every prefix breaks the proof.
    let cfin = v.client_final.as_bytes();
    for end in 0..cfin.len() {
        let mut s = ScramServer::with_nonce(secret.clone(), v.server_nonce).unwrap();
        s.handle_client_first(cf).unwrap();
        assert!(
            is_malformed(s.handle_client_final(&cfin[..end])),
            "prefix {end} accepted"
        );
    }

    // server-first-message, client side (with keys: no PBKDF2 per prefix).
    for end in 0..server_first.len() {
        let mut c =
            ScramClient::with_keys_and_nonce(v.client_key, secret.server_key, v.client_nonce)
                .unwrap();
        let r = c.handle_server_first(&server_first[..end]);
        // Cutting the iteration count ("i=4096" -> "i=4", "i=40", "i=409") leaves a valid message.
        if end < server_first.len() - 3 {
            assert!(is_malformed(r), "prefix {end} accepted");
        }
    }

    // server-final-message, client side.
    let sfin = v.server_final.as_bytes();
    let mut c =
        ScramClient::with_keys_and_nonce(v.client_key, secret.server_key, v.client_nonce).unwrap();
    c.handle_server_first(server_first).unwrap();
    for end in 0..sfin.len() {
        assert!(c.verify_server_final(&sfin[..end]).is_err());
    }
    c.verify_server_final(sfin).unwrap();

    // SASLInitialResponse.
    let mut buf = Vec::new();
    sasl_initial_response(&mut buf, SCRAM_SHA_256, cf);
    let body = &buf[5..];
    assert_eq!(
        parse_sasl_initial_response(body).unwrap(),
        (SCRAM_SHA_256, cf)
    );
    for end in 0..body.len() {
        assert!(is_malformed(parse_sasl_initial_response(&body[..end])));
    }
}

fn server_after_first() -> ScramServer {
    let v = py_vectors();
    let mut s =
        ScramServer::with_nonce(ScramSecret::parse(v.secret).unwrap(), v.server_nonce).unwrap();
    s.handle_client_first(v.client_first.as_bytes()).unwrap();
    s
}

#[test]
fn malformed_client_first() {
    let secret = rfc_secret();
    let bad: &[&[u8]] = &[
        b"",
        b"n,,",
        b"n,",
        b"n",
        b"x,,n=,r=abc",
        b"p=tls-server-end-point,,n=,r=abc",
        b"n,a=admin,n=,r=abc",
        b"n,,m=ext,n=,r=abc",
        b"n,,r=abc",
        b"n,,n=",
        b"n,,n=,r=",
        b"n,,n=,r=ab,c",
        b"n,,n=,r=a\x7fb",
        b"n,,n=,r=abc,,",
        b"n,,n=,r=abc,1=x",
        b"n,,n=\0,r=abc",
        b"n,,n=,x=abc",
    ];
    for m in bad {
        let mut s = ScramServer::with_nonce(secret.clone(), "srv").unwrap();
        assert!(
            is_malformed(s.handle_client_first(m)),
            "{:?} accepted",
            String::from_utf8_lossy(m)
        );
    }
    let mut s = ScramServer::with_nonce(secret.clone(), "srv").unwrap();
    let huge = vec![b'a'; MAX_AUTH_MESSAGE_LENGTH + 1];
    assert!(matches!(
        s.handle_client_first(&huge),
        Err(WireError::LengthTooLarge { .. })
    ));
    // Any user name, "y" and extensions are accepted.
    for ok in [
        &b"n,,n=someone,r=abc"[..],
        b"y,,n=,r=abc",
        b"n,,n=,r=abc,x=ext",
    ] {
        let mut s = ScramServer::with_nonce(secret.clone(), "srv").unwrap();
        assert_eq!(&s.handle_client_first(ok).unwrap()[..11], b"r=abcsrv,s=");
    }
    // The "y" flag must be echoed as "eSws".
    let mut s = ScramServer::with_nonce(secret.clone(), "srv").unwrap();
    s.handle_client_first(b"y,,n=,r=abc").unwrap();
    assert!(is_malformed(
        s.handle_client_final(b"c=biws,r=abcsrv,p=AAAA")
    ));
    // Out of order.
    let mut s = ScramServer::with_nonce(secret, "srv").unwrap();
    assert!(is_malformed(s.handle_client_final(RFC_CLIENT_FINAL)));
}

#[test]
fn malformed_client_final() {
    let v = py_vectors();
    let (without_proof, proof) = v.client_final.rsplit_once(",p=").unwrap();
    let nonce = format!("{}{}", v.client_nonce, v.server_nonce);
    let bad = [
        String::new(),
        without_proof.to_owned(),
        format!("{without_proof},p="),
        format!("{without_proof},p=!!!!"),
        format!("{without_proof},p={}", BASE64.encode([1u8; 31])),
        format!("{without_proof},p={proof},x=ext"),
        format!("c=eSws,r={nonce},p={proof}"),
        format!("c=biws,r={nonce}x,p={proof}"),
        format!("c=biws,r={},p={proof}", v.client_nonce),
        format!("r={nonce},p={proof}"),
        format!("c=biws,p={proof}"),
        format!("c=biws,r={nonce},1,p={proof}"),
        format!("c=biws,r={nonce},p={proof}\0"),
    ];
    for m in &bad {
        assert!(
            is_malformed(server_after_first().handle_client_final(m.as_bytes())),
            "{m:?} accepted"
        );
    }
    // Extensions before the proof are ignored by the server but part of AuthMessage: the proof no
    // longer matches.
    let m = format!("c=biws,r={nonce},x=ext,p={proof}");
    assert_eq!(
        server_after_first()
            .handle_client_final(m.as_bytes())
            .unwrap_err(),
        WireError::AuthFailed
    );
    // A proof that is valid base64 of 32 bytes but wrong.
    let m = format!("{without_proof},p={}", BASE64.encode([7u8; 32]));
    assert_eq!(
        server_after_first()
            .handle_client_final(m.as_bytes())
            .unwrap_err(),
        WireError::AuthFailed
    );
}

#[test]
fn malformed_server_first() {
    let v = py_vectors();
    let n = format!("{}{}", v.client_nonce, v.server_nonce);
    let bad = [
        String::new(),
        format!("m=ext,r={n},s=AQID,i=4096"),
        format!("r={},s=AQID,i=4096", v.client_nonce),
        format!("r=other{},s=AQID,i=4096", v.server_nonce),
        format!("r={n},s=AQID"),
        format!("r={n},i=4096"),
        "s=AQID,i=4096".to_owned(),
        format!("r={n},s=,i=4096"),
        format!("r={n},s=!!!!,i=4096"),
        format!("r={n},s=AQI,i=4096"),
        format!("r={n},s=AQID,i=0"),
        format!("r={n},s=AQID,i=-1"),
        format!("r={n},s=AQID,i=+5"),
        format!("r={n},s=AQID,i= 5"),
        format!("r={n},s=AQID,i="),
        format!("r={n},s=AQID,i={}", MAX_SCRAM_ITERATIONS + 1),
        format!("r={n},s=AQID,i=4294967296"),
        format!("r={n},s=AQID,i=99999999999999999999"),
        format!("r={n},s=AQID,i=4096,"),
        format!("r={n},i=4096,s=AQID"),
        format!("r={n}\0,s=AQID,i=4096"),
    ];
    for m in &bad {
        let mut c = ScramClient::with_keys_and_nonce([1; 32], [2; 32], v.client_nonce).unwrap();
        assert!(
            is_malformed(c.handle_server_first(m.as_bytes())),
            "{m:?} accepted"
        );
        // Nothing was sent: the client has no signature to check.
        assert!(is_malformed(
            c.verify_server_final(v.server_final.as_bytes())
        ));
    }
    let mut c = ScramClient::with_keys_and_nonce([1; 32], [2; 32], v.client_nonce).unwrap();
    c.handle_server_first(format!("r={n},s=AQID,i={MAX_SCRAM_ITERATIONS},x=ext").as_bytes())
        .unwrap();
    // Only once.
    assert!(is_malformed(
        c.handle_server_first(v.server_first.as_bytes())
    ));
}

#[test]
fn server_final_errors() {
    let v = py_vectors();
    let mut c = ScramClient::new_with_nonce(v.password, v.client_nonce).unwrap();
    c.handle_server_first(v.server_first.as_bytes()).unwrap();
    assert_eq!(
        c.verify_server_final(b"e=invalid-proof").unwrap_err(),
        WireError::ScramServerError {
            reason: "invalid-proof".into()
        }
    );
    assert_eq!(
        c.verify_server_final(format!("v={}", BASE64.encode([0u8; 32])).as_bytes())
            .unwrap_err(),
        WireError::ServerSignatureMismatch
    );
    for bad in [&b""[..], b"v=", b"v=!!!", b"x=abc", b"\0", b"e"] {
        assert!(c.verify_server_final(bad).is_err());
    }
    // Trailing extensions are allowed.
    c.verify_server_final(format!("{},x=1", v.server_final).as_bytes())
        .unwrap();
}

#[test]
fn nonces() {
    assert!(ScramClient::new_with_nonce("p", "").is_err());
    assert!(ScramClient::new_with_nonce("p", "a,b").is_err());
    assert!(ScramClient::new_with_nonce("p", "a b").is_err());
    assert!(ScramServer::with_nonce(rfc_secret(), "é").is_err());
    let rng = SystemRandom::new();
    let a = ScramClient::new("p", &rng).unwrap().client_first();
    let b = ScramClient::new("p", &rng).unwrap().client_first();
    assert_ne!(a, b);
    let c = ScramClient::new_with_nonce("p", "abc")
        .unwrap()
        .with_username("a=b,c");
    assert_eq!(c.client_first(), b"n,,n=a=3Db=2Cc,r=abc");
    let c = ScramClient::new_with_nonce("hunter2pw", "abc").unwrap();
    assert!(!format!("{c:?}").contains("hunter2pw"));
}

#[test]
fn messages() {
    fn body(buf: &[u8]) -> &[u8] {
        let h = Header::parse(buf[..5].try_into().unwrap(), 1 << 20).unwrap();
        assert_eq!(h.len + 1, buf.len());
        &buf[5..]
    }
    let mut buf = Vec::new();
    authentication_sasl(&mut buf, &[SCRAM_SHA_256]);
    assert_eq!(buf, b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0");
    let Authentication::Sasl { mechanisms } = Authentication::parse(body(&buf)).unwrap() else {
        panic!("not AuthenticationSASL");
    };
    assert_eq!(
        parse_sasl_mechanisms(mechanisms).unwrap(),
        vec![SCRAM_SHA_256.as_bytes()]
    );
    assert!(parse_sasl_mechanisms(b"SCRAM-SHA-256\0").is_err());
    assert!(parse_sasl_mechanisms(b"").is_err());
    assert_eq!(
        parse_sasl_mechanisms(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0").unwrap(),
        vec![&b"SCRAM-SHA-256-PLUS"[..], b"SCRAM-SHA-256"]
    );

    buf.clear();
    authentication_sasl_continue(&mut buf, b"r=abc");
    assert_eq!(
        Authentication::parse(body(&buf)).unwrap(),
        Authentication::SaslContinue { data: b"r=abc" }
    );
    buf.clear();
    authentication_sasl_final(&mut buf, b"v=xyz");
    assert_eq!(
        Authentication::parse(body(&buf)).unwrap(),
        Authentication::SaslFinal { data: b"v=xyz" }
    );

    buf.clear();
    sasl_response(&mut buf, b"c=biws");
    assert_eq!(buf, b"p\0\0\0\x0ac=biws");

    buf.clear();
    sasl_initial_response(&mut buf, SCRAM_SHA_256, b"n,,n=,r=x");
    assert_eq!(buf[0], b'p');
    assert_eq!(
        parse_sasl_initial_response(body(&buf)).unwrap(),
        (SCRAM_SHA_256, &b"n,,n=,r=x"[..])
    );
    assert_eq!(
        parse_sasl_initial_response(b"SCRAM-SHA-256\0\xff\xff\xff\xff").unwrap(),
        (SCRAM_SHA_256, &b""[..])
    );
    for bad in [
        &b"SCRAM-SHA-256\0\xff\xff\xff\xffx"[..],
        b"SCRAM-SHA-256\0\xff\xff\xff\xfe",
        b"SCRAM-SHA-256\0\0\0\0\x02x",
        b"SCRAM-SHA-256\0\0\0\0\x00x",
        b"SCRAM-SHA-256\0\x7f\xff\xff\xff",
        b"\xff\0\0\0\0\0",
        b"SCRAM-SHA-256",
    ] {
        assert!(is_malformed(parse_sasl_initial_response(bad)));
    }
}
