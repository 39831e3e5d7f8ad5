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
//! A DO block is what the statements in its PL/pgSQL body are (`do_block`).
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

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};

use pg_query::protobuf::{self, ObjectType};
use pg_query::{NodeEnum, ParserOptions};

// ---------------------------------------------------------------------------
// The verdict
// ---------------------------------------------------------------------------

/// A statement kind a tier's `deny` list can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DenyKind {
    /// CREATE / ALTER / DROP EXTENSION.
    Extension,
    /// CREATE [OR REPLACE] FUNCTION / PROCEDURE / AGGREGATE, CREATE LANGUAGE,
    /// a DO block that cannot be checked statement by statement, a stored call
    /// of a row-adding function.
    Function,
    /// CREATE \[CONSTRAINT\] TRIGGER, CREATE EVENT TRIGGER, CREATE RULE.
    Trigger,
    /// CREATE / ALTER / DROP ROLE | USER | GROUP, GRANT / REVOKE of role membership.
    Role,
}

impl DenyKind {
    /// Every kind, in the order of the enum.
    pub const ALL: [DenyKind; 4] = [
        DenyKind::Extension,
        DenyKind::Function,
        DenyKind::Trigger,
        DenyKind::Role,
    ];

    /// The name a tier's `deny` list uses.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyKind::Extension => "extension",
            DenyKind::Function => "function",
            DenyKind::Trigger => "trigger",
            DenyKind::Role => "role",
        }
    }

    /// The inverse of [`as_str`](Self::as_str); ASCII case is ignored, so a
    /// hand-written `"Function"` in a config file still means something.
    pub fn parse(s: &str) -> Option<DenyKind> {
        DenyKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
    }
}

/// A deny-able feature a statement uses, named as PostgreSQL users know it:
/// the title of the statement's page in PostgreSQL's reference ("CREATE
/// FUNCTION" also for CREATE OR REPLACE FUNCTION, "CREATE TRIGGER" also for
/// CREATE CONSTRAINT TRIGGER, "CREATE LANGUAGE" also for TRUSTED / PROCEDURAL,
/// "CREATE USER" for CREATE USER). The proxy's message is
/// `"{name} is not available on the {tier} tier"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    pub kind: DenyKind,
    pub name: &'static str,
    /// What the client can do instead, when "upgrade the tier" is not the
    /// whole story (a DO block the tier would run if written otherwise).
    pub hint: Option<&'static str>,
}

impl Feature {
    const fn new(kind: DenyKind, name: &'static str) -> Feature {
        Feature {
            kind,
            name,
            hint: None,
        }
    }

    const fn with_hint(kind: DenyKind, name: &'static str, hint: &'static str) -> Feature {
        Feature {
            kind,
            name,
            hint: Some(hint),
        }
    }
}

const CREATE_EXTENSION: Feature = Feature::new(DenyKind::Extension, "CREATE EXTENSION");
const ALTER_EXTENSION: Feature = Feature::new(DenyKind::Extension, "ALTER EXTENSION");
const DROP_EXTENSION: Feature = Feature::new(DenyKind::Extension, "DROP EXTENSION");
const CREATE_FUNCTION: Feature = Feature::new(DenyKind::Function, "CREATE FUNCTION");
const CREATE_PROCEDURE: Feature = Feature::new(DenyKind::Function, "CREATE PROCEDURE");
const CREATE_AGGREGATE: Feature = Feature::new(DenyKind::Function, "CREATE AGGREGATE");
const CREATE_LANGUAGE: Feature = Feature::new(DenyKind::Function, "CREATE LANGUAGE");
/// `CREATE LANGUAGE name` without a HANDLER is CREATE EXTENSION in
/// PostgreSQL's grammar: it installs the language's extension, so it is both.
const CREATE_LANGUAGE_EXTENSION: Feature = Feature::new(DenyKind::Extension, "CREATE LANGUAGE");
/// A DO block whose body cannot be checked statement by statement (it does
/// not parse as PL/pgSQL here, nests too deep, or hides what it runs).
const DO: Feature = Feature::with_hint(DenyKind::Function, "DO", DO_HINT);
/// A DO block that runs dynamic SQL (EXECUTE, FOR … IN EXECUTE, OPEN … FOR
/// EXECUTE, RETURN QUERY EXECUTE): what it runs is only known when it runs.
const DO_DYNAMIC: Feature =
    Feature::with_hint(DenyKind::Function, "DO with dynamic SQL (EXECUTE)", DO_HINT);
/// `DO LANGUAGE x` for any x but plpgsql: no parser here for its body.
const DO_LANGUAGE: Feature = Feature::with_hint(
    DenyKind::Function,
    "DO in a language other than plpgsql",
    DO_HINT,
);
/// PREPARE, EXECUTE of a prepared statement, DEALLOCATE or DISCARD ALL
/// inside a DO block: the proxy follows prepared statements in the order
/// the client sends them, and a DO block that fails halfway leaves it
/// unable to tell which of them ran.
const DO_PREPARED: Feature = Feature::with_hint(
    DenyKind::Function,
    "PREPARE/EXECUTE/DEALLOCATE inside DO",
    DO_HINT,
);
const DO_HINT: &str = "A DO block runs on this tier when every statement in it is static \
     plpgsql the tier allows (LISTEN, NOTIFY, SELECT, INSERT, …); \
     upgrade the database's tier to run any DO block.";
/// A view, default, check, policy, operator, cursor or other stored object
/// that calls a function adding rows the statement text cannot show (large
/// objects, SQL run from a string): whatever later uses it adds rows without
/// saying so, so storing the call is refused like creating a function.
const STORED_ROW_FUNCTION: Feature = Feature::with_hint(
    DenyKind::Function,
    "a stored call to a large-object or SQL-running function",
    "Call lo_create, lo_put, lo_from_bytea, query_to_xml and the like directly \
     in a statement, not from a view, default, check, policy, operator or cursor, \
     or upgrade the database's tier.",
);
const CREATE_TRIGGER: Feature = Feature::new(DenyKind::Trigger, "CREATE TRIGGER");
const CREATE_EVENT_TRIGGER: Feature = Feature::new(DenyKind::Trigger, "CREATE EVENT TRIGGER");
const CREATE_RULE: Feature = Feature::new(DenyKind::Trigger, "CREATE RULE");
const GRANT_ROLE: Feature = Feature::new(DenyKind::Role, "GRANT");
const REVOKE_ROLE: Feature = Feature::new(DenyKind::Role, "REVOKE");

