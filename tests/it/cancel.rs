//! Query cancellation's ordering: a client learns that its cancel was
//! processed when the cancel connection closes (libpq's `PQcancel` waits
//! for that close), so the proxy may close it only after the cluster has
//! acted; otherwise a late signal cancels the client's *next* statement.

use crate::common;
use crate::common::frames::query;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends the statement and returns the SQLSTATE of its error, if any.
async fn run(s: &mut TcpStream, sql: &str) -> Option<String> {
    s.write_all(&query(sql)).await.unwrap();
    let mut error = None;
    loop {
        let (tag, body) = common::read_message(s).await;
        match tag {
            b'E' => {
                error = pgtier::protocol::error::sqlstate_of(&body).map(str::to_owned);
            }
            b'Z' => return error,
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_cancel_is_processed_before_its_connection_closes() {
    let proxy = common::start_proxy_with("", "").await;
    let t = common::trust_tenant("cancel_order");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let msgs = common::raw_login_ok(&mut s, &t.user, &t.db, &t.password).await;
    let key = msgs.into_iter().find(|m| m.0 == b'K').map(|m| m.1);
    let cancel = common::cancel_request(&key.expect("BackendKeyData"));

    // As libpq does: send the cancel, wait for the close, then go on with
    // the next statement at once. The cancel lands while the session is
    // idle, where PostgreSQL ignores it; had the close come before the
    // cluster acted, the signal would hit the 20 ms statement that follows.
    for round in 0..200 {
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        c.write_all(&cancel).await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0))), "round {round}: {closed:?}");
        assert_eq!(
            run(&mut s, "SELECT pg_sleep(0.02)").await,
            None,
            "round {round}: the cancel hit the statement sent after it was acknowledged"
        );
    }
    // The rounds above would pass if cancels went nowhere; the same key,
    // sent while a statement runs, must end it.
    s.write_all(&query("SELECT pg_sleep(30)")).await.unwrap();
    common::wait_until(Duration::from_secs(10), "the statement runs", || {
        common::cluster()
            .psql(
                &t.db,
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
            )
            .is_ok_and(|out| out.trim() == "1")
    })
    .await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(&cancel).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await;
    let mut error = None;
    // Shorter than read_message's own 10 s, so that this says what failed.
    let ended = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            let (tag, body) = common::read_message(&mut s).await;
            match tag {
                b'E' => error = pgtier::protocol::error::sqlstate_of(&body).map(str::to_owned),
                b'Z' => break,
                _ => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the statement still ran 8 s after its cancel: the cancel never reached the cluster"
    );
    assert_eq!(
        error.as_deref(),
        Some("57014"),
        "the cancel reached the cluster"
    );
}
