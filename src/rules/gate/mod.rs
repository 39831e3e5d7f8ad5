//! The per-session hook the pump hands statements and results to: it
//! refuses what the tenant's tier forbids, and keeps the tenant's row
//! figure current from the command tags between measurements.
//!
//! A refusal never desynchronises client and cluster. The refused message
//! is not dropped but *replaced* by one the cluster itself will fail with a
//! recognisable marker: a simple Query or a FunctionCall by `EXECUTE
//! "pgtier_refused_<128 random bits>"`, an extended-protocol Parse or
//! Execute by an Execute of a portal of that name, drawn afresh for each
//! refusal so that no tenant can predict or claim it (client names with the
//! prefix are refused). The cluster then does what PostgreSQL does for any
//! error: rolls back the implicit transaction or aborts the explicit one
//! (the next statement gets `25P02`), skips to the next Sync, and answers
//! ReadyForQuery with the right status. On the way back, the cluster's
//! error naming the marker is swapped for the proxy's own (`53400`,
//! `42501`). If the cluster never raises it (it was already skipping to
//! Sync after an earlier error, exactly when PostgreSQL would not have run
//! the refused statement either), nothing is swapped and the client sees
//! what PostgreSQL would have shown.
//!
//! The storage limit rides on the same machinery: a statement's
//! [`Writes`] say whether it adds rows (the row limit) and whether it can
//! grow the database at all (the storage limit,
//! [`crate::rules::storage`]); the refusal is the same marker swap, with
//! `53100` in place of the cluster's error.
//!
//! Which prepared statements and portals add rows is kept as the cluster
//! confirms it ([`crate::rules::prepared`]); statement text and names are
//! read in the session's client encoding ([`crate::rules::encoding`]).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};

use crate::config::Limits;
use crate::limits::fleet::Op;
use crate::limits::tenants::{unix_now, Tenant};
use crate::protocol::error::field_of;
use crate::protocol::frame::{put_frame, FrameHeader, Interest};
use crate::protocol::ErrorFields;
use crate::refusal::Refusal;
use crate::refusal::MARKER_PREFIX;
use crate::rules::classify::{Classification, Writes};
use crate::rules::encoding::{self, Reading, Stepping};
use crate::rules::functions::function_call_adds_rows;
use crate::rules::policy::{self, Denial};
use crate::rules::prepared::{Change, Confirmation, Space, Tracker};
use crate::rules::{grace_s, log_crossing};
use crate::runtime::shared::Shared;
use crate::session::hook::{Hook, Verdict};

/// The longest Query or Parse the gate inspects. The frame is held whole
/// while it is classified; a longer one ends the session with `54000`
/// rather than pass unchecked.
pub const MAX_INSPECTED_STATEMENT: usize = 8 * 1024 * 1024;
/// Execute, CommandComplete and the ErrorResponses the gate may rewrite
/// are small; longer ones are passed on without a look.
const MAX_SMALL_MESSAGE: usize = 64 * 1024;
/// How much of a Bind or Close the gate peeks at for the portal and
/// statement names (longer names make the session's tracking unreliable,
/// which it then says, see `Tracker::lose_track`).
const NAME_PEEK: usize = 5 + 2048;
/// How much of a CommandComplete is read for its tag.
const TAG_PEEK: usize = 5 + 64;
/// How much of a ParameterStatus is read: enough for `client_encoding`
/// and any encoding name (a longer value is no encoding PostgreSQL knows).
const PARAMETER_PEEK: usize = 5 + 64;
/// The shortest ASCII name that may be what is left of a longer non-ASCII
/// identifier after the classifier's 63-byte cut: 63 less a 3-byte
/// placeholder, plus one.
const TRUNCATION_ARTEFACT: usize = 61;

/// A refusal on its way: the cluster will fail the marker, and the gate's
/// cluster side swaps that failure for `error`.
#[derive(Debug)]
struct Pending {
    /// The ReadyForQuery (counted from the session's start) that closes the
    /// marker's part of the stream; by then it has failed or been skipped.
    ready_index: u64,
    marker: String,
    error: ErrorFields,
}

/// What a session's two gates share.
#[derive(Debug, Default)]
struct Link {
    pending: Mutex<VecDeque<Pending>>,
    /// `pending.len()`, readable without the lock on every ErrorResponse.
    pending_count: AtomicUsize,
    /// A statement changed row counts in a way the tags do not tell:
    /// measure the tenant once its transaction is over.
    remeasure: AtomicBool,
    /// Prepared statements and portals as the cluster has confirmed them.
    names: Mutex<Tracker>,
    /// The session's client encoding as the cluster last reported it.
    encoding: EncodingState,
}