/// The role statements, by verb (CREATE, ALTER, DROP) and by the word the
/// user wrote (ROLE, USER, GROUP): PostgreSQL parses `ALTER USER` and
/// `ALTER ROLE` into the same node, but the user should read back their word.
const ROLE_FEATURES: [[Feature; 3]; 3] = [
    [
        Feature::new(DenyKind::Role, "CREATE ROLE"),
        Feature::new(DenyKind::Role, "CREATE USER"),
        Feature::new(DenyKind::Role, "CREATE GROUP"),
    ],
    [
        Feature::new(DenyKind::Role, "ALTER ROLE"),
        Feature::new(DenyKind::Role, "ALTER USER"),
        Feature::new(DenyKind::Role, "ALTER GROUP"),
    ],
    [
        Feature::new(DenyKind::Role, "DROP ROLE"),
        Feature::new(DenyKind::Role, "DROP USER"),
        Feature::new(DenyKind::Role, "DROP GROUP"),
    ],
];

#[derive(Clone, Copy)]
enum RoleVerb {
    Create = 0,
    Alter = 1,
    Drop = 2,
}

#[derive(Clone, Copy)]
enum RoleWord {
    Role = 0,
    User = 1,
    Group = 2,
}

fn role_feature(verb: RoleVerb, word: RoleWord) -> Feature {
    ROLE_FEATURES[verb as usize][word as usize]
}

/// What running a statement (a prepared one, a portal) may write, as far
/// as the quotas care: rows (the row limit) and bytes (the storage limit).
/// Adding rows grows storage too: `rows` implies `storage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Writes {
    pub rows: bool,
    pub storage: bool,
}

impl Writes {
    pub const NONE: Writes = Writes {
        rows: false,
        storage: false,
    };
    /// What an unknown statement is taken to write (fail closed).
    pub const ALL: Writes = Writes {
        rows: true,
        storage: true,
    };
    /// Grows storage without adding rows (UPDATE, CREATE INDEX…).
    pub const STORAGE: Writes = Writes {
        rows: false,
        storage: true,
    };

    pub fn any(self) -> bool {
        self.rows || self.storage
    }

    /// Either may happen.
    pub fn or(self, other: Writes) -> Writes {
        Writes {
            rows: self.rows || other.rows,
            storage: self.storage || other.storage,
        }
    }

    /// What matters to a tenant whose limits are `rows` and `storage` (each
    /// true when that limit applies).
    pub fn matters(self, rows: bool, storage: bool) -> bool {
        (rows && self.rows) || (storage && self.storage)
    }
}

/// What the proxy's policy and row quota need to know about one Query or
/// Parse text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classification {
    /// Some statement can add rows to a table: INSERT (also inside WITH, also
    /// EXPLAIN ANALYZE INSERT), COPY … FROM (stdin, file or program),
    /// CREATE TABLE … AS, SELECT … INTO, MERGE with a WHEN NOT MATCHED … INSERT
    /// action, CREATE MATERIALIZED VIEW, REFRESH MATERIALIZED VIEW (all but the
    /// `WITH NO DATA` forms, which leave the relation empty), CALL, a call of
    /// a [`ROW_ADDING_FUNCTIONS`] function, a DO block with any of these
    /// inside or whose body cannot be checked. EXECUTE of a SQL-prepared statement is NOT
    /// decided here (see `executes`).
    pub adds_rows: bool,
    /// Some statement can grow the database's size on disk without adding
    /// rows (a tenant's storage limit refuses these as it does `adds_rows`):
    /// every statement but those known to grow nothing — SELECT (without
    /// INTO), DELETE, TRUNCATE, DROP, VACUUM, ANALYZE, SET/RESET/SHOW,
    /// transaction control, LOCK, LISTEN/NOTIFY, EXPLAIN without ANALYZE,
    /// COPY … TO, and the statements that only name others (PREPARE,
    /// EXECUTE, DECLARE, FETCH, CLOSE, DEALLOCATE, DISCARD), which are
    /// judged by what they name. UPDATE writes new row versions, CREATE
    /// INDEX / REINDEX / CLUSTER / ALTER TABLE write new files, and any
    /// statement the proxy does not know counts as growing (fail closed).
    pub grows_storage: bool,
    /// Every deny-able feature used, in statement order (usually empty).
    pub features: Vec<Feature>,
    /// Row counts change in ways command tags do not tell, so the quota should
    /// re-measure promptly after the transaction: CREATE TABLE AS, SELECT INTO,
    /// CREATE/REFRESH MATERIALIZED VIEW, TRUNCATE, DROP TABLE / SCHEMA /
    /// MATERIALIZED VIEW / OWNED, ALTER TABLE … ATTACH/DETACH PARTITION, CALL,
    /// a row-adding function, a DO block that adds rows, MERGE, and rows added where the tag does not count them: an INSERT
    /// or MERGE inside WITH (the tag is the outer statement's), under
    /// EXPLAIN ANALYZE (the tag is EXPLAIN) or inside COPY (…) TO.
    pub remeasure: bool,
    /// SQL-level `PREPARE name [(types)] AS stmt`: (name as PostgreSQL stores
    /// it, i.e. folded unless quoted; what its body writes).
    pub prepares: Vec<(String, Writes)>,
    /// SQL-level `EXECUTE name` (also `CREATE TABLE … AS EXECUTE name`,
    /// `EXPLAIN ANALYZE EXECUTE`).
    pub executes: Vec<String>,
    /// `DEALLOCATE [PREPARE] name` → Some(name); `DEALLOCATE ALL` and
    /// `DISCARD ALL` → None.
    pub deallocates: Vec<Option<String>>,
    /// SQL-level `DECLARE name CURSOR FOR query`: (name, whether its query
    /// adds rows). A cursor is a portal: `FETCH` runs it.
    pub cursors: Vec<(String, bool)>,
    /// SQL-level `FETCH`/`MOVE … name`: the portal (a cursor, or a portal
    /// the extended protocol bound) it runs.
    pub fetches: Vec<String>,
    /// The parser could not parse it; the verdict comes from leading keywords
    /// only (features from the leading keywords of each `;`-separated piece;
    /// adds_rows and remeasure = true, conservatively: the quota then refuses
    /// it only while the tenant is over its limit). PostgreSQL itself runs
    /// nothing of a Query whose text does not parse, so this matters only when
    /// the cluster's grammar is newer than the embedded one, or a statement is
    /// too deeply nested for the parse tree's decoder (about 45 levels of
    /// nested expressions).
    pub unparsed: bool,
}

