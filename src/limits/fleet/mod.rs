//! Several pgtier instances, one set of limits: the per-tenant slot, cancel
//! keys, quota figures and last activity, shared through a store every
//! instance reaches (`[fleet] store = "redis"`), or kept in the process
//! (`local`, the default: one instance).
//!
//! Why Redis and not the cluster's own `CONNECTION LIMIT`: a connection
//! limit on each tenant database would make PostgreSQL enforce the total
//! natively, but it counts every backend, so warm connections (proxy mode)
//! and the quota auditor's own logins would eat the tenant's two slots, and
//! it shares nothing else a fleet needs (cancel routing, quota figures,
//! last activity). Redis gives slots as leases that die with their
//! instance, atomically taken by one script, and a place for the rest. No
//! consensus or gossip of our own: the store is the one source of truth,
//! and each instance re-asserts its own share of it on every heartbeat, so
//! a store restart loses at most one heartbeat of state.
//!
//! Slots: `pgtier:slots:<tenant>` is a hash of instance → sessions. Taking
//! one is a script that drops the entries of instances whose heartbeat key
//! (`pgtier:instance:<id>`, expiring after `lease_ttl`) is gone, sums the
//! rest and adds one if under the limit. An instance killed with `kill -9`
//! therefore frees its slots within `lease_ttl`.
//!
//! Store faults: a call that failed or timed out may still be run by the
//! store (a stalled Redis runs what it had received when it resumes), so
//! its tenant is in doubt until a heartbeat has asserted this instance's
//! true count, zero included ([`OpsQueue::doubt`]). A store that restarted
//! empty has lost every entry; the slot script is told how many sessions
//! the caller holds, so the caller never gets its cap again on top of
//! them, and the heartbeat notices the new store (its epoch key) and
//! writes this instance's cancel keys again.

pub mod ops;
pub mod redis;
pub mod sync;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::{FleetConfig, FleetStore, OnStoreError};
use crate::limits::tenants::{AtCapacity, Slot, Tenant};
use crate::protocol::startup::CancelKey;
use crate::refusal::Refusal;

pub use ops::{Op, OpsQueue};

/// Why a fleet-wide slot was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    /// The tenant holds its limit across the fleet.
    AtCapacity(AtCapacity),
    /// The store cannot be reached and `on_store_error = "closed"`.
    StoreUnavailable,
}

impl SlotRefusal {
    /// What the client is told.
    pub fn refusal(self, database: &str, tier: &str) -> Refusal {
        match self {
            SlotRefusal::AtCapacity(AtCapacity { limit }) => Refusal::ConnectionCap {
                database: database.to_owned(),
                tier: tier.to_owned(),
                limit,
            },
            SlotRefusal::StoreUnavailable => Refusal::FleetUnavailable,
        }
    }
}

/// This process's part of the fleet.
#[derive(Debug)]
pub struct Fleet {
    /// This process's id in the store: the configured name and a random
    /// suffix, so a restarted instance never inherits a dead one's counts.
    pub instance: String,
    pub config: FleetConfig,
    store: Option<redis::Store>,
    ops: OpsQueue,
    ops_rx: std::sync::Mutex<Option<mpsc::Receiver<Op>>>,
    up: AtomicBool,
    errors: AtomicU64,
    /// Per tenant, the sessions this instance holds (given, not being
    /// taken): what the slot script counts for this instance at least.
    held: dashmap::DashMap<String, Arc<AtomicU32>>,
}

/// A session's share of the fleet's slots: counted in `held` while it
/// lives; given back in the store on drop if it was taken there (by the
/// background task: a drop never waits on the store).
#[derive(Debug)]
pub struct Lease {
    tenant: String,
    ops: OpsQueue,
    held: Arc<AtomicU32>,
    /// Taken in the store (not a fallback while the store was down).
    in_store: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
        if self.in_store {
            self.ops.push(Op::Release(std::mem::take(&mut self.tenant)));
        }
    }
}

