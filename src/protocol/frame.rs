//! Framing of regular (post-startup) protocol messages: a one-byte tag, a
//! four-byte big-endian length that counts itself, then the body.
//!
//! The proxy never needs to hold a whole message to forward it. [`Scanner`]
//! walks a byte stream frame by frame, hands the few frames a hook cares
//! about to it whole, and lets every other byte through as soon as it has
//! arrived, so a 50 MB `DataRow` costs no more memory than a 5-byte one.

use thiserror::Error;

/// Tag byte plus length field.
pub const HEADER_LEN: usize = 5;

/// Something in a frame header that cannot be a PostgreSQL message.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: u32 },
    #[error("message type {tag:?} of {len} bytes exceeds the {max}-byte limit")]
    TooLong { tag: char, len: usize, max: usize },
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub tag: u8,
    /// Length of the whole frame, tag and length field included.
    pub frame_len: usize,
}

impl FrameHeader {
    /// Parses the header at the start of `buf`; `Ok(None)` if fewer than five
    /// bytes are there yet.
    pub fn parse(buf: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
        let Some(head) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let tag = head[0];
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if len < 4 {
            return Err(FrameError::BadLength {
                tag: tag as char,
                len,
            });
        }
        Ok(Some(FrameHeader {
            tag,
            frame_len: len as usize + 1,
        }))
    }

    pub fn body_len(&self) -> usize {
        self.frame_len - HEADER_LEN
    }
}

/// What a hook wants to see of a frame whose header has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Forward it without looking.
    Pass,
    /// Hand the whole frame to the hook; the frame may not exceed this many
    /// bytes (a larger one is a protocol error).
    Whole { max_len: usize },
    /// Hand the first `len` bytes of the frame (header included; fewer if
    /// the frame is shorter) to the hook, then let the rest pass: for the
    /// few leading fields of messages that may be huge (a Bind's statement
    /// name before megabytes of parameters).
    Peek { len: usize },
}

/// One step of [`Scanner::next`].
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A complete frame the hook asked for, at
    /// `buf[start..start + header.frame_len]`.
    Frame { start: usize, header: FrameHeader },
    /// The first `len` bytes of a frame the hook peeks at, at
    /// `buf[start..start + len]`; the rest of the frame passes.
    Peek {
        start: usize,
        header: FrameHeader,
        len: usize,
    },
    /// Everything that can be decided with the bytes at hand has been walked.
    NeedMore,
}

/// Walks frames in a buffer that fills and drains across reads.
///
/// The scanner remembers how much of a passed-through frame is still to come
/// (`skip`), so a frame may straddle any number of reads. `pos` is how far
/// the buffer has been walked: `buf[..pos]` is ready to forward.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Bytes of the current pass-through frame not yet seen.
    skip: usize,
    pos: usize,
    /// A frame at `pos` the hook wants (whole or peeked) that has not fully
    /// arrived yet, with what the hook said of it: the hook is asked once
    /// per frame, however many reads the frame takes.
    waiting: Option<(FrameHeader, Interest)>,
}

impl Scanner {
    /// True when the walked bytes end exactly on a frame boundary, so that a
    /// message of the proxy's own may be inserted after them.
    pub fn at_boundary(&self) -> bool {
        self.skip == 0
    }

    /// The frame the scanner waits to see whole, if any (its header has
    /// arrived; its length is known and was accepted).
    pub fn waiting_for(&self) -> Option<FrameHeader> {
        self.waiting.map(|(header, _)| header)
    }

    /// Bytes of `buf` walked so far.
    pub fn walked(&self) -> usize {
        self.pos
    }

    /// Takes back the frame that [`Step::Frame`] just returned at `start`,
    /// which the caller found malformed: it is no longer walked, so no part
    /// of it is forwarded, and the walk ends on the frames before it.
    pub fn reject(&mut self, start: usize) {
        debug_assert!(start <= self.pos, "rejecting a frame not yet walked");
        self.pos = start;
        self.skip = 0;
        self.waiting = None;
    }

    /// Call after forwarding (and removing) `buf[..walked()]`.
    pub fn consumed(&mut self) {
        self.pos = 0;
    }

    /// Walks `buf` from where it left off. `interest` says, per header, whether
    /// a hook wants the frame whole.
    pub fn next(
        &mut self,
        buf: &[u8],
        mut interest: impl FnMut(&FrameHeader) -> Interest,
    ) -> Result<Step, FrameError> {
        loop {
            if self.skip > 0 {
                let take = self.skip.min(buf.len() - self.pos);
                self.pos += take;
                self.skip -= take;
                if self.skip > 0 {
                    return Ok(Step::NeedMore);
                }
            }
            let (header, wanted) = match self.waiting.take() {
                Some(waiting) => waiting,
                None => {
                    let Some(header) = FrameHeader::parse(&buf[self.pos..])? else {
                        return Ok(Step::NeedMore);
                    };
                    (header, interest(&header))
                }
            };
            let available = buf.len() - self.pos;
            match wanted {
                Interest::Pass => {
                    self.skip = header.frame_len;
                }
                Interest::Whole { max_len } => {
                    if header.frame_len > max_len {
                        return Err(FrameError::TooLong {
                            tag: header.tag as char,
                            len: header.frame_len,
                            max: max_len,
                        });
                    }
                    if available < header.frame_len {
                        self.waiting = Some((header, wanted));
                        return Ok(Step::NeedMore);
                    }
                    let start = self.pos;
                    self.pos += header.frame_len;
                    return Ok(Step::Frame { start, header });
                }
                Interest::Peek { len } => {
                    let len = len.clamp(HEADER_LEN, header.frame_len);
                    if available < len {
                        self.waiting = Some((header, wanted));
                        return Ok(Step::NeedMore);
                    }
                    let start = self.pos;
                    self.pos += len;
                    self.skip = header.frame_len - len;
                    return Ok(Step::Peek { start, header, len });
                }
            }
        }
    }
}

