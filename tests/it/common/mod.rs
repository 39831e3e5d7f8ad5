//! Shared harness of the integration tests: one throwaway PostgreSQL
//! cluster and one set of certificates per test binary, unique tenant names
//! per test, the proxy started in-process, and real clients (tokio-postgres
//! over rustls, the `psql` binary).
//!
//! The cluster lives in a `static` and is never dropped; the sandbox's
//! watchdog stops it and removes its directory (certificates included) when
//! the test process exits. This relies on all tests of a binary sharing one
//! process: plain `cargo test`, not nextest's process per test.
//!
//! `TEST_AUTH_MODE=proxy` ([`auth_mode`]) runs every test proxy with
//! proxy-side authentication; tests that speak raw frames log in with
//! [`raw_login`], which answers whatever the mode asks.
#![allow(dead_code)] // each test binary uses its own subset

pub mod http;
pub use pgtier_testkit::wire::frames;
pub use pgtier_testkit::wire::{
    cancel_request, read_message, startup_packet, startup_packet_of, Message, PROTOCOL_3_0,
};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgtier::login::scram;
use pgtier::runtime::server::{Proxy, ProxyHandle};
use pgtier_testkit::sandbox::{Certs, Cluster, ClusterOptions, Installation, PasswordEncryption};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Roles granted this group log in over TCP without a password.
pub const TRUST_GROUP: &str = "trust_users";
/// Roles granted this group log in with md5 (their password must be stored
/// as md5, see [`md5_tenant`], or the server upgrades the exchange to SCRAM).
pub const MD5_GROUP: &str = "md5_users";

/// Names the major version of the cluster under test (`15`, `17`, `18`);
/// `scripts/test.sh` runs the integration tests once per version with it.
/// Not `PGTIER_…`: that prefix is the proxy's configuration namespace,
/// and `pgtier check`/`run` refuse unknown `PGTIER_` keys, which
/// tests/it/cli.rs would inherit.
pub const PG_MAJOR_ENV: &str = "TEST_PG_MAJOR";
/// The version tested when [`PG_MAJOR_ENV`] is unset: Debian 12's.
pub const DEFAULT_PG_MAJOR: u32 = 15;

/// The major version this run tests ([`PG_MAJOR_ENV`], default
/// [`DEFAULT_PG_MAJOR`]).
pub fn pg_major() -> u32 {
    match std::env::var(PG_MAJOR_ENV) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{PG_MAJOR_ENV}={text:?} is not a major version")),
        _ => DEFAULT_PG_MAJOR,
    }
}

/// The installation of [`pg_major`], for tests that start clusters of
/// their own: never a silent fallback to another version.
pub fn installation() -> Installation {
    Installation::Major(pg_major())
}

/// The cluster of this test binary, started on first use, of the version
/// [`pg_major`] names. Roles in
/// `trust_users` log in without a password, those in `md5_users` with md5,
/// every other role with SCRAM-SHA-256.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::start(ClusterOptions {
            // Tests open hundreds of sessions, some of them still closing
            // while the next test starts.
            // tests/it/idle.rs holds 1,000 idle sessions at once.
            max_connections: 1100,
            ssl: false,
            extra_hba: vec![
                format!("host all +{TRUST_GROUP} 127.0.0.1/32 trust"),
                format!("host all +{MD5_GROUP} 127.0.0.1/32 md5"),
            ],
            installation: installation(),
        })
        .unwrap_or_else(|e| panic!("starting the test cluster: {e}"));
        assert_eq!(cluster.major_version(), pg_major(), "{PG_MAJOR_ENV}");
        eprintln!(
            "test cluster: PostgreSQL {} from {}",
            cluster.major_version(),
            cluster.bin_dir().display()
        );
        for group in [TRUST_GROUP, MD5_GROUP] {
            cluster
                .create_group(group)
                .unwrap_or_else(|e| panic!("creating group {group}: {e}"));
        }
        cluster
    })
}

/// A CA and a server certificate for localhost, generated once per test
/// binary into the cluster's directory (so they vanish with it).
pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        Certs::generate(&cluster().dir().join("proxy-certs"))
            .unwrap_or_else(|e| panic!("generating test certificates: {e}"))
    })
}

