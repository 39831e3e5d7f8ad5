//! Keep-alive pings: client messages that do no work, and so do not keep a
//! session from being idle.
//!
//! Connection pools check their idle connections by sending something the
//! cluster answers at once: DBConnection (Ecto/Postgrex) sends a bare Sync
//! every second, pgjdbc's `isValid()` (HikariCP's default check) an empty
//! statement over the extended protocol, psycopg_pool's check an empty
//! simple Query. Were those activity, an idle pool would hold its tier's
//! slots for ever. So the idle clock runs from the end of the last message
//! that did work, and these are not work:
//!
//! - Sync and Flush;
//! - a simple Query whose text is empty: only whitespace, `;` and comments;
//! - the extended protocol's empty statement: Parse of such a text (into
//!   the unnamed statement or a named one), Bind of the unnamed portal to
//!   it (no parameters), Describe and Execute of those.
//!
//! Everything else is work, and so is anything this module cannot read
//! whole (a frame longer than [`MAX_PING_FRAME`], a malformed one): a ping
//! mistaken for work only keeps a session as long as before; work mistaken
//! for a ping would cut a session short. Nothing here changes what is
//! forwarded: pings are answered by the cluster as usual.
//!
//! The rule is the same inside a transaction: a ping there does not reset
//! `idle_in_transaction_timeout` either (an open transaction held by pings
//! holds its locks and snapshot as long as one left alone).
//!
//! [`Watched`] wraps a session's client-side [`Hook`] to see every frame
//! header go by, and asks for the few small frames that may be pings whole
//! (a few hundred bytes at most, never a frame the hook would not see); the
//! pump asks [`work_in_batch`] once per batch whether to reset the clock.

use crate::protocol::frame::{FrameHeader, Interest, Scanner, HEADER_LEN};
use crate::session::hook::{Hook, Verdict};

/// The longest frame that may be a ping. Pools send empty statements of a
/// few bytes; a longer frame is work without a look.
pub const MAX_PING_FRAME: usize = 256;

/// What the client's pings have set up so far, and whether work was seen.
#[derive(Debug, Default)]
pub struct PingWatch {
    /// Some frame since the last [`work_in_batch`] did work.
    work: bool,
    /// The unnamed prepared statement holds an empty statement (the last
    /// frame that could change it was a Parse of one).
    unnamed_statement_empty: bool,
    /// The unnamed portal is bound to an empty statement.
    unnamed_portal_empty: bool,
    /// Named statements holding an empty statement (pgjdbc's `isValid()`
    /// statement becomes a named one after `prepareThreshold` uses, and is
    /// then bound without a new Parse). A few short names at most; they are
    /// forgotten at a Close of theirs and at any statement that may drop
    /// prepared statements (`DEALLOCATE`, `DISCARD`) or that the watch
    /// cannot read.
    empty_named: Vec<Box<[u8]>>,
    /// The last batch ended inside a frame streaming through (never a
    /// ping: those are read whole).
    mid_frame: bool,
    /// For the candidate frame in hand: what the wrapped hook asked of it.
    in_hand: Option<Interest>,
}

impl PingWatch {
    fn work(&mut self) {
        self.work = true;
        self.unnamed_statement_empty = false;
        self.unnamed_portal_empty = false;
    }

    /// Classifies one whole frame (`bytes` from its tag), keeping track of
    /// the unnamed statement and portal. True if it does no work.
    pub fn classify(&mut self, header: &FrameHeader, bytes: &[u8]) -> bool {
        let idle =
            bytes.len() == header.frame_len && self.is_ping(header.tag, &bytes[HEADER_LEN..]);
        if !idle {
            self.work();
        }
        idle
    }

