//! Tenants (one per database on the cluster), their connection slots, and
//! what the proxy remembers about each.
//!
//! A [`Slot`] is one authenticated session counted against its tenant's cap.
//! It is taken with a single atomic check-and-increment and given back by
//! `Drop`, so no early return, error or panic can leak one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use crate::limits::rows::RowCount;
use crate::refusal::RefusalReason;

/// A database on the cluster and the proxy's running figures for it.
#[derive(Debug)]
pub struct Tenant {
    name: String,
    connections: AtomicU32,
    rejected_total: AtomicU64,
    /// Refusals by reason (`max_connections`, `login_timeout`, …); rare, so
    /// a lock is fine.
    rejected_by_reason: Mutex<BTreeMap<&'static str, u64>>,
    sessions_total: AtomicU64,
    queries_total: AtomicU64,
    bytes_from_clients: AtomicU64,
    bytes_to_clients: AtomicU64,
    /// Unix time in seconds of the last login or query; 0 = never seen.
    last_activity: AtomicU64,
    /// What the proxy knows of the rows the tenant's tables hold.
    pub rows: RowCount,
    /// Statements refused because the tenant was over its row limit, and
    /// because its tier denies what they do.
    refused_row_limit: AtomicU64,
    refused_policy: AtomicU64,
    refused_storage_limit: AtomicU64,
}

/// The tenant is at its cap: `limit` sessions already hold slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtCapacity {
    pub limit: u32,
}

impl Tenant {
    fn new(name: &str) -> Self {
        Tenant {
            name: name.to_owned(),
            connections: AtomicU32::new(0),
            rejected_total: AtomicU64::new(0),
            rejected_by_reason: Mutex::new(BTreeMap::new()),
            sessions_total: AtomicU64::new(0),
            queries_total: AtomicU64::new(0),
            bytes_from_clients: AtomicU64::new(0),
            bytes_to_clients: AtomicU64::new(0),
            last_activity: AtomicU64::new(0),
            rows: RowCount::default(),
            refused_row_limit: AtomicU64::new(0),
            refused_policy: AtomicU64::new(0),
            refused_storage_limit: AtomicU64::new(0),
        }
    }

    /// Counts a refused statement by reason (`row_limit` or `policy`).
    pub fn note_statement_refused(&self, reason: RefusalReason) {
        let counter = match reason {
            // Refused for the row limit, measured or not.
            RefusalReason::RowLimit | RefusalReason::Unmeasured => &self.refused_row_limit,
            // Refused for the storage limit, measured or not.
            RefusalReason::StorageLimit | RefusalReason::StorageUnmeasured => {
                &self.refused_storage_limit
            }
            _ => &self.refused_policy,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Statements refused over the storage limit (or unmeasurable under one).
    pub fn statements_refused_storage(&self) -> u64 {
        self.refused_storage_limit.load(Ordering::Relaxed)
    }

    /// Statements refused: (over the row limit, denied by policy).
    pub fn statements_refused(&self) -> (u64, u64) {
        (
            self.refused_row_limit.load(Ordering::Relaxed),
            self.refused_policy.load(Ordering::Relaxed),
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sessions holding a slot right now.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Acquire)
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected_total.load(Ordering::Relaxed)
    }

    pub fn sessions_total(&self) -> u64 {
        self.sessions_total.load(Ordering::Relaxed)
    }

    /// Counts a refused login or connection, by reason.
    pub fn note_rejected(&self, reason: RefusalReason) {
        self.rejected_total.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut map) = self.rejected_by_reason.lock() {
            *map.entry(reason.as_str()).or_default() += 1;
        }
    }

    pub fn rejected_by_reason(&self) -> BTreeMap<&'static str, u64> {
        self.rejected_by_reason
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Queries (Query, Sync and FunctionCall messages) relayed.
    pub fn queries_total(&self) -> u64 {
        self.queries_total.load(Ordering::Relaxed)
    }

    pub fn bytes_from_clients(&self) -> u64 {
        self.bytes_from_clients.load(Ordering::Relaxed)
    }

    pub fn bytes_to_clients(&self) -> u64 {
        self.bytes_to_clients.load(Ordering::Relaxed)
    }

    /// Hot path: one relaxed add per batch forwarded.
    #[inline]
    pub fn note_from_client(&self, bytes: usize, queries: u64) {
        self.bytes_from_clients
            .fetch_add(bytes as u64, Ordering::Relaxed);
        if queries > 0 {
            self.queries_total.fetch_add(queries, Ordering::Relaxed);
            self.touch();
        }
    }

    #[inline]
    pub fn note_to_client(&self, bytes: usize) {
        self.bytes_to_clients
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Unix seconds of the last login or query (0 = none known).
    pub fn last_activity(&self) -> u64 {
        self.last_activity.load(Ordering::Relaxed)
    }

    /// Records activity now. Cheap enough for every query: one relaxed store,
    /// skipped when the second has not changed.
    pub fn touch(&self) {
        let now = unix_now();
        if self.last_activity.load(Ordering::Relaxed) != now {
            self.last_activity.store(now, Ordering::Relaxed);
        }
    }

    /// Restores a persisted last-activity time unless a newer one is known.
    pub fn restore_last_activity(&self, unix_secs: u64) {
        self.last_activity.fetch_max(unix_secs, Ordering::Relaxed);
    }

    /// Takes a slot if fewer than `limit` are held (`0` = no limit). The
    /// check and the increment are one atomic step, so racing logins can
    /// never overshoot the cap.
    pub fn try_take_slot(self: &Arc<Self>, limit: u32) -> Result<Slot, AtCapacity> {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (limit == 0 || held < limit).then_some(held + 1)
            })
            .map_err(|_| AtCapacity { limit })?;
        self.sessions_total.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Ok(Slot {
            tenant: Arc::clone(self),
            lease: None,
        })
    }
}

