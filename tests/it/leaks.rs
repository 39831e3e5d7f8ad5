//! No slot can leak: sessions opened and killed (the socket dropped, no
//! goodbye) in every phase: mid-TLS handshake, mid-SCRAM exchange, just
//! after login, mid-COPY FROM STDIN and mid-result. Afterwards every
//! tenant shows 0 connections in the operator API's `/tenants` and has no
//! backend left in the cluster's `pg_stat_activity`, and the proxy counts
//! no connection and no login in progress.
//!
//! 1,000 sessions per phase, 16 at a time: 20–45 s on a shared 2-core
//! machine.

use crate::common;
use crate::harden;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::frames::frame;
use common::{connect, wait_until};
use futures_util::{SinkExt, StreamExt};
use harden::{read_message, startup_packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sessions in flight at once.
const CONCURRENCY: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    MidTls,
    MidScram,
    AfterLogin,
    MidCopy,
    MidResult,
}

const PHASES: [Phase; 5] = [
    Phase::MidTls,
    Phase::MidScram,
    Phase::AfterLogin,
    Phase::MidCopy,
    Phase::MidResult,
];

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// SSLRequest, then part of a real ClientHello (or all of it and part of
/// what follows), then the socket is dropped.
async fn mid_tls(addr: SocketAddr, i: usize) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&SSL_REQUEST).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'S');
    let config = Arc::new(common::client_tls_config());
    let mut tls = rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).unwrap();
    if i.is_multiple_of(2) {
        s.write_all(&hello[..hello.len() / 2]).await.unwrap();
    } else {
        // The whole hello; the proxy answers and waits for the rest.
        s.write_all(&hello).await.unwrap();
        let mut some = [0u8; 64];
        let _ = s.read(&mut some).await;
    }
}

/// A TLS session to the proxy, up to the server's first SCRAM challenge,
/// then dropped before the client proves anything.
async fn mid_scram(addr: SocketAddr, t: &common::Tenant) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&SSL_REQUEST).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S');
    let connector = tokio_rustls::TlsConnector::from(Arc::new(common::client_tls_config()));
    let mut s = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    // Flushed: tokio-rustls may keep what a write could not send at once
    // (the socket not writable yet) until the next write or flush, and the
    // proxy would wait for it until login_timeout.
    s.write_all(&startup_packet(&t.user, &t.db)).await.unwrap();
    s.flush().await.unwrap();
    let (tag, body) = read_message(&mut s).await.unwrap();
    assert_eq!((tag, &body[..4]), (b'R', &10u32.to_be_bytes()[..]), "SASL");
    let first = b"n,,n=,r=fyko+d2lbbFgONRv9qkxdawL";
    let mut response = b"SCRAM-SHA-256\0".to_vec();
    response.extend((first.len() as u32).to_be_bytes());
    response.extend(first);
    s.write_all(&frame(b'p', &response)).await.unwrap();
    s.flush().await.unwrap();
    let (tag, body) = read_message(&mut s).await.unwrap();
    assert_eq!(
        (tag, &body[..4]),
        (b'R', &11u32.to_be_bytes()[..]),
        "SASLContinue"
    );
}

type Session = (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
);

async fn logged_in(addr: SocketAddr, t: &common::Tenant) -> Session {
    connect(addr, &t.db, &t.user, &t.password)
        .await
        .expect("login")
}

/// Kills a session: its socket goes away, no Terminate.
fn kill((client, conn): Session) {
    conn.abort();
    drop(client);
}