impl Classification {
    /// Nothing at all to act on: the statement can pass untouched.
    pub fn is_plain(&self) -> bool {
        *self == Classification::default()
    }

    /// Whether running the text may grow the database's size: it adds rows
    /// or grows storage otherwise.
    pub fn grows(&self) -> bool {
        self.adds_rows || self.grows_storage
    }

    /// What running the text writes, as the gate tracks it per name.
    pub fn writes(&self) -> Writes {
        Writes {
            rows: self.adds_rows,
            storage: self.grows(),
        }
    }

    fn add_rows(&mut self, tag_tells: bool) {
        self.adds_rows = true;
        if !tag_tells {
            self.remeasure = true;
        }
    }

    /// Both readings of a text whose lexing depends on
    /// `standard_conforming_strings`: everything either reading reports.
    pub(crate) fn union(mut self, other: Classification) -> Classification {
        self.adds_rows |= other.adds_rows;
        self.grows_storage |= other.grows_storage;
        self.remeasure |= other.remeasure;
        self.unparsed |= other.unparsed;
        for f in other.features {
            if !self.features.contains(&f) {
                self.features.push(f);
            }
        }
        for (name, adds) in other.prepares {
            match self.prepares.iter_mut().find(|(n, _)| *n == name) {
                Some(p) => p.1 = p.1.or(adds),
                None => self.prepares.push((name, adds)),
            }
        }
        for e in other.executes {
            if !self.executes.contains(&e) {
                self.executes.push(e);
            }
        }
        for d in other.deallocates {
            if !self.deallocates.contains(&d) {
                self.deallocates.push(d);
            }
        }
        for (name, adds) in other.cursors {
            match self.cursors.iter_mut().find(|(n, _)| *n == name) {
                Some(c) => c.1 |= adds,
                None => self.cursors.push((name, adds)),
            }
        }
        for f in other.fetches {
            if !self.fetches.contains(&f) {
                self.fetches.push(f);
            }
        }
        self
    }

    /// An approximation of the heap bytes this verdict holds, for the cache's
    /// byte bound.
    fn heap_bytes(&self) -> usize {
        self.features.len() * std::mem::size_of::<Feature>()
            + self
                .prepares
                .iter()
                .map(|(n, _)| n.len() + 32)
                .sum::<usize>()
            + self.executes.iter().map(|n| n.len() + 24).sum::<usize>()
            + self.fetches.iter().map(|n| n.len() + 24).sum::<usize>()
            + self
                .cursors
                .iter()
                .map(|(n, _)| n.len() + 32)
                .sum::<usize>()
            + self
                .deallocates
                .iter()
                .map(|n| n.as_ref().map_or(0, String::len) + 24)
                .sum::<usize>()
    }
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tok {
    /// An unquoted identifier or keyword.
    Word,
    /// `"…"` or `U&"…"`: never a keyword.
    QuotedIdent,
    /// Any string constant: `'…'`, `E'…'`, `N'…'`, `B'…'`, `X'…'`, `U&'…'`, `$tag$…$tag$`.
    Str,
    /// `$1`.
    Param,
    Number,
    LParen,
    RParen,
    Semi,
    /// Operators and other punctuation, one byte at a time.
    Other,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// PostgreSQL's `ident_start`: letters, `_` and every byte of a multi-byte
/// character (so a non-breaking space is part of an identifier, as there).
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// PostgreSQL's `ident_cont`: `$` continues an identifier (`a$$b` is one
/// identifier, not the start of a dollar quote).
fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// A tokenizer that follows PostgreSQL's `scan.l` as far as token boundaries
/// go; it does not decode string contents or check numbers, because only the
/// boundaries decide which words are keywords and where statements end.
struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    /// `standard_conforming_strings`: whether `'…'` takes backslashes literally.
    scs: bool,
    /// A backslash was seen inside an ordinary `'…'` string, so the text lexes
    /// differently with `standard_conforming_strings` off.
    scs_sensitive: bool,
    /// A string, quoted identifier, dollar quote or comment ran to the end.
    unterminated: bool,
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a str, scs: bool) -> Self {
        Lexer {
            src: sql.as_bytes(),
            pos: 0,
            scs,
            scs_sensitive: false,
            unterminated: false,
        }
    }

    fn at(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    /// The next token as (kind, start, end), or None at the end.
    fn next_token(&mut self) -> Option<(Tok, usize, usize)> {
        let src = self.src;
        loop {
            while self.pos < src.len() && is_space(src[self.pos]) {
                self.pos += 1;
            }
            let start = self.pos;
            let b = *src.get(start)?;
            let next = self.at(start + 1);
            let tok = match b {
                b'-' if next == b'-' => {
                    self.pos = src[start..]
                        .iter()
                        .position(|&c| c == b'\n' || c == b'\r')
                        .map_or(src.len(), |p| start + p);
                    continue;
                }
                b'/' if next == b'*' => {
                    self.block_comment();
                    continue;
                }
                b'\'' => {
                    self.quoted(
                        start + 1,
                        if self.scs { Esc::Plain } else { Esc::Backslash },
                    );
                    Tok::Str
                }
                b'"' => {
                    self.quoted(start + 1, Esc::Ident);
                    Tok::QuotedIdent
                }
                b'$' => self.dollar(start),
                b'(' => {
                    self.pos += 1;
                    Tok::LParen
                }
                b')' => {
                    self.pos += 1;
                    Tok::RParen
                }
                b';' => {
                    self.pos += 1;
                    Tok::Semi
                }
                b'0'..=b'9' => self.number(start),
                b'.' if next.is_ascii_digit() => self.number(start),
                _ if is_ident_start(b) => self.word_or_prefixed(start, b, next),
                _ => {
                    self.pos += 1;
                    Tok::Other
                }
            };
            return Some((tok, start, self.pos));
        }
    }

    /// `/* … */`, nested as in PostgreSQL.
    fn block_comment(&mut self) {
        let src = self.src;
        let mut depth = 0usize;
        let mut i = self.pos;
        while i < src.len() {
            match (src[i], self.at(i + 1)) {
                (b'/', b'*') => {
                    depth += 1;
                    i += 2;
                }
                (b'*', b'/') => {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        self.pos = i;
                        return;
                    }
                }
                _ => i += 1,
            }
        }
        self.unterminated = true;
        self.pos = src.len();
    }

