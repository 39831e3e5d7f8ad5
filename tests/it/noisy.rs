//! Noisy neighbours: the tier's `statement_timeout`, enforced by the proxy
//! with the cluster's own cancel, end to end on a real cluster.

use crate::common;
use crate::common::frames::frame;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::connect;
use futures_util::SinkExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

const TIER_MESSAGE: &str = "canceling statement due to statement timeout: the free tier allows 1 s";
const POSTGRES_MESSAGE: &str = "canceling statement due to statement timeout";

/// A fresh tenant (SCRAM) with `statement_timeout = "1s"`, and a proxy.
async fn one_second_tenant(prefix: &str) -> (common::TestProxy, String, String, String) {
    let t = common::scram_tenant(prefix);
    let proxy =
        common::start_proxy(&format!("[tenants.{}]\nstatement_timeout = \"1s\"\n", t.db)).await;
    (proxy, t.db, t.user, t.password)
}

/// Runs `sql` and expects the proxy's 57014 after about the limit (1 s).
async fn cancelled_by_the_tier(client: &tokio_postgres::Client, sql: &str) {
    cancelled_with(client, sql, TIER_MESSAGE).await
}

async fn cancelled_with(client: &tokio_postgres::Client, sql: &str, message: &str) {
    let started = Instant::now();
    let err = client
        .simple_query(sql)
        .await
        .expect_err("the runaway statement is cancelled");
    let took = started.elapsed();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert_eq!(common::message(&err), message);
    let hint = err.as_db_error().and_then(|d| d.hint()).unwrap_or_default();
    assert!(hint.contains("upgrade"), "hint: {hint}");
    assert!(
        took >= Duration::from_millis(950),
        "cancelled early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "cancelled late: {took:?}"
    );
}

