//! Remote management (`pgcorral-ctl -h HOST -p PORT -U USER`): a PostgreSQL-protocol connection to
//! the daemon's `management` port with database `admin`, SCRAM-SHA-256 against the daemon's admins
//! file, then one control frame each way (doc/management.md).
//!
//! ```text
//! -> StartupMessage user=USER database=admin
//! <- AuthenticationSASL [SCRAM-SHA-256]      -> SASLInitialResponse
//! <- AuthenticationSASLContinue              -> SASLResponse
//! <- AuthenticationSASLFinal (verified)
//! <- AuthenticationOk
//! -> u32 BE length + JSON request
//! <- u32 BE length + JSON response           (then the daemon closes)
//! ```
//!
//! Before AuthenticationOk the daemon reports a refusal as an ErrorResponse: 28P01 for a bad password
//! (an unknown admin looks the same), 28000 when its HBA refuses the connection.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use pgcorral_wire::messages::{Authentication, Header, ReceivedError};
use pgcorral_wire::{
    parse_sasl_mechanisms, sasl_initial_response, sasl_response, ScramClient, StartupMessage,
    WireError, MAX_AUTH_MESSAGE_LENGTH, PROTOCOL_3_0, SCRAM_SHA_256,
};
use ring::rand::SystemRandom;

use crate::frame;

/// The database name the daemon requires of management connections.
pub const ADMIN_DATABASE: &str = "admin";

/// Why a remote exchange failed.
#[derive(Debug, PartialEq, Eq)]
pub enum RemoteError {
    /// The daemon refused the credentials (28P01, 28000 or any 28xxx, a SCRAM failure, or a method
    /// this client will not use).
    Auth(String),
    /// The daemon answered the startup with another error (e.g. 57P03 while shutting down, 53300).
    Refused(String),
    /// No connection, a timeout, or bytes that are not the protocol.
    Unreachable(String),
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteError::Auth(m) | RemoteError::Refused(m) | RemoteError::Unreachable(m) => {
                f.write_str(m)
            }
        }
    }
}

/// Opens a TCP connection to `host:port` (every address it resolves to, in turn).
pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, RemoteError> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| RemoteError::Unreachable(format!("cannot resolve {host}: {e}")))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                s.set_read_timeout(Some(timeout))
                    .and_then(|_| s.set_write_timeout(Some(timeout)))
                    .map_err(|e| RemoteError::Unreachable(format!("{addr}: {e}")))?;
                return Ok(s);
            }
            Err(e) => last = Some(format!("cannot connect to {addr}: {e}")),
        }
    }
    Err(RemoteError::Unreachable(last.unwrap_or_else(|| {
        format!("{host} resolves to no address")
    })))
}

fn io_err(what: &str, e: io::Error) -> RemoteError {
    let e = match e.kind() {
        io::ErrorKind::UnexpectedEof => "the daemon closed the connection".to_string(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".to_string(),
        _ => e.to_string(),
    };
    RemoteError::Unreachable(format!("{what}: {e}"))
}

fn wire_err(e: WireError) -> RemoteError {
    RemoteError::Unreachable(format!("protocol error: {e}"))
}

/// Reads one regular message (tag and body), at most [`MAX_AUTH_MESSAGE_LENGTH`] long.
fn read_message(s: &mut impl Read) -> Result<(u8, Vec<u8>), RemoteError> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head)
        .map_err(|e| io_err("reading the daemon's reply", e))?;
    let h = Header::parse(head, MAX_AUTH_MESSAGE_LENGTH).map_err(wire_err)?;
    let mut body = vec![0u8; h.body_len()];
    s.read_exact(&mut body)
        .map_err(|e| io_err("reading the daemon's reply", e))?;
    Ok((h.tag, body))
}

/// An ErrorResponse during startup as a [`RemoteError`].
fn startup_error(body: &[u8]) -> RemoteError {
    let e = ReceivedError::parse(body);
    let code = String::from_utf8_lossy(e.code).into_owned();
    let msg = format!("{} (SQLSTATE {code})", String::from_utf8_lossy(e.message));
    if code.starts_with("28") {
        RemoteError::Auth(msg)
    } else {
        RemoteError::Refused(msg)
    }
}

