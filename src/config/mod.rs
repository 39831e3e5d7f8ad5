//! `proxy.toml`: what an operator can tune, how it is loaded and checked, and
//! the effective limits of each tenant.
//!
//! The file is TOML; any key can be overridden from the environment as
//! `PGTIER_<KEY>` with `__` between nesting levels (`PGTIER_CLUSTER__PORT=5433`,
//! `PGTIER_TIERS__FREE__MAX_CONNECTIONS=3`). The TOML is parsed directly (not
//! through a layered config library) so that every error can name the line,
//! column and key it is about, and so that tenant names (database names,
//! which are case-sensitive) are never case-folded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::rules::classify::DenyKind;
pub use crate::size::ByteSize;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "PGTIER_";

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

/// Where the limits several instances share are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FleetStore {
    /// In this process: one instance.
    #[default]
    Local,
    /// In Redis (`[fleet] url`): slots, cancel keys, quota figures and last
    /// activity shared by every instance.
    Redis,
}

/// What an instance does while the fleet's store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Keep serving: each instance holds its own count against the limit
    /// (the fleet may briefly hold up to one limit per instance).
    #[default]
    Open,
    /// Refuse logins that need a slot until the store answers again.
    Closed,
}

/// `[fleet]`: several instances, one set of limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    #[serde(default)]
    pub store: FleetStore,
    /// `redis://host:port/` (needed for `store = "redis"`).
    pub url: Option<String>,
    /// This instance's name in the fleet (default: host name and port).
    pub instance: Option<String>,
    /// How long a dead instance's slots and cancel keys outlive it; its
    /// heartbeat renews them three times per lease.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    #[serde(default)]
    pub on_store_error: OnStoreError,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            store: FleetStore::Local,
            url: None,
            instance: None,
            lease_ttl: default_lease_ttl(),
            on_store_error: OnStoreError::Open,
        }
    }
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

/// `[registry] unknown`: what a database the registry has no row for gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RegistryUnknown {
    /// The file's limits: its `[tenants.x]` if any, else `default_tier`.
    #[default]
    Default,
    /// Refused with PostgreSQL's own `3D000 database "x" does not exist`.
    Refuse,
}

/// `[registry] on_error`: what a database the registry has not answered
/// for yet gets while the registry cannot be read (cached tenants keep
/// their cached row either way). Named like the fleet's `on_store_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnRegistryError {
    /// Logged in with the file's limits, as if the registry had no row.
    Open,
    /// Refused (57P03) until the registry answers: a tenant the control
    /// plane downgraded or refused cannot slip in during an outage.
    #[default]
    Closed,
}

/// `[registry]`: tenants read from a control-plane table (see
/// `crate::limits::registry`). Its per-tenant keys override the file's `[tenants]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// One row for the database named `$1`, or none; its columns are named
    /// by the keys `[tenants.x]` accepts (`tier`, `max_connections`, …). A
    /// NULL column leaves the file's value.
    pub query: String,
    /// The role the query and the LISTEN run as; tenants must not be able
    /// to log in as it or reach its database.
    pub user: String,
    /// Better given as `PGTIER_REGISTRY__PASSWORD`.
    pub password: Option<String>,
    /// The database the table lives in (and NOTIFY is sent in).
    #[serde(default = "default_quota_database")]
    pub database: String,
    /// How long a looked-up row is trusted when no NOTIFY says otherwise
    /// (and so the staleness bound while the LISTEN connection is down).
    #[serde(default = "default_registry_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// The channel the control plane NOTIFYs with a database's name (or an
    /// empty payload for all).
    #[serde(default = "default_registry_channel")]
    pub channel: String,
    #[serde(default)]
    pub unknown: RegistryUnknown,
    #[serde(default)]
    pub on_error: OnRegistryError,
}

fn default_registry_cache_ttl() -> Duration {
    Duration::from_secs(60)
}

fn default_registry_channel() -> String {
    "pgtier_tenants".to_owned()
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

/// Client-side TLS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// Plaintext logins are refused with SQLSTATE 28000.
    #[default]
    Require,
    /// TLS is offered; plaintext is accepted.
    Prefer,
    /// TLS is never offered (`N` to SSLRequest).
    Disable,
}

/// TLS on the proxy's own link to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterTlsMode {
    /// Plaintext (the default: pass-through SCRAM only works this way).
    #[default]
    Disable,
    /// TLS if the cluster offers it.
    Prefer,
    /// TLS or no connection (verified against `ca` when given).
    Require,
    /// TLS, the cluster's certificate verified against `ca` (required) and
    /// its name against `host`.
    VerifyFull,
}

/// Who checks a client's password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// The cluster does, through the proxy (every login reaches the
    /// cluster; the link to it must be plaintext for SCRAM).
    #[default]
    Passthrough,
    /// The proxy does, against the role's SCRAM verifier (auth_query), then
    /// logs into the cluster itself: refused logins never reach the
    /// cluster, cluster connections can be kept warm, TLS to the cluster
    /// and channel binding to clients work.
    Proxy,
}

