//! A throwaway PostgreSQL cluster: `initdb` into a temporary directory,
//! `postgres` on a free loopback port, removed again when dropped or when
//! the process that started it dies.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::{chown, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::distr::{Alphanumeric, SampleString};

use super::install::Installation;
use super::{Certs, SandboxError};

/// The cluster's superuser role (also the OS user the server runs as when
/// we are root, by PostgreSQL convention).
const SUPERUSER: &str = "postgres";
/// The OS user the server runs as when we are root.
const OS_USER: &str = "postgres";
/// Ports picked by binding port 0 can be taken by someone else before the
/// server binds them; a handful of fresh tries makes that race harmless.
const START_ATTEMPTS: usize = 5;
/// Generous: initdb plus start-up on a loaded 2-core CI machine.
const START_DEADLINE: Duration = Duration::from_secs(60);
const STOP_DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
/// Lines of the server log quoted in start-up errors.
const LOG_TAIL_LINES: usize = 40;

/// Environment variables that would silently redirect or alter our own
/// `psql`/`initdb` invocations.
const LIBPQ_ENV: [&str; 12] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGDATA",
];

/// The `auth_query` that calls [`Cluster::install_auth_role`]'s function.
pub const VERIFIER_QUERY: &str = "SELECT public.pgtier_verifier($1)";

/// How [`Cluster::start`] sets the cluster up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `max_connections` of the server (default 300: enough for tests that
    /// open hundreds of sessions through the proxy).
    pub max_connections: u32,
    /// Serve TLS (`ssl = on`) with a freshly generated sandbox CA and
    /// certificate, see [`Cluster::certs`] (default off).
    pub ssl: bool,
    /// `pg_hba.conf` lines placed before the catch-all
    /// `host all all 127.0.0.1/32 scram-sha-256`, e.g.
    /// `host all +trust_users 127.0.0.1/32 trust`.
    pub extra_hba: Vec<String>,
    /// Which PostgreSQL runs the cluster (default: the machine's own, see
    /// [`Installation::Default`]); e.g. `Installation::Major(18)` for the
    /// pinned download of 18.
    pub installation: Installation,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            max_connections: 300,
            ssl: false,
            extra_hba: Vec::new(),
            installation: Installation::Default,
        }
    }
}

/// How a role's password is stored, which decides the TCP login method the
/// server asks for (`md5` hba lines fall back to SCRAM for SCRAM verifiers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PasswordEncryption {
    #[default]
    Scram,
    Md5,
}

/// The OS identity the server runs as when we are root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// A process that removes the cluster if its owner dies without dropping it.
///
/// Its stdin is a pipe whose only write end is held here: when this process
/// exits (normally, by panic or by SIGKILL) the kernel closes it, the
/// watchdog's `read` sees end-of-file, and it stops the server and removes
/// the directory. Unlike polling the owner's PID this needs no timer and
/// cannot be fooled by PID reuse.
#[derive(Debug)]
struct Watchdog {
    child: Child,
    _pipe: ChildStdin,
}

/// `$1`: the postmaster's PID, `$2`: the sandbox directory. A zombie
/// counts as gone: once the owner is dead, the postmaster's new parent may
/// take its time to reap it.
const WATCHDOG_SCRIPT: &str = r#"
trap '' INT HUP
alive() {
    if [ -d /proc/self ]; then
        s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
        case "${s##*) }" in Z*|X*) return 1 ;; esac
        return 0
    fi
    kill -0 "$1" 2>/dev/null
}
while read -r _; do :; done
kill -QUIT "$1" 2>/dev/null
n=0
while alive "$1" && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n+1)); done
kill -KILL "$1" 2>/dev/null
rm -rf -- "$2" 2>/dev/null || { sleep 1; rm -rf -- "$2"; }
"#;

/// A running throwaway PostgreSQL cluster. Dropping it stops the server
/// (immediate shutdown) and removes its directory.
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    data_dir: PathBuf,
    bin_dir: PathBuf,
    major_version: u32,
    log_path: PathBuf,
    port: u16,
    password: String,
    certs: Option<Certs>,
    postgres: Child,
    watchdog: Option<Watchdog>,
    /// The OS user the server runs as (when we are root).
    run_as: Option<RunAs>,
}