    /// The body of a quoted token starting at `i` (just past the opening
    /// quote), up to and including the closing quote.
    fn quoted(&mut self, mut i: usize, esc: Esc) {
        let src = self.src;
        let quote = if esc == Esc::Ident { b'"' } else { b'\'' };
        while i < src.len() {
            let c = src[i];
            if c == quote {
                if esc != Esc::Bits && self.at(i + 1) == quote {
                    i += 2; // '' or "" stands for one quote
                    continue;
                }
                self.pos = i + 1;
                return;
            }
            if c == b'\\' {
                match esc {
                    Esc::Backslash => {
                        i += 2;
                        continue;
                    }
                    Esc::Plain => self.scs_sensitive = true,
                    Esc::Ident | Esc::Bits | Esc::Unicode => {}
                }
            }
            i += 1;
        }
        self.unterminated = true;
        self.pos = src.len();
    }

    /// `$1`, `$tag$…$tag$`, or a lone `$`.
    fn dollar(&mut self, start: usize) -> Tok {
        let src = self.src;
        let next = self.at(start + 1);
        if next.is_ascii_digit() {
            let mut i = start + 1;
            while i < src.len() && src[i].is_ascii_digit() {
                i += 1;
            }
            self.pos = i;
            return Tok::Param;
        }
        // The tag: dolq_start dolq_cont*, where neither includes `$`.
        let mut i = start + 1;
        if i < src.len() && is_ident_start(src[i]) {
            i += 1;
            while i < src.len() && (is_ident_start(src[i]) || src[i].is_ascii_digit()) {
                i += 1;
            }
        }
        if self.at(i) != b'$' {
            self.pos = start + 1;
            return Tok::Other;
        }
        let delim = &src[start..=i];
        let body = i + 1;
        // PostgreSQL ends the string at the first occurrence of the same
        // delimiter (a longer `$x$` that merely contains it gives back its
        // last `$`, so every `$` is a candidate start).
        self.pos = match src[body..].windows(delim.len()).position(|w| w == delim) {
            Some(p) => body + p + delim.len(),
            None => {
                self.unterminated = true;
                src.len()
            }
        };
        Tok::Str
    }

    /// A number, with any trailing junk PostgreSQL would reject; never a `$`,
    /// which starts a dollar quote right after a number (`1$$…$$`).
    fn number(&mut self, start: usize) -> Tok {
        let src = self.src;
        let mut i = start;
        while i < src.len() {
            let c = src[i];
            if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c >= 0x80 {
                i += 1;
                if (c == b'e' || c == b'E') && matches!(self.at(i), b'+' | b'-') {
                    i += 1;
                }
            } else {
                break;
            }
        }
        self.pos = i;
        Tok::Number
    }

    /// An identifier, or a string with a one-letter prefix (`E'…'`, `B'…'`,
    /// `X'…'`, `N'…'`, `U&'…'`, `U&"…"`).
    fn word_or_prefixed(&mut self, start: usize, b: u8, next: u8) -> Tok {
        let lower = b.to_ascii_lowercase();
        if next == b'\'' {
            match lower {
                b'e' => {
                    self.quoted(start + 2, Esc::Backslash);
                    return Tok::Str;
                }
                b'b' | b'x' => {
                    self.quoted(start + 2, Esc::Bits);
                    return Tok::Str;
                }
                b'n' => {
                    let esc = if self.scs { Esc::Plain } else { Esc::Backslash };
                    self.quoted(start + 2, esc);
                    return Tok::Str;
                }
                _ => {}
            }
        }
        if lower == b'u' && next == b'&' {
            match self.at(start + 2) {
                b'\'' => {
                    self.quoted(start + 3, Esc::Unicode);
                    return Tok::Str;
                }
                b'"' => {
                    self.quoted(start + 3, Esc::Ident);
                    return Tok::QuotedIdent;
                }
                _ => {}
            }
        }
        let src = self.src;
        let mut i = start + 1;
        while i < src.len() && is_ident_cont(src[i]) {
            i += 1;
        }
        self.pos = i;
        Tok::Word
    }
}

/// How a quoted token treats `\` and doubled quotes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Esc {
    /// `'…'` with `standard_conforming_strings` on: `''` only; a `\` is noted.
    Plain,
    /// `E'…'`, or `'…'` with it off: `\x` and `''`.
    Backslash,
    /// `U&'…'`: `''` only, whatever the setting.
    Unicode,
    /// `B'…'`, `X'…'`: the first quote ends it.
    Bits,
    /// `"…"`: `""` only.
    Ident,
}

/// Whether `sql` has a backslash inside an ordinary string, i.e. would lex
/// differently with `standard_conforming_strings` off.
fn lexes_differently_without_scs(sql: &str) -> bool {
    if !sql.as_bytes().contains(&b'\\') {
        return false;
    }
    let mut lexer = Lexer::new(sql, true);
    while lexer.next_token().is_some() {}
    lexer.scs_sensitive
}

/// Whether `sql` ends inside a string, quoted identifier or comment when read
/// with `standard_conforming_strings` off.
fn unterminated_without_scs(sql: &str) -> bool {
    let mut lexer = Lexer::new(sql, false);
    while lexer.next_token().is_some() {}
    lexer.unterminated
}

fn word_is(src: &[u8], start: usize, end: usize, kw: &[u8]) -> bool {
    end - start == kw.len() && src[start..end].eq_ignore_ascii_case(kw)
}

// ---------------------------------------------------------------------------
// Functions that add rows no command tag counts
// ---------------------------------------------------------------------------

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
fn is_row_adding_name(name: &[u8]) -> bool {
    (6..=26).contains(&name.len())
        && matches!(name[0] | 0x20, b'l' | b'q' | b't' | b'c')
        && ROW_ADDING_FUNCTIONS
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
}