/// `[auth]`: proxy-side authentication.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub mode: AuthMode,
    /// The role auth_query runs as (needed in proxy mode).
    pub user: Option<String>,
    /// Better given as `PGTIER_AUTH__PASSWORD`.
    pub password: Option<String>,
    /// The database auth_query runs in.
    #[serde(default = "default_quota_database")]
    pub database: String,
    /// Returns the login role's `rolpassword` (one text column) for `$1`.
    #[serde(default = "default_auth_query")]
    pub auth_query: String,
    /// How long a looked-up verifier is trusted: a changed password takes
    /// effect within it.
    #[serde(default = "default_auth_cache_ttl", with = "humantime_serde")]
    pub auth_cache_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain presented to clients.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub mode: ClientTlsMode,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Host name or IP address; a path starting with `/` is the directory of
    /// the cluster's Unix socket (as in libpq).
    #[serde(default = "default_cluster_host")]
    pub host: String,
    #[serde(default = "default_cluster_port")]
    pub port: u16,
    #[serde(default)]
    pub tls: ClusterTlsMode,
    /// CA bundle to verify the cluster's certificate with. Without it a TLS
    /// link to the cluster is encrypted but not authenticated, as libpq's
    /// `sslmode=require`.
    pub ca: Option<PathBuf>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            host: default_cluster_host(),
            port: default_cluster_port(),
            tls: ClusterTlsMode::default(),
            ca: None,
            connect_timeout: default_connect_timeout(),
        }
    }
}

/// The limits a tier sets. `0` means unlimited (or never, for timeouts).
///
/// Every key is optional in the file: a `[tiers.NAME]` table changes the
/// keys it names and keeps the rest (of the built-in tier of that name, or
/// of the unlimited defaults for a tier of the operator's own).
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub max_connections: Option<u32>,
    /// How long a session may sit idle (between ReadyForQuery and the
    /// client's next message) before it is closed with 57P05.
    #[serde(default, with = "humantime_serde::option")]
    pub idle_timeout: Option<Duration>,
    /// A separate, usually shorter, limit for idling inside a transaction;
    /// `idle_timeout` applies when absent.
    #[serde(default, with = "humantime_serde::option")]
    pub idle_in_transaction_timeout: Option<Duration>,
    /// How long one request may run on the cluster before the proxy
    /// cancels it (57014). The tenant's own `SET statement_timeout` works
    /// below it and cannot lift it; see `crate::session::statement_time`.
    #[serde(default, with = "humantime_serde::option")]
    pub statement_timeout: Option<Duration>,
    /// Rows a tenant's tables may hold together; above it, statements that
    /// add rows are refused (53400). Needs `[quota]`.
    pub row_limit: Option<u64>,
    /// Bytes the tenant's database may take on the cluster
    /// (`pg_database_size`; `"256MB"`, `"1GB"`; 0 = no limit); above it,
    /// statements that can grow the database are refused (53100). Needs
    /// `[quota]`. See `crate::rules::storage`.
    pub storage_limit: Option<ByteSize>,
    /// Statement kinds refused (42501): `extension`, `function`, `trigger`,
    /// `role`.
    pub deny: Option<Vec<String>>,
    /// Every login is refused (FATAL 55000) and running sessions are
    /// closed (57P01); see `crate::limits::suspend`.
    pub suspended: Option<bool>,
    /// What a refused login is told (`{database}` is replaced by the
    /// database's name); `crate::limits::suspend` has the default.
    pub suspended_message: Option<String>,
    pub suspended_hint: Option<String>,
}

impl TierConfig {
    /// `self`'s keys over `base`'s.
    fn over(&self, base: &TierConfig) -> TierConfig {
        TierConfig {
            max_connections: self.max_connections.or(base.max_connections),
            idle_timeout: self.idle_timeout.or(base.idle_timeout),
            idle_in_transaction_timeout: self
                .idle_in_transaction_timeout
                .or(base.idle_in_transaction_timeout),
            statement_timeout: self.statement_timeout.or(base.statement_timeout),
            row_limit: self.row_limit.or(base.row_limit),
            storage_limit: self.storage_limit.or(base.storage_limit),
            deny: self.deny.clone().or_else(|| base.deny.clone()),
            suspended: self.suspended.or(base.suspended),
            suspended_message: self
                .suspended_message
                .clone()
                .or_else(|| base.suspended_message.clone()),
            suspended_hint: self
                .suspended_hint
                .clone()
                .or_else(|| base.suspended_hint.clone()),
        }
    }
}

/// A tenant listed by name; any tier key can be overridden.
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub tier: Option<String>,
    pub max_connections: Option<u32>,
    #[serde(default, with = "humantime_serde::option")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub idle_in_transaction_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub statement_timeout: Option<Duration>,
    pub row_limit: Option<u64>,
    pub storage_limit: Option<ByteSize>,
    pub deny: Option<Vec<String>>,
    pub suspended: Option<bool>,
    pub suspended_message: Option<String>,
    pub suspended_hint: Option<String>,
}

