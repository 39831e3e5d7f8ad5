//! `[registry]`: tenants read from a control-plane table, whose rows lie
//! over the file's `[tenants]`; the runtime side is
//! `crate::limits::registry`.

use std::time::Duration;

use serde::Deserialize;

use super::quota::default_control_database;

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
    #[serde(default = "default_control_database")]
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
