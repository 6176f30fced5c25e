//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL applies it, both ends, no I/O.
//!
//! * No channel binding: the client sends the gs2 header `n,,` (`y,,` is accepted from clients, since
//!   pgcorral never offers `SCRAM-SHA-256-PLUS`); `p=` and an authorization identity are refused.
//! * The user name in client-first-message is ignored (PostgreSQL takes it from the startup packet);
//!   [`ScramClient`] sends it empty (`n=,r=...`) as libpq does, the server side accepts any `n=`.
//! * Nonces are 18 random bytes in base64, as PostgreSQL makes them.
//! * SASLprep: PostgreSQL normalises the password with SASLprep (RFC 4013) and falls back to the raw
//!   bytes when the password is not valid for it. pgcorral always uses the raw UTF-8 bytes. That is
//!   exactly PostgreSQL's result for every ASCII password (SASLprep maps printable ASCII to itself
//!   and refuses ASCII control characters, so PostgreSQL falls back to the raw bytes) and for every
//!   non-ASCII password already in NFKC form without non-ASCII spaces or "mapped to nothing" code
//!   points (soft hyphen, zero-width joiners, ...). **Limitation:** a password that SASLprep would
//!   change (e.g. containing U+00A0 NO-BREAK SPACE or a decomposed accent) derives different keys than
//!   PostgreSQL's, so authentication with it fails.
//!
//! Message bodies of the frontend SASL messages and the backend Authentication SASL messages are
//! written by the functions at the end of this module in the style of [`crate::messages`].

use std::fmt;
use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::rand::SecureRandom;
use ring::{digest, hmac, pbkdf2};

use crate::ct::ct_eq;
use crate::messages::tag;
use crate::{WireError, MAX_AUTH_MESSAGE_LENGTH};

/// The SASL mechanism name.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// PostgreSQL's default iteration count (`scram_iterations`).
pub const DEFAULT_SCRAM_ITERATIONS: u32 = 4096;
/// Most iterations [`ScramClient`] accepts from a server: each costs two HMACs, so a hostile
/// server could otherwise keep a worker busy for minutes.
pub const MAX_SCRAM_ITERATIONS: u32 = 1 << 20;
/// Length of a SHA-256 key.
pub const SCRAM_KEY_LEN: usize = 32;
/// Random bytes in a nonce (PostgreSQL's `SCRAM_RAW_NONCE_LEN`).
const RAW_NONCE_LEN: usize = 18;

fn malformed(what: &'static str, reason: &'static str) -> WireError {
    WireError::Malformed { what, reason }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; SCRAM_KEY_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; SCRAM_KEY_LEN];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; SCRAM_KEY_LEN] {
    let mut out = [0u8; SCRAM_KEY_LEN];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

fn xor(a: &[u8; SCRAM_KEY_LEN], b: &[u8; SCRAM_KEY_LEN]) -> [u8; SCRAM_KEY_LEN] {
    let mut out = [0u8; SCRAM_KEY_LEN];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

/// The password bytes SCRAM hashes. See the module documentation for how this differs from
/// PostgreSQL's SASLprep.
fn prepared_password(password: &str) -> &[u8] {
    password.as_bytes()
}

/// SaltedPassword, then (ClientKey, ServerKey).
fn keys_from_password(
    password: &str,
    salt: &[u8],
    iterations: NonZeroU32,
) -> ([u8; SCRAM_KEY_LEN], [u8; SCRAM_KEY_LEN]) {
    let mut salted = [0u8; SCRAM_KEY_LEN];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        prepared_password(password),
        &mut salted,
    );
    (
        hmac_sha256(&salted, &[b"Client Key"]),
        hmac_sha256(&salted, &[b"Server Key"]),
    )
}

fn decode_key(what: &'static str, value: &[u8]) -> Result<[u8; SCRAM_KEY_LEN], WireError> {
    let bytes = BASE64
        .decode(value)
        .map_err(|_| malformed(what, "invalid base64"))?;
    bytes
        .try_into()
        .map_err(|_| malformed(what, "key is not 32 bytes long"))
}

/// A nonce is printable ASCII without a comma (RFC 5802 `printable`).
fn valid_nonce(nonce: &[u8]) -> bool {
    !nonce.is_empty()
        && nonce
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn random_nonce(rng: &dyn SecureRandom) -> Result<String, WireError> {
    let mut raw = [0u8; RAW_NONCE_LEN];
    rng.fill(&mut raw).map_err(|_| WireError::RandomFailed)?;
    Ok(BASE64.encode(raw))
}

fn fixed_nonce(nonce: &str) -> Result<String, WireError> {
    if valid_nonce(nonce.as_bytes()) {
        Ok(nonce.to_owned())
    } else {
        Err(malformed(
            "SCRAM nonce",
            "not printable ASCII without commas",
        ))
    }
}

/// Checks the common shape of a SCRAM message from a peer: bounded, no NUL (PostgreSQL handles them
/// as C strings).
fn check_message(what: &'static str, data: &[u8]) -> Result<(), WireError> {
    if data.len() > MAX_AUTH_MESSAGE_LENGTH {
        return Err(WireError::LengthTooLarge {
            what,
            len: data.len(),
            max: MAX_AUTH_MESSAGE_LENGTH,
        });
    }
    if data.is_empty() {
        return Err(malformed(what, "empty message"));
    }
    if data.contains(&0) {
        return Err(malformed(what, "NUL byte in message"));
    }
    Ok(())
}

/// Reads the attribute `name` (`name=value`) from the next field.
fn attribute<'a>(
    fields: &mut impl Iterator<Item = &'a [u8]>,
    name: u8,
    what: &'static str,
    missing: &'static str,
) -> Result<&'a [u8], WireError> {
    match fields.next() {
        Some([n, b'=', value @ ..]) if *n == name => Ok(value),
        _ => Err(malformed(what, missing)),
    }
}

