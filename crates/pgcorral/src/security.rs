//! Authentication: the client's startup negotiation, HBA, the relay of a new backend's authentication
//! exchange, and verifying a client that is served by a pooled backend (pgagroal's security.c).
//!
//! Without a vault pgcorral knows no secret. A new backend's exchange (trust, password, md5, SCRAM) is
//! relayed between client and server, and what can be safely replayed is recorded in the slot: that the
//! backend trusted the user, or a salted SHA-256 of a cleartext password. A later client of the same
//! user reuses the backend only if it can be verified from that record; an md5 or SCRAM answer is never
//! replayed, so such clients get a fresh backend.

use crate::io::{self, read_exact, read_message, write_all, IoError, Message};
use pgcorral_config::HbaMethod;
use pgcorral_shmem::{AuthMethod, SlotData};
use pgcorral_wire::messages::{self, tag, Authentication, ErrorFields};
use pgcorral_wire::{
    authentication_sasl, authentication_sasl_continue, authentication_sasl_final,
    parse_sasl_initial_response, parse_sasl_mechanisms, sasl_initial_response, sasl_response,
    ScramClient, ScramSecret, ScramServer,
};
use pgcorral_wire::{
    ct_eq, md5_password_hash, md5_salted, md5_verify, parse_startup, startup_packet_length,
    Md5Secret, StartupMessage, StartupRequest, WireError, MAX_AUTH_MESSAGE_LENGTH,
};
use ring::digest;
use std::os::fd::RawFd;
use std::time::Instant;
use thiserror::Error;