impl Cluster {
    /// Creates and starts a cluster; returns once it accepts connections.
    ///
    /// Server binaries come from `opts.installation`; by default from
    /// `$PG_BIN`, then `pg_config --bindir`, then the newest
    /// `/usr/lib/postgresql/*/bin`, then `PATH`. As root, the server runs as the `postgres` OS user (PostgreSQL
    /// refuses to run as root) in a directory under `/tmp` that user can
    /// reach.
    pub fn start(opts: ClusterOptions) -> Result<Cluster, SandboxError> {
        let bin_dir = opts.installation.bin_dir()?;
        if !bin_dir.join("postgres").is_file() {
            return Err(SandboxError::MissingBinary {
                program: "postgres".into(),
                searched: bin_dir.display().to_string(),
            });
        }
        let run_as = if effective_uid()? == 0 {
            Some(postgres_os_user()?)
        } else {
            None
        };
        // TMPDIR may point somewhere private to root (e.g. under /root);
        // the server's user must be able to reach its directory.
        let parent = match run_as {
            Some(_) => PathBuf::from("/tmp"),
            None => std::env::temp_dir(),
        };
        // Removes everything again if any step below fails.
        let tmp = tempfile::Builder::new()
            .prefix("pgtier-sandbox-")
            .tempdir_in(&parent)
            .map_err(SandboxError::io(format!(
                "creating a temporary directory in {}",
                parent.display()
            )))?;
        let root = tmp.path().to_path_buf();
        let setup = Setup {
            root: &root,
            bin_dir: &bin_dir,
            run_as,
        };
        let (password, certs) = setup.init(&opts)?;
        let major_version = setup.major_version()?;
        let (postgres, port) = setup.launch()?;
        let mut cluster = Cluster {
            data_dir: root.join("data"),
            log_path: root.join("postgres.log"),
            root: tmp.keep(),
            bin_dir,
            major_version,
            port,
            password,
            certs,
            postgres,
            watchdog: None,
            run_as,
        };
        // From here on `Drop` cleans up.
        cluster.watchdog = Some(cluster.spawn_watchdog()?);
        Ok(cluster)
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `127.0.0.1`: the server listens on loopback only.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Directory of the unix socket (`.s.PGSQL.<port>`), usable as a libpq
    /// `host`.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// The sandbox's own directory; removed with the cluster, so files that
    /// should vanish with it (client certificates, scratch files) can go
    /// here.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn superuser(&self) -> &'static str {
        SUPERUSER
    }

    /// The superuser's password, for TCP logins (random per cluster).
    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory of the PostgreSQL binaries in use (`psql`, `pgbench`, …).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The server's major version (15, 17, 18, …), as initdb wrote it into
    /// the data directory: what tests branch on where versions genuinely
    /// differ.
    pub fn major_version(&self) -> u32 {
        self.major_version
    }

    /// Path of a PostgreSQL client program: the one beside the server when
    /// present, else the bare name (looked up in `PATH`).
    pub fn program(&self, name: &str) -> PathBuf {
        let beside = self.bin_dir.join(name);
        if beside.is_file() {
            beside
        } else {
            PathBuf::from(name)
        }
    }

    /// The server's log file (stdout and stderr of `postgres`).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// PID of the postmaster.
    pub fn pid(&self) -> u32 {
        self.postgres.id()
    }

    /// The CA and server certificate the cluster serves when started with
    /// `ssl: true`.
    pub fn certs(&self) -> Option<&Certs> {
        self.certs.as_ref()
    }

