//! The client side of a session's gate: every Query, Parse, Bind, Execute,
//! Close and FunctionCall on its way to the cluster. It classifies
//! statement text, follows which prepared statements and portals add rows,
//! and replaces what the tier forbids by a marker the cluster will fail
//! (see the module above for why a refusal is a replacement, not a drop).

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::{cstr, Link, Pending, Rules};
use super::{MAX_INSPECTED_STATEMENT, MAX_SMALL_MESSAGE, NAME_PEEK, TRUNCATION_ARTEFACT};
use crate::limits::tenants::{unix_now, Tenant};
use crate::protocol::frame::{put_frame, FrameHeader, Interest};
use crate::refusal::Refusal;
use crate::refusal::MARKER_PREFIX;
use crate::rules::classify::{Classification, Writes};
use crate::rules::encoding::{self, Reading, Stepping};
use crate::rules::functions::function_call_adds_rows;
use crate::rules::policy::{self, Denial};
use crate::rules::prepared::{Change, Confirmation, Space};
use crate::runtime::shared::Shared;
use crate::session::hook::{Hook, Verdict};

/// Client → cluster: classifies Query and Parse, tracks which prepared
/// statements and portals add rows, and refuses what the tier forbids.
#[derive(Debug)]
pub struct ClientGate {
    shared: Arc<Shared>,
    tenant: Arc<Tenant>,
    rules: Rules,
    link: Arc<Link>,
    /// Query, Sync and FunctionCall messages seen: each earns one
    /// ReadyForQuery, which is how refusals and name changes are matched
    /// to the stream.
    requests: u64,
    /// This session has asked for the tenant's first measurement.
    asked_measurement: bool,
    /// `(requests, unsynced)` before the frame being handled.
    before: (u64, bool),
    /// A Bind or Execute since the last Sync, Query or FunctionCall: it may
    /// have changed the client encoding before the cluster reads the next
    /// message, whatever the ReadyForQuery count says.
    unsynced: bool,
    /// Every non-ASCII statement or portal name so far was read exactly as
    /// the cluster stores it (UTF8 client on a UTF8 server). Otherwise a
    /// conversion may have made two different byte strings one name (CP932's
    /// duplicate characters) or one byte string two (an encoding change
    /// between PREPARE and EXECUTE), and a non-ASCII name is not trusted.
    names_exact: bool,
}

/// How a refused message is replaced.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A simple Query: replaced by a Query of its own.
    Simple,
    /// Parse or Execute: replaced by an Execute, inside the client's
    /// extended-protocol sequence.
    Extended,
}

impl Hook for ClientGate {
    fn batch(&mut self) {
        if self.rules.refresh(&self.shared, &self.tenant) {
            // Statements prepared while nothing was enforced were not seen.
            self.link.names().lose_track();
        }
        let limits = &self.rules.limits;
        if self
            .tenant
            .rows
            .unknown_for(limits.row_limit, limits.storage_limit)
            && !self.asked_measurement
        {
            // A limit that came with a reload: the tenant has not been
            // measured yet (that happens at a login under a limit).
            self.asked_measurement = true;
            self.tenant.rows.want_measurement();
            self.shared.audits.request(&self.tenant);
        }
    }

    fn interest(&mut self, header: &FrameHeader) -> Interest {
        self.before = (self.requests, self.unsynced);
        match header.tag {
            b'Q' | b'S' | b'F' => {
                self.requests += 1;
                self.unsynced = false;
            }
            b'B' | b'E' => self.unsynced = true,
            _ => {}
        }
        if !self.rules.active() {
            return Interest::Pass;
        }
        match header.tag {
            b'Q' | b'P' => Interest::Whole {
                max_len: MAX_INSPECTED_STATEMENT,
            },
            b'E' => Interest::Whole {
                max_len: MAX_SMALL_MESSAGE,
            },
            b'B' | b'C' => Interest::Peek { len: NAME_PEEK },
            // Only a tenant over its limit has calls refused; a refusal
            // replaces the whole message, so it is held whole.
            b'F' if self.rules.measured() && self.refusal_for(Writes::ALL).is_some() => {
                Interest::Whole {
                    max_len: MAX_INSPECTED_STATEMENT,
                }
            }
            _ => Interest::Pass,
        }
    }

