//! The startup protocol byte by byte, for what ordinary clients never send:
//! oversized and malformed packets, protocol negotiation, GSS and direct TLS,
//! stray cancel keys, stalled logins and garbage mid-session.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{cluster, start_proxy_with, unique, wait_until};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A role that logs in without a password (member of `trust_users`), and a
/// database it owns.
fn trust_tenant(prefix: &str) -> (String, String) {
    let db = unique(prefix);
    let user = format!("{db}_u");
    let c = cluster();
    c.create_role(&user, None, pgtier::sandbox::PasswordEncryption::Scram)
        .unwrap();
    c.psql("postgres", &format!("grant trust_users to {user}"))
        .unwrap();
    c.create_database(&db, &user).unwrap();
    (db, user)
}

/// A proxy that accepts plaintext (so raw sockets can talk to it) but also
/// offers TLS.
async fn plaintext_proxy(top_level: &str) -> common::TestProxy {
    start_proxy_with(top_level, "").await
}

fn startup_packet(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// Reads one tagged message, or `None` at EOF.
async fn read_msg(s: &mut (impl AsyncRead + Unpin)) -> Option<(u8, Vec<u8>)> {
    let read = async {
        let tag = s.read_u8().await.ok()?;
        let len = s.read_u32().await.ok()? as usize;
        let mut body = vec![0; len.checked_sub(4)?];
        s.read_exact(&mut body).await.ok()?;
        Some((tag, body))
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("proxy answered in time")
}

/// Reads messages until ReadyForQuery or an error; returns them all.
async fn read_until_ready(s: &mut (impl AsyncRead + Unpin)) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some((tag, body)) = read_msg(s).await {
        let done = tag == b'Z' || tag == b'E';
        out.push((tag, body));
        if done {
            break;
        }
    }
    out
}

fn sqlstate(body: &[u8]) -> String {
    pgtier::protocol::error::sqlstate_of(body)
        .unwrap_or("none")
        .to_owned()
}

async fn expect_error(s: &mut (impl AsyncRead + Unpin), code: &str) -> String {
    let (tag, body) = read_msg(s).await.expect("an error message");
    assert_eq!(tag, b'E', "expected ErrorResponse");
    assert_eq!(sqlstate(&body), code, "{}", String::from_utf8_lossy(&body));
    // And then the connection is closed.
    assert!(read_msg(s).await.is_none(), "connection left open");
    String::from_utf8_lossy(&body).into_owned()
}

/// The body of the BackendKeyData among `msgs`: process ID, then secret.
fn backend_key(msgs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    msgs.iter()
        .find(|m| m.0 == b'K')
        .map(|m| m.1.clone())
        .expect("BackendKeyData")
}

/// A CancelRequest packet carrying `key` (8 bytes: PID, secret).
fn cancel_packet(key: &[u8]) -> Vec<u8> {
    let mut packet = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    packet.extend_from_slice(key);
    packet
}

fn query(sql: &str) -> Vec<u8> {
    let mut out = vec![b'Q'];
    out.extend(((sql.len() + 5) as u32).to_be_bytes());
    out.extend(sql.as_bytes());
    out.push(0);
    out
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

    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&startup_packet(3 << 16, &[("database", "x")]))
        .await
        .unwrap();
    expect_error(&mut s, "08P01").await;
}

#[tokio::test]
async fn gss_encryption_is_declined_and_startup_continues() {
    let proxy = plaintext_proxy("").await;
    let (db, user) = trust_tenant("gss");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'N');
    let msgs = login(&mut s, &user, &db).await;
    assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'));
}

#[tokio::test]
async fn newer_protocol_and_unknown_options_are_negotiated_down() {
    let proxy = plaintext_proxy("").await;
    let (db, user) = trust_tenant("npv");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&startup_packet(
        (3 << 16) + 2,
        &[
            ("user", &user),
            ("database", &db),
            ("_pq_.test_option", "1"),
        ],
    ))
    .await
    .unwrap();
    let msgs = read_until_ready(&mut s).await;
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
    let (db, user) = trust_tenant("key");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let msgs = login(&mut s, &user, &db).await;
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
    // cancel connection is closed right away.
    s.write_all(&query("select pg_sleep(1), 'survived'"))
        .await
        .unwrap();
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let wrong: Vec<u8> = pid
        .to_be_bytes()
        .into_iter()
        .chain(secret.wrapping_add(1).to_be_bytes())
        .collect();
    c.write_all(&cancel_packet(&wrong)).await.unwrap();
    assert!(read_msg(&mut c).await.is_none(), "cancel connection closed");
    let msgs = read_until_ready(&mut s).await;
    assert!(
        msgs.iter().any(|m| m.0 == b'D'),
        "query with a wrongly-keyed cancel must complete: {msgs:?}"
    );
}

