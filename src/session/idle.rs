//! The idle-session timeout, and the sweep that also watches busy
//! sessions' statement clocks (`crate::session::statement_time`).
//!
//! Sessions only store a timestamp when they become idle (see
//! [`SessionControl::note_ready`]); one sweeper task walks all sessions a few
//! times a second and asks the expired ones to end. Nothing is armed or
//! re-armed per message, and 10,000 idle sessions cost one walk of 10,000
//! entries per tick.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::limits::suspend;
use crate::limits::tenants::Tenant;
use crate::refusal::RefusalReason;
use crate::runtime::shared::Shared;
use crate::runtime::shutdown::Stage;
use crate::session::live::{clock_ms, KillReason, TxStatus};
use crate::session::statement_time;

/// How often sessions are checked; the timeout is honoured to within this.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Runs until shutdown begins closing sessions.
pub async fn sweep(shared: Arc<Shared>) {
    let mut shutdown = shared.subscribe_shutdown();
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.reached(Stage::Closing) => return,
            _ = tick.tick() => {}
        }
        let expired = sweep_once(&shared);
        if expired > 0 {
            tracing::debug!(sessions = expired, "idle sessions closed");
        }
    }
}

/// One pass: asks every session idle past its tenant's limit, or of a
/// suspended tenant, to end.
/// Returns how many were asked.
pub fn sweep_once(shared: &Shared) -> usize {
    let now = clock_ms();
    // Limits per tenant, looked up once per pass. Sessions of one tenant
    // share its `Arc<Tenant>`, so its address is the key: no allocation per
    // session per tick.
    type Watched = (Duration, Duration, Duration, bool);
    let mut limits: HashMap<*const Tenant, Watched> = HashMap::new();
    let mut expired = 0;
    shared.sessions.for_each(|session| {
        let (idle, in_tx, statement, suspended) = *limits
            .entry(Arc::as_ptr(&session.tenant))
            .or_insert_with(|| {
                let l = shared.limits_for(session.tenant.name());
                (
                    l.idle_timeout,
                    l.idle_in_transaction_timeout,
                    l.statement_timeout,
                    suspend::is_suspended(shared, session.tenant.name(), &l),
                )
            });
        // A tenant suspended by a reload (or the fleet's store) loses its
        // sessions here; the API closes them itself at once.
        if suspended {
            if session.kill_reason().is_none() {
                session.kill(KillReason::Suspended);
            }
            return;
        }
        let Some(idle_for) = session.idle_for(now) else {
            // Busy: the tier's statement_timeout is watched on the same walk.
            statement_time::check(shared, session, statement, now);
            return;
        };
        let limit = match session.tx_status() {
            TxStatus::Idle => idle,
            TxStatus::InTransaction | TxStatus::Failed => in_tx,
        };
        if !limit.is_zero() && idle_for >= limit && session.kill_reason().is_none() {
            session.kill(KillReason::IdleTimeout);
            shared
                .metrics
                .rejected(Some(&session.tenant), RefusalReason::IdleTimeout);
            expired += 1;
        }
    });
    expired
}
