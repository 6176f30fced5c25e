//! The extended-query messages whose statement names the transaction pipeline rewrites: Parse, Bind,
//! Describe and Close. Each view borrows the message body (the bytes after tag and length) and checks
//! it; the encoders write a renamed message. Nothing here allocates on decode or panics on short input.

use crate::WireError;

pub mod tag {
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const CLOSE: u8 = b'C';
    pub const EXECUTE: u8 = b'E';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const NO_DATA: u8 = b'n';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const EMPTY_QUERY: u8 = b'I';
    pub const PORTAL_SUSPENDED: u8 = b's';
}

/// Splits a NUL-terminated string off the front of `b`.
pub fn split_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = b.iter().position(|&c| c == 0)?;
    Some((&b[..nul], &b[nul + 1..]))
}

fn missing(reason: &'static str) -> WireError {
    WireError::Malformed {
        what: "extended-query message",
        reason,
    }
}

/// A Parse body: the statement name, and the rest (query text, NUL, parameter types) as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseView<'a> {
    pub name: &'a [u8],
    pub rest: &'a [u8],
}

impl<'a> ParseView<'a> {
    pub fn decode(body: &'a [u8]) -> Result<ParseView<'a>, WireError> {
        let (name, rest) = split_cstr(body).ok_or(missing("Parse without a statement name"))?;
        let (_query, types) = split_cstr(rest).ok_or(missing("Parse without a query string"))?;
        if types.len() < 2 {
            return Err(missing("Parse without a parameter count"));
        }
        let n = i16::from_be_bytes([types[0], types[1]]);
        if n < 0 || types.len() != 2 + 4 * n as usize {
            return Err(missing("Parse with a wrong parameter type list"));
        }
        Ok(ParseView { name, rest })
    }

    /// The query text.
    pub fn query(&self) -> &'a [u8] {
        split_cstr(self.rest).map(|(q, _)| q).unwrap_or(b"")
    }

    /// Writes this Parse with the statement called `name`.
    pub fn encode_renamed(&self, name: &[u8], out: &mut Vec<u8>) {
        out.push(tag::PARSE);
        out.extend_from_slice(&((4 + name.len() + 1 + self.rest.len()) as u32).to_be_bytes());
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(self.rest);
    }
}

/// The start of a Bind body: portal and statement names. The parameters that follow may be large and
/// are relayed without being looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindHead<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// Body bytes the two names take (with their NULs).
    pub names_len: usize,
}

impl<'a> BindHead<'a> {
    /// Decodes the names from the first bytes of a Bind body; `None` when `start` does not hold both
    /// yet.
    pub fn decode(start: &'a [u8]) -> Option<BindHead<'a>> {
        let (portal, rest) = split_cstr(start)?;
        let (statement, _) = split_cstr(rest)?;
        Some(BindHead {
            portal,
            statement,
            names_len: portal.len() + statement.len() + 2,
        })
    }

    /// Writes the tag, length and names of this Bind with the statement called `name`, for a body of
    /// `body_len` bytes as the client sent it.
    pub fn encode_renamed(&self, name: &[u8], body_len: usize, out: &mut Vec<u8>) {
        let new_len = 4 + body_len - self.statement.len() + name.len();
        out.push(tag::BIND);
        out.extend_from_slice(&(new_len as u32).to_be_bytes());
        out.extend_from_slice(self.portal);
        out.push(0);
        out.extend_from_slice(name);
        out.push(0);
    }
}

/// A Describe or Close body: `S` (statement) or `P` (portal), and the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetView<'a> {
    pub kind: u8,
    pub name: &'a [u8],
}

impl<'a> TargetView<'a> {
    pub fn decode(body: &'a [u8]) -> Result<TargetView<'a>, WireError> {
        let (&kind, rest) = body
            .split_first()
            .ok_or(missing("Describe/Close without a kind"))?;
        if kind != b'S' && kind != b'P' {
            return Err(missing("Describe/Close kind must be S or P"));
        }
        let (name, tail) = split_cstr(rest).ok_or(missing("Describe/Close without a name"))?;
        if !tail.is_empty() {
            return Err(missing("Describe/Close with trailing bytes"));
        }
        Ok(TargetView { kind, name })
    }

    pub fn is_statement(&self) -> bool {
        self.kind == b'S'
    }

    /// Writes the message `tag` (Describe or Close) for the same kind and `name`.
    pub fn encode(tag: u8, kind: u8, name: &[u8], out: &mut Vec<u8>) {
        out.push(tag);
        out.extend_from_slice(&((4 + 1 + name.len() + 1) as u32).to_be_bytes());
        out.push(kind);
        out.extend_from_slice(name);
        out.push(0);
    }
}

/// Writes a message that has no body (ParseComplete, CloseComplete, Sync, ...).
pub fn empty_message(tag: u8, out: &mut Vec<u8>) {
    out.push(tag);
    out.extend_from_slice(&4u32.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_body(name: &str, q: &str, types: &[u32]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(q.as_bytes());
        b.push(0);
        b.extend_from_slice(&(types.len() as i16).to_be_bytes());
        for t in types {
            b.extend_from_slice(&t.to_be_bytes());
        }
        b
    }

    #[test]
    fn parse_round_trip_and_short_input() {
        let body = parse_body("s1", "SELECT $1", &[23]);
        let p = ParseView::decode(&body).unwrap();
        assert_eq!(p.name, b"s1");
        assert_eq!(p.query(), b"SELECT $1");
        let mut out = Vec::new();
        p.encode_renamed(b"pgc_x", &mut out);
        assert_eq!(out[0], b'P');
        let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len, out.len() - 1);
        let again = ParseView::decode(&out[5..]).unwrap();
        assert_eq!(again.name, b"pgc_x");
        assert_eq!(again.rest, p.rest);
        for cut in 0..body.len() {
            assert!(ParseView::decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = parse_body("s", "q", &[]);
        bad.truncate(bad.len() - 2);
        bad.extend_from_slice(&(-1i16).to_be_bytes());
        assert!(ParseView::decode(&bad).is_err());
    }

    #[test]
    fn bind_head_rename_keeps_the_length_right() {
        let mut body = b"portal\0stmt\0".to_vec();
        body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, b'4', b'2', 0, 0]);
        for cut in 0..12 {
            assert!(BindHead::decode(&body[..cut]).is_none(), "cut at {cut}");
        }
        let h = BindHead::decode(&body).unwrap();
        assert_eq!(
            (h.portal, h.statement, h.names_len),
            (&b"portal"[..], &b"stmt"[..], 12)
        );
        let mut out = Vec::new();
        h.encode_renamed(b"pgc_longer_name", body.len(), &mut out);
        out.extend_from_slice(&body[h.names_len..]);
        let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len, out.len() - 1);
        assert_eq!(
            BindHead::decode(&out[5..]).unwrap().statement,
            b"pgc_longer_name"
        );
    }

    #[test]
    fn describe_and_close() {
        let t = TargetView::decode(b"Sname\0").unwrap();
        assert!(t.is_statement());
        assert_eq!(t.name, b"name");
        assert!(TargetView::decode(b"").is_err());
        assert!(TargetView::decode(b"X\0").is_err());
        assert!(TargetView::decode(b"Sname").is_err());
        assert!(TargetView::decode(b"Sa\0b").is_err());
        let mut out = Vec::new();
        TargetView::encode(tag::CLOSE, b'S', b"n", &mut out);
        assert_eq!(out, b"C\0\0\0\x07Sn\0");
    }
}