/// Appends a frame with `tag` and `body` to `out`.
pub fn put_frame(out: &mut bytes::BytesMut, tag: u8, body: &[u8]) {
    use bytes::BufMut;
    out.reserve(HEADER_LEN + body.len());
    out.put_u8(tag);
    out.put_u32((body.len() + 4) as u32);
    out.put_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame(&mut out, tag, body);
        out.to_vec()
    }

    fn want_z(h: &FrameHeader) -> Interest {
        if h.tag == b'Z' {
            Interest::Whole { max_len: 6 }
        } else {
            Interest::Pass
        }
    }

    #[test]
    fn walks_pass_through_frames_split_at_every_byte() {
        let mut stream = frame(b'D', &[7u8; 100]);
        stream.extend(frame(b'Z', b"I"));
        // Feed one byte at a time: the scanner must find the Z exactly once.
        let mut scanner = Scanner::default();
        let mut buf = Vec::new();
        let mut forwarded = Vec::new();
        let mut seen = 0;
        for &b in &stream {
            buf.push(b);
            while let Step::Frame { start, header } = scanner.next(&buf, want_z).unwrap() {
                assert_eq!(
                    &buf[start..start + header.frame_len],
                    &frame(b'Z', b"I")[..]
                );
                seen += 1;
            }
            forwarded.extend(buf.drain(..scanner.walked()));
            scanner.consumed();
        }
        assert_eq!(seen, 1);
        assert_eq!(forwarded, stream);
        assert!(scanner.at_boundary());
    }

    #[test]
    fn rejects_lengths_below_four_and_oversized_inspected_frames() {
        let mut scanner = Scanner::default();
        let bad = [b'Q', 0, 0, 0, 3];
        assert!(matches!(
            scanner.next(&bad, |_| Interest::Pass),
            Err(FrameError::BadLength { .. })
        ));
        let mut scanner = Scanner::default();
        let big = frame(b'Z', &[0u8; 10]);
        assert!(matches!(
            scanner.next(&big, want_z),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn random_streams_never_panic_and_never_overrun() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2_000 {
            let len = (next() % 256) as usize;
            let stream: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let mut scanner = Scanner::default();
            let mut buf = Vec::new();
            for chunk in stream.chunks(1 + (next() % 17) as usize) {
                buf.extend_from_slice(chunk);
                while let Ok(Step::Frame { start, header }) = scanner.next(&buf, want_z) {
                    assert!(start + header.frame_len <= buf.len());
                }
                assert!(scanner.walked() <= buf.len());
                buf.drain(..scanner.walked());
                scanner.consumed();
            }
        }
    }

    #[test]
    fn the_hook_is_asked_once_per_frame_however_it_is_split() {
        let mut stream = frame(b'Q', b"select 1\0");
        stream.extend(frame(b'B', &[9u8; 300]));
        stream.extend(frame(b'S', b""));
        for cut in 1..stream.len() {
            let mut scanner = Scanner::default();
            let mut buf = Vec::new();
            let mut asked = Vec::new();
            let mut whole = Vec::new();
            let mut peeked = Vec::new();
            for chunk in [&stream[..cut], &stream[cut..]] {
                buf.extend_from_slice(chunk);
                loop {
                    let step = scanner
                        .next(&buf, |h| {
                            asked.push(h.tag);
                            match h.tag {
                                b'Q' => Interest::Whole { max_len: 100 },
                                b'B' => Interest::Peek { len: 12 },
                                _ => Interest::Pass,
                            }
                        })
                        .unwrap();
                    match step {
                        Step::Frame { start, header } => {
                            whole.push(buf[start..start + header.frame_len].to_vec())
                        }
                        Step::Peek { start, len, .. } => {
                            peeked.push(buf[start..start + len].to_vec())
                        }
                        Step::NeedMore => break,
                    }
                }
                buf.drain(..scanner.walked());
                scanner.consumed();
            }
            assert_eq!(asked, b"QBS", "cut at {cut}");
            assert_eq!(whole, vec![frame(b'Q', b"select 1\0")], "cut at {cut}");
            assert_eq!(peeked, vec![frame(b'B', &[9u8; 300])[..12].to_vec()]);
            assert!(buf.is_empty() && scanner.at_boundary());
        }
    }

    #[test]
    fn mid_frame_is_not_a_boundary() {
        let stream = frame(b'd', &[1u8; 50]);
        let mut scanner = Scanner::default();
        assert_eq!(
            scanner.next(&stream[..20], |_| Interest::Pass).unwrap(),
            Step::NeedMore
        );
        assert!(!scanner.at_boundary());
        assert_eq!(scanner.walked(), 20);
    }
}