/// A lower-case identifier unique to this process and call: `prefix`, the
/// PID and a counter (PostgreSQL folds unquoted names to lower case).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}_{}_{}",
        prefix.to_lowercase(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A tenant database on the test cluster with its owner's credentials.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub db: String,
    pub user: String,
    /// Empty for trust roles in passthrough mode (see [`trust_tenant`]).
    pub password: String,
}

fn new_tenant(prefix: &str, with_password: bool) -> Tenant {
    let db = unique(prefix);
    Tenant {
        user: format!("{db}_owner"),
        password: if with_password {
            format!("pw-{db}")
        } else {
            String::new()
        },
        db,
    }
}

/// A new database owned by a new role that logs in with SCRAM.
pub fn scram_tenant(prefix: &str) -> Tenant {
    let t = new_tenant(prefix, true);
    cluster()
        .create_tenant(&t.db, &t.user, &t.password)
        .unwrap_or_else(|e| panic!("creating tenant {}: {e}", t.db));
    t
}

/// A new database owned by a new role that logs in with md5.
pub fn md5_tenant(prefix: &str) -> Tenant {
    let t = new_tenant(prefix, true);
    let c = cluster();
    c.create_role(&t.user, Some(&t.password), PasswordEncryption::Md5)
        .and_then(|()| c.psql("postgres", &format!("GRANT {MD5_GROUP} TO {}", t.user)))
        .and_then(|_| c.create_database(&t.db, &t.user))
        .unwrap_or_else(|e| panic!("creating md5 tenant {}: {e}", t.db));
    t
}

/// A new database owned by a new role that the cluster lets in without a
/// password (a member of [`TRUST_GROUP`]).
///
/// In proxy mode ([`auth_mode`]) the role also gets a SCRAM-SHA-256
/// password, returned in `password`: pgtier then checks that password
/// itself (it never lets a client in without one) and logs into the
/// cluster, which trusts the role. Callers pass `password` on and need not
/// care which mode runs; in passthrough mode it is empty, as before.
pub fn trust_tenant(prefix: &str) -> Tenant {
    let t = new_tenant(prefix, proxy_auth());
    let c = cluster();
    let password = (!t.password.is_empty()).then_some(t.password.as_str());
    c.create_role(&t.user, password, PasswordEncryption::Scram)
        .and_then(|()| c.psql("postgres", &format!("GRANT {TRUST_GROUP} TO {}", t.user)))
        .and_then(|_| c.create_database(&t.db, &t.user))
        .unwrap_or_else(|e| panic!("creating trust tenant {}: {e}", t.db));
    t
}

/// A proxy running in this test's runtime; its sessions are closed when it
/// is dropped, so that they do not linger on the shared cluster.
pub struct TestProxy {
    pub handle: ProxyHandle,
    pub addr: SocketAddr,
    pub task: JoinHandle<Result<(), pgtier::runtime::server::ProxyError>>,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.handle.close_now();
    }
}

/// The configuration every test proxy starts from: client TLS `tls_mode`
/// with [`certs`], the test [`cluster`] behind it over plaintext, free (2
/// connections, the built-in statement policy, no row or storage limit:
/// tests that need one set it per tenant with a `[quota]`, see
/// [`quota_table`]) and
/// standard (unlimited) tiers. `top_level` keys go first (TOML needs
/// them before any table), `tables` last (e.g. `[tenants.x]`).
pub fn config_text(top_level: &str, tls_mode: &str, tables: &str) -> String {
    let c = cluster();
    let certs = certs();
    // TEST_AUTH_MODE=proxy runs the suite with proxy-side authentication
    // (scripts/test.sh does, against one cluster version).
    let auth = if auth_mode() == "proxy" && !tables.contains("[auth]") {
        auth_table("30s")
    } else {
        String::new()
    };
    let tables = format!("{tables}{auth}");
    format!(
        r#"listen = "127.0.0.1:0"
{top_level}
[tls]
cert = {cert:?}
key = {key:?}
mode = "{tls_mode}"
[cluster]
host = "{host}"
port = {port}
tls = "disable"
[tiers.free]
max_connections = 2
idle_timeout = "5m"
row_limit = 0
storage_limit = 0
[tiers.standard]
max_connections = 0
{tables}
"#,
        cert = certs.cert_path.display().to_string(),
        key = certs.key_path.display().to_string(),
        host = c.host(),
        port = c.port(),
    )
}

