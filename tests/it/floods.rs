//! Floods and hostile lengths: logins in progress are bounded (in all and
//! per tenant), a stalled TLS handshake runs into login_timeout, and no
//! length field a client sends makes the proxy allocate what it claims.

use crate::common;
use crate::harden;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{start_proxy_from, start_proxy_with, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy said before closing: `Ok(Some(sqlstate))` for an
/// ErrorResponse, `Ok(None)` for a close without one.
async fn refusal(s: &mut TcpStream) -> Option<String> {
    let read = async {
        let mut tag = [0u8; 1];
        if s.read(&mut tag).await? == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        assert_eq!(tag[0], b'E', "an ErrorResponse");
        let len = s.read_u32().await? as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await?;
        Ok(pgtier::protocol::error::sqlstate_of(&body).map(str::to_owned))
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("answered at once")
        .expect("readable")
}

fn startup_packet(user: &str, db: &str) -> Vec<u8> {
    common::startup_packet_of(common::PROTOCOL_3_0, &[("user", user), ("database", db)])
}

#[tokio::test]
async fn past_max_pending_logins_new_connections_are_refused_at_once() {
    let proxy = start_proxy_with("max_pending_logins = 5", "").await;
    // Five connections that say nothing are five logins in progress.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    let shared = proxy.handle.shared().clone();
    wait_until(Duration::from_secs(5), "five logins in progress", || {
        shared.logins.in_progress() == 5
    })
    .await;
    // The sixth is refused before it says anything (an SSLRequest would
    // get the same: no TLS handshake is started for it).
    let mut sixth = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(refusal(&mut sixth).await.as_deref(), Some("53300"));
    // One gives up: there is room again, and a real client logs in.
    drop(silent.pop());
    wait_until(Duration::from_secs(5), "a login slot freed", || {
        shared.logins.in_progress() == 4
    })
    .await;
    let t = common::scram_tenant("pending_ok");
    let (client, _conn) = common::connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .expect("a login once there is room");
    client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(
        shared.logins.in_progress(),
        4,
        "a logged-in session no longer counts"
    );
    let rejected = shared.metrics.unattributed_rejections();
    assert_eq!(rejected.get("max_pending_logins"), Some(&1));
}

/// A stand-in cluster that accepts connections and never answers: logins
/// through the proxy stall there, and the number it accepted is how many
/// cluster connections the proxy opened.
async fn silent_cluster() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, accepted)
}

/// A proxy (with `top_level` in its configuration) in front of a
/// [`silent_cluster`]; the count of connections the cluster accepted.
async fn proxy_on_silent_cluster(top_level: &str) -> (common::TestProxy, Arc<AtomicUsize>) {
    let (cluster, opened) = silent_cluster().await;
    let text = common::config_text(top_level, "prefer", "").replace(
        &format!("port = {}", common::cluster().port()),
        &format!("port = {}", cluster.port()),
    );
    (start_proxy_from(&text).await, opened)
}

/// A plaintext login of `db` begun: connected and its StartupMessage sent.
async fn begin_login(addr: SocketAddr, db: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup_packet("u", db)).await.unwrap();
    s
}

/// Logins stall on a cluster that never answers. In passthrough mode each
/// one holds a cluster connection of its own; in proxy mode they wait on
/// the one connection pgtier looks verifiers up on (besides the one it
/// asks which protocol the cluster speaks), however many there are. Either
/// way the per-tenant bound refuses the third at once, without another
/// cluster connection, and leaves other tenants alone.
#[tokio::test]
async fn one_tenant_cannot_hold_more_than_its_share_of_logins() {
    let (proxy, opened) = proxy_on_silent_cluster("max_pending_logins_per_tenant = 2").await;
    let shared = proxy.handle.shared().clone();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(begin_login(proxy.addr, "crowded").await);
    }
    // Cluster connections once the two logins are stalled: theirs
    // (passthrough), or the protocol probe and the verifier lookup's (proxy).
    let held = 2;
    wait_until(Duration::from_secs(5), "two stalled logins", || {
        shared.logins.in_progress_for("crowded") == 2
    })
    .await;
    wait_until(Duration::from_secs(5), "two cluster connections", || {
        opened.load(Ordering::SeqCst) == held
    })
    .await;
    let mut third = begin_login(proxy.addr, "crowded").await;
    assert_eq!(refusal(&mut third).await.as_deref(), Some("53300"));
    assert_eq!(
        opened.load(Ordering::SeqCst),
        held,
        "no cluster connection for the refused login"
    );
    // Another tenant is unaffected.
    let _other = begin_login(proxy.addr, "elsewhere").await;
    wait_until(
        Duration::from_secs(5),
        "the other tenant's login in progress",
        || shared.logins.in_progress_for("elsewhere") == 1,
    )
    .await;
    if common::proxy_auth() {
        // It waits for the verifier lookup too: still no connection of its own.
        assert_eq!(opened.load(Ordering::SeqCst), held);
    } else {
        wait_until(
            Duration::from_secs(5),
            "the other tenant's login reaches the cluster",
            || opened.load(Ordering::SeqCst) == held + 1,
        )
        .await;
    }
    assert_eq!(shared.logins.in_progress_for("crowded"), 2);
    drop(stalled);
    wait_until(Duration::from_secs(5), "the stalled logins ended", || {
        shared.logins.in_progress_for("crowded") == 0
    })
    .await;
    assert_eq!(
        shared.logins.tenants_logging_in(),
        1,
        "only the other tenant is left"
    );
}

