//! A throwaway PostgreSQL cluster: `initdb` into a temporary directory,
//! `postgres` on a free loopback port, removed again on drop.
//!
//! PostgreSQL refuses to run as root, so when we are root the server runs as
//! the `postgres` OS user (via `setpriv`, which execs rather than forks, so the
//! child we hold is the postmaster itself). Test binaries keep their cluster
//! in a `static`, which is never dropped; a small watchdog process therefore
//! stops the cluster and removes its directory once our process is gone.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::certs::Certs;
use super::SandboxError;

/// How the cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub max_connections: u32,
    /// Serve TLS too (with a sandbox certificate).
    pub ssl: bool,
    /// pg_hba.conf lines placed before the default
    /// `host all all 127.0.0.1/32 scram-sha-256`, e.g.
    /// `host all +trust_users 127.0.0.1/32 trust`.
    pub extra_hba: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            max_connections: 300,
            ssl: false,
            extra_hba: Vec::new(),
        }
    }
}

/// How a role's password is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordEncryption {
    Scram,
    Md5,
}

/// A running throwaway cluster.
#[derive(Debug)]
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    postmaster: Child,
    watchdog: Option<Child>,
    superuser_password: String,
}

const START_TIMEOUT: Duration = Duration::from_secs(60);

impl Cluster {
    /// Starts a cluster; retries a few times, since the free port picked can
    /// be taken by someone else before postgres binds it.
    pub fn start(opts: ClusterOptions) -> Result<Cluster, SandboxError> {
        let mut last_error = None;
        for _attempt in 0..3 {
            match Self::try_start(&opts) {
                Ok(cluster) => return Ok(cluster),
                Err(e @ SandboxError::Start(_)) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| SandboxError::Start("no attempt made".to_owned())))
    }