async fn one(addr: SocketAddr, phase: Phase, t: &common::Tenant, i: usize) {
    match phase {
        Phase::MidTls => mid_tls(addr, i).await,
        Phase::MidScram => mid_scram(addr, t).await,
        Phase::AfterLogin => {
            let session = logged_in(addr, t).await;
            if i.is_multiple_of(2) {
                session.0.simple_query("SELECT 1").await.unwrap();
            }
            kill(session);
        }
        Phase::MidCopy => {
            let session = logged_in(addr, t).await;
            let sink = session
                .0
                .copy_in::<_, Bytes>("COPY t FROM STDIN")
                .await
                .unwrap();
            futures_util::pin_mut!(sink);
            for n in 0..20 {
                sink.send(Bytes::from(format!("{n}\tsome text\n")))
                    .await
                    .unwrap();
            }
            kill(session);
        }
        Phase::MidResult => {
            let session = logged_in(addr, t).await;
            let rows = session
                .0
                .query_raw(
                    "SELECT repeat('x', 1000) FROM generate_series(1, 5000)",
                    std::iter::empty::<i32>(),
                )
                .await
                .unwrap();
            futures_util::pin_mut!(rows);
            for _ in 0..1 + i % 50 {
                rows.next().await.expect("a row").unwrap();
            }
            kill(session);
        }
    }
}

async fn kill_in_every_phase(per_phase: usize) {
    // A SCRAM tenant per phase and four tenants' worth of sessions each
    // (the per-tenant bound on logins in progress is 8), free tier for
    // the TLS and SCRAM phases (no slot before AuthenticationOk), standard
    // for the rest (the test is about leaks, not the cap).
    let tenants: Vec<Vec<common::Tenant>> = PHASES
        .iter()
        .map(|_| (0..4).map(|_| common::scram_tenant("leak")).collect())
        .collect();
    let mut tables = String::new();
    for t in tenants.iter().flatten() {
        common::cluster()
            .psql(
                &t.db,
                &format!(
                    "CREATE TABLE t (n int, s text); ALTER TABLE t OWNER TO {};",
                    t.user
                ),
            )
            .unwrap();
        tables.push_str(&format!("[tenants.{}]\ntier = \"standard\"\n", t.db));
    }
    // 16 sessions at a time over a phase's few tenants: more logins of one
    // tenant in progress than the default bound of 8 when the machine is
    // slow, and that bound (tests/it/floods.rs) is not what this test is about.
    let proxy = common::start_proxy_from(&common::config_text(
        "admin_listen = \"127.0.0.1:0\"\nmax_pending_logins_per_tenant = 64",
        "require",
        &tables,
    ))
    .await;
    let addr = proxy.addr;
    let shared = proxy.handle.shared().clone();
    for (phase, phase_tenants) in PHASES.iter().zip(&tenants) {
        let started = Instant::now();
        let phase_tenants = Arc::new(phase_tenants.clone());
        futures_util::stream::iter(0..per_phase)
            .for_each_concurrent(CONCURRENCY, |i| {
                let phase_tenants = Arc::clone(&phase_tenants);
                async move {
                    let t = &phase_tenants[i % phase_tenants.len()];
                    one(addr, *phase, t, i).await;
                }
            })
            .await;
        eprintln!(
            "{phase:?}: {per_phase} sessions opened and killed in {:?}",
            started.elapsed()
        );
    }

    // Nothing is left: not in the proxy's own counts...
    wait_until(Duration::from_secs(10), "no connection left", || {
        shared.open_connections() == 0 && shared.logins.in_progress() == 0
    })
    .await;
    // ...not in /tenants...
    let api = proxy.handle.admin_addr().unwrap();
    let listed: serde_json::Value = common::http::http(api, "GET", "/tenants", None)
        .await
        .json();
    for t in tenants.iter().flatten() {
        let entry = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == t.db.as_str());
        // Tenants of the TLS and SCRAM phases never logged in; they are
        // listed (configured) with 0 like the rest.
        let entry = entry.unwrap_or_else(|| panic!("{} in /tenants: {listed}", t.db));
        assert_eq!(entry["connections"], 0, "{entry}");
    }
    // ...and not on the cluster.
    for t in tenants.iter().flatten() {
        harden::wait_only_warm_backends(&shared, &t.db).await;
    }
    // And the proxy still serves.
    let t = &tenants[2][0];
    let (client, _conn) = logged_in(addr, t).await;
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_killed_in_every_phase_leave_no_slot_behind() {
    kill_in_every_phase(1_000).await;
}