    fn is_ping(&mut self, tag: u8, body: &[u8]) -> bool {
        match tag {
            b'S' | b'H' => body.is_empty(),
            b'Q' => {
                // A simple Query replaces the unnamed statement and portal.
                self.unnamed_statement_empty = false;
                self.unnamed_portal_empty = false;
                let sql = cstr(body).map_or(body, |(sql, _)| sql);
                let ok = matches!(cstr(body), Some((_, []))) && empty_sql(sql);
                if !ok {
                    self.forget_if_dropping(sql);
                }
                ok
            }
            b'P' => {
                let Some((name, rest)) = cstr(body) else {
                    return false;
                };
                let Some((sql, rest)) = cstr(rest) else {
                    return false;
                };
                let Some((types, rest)) = int16(rest) else {
                    return false;
                };
                let ok = empty_sql(sql) && types >= 0 && rest.len() == 4 * types as usize;
                if !ok {
                    self.forget_if_dropping(sql);
                }
                if name.is_empty() {
                    self.unnamed_statement_empty = ok;
                    self.unnamed_portal_empty = false;
                    return ok;
                }
                self.empty_named.retain(|n| **n != *name);
                if ok && name.len() <= MAX_NAME && self.empty_named.len() < MAX_NAMED {
                    self.empty_named.push(name.into());
                    return true;
                }
                false
            }
            b'B' => {
                let ok = empty_bind(body).is_some_and(|statement| self.empty(statement));
                self.unnamed_portal_empty = ok;
                ok
            }
            b'D' => match body {
                [b'S', name @ .., 0] => self.empty(name),
                [b'P', 0] => self.unnamed_portal_empty,
                _ => false,
            },
            b'C' => {
                // Closing is work; a closed name is empty no more.
                if let [b'S', name @ .., 0] = body {
                    self.empty_named.retain(|n| **n != *name);
                }
                false
            }
            b'E' => body.len() == 5 && body[0] == 0 && self.unnamed_portal_empty,
            _ => false,
        }
    }

    /// `statement` (a name, or the unnamed one) holds an empty statement.
    fn empty(&self, statement: &[u8]) -> bool {
        if statement.is_empty() {
            self.unnamed_statement_empty
        } else {
            self.empty_named.iter().any(|n| **n == *statement)
        }
    }

    /// A statement that may drop prepared statements forgets the named ones.
    fn forget_if_dropping(&mut self, sql: &[u8]) {
        if !self.empty_named.is_empty()
            && (contains_word(sql, b"deallocate") || contains_word(sql, b"discard"))
        {
            self.empty_named.clear();
        }
    }
}

/// How many named empty statements are remembered, and how long a name.
const MAX_NAMED: usize = 4;
const MAX_NAME: usize = 64;

/// `word` (lower case ASCII) in `text`, in any case.
fn contains_word(text: &[u8], word: &[u8]) -> bool {
    text.windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// Whether the client's bytes walked in this batch did work (or belong to
/// a message that will: one still streaming through, or one whose header
/// has arrived and that cannot be a ping). Resets the watch for the next
/// batch. A ping split across reads counts when it is whole, as a ping.
pub fn work_in_batch(watch: &mut PingWatch, scanner: &Scanner) -> bool {
    let work = std::mem::take(&mut watch.work);
    // Bytes that finish a frame streamed through from an earlier read.
    let rest_of_work = watch.mid_frame && scanner.walked() > 0;
    watch.mid_frame = !scanner.at_boundary();
    work || rest_of_work || watch.mid_frame || scanner.waiting_for().is_some_and(|h| !candidate(&h))
}

/// A frame that may be a ping: its body decides.
fn candidate(header: &FrameHeader) -> bool {
    match header.tag {
        b'S' | b'H' => header.frame_len == HEADER_LEN,
        b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' => header.frame_len <= MAX_PING_FRAME,
        _ => false,
    }
}

/// A session's client-side hook, watched for pings. Hands the hook exactly
/// what it asked for: a frame it let pass but that may be a ping is read
/// whole here and not shown to it.
#[derive(Debug)]
pub struct Watched<'a, H> {
    hook: &'a mut H,
    watch: &'a mut PingWatch,
}

impl<'a, H: Hook> Watched<'a, H> {
    pub fn new(hook: &'a mut H, watch: &'a mut PingWatch) -> Self {
        Watched { hook, watch }
    }
}

