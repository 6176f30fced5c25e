//! Frames of the control protocol: a 4-byte big-endian length, then that many bytes of UTF-8 JSON.

use std::io::{self, Read, Write};

/// The daemon refuses a request longer than this.
pub const MAX_REQUEST: usize = 65536;
/// The longest response accepted (a status with details of 10000 slots fits easily).
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    Io(io::Error),
    /// The length prefix is above the cap.
    TooLong(usize),
    /// The peer closed the connection before a complete frame.
    Truncated {
        expected: usize,
        got: usize,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::TooLong(n) => {
                write!(
                    f,
                    "response frame of {n} bytes exceeds the {MAX_RESPONSE}-byte limit"
                )
            }
            FrameError::Truncated { expected, got } => write!(
                f,
                "connection closed after {got} of {expected} bytes of the response"
            ),
        }
    }
}

/// A frame: length prefix plus payload.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    w.write_all(&encode(payload))?;
    w.flush()
}

/// Reads exactly `buf.len()` bytes; returns how many arrived before EOF.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads one frame of at most `max` payload bytes.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    let got = read_full(r, &mut len).map_err(FrameError::Io)?;
    if got < 4 {
        return Err(FrameError::Truncated { expected: 4, got });
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(FrameError::TooLong(n));
    }
    let mut body = vec![0u8; n];
    let got = read_full(r, &mut body).map_err(FrameError::Io)?;
    if got < n {
        return Err(FrameError::Truncated { expected: n, got });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn encode_prefixes_big_endian_length() {
        assert_eq!(encode(b"{}"), vec![0, 0, 0, 2, b'{', b'}']);
        assert_eq!(encode(b""), vec![0, 0, 0, 0]);
        let big = vec![b'x'; 0x0001_0203];
        assert_eq!(&encode(&big)[..4], &[0, 1, 2, 3]);
    }

    #[test]
    fn round_trip() {
        let payload = br#"{"version":1,"command":"ping"}"#;
        let mut buf = Vec::new();
        write_frame(&mut buf, payload).unwrap();
        let mut c = Cursor::new(buf);
        assert_eq!(read_frame(&mut c, MAX_RESPONSE).unwrap(), payload.to_vec());
    }

    #[test]
    fn reads_only_one_frame() {
        let mut buf = encode(b"one");
        buf.extend(encode(b"two"));
        let mut c = Cursor::new(buf);
        assert_eq!(read_frame(&mut c, 100).unwrap(), b"one");
        assert_eq!(read_frame(&mut c, 100).unwrap(), b"two");
    }

    #[test]
    fn empty_payload() {
        let mut c = Cursor::new(encode(b""));
        assert_eq!(read_frame(&mut c, 10).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn too_long_is_refused_before_reading() {
        let mut c = Cursor::new(vec![0x01, 0x00, 0x00, 0x01]);
        match read_frame(&mut c, MAX_RESPONSE) {
            Err(FrameError::TooLong(n)) => assert_eq!(n, 16 * 1024 * 1024 + 1),
            other => panic!("{other:?}"),
        }
        let mut c = Cursor::new(encode(b"12345"));
        assert!(matches!(read_frame(&mut c, 4), Err(FrameError::TooLong(5))));
    }

    #[test]
    fn truncated_header_and_body() {
        let mut c = Cursor::new(vec![0, 0]);
        assert!(matches!(
            read_frame(&mut c, 100),
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        let mut c = Cursor::new(vec![0, 0, 0, 10, b'a', b'b']);
        assert!(matches!(
            read_frame(&mut c, 100),
            Err(FrameError::Truncated {
                expected: 10,
                got: 2
            })
        ));
        let mut c = Cursor::new(Vec::new());
        assert!(matches!(
            read_frame(&mut c, 100),
            Err(FrameError::Truncated { got: 0, .. })
        ));
    }

    /// A reader that hands out one byte per call.
    struct Trickle(Cursor<Vec<u8>>);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn short_reads_are_reassembled() {
        let mut r = Trickle(Cursor::new(encode(br#"{"status":"ok"}"#)));
        assert_eq!(read_frame(&mut r, 100).unwrap(), br#"{"status":"ok"}"#);
    }
}