/// The client encoding the cluster reported last (ParameterStatus in the
/// login greeting and after every change), and how many ReadyForQuery had
/// been seen when it was: a message the client sent before the cluster
/// answered all earlier ones may be read in an encoding still in flight.
#[derive(Debug)]
struct EncodingState {
    /// `Stepping::ALL` index, or [`UNKNOWN_ENCODING`].
    stepping: AtomicU8,
    /// The server encoding is UTF8: with a UTF8 client, names are stored as
    /// the client sent them (no conversion, no folding).
    server_utf8: AtomicBool,
    /// ReadyForQuery messages the cluster gate has seen (published after
    /// the ParameterStatus messages before them).
    readies: AtomicU64,
}

/// An encoding the cluster named that the proxy does not know, or none.
const UNKNOWN_ENCODING: u8 = u8::MAX;

impl Default for EncodingState {
    fn default() -> EncodingState {
        EncodingState {
            stepping: AtomicU8::new(UNKNOWN_ENCODING),
            server_utf8: AtomicBool::new(false),
            readies: AtomicU64::new(0),
        }
    }
}

impl EncodingState {
    /// Notes a ParameterStatus body if it is `client_encoding` or
    /// `server_encoding`.
    fn note_parameter(&self, body: &[u8]) {
        if body.starts_with(b"client_encoding\0") {
            // A value cut off by the peek is no encoding PostgreSQL knows.
            let code = encoding::parameter_value(body, "client_encoding")
                .and_then(encoding::stepping_of_value)
                .and_then(|s| Stepping::ALL.iter().position(|&a| a == s))
                .map_or(UNKNOWN_ENCODING, |i| i as u8);
            self.stepping.store(code, Ordering::Release);
        } else if let Some(value) = encoding::parameter_value(body, "server_encoding") {
            self.server_utf8.store(
                encoding::stepping_of_value(value) == Some(Stepping::Utf8),
                Ordering::Release,
            );
        }
    }

    /// The encoding the cluster reads the next message in, once it has
    /// answered `requests` requests.
    fn reading(&self, requests: u64) -> Reading {
        if self.readies.load(Ordering::Acquire) < requests {
            return Reading::Unknown;
        }
        match Stepping::ALL.get(self.stepping.load(Ordering::Acquire) as usize) {
            Some(&stepping) => Reading::Known(stepping),
            None => Reading::Unknown,
        }
    }
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The tenant's rules as the configuration in force says, refreshed when a
/// reload changes it.
#[derive(Debug)]
struct Rules {
    generation: u64,
    limits: Limits,
    /// How long the tenant may go unmeasured before it counts as over
    /// ([`crate::rules::grace_s`]).
    grace_s: u64,
}

impl Rules {
    fn load(shared: &Shared, tenant: &Tenant) -> Rules {
        let generation = shared.config_generation();
        let config = shared.config();
        Rules {
            generation,
            limits: shared.limits_for(tenant.name()),
            grace_s: config
                .quota
                .as_ref()
                .map_or(u64::MAX, |q| grace_s(q.interval)),
        }
    }

    /// Whether anything is enforced or counted for this tenant at all. A
    /// tenant without a row limit, a storage limit or denied kinds pays for
    /// nothing.
    fn active(&self) -> bool {
        self.limits.row_limit > 0 || self.limits.storage_limit > 0 || !self.limits.deny.is_empty()
    }

    /// Whether a quota in bytes or rows applies: writes are followed.
    fn measured(&self) -> bool {
        self.limits.row_limit > 0 || self.limits.storage_limit > 0
    }