/// Starts a proxy from a complete configuration text (see [`config_text`]).
pub async fn start_proxy_from(text: &str) -> TestProxy {
    let config = pgtier::config::Config::from_toml_str(text)
        .unwrap_or_else(|e| panic!("test proxy config: {e}\n{text}"));
    let proxy = Proxy::bind(config)
        .await
        .unwrap_or_else(|e| panic!("binding the test proxy: {e}"));
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

/// A rustls client configuration (ring) trusting only the test CA.
pub fn client_tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(certs().ca_pem.as_bytes()) {
        let cert = cert.unwrap_or_else(|e| panic!("parsing the test CA: {e}"));
        roots
            .add(cert)
            .unwrap_or_else(|e| panic!("adding the test CA: {e}"));
    }
    rustls::ClientConfig::builder_with_provider(pgtier::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("rustls protocol versions: {e}"))
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A tokio-postgres TLS connector that verifies the proxy against the test
/// CA (chain and host name).
pub fn tls_connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    tokio_postgres_rustls::MakeRustlsConnect::new(client_tls_config())
}

fn pg_config(addr: SocketAddr, db: &str, user: &str, password: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("localhost")
        .hostaddr(addr.ip())
        .port(addr.port())
        .dbname(db)
        .user(user)
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(Duration::from_secs(10));
    if !password.is_empty() {
        config.password(password);
    }
    config
}

/// Connects through the proxy over TLS (`sslmode=require`; rustls verifies
/// the chain and the name `localhost` regardless) and drives the
/// connection on a task.
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

/// Like [`connect`]; the connection's task keeps the notices the server
/// sent on it (a WARNING outside any query, such as a cluster's goodbye)
/// and returns them with how the connection ended.
pub async fn connect_keeping_notices(
    addr: SocketAddr,
    db: &str,
    user: &str,
    password: &str,
) -> Result<
    (
        tokio_postgres::Client,
        JoinHandle<(
            Vec<tokio_postgres::error::DbError>,
            Result<(), tokio_postgres::Error>,
        )>,
    ),
    tokio_postgres::Error,
> {
    let (client, mut connection) = pg_config(addr, db, user, password)
        .connect(tls_connector())
        .await?;
    let task = tokio::spawn(async move {
        let mut notices = Vec::new();
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notice(notice))) => notices.push(notice),
                Some(Ok(_)) => {}
                Some(Err(e)) => return (notices, Err(e)),
                None => return (notices, Ok(())),
            }
        }
    });
    Ok((client, task))
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
        use futures_util::StreamExt;
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
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

/// A libpq URL for `psql` through the proxy at `addr`, trusting the test CA
/// (so `verify-full` works; the certificate names `localhost`).
pub fn psql_url(addr: SocketAddr, db: &str, user: &str, password: &str, sslmode: &str) -> String {
    let auth = if password.is_empty() {
        encode(user)
    } else {
        format!("{}:{}", encode(user), encode(password))
    };
    format!(
        "postgresql://{auth}@localhost:{}/{}?hostaddr={}&sslmode={sslmode}&sslrootcert={}&connect_timeout=10",
        addr.port(),
        encode(db),
        addr.ip(),
        encode(&certs().ca_path.display().to_string()),
    )
}

/// Runs `sql` with the `psql` binary against `url` (unaligned, tuples only,
/// stop on error).
///
/// Async because the proxy runs in the test's own runtime: a blocking wait
/// on `psql` in a `#[tokio::test]` (one thread) would starve the proxy and
/// deadlock.
pub async fn run_psql(url: &str, sql: &str) -> Output {
    psql_command(url)
        .arg("-c")
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("running psql: {e}"))
}

/// The `psql` command [`run_psql`] uses, for tests that need more control
/// (stdin, `-f`, a child they can kill). `kill_on_drop` is set, so a test
/// that panics leaves no psql behind.
pub fn psql_command(url: &str) -> tokio::process::Command {
    psql_command_of(&psql_binary(), url)
}

/// [`psql_command`] with a given `psql` binary (e.g. [`newest_psql`]).
pub fn psql_command_of(psql: &std::path::Path, url: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(psql);
    command
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url])
        .env("PGSSLROOTCERT", &certs().ca_path);
    for var in [
        "PGPASSWORD",
        "PGSERVICE",
        "PGOPTIONS",
        "PGSSLMODE",
        "PGCHANNELBINDING",
    ] {
        command.env_remove(var);
    }
    command.kill_on_drop(true);
    command
}