impl<H: Hook> Hook for Watched<'_, H> {
    fn batch(&mut self) {
        self.hook.batch();
    }

    fn interest(&mut self, header: &FrameHeader) -> Interest {
        let asked = self.hook.interest(header);
        if !candidate(header) {
            self.watch.work();
            // A statement the watch cannot read may drop prepared ones.
            if matches!(header.tag, b'Q' | b'P') && !matches!(asked, Interest::Whole { .. }) {
                self.watch.empty_named.clear();
            }
            return asked;
        }
        self.watch.in_hand = Some(asked);
        match asked {
            Interest::Pass => Interest::Whole {
                max_len: header.frame_len,
            },
            other => other,
        }
    }

    fn frame(&mut self, header: &FrameHeader, bytes: &[u8]) -> Verdict {
        match self.watch.in_hand.take() {
            Some(asked) => {
                self.watch.classify(header, bytes);
                if asked == Interest::Pass {
                    Verdict::Forward
                } else {
                    self.hook.frame(header, bytes)
                }
            }
            None => {
                if matches!(header.tag, b'Q' | b'P') {
                    self.watch.forget_if_dropping(&bytes[HEADER_LEN..]);
                }
                self.hook.frame(header, bytes)
            }
        }
    }
}

/// A NUL-terminated string at the start of `b`, and what follows it.
fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((&b[..end], &b[end + 1..]))
}

fn int16(b: &[u8]) -> Option<(i16, &[u8])> {
    let (n, rest) = b.split_first_chunk::<2>()?;
    Some((i16::from_be_bytes(*n), rest))
}

/// A Bind of the unnamed portal with no parameters (format codes for
/// results are allowed): the statement it binds.
fn empty_bind(body: &[u8]) -> Option<&[u8]> {
    let ([], rest) = cstr(body)? else {
        return None;
    };
    let (statement, rest) = cstr(rest)?;
    bind_tail_is_empty(rest).then_some(statement)
}

fn bind_tail_is_empty(rest: &[u8]) -> bool {
    let Some((formats, rest)) = int16(rest) else {
        return false;
    };
    if formats < 0 || rest.len() < 2 * formats as usize {
        return false;
    }
    let rest = &rest[2 * formats as usize..];
    let Some((0, rest)) = int16(rest) else {
        return false;
    };
    let Some((results, rest)) = int16(rest) else {
        return false;
    };
    results >= 0 && rest.len() == 2 * results as usize
}

