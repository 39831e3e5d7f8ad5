//! The per-session hook the pump hands statements and results to: it
//! refuses what the tenant's tier forbids, and keeps the tenant's row
//! figure current from the command tags between measurements.
//!
//! A refusal never desynchronises client and cluster. The refused message
//! is not dropped but *replaced* by one the cluster itself will fail with a
//! recognisable marker: a simple Query by `EXECUTE "pgtier_refused_…"`, an
//! extended-protocol Parse or Execute by an Execute of the portal
//! `pgtier_refused_…`. The cluster then does what PostgreSQL does for any
//! error: rolls back the implicit transaction or aborts the explicit one
//! (the next statement gets `25P02`), skips to the next Sync, and answers
//! ReadyForQuery with the right status. On the way back, the cluster's
//! error naming the marker is swapped for the proxy's own (`53400`,
//! `42501`). If the cluster never raises it (it was already skipping to
//! Sync after an earlier error, exactly when PostgreSQL would not have run
//! the refused statement either), nothing is swapped and the client sees
//! what PostgreSQL would have shown.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};

use crate::config::Limits;
use crate::fleet::Op;
use crate::protocol::error::field_of;
use crate::protocol::frame::{put_frame, FrameHeader, Interest};
use crate::protocol::ErrorFields;
use crate::pump::{Hook, Verdict};
use crate::quota::classify::Classification;
use crate::quota::encoding::{self, Reading, Stepping};
use crate::quota::policy::{self, Refusal};
use crate::quota::{log_crossing, Figure};
use crate::shared::Shared;
use crate::tenants::Tenant;

/// The longest Query or Parse the gate inspects. The frame is held whole
/// while it is classified; a longer one ends the session with `54000`
/// rather than pass unchecked.
pub const MAX_INSPECTED_STATEMENT: usize = 8 * 1024 * 1024;
/// Execute, CommandComplete and the ErrorResponses the gate may rewrite
/// are small; longer ones are passed on without a look.
const MAX_SMALL_MESSAGE: usize = 64 * 1024;
/// How much of a Bind or Close the gate peeks at for the portal and
/// statement names (longer names make the session's tracking unreliable,
/// which it then says, see `lost_track`).
const NAME_PEEK: usize = 5 + 2048;
/// How much of a CommandComplete is read for its tag.
const TAG_PEEK: usize = 5 + 64;
/// How much of a ParameterStatus is read: enough for `client_encoding`
/// and any encoding name (a longer value is no encoding PostgreSQL knows).
const PARAMETER_PEEK: usize = 5 + 64;
/// Prepared statements and portals tracked per session; past this the
/// session's tracking is unreliable (see `lost_track`).
const MAX_TRACKED: usize = 10_000;
/// The shortest ASCII name that may be what is left of a longer non-ASCII
/// identifier after the classifier's 63-byte cut: 63 less a 3-byte
/// placeholder, plus one.
const TRUNCATION_ARTEFACT: usize = 61;
/// The prefix of the marker names refused statements are replaced by.
const MARKER_PREFIX: &str = "pgtier_refused_";

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
}

/// The tenant's rules as the configuration in force says, refreshed when a
/// reload changes it.
#[derive(Debug)]
struct Rules {
    generation: u64,
    limits: Limits,
}

impl Rules {
    fn load(shared: &Shared, tenant: &Tenant) -> Rules {
        let generation = shared.config_generation();
        Rules {
            generation,
            limits: shared.config().limits_for(tenant.name()),
        }
    }

