//! The startup protocol byte by byte, for what ordinary clients never send:
//! oversized and malformed packets, protocol negotiation, GSS and direct TLS,
//! stray cancel keys, stalled logins and garbage mid-session.

use crate::common;
use crate::common::frames::query;

use std::sync::Arc;
use std::time::Duration;

use common::{
    cluster, proxy_auth, start_proxy_with, startup_packet_of as startup_packet, trust_tenant,
    unique, wait_until, Tenant, PROTOCOL_3_0,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A proxy that accepts plaintext (so raw sockets can talk to it) but also
/// offers TLS.
async fn plaintext_proxy(top_level: &str) -> common::TestProxy {
    start_proxy_with(top_level, "").await
}

/// What the next read from the proxy brought.
#[derive(Debug)]
enum Next {
    Message(u8, Vec<u8>),
    /// A clean end between messages: the peer closed (FIN, or TLS
    /// close_notify).
    Closed,
    /// Anything else: a reset, an end inside a message, a length no
    /// message has.
    Broken(String),
}

impl std::fmt::Display for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Next::Message(tag, body) => {
                write!(f, "message {:?} ({} bytes)", *tag as char, body.len())
            }
            Next::Closed => f.write_str("a clean close"),
            Next::Broken(why) => write!(f, "a broken connection: {why}"),
        }
    }
}

/// Reads the next tagged message, telling a clean close apart from a broken
/// connection (so that "the proxy closed the connection" cannot pass on a
/// reset or a malformed reply).
async fn next_msg(s: &mut (impl AsyncRead + Unpin)) -> Next {
    let read = async {
        let tag = match s.read_u8().await {
            Ok(tag) => tag,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Next::Closed,
            Err(e) => return Next::Broken(format!("reading a message type: {e}")),
        };
        let len = match s.read_u32().await {
            Ok(len) => len as usize,
            Err(e) => return Next::Broken(format!("message {:?} cut short: {e}", tag as char)),
        };
        if !(4..=64 << 20).contains(&len) {
            return Next::Broken(format!("message {:?} of length {len}", tag as char));
        }
        let mut body = vec![0; len - 4];
        match s.read_exact(&mut body).await {
            Ok(_) => Next::Message(tag, body),
            Err(e) => Next::Broken(format!("message {:?} cut short: {e}", tag as char)),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("proxy answered in time")
}

/// Reads one message; anything else fails the test.
async fn read_msg(s: &mut (impl AsyncRead + Unpin)) -> (u8, Vec<u8>) {
    match next_msg(s).await {
        Next::Message(tag, body) => (tag, body),
        other => panic!("expected a message, got {other}"),
    }
}

/// Asserts that the peer closed the connection cleanly, with nothing more
/// to say.
async fn expect_closed(s: &mut (impl AsyncRead + Unpin), what: &str) {
    match next_msg(s).await {
        Next::Closed => {}
        other => panic!("{what}: expected a clean close, got {other}"),
    }
}

/// Reads messages until ReadyForQuery or an error; returns them all.
async fn read_until_ready(s: &mut (impl AsyncRead + Unpin)) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let (tag, body) = read_msg(s).await;
        let done = tag == b'Z' || tag == b'E';
        out.push((tag, body));
        if done {
            return out;
        }
    }
}

fn sqlstate(body: &[u8]) -> String {
    pgtier::protocol::error::sqlstate_of(body)
        .unwrap_or("none")
        .to_owned()
}

async fn expect_error(s: &mut (impl AsyncRead + Unpin), code: &str) -> String {
    let (tag, body) = read_msg(s).await;
    assert_eq!(tag, b'E', "expected ErrorResponse");
    assert_eq!(sqlstate(&body), code, "{}", String::from_utf8_lossy(&body));
    // And then the connection is closed.
    expect_closed(s, "after the FATAL").await;
    String::from_utf8_lossy(&body).into_owned()
}

/// The message (`M` field) of an ErrorResponse body.
fn error_message(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|field| field.strip_prefix(b"M"))
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default()
}

/// The body of the BackendKeyData among `msgs`: process ID, then secret.
fn backend_key(msgs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    msgs.iter()
        .find(|m| m.0 == b'K')
        .map(|m| m.1.clone())
        .expect("BackendKeyData")
}

