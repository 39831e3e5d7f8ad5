//! `[quota]`: the role the proxy measures tenants' rows and database sizes
//! as. Its default database is also the one the other roles the proxy logs
//! in as (`[auth]`, `[registry]`) start from.

use std::time::Duration;

use serde::Deserialize;

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
    #[serde(default = "default_control_database")]
    pub database: String,
    /// How often a tenant that writes is measured again.
    #[serde(default = "default_quota_interval", with = "humantime_serde")]
    pub interval: Duration,
}

/// The database the proxy's own control connections log into when a
/// section names none: `[quota]`'s auditor, `[auth]`'s auth_query and
/// `[registry]`'s query alike.
pub(super) fn default_control_database() -> String {
    "postgres".to_owned()
}
fn default_quota_interval() -> Duration {
    Duration::from_secs(30)
}
