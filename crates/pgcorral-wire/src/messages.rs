//! One function or type per message the pooler writes or reads after startup.
//!
//! Writers append a whole message to a caller's buffer, so a worker can build several replies in one
//! allocation-free buffer and send them in one write. Readers take a message body (the bytes after the
//! 5-byte header) and never panic on short input.

use crate::WireError;

/// Message tags pgcorral looks at.
pub mod tag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const PASSWORD: u8 = b'p';
    pub const QUERY: u8 = b'Q';
    pub const TERMINATE: u8 = b'X';
    pub const SYNC: u8 = b'S';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_FAIL: u8 = b'f';
}

/// The header of a regular message: its tag and its declared length (which counts itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    pub len: usize,
}

impl Header {
    /// Decodes and checks a header: the length must be at least 4 and at most `max`.
    pub fn parse(bytes: [u8; 5], max: usize) -> Result<Header, WireError> {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if len < 4 {
            return Err(WireError::LengthTooSmall {
                what: "message",
                len,
                min: 4,
            });
        }
        if len > max {
            return Err(WireError::LengthTooLarge {
                what: "message",
                len,
                max,
            });
        }
        Ok(Header { tag: bytes[0], len })
    }

    /// Length of the body (the bytes after the header).
    pub fn body_len(&self) -> usize {
        self.len - 4
    }
}

pub(crate) fn begin(buf: &mut Vec<u8>, tag: u8) -> usize {
    let at = buf.len();
    buf.push(tag);
    buf.extend_from_slice(&[0, 0, 0, 0]);
    at
}

pub(crate) fn finish(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at - 1) as u32;
    buf[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
}

pub(crate) fn cstr(buf: &mut Vec<u8>, s: &str) {
    // A NUL inside a string would end it early on the other side: drop it.
    buf.extend(s.bytes().filter(|&b| b != 0));
    buf.push(0);
}

/// The fields of an ErrorResponse or NoticeResponse pgcorral writes.
#[derive(Debug, Clone, Copy)]
pub struct ErrorFields<'a> {
    pub severity: &'a str,
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

impl<'a> ErrorFields<'a> {
    /// A FATAL error with a code and message.
    pub fn fatal(code: &'a str, message: &'a str) -> Self {
        ErrorFields {
            severity: "FATAL",
            code,
            message,
            detail: None,
            hint: None,
        }
    }
    /// An ERROR (the session goes on).
    pub fn error(code: &'a str, message: &'a str) -> Self {
        ErrorFields {
            severity: "ERROR",
            code,
            message,
            detail: None,
            hint: None,
        }
    }
}

/// ErrorResponse.
pub fn error_response(buf: &mut Vec<u8>, f: &ErrorFields<'_>) {
    let at = begin(buf, tag::ERROR_RESPONSE);
    buf.push(b'S');
    cstr(buf, f.severity);
    buf.push(b'V');
    cstr(buf, f.severity);
    buf.push(b'C');
    cstr(buf, f.code);
    buf.push(b'M');
    cstr(buf, f.message);
    if let Some(d) = f.detail {
        buf.push(b'D');
        cstr(buf, d);
    }
    if let Some(h) = f.hint {
        buf.push(b'H');
        cstr(buf, h);
    }
    buf.push(0);
    finish(buf, at);
}

/// AuthenticationOk.
pub fn authentication_ok(buf: &mut Vec<u8>) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.extend_from_slice(&0i32.to_be_bytes());
    finish(buf, at);
}

/// AuthenticationCleartextPassword.
pub fn authentication_cleartext(buf: &mut Vec<u8>) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.extend_from_slice(&3i32.to_be_bytes());
    finish(buf, at);
}

/// AuthenticationMD5Password with its salt.
pub fn authentication_md5(buf: &mut Vec<u8>, salt: [u8; 4]) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.extend_from_slice(&5i32.to_be_bytes());
    buf.extend_from_slice(&salt);
    finish(buf, at);
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut Vec<u8>, name: &str, value: &str) {
    let at = begin(buf, tag::PARAMETER_STATUS);
    cstr(buf, name);
    cstr(buf, value);
    finish(buf, at);
}

/// BackendKeyData.
pub fn backend_key_data(buf: &mut Vec<u8>, pid: i32, secret: i32) {
    let at = begin(buf, tag::BACKEND_KEY_DATA);
    buf.extend_from_slice(&pid.to_be_bytes());
    buf.extend_from_slice(&secret.to_be_bytes());
    finish(buf, at);
}

