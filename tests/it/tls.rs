//! The client leg's TLS, seen as clients see it: record sizes no larger
//! than PostgreSQL's (8 KiB of plaintext), no session tickets, and a real
//! client that waits on its socket (psycopg) never hanging mid-result.

use crate::common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cluster, connect, scram_tenant, start_proxy};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// TLS record content type of application data.
const APPLICATION_DATA: u8 = 23;
/// What TLS 1.3 adds to a record's plaintext with the AEAD suites rustls
/// offers: the inner content type byte and a 16-byte tag (no padding).
const TLS13_OVERHEAD: usize = 1 + 16;
/// What PostgreSQL puts in one record: OpenSSL writes at most 8 KiB of
/// plaintext per `SSL_write` there (PqSendBuffer). Written out, not taken
/// from the crate, so that the test fails if the crate's bound moves.
const POSTGRESQL_TLS_PLAINTEXT: usize = 8192;

/// What the relay saw of the TLS records the proxy sent.
#[derive(Debug, Default)]
struct RecordStats {
    /// Application-data records and the largest of them (ciphertext bytes).
    records: AtomicUsize,
    largest: AtomicUsize,
    /// Records whose plaintext is at least 8,000 bytes: bulk traffic really
    /// went out in full-size records, so the bound was exercised.
    near_full: AtomicUsize,
}

/// A TCP relay in front of the proxy that reads the 5-byte TLS record
/// headers of everything the proxy sends. The first byte from the proxy is
/// its answer to the client's SSLRequest; TLS records follow.
async fn record_watching_relay(proxy: SocketAddr) -> (SocketAddr, Arc<RecordStats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(RecordStats::default());
    let seen = Arc::clone(&stats);
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let upstream = TcpStream::connect(proxy).await.unwrap();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut proxy_rx, mut proxy_tx) = upstream.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_rx, &mut proxy_tx).await;
                    let _ = proxy_tx.shutdown().await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                let mut ssl_answer_seen = false;
                // Bytes of the current record body still to come, and the
                // header bytes gathered so far.
                let mut body_left = 0usize;
                let mut header = Vec::with_capacity(5);
                loop {
                    let n = match proxy_rx.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut rest = &buf[..n];
                    if !ssl_answer_seen {
                        assert_eq!(rest[0], b'S', "the proxy accepts the SSLRequest");
                        ssl_answer_seen = true;
                        rest = &rest[1..];
                    }
                    while !rest.is_empty() {
                        if body_left > 0 {
                            let take = body_left.min(rest.len());
                            body_left -= take;
                            rest = &rest[take..];
                            continue;
                        }
                        let take = (5 - header.len()).min(rest.len());
                        header.extend_from_slice(&rest[..take]);
                        rest = &rest[take..];
                        if header.len() == 5 {
                            let len = u16::from_be_bytes([header[3], header[4]]) as usize;
                            if header[0] == APPLICATION_DATA {
                                seen.records.fetch_add(1, Ordering::Relaxed);
                                seen.largest.fetch_max(len, Ordering::Relaxed);
                                if len >= 8_000 + TLS13_OVERHEAD {
                                    seen.near_full.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            body_left = len;
                            header.clear();
                        }
                    }
                    if client_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = client_tx.shutdown().await;
                let _ = up.await;
            });
        }
    });
    (addr, stats)
}

