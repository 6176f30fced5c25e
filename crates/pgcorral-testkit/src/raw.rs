//! A raw PostgreSQL protocol v3 client, for sending malformed or unusual startup traffic and
//! reading the answers message by message. Only what the tests need: no authentication beyond
//! trust and cleartext password.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Protocol 3.0 as sent in a StartupMessage.
pub const PROTOCOL_3_0: u32 = 0x0003_0000;
/// Protocol 2.0 (refused by PostgreSQL ≥ 14 and by the pooler).
pub const PROTOCOL_2_0: u32 = 0x0002_0000;
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// A startup-phase packet: Int32 length (itself included), Int32 code/version, then `body`.
pub fn startup_packet(version: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + body.len());
    v.extend_from_slice(&((8 + body.len()) as u32).to_be_bytes());
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// The body of a well-formed StartupMessage: `key\0value\0…\0`.
pub fn startup_body(params: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in params {
        b.extend_from_slice(k.as_bytes());
        b.push(0);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b.push(0);
    b
}

/// A well-formed protocol 3.0 StartupMessage.
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    startup_packet(PROTOCOL_3_0, &startup_body(params))
}

pub fn ssl_request() -> Vec<u8> {
    startup_packet(SSL_REQUEST_CODE, &[])
}

pub fn gssenc_request() -> Vec<u8> {
    startup_packet(GSSENC_REQUEST_CODE, &[])
}

pub fn cancel_request(pid: i32, secret: i32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(&secret.to_be_bytes());
    startup_packet(CANCEL_REQUEST_CODE, &b)
}

/// A regular (typed) frontend message: tag, Int32 length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + body.len());
    v.push(tag);
    v.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Query ('Q').
pub fn query(sql: &str) -> Vec<u8> {
    let mut b = sql.as_bytes().to_vec();
    b.push(0);
    message(b'Q', &b)
}

/// PasswordMessage ('p') with a cleartext password.
pub fn password_message(pw: &str) -> Vec<u8> {
    let mut b = pw.as_bytes().to_vec();
    b.push(0);
    message(b'p', &b)
}

/// Terminate ('X').
pub fn terminate() -> Vec<u8> {
    message(b'X', &[])
}

/// One backend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
    /// A protocol-2 style ErrorResponse (`'E'` then a NUL-terminated text, no length), as
    /// PostgreSQL sends to a client that asked for protocol 2.0. `body` holds the text.
    pub v2: bool,
}

/// The fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// 'S' (localized severity) or 'V'.
    pub severity: String,
    /// 'C': SQLSTATE.
    pub code: String,
    /// 'M'.
    pub message: String,
    /// Every field, in order.
    pub fields: Vec<(char, String)>,
}

impl ErrorFields {
    /// Parses the body of an 'E'/'N' message.
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut f = ErrorFields::default();
        let mut i = 0;
        while i < body.len() && body[i] != 0 {
            let t = body[i] as char;
            i += 1;
            let end = body[i..]
                .iter()
                .position(|&b| b == 0)
                .map(|p| i + p)
                .unwrap_or(body.len());
            let val = String::from_utf8_lossy(&body[i..end]).into_owned();
            i = end + 1;
            match t {
                'S' => f.severity = val.clone(),
                'V' if f.severity.is_empty() => f.severity = val.clone(),
                'C' => f.code = val.clone(),
                'M' => f.message = val.clone(),
                _ => {}
            }
            f.fields.push((t, val));
        }
        f
    }
}

impl Message {
    /// Error fields when this is an ErrorResponse ('E').
    pub fn error(&self) -> Option<ErrorFields> {
        if self.tag != b'E' {
            return None;
        }
        if self.v2 {
            let text = String::from_utf8_lossy(&self.body).trim().to_string();
            let (sev, msg) = match text.split_once(':') {
                Some((s, m)) => (s.trim().to_string(), m.trim().to_string()),
                None => (String::new(), text.clone()),
            };
            return Some(ErrorFields {
                severity: sev,
                code: String::new(),
                message: msg,
                fields: vec![('M', text)],
            });
        }
        Some(ErrorFields::parse(&self.body))
    }

    /// The authentication request code when this is an 'R' message (0 = AuthenticationOk).
    pub fn auth_code(&self) -> Option<u32> {
        if self.tag == b'R' && self.body.len() >= 4 {
            Some(u32::from_be_bytes(self.body[0..4].try_into().unwrap()))
        } else {
            None
        }
    }

