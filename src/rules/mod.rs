//! The free tier's row quota and statement policy, enforced where every
//! statement passes.
//!
//! - [`classify`]: what a statement does (adds rows? uses a feature a tier
//!   may deny?), by a lexical fast path and PostgreSQL's own grammar;
//! - [`encoding`]: statement text as the cluster reads it in the session's
//!   client encoding (multibyte characters that end in `\` included);
//! - [`policy`]: a tier's `deny` list and `row_limit` turned into verdicts
//!   and the errors clients see;
//! - [`auditor`]: measures each tenant's rows on the cluster, bounded in
//!   cost and concurrency;
//! - [`gate`]: the per-session hook the pump hands statements and results
//!   to; it refuses what the tier forbids and keeps the row figure current
//!   from command tags between measurements;
//! - [`rows`]: what the proxy knows of one tenant's rows and size.

pub(crate) mod auditor;
pub mod classify;
pub(crate) mod encoding;
pub(crate) mod functions;
pub mod gate;
pub(crate) mod policy;
pub(crate) mod prepared;
pub(crate) mod storage;

pub use crate::limits::rows::{grace_s, Crossing, Figure, RowCount, Unmeasurable};

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::limits::tenants::Tenant;

/// Logs a crossing of `tenant`'s limit, in either direction.
pub fn log_crossing(tenant: &Tenant, crossing: Option<Crossing>, limit: u64) {
    let Some(crossing) = crossing else {
        return;
    };
    let rows = tenant.rows.figure().map(|f| f.rows);
    match crossing {
        Crossing::Over => tracing::info!(
            tenant = tenant.name(),
            rows,
            row_limit = limit,
            "tenant over its row limit: statements that add rows are refused"
        ),
        Crossing::Under => tracing::info!(
            tenant = tenant.name(),
            rows,
            row_limit = limit,
            "tenant back under its row limit: writes accepted again"
        ),
    }
}

/// Logs a crossing of `tenant`'s storage limit, in either direction.
pub fn log_storage_crossing(tenant: &Tenant, crossing: Option<Crossing>, limit: u64) {
    let Some(crossing) = crossing else {
        return;
    };
    let bytes = tenant.rows.bytes();
    match crossing {
        Crossing::Over => tracing::info!(
            tenant = tenant.name(),
            bytes,
            storage_limit = limit,
            "tenant over its storage limit: statements that can grow the database are refused"
        ),
        Crossing::Under => tracing::info!(
            tenant = tenant.name(),
            bytes,
            storage_limit = limit,
            "tenant back under its storage limit: writes accepted again"
        ),
    }
}

/// Where sessions ask for a tenant to be measured; the auditor takes the
/// requests from the other end. Each tenant is queued at most once.
#[derive(Debug, Clone)]
pub struct AuditQueue {
    tx: mpsc::UnboundedSender<Arc<Tenant>>,
}

impl AuditQueue {
    pub fn new() -> (AuditQueue, mpsc::UnboundedReceiver<Arc<Tenant>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (AuditQueue { tx }, rx)
    }