#[tokio::test]
async fn tls_records_carry_at_most_8_kib_of_plaintext() {
    let proxy = start_proxy("").await;
    let t = scram_tenant("records");
    let (relay, stats) = record_watching_relay(proxy.addr).await;
    let (client, _conn) = connect(relay, &t.db, &t.user, &t.password)
        .await
        .expect("login through the relay");

    // A large result: 50 rows of 100 kB.
    let rows = client
        .query(
            "SELECT repeat('x', 100000) FROM generate_series(1, 50)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 50);

    // A large COPY OUT: 20,000 rows of ~500 bytes.
    let copy = client
        .copy_out("COPY (SELECT g, repeat('y', 500) FROM generate_series(1, 20000) g) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<_> = copy.collect().await;
    let copied: usize = chunks.into_iter().map(|c| c.unwrap().len()).sum();
    assert!(copied > 20000 * 500, "copied {copied} bytes");

    // A 20 MB row.
    let row = client
        .query_one("SELECT repeat('z', 20 * 1024 * 1024)", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0).len(), 20 * 1024 * 1024);

    let largest = stats.largest.load(Ordering::Relaxed);
    let near_full = stats.near_full.load(Ordering::Relaxed);
    let records = stats.records.load(Ordering::Relaxed);
    assert!(
        largest <= POSTGRESQL_TLS_PLAINTEXT + TLS13_OVERHEAD,
        "an application-data record of {largest} bytes carries more than 8 KiB of plaintext"
    );
    // ~35 MB went through: thousands of records, nearly all of them full.
    assert!(
        near_full > 3_000,
        "only {near_full} near-full records of {records}: the bulk traffic did not exercise the bound"
    );
}

/// Connects with rustls by hand (SSLRequest, then TLS) and logs in up to
/// ReadyForQuery, so that any session ticket the proxy sends after the
/// handshake has arrived; returns how the handshake went.
async fn handshake_kind(
    proxy: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    t: &common::Tenant,
) -> rustls::HandshakeKind {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S');
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    common::raw_login_ok(&mut tls, &t.user, &t.db, &t.password).await;
    let kind = tls
        .get_ref()
        .1
        .handshake_kind()
        .expect("handshake complete");
    let _ = tls.write_all(&[b'X', 0, 0, 0, 4]).await;
    kind
}

#[tokio::test]
async fn no_session_tickets_so_no_resumption_as_with_postgresql() {
    let proxy = start_proxy("").await;
    let t = common::trust_tenant("tickets");
    // One client configuration, with rustls' default session cache: it
    // resumes whenever the server has handed it a ticket.
    let config = Arc::new(common::client_tls_config());
    for attempt in 0..2 {
        let kind = handshake_kind(proxy.addr, Arc::clone(&config), &t).await;
        assert_eq!(
            kind,
            rustls::HandshakeKind::Full,
            "connection {attempt} resumed a TLS session: the proxy issued a ticket"
        );
    }
}

/// The virtualenv `scripts/ensure-deps.sh` installs psycopg into.
fn venv_python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/ensure-deps.sh (the README's test command does)",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_waiting_on_its_socket_never_hangs_mid_result() {
    let proxy = start_proxy("").await;
    let t = scram_tenant("psycopg");
    // 1,000 rows of ~140 bytes; the script copies between 20 and 1,000 of
    // them at a time (the report that found the hang copied ~40 KB).
    cluster()
        .psql(
            &t.db,
            &format!(
                "CREATE TABLE t AS SELECT g, repeat(md5(g::text), 4) AS s FROM generate_series(1, 1000) g; \
                 ALTER TABLE t OWNER TO {}",
                t.user
            ),
        )
        .unwrap();
    let dsn = format!(
        "host=localhost hostaddr={} port={} dbname={} user={} password={} sslmode=verify-full sslrootcert={}",
        proxy.addr.ip(),
        proxy.addr.port(),
        t.db,
        t.user,
        t.password,
        common::certs().ca_path.display()
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/psycopg_rounds.py");
    let child = tokio::process::Command::new(venv_python())
        .arg(script)
        .arg(&dsn)
        .arg("200")
        .env("PSYCOPG_IMPL", "python")
        .kill_on_drop(true)
        .output();
    // The script has its own per-round watchdog (30 s); this one catches
    // anything else.
    let out = tokio::time::timeout(Duration::from_secs(600), child)
        .await
        .expect("psycopg rounds finished within 10 minutes")
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "psycopg failed ({}): {stdout}{stderr}",
        out.status
    );
    assert!(
        stdout.starts_with("ok 200 copies=1200 ")
            && stdout.trim_end().ends_with("select_rows=3000"),
        "{stdout}"
    );
}