impl TenantConfig {
    /// `self`'s keys over `base`'s: a registry row over the file's entry.
    /// A key added to `TenantConfig` must be added here too.
    pub fn over(&self, base: &TenantConfig) -> TenantConfig {
        TenantConfig {
            tier: self.tier.clone().or_else(|| base.tier.clone()),
            max_connections: self.max_connections.or(base.max_connections),
            idle_timeout: self.idle_timeout.or(base.idle_timeout),
            idle_in_transaction_timeout: self
                .idle_in_transaction_timeout
                .or(base.idle_in_transaction_timeout),
            statement_timeout: self.statement_timeout.or(base.statement_timeout),
            row_limit: self.row_limit.or(base.row_limit),
            deny: self.deny.clone().or_else(|| base.deny.clone()),
            storage_limit: self.storage_limit.or(base.storage_limit),
            suspended: self.suspended.or(base.suspended),
            suspended_message: self
                .suspended_message
                .clone()
                .or_else(|| base.suspended_message.clone()),
            suspended_hint: self
                .suspended_hint
                .clone()
                .or_else(|| base.suspended_hint.clone()),
        }
    }

    /// What is wrong with this entry under `config` (a tier it names that
    /// does not exist, an unknown deny kind, a row limit without
    /// `[quota]`), with the key it is about; for registry rows, which are
    /// not checked when the file is.
    pub fn check(&self, config: &Config) -> Result<(), (&'static str, String)> {
        if let Some(tier) = &self.tier {
            if !config.tiers.contains_key(tier) {
                return Err((
                    "tier",
                    format!("{tier:?} names no tier (known: {})", config.tier_names()),
                ));
            }
        }
        if let Some(names) = &self.deny {
            DenySet::parse(names).map_err(|e| ("deny", e))?;
        }
        if let (Some(limit @ 1..), None) = (self.row_limit, &config.quota) {
            return Err((
                "row_limit",
                format!("{limit} needs a [quota] table in proxy.toml"),
            ));
        }
        Ok(())
    }

    /// The tier keys this tenant overrides.
    fn as_tier(&self) -> TierConfig {
        TierConfig {
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout,
            idle_in_transaction_timeout: self.idle_in_transaction_timeout,
            statement_timeout: self.statement_timeout,
            row_limit: self.row_limit,
            storage_limit: self.storage_limit,
            deny: self.deny.clone(),
            suspended: self.suspended,
            suspended_message: self.suspended_message.clone(),
            suspended_hint: self.suspended_hint.clone(),
        }
    }
}