    /// The columns of a DataRow ('D').
    pub fn data_row(&self) -> Option<Vec<Option<String>>> {
        if self.tag != b'D' || self.body.len() < 2 {
            return None;
        }
        let n = u16::from_be_bytes([self.body[0], self.body[1]]) as usize;
        let mut i = 2;
        let mut cols = Vec::with_capacity(n);
        for _ in 0..n {
            let len = i32::from_be_bytes(self.body.get(i..i + 4)?.try_into().ok()?);
            i += 4;
            if len < 0 {
                cols.push(None);
            } else {
                let l = len as usize;
                cols.push(Some(
                    String::from_utf8_lossy(self.body.get(i..i + l)?).into_owned(),
                ));
                i += l;
            }
        }
        Some(cols)
    }

    /// (pid, secret) of a BackendKeyData ('K').
    pub fn backend_key(&self) -> Option<(i32, i32)> {
        if self.tag == b'K' && self.body.len() >= 8 {
            Some((
                i32::from_be_bytes(self.body[0..4].try_into().unwrap()),
                i32::from_be_bytes(self.body[4..8].try_into().unwrap()),
            ))
        } else {
            None
        }
    }
}

/// The result of one read.
#[derive(Debug)]
pub enum Read1<T> {
    Got(T),
    /// EOF or connection reset.
    Closed,
    /// Nothing arrived within the read timeout.
    TimedOut,
}

/// How a sequence of reads ended.
#[derive(Debug)]
pub enum Outcome {
    /// ReadyForQuery arrived; the messages before it (and it).
    Ready(Vec<Message>),
    /// An ErrorResponse arrived (and possibly nothing else); the messages so far.
    Error(ErrorFields, Vec<Message>),
    /// The peer closed; the messages so far.
    Closed(Vec<Message>),
    /// Nothing more within the timeout; the messages so far.
    TimedOut(Vec<Message>),
}

impl Outcome {
    pub fn messages(&self) -> &[Message] {
        match self {
            Outcome::Ready(m)
            | Outcome::Error(_, m)
            | Outcome::Closed(m)
            | Outcome::TimedOut(m) => m,
        }
    }

    /// The error, when the outcome is one.
    pub fn error(&self) -> Option<&ErrorFields> {
        match self {
            Outcome::Error(e, _) => Some(e),
            _ => None,
        }
    }

    /// All DataRows' columns.
    pub fn rows(&self) -> Vec<Vec<Option<String>>> {
        self.messages()
            .iter()
            .filter_map(|m| m.data_row())
            .collect()
    }
}

/// A raw TCP connection.
pub struct RawConn {
    pub stream: TcpStream,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

impl RawConn {
    /// Connects to 127.0.0.1:`port` with 5 s connect/read/write timeouts and TCP_NODELAY.
    pub fn connect(port: u16) -> RawConn {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("raw connect to {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        RawConn { stream }
    }

    pub fn set_read_timeout(&self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
    }

    /// Writes all of `bytes`. Errors (the peer may already have closed) are returned, not panics.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    fn read_exact_or(&mut self, buf: &mut [u8]) -> Read1<()> {
        let mut off = 0;
        while off < buf.len() {
            match self.stream.read(&mut buf[off..]) {
                Ok(0) => return Read1::Closed,
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Read1::TimedOut,
                Err(e) if is_closed(&e) => return Read1::Closed,
                Err(e) => panic!("raw read: {e}"),
            }
        }
        Read1::Got(())
    }

    /// Reads a single byte (the answer to SSLRequest/GSSENCRequest).
    pub fn read_byte(&mut self) -> Read1<u8> {
        let mut b = [0u8; 1];
        match self.read_exact_or(&mut b) {
            Read1::Got(()) => Read1::Got(b[0]),
            Read1::Closed => Read1::Closed,
            Read1::TimedOut => Read1::TimedOut,
        }
    }

