//! The verdict on a text PostgreSQL's grammar here rejects: features from
//! the leading keywords of each `;`-separated piece, and rows taken as added
//! (fail closed). This matters only when the cluster's grammar is newer than
//! the embedded one, or a statement nests too deep for the tree's decoder.

use super::lexer::{Lexer, Tok};
use super::verdict::*;

/// The verdict for a text the parser rejects: features from the leading
/// keywords of each `;`-separated piece (under both readings of ordinary
/// strings when they differ), and rows conservatively.
pub(super) fn unparsed(sql: &str, scs_sensitive: bool) -> Classification {
    let mut out = Classification {
        adds_rows: true,
        remeasure: true,
        unparsed: true,
        ..Classification::default()
    };
    out.features = leading_features(sql, true);
    if scs_sensitive {
        for f in leading_features(sql, false) {
            if !out.features.contains(&f) {
                out.features.push(f);
            }
        }
    }
    out
}

/// How many leading words of a piece the keyword rules look at
/// (`CREATE OR REPLACE TRUSTED PROCEDURAL LANGUAGE` is the longest).
const LEADING_WORDS: usize = 6;

pub(super) fn leading_features(sql: &str, scs: bool) -> Vec<Feature> {
    let mut lexer = Lexer::new(sql, scs);
    let src = lexer.src;
    let mut features = Vec::new();
    let mut words: Vec<&[u8]> = Vec::with_capacity(LEADING_WORDS);
    let mut only_words = true;
    let mut has_on = false;
    let mut depth = 0usize;
    loop {
        let token = lexer.next_token();
        let end_of_piece = match token {
            None => true,
            Some((tok, _, _)) => tok == Tok::Semi && depth == 0,
        };
        if end_of_piece {
            if let Some(f) = leading_feature(&words, has_on) {
                features.push(f);
                if f == CREATE_LANGUAGE {
                    features.push(CREATE_LANGUAGE_EXTENSION);
                }
            }
            words.clear();
            only_words = true;
            has_on = false;
        }
        let Some((tok, start, end)) = token else {
            return features;
        };
        if end_of_piece {
            continue;
        }
        match tok {
            Tok::LParen => depth += 1,
            Tok::RParen => depth = depth.saturating_sub(1),
            _ => {}
        }
        if tok == Tok::Word {
            let w = &src[start..end];
            if depth == 0 && w.eq_ignore_ascii_case(b"on") {
                has_on = true;
            }
            if only_words && words.len() < LEADING_WORDS {
                words.push(w);
            }
        } else {
            only_words = false;
        }
    }
}

/// The deny-able feature a statement starting with `words` uses, if any.
fn leading_feature(words: &[&[u8]], has_on: bool) -> Option<Feature> {
    let is = |i: usize, kw: &str| {
        words
            .get(i)
            .is_some_and(|w| w.eq_ignore_ascii_case(kw.as_bytes()))
    };
    let role_word = |i: usize| {
        if is(i, "role") {
            Some(RoleWord::Role)
        } else if is(i, "user") && !is(i + 1, "mapping") {
            Some(RoleWord::User)
        } else if is(i, "group") {
            Some(RoleWord::Group)
        } else {
            None
        }
    };
    if is(0, "create") {
        let mut i = 1;
        if is(1, "or") && is(2, "replace") {
            i = 3;
        }
        if is(i, "trusted") {
            i += 1;
        }
        if is(i, "procedural") {
            i += 1;
        }
        if is(i, "constraint") {
            i += 1;
        }
        return Some(if is(i, "language") {
            CREATE_LANGUAGE
        } else if is(i, "function") {
            CREATE_FUNCTION
        } else if is(i, "procedure") {
            CREATE_PROCEDURE
        } else if is(i, "aggregate") {
            CREATE_AGGREGATE
        } else if is(i, "trigger") {
            CREATE_TRIGGER
        } else if is(i, "event") && is(i + 1, "trigger") {
            CREATE_EVENT_TRIGGER
        } else if is(i, "rule") {
            CREATE_RULE
        } else if is(i, "extension") {
            CREATE_EXTENSION
        } else {
            return role_word(i).map(|w| role_feature(RoleVerb::Create, w));
        });
    }
    if is(0, "alter") || is(0, "drop") {
        let verb = if is(0, "alter") {
            RoleVerb::Alter
        } else {
            RoleVerb::Drop
        };
        if is(1, "extension") {
            return Some(match verb {
                RoleVerb::Alter => ALTER_EXTENSION,
                _ => DROP_EXTENSION,
            });
        }
        return role_word(1).map(|w| role_feature(verb, w));
    }
    if is(0, "do") {
        return Some(DO);
    }
    // GRANT/REVOKE of privileges always name an object after ON; role
    // membership never has ON at the top level.
    if is(0, "grant") && !has_on {
        return Some(GRANT_ROLE);
    }
    if is(0, "revoke") && !has_on {
        return Some(REVOKE_ROLE);
    }
    None
}
