//! Faults: the cluster crashes, is unreachable or still starting, an
//! operator kills a backend, a client stops reading a huge result, floods
//! of connections say nothing or nonsense, and the proxy is told to stop
//! with sessions in flight. Each ends with an error the client can act on,
//! within a bound, with every slot given back, and the proxy still up (or,
//! for SIGTERM, cleanly down).
//!
//! Tests that stop their cluster start their own (`harden::own_cluster`),
//! so they never take the shared one from under the other tests.

use crate::common;
use crate::harden;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connect, wait_until};
use futures_util::StreamExt;
use harden::{own_cluster, trust_tenant_on, ChildProxy, Rng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;

/// The tests that measure latency or open hundreds of connections run
/// alone (`write`), so that they measure the proxy rather than each other;
/// the light ones may share the machine (`read`).
static HEAVY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Runs blocking sandbox work (psql, stopping a cluster) off the runtime
/// that drives the proxy under test.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_stopped_mid_query_errors_every_client_frees_every_slot_and_comes_back() {
    let _shared = HEAVY.read().await;
    let cluster = Arc::new(Mutex::new(blocking(own_cluster).await));
    let (port, tenant) = {
        let c = cluster.lock().unwrap();
        (c.port(), trust_tenant_on(&c, "crash"))
    };
    let proxy = common::start_proxy_from(&harden::config_for_port(
        port,
        "",
        "require",
        &format!("[tenants.{}]\ntier = \"standard\"\n", tenant.db),
    ))
    .await;

    // Ten sessions mid-query, two idle.
    let mut running = Vec::new();
    let mut idle = Vec::new();
    for i in 0..12 {
        if i < 10 {
            let (client, conn) = connect(proxy.addr, &tenant.db, &tenant.user, &tenant.password)
                .await
                .expect("login");
            running.push((
                tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await }),
                conn,
            ));
        } else {
            idle.push(
                common::connect_keeping_notices(
                    proxy.addr,
                    &tenant.db,
                    &tenant.user,
                    &tenant.password,
                )
                .await
                .expect("login"),
            );
        }
    }
    let c = Arc::clone(&cluster);
    let db = tenant.db.clone();
    blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sleeping = c
                .lock()
                .unwrap()
                .psql("postgres", &common::running_sql(&db, "SELECT pg_sleep"))
                .unwrap();
            if sleeping == "10" {
                return;
            }
            assert!(Instant::now() < deadline, "ten queries running: {sleeping}");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await;
    assert_eq!(proxy.handle.tenant_connections(&tenant.db), Some(12));

    let stopped = Instant::now();
    let c = Arc::clone(&cluster);
    blocking(move || {
        c.lock()
            .unwrap()
            .stop_immediately()
            .expect("stopping the cluster")
    })
    .await;

    // Every client hears of it (an error, not a hang) within 5 s.
    for (query, conn) in running {
        let result = tokio::time::timeout_at((stopped + Duration::from_secs(5)).into(), query)
            .await
            .expect("a query on the crashed cluster ended within 5 s")
            .expect("query task");
        let err = result.expect_err("a query cut off by the crash fails");
        // The cluster's last word (57P01 "terminating connection due to
        // immediate shutdown command") or the closed connection.
        if let Some(code) = err.code() {
            assert_eq!(code, &SqlState::ADMIN_SHUTDOWN, "{err}");
        }
        tokio::time::timeout_at((stopped + Duration::from_secs(5)).into(), conn)
            .await
            .expect("the connection ended within 5 s")
            .expect("connection task")
            .expect_err("the connection ended with an error");
    }
    for (client, conn) in idle {
        let (notices, end) =
            tokio::time::timeout_at((stopped + Duration::from_secs(5)).into(), conn)
                .await
                .expect("an idle session ended within 5 s")
                .expect("connection task");
        end.expect_err("the connection ended with an error");
        assert!(client.is_closed());
        // The cluster's last word to an idle session is a WARNING (57P01
        // "terminating connection due to immediate shutdown command"): it
        // reaches the client before the connection closes.
        assert!(
            notices
                .iter()
                .any(|n| n.code() == &SqlState::ADMIN_SHUTDOWN && n.message().contains("shutdown")),
            "the cluster's goodbye to an idle session: {notices:?}"
        );
    }
    let took = stopped.elapsed();
    wait_until(Duration::from_secs(1), "every slot free", || {
        proxy.handle.tenant_connections(&tenant.db) == Some(0)
    })
    .await;
    eprintln!("all 12 sessions ended {took:?} after the crash");

    // While it is down, logins fail fast with 08006.
    let err = connect(proxy.addr, &tenant.db, &tenant.user, &tenant.password)
        .await
        .expect_err("no cluster, no login");
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err}");

    // Back up: logins work again through the same proxy.
    let c = Arc::clone(&cluster);
    blocking(move || {
        c.lock()
            .unwrap()
            .start_again()
            .expect("restarting the cluster")
    })
    .await;
    let (client, _conn) = connect(proxy.addr, &tenant.db, &tenant.user, &tenant.password)
        .await
        .expect("a login once the cluster is back, without restarting pgtier");
    let rows = client.simple_query("SELECT 1").await.expect("a query");
    assert!(!rows.is_empty());
    assert_eq!(proxy.handle.tenant_connections(&tenant.db), Some(1));
}