async fn still_usable(client: &tokio_postgres::Client) {
    let row = client.query_one("select 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
}

#[tokio::test]
async fn a_runaway_statement_is_cancelled_at_the_tier_limit() {
    let (proxy, db, user, password) = one_second_tenant("runaway").await;
    let (client, _conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    cancelled_by_the_tier(&client, "select pg_sleep(10)").await;
    still_usable(&client).await;
    // Inside a transaction: aborted like any error, then rolled back.
    client.simple_query("begin").await.unwrap();
    cancelled_by_the_tier(&client, "select pg_sleep(10)").await;
    let err = client.simple_query("select 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client.simple_query("rollback").await.unwrap();
    still_usable(&client).await;
    let rejected = proxy
        .handle
        .shared()
        .tenants
        .get(&db)
        .unwrap()
        .rejected_by_reason()["statement_timeout"];
    assert_eq!(rejected, 2);
}

#[tokio::test]
async fn the_tenants_own_setting_cannot_lift_the_limit() {
    let (proxy, db, user, password) = one_second_tenant("lift").await;
    let (client, _conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    for lift in [
        "set statement_timeout = '0'",
        "SET SESSION statement_timeout TO 3600000",
        "select set_config('statement_timeout', '0', false)",
    ] {
        client.simple_query(lift).await.unwrap();
        cancelled_by_the_tier(&client, "select pg_sleep(10)").await;
    }
    still_usable(&client).await;
}

#[tokio::test]
async fn a_lower_setting_of_the_tenant_gives_postgres_own_message() {
    let (proxy, db, user, password) = one_second_tenant("lower").await;
    let (client, _conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    client
        .simple_query("set statement_timeout = '300ms'")
        .await
        .unwrap();
    let started = Instant::now();
    let err = client
        .simple_query("select pg_sleep(10)")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert_eq!(common::message(&err), POSTGRES_MESSAGE, "not rewritten");
    assert!(started.elapsed() < Duration::from_millis(900));
    // Above the tier's limit, the tier's wins.
    client
        .simple_query("set statement_timeout = '5s'")
        .await
        .unwrap();
    cancelled_by_the_tier(&client, "select pg_sleep(10)").await;
}

/// Pipelined requests are timed one at a time, each from when the one
/// before it was answered: two of 0.7 s each pass a 1 s limit, a third of
/// 10 s does not.
#[tokio::test]
async fn pipelined_requests_are_timed_each_from_its_own_start() {
    let (proxy, db, user, password) = one_second_tenant("pipeline").await;
    let (client, _conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let started = Instant::now();
    let (a, b, c) = tokio::join!(
        client.simple_query("select pg_sleep(0.7)"),
        client.simple_query("select pg_sleep(0.7)"),
        client.simple_query("select pg_sleep(10)"),
    );
    a.expect("the first is within the limit");
    b.expect("the second is timed from the first's answer");
    let err = c.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert_eq!(common::message(&err), TIER_MESSAGE);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(4000), "{took:?}");
    still_usable(&client).await;
}

/// A COPY FROM STDIN waiting for the client's data is not the cluster's
/// work: a pause longer than the limit is not cancelled.
#[tokio::test]
async fn copy_waiting_on_the_client_is_not_counted() {
    let (proxy, db, user, password) = one_second_tenant("copy").await;
    let (client, _conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    client
        .simple_query("create temp table t (a int)")
        .await
        .unwrap();
    let sink = client
        .copy_in::<_, Bytes>("copy t from stdin")
        .await
        .unwrap();
    tokio::pin!(sink);
    sink.send(Bytes::from_static(b"1\n")).await.unwrap();
    // The stimulus itself: the client takes longer than the limit.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    sink.send(Bytes::from_static(b"2\n")).await.unwrap();
    let copied = sink.finish().await.expect("the COPY was not cancelled");
    assert_eq!(copied, 2);
    // The clock still runs for what follows.
    cancelled_by_the_tier(&client, "select pg_sleep(10)").await;
}

/// The same runaway on the standard tier (no limit) runs to its end while
/// the free tenant's is cancelled.
#[tokio::test]
async fn a_tier_without_a_limit_is_not_cancelled() {
    let free = common::scram_tenant("freeslow");
    let standard = common::scram_tenant("stdslow");
    let proxy = common::start_proxy(&format!(
        "[tenants.{}]\nstatement_timeout = \"1s\"\n[tenants.{}]\ntier = \"standard\"\n",
        free.db, standard.db
    ))
    .await;
    let (f, _f_conn) = connect(proxy.addr, &free.db, &free.user, &free.password)
        .await
        .unwrap();
    let (s, _s_conn) = connect(proxy.addr, &standard.db, &standard.user, &standard.password)
        .await
        .unwrap();
    let ((), standard_run) = tokio::join!(
        cancelled_by_the_tier(&f, "select pg_sleep(10)"),
        s.simple_query("select pg_sleep(2.5), 'done'"),
    );
    let rows = standard_run.expect("the standard tier has no statement limit");
    let done = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(1).map(str::to_owned),
        _ => None,
    });
    assert_eq!(done.as_deref(), Some("done"));
}

/// The extended protocol's Execute flushed without a Sync still runs on
/// the cluster, and is timed: no ReadyForQuery is owed yet, but work is.
#[tokio::test]
async fn an_execute_flushed_without_a_sync_is_timed_too() {
    let t = common::trust_tenant("flushonly");
    let proxy = common::start_proxy_with(
        "",
        &format!("[tenants.{}]\nstatement_timeout = \"1s\"\n", t.db),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    common::raw_login_ok(&mut s, &t.user, &t.db, &t.password).await;
    let mut batch = frame(b'P', b"\0select pg_sleep(10)\0\0\0");
    batch.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'H', b""));
    let started = Instant::now();
    tokio::io::AsyncWriteExt::write_all(&mut s, &batch)
        .await
        .unwrap();
    let error = loop {
        let (tag, body) = common::read_message(&mut s).await;
        if tag == b'E' {
            break body;
        }
        assert!(matches!(tag, b'1' | b'2'), "unexpected {}", tag as char);
    };
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&error);
    assert!(text.contains("C57014\0"), "{text}");
    assert!(text.contains(TIER_MESSAGE), "{text}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // The Sync that ends the request, then the session goes on.
    tokio::io::AsyncWriteExt::write_all(&mut s, &frame(b'S', b""))
        .await
        .unwrap();
    assert_eq!(common::read_message(&mut s).await, (b'Z', b"I".to_vec()));
    tokio::io::AsyncWriteExt::write_all(&mut s, &frame(b'Q', b"select 7\0"))
        .await
        .unwrap();
    let mut row = None;
    loop {
        let (tag, body) = common::read_message(&mut s).await;
        match tag {
            b'D' => row = Some(body),
            b'Z' => break,
            b'E' => panic!("{}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
    assert!(row.is_some_and(|r| r.ends_with(b"7")));
}

/// A reload that sets, then lifts, a tenant's limit applies to its running
/// session at the next sweep.
#[tokio::test]
async fn a_reload_changes_the_limit_of_running_sessions() {
    let t = common::scram_tenant("reloadst");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let write = |keys: &str| {
        let tables = format!("[tenants.{}]\ntier = \"standard\"\n{keys}", t.db);
        std::fs::write(&path, common::config_text("", "prefer", &tables)).unwrap();
    };
    write("");
    let proxy = common::start_proxy_from(&std::fs::read_to_string(&path).unwrap()).await;
    proxy.handle.set_config_path(&path);
    let (client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let reload = || {
        let shared = proxy.handle.shared().clone();
        async move {
            tokio::task::spawn_blocking(move || shared.reload())
                .await
                .unwrap()
                .expect("reload");
        }
    };
    write("statement_timeout = \"1s\"\n");
    reload().await;
    cancelled_with(
        &client,
        "select pg_sleep(10)",
        "canceling statement due to statement timeout: the standard tier allows 1 s",
    )
    .await;
    write("statement_timeout = \"0s\"\n");
    reload().await;
    client
        .simple_query("select pg_sleep(1.5)")
        .await
        .expect("no limit any more");
}

/// PostgreSQL signals a backend twice for one cancel (the process, then
/// its group); were the client's next statement let through before the
/// cluster closed the cancel connection, the second signal could cancel
/// it. Round after round, the statement sent right after the proxy's
/// 57014 runs to its end.
#[tokio::test]
async fn the_proxys_cancel_never_hits_the_next_statement() {
    let t = common::scram_tenant("nexthit");
    let proxy = common::start_proxy(&format!(
        "[tenants.{}]\nstatement_timeout = \"300ms\"\n",
        t.db
    ))
    .await;
    let (client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    for round in 0..30 {
        let err = client
            .simple_query("select pg_sleep(10)")
            .await
            .expect_err("cancelled");
        assert_eq!(
            common::message(&err),
            "canceling statement due to statement timeout: the free tier allows 300 ms",
            "round {round}"
        );
        client
            .simple_query("select pg_sleep(0.05)")
            .await
            .unwrap_or_else(|e| panic!("round {round}: the next statement was hit: {e}"));
    }
}