/// `[quota]`: how the proxy measures tenants' rows. It logs into each
/// tenant's database on the cluster as this role, which needs to read
/// every table (`pg_read_all_data`), bypass row-level security
/// (`BYPASSRLS`) and CONNECT on tenant databases.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub user: String,
    /// Better given as `PGTIER_QUOTA__PASSWORD` than written in the file.
    pub password: Option<String>,
    /// The database the auditor logs into first, to check its credentials.
    #[serde(default = "default_quota_database")]
    pub database: String,
    /// How often a tenant that writes is measured again.
    #[serde(default = "default_quota_interval", with = "humantime_serde")]
    pub interval: Duration,
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
fn default_cluster_host() -> String {
    "127.0.0.1".to_owned()
}
fn default_cluster_port() -> u16 {
    5432
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_quota_database() -> String {
    "postgres".to_owned()
}
fn default_quota_interval() -> Duration {
    Duration::from_secs(30)
}
/// Reading `pg_authid` needs a superuser; the README shows a SECURITY
/// DEFINER function to use instead.
fn default_auth_query() -> String {
    "SELECT rolpassword::text FROM pg_catalog.pg_authid WHERE rolname = $1 AND rolcanlogin \
     AND (rolvaliduntil IS NULL OR rolvaliduntil > now())"
        .to_owned()
}
fn default_auth_cache_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_server_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_warm_backends() -> usize {
    100
}

/// The tiers that exist even when `proxy.toml` does not mention them. A
/// `[tiers.NAME]` table of the same name changes the keys it names.
pub fn builtin_tiers() -> BTreeMap<String, TierConfig> {
    BTreeMap::from([
        (
            "free".to_owned(),
            TierConfig {
                max_connections: Some(2),
                idle_timeout: Some(Duration::from_secs(300)),
                idle_in_transaction_timeout: None,
                // A migration of 10,000 rows (CREATE INDEX, a rewriting
                // ALTER TABLE, an UPDATE of every row) takes well under a
                // second; 30 s caps a runaway at 30 s of one core. See the
                // README's "Statement timeout".
                statement_timeout: Some(Duration::from_secs(30)),
                row_limit: Some(10_000),
                // 10,000 rows of a typical application (≤ 20 kB a row with
                // its indexes and TOAST) plus an empty database's ~7.5 MB
                // fit with room for bloat; 10,000 rows of 1 GB each do not.
                // Peers' free tiers: Supabase 500 MB, Neon 0.5 GB, Heroku
                // essential-0 1 GB. See the README's "Storage limit".
                storage_limit: Some(ByteSize(256 << 20)),
                deny: Some(
                    DenyKind::ALL
                        .iter()
                        .map(|k| k.as_str().to_owned())
                        .collect(),
                ),
                ..TierConfig::default()
            },
        ),
        (
            "standard".to_owned(),
            TierConfig {
                max_connections: Some(0),
                idle_timeout: Some(Duration::ZERO),
                idle_in_transaction_timeout: None,
                statement_timeout: Some(Duration::ZERO),
                row_limit: Some(0),
                storage_limit: Some(ByteSize(0)),
                deny: Some(Vec::new()),
                ..TierConfig::default()
            },
        ),
    ])
}

/// The statement kinds a tier denies, as a set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DenySet(u8);

impl DenySet {
    pub fn contains(self, kind: DenyKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn kinds(self) -> impl Iterator<Item = DenyKind> {
        DenyKind::ALL.into_iter().filter(move |k| self.contains(*k))
    }

    fn bit(kind: DenyKind) -> u8 {
        1 << (kind as u8)
    }

    /// Reads `deny = [...]`; unknown names are an error naming them.
    fn parse(names: &[String]) -> Result<DenySet, String> {
        let mut set = DenySet::default();
        for name in names {
            let kind = DenyKind::parse(name).ok_or_else(|| {
                format!(
                    "{name:?} is not a statement kind (known: {})",
                    DenyKind::ALL.map(DenyKind::as_str).join(", ")
                )
            })?;
            set.0 |= Self::bit(kind);
        }
        Ok(set)
    }
}

/// The limits in force for one tenant, tier and overrides combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub tier: String,
    /// 0 = unlimited.
    pub max_connections: u32,
    /// Zero = never.
    pub idle_timeout: Duration,
    pub idle_in_transaction_timeout: Duration,
    /// Zero = none.
    pub statement_timeout: Duration,
    /// 0 = unlimited.
    pub row_limit: u64,
    /// Bytes; 0 = unlimited.
    pub storage_limit: u64,
    pub deny: DenySet,
    /// Suspended by the configuration (the tenant's key, else its tier's).
    pub suspended: bool,
    pub suspended_message: Option<String>,
    pub suspended_hint: Option<String>,
}

/// Something worth telling the operator that does not stop the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning(pub String);

impl Config {
    /// Reads `path`, applies `PGTIER_` overrides from the process environment
    /// and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_with_env(&text, &path.display().to_string(), std::env::vars())
    }

    /// Parses and validates TOML text (no environment overrides).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_with_env(text, "config", std::iter::empty())
    }

    /// Parses `text` (named `origin` in errors), overlays the `PGTIER_`
    /// variables among `env`, and validates.
    pub fn from_toml_with_env(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        // First the file alone, so errors carry its line and column.
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: one_line(&e),
        })?;
        let _: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: one_line(&e),
        })?;
        let mut overridden = Vec::new();
        for (name, value) in env {
            if let Some(key) = name.strip_prefix(ENV_PREFIX) {
                apply_override(&mut table, key, &value);
                overridden.push(name);
            }
        }
        let config: Config = if overridden.is_empty() {
            toml::from_str(text).map_err(|e| ConfigError::Parse {
                origin: origin.to_owned(),
                message: one_line(&e),
            })?
        } else {
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                origin: format!("{origin} with {}", overridden.join(", ")),
                message: one_line(&e),
            })?
        };
        config.validated(origin)
    }

    fn validated(mut self, origin: &str) -> Result<Config, ConfigError> {
        let mut builtin = builtin_tiers();
        if self.quota.is_none() {
            // Nothing can measure sizes: a built-in storage_limit is off
            // unless the file asks for one (then it is an error below). A
            // configuration that turned the row limit off without a
            // [quota] stays valid.
            for tier in builtin.values_mut() {
                tier.storage_limit = Some(ByteSize(0));
            }
        }
        for (name, tier) in self.tiers.iter_mut() {
            if let Some(base) = builtin.get(name) {
                *tier = tier.over(base);
            }
        }
        for (name, tier) in builtin {
            self.tiers.entry(name).or_insert(tier);
        }
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        if !self.tiers.contains_key(&self.default_tier) {
            return Err(invalid(format!(
                "default_tier = {:?} names no tier (known: {})",
                self.default_tier,
                self.tier_names()
            )));
        }
        for (tenant, t) in &self.tenants {
            // PostgreSQL cuts a database name to 63 bytes, and so does the
            // proxy when it names the tenant: a longer entry would never
            // apply, and its tenant would get the default tier.
            if tenant.len() > crate::protocol::startup::MAX_NAME_BYTES {
                return Err(invalid(format!(
                    "tenants.{tenant:?}: a database name has at most 63 bytes (this one has {}); \
                     PostgreSQL and pgtier cut longer names, so this entry would never apply",
                    tenant.len()
                )));
            }
            if let Some(tier) = &t.tier {
                if !self.tiers.contains_key(tier) {
                    return Err(invalid(format!(
                        "tenants.{tenant}.tier = {tier:?} names no tier (known: {})",
                        self.tier_names()
                    )));
                }
            }
        }
        if self.tls.mode != ClientTlsMode::Disable {
            if self.tls.cert.is_none() {
                return Err(invalid(format!(
                    "tls.cert is required when tls.mode = {:?} (set tls.mode = \"disable\" to run without TLS)",
                    mode_name(self.tls.mode)
                )));
            }
            if self.tls.key.is_none() {
                return Err(invalid(format!(
                    "tls.key is required when tls.mode = {:?}",
                    mode_name(self.tls.mode)
                )));
            }
        }
        if self.login_timeout.is_zero() {
            return Err(invalid(
                "login_timeout must be greater than zero".to_owned(),
            ));
        }
        if self.cluster.connect_timeout.is_zero() {
            return Err(invalid(
                "cluster.connect_timeout must be greater than zero".to_owned(),
            ));
        }
        let tier_keys = self.tiers.iter().map(|(name, t)| {
            let storage = t.storage_limit.map(|b| b.0);
            (
                format!("tiers.{name}"),
                t.row_limit,
                storage,
                t.deny.as_deref(),
            )
        });
        let tenant_keys = self.tenants.iter().map(|(name, t)| {
            let storage = t.storage_limit.map(|b| b.0);
            (
                format!("tenants.{name}"),
                t.row_limit,
                storage,
                t.deny.as_deref(),
            )
        });
        let texts = self
            .tiers
            .iter()
            .map(|(name, t)| {
                (
                    format!("tiers.{name}"),
                    &t.suspended_message,
                    &t.suspended_hint,
                )
            })
            .chain(self.tenants.iter().map(|(name, t)| {
                (
                    format!("tenants.{name}"),
                    &t.suspended_message,
                    &t.suspended_hint,
                )
            }));
        for (key, message, hint) in texts {
            for (field, text) in [("suspended_message", message), ("suspended_hint", hint)] {
                if let Some(text) = text {
                    check_operator_text(text)
                        .map_err(|e| invalid(format!("{key}.{field}: {e}")))?;
                }
            }
        }
        for (key, row_limit, storage_limit, deny) in tier_keys.chain(tenant_keys) {
            if let Some(names) = deny {
                DenySet::parse(names).map_err(|e| invalid(format!("{key}.deny: {e}")))?;
            }
            if let (Some(limit @ 1..), None) = (storage_limit, &self.quota) {
                return Err(invalid(format!(
                    "{key}.storage_limit = {limit} bytes needs a [quota] table (the role pgtier measures \
                     databases as: user, password); add one, or set storage_limit = 0"
                )));
            }
            if let (Some(limit @ 1..), None) = (row_limit, &self.quota) {
                return Err(invalid(format!(
                    "{key}.row_limit = {limit} needs a [quota] table (the role pgtier counts rows as: \
                     user, password); add one, or set row_limit = 0"
                )));
            }
        }
        if self.fleet.store == FleetStore::Redis && self.fleet.url.is_none() {
            return Err(invalid(
                "fleet.store = \"redis\" needs fleet.url (e.g. \"redis://10.0.0.5:6379/\")"
                    .to_owned(),
            ));
        }
        if self.fleet.lease_ttl < Duration::from_secs(1) {
            return Err(invalid("fleet.lease_ttl must be at least 1s".to_owned()));
        }
        if self.auth.mode == AuthMode::Proxy && self.auth.user.is_none() {
            return Err(invalid(
                "auth.mode = \"proxy\" needs auth.user (the role auth_query runs as)".to_owned(),
            ));
        }
        if self.cluster.tls == ClusterTlsMode::VerifyFull && self.cluster.ca.is_none() {
            return Err(invalid(
                "cluster.tls = \"verify-full\" needs cluster.ca (the CA to verify the cluster against)"
                    .to_owned(),
            ));
        }
        if let Some(registry) = &self.registry {
            if registry.cache_ttl.is_zero() {
                return Err(invalid(
                    "registry.cache_ttl must be greater than zero".to_owned(),
                ));
            }
            if registry.channel.is_empty() || registry.channel.len() > 63 {
                return Err(invalid(
                    "registry.channel must be a name of 1 to 63 bytes".to_owned(),
                ));
            }
            if !registry.query.contains("$1") {
                return Err(invalid(
                    "registry.query must use $1 (the database name being looked up)".to_owned(),
                ));
            }
        }
        if let Some(quota) = &self.quota {
            if quota.interval.is_zero() {
                return Err(invalid(
                    "quota.interval must be greater than zero".to_owned(),
                ));
            }
        }
        Ok(self)
    }

    fn tier_names(&self) -> String {
        self.tiers.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// The effective limits of the tenant (database) `name`, from the
    /// file alone.
    pub fn limits_for(&self, name: &str) -> Limits {
        self.limits_with(name, None)
    }

    /// The effective limits of `name` with `row`'s keys (the registry's)
    /// over its `[tenants]` entry's.
    pub fn limits_with(&self, name: &str, row: Option<&TenantConfig>) -> Limits {
        let merged_entry;
        let tenant = match (row, self.tenants.get(name)) {
            (Some(row), Some(file)) => {
                merged_entry = row.over(file);
                Some(&merged_entry)
            }
            (Some(row), None) => Some(row),
            (None, file) => file,
        };
        let tier_name = tenant
            .and_then(|t| t.tier.as_deref())
            .unwrap_or(&self.default_tier);
        // Validation guarantees the tier exists; an empty tier is the safe
        // reading should it ever not.
        let tier = self.tiers.get(tier_name).cloned().unwrap_or_default();
        let merged = match tenant {
            Some(t) => t.as_tier().over(&tier),
            None => tier,
        };
        let idle_timeout = merged.idle_timeout.unwrap_or_default();
        Limits {
            tier: tier_name.to_owned(),
            max_connections: merged.max_connections.unwrap_or(0),
            idle_timeout,
            idle_in_transaction_timeout: merged.idle_in_transaction_timeout.unwrap_or(idle_timeout),
            statement_timeout: merged.statement_timeout.unwrap_or_default(),
            row_limit: merged.row_limit.unwrap_or(0),
            storage_limit: merged.storage_limit.unwrap_or_default().0,
            // Validation checked the names.
            deny: merged
                .deny
                .as_deref()
                .and_then(|names| DenySet::parse(names).ok())
                .unwrap_or_default(),
            suspended: merged.suspended.unwrap_or(false),
            suspended_message: merged.suspended_message,
            suspended_hint: merged.suspended_hint,
        }
    }

    /// Advice for the operator about a valid configuration.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut out = Vec::new();
        let unix_socket = self.cluster.host.starts_with('/');
        if unix_socket && self.cluster.tls != ClusterTlsMode::Disable {
            out.push(Warning(
                "cluster.host is a Unix socket directory: cluster.tls does not apply there and is ignored"
                    .to_owned(),
            ));
        }
        if self.cluster.tls != ClusterTlsMode::Disable
            && !unix_socket
            && self.auth.mode == AuthMode::Passthrough
        {
            out.push(Warning(format!(
                "cluster.tls = {:?}: with pass-through authentication, libpq clients using SCRAM over TLS \
                 fail with \"SCRAM channel binding negotiation error\" when the cluster link is TLS too \
                 (the cluster offers SCRAM-SHA-256-PLUS, the client signed that it saw no channel binding); \
                 use cluster.tls = \"disable\" on a private network, auth.mode = \"proxy\", or md5/trust auth on the cluster",
                match self.cluster.tls {
                    ClusterTlsMode::Prefer => "prefer",
                    ClusterTlsMode::VerifyFull => "verify-full",
                    _ => "require",
                }
            )));
        }
        if let Some(admin) = self.admin_listen {
            if !admin.ip().is_loopback() && self.admin_token.is_none() {
                out.push(Warning(format!(
                    "admin_listen = \"{admin}\" is reachable from other hosts and admin_token is not set: \
                     anyone who can reach it can disconnect tenants and reload the configuration"
                )));
            }
        }
        if self.tls.mode != ClientTlsMode::Require {
            out.push(Warning(format!(
                "tls.mode = {:?}: clients may log in without TLS, sending passwords in the clear",
                mode_name(self.tls.mode)
            )));
        }
        out
    }
}

