//! The lexical fast path: the statements an application sends all day
//! (SELECT, UPDATE, DELETE, INSERT, transaction control, SET, …) judged from
//! their tokens alone, in well under a microsecond. It answers only when its
//! verdict is the parser's on valid SQL; otherwise it says "don't know" and
//! the parser decides.

use super::lexer::{ident_of, word_is, Ident, Lexer, Tok};
use super::row_functions::is_row_adding_name;
use super::verdict::Classification;

/// What the first word of a statement makes of it, for the fast path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lead {
    /// SELECT, VALUES, TABLE: plain unless the word INTO appears (SELECT INTO).
    Select,
    /// WITH: plain unless INSERT, MERGE, UPDATE or INTO appears.
    With,
    /// DELETE: cannot add rows (a WITH in front starts with WITH).
    Delete,
    /// UPDATE: cannot add rows, but grows storage (new row versions).
    Update,
    /// INSERT: adds rows; a second INSERT or a MERGE (a CTE) goes to the parser.
    Insert,
    /// EXPLAIN without ANALYZE plans and runs nothing.
    Explain,
    /// COPY t FROM adds rows, COPY t TO does not, COPY (query) → parser.
    Copy,
    /// DISCARD ALL deallocates; DISCARD PLANS / SEQUENCES / TEMP are plain.
    Discard,
    Truncate,
    Call,
    /// Transaction control, SET/RESET/SHOW, cursors, LISTEN/NOTIFY, LOCK,
    /// VACUUM/ANALYZE: plain whatever follows.
    Utility,
}

fn lead_of(word: &[u8]) -> Option<Lead> {
    if word.len() > 9 {
        return None;
    }
    let mut buf = [0u8; 9];
    let lower = &mut buf[..word.len()];
    lower.copy_from_slice(word);
    lower.make_ascii_lowercase();
    Some(match &*lower {
        b"select" | b"values" | b"table" => Lead::Select,
        b"with" => Lead::With,
        b"update" => Lead::Update,
        b"delete" => Lead::Delete,
        b"insert" => Lead::Insert,
        b"explain" => Lead::Explain,
        b"copy" => Lead::Copy,
        b"discard" => Lead::Discard,
        b"truncate" => Lead::Truncate,
        b"call" => Lead::Call,
        b"begin" | b"start" | b"commit" | b"end" | b"rollback" | b"abort" | b"savepoint"
        // FETCH and MOVE run a portal, which may add rows: the parser names it.
        | b"release" | b"set" | b"reset" | b"show" | b"close" | b"listen"
        | b"unlisten" | b"notify" | b"lock" | b"vacuum" | b"analyze" | b"analyse"
        | b"checkpoint" => Lead::Utility,
        _ => return None,
    })
}

/// One statement's progress through the fast path.
#[derive(Default)]
struct LexPiece {
    lead: Option<Lead>,
    tokens: usize,
    /// COPY: Some(true) once FROM is seen at depth 0, Some(false) for TO.
    copy_from: Option<bool>,
    /// DISCARD: Some(true) for ALL, Some(false) for the other targets.
    discard_all: Option<bool>,
}

/// The fast path under one reading of ordinary strings; None when the parser
/// must decide. The bool: the text has a backslash in an ordinary string.
pub(super) fn lexical_verdict(sql: &str, scs: bool) -> Option<(Classification, bool)> {
    let mut lexer = Lexer::new(sql, scs);
    let src = lexer.src;
    let mut out = Classification::default();
    let mut piece = LexPiece::default();
    let mut depth = 0usize;
    while let Some((tok, start, end)) = lexer.next_token() {
        if tok == Tok::Semi {
            if depth != 0 {
                return None; // only CREATE RULE has `;` inside parentheses
            }
            finish_piece(&piece, &mut out)?;
            piece = LexPiece::default();
            continue;
        }
        piece.tokens += 1;
        match tok {
            Tok::LParen => depth += 1,
            Tok::RParen => depth = depth.saturating_sub(1),
            _ => {}
        }
        let lead = match piece.lead {
            Some(lead) => lead,
            None => {
                // The first token of a statement.
                if tok != Tok::Word {
                    return None;
                }
                piece.lead = Some(lead_of(&src[start..end])?);
                continue;
            }
        };
        // A name that may be a row-adding function: the parser decides
        // (a U& identifier is only known once decoded).
        match ident_of(src, tok, start, end) {
            Some(Ident::Plain(name)) if is_row_adding_name(name) => return None,
            Some(Ident::Unicode(_)) => return None,
            _ => {}
        }
        let word = |kw: &[u8]| tok == Tok::Word && word_is(src, start, end, kw);
        match lead {
            Lead::Select => {
                if word(b"into") {
                    return None;
                }
            }
            Lead::With => {
                if word(b"into") || word(b"insert") || word(b"merge") || word(b"update") {
                    return None;
                }
            }
            Lead::Insert => {
                if word(b"insert") || word(b"merge") {
                    return None;
                }
            }
            Lead::Explain => {
                if word(b"analyze") || word(b"analyse") {
                    return None;
                }
            }
            Lead::Copy => {
                if piece.tokens == 2 && tok == Tok::LParen {
                    return None; // COPY (query) TO: the query may insert
                }
                if depth == 0 && piece.copy_from.is_none() {
                    if word(b"from") {
                        piece.copy_from = Some(true);
                    } else if word(b"to") {
                        piece.copy_from = Some(false);
                    }
                }
            }
            Lead::Discard => {
                if piece.tokens != 2 || tok != Tok::Word {
                    return None;
                }
                if word(b"all") {
                    piece.discard_all = Some(true);
                } else if word(b"plans")
                    || word(b"sequences")
                    || word(b"temp")
                    || word(b"temporary")
                {
                    piece.discard_all = Some(false);
                } else {
                    return None;
                }
            }
            Lead::Delete | Lead::Update | Lead::Truncate | Lead::Call | Lead::Utility => {}
        }
    }
    if lexer.unterminated || depth != 0 {
        return None;
    }
    finish_piece(&piece, &mut out)?;
    Some((out, lexer.scs_sensitive))
}

/// Adds one finished statement's verdict; None when it needs the parser.
fn finish_piece(piece: &LexPiece, out: &mut Classification) -> Option<()> {
    let Some(lead) = piece.lead else {
        return Some(()); // nothing but whitespace and comments
    };
    match lead {
        Lead::Select | Lead::With | Lead::Delete | Lead::Explain | Lead::Utility => {}
        Lead::Update => out.grows_storage = true,
        Lead::Insert => out.add_rows(true),
        Lead::Copy => {
            if piece.copy_from? {
                out.add_rows(true);
            }
        }
        Lead::Discard => {
            if piece.discard_all? {
                out.deallocates.push(None);
            }
        }
        Lead::Truncate => out.remeasure = true,
        Lead::Call => out.add_rows(false),
    }
    Some(())
}
