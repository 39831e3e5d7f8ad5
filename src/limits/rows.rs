//! What the proxy knows of one tenant's rows and size ([`RowCount`]): the
//! figure the row quota and the storage limit are enforced on. It belongs
//! to the tenant (`crate::limits::tenants::Tenant::rows`) and is kept current by
//! the auditor and the gate; it knows neither.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::clock::unix_now;

/// What the proxy knows of a tenant's rows: the last measurement plus what
/// transactions committed since then added or removed, as their command
/// tags said; and the database's size in bytes as the same measurement
/// found it (the storage limit, [`storage`]: no tag tells bytes, so it
/// moves only with measurements).
#[derive(Debug, Default)]
pub struct RowCount {
    state: Mutex<RowState>,
    /// A measurement is queued or running: at most one per tenant at a time.
    busy: AtomicBool,
    /// Unix seconds when the last measurement finished (0 = never).
    measured_at: AtomicU64,
    /// Failed measurements, by [`Unmeasurable`] reason.
    failures: [AtomicU64; Unmeasurable::ALL.len()],
}

/// Why a tenant could not be measured. A tenant that cannot be measured
/// is treated as over its limit once [`grace_s`] has passed: otherwise
/// revoking the auditor's CONNECT, or holding a lock, would switch the
/// quota off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmeasurable {
    /// The auditor could not log in to the tenant's database (CONNECT
    /// revoked, a connection limit, the cluster unreachable).
    Connect,
    /// A table it may not read, or row-level security it may not bypass.
    Permission,
    /// A lock it could not get (and no other way to measure that table).
    Lock,
    /// The measurement took too long.
    Timeout,
    Other,
}

impl Unmeasurable {
    pub const ALL: [Unmeasurable; 5] = [
        Unmeasurable::Connect,
        Unmeasurable::Permission,
        Unmeasurable::Lock,
        Unmeasurable::Timeout,
        Unmeasurable::Other,
    ];

    /// The metrics label and the `/tenants` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Unmeasurable::Connect => "connect",
            Unmeasurable::Permission => "permission",
            Unmeasurable::Lock => "lock",
            Unmeasurable::Timeout => "timeout",
            Unmeasurable::Other => "other",
        }
    }
}

/// How long a tenant may go without a usable measurement (never measured,
/// or the last attempt failed) before statements that add rows are
/// refused: one auditor interval, and never less than a few seconds so a
/// first measurement has time to finish.
pub fn grace_s(interval: std::time::Duration) -> u64 {
    interval.as_secs().max(3)
}

#[derive(Debug, Default)]
struct RowState {
    /// None until the first measurement.
    rows: Option<i64>,
    /// False when the last measurement stopped counting past the limit:
    /// `rows` is then a lower bound.
    exact: bool,
    /// Rows may have changed since the last measurement began.
    dirty: bool,
    /// A measurement should come promptly (after TRUNCATE, DROP, CREATE
    /// TABLE AS…: changes command tags do not tell).
    wanted: bool,
    /// Deltas committed while a measurement runs; added to its result.
    delta_during: i64,
    measuring: bool,
    /// After a failed measurement: not before this Unix second again.
    retry_at: u64,
    /// Whether the tenant was over its limit when last looked at, so that
    /// each crossing is logged once.
    over: bool,
    /// Unix second since which the tenant has had no usable measurement:
    /// asked for and never measured, or its measurements failing (0 =
    /// measured).
    unmeasured_since: u64,
    /// Why the last measurement failed, until one succeeds.
    failure: Option<Unmeasurable>,
    /// The database's size at the last measurement (None until one).
    bytes: Option<u64>,
    /// Whether the tenant was over its storage limit when last looked at.
    over_storage: bool,
}

/// A tenant's row figure at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figure {
    pub rows: i64,
    /// False when the figure is a lower bound (counting stopped past the
    /// limit).
    pub exact: bool,
}

impl Figure {
    pub fn is_over(&self, limit: u64) -> bool {
        limit > 0 && self.rows > i64::try_from(limit).unwrap_or(i64::MAX)
    }
}

/// Which way a tenant crossed its limit, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    Over,
    Under,
}

impl RowCount {
    fn lock(&self) -> std::sync::MutexGuard<'_, RowState> {
        // A panic while holding this lock cannot leave the figure
        // inconsistent beyond one update; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The figure, once measured.
    pub fn figure(&self) -> Option<Figure> {
        let state = self.lock();
        state.rows.map(|rows| Figure {
            rows,
            exact: state.exact,
        })
    }

    /// True when the tenant is known to hold more than `limit` rows.
    pub fn is_over(&self, limit: u64) -> bool {
        self.figure().is_some_and(|f| f.is_over(limit))
    }