/// An identifier token as PostgreSQL reads its name.
enum Ident<'a> {
    /// A word, or a `"…"` identifier's content (a doubled quote cannot be
    /// part of any name that matters here, so it is left as is).
    Plain(&'a [u8]),
    /// A `U&"…"` identifier's content, escapes still to decode.
    Unicode(&'a [u8]),
}

fn ident_of(src: &[u8], tok: Tok, start: usize, end: usize) -> Option<Ident<'_>> {
    match tok {
        Tok::Word => Some(Ident::Plain(&src[start..end])),
        Tok::QuotedIdent if src[start] == b'"' => {
            Some(Ident::Plain(src.get(start + 1..end.saturating_sub(1))?))
        }
        Tok::QuotedIdent => Some(Ident::Unicode(src.get(start + 3..end.saturating_sub(1))?)),
        _ => None,
    }
}

/// A `U&"…"` identifier's name with `esc` as its escape character (`\`
/// unless UESCAPE says otherwise); None when it does not decode.
fn decode_unicode_ident(body: &[u8], esc: u8) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == b'"' && body.get(i + 1) == Some(&b'"') {
            out.push(b'"');
            i += 2;
        } else if b != esc {
            out.push(b);
            i += 1;
        } else if body.get(i + 1) == Some(&esc) {
            out.push(esc);
            i += 2;
        } else {
            let (skip, digits) = if body.get(i + 1) == Some(&b'+') {
                (2, 6)
            } else {
                (1, 4)
            };
            let hex = body.get(i + skip..i + skip + digits)?;
            let code = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            let mut buf = [0u8; 4];
            out.extend_from_slice(char::from_u32(code)?.encode_utf8(&mut buf).as_bytes());
            i += skip + digits;
        }
    }
    Some(out)
}

/// Whether a `U&"…"` identifier may name a row-adding function (also when
/// it does not decode: PostgreSQL would reject it, so nothing is lost).
fn unicode_ident_matches(body: &[u8], esc: u8) -> bool {
    decode_unicode_ident(body, esc).is_none_or(|name| is_row_adding_name(&name))
}