/// `psql` of the cluster's installation (so libpq matches the server).
pub fn psql_binary() -> PathBuf {
    cluster().program("psql")
}

/// The newest `psql` on the machine and its major version (18 once
/// `scripts/ensure-deps.sh --pg 18` ran): libpq's newest client features,
/// whatever version the cluster under test runs.
pub fn newest_psql() -> (u32, PathBuf) {
    pgtier_testkit::sandbox::newest_program("psql")
        .unwrap_or_else(|| panic!("no psql found in any PostgreSQL installation"))
}

/// `psql` of major version `major` (its own libpq, through the binary's
/// run path), panicking with the install command when it is missing.
pub fn psql_of(major: u32) -> PathBuf {
    let dir = Installation::Major(major)
        .bin_dir()
        .unwrap_or_else(|e| panic!("{e}"));
    let psql = dir.join("psql");
    assert!(psql.is_file(), "{} has no psql", dir.display());
    psql
}

/// The server's message of a tokio-postgres error (its Display says only
/// "db error").
pub fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// Polls `f` every 10 ms until it holds; panics naming `what` after
/// `deadline`. For conditions that settle asynchronously (a slot given back
/// after a client vanished), instead of sleeping and hoping.
pub async fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// SQL counting the queries that start with `prefix` (case as sent) and
/// are running now in database `db`, per the cluster's pg_stat_activity.
pub fn running_sql(db: &str, prefix: &str) -> String {
    format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' \
         AND query LIKE '{prefix}%' AND state = 'active'"
    )
}

/// Waits until one query starting with `prefix` runs in `db`: what a
/// cancel test waits for first, since PostgreSQL ignores a cancel that
/// arrives before the query runs.
pub async fn wait_until_running(db: &str, prefix: &str, what: &str) {
    wait_for_cluster(&running_sql(db, prefix), "1", what).await;
}

/// Polls `sql` (run as superuser in `postgres`) until it prints `expected`;
/// fails the test naming `what` after 15 s. psql runs on a blocking thread so
/// the proxy under test keeps running meanwhile.
pub async fn wait_for_cluster(sql: &str, expected: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let query = sql.to_owned();
        let out = tokio::task::spawn_blocking(move || cluster().psql("postgres", &query))
            .await
            .expect("psql task")
            .expect("psql");
        if out.trim() == expected {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what} (last answer {out:?})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The role the row quota counts as, created once per test binary:
/// `(user, password)`. It reads every table (`pg_read_all_data`) and
/// bypasses row-level security (`BYPASSRLS`), as the README's recipe says.
pub fn quota_role() -> &'static (String, String) {
    static ROLE: OnceLock<(String, String)> = OnceLock::new();
    ROLE.get_or_init(|| {
        let user = unique("pgtier_quota");
        let password = format!("pw-{user}");
        let c = cluster();
        c.create_role(&user, Some(&password), PasswordEncryption::Scram)
            .and_then(|()| {
                c.psql(
                    "postgres",
                    &format!("GRANT pg_read_all_data TO {user}; ALTER ROLE {user} BYPASSRLS"),
                )
            })
            .unwrap_or_else(|e| panic!("creating the quota role: {e}"));
        (user, password)
    })
}

/// A `[quota]` table for [`config_text`]'s `tables`, measuring every
/// `interval` (e.g. `"1s"`).
pub fn quota_table(interval: &str) -> String {
    let (user, password) = quota_role();
    format!("[quota]\nuser = \"{user}\"\npassword = \"{password}\"\ninterval = \"{interval}\"\n")
}

/// Slots tenant `name` holds now, failing the test if the proxy has no
/// such tenant (a 0 for a tenant it never registered would let "holds no
/// slot" pass whatever the proxy does). List the tenant in the config
/// (`[tenants.x]`) or log it in first.
pub fn slots(handle: &ProxyHandle, name: &str) -> u32 {
    handle
        .shared()
        .tenants
        .get(name)
        .unwrap_or_else(|| panic!("the proxy has no tenant {name:?}"))
        .connections()
}