    /// Unix seconds of the last finished measurement (0 = never).
    pub fn measured_at(&self) -> u64 {
        self.measured_at.load(Ordering::Relaxed)
    }

    /// A committed transaction changed the row count by `delta` (0 for a
    /// write whose effect the tags do not tell). Returns the crossing, if
    /// this commit made one.
    pub fn commit(&self, delta: i64, limit: u64) -> Option<Crossing> {
        let mut state = self.lock();
        state.dirty = true;
        if state.measuring {
            state.delta_during += delta;
        }
        if delta < 0 && !state.exact {
            // The figure is only a lower bound (counting stopped past the
            // limit): what is left after a delete is unknown, so keep the
            // bound and measure again at once.
            state.wanted = true;
        } else if let Some(rows) = state.rows.as_mut() {
            *rows = rows.saturating_add(delta);
        }
        crossed(&mut state, limit)
    }

    /// Asks for a prompt measurement (the next time the auditor looks).
    pub fn want_measurement(&self) {
        let mut state = self.lock();
        state.wanted = true;
        state.dirty = true;
        if state.rows.is_none() && state.bytes.is_none() && state.unmeasured_since == 0 {
            state.unmeasured_since = unix_now();
        }
    }

    /// Whether the tenant has been without a usable measurement for
    /// `grace_s` seconds at `now`: statements that add rows are then
    /// refused.
    pub fn unmeasurable(&self, now: u64, grace_s: u64) -> bool {
        let since = self.lock().unmeasured_since;
        since > 0 && now.saturating_sub(since) >= grace_s
    }

    /// Why the last measurement failed, until one succeeds.
    pub fn failure(&self) -> Option<Unmeasurable> {
        self.lock().failure
    }

