//! Built-in functions that add rows no command tag counts (large objects,
//! SQL run from a string or a cursor), and how a statement's text is found
//! to name one: in any identifier form, whatever the schema or case. A
//! statement naming one adds rows; storing a call to one is a `function`
//! feature.

use super::lexer::{decode_unicode_ident, ident_of, word_is, Ident, Lexer, Tok};

/// Built-in functions that add rows the statement's text and tag cannot
/// show: every way to create or grow a large object in SQL (its pages are
/// rows of `pg_largeobject`; `lo_truncate` can extend one), and the built-ins
/// that run SQL given as a string (`query_to_xml*`, `ts_stat`) or fetch from
/// a cursor by name (`cursor_to_xml*`), which may call those. Matched by name whatever the schema, case or quoting: a
/// tenant that cannot create functions cannot own another function of these
/// names, and a false match only costs a re-measurement.
pub const ROW_ADDING_FUNCTIONS: [&str; 14] = [
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_from_bytea",
    "lo_put",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "ts_stat",
    "cursor_to_xml",
    "cursor_to_xmlschema",
];

/// Whether an identifier's name is one of [`ROW_ADDING_FUNCTIONS`], in any
/// ASCII case. Called for every identifier of every fast-path statement, so
/// the length and the first letter rule out nearly all names first.
pub(super) fn is_row_adding_name(name: &[u8]) -> bool {
    (6..=26).contains(&name.len())
        && matches!(name[0] | 0x20, b'l' | b'q' | b't' | b'c')
        && ROW_ADDING_FUNCTIONS
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
}

/// Whether a `U&"…"` identifier may name a row-adding function (also when
/// it does not decode: PostgreSQL would reject it, so nothing is lost).
fn unicode_ident_matches(body: &[u8], esc: u8) -> bool {
    decode_unicode_ident(body, esc).is_none_or(|name| is_row_adding_name(&name))
}

/// Whether `text` names a function of [`ROW_ADDING_FUNCTIONS`] in any
/// identifier: plain, quoted, or `U&"…"` with or without UESCAPE. Strings
/// and comments are not identifiers (a DO block's body is judged on its own).
pub(super) fn mentions_row_adding_function(text: &str, scs: bool) -> bool {
    let mut lexer = Lexer::new(text, scs);
    let src = lexer.src;
    // A U& identifier waits for the next token, which may be UESCAPE.
    let mut unicode: Option<&[u8]> = None;
    let mut uescape = false;
    while let Some((tok, start, end)) = lexer.next_token() {
        if let Some(body) = unicode.take() {
            if uescape {
                uescape = false;
                // UESCAPE 'c': anything else does not parse anyway.
                let esc = (tok == Tok::Str && end - start == 3 && src[start] == b'\'')
                    .then(|| src[start + 1]);
                match esc {
                    Some(esc) if !unicode_ident_matches(body, esc) => continue,
                    _ => return true,
                }
            }
            if tok == Tok::Word && word_is(src, start, end, b"uescape") {
                unicode = Some(body);
                uescape = true;
                continue;
            }
            if unicode_ident_matches(body, b'\\') {
                return true;
            }
        }
        match ident_of(src, tok, start, end) {
            Some(Ident::Plain(name)) if is_row_adding_name(name) => return true,
            Some(Ident::Unicode(body)) => unicode = Some(body),
            _ => {}
        }
    }
    unicode.is_some_and(|body| unicode_ident_matches(body, b'\\'))
}
