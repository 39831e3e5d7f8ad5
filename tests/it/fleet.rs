//! Several pgtier instances, one set of limits: three `pgtier` processes on
//! loopback in front of one cluster, sharing a throwaway Redis. A free
//! tenant's two slots, cancels, the row quota and the inactivity report
//! hold across them; a killed instance's slots come back within the lease;
//! the store's failures behave as configured.

use crate::common;
use crate::common::code;
use crate::harden;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{connect, scram_tenant};
use harden::ChildProxy;
use pgtier_testkit::sandbox::RedisServer;
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
    s.write_all(&common::frames::frame(b'Q', b"SELECT pg_sleep(30)\0"))
        .await
        .unwrap();
    common::wait_until_running(&t.db, "SELECT pg_sleep", "the query running").await;
    // The cancel goes to C, which never saw the session.
    let cancel = common::cancel_request(&key);
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
    while harden::read_message(&mut s).await.expect("ReadyForQuery").0 != b'Z' {}
    // A key nobody issued is still dropped silently, and cancels nothing:
    // sent while a statement runs, the statement runs to its end.
    s.write_all(&common::frames::frame(b'Q', b"SELECT pg_sleep(2)\0"))
        .await
        .unwrap();
    common::wait_for_cluster(
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query = 'SELECT pg_sleep(2)' AND state = 'active'",
            t.db
        ),
        "1",
        "the second query running",
    )
    .await;
    let mut wrong = cancel.clone();
    *wrong.last_mut().unwrap() ^= 1;
    let mut to_b = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    to_b.write_all(&wrong).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), to_b.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
    loop {
        let (tag, body) = harden::read_message(&mut s).await.expect("an answer");
        assert_ne!(
            tag,
            b'E',
            "a made-up key cancelled the statement: {:?}",
            harden::sqlstate(&body)
        );
        if tag == b'Z' {
            break;
        }
    }
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
    // A tenant of the configuration with no session anywhere.
    let idle = common::unique("fleet_api_idle");
    let a = instance(
        &redis,
        &format!("admin_listen = \"127.0.0.1:{admin_port}\""),
        &format!("[tenants.{idle}]\ntier = \"standard\"\n"),
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
    // The list carries the fleet's counts too (asked of the store at once).
    let list = get("/tenants".to_owned()).await;
    let entry = |name: &str| {
        list.as_array()
            .and_then(|all| all.iter().find(|v| v["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} not listed: {list}"))
    };
    let listed = entry(&t.db);
    assert_eq!(listed["connections"], 1, "{listed}");
    assert_eq!(
        listed["fleet_connections"], 2,
        "the fleet's, listed: {listed}"
    );
    let quiet = entry(&idle);
    assert_eq!(quiet["fleet_connections"], 0, "{quiet}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of an operator API GET on this machine's `admin_port`.
async fn http_get(admin_port: u16, path: &str) -> String {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin_port));
    let reply = common::http::http(addr, "GET", path, None).await;
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    reply.body
}

// ---- Store faults: a stalled, a restarted and a slow store ----------------

/// The lease of the fault tests; instances heartbeat every third of it.
const FAULT_LEASE: &str = "3s";
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Scheduling slack on a loaded test machine, on top of a heartbeat.
const SLACK: Duration = Duration::from_millis(1500);

/// An instance with the fault tests' lease and `extra` in `[fleet]`.
fn member(redis: &RedisServer, tables: &str, extra: &str) -> ChildProxy {
    ChildProxy::start(&common::config_text(
        "",
        "prefer",
        &format!(
            "[fleet]\nstore = \"redis\"\nurl = \"{}\"\nlease_ttl = \"{FAULT_LEASE}\"\n{extra}{tables}",
            redis.url()
        ),
    ))
}

/// A connection of the test's own to the store (patient: it may wait out
/// a busy script).
async fn store_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

type Session = (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
);

/// Logs `t` in through every address at once: the sessions admitted and
/// the SQLSTATEs of the refusals.
async fn logins(t: &common::Tenant, addrs: &[SocketAddr]) -> (Vec<Session>, Vec<String>) {
    let mut tries = tokio::task::JoinSet::new();
    for &addr in addrs {
        let (db, user, password) = (t.db.clone(), t.user.clone(), t.password.clone());
        tries.spawn(async move { connect(addr, &db, &user, &password).await });
    }
    let (mut admitted, mut refused) = (Vec::new(), Vec::new());
    while let Some(done) = tries.join_next().await {
        match done.unwrap() {
            Ok(session) => admitted.push(session),
            Err(e) => refused.push(code(&e)),
        }
    }
    (admitted, refused)
}

async fn close_all(sessions: Vec<Session>) {
    for (client, conn) in sessions {
        drop(client);
        let _ = conn.await;
    }
}

/// Waits (from `since`, at most `within`) until a free tenant's whole cap
/// can be held again, one session through each of `a` and `b`, and a third
/// is refused: no phantom slot is left, and none is lost.
async fn cap_whole_again(
    t: &common::Tenant,
    a: SocketAddr,
    b: SocketAddr,
    since: Instant,
    within: Duration,
) {
    loop {
        let (admitted, refused) = logins(t, &[a, b]).await;
        if admitted.len() == 2 {
            let e = connect(a, &t.db, &t.user, &t.password).await.unwrap_err();
            assert_eq!(code(&e), "53300", "the cap once whole again");
            close_all(admitted).await;
            eprintln!(
                "the cap whole again {:?} after the store answered",
                since.elapsed()
            );
            return;
        }
        assert!(
            since.elapsed() < within,
            "{:?} after the store answered again, logins are still refused ({refused:?}) for sessions that do not exist",
            since.elapsed()
        );
        close_all(admitted).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_leaves_no_phantom_slots() {
    let redis = RedisServer::start().unwrap();
    let t = scram_tenant("fleet_stall");
    let closed = member(&redis, "", "on_store_error = \"closed\"\n");
    let open = member(&redis, "", "");
    joined(&[&closed, &open]).await;
    // Some use first (so each instance has its slot script in the store's
    // cache: a stalled call is then the script itself), all given back.
    let (used, refused) = logins(&t, &[closed.addr, open.addr]).await;
    assert!(refused.is_empty(), "{refused:?}");
    close_all(used).await;
    store_count_reaches(&redis, &t.db, 0).await;
    // The store stalls: each instance's slot script waits in the kernel,
    // its caller gives up after 0.5 s, and the store runs it on resuming.
    redis.stall().unwrap();
    let stalled = Instant::now();
    let (to_closed, to_open) = tokio::join!(
        connect(closed.addr, &t.db, &t.user, &t.password),
        connect(open.addr, &t.db, &t.user, &t.password)
    );
    assert_eq!(code(&to_closed.unwrap_err()), "08006", "closed: refused");
    close_all(vec![to_open.expect("open: admitted on its own count")]).await;
    // The stall lasts a second (the scenario, not a wait for a condition).
    tokio::time::sleep_until((stalled + Duration::from_secs(1)).into()).await;
    redis.resume().unwrap();
    cap_whole_again(
        &t,
        closed.addr,
        open.addr,
        Instant::now(),
        HEARTBEAT + SLACK,
    )
    .await;
}

/// The one instance holding sessions of `tenant` in the store.
async fn holder_of(conn: &mut redis::aio::MultiplexedConnection, tenant: &str) -> String {
    let ids: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("pgtier:slots:{tenant}"))
        .query_async(conn)
        .await
        .unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids.into_iter().next().unwrap()
}

/// Returns just after `id`'s next heartbeat (its key's expiry pushed back).
async fn just_after_heartbeat(conn: &mut redis::aio::MultiplexedConnection, id: &str) {
    let key = format!("pgtier:instance:{id}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(conn)
        .await
        .unwrap();
    loop {
        assert!(Instant::now() < deadline, "no heartbeat of {id} seen");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(conn)
            .await
            .unwrap();
        if ttl > last + 100 {
            return;
        }
        last = ttl;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restart_just_after_a_heartbeat_gives_no_instance_its_cap_again() {
    let mut redis = RedisServer::start().unwrap();
    let t = scram_tenant("fleet_restart");
    let tables = format!("[tenants.{}]\nmax_connections = 4\n", t.db);
    let a = member(&redis, &tables, "");
    let b = member(&redis, &tables, "");
    joined(&[&a, &b]).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(a.addr, &t.db, &t.user, &t.password).await.unwrap());
    }
    let (more, refused) = logins(&t, &[a.addr, b.addr]).await;
    assert!(more.is_empty() && refused == ["53300"; 2], "{refused:?}");
    // The worst moment: the store restarts empty just after A's heartbeat,
    // so the next one, which re-asserts A's 4, is a whole interval away.
    let mut conn = store_conn(&redis).await;
    let id = holder_of(&mut conn, &t.db).await;
    just_after_heartbeat(&mut conn, &id).await;
    let (to_a, to_b) = ([a.addr; 4], [b.addr; 5]);
    let probe = scram_tenant("fleet_restart_probe");
    redis.restart().unwrap();
    let restarted = Instant::now();
    // Another tenant's login through each first: the first call on a
    // connection the restart broke fails (and falls back), and the
    // instance reconnects; the logins below then reach the new store.
    let (probes, _) = logins(&probe, &[a.addr, b.addr]).await;
    close_all(probes).await;
    let ((more, refused), (through_b, _)) = tokio::join!(logins(&t, &to_a), logins(&t, &to_b));
    let window = restarted.elapsed();
    assert!(
        more.is_empty(),
        "{} more sessions admitted by A {window:?} after the store restarted",
        more.len()
    );
    assert_eq!(refused, ["53300"; 4]);
    assert!(
        window < HEARTBEAT,
        "the logins took {window:?}: they did not race the next heartbeat"
    );
    // B saw none of A's sessions until A's heartbeat: the README's bound
    // is the cap per instance, never more.
    assert!(through_b.len() <= 4, "B admitted {}", through_b.len());
    eprintln!(
        "within {window:?} of the restart: A admitted 0 of 4, B {} of 5",
        through_b.len()
    );
    store_count_reaches(&redis, &t.db, 4 + through_b.len() as u64).await;
    drop(through_b);
    store_count_reaches(&redis, &t.db, 4).await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_neither_over_admits_nor_leaves_phantom_slots() {
    let redis = RedisServer::start().unwrap();
    let t = scram_tenant("fleet_slow");
    let a = member(&redis, "", "on_store_error = \"closed\"\n");
    let b = member(&redis, "", "on_store_error = \"closed\"\n");
    // C only ever sees its logins time out: nothing of its own it asserted
    // before could mask what a late slot script leaves.
    let c = member(&redis, "", "on_store_error = \"closed\"\n");
    joined(&[&a, &b, &c]).await;
    // The store answers in bursts: frozen 0.45 s then 0.7 s, each time
    // running for 50 ms in between, so that a call waits up to just under
    // the 0.5 s bound, or past it (and is then run late).
    let slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (long_freeze, mut freezes) = tokio::sync::watch::channel(0u32);
    let busy = tokio::spawn({
        let slow = std::sync::Arc::clone(&slow);
        let pid = redis.pid().to_string();
        async move {
            let signal = |name: &str| {
                let status = std::process::Command::new("kill")
                    .args([name, &pid])
                    .status()
                    .unwrap();
                assert!(status.success());
            };
            for frozen in [450u64, 700].into_iter().cycle() {
                if !slow.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                signal("-STOP");
                if frozen > 500 {
                    long_freeze.send_modify(|n| *n += 1);
                }
                tokio::time::sleep(Duration::from_millis(frozen)).await;
                signal("-CONT");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    // Rounds of three logins at once, never more than the cap admitted,
    // until some calls timed out (their scripts run late by the store),
    // the last round's too (what it leaves is checked once the store is
    // quick again).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut rounds, mut admitted, mut timed_out) = (0, 0, 0);
    let mut last_timed_out = false;
    while rounds < 6 || timed_out < 2 || !last_timed_out {
        assert!(
            Instant::now() < deadline,
            "in 20 s of a slow store, {timed_out} logins timed out"
        );
        rounds += 1;
        let (sessions, refused) = logins(&t, &[a.addr, b.addr, a.addr]).await;
        assert!(
            sessions.len() <= 2,
            "the slow store let {} sessions of a free tenant in",
            sessions.len()
        );
        for r in &refused {
            assert!(r == "53300" || r == "08006", "{r}");
        }
        admitted += sessions.len();
        timed_out += refused.iter().filter(|r| *r == "08006").count();
        last_timed_out = refused.iter().any(|r| r == "08006");
        close_all(sessions).await;
    }
    // A login through C as a long freeze begins: its slot script waits
    // past the bound, C refuses, and the store runs the script late.
    freezes.borrow_and_update();
    freezes.changed().await.unwrap();
    let (through_c, refused) = logins(&t, &[c.addr]).await;
    assert!(through_c.is_empty() && refused == ["08006"], "{refused:?}");
    slow.store(false, std::sync::atomic::Ordering::Relaxed);
    busy.await.unwrap();
    eprintln!("slow store: {rounds} rounds, {admitted} admitted, {timed_out} timed out");
    cap_whole_again(&t, a.addr, b.addr, Instant::now(), HEARTBEAT + SLACK).await;
}

/// Whether `t`'s `pg_sleep` query still runs on the cluster.
async fn sleeping(t: &common::Tenant) -> bool {
    let sql = common::running_sql(&t.db, "SELECT pg_sleep");
    let out = tokio::task::spawn_blocking(move || common::cluster().psql("postgres", &sql))
        .await
        .unwrap()
        .unwrap();
    out.trim() != "0"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_another_instance_after_a_store_restart() {
    let mut redis = RedisServer::start().unwrap();
    let t = common::trust_tenant("fleet_cancel_restart");
    let tables = format!("[tenants.{}]\ntier = \"standard\"\n", t.db);
    let a = member(&redis, &tables, "");
    let c = member(&redis, &tables, "");
    joined(&[&a, &c]).await;
    let (mut s, key) = raw_session(a.addr, &t).await;
    // Its cancel key is in the store, then the store restarts empty.
    let mut conn = store_conn(&redis).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("pgtier:cancel:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cancel key never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.restart().unwrap();
    let restarted = Instant::now();
    s.write_all(&common::frames::frame(b'Q', b"SELECT pg_sleep(30)\0"))
        .await
        .unwrap();
    common::wait_until_running(&t.db, "SELECT pg_sleep", "the query running").await;
    let cancel = common::cancel_request(&key);
    // Sent to C, which never saw the session, until it cancels.
    while sleeping(&t).await {
        assert!(
            restarted.elapsed() < HEARTBEAT + SLACK,
            "{:?} after the store restarted, a cancel through another instance still finds nothing",
            restarted.elapsed()
        );
        let mut to_c = tokio::net::TcpStream::connect(c.addr).await.unwrap();
        to_c.write_all(&cancel).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), to_c.read_to_end(&mut rest)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let (tag, body) = harden::read_message(&mut s).await.expect("an answer");
        if tag == b'E' {
            assert_eq!(harden::sqlstate(&body).as_deref(), Some("57014"));
            break;
        }
        assert_ne!(tag, b'Z', "the query ended without being cancelled");
    }
}

// ---- The storage limit across instances (issue 24) -------------------------
//
// One instance measures a tenant's size (under the store's measurement
// lock) and publishes it in the store's rows hash (`bytes`); the others
// adopt it each second and refuse (or stop refusing) alike.

/// How long a figure may take to show: the auditor measures a written
/// tenant a `[quota] interval` (1 s here) after the write, instances read
/// the store each second, and the machine may be loaded.
const MEASURED: Duration = Duration::from_secs(20);

/// Three instances with their admin API and the auditor measuring every
/// second, `t` a free tenant (one session per instance allowed) with a
/// storage limit 3 MB above its fresh size (as in storage.rs): the instances, their admin ports, the limit
/// in MB.
async fn storage_fleet(
    redis: &RedisServer,
    t: &common::Tenant,
) -> ([ChildProxy; 3], [u16; 3], u64) {
    let limit_mb = crate::storage::mb_above(&t.db, 3).await;
    let tables = format!(
        "{}[tenants.{}]\nmax_connections = 3\nstorage_limit = \"{limit_mb}MB\"\n",
        common::quota_table("1s"),
        t.db
    );
    let ports = [free_port(), free_port(), free_port()];
    let admin = |port: u16| format!("admin_listen = \"127.0.0.1:{port}\"");
    let proxies = [
        instance(redis, &admin(ports[0]), &tables),
        instance(redis, &admin(ports[1]), &tables),
        instance(redis, &admin(ports[2]), &tables),
    ];
    (proxies, ports, limit_mb)
}

/// `/tenants/<db>` of the instance whose admin API is on `port`.
async fn tenant_view(port: u16, db: &str) -> serde_json::Value {
    let body = http_get(port, &format!("/tenants/{db}")).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Waits until the view of `db` on the instance at `port` satisfies
/// `holds`; that view.
async fn wait_view(
    port: u16,
    db: &str,
    what: &str,
    holds: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + MEASURED;
    loop {
        let view = tenant_view(port, db).await;
        if holds(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "the instance on admin port {port}, after {MEASURED:?}: not {what}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The size the store holds for `db` (its rows hash's `bytes`).
async fn stored_bytes(conn: &mut redis::aio::MultiplexedConnection, db: &str) -> Option<u64> {
    redis::cmd("HGET")
        .arg(format!("pgtier:rows:{db}"))
        .arg("bytes")
        .query_async(conn)
        .await
        .unwrap()
}

/// Waits until no instance holds the store's measurement lock of `db`.
async fn no_measurement_running(conn: &mut redis::aio::MultiplexedConnection, db: &str) {
    let deadline = Instant::now() + MEASURED;
    loop {
        let held: bool = redis::cmd("EXISTS")
            .arg(format!("pgtier:measuring:{db}"))
            .query_async(conn)
            .await
            .unwrap();
        if !held {
            return;
        }
        assert!(Instant::now() < deadline, "{db} measured for {MEASURED:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until no instance has measured `db` for two seconds (two ticks
/// of every auditor: an instance whose login measurement the lock turned
/// away may still take its own before it adopts the store's); the
/// cluster's time at which that quiet began.
async fn quiet(store: &mut redis::aio::MultiplexedConnection, db: &str) -> String {
    let deadline = Instant::now() + MEASURED;
    loop {
        no_measurement_running(store, db).await;
        let since = cluster_now().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        if auditors_measured(db, Some(&since)).await == 0 {
            return since;
        }
        assert!(Instant::now() < deadline, "{db} measured again and again");
    }
}

/// The cluster's clock now, as text (for comparing with
/// `pg_stat_activity`'s times).
async fn cluster_now() -> String {
    common::superuser_client()
        .await
        .query_one("SELECT clock_timestamp()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// The auditor connections (one per instance that measured: each keeps
/// its connection to the database for the next measurement) whose last
/// size measurement of `db` ended after `since` (all of them with `None`).
async fn auditors_measured(db: &str, since: Option<&str>) -> i64 {
    common::superuser_client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'pgtier quota' AND query LIKE '%pg_database_size%' \
             AND ($2::text IS NULL OR state_change > $2::text::timestamptz)",
            &[&db, &since],
        )
        .await
        .unwrap()
        .get(0)
}

/// `client`'s growing statement is refused with 53100 and the free tier's
/// message for `limit_mb`.
async fn refused_for_storage(
    client: &tokio_postgres::Client,
    db: &str,
    limit_mb: u64,
    which: &str,
) {
    let e = client
        .batch_execute("INSERT INTO small VALUES (2)")
        .await
        .expect_err(&format!("instance {which} let a growing statement through"));
    assert_eq!(code(&e), "53100", "instance {which}: {e:?}");
    let message = common::message(&e);
    assert!(
        message.starts_with(&format!("storage limit exceeded: database \"{db}\" uses "))
            && message.ends_with(&format!("MB; the free tier allows {limit_mb} MB")),
        "instance {which}: {message}"
    );
}

/// Waits until every client's growing statement is accepted again (each
/// refusal meanwhile a 53100).
async fn accepted_again(clients: &[Session], which: &[&str]) {
    for ((client, _), which) in clients.iter().zip(which) {
        let deadline = Instant::now() + MEASURED;
        while let Err(e) = client.batch_execute("INSERT INTO small VALUES (3)").await {
            assert_eq!(code(&e), "53100", "instance {which}: {e:?}");
            assert!(
                Instant::now() < deadline,
                "instance {which} still refuses {MEASURED:?} after the TRUNCATE"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// TRUNCATE through C (the third client) frees the space: every instance
/// accepts growing statements again, and the store's figure is back under
/// `limit`.
async fn truncated_through_c(
    clients: &[Session],
    store: &mut redis::aio::MultiplexedConnection,
    db: &str,
    limit: u64,
) {
    clients[2].0.batch_execute("TRUNCATE big").await.unwrap();
    accepted_again(clients, &["A", "B", "C"]).await;
    let after = stored_bytes(store, db).await;
    assert!(
        after.is_some_and(|b| b <= limit),
        "the store holds {after:?}"
    );
}

/// Logs `t` in through each instance, waits until each has a size figure
/// under the limit (measured at its login, or adopted) and no measurement
/// runs; then fills the database past the limit through A. The sessions,
/// and the cluster's time just before the fill.
async fn filled_through_a(
    proxies: &[ChildProxy; 3],
    ports: [u16; 3],
    t: &common::Tenant,
    limit: u64,
    store: &mut redis::aio::MultiplexedConnection,
) -> (Vec<Session>, String) {
    let mut clients = Vec::new();
    for p in proxies {
        clients.push(connect(p.addr, &t.db, &t.user, &t.password).await.unwrap());
    }
    for port in ports {
        wait_view(port, &t.db, "measured under the limit", |v| {
            v["storage_bytes"].as_u64().is_some_and(|b| b <= limit)
                && v["over_storage_limit"] == serde_json::json!(false)
        })
        .await;
    }
    let before_fill = quiet(store, &t.db).await;
    clients[0]
        .0
        .batch_execute(&format!(
            "CREATE TABLE big (b bytea); CREATE TABLE small (n int); {}",
            crate::storage::fill("big", 6)
        ))
        .await
        .unwrap();
    (clients, before_fill)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_storage_limit_is_refused_on_every_instance() {
    let redis = RedisServer::start().unwrap();
    let t = scram_tenant("fleet_storage");
    let (proxies, ports, limit_mb) = storage_fleet(&redis, &t).await;
    let limit = limit_mb << 20;
    let [a, b, c] = &proxies;
    joined(&[a, b, c]).await;
    let mut store = store_conn(&redis).await;
    let (clients, before_fill) = filled_through_a(&proxies, ports, &t, limit, &mut store).await;
    // A measures what it wrote; B and C, which wrote nothing, take A's
    // figure from the store.
    let over = |v: &serde_json::Value| {
        v["storage_bytes"].as_u64().is_some_and(|b| b > limit)
            && v["over_storage_limit"] == serde_json::json!(true)
    };
    wait_view(ports[0], &t.db, "over its limit on A", over).await;
    no_measurement_running(&mut store, &t.db).await;
    let stored = stored_bytes(&mut store, &t.db)
        .await
        .expect("the store's rows hash holds the size");
    let views = [
        wait_view(ports[1], &t.db, "over its limit on B", over).await,
        wait_view(ports[2], &t.db, "over its limit on C", over).await,
    ];
    // Measured once: of the instances' auditors, one took the size since
    // the fill (B and C kept theirs from their logins, or never measured).
    let measured = auditors_measured(&t.db, Some(&before_fill)).await;
    eprintln!(
        "auditor connections in {}: {} in all, {measured} measured since the fill",
        t.db,
        auditors_measured(&t.db, None).await
    );
    assert_eq!(measured, 1, "instances that measured the fill");
    // The figure B and C show is the one in the store, which is the
    // database's size (within what the cluster moves on its own since).
    let size = crate::storage::size_of(&t.db).await;
    assert!(
        stored > limit && stored.abs_diff(size) <= 1 << 20,
        "the store holds {stored} bytes, pg_database_size says {size}"
    );
    for (view, which) in views.iter().zip(["B", "C"]) {
        assert_eq!(
            view["storage_bytes"].as_u64(),
            Some(stored),
            "instance {which}: {view}"
        );
        assert_eq!(view["storage_limit"], serde_json::json!(limit), "{view}");
    }
    // B and C (which the tenant never wrote through) refuse, and A.
    for ((client, _), which) in clients.iter().zip(["A", "B", "C"]).rev() {
        refused_for_storage(client, &t.db, limit_mb, which).await;
    }
    // TRUNCATE through C frees the space: all three accept again.
    truncated_through_c(&clients, &mut store, &t.db, limit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_limit_holds_across_a_store_restart() {
    let mut redis = RedisServer::start().unwrap();
    let t = scram_tenant("fleet_storage_restart");
    let (proxies, ports, limit_mb) = storage_fleet(&redis, &t).await;
    let limit = limit_mb << 20;
    let [a, b, c] = &proxies;
    joined(&[a, b, c]).await;
    let mut store = store_conn(&redis).await;
    let (clients, _) = filled_through_a(&proxies, ports, &t, limit, &mut store).await;
    for (port, which) in ports.iter().zip(["A", "B", "C"]) {
        wait_view(*port, &t.db, &format!("over its limit on {which}"), |v| {
            v["over_storage_limit"] == serde_json::json!(true)
        })
        .await;
    }
    // The store restarts empty: no figure, no lock. Once every instance
    // reaches it again (its heartbeat re-asserted its session), each still
    // refuses.
    redis.restart().unwrap();
    store_count_reaches(&redis, &t.db, 3).await;
    let mut store = store_conn(&redis).await;
    eprintln!(
        "after the restart the store holds {:?} bytes of {}",
        stored_bytes(&mut store, &t.db).await,
        t.db
    );
    for ((client, _), which) in clients.iter().zip(["A", "B", "C"]) {
        refused_for_storage(client, &t.db, limit_mb, which).await;
    }
    // The new store carries figures again: TRUNCATE through C, and all
    // three accept.
    truncated_through_c(&clients, &mut store, &t.db, limit).await;
}
