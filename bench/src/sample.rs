//! One measured run of a workload against a target, and what a refusal
//! cost in workload (f).

use crate::attack;
use crate::perf;

/// One run of one workload against one target.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    pub(crate) round: u32,
    /// TPS (summed over the parallel pgbench processes) or MiB/s.
    pub(crate) value: f64,
    /// Transaction-weighted mean latency, ms (pgbench workloads).
    pub(crate) latency_ms: Option<f64>,
    /// Seconds measured.
    pub(crate) window_secs: f64,
    /// Transactions in the measured window: what the proxy's CPU time is
    /// divided by.
    pub(crate) total_queries: u64,
    /// CPU seconds the proxy of this target used during the window.
    pub(crate) proxy_cpu: Option<f64>,
    /// `perf stat` counts per transaction ((a), (b)).
    pub(crate) perf: Option<perf::PerTransaction>,
    /// What the attackers of (f) got during the window.
    pub(crate) attack: Option<attack::Figures>,
    /// (f) as fast as answered: what a refusal costs, attackers alone.
    pub(crate) refusal_cost: Option<RefusalCost>,
}

/// CPU per refused login with no other load, µs: a clean figure where the
/// CPU of the proxy under (f) mixes refusals and pgbench's transactions.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RefusalCost {
    pub(crate) refused_per_s: f64,
    pub(crate) proxy_us: f64,
    /// The cluster's backends that ended in the window (a refused login's
    /// backend ends at once), from the postmaster's reaped-children CPU.
    pub(crate) cluster_us: f64,
    pub(crate) attacker_us: f64,
}
