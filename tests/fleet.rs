//! Several pgtier instances, one set of limits: three `pgtier` processes on
//! loopback in front of one cluster, sharing a throwaway Redis. A free
//! tenant's two slots, cancels, the row quota and the inactivity report
//! hold across them; a killed instance's slots come back within the lease;
//! the store's failures behave as configured.

mod common;
mod harden;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{connect, scram_tenant};
use harden::ChildProxy;
use pgtier::sandbox::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a dead instance's leases outlive it in these tests.
const LEASE: Duration = Duration::from_secs(2);

fn fleet_table(redis: &RedisServer, extra: &str) -> String {
    format!(
        "[fleet]\nstore = \"redis\"\nurl = \"{}\"\nlease_ttl = \"2s\"\n{extra}",
        redis.url()
    )
}

/// An instance of the fleet (plaintext allowed, for raw-frame tests).
fn instance(redis: &RedisServer, top_level: &str, tables: &str) -> ChildProxy {
    ChildProxy::start(&common::config_text(
        top_level,
        "prefer",
        &format!("{}{tables}", fleet_table(redis, "")),
    ))
}

fn three(redis: &RedisServer, tables: &str) -> [ChildProxy; 3] {
    [
        instance(redis, "", tables),
        instance(redis, "", tables),
        instance(redis, "", tables),
    ]
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// Waits until every instance has joined the fleet (its first heartbeat).
async fn joined(proxies: &[&ChildProxy]) {
    for p in proxies {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.log_text().contains("joined the fleet") {
            assert!(Instant::now() < deadline, "{}", p.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_tenant_holds_two_connections_across_three_instances() {
    let redis = RedisServer::start().unwrap();
    let t = scram_tenant("fleet_cap");
    let [a, b, c] = three(&redis, "");
    joined(&[&a, &b, &c]).await;
    let (on_a, conn_a) = connect(a.addr, &t.db, &t.user, &t.password).await.unwrap();
    let (_on_b, _conn_b) = connect(b.addr, &t.db, &t.user, &t.password).await.unwrap();
    let e = connect(c.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "53300", "the fleet's third connection");
    assert_eq!(
        common::message(&e),
        format!(
            "too many connections for database \"{}\": the free tier allows 2",
            t.db
        )
    );
    // A's session ends: its slot is free for C.
    drop(on_a);
    let _ = conn_a.await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect(c.addr, &t.db, &t.user, &t.password).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => assert_eq!(code(&e), "53300"),
            Err(e) => panic!("A's slot never came back: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_frees_its_slots_within_the_lease() {
    let redis = RedisServer::start().unwrap();
    let t = scram_tenant("fleet_kill");
    let [mut a, b, c] = three(&redis, "");
    joined(&[&a, &b, &c]).await;
    let (_on_a, _conn_a) = connect(a.addr, &t.db, &t.user, &t.password).await.unwrap();
    let (_on_b, _conn_b) = connect(b.addr, &t.db, &t.user, &t.password).await.unwrap();
    assert_eq!(
        code(
            &connect(c.addr, &t.db, &t.user, &t.password)
                .await
                .unwrap_err()
        ),
        "53300"
    );
    a.signal("KILL");
    assert_eq!(
        a.wait_exit(Duration::from_secs(5)),
        None,
        "killed, no exit code"
    );
    let killed = Instant::now();
    loop {
        match connect(c.addr, &t.db, &t.user, &t.password).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(code(&e), "53300");
                assert!(
                    killed.elapsed() < LEASE + Duration::from_secs(2),
                    "the killed instance's slot still held after {:?}",
                    killed.elapsed()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let freed_after = killed.elapsed();
    assert!(
        freed_after <= LEASE + Duration::from_secs(2),
        "{freed_after:?}"
    );
}

/// Logs `t` in over plaintext (trust, or SCRAM in proxy mode); returns
/// the stream and its BackendKeyData body.
async fn raw_session(addr: SocketAddr, t: &common::Tenant) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let msgs = common::raw_login_ok(&mut s, &t.user, &t.db, &t.password).await;
    let key = msgs
        .into_iter()
        .find(|(tag, _)| *tag == b'K')
        .map(|(_, body)| body)
        .expect("BackendKeyData");
    (s, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_another_instance_cancels_the_query() {
    let redis = RedisServer::start().unwrap();
    let t = common::trust_tenant("fleet_cancel");
    let tables = format!("[tenants.{}]\ntier = \"standard\"\n", t.db);
    let [a, b, c] = three(&redis, &tables);
    joined(&[&a, &b, &c]).await;
    let (mut s, key) = raw_session(a.addr, &t).await;
    s.write_all(&harden::frame(b'Q', b"SELECT pg_sleep(30)\0"))
        .await
        .unwrap();
    common::wait_for_cluster(
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE 'SELECT pg_sleep%' AND state = 'active'",
            t.db
        ),
        "1",
        "the query running",
    )
    .await;
    // The cancel goes to C, which never saw the session.
    let mut cancel = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    cancel.extend(&key);
    let started = Instant::now();
    let mut to_c = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    to_c.write_all(&cancel).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), to_c.read_to_end(&mut rest)).await;
    loop {
        let (tag, body) = harden::read_message(&mut s).await.expect("an answer");
        if tag == b'E' {
            assert_eq!(harden::sqlstate(&body).as_deref(), Some("57014"));
            break;
        }
        assert_ne!(tag, b'Z', "the query ended without being cancelled");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // A key nobody issued is still dropped silently, and cancels nothing.
    let mut wrong = cancel.clone();
    *wrong.last_mut().unwrap() ^= 1;
    let mut to_b = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    to_b.write_all(&wrong).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), to_b.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_row_quota_is_refused_on_every_instance() {
    let redis = RedisServer::start().unwrap();
    let t = scram_tenant("fleet_quota");
    let tables = format!(
        "{}[tenants.{}]\nrow_limit = 10\ntier = \"standard\"\n",
        common::quota_table("1s"),
        t.db
    );
    let [a, b, c] = three(&redis, &tables);
    joined(&[&a, &b, &c]).await;
    let clients = [
        connect(a.addr, &t.db, &t.user, &t.password).await.unwrap(),
        connect(b.addr, &t.db, &t.user, &t.password).await.unwrap(),
        connect(c.addr, &t.db, &t.user, &t.password).await.unwrap(),
    ];
    clients[0]
        .0
        .batch_execute("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 20)")
        .await
        .unwrap();
    for (i, (client, _)) in clients.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match client.batch_execute("INSERT INTO t VALUES (0)").await {
                Err(e) if code(&e) == "53400" => break,
                Err(e) => panic!("instance {i}: {e:?}"),
                Ok(()) => {
                    assert!(Instant::now() < deadline, "instance {i} never refused");
                    // Each probe that slipped through adds a row; fine.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    // Deleting on one instance unblocks all of them.
    clients[2].0.batch_execute("DELETE FROM t").await.unwrap();
    for (i, (client, _)) in clients.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = client.batch_execute("INSERT INTO t VALUES (1)").await {
            assert_eq!(code(&e), "53400", "instance {i}");
            assert!(Instant::now() < deadline, "instance {i} still refusing");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_and_a_store_restart_keep_the_fleets_counts() {
    let mut redis = RedisServer::start().unwrap();
    let t = scram_tenant("fleet_reload");
    let [a, b, c] = three(&redis, "");
    joined(&[&a, &b, &c]).await;
    let (_on_a, _ca) = connect(a.addr, &t.db, &t.user, &t.password).await.unwrap();
    let (_on_b, _cb) = connect(b.addr, &t.db, &t.user, &t.password).await.unwrap();
    // A reload of B (its file unchanged) resets nothing.
    b.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.log_text().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "{}", b.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        code(
            &connect(c.addr, &t.db, &t.user, &t.password)
                .await
                .unwrap_err()
        ),
        "53300"
    );
    // The store restarts empty: within one heartbeat every instance has
    // re-asserted its share, and the cap holds again.
    redis.restart().unwrap();
    store_count_reaches(&redis, &t.db, 2).await;
    let e = connect(c.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "53300", "the cap after the store restarted");
}

/// Waits until the store's count of `tenant`'s connections (the sum over
/// instances) is `want`.
async fn store_count_reaches(redis: &RedisServer, tenant: &str, want: u64) {
    let client = redis::Client::open(redis.url()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < deadline {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            let counts: redis::RedisResult<Vec<u64>> = redis::cmd("HVALS")
                .arg(format!("pgtier:slots:{tenant}"))
                .query_async(&mut conn)
                .await;
            if let Ok(counts) = counts {
                let sum = counts.iter().sum::<u64>();
                if sum == want {
                    return;
                }
                seen = Some(sum);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the store counted {seen:?} connections of {tenant}, not {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_open_or_closed_as_configured() {
    let mut redis = RedisServer::start().unwrap();
    let t = scram_tenant("fleet_down");
    let admin_port = free_port();
    let open = instance(
        &redis,
        &format!("admin_listen = \"127.0.0.1:{admin_port}\""),
        "",
    );
    let closed = ChildProxy::start(&common::config_text(
        "",
        "prefer",
        &fleet_table(&redis, "on_store_error = \"closed\"\n"),
    ));
    joined(&[&open, &closed]).await;
    redis.kill();
    // Open: this instance's own count against the limit.
    let (_one, _c1) = connect(open.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let (_two, _c2) = connect(open.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    assert_eq!(
        code(
            &connect(open.addr, &t.db, &t.user, &t.password)
                .await
                .unwrap_err()
        ),
        "53300"
    );
    // The two sessions' cancel keys could not be written: dropped and
    // counted, not queued for ever.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = http_get(admin_port, "/metrics").await;
        let dropped = metrics
            .lines()
            .find_map(|l| l.strip_prefix("pgtier_fleet_ops_dropped_total "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if dropped >= Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pgtier_fleet_ops_dropped_total {dropped:?} with the store down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Closed: no slot without the store.
    let e = connect(closed.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "08006");
    assert_eq!(
        common::message(&e),
        "could not check the database's connection limit"
    );
    // Back again: the closed instance serves once more.
    redis.start_again().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let other = scram_tenant("fleet_back");
        match connect(closed.addr, &other.db, &other.user, &other.password).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(code(&e), "08006");
                assert!(
                    Instant::now() < deadline,
                    "the store came back, logins did not"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_api_shows_the_instance_and_the_fleet() {
    let redis = RedisServer::start().unwrap();
    let t = scram_tenant("fleet_api");
    let admin_port = free_port();
    let a = instance(
        &redis,
        &format!("admin_listen = \"127.0.0.1:{admin_port}\""),
        "",
    );
    let b = instance(&redis, "", "");
    joined(&[&a, &b]).await;
    let (_on_a, _ca) = connect(a.addr, &t.db, &t.user, &t.password).await.unwrap();
    let (_on_b, _cb) = connect(b.addr, &t.db, &t.user, &t.password).await.unwrap();
    let get = |path: String| async move {
        let body = http_get(admin_port, &path).await;
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    let fleet = get("/fleet".to_owned()).await;
    assert_eq!(fleet["store"], "redis");
    assert_eq!(fleet["store_up"], true);
    assert_eq!(
        fleet["instances"].as_array().map(Vec::len),
        Some(2),
        "{fleet}"
    );
    let tenant = get(format!("/tenants/{}", t.db)).await;
    assert_eq!(tenant["connections"], 1, "this instance's own: {tenant}");
    assert_eq!(tenant["fleet_connections"], 2, "the fleet's: {tenant}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of an operator API GET.
async fn http_get(admin_port: u16, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", admin_port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}
