//! The pump's frame walks against a model: a stream walked in one piece,
//! the same stream split at arbitrary points, and a twenty-line reference
//! reading of the protocol's framing must all see the same frames.
//!
//! Shared by the property tests (`tests/it/properties.rs`) and the fuzz
//! targets (`fuzz/fuzz_targets/frames_*.rs` include this file by path), so
//! that the fuzzer and the test suite check one definition of "the same".
#![allow(dead_code)] // each includer uses its own subset

use pgtier::protocol::frame::{FrameError, FrameHeader, Interest, Scanner, HEADER_LEN};
use pgtier::session::hook::{Hook, Verdict};
use pgtier::session::walk::{walk_from_client, walk_from_cluster, Splices};

/// Which direction's walk runs: they differ in what the pump itself looks
/// at (requests from the client, ReadyForQuery from the cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    FromClient,
    FromCluster,
}

/// What a hook asks for, by tag: a pure function of the header, as the
/// real hooks' rules are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Tags whose byte is `≡ 0 (mod 3)` are wanted whole up to this size
    /// (bigger ones are a protocol error), `≡ 1` are peeked at, the rest
    /// pass. `None`: every frame passes (the pump's `NoHook`).
    pub mixed: Option<(usize, usize)>,
}

impl Rule {
    pub const PASS_ALL: Rule = Rule { mixed: None };

    pub fn mixed(whole_max: usize, peek_len: usize) -> Rule {
        Rule {
            mixed: Some((whole_max, peek_len)),
        }
    }

    fn interest(&self, tag: u8) -> Interest {
        match self.mixed {
            None => Interest::Pass,
            Some((max_len, len)) => match tag % 3 {
                0 => Interest::Whole { max_len },
                1 => Interest::Peek { len },
                _ => Interest::Pass,
            },
        }
    }
}

/// One thing a hook was told, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Asked what it wants of a frame with this header.
    Asked { tag: u8, frame_len: usize },
    /// Handed a whole frame.
    Whole(Vec<u8>),
    /// Handed the first bytes of a frame.
    Peeked(Vec<u8>),
}

/// What walking a whole stream came to.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub seen: Vec<Seen>,
    /// Bytes released for forwarding, in order (up to the error, if any).
    pub forwarded: usize,
    /// Query, Sync and FunctionCall messages (client direction).
    pub requests: u64,
    pub terminate: bool,
    /// ReadyForQuery messages and the status of the last one (cluster
    /// direction).
    pub readies: u64,
    pub last_status: Option<u8>,
    pub error: Option<FrameError>,
}

struct Recorder {
    rule: Rule,
    direction: Direction,
    seen: Vec<Seen>,
}

impl Hook for Recorder {
    fn interest(&mut self, header: &FrameHeader) -> Interest {
        self.seen.push(Seen::Asked {
            tag: header.tag,
            frame_len: header.frame_len,
        });
        self.rule.interest(header.tag)
    }

    fn frame(&mut self, header: &FrameHeader, bytes: &[u8]) -> Verdict {
        // What the hook asked for decides what it was handed (a peek may
        // cover a whole short frame); ReadyForQuery from the cluster is
        // the pump's own pick.
        let pumps_own = self.direction == Direction::FromCluster && header.tag == b'Z';
        match self.rule.interest(header.tag) {
            Interest::Peek { .. } if !pumps_own => self.seen.push(Seen::Peeked(bytes.to_vec())),
            _ => self.seen.push(Seen::Whole(bytes.to_vec())),
        }
        Verdict::Forward
    }
}

/// Walks `stream` as the pump does, fed in pieces that end at `cuts`
/// (offsets into `stream`, any order, out-of-range ones ignored): after each
/// piece the walked bytes are forwarded and dropped from the buffer.
/// Panics if a walk ever claims more bytes than the buffer holds or hands
/// the hook bytes that are not the stream's.
pub fn walk(direction: Direction, rule: Rule, stream: &[u8], cuts: &[usize]) -> Outcome {
    let mut ends: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < stream.len())
        .collect();
    ends.push(stream.len());
    ends.sort_unstable();
    ends.dedup();

    let mut hook = Recorder {
        rule,
        direction,
        seen: Vec::new(),
    };
    let mut out = Outcome {
        seen: Vec::new(),
        forwarded: 0,
        requests: 0,
        terminate: false,
        readies: 0,
        last_status: None,
        error: None,
    };
    let mut scanner = Scanner::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut from = 0;
    for end in ends {
        buf.extend_from_slice(&stream[from..end]);
        from = end;
        let mut splices = Splices::default();
        let result = match direction {
            Direction::FromClient => walk_from_client(&mut scanner, &buf, &mut hook, &mut splices)
                .map(|r| {
                    out.requests += r.count;
                    out.terminate |= r.terminate.is_some();
                }),
            Direction::FromCluster => {
                walk_from_cluster(&mut scanner, &buf, &mut hook, &mut splices).map(|r| {
                    if r.count > 0 {
                        out.readies += r.count;
                        out.last_status = Some(r.status);
                    }
                })
            }
        };
        let walked = scanner.walked();
        assert!(
            walked <= buf.len(),
            "walked {walked} of a {}-byte buffer",
            buf.len()
        );
        assert!(splices.is_empty(), "the recorder never replaces");
        // The walked bytes are the stream's next bytes, in order.
        out.forwarded += walked;
        if let Err(e) = result {
            out.error = Some(e);
            break;
        }
        if out.terminate {
            // The pump stops at a Terminate: nothing after it is walked.
            break;
        }
        buf.drain(..walked);
        scanner.consumed();
    }
    out.seen = hook.seen;
    settle(out)
}

