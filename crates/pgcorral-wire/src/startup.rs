//! The packets a client opens a connection with: they carry no type byte, only a length and a code.

use crate::WireError;

/// PostgreSQL's own cap on a startup packet (`MAX_STARTUP_PACKET_LENGTH` in pqcomm.h).
pub const MAX_STARTUP_PACKET_LENGTH: usize = 10_000;
/// Protocol 3.0 as it appears on the wire.
pub const PROTOCOL_3_0: u32 = 196_608;
/// SSLRequest code.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// A decoded startup packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupRequest {
    Ssl,
    GssEnc,
    Cancel { pid: i32, secret: i32 },
    Startup(StartupMessage),
}

/// A StartupMessage: protocol version and the parameters in the order the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The value of a parameter, if the client sent it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The user name (required by the protocol; `None` when the client left it out).
    pub fn user(&self) -> Option<&str> {
        self.get("user").filter(|u| !u.is_empty())
    }

    /// The database: defaults to the user name, as PostgreSQL does.
    pub fn database(&self) -> &str {
        match self.get("database") {
            Some(d) if !d.is_empty() => d,
            _ => self.user().unwrap_or(""),
        }
    }

    /// Replaces (or adds) a parameter.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.params.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value.to_string(),
            None => self.params.push((name.to_string(), value.to_string())),
        }
    }

    /// Encodes the message as protocol 3.0 (the version pgcorral speaks to servers).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(64);
        body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        for (k, v) in &self.params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = Vec::with_capacity(body.len() + 4);
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// Checks the 4-byte length that opens a startup packet and returns it (it counts itself).
pub fn startup_packet_length(len: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(len) as usize;
    if len < 8 {
        return Err(WireError::LengthTooSmall {
            what: "startup packet",
            len,
            min: 8,
        });
    }
    if len > MAX_STARTUP_PACKET_LENGTH {
        return Err(WireError::LengthTooLarge {
            what: "startup packet",
            len,
            max: MAX_STARTUP_PACKET_LENGTH,
        });
    }
    Ok(len)
}

fn read_cstr<'a>(buf: &'a [u8], what: &'static str) -> Result<(&'a str, &'a [u8]), WireError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(WireError::Malformed {
            what,
            reason: "string is not terminated",
        })?;
    let s = std::str::from_utf8(&buf[..nul]).map_err(|_| WireError::Malformed {
        what,
        reason: "string is not valid UTF-8",
    })?;
    Ok((s, &buf[nul + 1..]))
}

/// Decodes a startup packet's body (everything after the length).
pub fn parse_startup(body: &[u8]) -> Result<StartupRequest, WireError> {
    const WHAT: &str = "startup packet";
    if body.len() < 4 {
        return Err(WireError::LengthTooSmall {
            what: WHAT,
            len: body.len() + 4,
            min: 8,
        });
    }
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST_CODE => Ok(StartupRequest::Ssl),
        GSSENC_REQUEST_CODE => Ok(StartupRequest::GssEnc),
        CANCEL_REQUEST_CODE => {
            if rest.len() != 8 {
                return Err(WireError::Malformed {
                    what: "cancel request",
                    reason: "must be 16 bytes long",
                });
            }
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let secret = i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            Ok(StartupRequest::Cancel { pid, secret })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(WireError::UnsupportedProtocol { major, minor });
            }
            let mut params = Vec::new();
            let mut cur = rest;
            loop {
                if cur.is_empty() {
                    return Err(WireError::Malformed {
                        what: WHAT,
                        reason: "missing terminator after the last parameter",
                    });
                }
                if cur[0] == 0 {
                    if cur.len() != 1 {
                        return Err(WireError::Malformed {
                            what: WHAT,
                            reason: "bytes after the terminator",
                        });
                    }
                    break;
                }
                let (name, after_name) = read_cstr(cur, WHAT)?;
                if after_name.is_empty() {
                    return Err(WireError::Malformed {
                        what: WHAT,
                        reason: "parameter without a value",
                    });
                }
                let (value, after_value) = read_cstr(after_name, WHAT)?;
                params.push((name.to_string(), value.to_string()));
                cur = after_value;
            }
            Ok(StartupRequest::Startup(StartupMessage {
                major,
                minor,
                params,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(packet: &[u8]) -> &[u8] {
        &packet[4..]
    }

    #[test]
    fn round_trip() {
        let msg = StartupMessage {
            major: 3,
            minor: 0,
            params: vec![
                ("user".into(), "alice".into()),
                ("database".into(), "db".into()),
            ],
        };
        let bytes = msg.encode();
        assert_eq!(
            startup_packet_length(bytes[..4].try_into().unwrap()).unwrap(),
            bytes.len()
        );
        assert_eq!(
            parse_startup(body_of(&bytes)).unwrap(),
            StartupRequest::Startup(msg)
        );
    }

    #[test]
    fn database_defaults_to_user() {
        let msg = StartupMessage {
            major: 3,
            minor: 0,
            params: vec![("user".into(), "bob".into())],
        };
        assert_eq!(msg.database(), "bob");
    }

    #[test]
    fn lengths_are_capped() {
        assert!(startup_packet_length(7u32.to_be_bytes()).is_err());
        assert!(startup_packet_length(100_000u32.to_be_bytes()).is_err());
        assert!(startup_packet_length(8u32.to_be_bytes()).is_ok());
    }

    #[test]
    fn special_codes() {
        assert_eq!(
            parse_startup(&SSL_REQUEST_CODE.to_be_bytes()).unwrap(),
            StartupRequest::Ssl
        );
        assert_eq!(
            parse_startup(&GSSENC_REQUEST_CODE.to_be_bytes()).unwrap(),
            StartupRequest::GssEnc
        );
        let mut c = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        c.extend_from_slice(&7i32.to_be_bytes());
        c.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(
            parse_startup(&c).unwrap(),
            StartupRequest::Cancel { pid: 7, secret: -9 }
        );
        assert!(parse_startup(&c[..8]).is_err());
    }

    #[test]
    fn malformed_and_unsupported() {
        let v2 = 0x0002_0000u32.to_be_bytes();
        assert_eq!(parse_startup(&v2).unwrap_err().sqlstate(), "0A000");
        let mut no_term = PROTOCOL_3_0.to_be_bytes().to_vec();
        no_term.extend_from_slice(b"user\0alice\0");
        assert_eq!(parse_startup(&no_term).unwrap_err().sqlstate(), "08P01");
        let mut odd = PROTOCOL_3_0.to_be_bytes().to_vec();
        odd.extend_from_slice(b"user\0");
        assert!(parse_startup(&odd).is_err());
        let mut unterminated = PROTOCOL_3_0.to_be_bytes().to_vec();
        unterminated.extend_from_slice(b"user");
        assert!(parse_startup(&unterminated).is_err());
        assert!(parse_startup(&[0, 3]).is_err());
    }

    #[test]
    fn every_prefix_is_handled_without_panic() {
        let msg = StartupMessage {
            major: 3,
            minor: 0,
            params: vec![("user".into(), "alice".into())],
        };
        let bytes = msg.encode();
        for cut in 0..bytes.len() - 4 {
            let _ = parse_startup(&bytes[4..4 + cut]);
        }
    }
}