fn send(s: &mut impl Write, bytes: &[u8]) -> Result<(), RemoteError> {
    s.write_all(bytes)
        .and_then(|_| s.flush())
        .map_err(|e| io_err("sending to the daemon", e))
}

/// Runs the startup and SCRAM-SHA-256 exchange as `user` on an open connection; returns once the
/// daemon sent AuthenticationOk after a SCRAM exchange whose server signature checked out.
pub fn authenticate(
    s: &mut (impl Read + Write),
    user: &str,
    password: &str,
    rng: &SystemRandom,
) -> Result<(), RemoteError> {
    let startup = StartupMessage {
        major: (PROTOCOL_3_0 >> 16) as u16,
        minor: (PROTOCOL_3_0 & 0xffff) as u16,
        params: vec![
            ("user".into(), user.into()),
            ("database".into(), ADMIN_DATABASE.into()),
            ("application_name".into(), "pgcorral-ctl".into()),
        ],
    };
    send(s, &startup.encode())?;
    let mut scram: Option<ScramClient> = None;
    let mut verified = false;
    loop {
        let (tag, body) = read_message(s)?;
        match tag {
            b'E' => return Err(startup_error(&body)),
            // NoticeResponse, ParameterStatus: nothing to do.
            b'N' | b'S' => continue,
            b'R' => {}
            other => {
                return Err(RemoteError::Unreachable(format!(
                    "protocol error: unexpected message '{}' during authentication",
                    other.escape_ascii()
                )))
            }
        }
        match Authentication::parse(&body).map_err(wire_err)? {
            Authentication::Sasl { mechanisms } => {
                if scram.is_some() {
                    return Err(RemoteError::Unreachable(
                        "protocol error: AuthenticationSASL twice".into(),
                    ));
                }
                let offered = parse_sasl_mechanisms(mechanisms).map_err(wire_err)?;
                if !offered.iter().any(|m| *m == SCRAM_SHA_256.as_bytes()) {
                    return Err(RemoteError::Auth(
                        "the daemon does not offer SCRAM-SHA-256".into(),
                    ));
                }
                let client = ScramClient::new(password, rng)
                    .map_err(|e| RemoteError::Unreachable(format!("SCRAM: {e}")))?;
                let mut out = Vec::new();
                sasl_initial_response(&mut out, SCRAM_SHA_256, &client.client_first());
                send(s, &out)?;
                scram = Some(client);
            }
            Authentication::SaslContinue { data } => {
                let client = scram.as_mut().ok_or_else(|| {
                    RemoteError::Unreachable("protocol error: SASLContinue before SASL".into())
                })?;
                let reply = client.handle_server_first(data).map_err(wire_err)?;
                let mut out = Vec::new();
                sasl_response(&mut out, &reply);
                send(s, &out)?;
            }
            Authentication::SaslFinal { data } => {
                let client = scram.as_ref().ok_or_else(|| {
                    RemoteError::Unreachable("protocol error: SASLFinal before SASL".into())
                })?;
                match client.verify_server_final(data) {
                    Ok(()) => verified = true,
                    Err(WireError::ServerSignatureMismatch) => {
                        return Err(RemoteError::Auth(
                            "the daemon's SCRAM signature is wrong (it does not know the password)"
                                .into(),
                        ))
                    }
                    Err(WireError::ScramServerError { reason }) => {
                        return Err(RemoteError::Auth(format!("SCRAM error: {reason}")))
                    }
                    Err(e) => return Err(wire_err(e)),
                }
            }
            Authentication::Ok if verified => return Ok(()),
            // Mutual authentication is required: an Ok without a verified SCRAM exchange could come
            // from anything listening on that port.
            Authentication::Ok => {
                return Err(RemoteError::Auth(
                    "the daemon accepted without SCRAM-SHA-256 (refusing: it did not prove it knows the password)"
                        .into(),
                ))
            }
            other => {
                return Err(RemoteError::Auth(format!(
                    "the daemon asks for {} authentication; pgcorral-ctl only uses SCRAM-SHA-256",
                    other.method_name()
                )))
            }
        }
    }
}