/// Connects straight to the test cluster as its superuser (TCP, no TLS),
/// for what the tests do behind the proxy's back (hold a lock, terminate a
/// backend).
pub async fn superuser_client() -> tokio_postgres::Client {
    let c = cluster();
    let (client, connection) = tokio_postgres::Config::new()
        .host(c.host())
        .port(c.port())
        .user(c.superuser())
        .password(c.superuser_password())
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(10))
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("superuser connection to the test cluster: {e}"));
    tokio::spawn(connection);
    client
}

/// The cluster's server log from byte `from` on (see [`cluster_log_len`]).
pub fn cluster_log_since(from: u64) -> String {
    let bytes = std::fs::read(cluster().log_path())
        .unwrap_or_else(|e| panic!("reading {}: {e}", cluster().log_path().display()));
    String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default()).into_owned()
}

/// The length of the cluster's server log now: where a test's part starts.
pub fn cluster_log_len() -> u64 {
    std::fs::metadata(cluster().log_path())
        .map(|m| m.len())
        .unwrap_or(0)
}

/// The lines of `log` that a backend with PID `pid` wrote on losing its
/// client without a Terminate inside a transaction. PostgreSQL logs that
/// case ("unexpected EOF on client connection with an open transaction",
/// after "could not receive data from client" on a reset) and logs nothing
/// when the client said Terminate, so an empty answer for a backend killed
/// mid-transaction proves the proxy sent Terminate. The default
/// `log_line_prefix` ('%m [%p] ') names the PID.
pub fn unclean_disconnects(log: &str, pid: i32) -> Vec<String> {
    let tag = format!("[{pid}] ");
    log.lines()
        .filter(|l| l.contains(&tag))
        .filter(|l| {
            l.contains("unexpected EOF on client connection")
                || l.contains("could not receive data from client")
        })
        .map(str::to_owned)
        .collect()
}

/// A raw TLS connection to the proxy as libpq opens one: TCP, SSLRequest,
/// `S`, then a TLS handshake trusting the test CA (name `localhost`).
pub async fn ssl_request_tls(addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    tcp.write_all(&pgtier_testkit::wire::SSL_REQUEST)
        .await
        .expect("SSLRequest sent");
    assert_eq!(tcp.read_u8().await.expect("an answer to SSLRequest"), b'S');
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_tls_config()))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").expect("a DNS name"),
            tcp,
        )
        .await
        .expect("TLS handshake after SSLRequest")
}

/// The role proxy-side authentication looks verifiers up as, created once
/// per test binary with the SECURITY DEFINER function the README shows
/// (so it needs no superuser): `(user, password)`.
pub fn auth_role() -> &'static (String, String) {
    static ROLE: OnceLock<(String, String)> = OnceLock::new();
    ROLE.get_or_init(|| {
        let user = unique("pgtier_auth");
        let password = format!("pw-{user}");
        install_auth_role(cluster(), &user, &password);
        (user, password)
    })
}

/// Creates `user` on `c` with a SCRAM `password`, and the
/// `public.pgtier_verifier(role)` function (in `postgres`) that [`auth_table`]'s
/// `auth_query` calls, executable by `user` alone.
pub fn install_auth_role(c: &Cluster, user: &str, password: &str) {
    c.install_auth_role(user, password)
        .unwrap_or_else(|e| panic!("creating the auth role: {e}"));
}

/// An `[auth]` table for proxy mode (see [`auth_role`]), verifiers cached
/// for `ttl`.
pub fn auth_table(ttl: &str) -> String {
    let (user, password) = auth_role();
    auth_table_for(user, password, ttl)
}

/// An `[auth]` table for proxy mode that looks verifiers up as `user`
/// (see [`install_auth_role`]), cached for `ttl`.
pub fn auth_table_for(user: &str, password: &str, ttl: &str) -> String {
    format!(
        "[auth]\nmode = \"proxy\"\nuser = \"{user}\"\npassword = \"{password}\"\n\
         auth_query = \"{query}\"\nauth_cache_ttl = \"{ttl}\"\n",
        query = pgtier_testkit::sandbox::VERIFIER_QUERY
    )
}

