//! Fleet-wide figures that do not belong to one tenant. Per-tenant figures
//! live as atomics on [`Tenant`](crate::limits::tenants::Tenant) and are read when
//! metrics are scraped, so the hot path never touches a metrics registry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

use crate::limits::tenants::Tenant;
use crate::refusal::RefusalReason;

/// Buckets for login durations: TLS + SCRAM on a loaded machine takes
/// milliseconds to tens of milliseconds; anything past a second is trouble.
const LOGIN_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug)]
pub struct Metrics {
    pub login_duration: Histogram,
    /// Refusals before a tenant was known (bad startup, TLS required, …).
    unattributed_rejections: Mutex<BTreeMap<&'static str, u64>>,
    /// Connection tasks that ended in a panic. Each is a bug: the client
    /// lost its connection without a word. Counted (and logged) so that an
    /// operator sees it on a dashboard and tests can assert it stays 0;
    /// tokio would otherwise swallow the panic with the task.
    session_panics: AtomicU64,
    /// Proxy mode: failed password checks, and those made to wait.
    pub auth_failures: AtomicU64,
    pub auth_delayed: AtomicU64,
    /// Proxy mode: sessions served by a warm cluster connection, and by a
    /// fresh login to the cluster.
    pub backends_warm: AtomicU64,
    pub backends_fresh: AtomicU64,
    /// Connections accepted by each serving thread (`per-core` threading),
    /// so an operator can see the kernel spreading them.
    accepted_by_thread: Mutex<BTreeMap<usize, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            login_duration: Histogram::new(LOGIN_BUCKETS),
            unattributed_rejections: Mutex::new(BTreeMap::new()),
            session_panics: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            auth_delayed: AtomicU64::new(0),
            backends_warm: AtomicU64::new(0),
            backends_fresh: AtomicU64::new(0),
            accepted_by_thread: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    /// Counts a refused connection or login under `reason`.
    pub fn rejected(&self, tenant: Option<&Tenant>, reason: RefusalReason) {
        match tenant {
            Some(t) => t.note_rejected(reason),
            None => {
                if let Ok(mut map) = self.unattributed_rejections.lock() {
                    *map.entry(reason.as_str()).or_default() += 1;
                }
            }
        }
    }

    pub fn unattributed_rejections(&self) -> BTreeMap<&'static str, u64> {
        self.unattributed_rejections
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Counts a connection task that panicked.
    pub fn session_panicked(&self) {
        self.session_panics.fetch_add(1, Ordering::Relaxed);
    }

    /// Connection tasks that panicked since start.
    pub fn session_panics(&self) -> u64 {
        self.session_panics.load(Ordering::Relaxed)
    }

    /// Serving thread `thread` accepted a connection.
    pub fn accepted(&self, thread: usize) {
        if let Ok(mut map) = self.accepted_by_thread.lock() {
            *map.entry(thread).or_default() += 1;
        }
    }

    /// Connections accepted, by serving thread.
    pub fn accepted_by_thread(&self) -> BTreeMap<usize, u64> {
        self.accepted_by_thread
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// A failed password check (`delayed`: the client was made to wait).
    pub fn auth_failed(&self, delayed: bool) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
        if delayed {
            self.auth_delayed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A session got a cluster connection: warm, or a fresh login.
    pub fn backend_handed(&self, warm: bool) {
        let counter = if warm {
            &self.backends_warm
        } else {
            &self.backends_fresh
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long a successful login took, accept to ReadyForQuery.
    pub fn login(&self, took: Duration) {
        self.login_duration.observe(took.as_secs_f64());
    }
}