/// Makes outcomes comparable where the pump's figures are undefined:
///
/// - After a protocol error the session ends and what the failing read's
///   walk counted is dropped with it, so the counts then depend on how the
///   stream was split; they are left out.
fn settle(mut out: Outcome) -> Outcome {
    if out.error.is_some() {
        out.requests = 0;
        out.terminate = false;
        out.readies = 0;
        out.last_status = None;
    }
    out
}

/// The longest Terminate the pump accepts (its `MAX_TERMINATE`).
const TERMINATE_MAX: usize = 64;

/// The same stream read by the protocol's definition alone: a tag, a
/// length that counts itself and must be at least 4, then the body. What a
/// hook following `rule` must be told, and what the pump must count.
pub fn model(direction: Direction, rule: Rule, stream: &[u8]) -> Outcome {
    let mut out = Outcome {
        seen: Vec::new(),
        forwarded: 0,
        requests: 0,
        terminate: false,
        readies: 0,
        last_status: None,
        error: None,
    };
    let mut pos = 0;
    while stream.len() - pos >= HEADER_LEN {
        let tag = stream[pos];
        let len = u32::from_be_bytes([
            stream[pos + 1],
            stream[pos + 2],
            stream[pos + 3],
            stream[pos + 4],
        ]);
        if len < 4 {
            out.error = Some(FrameError::BadLength {
                tag: tag as char,
                len,
            });
            out.forwarded = pos;
            return settle(out);
        }
        let frame_len = len as usize + 1;
        let available = stream.len() - pos;
        if direction == Direction::FromClient && tag == b'X' {
            // The pump reads a Terminate itself, whole (so that a kept
            // cluster connection never sees it), and walks no further.
            if frame_len > TERMINATE_MAX {
                out.error = Some(FrameError::TooLong {
                    tag: 'X',
                    len: frame_len,
                    max: TERMINATE_MAX,
                });
                out.forwarded = pos;
                return settle(out);
            }
            if available < frame_len {
                out.forwarded = pos;
                return settle(out);
            }
            out.terminate = true;
            out.forwarded = pos + frame_len;
            return settle(out);
        }
        let interest = if direction == Direction::FromCluster && tag == b'Z' {
            // The pump reads every ReadyForQuery itself; the hook is not
            // asked, but is handed it.
            Interest::Whole { max_len: 6 }
        } else {
            out.seen.push(Seen::Asked { tag, frame_len });
            rule.interest(tag)
        };
        if direction == Direction::FromClient && matches!(tag, b'Q' | b'S' | b'F') {
            out.requests += 1;
        }
        match interest {
            Interest::Pass => {}
            Interest::Whole { max_len } => {
                if frame_len > max_len {
                    out.error = Some(FrameError::TooLong {
                        tag: tag as char,
                        len: frame_len,
                        max: max_len,
                    });
                    out.forwarded = pos;
                    return settle(out);
                }
                if available < frame_len {
                    // Held back until the whole frame is there.
                    out.forwarded = pos;
                    return settle(out);
                }
                let frame = &stream[pos..pos + frame_len];
                if direction == Direction::FromCluster && tag == b'Z' {
                    if frame_len != 6 {
                        // A ReadyForQuery is its status byte alone.
                        out.error = Some(FrameError::BadLength {
                            tag: 'Z',
                            len: (frame_len - 1) as u32,
                        });
                        out.forwarded = pos;
                        return settle(out);
                    }
                    out.readies += 1;
                    out.last_status = Some(frame[5]);
                }
                out.seen.push(Seen::Whole(frame.to_vec()));
            }
            Interest::Peek { len } => {
                let len = len.clamp(HEADER_LEN, frame_len);
                if available < len {
                    out.forwarded = pos;
                    return settle(out);
                }
                out.seen.push(Seen::Peeked(stream[pos..pos + len].to_vec()));
            }
        }
        if available <= frame_len {
            // The stream ends inside (or exactly at the end of) this frame:
            // everything there is passes.
            out.forwarded = stream.len();
            return settle(out);
        }
        pos += frame_len;
    }
    out.forwarded = pos;
    settle(out)
}

/// The property: walked whole, split at `cuts`, and one byte at a time
/// (short streams), the walk gives the model's outcome.
pub fn check(direction: Direction, rule: Rule, stream: &[u8], cuts: &[usize]) {
    let expected = model(direction, rule, stream);
    assert_eq!(walk(direction, rule, stream, &[]), expected, "unsplit");
    assert_eq!(
        walk(direction, rule, stream, cuts),
        expected,
        "split at {cuts:?}"
    );
    if stream.len() <= 256 {
        let every: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(
            walk(direction, rule, stream, &every),
            expected,
            "byte by byte"
        );
    }
}

/// A fuzz input for a frame walk, as the `frames_*` targets read their
/// bytes (libFuzzer's `arbitrary` reading): a stream, where its reads end,
/// and the hook.
#[derive(Debug, arbitrary::Arbitrary)]
struct WalkInput {
    /// `None`: no hook; else the largest frame taken whole, and how much
    /// of a frame is peeked at.
    hook: Option<(u16, u16)>,
    /// Where reads end (offsets into the stream).
    cuts: Vec<u16>,
    stream: Vec<u8>,
}

/// [`check`] on `data` read as a [`WalkInput`] (the fuzz targets' one
/// body, for both directions).
pub fn check_bytes(direction: Direction, data: &[u8]) {
    use arbitrary::Arbitrary;
    let Ok(input) = WalkInput::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else {
        return;
    };
    let rule = match input.hook {
        None => Rule::PASS_ALL,
        Some((whole_max, peek_len)) => Rule::mixed(usize::from(whole_max), usize::from(peek_len)),
    };
    let cuts: Vec<usize> = input.cuts.iter().map(|&c| usize::from(c)).collect();
    check(direction, rule, &input.stream, &cuts);
}
