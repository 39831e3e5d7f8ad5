//! `DO` blocks, judged by what they run.
//!
//! A DO block is code, but most of it in the wild is a wrapper around
//! statements a tier allows anyway: Postgrex re-subscribes its notifications
//! with `DO $$BEGIN LISTEN "chan"; END$$`, Oban wraps LISTEN/UNLISTEN the
//! same way. So a `plpgsql` body is compiled by PostgreSQL's own PL/pgSQL
//! grammar (libpg_query's `parse_plpgsql`), and every piece of SQL in it —
//! static statements, and the expressions of assignments, PERFORM, IF,
//! WHILE, FOR, RETURN, RAISE, cursors and declarations — is classified by
//! the same classifier as a statement sent on its own. The block is then
//! what its statements are: it adds rows if one of them can (its tag "DO"
//! counts none, so it also asks for a re-measurement), and it uses every
//! deny-able feature one of them uses.
//!
//! Refused, as `function`-kind features (fail closed): dynamic SQL, whose
//! text is only known when it runs; languages other than plpgsql; PREPARE,
//! EXECUTE of a prepared statement and DEALLOCATE inside the block (the
//! proxy follows prepared statements in the order the client sends them,
//! and a block that fails halfway leaves it unable to tell which ran); and
//! any body this module cannot settle: one that does not compile here, nests
//! DO blocks more than [`MAX_DEPTH`] deep, reads differently with
//! `standard_conforming_strings` off, asks the compiler to print its tree
//! (`#option dump`), or declares a record variable with a default value (the
//! compiled tree does not show that expression). A FETCH or MOVE adds rows
//! (its cursor may be a portal opened outside the block on any query).

use std::panic;

use pg_query::{protobuf, NodeEnum, ParserOptions};
use serde_json::Value;

use super::walk;
use crate::rules::classify::lexer::{
    ident_of, lexes_differently_without_scs, word_is, Ident, Lexer, Tok,
};
use crate::rules::classify::parse::{inner, parse_with};
use crate::rules::classify::unparsed::unparsed;
use crate::rules::classify::verdict::{
    Classification, Feature, DO, DO_DYNAMIC, DO_LANGUAGE, DO_PREPARED,
};
use crate::rules::classify::{classify_lexical, classify_parsed_at};

/// DO blocks inside DO blocks inside … : each level parses its body again.
const MAX_DEPTH: u8 = 4;

/// Each expression of a body is parsed on its own: a body with more is
/// refused rather than parsed a million times.
const MAX_EXPRESSIONS: usize = 10_000;

/// The verdict on the statements of a DO block, or the feature that refuses
/// it. `depth`: how many DO blocks deep this one is.
pub(super) fn check(stmt: &protobuf::DoStmt, depth: u8) -> Result<Classification, Feature> {
    let mut body = None;
    let mut language = "plpgsql";
    for arg in &stmt.args {
        let Some(NodeEnum::DefElem(d)) = &arg.node else {
            return Err(DO);
        };
        let Some(NodeEnum::String(value)) = inner(&d.arg) else {
            return Err(DO);
        };
        match d.defname.as_str() {
            "as" => body = Some(value.sval.as_str()),
            // PostgreSQL looks the name up as written (folded if unquoted).
            "language" => language = value.sval.as_str(),
            _ => return Err(DO),
        }
    }
    if language != "plpgsql" {
        return Err(DO_LANGUAGE);
    }
    let body = body.ok_or(DO)?;
    if depth >= MAX_DEPTH || lexes_differently_without_scs(body) || asks_for_dump(body) {
        return Err(DO);
    }
    let function = compile(body).ok_or(DO)?;
    let mut found = Found::default();
    collect(&function, &mut found, 0)?;
    if found.exprs.len() > MAX_EXPRESSIONS || record_has_default(body, &found.records) {
        return Err(DO);
    }
    let mut verdict = Classification::default();
    if found.fetches {
        verdict.add_rows(false);
    }
    for (query, mode) in found.exprs {
        let inner = classify_expr(query, mode, depth + 1);
        if inner.unparsed {
            return Err(DO);
        }
        verdict = verdict.union(inner);
    }
    if !verdict.prepares.is_empty()
        || !verdict.executes.is_empty()
        || !verdict.deallocates.is_empty()
        || !verdict.cursors.is_empty()
        || !verdict.fetches.is_empty()
    {
        return Err(DO_PREPARED);
    }
    Ok(verdict)
}