/// ReadyForQuery with a transaction status (`I`, `T` or `E`).
pub fn ready_for_query(buf: &mut Vec<u8>, status: u8) {
    let at = begin(buf, tag::READY_FOR_QUERY);
    buf.push(status);
    finish(buf, at);
}

/// Query (simple protocol).
pub fn query(buf: &mut Vec<u8>, sql: &str) {
    let at = begin(buf, tag::QUERY);
    cstr(buf, sql);
    finish(buf, at);
}

/// Sync.
pub fn sync(buf: &mut Vec<u8>) {
    let at = begin(buf, tag::SYNC);
    finish(buf, at);
}

/// Terminate.
pub fn terminate(buf: &mut Vec<u8>) {
    let at = begin(buf, tag::TERMINATE);
    finish(buf, at);
}

/// PasswordMessage carrying a cleartext or MD5 password.
pub fn password(buf: &mut Vec<u8>, password: &str) {
    let at = begin(buf, tag::PASSWORD);
    cstr(buf, password);
    finish(buf, at);
}

/// NegotiateProtocolVersion: the newest minor version pgcorral supports and the options it ignores.
pub fn negotiate_protocol_version(buf: &mut Vec<u8>, newest_minor: i32, unsupported: &[&str]) {
    let at = begin(buf, tag::NEGOTIATE_PROTOCOL_VERSION);
    buf.extend_from_slice(&newest_minor.to_be_bytes());
    buf.extend_from_slice(&(unsupported.len() as i32).to_be_bytes());
    for o in unsupported {
        cstr(buf, o);
    }
    finish(buf, at);
}

/// A CancelRequest packet (a startup-style packet, no tag).
pub fn cancel_request(pid: i32, secret: i32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&16u32.to_be_bytes());
    out[4..8].copy_from_slice(&crate::CANCEL_REQUEST_CODE.to_be_bytes());
    out[8..12].copy_from_slice(&pid.to_be_bytes());
    out[12..].copy_from_slice(&secret.to_be_bytes());
    out
}

fn take_i32<'a>(body: &'a [u8], what: &'static str) -> Result<(i32, &'a [u8]), WireError> {
    if body.len() < 4 {
        return Err(WireError::Malformed {
            what,
            reason: "too short",
        });
    }
    Ok((
        i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
        &body[4..],
    ))
}

fn take_cstr<'a>(body: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8]), WireError> {
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(WireError::Malformed {
            what,
            reason: "string is not terminated",
        })?;
    Ok((&body[..nul], &body[nul + 1..]))
}

/// An Authentication message from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication<'a> {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: &'a [u8],
    },
    SaslContinue {
        data: &'a [u8],
    },
    SaslFinal {
        data: &'a [u8],
    },
    /// Kerberos, GSS, SSPI and anything newer: pgcorral relays or refuses them by code.
    Other {
        code: i32,
    },
}

impl<'a> Authentication<'a> {
    /// Decodes an Authentication body.
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        const WHAT: &str = "authentication message";
        let (code, rest) = take_i32(body, WHAT)?;
        Ok(match code {
            0 => Authentication::Ok,
            3 => Authentication::CleartextPassword,
            5 => {
                if rest.len() < 4 {
                    return Err(WireError::Malformed {
                        what: WHAT,
                        reason: "MD5 salt missing",
                    });
                }
                Authentication::Md5Password {
                    salt: [rest[0], rest[1], rest[2], rest[3]],
                }
            }
            10 => Authentication::Sasl { mechanisms: rest },
            11 => Authentication::SaslContinue { data: rest },
            12 => Authentication::SaslFinal { data: rest },
            code => Authentication::Other { code },
        })
    }

    /// A name for logs and errors.
    pub fn method_name(&self) -> &'static str {
        match self {
            Authentication::Ok => "trust",
            Authentication::CleartextPassword => "password",
            Authentication::Md5Password { .. } => "md5",
            Authentication::Sasl { .. }
            | Authentication::SaslContinue { .. }
            | Authentication::SaslFinal { .. } => "scram-sha-256",
            Authentication::Other { .. } => "unsupported",
        }
    }
}

/// Decodes a ParameterStatus body into (name, value).
pub fn parse_parameter_status(body: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    const WHAT: &str = "ParameterStatus";
    let (name, rest) = take_cstr(body, WHAT)?;
    let (value, _) = take_cstr(rest, WHAT)?;
    Ok((name, value))
}

