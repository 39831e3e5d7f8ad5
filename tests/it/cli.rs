//! The `pgtier` command line: `check` explains a bad config in one line
//! with its location and exits 2, and warns about an open operator API;
//! `--help` names the commands; `gen-cert` writes a usable pair; and the
//! running binary itself: SIGHUP reloads, SIGINT/SIGTERM drain and stop,
//! `worker_threads = 1` is one thread.

use crate::common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use tokio_postgres::error::SqlState;

fn pgtier(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgtier"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run pgtier")
}

fn write_config(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn check_accepts_a_valid_config() {
    let (_dir, path) = write_config(
        "[tls]\nmode = \"disable\"\n[quota]\nuser = \"q\"\n[tenants.acme]\ntier = \"standard\"\n",
    );
    let out = pgtier(&["check", "--config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

#[test]
fn check_names_line_and_key_of_a_bad_value_and_exits_2() {
    let (_dir, path) = write_config(
        "listen = \"127.0.0.1:6432\"\n[tls]\nmode = \"disable\"\n[tiers.free]\nmax_connections = \"two\"\n",
    );
    let out = pgtier(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("line 5"), "{stderr}");
    assert!(stderr.contains("max_connections"), "{stderr}");
}

#[test]
fn run_with_a_missing_certificate_fails_cleanly_with_2() {
    let (_dir, path) = write_config(
        "[tls]\ncert = \"/nonexistent/server.crt\"\nkey = \"/nonexistent/server.key\"\n[quota]\nuser = \"q\"\n",
    );
    let out = pgtier(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/server.crt"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unknown_keys_and_tiers_are_errors() {
    let (_dir, path) = write_config("[tls]\nmode = \"disable\"\n[tenants.x]\ntier = \"gold\"\n");
    let out = pgtier(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tenants.x.tier"));
}

#[test]
fn environment_overrides_reach_check() {
    let (_dir, path) = write_config("[tls]\nmode = \"disable\"\n");
    let out = Command::new(env!("CARGO_BIN_EXE_pgtier"))
        .args(["check", "--config", path.to_str().unwrap()])
        .env("PGTIER_CLUSTER__PORT", "not-a-port")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PGTIER_CLUSTER__PORT"));
}

#[test]
fn help_explains_the_commands() {
    let out = pgtier(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["check", "demo", "run", "--config"] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
}

#[test]
fn the_shipped_proxy_toml_is_valid_apart_from_its_certificate() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")).unwrap();
    let config = pgtier::config::Config::from_toml_str(&text).expect("proxy.toml parses");
    assert_eq!(config.limits_for("hobby").max_connections, 3);
    assert_eq!(config.limits_for("acme_prod").max_connections, 0);
    assert_eq!(config.limits_for("someone_else").max_connections, 2);
    assert_eq!(config.auth.mode, pgtier::config::AuthMode::Proxy);
    assert_eq!(
        config.auth.auth_query,
        pgtier_testkit::sandbox::VERIFIER_QUERY
    );
}

#[test]
fn check_warns_about_an_operator_api_open_to_others_without_a_token() {
    let base =
        "[tls]\nmode = \"require\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n[quota]\nuser = \"q\"\n";
    let cases = [
        ("admin_listen = \"0.0.0.0:9930\"\n", true),
        (
            "admin_listen = \"0.0.0.0:9930\"\nadmin_token = \"t\"\n",
            false,
        ),
        ("admin_listen = \"127.0.0.1:9930\"\n", false),
    ];
    for (top, warned) in cases {
        // `check` loads the certificate too: give it a real pair.
        let dir = tempfile::tempdir().unwrap();
        let certs = pgtier_testkit::sandbox::Certs::generate(dir.path()).unwrap();
        let text = format!("{top}{base}")
            .replace("c.pem", &certs.cert_path.display().to_string())
            .replace("k.pem", &certs.key_path.display().to_string());
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, text).unwrap();
        let out = pgtier(&["check", "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{top}: {stderr}");
        let warning = stderr
            .lines()
            .any(|l| l.starts_with("warning: ") && l.contains("admin_token is not set"));
        assert_eq!(warning, warned, "{top}: {stderr}");
    }
}

#[tokio::test]
async fn gen_cert_writes_a_pair_that_the_proxy_serves_and_clients_verify() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = pgtier(&["gen-cert", "--dir", certs.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["server.crt", "server.key", "ca.crt"] {
        assert!(certs.join(file).is_file(), "{file} written");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(certs.join("server.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "server.key is private: {mode:o}");

    // A proxy with the written pair; a client that trusts only the written
    // CA verifies it for localhost (verify-full).
    let text = common::config_text("", "require", "")
        .replace(
            &common::certs().cert_path.display().to_string(),
            &certs.join("server.crt").display().to_string(),
        )
        .replace(
            &common::certs().key_path.display().to_string(),
            &certs.join("server.key").display().to_string(),
        );
    let proxy = common::start_proxy_from(&text).await;
    let t = common::scram_tenant("gencert");
    let url = common::psql_url(proxy.addr, &t.db, &t.user, &t.password, "verify-full").replace(
        &common::encode(&common::certs().ca_path.display().to_string()),
        &common::encode(&certs.join("ca.crt").display().to_string()),
    );
    let out = common::psql_command(&url)
        .env("PGSSLROOTCERT", certs.join("ca.crt"))
        .arg("-c")
        .arg("select current_user")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), t.user);
}

/// The `pgtier` binary without colour, stdin or the caller's `PGTIER_…`
/// variables (which would override the configuration under test).
fn pgtier_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgtier"));
    command.env("NO_COLOR", "1").stdin(Stdio::null());
    for (name, _) in std::env::vars() {
        if name.starts_with("PGTIER_") {
            command.env_remove(name);
        }
    }
    command
}

/// A `pgtier` process started from a config file, its log (stderr) read
/// line by line into memory. Killed when dropped, if still running.
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
    /// Reads the log; finished once the process closed its stderr.
    reader: std::thread::JoinHandle<()>,
    addr: SocketAddr,
}

/// Removes terminal colour codes, in case the logger writes them.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Running {
    /// Starts `pgtier --config path` and waits until it accepts
    /// connections, reading its address from the log.
    async fn start(path: &Path) -> Running {
        let mut command = pgtier_command();
        command
            .args(["--config", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start pgtier");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&strip_ansi(&line));
                log.push('\n');
            }
        });
        let mut running = Running {
            child,
            log,
            reader,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        running.wait_log("accepting connections").await;
        let log = running.log();
        let addr = log
            .lines()
            .find(|l| l.contains("accepting connections"))
            .and_then(|l| l.split("listen=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no listen address in the log:\n{log}"));
        running.addr = addr;
        running
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (10 s at most) for a log line containing `needle`.
    async fn wait_log(&mut self, needle: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "pgtier exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < end,
                "pgtier did not log {needle:?} in 10 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name}");
    }

    /// Waits for the process to exit within `within` and returns its
    /// status, once its log has been read to the end.
    async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for pgtier") {
                while !self.reader.is_finished() {
                    assert!(Instant::now() < end, "pgtier's stderr still open");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                return status;
            }
            assert!(
                Instant::now() < end,
                "pgtier still running after {within:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` as `dir/proxy.toml` and returns its path.
fn config_file(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn sighup_reloads_the_file_and_a_changed_listen_is_logged() {
    let t = common::scram_tenant("hup");
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_text("", "require", "");
    let path = config_file(dir.path(), &text);
    let mut proxy = Running::start(&path).await;
    let (_s1, _c1) = common::connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let (_s2, _c2) = common::connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let err = common::connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));

    // Upgrade the tenant and move the listener in the file; SIGHUP.
    let changed = common::config_text(
        "",
        "require",
        &format!("[tenants.{}]\ntier = \"standard\"\n", t.db),
    )
    .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"");
    std::fs::write(&path, changed).unwrap();
    proxy.signal("HUP");
    proxy.wait_log("configuration reloaded").await;
    let log = proxy.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("listen address changed: it takes effect only after a restart")),
        "{log}"
    );
    // The new limit applies at once, on the old address.
    let (s3, _c3) = common::connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .expect("a third session after SIGHUP upgraded the tenant");
    s3.simple_query("select 1").await.unwrap();
    assert!(proxy.child.try_wait().unwrap().is_none(), "still running");
}

#[tokio::test]
async fn sigterm_drains_until_the_last_session_ends_then_exits_0() {
    let t = common::scram_tenant("term");
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(
        dir.path(),
        &common::config_text("shutdown_grace = \"60s\"\n", "require", ""),
    );
    let mut proxy = Running::start(&path).await;
    let (client, conn) = common::connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    proxy.signal("TERM");
    proxy.wait_log("shutting down: no new connections").await;
    // Draining: the session works, new connections are refused.
    let row = client.query_one("select 6 * 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert!(common::connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .is_err());
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "waits for the session"
    );
    // The last session ends: the proxy exits long before its 60 s grace.
    drop(client);
    let _ = conn.await;
    let status = proxy.exited(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}\n{}", proxy.log());
    assert!(proxy.log().contains("shutdown complete"));
}

#[tokio::test]
async fn sigint_drains_for_the_grace_period_then_closes_with_57p01() {
    let t = common::scram_tenant("int");
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(
        dir.path(),
        &common::config_text("shutdown_grace = \"1s\"\n", "require", ""),
    );
    let mut proxy = Running::start(&path).await;
    let (client, conn) = common::connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let signalled = Instant::now();
    proxy.signal("INT");
    proxy.wait_log("shutting down: no new connections").await;
    client
        .simple_query("select 1")
        .await
        .expect("the session outlives the start of the drain");
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("closed after the grace period")
        .unwrap();
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "closed before the grace ran out"
    );
    let err = ended.expect_err("closed with the proxy's FATAL");
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err}");
    let status = proxy.exited(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}\n{}", proxy.log());
}

/// Threads of process `pid` now.
fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn shared_threading_with_one_worker_serves_everything_on_one_thread() {
    let t = common::scram_tenant("onethread");
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(
        dir.path(),
        &common::config_text(
            "worker_threads = 1\nthreading = \"shared\"\n",
            "require",
            "",
        ),
    );
    let proxy = Running::start(&path).await;
    // The runtime is the main thread alone (one worker per core would add
    // a thread per core here).
    assert_eq!(
        threads_of(proxy.pid()),
        1,
        "threads of a threading = \"shared\", worker_threads = 1 proxy"
    );
    // Two sessions and a cancel, all interleaved on that thread.
    let (a, _ca) = common::connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let (b, _cb) = common::connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let token = a.cancel_token();
    let sleeper = tokio::spawn(async move { a.simple_query("select pg_sleep(30)").await });
    common::wait_until_running(&t.db, "select pg_sleep", "pg_sleep to run").await;
    let row = b.query_one("select 1 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    token.cancel_query(common::tls_connector()).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the cancel took effect")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
}

/// `pgtier demo` as a child: its stdout gathered line by line. Stopped
/// with SIGINT on drop (so its cluster is removed), killed if that fails.
struct Demo {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Demo {
    fn start(listen: SocketAddr) -> Demo {
        let mut command = pgtier_command();
        command
            .args(["demo", "--listen", &listen.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start pgtier demo");
        let out = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = Arc::clone(&out);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut out = sink.lock().unwrap();
                    out.push_str(&strip_ansi(&line));
                    out.push('\n');
                }
            });
        }
        Demo { child, out }
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits (`within` at most) for output containing `needle`.
    async fn wait_for(&mut self, needle: &str, within: Duration) {
        let end = Instant::now() + within;
        while !self.output().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the demo exited ({status}):\n{}", self.output());
            }
            assert!(
                Instant::now() < end,
                "the demo did not print {needle:?} in {within:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `psql '…'` URLs it printed, in order (free, then standard).
    fn urls(&self) -> Vec<String> {
        self.output()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("psql '"))
            .filter_map(|l| l.strip_suffix('\''))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-s", "INT", &self.child.id().to_string()])
                .status();
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// tokio-postgres on one of the demo's URLs: the CA from its
/// `sslrootcert`, verified for `localhost` (verify-full).
async fn demo_client(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let (base, query) = url.split_once('?').expect("a query string");
    let ca = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("sslrootcert="))
        .expect("sslrootcert");
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
        rustls::ClientConfig::builder_with_provider(pgtier::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let (client, conn) = tokio_postgres::connect(&format!("{base}?sslmode=require"), tls).await?;
    Ok((
        client,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    ))
}

/// The README's first command: `pgtier demo` starts a cluster and a proxy
/// in proxy-mode authentication, prints URLs that work as printed (psql
/// with verify-full), and its free tenant has the free tier's limits; on
/// SIGINT it stops and says it removed everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_urls_that_work_and_a_free_tier_that_holds() {
    let listen: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut demo = Demo::start(listen);
    demo.wait_for("Ctrl-C stops", Duration::from_secs(120))
        .await;
    let urls = demo.urls();
    assert_eq!(urls.len(), 2, "two URLs:\n{}", demo.output());
    let (free, standard) = (&urls[0], &urls[1]);
    assert!(free.contains("sslmode=verify-full"), "{free}");

    // As printed, with the newest psql (libpq's own TLS verification).
    let (_, psql) = common::newest_psql();
    let out = tokio::process::Command::new(&psql)
        .args(["-X", "-A", "-t", "-d", free, "-c"])
        .arg("SELECT current_user")
        .env_remove("PGSSLROOTCERT")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hobby_user");

    // The free tier: no extensions, two connections.
    let (one, _c1) = demo_client(free).await.unwrap();
    let e = one
        .batch_execute("CREATE EXTENSION hstore")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    // Its rows: 20,000 in, then the next insert refused once measured
    // (the demo counts every 5 s).
    one.batch_execute("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 20000)")
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        match one.batch_execute("INSERT INTO t VALUES (0)").await {
            Err(e) => break e,
            Ok(()) => assert!(Instant::now() < end, "never refused past the row limit"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        refused.code(),
        Some(&SqlState::CONFIGURATION_LIMIT_EXCEEDED),
        "{refused}"
    );
    let message = common::message(&refused);
    // Exact from the tags, or a lower bound when a measurement that stops
    // counting past the limit overlapped the INSERT.
    assert!(
        (message.starts_with("row limit exceeded: database \"hobby\" holds 20,0")
            || message
                .starts_with("row limit exceeded: database \"hobby\" holds more than 10,000"))
            && message.ends_with("rows; the free tier allows 10,000"),
        "{message}"
    );
    let (_two, _c2) = demo_client(free).await.unwrap();
    let e = match demo_client(free).await {
        Ok(_) => panic!("a third connection accepted"),
        Err(e) => e,
    };
    assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e}");
    // The standard tier has no cap.
    let mut standards = Vec::new();
    for _ in 0..3 {
        standards.push(demo_client(standard).await.unwrap());
    }
    // A wrong password is refused by pgtier itself (proxy mode).
    let at = free.find('@').expect("user:password@ in the URL");
    let colon = free[..at].rfind(':').expect("user:password@ in the URL");
    let wrong = format!("{}not-the-password{}", &free[..=colon], &free[at..]);
    let e = match demo_client(&wrong).await {
        Ok(_) => panic!("a wrong password accepted"),
        Err(e) => e,
    };
    assert_eq!(e.code(), Some(&SqlState::INVALID_PASSWORD), "{e}");
    demo.wait_for("wrong_password", Duration::from_secs(5))
        .await;
    drop((one, standards));

    let status = {
        Command::new("kill")
            .args(["-s", "INT", &demo.child.id().to_string()])
            .status()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = demo.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < end,
                "the demo did not stop:\n{}",
                demo.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(status.success(), "{status}:\n{}", demo.output());
    demo.wait_for(
        "Demo cluster and certificates removed.",
        Duration::from_secs(5),
    )
    .await;
}