/// One PL/pgSQL expression or statement, parsed in the mode PL/pgSQL itself
/// parses it with: 0 a whole statement, 2 an expression, 3–5 an assignment.
fn classify_expr(query: &str, mode: i64, depth: u8) -> Classification {
    match mode {
        0 => classify_lexical(query).unwrap_or_else(|| classify_parsed_at(query, depth)),
        2..=5 => match parse_with(query, ParserOptions::from(mode as i32)) {
            // The body reads the same either way (checked), so one reading.
            Some(tree) => walk(query, &tree, true, depth),
            None => unparsed(query, false),
        },
        _ => unparsed(query, false),
    }
}

/// The body's PL/pgSQL tree (libpg_query's JSON), compiled from a DO
/// statement that quotes the body with a dollar tag the body does not
/// contain, so PostgreSQL reads back exactly this body whatever quotes,
/// backslashes or dollar signs it holds.
fn compile(body: &str) -> Option<Value> {
    if body.contains('\0') {
        return None;
    }
    let tag = (0..64).map(|i| format!("$pgtier{i}$")).find(|tag| {
        // The first closing tag must be the one after the body (a body
        // ending in "$pgtier0" would otherwise lend it its start).
        format!("{body}{tag}").find(tag.as_str()) == Some(body.len())
    })?;
    let text = format!("DO {tag}{body}{tag}");
    let functions = panic::catch_unwind(|| pg_query::parse_plpgsql(&text))
        .ok()?
        .ok()?;
    match functions {
        Value::Array(mut list) if list.len() == 1 => list.pop(),
        _ => None,
    }
}

/// What the compiled tree holds that matters here.
#[derive(Default)]
struct Found<'a> {
    /// (SQL text, parse mode) of every PL/pgSQL expression and statement.
    exprs: Vec<(&'a str, i64)>,
    /// Names of record (and composite-typed) variables.
    records: Vec<&'a str>,
    /// A FETCH or MOVE: it runs whatever query its cursor was opened on.
    fetches: bool,
}