#[tokio::test]
async fn oversized_and_malformed_startup_packets_get_08p01() {
    let proxy = plaintext_proxy("").await;

    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&10_001u32.to_be_bytes()).await.unwrap();
    s.write_all(&[0u8; 64]).await.unwrap();
    expect_error(&mut s, "08P01").await;

    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    // Protocol 3.0, a parameter name with no value and no terminator.
    s.write_all(&[0, 0, 0, 12, 0, 3, 0, 0, b'u', b's', b'e', b'r'])
        .await
        .unwrap();
    expect_error(&mut s, "08P01").await;

    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&startup_packet(2 << 16, &[("user", "x")]))
        .await
        .unwrap();
    expect_error(&mut s, "0A000").await;

    // No user name: PostgreSQL's own answer, 28000 (an authorization
    // problem, not a protocol violation).
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&startup_packet(3 << 16, &[("database", "x")]))
        .await
        .unwrap();
    let text = expect_error(&mut s, "28000").await;
    assert!(
        text.contains("no PostgreSQL user name specified in startup packet"),
        "{text}"
    );
    assert_eq!(proxy.handle.shared().metrics.session_panics(), 0);
}

/// A startup packet of `len` bytes for `user` and `db`, padded with an
/// `application_name` (which PostgreSQL accepts at any length and
/// truncates).
fn startup_packet_of_len(len: usize, user: &str, db: &str) -> Vec<u8> {
    let base = startup_packet(
        3 << 16,
        &[("user", user), ("database", db), ("application_name", "")],
    )
    .len();
    let pad = "p".repeat(len - base);
    let packet = startup_packet(
        3 << 16,
        &[("user", user), ("database", db), ("application_name", &pad)],
    );
    assert_eq!(packet.len(), len);
    packet
}

#[tokio::test]
async fn the_startup_packet_cap_is_10000_bytes_as_in_postgresql() {
    let proxy = plaintext_proxy("").await;
    let t = trust_tenant("cap");
    // Exactly 10,000 bytes: accepted by the proxy and by the cluster (the
    // proxy passes the same parameters on, so the same length).
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let msgs = common::raw_login_packet(
        &mut s,
        &startup_packet_of_len(10_000, &t.user, &t.db),
        &t.password,
    )
    .await;
    assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'), "{msgs:?}");
    // One byte more: refused before anything reaches the cluster.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&startup_packet_of_len(10_001, &t.user, &t.db))
        .await
        .unwrap();
    let text = expect_error(&mut s, "08P01").await;
    assert!(text.contains("invalid length of startup packet"), "{text}");
}

#[tokio::test]
async fn plaintext_where_tls_is_required_gets_28000() {
    let proxy = common::start_proxy("").await;
    let t = trust_tenant("plain");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&startup_packet(
        3 << 16,
        &[("user", &t.user), ("database", &t.db)],
    ))
    .await
    .unwrap();
    let (tag, body) = read_msg(&mut s).await;
    assert_eq!(tag, b'E');
    assert_eq!(sqlstate(&body), "28000");
    assert_eq!(error_message(&body), "SSL connection is required");
    expect_closed(&mut s, "after the FATAL").await;
}

#[tokio::test]
async fn gss_encryption_is_declined_and_startup_continues() {
    let proxy = plaintext_proxy("").await;
    let t = trust_tenant("gss");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'N');
    let msgs = login(&mut s, &t).await;
    assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'));
}

#[tokio::test]
async fn newer_protocol_and_unknown_options_are_negotiated_down() {
    let proxy = plaintext_proxy("").await;
    let t = trust_tenant("npv");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let packet = startup_packet(
        (3 << 16) + 2,
        &[
            ("user", &t.user),
            ("database", &t.db),
            ("_pq_.test_option", "1"),
        ],
    );
    let msgs = common::raw_login_packet(&mut s, &packet, &t.password).await;
    let (tag, body) = &msgs[0];
    assert_eq!(*tag, b'v', "NegotiateProtocolVersion first");
    // The newest version both the proxy and the cluster speak, as a full
    // version number as PostgreSQL sends it (libpq 18 reads a bare minor
    // as a downgrade): 3.2 with PostgreSQL 18, 3.0 before.
    let newest: i32 = if common::pg_major() >= 18 {
        (3 << 16) | 2
    } else {
        3 << 16
    };
    assert_eq!(
        &body[..4],
        &newest.to_be_bytes(),
        "newest version as a full version number"
    );
    assert_eq!(&body[4..8], &1i32.to_be_bytes(), "one unsupported option");
    assert_eq!(&body[8..], b"_pq_.test_option\0");
    assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'));
}

