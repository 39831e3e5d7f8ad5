//! PgBouncer in session mode as a target: its configuration, users file
//! and process.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use pgtier_testkit::sandbox::{Certs, Cluster};

use crate::process::{free_port, pgbouncer_path, wait_listening, Guard};
use crate::tenants::Tenants;

pub(crate) struct PgBouncer {
    pub(crate) child: Guard,
    pub(crate) port: u16,
}

impl PgBouncer {
    /// Session mode, TLS toward clients with pgtier's certificate, SCRAM
    /// with the cluster's own verifiers in the auth_file (so PgBouncer logs
    /// into the cluster with the client's SCRAM keys, as pgtier relays it),
    /// plaintext toward the cluster as pgtier, and no limit that throttles.
    pub(crate) fn start(
        work: &Path,
        certs: &Certs,
        cluster_host: &str,
        cluster: &Cluster,
        tenants: &Tenants,
    ) -> Result<PgBouncer> {
        let dir = work.join("pgbouncer");
        fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let names: Vec<String> = tenants.all().map(|t| format!("'{}'", t.name)).collect();
        let userlist = cluster.psql(
            "postgres",
            &format!(
                "SELECT '\"' || rolname || '\" \"' || rolpassword || '\"' FROM pg_authid \
                 WHERE rolname IN ({})",
                names.join(",")
            ),
        )?;
        fs::write(dir.join("userlist.txt"), userlist)?;
        fs::copy(&certs.cert_path, dir.join("server.crt"))?;
        fs::copy(&certs.key_path, dir.join("server.key"))?;
        let ini = format!(
            "[databases]\n\
             * = host={cluster_host} port={cluster_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             listen_backlog = 4096\n\
             unix_socket_dir =\n\
             auth_type = scram-sha-256\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = session\n\
             max_client_conn = 5000\n\
             default_pool_size = 50\n\
             max_db_connections = 0\n\
             max_user_connections = 0\n\
             server_idle_timeout = 30\n\
             client_tls_sslmode = require\n\
             client_tls_cert_file = {dir}/server.crt\n\
             client_tls_key_file = {dir}/server.key\n\
             server_tls_sslmode = disable\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {dir}/pgbouncer.log\n",
            cluster_port = cluster.port(),
            cluster_host = cluster_host,
            dir = dir.display(),
        );
        fs::write(dir.join("pgbouncer.ini"), ini)?;
        let bin = pgbouncer_path().ok_or_else(|| anyhow!("pgbouncer not found"))?;
        // PgBouncer refuses to run as root: run it as `postgres`, as the
        // sandbox runs the cluster.
        let as_root = fs::metadata("/proc/self").map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        })?;
        let mut cmd = if as_root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?;
            if !status.success() {
                bail!("chown of the pgbouncer directory failed");
            }
            let _ = Command::new("chmod").args(["755"]).arg(work).status();
            let mut cmd = Command::new("setpriv");
            cmd.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(bin);
            cmd
        } else {
            Command::new(bin)
        };
        let log = dir.join("pgbouncer.log");
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("stderr.log"))?)
            .spawn()
            .context("starting pgbouncer")?;
        let mut child = Guard(child);
        wait_listening(port, &mut child.0, "pgbouncer", &log)?;
        eprintln!("==> PgBouncer on port {port}");
        Ok(PgBouncer { child, port })
    }
}