    /// Failed measurements so far, by reason.
    pub fn failures(&self) -> impl Iterator<Item = (Unmeasurable, u64)> + '_ {
        Unmeasurable::ALL
            .iter()
            .zip(&self.failures)
            .map(|(reason, n)| (*reason, n.load(Ordering::Relaxed)))
    }

    /// Whether the tenant should be measured now: asked for (its first
    /// login, a TRUNCATE…), or written to and not measured for
    /// `interval_s` seconds. A tenant nobody asked about is never measured.
    pub fn due(&self, now: u64, interval_s: u64) -> bool {
        let state = self.lock();
        if now < state.retry_at {
            return false;
        }
        state.wanted
            || ((state.rows.is_some() || state.bytes.is_some())
                && state.dirty
                && now.saturating_sub(self.measured_at()) >= interval_s)
    }

    /// Whether the tenant has never been measured.
    pub fn unknown(&self) -> bool {
        let state = self.lock();
        state.rows.is_none() && state.bytes.is_none()
    }

    /// Whether a limit in force lacks its figure: rows with a row limit,
    /// bytes with a storage limit (a limit that came with a reload).
    pub fn unknown_for(&self, row_limit: u64, storage_limit: u64) -> bool {
        let state = self.lock();
        (row_limit > 0 && state.rows.is_none()) || (storage_limit > 0 && state.bytes.is_none())
    }

    /// The database's size in bytes at the last measurement.
    pub fn bytes(&self) -> Option<u64> {
        self.lock().bytes
    }

    /// The size, if it is over `limit` (0 = no limit).
    pub fn storage_over(&self, limit: u64) -> Option<u64> {
        self.bytes().filter(|&b| limit > 0 && b > limit)
    }

    /// A measured (or the fleet's) size. Returns the storage limit's
    /// crossing, if any.
    pub fn set_bytes(&self, bytes: u64, limit: u64) -> Option<Crossing> {
        let mut state = self.lock();
        state.bytes = Some(bytes);
        let over = limit > 0 && bytes > limit;
        if over == state.over_storage {
            return None;
        }
        state.over_storage = over;
        Some(if over {
            Crossing::Over
        } else {
            Crossing::Under
        })
    }

    /// Something may have written to the database without a commit that
    /// says so (a rolled-back transaction, a statement that failed after
    /// writing): rows are unchanged but the files may have grown, so the
    /// tenant is measured again at the next interval.
    pub fn touch(&self) {
        self.lock().dirty = true;
    }

    /// [`Self::finish_measurement`] for a measurement that took only the
    /// size (no row limit applies): the row figure stays as it was.
    pub fn finish_size_only(&self) {
        self.finish(0, 0, |_, _| {});
    }

    /// Marks the tenant queued for measurement; false if it already is.
    pub fn try_queue(&self) -> bool {
        !self.busy.swap(true, Ordering::AcqRel)
    }

    /// A measurement begins: writes from now on are counted into it.
    pub fn begin_measurement(&self) {
        let mut state = self.lock();
        state.measuring = true;
        state.delta_during = 0;
        state.dirty = false;
        state.wanted = false;
    }

    /// A measurement found `rows` (`exact` = counted to the end). Returns
    /// the crossing, if any.
    pub fn finish_measurement(&self, rows: i64, exact: bool, limit: u64) -> Option<Crossing> {
        // Transactions that committed while counting may or may not be in
        // the count: adding them errs toward over-counting, and they left
        // the tenant dirty, so the next measurement settles it.
        self.finish(rows, limit, |state, measured| {
            state.rows = Some(measured);
            state.exact = exact;
        })
    }

    /// [`Self::finish_measurement`] for a measurement that found temporary
    /// tables, whose rows it can only estimate from statistics that trail
    /// their session by up to PostgreSQL's idle flush interval (10 s): it
    /// raises the figure but never lowers it, and the tenant is measured
    /// again each interval until the temporary tables are gone. Rows the
    /// tags counted into a temporary table thus stay counted.
    pub fn finish_estimate(&self, rows: i64, limit: u64) -> Option<Crossing> {
        self.finish(rows, limit, |state, measured| {
            state.rows = Some(state.rows.map_or(measured, |before| before.max(measured)));
            state.exact = false;
            state.dirty = true;
        })
    }

    /// Ends a measurement of `rows` (plus what committed meanwhile), as
    /// `apply` takes it into the figure.
    fn finish(
        &self,
        rows: i64,
        limit: u64,
        apply: impl FnOnce(&mut RowState, i64),
    ) -> Option<Crossing> {
        let mut state = self.lock();
        let during = std::mem::take(&mut state.delta_during);
        state.measuring = false;
        apply(&mut state, rows.saturating_add(during));
        state.unmeasured_since = 0;
        state.failure = None;
        drop(state);
        self.measured_at.store(unix_now(), Ordering::Relaxed);
        self.busy.store(false, Ordering::Release);
        crossed(&mut self.lock(), limit)
    }

    /// A measurement failed (the cluster was unreachable, a table locked…):
    /// the old figure stays, the tenant is tried again in `retry_s`
    /// seconds, and from [`grace_s`] after the first failure in a row it
    /// counts as over its limit.
    pub fn abandon_measurement(&self, retry_s: u64, reason: Unmeasurable) {
        self.failures[reason as usize].fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        state.failure = Some(reason);
        if state.unmeasured_since == 0 {
            state.unmeasured_since = unix_now();
        }
        state.measuring = false;
        state.dirty = true;
        state.wanted = true;
        state.delta_during = 0;
        state.retry_at = unix_now().saturating_add(retry_s);
        drop(state);
        self.busy.store(false, Ordering::Release);
    }

    /// Takes the fleet's figure (another instance measured, or applied
    /// its committed changes). Ignored while this instance is measuring:
    /// its own result is about to be published.
    pub fn adopt(&self, rows: i64, exact: bool, measured_at: u64, limit: u64) -> Option<Crossing> {
        let mut state = self.lock();
        if state.measuring {
            return None;
        }
        state.rows = Some(rows);
        state.exact = exact;
        state.unmeasured_since = 0;
        state.failure = None;
        if measured_at > self.measured_at() {
            self.measured_at.store(measured_at, Ordering::Relaxed);
            state.wanted = false;
        }
        crossed(&mut state, limit)
    }

    /// Takes the fleet's measurement of a tenant with no row limit (its
    /// size was taken with [`Self::set_bytes`]): the tenant counts as
    /// measured, its row figure untouched.
    pub fn adopt_size(&self, measured_at: u64) {
        let mut state = self.lock();
        if state.measuring {
            return;
        }
        state.unmeasured_since = 0;
        state.failure = None;
        if measured_at > self.measured_at() {
            self.measured_at.store(measured_at, Ordering::Relaxed);
            state.wanted = false;
        }
    }

    /// The tenant needs no measuring (its limit is gone): release the queue
    /// mark.
    pub fn release(&self) {
        self.busy.store(false, Ordering::Release);
    }
}

fn crossed(state: &mut RowState, limit: u64) -> Option<Crossing> {
    let over = state.rows.is_some_and(|rows| {
        Figure {
            rows,
            exact: state.exact,
        }
        .is_over(limit)
    });
    if over == state.over {
        return None;
    }
    state.over = over;
    Some(if over {
        Crossing::Over
    } else {
        Crossing::Under
    })
}
