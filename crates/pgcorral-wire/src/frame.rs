//! Following message boundaries in a byte stream that arrives in arbitrary chunks.
//!
//! The relay reads into one buffer and forwards what it read. The tracker runs over each chunk in place,
//! keeping only a partial header (at most 5 bytes) and, for the tags the caller asks about, the first
//! bytes of a body (an ErrorResponse's severity, a ReadyForQuery's status) between chunks. It never
//! trusts the first byte of a read to be a message start.

use crate::messages::Header;
use crate::WireError;

/// How many body bytes are kept for a peeked tag: enough for an ErrorResponse's severity and code.
pub const PEEK_CAPACITY: usize = 64;

/// What the tracker saw in a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameEvent<'a> {
    /// A message header is complete. `offset` is the position of its tag byte in the chunk being fed,
    /// or `None` when the header began in an earlier chunk.
    Start {
        tag: u8,
        len: usize,
        offset: Option<usize>,
    },
    /// A message is complete. `prefix` holds up to [`PEEK_CAPACITY`] bytes of its body when its tag is
    /// peeked (empty otherwise); `end` is the position just past the message in the chunk being fed.
    End {
        tag: u8,
        prefix: &'a [u8],
        end: usize,
    },
}

/// Tracks message boundaries of one direction of a connection.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    header: [u8; 5],
    header_have: usize,
    body_left: usize,
    tag: u8,
    peek: [u8; PEEK_CAPACITY],
    peek_have: usize,
    peek_want: usize,
    peek_tags: [bool; 256],
    max_len: usize,
}

impl FrameTracker {
    /// A tracker that refuses messages longer than `max_len` and keeps a body prefix for `peek_tags`.
    pub fn new(max_len: usize, peek_tags: &[u8]) -> Self {
        let mut tags = [false; 256];
        for &t in peek_tags {
            tags[t as usize] = true;
        }
        FrameTracker {
            header: [0; 5],
            header_have: 0,
            body_left: 0,
            tag: 0,
            peek: [0; PEEK_CAPACITY],
            peek_have: 0,
            peek_want: 0,
            peek_tags: tags,
            max_len,
        }
    }

    /// True between messages: nothing of a next message has been seen yet.
    pub fn at_boundary(&self) -> bool {
        self.header_have == 0
    }

