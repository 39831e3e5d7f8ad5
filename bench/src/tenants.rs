//! The tenants the workloads run as (standard and free, each with its own
//! role, SCRAM password and database copied from one pgbench template) and
//! the service roles the proxies use (auth_query, the row-quota auditor).

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::Result;
use pgtier_testkit::sandbox::Cluster;

use crate::cli::RunArgs;
use crate::process::run_checked;
use crate::targets::{Target, Workload};

#[derive(Debug, Clone)]
pub(crate) struct Tenant {
    pub(crate) name: String,
    pub(crate) password: String,
}

pub(crate) struct Tenants {
    pub(crate) standard: Vec<Tenant>,
    pub(crate) free: Vec<Tenant>,
    /// (f)'s free tenant at its cap: two idle sessions hold its slots while
    /// attackers log in with its right password and are refused.
    pub(crate) capped: Option<Tenant>,
}

impl Tenants {
    pub(crate) fn all(&self) -> impl Iterator<Item = &Tenant> {
        self.standard.iter().chain(&self.free).chain(&self.capped)
    }
}

/// Roles with SCRAM passwords and databases copied from one template that
/// `pgbench -i -s 1` filled once: far faster than initialising each.
pub(crate) fn create_tenants(
    cluster: &Cluster,
    args: &RunArgs,
    workloads: &[Workload],
) -> Result<Tenants> {
    let t = Instant::now();
    let make = |prefix: &str, n: usize| -> Vec<Tenant> {
        (1..=n)
            .map(|i| Tenant {
                name: format!("{prefix}{i:03}"),
                password: format!("pw-{prefix}{i:03}-{}", rand::random::<u32>()),
            })
            .collect()
    };
    let tenants = Tenants {
        standard: make("std", args.std_tenants),
        free: if workloads.contains(&Workload::Fleet) {
            make("free", args.free_tenants)
        } else {
            Vec::new()
        },
        capped: workloads
            .iter()
            .any(|w| matches!(w, Workload::Attack(_)))
            .then(|| make("capped", 1).remove(0)),
    };

    cluster.psql("postgres", "CREATE DATABASE bench_template")?;
    let pgbench = pg_tool(cluster, "pgbench");
    run_checked(
        Command::new(&pgbench)
            .args(["-i", "-s", "1", "-q", "-h"])
            .arg(cluster.socket_dir())
            .args(["-p", &cluster.port().to_string(), "-U", "postgres"])
            .arg("bench_template"),
        "pgbench -i",
    )?;
    cluster.psql(
        "bench_template",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO PUBLIC; VACUUM ANALYZE",
    )?;

    // One psql per batch: CREATE DATABASE cannot share a transaction, so
    // the statements go in as a script, one implicit transaction each.
    let mut script = String::from("SET password_encryption = 'scram-sha-256';\n");
    for t in tenants.all() {
        writeln!(
            script,
            "CREATE ROLE {n} LOGIN PASSWORD '{p}';\n\
             CREATE DATABASE {n} OWNER {n} TEMPLATE bench_template STRATEGY FILE_COPY;",
            n = t.name,
            p = t.password
        )?;
    }
    let file = cluster.socket_dir().join("tenants.sql");
    fs::write(&file, script)?;
    run_checked(
        Command::new(pg_tool(cluster, "psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(cluster.socket_dir())
            .args(["-p", &cluster.port().to_string(), "-U", "postgres", "-d"])
            .arg("postgres")
            .arg("-f")
            .arg(&file),
        "creating tenants with psql",
    )?;
    eprintln!(
        "==> {} standard + {} free tenants{} created in {:.1}s",
        tenants.standard.len(),
        tenants.free.len(),
        if tenants.capped.is_some() {
            " + 1 capped"
        } else {
            ""
        },
        t.elapsed().as_secs_f64()
    );
    Ok(tenants)
}

/// A client tool from the cluster's own bin directory when present (so the
/// versions match), else from PATH.
pub(crate) fn pg_tool(cluster: &Cluster, name: &str) -> PathBuf {
    let own = cluster.bin_dir().join(name);
    if own.exists() {
        own
    } else {
        PathBuf::from(name)
    }
}

/// The roles pgtier logs in as on its own: auth_query's (proxy mode) and
/// the row quota's auditor (rules), with their passwords.
#[derive(Debug, Default)]
pub(crate) struct ServiceRoles {
    pub(crate) auth: Option<(String, String)>,
    pub(crate) quota: Option<(String, String)>,
}

/// auth_query's role reads verifiers only through the SECURITY DEFINER
/// function the README shows (no superuser, no direct `pg_authid`); the
/// auditor's role reads every table through `pg_read_all_data` and
/// connects to tenant databases through PUBLIC's CONNECT.
pub(crate) fn create_service_roles(cluster: &Cluster, targets: &[Target]) -> Result<ServiceRoles> {
    let mut roles = ServiceRoles::default();
    if targets.contains(&Target::PgtierProxy) {
        let (user, password) = ("pgtier_auth", format!("pw-auth-{}", rand::random::<u32>()));
        cluster.install_auth_role(user, &password)?;
        roles.auth = Some((user.to_owned(), password));
    }
    if targets.contains(&Target::PgtierRules) {
        let (user, password) = (
            "pgtier_quota",
            format!("pw-quota-{}", rand::random::<u32>()),
        );
        cluster.psql(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256'; \
                 CREATE ROLE {user} LOGIN PASSWORD '{password}' BYPASSRLS IN ROLE pg_read_all_data;"
            ),
        )?;
        roles.quota = Some((user.to_owned(), password));
    }
    Ok(roles)
}