impl Fleet {
    /// The fleet `config` describes (`listen` names the instance when
    /// `[fleet] instance` does not). A store is connected lazily; until it
    /// answers, `on_store_error` decides.
    pub fn new(config: &FleetConfig, listen: std::net::SocketAddr) -> Fleet {
        let (ops, ops_rx) = OpsQueue::new(ops::MAX_QUEUED);
        let name = config.instance.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "pgtier".to_owned());
            format!("{host}:{}", listen.port())
        });
        let instance = format!("{name}-{:08x}", rand::random::<u32>());
        let store = match config.store {
            FleetStore::Local => None,
            FleetStore::Redis => match redis::Store::new(config) {
                Ok(store) => Some(store),
                Err(e) => {
                    tracing::error!(error = %e, "the fleet store's URL is unusable; running as a local instance");
                    None
                }
            },
        };
        Fleet {
            instance,
            config: config.clone(),
            store,
            ops,
            ops_rx: std::sync::Mutex::new(Some(ops_rx)),
            up: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            held: dashmap::DashMap::new(),
        }
    }

    /// Whether limits are shared with other instances.
    pub fn is_shared(&self) -> bool {
        self.store.is_some()
    }

    pub fn store(&self) -> Option<&redis::Store> {
        self.store.as_ref()
    }

    /// Whether the store answered the last time it was asked.
    pub fn store_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn store_errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn note<T>(&self, result: &Result<T, ::redis::RedisError>) {
        match result {
            Ok(_) => self.up.store(true, Ordering::Relaxed),
            Err(e) => {
                if self.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, on_store_error = ?self.config.on_store_error, "the fleet store is unreachable");
                }
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Takes a slot of `tenant`: from this process alone (`local`), or
    /// fleet-wide. While the store cannot be reached, `open` falls back to
    /// this instance's own count against the limit (the fleet may then hold
    /// up to one limit per instance), `closed` refuses.
    pub async fn take_slot(&self, tenant: &Arc<Tenant>, limit: u32) -> Result<Slot, SlotRefusal> {
        let Some(store) = &self.store else {
            return tenant.try_take_slot(limit).map_err(SlotRefusal::AtCapacity);
        };
        // Counted here (for this instance's share), limited fleet-wide.
        let slot = tenant.try_take_slot(0).map_err(SlotRefusal::AtCapacity)?;
        let held = self.held_of(tenant.name());
        let taken = store
            .take(
                &self.instance,
                tenant.name(),
                limit,
                held.load(Ordering::Acquire),
            )
            .await;
        self.note(&taken);
        let lease = |in_store: bool| {
            held.fetch_add(1, Ordering::AcqRel);
            Lease {
                tenant: tenant.name().to_owned(),
                ops: self.ops.clone(),
                held: Arc::clone(&held),
                in_store,
            }
        };
        match taken {
            Ok(true) => Ok(slot.with_lease(lease(true))),
            Ok(false) => Err(SlotRefusal::AtCapacity(AtCapacity { limit })),
            Err(_) => {
                // Not taken as far as this instance knows, but the store
                // may run the script yet: the count is corrected behind it
                // as soon as the store answers (read once this login no
                // longer counts), and by the heartbeats.
                drop(slot);
                self.ops.doubt(tenant.name());
                self.ops.push(Op::Assert(tenant.name().to_owned()));
                match self.config.on_store_error {
                    OnStoreError::Open => {
                        let slot = tenant
                            .try_take_slot(limit)
                            .map_err(SlotRefusal::AtCapacity)?;
                        Ok(slot.with_lease(lease(false)))
                    }
                    OnStoreError::Closed => Err(SlotRefusal::StoreUnavailable),
                }
            }
        }
    }

    /// The count of `tenant`'s sessions held here, shared with its leases.
    fn held_of(&self, tenant: &str) -> Arc<AtomicU32> {
        if let Some(held) = self.held.get(tenant) {
            return Arc::clone(held.value());
        }
        Arc::clone(self.held.entry(tenant.to_owned()).or_default().value())
    }

    /// Queues work for the background task (a no-op for a local fleet).
    pub fn send(&self, op: Op) {
        if self.store.is_some() {
            self.ops.push(op);
        }
    }

    /// The queue cancel keys mirror their registrations through.
    pub fn ops(&self) -> Option<OpsQueue> {
        self.store.as_ref().map(|_| self.ops.clone())
    }

    /// Notes that the store's entry of this instance for `tenant` may be
    /// wrong (see [`OpsQueue::doubt`]).
    pub fn doubt(&self, tenant: impl Into<String>) {
        self.ops.doubt(tenant);
    }

    /// Tenants whose store entry came in doubt since the last call (see
    /// [`OpsQueue::doubt`]).
    pub fn take_doubts(&self) -> std::collections::HashSet<String> {
        self.ops.take_doubts()
    }

    /// Work for the store dropped since start (see [`ops`]).
    pub fn ops_dropped(&self) -> u64 {
        self.ops.dropped()
    }

    /// Counts `n` items of work the background task dropped.
    pub fn ops_dropped_later(&self, n: usize) {
        self.ops.dropped_later(n);
    }

    /// The cluster key behind a client key another instance issued.
    pub async fn lookup_cancel(&self, key: &CancelKey) -> Option<CancelKey> {
        let store = self.store.as_ref()?;
        let found = store.lookup_cancel(key).await;
        self.note(&found);
        found.ok().flatten()
    }

    /// The background task's end of the queue, taken once.
    pub fn take_ops(&self) -> Option<mpsc::Receiver<Op>> {
        self.ops_rx.lock().ok().and_then(|mut r| r.take())
    }

    /// Notes the outcome of a store call made elsewhere (the background
    /// task), for `store_up` and the error count.
    pub fn noted<T>(&self, result: &Result<T, ::redis::RedisError>) {
        self.note(result);
    }
}