/// Authenticates, sends the control frame `payload` and returns the response frame's body.
pub fn exchange(
    s: &mut (impl Read + Write),
    user: &str,
    password: &str,
    payload: &[u8],
) -> Result<Vec<u8>, RemoteError> {
    let rng = SystemRandom::new();
    authenticate(s, user, password, &rng)?;
    frame::write_frame(s, payload).map_err(|e| io_err("cannot send the request", e))?;
    frame::read_frame(s, frame::MAX_RESPONSE)
        .map_err(|e| RemoteError::Unreachable(format!("no valid response from the daemon: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgcorral_wire::messages::{authentication_ok, error_response, ErrorFields};
    use pgcorral_wire::{
        authentication_sasl, authentication_sasl_continue, authentication_sasl_final,
        parse_sasl_initial_response, parse_startup, ScramSecret, ScramServer, StartupRequest,
    };
    use std::net::TcpListener;

    /// What the fake daemon does after reading the startup packet.
    #[derive(Clone, Copy)]
    enum Script {
        /// SCRAM against `password`, then AuthenticationOk and one frame each way.
        Scram { password: &'static str },
        /// An ErrorResponse with this SQLSTATE.
        Fatal(&'static str),
        /// AuthenticationOk straight away.
        OkWithoutAuth,
        /// AuthenticationCleartextPassword.
        Cleartext,
        /// Garbage instead of a message.
        Garbage,
        /// SCRAM, then a final message with a wrong signature.
        WrongSignature { password: &'static str },
    }

    fn read_msg(s: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).unwrap();
        let h = Header::parse(head, 1 << 16).unwrap();
        let mut body = vec![0u8; h.body_len()];
        s.read_exact(&mut body).unwrap();
        (h.tag, body)
    }

    /// What the fake daemon saw: the startup parameters and the request (if one came).
    type Seen = (Vec<(String, String)>, Option<Vec<u8>>);

    /// A fake management port; the thread returns what it saw.
    fn fake_daemon(script: Script) -> (u16, std::thread::JoinHandle<Seen>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).unwrap();
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            s.read_exact(&mut body).unwrap();
            let StartupRequest::Startup(m) = parse_startup(&body).unwrap() else {
                panic!("not a StartupMessage")
            };
            let params = m.params.clone();
            let mut out = Vec::new();
            let scram = |s: &mut TcpStream, password: &str, tamper: bool| -> bool {
                let rng = SystemRandom::new();
                let secret = ScramSecret::from_password(password, b"0123456789abcdef", 4096);
                let mut server = ScramServer::new(secret, &rng);
                let mut out = Vec::new();
                authentication_sasl(&mut out, &[SCRAM_SHA_256]);
                s.write_all(&out).unwrap();
                let (tag, body) = read_msg(s);
                assert_eq!(tag, b'p');
                let (mech, data) = parse_sasl_initial_response(&body).unwrap();
                assert_eq!(mech, SCRAM_SHA_256);
                let first = server.handle_client_first(data).unwrap();
                out.clear();
                authentication_sasl_continue(&mut out, &first);
                s.write_all(&out).unwrap();
                let (tag, body) = read_msg(s);
                assert_eq!(tag, b'p');
                out.clear();
                match server.handle_client_final(&body) {
                    Ok(fin) => {
                        let mut fin = fin.0;
                        if tamper {
                            fin = b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_vec();
                        }
                        authentication_sasl_final(&mut out, &fin);
                        authentication_ok(&mut out);
                        s.write_all(&out).unwrap();
                        true
                    }
                    Err(_) => {
                        error_response(
                            &mut out,
                            &ErrorFields::fatal("28P01", "password authentication failed"),
                        );
                        s.write_all(&out).unwrap();
                        false
                    }
                }
            };
            let authenticated = match script {
                Script::Scram { password } => scram(&mut s, password, false),
                Script::WrongSignature { password } => scram(&mut s, password, true),
                Script::Fatal(code) => {
                    error_response(&mut out, &ErrorFields::fatal(code, "refused"));
                    s.write_all(&out).unwrap();
                    false
                }
                Script::OkWithoutAuth => {
                    authentication_ok(&mut out);
                    s.write_all(&out).unwrap();
                    false
                }
                Script::Cleartext => {
                    s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).unwrap();
                    false
                }
                Script::Garbage => {
                    s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
                    false
                }
            };
            if !authenticated {
                return (params, None);
            }
            let req = match frame::read_frame(&mut s, frame::MAX_REQUEST) {
                Ok(r) => r,
                Err(_) => return (params, None),
            };
            let _ = s.write_all(&frame::encode(
                br#"{"version":1,"command":"ping","status":"ok","result":{"pid":7}}"#,
            ));
            (params, Some(req))
        });
        (port, h)
    }

    fn run(script: Script, password: &str) -> (Result<Vec<u8>, RemoteError>, Seen) {
        let (port, h) = fake_daemon(script);
        let mut s = connect("127.0.0.1", port, Duration::from_secs(10)).unwrap();
        let r = exchange(
            &mut s,
            "admin",
            password,
            br#"{"version":1,"command":"ping"}"#,
        );
        drop(s);
        (r, h.join().unwrap())
    }

    #[test]
    fn scram_then_one_frame_each_way() {
        let (r, (params, req)) = run(
            Script::Scram {
                password: "adminpw",
            },
            "adminpw",
        );
        let body = r.unwrap();
        assert_eq!(
            body,
            br#"{"version":1,"command":"ping","status":"ok","result":{"pid":7}}"#.to_vec()
        );
        assert!(
            params.contains(&("user".into(), "admin".into())),
            "{params:?}"
        );
        assert!(
            params.contains(&("database".into(), "admin".into())),
            "{params:?}"
        );
        assert_eq!(req.unwrap(), br#"{"version":1,"command":"ping"}"#.to_vec());
    }

    #[test]
    fn wrong_password_is_an_authentication_failure() {
        let (r, (_, req)) = run(
            Script::Scram {
                password: "adminpw",
            },
            "wrong",
        );
        match r {
            Err(RemoteError::Auth(m)) => assert!(m.contains("28P01"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(req.is_none(), "a request was sent after a failed login");
    }

    #[test]
    fn hba_refusal_is_an_authentication_failure() {
        let (r, _) = run(Script::Fatal("28000"), "x");
        assert!(
            matches!(r, Err(RemoteError::Auth(ref m)) if m.contains("28000")),
            "{r:?}"
        );
    }

    #[test]
    fn other_startup_errors_are_refusals() {
        let (r, _) = run(Script::Fatal("57P03"), "x");
        assert!(
            matches!(r, Err(RemoteError::Refused(ref m)) if m.contains("57P03")),
            "{r:?}"
        );
    }

    #[test]
    fn ok_without_scram_is_refused() {
        let (r, (_, req)) = run(Script::OkWithoutAuth, "adminpw");
        assert!(matches!(r, Err(RemoteError::Auth(_))), "{r:?}");
        assert!(req.is_none());
    }

    #[test]
    fn cleartext_is_refused() {
        let (r, _) = run(Script::Cleartext, "adminpw");
        match r {
            Err(RemoteError::Auth(m)) => assert!(m.contains("password"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_server_signature_is_refused() {
        let (r, (_, req)) = run(
            Script::WrongSignature {
                password: "adminpw",
            },
            "adminpw",
        );
        assert!(matches!(r, Err(RemoteError::Auth(_))), "{r:?}");
        assert!(req.is_none());
    }

    #[test]
    fn garbage_is_unreachable() {
        let (r, _) = run(Script::Garbage, "adminpw");
        assert!(matches!(r, Err(RemoteError::Unreachable(_))), "{r:?}");
    }

    #[test]
    fn closed_port_is_unreachable() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        match connect("127.0.0.1", port, Duration::from_secs(5)) {
            Err(RemoteError::Unreachable(m)) => assert!(m.contains("127.0.0.1"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            connect("no-such-host.invalid", 1, Duration::from_secs(5)),
            Err(RemoteError::Unreachable(_))
        ));
    }
}