fn mode_name(mode: ClientTlsMode) -> &'static str {
    match mode {
        ClientTlsMode::Require => "require",
        ClientTlsMode::Prefer => "prefer",
        ClientTlsMode::Disable => "disable",
    }
}

/// Sets `key` (`a__b__c`, lower-cased) in `table` to `value`, read as a TOML
/// value where it parses as one (numbers, booleans) and as a string otherwise.
fn apply_override(table: &mut toml::Table, key: &str, value: &str) {
    let path: Vec<String> = key.split("__").map(|p| p.to_ascii_lowercase()).collect();
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
    current.insert(last.clone(), parsed);
}

/// toml's errors span several lines (a source excerpt); keep them readable
/// in one log line while keeping the line/column and the offending line.
fn one_line(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let head = lines.next().unwrap_or_default().to_owned();
    let mut source = None;
    let mut message = Vec::new();
    for line in lines {
        if let Some((number, code)) = line.split_once(" | ") {
            if number.trim().chars().all(|c| c.is_ascii_digit()) {
                source = Some(code.trim().to_owned());
                continue;
            }
        }
        if !line.starts_with('|') {
            message.push(line);
        }
    }
    let mut out = head;
    if !message.is_empty() {
        out.push_str(": ");
        out.push_str(&message.join("; "));
    }
    if let Some(source) = source {
        out.push_str(&format!(" (in `{source}`)"));
    }
    out
}