    /// A `postgres://` URL for a direct TCP connection to the cluster.
    pub fn url(&self, db: &str, user: &str, password: &str) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{}",
            percent_encode(user),
            percent_encode(password),
            self.host(),
            self.port,
            percent_encode(db)
        )
    }

    /// Runs `sql` (one or more statements, each in its own transaction) as
    /// the superuser in database `db` with `psql` over the unix socket, and
    /// returns its unaligned, tuples-only output without the final newline.
    /// Stops at the first error, which carries psql's stderr.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, SandboxError> {
        let mut command = Command::new(self.program("psql"));
        command
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.root)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", db, "-f", "-"])
            .current_dir(&self.root);
        for var in LIBPQ_ENV {
            command.env_remove(var);
        }
        let output = run_with_stdin(&mut command, sql, "psql")?;
        let what = || format!("psql in database {db:?}");
        if !output.status.success() {
            return Err(command_error(what(), &output));
        }
        let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        while stdout.ends_with('\n') {
            stdout.pop();
        }
        Ok(stdout)
    }

    /// Creates `role` with a SCRAM `password` and the README's
    /// `public.pgtier_verifier(role_name)` function in `postgres`,
    /// executable by `role` alone: what proxy mode's `auth_query`
    /// ([`VERIFIER_QUERY`]) needs without a superuser.
    pub fn install_auth_role(&self, role: &str, password: &str) -> Result<(), SandboxError> {
        self.create_role(role, Some(password), PasswordEncryption::Scram)?;
        self.psql(
            "postgres",
            &format!(
                "CREATE OR REPLACE FUNCTION public.pgtier_verifier(role_name text) RETURNS text \
                 LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$ \
                 SELECT rolpassword::text FROM pg_authid WHERE rolname = role_name AND rolcanlogin \
                 AND (rolvaliduntil IS NULL OR rolvaliduntil > now()) $$; \
                 REVOKE ALL ON FUNCTION public.pgtier_verifier(text) FROM PUBLIC; \
                 GRANT EXECUTE ON FUNCTION public.pgtier_verifier(text) TO {role};"
            ),
        )
        .map(drop)
    }

    /// A LOGIN role with a SCRAM password and a database it owns; calling it
    /// again with the same names resets the password and keeps the database.
    pub fn create_tenant(&self, db: &str, user: &str, password: &str) -> Result<(), SandboxError> {
        self.create_role(user, Some(password), PasswordEncryption::Scram)?;
        self.create_database(db, user)
    }

    /// Creates a LOGIN role (or, if it exists, resets its password). Without
    /// a password the role can only log in where `pg_hba.conf` says `trust`.
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
        let password = match password {
            Some(p) => format!("PASSWORD {}", quote_literal(p)),
            None => "PASSWORD NULL".to_owned(),
        };
        let role = quote_ident(user);
        // The encryption setting applies to the statements after it in this
        // session; the DO block makes the call idempotent.
        let body = format!(
            "BEGIN CREATE ROLE {role} LOGIN {password}; \
             EXCEPTION WHEN duplicate_object THEN ALTER ROLE {role} LOGIN {password}; END"
        );
        self.psql(
            "postgres",
            &format!(
                "SET password_encryption = '{method}';\nDO {};\n",
                dollar_quote(&body)
            ),
        )
        .map(drop)
    }

    /// Creates a NOLOGIN role (a group, for `+group` lines in `pg_hba.conf`)
    /// unless it exists.
    pub fn create_group(&self, group: &str) -> Result<(), SandboxError> {
        let body = format!(
            "BEGIN CREATE ROLE {} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END",
            quote_ident(group)
        );
        self.psql("postgres", &format!("DO {};\n", dollar_quote(&body)))
            .map(drop)
    }

    /// Creates database `db` owned by role `owner`, unless it exists.
    pub fn create_database(&self, db: &str, owner: &str) -> Result<(), SandboxError> {
        // CREATE DATABASE cannot run in a DO block or a transaction, hence
        // the look-up first (psql's \gexec runs the generated statement).
        let sql = format!(
            "SELECT 'CREATE DATABASE ' || quote_ident({db}) || ' OWNER ' || quote_ident({owner}) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = {db}) \\gexec\n",
            db = quote_literal(db),
            owner = quote_literal(owner),
        );
        self.psql("postgres", &sql).map(drop)
    }

    /// Stops the server the way `pg_ctl stop -m immediate` does (SIGQUIT
    /// to the postmaster: every backend dies at once, nothing is
    /// checkpointed, the next start runs crash recovery) and waits for it
    /// to exit. For fault tests: what a proxy sees when its cluster
    /// crashes. [`Cluster::start_again`] brings it back on the same port.
    pub fn stop_immediately(&mut self) -> Result<(), SandboxError> {
        if let Ok(Some(_)) = self.postgres.try_wait() {
            return Ok(());
        }
        signal(self.postgres.id(), "QUIT").map_err(SandboxError::io("signalling postgres"))?;
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match self.postgres.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(None) => {
                    let _ = self.postgres.kill();
                    let _ = self.postgres.wait();
                    return Ok(());
                }
                Err(e) => return Err(SandboxError::io("waiting for postgres to stop")(e)),
            }
        }
    }

    /// Starts the stopped server again on its port and returns once it
    /// accepts logins (after crash recovery, if it was stopped
    /// immediately).
    pub fn start_again(&mut self) -> Result<(), SandboxError> {
        self.relaunch(&[], Until::Ready)
    }

    /// Starts the stopped server again as a standby that never becomes
    /// consistent (`standby.signal`, `hot_standby = off`): it listens on
    /// its port but refuses every login with `57P03`, as a cluster does
    /// while it starts up, until [`Cluster::promote`].
    pub fn start_recovering(&mut self) -> Result<(), SandboxError> {
        let signal_file = self.data_dir.join("standby.signal");
        fs::write(&signal_file, "").map_err(SandboxError::io(format!(
            "writing {}",
            signal_file.display()
        )))?;
        self.setup().give(&signal_file)?;
        self.relaunch(&["hot_standby=off"], Until::Listening)
    }

    /// Ends the recovery [`Cluster::start_recovering`] began (what
    /// `pg_ctl promote` does: a `promote` file and SIGUSR1) and returns
    /// once the server accepts logins.
    pub fn promote(&mut self) -> Result<(), SandboxError> {
        let promote = self.data_dir.join("promote");
        fs::write(&promote, "")
            .map_err(SandboxError::io(format!("writing {}", promote.display())))?;
        self.setup().give(&promote)?;
        signal(self.postgres.id(), "USR1").map_err(SandboxError::io("signalling postgres"))?;
        let log_offset = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
        let log_path = self.log_path.clone();
        let setup = Setup {
            root: &self.root,
            bin_dir: &self.bin_dir,
            run_as: self.run_as,
        };
        match setup.wait_for(&mut self.postgres, &log_path, log_offset, Until::Ready) {
            Ok(()) => Ok(()),
            Err(Exited(reason)) => Err(SandboxError::Start {
                reason,
                log: tail(&read_log_since(&log_path, log_offset)),
                log_path,
            }),
            Err(Fatal(e)) => Err(e),
        }
    }

    fn setup(&self) -> Setup<'_> {
        Setup {
            root: &self.root,
            bin_dir: &self.bin_dir,
            run_as: self.run_as,
        }
    }

    /// Starts `postgres` again on the same port with `settings`, waits
    /// for `until`, and hands the new postmaster to a new watchdog.
    fn relaunch(&mut self, settings: &[&str], until: Until) -> Result<(), SandboxError> {
        if let Ok(None) = self.postgres.try_wait() {
            return Err(SandboxError::Io {
                what: "starting the cluster again".into(),
                source: std::io::Error::other("it is still running"),
            });
        }
        let setup = self.setup();
        let (mut child, log_offset) = setup.spawn_postgres(self.port, settings)?;
        if let Err(e) = setup.wait_for(&mut child, &self.log_path, log_offset, until) {
            stop_postgres(&mut child);
            let log = tail(&read_log_since(&self.log_path, log_offset));
            return Err(match e {
                Exited(reason) => SandboxError::Start {
                    reason,
                    log,
                    log_path: self.log_path.clone(),
                },
                Fatal(e) => e,
            });
        }
        self.postgres = child;
        // The old watchdog knows the old PID.
        if let Some(mut old) = self.watchdog.take() {
            let _ = old.child.kill();
            let _ = old.child.wait();
        }
        self.watchdog = Some(self.spawn_watchdog()?);
        Ok(())
    }

    fn spawn_watchdog(&self) -> Result<Watchdog, SandboxError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("pgtier-sandbox-watchdog")
            .arg(self.postgres.id().to_string())
            .arg(&self.root)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the terminal's process group: Ctrl-C on a test run
            // kills the test, and the watchdog must outlive it.
            .process_group(0)
            .spawn()
            .map_err(SandboxError::io("starting the sandbox watchdog (sh)"))?;
        match child.stdin.take() {
            Some(pipe) => Ok(Watchdog { child, _pipe: pipe }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(SandboxError::Io {
                    what: "starting the sandbox watchdog".into(),
                    source: std::io::Error::other("no stdin pipe"),
                })
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The watchdog first, so that it cannot act on a PID that is gone.
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.child.kill();
            let _ = watchdog.child.wait();
        }
        stop_postgres(&mut self.postgres);
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Immediate shutdown (SIGQUIT: the postmaster takes its backends down
/// with it), SIGKILL if that takes too long, and reap.
fn stop_postgres(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = signal(child.id(), "QUIT");
    let deadline = Instant::now() + STOP_DEADLINE;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(POLL),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends a signal with the shell's `kill` builtin (no unsafe code, and no
/// dependence on a `kill` binary being installed).
fn signal(pid: u32, name: &str) -> std::io::Result<()> {
    let status = Command::new("sh")
        .args(["-c", "kill -s \"$1\" \"$2\"", "sh", name, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "kill -s {name} {pid}: {status}"
        )))
    }
}

/// The steps of [`Cluster::start`] that run before a `Cluster` exists.
struct Setup<'a> {
    root: &'a Path,
    bin_dir: &'a Path,
    run_as: Option<RunAs>,
}

