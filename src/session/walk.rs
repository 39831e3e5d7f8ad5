//! Walking one batch of bytes frame by frame, in each direction: what the
//! pump counts (requests that earn a ReadyForQuery, the ReadyForQuery that
//! answer them, a Terminate) and what it hands a [`Hook`]. Apart from the
//! pump's loops because it is the part that sees every byte from the
//! network: pure functions over a buffer, which the property tests, the
//! fuzz targets and the frame benchmark drive without sockets.

use bytes::BytesMut;

use crate::protocol::frame::{FrameError, Interest, Scanner, Step};
use crate::session::hook::{Hook, Verdict};

/// A Terminate has no body; a longer one is accepted up to this.
const MAX_TERMINATE: usize = 64;

/// Frames replaced in the walked part of a buffer: `(start, len, bytes)`,
/// in buffer order. Empty in the common case, so forwarding stays one
/// write of the buffer as it is.
#[derive(Debug, Default)]
pub struct Splices(Vec<(usize, usize, BytesMut)>);

impl Splices {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces the frame at `buf[start..start + len]` with `bytes`
    /// (nothing, to drop it). Calls come in buffer order.
    pub(crate) fn push(&mut self, start: usize, len: usize, bytes: BytesMut) {
        self.0.push((start, len, bytes));
    }

    /// `buf[..walked]` with the replacements applied.
    pub(crate) fn apply(&mut self, buf: &[u8], walked: usize) -> BytesMut {
        let extra: usize = self.0.iter().map(|(_, _, b)| b.len()).sum();
        let mut out = BytesMut::with_capacity(walked + extra);
        let mut from = 0;
        for (start, len, bytes) in self.0.drain(..) {
            out.extend_from_slice(&buf[from..start]);
            out.extend_from_slice(&bytes);
            from = start + len;
        }
        out.extend_from_slice(&buf[from..walked]);
        out
    }
}

/// What the client→cluster walk saw in one batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Requests {
    /// Query, Sync and FunctionCall messages: each earns one ReadyForQuery.
    pub count: u64,
    /// The client sent Terminate: where its frame is in the buffer
    /// (`start`, `len`). The walk stops there; nothing after it matters.
    pub terminate: Option<(usize, usize)>,
}

/// Walks the client's bytes in `buf` from where `scanner` stopped, counting
/// what earns a ReadyForQuery and handing `hook` the frames it asks for;
/// replacements it decides on go to `splices`.
pub fn walk_from_client(
    scanner: &mut Scanner,
    buf: &[u8],
    hook: &mut impl Hook,
    splices: &mut Splices,
) -> Result<Requests, FrameError> {
    let mut seen = Requests::default();
    loop {
        let step = scanner.next(buf, |h| match h.tag {
            // Seen whole, so that a session whose cluster connection is to
            // be kept can leave it out.
            b'X' => Interest::Whole {
                max_len: MAX_TERMINATE,
            },
            b'Q' | b'S' | b'F' => {
                seen.count += 1;
                hook.interest(h)
            }
            _ => hook.interest(h),
        })?;
        match step {
            Step::Frame { start, header } if header.tag == b'X' => {
                seen.terminate = Some((start, header.frame_len));
                return Ok(seen);
            }
            Step::Frame { start, header } => {
                let frame = &buf[start..start + header.frame_len];
                if let Verdict::Replace(bytes) = hook.frame(&header, frame) {
                    splices.push(start, header.frame_len, bytes);
                }
            }
            Step::Peek { start, header, len } => {
                let verdict = hook.frame(&header, &buf[start..start + len]);
                debug_assert_eq!(
                    verdict,
                    Verdict::Forward,
                    "a peeked frame cannot be replaced"
                );
            }
            Step::NeedMore => return Ok(seen),
        }
    }
}

/// What the cluster→client walk saw in one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readies {
    pub count: u64,
    /// Transaction status of the last ReadyForQuery (`I`, `T`, `E`).
    pub status: u8,
}