    /// Reloads when the configuration changed; returns whether the rules
    /// became active just now.
    fn refresh(&mut self, shared: &Shared, tenant: &Tenant) -> bool {
        if shared.config_generation() == self.generation {
            return false;
        }
        let was_active = self.active();
        *self = Rules::load(shared, tenant);
        !was_active && self.active()
    }
}

/// The gates of one session: `(client → cluster, cluster → client)`.
///
/// `greeting` is what the login sends the client (its ParameterStatus
/// messages say the session's client and server encodings).
pub fn gates(
    shared: &Arc<Shared>,
    tenant: &Arc<Tenant>,
    greeting: &[u8],
) -> (ClientGate, ClusterGate) {
    let link = Arc::new(Link::default());
    let mut rest = greeting;
    while let Ok(Some(header)) = FrameHeader::parse(rest) {
        let Some(frame) = rest.get(..header.frame_len) else {
            break;
        };
        if header.tag == b'S' {
            link.encoding.note_parameter(&frame[5..]);
        }
        rest = &rest[header.frame_len..];
    }
    let client = ClientGate {
        shared: Arc::clone(shared),
        tenant: Arc::clone(tenant),
        rules: Rules::load(shared, tenant),
        link: Arc::clone(&link),
        requests: 0,
        asked_measurement: false,
        before: (0, false),
        unsynced: false,
        names_exact: true,
    };
    let cluster = ClusterGate {
        shared: Arc::clone(shared),
        tenant: Arc::clone(tenant),
        rules: Rules::load(shared, tenant),
        link,
        readies: 0,
        delta: 0,
        wrote: false,
        copy_in: false,
        error_since_ready: false,
    };
    (client, cluster)
}

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

/// Cluster → client: swaps the cluster's failure of a marker for the
/// proxy's refusal, and turns command tags into committed row deltas.
#[derive(Debug)]
pub struct ClusterGate {
    shared: Arc<Shared>,
    tenant: Arc<Tenant>,
    rules: Rules,
    link: Arc<Link>,
    /// ReadyForQuery messages seen.
    readies: u64,
    /// Rows added (or, if negative, removed) by the current transaction's
    /// statements so far.
    delta: i64,
    /// The current transaction wrote something (rows may have changed even
    /// where the tags cannot tell by how much).
    wrote: bool,
    /// A CopyInResponse came: the next `COPY n` counts rows added.
    copy_in: bool,
    /// An ErrorResponse since the last ReadyForQuery: an implicit
    /// transaction ending now was rolled back.
    error_since_ready: bool,
}

impl Hook for ClusterGate {
    fn batch(&mut self) {
        self.rules.refresh(&self.shared, &self.tenant);
    }

    fn interest(&mut self, header: &FrameHeader) -> Interest {
        match header.tag {
            b'E' => {
                self.error_since_ready = true;
                if self.link.pending_count.load(Ordering::Acquire) > 0
                    && header.frame_len <= MAX_SMALL_MESSAGE
                {
                    Interest::Whole {
                        max_len: MAX_SMALL_MESSAGE,
                    }
                } else {
                    Interest::Pass
                }
            }
            b'G' => {
                self.copy_in = true;
                Interest::Pass
            }
            b'C' if self.rules.active() => Interest::Peek { len: TAG_PEEK },
            // ParseComplete, BindComplete, CloseComplete confirm names.
            b'1' | b'2' | b'3' if self.rules.active() => Interest::Peek { len: 5 },
            // Rare (a reported setting changed): `client_encoding` is read.
            b'S' => Interest::Peek {
                len: PARAMETER_PEEK,
            },
            _ => Interest::Pass,
        }
    }

    fn frame(&mut self, header: &FrameHeader, bytes: &[u8]) -> Verdict {
        let body = &bytes[5..];
        match header.tag {
            b'E' => return self.on_error(body),
            b'C' => self.on_command_complete(body),
            b'Z' => {
                self.on_ready(body.first().copied().unwrap_or(b'I'));
                self.link
                    .encoding
                    .readies
                    .store(self.readies, Ordering::Release);
            }
            b'S' => self.link.encoding.note_parameter(body),
            b'1' => self.confirm(Confirmation::ParseComplete),
            b'2' => self.confirm(Confirmation::BindComplete),
            b'3' => self.confirm(Confirmation::CloseComplete),
            _ => {}
        }
        Verdict::Forward
    }
}

impl ClusterGate {
    fn on_error(&mut self, body: &[u8]) -> Verdict {
        let Some(message) = field_of(body, b'M') else {
            return Verdict::Forward;
        };
        if !message.contains(MARKER_PREFIX) {
            return Verdict::Forward;
        }
        let mut pending = self.link.lock();
        let Some(at) = pending.iter().position(|p| message.contains(&p.marker)) else {
            return Verdict::Forward;
        };
        // Refusals before this one were skipped by the cluster.
        let refusal = pending.drain(..=at).next_back();
        self.link
            .pending_count
            .store(pending.len(), Ordering::Release);
        match refusal {
            Some(refusal) => Verdict::Replace(refusal.error.to_bytes()),
            None => Verdict::Forward,
        }
    }

