//! pgtier as a target, in each flavour (pass-through, proxy-mode
//! authentication, the free tier's rules): its configuration and process.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{anyhow, Context, Result};
use pgtier_testkit::sandbox::Certs;

use crate::process::{free_port, wait_listening, Guard};
use crate::tenants::{ServiceRoles, Tenants};

/// Which pgtier: what its configuration turns on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// Pass-through authentication, no rules: standard tenants uncapped,
    /// the free tier at 2 connections with no row quota and no denied
    /// statements, no idle timeouts (they would only add noise).
    Passthrough,
    /// As `Passthrough`, with `[auth] mode = "proxy"` and the warm cluster
    /// connections at their defaults.
    ProxyAuth,
    /// As `Passthrough`, with every tenant in the free tier at its defaults
    /// (row quota 10,000 with the auditor, the four denied statement kinds,
    /// 5 minutes idle), the standard tenants' cap lifted (20 clients).
    Rules,
    /// The idle-session set-up: every tenant standard, against the fake
    /// backend.
    Fake,
}

impl Flavor {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Flavor::Passthrough => "pgtier",
            Flavor::ProxyAuth => "pgtier-proxy",
            Flavor::Rules => "pgtier-rules",
            Flavor::Fake => "pgtier-idle",
        }
    }
}

pub(crate) struct Proxy {
    pub(crate) child: Guard,
    pub(crate) port: u16,
}

impl Proxy {
    #[allow(clippy::too_many_arguments)] // set-up only; a struct would only rename them
    pub(crate) fn start(
        bin: &Path,
        work: &Path,
        certs: &Certs,
        cluster_host: &str,
        cluster_port: u16,
        tenants: &Tenants,
        flavor: Flavor,
        roles: &ServiceRoles,
    ) -> Result<Proxy> {
        let port = free_port()?;
        let name = flavor.name();
        let mut toml = format!(
            "listen = \"127.0.0.1:{port}\"\n\
             default_tier = \"{tier}\"\n\
             login_timeout = \"60s\"\n\
             shutdown_grace = \"1s\"\n\
             {logins}\
             [tls]\n\
             cert = \"{cert}\"\n\
             key = \"{key}\"\n\
             mode = \"require\"\n\
             [cluster]\n\
             host = \"{cluster_host}\"\n\
             port = {cluster_port}\n\
             tls = \"disable\"\n",
            tier = if flavor == Flavor::Fake {
                "standard"
            } else {
                "free"
            },
            cert = certs.cert_path.display(),
            key = certs.key_path.display(),
            // The idle-session measurement logs in 64 at a time over 10
            // tenants: more than the default 8 logins of one tenant in
            // progress, which is not what it measures.
            logins = if flavor == Flavor::Fake {
                "max_pending_logins_per_tenant = 64\n"
            } else {
                ""
            },
        );
        match flavor {
            Flavor::Passthrough | Flavor::ProxyAuth | Flavor::Fake => toml.push_str(
                "[tiers.free]\n\
                 max_connections = 2\n\
                 idle_timeout = \"0s\"\n\
                 row_limit = 0\n\
                 deny = []\n\
                 [tiers.standard]\n\
                 max_connections = 0\n\
                 idle_timeout = \"0s\"\n",
            ),
            Flavor::Rules => {
                let (user, password) = roles
                    .quota
                    .as_ref()
                    .ok_or_else(|| anyhow!("the rules target needs the quota role"))?;
                write!(
                    toml,
                    "[quota]\n\
                     user = \"{user}\"\n\
                     password = \"{password}\"\n\
                     [tiers.free]\n\
                     max_connections = 2\n\
                     idle_timeout = \"5m\"\n\
                     row_limit = 10000\n\
                     statement_timeout = \"30s\"\n\
                     storage_limit = \"256MB\"\n\
                     deny = [\"extension\", \"function\", \"trigger\", \"role\"]\n"
                )?;
            }
        }
        if flavor == Flavor::ProxyAuth {
            let (user, password) = roles
                .auth
                .as_ref()
                .ok_or_else(|| anyhow!("proxy mode needs the auth role"))?;
            write!(
                toml,
                "[auth]\n\
                 mode = \"proxy\"\n\
                 user = \"{user}\"\n\
                 password = \"{password}\"\n\
                 auth_query = \"{query}\"\n",
                query = pgtier_testkit::sandbox::VERIFIER_QUERY
            )?;
        }
        for t in &tenants.standard {
            match flavor {
                Flavor::Rules => writeln!(
                    toml,
                    "[tenants.{}]\ntier = \"free\"\nmax_connections = 0",
                    t.name
                )?,
                _ => writeln!(toml, "[tenants.{}]\ntier = \"standard\"", t.name)?,
            }
        }
        let config = work.join(format!("{name}.toml"));
        fs::write(&config, toml)?;
        let log = work.join(format!("{name}.log"));
        // PGTIER_BENCH_LOG sets pgtier's RUST_LOG; it must not reach pgtier
        // itself, which reads every PGTIER_ variable as a configuration key
        // and refuses unknown ones.
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("PGTIER_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("PGTIER_BENCH_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut child = Guard(child);
        wait_listening(port, &mut child.0, name, &log)?;
        eprintln!("==> {name} on port {port} (log: {})", log.display());
        Ok(Proxy { child, port })
    }
}
