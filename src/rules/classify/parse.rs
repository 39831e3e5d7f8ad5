//! PostgreSQL's own grammar (libpg_query), called so that no statement can
//! take a session thread down: a text that does not parse, nests too deep
//! for the protobuf decoder, or makes the parser panic is simply "does not
//! parse". Also the one accessor every reader of the tree needs.

use std::panic::{self, AssertUnwindSafe};

use pg_query::protobuf;
use pg_query::{NodeEnum, ParserOptions};

/// PostgreSQL's raw parse tree of `sql`, or None when it does not parse (or
/// the tree is too deep for the protobuf decoder, or pg_query panics, which it
/// should not, but a bad statement must never take a session thread down).
pub(super) fn parse_tree(sql: &str, scs: bool) -> Option<protobuf::ParseResult> {
    let options = if scs {
        ParserOptions::DEFAULT
    } else {
        ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS
    };
    parse_with(sql, options)
}

/// [`parse_tree`] with any parse mode (PL/pgSQL expressions use their own).
pub(super) fn parse_with(sql: &str, options: ParserOptions) -> Option<protobuf::ParseResult> {
    panic::catch_unwind(AssertUnwindSafe(|| pg_query::parse(sql, options)))
        .ok()?
        .ok()
        .map(|result| result.protobuf)
}

pub(super) fn inner(node: &Option<Box<protobuf::Node>>) -> Option<&NodeEnum> {
    node.as_deref().and_then(|n| n.node.as_ref())
}