    fn on_command_complete(&mut self, body: &[u8]) {
        let tag = cstr(body).map_or(body, |(tag, _)| tag);
        let tag = std::str::from_utf8(tag).unwrap_or_default();
        let copy_in = std::mem::take(&mut self.copy_in);
        if let Some(confirmation) = Confirmation::of_tag(tag) {
            self.confirm(confirmation);
        }
        if !self.rules.measured() {
            return;
        }
        if self.rules.limits.storage_limit > 0 && frees_space(tag) {
            // VACUUM FULL, DROP INDEX…: the size may have fallen; measure
            // promptly so that a tenant over its limit is let back in.
            self.wrote = true;
            self.link.remeasure.store(true, Ordering::Relaxed);
        }
        match Tag::parse(tag) {
            Tag::Rows(n) => {
                self.delta = self.delta.saturating_add(n);
                self.wrote = true;
            }
            Tag::CopyRows(n) => {
                if copy_in {
                    self.delta = self.delta.saturating_add(n);
                    self.wrote = true;
                }
            }
            Tag::Commit => self.settle(true),
            Tag::Rollback => self.settle(false),
            Tag::Remeasure => {
                self.wrote = true;
                self.link.remeasure.store(true, Ordering::Relaxed);
            }
            Tag::Wrote => self.wrote = true,
            Tag::Read => {}
        }
    }

    /// The cluster carried out a change of names of the request it is
    /// answering.
    fn confirm(&mut self, confirmation: Confirmation) {
        self.link.names().confirmed(self.readies + 1, confirmation);
    }

    fn on_ready(&mut self, status: u8) {
        self.readies += 1;
        if self.rules.active() {
            self.link.names().ready(self.readies);
        }
        if self.link.pending_count.load(Ordering::Acquire) > 0 {
            // Markers answered by now failed or were skipped.
            let mut pending = self.link.lock();
            while pending
                .front()
                .is_some_and(|p| p.ready_index <= self.readies)
            {
                pending.pop_front();
            }
            self.link
                .pending_count
                .store(pending.len(), Ordering::Release);
        }
        if status == b'I' {
            // An implicit transaction ends here: committed unless it failed.
            let committed = !self.error_since_ready;
            self.settle(committed);
            if self.link.remeasure.swap(false, Ordering::Relaxed) && self.rules.measured() {
                self.tenant.rows.want_measurement();
                self.shared.audits.request(&self.tenant);
            }
        }
        if self.error_since_ready && self.rules.limits.storage_limit > 0 {
            // A statement that failed may have written before it did (an
            // INSERT of a million rows failing on the last): dead rows on
            // disk that no commit announces.
            self.tenant.rows.touch();
        }
        self.error_since_ready = false;
        self.copy_in = false;
    }

    /// The transaction's deltas count (commit) or vanish (rollback).
    fn settle(&mut self, committed: bool) {
        let delta = std::mem::take(&mut self.delta);
        let wrote = std::mem::take(&mut self.wrote);
        let limit = self.rules.limits.row_limit;
        if !committed && wrote && self.rules.limits.storage_limit > 0 {
            // Rolled back: no rows, but the files grew all the same.
            self.tenant.rows.touch();
        }
        if committed && wrote && self.rules.measured() {
            let crossing = self.tenant.rows.commit(delta, limit);
            log_crossing(&self.tenant, crossing, limit);
            if delta != 0 && limit > 0 {
                self.shared
                    .fleet
                    .send(Op::RowDelta(self.tenant.name().to_owned(), delta));
            }
        }
    }
}

/// What a CommandComplete tag says about rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    /// Rows added (negative: removed): INSERT, DELETE, MERGE.
    Rows(i64),
    /// `COPY n`: rows added if it was a COPY FROM.
    CopyRows(i64),
    Commit,
    Rollback,
    /// Rows changed by an amount the tag does not tell.
    Remeasure,
    /// A write that does not change how many rows there are (UPDATE, DDL).
    Wrote,
    /// Nothing written.
    Read,
}