/// One counted session of a tenant; dropping it gives the slot back (and,
/// in a fleet, its fleet-wide lease).
#[derive(Debug)]
pub struct Slot {
    tenant: Arc<Tenant>,
    /// Whatever else the slot stands for and must give back with it (the
    /// fleet's lease); opaque here, so that the tenant knows nothing of
    /// the fleet.
    lease: Option<Box<dyn std::fmt::Debug + Send + Sync>>,
}

impl Slot {
    pub fn tenant(&self) -> &Arc<Tenant> {
        &self.tenant
    }

    /// This slot also holds a fleet-wide lease, given back with it.
    pub fn with_lease(mut self, lease: impl std::fmt::Debug + Send + Sync + 'static) -> Slot {
        self.lease = Some(Box::new(lease));
        self
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.tenant.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every tenant seen since start or named in the configuration.
///
/// This is the one place that counts slots; a multi-instance deployment would
/// put a shared store (the cluster's own `CONNECTION LIMIT`, or Redis) behind
/// `get_or_insert` + [`Tenant::try_take_slot`] without touching the pump.
#[derive(Debug, Default)]
pub struct Tenants {
    map: DashMap<String, Arc<Tenant>>,
}

impl Tenants {
    pub fn get(&self, name: &str) -> Option<Arc<Tenant>> {
        self.map.get(name).map(|t| Arc::clone(t.value()))
    }

    pub fn get_or_insert(&self, name: &str) -> Arc<Tenant> {
        if let Some(t) = self.map.get(name) {
            return Arc::clone(t.value());
        }
        Arc::clone(
            self.map
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(Tenant::new(name)))
                .value(),
        )
    }

    /// Removes `name` if nothing refers to it but the registry and it has
    /// no history (no session ever started, no activity recorded): for a
    /// database the cluster said does not exist, so made-up names do not
    /// stay registered.
    pub fn forget_if_unused(&self, name: &str) {
        self.map.remove_if(name, |_, t| {
            Arc::strong_count(t) == 1 && t.connections() == 0 && t.sessions_total() <= 1
        });
    }

    /// A snapshot of all tenants, sorted by name.
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        let mut all: Vec<_> = self.map.iter().map(|t| Arc::clone(t.value())).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

pub use crate::clock::unix_now;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_is_enforced_and_slots_come_back_on_drop() {
        let tenants = Tenants::default();
        let t = tenants.get_or_insert("hobby");
        let a = t.try_take_slot(2).unwrap();
        let _b = t.try_take_slot(2).unwrap();
        assert_eq!(t.try_take_slot(2).unwrap_err(), AtCapacity { limit: 2 });
        drop(a);
        assert_eq!(t.connections(), 1);
        let _c = t.try_take_slot(2).unwrap();
        assert_eq!(t.connections(), 2);
        assert_eq!(t.sessions_total(), 3);
    }

    #[test]
    fn racing_threads_never_overshoot() {
        let t = Tenants::default().get_or_insert("race");
        let slots = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    if let Ok(slot) = t.try_take_slot(2) {
                        slots.lock().unwrap().push(slot);
                    }
                });
            }
        });
        assert_eq!(slots.lock().unwrap().len(), 2);
        assert_eq!(t.connections(), 2);
    }

    #[test]
    fn zero_means_unlimited() {
        let t = Tenants::default().get_or_insert("big");
        let held: Vec<_> = (0..100).map(|_| t.try_take_slot(0).unwrap()).collect();
        assert_eq!(t.connections(), 100);
        drop(held);
        assert_eq!(t.connections(), 0);
    }
}
