//! `proxy.toml`: what an operator can tune, how it is loaded and checked, and
//! the effective limits of each tenant.
//!
//! The file is TOML; any key can be overridden from the environment as
//! `PGTIER_<KEY>` with `__` between nesting levels (`PGTIER_CLUSTER__PORT=5433`,
//! `PGTIER_TIERS__FREE__MAX_CONNECTIONS=3`). The TOML is parsed directly (not
//! through a layered config library) so that every error can name the line,
//! column and key it is about, and so that tenant names (database names,
//! which are case-sensitive) are never case-folded.
//!
//! The root table is [`Config`], here; each section has a file of its own
//! (`links`: `[tls]`, `[cluster]`, `[auth]`; `fleet`; `registry`; `quota`),
//! as have the tiers and tenants (`tiers`), the statement kinds a tier may
//! deny (`deny`), a tenant's effective limits (`effective`), loading with
//! the environment overlay (`load`), and validation and warnings (`check`).
//! Every public type is re-exported here: `crate::config::X` is the one
//! path the rest of the crate uses.

mod check;
mod deny;
mod effective;
mod fleet;
mod links;
mod load;
mod quota;
mod registry;
#[cfg(test)]
mod tests;
mod tiers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

pub use crate::size::ByteSize;
pub use check::{check_operator_text, Warning, MAX_OPERATOR_TEXT_BYTES};
pub use deny::DenySet;
pub use effective::Limits;
pub use fleet::{FleetConfig, FleetStore, OnStoreError};
pub use links::{AuthConfig, AuthMode, ClientTlsMode, ClusterConfig, ClusterTlsMode, TlsConfig};
pub use load::ENV_PREFIX;
pub use quota::QuotaConfig;
pub use registry::{OnRegistryError, RegistryConfig, RegistryUnknown};
pub use tiers::{builtin_tiers, TenantConfig, TierConfig};

/// Why a configuration was rejected. Each variant renders as one line.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// How the threads that serve connections share the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Threading {
    /// One single-threaded runtime per thread, each with its own listener
    /// (the kernel spreads new connections, SO_REUSEPORT): a session's
    /// sockets and timers stay on one thread, so no wake-up crosses
    /// threads and nothing is stolen (fewer instructions per query).
    #[default]
    PerCore,
    /// One multi-threaded, work-stealing runtime for all sessions.
    Shared,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line, with the same fields, for log shippers.
    Json,
}

/// The whole of `proxy.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Tier of every database not listed under `[tenants]`.
    #[serde(default = "default_tier")]
    pub default_tier: String,
    /// From accept to the first ReadyForQuery.
    #[serde(default = "default_login_timeout", with = "humantime_serde")]
    pub login_timeout: Duration,
    /// How long shutdown waits for sessions to end on their own.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Client connections the whole proxy holds at once (logging in or in
    /// session), so that a flood of connections runs into a clear refusal
    /// (53300 "sorry, too many clients already") before it runs into the
    /// file-descriptor limit. 0 = no limit.
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: usize,
    /// Connections between accept and the end of their login, all tenants
    /// together; more are refused at once (53300), before any TLS
    /// handshake or cluster connection. 0 = no limit.
    #[serde(default = "default_max_pending_logins")]
    pub max_pending_logins: usize,
    /// Logins of one tenant in progress at once (from its StartupMessage);
    /// more are refused (53300) without a cluster connection, and other
    /// tenants are unaffected. 0 = no limit. A tenant whose tier caps its
    /// connections gets at most the cap plus 8 (`conn::PENDING_OVER_CAP`).
    #[serde(default = "default_max_pending_logins_per_tenant")]
    pub max_pending_logins_per_tenant: usize,
    /// Threads serving connections: 0 = one per CPU core. Needs a restart.
    #[serde(default)]
    pub worker_threads: usize,
    /// How those threads share the work (needs a restart): `per-core`, each
    /// thread a runtime of its own with its own listener (SO_REUSEPORT), a
    /// session living its whole life on one thread; or `shared`, one
    /// work-stealing runtime.
    #[serde(default)]
    pub threading: Threading,
    /// Operator API and metrics; absent = off.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token required by every admin endpoint but `/health`.
    pub admin_token: Option<String>,
    /// Where state that survives restarts (last activity) is kept.
    pub state_dir: Option<PathBuf>,
    /// `text` or `json` log lines (needs a restart). `RUST_LOG` filters.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Refused logins logged per second at most (0 = every one): a flood
    /// of refusals cannot set the log's volume. The next line logged says
    /// how many went unlogged; the metrics count every one.
    #[serde(default = "default_log_refusals_per_second")]
    pub log_refusals_per_second: u32,
    /// How long a tenant with no session stays in the per-tenant metrics
    /// series after its last activity. Leaving keeps the label cardinality
    /// bounded on a proxy that has seen many tenants; `/tenants` still
    /// lists it, and its counters come back where they were when it is
    /// active again.
    #[serde(default = "default_metrics_series_ttl", with = "humantime_serde")]
    pub metrics_series_ttl: Duration,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub tiers: BTreeMap<String, TierConfig>,
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    /// The row quota's auditor; required when any tier or tenant has a
    /// `row_limit`.
    pub quota: Option<QuotaConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub fleet: FleetConfig,
    /// Tenants read from a control-plane table; absent = the file alone.
    pub registry: Option<RegistryConfig>,
    /// Proxy mode: how long a warm cluster connection waits for the next
    /// login of its database and role before it is closed. 0 = no warm
    /// connections.
    #[serde(default = "default_server_idle_timeout", with = "humantime_serde")]
    pub server_idle_timeout: Duration,
    /// Proxy mode: warm cluster connections kept, all tenants together
    /// (least recently used closed first).
    #[serde(default = "default_max_warm_backends")]
    pub max_warm_backends: usize,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6432))
}
fn default_max_client_connections() -> usize {
    10_000
}
fn default_max_pending_logins() -> usize {
    1_000
}
fn default_max_pending_logins_per_tenant() -> usize {
    // Above the pools applications open at once on start-up (HikariCP,
    // Ecto and node-postgres default to 10), well below the global bound.
    32
}
fn default_log_refusals_per_second() -> u32 {
    100
}
fn default_tier() -> String {
    "free".to_owned()
}
fn default_login_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_metrics_series_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_server_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_warm_backends() -> usize {
    100
}