    fn frame(&mut self, header: &FrameHeader, bytes: &[u8]) -> Verdict {
        let body = &bytes[5..];
        match header.tag {
            b'Q' => self.on_query(body),
            b'P' => self.on_parse(body),
            b'E' => self.on_execute(body),
            b'B' => self.on_bind(body),
            b'C' => self.on_close(body),
            b'F' => self.on_function_call(body),
            _ => Verdict::Forward,
        }
    }
}

impl ClientGate {
    /// A session's client side, sharing `link` with its cluster side.
    pub(super) fn new(shared: &Arc<Shared>, tenant: &Arc<Tenant>, link: Arc<Link>) -> ClientGate {
        ClientGate {
            shared: Arc::clone(shared),
            tenant: Arc::clone(tenant),
            rules: Rules::load(shared, tenant),
            link,
            requests: 0,
            asked_measurement: false,
            before: (0, false),
            unsynced: false,
            names_exact: true,
        }
    }
    fn on_query(&mut self, body: &[u8]) -> Verdict {
        let Some((sql, _)) = cstr(body) else {
            // Malformed: the cluster will say so.
            return Verdict::Forward;
        };
        let statement = self.classify(sql);
        if let Some(name) = statement
            .prepares
            .iter()
            .map(|(name, _)| name.as_str())
            .find(|name| is_reserved(name.as_bytes()))
        {
            return self.refuse(Denial::ReservedName(Space::Statement), name, Shape::Simple);
        }
        if let Some(refusal) = self.verdict(&statement) {
            return self.refuse(refusal, "", Shape::Simple);
        }
        if !statement.prepares.is_empty() || !statement.deallocates.is_empty() {
            // Each takes effect when its command tag says it did.
            let request = self.requests;
            let mut names = self.link.names();
            for (name, adds_rows) in &statement.prepares {
                let change = Change::Define(name.as_str().into(), *adds_rows);
                names.sent(request, Confirmation::PrepareTag, Space::Statement, change);
            }
            for deallocated in &statement.deallocates {
                let (by, change) = match deallocated {
                    Some(name) => (
                        Confirmation::DeallocateTag,
                        Change::Remove(name.as_str().into()),
                    ),
                    None => (Confirmation::DeallocateAllTag, Change::RemoveAll),
                };
                names.sent(request, by, Space::Statement, change);
            }
        }
        self.note_cursors(&statement);
        if statement.remeasure {
            self.link.remeasure.store(true, Ordering::Relaxed);
        }
        Verdict::Forward
    }

    fn on_parse(&mut self, body: &[u8]) -> Verdict {
        let Some((name, rest)) = cstr(body) else {
            return Verdict::Forward;
        };
        let Some((sql, _)) = cstr(rest) else {
            return Verdict::Forward;
        };
        if is_reserved(name) {
            let name = String::from_utf8_lossy(name);
            return self.refuse(
                Denial::ReservedName(Space::Statement),
                &name,
                Shape::Extended,
            );
        }
        let statement = self.classify(sql);
        if let Some(feature) = policy::denied_feature(&statement, self.rules.limits.deny) {
            return self.refuse(Denial::Policy(feature), "", Shape::Extended);
        }
        let writes = self.writes(&statement);
        self.note_cursors(&statement);
        let name = self.name(name);
        let mut names = self.link.names();
        // A SQL PREPARE in the text runs at each Execute, which the proxy
        // does not follow: it counts at once if it writes.
        for (prepared, writes) in &statement.prepares {
            names.assume_defined(Space::Statement, prepared, *writes);
        }
        let change = Change::Define(name.as_ref().into(), writes);
        names.sent(
            self.requests + 1,
            Confirmation::ParseComplete,
            Space::Statement,
            change,
        );
        drop(names);
        if statement.remeasure {
            self.link.remeasure.store(true, Ordering::Relaxed);
        }
        Verdict::Forward
    }