/// Walks every node of the tree: no statement kind is skipped, so a kind
/// this code does not name still has its expressions checked.
fn collect<'a>(value: &'a Value, found: &mut Found<'a>, level: usize) -> Result<(), Feature> {
    if level > 256 {
        return Err(DO);
    }
    match value {
        Value::Array(items) => {
            for item in items {
                collect(item, found, level + 1)?;
            }
        }
        Value::Object(fields) => {
            for (key, field) in fields {
                match key.as_str() {
                    // EXECUTE, FOR … IN EXECUTE, OPEN … FOR EXECUTE,
                    // RETURN QUERY EXECUTE.
                    "PLpgSQL_stmt_dynexecute" | "PLpgSQL_stmt_dynfors" | "dynquery" => {
                        return Err(DO_DYNAMIC)
                    }
                    "PLpgSQL_expr" => {
                        let query = field.get("query").and_then(Value::as_str).ok_or(DO)?;
                        let mode = field.get("parseMode").and_then(Value::as_i64).ok_or(DO)?;
                        found.exprs.push((query, mode));
                    }
                    // FETCH/MOVE from a cursor variable, which may name a
                    // portal opened outside the block on any query.
                    "PLpgSQL_stmt_fetch" => {
                        found.fetches = true;
                        collect(field, found, level + 1)?;
                    }
                    "PLpgSQL_rec" => {
                        let name = field.get("refname").and_then(Value::as_str).ok_or(DO)?;
                        found.records.push(name);
                        collect(field, found, level + 1)?;
                    }
                    _ => collect(field, found, level + 1)?,
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether the body starts with compiler options that include `dump`
/// (`#option dump`), which makes the PL/pgSQL compiler print the whole tree
/// on the proxy's standard output. Options come before the first block
/// (`<<label>>`, DECLARE or BEGIN).
fn asks_for_dump(body: &str) -> bool {
    let mut lexer = Lexer::new(body, true);
    let src = lexer.src;
    while let Some((tok, start, end)) = lexer.next_token() {
        match ident_of(src, tok, start, end) {
            Some(Ident::Plain(w)) if w.eq_ignore_ascii_case(b"dump") => return true,
            Some(Ident::Plain(w))
                if w.eq_ignore_ascii_case(b"begin") || w.eq_ignore_ascii_case(b"declare") =>
            {
                return false
            }
            Some(Ident::Unicode(_)) => return true,
            _ if tok == Tok::Other && src[start] == b'<' => return false,
            _ => {}
        }
    }
    false
}

/// Whether a declaration of one of the record variables `names` may carry a
/// default (`r record := …`, `= …`, `DEFAULT …`): libpg_query's tree leaves
/// a record's default out, so such a body cannot be checked. Declarations
/// start right after DECLARE or after a `;`; one of a record is its name
/// followed by a word (its type, CONSTANT, ALIAS, …). An assignment `r :=`
/// is followed by an operator and is in the tree anyway. One pass over the
/// tokens, whatever the number of records.
fn record_has_default(body: &str, names: &[&str]) -> bool {
    if names.is_empty() {
        return false;
    }
    let names: std::collections::HashSet<Vec<u8>> = names
        .iter()
        .map(|n| n.as_bytes().to_ascii_lowercase())
        .collect();
    let mut lexer = Lexer::new(body, true);
    let src = lexer.src;
    // The previous token was `;` or DECLARE.
    let mut at_start = false;
    #[derive(PartialEq)]
    enum State {
        Outside,
        AfterName,
        InDeclaration,
    }
    let mut state = State::Outside;
    while let Some((tok, start, end)) = lexer.next_token() {
        match state {
            State::AfterName => {
                state = if matches!(tok, Tok::Word | Tok::QuotedIdent) {
                    State::InDeclaration
                } else {
                    State::Outside
                };
            }
            State::InDeclaration => {
                if (tok == Tok::Other && src[start] == b'=')
                    || (tok == Tok::Word && word_is(src, start, end, b"default"))
                {
                    return true;
                }
                if tok == Tok::Semi {
                    state = State::Outside;
                }
            }
            State::Outside if at_start => {
                let named = match ident_of(src, tok, start, end) {
                    Some(Ident::Plain(w)) => names.contains(&w.to_ascii_lowercase()),
                    Some(Ident::Unicode(_)) => true,
                    None => false,
                };
                if named {
                    state = State::AfterName;
                }
            }
            State::Outside => {}
        }
        at_start = tok == Tok::Semi || (tok == Tok::Word && word_is(src, start, end, b"declare"));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compiled tree really omits a record's default (so the textual
    /// check is what refuses it), and the check spares assignments.
    #[test]
    fn record_defaults_are_caught_by_the_text() {
        let body = "DECLARE r record := (SELECT lo_creat(-1)); BEGIN END";
        let tree = compile(body).expect("libpg_query compiles it");
        let mut found = Found::default();
        collect(&tree, &mut found, 0).unwrap();
        assert_eq!(found.records, ["r"]);
        assert!(
            found.exprs.iter().all(|(q, _)| !q.contains("lo_creat")),
            "{:?}",
            found.exprs
        );
        assert!(record_has_default(body, &["r"]));
        assert!(record_has_default(
            "DECLARE \"R\" CONSTANT record DEFAULT 1; BEGIN END",
            &["R"]
        ));
        assert!(!record_has_default(
            "DECLARE r record; BEGIN r := (SELECT 1); END",
            &["r"]
        ));
        assert!(!record_has_default(
            "DECLARE r record; x int = 1; BEGIN END",
            &["r"]
        ));
    }
}
