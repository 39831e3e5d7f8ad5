//! The `per-core` threading model: each serving thread has a runtime and a
//! listener of its own (SO_REUSEPORT), so what reaches a session from the
//! outside (an idle timeout, an operator disconnect, a reload, a shutdown)
//! must reach sessions on every thread.

use crate::common;

use std::time::Duration;

use common::{config_text, connect, scram_tenant, start_proxy_from, wait_until};
use tokio_postgres::error::SqlState;

/// Sessions enough that the kernel puts some on each of two threads (all
/// on one has a chance of 2^-39).
const SESSIONS: usize = 40;

async fn sessions(
    proxy: &common::TestProxy,
    t: &common::Tenant,
) -> Vec<(
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
)> {
    let mut out = Vec::new();
    for _ in 0..SESSIONS {
        out.push(
            connect(proxy.addr, &t.db, &t.user, &t.password)
                .await
                .unwrap(),
        );
    }
    // A session is registered (where operator disconnects and sweeps find
    // it) before its client hears ReadyForQuery.
    assert_eq!(proxy.handle.shared().sessions.len(), SESSIONS);
    let by_thread = proxy.handle.shared().metrics.accepted_by_thread();
    assert_eq!(by_thread.len(), 2, "both threads accepted: {by_thread:?}");
    assert!(by_thread.values().all(|&n| n > 0), "{by_thread:?}");
    out
}

/// How every session ended: the SQLSTATE of the error its connection
/// ended with.
async fn ended(
    sessions: Vec<(
        tokio_postgres::Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    )>,
) -> Vec<Option<SqlState>> {
    let mut codes = Vec::new();
    for (client, conn) in sessions {
        let ended = tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .expect("the session ended in time")
            .expect("connection task");
        drop(client);
        codes.push(ended.err().and_then(|e| e.code().cloned()));
    }
    codes
}

fn two_threads(top_level: &str, tables: &str) -> String {
    config_text(
        &format!("worker_threads = 2\nthreading = \"per-core\"\n{top_level}"),
        "require",
        tables,
    )
}

/// A proxy on two threads where `t` is a standard tenant (no cap).
async fn standard_on_two_threads(t: &common::Tenant) -> common::TestProxy {
    start_proxy_from(&two_threads(
        "",
        &format!("[tenants.{}]\ntier = \"standard\"\n", t.db),
    ))
    .await
}

/// An operator's disconnect of `t`'s sessions; how many it reached.
fn disconnect(proxy: &common::TestProxy, t: &common::Tenant) -> usize {
    proxy.handle.shared().sessions.kill_where(
        Some(&t.db),
        pgtier::session::live::KillReason::AdminDisconnect,
    )
}

#[tokio::test]
async fn an_operator_disconnect_reaches_sessions_on_every_thread() {
    let t = scram_tenant("thr_disconnect");
    let proxy = standard_on_two_threads(&t).await;
    let open = sessions(&proxy, &t).await;
    let killed = disconnect(&proxy, &t);
    assert_eq!(killed, SESSIONS);
    let codes = ended(open).await;
    assert!(
        codes
            .iter()
            .all(|c| c.as_ref() == Some(&SqlState::ADMIN_SHUTDOWN)),
        "{codes:?}"
    );
    let handle = proxy.handle.clone();
    wait_until(Duration::from_secs(5), "every slot back", || {
        common::slots(&handle, &t.db) == 0
    })
    .await;
}

/// The moment a client has its first ReadyForQuery, an operator's
/// disconnect reaches its session: the proxy registers the session before
/// it sends the end of the login.
#[tokio::test]
async fn an_operator_disconnect_reaches_a_session_the_moment_it_is_ready() {
    let t = scram_tenant("thr_just_ready");
    let proxy = standard_on_two_threads(&t).await;
    for round in 0..50 {
        let (client, conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
            .await
            .unwrap();
        let killed = disconnect(&proxy, &t);
        assert_eq!(killed, 1, "round {round}: the new session was in reach");
        let codes = ended(vec![(client, conn)]).await;
        assert_eq!(codes, [Some(SqlState::ADMIN_SHUTDOWN)], "round {round}");
        let handle = proxy.handle.clone();
        wait_until(Duration::from_secs(5), "the slot back", || {
            common::slots(&handle, &t.db) == 0
        })
        .await;
    }
}

#[tokio::test]
async fn a_reloaded_idle_timeout_reaps_sessions_on_every_thread() {
    let t = scram_tenant("thr_idle");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let text = |timeout: &str| {
        two_threads(
            "",
            &format!(
                "[tenants.{}]\ntier = \"standard\"\nidle_timeout = \"{timeout}\"\n",
                t.db
            ),
        )
    };
    std::fs::write(&path, text("1h")).unwrap();
    let proxy = start_proxy_from(&text("1h")).await;
    proxy.handle.set_config_path(&path);
    let open = sessions(&proxy, &t).await;
    // The reload (handled on the control thread) shortens the timeout of
    // running sessions; the sweeper reaps them wherever they run.
    std::fs::write(&path, text("1s")).unwrap();
    let shared = proxy.handle.shared().clone();
    tokio::task::spawn_blocking(move || shared.reload())
        .await
        .unwrap()
        .expect("reload");
    let codes = ended(open).await;
    assert!(
        codes
            .iter()
            .all(|c| c.as_ref() == Some(&SqlState::IDLE_SESSION_TIMEOUT)),
        "{codes:?}"
    );
    let shared = proxy.handle.shared().clone();
    let db = t.db.clone();
    wait_until(Duration::from_secs(5), "every slot back", || {
        shared
            .tenants
            .get(&db)
            .is_some_and(|t| t.connections() == 0)
    })
    .await;
}

#[tokio::test]
async fn shutdown_drains_and_closes_sessions_on_every_thread() {
    let t = scram_tenant("thr_shutdown");
    let proxy = start_proxy_from(&two_threads(
        "shutdown_grace = \"1s\"",
        &format!("[tenants.{}]\ntier = \"standard\"\n", t.db),
    ))
    .await;
    let open = sessions(&proxy, &t).await;
    proxy.handle.shutdown();
    let codes = ended(open).await;
    assert!(
        codes
            .iter()
            .all(|c| c.as_ref() == Some(&SqlState::ADMIN_SHUTDOWN)),
        "{codes:?}"
    );
    let mut proxy = proxy;
    let result = tokio::time::timeout(Duration::from_secs(20), &mut proxy.task)
        .await
        .expect("the proxy stopped, its serving threads joined")
        .expect("its task");
    assert!(result.is_ok(), "{result:?}");
}