/// Walks the cluster's bytes in `buf` from where `scanner` stopped.
/// ReadyForQuery is the one message the pump itself looks into: its status
/// byte, and the fact that the cluster waits for the client from here on.
/// `hook` sees it too, and whatever else it asks for.
pub fn walk_from_cluster(
    scanner: &mut Scanner,
    buf: &[u8],
    hook: &mut impl Hook,
    splices: &mut Splices,
) -> Result<Readies, FrameError> {
    let mut seen = Readies {
        count: 0,
        status: b'I',
    };
    loop {
        let step = scanner.next(buf, |h| match h.tag {
            b'Z' => Interest::Whole { max_len: 6 },
            _ => hook.interest(h),
        })?;
        match step {
            Step::Frame { start, header } => {
                let frame = &buf[start..start + header.frame_len];
                if header.tag == b'Z' {
                    // A ReadyForQuery is its status byte and nothing else;
                    // anything else is no PostgreSQL and would leave the
                    // transaction status to chance.
                    if header.body_len() != 1 {
                        scanner.reject(start);
                        return Err(FrameError::BadLength {
                            tag: 'Z',
                            len: (header.frame_len - 1) as u32,
                        });
                    }
                    seen.count += 1;
                    seen.status = frame[5];
                }
                if let Verdict::Replace(bytes) = hook.frame(&header, frame) {
                    splices.push(start, header.frame_len, bytes);
                }
            }
            Step::Peek { start, header, len } => {
                let verdict = hook.frame(&header, &buf[start..start + len]);
                debug_assert_eq!(
                    verdict,
                    Verdict::Forward,
                    "a peeked frame cannot be replaced"
                );
            }
            Step::NeedMore => return Ok(seen),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::put_frame;
    use crate::session::hook::NoHook;
    use bytes::Buf;

    #[test]
    fn the_client_walk_counts_what_earns_a_ready_and_sees_terminate() {
        let mut stream = BytesMut::new();
        put_frame(&mut stream, b'Q', b"select 1\0");
        put_frame(&mut stream, b'P', b"\0select $1\0\0\0");
        put_frame(&mut stream, b'B', b"\0\0\0\0\0\0\0\0");
        put_frame(&mut stream, b'E', b"\0\0\0\0\0");
        put_frame(&mut stream, b'S', b"");
        let terminate_at = stream.len();
        put_frame(&mut stream, b'X', b"");
        let walked = stream.len();
        // Bytes after a Terminate are not walked: nothing after it counts.
        put_frame(&mut stream, b'Q', b"select 2\0");
        let mut scanner = Scanner::default();
        let seen =
            walk_from_client(&mut scanner, &stream, &mut NoHook, &mut Splices::default()).unwrap();
        assert_eq!(
            seen,
            Requests {
                count: 2,
                terminate: Some((terminate_at, 5))
            }
        );
        assert_eq!(scanner.walked(), walked);
    }

    #[test]
    fn the_cluster_walk_reads_the_last_ready_status_across_reads() {
        let mut stream = BytesMut::new();
        put_frame(&mut stream, b'C', b"SELECT 1\0");
        put_frame(&mut stream, b'Z', b"I");
        put_frame(&mut stream, b'D', &[0u8; 40]);
        put_frame(&mut stream, b'Z', b"T");
        let mut scanner = Scanner::default();
        let mut buf = BytesMut::new();
        let (mut count, mut status) = (0, 0);
        for chunk in stream.chunks(3) {
            buf.extend_from_slice(chunk);
            let seen = walk_from_cluster(&mut scanner, &buf, &mut NoHook, &mut Splices::default())
                .unwrap();
            if seen.count > 0 {
                count += seen.count;
                status = seen.status;
            }
            buf.advance(scanner.walked());
            scanner.consumed();
        }
        assert_eq!((count, status), (2, b'T'));
    }
}