/// Whether `text` names a function of [`ROW_ADDING_FUNCTIONS`] in any
/// identifier: plain, quoted, or `U&"…"` with or without UESCAPE. Strings
/// and comments are not identifiers (a DO block's body is judged on its own).
fn mentions_row_adding_function(text: &str, scs: bool) -> bool {
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

// ---------------------------------------------------------------------------
// The lexical fast path
// ---------------------------------------------------------------------------

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
fn lexical_verdict(sql: &str, scs: bool) -> Option<(Classification, bool)> {
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

// ---------------------------------------------------------------------------
// Unparsable text: leading keywords
// ---------------------------------------------------------------------------

/// The verdict for a text the parser rejects: features from the leading
/// keywords of each `;`-separated piece (under both readings of ordinary
/// strings when they differ), and rows conservatively.
fn unparsed(sql: &str, scs_sensitive: bool) -> Classification {
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

fn leading_features(sql: &str, scs: bool) -> Vec<Feature> {
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

// ---------------------------------------------------------------------------
// The parser path
// ---------------------------------------------------------------------------

/// PostgreSQL's raw parse tree of `sql`, or None when it does not parse (or
/// the tree is too deep for the protobuf decoder, or pg_query panics, which it
/// should not, but a bad statement must never take a session thread down).
fn parse_tree(sql: &str, scs: bool) -> Option<protobuf::ParseResult> {
    let options = if scs {
        ParserOptions::DEFAULT
    } else {
        ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS
    };
    parse_with(sql, options)
}

/// [`parse_tree`] with any parse mode (PL/pgSQL expressions use their own).
fn parse_with(sql: &str, options: ParserOptions) -> Option<protobuf::ParseResult> {
    panic::catch_unwind(AssertUnwindSafe(|| pg_query::parse(sql, options)))
        .ok()?
        .ok()
        .map(|result| result.protobuf)
}

/// The verdict on a parsed text. `scs`: the reading it was parsed with;
/// `depth`: how many DO blocks deep it was found.
fn walk(sql: &str, tree: &protobuf::ParseResult, scs: bool, depth: u8) -> Classification {
    let mut walker = Walker {
        out: Classification::default(),
        depth,
    };
    for raw in &tree.stmts {
        let text = statement_text(sql, raw);
        if let Some(node) = raw.stmt.as_deref().and_then(|n| n.node.as_ref()) {
            walker.statement(node, text, false);
            if mentions_row_adding_function(text, scs) {
                walker.row_adding_call(node);
            }
        }
    }
    walker.out
}

/// The text of one statement of a multi-statement string (for the word the
/// user wrote in role statements); the whole text if the offsets look wrong.
fn statement_text<'a>(sql: &'a str, raw: &protobuf::RawStmt) -> &'a str {
    let start = usize::try_from(raw.stmt_location).unwrap_or(0);
    let text = match usize::try_from(raw.stmt_len) {
        Ok(len) if len > 0 => sql.get(start..start.saturating_add(len)),
        _ => sql.get(start..),
    };
    text.unwrap_or(sql)
}

/// ROLE, USER or GROUP: the second word of a role statement's text.
fn role_word_of(text: &str) -> RoleWord {
    let mut lexer = Lexer::new(text, true);
    let src = lexer.src;
    let mut words = 0;
    while let Some((tok, start, end)) = lexer.next_token() {
        if tok != Tok::Word {
            break;
        }
        words += 1;
        if words == 2 {
            if word_is(src, start, end, b"user") {
                return RoleWord::User;
            }
            if word_is(src, start, end, b"group") {
                return RoleWord::Group;
            }
            break;
        }
    }
    RoleWord::Role
}

struct Walker {
    out: Classification,
    /// How many DO blocks deep the statements are.
    depth: u8,
}

fn inner(node: &Option<Box<protobuf::Node>>) -> Option<&NodeEnum> {
    node.as_deref().and_then(|n| n.node.as_ref())
}

fn is_extension(object_type: i32) -> bool {
    object_type == ObjectType::ObjectExtension as i32
}

impl Walker {
    /// One statement that runs now. `nested`: its rows are not counted by the
    /// command tag the client will see (a CTE, EXPLAIN ANALYZE, COPY (…) TO).
    fn statement(&mut self, node: &NodeEnum, text: &str, nested: bool) {
        use NodeEnum as N;
        if !storage_neutral(node) {
            self.out.grows_storage = true;
        }
        match node {
            N::InsertStmt(s) => {
                self.out.add_rows(!nested);
                self.with(s.with_clause.as_ref(), text);
                if let Some(q) = inner(&s.select_stmt) {
                    self.statement(q, text, true);
                }
            }
            N::SelectStmt(s) => self.select(s, text),
            N::UpdateStmt(s) => self.with(s.with_clause.as_ref(), text),
            N::DeleteStmt(s) => self.with(s.with_clause.as_ref(), text),
            N::MergeStmt(s) => {
                let inserts = s.merge_when_clauses.iter().any(|c| {
                    matches!(&c.node, Some(N::MergeWhenClause(w))
                        if w.command_type == protobuf::CmdType::CmdInsert as i32)
                });
                if inserts {
                    self.out.adds_rows = true;
                }
                // The MERGE tag counts inserted, updated and deleted rows together.
                self.out.remeasure = true;
                self.with(s.with_clause.as_ref(), text);
            }
            N::CopyStmt(s) => {
                if s.is_from {
                    self.out.add_rows(true);
                }
                if let Some(q) = inner(&s.query) {
                    self.statement(q, text, true);
                }
            }
            N::CreateTableAsStmt(s) => {
                // CREATE TABLE AS, SELECT INTO (after analysis), CREATE
                // MATERIALIZED VIEW; `WITH NO DATA` creates an empty relation.
                let skip_data = s.into.as_ref().is_some_and(|i| i.skip_data);
                if !skip_data {
                    self.out.add_rows(false);
                }
                self.out.remeasure = true;
                match inner(&s.query) {
                    Some(N::ExecuteStmt(e)) => self.out.executes.push(e.name.clone()),
                    Some(q) => self.statement(q, text, true),
                    None => {}
                }
            }
            N::RefreshMatViewStmt(s) => {
                if !s.skip_data {
                    self.out.add_rows(false);
                }
                self.out.remeasure = true;
            }
            // EXPLAIN without ANALYZE plans the statement and runs nothing.
            N::ExplainStmt(s) if explain_analyzes(&s.options) => {
                if let Some(q) = inner(&s.query) {
                    self.statement(q, text, true);
                }
            }
            N::PrepareStmt(s) => {
                let mut body = Walker {
                    out: Classification::default(),
                    depth: self.depth,
                };
                if let Some(q) = inner(&s.query) {
                    body.statement(q, text, false);
                }
                self.out.prepares.push((s.name.clone(), body.out.writes()));
            }
            N::ExecuteStmt(s) => self.out.executes.push(s.name.clone()),
            N::FetchStmt(s) => self.out.fetches.push(s.portalname.clone()),
            N::DeclareCursorStmt(s) => {
                let mut body = Walker {
                    out: Classification::default(),
                    depth: self.depth,
                };
                if let Some(q) = inner(&s.query) {
                    body.statement(q, text, true);
                }
                self.out.features.extend(body.out.features);
                self.out
                    .cursors
                    .push((s.portalname.clone(), body.out.adds_rows));
            }
            N::DeallocateStmt(s) => {
                let name = (!s.isall).then(|| s.name.clone());
                self.out.deallocates.push(name);
            }
            N::DiscardStmt(s) if s.target == protobuf::DiscardMode::DiscardAll as i32 => {
                self.out.deallocates.push(None)
            }
            N::DoStmt(s) => match do_block::check(s, self.depth) {
                Ok(inner) => {
                    // The statements inside, as if sent one by one, except
                    // that the tag "DO" counts none of their rows.
                    self.out.features.extend(inner.features);
                    self.out.grows_storage |= inner.grows_storage;
                    if inner.adds_rows {
                        self.out.add_rows(false);
                    }
                    self.out.remeasure |= inner.remeasure;
                }
                Err(feature) => {
                    self.out.features.push(feature);
                    self.out.add_rows(false);
                }
            },
            // `x := expr` in PL/pgSQL (a DO block's assignment).
            N::PlassignStmt(s) => {
                if let Some(select) = &s.val {
                    self.select(select, text);
                }
            }
            N::CallStmt(_) => self.out.add_rows(false),
            N::TruncateStmt(_) | N::DropOwnedStmt(_) => self.out.remeasure = true,
            N::DropStmt(s) => {
                let t = s.remove_type;
                if t == ObjectType::ObjectTable as i32
                    || t == ObjectType::ObjectSchema as i32
                    || t == ObjectType::ObjectMatview as i32
                {
                    self.out.remeasure = true;
                } else if is_extension(t) {
                    self.out.features.push(DROP_EXTENSION);
                }
            }
            N::AlterTableStmt(s) => {
                let partitions = s.cmds.iter().any(|c| {
                    matches!(&c.node, Some(N::AlterTableCmd(cmd)) if {
                        use protobuf::AlterTableType as A;
                        cmd.subtype == A::AtAttachPartition as i32
                            || cmd.subtype == A::AtDetachPartition as i32
                            || cmd.subtype == A::AtDetachPartitionFinalize as i32
                    })
                });
                if partitions {
                    self.out.remeasure = true;
                }
            }
            N::CreateExtensionStmt(_) => {
                if leading_features(text, true).first() == Some(&CREATE_LANGUAGE) {
                    self.out.features.push(CREATE_LANGUAGE);
                    self.out.features.push(CREATE_LANGUAGE_EXTENSION);
                } else {
                    self.out.features.push(CREATE_EXTENSION);
                }
            }
            N::AlterExtensionStmt(_) | N::AlterExtensionContentsStmt(_) => {
                self.out.features.push(ALTER_EXTENSION)
            }
            N::AlterObjectSchemaStmt(s) if is_extension(s.object_type) => {
                self.out.features.push(ALTER_EXTENSION)
            }
            N::CreateFunctionStmt(s) => self.out.features.push(if s.is_procedure {
                CREATE_PROCEDURE
            } else {
                CREATE_FUNCTION
            }),
            N::DefineStmt(s) if s.kind == ObjectType::ObjectAggregate as i32 => {
                self.out.features.push(CREATE_AGGREGATE)
            }
            N::CreatePlangStmt(_) => self.out.features.push(CREATE_LANGUAGE),
            N::CreateTrigStmt(_) => self.out.features.push(CREATE_TRIGGER),
            N::CreateEventTrigStmt(_) => self.out.features.push(CREATE_EVENT_TRIGGER),
            N::RuleStmt(_) => self.out.features.push(CREATE_RULE),
            N::CreateRoleStmt(s) => {
                use protobuf::RoleStmtType as R;
                let word = if s.stmt_type == R::RolestmtUser as i32 {
                    RoleWord::User
                } else if s.stmt_type == R::RolestmtGroup as i32 {
                    RoleWord::Group
                } else {
                    RoleWord::Role
                };
                self.out.features.push(role_feature(RoleVerb::Create, word));
            }
            N::AlterRoleStmt(_) | N::AlterRoleSetStmt(_) => {
                let word = role_word_of(text);
                self.out.features.push(role_feature(RoleVerb::Alter, word));
            }
            N::RenameStmt(s) if s.rename_type == ObjectType::ObjectRole as i32 => {
                let word = role_word_of(text);
                self.out.features.push(role_feature(RoleVerb::Alter, word));
            }
            N::DropRoleStmt(_) => {
                let word = role_word_of(text);
                self.out.features.push(role_feature(RoleVerb::Drop, word));
            }
            N::GrantRoleStmt(s) => {
                self.out
                    .features
                    .push(if s.is_grant { GRANT_ROLE } else { REVOKE_ROLE })
            }
            N::CreateSchemaStmt(s) => {
                // CREATE SCHEMA s CREATE TABLE … CREATE TRIGGER …: the
                // elements are statements of their own.
                for element in &s.schema_elts {
                    if let Some(e) = &element.node {
                        self.statement(e, text, nested);
                    }
                }
            }
            _ => {}
        }
    }

    /// The statement names a function that adds rows no command tag counts
    /// (see [`ROW_ADDING_FUNCTIONS`]). Statements that run now add rows;
    /// statements that store the call for later (a view, a default, a
    /// check, a policy, an operator, a cursor) hide it from every statement
    /// that later runs it, so storing it is a feature of its own.
    fn row_adding_call(&mut self, node: &NodeEnum) {
        use NodeEnum as N;
        // The gate follows prepared statements by name: this one adds rows
        // when it is executed, not when it is prepared.
        if let N::PrepareStmt(_) = node {
            if let Some(prepared) = self.out.prepares.last_mut() {
                prepared.1 = Writes::ALL;
            }
            return;
        }
        // Likewise a cursor: at its FETCH.
        if let N::DeclareCursorStmt(_) = node {
            if let Some(cursor) = self.out.cursors.last_mut() {
                cursor.1 = true;
            }
        }
        self.out.add_rows(false);
        match node {
            N::SelectStmt(_)
            | N::InsertStmt(_)
            | N::UpdateStmt(_)
            | N::DeleteStmt(_)
            | N::MergeStmt(_)
            | N::CallStmt(_)
            | N::ExplainStmt(_)
            | N::CopyStmt(_)
            | N::CreateTableAsStmt(_)
            | N::RefreshMatViewStmt(_)
            | N::ExecuteStmt(_)
            | N::DoStmt(_)
            | N::PlassignStmt(_)
            | N::VariableSetStmt(_)
            | N::VariableShowStmt(_)
            | N::NotifyStmt(_)
            | N::ListenStmt(_)
            | N::UnlistenStmt(_)
            | N::TransactionStmt(_) => {}
            _ => self.out.features.push(STORED_ROW_FUNCTION),
        }
    }

    fn select(&mut self, s: &protobuf::SelectStmt, text: &str) {
        if let Some(into) = &s.into_clause {
            // A new table, even WITH NO DATA.
            self.out.grows_storage = true;
            // SELECT … INTO t: a CREATE TABLE AS in disguise.
            if !into.skip_data {
                self.out.add_rows(false);
            }
            self.out.remeasure = true;
        }
        self.with(s.with_clause.as_ref(), text);
        // A set operation carries INTO and WITH on its branches.
        for branch in [&s.larg, &s.rarg].into_iter().flatten() {
            self.select(branch, text);
        }
    }

    /// Data-modifying CTEs run whatever the main statement is, and their rows
    /// are never in its command tag.
    fn with(&mut self, with: Option<&protobuf::WithClause>, text: &str) {
        for cte in with.iter().flat_map(|w| &w.ctes) {
            if let Some(NodeEnum::CommonTableExpr(c)) = &cte.node {
                if let Some(q) = inner(&c.ctequery) {
                    self.statement(q, text, true);
                }
            }
        }
    }
}

/// Statements that grow nothing on disk by themselves: reads, removals,
/// maintenance that frees space, settings, transaction control, and those
/// that only name a statement or portal (judged by what they name). The
/// statements they hold (a CTE, EXPLAIN ANALYZE's, COPY's query, a DO
/// block's) are judged on their own. Everything else grows storage.
fn storage_neutral(node: &NodeEnum) -> bool {
    use NodeEnum as N;
    matches!(
        node,
        N::SelectStmt(_)
            | N::DeleteStmt(_)
            | N::TruncateStmt(_)
            | N::DropStmt(_)
            | N::DropOwnedStmt(_)
            | N::DropdbStmt(_)
            | N::VacuumStmt(_)
            | N::VariableSetStmt(_)
            | N::VariableShowStmt(_)
            | N::ConstraintsSetStmt(_)
            | N::TransactionStmt(_)
            | N::PrepareStmt(_)
            | N::ExecuteStmt(_)
            | N::DeallocateStmt(_)
            | N::DeclareCursorStmt(_)
            | N::FetchStmt(_)
            | N::ClosePortalStmt(_)
            | N::DiscardStmt(_)
            | N::ListenStmt(_)
            | N::UnlistenStmt(_)
            | N::NotifyStmt(_)
            | N::LockStmt(_)
            | N::CheckPointStmt(_)
            | N::ExplainStmt(_)
            | N::PlassignStmt(_)
            | N::DoStmt(_)
            // COPY … FROM adds rows (judged as such); COPY … TO reads.
            | N::CopyStmt(_)
            // Adds rows (judged as such).
            | N::InsertStmt(_)
            | N::CallStmt(_)
    )
}

/// Whether EXPLAIN's options make it run the statement (ANALYZE, unless
/// spelled off): PostgreSQL's defGetBoolean takes no argument, 1, true and on
/// as true and 0, false and off as false.
fn explain_analyzes(options: &[protobuf::Node]) -> bool {
    options.iter().any(|o| match &o.node {
        Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case("analyze") => {
            match inner(&d.arg) {
                Some(NodeEnum::Integer(i)) => i.ival != 0,
                Some(NodeEnum::Boolean(b)) => b.boolval,
                Some(NodeEnum::String(s)) => {
                    !(s.sval.eq_ignore_ascii_case("false") || s.sval.eq_ignore_ascii_case("off"))
                }
                _ => true,
            }
        }
        _ => false,
    })
}

// ---------------------------------------------------------------------------
// The shared classifier with its bounded cache
// ---------------------------------------------------------------------------

/// Most parser verdicts the cache holds (all shards together).
pub const CACHE_MAX_ENTRIES: usize = 4096;
/// Most bytes of statement text (plus a per-entry overhead) the cache holds.
pub const CACHE_MAX_BYTES: usize = 4 << 20;
/// Independent locks, so sessions on different threads rarely wait for each
/// other: each shard holds 1/16 of the entries and bytes.
const CACHE_SHARDS: usize = 16;
/// Longer statements are not cached: one must never take more than a quarter
/// of its shard's bytes, and a statement that long costs far more to send than
/// to parse.
pub const CACHE_MAX_STATEMENT: usize = CACHE_MAX_BYTES / CACHE_SHARDS / 4;
/// What an entry costs beyond its text (map slot, ring slot, the `Arc`).
const ENTRY_OVERHEAD: usize = 128;

/// A thread-safe classifier with a bounded cache of parser results, keyed by
/// statement text. The lexical fast path is not cached: it is cheaper than a
/// lookup. Eviction is CLOCK (second chance): a hit marks its entry, and the
/// sweep spares marked entries once, so statements an application repeats
/// stay while one-off texts pass through.
pub struct Classifier {
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    /// Shared verdicts for the two fast-path answers nearly every statement
    /// gets, so the hot path hands out a reference count, not an allocation.
    plain: Arc<Classification>,
    insert: Arc<Classification>,
}

#[derive(Default)]
struct Shard {
    /// Keyed by the text's 64-bit hash (a keyed SipHash, so tenants cannot
    /// aim collisions); the entry keeps the text to confirm a hit.
    map: HashMap<u64, Entry, BuildHasherDefault<HashIsKey>>,
    /// The CLOCK ring: every key in `map` exactly once.
    ring: VecDeque<u64>,
    bytes: usize,
}

struct Entry {
    text: Box<str>,
    verdict: Arc<Classification>,
    cost: usize,
    referenced: bool,
}

impl Entry {
    fn new(text: &str, verdict: Arc<Classification>) -> Entry {
        Entry {
            cost: text.len() + verdict.heap_bytes() + ENTRY_OVERHEAD,
            text: text.into(),
            verdict,
            referenced: false,
        }
    }
}

/// The map's keys are already hashes; hashing them again would waste time.
#[derive(Default)]
struct HashIsKey(u64);

impl Hasher for HashIsKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("cached", &self.cached_entries())
            .field("cached_bytes", &self.cached_bytes())
            .finish()
    }
}