    /// Whether anything is enforced or counted for this tenant at all. A
    /// tenant without a row limit or denied kinds pays for nothing.
    fn active(&self) -> bool {
        self.limits.row_limit > 0 || !self.limits.deny.is_empty()
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
        statements: HashMap::new(),
        portals: HashMap::new(),
        lost_track: false,
        nonce: rand::random(),
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
    /// ReadyForQuery, which is how refusals are matched to the stream.
    requests: u64,
    /// Prepared statements by name (SQL PREPARE and protocol Parse share
    /// one namespace, as in PostgreSQL): does executing it add rows?
    statements: HashMap<Box<str>, bool>,
    /// Portals by name: does executing it add rows?
    portals: HashMap<Box<str>, bool>,
    /// Statements may exist that the gate did not see prepared (prepared
    /// before the rules applied, or past `MAX_TRACKED`): executing an
    /// unknown one then counts as adding rows.
    lost_track: bool,
    /// Makes markers unguessable, so no statement of the client's own can
    /// be mistaken for one.
    nonce: u64,
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
            self.lost_track = true;
        }
        if self.rules.limits.row_limit > 0 && self.tenant.rows.unknown() && !self.asked_measurement
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
            _ => Interest::Pass,
        }
    }

    fn frame(&mut self, header: &FrameHeader, bytes: &[u8]) -> Verdict {
        let body = &bytes[5..];
        match header.tag {
            b'Q' => self.on_query(body),
            b'P' => self.on_parse(body),
            b'E' => self.on_execute(body),
            b'B' => {
                self.on_bind(body);
                Verdict::Forward
            }
            b'C' => {
                self.on_close(body);
                Verdict::Forward
            }
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
        if let Some(refusal) = self.verdict(&statement) {
            return self.refuse(refusal, Shape::Simple);
        }
        for (name, adds_rows) in &statement.prepares {
            self.track_statement(name, *adds_rows);
        }
        for deallocated in &statement.deallocates {
            match deallocated {
                Some(name) => {
                    self.statements.remove(name.as_str());
                }
                None => {
                    // DEALLOCATE ALL / DISCARD ALL: every prepared
                    // statement is gone, known or not.
                    self.statements.clear();
                    self.lost_track = false;
                }
            }
        }
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
        let statement = self.classify(sql);
        if let Some(feature) = policy::denied_feature(&statement, self.rules.limits.deny) {
            return self.refuse(Refusal::Policy(feature), Shape::Extended);
        }
        let adds_rows = statement.adds_rows || self.executes_rows(&statement);
        let name = self.name(name);
        self.track_statement(&name, adds_rows);
        if statement.remeasure {
            self.link.remeasure.store(true, Ordering::Relaxed);
        }
        Verdict::Forward
    }

    fn on_bind(&mut self, body: &[u8]) {
        let names = cstr(body).and_then(|(portal, rest)| Some((portal, cstr(rest)?.0)));
        let Some((portal, statement)) = names else {
            // Names longer than the peek: this portal cannot be tracked.
            self.lost_track = true;
            return;
        };
        let statement = self.name(statement);
        let adds_rows = self.statement_adds_rows(&statement);
        let portal = self.name(portal);
        if self.portals.len() >= MAX_TRACKED && !self.portals.contains_key(portal.as_ref()) {
            self.lost_track = true;
            return;
        }
        self.portals.insert(portal.into(), adds_rows);
    }

    fn on_execute(&mut self, body: &[u8]) -> Verdict {
        let Some((portal, _)) = cstr(body) else {
            return Verdict::Forward;
        };
        if self.rules.limits.row_limit == 0 {
            return Verdict::Forward;
        }
        let portal = self.name(portal);
        let adds_rows = match self.portals.get(portal.as_ref()) {
            _ if !self.name_trusted(&portal) => true,
            Some(adds_rows) => *adds_rows,
            None => self.lost_track,
        };
        match adds_rows.then(|| self.over_limit()).flatten() {
            Some(figure) => self.refuse(Refusal::RowLimit(figure), Shape::Extended),
            None => Verdict::Forward,
        }
    }

    fn on_close(&mut self, body: &[u8]) {
        let Some((&kind, rest)) = body.split_first() else {
            return;
        };
        let Some((name, _)) = cstr(rest) else {
            return;
        };
        let name = self.name(name);
        match kind {
            b'S' => self.statements.remove(name.as_ref()),
            b'P' => self.portals.remove(name.as_ref()),
            _ => None,
        };
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
    fn verdict(&self, statement: &Classification) -> Option<Refusal> {
        if let Some(feature) = policy::denied_feature(statement, self.rules.limits.deny) {
            return Some(Refusal::Policy(feature));
        }
        if self.rules.limits.row_limit > 0 && (statement.adds_rows || self.executes_rows(statement))
        {
            return self.over_limit().map(Refusal::RowLimit);
        }
        None
    }

    /// Whether a statement's SQL `EXECUTE`s a prepared statement that adds
    /// rows.
    fn executes_rows(&self, statement: &Classification) -> bool {
        statement.executes.iter().any(|name| {
            // A statement prepared in the same text counts as it says.
            match statement
                .prepares
                .iter()
                .find(|(prepared, _)| prepared == name)
            {
                Some((_, adds_rows)) => *adds_rows,
                None => self.statement_adds_rows(name),
            }
        })
    }

    fn statement_adds_rows(&self, name: &str) -> bool {
        if !self.name_trusted(name) {
            return true;
        }
        match self.statements.get(name) {
            Some(adds_rows) => *adds_rows,
            None => self.lost_track,
        }
    }

    fn track_statement(&mut self, name: &str, adds_rows: bool) {
        if self.statements.len() >= MAX_TRACKED && !self.statements.contains_key(name) {
            self.lost_track = true;
            return;
        }
        self.statements.insert(name.into(), adds_rows);
    }

    /// The tenant's figure, if it is over its limit.
    fn over_limit(&self) -> Option<Figure> {
        self.tenant
            .rows
            .figure()
            .filter(|figure| figure.is_over(self.rules.limits.row_limit))
    }

    /// Replaces the refused message by a marker the cluster will fail, and
    /// queues the error the client is to see in its place.
    fn refuse(&mut self, refusal: Refusal, shape: Shape) -> Verdict {
        let limits = &self.rules.limits;
        let error = match refusal {
            Refusal::Policy(feature) => policy::policy_error(feature, &limits.tier),
            Refusal::RowLimit(figure) => {
                policy::row_limit_error(self.tenant.name(), figure, limits.row_limit, &limits.tier)
            }
        };
        self.tenant.note_statement_refused(refusal.reason());
        tracing::debug!(tenant = self.tenant.name(), reason = refusal.reason(), error = %error, "statement refused");
        self.nonce = self.nonce.wrapping_add(1);
        let marker = format!("{MARKER_PREFIX}{:016x}", self.nonce);
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
            b'C' if self.rules.limits.row_limit > 0 => Interest::Peek { len: TAG_PEEK },
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

    fn on_ready(&mut self, status: u8) {
        self.readies += 1;
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
            if self.link.remeasure.swap(false, Ordering::Relaxed) && self.rules.limits.row_limit > 0
            {
                self.tenant.rows.want_measurement();
                self.shared.audits.request(&self.tenant);
            }
        }
        self.error_since_ready = false;
        self.copy_in = false;
    }

    /// The transaction's deltas count (commit) or vanish (rollback).
    fn settle(&mut self, committed: bool) {
        let delta = std::mem::take(&mut self.delta);
        let wrote = std::mem::take(&mut self.wrote);
        let limit = self.rules.limits.row_limit;
        if committed && wrote && limit > 0 {
            let crossing = self.tenant.rows.commit(delta, limit);
            log_crossing(&self.tenant, crossing, limit);
            if delta != 0 {
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