/// The most an operator's message or hint may hold.
pub const MAX_OPERATOR_TEXT_BYTES: usize = 1024;

/// Checks an operator's message or hint: it is sent in a NUL-terminated
/// field of every refusal, so a NUL would cut it (or, unchecked, end the
/// field early and corrupt the message), and its size is bounded.
pub fn check_operator_text(text: &str) -> Result<(), String> {
    if text.contains('\0') {
        return Err("must not contain a NUL character".to_owned());
    }
    if text.len() > MAX_OPERATOR_TEXT_BYTES {
        return Err(format!(
            "at most {MAX_OPERATOR_TEXT_BYTES} bytes (this one has {})",
            text.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        listen = "127.0.0.1:6432"
        [tls]
        mode = "disable"
        [quota]
        user = "pgtier_quota"
    "#;

    #[test]
    fn tiers_and_overrides_combine() {
        let text = format!(
            "{BASE}\n[tenants.acme]\ntier = \"standard\"\n[tenants.hobby]\nmax_connections = 3\n"
        );
        let config = Config::from_toml_str(&text).unwrap();
        assert_eq!(config.limits_for("acme").max_connections, 0);
        assert_eq!(config.limits_for("hobby").max_connections, 3);
        assert_eq!(config.limits_for("hobby").tier, "free");
        let other = config.limits_for("someone");
        assert_eq!(other.max_connections, 2);
        assert_eq!(other.idle_timeout, Duration::from_secs(300));
        assert_eq!(other.idle_in_transaction_timeout, Duration::from_secs(300));
    }

    #[test]
    fn a_registry_row_overrides_the_files_entry_key_by_key() {
        let config = Config::from_toml_str(&format!(
            "{BASE}\n[tenants.hobby]\nmax_connections = 3\nidle_timeout = \"1m\"\n"
        ))
        .unwrap();
        let row = TenantConfig {
            tier: Some("standard".to_owned()),
            idle_timeout: Some(Duration::from_secs(7)),
            ..TenantConfig::default()
        };
        let limits = config.limits_with("hobby", Some(&row));
        assert_eq!(limits.tier, "standard");
        assert_eq!(limits.max_connections, 3, "the file's key, the row's NULL");
        assert_eq!(limits.idle_timeout, Duration::from_secs(7));
        let other = config.limits_with("other", Some(&row));
        assert_eq!(
            (other.tier.as_str(), other.max_connections),
            ("standard", 0)
        );
        assert_eq!(
            config.limits_with("hobby", None),
            config.limits_for("hobby")
        );
        let bad = TenantConfig {
            tier: Some("gold".to_owned()),
            ..TenantConfig::default()
        };
        assert_eq!(bad.check(&config).unwrap_err().0, "tier");
    }

    #[test]
    fn errors_name_line_and_key() {
        let err = Config::from_toml_str("listen = \"127.0.0.1:6432\"\nlogin_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("login_timeout"), "{err}");
        assert!(!err.contains('\n'), "{err}");

        let err = Config::from_toml_str("[tiers.free]\nmax_conections = 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_conections"), "{err}");

        let err = Config::from_toml_str(&format!("{BASE}\n[tenants.x]\ntier = \"gold\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tenants.x.tier"), "{err}");

        let long = "d".repeat(64);
        let err = Config::from_toml_str(&format!("{BASE}\n[tenants.{long}]\ntier = \"free\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 63 bytes"), "{err}");
        let exact = "d".repeat(63);
        Config::from_toml_str(&format!("{BASE}\n[tenants.{exact}]\ntier = \"free\"\n")).unwrap();
    }

    #[test]
    fn statement_timeout_is_a_tier_key_with_a_free_default() {
        let config = Config::from_toml_str(&format!(
            "{BASE}\n[tiers.free]\nmax_connections = 3\n[tenants.quick]\nstatement_timeout = \"1500ms\"\n\
             [tenants.paid]\ntier = \"standard\"\n[tenants.off]\nstatement_timeout = \"0s\"\n"
        ))
        .unwrap();
        assert_eq!(
            config.limits_for("someone").statement_timeout,
            Duration::from_secs(30),
            "the built-in free tier's, kept under a [tiers.free] table"
        );
        assert_eq!(
            config.limits_for("quick").statement_timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(config.limits_for("paid").statement_timeout, Duration::ZERO);
        assert_eq!(config.limits_for("off").statement_timeout, Duration::ZERO);
        let err = Config::from_toml_str(&format!(
            "{BASE}\n[tiers.free]\nstatement_timeout = \"soon\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("statement_timeout"), "{err}");
    }

    #[test]
    fn the_free_tier_limits_rows_and_denies_four_kinds_by_default() {
        let config = Config::from_toml_str(&format!(
            "{BASE}\n[tiers.free]\nmax_connections = 3\n[tenants.big]\nrow_limit = 50000\ndeny = [\"role\"]\n"
        ))
        .unwrap();
        let free = config.limits_for("someone");
        assert_eq!(free.max_connections, 3, "the file's key");
        assert_eq!(free.row_limit, 10_000, "the built-in's key, kept");
        assert_eq!(free.idle_timeout, Duration::from_secs(300));
        assert_eq!(free.deny.kinds().count(), 4);
        let big = config.limits_for("big");
        assert_eq!(big.row_limit, 50_000);
        assert_eq!(big.deny.kinds().collect::<Vec<_>>(), vec![DenyKind::Role]);
        let standard = config.limits_for("x");
        assert_eq!(standard.tier, "free");
        let mut with_standard = config.clone();
        with_standard.default_tier = "standard".to_owned();
        let standard = with_standard.limits_for("x");
        assert_eq!((standard.row_limit, standard.deny.is_empty()), (0, true));
    }

    #[test]
    fn storage_limit_is_a_tier_key_in_bytes_with_a_free_default() {
        let config = Config::from_toml_str(&format!(
            "{BASE}\n[tenants.big]\nstorage_limit = \"1GB\"\n[tenants.raw]\nstorage_limit = 1048576\n\
             [tenants.paid]\ntier = \"standard\"\n[tenants.off]\nstorage_limit = \"0\"\n"
        ))
        .unwrap();
        assert_eq!(config.limits_for("someone").storage_limit, 256 << 20);
        assert_eq!(config.limits_for("big").storage_limit, 1 << 30);
        assert_eq!(config.limits_for("raw").storage_limit, 1 << 20);
        assert_eq!(config.limits_for("paid").storage_limit, 0);
        assert_eq!(config.limits_for("off").storage_limit, 0);
        let err =
            Config::from_toml_str(&format!("{BASE}\n[tiers.free]\nstorage_limit = \"lots\"\n"))
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("storage_limit") || err.contains("size"),
            "{err}"
        );
        // Without [quota], the built-in default is off; one written is an error.
        let no_quota = "[tls]\nmode = \"disable\"\n[tiers.free]\nrow_limit = 0\n";
        let config = Config::from_toml_str(no_quota).unwrap();
        assert_eq!(config.limits_for("someone").storage_limit, 0);
        let err = Config::from_toml_str(&format!("{no_quota}storage_limit = \"1GB\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tiers.free.storage_limit"), "{err}");
    }

    #[test]
    fn a_row_limit_without_quota_and_unknown_deny_kinds_are_errors() {
        let no_quota = "[tls]\nmode = \"disable\"\n";
        let err = Config::from_toml_str(no_quota).unwrap_err().to_string();
        assert!(
            err.contains("tiers.free.row_limit = 10000 needs a [quota] table"),
            "{err}"
        );
        let fixed = format!("{no_quota}[tiers.free]\nrow_limit = 0\n");
        assert!(Config::from_toml_str(&fixed).is_ok());
        let err =
            Config::from_toml_str(&format!("{BASE}\n[tiers.free]\ndeny = [\"extensions\"]\n"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("tiers.free.deny"), "{err}");
        assert!(
            err.contains("\"extensions\" is not a statement kind"),
            "{err}"
        );
    }

    #[test]
    fn tls_needs_cert_and_key_unless_disabled() {
        let err = Config::from_toml_str("[tls]\nmode = \"require\"\n").unwrap_err();
        assert!(err.to_string().contains("tls.cert"));
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let env = vec![
            ("PGTIER_CLUSTER__PORT".to_owned(), "5433".to_owned()),
            (
                "PGTIER_TIERS__FREE__MAX_CONNECTIONS".to_owned(),
                "7".to_owned(),
            ),
            ("PGTIER_DEFAULT_TIER".to_owned(), "standard".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ];
        let config = Config::from_toml_with_env(BASE, "t", env).unwrap();
        assert_eq!(config.cluster.port, 5433);
        assert_eq!(config.tiers["free"].max_connections, Some(7));
        assert_eq!(config.default_tier, "standard");

        let bad = vec![("PGTIER_CLUSTER__PORT".to_owned(), "many".to_owned())];
        let err = Config::from_toml_with_env(BASE, "t", bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("PGTIER_CLUSTER__PORT"), "{err}");
    }

    #[test]
    fn an_open_admin_api_without_a_token_is_warned_about() {
        let open =
            Config::from_toml_str(&format!("admin_listen = \"0.0.0.0:9930\"\n{BASE}")).unwrap();
        assert!(open.warnings().iter().any(|w| w.0.contains("admin_token")));
        let local =
            Config::from_toml_str(&format!("admin_listen = \"127.0.0.1:9930\"\n{BASE}")).unwrap();
        assert!(!local.warnings().iter().any(|w| w.0.contains("admin_token")));
    }

    #[test]
    fn cluster_tls_warns_about_scram() {
        let config =
            Config::from_toml_str(&format!("{BASE}\n[cluster]\ntls = \"require\"\n")).unwrap();
        assert!(config
            .warnings()
            .iter()
            .any(|w| w.0.contains("channel binding")));
    }
}