#[tokio::test]
async fn backend_key_keeps_the_real_pid_and_unknown_cancels_are_dropped() {
    let proxy = plaintext_proxy("").await;
    let t = trust_tenant("key");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let msgs = login(&mut s, &t).await;
    let key = backend_key(&msgs);
    let pid = i32::from_be_bytes(key[..4].try_into().unwrap());
    let secret = i32::from_be_bytes(key[4..8].try_into().unwrap());

    s.write_all(&query("select pg_backend_pid()"))
        .await
        .unwrap();
    let msgs = read_until_ready(&mut s).await;
    let row = msgs.iter().find(|m| m.0 == b'D').expect("a row");
    let text = String::from_utf8_lossy(&row.1[6..]).into_owned();
    assert_eq!(text, pid.to_string(), "client sees the cluster's real PID");

    // A cancel with the right PID but a wrong secret is ignored, and the
    // cancel connection is closed right away. It arrives while the query
    // runs (as in the positive test below), so a wrongly forwarded cancel
    // would cancel it rather than reach an idle backend and be ignored.
    s.write_all(&query("select pg_sleep(2), 'survived'"))
        .await
        .unwrap();
    common::wait_for_cluster(
        &format!("select count(*) from pg_stat_activity where pid = {pid} and state = 'active'"),
        "1",
        "pg_sleep to run",
    )
    .await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let wrong: Vec<u8> = pid
        .to_be_bytes()
        .into_iter()
        .chain(secret.wrapping_add(1).to_be_bytes())
        .collect();
    c.write_all(&common::cancel_request(&wrong)).await.unwrap();
    expect_closed(&mut c, "the cancel connection").await;
    let msgs = read_until_ready(&mut s).await;
    assert!(
        msgs.iter().any(|m| m.0 == b'D') && msgs.iter().all(|m| m.0 != b'E'),
        "query with a wrongly-keyed cancel must complete: {msgs:?}"
    );
}

#[tokio::test]
async fn a_stalled_login_is_closed_with_08p01() {
    // A SCRAM tenant: the cluster asks for a password that never comes.
    // Listed in the config, so the proxy knows it from the start and its
    // slot count is a real figure.
    let db = unique("stall");
    let user = format!("{db}_u");
    cluster().create_tenant(&db, &user, "pw").unwrap();
    let proxy = start_proxy_with(
        "login_timeout = \"1s\"\n",
        &format!("[tenants.{db}]\ntier = \"free\"\n"),
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&startup_packet(
        3 << 16,
        &[("user", &user), ("database", &db)],
    ))
    .await
    .unwrap();
    let (tag, _) = read_msg(&mut s).await;
    assert_eq!(tag, b'R');
    // Stalled mid-SCRAM and still connected: it holds no slot.
    assert_eq!(proxy.handle.shared().open_connections(), 1);
    assert_eq!(common::slots(&proxy.handle, &db), 0);
    let text = expect_error(&mut s, "08P01").await;
    assert!(text.contains("login_timeout"), "{text}");
    assert_eq!(common::slots(&proxy.handle, &db), 0);
    let tenant = proxy.handle.shared().tenants.get(&db).unwrap();
    assert_eq!(tenant.rejected_by_reason().get("login_timeout"), Some(&1));
}

#[tokio::test]
async fn garbage_mid_session_ends_it_and_frees_the_slot() {
    let proxy = plaintext_proxy("").await;
    let t = trust_tenant("garbage");
    let db = &t.db;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    login(&mut s, &t).await;
    assert_eq!(common::slots(&proxy.handle, db), 1);
    // A message whose length field is smaller than the length field itself.
    s.write_all(&[b'Q', 0, 0, 0, 2, 1, 2, 3]).await.unwrap();
    let (tag, body) = read_msg(&mut s).await;
    assert_eq!((tag, sqlstate(&body).as_str()), (b'E', "08P01"));
    expect_closed(&mut s, "after the FATAL").await;
    wait_until(Duration::from_secs(5), "slot given back", || {
        common::slots(&proxy.handle, db) == 0
    })
    .await;
    assert_eq!(proxy.handle.shared().metrics.session_panics(), 0);
}