/// A listener whose accept queue is full: the kernel drops further SYNs,
/// so a connect to it hangs as to a host that is down (without sending
/// anything anywhere but loopback).
async fn black_hole() -> (
    std::net::SocketAddr,
    tokio::net::TcpListener,
    Vec<TcpStream>,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    // Fill the queue (backlog 0 admits one); a connect that does not
    // complete at once shows it is full.
    loop {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            Err(_) => break,
        }
        assert!(fillers.len() < 16, "the accept queue does not fill");
    }
    (addr, listener, fillers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_08006_within_connect_timeout_and_a_starting_one_says_57p03() {
    let _shared = HEAVY.read().await;
    // A cluster that does not answer SYNs: 08006 once connect_timeout (1 s)
    // is over, long before login_timeout (15 s).
    let (hole, _listener, _fillers) = black_hole().await;
    let text = harden::config_for_port(hole.port(), "", "require", "").replace(
        "tls = \"disable\"",
        "tls = \"disable\"\nconnect_timeout = \"1s\"",
    );
    let proxy = common::start_proxy_from(&text).await;
    let t = common::trust_tenant("unreachable");
    let started = Instant::now();
    let err = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .expect_err("no cluster, no login");
    let took = started.elapsed();
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err}");
    // Proxy mode looks the role's verifier up on the cluster first, and
    // says that it is the password check that cannot be done now.
    let expected = if common::proxy_auth() {
        "could not check the password now"
    } else {
        "could not connect to the database cluster"
    };
    assert_eq!(common::message(&err), expected);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "08006 after {took:?}; connect_timeout is 1 s"
    );
    drop(proxy);

    // A cluster that is starting up (here: recovering, never consistent)
    // refuses logins with its own 57P03, which reaches the client as is.
    let cluster = Arc::new(Mutex::new(blocking(own_cluster).await));
    let (port, tenant) = {
        let c = cluster.lock().unwrap();
        (c.port(), trust_tenant_on(&c, "starting"))
    };
    let proxy = common::start_proxy_from(&harden::config_for_port(port, "", "require", "")).await;
    let c = Arc::clone(&cluster);
    blocking(move || {
        let mut c = c.lock().unwrap();
        c.stop_immediately().expect("stopping");
        c.start_recovering().expect("starting in recovery");
    })
    .await;
    let err = connect(proxy.addr, &tenant.db, &tenant.user, &tenant.password)
        .await
        .expect_err("a recovering cluster refuses logins");
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{err}");
    // No slot is held. In passthrough the cluster refused before it
    // authenticated anyone, so the tenant is not even registered.
    let held = proxy.handle.tenant_connections(&tenant.db);
    assert!(matches!(held, None | Some(0)), "slots held: {held:?}");
    // Once it is up, the same proxy logs the tenant in.
    let c = Arc::clone(&cluster);
    blocking(move || c.lock().unwrap().promote().expect("promoting")).await;
    let (client, _conn) = connect(proxy.addr, &tenant.db, &tenant.user, &tenant.password)
        .await
        .expect("a login once the cluster is ready");
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn pg_terminate_backend_reaches_the_client_as_57p01_and_frees_the_slot_at_once() {
    let _shared = HEAVY.read().await;
    let t = common::scram_tenant("terminated");
    let proxy = common::start_proxy("").await;
    // The free tier's two slots: one session mid-query, one idle.
    let (busy, busy_conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let (idle, idle_conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let pid_of = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> String {
        rows.into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .expect("a pid")
    };
    let busy_pid = pid_of(busy.simple_query("SELECT pg_backend_pid()").await.unwrap());
    let idle_pid = pid_of(idle.simple_query("SELECT pg_backend_pid()").await.unwrap());
    let query = tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(60)").await });
    common::wait_for_cluster(
        &format!("SELECT state FROM pg_stat_activity WHERE pid = {busy_pid}"),
        "active",
        "the query is running",
    )
    .await;
    assert_eq!(proxy.handle.tenant_connections(&t.db), Some(2));

    // An operator session on the cluster itself.
    let terminated = tokio::task::spawn_blocking(move || {
        common::cluster().psql(
            "postgres",
            &format!(
                "SELECT pg_terminate_backend({busy_pid}) AND pg_terminate_backend({idle_pid})"
            ),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(terminated, "t");
    let killed = Instant::now();

    let err = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .expect("the query ended")
        .unwrap()
        .expect_err("the terminated query fails");
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err}");
    assert_eq!(
        common::message(&err),
        "terminating connection due to administrator command"
    );
    for conn in [busy_conn, idle_conn] {
        let ended = tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the connection ended")
            .unwrap();
        if let Err(e) = ended {
            if let Some(code) = e.code() {
                assert_eq!(code, &SqlState::ADMIN_SHUTDOWN, "{e}");
            }
        }
    }
    wait_until(Duration::from_millis(500), "both slots free", || {
        proxy.handle.tenant_connections(&t.db) == Some(0)
    })
    .await;
    eprintln!(
        "slots free {:?} after pg_terminate_backend",
        killed.elapsed()
    );
    // And usable: the free tier's two sessions fit again.
    let (a, _a) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let (b, _b) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    a.simple_query("SELECT 1").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
}

/// Times `n` round trips of `SELECT 1` on `client`; sorted, in ms.
async fn latencies(client: &tokio_postgres::Client, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        client.simple_query("SELECT 1").await.expect("SELECT 1");
        out.push(started.elapsed().as_secs_f64() * 1e3);
    }
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_100_mb_result_costs_bounded_memory_and_no_ones_latency() {
    let _alone = HEAVY.write().await;
    let slow = common::trust_tenant("slow_reader");
    let other = common::scram_tenant("bystander");
    let proxy = ChildProxy::start(&common::config_text(
        "",
        "prefer",
        &format!("[tenants.{}]\ntier = \"standard\"\n", slow.db),
    ));
    let (bystander, _conn) = connect(proxy.addr, &other.db, &other.user, &other.password)
        .await
        .expect("the bystander logs in");
    let before = latencies(&bystander, 200).await;
    let (rss_before, _) = proxy.memory_kib();

    // 100 MB: 100,000 rows of 1,000 bytes; the client reads its first
    // bytes and then nothing more.
    let mut s = harden::raw_login(proxy.addr, &slow).await;
    s.write_all(&common::frames::frame(
        b'Q',
        b"SELECT repeat('x', 1000) FROM generate_series(1, 100000)\0",
    ))
    .await
    .unwrap();
    let mut first = [0u8; 1024];
    s.read_exact(&mut first).await.unwrap();
    // The stall reaches the cluster: its backend waits to write to the
    // proxy, which holds no more than its buffers.
    common::wait_for_cluster(
        &format!(
            "SELECT wait_event FROM pg_stat_activity WHERE datname = '{}' \
             AND backend_type = 'client backend'",
            slow.db
        ),
        "ClientWrite",
        "the slow reader's backend blocked writing to the proxy",
    )
    .await;
    let during = latencies(&bystander, 200).await;
    let (rss_during, hwm) = proxy.memory_kib();
    let grown = hwm.saturating_sub(rss_before);
    eprintln!(
        "pgtier RSS {rss_before} KiB before, {rss_during} KiB with a stalled 100 MB result \
         (peak {hwm} KiB, +{grown} KiB); bystander SELECT 1 p50/p99/max \
         {:.2}/{:.2}/{:.2} ms before, {:.2}/{:.2}/{:.2} ms during",
        percentile(&before, 0.5),
        percentile(&before, 0.99),
        before[before.len() - 1],
        percentile(&during, 0.5),
        percentile(&during, 0.99),
        during[during.len() - 1],
    );
    assert!(
        grown < 16 * 1024,
        "pgtier grew by {grown} KiB holding a stalled 100 MB result"
    );
    assert!(
        percentile(&during, 0.5) < 3.0 * percentile(&before, 0.5) + 2.0,
        "the bystander's median latency went from {:.2} ms to {:.2} ms",
        percentile(&before, 0.5),
        percentile(&during, 0.5)
    );
    assert!(
        percentile(&during, 0.99) < 100.0,
        "the bystander's p99 latency is {:.2} ms",
        percentile(&during, 0.99)
    );

    // The slow reader gives up: its session ends and the cluster's
    // backend with it.
    drop(s);
    common::wait_for_cluster(
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
             AND backend_type = 'client backend'",
            slow.db
        ),
        "0",
        "the slow reader's backend is gone",
    )
    .await;
}

/// What a hostile connection sends.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    Nothing,
    BytesForStartup,
    BytesForClientHello,
    StartupThenGarbage,
}

async fn hostile(
    addr: std::net::SocketAddr,
    kind: Hostile,
    seed: u64,
) -> std::io::Result<TcpStream> {
    let mut rng = Rng::new(seed);
    let mut s = TcpStream::connect(addr).await?;
    match kind {
        Hostile::Nothing => {}
        Hostile::BytesForStartup => {
            let n = 1 + rng.below(64) as usize;
            s.write_all(&rng.bytes(n)).await?;
        }
        Hostile::BytesForClientHello => {
            // Half ask for TLS first, half start "direct" TLS; then noise
            // where the ClientHello belongs.
            if seed.is_multiple_of(2) {
                s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
                let mut answer = [0u8; 1];
                s.read_exact(&mut answer).await?;
                let n = 1 + rng.below(300) as usize;
                s.write_all(&rng.bytes(n)).await?;
            } else {
                let mut hello = vec![0x16, 0x03, 0x01];
                let n = 1 + rng.below(300) as usize;
                hello.extend(rng.bytes(n));
                s.write_all(&hello).await?;
            }
        }
        Hostile::StartupThenGarbage => {
            let db = format!("nosuchdb_{}", rng.below(1_000_000));
            s.write_all(&harden::startup_packet("nobody", &db)).await?;
            let n = 1 + rng.below(200) as usize;
            s.write_all(&rng.bytes(n)).await?;
        }
    }
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_silent_and_garbage_connections_leave_other_tenants_logging_in_within_a_second() {
    let _alone = HEAVY.write().await;
    let seed = harden::seed();
    eprintln!("seed {seed} (TEST_SEED={seed} replays it)");
    let proxy = common::start_proxy_with("login_timeout = \"5s\"", "").await;
    let shared = proxy.handle.shared().clone();
    let t = common::scram_tenant("flood_victim");

    // The silent ones last, so that they are all still waiting (for
    // login_timeout) when the normal client comes.
    let kinds = [
        Hostile::BytesForStartup,
        Hostile::BytesForClientHello,
        Hostile::StartupThenGarbage,
        Hostile::Nothing,
    ];
    // Opened 32 at a time: a burst of 800 SYNs at once overflows the
    // kernel's accept queue (a SYN flood is the network's to stop, see
    // SECURITY.md), and with SYN cookies a silent client whose final ACK
    // was dropped then waits forever on a connection no server ever saw.
    let flood_started = Instant::now();
    let plan: Vec<(Hostile, u64)> = kinds
        .into_iter()
        .enumerate()
        .flat_map(|(k, kind)| (0..200u64).map(move |i| (kind, seed ^ ((k as u64) << 32 | i))))
        .collect();
    let addr = proxy.addr;
    let opened: Vec<(Hostile, std::io::Result<TcpStream>)> = futures_util::stream::iter(plan)
        .map(|(kind, conn_seed)| async move { (kind, hostile(addr, kind, conn_seed).await) })
        .buffered(32)
        .collect()
        .await;
    let mut streams = Vec::new();
    for (kind, o) in opened {
        // A connection the proxy already refused and closed may fail
        // its later writes: that is a cleaned-up connection too.
        if let Ok(s) = o {
            streams.push((kind, s));
        }
    }
    // All 800 arrived; the silent ones at least still wait.
    eprintln!(
        "800 hostile connections opened in {:?}",
        flood_started.elapsed()
    );
    // Connected is not yet accepted: pgtier's accept loops may still be
    // taking the last ones from the backlog.
    wait_until(Duration::from_secs(5), "200 logins in progress", || {
        shared.logins.in_progress() >= 200
    })
    .await;

    let started = Instant::now();
    let (client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .expect("a normal client logs in during the flood");
    let took = started.elapsed();
    client.simple_query("SELECT 1").await.unwrap();
    eprintln!("login during the flood took {took:?}");
    assert!(took < Duration::from_secs(1), "login took {took:?}");

    // Every hostile connection is closed by the proxy: the silent ones
    // at login_timeout (5 s), the others sooner.
    let closed_by = Instant::now() + Duration::from_secs(15);
    for (kind, mut s) in streams {
        let mut sink = Vec::new();
        let closed = tokio::time::timeout_at(closed_by.into(), s.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "a {kind:?} connection is still open ({} logins in progress, {} connections)",
            shared.logins.in_progress(),
            shared.open_connections()
        );
    }
    wait_until(
        Duration::from_secs(5),
        "no login in progress, only the normal client connected",
        || shared.logins.in_progress() == 0 && shared.open_connections() == 1,
    )
    .await;
    assert!(!proxy.task.is_finished(), "the proxy is up");
    client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(proxy.handle.tenant_connections(&t.db), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_100_active_sessions_finishes_or_ends_them_with_57p01_and_exits_0() {
    let _alone = HEAVY.write().await;
    let t = common::trust_tenant("sigterm");
    let mut proxy = ChildProxy::start(&common::config_text(
        "shutdown_grace = \"2s\"",
        "require",
        &format!("[tenants.{}]\ntier = \"standard\"\n", t.db),
    ));
    let mut sessions = Vec::new();
    for _ in 0..100 {
        sessions.push(
            connect(proxy.addr, &t.db, &t.user, &t.password)
                .await
                .expect("login"),
        );
    }
    // All at once: half finish within the grace period, half outlast it.
    let mut short = Vec::new();
    let mut long = Vec::new();
    for (i, (client, conn)) in sessions.into_iter().enumerate() {
        let sql = if i.is_multiple_of(2) {
            "SELECT pg_sleep(1)"
        } else {
            "SELECT pg_sleep(10)"
        };
        let query = tokio::spawn(async move {
            let result = client.simple_query(sql).await.map(drop);
            (result, client)
        });
        if i.is_multiple_of(2) {
            short.push((query, conn));
        } else {
            long.push((query, conn));
        }
    }
    common::wait_for_cluster(
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
             AND state = 'active' AND query LIKE 'SELECT pg_sleep%'",
            t.db
        ),
        "100",
        "100 queries in flight",
    )
    .await;
    proxy.signal("TERM");
    let signalled = Instant::now();

    for (query, _conn) in short {
        let (result, _client) = tokio::time::timeout(Duration::from_secs(10), query)
            .await
            .expect("a short query ended")
            .unwrap();
        result.expect("a query shorter than the grace period finishes");
    }
    for (query, conn) in long {
        let (result, _client) = tokio::time::timeout(Duration::from_secs(15), query)
            .await
            .expect("a long query ended")
            .unwrap();
        let err = result.expect_err("a query longer than the grace period is cut off");
        assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err}");
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    }
    let code = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(15)));
    let took = signalled.elapsed();
    let log = proxy.log_text();
    assert_eq!(code, Some(0), "exit code after SIGTERM; log:\n{log}");
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
    assert!(log.contains("shutdown complete"), "{log}");
    eprintln!("pgtier exited 0 {took:?} after SIGTERM (grace 2 s)");
}