#[tokio::test]
async fn a_stalled_login_is_closed_with_08p01() {
    let proxy = plaintext_proxy("login_timeout = \"1s\"\n").await;
    // A SCRAM tenant: the cluster asks for a password that never comes.
    let db = unique("stall");
    let user = format!("{db}_u");
    cluster().create_tenant(&db, &user, "pw").unwrap();
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&startup_packet(
        3 << 16,
        &[("user", &user), ("database", &db)],
    ))
    .await
    .unwrap();
    let (tag, _) = read_msg(&mut s).await.expect("authentication request");
    assert_eq!(tag, b'R');
    let text = expect_error(&mut s, "08P01").await;
    assert!(text.contains("login_timeout"), "{text}");
    assert_eq!(proxy.handle.tenant_connections(&db), 0);
}

#[tokio::test]
async fn garbage_mid_session_ends_it_and_frees_the_slot() {
    let proxy = plaintext_proxy("").await;
    let (db, user) = trust_tenant("garbage");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    login(&mut s, &user, &db).await;
    assert_eq!(proxy.handle.tenant_connections(&db), 1);
    // A message whose length field is smaller than the length field itself.
    s.write_all(&[b'Q', 0, 0, 0, 2, 1, 2, 3]).await.unwrap();
    wait_until(Duration::from_secs(5), "slot given back", || {
        proxy.handle.tenant_connections(&db) == 0
    })
    .await;
    // Random bytes before any startup never panic the proxy.
    for seed in 0..50u32 {
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        let junk: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) as u8)
            .collect();
        let _ = c.write_all(&junk).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), read_msg(&mut c)).await;
    }
    let (db2, user2) = trust_tenant("aftergarbage");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(
        login(&mut s, &user2, &db2).await.last().map(|m| m.0),
        Some(b'Z')
    );
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

async fn login(
    s: &mut (impl AsyncRead + AsyncWrite + Unpin),
    user: &str,
    db: &str,
) -> Vec<(u8, Vec<u8>)> {
    s.write_all(&startup_packet(
        3 << 16,
        &[("user", user), ("database", db)],
    ))
    .await
    .unwrap();
    read_until_ready(s).await
}

#[tokio::test]
async fn direct_tls_needs_alpn_postgresql() {
    let proxy = common::start_proxy("").await;
    let (db, user) = trust_tenant("direct");
    let mut s = tls_connect(proxy.addr, Some(b"postgresql"))
        .await
        .expect("direct TLS handshake");
    let msgs = login(&mut s, &user, &db).await;
    assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'), "{msgs:?}");

    // Without ALPN the proxy hangs up after the handshake.
    match tls_connect(proxy.addr, None).await {
        Err(_) => {}
        Ok(mut s) => {
            let _ = s
                .write_all(&startup_packet(
                    3 << 16,
                    &[("user", &user), ("database", &db)],
                ))
                .await;
            assert!(read_msg(&mut s).await.is_none(), "no session without ALPN");
        }
    }
}

#[tokio::test]
async fn a_plaintext_cancel_with_the_proxys_key_cancels_the_query() {
    let proxy = plaintext_proxy("").await;
    let (db, user) = trust_tenant("plaincancel");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let msgs = login(&mut s, &user, &db).await;
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
    c.write_all(&cancel_packet(&key)).await.unwrap();
    assert!(read_msg(&mut c).await.is_none(), "cancel connection closed");
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
    assert!(
        text.contains("could not connect to the database cluster"),
        "{text}"
    );
    assert!(
        !text.contains(&closed.to_string()),
        "leaks the cluster address: {text}"
    );
}