    fn on_bind(&mut self, body: &[u8]) -> Verdict {
        let names = cstr(body).and_then(|(portal, rest)| Some((portal, cstr(rest)?.0)));
        let Some((portal, statement)) = names else {
            // Names longer than the peek: this portal cannot be tracked.
            self.link.names().lose_track();
            return Verdict::Forward;
        };
        // A Bind is only peeked at, so it cannot be replaced: a portal with
        // a reserved name is refused at its Execute instead.
        let statement = self.name(statement);
        let portal = self.name(portal);
        let writes = self.name_writes(Space::Statement, &statement, self.requests + 1);
        let mut names = self.link.names();
        let change = Change::Define(portal.as_ref().into(), writes);
        names.sent(
            self.requests + 1,
            Confirmation::BindComplete,
            Space::Portal,
            change,
        );
        Verdict::Forward
    }

    fn on_execute(&mut self, body: &[u8]) -> Verdict {
        let Some((portal, _)) = cstr(body) else {
            return Verdict::Forward;
        };
        if is_reserved(portal) {
            let portal = String::from_utf8_lossy(portal);
            return self.refuse(
                Denial::ReservedName(Space::Portal),
                &portal,
                Shape::Extended,
            );
        }
        if !self.rules.measured() {
            return Verdict::Forward;
        }
        let portal = self.name(portal);
        let writes = self.name_writes(Space::Portal, &portal, self.requests + 1);
        match self.refusal_for(writes) {
            Some(refusal) => self.refuse(refusal, "", Shape::Extended),
            None => Verdict::Forward,
        }
    }

    fn on_close(&mut self, body: &[u8]) -> Verdict {
        let Some((&kind, rest)) = body.split_first() else {
            return Verdict::Forward;
        };
        let Some((name, _)) = cstr(rest) else {
            return Verdict::Forward;
        };
        let space = match kind {
            b'S' => Space::Statement,
            b'P' => Space::Portal,
            // The cluster refuses it; no CloseComplete comes.
            _ => return Verdict::Forward,
        };
        let name = self.name(name);
        self.link.names().sent(
            self.requests + 1,
            Confirmation::CloseComplete,
            space,
            Change::Remove(name.as_ref().into()),
        );
        Verdict::Forward
    }

    /// A fast-path function call (libpq's large-object API, `PQfn`): while
    /// the tenant is over its row or storage limit, refused unless the
    /// function is known to add nothing.
    fn on_function_call(&mut self, body: &[u8]) -> Verdict {
        // Too short to name a function: the cluster will say so.
        let Some(oid) = body.first_chunk::<4>().map(|b| u32::from_be_bytes(*b)) else {
            return Verdict::Forward;
        };
        if !function_call_adds_rows(oid) {
            return Verdict::Forward;
        }
        match self.refusal_for(Writes::ALL) {
            // A FunctionCall earns its own ReadyForQuery, like a Query.
            Some(refusal) => self.refuse(refusal, "", Shape::Simple),
            None => Verdict::Forward,
        }
    }

    /// Classifies SQL as the cluster will read it: in the client encoding
    /// in force when it reads the message (see [`encoding`]). While a
    /// change may be in flight, text with a non-ASCII byte is read every
    /// way and the verdicts combined ([`encoding::cautious_union`]): a
    /// refusal would break innocent pipelined non-ASCII text, which the
    /// union lets through unless some reading finds a denied feature or
    /// rows added while over the limit.
    fn classify(&mut self, sql: &[u8]) -> Arc<Classification> {
        let reading = self.reading();
        self.note_reading(sql, reading);
        if let Reading::Known(stepping) = reading {
            return self
                .shared
                .classifier
                .classify(&encoding::lexable(sql, stepping));
        }
        let mut verdicts = Vec::with_capacity(Stepping::ALL.len());
        encoding::for_each_reading(sql, reading, |text| {
            verdicts.push(self.shared.classifier.classify(text));
        });
        encoding::cautious_union(verdicts)
    }

    /// The encoding the cluster reads the message being handled in.
    fn reading(&self) -> Reading {
        let (requests, unsynced) = self.before;
        if unsynced {
            return Reading::Unknown;
        }
        self.link.encoding.reading(requests)
    }

    /// A name read from a message with non-ASCII bytes in a reading that is
    /// not the cluster's own spelling makes non-ASCII names untrusted.
    fn note_reading(&mut self, raw: &[u8], reading: Reading) {
        if self.names_exact
            && !(reading == Reading::Known(Stepping::Utf8)
                && self.link.encoding.server_utf8.load(Ordering::Acquire))
            && !raw.is_ascii()
        {
            self.names_exact = false;
        }
    }