impl Tag {
    fn parse(tag: &str) -> Tag {
        let mut words = tag.split(' ');
        let first = words.next().unwrap_or_default();
        let count = || -> i64 {
            tag.rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        match first {
            "INSERT" => Tag::Rows(count()),
            "DELETE" => Tag::Rows(-count()),
            // MERGE's count mixes inserts, updates and deletes: measure soon.
            "MERGE" => Tag::Remeasure,
            "COPY" => Tag::CopyRows(count()),
            "COMMIT" => Tag::Commit,
            "ROLLBACK" => Tag::Rollback,
            "TRUNCATE" | "CALL" | "DO" | "REFRESH" => Tag::Remeasure,
            "DROP" => match words.next() {
                Some("TABLE" | "SCHEMA" | "MATERIALIZED" | "OWNED" | "DATABASE") => Tag::Remeasure,
                _ => Tag::Wrote,
            },
            "PREPARE" if tag == "PREPARE TRANSACTION" => Tag::Remeasure,
            "SELECT" | "FETCH" | "MOVE" | "SHOW" | "BEGIN" | "START" | "SET" | "RESET"
            | "LISTEN" | "UNLISTEN" | "NOTIFY" | "DISCARD" | "DEALLOCATE" | "PREPARE"
            | "DECLARE" | "CLOSE" | "SAVEPOINT" | "RELEASE" | "EXPLAIN" | "ANALYZE" | "VACUUM"
            | "CHECKPOINT" | "LOCK" | "COMMENT" | "" => Tag::Read,
            _ => Tag::Wrote,
        }
    }
}

/// Whether a command tag is of a statement that can make the database
/// smaller in ways row tags do not tell (TRUNCATE and DROP TABLE already
/// ask for a measurement): VACUUM (FULL rewrites, plain VACUUM truncates
/// empty pages at a table's end), CLUSTER, and any DROP.
fn frees_space(tag: &str) -> bool {
    tag == "VACUUM" || tag == "CLUSTER" || tag.starts_with("DROP ")
}

/// Splits a NUL-terminated string off the front of `bytes`.
fn cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..end], &bytes[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_tell_rows_added_and_removed() {
        assert_eq!(Tag::parse("INSERT 0 150"), Tag::Rows(150));
        assert_eq!(Tag::parse("DELETE 7"), Tag::Rows(-7));
        assert_eq!(Tag::parse("COPY 20000"), Tag::CopyRows(20000));
        assert_eq!(Tag::parse("MERGE 3"), Tag::Remeasure);
        assert_eq!(Tag::parse("UPDATE 9"), Tag::Wrote);
        assert_eq!(Tag::parse("COMMIT"), Tag::Commit);
        assert_eq!(Tag::parse("ROLLBACK"), Tag::Rollback);
        assert_eq!(Tag::parse("TRUNCATE TABLE"), Tag::Remeasure);
        assert_eq!(Tag::parse("DROP TABLE"), Tag::Remeasure);
        assert_eq!(Tag::parse("DROP INDEX"), Tag::Wrote);
        assert_eq!(Tag::parse("SELECT 5"), Tag::Read);
        assert_eq!(Tag::parse("CREATE TABLE"), Tag::Wrote);
        assert_eq!(Tag::parse("PREPARE TRANSACTION"), Tag::Remeasure);
        assert_eq!(Tag::parse("PREPARE"), Tag::Read);
    }

    #[test]
    fn the_reported_encoding_counts_once_earlier_requests_are_answered() {
        let state = EncodingState::default();
        assert_eq!(state.reading(0), Reading::Unknown, "nothing reported");
        state.note_parameter(b"client_encoding\0SJIS\0");
        assert_eq!(state.reading(0), Reading::Known(Stepping::Sjis));
        assert_eq!(state.reading(1), Reading::Unknown, "a request unanswered");
        state.readies.store(1, Ordering::Release);
        assert_eq!(state.reading(1), Reading::Known(Stepping::Sjis));
        state.note_parameter(b"client_encoding\0EBCDIC\0");
        assert_eq!(state.reading(1), Reading::Unknown, "an unknown name");
        state.note_parameter(b"client_encoding\0UTF8\0");
        state.note_parameter(b"client_encoding\0UTF");
        assert_eq!(state.reading(1), Reading::Unknown, "a value cut off");
        state.note_parameter(b"client_encoding\0UTF8\0");
        state.note_parameter(b"application_name\0SJIS\0");
        assert_eq!(state.reading(1), Reading::Known(Stepping::Utf8));
        assert!(!state.server_utf8.load(Ordering::Acquire));
        state.note_parameter(b"server_encoding\0UTF8\0");
        assert!(state.server_utf8.load(Ordering::Acquire));
    }

    #[test]
    fn cstr_needs_its_terminator() {
        assert_eq!(cstr(b"abc\0rest"), Some((&b"abc"[..], &b"rest"[..])));
        assert_eq!(cstr(b"abc"), None);
        assert_eq!(cstr(b"\0"), Some((&b""[..], &b""[..])));
    }
}
