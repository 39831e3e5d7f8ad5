//! Statement classification for the free tier's row quota and statement policy.
//!
//! Given the SQL text of a simple-protocol `Query` or an extended-protocol
//! `Parse`, [`classify`] says what the quota and the tier's `deny` list need to
//! know: can it add rows, which deny-able features does it use, must row counts
//! be re-measured afterwards, and which SQL-level prepared statements it
//! prepares, executes or deallocates. It is pure: no I/O, no session state.
//!
//! Three layers, cheapest first:
//!
//! 1. **A lexical pass** ([`classify_lexical`]) that knows PostgreSQL's token
//!    rules (comments, quoted identifiers, every string form, dollar quoting,
//!    `;` between statements) and settles the statements an application sends
//!    all day (SELECT, UPDATE, DELETE, INSERT, transaction control, SET, …)
//!    in well under a microsecond, without the parser.
//! 2. **PostgreSQL's own grammar** (`pg_query`, libpg_query) for everything
//!    else, so DDL, CTEs, `EXPLAIN ANALYZE`, `PREPARE` and friends are judged by
//!    the same parser the cluster runs, not by a guess.
//! 3. **A bounded cache** of parser verdicts ([`Classifier`]), because the
//!    statements that reach the parser repeat (an ORM's CTEs, the migrations a
//!    test suite replays).
//!
//! The lexical pass only answers when its verdict is the parser's verdict on
//! valid SQL; whenever a rule could apply it says "don't know" and the parser
//! decides. The tests check that agreement over the whole statement corpus and
//! over random texts made of valid statements.
//!
//! ## What a statement's text cannot tell
//!
//! Rows added by code the statement merely triggers: a trigger or rule on the
//! table an UPDATE touches, a function a SELECT calls. That is why creating
//! triggers, rules and functions is deny-able. The built-ins that add rows
//! no tag counts (large-object writers into `pg_largeobject`, and the ones
//! that run SQL from a string) are known by name ([`ROW_ADDING_FUNCTIONS`]):
//! a statement naming one adds rows, and storing a call to one in a view,
//! default, check, policy, operator or cursor is a `function` feature.
//! A DO block is what the statements in its PL/pgSQL body are (`walk::do_block`).
//!
//! ## Session settings that change how text is read
//!
//! With `standard_conforming_strings = off` (a setting any user may change) a
//! backslash escapes the next character in an ordinary `'…'` string, so the
//! same text can hide a second statement from one reading and not the other:
//! `SELECT '\'; CREATE EXTENSION x; --'` is one harmless string with the
//! setting off, and two statements with it on. The classifier does not know the
//! session's setting, so a text with a backslash inside an ordinary string is
//! read both ways (lexer and parser), and the verdicts are combined: a feature
//! either reading finds is reported. Texts without such a backslash read the
//! same both ways and cost nothing extra.
//!
//! The text must be in an ASCII-safe encoding (UTF-8, LATIN*, EUC-*). Client
//! encodings whose multi-byte characters can contain the byte `\` (SJIS, BIG5,
//! GBK, GB18030) can shift where a string ends; the gate converts such text
//! first (`crate::rules::encoding`).

//!
//! ## Where each part lives
//!
//! - `verdict`: what a text is found to do ([`Classification`], [`Feature`],
//!   [`DenyKind`], [`Writes`]);
//! - this file: the entry points, which combine the layers and both
//!   readings of ordinary strings;
//! - `lexer`: PostgreSQL's token boundaries and identifier names;
//! - `lexical`: the fast path over those tokens;
//! - `row_functions`: the built-ins that add rows no tag counts;
//! - `parse` and `walk`: PostgreSQL's grammar, and the judgement over its
//!   tree, with `walk::do_block` for DO blocks (judged by the statements of
//!   their body, which are walked in turn);
//! - `unparsed`: leading keywords, for a text the grammar here rejects;
//! - `cache`: the shared [`Classifier`] with its bounded cache.

mod cache;
mod lexer;
mod lexical;
mod parse;
mod row_functions;
mod unparsed;
mod verdict;
mod walk;

pub use cache::{Classifier, CACHE_MAX_BYTES, CACHE_MAX_ENTRIES, CACHE_MAX_STATEMENT};
pub use row_functions::ROW_ADDING_FUNCTIONS;
pub use verdict::{Classification, DenyKind, Feature, Writes};

use lexer::{lexes_differently_without_scs, unterminated_without_scs};
use lexical::lexical_verdict;
use parse::parse_tree;
use unparsed::unparsed;
use walk::walk;

/// Fast path then parser; never panics on any input (any bytes as &str, any
/// length).
pub fn classify(sql: &str) -> Classification {
    match classify_lexical(sql) {
        Some(verdict) => verdict,
        None => classify_parsed(sql),
    }
}

/// The lexical pass alone: Some(verdict) when it can decide without the
/// parser, None otherwise.
pub fn classify_lexical(sql: &str) -> Option<Classification> {
    let (verdict, scs_sensitive) = lexical_verdict(sql, true)?;
    if !scs_sensitive {
        return Some(verdict);
    }
    // A backslash in an ordinary string: decide only when both readings agree.
    match lexical_verdict(sql, false) {
        Some((other, _)) => (other == verdict).then_some(verdict),
        // With the setting off the text does not even lex (`'C:\dir\'`): a
        // session with it off gets a syntax error and runs none of it, so the
        // first reading is the only one that can run.
        None if unterminated_without_scs(sql) => Some(verdict),
        None => None,
    }
}

/// The parser path alone, without the lexical pass in front (what [`classify`]
/// does when the lexical pass cannot decide). Public so tests and benchmarks
/// can hold the two paths against each other.
pub fn classify_parsed(sql: &str) -> Classification {
    classify_parsed_at(sql, 0)
}

/// [`classify_parsed`] for a statement found `depth` DO blocks deep.
fn classify_parsed_at(sql: &str, depth: u8) -> Classification {
    let scs_sensitive = lexes_differently_without_scs(sql);
    let on = parse_tree(sql, true).map(|tree| walk(sql, &tree, true, depth));
    if !scs_sensitive {
        return on.unwrap_or_else(|| unparsed(sql, false));
    }
    let off = parse_tree(sql, false).map(|tree| walk(sql, &tree, false, depth));
    match (on, off) {
        (Some(a), Some(b)) => a.union(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => unparsed(sql, true),
    }
}

#[cfg(test)]
mod tests;