    /// A statement or portal name as the classifier spells it (ASCII names
    /// are the same in every encoding).
    fn name<'a>(&mut self, raw: &'a [u8]) -> Cow<'a, str> {
        if raw.is_ascii() {
            return encoding::lexable(raw, Stepping::Bytes);
        }
        let reading = self.reading();
        self.note_reading(raw, reading);
        match reading {
            Reading::Known(stepping) => encoding::lexable(raw, stepping),
            Reading::Unknown => encoding::lexable(raw, Stepping::Bytes),
        }
    }

    /// Whether what the session tracked under `name` can be believed. Once
    /// names are not exact, neither is a non-ASCII name nor an ASCII one of
    /// [`TRUNCATION_ARTEFACT`] bytes or more: PostgreSQL cuts identifiers to
    /// 63 bytes of the server encoding, and where a non-ASCII character is
    /// shorter there than its placeholders here, it keeps a character the
    /// classifier's cut dropped (`a…aé` would be tracked as `a…a`).
    fn name_trusted(&self, name: &str) -> bool {
        self.names_exact || (name.is_ascii() && name.len() < TRUNCATION_ARTEFACT)
    }

    /// What the tier says of a statement, policy first.
    fn verdict(&self, statement: &Classification) -> Option<Denial> {
        if let Some(feature) = policy::denied_feature(statement, self.rules.limits.deny) {
            return Some(Denial::Policy(feature));
        }
        if self.rules.measured() {
            return self.refusal_for(self.writes(statement));
        }
        None
    }

    /// What running a statement may write: its own text, the prepared
    /// statements its SQL `EXECUTE`s and the portals its `FETCH`/`MOVE`
    /// runs. Tenants without a quota never get here.
    fn writes(&self, statement: &Classification) -> Writes {
        let cursors = |(name, adds_rows): &(String, bool)| {
            // A cursor's query cannot UPDATE (PostgreSQL refuses
            // data-modifying statements in DECLARE): rows or nothing.
            (
                name.clone(),
                if *adds_rows {
                    Writes::ALL
                } else {
                    Writes::NONE
                },
            )
        };
        let cursors: Vec<(String, Writes)> = if statement.fetches.is_empty() {
            Vec::new()
        } else {
            statement.cursors.iter().map(cursors).collect()
        };
        statement
            .writes()
            .or(self.runs(Space::Statement, &statement.executes, &statement.prepares))
            .or(self.runs(Space::Portal, &statement.fetches, &cursors))
    }

    /// What running any of `names` (in `space`) from the statement being
    /// handled may write: as tracked, or as the same text `defines` it.
    fn runs(&self, space: Space, names: &[String], defines: &[(String, Writes)]) -> Writes {
        names.iter().fold(Writes::NONE, |writes, name| {
            let defined = defines
                .iter()
                .filter(|(defined, _)| defined == name)
                .fold(Writes::NONE, |w, (_, d)| w.or(*d));
            writes
                .or(self.name_writes(space, name, self.requests))
                .or(defined)
        })
    }

    /// The refusal a statement that may write `writes` gets, if the tenant
    /// is over a limit that cares (or cannot be measured). A tenant without
    /// a storage limit pays one comparison with zero for it.
    fn refusal_for(&self, writes: Writes) -> Option<Denial> {
        let limits = &self.rules.limits;
        if limits.row_limit > 0 && writes.rows {
            if let Some(refusal) = self.over_limit() {
                return Some(refusal);
            }
        }
        if limits.storage_limit > 0 && writes.storage {
            return self.over_storage();
        }
        None
    }

    /// The tenant's size, if it is over its storage limit.
    fn over_storage(&self) -> Option<Denial> {
        if let Some(bytes) = self
            .tenant
            .rows
            .storage_over(self.rules.limits.storage_limit)
        {
            return Some(Denial::StorageLimit(bytes));
        }
        // Fail closed, as for rows.
        self.tenant
            .rows
            .unmeasurable(unix_now(), self.rules.grace_s)
            .then_some(Denial::StorageUnmeasured)
    }

    /// Cursors a statement declares: one whose query adds rows counts as a
    /// portal that adds rows at once (its `CLOSE` is not followed: it stays
    /// counted, which costs only a refusal of its FETCH over the limit).
    fn note_cursors(&self, statement: &Classification) {
        if statement.cursors.iter().any(|(_, adds_rows)| *adds_rows) {
            let mut names = self.link.names();
            for (cursor, adds_rows) in &statement.cursors {
                let writes = if *adds_rows {
                    Writes::ALL
                } else {
                    Writes::NONE
                };
                names.assume_defined(Space::Portal, cursor, writes);
            }
        }
    }

    /// What executing `name` (a prepared statement or portal) by a message
    /// of `request` may write. A name the session cannot be sure it read as
    /// the cluster stores it counts as writing everything.
    fn name_writes(&self, space: Space, name: &str, request: u64) -> Writes {
        if !self.name_trusted(name) {
            return Writes::ALL;
        }
        self.link.names().writes(space, name, request)
    }

    /// The tenant's figure, if it is over its limit.
    fn over_limit(&self) -> Option<Denial> {
        let limit = self.rules.limits.row_limit;
        if let Some(figure) = self.tenant.rows.figure().filter(|f| f.is_over(limit)) {
            return Some(Denial::RowLimit(figure));
        }
        // Fail closed: a tenant the auditor cannot measure (or has not yet,
        // past the grace) may be over.
        self.tenant
            .rows
            .unmeasurable(unix_now(), self.rules.grace_s)
            .then_some(Denial::Unmeasured)
    }

    /// Replaces the refused message by a marker the cluster will fail, and
    /// queues the error the client is to see in its place. `name` is the
    /// reserved name a `ReservedName` refusal is about.
    fn refuse(&mut self, denial: Denial, name: &str, shape: Shape) -> Verdict {
        let limits = &self.rules.limits;
        let database = || self.tenant.name().to_owned();
        let tier = limits.tier.clone();
        let refusal = match denial {
            Denial::Policy(feature) => Refusal::Policy { feature, tier },
            Denial::RowLimit(figure) => Refusal::RowLimit {
                database: database(),
                figure,
                limit: limits.row_limit,
                tier,
            },
            Denial::ReservedName(space) => Refusal::ReservedName {
                space,
                name: name.to_owned(),
            },
            Denial::Unmeasured => Refusal::Unmeasured {
                database: database(),
                tier,
            },
            Denial::StorageLimit(bytes) => Refusal::StorageLimit {
                database: database(),
                bytes,
                limit: limits.storage_limit,
                tier,
            },
            Denial::StorageUnmeasured => Refusal::StorageUnmeasured {
                database: database(),
                tier,
            },
        };
        let error = refusal.render();
        let reason = refusal.reason();
        self.tenant.note_statement_refused(reason);
        tracing::debug!(tenant = self.tenant.name(), reason = reason.as_str(), error = %error, "statement refused");
        // A fresh, unguessable name each time: a tenant who reads a marker
        // in pg_stat_activity learns nothing about the next one.
        let marker = format!("{MARKER_PREFIX}{:032x}", rand::random::<u128>());
        let mut out = BytesMut::with_capacity(64);
        let ready_index = match shape {
            Shape::Simple => {
                // This Query was counted already: its own ReadyForQuery.
                let sql = format!("EXECUTE \"{marker}\"\0");
                put_frame(&mut out, b'Q', sql.as_bytes());
                self.requests
            }
            Shape::Extended => {
                // The error surfaces before the next Sync's ReadyForQuery.
                let mut execute = BytesMut::with_capacity(marker.len() + 5);
                execute.put_slice(marker.as_bytes());
                execute.put_u8(0);
                execute.put_u32(0);
                put_frame(&mut out, b'E', &execute);
                self.requests + 1
            }
        };
        let mut pending = self.link.lock();
        pending.push_back(Pending {
            ready_index,
            marker,
            error,
        });
        self.link
            .pending_count
            .store(pending.len(), Ordering::Release);
        Verdict::Replace(out)
    }
}

/// Whether a client's statement or portal name claims the markers' prefix
/// (in any case: quoted and unquoted names alike).
fn is_reserved(name: &[u8]) -> bool {
    name.len() >= MARKER_PREFIX.len()
        && name[..MARKER_PREFIX.len()].eq_ignore_ascii_case(MARKER_PREFIX.as_bytes())
}