/// The frontend message types, for random frames that look like real ones.
const FRONTEND_TAGS: &[u8] = b"QPBEDCSHFdcfpX";

/// A startup-phase packet with a valid length prefix (8 to 10,000 bytes, so
/// that it passes the length check) and a random body; most start with a
/// code the proxy knows (protocol 3.0 and others, SSL, GSS, cancel) so that
/// the random rest reaches each decoder.
fn random_startup_packet(rng: &mut StdRng) -> Vec<u8> {
    let len: usize = if rng.random_bool(0.8) {
        rng.random_range(8..=200)
    } else {
        rng.random_range(8..=10_000)
    };
    let mut packet = vec![0u8; len];
    packet[..4].copy_from_slice(&(len as u32).to_be_bytes());
    rng.fill(&mut packet[4..]);
    let codes: [u32; 7] = [
        3 << 16,
        (3 << 16) + 2,
        2 << 16,
        80_877_103,
        80_877_104,
        80_877_102,
        rng.random(),
    ];
    let code = codes[rng.random_range(0..codes.len())];
    packet[4..8].copy_from_slice(&code.to_be_bytes());
    if code >> 16 == 3 && rng.random_bool(0.5) {
        // NUL-separated strings, ending in the terminator, so that the
        // parameter parser gets past its first checks.
        for b in packet[8..].iter_mut() {
            if rng.random_bool(0.1) {
                *b = 0;
            }
        }
        if let Some(last) = packet.last_mut() {
            *last = 0;
        }
    }
    packet
}

/// One to four tagged frames with valid lengths and random bodies (now and
/// then longer than the 64 KiB the login phase accepts).
fn random_frames(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.random_range(1..=4) {
        let tag = if rng.random_bool(0.9) {
            FRONTEND_TAGS[rng.random_range(0..FRONTEND_TAGS.len())]
        } else {
            rng.random()
        };
        let body_len: usize = match rng.random_range(0..20) {
            0 => rng.random_range(60_000..80_000),
            1..=4 => 0,
            _ => rng.random_range(1..300),
        };
        out.push(tag);
        out.extend(((body_len + 4) as u32).to_be_bytes());
        let start = out.len();
        out.resize(start + body_len, 0);
        rng.fill(&mut out[start..]);
    }
    out
}

/// Reads whatever the proxy sends until it closes the connection, failing
/// the test if it is still open after 10 s (every phase here ends within
/// the test proxy's 2 s login timeout or at the Terminate sent last).
async fn read_to_close(s: &mut (impl AsyncRead + Unpin), what: &str) {
    let mut buf = vec![0u8; 16 * 1024];
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "{what}: the connection was left open");
}