impl Setup<'_> {
    /// A command for a server-side program, run as the server's OS user.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        command.current_dir(self.root).stdin(Stdio::null());
        for var in LIBPQ_ENV {
            command.env_remove(var);
        }
        if let Some(user) = self.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        command
    }

    /// Hands a path we created to the server's OS user.
    fn give(&self, path: &Path) -> Result<(), SandboxError> {
        match self.run_as {
            Some(user) => chown(path, Some(user.uid), Some(user.gid))
                .map_err(SandboxError::io(format!("chown {}", path.display()))),
            None => Ok(()),
        }
    }

    /// initdb, configuration and certificates; returns the superuser
    /// password and the certificates.
    fn init(&self, opts: &ClusterOptions) -> Result<(String, Option<Certs>), SandboxError> {
        self.give(self.root)?;
        let password = Alphanumeric.sample_string(&mut rand::rng(), 24);
        let pwfile = self.root.join("pwfile");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pwfile)
            .and_then(|mut f| f.write_all(password.as_bytes()))
            .map_err(SandboxError::io("writing the initdb password file"))?;
        self.give(&pwfile)?;

        let data_dir = self.root.join("data");
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(&data_dir)
            .args([
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(SandboxError::io("running initdb"))?;
        let _ = fs::remove_file(&pwfile);
        if !output.status.success() {
            return Err(command_error("initdb".into(), &output));
        }

        let mut hba = String::from("# written by pgtier's sandbox\nlocal all all trust\n");
        for line in &opts.extra_hba {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str("host all all 127.0.0.1/32 scram-sha-256\n");
        hba.push_str("host all all ::1/128 scram-sha-256\n");
        // Truncating an existing file keeps its owner (the server's user).
        fs::write(data_dir.join("pg_hba.conf"), hba)
            .map_err(SandboxError::io("writing pg_hba.conf"))?;

        let certs = if opts.ssl {
            let dir = self.root.join("certs");
            let certs = Certs::generate(&dir)?;
            self.give(&dir)?;
            for file in certs.files() {
                self.give(file)?;
            }
            Some(certs)
        } else {
            None
        };

        // In postgresql.conf rather than on the command line, so that a
        // server restarted by hand (pg_ctl -D …) behaves the same.
        let mut conf = format!(
            "\n# pgtier sandbox: a throwaway cluster, durability off for speed\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = {}\n\
             max_connections = {}\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             password_encryption = 'scram-sha-256'\n",
            quote_literal(&self.root.display().to_string()),
            opts.max_connections,
        );
        if let Some(certs) = &certs {
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = {}\nssl_key_file = {}\n",
                quote_literal(&certs.cert_path.display().to_string()),
                quote_literal(&certs.key_path.display().to_string()),
            ));
        }
        OpenOptions::new()
            .append(true)
            .open(data_dir.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .map_err(SandboxError::io("appending to postgresql.conf"))?;
        Ok((password, certs))
    }

    /// The major version initdb wrote into `PG_VERSION` (`18`; `9.6`
    /// before 10, read as 9): the data directory's own word on which
    /// server it belongs to.
    fn major_version(&self) -> Result<u32, SandboxError> {
        let path = self.root.join("data").join("PG_VERSION");
        let text = fs::read_to_string(&path)
            .map_err(SandboxError::io(format!("reading {}", path.display())))?;
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().map_err(|_| SandboxError::Io {
            what: format!("reading {}", path.display()),
            source: std::io::Error::other(format!("unexpected content {:?}", text.trim())),
        })
    }

    /// Starts the server on a free port, retrying with another port when
    /// someone else took the chosen one first.
    fn launch(&self) -> Result<(Child, u16), SandboxError> {
        let log_path = self.root.join("postgres.log");
        let mut last_reason = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let (mut child, log_offset) = self.spawn_postgres(port, &[])?;
            match self.wait_ready(&mut child, &log_path, log_offset) {
                Ok(()) => return Ok((child, port)),
                Err(Exited(reason)) => {
                    let log = read_log_since(&log_path, log_offset);
                    if !port_taken(&log) {
                        return Err(SandboxError::Start {
                            reason,
                            log: tail(&log),
                            log_path,
                        });
                    }
                    last_reason = format!("port {port} was taken: {reason}");
                }
                Err(Fatal(e)) => {
                    stop_postgres(&mut child);
                    return Err(e);
                }
            }
        }
        Err(SandboxError::Start {
            reason: format!("{START_ATTEMPTS} attempts failed; last: {last_reason}"),
            log: tail(&read_log_since(&log_path, 0)),
            log_path,
        })
    }

    /// Starts `postgres` on `port` with extra `-c name=value` settings,
    /// logging to the sandbox's log file; returns the child and where in
    /// the log its output starts.
    fn spawn_postgres(&self, port: u16, settings: &[&str]) -> Result<(Child, u64), SandboxError> {
        let log_path = self.root.join("postgres.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(SandboxError::io("opening the server log"))?;
        let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log
            .try_clone()
            .map_err(SandboxError::io("opening the server log"))?;
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(self.root.join("data"))
            .arg("-p")
            .arg(port.to_string());
        for setting in settings {
            command.arg("-c").arg(setting);
        }
        let child = command
            .stdout(log)
            .stderr(log_err)
            // Not in the terminal's process group: Ctrl-C goes to the
            // owner, which stops the server in order (or the watchdog
            // does).
            .process_group(0)
            .spawn()
            .map_err(SandboxError::io("starting postgres"))?;
        Ok((child, log_offset))
    }

    /// Polls `postmaster.pid` until the server says it is ready: the same
    /// signal `pg_ctl start -w` waits for, and no process spawned per poll.
    fn wait_ready(
        &self,
        child: &mut Child,
        log_path: &Path,
        log_offset: u64,
    ) -> Result<(), LaunchError> {
        self.wait_for(child, log_path, log_offset, Until::Ready)
    }

    /// Polls `postmaster.pid` until the server reaches `until`.
    fn wait_for(
        &self,
        child: &mut Child,
        log_path: &Path,
        log_offset: u64,
        until: Until,
    ) -> Result<(), LaunchError> {
        let pid_file = self.root.join("data").join("postmaster.pid");
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Err(Exited(format!("postgres exited with {status}"))),
                Ok(None) => {}
                Err(e) => {
                    return Err(Fatal(SandboxError::Io {
                        what: "waiting for postgres".into(),
                        source: e,
                    }))
                }
            }
            if let Ok(text) = fs::read_to_string(&pid_file) {
                let lines: Vec<&str> = text.lines().collect();
                // Line 1: PID; line 8: status (starting, ready, stopping),
                // written after the lines that say where it listens.
                let status = lines.get(7).map(|l| l.trim());
                let reached = match until {
                    Until::Listening => status.is_some_and(|s| !s.is_empty()),
                    Until::Ready => status == Some("ready"),
                };
                if lines.first().map(|l| l.trim()) == Some(child.id().to_string().as_str())
                    && reached
                {
                    return Ok(());
                }
            }
            if started.elapsed() > START_DEADLINE {
                return Err(Fatal(SandboxError::StartTimeout {
                    waited: START_DEADLINE,
                    log: tail(&read_log_since(log_path, log_offset)),
                    log_path: log_path.to_path_buf(),
                }));
            }
            std::thread::sleep(POLL);
        }
    }
}