/// `TEST_AUTH_MODE`: `passthrough` (the default) or `proxy`; anything else
/// fails the test rather than quietly run the other mode.
pub fn auth_mode() -> String {
    match std::env::var("TEST_AUTH_MODE") {
        Ok(mode) if mode == "proxy" || mode == "passthrough" => mode,
        Ok(mode) if mode.trim().is_empty() => "passthrough".to_owned(),
        Ok(mode) => panic!("TEST_AUTH_MODE={mode:?}: expected \"passthrough\" or \"proxy\""),
        Err(_) => "passthrough".to_owned(),
    }
}

/// Whether this run tests proxy-side authentication (`TEST_AUTH_MODE=proxy`).
pub fn proxy_auth() -> bool {
    auth_mode() == "proxy"
}

/// A password message (`p`) with `body`.
fn password_frame(body: &[u8]) -> Vec<u8> {
    let mut out = vec![b'p'];
    out.extend(((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Logs in with raw frames on an open connection (plaintext, or TLS the
/// caller set up): a StartupMessage of protocol `version` for `user` and
/// `db`, then [`raw_authenticate`] with `password`. Returns every message
/// the proxy sent, up to and including ReadyForQuery or an ErrorResponse.
pub async fn raw_login(
    s: &mut (impl AsyncRead + AsyncWrite + Unpin),
    user: &str,
    db: &str,
    password: &str,
    version: u32,
) -> Vec<Message> {
    let packet = startup_packet_of(version, &[("user", user), ("database", db)]);
    raw_login_packet(s, &packet, password).await
}

/// [`raw_login`] with a StartupMessage of the caller's making (extra
/// parameters, a given length).
pub async fn raw_login_packet(
    s: &mut (impl AsyncRead + AsyncWrite + Unpin),
    startup: &[u8],
    password: &str,
) -> Vec<Message> {
    s.write_all(startup).await.expect("StartupMessage sent");
    // Over TLS, what a write could not send at once waits for a flush.
    s.flush().await.expect("StartupMessage flushed");
    raw_authenticate(s, password).await
}

/// Answers what the server asks after a StartupMessage, as libpq would:
/// nothing for trust, and SCRAM-SHA-256 (without channel binding) computed
/// here from `password` and the salt and iteration count of the server's
/// first message, checking the server's signature at the end. Reads up to
/// and including ReadyForQuery or an ErrorResponse and returns every
/// message, authentication requests included. Cleartext and md5 are not
/// answered (no raw-frame test logs in with them).
pub async fn raw_authenticate(
    s: &mut (impl AsyncRead + AsyncWrite + Unpin),
    password: &str,
) -> Vec<Message> {
    let mut scram: Option<ScramClient> = None;
    let mut out = Vec::new();
    loop {
        let (tag, body) = read_message(s).await;
        let done = tag == b'Z' || tag == b'E';
        if tag == b'R' {
            let code = u32::from_be_bytes(body[..4].try_into().expect("an auth request code"));
            let data = &body[4..];
            let answer = match code {
                0 => None,
                10 => {
                    assert!(
                        !password.is_empty(),
                        "asked for SCRAM; the test has no password"
                    );
                    let offered: Vec<&[u8]> =
                        data.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                    assert!(
                        offered.contains(&&b"SCRAM-SHA-256"[..]),
                        "SCRAM-SHA-256 offered: {offered:?}"
                    );
                    let (client, first) = ScramClient::new(password);
                    scram = Some(client);
                    let mut body = b"SCRAM-SHA-256\0".to_vec();
                    body.extend((first.len() as i32).to_be_bytes());
                    body.extend(first.as_bytes());
                    Some(password_frame(&body))
                }
                11 => {
                    let client = scram.as_mut().expect("SASLContinue after SASL");
                    let last = client.server_first(data);
                    Some(password_frame(last.as_bytes()))
                }
                12 => {
                    let client = scram.as_ref().expect("SASLFinal after SASLContinue");
                    client.check_server_final(data);
                    None
                }
                other => {
                    panic!("authentication request {other} is not answered by the test client")
                }
            };
            if let Some(answer) = answer {
                s.write_all(&answer)
                    .await
                    .expect("authentication answer sent");
                s.flush().await.expect("authentication answer flushed");
            }
        }
        out.push((tag, body));
        if done {
            return out;
        }
    }
}

/// [`raw_login`] that must succeed: the messages up to ReadyForQuery.
pub async fn raw_login_ok(
    s: &mut (impl AsyncRead + AsyncWrite + Unpin),
    user: &str,
    db: &str,
    password: &str,
) -> Vec<Message> {
    let msgs = raw_login(s, user, db, password, PROTOCOL_3_0).await;
    let (tag, body) = msgs.last().expect("a message");
    assert_eq!(
        *tag,
        b'Z',
        "login failed: {}",
        String::from_utf8_lossy(body)
    );
    msgs
}

/// The client side of SCRAM-SHA-256 (RFC 5802, as libpq speaks it) for
/// raw-frame tests. The keys come from pgtier's own derivation
/// ([`scram::client_key`], [`scram::Verifier::from_password`]); the
/// exchange itself is done here, because `scram::ClientExchange` makes its
/// nonce when created and needs the ServerKey then, which a client knows
/// only from the salt in the server's first message.
struct ScramClient {
    password: String,
    nonce: String,
    client_first_bare: String,
    /// AuthMessage and ServerKey, once the server's first message came.
    expect: Option<(String, scram::Key)>,
}

impl ScramClient {
    fn new(password: &str) -> (ScramClient, String) {
        use base64::Engine;
        let raw: [u8; 18] = rand::random();
        let nonce = base64::engine::general_purpose::STANDARD.encode(raw);
        let client_first_bare = format!("n=,r={nonce}");
        let first = format!("n,,{client_first_bare}");
        (
            ScramClient {
                password: password.to_owned(),
                nonce,
                client_first_bare,
                expect: None,
            },
            first,
        )
    }

    /// The client-final message for the server-first `message`.
    fn server_first(&mut self, message: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let server_first = std::str::from_utf8(message).expect("server-first is UTF-8");
        let attr = |name: &str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {server_first:?}"))
        };
        let nonce = attr("r=");
        assert!(
            nonce.starts_with(&self.nonce) && nonce.len() > self.nonce.len(),
            "the server's nonce extends ours: {server_first:?}"
        );
        let salt = b64.decode(attr("s=")).expect("salt is base64");
        let iterations: u32 = attr("i=").parse().expect("iterations");
        let client_key = scram::client_key(&self.password, &salt, iterations);
        let verifier = scram::Verifier::from_password(&self.password, &salt, iterations);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac_sha256(&verifier.stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.expect = Some((auth_message, verifier.server_key));
        format!("{without_proof},p={}", b64.encode(proof))
    }

    /// Panics unless the server-final `message` carries the signature only
    /// the holder of the role's verifier can make.
    fn check_server_final(&self, message: &[u8]) {
        use base64::Engine;
        let (auth_message, server_key) = self.expect.as_ref().expect("server-first came");
        let text = std::str::from_utf8(message).expect("server-final is UTF-8");
        let signature = text
            .strip_prefix("v=")
            .unwrap_or_else(|| panic!("server-final {text:?}"));
        let expected = hmac_sha256(server_key, auth_message.as_bytes());
        assert_eq!(
            signature,
            base64::engine::general_purpose::STANDARD.encode(expected),
            "the server's SCRAM signature"
        );
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::hmac::sign(&key, data).as_ref());
    out
}

/// Gives `t` a table `t (n int)` of `rows` rows, made by the cluster's
/// superuser (another session, so the cluster's statistics know them) and
/// owned by the tenant.
pub fn table_of_rows(t: &Tenant, rows: u32) {
    cluster()
        .psql(
            &t.db,
            &format!(
                "CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, {rows});
                 ALTER TABLE t OWNER TO {}",
                t.user
            ),
        )
        .unwrap_or_else(|e| panic!("filling {}: {e}", t.db));
}

/// A plaintext session of `t` through `proxy`, logged in with raw frames
/// ([`raw_login_ok`]).
pub async fn raw_session(proxy: &TestProxy, t: &Tenant) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    raw_login_ok(&mut s, &t.user, &t.db, &t.password).await;
    s
}

/// The SQLSTATE of a failed call, or what the error was if it had none.
pub fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// Runs `sql` and asserts it fails with `sqlstate`; returns the message.
pub async fn refused(client: &tokio_postgres::Client, sql: &str, sqlstate: &str) -> String {
    let e = client
        .batch_execute(sql)
        .await
        .expect_err(&format!("{sql} should have been refused"));
    assert_eq!(code(&e), sqlstate, "{sql}: {e:?}");
    message(&e)
}
