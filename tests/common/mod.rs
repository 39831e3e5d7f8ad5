//! Shared harness of the integration tests: one throwaway cluster and one
//! set of certificates per test binary, unique tenant names per test, the
//! proxy started in-process, and real clients (tokio-postgres with rustls,
//! the psql binary).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgtier::sandbox::{Certs, Cluster, ClusterOptions};
use pgtier::server::{Proxy, ProxyHandle};
use tokio::task::JoinHandle;

/// The cluster of this test binary, started on first use. Roles in
/// `trust_users` log in without a password, those in `md5_users` with md5.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::start(ClusterOptions {
            max_connections: 400,
            ssl: false,
            extra_hba: vec![
                "host all +trust_users 127.0.0.1/32 trust".to_owned(),
                "host all +md5_users 127.0.0.1/32 md5".to_owned(),
            ],
        })
        .expect("start a throwaway PostgreSQL cluster");
        cluster
            .psql("postgres", "CREATE ROLE trust_users NOLOGIN")
            .expect("create trust_users");
        cluster
            .psql("postgres", "CREATE ROLE md5_users NOLOGIN")
            .expect("create md5_users");
        cluster
    })
}

/// A CA and a server certificate for localhost, for this test binary.
pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<(tempfile::TempDir, Certs)> = OnceLock::new();
    &CERTS
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir for certificates");
            let certs = Certs::generate(dir.path()).expect("generate certificates");
            (dir, certs)
        })
        .1
}

/// A lower-case identifier unique to this process and call.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A proxy running in this test's runtime; shut down when dropped.
pub struct TestProxy {
    pub handle: ProxyHandle,
    pub addr: SocketAddr,
    pub task: JoinHandle<Result<(), pgtier::server::ProxyError>>,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.handle.close_now();
    }
}

/// The configuration every test proxy starts from: TLS required, the
/// test cluster, free (2) and standard (unlimited) tiers. `top_level` keys
/// go first (TOML needs them before any table), `tables` last.
pub fn config_text(top_level: &str, tls_mode: &str, tables: &str) -> String {
    let c = cluster();
    let certs = certs();
    format!(
        r#"listen = "127.0.0.1:0"
{top_level}
[tls]
cert = "{cert}"
key = "{key}"
mode = "{tls_mode}"
[cluster]
host = "127.0.0.1"
port = {port}
tls = "disable"
[tiers.free]
max_connections = 2
idle_timeout = "5m"
[tiers.standard]
max_connections = 0
{tables}
"#,
        cert = certs.cert_path.display(),
        key = certs.key_path.display(),
        port = c.port(),
    )
}

/// Starts a proxy from [`config_text`].
pub async fn start_proxy_from(text: &str) -> TestProxy {
    let config = pgtier::config::Config::from_toml_str(text).expect("valid test config");
    let proxy = Proxy::bind(config).await.expect("bind test proxy");
    let handle = proxy.handle();
    let addr = handle.local_addr();
    let task = tokio::spawn(proxy.run());
    TestProxy { handle, addr, task }
}

/// A TLS-requiring proxy; `tables` are appended (e.g. `[tenants.x]`).
pub async fn start_proxy(tables: &str) -> TestProxy {
    start_proxy_from(&config_text("", "require", tables)).await
}

/// A proxy that also accepts plaintext (`tls.mode = "prefer"`), with extra
/// top-level keys.
pub async fn start_proxy_with(top_level: &str, tables: &str) -> TestProxy {
    start_proxy_from(&config_text(top_level, "prefer", tables)).await
}

/// rustls client config trusting the test CA, for tokio-postgres.
pub fn tls_connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(certs().ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(pgtier::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

fn pg_config(addr: SocketAddr, db: &str, user: &str, password: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("localhost")
        .hostaddr(addr.ip())
        .port(addr.port())
        .dbname(db)
        .user(user)
        .password(password)
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(Duration::from_secs(10));
    config
}

/// Connects through the proxy over TLS (chain and host name verified).
pub async fn connect(
    addr: SocketAddr,
    db: &str,
    user: &str,
    password: &str,
) -> Result<
    (
        tokio_postgres::Client,
        JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    tokio_postgres::Error,
> {
    let (client, connection) = pg_config(addr, db, user, password)
        .connect(tls_connector())
        .await?;
    Ok((client, tokio::spawn(connection)))
}

/// Like [`connect`], also returning the stream of NOTIFY messages.
pub async fn connect_with_notifications(
    addr: SocketAddr,
    db: &str,
    user: &str,
    password: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    ),
    tokio_postgres::Error,
> {
    let (client, mut connection) = pg_config(addr, db, user, password)
        .connect(tls_connector())
        .await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                if tx.send(n).is_err() {
                    break;
                }
            }
        }
    });
    Ok((client, rx))
}

/// A libpq URL for psql.
pub fn psql_url(addr: SocketAddr, db: &str, user: &str, password: &str, sslmode: &str) -> String {
    format!(
        "postgresql://{user}:{password}@localhost:{}/{db}?sslmode={sslmode}&sslrootcert={}&connect_timeout=10",
        addr.port(),
        certs().ca_path.display()
    )
}

/// Runs `sql` with the psql binary against `url`. Async, because the proxy
/// under test runs on the same (single-threaded) test runtime.
pub async fn run_psql(url: &str, sql: &str) -> std::process::Output {
    tokio::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run psql")
}

/// The server's message of a tokio-postgres error (its Display says only
/// "db error").
pub fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// Polls `f` until it holds; fails the test naming `what` at the deadline.
pub async fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
