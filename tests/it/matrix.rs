//! The version matrix: this binary's cluster runs the PostgreSQL major that
//! `TEST_PG_MAJOR` names (`scripts/test.sh` runs every integration test
//! binary against 15, 17 and 18), and clients with libpq 15, 18 and the
//! cluster's own reach it through the proxy. Where versions genuinely
//! differ, each version's behaviour is asserted: nothing is skipped.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    cluster, connect, pg_major, psql_of, psql_url, read_message as read_msg, scram_tenant,
    start_proxy,
};
use pgtier_testkit::sandbox::{Cluster, ClusterOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_postgres::error::SqlState;

/// Runs `sql` with `psql` against `url` and returns its trimmed stdout,
/// failing the test with psql's stderr if it fails.
async fn psql_ok(psql: &Path, url: &str, sql: &str) -> String {
    let out = common::psql_command_of(psql, url)
        .arg("-c")
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {}: {e}", psql.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        psql.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The version line of a `psql` binary (`psql (PostgreSQL) 18.6`).
async fn psql_version(psql: &Path) -> String {
    let out = tokio::process::Command::new(psql)
        .arg("--version")
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {} --version: {e}", psql.display()));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn the_cluster_runs_the_expected_major() {
    let major = pg_major();
    let c = cluster();
    assert_eq!(c.major_version(), major, "the sandbox's word");

    // The server's own word, through the proxy.
    let proxy = start_proxy("").await;
    let t = scram_tenant("mx_version");
    let (client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .expect("login through the proxy");
    let num: i32 = client
        .query_one("select current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(num / 10_000, major as i32, "server_version_num {num}");

    // The cluster's own psql is of the same major (tests that use
    // common::psql_binary run the libpq that belongs to the server).
    let version = psql_version(&common::psql_binary()).await;
    assert!(
        version.contains(&format!("(PostgreSQL) {major}.")),
        "{version}"
    );
}

#[tokio::test]
async fn scram_pass_through_with_tokio_postgres() {
    let proxy = start_proxy("").await;
    let t = scram_tenant("mx_scram");
    let stored = cluster()
        .psql(
            "postgres",
            &format!(
                "select left(rolpassword, 14) from pg_authid where rolname = '{}'",
                t.user
            ),
        )
        .unwrap();
    assert_eq!(stored, "SCRAM-SHA-256$", "the role has a SCRAM verifier");

    let (client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .expect("SCRAM login through the proxy");
    let row = client
        .query_one("select current_user::text, current_database()::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), t.user);
    assert_eq!(row.get::<_, String>(1), t.db);

    // How the cluster authenticated the session: SYSTEM_USER (16+) says
    // it verified SCRAM itself, so the proxy passed the exchange through.
    // Before 16 the word is no keyword, just an unknown column.
    let system_user = client.query_one("select system_user", &[]).await;
    if pg_major() >= 16 {
        let row = system_user.expect("SYSTEM_USER exists since PostgreSQL 16");
        assert_eq!(row.get::<_, String>(0), format!("scram-sha-256:{}", t.user));
    } else {
        let err = system_user.expect_err("no SYSTEM_USER before PostgreSQL 16");
        assert_eq!(err.code(), Some(&SqlState::UNDEFINED_COLUMN), "{err}");
    }

    let Err(err) = connect(proxy.addr, &t.db, &t.user, "wrong").await else {
        panic!("a wrong password must not log in");
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

#[tokio::test]
async fn scram_pass_through_with_psql_15_and_18() {
    let proxy = start_proxy("").await;
    let t = scram_tenant("mx_psql");
    let url = psql_url(proxy.addr, &t.db, &t.user, &t.password, "verify-full");
    for client_major in [15, 18] {
        let psql = psql_of(client_major);
        let version = psql_version(&psql).await;
        assert!(
            version.contains(&format!("(PostgreSQL) {client_major}.")),
            "{}: {version}",
            psql.display()
        );
        let out = psql_ok(
            &psql,
            &url,
            "select current_user || ' ' || current_setting('server_version_num')",
        )
        .await;
        let (user, num) = out
            .split_once(' ')
            .unwrap_or_else(|| panic!("psql {client_major} printed {out:?}"));
        assert_eq!(user, t.user, "psql {client_major}");
        let num: u32 = num.parse().unwrap();
        assert_eq!(num / 10_000, pg_major(), "psql {client_major}");
    }
}

/// A second cluster of the version under test that serves TLS itself, for
/// what only the cluster's own TLS can show.
fn tls_cluster() -> Cluster {
    Cluster::start(ClusterOptions {
        ssl: true,
        max_connections: 20,
        installation: common::installation(),
        ..ClusterOptions::default()
    })
    .unwrap_or_else(|e| panic!("starting a TLS cluster: {e}"))
}

#[tokio::test]
async fn direct_tls_with_the_newest_psql() {
    let (client_major, psql) = common::newest_psql();
    assert!(
        client_major >= 18,
        "the newest psql is {client_major} ({}): run scripts/ensure-deps.sh --pg 18",
        psql.display()
    );

    // Through the proxy: direct TLS (no SSLRequest, ALPN `postgresql`) is
    // the proxy's own handshake, so it works whatever the cluster runs.
    let proxy = start_proxy("").await;
    let t = scram_tenant("mx_direct");
    let url = format!(
        "{}&sslnegotiation=direct",
        psql_url(proxy.addr, &t.db, &t.user, &t.password, "verify-full")
    );
    let out = psql_ok(&psql, &url, "select current_user").await;
    assert_eq!(out, t.user);

    // Straight to a TLS cluster of the same version: only 17 and later
    // understand a connection that opens with a TLS ClientHello; 15 takes
    // it for a malformed startup packet and hangs up.
    let tls = tokio::task::spawn_blocking(tls_cluster).await.unwrap();
    let ca = &tls.certs().expect("ssl cluster has certificates").ca_path;
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}&sslnegotiation=direct&connect_timeout=10",
        tls.url("postgres", tls.superuser(), tls.superuser_password()),
        common::encode(&ca.display().to_string())
    );
    let out = common::psql_command_of(&psql, &url)
        .arg("-c")
        .arg("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if pg_major() >= 17 {
        assert!(
            out.status.success(),
            "direct TLS to {}: {stderr}",
            pg_major()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
    } else {
        assert!(
            !out.status.success(),
            "PostgreSQL {} accepted direct TLS",
            pg_major()
        );
        let log = std::fs::read_to_string(tls.log_path()).unwrap_or_default();
        assert!(
            log.contains("invalid length of startup packet"),
            "psql said: {stderr}\nserver log:\n{log}"
        );
    }
}

/// libpq's shared library beside a `psql` (`bin/../lib/libpq.so.5`, as in
/// the pinned downloads, whose programs load it through their run path).
fn libpq_beside(psql: &Path) -> PathBuf {
    let lib = psql
        .parent()
        .and_then(Path::parent)
        .map(|root| root.join("lib").join("libpq.so.5"))
        .filter(|lib| lib.is_file());
    lib.unwrap_or_else(|| panic!("no lib/libpq.so.5 beside {}", psql.display()))
}

/// What became of a query that libpq 18's new cancel API cancelled.
struct CancelOutcome {
    /// `PQcancelBlocking`'s verdict: `Err` holds libpq's message.
    reported: Result<(), String>,
    /// The query's SQLSTATE (57014 when it was cancelled).
    sqlstate: String,
}

/// Runs `select pg_sleep(30)` through the proxy and cancels it with libpq
/// 18's `PQcancelBlocking` (tests/support/libpq_cancel.py, through ctypes:
/// psql's Ctrl-C still uses the old `PQcancel`, and no Rust client has the
/// new API), which sends the CancelRequest over the session's own kind of
/// TLS and then waits for the server to close the connection.
async fn cancel_with_libpq_18(url: &str, db: &str) -> CancelOutcome {
    let libpq = libpq_beside(&psql_of(18));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/libpq_cancel.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&libpq)
        .arg(url)
        .env("PGSSLROOTCERT", &common::certs().ca_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 (scripts/ensure-deps.sh needs it too)");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut script_out = ScriptOutput {
        lines: BufReader::new(child.stdout.take().expect("piped stdout")).lines(),
        stderr: child.stderr.take().expect("piped stderr"),
    };
    let version = script_out.next().await;
    let num: u32 = version
        .strip_prefix("libpq ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{version:?}"));
    assert_eq!(num / 10_000, 18, "{}", libpq.display());
    let running = script_out.next().await;
    assert!(running.starts_with("running "), "{running:?}");
    common::wait_until_running(db, "select pg_sleep", "pg_sleep to run").await;
    let cancelled_at = Instant::now();
    stdin
        .write_all(b"cancel\n")
        .await
        .expect("writing to the script");
    let reported = match script_out.next().await.as_str() {
        "cancel sent" => Ok(()),
        other => Err(other.to_owned()),
    };
    let ended = script_out.next().await;
    let sqlstate = ended
        .strip_prefix("query ended ")
        .unwrap_or_else(|| panic!("{ended:?}"))
        .to_owned();
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(10),
        "the query ran on for {:?} after the cancel",
        cancelled_at.elapsed()
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("libpq_cancel.py exits")
        .expect("waiting for libpq_cancel.py");
    assert!(status.success(), "{status}");
    CancelOutcome { reported, sqlstate }
}

/// The script's stdout line by line, with a deadline per line; its stderr
/// goes into the panic message.
struct ScriptOutput {
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: tokio::process::ChildStderr,
}

impl ScriptOutput {
    async fn next(&mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(20), self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => {
                let mut text = String::new();
                let _ = self.stderr.read_to_string(&mut text).await;
                panic!("libpq_cancel.py: {other:?}; stderr: {text}")
            }
        }
    }
}

/// The URL of a new tenant through `proxy` with `sslnegotiation`.
fn cancel_url(proxy: &common::TestProxy, negotiation: &str) -> (String, String) {
    let t = scram_tenant(&format!("mx_cancel_{negotiation}"));
    let url = format!(
        "{}&sslnegotiation={negotiation}",
        psql_url(proxy.addr, &t.db, &t.user, &t.password, "verify-full")
    );
    (url, t.db)
}

#[tokio::test]
async fn libpq_18_cancel_api_cancels_through_the_proxy() {
    let proxy = start_proxy("").await;
    for negotiation in ["postgres", "direct"] {
        let (url, db) = cancel_url(&proxy, negotiation);
        let outcome = cancel_with_libpq_18(&url, &db).await;
        assert_eq!(
            outcome.sqlstate, "57014",
            "sslnegotiation={negotiation}: the query was not cancelled ({:?})",
            outcome.reported
        );
    }
}

/// libpq 17+ reads the cancel connection until the server closes it and
/// takes a TLS connection that ends without close_notify for an error
/// ("SSL error: unexpected eof while reading", OpenSSL 3), as PostgreSQL
/// itself always sends one. The proxy closes the client's cancel
/// connection with close_notify, once the cluster has acted on the cancel,
/// so `PQcancelBlocking` reports the success it had.
#[tokio::test]
async fn libpq_18_cancel_api_reports_success_through_the_proxy() {
    let proxy = start_proxy("").await;
    for negotiation in ["postgres", "direct"] {
        let (url, db) = cancel_url(&proxy, negotiation);
        let outcome = cancel_with_libpq_18(&url, &db).await;
        assert_eq!(outcome.reported, Ok(()), "sslnegotiation={negotiation}");
        assert_eq!(outcome.sqlstate, "57014", "sslnegotiation={negotiation}");
    }
}

fn cancel_packet(pid: &[u8], secret: &[u8]) -> Vec<u8> {
    common::cancel_request(&[pid, secret].concat())
}

/// Sends a CancelRequest and waits until the proxy closes the connection,
/// which it does only once the cluster has acted on it.
async fn send_cancel(addr: std::net::SocketAddr, packet: &[u8]) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(packet).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "cancel connection closed cleanly: {closed:?}"
    );
}

/// A client that asks for protocol 3.2: against PostgreSQL 18 the session
/// runs at 3.2 and gets a 32-byte cancel secret of the proxy's own, which
/// cancels; against 15 and 17 it is negotiated down to 3.0 (a full version
/// number in NegotiateProtocolVersion) with a 4-byte secret.
#[tokio::test]
async fn protocol_3_2_is_spoken_where_the_cluster_speaks_it() {
    let proxy = common::start_proxy_with("", "").await;
    let t = common::trust_tenant("mx_proto32");
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let msgs = common::raw_login(&mut s, &t.user, &t.db, &t.password, (3 << 16) | 2).await;
    let mut negotiated = None;
    let mut key = None;
    for (tag, body) in msgs {
        match tag {
            b'v' => negotiated = Some(u32::from_be_bytes(body[..4].try_into().unwrap())),
            b'K' => key = Some(body),
            b'E' => panic!("login failed: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
    let key = key.expect("BackendKeyData");
    let (pid, secret) = key.split_at(4);
    if pg_major() >= 18 {
        assert_eq!(negotiated, None, "3.2 accepted as asked: no negotiation");
        assert_eq!(secret.len(), 32, "a long secret of the proxy's own");
    } else {
        assert_eq!(
            negotiated,
            Some(3 << 16),
            "down to 3.0, as a full version number"
        );
        assert_eq!(secret.len(), 4);
    }

    // A key with a changed secret, or (3.2) with its first 4 bytes only, is
    // not the key: the query survives.
    let sleep = |secs: u32| {
        let sql = format!("SELECT pg_sleep({secs}), 'survived'\0");
        let mut out = vec![b'Q'];
        out.extend(((sql.len() + 4) as u32).to_be_bytes());
        out.extend(sql.as_bytes());
        out
    };
    let active = |what: &str| {
        format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE 'SELECT pg_sleep({what})%' AND state = 'active'",
            t.db
        )
    };
    s.write_all(&sleep(1)).await.unwrap();
    common::wait_for_cluster(&active("1"), "1", "the short sleep running").await;
    let mut wrong = secret.to_vec();
    *wrong.last_mut().unwrap() ^= 1;
    send_cancel(proxy.addr, &cancel_packet(pid, &wrong)).await;
    if secret.len() > 4 {
        send_cancel(proxy.addr, &cancel_packet(pid, &secret[..4])).await;
    }
    let mut tags = Vec::new();
    loop {
        let (tag, _) = read_msg(&mut s).await;
        tags.push(tag);
        if tag == b'Z' {
            break;
        }
    }
    assert!(!tags.contains(&b'E'), "a partial key cancelled the query");

    // The whole key cancels.
    s.write_all(&sleep(60)).await.unwrap();
    common::wait_for_cluster(&active("60"), "1", "the long sleep running").await;
    let started = Instant::now();
    send_cancel(proxy.addr, &cancel_packet(pid, secret)).await;
    let (tag, body) = loop {
        let (tag, body) = read_msg(&mut s).await;
        if tag == b'E' || tag == b'Z' {
            break (tag, body);
        }
    };
    assert_eq!(tag, b'E', "the query was cancelled");
    assert_eq!(
        pgtier::protocol::error::sqlstate_of(&body),
        Some("57014"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// libpq 18 with `max_protocol_version=latest` logs in through the proxy
/// against every cluster: at 3.2 on 18, negotiated down to 3.0 elsewhere
/// (before the fix libpq read the proxy's answer as a downgrade below 3.0
/// and gave up).
#[tokio::test]
async fn libpq_18_asking_for_the_latest_protocol_logs_in() {
    let proxy = start_proxy("").await;
    let t = scram_tenant("mx_latest");
    let url = format!(
        "{}&max_protocol_version=latest",
        psql_url(proxy.addr, &t.db, &t.user, &t.password, "verify-full")
    );
    let info = psql_ok(&psql_of(18), &url, "\\conninfo").await;
    let expected = if pg_major() >= 18 { "3.2" } else { "3.0" };
    let line = info
        .lines()
        .find(|l| l.starts_with("Protocol Version"))
        .unwrap_or_else(|| panic!("no protocol version in {info:?}"));
    assert_eq!(line, format!("Protocol Version|{expected}"), "{info}");
}