/// Checks that the remaining fields are well-formed extensions (`x=...`), which are ignored.
fn extensions<'a>(
    fields: impl Iterator<Item = &'a [u8]>,
    what: &'static str,
) -> Result<(), WireError> {
    for f in fields {
        match f {
            [n, b'=', ..] if n.is_ascii_alphabetic() => {}
            _ => return Err(malformed(what, "invalid attribute")),
        }
    }
    Ok(())
}

fn split_once(data: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = data.iter().position(|&b| b == sep)?;
    Some((&data[..at], &data[at + 1..]))
}

/// A SCRAM secret as PostgreSQL stores it in `pg_authid.rolpassword`:
/// `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`.
#[derive(Clone)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; SCRAM_KEY_LEN],
    pub server_key: [u8; SCRAM_KEY_LEN],
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

impl ScramSecret {
    /// Decodes a stored secret. The iteration count must be at least 1, the salt non-empty and both
    /// keys 32 bytes.
    pub fn parse(s: &str) -> Result<Self, WireError> {
        const WHAT: &str = "SCRAM secret";
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(malformed(WHAT, "not a SCRAM-SHA-256 secret"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(malformed(WHAT, "keys missing"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or(malformed(WHAT, "salt missing"))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or(malformed(WHAT, "server key missing"))?;
        let iterations = parse_iterations(iterations.as_bytes())
            .filter(|&i| i >= 1)
            .ok_or(malformed(WHAT, "invalid iteration count"))?;
        let salt = BASE64
            .decode(salt)
            .map_err(|_| malformed(WHAT, "invalid base64 in salt"))?;
        if salt.is_empty() {
            return Err(malformed(WHAT, "empty salt"));
        }
        Ok(ScramSecret {
            iterations,
            salt,
            stored_key: decode_key(WHAT, stored_key.as_bytes())?,
            server_key: decode_key(WHAT, server_key.as_bytes())?,
        })
    }

    /// The secret PostgreSQL would store for `password` with this salt and iteration count (0 counts
    /// as 1). PostgreSQL uses a random 16-byte salt and [`DEFAULT_SCRAM_ITERATIONS`].
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
        let (client_key, server_key) = keys_from_password(password, salt, iterations);
        ScramSecret {
            iterations: iterations.get(),
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key,
        }
    }

    /// Whether `client_key` is the ClientKey of this secret (constant time).
    pub fn matches_client_key(&self, client_key: &[u8; SCRAM_KEY_LEN]) -> bool {
        ct_eq(&sha256(client_key), &self.stored_key)
    }
}

impl fmt::Display for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

/// Decimal digits only (no sign, no spaces), fitting in a u32.
fn parse_iterations(v: &[u8]) -> Option<u32> {
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

enum Credentials {
    Password(String),
    Keys {
        client_key: [u8; SCRAM_KEY_LEN],
        server_key: [u8; SCRAM_KEY_LEN],
    },
}

enum ClientState {
    /// client-first-message not yet answered.
    Initial,
    /// client-final-message built; the server must prove this signature.
    SentFinal {
        server_signature: [u8; SCRAM_KEY_LEN],
    },
}

/// The client end of a SCRAM-SHA-256 exchange (pgcorral logging in to PostgreSQL).
///
/// ```text
/// client_first()          -> SASLInitialResponse data
/// handle_server_first(..) <- AuthenticationSASLContinue data, -> SASLResponse data
/// verify_server_final(..) <- AuthenticationSASLFinal data
/// ```
pub struct ScramClient {
    credentials: Credentials,
    /// The `n=` value, already escaped; empty as libpq sends it.
    user: String,
    nonce: String,
    state: ClientState,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// A client that knows the password (derives SaltedPassword once the server sent salt and
    /// iteration count).
    pub fn new(password: &str, rng: &dyn SecureRandom) -> Result<Self, WireError> {
        Self::new_with_nonce(password, &random_nonce(rng)?)
    }

    /// A client that knows ClientKey and ServerKey but not the password (auth_query: ClientKey
    /// recovered by [`ScramServer::handle_client_final`], ServerKey from `pg_authid`). The salt and
    /// iteration count the server sends are then not used.
    pub fn with_keys(
        client_key: [u8; SCRAM_KEY_LEN],
        server_key: [u8; SCRAM_KEY_LEN],
        rng: &dyn SecureRandom,
    ) -> Result<Self, WireError> {
        Self::with_keys_and_nonce(client_key, server_key, &random_nonce(rng)?)
    }

    /// [`ScramClient::new`] with a chosen nonce (printable ASCII without commas), for tests and test
    /// vectors. A real exchange must use a fresh random nonce.
    pub fn new_with_nonce(password: &str, nonce: &str) -> Result<Self, WireError> {
        Ok(Self::build(
            Credentials::Password(password.to_owned()),
            fixed_nonce(nonce)?,
        ))
    }

    /// [`ScramClient::with_keys`] with a chosen nonce, for tests.
    pub fn with_keys_and_nonce(
        client_key: [u8; SCRAM_KEY_LEN],
        server_key: [u8; SCRAM_KEY_LEN],
        nonce: &str,
    ) -> Result<Self, WireError> {
        Ok(Self::build(
            Credentials::Keys {
                client_key,
                server_key,
            },
            fixed_nonce(nonce)?,
        ))
    }

    fn build(credentials: Credentials, nonce: String) -> Self {
        ScramClient {
            credentials,
            user: String::new(),
            nonce,
            state: ClientState::Initial,
        }
    }

    /// Sends `user` in `n=` instead of the empty name (PostgreSQL ignores it; for other servers and
    /// RFC test vectors). `=` and `,` are escaped as RFC 5802 requires.
    pub fn with_username(mut self, user: &str) -> Self {
        self.user = user.replace('=', "=3D").replace(',', "=2C");
        self
    }

    fn client_first_bare(&self) -> String {
        format!("n={},r={}", self.user, self.nonce)
    }

    /// client-first-message: the data of SASLInitialResponse.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare()).into_bytes()
    }

    /// Takes server-first-message (AuthenticationSASLContinue data) and returns client-final-message
    /// (SASLResponse data). Checks that the server's nonce extends ours, the salt is base64 and the
    /// iteration count is between 1 and [`MAX_SCRAM_ITERATIONS`].
    pub fn handle_server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, WireError> {
        const WHAT: &str = "SCRAM server-first-message";
        if !matches!(self.state, ClientState::Initial) {
            return Err(malformed(WHAT, "message out of order"));
        }
        check_message(WHAT, data)?;
        let mut fields = data.split(|&b| b == b',');
        if data.starts_with(b"m=") {
            return Err(malformed(WHAT, "unsupported mandatory extension"));
        }
        let nonce = attribute(&mut fields, b'r', WHAT, "nonce missing")?;
        let salt = attribute(&mut fields, b's', WHAT, "salt missing")?;
        let iterations = attribute(&mut fields, b'i', WHAT, "iteration count missing")?;
        extensions(fields, WHAT)?;

        if !valid_nonce(nonce)
            || nonce.len() <= self.nonce.len()
            || !nonce.starts_with(self.nonce.as_bytes())
        {
            return Err(malformed(WHAT, "nonce mismatch"));
        }
        let salt = BASE64
            .decode(salt)
            .map_err(|_| malformed(WHAT, "invalid base64 in salt"))?;
        if salt.is_empty() {
            return Err(malformed(WHAT, "empty salt"));
        }
        let iterations = parse_iterations(iterations)
            .filter(|i| (1..=MAX_SCRAM_ITERATIONS).contains(i))
            .and_then(NonZeroU32::new)
            .ok_or(malformed(WHAT, "invalid iteration count"))?;

        let (client_key, server_key) = match &self.credentials {
            Credentials::Password(p) => keys_from_password(p, &salt, iterations),
            Credentials::Keys {
                client_key,
                server_key,
            } => (*client_key, *server_key),
        };
        let stored_key = sha256(&client_key);

        let mut out = Vec::with_capacity(data.len() + 64);
        out.extend_from_slice(b"c=biws,r=");
        out.extend_from_slice(nonce);
        let client_first_bare = self.client_first_bare();
        let auth_message: [&[u8]; 5] = [client_first_bare.as_bytes(), b",", data, b",", &out];
        let client_signature = hmac_sha256(&stored_key, &auth_message);
        let server_signature = hmac_sha256(&server_key, &auth_message);
        let proof = xor(&client_key, &client_signature);
        out.extend_from_slice(b",p=");
        out.extend_from_slice(BASE64.encode(proof).as_bytes());
        self.state = ClientState::SentFinal { server_signature };
        Ok(out)
    }

    /// Takes server-final-message (AuthenticationSASLFinal data) and checks the server's signature in
    /// constant time. An `e=` error from the server is [`WireError::ScramServerError`], a wrong
    /// signature [`WireError::ServerSignatureMismatch`].
    pub fn verify_server_final(&self, data: &[u8]) -> Result<(), WireError> {
        const WHAT: &str = "SCRAM server-final-message";
        let ClientState::SentFinal { server_signature } = &self.state else {
            return Err(malformed(WHAT, "message out of order"));
        };
        check_message(WHAT, data)?;
        let mut fields = data.split(|&b| b == b',');
        match fields.next() {
            Some([b'e', b'=', reason @ ..]) => Err(WireError::ScramServerError {
                reason: String::from_utf8_lossy(reason).into_owned(),
            }),
            Some([b'v', b'=', verifier @ ..]) => {
                extensions(fields, WHAT)?;
                let verifier = BASE64
                    .decode(verifier)
                    .map_err(|_| malformed(WHAT, "invalid base64 in verifier"))?;
                if ct_eq(&verifier, server_signature) {
                    Ok(())
                } else {
                    Err(WireError::ServerSignatureMismatch)
                }
            }
            _ => Err(malformed(WHAT, "verifier missing")),
        }
    }
}

enum ServerState {
    /// Waiting for client-first-message.
    Initial {
        /// The server's part of the nonce; `None` if the random number generator failed.
        nonce: Option<String>,
    },
    /// server-first-message sent; waiting for client-final-message.
    SentFirst {
        /// The expected `c=` value: base64 of the gs2 header.
        cbind: &'static [u8],
        /// The combined nonce.
        nonce: Vec<u8>,
        /// client-first-message-bare ‖ "," ‖ server-first-message ‖ ",".
        auth_prefix: Vec<u8>,
    },
    /// client-final-message handled (either way): the exchange is over.
    Done,
}

/// The server end of a SCRAM-SHA-256 exchange (pgcorral verifying a client).
///
/// ```text
/// authentication_sasl(..)  -> AuthenticationSASL
/// handle_client_first(..)  <- SASLInitialResponse data, -> AuthenticationSASLContinue data
/// handle_client_final(..)  <- SASLResponse data, -> AuthenticationSASLFinal data (then AuthenticationOk)
/// ```
pub struct ScramServer {
    secret: ScramSecret,
    state: ServerState,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// A server for one exchange against `secret`. If `rng` fails, the failure is reported as
    /// [`WireError::RandomFailed`] by [`ScramServer::handle_client_first`].
    pub fn new(secret: ScramSecret, rng: &dyn SecureRandom) -> Self {
        ScramServer {
            secret,
            state: ServerState::Initial {
                nonce: random_nonce(rng).ok(),
            },
        }
    }

    /// [`ScramServer::new`] with a chosen server nonce (printable ASCII without commas), for tests.
    pub fn with_nonce(secret: ScramSecret, nonce: &str) -> Result<Self, WireError> {
        Ok(ScramServer {
            secret,
            state: ServerState::Initial {
                nonce: Some(fixed_nonce(nonce)?),
            },
        })
    }

    /// Takes client-first-message (SASLInitialResponse data) and returns server-first-message.
    /// Refuses channel binding (`p=`), an authorization identity, mandatory extensions and malformed
    /// input.
    pub fn handle_client_first(&mut self, data: &[u8]) -> Result<Vec<u8>, WireError> {
        const WHAT: &str = "SCRAM client-first-message";
        let ServerState::Initial { nonce: our_nonce } = &self.state else {
            return Err(malformed(WHAT, "message out of order"));
        };
        let our_nonce = our_nonce.as_deref().ok_or(WireError::RandomFailed)?;
        check_message(WHAT, data)?;
        let (flag, rest) = split_once(data, b',').ok_or(malformed(WHAT, "gs2 header missing"))?;
        let cbind: &'static [u8] = match flag {
            b"n" => b"biws", // base64("n,,")
            b"y" => b"eSws", // base64("y,,"): the client could bind but we offer no -PLUS
            [b'p', b'=', ..] => {
                return Err(malformed(WHAT, "channel binding is not supported"));
            }
            _ => return Err(malformed(WHAT, "invalid channel binding flag")),
        };
        let (authzid, bare) =
            split_once(rest, b',').ok_or(malformed(WHAT, "gs2 header missing"))?;
        if !authzid.is_empty() {
            return Err(malformed(WHAT, "authorization identity is not supported"));
        }
        if bare.starts_with(b"m=") {
            return Err(malformed(WHAT, "unsupported mandatory extension"));
        }
        let mut fields = bare.split(|&b| b == b',');
        attribute(&mut fields, b'n', WHAT, "user name missing")?;
        let client_nonce = attribute(&mut fields, b'r', WHAT, "nonce missing")?;
        extensions(fields, WHAT)?;
        if !valid_nonce(client_nonce) {
            return Err(malformed(WHAT, "invalid nonce"));
        }

        let mut nonce = client_nonce.to_vec();
        nonce.extend_from_slice(our_nonce.as_bytes());
        let mut server_first = Vec::with_capacity(nonce.len() + 80);
        server_first.extend_from_slice(b"r=");
        server_first.extend_from_slice(&nonce);
        server_first.extend_from_slice(b",s=");
        server_first.extend_from_slice(BASE64.encode(&self.secret.salt).as_bytes());
        server_first.extend_from_slice(format!(",i={}", self.secret.iterations).as_bytes());

        let mut auth_prefix = Vec::with_capacity(bare.len() + server_first.len() + 2);
        auth_prefix.extend_from_slice(bare);
        auth_prefix.push(b',');
        auth_prefix.extend_from_slice(&server_first);
        auth_prefix.push(b',');
        self.state = ServerState::SentFirst {
            cbind,
            nonce,
            auth_prefix,
        };
        Ok(server_first)
    }

    /// Takes client-final-message (SASLResponse data) and verifies the client's proof in constant
    /// time. On success returns server-final-message (AuthenticationSASLFinal data) and the ClientKey
    /// recovered from the proof (ClientKey = ClientProof XOR ClientSignature), with which
    /// [`ScramClient::with_keys`] can log in as this user without the password. A wrong proof is
    /// [`WireError::AuthFailed`] (SQLSTATE 28P01); anything else wrong is a protocol error.
    pub fn handle_client_final(
        &mut self,
        data: &[u8],
    ) -> Result<(Vec<u8>, [u8; SCRAM_KEY_LEN]), WireError> {
        const WHAT: &str = "SCRAM client-final-message";
        let ServerState::SentFirst {
            cbind,
            nonce,
            auth_prefix,
        } = std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(malformed(WHAT, "message out of order"));
        };
        check_message(WHAT, data)?;
        // The proof is the last attribute.
        let at = data
            .iter()
            .rposition(|&b| b == b',')
            .ok_or(malformed(WHAT, "proof missing"))?;
        let (without_proof, proof) = (&data[..at], &data[at + 1..]);
        let proof = proof
            .strip_prefix(b"p=")
            .ok_or(malformed(WHAT, "proof missing"))?;

        let mut fields = without_proof.split(|&b| b == b',');
        let got_cbind = attribute(&mut fields, b'c', WHAT, "channel binding missing")?;
        let got_nonce = attribute(&mut fields, b'r', WHAT, "nonce missing")?;
        extensions(fields, WHAT)?;
        if got_cbind != cbind {
            return Err(malformed(WHAT, "unexpected channel binding"));
        }
        if got_nonce != nonce.as_slice() {
            return Err(malformed(WHAT, "nonce mismatch"));
        }
        let proof = decode_key(WHAT, proof)?;

        let auth_message: [&[u8]; 2] = [&auth_prefix, without_proof];
        let client_signature = hmac_sha256(&self.secret.stored_key, &auth_message);
        let client_key = xor(&proof, &client_signature);
        if !self.secret.matches_client_key(&client_key) {
            return Err(WireError::AuthFailed);
        }
        let server_signature = hmac_sha256(&self.secret.server_key, &auth_message);
        let mut out = b"v=".to_vec();
        out.extend_from_slice(BASE64.encode(server_signature).as_bytes());
        Ok((out, client_key))
    }
}

use crate::messages::{begin, cstr, finish};

/// SASLInitialResponse: the chosen mechanism and client-first-message.
pub fn sasl_initial_response(buf: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
    let at = begin(buf, tag::PASSWORD);
    cstr(buf, mechanism);
    buf.extend_from_slice(&(data.len() as i32).to_be_bytes());
    buf.extend_from_slice(data);
    finish(buf, at);
}

/// SASLResponse: client-final-message.
pub fn sasl_response(buf: &mut Vec<u8>, data: &[u8]) {
    let at = begin(buf, tag::PASSWORD);
    buf.extend_from_slice(data);
    finish(buf, at);
}

/// Decodes a SASLInitialResponse body into (mechanism, data). A declared data length of -1 (no
/// initial response) gives empty data.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), WireError> {
    const WHAT: &str = "SASLInitialResponse";
    let (mechanism, rest) =
        split_once(body, 0).ok_or(malformed(WHAT, "string is not terminated"))?;
    let mechanism =
        std::str::from_utf8(mechanism).map_err(|_| malformed(WHAT, "mechanism is not UTF-8"))?;
    let Some((len, data)) = rest.split_first_chunk::<4>() else {
        return Err(malformed(WHAT, "too short"));
    };
    match i32::from_be_bytes(*len) {
        -1 if data.is_empty() => Ok((mechanism, &[])),
        len if len >= 0 && len as usize == data.len() => Ok((mechanism, data)),
        _ => Err(malformed(WHAT, "data length does not match the message")),
    }
}