/// Decodes a BackendKeyData body into (pid, secret).
pub fn parse_backend_key_data(body: &[u8]) -> Result<(i32, i32), WireError> {
    const WHAT: &str = "BackendKeyData";
    let (pid, rest) = take_i32(body, WHAT)?;
    let (secret, _) = take_i32(rest, WHAT)?;
    Ok((pid, secret))
}

/// Decodes a PasswordMessage body (cleartext or MD5) into its string bytes.
pub fn parse_password(body: &[u8]) -> Result<&[u8], WireError> {
    Ok(take_cstr(body, "password message")?.0)
}

/// The fields of an ErrorResponse or NoticeResponse a peer sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceivedError<'a> {
    pub severity: &'a [u8],
    pub code: &'a [u8],
    pub message: &'a [u8],
}

impl<'a> ReceivedError<'a> {
    /// Decodes the fields pgcorral needs; unknown fields are skipped. A body cut short (as when only a
    /// prefix of it was kept) yields the fields that were complete.
    pub fn parse(body: &'a [u8]) -> Self {
        let mut out = ReceivedError::default();
        let mut cur = body;
        while let Some((&field, rest)) = cur.split_first() {
            if field == 0 {
                break;
            }
            let Ok((value, after)) = take_cstr(rest, "error field") else {
                break;
            };
            match field {
                b'S' => out.severity = value,
                b'V' => out.severity = value,
                b'C' => out.code = value,
                b'M' => out.message = value,
                _ => {}
            }
            cur = after;
        }
        out
    }

    /// FATAL or PANIC: the server closes the connection after this.
    pub fn is_fatal(&self) -> bool {
        self.severity == b"FATAL" || self.severity == b"PANIC"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(buf: &[u8]) -> &[u8] {
        let h = Header::parse(buf[..5].try_into().unwrap(), 1 << 20).unwrap();
        assert_eq!(h.len + 1, buf.len());
        &buf[5..]
    }

    #[test]
    fn error_response_round_trip() {
        let mut buf = Vec::new();
        error_response(
            &mut buf,
            &ErrorFields::fatal("53300", "connection pool is full"),
        );
        assert_eq!(buf[0], b'E');
        let e = ReceivedError::parse(body(&buf));
        assert_eq!(e.code, b"53300");
        assert_eq!(e.message, b"connection pool is full");
        assert!(e.is_fatal());
    }

    #[test]
    fn authentication_round_trip() {
        let mut buf = Vec::new();
        authentication_md5(&mut buf, [9, 8, 7, 6]);
        assert_eq!(
            Authentication::parse(body(&buf)).unwrap(),
            Authentication::Md5Password { salt: [9, 8, 7, 6] }
        );
        buf.clear();
        authentication_ok(&mut buf);
        assert_eq!(
            Authentication::parse(body(&buf)).unwrap(),
            Authentication::Ok
        );
        assert!(Authentication::parse(&[0, 0]).is_err());
        assert!(Authentication::parse(&[0, 0, 0, 5, 1]).is_err());
    }

    #[test]
    fn small_messages() {
        let mut buf = Vec::new();
        parameter_status(&mut buf, "application_name", "psql");
        assert_eq!(
            parse_parameter_status(body(&buf)).unwrap(),
            (&b"application_name"[..], &b"psql"[..])
        );
        buf.clear();
        backend_key_data(&mut buf, 42, -7);
        assert_eq!(parse_backend_key_data(body(&buf)).unwrap(), (42, -7));
        assert!(parse_backend_key_data(&[1, 2, 3]).is_err());
        buf.clear();
        ready_for_query(&mut buf, b'I');
        assert_eq!(buf, b"Z\0\0\0\x05I");
        buf.clear();
        terminate(&mut buf);
        assert_eq!(buf, b"X\0\0\0\x04");
        assert_eq!(cancel_request(1, 2).len(), 16);
    }

    #[test]
    fn header_bounds() {
        assert!(Header::parse(*b"Q\0\0\0\x03", 100).is_err());
        assert!(Header::parse(*b"Q\0\0\x10\x00", 100).is_err());
        assert_eq!(Header::parse(*b"Q\0\0\0\x04", 100).unwrap().body_len(), 0);
    }

    #[test]
    fn truncated_error_keeps_complete_fields() {
        let mut buf = Vec::new();
        error_response(
            &mut buf,
            &ErrorFields::error("57014", "canceling statement due to user request"),
        );
        let e = ReceivedError::parse(&body(&buf)[..20]);
        assert_eq!(e.severity, b"ERROR");
        assert!(!e.is_fatal());
    }
}