    fn try_start(opts: &ClusterOptions) -> Result<Cluster, SandboxError> {
        let bin = find_server_binaries().ok_or(SandboxError::NoServerBinaries)?;
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("pgtier-cluster-")
            .tempdir()
            .map_err(SandboxError::io("creating a temporary directory"))?;
        let data = dir.path().join("data");
        let mut ssl_args = Vec::new();
        if opts.ssl {
            let certs = Certs::generate(dir.path())?;
            ssl_args = vec![
                "-c".to_owned(),
                "ssl=on".to_owned(),
                "-c".to_owned(),
                format!("ssl_cert_file={}", certs.cert_path.display()),
                "-c".to_owned(),
                format!("ssl_key_file={}", certs.key_path.display()),
            ];
        }
        if as_postgres {
            chown_to_postgres(dir.path())?;
        }

        run(
            server_command(&bin.join("initdb"), as_postgres)
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-E", "UTF8", "--no-sync"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"]),
            "initdb",
        )?;
        let mut hba = String::from("local all all trust\n");
        for line in &opts.extra_hba {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str(
            "host all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n",
        );
        std::fs::write(data.join("pg_hba.conf"), hba)
            .map_err(SandboxError::io("writing pg_hba.conf"))?;

        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("postgres.log"))
            .map_err(SandboxError::io("creating postgres.log"))?;
        let log_err = log
            .try_clone()
            .map_err(SandboxError::io("creating postgres.log"))?;
        let mut cmd = server_command(&bin.join("postgres"), as_postgres);
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", &format!("max_connections={}", opts.max_connections)])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "shared_buffers=64MB"])
            .args(&ssl_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let postmaster = cmd.spawn().map_err(SandboxError::io("starting postgres"))?;
        let watchdog = spawn_watchdog(postmaster.id(), dir.path());
        let mut cluster = Cluster {
            dir,
            bin,
            port,
            postmaster,
            watchdog,
            superuser_password: format!("su-{}", rand::random::<u64>()),
        };
        // On failure `cluster` drops here: postgres stopped, directory removed.
        cluster.wait_ready()?;
        cluster.psql(
            "postgres",
            &format!(
                "ALTER ROLE postgres PASSWORD {}",
                literal(&cluster.superuser_password)
            ),
        )?;
        Ok(cluster)
    }

    fn wait_ready(&mut self) -> Result<(), SandboxError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.postmaster.try_wait() {
                let log = std::fs::read_to_string(self.dir.path().join("postgres.log"))
                    .unwrap_or_default();
                return Err(SandboxError::Start(format!(
                    "postgres exited with {status}: {}",
                    log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                )));
            }
            let probe = Command::new(self.bin.join("psql"))
                .args(self.psql_args("postgres"))
                .args(["-c", "select 1"])
                .stdin(Stdio::null())
                .output();
            let psql_missing = matches!(&probe, Err(e) if e.kind() == std::io::ErrorKind::NotFound);
            let probe = if psql_missing {
                Command::new("psql")
                    .args(self.psql_args("postgres"))
                    .args(["-c", "select 1"])
                    .stdin(Stdio::null())
                    .output()
            } else {
                probe
            };
            if matches!(&probe, Ok(out) if out.status.success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(SandboxError::Start(format!(
                    "not accepting connections after {}s",
                    START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    pub fn superuser(&self) -> &str {
        "postgres"
    }

    pub fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    fn psql_args(&self, db: &str) -> Vec<String> {
        vec![
            "-X".into(),
            "-q".into(),
            "-A".into(),
            "-t".into(),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
            "-h".into(),
            self.dir.path().display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
            "-d".into(),
            db.into(),
        ]
    }

    /// Runs `sql` as the superuser over the Unix socket; returns stdout.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, SandboxError> {
        let psql = if self.bin.join("psql").exists() {
            self.bin.join("psql")
        } else {
            PathBuf::from("psql")
        };
        let out = Command::new(psql)
            .args(self.psql_args(db))
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(SandboxError::io("running psql"))?;
        if !out.status.success() {
            return Err(SandboxError::Command {
                what: format!("psql -c {sql:?}"),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates a LOGIN role unless it exists.
    pub fn create_role(
        &self,
        user: &str,
        password: Option<&str>,
        encryption: PasswordEncryption,
    ) -> Result<(), SandboxError> {
        let method = match encryption {
            PasswordEncryption::Scram => "scram-sha-256",
            PasswordEncryption::Md5 => "md5",
        };
        let password = password
            .map(|p| format!(" PASSWORD {}", literal(p)))
            .unwrap_or_default();
        self.psql(
            "postgres",
            &format!(
                "SET password_encryption = '{method}'; \
                 DO $$BEGIN CREATE ROLE {} LOGIN{password}; \
                 EXCEPTION WHEN duplicate_object THEN NULL; END$$;",
                ident(user)
            ),
        )
        .map(|_| ())
    }

    pub fn create_database(&self, db: &str, owner: &str) -> Result<(), SandboxError> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {} OWNER {}", ident(db), ident(owner)),
        )
        .map(|_| ())
    }

    /// A tenant: a LOGIN role with a SCRAM password and a database it owns.
    pub fn create_tenant(&self, db: &str, user: &str, password: &str) -> Result<(), SandboxError> {
        self.create_role(user, Some(password), PasswordEncryption::Scram)?;
        self.create_database(db, user)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGINT = fast shutdown: disconnect clients, stop cleanly.
        let _ = Command::new("kill")
            .args(["-INT", &self.postmaster.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.postmaster.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.postmaster.kill();
        let _ = self.postmaster.wait();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Stops the postmaster and removes `dir` once this process has exited.
fn spawn_watchdog(postmaster: u32, dir: &Path) -> Option<Child> {
    let script = format!(
        "while kill -0 {parent} 2>/dev/null; do sleep 0.5; done; \
         kill -INT {postmaster} 2>/dev/null; \
         for i in $(seq 1 100); do kill -0 {postmaster} 2>/dev/null || break; sleep 0.1; done; \
         kill -KILL {postmaster} 2>/dev/null; rm -rf '{dir}'",
        parent = std::process::id(),
        dir = dir.display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

fn server_command(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<(), SandboxError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(SandboxError::io(format!("running {what}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SandboxError::Command {
            what: what.to_owned(),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn chown_to_postgres(path: &Path) -> Result<(), SandboxError> {
    let id = |flag: &str| -> Result<u32, SandboxError> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(SandboxError::io("looking up the postgres user"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| SandboxError::Command {
                what: "id postgres".to_owned(),
                detail: "no `postgres` OS user: install PostgreSQL (apt-get install -y postgresql)"
                    .to_owned(),
            })
    };
    let (uid, gid) = (id("-u")?, id("-g")?);
    for entry in walk(path) {
        std::os::unix::fs::chown(&entry, Some(uid), Some(gid))
            .map_err(SandboxError::io(format!("chown {}", entry.display())))?;
    }
    Ok(())
}

fn walk(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_owned()];
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

fn free_port() -> Result<u16, SandboxError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(SandboxError::io("finding a free port"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(SandboxError::io("finding a free port"))
}

/// Where `initdb` and `postgres` live: `$PG_BIN`, `pg_config --bindir`, the
/// newest `/usr/lib/postgresql/*/bin`, or `PATH`.
pub fn find_server_binaries() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").exists() && dir.join("postgres").exists();
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        if has_server(&dir) {
            return Some(dir);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| has_server(dir)))
}

/// A SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL identifier.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
