//! The proxy's own connections to the cluster, for its control work (the
//! quota auditor's counts, auth_query's verifier lookups): a real client
//! library (tokio-postgres), TLS when `cluster.tls` says so, never the
//! framing client traffic goes through.

use std::sync::Arc;

use crate::config::{ClusterConfig, ClusterTlsMode};

/// Who logs in, where.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub database: &'a str,
    /// Shown in `pg_stat_activity`, so an operator can tell the proxy's own
    /// connections from tenants'.
    pub application_name: &'a str,
}

/// Logs in to the cluster as `login` says; the connection's I/O runs on its
/// own task until the returned client is dropped.
pub async fn connect(
    cluster: &ClusterConfig,
    login: &Login<'_>,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut pg = tokio_postgres::Config::new();
    pg.user(login.user)
        .dbname(login.database)
        .application_name(login.application_name)
        .connect_timeout(cluster.connect_timeout)
        .port(cluster.port);
    let unix = cluster.host.starts_with('/');
    if unix {
        pg.host_path(&cluster.host);
    } else {
        pg.host(&cluster.host);
    }
    if let Some(password) = login.password {
        pg.password(password);
    }
    let client = if cluster.tls == ClusterTlsMode::Disable || unix {
        let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    } else {
        pg.ssl_mode(match cluster.tls {
            ClusterTlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let connector = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
        let (client, connection) = pg.connect(connector).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    };
    Ok(client)
}
