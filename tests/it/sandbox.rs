//! The sandbox itself: a real cluster starts, tenants and roles are created,
//! TCP logins behave as configured, certificates are usable, and nothing
//! is left behind when a cluster is dropped or its owner dies.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cluster, md5_tenant, scram_tenant, trust_tenant, unique};
use pgtier_testkit::sandbox::{Certs, Cluster, ClusterOptions};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// Connects straight to the test cluster over TCP, without TLS.
async fn connect_direct(
    db: &str,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let cluster = cluster();
    let mut config = tokio_postgres::Config::new();
    config
        .host(cluster.host())
        .port(cluster.port())
        .dbname(db)
        .user(user)
        .connect_timeout(Duration::from_secs(10));
    if !password.is_empty() {
        config.password(password);
    }
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[test]
fn psql_runs_sql_and_tenants_own_their_database() {
    let cluster = cluster();
    assert_eq!(cluster.psql("postgres", "select 1").unwrap(), "1");
    let tenant = scram_tenant("sbx");
    let owner = cluster
        .psql(
            "postgres",
            &format!(
                "select pg_get_userbyid(datdba) from pg_database where datname = '{}'",
                tenant.db
            ),
        )
        .unwrap();
    assert_eq!(owner, tenant.user);
    // Idempotent: a second call neither fails nor duplicates.
    cluster
        .create_tenant(&tenant.db, &tenant.user, &tenant.password)
        .unwrap();
    // Errors carry psql's message.
    let err = cluster.psql("postgres", "select nonsense").unwrap_err();
    assert!(err.to_string().contains("nonsense"), "{err}");
}

#[tokio::test]
async fn scram_login_over_tcp_and_wrong_password_is_28p01() {
    let tenant = scram_tenant("sbx_scram");
    let client = connect_direct(&tenant.db, &tenant.user, &tenant.password)
        .await
        .unwrap();
    let row = client
        .query_one("select current_user::text, current_database()::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), tenant.user);
    assert_eq!(row.get::<_, String>(1), tenant.db);

    let Err(err) = connect_direct(&tenant.db, &tenant.user, "wrong").await else {
        panic!("a wrong password must not log in");
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

#[tokio::test]
async fn md5_and_trust_roles_log_in_as_configured() {
    let cluster = cluster();
    let md5 = md5_tenant("sbx_md5");
    let stored = cluster
        .psql(
            "postgres",
            &format!(
                "select left(rolpassword, 3) from pg_authid where rolname = '{}'",
                md5.user
            ),
        )
        .unwrap();
    assert_eq!(stored, "md5");
    connect_direct(&md5.db, &md5.user, &md5.password)
        .await
        .unwrap();
    let err = connect_direct(&md5.db, &md5.user, "wrong").await.err();
    assert_eq!(
        err.and_then(|e| e.code().cloned()),
        Some(SqlState::INVALID_PASSWORD)
    );

    let trust = trust_tenant("sbx_trust");
    let client = connect_direct(&trust.db, &trust.user, "").await.unwrap();
    client.simple_query("select 1").await.unwrap();

    // A role outside the groups needs its (SCRAM) password: the server
    // asks for one, and, the role having none, refuses any as PostgreSQL
    // does for a wrong password.
    let role = unique("sbx_plain");
    cluster
        .create_role(
            &role,
            None,
            pgtier_testkit::sandbox::PasswordEncryption::Scram,
        )
        .unwrap();
    let Err(err) = connect_direct("postgres", &role, "any-password").await else {
        panic!("a role outside the groups must not log in without its password");
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    assert!(
        common::message(&err).contains(&format!(
            "password authentication failed for user \"{role}\""
        )),
        "{err}"
    );
    // Without one, the client itself gives up when asked for it.
    let Err(err) = connect_direct("postgres", &role, "").await else {
        panic!("no login without a password");
    };
    assert!(format!("{err:?}").contains("password missing"), "{err:?}");
}

#[test]
fn certificates_are_valid_pem_and_the_key_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path()).unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.cert_path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf then CA");
    let ca = CertificateDer::from_pem_file(&certs.ca_path).unwrap();
    assert_eq!(chain[1], ca);
    let key = PrivateKeyDer::from_pem_file(&certs.key_path).unwrap();
    assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
    let mode = std::fs::metadata(&certs.key_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key file mode {mode:o}");
    // rustls accepts the pair (the key matches the leaf).
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
}

/// A cluster with `ssl: true` serves the sandbox certificate, which
/// verifies against the sandbox CA for 127.0.0.1 (rustls) and
/// `sslmode=verify-full` (libpq).
#[tokio::test]
async fn tls_cluster_verifies_against_the_sandbox_ca() {
    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::start(ClusterOptions {
            ssl: true,
            max_connections: 20,
            installation: common::installation(),
            ..ClusterOptions::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let certs = cluster.certs().expect("ssl clusters have certificates");

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&certs.ca_path).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (client, connection) = tokio_postgres::Config::new()
        .host(cluster.host())
        .port(cluster.port())
        .user(cluster.superuser())
        .password(cluster.superuser_password())
        .dbname("postgres")
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));

    let output = Command::new(cluster.program("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        ])
        .arg(format!(
            "{}?sslmode=verify-full",
            cluster.url(
                "postgres",
                cluster.superuser(),
                cluster.superuser_password()
            )
        ))
        .env("PGSSLROOTCERT", &certs.ca_path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "t");
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn process_ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S …": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
    }
}

fn wait_until_blocking(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn drop_stops_the_server_and_removes_its_directory() {
    let cluster = Cluster::start(ClusterOptions {
        max_connections: 10,
        installation: common::installation(),
        ..ClusterOptions::default()
    })
    .unwrap();
    let (pid, dir) = (cluster.pid(), cluster.dir().to_path_buf());
    assert!(!process_ended(pid));
    assert!(dir.join("data").is_dir());
    drop(cluster);
    assert!(process_ended(pid), "postgres {pid} still runs");
    assert!(!dir.exists(), "{} still exists", dir.display());
}

const CHILD_ENV: &str = "PGTIER_SANDBOX_WATCHDOG_CHILD";

/// Not a test of its own: the body of the child process of
/// [`watchdog_cleans_up_when_the_owner_dies`], which starts a cluster,
/// reports it and exits without dropping it (as a `static` would).
#[test]
fn watchdog_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let cluster = Cluster::start(ClusterOptions {
        max_connections: 10,
        installation: common::installation(),
        ..ClusterOptions::default()
    })
    .unwrap();
    println!("SANDBOX {} {}", cluster.pid(), cluster.dir().display());
    std::mem::forget(cluster);
    std::process::exit(0);
}

#[test]
fn watchdog_cleans_up_when_the_owner_dies() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sandbox::watchdog_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("SANDBOX ").map(|(_, rest)| rest))
        .unwrap_or_else(|| {
            panic!(
                "child printed no SANDBOX line:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let (pid, dir) = line.split_once(' ').unwrap();
    let pid: u32 = pid.parse().unwrap();
    let dir = PathBuf::from(dir);
    wait_until_blocking(
        Duration::from_secs(20),
        "the orphaned postgres stops",
        || process_ended(pid),
    );
    wait_until_blocking(
        Duration::from_secs(20),
        "the sandbox directory is removed",
        || !Path::new(&dir).exists(),
    );
}

/// The raw-frame tests' login helper speaks SCRAM-SHA-256 as PostgreSQL
/// itself checks it (straight to the cluster, no proxy): the right password
/// logs in (and the server's signature checks out), a wrong one gets 28P01;
/// a trust role is let in without being asked.
#[tokio::test]
async fn the_raw_login_helper_speaks_scram_as_postgresql_checks_it() {
    let c = cluster();
    let addr = format!("{}:{}", c.host(), c.port());
    let tenant = scram_tenant("sbx_raw");
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let msgs = common::raw_login_ok(&mut s, &tenant.user, &tenant.db, &tenant.password).await;
    let codes: Vec<u32> = msgs
        .iter()
        .filter(|m| m.0 == b'R')
        .map(|m| u32::from_be_bytes(m.1[..4].try_into().unwrap()))
        .collect();
    assert_eq!(codes, [10, 11, 12, 0], "SASL, continue, final, ok");

    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let msgs = common::raw_login(
        &mut s,
        &tenant.user,
        &tenant.db,
        "wrong",
        common::PROTOCOL_3_0,
    )
    .await;
    let (tag, body) = msgs.last().unwrap();
    assert_eq!(*tag, b'E');
    assert_eq!(
        pgtier::protocol::error::sqlstate_of(body),
        Some("28P01"),
        "{}",
        String::from_utf8_lossy(body)
    );

    let trust = trust_tenant("sbx_raw_trust");
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let msgs = common::raw_login_ok(&mut s, &trust.user, &trust.db, &trust.password).await;
    assert_eq!(msgs[0], (b'R', 0u32.to_be_bytes().to_vec()), "not asked");
}