/// Random bytes with valid length prefixes in every phase of a connection
/// (startup in plaintext, startup inside TLS, the login exchange, a
/// session) never panic a session task: the proxy counts such panics
/// (`pgtier_session_panics_total`), and the count stays 0. The generator
/// is seeded, so a failure repeats.
#[tokio::test]
async fn random_frames_in_every_phase_never_panic_the_proxy() {
    let proxy = plaintext_proxy("login_timeout = \"2s\"\n").await;
    let t = trust_tenant("fuzz");
    let scram_db = unique("fuzzscram");
    let scram_user = format!("{scram_db}_u");
    cluster()
        .create_tenant(&scram_db, &scram_user, "pw")
        .unwrap();
    let mut rng = StdRng::seed_from_u64(13);

    // Before the StartupMessage, in plaintext; a few open like direct TLS.
    for i in 0..80 {
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        let mut packet = random_startup_packet(&mut rng);
        if i % 20 == 0 {
            packet[0] = 0x16;
        }
        let _ = c.write_all(&packet).await;
        read_to_close(&mut c, "plaintext startup").await;
    }
    // Inside TLS, after an SSLRequest.
    for _ in 0..20 {
        let mut c = common::ssl_request_tls(proxy.addr).await;
        let _ = c.write_all(&random_startup_packet(&mut rng)).await;
        let _ = c.flush().await;
        read_to_close(&mut c, "startup inside TLS").await;
    }
    // During the login: the cluster asked for a SCRAM message.
    for _ in 0..30 {
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        c.write_all(&startup_packet(
            3 << 16,
            &[("user", &scram_user), ("database", &scram_db)],
        ))
        .await
        .unwrap();
        assert_eq!(read_msg(&mut c).await.0, b'R');
        let _ = c.write_all(&random_frames(&mut rng)).await;
        read_to_close(&mut c, "login exchange").await;
    }
    // In a session; Sync and Terminate last, so that every session ends.
    for _ in 0..30 {
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(login(&mut c, &t).await.last().map(|m| m.0), Some(b'Z'));
        let mut frames = random_frames(&mut rng);
        frames.extend_from_slice(&[b'S', 0, 0, 0, 4, b'X', 0, 0, 0, 4]);
        let _ = c.write_all(&frames).await;
        read_to_close(&mut c, "session").await;
    }

    wait_until(Duration::from_secs(10), "every connection closed", || {
        proxy.handle.shared().open_connections() == 0
    })
    .await;
    assert_eq!(proxy.handle.shared().metrics.session_panics(), 0);
    assert_eq!(common::slots(&proxy.handle, &t.db), 0);
    // And the proxy still serves.
    let t2 = trust_tenant("afterfuzz");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(login(&mut s, &t2).await.last().map(|m| m.0), Some(b'Z'));
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    alpn: Option<&[u8]>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(common::certs().ca_pem.as_bytes())
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(pgtier::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if let Some(alpn) = alpn {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
}

/// Logs `t` in (protocol 3.0) with [`common::raw_login`]: every message up
/// to ReadyForQuery or an ErrorResponse.
async fn login(s: &mut (impl AsyncRead + AsyncWrite + Unpin), t: &Tenant) -> Vec<(u8, Vec<u8>)> {
    common::raw_login(s, &t.user, &t.db, &t.password, PROTOCOL_3_0).await
}

#[tokio::test]
async fn direct_tls_needs_alpn_postgresql() {
    let proxy = common::start_proxy("").await;
    let t = trust_tenant("direct");
    let mut s = tls_connect(proxy.addr, Some(b"postgresql"))
        .await
        .expect("direct TLS handshake");
    let msgs = login(&mut s, &t).await;
    assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'), "{msgs:?}");

    // Without ALPN the proxy hangs up after the handshake.
    match tls_connect(proxy.addr, None).await {
        Err(_) => {}
        Ok(mut s) => {
            let _ = s
                .write_all(&startup_packet(
                    3 << 16,
                    &[("user", &t.user), ("database", &t.db)],
                ))
                .await;
            let next = next_msg(&mut s).await;
            assert!(
                !matches!(next, Next::Message(..)),
                "no session without ALPN: {next}"
            );
        }
    }
}

#[tokio::test]
async fn a_plaintext_cancel_with_the_proxys_key_cancels_the_query() {
    let proxy = plaintext_proxy("").await;
    let t = trust_tenant("plaincancel");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let msgs = login(&mut s, &t).await;
    let key = backend_key(&msgs);
    s.write_all(&query("select pg_sleep(30)")).await.unwrap();
    // Wait until the query runs before cancelling it.
    let pid = i32::from_be_bytes(key[..4].try_into().unwrap());
    common::wait_for_cluster(
        &format!("select count(*) from pg_stat_activity where pid = {pid} and state = 'active'"),
        "1",
        "pg_sleep to run",
    )
    .await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(&common::cancel_request(&key)).await.unwrap();
    expect_closed(&mut c, "the cancel connection").await;
    let msgs = read_until_ready(&mut s).await;
    let error = msgs.iter().find(|m| m.0 == b'E').expect("the query failed");
    assert_eq!(sqlstate(&error.1), "57014");
}

#[tokio::test]
async fn an_unreachable_cluster_gives_08006_without_its_address() {
    // A port nobody listens on: bind one, then let it go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = common::config_text("", "prefer", "").replace(
        &format!("port = {}", cluster().port()),
        &format!("port = {closed}"),
    );
    let proxy = common::start_proxy_from(&text).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&startup_packet(
        3 << 16,
        &[("user", "someone"), ("database", "somedb")],
    ))
    .await
    .unwrap();
    let text = expect_error(&mut s, "08006").await;
    // Passthrough mode reaches for the cluster to relay the login; proxy
    // mode first for the role's verifier (auth_query), and says so.
    let expected = if proxy_auth() {
        "could not check the password now"
    } else {
        "could not connect to the database cluster"
    };
    assert!(text.contains(expected), "{text}");
    assert!(
        text.contains("The database service is unavailable; try again shortly."),
        "{text}"
    );
    assert!(
        !text.contains(&closed.to_string()),
        "leaks the cluster address: {text}"
    );
}