#[tokio::test]
async fn a_stalled_tls_handshake_runs_into_login_timeout() {
    let proxy = start_proxy_with("login_timeout = \"1s\"", "").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'S');
    // Half a ClientHello record header, then nothing.
    s.write_all(&[0x16, 0x03]).await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection was closed");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}, login_timeout is 1s"
    );
    let shared = proxy.handle.shared().clone();
    wait_until(Duration::from_secs(2), "counted as login_timeout", || {
        shared
            .metrics
            .unattributed_rejections()
            .get("login_timeout")
            == Some(&1)
    })
    .await;
}

/// Logs `t` in over plaintext ([`common::raw_login_ok`]) and returns the
/// stream.
async fn logged_in(addr: SocketAddr, t: &common::Tenant) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    common::raw_login_ok(&mut s, &t.user, &t.db, &t.password).await;
    s
}

/// A proxy of its own (a child process), so that its memory is its own:
/// the peak of its *virtual* size (VmPeak) moves when anything so much as
/// reserves the 2 GB a length claims, touched or not (with overcommit, an
/// untouched reservation never shows in the resident size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_gb_length_never_allocates_2_gb() {
    let free = common::trust_tenant("huge_free");
    let standard = common::trust_tenant("huge_std");
    let proxy = harden::ChildProxy::start(&common::config_text(
        "",
        "prefer",
        &format!("[tenants.{}]\ntier = \"standard\"\n", standard.db),
    ));
    // Warm up first: the threads, their stacks and allocator arenas a
    // session brings are in the baseline, not in what a length adds.
    for t in [&free, &standard] {
        let (client, _conn) = common::connect(proxy.addr, &t.db, &t.user, &t.password)
            .await
            .expect("login");
        client.simple_query("SELECT 1").await.unwrap();
    }
    let before = proxy.status_kib("VmPeak:");
    let huge = |tag: u8| {
        let mut header = vec![tag];
        header.extend(0x7fff_fff0u32.to_be_bytes());
        header
    };
    // A free tenant's statements are inspected: a Query longer than the
    // proxy inspects ends the session with 54000 at its header.
    let mut s = logged_in(proxy.addr, &free).await;
    s.write_all(&huge(b'Q')).await.unwrap();
    assert_eq!(refusal(&mut s).await.as_deref(), Some("54000"));
    // A standard tenant's bytes stream through: 16 MB of a 2 GB message
    // pass without the proxy holding more than its read buffers.
    let mut s = logged_in(proxy.addr, &standard).await;
    s.write_all(&huge(b'Q')).await.unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..16 {
        if s.write_all(&chunk).await.is_err() {
            break; // the cluster may give up on it first
        }
    }
    // Before login: a startup packet claiming 2 GB is refused at its length.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&0x7fff_fff0u32.to_be_bytes()).await.unwrap();
    assert_eq!(refusal(&mut s).await.as_deref(), Some("08P01"));
    let grown = proxy.status_kib("VmPeak:").saturating_sub(before);
    assert!(
        grown < 1 << 20,
        "the proxy's virtual size peaked {} MiB higher for 2 GB lengths",
        grown >> 10
    );
}

/// A connection pool opening its connections at once (HikariCP, Ecto and
/// node-postgres default to 10; 20 here) logs in whole with the default
/// bounds on logins in progress: those bound floods, not an application
/// starting up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_opening_twenty_connections_at_once_logs_in_with_the_defaults() {
    let t = common::scram_tenant("pool_start");
    let proxy = start_proxy_with("", &format!("[tenants.{}]\ntier = \"standard\"\n", t.db)).await;
    let pool = (0..20).map(|_| common::connect(proxy.addr, &t.db, &t.user, &t.password));
    let mut refused = Vec::new();
    let mut open = Vec::new();
    for login in futures_util::future::join_all(pool).await {
        match login {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                open.push(client);
            }
            Err(e) => refused.push(
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |db| db.message().to_owned()),
            ),
        }
    }
    assert!(refused.is_empty(), "refused: {refused:?}");
    for client in &open {
        client.simple_query("SELECT 1").await.unwrap();
    }
    assert_eq!(proxy.handle.tenant_connections(&t.db), Some(20));
}