/// Why a client could not be let in. Each carries what the client is told.
#[derive(Debug, Error)]
pub enum AuthError {
    /// Send the client this FATAL error and close.
    #[error("{message}")]
    Refuse { code: &'static str, message: String },
    /// The server refused the client: its ErrorResponse was relayed already.
    #[error("the server refused the login: {0}")]
    ServerRefused(String),
    /// The server refused pgcorral's own login: tell the client the server's error.
    #[error("{message}")]
    Server { code: String, message: String },
    /// The conversation broke off (client gone, timeout): close without a reply.
    #[error("{0}")]
    Io(#[from] IoError),
}

impl AuthError {
    pub fn refuse(code: &'static str, message: impl Into<String>) -> AuthError {
        AuthError::Refuse {
            code,
            message: message.into(),
        }
    }
}

/// Sends a FATAL ErrorResponse (best effort: the client may be gone).
pub fn send_fatal(fd: RawFd, code: &str, message: &str) {
    let mut buf = Vec::with_capacity(64 + message.len());
    messages::error_response(&mut buf, &ErrorFields::fatal(code, message));
    let _ = write_all(fd, &buf, io::deadline_in(std::time::Duration::from_secs(1)));
}

/// Reads startup packets until a StartupMessage or CancelRequest: SSLRequest and GSSENCRequest are
/// answered `N` (no TLS yet, no GSS). A bad packet gets a FATAL and an error is returned.
pub fn negotiate_startup(fd: RawFd, deadline: Instant) -> Result<StartupRequest, AuthError> {
    let mut negotiations = 0;
    loop {
        let mut len = [0u8; 4];
        read_exact(fd, &mut len, deadline)?;
        let len = match startup_packet_length(len) {
            Ok(l) => l,
            Err(e) => {
                return Err(AuthError::refuse(
                    "08P01",
                    format!("invalid length of startup packet: {e}"),
                ))
            }
        };
        let mut body = vec![0u8; len - 4];
        read_exact(fd, &mut body, deadline)?;
        match parse_startup(&body) {
            Ok(StartupRequest::Ssl) | Ok(StartupRequest::GssEnc) => {
                negotiations += 1;
                if negotiations > 2 {
                    return Err(AuthError::refuse(
                        "08P01",
                        "too many encryption negotiations",
                    ));
                }
                write_all(fd, b"N", deadline)?;
            }
            Ok(other) => return Ok(other),
            Err(e @ WireError::UnsupportedProtocol { .. }) => {
                return Err(AuthError::refuse(e.sqlstate(), e.to_string()))
            }
            Err(e) => return Err(AuthError::refuse("08P01", e.to_string())),
        }
    }
}

/// Salted SHA-256 of a cleartext password, the only form of it pgcorral keeps.
pub fn password_digest(salt: &[u8; 16], password: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(salt);
    ctx.update(password);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Which recorded backends a client with this HBA method may reuse (`None`: none; it needs a fresh
/// backend whose exchange is relayed).
pub fn reuse_policy(method: HbaMethod) -> Option<fn(&SlotData) -> bool> {
    match method {
        // pgcorral trusts the client: any backend of its user and database will do.
        HbaMethod::Trust => Some(|_| true),
        // Whatever the server asks: replayable when the server trusted, or asked for a password.
        HbaMethod::All => Some(|d| matches!(d.auth(), AuthMethod::Trust | AuthMethod::Password)),
        HbaMethod::Password => Some(|d| d.auth() == AuthMethod::Password),
        // A challenge-response answer cannot be checked without the secret (vault issue).
        HbaMethod::Md5 | HbaMethod::ScramSha256 | HbaMethod::Reject => None,
    }
}

/// Verifies a client against a pooled backend's record, asking for its password when the backend did.
pub fn verify_pooled_client(
    fd: RawFd,
    method: HbaMethod,
    record: &SlotData,
    user: &str,
    deadline: Instant,
) -> Result<(), AuthError> {
    if method == HbaMethod::Trust || record.auth() == AuthMethod::Trust {
        return Ok(());
    }
    let mut buf = Vec::new();
    messages::authentication_cleartext(&mut buf);
    write_all(fd, &buf, deadline)?;
    let msg = read_client_response(fd, deadline)?;
    let password = messages::parse_password(&msg.body)
        .map_err(|e| AuthError::refuse("08P01", e.to_string()))?;
    let digest = password_digest(&record.password_salt, password);
    if ct_eq(&digest, &record.password_hash) {
        Ok(())
    } else {
        Err(AuthError::refuse(
            "28P01",
            format!("password authentication failed for user \"{user}\""),
        ))
    }
}

/// What a new backend's authentication left behind.
pub struct BackendLogin {
    pub method: AuthMethod,
    pub password_salt: [u8; 16],
    pub password_hash: [u8; 32],
    /// ParameterStatus messages as the server sent them.
    pub params: Vec<u8>,
    pub backend_key: (i32, i32),
}

impl BackendLogin {
    fn new(method: AuthMethod) -> BackendLogin {
        BackendLogin {
            method,
            password_salt: [0; 16],
            password_hash: [0; 32],
            params: Vec::new(),
            backend_key: (0, 0),
        }
    }
}

fn method_allowed(hba: HbaMethod, server: &Authentication<'_>) -> bool {
    match hba {
        HbaMethod::All | HbaMethod::Trust => true,
        HbaMethod::Password => matches!(server, Authentication::CleartextPassword),
        HbaMethod::Md5 => matches!(server, Authentication::Md5Password { .. }),
        HbaMethod::ScramSha256 => matches!(
            server,
            Authentication::Sasl { .. }
                | Authentication::SaslContinue { .. }
                | Authentication::SaslFinal { .. }
        ),
        HbaMethod::Reject => false,
    }
}

/// Sends the startup to a new backend and relays its authentication with the client, up to and including
/// ReadyForQuery. The client receives pgcorral's BackendKeyData (`client_key`), not the server's.
pub fn login_backend(
    client: RawFd,
    server: RawFd,
    startup: &StartupMessage,
    hba: HbaMethod,
    client_key: (i32, i32),
    rng: &dyn ring::rand::SecureRandom,
    deadline: Instant,
) -> Result<BackendLogin, AuthError> {
    write_all(server, &startup.encode(), deadline)?;
    let mut login = BackendLogin::new(AuthMethod::Unknown);
    let mut out = Vec::with_capacity(256);
    let mut challenged = false;
    // Authentication phase.
    loop {
        let msg = read_message(server, MAX_AUTH_MESSAGE_LENGTH, deadline)?;
        out.clear();
        match msg.tag {
            tag::AUTHENTICATION => {
                let auth = Authentication::parse(&msg.body)
                    .map_err(|e| AuthError::refuse("08P01", format!("server sent {e}")))?;
                if let Authentication::Other { code } = auth {
                    return Err(AuthError::refuse(
                        "28000",
                        format!("the server asked for an authentication method pgcorral does not support (code {code})"),
                    ));
                }
                // The final AuthenticationOk is fine once the required challenge was relayed; an Ok
                // that comes first means the server trusted the user, which the HBA method forbids.
                let allowed = match auth {
                    Authentication::Ok => {
                        challenged || matches!(hba, HbaMethod::All | HbaMethod::Trust)
                    }
                    _ => method_allowed(hba, &auth),
                };
                if !allowed {
                    return Err(AuthError::refuse(
                        "28000",
                        format!(
                            "pgcorral_hba.conf requires {} authentication but the server asked for {}; \
                             use method all, or put the user in the vault when it is supported",
                            hba_method_name(hba),
                            auth.method_name()
                        ),
                    ));
                }
                if !matches!(auth, Authentication::Ok) {
                    challenged = true;
                }
                msg.encode_into(&mut out);
                write_all(client, &out, deadline)?;
                match auth {
                    Authentication::Ok => {
                        if login.method == AuthMethod::Unknown {
                            login.method = AuthMethod::Trust;
                        }
                        break;
                    }
                    Authentication::CleartextPassword => {
                        login.method = AuthMethod::Password;
                        let answer = relay_client_answer(client, server, deadline)?;
                        let password = messages::parse_password(&answer.body)
                            .map_err(|e| AuthError::refuse("08P01", e.to_string()))?;
                        rng.fill(&mut login.password_salt)
                            .map_err(|_| AuthError::refuse("58000", "no randomness available"))?;
                        login.password_hash = password_digest(&login.password_salt, password);
                    }
                    Authentication::Md5Password { .. } => {
                        login.method = AuthMethod::Md5;
                        relay_client_answer(client, server, deadline)?;
                    }
                    Authentication::Sasl { .. } | Authentication::SaslContinue { .. } => {
                        login.method = AuthMethod::Scram;
                        relay_client_answer(client, server, deadline)?;
                    }
                    Authentication::SaslFinal { .. } | Authentication::Other { .. } => {}
                }
            }
            tag::ERROR_RESPONSE => {
                let text =
                    String::from_utf8_lossy(messages::ReceivedError::parse(&msg.body).message)
                        .into_owned();
                msg.encode_into(&mut out);
                let _ = write_all(client, &out, deadline);
                return Err(AuthError::ServerRefused(text));
            }
            tag::NEGOTIATE_PROTOCOL_VERSION | tag::NOTICE_RESPONSE => {
                msg.encode_into(&mut out);
                write_all(client, &out, deadline)?;
            }
            other => {
                return Err(AuthError::refuse(
                    "08P01",
                    format!(
                        "unexpected message type {} from the server during authentication",
                        other as char
                    ),
                ))
            }
        }
    }
    startup_phase(server, &mut login, Some((client, client_key)), deadline)?;
    Ok(login)
}

/// After AuthenticationOk: collects the server's ParameterStatus messages and key up to ReadyForQuery.
/// With `relay` (client fd, pgcorral's key for it) everything is forwarded to the client, the key being
/// replaced by pgcorral's; without it nothing is sent and a server error becomes [`AuthError::Server`].
fn startup_phase(
    server: RawFd,
    login: &mut BackendLogin,
    relay: Option<(RawFd, (i32, i32))>,
    deadline: Instant,
) -> Result<(), AuthError> {
    let mut out = Vec::with_capacity(256);
    loop {
        let msg = read_message(server, MAX_AUTH_MESSAGE_LENGTH, deadline)?;
        out.clear();
        match msg.tag {
            tag::PARAMETER_STATUS => {
                msg.encode_into(&mut login.params);
                msg.encode_into(&mut out);
            }
            tag::BACKEND_KEY_DATA => {
                login.backend_key = messages::parse_backend_key_data(&msg.body)
                    .map_err(|e| AuthError::refuse("08P01", format!("server sent {e}")))?;
                if let Some((_, key)) = relay {
                    messages::backend_key_data(&mut out, key.0, key.1);
                }
            }
            tag::READY_FOR_QUERY => {
                if let Some((client, _)) = relay {
                    msg.encode_into(&mut out);
                    write_all(client, &out, deadline)?;
                }
                return Ok(());
            }
            tag::ERROR_RESPONSE => {
                let e = messages::ReceivedError::parse(&msg.body);
                let message = String::from_utf8_lossy(e.message).into_owned();
                return Err(match relay {
                    Some((client, _)) => {
                        msg.encode_into(&mut out);
                        let _ = write_all(client, &out, deadline);
                        AuthError::ServerRefused(message)
                    }
                    None => AuthError::Server {
                        code: String::from_utf8_lossy(e.code).into_owned(),
                        message,
                    },
                });
            }
            tag::NOTICE_RESPONSE | tag::NEGOTIATE_PROTOCOL_VERSION => msg.encode_into(&mut out),
            other => {
                return Err(AuthError::refuse(
                    "08P01",
                    format!(
                        "unexpected message type {} from the server during start-up",
                        other as char
                    ),
                ))
            }
        }
        if let Some((client, _)) = relay {
            write_all(client, &out, deadline)?;
        }
    }
}

fn relay_client_answer(
    client: RawFd,
    server: RawFd,
    deadline: Instant,
) -> Result<Message, AuthError> {
    let answer = read_client_response(client, deadline)?;
    let mut out = Vec::with_capacity(answer.body.len() + 5);
    answer.encode_into(&mut out);
    write_all(server, &out, deadline)?;
    Ok(answer)
}

/// The HBA method's name as written in the file.
pub fn hba_method_name(m: HbaMethod) -> &'static str {
    match m {
        HbaMethod::Trust => "trust",
        HbaMethod::Reject => "reject",
        HbaMethod::Password => "password",
        HbaMethod::Md5 => "md5",
        HbaMethod::ScramSha256 => "scram-sha-256",
        HbaMethod::All => "all",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_digest_depends_on_salt_and_password() {
        let a = password_digest(&[1; 16], b"secret");
        assert_eq!(a, password_digest(&[1; 16], b"secret"));
        assert_ne!(a, password_digest(&[2; 16], b"secret"));
        assert_ne!(a, password_digest(&[1; 16], b"secreT"));
    }

    #[test]
    fn challenge_response_methods_never_reuse() {
        assert!(reuse_policy(HbaMethod::Md5).is_none());
        assert!(reuse_policy(HbaMethod::ScramSha256).is_none());
        assert!(reuse_policy(HbaMethod::Trust).is_some());
    }
}

/// A secret pgcorral can verify a client with.
#[derive(Clone)]
pub enum ClientSecret {
    /// The cleartext password (from the vault).
    Password(String),
    /// A SCRAM-SHA-256 secret as PostgreSQL stores it (from auth_query).
    Scram(ScramSecret),
    /// An MD5 hash as PostgreSQL stores it, `md5` + 32 hex digits (from auth_query).
    Md5(String),
}

impl ClientSecret {
    /// Interprets a `pg_authid.rolpassword` value.
    pub fn from_stored(stored: &str) -> Option<ClientSecret> {
        if stored.starts_with("SCRAM-SHA-256$") {
            ScramSecret::parse(stored).ok().map(ClientSecret::Scram)
        } else if stored.len() == 35 && stored.starts_with("md5") {
            Some(ClientSecret::Md5(stored.to_string()))
        } else {
            None
        }
    }
}

/// What pgcorral can log in to PostgreSQL with.
#[derive(Clone)]
pub enum BackendCredential {
    Password(String),
    /// Recovered from a client's SCRAM proof (auth_query): enough to log in as that user.
    ScramKeys {
        client_key: [u8; 32],
        server_key: [u8; 32],
    },
    Md5Hash(String),
}

fn random_bytes<const N: usize>(rng: &dyn ring::rand::SecureRandom) -> Result<[u8; N], AuthError> {
    let mut b = [0u8; N];
    rng.fill(&mut b)
        .map_err(|_| AuthError::refuse("58000", "no randomness available"))?;
    Ok(b)
}

fn auth_failed(user: &str) -> AuthError {
    AuthError::refuse(
        "28P01",
        format!("password authentication failed for user \"{user}\""),
    )
}

fn read_client_response(fd: RawFd, deadline: Instant) -> Result<Message, AuthError> {
    let msg = read_message(fd, MAX_AUTH_MESSAGE_LENGTH, deadline)?;
    if msg.tag != tag::PASSWORD {
        return Err(AuthError::refuse(
            "08P01",
            format!(
                "expected an authentication response, got message type {}",
                msg.tag as char
            ),
        ));
    }
    Ok(msg)
}

/// Verifies a client with a secret pgcorral holds, by the HBA method (`all`: SCRAM-SHA-256, or MD5
/// when only an MD5 hash is known). Does not send AuthenticationOk: the caller does, once a backend
/// is ready. Returns what the exchange taught about logging in to PostgreSQL as that user.
pub fn authenticate_client(
    fd: RawFd,
    method: HbaMethod,
    user: &str,
    secret: &ClientSecret,
    rng: &dyn ring::rand::SecureRandom,
    deadline: Instant,
) -> Result<Option<BackendCredential>, AuthError> {
    #[derive(PartialEq)]
    enum Use {
        Cleartext,
        Md5,
        Scram,
    }
    let how = match method {
        HbaMethod::Trust => return Ok(None),
        HbaMethod::Reject => {
            return Err(AuthError::refuse("28000", "rejected by pgcorral_hba.conf"))
        }
        HbaMethod::Password => Use::Cleartext,
        // As PostgreSQL does: md5 in the HBA file with a SCRAM secret means SCRAM.
        HbaMethod::Md5 => match secret {
            ClientSecret::Scram(_) => Use::Scram,
            _ => Use::Md5,
        },
        HbaMethod::ScramSha256 => Use::Scram,
        HbaMethod::All => match secret {
            ClientSecret::Md5(_) => Use::Md5,
            _ => Use::Scram,
        },
    };
    let mut out = Vec::with_capacity(128);
    match how {
        Use::Cleartext => {
            messages::authentication_cleartext(&mut out);
            write_all(fd, &out, deadline)?;
            let msg = read_client_response(fd, deadline)?;
            let given = messages::parse_password(&msg.body)
                .map_err(|e| AuthError::refuse("08P01", e.to_string()))?;
            let given = std::str::from_utf8(given).map_err(|_| auth_failed(user))?;
            let ok = match secret {
                // Digests first: comparing the passwords themselves would leak their length.
                ClientSecret::Password(p) => ct_eq(
                    digest::digest(&digest::SHA256, given.as_bytes()).as_ref(),
                    digest::digest(&digest::SHA256, p.as_bytes()).as_ref(),
                ),
                ClientSecret::Md5(h) => {
                    ct_eq(md5_password_hash(user, given).as_bytes(), h.as_bytes())
                }
                ClientSecret::Scram(s) => {
                    let derived = ScramSecret::from_password(given, &s.salt, s.iterations);
                    ct_eq(&derived.stored_key, &s.stored_key)
                        && ct_eq(&derived.server_key, &s.server_key)
                }
            };
            if !ok {
                return Err(auth_failed(user));
            }
            Ok(Some(BackendCredential::Password(given.to_string())))
        }
        Use::Md5 => {
            let salt: [u8; 4] = random_bytes(rng)?;
            messages::authentication_md5(&mut out, salt);
            write_all(fd, &out, deadline)?;
            let msg = read_client_response(fd, deadline)?;
            let answer = messages::parse_password(&msg.body)
                .map_err(|e| AuthError::refuse("08P01", e.to_string()))?;
            let stored = match secret {
                ClientSecret::Password(p) => md5_password_hash(user, p),
                ClientSecret::Md5(h) => h.clone(),
                ClientSecret::Scram(_) => return Err(auth_failed(user)),
            };
            if !md5_verify(Md5Secret::Stored(&stored), user, salt, answer) {
                return Err(auth_failed(user));
            }
            Ok(Some(BackendCredential::Md5Hash(stored)))
        }
        Use::Scram => {
            let server_secret = match secret {
                ClientSecret::Password(p) => {
                    // A fresh salt per client: nothing the client sees is reusable elsewhere.
                    let salt: [u8; 16] = random_bytes(rng)?;
                    ScramSecret::from_password(p, &salt, 4096)
                }
                ClientSecret::Scram(s) => s.clone(),
                ClientSecret::Md5(_) => {
                    log::info!(
                        "user \"{user}\" has only an MD5 secret; scram-sha-256 cannot be verified"
                    );
                    return Err(auth_failed(user));
                }
            };
            let server_key = server_secret.server_key;
            let mut scram = ScramServer::new(server_secret, rng);
            scram_sasl(&mut out, &["SCRAM-SHA-256"]);
            write_all(fd, &out, deadline)?;
            let first = read_client_response(fd, deadline)?;
            let (mechanism, data) = parse_sasl_initial_response(&first.body)
                .map_err(|e| AuthError::refuse("08P01", e.to_string()))?;
            if mechanism != "SCRAM-SHA-256" {
                return Err(AuthError::refuse(
                    "28000",
                    format!(
                        "client selected an invalid SASL authentication mechanism \"{mechanism}\""
                    ),
                ));
            }
            let server_first = scram
                .handle_client_first(data)
                .map_err(|e| AuthError::refuse("08P01", e.to_string()))?;
            out.clear();
            authentication_sasl_continue(&mut out, &server_first);
            write_all(fd, &out, deadline)?;
            let last = read_client_response(fd, deadline)?;
            let (server_final, client_key) = match scram.handle_client_final(&last.body) {
                Ok(r) => r,
                Err(WireError::AuthFailed) => return Err(auth_failed(user)),
                Err(e) => return Err(AuthError::refuse("08P01", e.to_string())),
            };
            out.clear();
            authentication_sasl_final(&mut out, &server_final);
            write_all(fd, &out, deadline)?;
            Ok(Some(BackendCredential::ScramKeys {
                client_key,
                server_key,
            }))
        }
    }
}

/// The method [`authenticate_client`] uses for an HBA method and a secret, for logs.
pub fn effective_method_name(method: HbaMethod, secret: &ClientSecret) -> &'static str {
    match (method, secret) {
        (HbaMethod::Trust, _) => "trust",
        (HbaMethod::Password, _) => "password",
        (HbaMethod::Md5, ClientSecret::Scram(_)) => "scram-sha-256",
        (HbaMethod::Md5, _) => "md5",
        (HbaMethod::All, ClientSecret::Md5(_)) => "md5",
        (HbaMethod::Reject, _) => "reject",
        _ => "scram-sha-256",
    }
}

fn scram_sasl(out: &mut Vec<u8>, mechanisms: &[&str]) {
    authentication_sasl(out, mechanisms);
}

/// Sends the startup to a new backend and authenticates as the user with `credential`, whatever the
/// server asks; collects its ParameterStatus messages and key up to ReadyForQuery. Nothing is sent to
/// the client. A server error becomes [`AuthError::Server`] with the server's SQLSTATE.
pub fn login_backend_as_pooler(
    server: RawFd,
    startup: &StartupMessage,
    credential: &BackendCredential,
    rng: &dyn ring::rand::SecureRandom,
    deadline: Instant,
) -> Result<BackendLogin, AuthError> {
    let user = startup.user().unwrap_or("");
    write_all(server, &startup.encode(), deadline)?;
    let mut login = BackendLogin::new(AuthMethod::Pooler);
    let mut scram: Option<ScramClient> = None;
    let mut out = Vec::with_capacity(256);
    let missing = |what: &str| {
        AuthError::refuse(
            "28000",
            format!("the server asks for {what} authentication for user \"{user}\", which pgcorral cannot do with the secret it holds"),
        )
    };
    loop {
        let msg = read_message(server, MAX_AUTH_MESSAGE_LENGTH, deadline)?;
        out.clear();
        match msg.tag {
            tag::AUTHENTICATION => {
                let auth = Authentication::parse(&msg.body)
                    .map_err(|e| AuthError::refuse("08P01", format!("server sent {e}")))?;
                match auth {
                    Authentication::Ok => break,
                    Authentication::CleartextPassword => match credential {
                        BackendCredential::Password(p) => messages::password(&mut out, p),
                        _ => return Err(missing("password")),
                    },
                    Authentication::Md5Password { salt } => {
                        let stored = match credential {
                            BackendCredential::Password(p) => md5_password_hash(user, p),
                            BackendCredential::Md5Hash(h) => h.clone(),
                            BackendCredential::ScramKeys { .. } => return Err(missing("md5")),
                        };
                        messages::password(&mut out, &md5_salted(&stored, salt));
                    }
                    Authentication::Sasl { mechanisms } => {
                        let offered = parse_sasl_mechanisms(mechanisms)
                            .map_err(|e| AuthError::refuse("08P01", format!("server sent {e}")))?;
                        if !offered.iter().any(|m| *m == b"SCRAM-SHA-256") {
                            return Err(missing("SASL (without SCRAM-SHA-256)"));
                        }
                        let client = match credential {
                            BackendCredential::Password(p) => ScramClient::new(p, rng),
                            BackendCredential::ScramKeys {
                                client_key,
                                server_key,
                            } => ScramClient::with_keys(*client_key, *server_key, rng),
                            BackendCredential::Md5Hash(_) => return Err(missing("scram-sha-256")),
                        }
                        .map_err(|e| AuthError::refuse("58000", e.to_string()))?;
                        sasl_initial_response(&mut out, "SCRAM-SHA-256", &client.client_first());
                        scram = Some(client);
                    }
                    Authentication::SaslContinue { data } => {
                        let Some(client) = scram.as_mut() else {
                            return Err(missing("out-of-order SASL"));
                        };
                        let reply = client.handle_server_first(data).map_err(|e| {
                            AuthError::refuse("08P01", format!("SCRAM with the server: {e}"))
                        })?;
                        sasl_response(&mut out, &reply);
                    }
                    Authentication::SaslFinal { data } => {
                        let Some(client) = scram.as_ref() else {
                            return Err(missing("out-of-order SASL"));
                        };
                        client.verify_server_final(data).map_err(|e| {
                            AuthError::refuse("08P01", format!("the server's SCRAM signature: {e}"))
                        })?;
                    }
                    Authentication::Other { code } => {
                        return Err(missing(&format!("method {code}")))
                    }
                }
                if !out.is_empty() {
                    write_all(server, &out, deadline)?;
                }
            }
            tag::ERROR_RESPONSE => {
                let e = messages::ReceivedError::parse(&msg.body);
                return Err(AuthError::Server {
                    code: String::from_utf8_lossy(e.code).into_owned(),
                    message: String::from_utf8_lossy(e.message).into_owned(),
                });
            }
            tag::NOTICE_RESPONSE | tag::NEGOTIATE_PROTOCOL_VERSION => {}
            other => {
                return Err(AuthError::refuse(
                    "08P01",
                    format!(
                        "unexpected message type {} from the server during login",
                        other as char
                    ),
                ))
            }
        }
    }
    startup_phase(server, &mut login, None, deadline)?;
    Ok(login)
}