/// True when `sql` holds no statement: only whitespace (as PostgreSQL's
/// scanner counts it), semicolons, `--` comments and (nested) `/* */`
/// comments. An unterminated comment is an error, not a ping.
pub fn empty_sql(sql: &[u8]) -> bool {
    let mut i = 0;
    while i < sql.len() {
        match (sql[i], sql.get(i + 1)) {
            (b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | b';', _) => i += 1,
            (b'-', Some(b'-')) => {
                i += 2;
                while i < sql.len() && sql[i] != b'\n' && sql[i] != b'\r' {
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                let mut depth = 1;
                i += 2;
                while depth > 0 {
                    match (sql.get(i), sql.get(i + 1)) {
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                        }
                        (Some(_), _) => i += 1,
                        (None, _) => return false,
                    }
                }
            }
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::put_frame;
    use crate::session::hook::NoHook;
    use crate::session::walk::{walk_from_client, Splices};
    use bytes::{Buf, BytesMut};

    /// Walks `stream` fed in `chunk`-byte reads as the pump does and says,
    /// per read, whether it did work.
    fn batches(stream: &[u8], chunk: usize, hook: &mut impl Hook) -> Vec<bool> {
        let mut watch = PingWatch::default();
        let mut scanner = Scanner::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            let mut watched = Watched::new(&mut *hook, &mut watch);
            walk_from_client(&mut scanner, &buf, &mut watched, &mut Splices::default()).unwrap();
            out.push(work_in_batch(&mut watch, &scanner));
            buf.advance(scanner.walked());
            scanner.consumed();
        }
        out
    }

    fn frames(list: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for (tag, body) in list {
            put_frame(&mut out, *tag, body);
        }
        out.to_vec()
    }

    fn any_work(stream: &[u8]) -> bool {
        batches(stream, stream.len().max(1), &mut NoHook)[0]
    }

    const EMPTY_PARSE: &[u8] = b"\0\0\0\0";
    const EMPTY_BIND: &[u8] = b"\0\0\0\0\0\0\0\0";

    #[test]
    fn empty_statements_are_only_whitespace_semicolons_and_comments() {
        for sql in [
            "",
            ";",
            " ; ;\n\t\r\x0b\x0c",
            "-- hello",
            "-- a\n;/* b /* nested */ c */ ;",
            "/**/",
        ] {
            assert!(empty_sql(sql.as_bytes()), "{sql:?}");
        }
        for sql in [
            "select 1",
            "; select 1",
            "/* unterminated",
            "/* /* */",
            "-",
            "/",
            "--x\nlisten x",
            "\u{a0}",
        ] {
            assert!(!empty_sql(sql.as_bytes()), "{sql:?}");
        }
    }

    #[test]
    fn the_pools_pings_are_not_work() {
        // DBConnection/Postgrex: a bare Sync.
        assert!(!any_work(&frames(&[(b'S', b"")])));
        // psycopg_pool: an empty simple Query (and `;`).
        assert!(!any_work(&frames(&[(b'Q', b"\0")])));
        assert!(!any_work(&frames(&[(b'Q', b" ; \0")])));
        // pgjdbc isValid: the empty statement over the extended protocol.
        assert!(!any_work(&frames(&[
            (b'P', EMPTY_PARSE),
            (b'B', EMPTY_BIND),
            (b'D', b"P\0"),
            (b'E', b"\0\0\0\0\0"),
            (b'S', b""),
        ])));
        assert!(!any_work(&frames(&[(b'H', b"")])));
    }

    #[test]
    fn anything_else_is_work() {
        for stream in [
            frames(&[(b'Q', b"select 1\0")]),
            frames(&[(b'S', b""), (b'Q', b"select 1\0")]),
            frames(&[(b'Q', b"\0"), (b'Q', b";listen x\0")]),
            // Malformed: text after the NUL, a Sync with a body.
            frames(&[(b'Q', b"\0x\0")]),
            frames(&[(b'S', b"x")]),
            // A named statement, or a Bind to one not known to be empty.
            frames(&[(b'P', b"s1\0select 1\0\0\0")]),
            frames(&[
                (b'B', b"\0s1\0\0\0\0\0\0\0"),
                (b'E', b"\0\0\0\0\0"),
                (b'S', b""),
            ]),
            // Execute of an unnamed portal not bound to an empty statement.
            frames(&[(b'E', b"\0\0\0\0\0"), (b'S', b"")]),
            // Bind with a parameter.
            frames(&[
                (b'P', EMPTY_PARSE),
                (b'B', b"\0\0\0\0\0\x01\0\0\0\x01x\0\0"),
            ]),
            frames(&[(b'F', b"\0\0\0\x01\0\0\0\0\0\0")]),
            frames(&[(b'C', b"S\0")]),
            frames(&[(b'd', b"row\n")]),
            // Whitespace past the bound is not looked at.
            frames(&[(b'Q', &[&[b' '; MAX_PING_FRAME][..], b"\0"].concat())]),
        ] {
            assert!(any_work(&stream), "{stream:?}");
        }
    }

    /// The empty statement is remembered across batches, and forgotten as
    /// soon as anything replaces it.
    #[test]
    fn the_unnamed_statement_is_tracked_across_batches() {
        let ping = frames(&[(b'P', EMPTY_PARSE), (b'S', b"")]);
        let exec = frames(&[(b'B', EMPTY_BIND), (b'E', b"\0\0\0\0\0"), (b'S', b"")]);
        let mut stream = ping.clone();
        stream.extend(&exec);
        let cut = ping.len();
        let mut watch = PingWatch::default();
        let mut scanner = Scanner::default();
        let mut results = Vec::new();
        for part in [&stream[..cut], &stream[cut..]] {
            let mut hook = NoHook;
            let mut w = Watched::new(&mut hook, &mut watch);
            walk_from_client(&mut scanner, part, &mut w, &mut Splices::default()).unwrap();
            results.push(work_in_batch(&mut watch, &scanner));
            scanner.consumed();
        }
        assert_eq!(results, [false, false]);
        // A real Parse in between: the Bind/Execute run it.
        let mut stream = ping.clone();
        stream.extend(frames(&[(b'P', b"\0select 1\0\0\0"), (b'S', b"")]));
        stream.extend(&exec);
        assert!(any_work(&stream));
        // So does a simple Query, which replaces the unnamed statement.
        let mut stream = ping;
        stream.extend(frames(&[(b'Q', b"\0")]));
        stream.extend(&exec);
        assert!(any_work(&stream));
    }

    /// pgjdbc's `isValid()` statement, once server-prepared under a name,
    /// is bound again without a Parse: still a ping, until a Close, a
    /// `DISCARD`/`DEALLOCATE` or an unreadable statement may have dropped it.
    #[test]
    fn a_named_empty_statement_is_remembered_until_it_may_be_dropped() {
        let parse = frames(&[(b'P', b"S_1\0\0\0\0"), (b'S', b"")]);
        let exec = frames(&[
            (b'B', b"\0S_1\0\0\0\0\0\0\0"),
            (b'D', b"P\0"),
            (b'E', b"\0\0\0\0\0"),
            (b'S', b""),
        ]);
        let run = |parts: &[Vec<u8>]| {
            let stream = parts.concat();
            let mut watch = PingWatch::default();
            let mut scanner = Scanner::default();
            let mut out = Vec::new();
            for part in parts {
                let mut hook = NoHook;
                let mut w = Watched::new(&mut hook, &mut watch);
                walk_from_client(&mut scanner, part, &mut w, &mut Splices::default()).unwrap();
                out.push(work_in_batch(&mut watch, &scanner));
                scanner.consumed();
            }
            drop(stream);
            out
        };
        let select = frames(&[(b'Q', b"select 1\0")]);
        assert_eq!(
            run(&[parse.clone(), exec.clone(), select.clone(), exec.clone()]),
            [false, false, true, false],
            "real work in between does not drop it"
        );
        for dropping in [
            frames(&[(b'Q', b"DISCARD ALL\0")]),
            frames(&[(b'Q', b"deallocate S_1\0")]),
            frames(&[(b'C', b"SS_1\0"), (b'S', b"")]),
            frames(&[(b'Q', &[&b"select 1 "[..], &[b' '; MAX_PING_FRAME]].concat())]),
        ] {
            assert_eq!(
                run(&[parse.clone(), dropping, exec.clone()]),
                [false, true, true]
            );
        }
        // Named with text: work, and never remembered.
        let real = frames(&[(b'P', b"S_2\0select 1\0\0\0"), (b'S', b"")]);
        let exec2 = frames(&[
            (b'B', b"\0S_2\0\0\0\0\0\0\0"),
            (b'E', b"\0\0\0\0\0"),
            (b'S', b""),
        ]);
        assert_eq!(run(&[real, exec2]), [true, true]);
    }

    /// A ping split at every byte is a ping; a query split anywhere is work
    /// from the read that brings its header on.
    #[test]
    fn split_pings_stay_pings_and_split_work_is_work_from_its_header() {
        let ping = frames(&[(b'Q', b"-- ping\0"), (b'S', b"")]);
        assert!(batches(&ping, 1, &mut NoHook).iter().all(|w| !w));
        let query = frames(&[(b'Q', &[&b"select "[..], &[b' '; 400], b"1\0"].concat())]);
        let work = batches(&query, 3, &mut NoHook);
        assert!(!work[0], "a partial header is nothing yet");
        assert!(work[1..].iter().all(|w| *w), "{work:?}");
    }

    /// A hook that asks for Parse whole and peeks at Bind, as the quota
    /// gate does, and records what it was shown.
    #[derive(Default)]
    struct Asking(Vec<(u8, usize)>);

    impl Hook for Asking {
        fn interest(&mut self, h: &FrameHeader) -> Interest {
            match h.tag {
                b'P' => Interest::Whole { max_len: 1 << 20 },
                b'B' => Interest::Peek { len: 9 },
                _ => Interest::Pass,
            }
        }

        fn frame(&mut self, h: &FrameHeader, bytes: &[u8]) -> Verdict {
            self.0.push((h.tag, bytes.len()));
            Verdict::Forward
        }
    }

    #[test]
    fn the_hook_sees_what_it_asked_for_and_nothing_else() {
        let stream = frames(&[
            (b'P', EMPTY_PARSE),
            (b'B', EMPTY_BIND),
            (b'E', b"\0\0\0\0\0"),
            (b'Q', b"\0"),
            (b'S', b""),
        ]);
        let mut hook = Asking::default();
        let work = batches(&stream, stream.len(), &mut hook);
        // The Bind was only peeked at (9 of 13 bytes): not read whole, so
        // it counts as work.
        assert_eq!(work, [true]);
        assert_eq!(hook.0, [(b'P', 9), (b'B', 9)]);
    }
}