/// A free tenant (a cap of 2) gets at most its cap plus 8 logins in
/// progress, below `max_pending_logins_per_tenant` (32 by default): in
/// pass-through mode each stalled login holds a cluster backend that the
/// cap would refuse anyway.
#[tokio::test]
async fn a_free_tenant_holds_at_most_its_cap_plus_eight_logins_in_progress() {
    let (proxy, _opened) = proxy_on_silent_cluster("").await;
    let shared = proxy.handle.shared().clone();
    let mut stalled = Vec::new();
    for _ in 0..10 {
        stalled.push(begin_login(proxy.addr, "free_flood").await);
    }
    wait_until(Duration::from_secs(5), "ten stalled logins", || {
        shared.logins.in_progress_for("free_flood") == 10
    })
    .await;
    let mut eleventh = begin_login(proxy.addr, "free_flood").await;
    assert_eq!(refusal(&mut eleventh).await.as_deref(), Some("53300"));
    assert_eq!(shared.logins.in_progress_for("free_flood"), 10);
}

/// A statement over the proxy's inspection bound, written whole before the
/// client reads (as Postgrex and tokio-postgres do): the proxy reads the
/// rest of it before it answers 54000 and closes, so the client's write
/// completes and it hears why, over TLS and plaintext alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_statement_written_whole_hears_54000() {
    let t = common::scram_tenant("oversized");
    let proxy = start_proxy_with("", "").await;
    let over = pgtier::rules::gate::MAX_INSPECTED_STATEMENT + (1 << 20);
    let mut message = vec![b'Q'];
    message.extend(((over + 4) as u32).to_be_bytes());
    message.extend(std::iter::repeat_n(b' ', over - 9));
    message.extend(b"select 1\0");
    // And a Sync right behind it, as a pipelining client sends.
    message.extend([b'S', 0, 0, 0, 4]);
    let expected = format!(
        "message type 'Q' of {} bytes is longer than the proxy inspects ({} bytes)",
        over + 5,
        pgtier::rules::gate::MAX_INSPECTED_STATEMENT
    );
    async fn write_then_read(
        s: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
        message: &[u8],
    ) -> (String, String) {
        s.write_all(message)
            .await
            .expect("the whole statement is written");
        s.flush().await.expect("and flushed");
        let (tag, body) = common::read_message(s).await;
        assert_eq!(tag, b'E', "an ErrorResponse");
        let field = |c| {
            pgtier::protocol::error::field_of(&body, c)
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(field(b'S'), "FATAL");
        (field(b'C'), field(b'M'))
    }
    let mut tls = common::ssl_request_tls(proxy.addr).await;
    common::raw_login_ok(&mut tls, &t.user, &t.db, &t.password).await;
    let (code, text) = write_then_read(&mut tls, &message).await;
    assert_eq!((code.as_str(), text.as_str()), ("54000", expected.as_str()));
    wait_until(
        Duration::from_secs(2),
        "the TLS session's slot back",
        || common::slots(&proxy.handle, &t.db) == 0,
    )
    .await;
    let mut plain = TcpStream::connect(proxy.addr).await.unwrap();
    common::raw_login_ok(&mut plain, &t.user, &t.db, &t.password).await;
    let (code, text) = write_then_read(&mut plain, &message).await;
    assert_eq!((code.as_str(), text.as_str()), ("54000", expected.as_str()));

    // tokio-postgres over TLS: the error it reports is the proxy's.
    wait_until(Duration::from_secs(2), "both slots free", || {
        common::slots(&proxy.handle, &t.db) == 0
    })
    .await;
    let (client, conn) = common::connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let sql = format!("{}select 1", " ".repeat(over));
    let err = client
        .simple_query(&sql)
        .await
        .expect_err("refused over the bound");
    let err = match err.as_db_error() {
        Some(_) => err,
        // The error may reach the connection task rather than the query.
        None => tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the connection ends")
            .unwrap()
            .expect_err("with the proxy's error"),
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("no 54000: {err}"));
    assert_eq!(db.code().code(), "54000");
    assert!(
        db.message().starts_with("message type 'Q' of "),
        "{}",
        db.message()
    );
}