impl Classifier {
    pub fn new() -> Self {
        let shards = (0..CACHE_SHARDS)
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        let mut insert = Classification::default();
        insert.add_rows(true);
        Classifier {
            hasher: RandomState::new(),
            shards,
            plain: Arc::new(Classification::default()),
            insert: Arc::new(insert),
        }
    }

    /// [`classify`], with parser verdicts cached.
    pub fn classify(&self, sql: &str) -> Arc<Classification> {
        if let Some(verdict) = classify_lexical(sql) {
            return if verdict == *self.plain {
                Arc::clone(&self.plain)
            } else if verdict == *self.insert {
                Arc::clone(&self.insert)
            } else {
                Arc::new(verdict)
            };
        }
        let cacheable = sql.len() <= CACHE_MAX_STATEMENT;
        let (hash, shard) = self.shard_of(sql);
        if cacheable {
            let mut guard = lock(shard);
            if let Some(entry) = guard.map.get_mut(&hash) {
                if &*entry.text == sql {
                    entry.referenced = true;
                    return Arc::clone(&entry.verdict);
                }
            }
        }
        // Parse outside the lock: two sessions may parse the same new text at
        // once, which costs less than making every other session wait.
        let verdict = Arc::new(classify_parsed(sql));
        if cacheable {
            // The copy of the text is made before taking the lock.
            let entry = Entry::new(sql, Arc::clone(&verdict));
            lock(shard).insert(hash, entry);
        }
        verdict
    }

