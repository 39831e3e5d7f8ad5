//! What the hardening tests (`tests/it/faults.rs`, `tests/it/integrity.rs`,
//! `tests/it/leaks.rs`) share beyond `tests/it/common`: a cluster of a test's
//! own (for tests that stop it), the `pgtier` binary as a child process
//! (for tests that measure its memory or signal it), and a raw protocol
//! client (for states no real client library reaches on purpose).
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgtier_testkit::sandbox::{Cluster, ClusterOptions};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::common;

/// A cluster of the test's own, of the version under test, where roles in
/// `trust_users` log in without a password: for tests that stop, crash or
/// restart it, which would break every other test on the shared one.
pub fn own_cluster() -> Cluster {
    let cluster = Cluster::start(ClusterOptions {
        max_connections: 300,
        ssl: false,
        extra_hba: vec![format!(
            "host all +{} 127.0.0.1/32 trust",
            common::TRUST_GROUP
        )],
        installation: common::installation(),
    })
    .unwrap_or_else(|e| panic!("starting a cluster of the test's own: {e}"));
    cluster
        .create_group(common::TRUST_GROUP)
        .unwrap_or_else(|e| panic!("creating the trust group: {e}"));
    // Proxy mode: the `[auth]` table of [`common::config_text`] names the
    // shared cluster's auth role; the same role exists here too.
    if common::proxy_auth() {
        let (user, password) = common::auth_role();
        common::install_auth_role(&cluster, user, password);
    }
    cluster
}

/// A trust tenant (database and owner) on `cluster`; in proxy mode its
/// role has a password too, as [`common::trust_tenant`]'s has.
pub fn trust_tenant_on(cluster: &Cluster, prefix: &str) -> common::Tenant {
    let db = common::unique(prefix);
    let user = format!("{db}_owner");
    let password = if common::proxy_auth() {
        format!("pw-{db}")
    } else {
        String::new()
    };
    cluster
        .create_role(
            &user,
            (!password.is_empty()).then_some(password.as_str()),
            pgtier_testkit::sandbox::PasswordEncryption::Scram,
        )
        .and_then(|()| {
            cluster.psql(
                "postgres",
                &format!("GRANT {} TO {user}", common::TRUST_GROUP),
            )
        })
        .and_then(|_| cluster.create_database(&db, &user))
        .unwrap_or_else(|e| panic!("creating tenant {db}: {e}"));
    common::Tenant { db, user, password }
}

/// [`common::config_text`] pointed at a cluster listening on `port`
/// instead of the shared one.
pub fn config_for_port(port: u16, top_level: &str, tls_mode: &str, tables: &str) -> String {
    common::config_text(top_level, tls_mode, tables).replace(
        &format!("port = {}", common::cluster().port()),
        &format!("port = {port}"),
    )
}

/// The address in a "accepting connections" line, text (`listen=…`) or
/// JSON (`"listen":"…"`).
fn listen_address(line: &str) -> Option<SocketAddr> {
    let text = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="));
    let json = || {
        line.split_once("\"listen\":\"")
            .and_then(|(_, rest)| rest.split('"').next())
    };
    text.or_else(json).and_then(|a| a.parse().ok())
}

/// The `pgtier` binary running as a child process from a config file:
/// for what an in-process proxy cannot show (its own memory, its answer
/// to a signal, its exit code). Killed on drop.
pub struct ChildProxy {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every line it has logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Reads the log; finished once the process closed its stderr.
    reader: std::thread::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl ChildProxy {
    /// Starts `pgtier --config <file with text>` (its `listen` should be
    /// `127.0.0.1:0`) and waits until it says where it listens.
    pub fn start(text: &str) -> ChildProxy {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path: PathBuf = dir.path().join("proxy.toml");
        std::fs::write(&path, text).expect("writing the config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgtier"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting pgtier");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let addr = listen_address(&line);
                // The line is in the log before `start` returns with its
                // address (a caller may look for it there).
                lines.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "pgtier did not say where it listens:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        ChildProxy {
            child,
            addr,
            log,
            reader,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `VmRSS` and `VmHWM` (peak) of the process, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        (self.status_kib("VmRSS:"), self.status_kib("VmHWM:"))
    }

    /// One `kB` field of the process's `/proc/<pid>/status` (`name` with
    /// its colon, e.g. `VmPeak:`).
    pub fn status_kib(&self, name: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the proxy's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc status"))
    }

    /// Sends `signal` (a name, e.g. `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// Waits up to `deadline` for the process to exit; its exit code,
    /// once its log has been read to the end (so [`Self::log_text`] holds
    /// its last lines).
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for pgtier") {
                while !self.reader.is_finished() {
                    assert!(Instant::now() < end, "pgtier's stderr still open");
                    std::thread::sleep(Duration::from_millis(10));
                }
                return status.code();
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for ChildProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A StartupMessage (protocol 3.0) for `user` and `database`.
pub fn startup_packet(user: &str, database: &str) -> Vec<u8> {
    common::startup_packet_of(
        common::PROTOCOL_3_0,
        &[("user", user), ("database", database)],
    )
}

/// Reads one message: its tag and body.
pub async fn read_message(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<(u8, Vec<u8>)> {
    let tag = s.read_u8().await?;
    let len = s.read_u32().await? as usize;
    let mut body = vec![0; len.saturating_sub(4)];
    s.read_exact(&mut body).await?;
    Ok((tag, body))
}

/// Logs `tenant` in over plaintext (the proxy must allow it), answering
/// whatever the authentication mode asks, and returns the stream at its
/// first ReadyForQuery.
pub async fn raw_login(addr: SocketAddr, tenant: &common::Tenant) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    common::raw_login_ok(&mut s, &tenant.user, &tenant.db, &tenant.password).await;
    s
}

/// SQLSTATE of an ErrorResponse body.
pub fn sqlstate(body: &[u8]) -> Option<String> {
    pgtier::protocol::error::sqlstate_of(body).map(str::to_owned)
}

/// A small xorshift generator: random but reproducible from its seed
/// (printed by the tests that use it).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A seed from the clock, unless `TEST_SEED` gives one (to replay a run).
pub fn seed() -> u64 {
    std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// Client backends (not the proxy's quota auditor, not background
/// workers) connected to database `db` on `cluster`.
pub fn backends_in(cluster: &Cluster, db: &str) -> usize {
    cluster
        .psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' \
                 AND backend_type = 'client backend'"
            ),
        )
        .expect("counting backends")
        .trim()
        .parse()
        .expect("a count")
}

/// Waits (15 s at most) until the shared cluster has no backend in `db`
/// but the warm ones `shared` keeps for the next login (proxy mode keeps
/// some cleanly closed sessions' backends: those are the pool's, not
/// leaked). Panics with the counts otherwise.
pub async fn wait_only_warm_backends(shared: &pgtier::runtime::shared::Shared, db: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let name = db.to_owned();
        let n = tokio::task::spawn_blocking(move || backends_in(common::cluster(), &name))
            .await
            .expect("counting backends");
        let warm = shared.warm.len_of(db);
        if n == warm {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} backends left in {db} ({warm} of them warm)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