/// A passthrough proxy (whatever TEST_AUTH_MODE says: a fake answers no
/// auth_query) in front of a fake cluster that reads each StartupMessage,
/// then sends `reply` and waits for the proxy to hang up, or with no
/// `reply` closes at once. `tables` go into the configuration.
async fn proxy_to_fake_cluster(reply: Option<bytes::BytesMut>, tables: &str) -> common::TestProxy {
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = fake.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = fake.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let len = s.read_u32().await.unwrap_or(0) as usize;
                let mut startup = vec![0; len.saturating_sub(4)];
                if s.read_exact(&mut startup).await.is_err() {
                    return;
                }
                if let Some(reply) = reply {
                    let _ = s.write_all(&reply).await;
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest).await;
                }
            });
        }
    });
    let tables = format!("[auth]\nmode = \"passthrough\"\n{tables}");
    let text = common::config_text("", "prefer", &tables).replace(
        &format!("port = {}", cluster().port()),
        &format!("port = {port}"),
    );
    common::start_proxy_from(&text).await
}

/// A cluster that goes away in the middle of a login (a restart, a crash):
/// the client hears 08006 as for a cluster it could not reach, not a bare
/// close, and no slot is left behind.
#[tokio::test]
async fn a_cluster_lost_during_login_gives_08006() {
    // The tenant is listed, so that "no slot held" reads a tenant the
    // proxy knows (it registers others only once a login succeeds).
    let db = unique("lostlogin");
    let proxy = proxy_to_fake_cluster(None, &format!("[tenants.{db}]\ntier = \"free\"\n")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&startup_packet(
        3 << 16,
        &[("user", "someone"), ("database", &db)],
    ))
    .await
    .unwrap();
    let text = expect_error(&mut s, "08006").await;
    assert!(
        text.contains("could not connect to the database cluster"),
        "{text}"
    );
    let handle = proxy.handle.clone();
    wait_until(Duration::from_secs(5), "no slot held", || {
        common::slots(&handle, &db) == 0
    })
    .await;
}

/// A cluster (a fake one: no PostgreSQL does this) that answers a login
/// with a BackendKeyData of a 2-byte secret. The login is refused with
/// 08P01 before the client hears of the key, and the slot comes back.
#[tokio::test]
async fn a_malformed_backend_key_from_the_cluster_refuses_the_login_with_08p01() {
    let mut reply = bytes::BytesMut::new();
    pgtier::protocol::frame::put_frame(&mut reply, b'R', &0u32.to_be_bytes());
    pgtier::protocol::frame::put_frame(&mut reply, b'K', &[0, 0, 0, 42, 7, 7]);
    pgtier::protocol::frame::put_frame(&mut reply, b'Z', b"I");
    let proxy = proxy_to_fake_cluster(Some(reply), "").await;
    let db = unique("badkey");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&startup_packet(
        3 << 16,
        &[("user", "someone"), ("database", &db)],
    ))
    .await
    .unwrap();
    loop {
        match next_msg(&mut s).await {
            Next::Message(b'E', body) => {
                assert_eq!(sqlstate(&body), "08P01", "{}", error_message(&body));
                assert!(
                    error_message(&body).contains("malformed BackendKeyData"),
                    "{}",
                    error_message(&body)
                );
                break;
            }
            Next::Message(tag @ (b'K' | b'Z'), body) => {
                panic!("{} reached the client: {body:?}", tag as char)
            }
            Next::Message(..) => {}
            other => panic!("expected the refusal, got {other}"),
        }
    }
    expect_closed(&mut s, "after the refusal").await;
    let handle = proxy.handle.clone();
    wait_until(Duration::from_secs(5), "the slot back", || {
        common::slots(&handle, &db) == 0
    })
    .await;
}
