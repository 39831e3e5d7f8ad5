//! The proxy's own connections to the cluster, for its control work (the
//! quota auditor's counts, auth_query's verifier lookups): a real client
//! library (tokio-postgres), TLS when `cluster.tls` says so, never the
//! framing client traffic goes through.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

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
    open(cluster, login, tls, None).await
}

/// How many NOTIFY payloads wait to be read at most; past it they are
/// dropped and [`Notifications::overflowed`] says so (the reader then
/// treats it as "everything changed"), so a storm cannot grow memory.
pub const NOTIFICATIONS_QUEUED: usize = 65_536;

/// The NOTIFY payloads a connection receives (on the channels it LISTENs
/// to), in order; the receiver ends when the connection does.
#[derive(Debug)]
pub struct Notifications {
    pub payloads: mpsc::Receiver<String>,
    /// Set when payloads were dropped because the queue was full.
    pub overflowed: Arc<AtomicBool>,
}

/// Like [`connect`], keeping the NOTIFY payloads the connection receives.
pub async fn connect_listening(
    cluster: &ClusterConfig,
    login: &Login<'_>,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(tokio_postgres::Client, Notifications), tokio_postgres::Error> {
    let (tx, payloads) = mpsc::channel(NOTIFICATIONS_QUEUED);
    let overflowed = Arc::new(AtomicBool::new(false));
    let client = open(cluster, login, tls, Some((tx, Arc::clone(&overflowed)))).await?;
    Ok((
        client,
        Notifications {
            payloads,
            overflowed,
        },
    ))
}

type Forward = (mpsc::Sender<String>, Arc<AtomicBool>);

async fn open(
    cluster: &ClusterConfig,
    login: &Login<'_>,
    tls: &Arc<rustls::ClientConfig>,
    forward: Option<Forward>,
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
        tokio::spawn(drive(connection, forward));
        client
    } else {
        pg.ssl_mode(match cluster.tls {
            ClusterTlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let connector = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
        let (client, connection) = pg.connect(connector).await?;
        tokio::spawn(drive(connection, forward));
        client
    };
    Ok(client)
}

/// Runs a connection's I/O to its end, handing NOTIFY payloads to
/// `forward` when given (and dropping them otherwise).
async fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>, forward: Option<Forward>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some((tx, overflowed)) = forward else {
        let _ = connection.await;
        return;
    };
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                match tx.try_send(n.payload().to_owned()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        overflowed.store(true, Ordering::Release);
                    }
                    // Nobody reads any more: the connection is not wanted.
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}