    /// Queues `tenant` for measurement unless it already is.
    pub fn request(&self, tenant: &Arc<Tenant>) {
        if tenant.rows.try_queue() && self.tx.send(Arc::clone(tenant)).is_err() {
            // No auditor (not running yet, or shut down): nothing measures.
            tenant.rows.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::unix_now;

    #[test]
    fn a_tenant_without_a_usable_measurement_is_unmeasurable_after_the_grace() {
        let count = RowCount::default();
        let now = unix_now();
        assert!(
            !count.unmeasurable(now + 100, 3),
            "nobody asked: no grace runs"
        );
        count.want_measurement();
        assert!(!count.unmeasurable(now, 3), "within the grace");
        assert!(
            count.unmeasurable(now + 3, 3),
            "never measured after the grace"
        );
        count.begin_measurement();
        count.finish_measurement(5, true, 100);
        assert!(!count.unmeasurable(now + 100, 3));
        count.begin_measurement();
        count.abandon_measurement(1, Unmeasurable::Permission);
        assert_eq!(count.failure(), Some(Unmeasurable::Permission));
        assert!(
            count.unmeasurable(unix_now() + 3, 3),
            "failing: the old figure is no excuse"
        );
        assert_eq!(
            count
                .failures()
                .find(|(r, _)| *r == Unmeasurable::Permission),
            Some((Unmeasurable::Permission, 1))
        );
        count.adopt(5, true, unix_now(), 100);
        assert!(
            !count.unmeasurable(unix_now() + 100, 3),
            "a fleet figure counts"
        );
        assert_eq!(count.failure(), None);
    }

    #[test]
    fn the_size_moves_with_measurements_and_crossings_are_reported_once() {
        let count = RowCount::default();
        assert!(count.unknown_for(0, 100));
        assert!(!count.unknown_for(0, 0));
        assert_eq!(count.storage_over(100), None);
        count.want_measurement();
        count.begin_measurement();
        assert_eq!(count.set_bytes(150, 100), Some(Crossing::Over));
        count.finish_size_only();
        assert_eq!(count.figure(), None, "no rows counted");
        assert!(!count.unknown_for(0, 100));
        assert!(count.unknown_for(10, 100), "rows are still unknown");
        assert_eq!(count.storage_over(100), Some(150));
        assert_eq!(count.storage_over(0), None, "0 = unlimited");
        assert_eq!(count.set_bytes(160, 100), None);
        let now = count.measured_at();
        assert!(!count.due(now + 100, 30), "clean");
        count.touch();
        assert!(
            count.due(now + 30, 30),
            "a rolled-back write: measured again"
        );
        assert_eq!(count.set_bytes(90, 100), Some(Crossing::Under));
        assert_eq!(count.storage_over(100), None);
    }

    #[test]
    fn commits_move_the_figure_and_crossings_are_reported_once() {
        let count = RowCount::default();
        assert!(!count.is_over(100));
        assert!(count.try_queue());
        assert!(!count.try_queue(), "queued once");
        count.begin_measurement();
        assert_eq!(count.finish_measurement(90, true, 100), None);
        assert!(count.try_queue(), "free again after the measurement");
        count.release();
        assert_eq!(count.commit(20, 100), Some(Crossing::Over));
        assert_eq!(count.commit(5, 100), None);
        assert!(count.is_over(100));
        assert_eq!(count.commit(-30, 100), Some(Crossing::Under));
        assert_eq!(
            count.figure(),
            Some(Figure {
                rows: 85,
                exact: true
            })
        );
        assert!(!count.is_over(0), "0 = unlimited");
    }

    #[test]
    fn writes_during_a_measurement_are_added_and_leave_it_dirty() {
        let count = RowCount::default();
        assert!(!count.due(1_000, 30), "never asked about");
        count.want_measurement();
        assert!(count.due(1_000, 30), "asked for");
        count.begin_measurement();
        count.commit(7, 0);
        count.finish_measurement(100, true, 0);
        assert_eq!(count.figure().map(|f| f.rows), Some(107));
        let now = count.measured_at();
        assert!(!count.due(now, 30), "dirty, but measured just now");
        assert!(count.due(now + 30, 30), "dirty and the interval passed");
        count.want_measurement();
        assert!(count.due(now, 30), "asked for");
    }

    #[test]
    fn a_lower_bound_is_not_lowered_by_deletes_but_measured_again() {
        let count = RowCount::default();
        count.begin_measurement();
        assert_eq!(
            count.finish_measurement(101, false, 100),
            Some(Crossing::Over)
        );
        let now = count.measured_at();
        assert!(!count.due(now, 30));
        assert_eq!(count.commit(-50, 100), None, "still over as far as known");
        assert!(count.is_over(100));
        assert!(count.due(now, 30), "a prompt measurement settles it");
        count.begin_measurement();
        assert_eq!(
            count.finish_measurement(51, true, 100),
            Some(Crossing::Under)
        );
    }

    #[test]
    fn a_failed_measurement_is_retried_after_a_pause() {
        let count = RowCount::default();
        count.want_measurement();
        count.begin_measurement();
        count.abandon_measurement(30, Unmeasurable::Connect);
        let now = unix_now();
        assert!(!count.due(now, 30));
        assert!(count.due(now + 31, 30));
        assert!(count.unknown());
    }
}