/// AuthenticationSASL with the mechanisms offered (pgcorral offers `&[SCRAM_SHA_256]`).
pub fn authentication_sasl(buf: &mut Vec<u8>, mechanisms: &[&str]) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.extend_from_slice(&10i32.to_be_bytes());
    for m in mechanisms {
        cstr(buf, m);
    }
    buf.push(0);
    finish(buf, at);
}

/// AuthenticationSASLContinue with server-first-message.
pub fn authentication_sasl_continue(buf: &mut Vec<u8>, data: &[u8]) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.extend_from_slice(&11i32.to_be_bytes());
    buf.extend_from_slice(data);
    finish(buf, at);
}

/// AuthenticationSASLFinal with server-final-message.
pub fn authentication_sasl_final(buf: &mut Vec<u8>, data: &[u8]) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.extend_from_slice(&12i32.to_be_bytes());
    buf.extend_from_slice(data);
    finish(buf, at);
}

/// Decodes the mechanism list of AuthenticationSASL (the `mechanisms` of
/// [`crate::messages::Authentication::Sasl`]): NUL-terminated names ending with an empty one.
pub fn parse_sasl_mechanisms(list: &[u8]) -> Result<Vec<&[u8]>, WireError> {
    const WHAT: &str = "AuthenticationSASL";
    let mut out = Vec::new();
    let mut cur = list;
    loop {
        let (name, rest) =
            split_once(cur, 0).ok_or(malformed(WHAT, "mechanism list is not terminated"))?;
        if name.is_empty() {
            return Ok(out);
        }
        out.push(name);
        cur = rest;
    }
}

#[cfg(test)]
mod tests;
