//! `pgtier demo`: the newcomer's first command. A throwaway cluster with two
//! tenant databases (one free, one standard), a self-signed certificate, and
//! the proxy in front, with ready-to-paste `psql` URLs. Ctrl-C removes it all.
//!
//! The cluster and certificates come from `pgtier-sandbox`, the one crate of
//! the workspace's tooling the product depends on. The tests and the
//! benchmark use the same sandbox through `pgtier-testkit`; were it part of
//! the testkit, the product would ship its test support (and the testkit
//! could never use the product without a cycle); were it part of this
//! library, the library would export it to them.

use std::net::SocketAddr;

use anyhow::Context;

use crate::config::Config;
use crate::runtime::server::Proxy;
use pgtier_sandbox::{Certs, Cluster, ClusterOptions, PasswordEncryption, VERIFIER_QUERY};

const FREE_DB: &str = "hobby";
const STANDARD_DB: &str = "acme_prod";
const QUOTA_ROLE: &str = "pgtier_quota";
const AUTH_ROLE: &str = "pgtier_auth";

pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("pgtier-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    println!("Starting a throwaway PostgreSQL cluster …");
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(ClusterOptions::default()))
        .await
        .context("cluster start-up task failed")??;
    let free_password = random_password();
    let standard_password = random_password();
    cluster.create_tenant(FREE_DB, "hobby_user", &free_password)?;
    cluster.create_tenant(STANDARD_DB, "acme_user", &standard_password)?;
    // The role the row quota counts as: it reads every table.
    let quota_password = random_password();
    cluster.create_role(QUOTA_ROLE, Some(&quota_password), PasswordEncryption::Scram)?;
    cluster.psql(
        "postgres",
        &format!("GRANT pg_read_all_data TO {QUOTA_ROLE}; ALTER ROLE {QUOTA_ROLE} BYPASSRLS"),
    )?;
    // Proxy-mode authentication, as proxy.toml ships it: pgtier checks
    // passwords itself, as a role that may only call one SECURITY DEFINER
    // function (README, "Authentication").
    let auth_password = random_password();
    cluster.install_auth_role(AUTH_ROLE, &auth_password)?;
    let certs = Certs::generate(dir.path())?;

    let config = Config::from_toml_str(&format!(
        r#"
listen = "{listen}"
default_tier = "free"
[tls]
cert = "{cert}"
key = "{key}"
mode = "require"
[cluster]
host = "127.0.0.1"
port = {port}
[auth]
mode = "proxy"
user = "{AUTH_ROLE}"
password = "{auth_password}"
auth_query = "{VERIFIER_QUERY}"
[quota]
user = "{QUOTA_ROLE}"
password = "{quota_password}"
interval = "5s"
[tiers.free]
max_connections = 2
idle_timeout = "5m"
row_limit = 10000
deny = ["extension", "function", "trigger", "role"]
[tiers.standard]
max_connections = 0
[tenants.{STANDARD_DB}]
tier = "standard"
"#,
        cert = certs.cert_path.display(),
        key = certs.key_path.display(),
        port = cluster.port(),
    ))?;
    let proxy = Proxy::bind(config).await?;
    let handle = proxy.handle();
    let addr = handle.local_addr();
    let ca = certs.ca_path.display();
    println!();
    println!(
        "pgtier is listening on {addr} in front of PostgreSQL on 127.0.0.1:{}.",
        cluster.port()
    );
    println!();
    println!("Free tier (2 connections, 5 minutes idle, 10,000 rows in 256 MB, 30 s a statement, no extensions/functions/triggers/roles):");
    println!(
        "  psql 'postgres://hobby_user:{free_password}@localhost:{}/{FREE_DB}?sslmode=verify-full&sslrootcert={ca}'",
        addr.port()
    );
    println!("Standard tier (no cap):");
    println!(
        "  psql 'postgres://acme_user:{standard_password}@localhost:{}/{STANDARD_DB}?sslmode=verify-full&sslrootcert={ca}'",
        addr.port()
    );
    println!();
    println!(
        "Try a third psql on the free URL while two are open, or\n  INSERT INTO t SELECT generate_series(1, 20000) after CREATE TABLE t (n int).\nCtrl-C stops and removes everything."
    );

    tokio::spawn(crate::cli::signals::handle_signals(handle, false));
    proxy.run().await?;
    drop(cluster);
    drop(dir);
    println!("Demo cluster and certificates removed.");
    Ok(())
}

fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
