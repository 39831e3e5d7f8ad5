//! `[tls]`, `[cluster]` and `[auth]`: the two links a session rides
//! (client to proxy, proxy to cluster) and who checks the password on
//! them. They share a file because their choices constrain each other:
//! pass-through SCRAM needs a plaintext link to the cluster, proxy-side
//! authentication does not (`check` warns about the combinations).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::quota::default_control_database;

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
    #[serde(default = "default_control_database")]
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

fn default_cluster_host() -> String {
    "127.0.0.1".to_owned()
}
fn default_cluster_port() -> u16 {
    5432
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
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
