//! The verdict on a statement text: what the row quota, the storage limit
//! and a tier's `deny` list need to know ([`Classification`]), the deny-able
//! features named as PostgreSQL users know them ([`Feature`], [`DenyKind`]),
//! and what running a prepared statement or portal may write ([`Writes`]).
//! Kept apart from how the verdict is reached, so the gate, the policy and
//! the config read one small vocabulary.

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

pub(super) const CREATE_EXTENSION: Feature = Feature::new(DenyKind::Extension, "CREATE EXTENSION");
pub(super) const ALTER_EXTENSION: Feature = Feature::new(DenyKind::Extension, "ALTER EXTENSION");
pub(super) const DROP_EXTENSION: Feature = Feature::new(DenyKind::Extension, "DROP EXTENSION");
pub(super) const CREATE_FUNCTION: Feature = Feature::new(DenyKind::Function, "CREATE FUNCTION");
pub(super) const CREATE_PROCEDURE: Feature = Feature::new(DenyKind::Function, "CREATE PROCEDURE");
pub(super) const CREATE_AGGREGATE: Feature = Feature::new(DenyKind::Function, "CREATE AGGREGATE");
pub(super) const CREATE_LANGUAGE: Feature = Feature::new(DenyKind::Function, "CREATE LANGUAGE");
/// `CREATE LANGUAGE name` without a HANDLER is CREATE EXTENSION in
/// PostgreSQL's grammar: it installs the language's extension, so it is both.
pub(super) const CREATE_LANGUAGE_EXTENSION: Feature =
    Feature::new(DenyKind::Extension, "CREATE LANGUAGE");
/// A DO block whose body cannot be checked statement by statement (it does
/// not parse as PL/pgSQL here, nests too deep, or hides what it runs).
pub(super) const DO: Feature = Feature::with_hint(DenyKind::Function, "DO", DO_HINT);
/// A DO block that runs dynamic SQL (EXECUTE, FOR … IN EXECUTE, OPEN … FOR
/// EXECUTE, RETURN QUERY EXECUTE): what it runs is only known when it runs.
pub(super) const DO_DYNAMIC: Feature =
    Feature::with_hint(DenyKind::Function, "DO with dynamic SQL (EXECUTE)", DO_HINT);
/// `DO LANGUAGE x` for any x but plpgsql: no parser here for its body.
pub(super) const DO_LANGUAGE: Feature = Feature::with_hint(
    DenyKind::Function,
    "DO in a language other than plpgsql",
    DO_HINT,
);
/// PREPARE, EXECUTE of a prepared statement, DEALLOCATE or DISCARD ALL
/// inside a DO block: the proxy follows prepared statements in the order
/// the client sends them, and a DO block that fails halfway leaves it
/// unable to tell which of them ran.
pub(super) const DO_PREPARED: Feature = Feature::with_hint(
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
pub(super) const STORED_ROW_FUNCTION: Feature = Feature::with_hint(
    DenyKind::Function,
    "a stored call to a large-object or SQL-running function",
    "Call lo_create, lo_put, lo_from_bytea, query_to_xml and the like directly \
     in a statement, not from a view, default, check, policy, operator or cursor, \
     or upgrade the database's tier.",
);
pub(super) const CREATE_TRIGGER: Feature = Feature::new(DenyKind::Trigger, "CREATE TRIGGER");
pub(super) const CREATE_EVENT_TRIGGER: Feature =
    Feature::new(DenyKind::Trigger, "CREATE EVENT TRIGGER");
pub(super) const CREATE_RULE: Feature = Feature::new(DenyKind::Trigger, "CREATE RULE");
pub(super) const GRANT_ROLE: Feature = Feature::new(DenyKind::Role, "GRANT");
pub(super) const REVOKE_ROLE: Feature = Feature::new(DenyKind::Role, "REVOKE");

/// The role statements, by verb (CREATE, ALTER, DROP) and by the word the
/// user wrote (ROLE, USER, GROUP): PostgreSQL parses `ALTER USER` and
/// `ALTER ROLE` into the same node, but the user should read back their word.
pub(super) const ROLE_FEATURES: [[Feature; 3]; 3] = [
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
pub(super) enum RoleVerb {
    Create = 0,
    Alter = 1,
    Drop = 2,
}

#[derive(Clone, Copy)]
pub(super) enum RoleWord {
    Role = 0,
    User = 1,
    Group = 2,
}

pub(super) fn role_feature(verb: RoleVerb, word: RoleWord) -> Feature {
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
    /// a [`ROW_ADDING_FUNCTIONS`](super::ROW_ADDING_FUNCTIONS) function, a DO
    /// block with any of these inside or whose body cannot be checked. EXECUTE of a SQL-prepared statement is NOT
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

    pub(super) fn add_rows(&mut self, tag_tells: bool) {
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
    pub(super) fn heap_bytes(&self) -> usize {
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