    /// Reads one backend message. Panics on an absurd length (> 64 MiB).
    pub fn read_message(&mut self) -> Read1<Message> {
        let mut hdr = [0u8; 5];
        match self.read_exact_or(&mut hdr) {
            Read1::Got(()) => {}
            Read1::Closed => return Read1::Closed,
            Read1::TimedOut => return Read1::TimedOut,
        }
        let len = u32::from_be_bytes(hdr[1..5].try_into().unwrap()) as usize;
        if hdr[0] == b'E'
            && len >= 64 << 20
            && hdr[1..5].iter().all(|b| b.is_ascii_graphic() || *b == b' ')
        {
            // Protocol-2 ErrorResponse: text up to a NUL.
            let mut text = hdr[1..5].to_vec();
            loop {
                let mut b = [0u8; 1];
                match self.read_exact_or(&mut b) {
                    Read1::Got(()) if b[0] == 0 => break,
                    Read1::Got(()) => text.push(b[0]),
                    Read1::Closed | Read1::TimedOut => break,
                }
                if text.len() > 1 << 20 {
                    break;
                }
            }
            return Read1::Got(Message {
                tag: b'E',
                body: text,
                v2: true,
            });
        }
        assert!(
            (4..64 << 20).contains(&len),
            "raw: bad backend message length {len} (tag {:?})",
            hdr[0] as char
        );
        let mut body = vec![0u8; len - 4];
        match self.read_exact_or(&mut body) {
            Read1::Got(()) => Read1::Got(Message {
                tag: hdr[0],
                body,
                v2: false,
            }),
            Read1::Closed => Read1::Closed,
            Read1::TimedOut => Read1::TimedOut,
        }
    }

    /// Reads until ReadyForQuery, an ErrorResponse, close or timeout. A cleartext password
    /// request is answered with `password` when given.
    pub fn read_until_ready(&mut self, password: Option<&str>) -> Outcome {
        let mut msgs = Vec::new();
        loop {
            match self.read_message() {
                Read1::Got(m) => {
                    if let Some(e) = m.error() {
                        msgs.push(m);
                        return Outcome::Error(e, msgs);
                    }
                    if m.auth_code() == Some(3) {
                        if let Some(pw) = password {
                            let _ = self.send(&password_message(pw));
                        }
                    }
                    let ready = m.tag == b'Z';
                    msgs.push(m);
                    if ready {
                        return Outcome::Ready(msgs);
                    }
                }
                Read1::Closed => return Outcome::Closed(msgs),
                Read1::TimedOut => return Outcome::TimedOut(msgs),
            }
        }
    }

    /// Sends a StartupMessage (user, database) and reads until ReadyForQuery/error.
    pub fn startup(&mut self, user: &str, database: &str) -> Outcome {
        if let Err(e) = self.send(&startup_message(&[("user", user), ("database", database)])) {
            panic!("raw: sending StartupMessage: {e}");
        }
        self.read_until_ready(None)
    }

    /// Sends a simple Query and reads until ReadyForQuery (errors in the middle are kept going
    /// until ReadyForQuery, as PostgreSQL sends E then Z).
    pub fn simple_query(&mut self, sql: &str) -> Outcome {
        if let Err(e) = self.send(&query(sql)) {
            panic!("raw: sending Query: {e}");
        }
        let mut msgs = Vec::new();
        let mut err = None;
        loop {
            match self.read_message() {
                Read1::Got(m) => {
                    if err.is_none() {
                        err = m.error();
                    }
                    let ready = m.tag == b'Z';
                    msgs.push(m);
                    if ready {
                        return match err {
                            Some(e) => Outcome::Error(e, msgs),
                            None => Outcome::Ready(msgs),
                        };
                    }
                }
                Read1::Closed => return Outcome::Closed(msgs),
                Read1::TimedOut => return Outcome::TimedOut(msgs),
            }
        }
    }

    /// After something the server must refuse: reads until an ErrorResponse or close, within
    /// `timeout`. Returns the error fields (None = closed without an error). Panics on a timeout
    /// (the server hung) or on ReadyForQuery (the input was accepted); other messages are skipped.
    pub fn expect_error_or_close(&mut self, timeout: Duration) -> Option<ErrorFields> {
        self.set_read_timeout(timeout);
        let start = Instant::now();
        loop {
            match self.read_message() {
                Read1::Got(m) if m.tag == b'E' => return m.error(),
                // AuthenticationOk, ParameterStatus, BackendKeyData, notices may precede an error
                // (e.g. an unknown database is reported after authentication).
                Read1::Got(m) if m.tag != b'Z' => continue,
                Read1::Got(m) => panic!(
                    "expected an ErrorResponse or a close, but the session became ready: {m:?}"
                ),
                Read1::Closed => return None,
                Read1::TimedOut => panic!(
                    "the server neither answered nor closed within {:?} (hang)",
                    start.elapsed()
                ),
            }
        }
    }

    /// Reads until the peer closes (any messages are returned), or None on timeout.
    pub fn wait_closed(&mut self, timeout: Duration) -> Option<Vec<Message>> {
        self.set_read_timeout(timeout);
        let deadline = Instant::now() + timeout;
        let mut msgs = Vec::new();
        loop {
            match self.read_message() {
                Read1::Got(m) => msgs.push(m),
                Read1::Closed => return Some(msgs),
                Read1::TimedOut => return None,
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }
}
