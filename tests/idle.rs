//! The idle-session timeout end to end: what counts as idle, what the
//! client hears, that the slot comes back, and that it scales.

mod common;

use std::time::{Duration, Instant};

use common::{connect, wait_until};
use futures_util::StreamExt;
use tokio_postgres::error::SqlState;

const IDLE_MESSAGE: &str = "terminating connection due to idle-session timeout";

/// A fresh tenant that logs in with SCRAM: (database, user, password).
fn tenant(prefix: &str) -> (String, String, String) {
    let t = common::scram_tenant(prefix);
    (t.db, t.user, t.password)
}

/// Waits for a connection task to end and returns the error it ended with.
async fn ended_with(
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    within: Duration,
) -> tokio_postgres::Error {
    tokio::time::timeout(within, conn)
        .await
        .expect("the proxy closed the session in time")
        .expect("connection task")
        .expect_err("the session ended with an error from the proxy")
}

#[tokio::test]
async fn an_idle_session_gets_57p05_and_its_slot_is_free_at_once() {
    let (db, user, password) = tenant("idle");
    let proxy = common::start_proxy(&format!("[tenants.{db}]\nidle_timeout = \"1s\"\n")).await;
    // Fill the free tier's two slots.
    let (a, a_conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let (b, _b_conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    b.simple_query("select 1").await.unwrap();
    let idle_from = Instant::now();
    a.simple_query("select 1").await.unwrap();

    let err = ended_with(a_conn, Duration::from_secs(5)).await;
    let waited = idle_from.elapsed();
    assert_eq!(err.code(), Some(&SqlState::IDLE_SESSION_TIMEOUT), "{err}");
    assert_eq!(common::message(&err), IDLE_MESSAGE);
    assert!(
        waited >= Duration::from_millis(900),
        "killed early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "killed late: {waited:?}");

    // Both slots come back as the sessions end, and two new sessions fit.
    wait_until(Duration::from_secs(2), "both slots free", || {
        proxy.handle.tenant_connections(&db) == 0
    })
    .await;
    let (c, _c_conn) = connect(proxy.addr, &db, &user, &password)
        .await
        .expect("a slot is free again");
    let (d, _d_conn) = connect(proxy.addr, &db, &user, &password)
        .await
        .expect("both slots are free again");
    c.simple_query("select 1").await.unwrap();
    d.simple_query("select 1").await.unwrap();
    assert!(
        proxy
            .handle
            .shared()
            .tenants
            .get(&db)
            .unwrap()
            .rejected_by_reason()["idle_timeout"]
            >= 2
    );
}

#[tokio::test]
async fn a_long_query_is_not_idle() {
    let (db, user, password) = tenant("busy");
    let proxy = common::start_proxy(&format!("[tenants.{db}]\nidle_timeout = \"1s\"\n")).await;
    let (client, conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    client
        .simple_query("select pg_sleep(3)")
        .await
        .expect("a 3 s query outlives a 1 s idle timeout");
    // Idle only from now on: the session is still there.
    let row = client.query_one("select 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
    assert!(!conn.is_finished());
    let err = ended_with(conn, Duration::from_secs(5)).await;
    assert_eq!(err.code(), Some(&SqlState::IDLE_SESSION_TIMEOUT), "{err}");
}

#[tokio::test]
async fn idle_in_transaction_has_its_own_limit() {
    let (db, user, password) = tenant("intx");
    let proxy = common::start_proxy(&format!(
        "[tenants.{db}]\nidle_timeout = \"1h\"\nidle_in_transaction_timeout = \"1s\"\n"
    ))
    .await;
    let (in_tx, in_tx_conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let (outside, _outside_conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    outside.simple_query("select 1").await.unwrap();
    in_tx.simple_query("begin; select 1").await.unwrap();

    let err = ended_with(in_tx_conn, Duration::from_secs(5)).await;
    assert_eq!(err.code(), Some(&SqlState::IDLE_SESSION_TIMEOUT), "{err}");
    assert_eq!(common::message(&err), IDLE_MESSAGE);
    // The session outside a transaction idled as long and is still there.
    outside.simple_query("select 1").await.unwrap();
    wait_until(Duration::from_secs(2), "the killed session's slot", || {
        proxy.handle.tenant_connections(&db) == 1
    })
    .await;
}

/// 1,000 idle sessions, all closed within 4 s of a 2 s timeout. Plaintext
/// and trust authentication keep the setup fast; the sessions are opened
/// under a long timeout, which a reload then shortens (a changed timeout
/// applies to the current idle period), so that slow setup on a loaded
/// machine cannot reap the first sessions before the last are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_sessions_are_reaped_in_time() {
    const SESSIONS: usize = 1000;
    let common::Tenant { db, user, .. } = common::trust_tenant("many");
    let tables = |timeout: &str| {
        format!("[tenants.{db}]\ntier = \"standard\"\nidle_timeout = \"{timeout}\"\n")
    };
    let proxy = common::start_proxy_with("", &tables("1h")).await;
    let addr = proxy.addr;

    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(addr.port())
        .dbname(&db)
        .user(&user)
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .connect_timeout(Duration::from_secs(30));
    let sessions: Vec<_> = futures_util::stream::iter(0..SESSIONS)
        .map(|_| {
            let config = config.clone();
            async move {
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .expect("plaintext trust login");
                (client, tokio::spawn(connection))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(proxy.handle.tenant_connections(&db), SESSIONS);

    // Make every session busy once more, so that all become idle within a
    // short span, then start the 2 s clock by reloading the timeout.
    let busy_from = Instant::now();
    futures_util::future::join_all(sessions.iter().map(|(c, _)| c.simple_query("select 1")))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("every session answers");
    let text = common::config_text("", "prefer", &tables("2s"));
    let shorter = pgtier::config::Config::from_toml_str(&text).unwrap();
    proxy.handle.shared().apply_config(shorter).unwrap();
    let idle_from = Instant::now();

    // None goes early (each became idle after `busy_from`; checkable only
    // if making them busy took less than the timeout)...
    let early = busy_from + Duration::from_millis(1750);
    if Instant::now() < early {
        tokio::time::sleep_until(early.into()).await;
        assert_eq!(
            proxy.handle.tenant_connections(&db),
            SESSIONS,
            "sessions closed before 2 s of idleness"
        );
    }
    // ...and all are gone within 4 s, each told why.
    let deadline = Duration::from_secs(4);
    wait_until(
        deadline.saturating_sub(idle_from.elapsed()),
        "all 1,000 reaped",
        || proxy.handle.tenant_connections(&db) == 0,
    )
    .await;
    let reaped_after = idle_from.elapsed();
    assert!(
        reaped_after <= Duration::from_millis(4100),
        "{reaped_after:?}"
    );
    let mut told = 0;
    for (_client, conn) in sessions {
        let err = ended_with(conn, Duration::from_secs(5)).await;
        assert_eq!(err.code(), Some(&SqlState::IDLE_SESSION_TIMEOUT), "{err}");
        told += 1;
    }
    assert_eq!(told, SESSIONS);
}