    fn shard_of(&self, sql: &str) -> (u64, &Mutex<Shard>) {
        let hash = self.hasher.hash_one(sql);
        (hash, &self.shards[(hash >> 60) as usize % CACHE_SHARDS])
    }

    #[cfg(test)]
    fn is_cached(&self, sql: &str) -> bool {
        let (hash, shard) = self.shard_of(sql);
        lock(shard).map.get(&hash).is_some_and(|e| &*e.text == sql)
    }

    /// Parser verdicts held now.
    pub fn cached_entries(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Bytes the cache accounts for now (statement text plus overhead).
    pub fn cached_bytes(&self) -> usize {
        self.shards.iter().map(|s| lock(s).bytes).sum()
    }
}

/// A shard's lock; a poisoned lock still holds a consistent map (nothing
/// panics while holding it), so it is used as is.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shard {
    const MAX_ENTRIES: usize = CACHE_MAX_ENTRIES / CACHE_SHARDS;
    const MAX_BYTES: usize = CACHE_MAX_BYTES / CACHE_SHARDS;

    fn insert(&mut self, hash: u64, entry: Entry) {
        let cost = entry.cost;
        match self.map.insert(hash, entry) {
            // Another session cached it first, or a (keyed, so accidental)
            // hash collision: the key is in the ring already.
            Some(old) => self.bytes -= old.cost,
            None => self.ring.push_back(hash),
        }
        self.bytes += cost;
        self.evict();
    }

    /// CLOCK sweep down to the bounds. Each entry is spared at most once per
    /// sweep, so this ends within two turns of the ring.
    fn evict(&mut self) {
        while self.map.len() > Self::MAX_ENTRIES || self.bytes > Self::MAX_BYTES {
            let Some(hash) = self.ring.pop_front() else {
                break;
            };
            match self.map.get_mut(&hash) {
                Some(entry) if entry.referenced => {
                    entry.referenced = false;
                    self.ring.push_back(hash);
                }
                Some(_) => {
                    if let Some(old) = self.map.remove(&hash) {
                        self.bytes -= old.cost;
                    }
                }
                None => {}
            }
        }
    }
}

mod do_block;

#[cfg(test)]
mod tests;