    /// Runs over `chunk`, calling `on` for each event; `on` returns false to stop early. Returns how many
    /// bytes of the chunk were consumed (all of them unless `on` stopped the walk). An invalid length is
    /// an error: the stream cannot be followed past it.
    pub fn feed<F>(&mut self, chunk: &[u8], mut on: F) -> Result<usize, WireError>
    where
        F: FnMut(FrameEvent<'_>) -> bool,
    {
        let mut i = 0;
        let mut started_here: Option<usize> = None;
        while i < chunk.len() {
            if self.header_have < 5 {
                if self.header_have == 0 {
                    started_here = Some(i);
                }
                let take = (5 - self.header_have).min(chunk.len() - i);
                self.header[self.header_have..self.header_have + take]
                    .copy_from_slice(&chunk[i..i + take]);
                self.header_have += take;
                i += take;
                if self.header_have < 5 {
                    break;
                }
                let header = Header::parse(self.header, self.max_len)?;
                self.tag = header.tag;
                self.body_left = header.body_len();
                self.peek_have = 0;
                self.peek_want = if self.peek_tags[header.tag as usize] {
                    self.body_left.min(PEEK_CAPACITY)
                } else {
                    0
                };
                let offset = started_here.take();
                if !on(FrameEvent::Start {
                    tag: header.tag,
                    len: header.len,
                    offset,
                }) {
                    if self.body_left == 0 {
                        self.header_have = 0;
                    }
                    return Ok(i);
                }
                if self.body_left == 0 {
                    self.header_have = 0;
                    if !on(FrameEvent::End {
                        tag: self.tag,
                        prefix: &[],
                        end: i,
                    }) {
                        return Ok(i);
                    }
                }
            } else {
                let take = self.body_left.min(chunk.len() - i);
                if self.peek_have < self.peek_want {
                    let n = (self.peek_want - self.peek_have).min(take);
                    self.peek[self.peek_have..self.peek_have + n].copy_from_slice(&chunk[i..i + n]);
                    self.peek_have += n;
                }
                self.body_left -= take;
                i += take;
                if self.body_left == 0 {
                    self.header_have = 0;
                    let prefix = &self.peek[..self.peek_have];
                    if !on(FrameEvent::End {
                        tag: self.tag,
                        prefix,
                        end: i,
                    }) {
                        return Ok(i);
                    }
                }
            }
        }
        Ok(chunk.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages;

    fn stream() -> Vec<u8> {
        let mut buf = Vec::new();
        messages::query(&mut buf, "SELECT 'ZZZ', E'\\x00'");
        messages::error_response(
            &mut buf,
            &messages::ErrorFields::fatal("57P01", "terminating"),
        );
        messages::ready_for_query(&mut buf, b'I');
        // A DataRow whose body is every byte value, including bytes that look like tags.
        buf.push(b'D');
        buf.extend_from_slice(&(4 + 256u32).to_be_bytes());
        buf.extend((0..=255u8).collect::<Vec<_>>());
        messages::terminate(&mut buf);
        buf
    }

    /// Feeds `chunks` and returns the events with offsets made absolute.
    fn run(chunks: &[&[u8]]) -> Vec<(u8, usize, bool)> {
        let mut t = FrameTracker::new(1 << 20, b"EZ");
        let mut out = Vec::new();
        let mut base = 0;
        for c in chunks {
            t.feed(c, |ev| {
                match ev {
                    FrameEvent::Start { tag, .. } => out.push((tag, 0, true)),
                    FrameEvent::End { tag, end, prefix } => {
                        out.push((tag, base + end, false));
                        if tag == b'Z' {
                            assert_eq!(prefix, b"I");
                        }
                        if tag == b'E' {
                            assert!(messages::ReceivedError::parse(prefix).is_fatal());
                        }
                    }
                }
                true
            })
            .unwrap();
            base += c.len();
        }
        out
    }

    #[test]
    fn every_split_point_gives_the_same_boundaries() {
        let s = stream();
        let whole = run(&[&s]);
        assert_eq!(whole.iter().filter(|e| !e.2).count(), 5);
        for cut in 0..=s.len() {
            assert_eq!(run(&[&s[..cut], &s[cut..]]), whole, "split at {cut}");
        }
        for cut_a in 0..s.len() {
            for cut_b in cut_a..s.len() {
                assert_eq!(
                    run(&[&s[..cut_a], &s[cut_a..cut_b], &s[cut_b..]]),
                    whole,
                    "split at {cut_a},{cut_b}"
                );
            }
        }
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(run(&bytes), whole);
    }

    #[test]
    fn start_offset_is_reported_only_in_the_chunk_holding_the_tag() {
        let mut buf = Vec::new();
        messages::query(&mut buf, "SELECT 1");
        messages::terminate(&mut buf);
        let x_at = buf.len() - 5;
        let mut t = FrameTracker::new(1 << 20, b"");
        let mut starts = Vec::new();
        t.feed(&buf, |ev| {
            if let FrameEvent::Start { tag, offset, .. } = ev {
                starts.push((tag, offset));
            }
            true
        })
        .unwrap();
        assert_eq!(starts, vec![(b'Q', Some(0)), (b'X', Some(x_at))]);

        let mut t = FrameTracker::new(1 << 20, b"");
        let mut starts = Vec::new();
        for c in [&buf[..x_at + 2], &buf[x_at + 2..]] {
            t.feed(c, |ev| {
                if let FrameEvent::Start { tag, offset, .. } = ev {
                    starts.push((tag, offset));
                }
                true
            })
            .unwrap();
        }
        assert_eq!(starts, vec![(b'Q', Some(0)), (b'X', None)]);
    }

    #[test]
    fn stopping_early_reports_consumed_bytes() {
        let mut buf = Vec::new();
        messages::query(&mut buf, "SELECT 1");
        let q_len = buf.len();
        messages::terminate(&mut buf);
        let mut t = FrameTracker::new(1 << 20, b"");
        let consumed = t
            .feed(&buf, |ev| {
                !matches!(ev, FrameEvent::Start { tag: b'X', .. })
            })
            .unwrap();
        assert_eq!(consumed, q_len + 5);
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut t = FrameTracker::new(100, b"");
        assert!(t.feed(b"Q\0\0\0\x02", |_| true).is_err());
        let mut t = FrameTracker::new(100, b"");
        assert!(t.feed(b"Q\x7f\0\0\0", |_| true).is_err());
    }
}