/// What [`Setup::wait_for`] waits for.
#[derive(Debug, Clone, Copy)]
enum Until {
    /// The postmaster listens (it may still refuse logins while it starts
    /// up or recovers).
    Listening,
    /// It accepts logins.
    Ready,
}

enum LaunchError {
    /// The server exited during start-up (maybe because the port was taken).
    Exited(String),
    /// Anything else: give up.
    Fatal(SandboxError),
}
use LaunchError::{Exited, Fatal};

/// Whether the server's log says its port was in use.
fn port_taken(log: &str) -> bool {
    log.contains("could not bind") || log.contains("Address already in use")
}

/// A port that was free a moment ago (the kernel's pick for port 0).
fn free_port() -> Result<u16, SandboxError> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(SandboxError::io("finding a free port on 127.0.0.1"))
}

fn read_log_since(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.seek(SeekFrom::Start(offset));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Runs `command` with `input` on stdin (written from a second thread, so
/// that a large output cannot deadlock against a large input).
fn run_with_stdin(command: &mut Command, input: &str, what: &str) -> Result<Output, SandboxError> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(SandboxError::io(format!("running {what}")))?;
    let stdin = child.stdin.take();
    std::thread::scope(|scope| {
        if let Some(mut stdin) = stdin {
            scope.spawn(move || {
                // A write error means the program exited early; its exit
                // status and stderr tell why.
                let _ = stdin.write_all(input.as_bytes());
            });
        }
        child.wait_with_output()
    })
    .map_err(SandboxError::io(format!("running {what}")))
}

fn command_error(what: String, output: &Output) -> SandboxError {
    let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    SandboxError::Command {
        what,
        status: output.status,
        stderr,
    }
}

/// The effective UID: `/proc/self` belongs to it. Falls back to `id -u`
/// where there is no `/proc`.
fn effective_uid() -> Result<u32, SandboxError> {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    id(&["-u"])
}

/// UID and GID of the `postgres` OS user (`id` also asks NSS, unlike a
/// look at /etc/passwd).
fn postgres_os_user() -> Result<RunAs, SandboxError> {
    match (id(&["-u", OS_USER]), id(&["-g", OS_USER])) {
        (Ok(uid), Ok(gid)) if uid != 0 => Ok(RunAs { uid, gid }),
        _ => Err(SandboxError::NoPostgresUser),
    }
}

fn id(args: &[&str]) -> Result<u32, SandboxError> {
    let output = Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(SandboxError::io("running id"))?;
    if !output.status.success() {
        return Err(command_error(format!("id {}", args.join(" ")), &output));
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|e| SandboxError::Io {
            what: format!("parsing the output of id {}", args.join(" ")),
            source: std::io::Error::other(e),
        })
}

/// `"a"b` → `"""a""b"` (an SQL identifier, any characters).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `it's` → `'it''s'` (with standard_conforming_strings, on since 9.1,
/// backslashes are ordinary characters).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Dollar-quotes `body` with a tag that does not occur in it.
fn dollar_quote(body: &str) -> String {
    let mut tag = String::from("$pgtier$");
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$pgtier{n}$");
    }
    format!("{tag}{body}{tag}")
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for
/// user names, passwords and database names in URLs.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(dollar_quote("x"), "$pgtier$x$pgtier$");
        assert_eq!(dollar_quote("$pgtier$"), "$pgtier1$$pgtier$$pgtier1$");
        assert_eq!(percent_encode("a b@c/d"), "a%20b%40c%2Fd");
    }
}
