//! The proxy end to end: real PostgreSQL, real TLS, real clients.

use crate::common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{cluster, connect, start_proxy, unique, wait_until};
use futures_util::{SinkExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::error::SqlState;

/// A fresh tenant: database `db` owned by a role with a SCRAM password.
fn tenant(prefix: &str) -> (String, String, String) {
    let db = unique(prefix);
    let user = format!("{db}_u");
    let password = format!("pw-{db}");
    cluster()
        .create_tenant(&db, &user, &password)
        .expect("create tenant");
    (db, user, password)
}

fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

/// Runs `pg_sleep(30)` on `client`, cancels it through the proxy (TLS cancel
/// connection) once the cluster runs it, checks it failed with 57014, and
/// returns how long the cancel took to take effect.
async fn cancel_a_running_sleep(client: tokio_postgres::Client, db: &str) -> Duration {
    let token = client.cancel_token();
    let query = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    // Cancel only once the cluster runs the query (a cancel that arrives
    // earlier is ignored by PostgreSQL, as it should be).
    common::wait_until_running(db, "select pg_sleep", "pg_sleep to run").await;
    let cancelled_at = Instant::now();
    token
        .cancel_query(common::tls_connector())
        .await
        .expect("cancel sent");
    let result = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .expect("query ended")
        .unwrap();
    let Err(err) = result else {
        panic!("query was not cancelled");
    };
    assert_eq!(code(&err), Some(&SqlState::QUERY_CANCELED), "{err}");
    cancelled_at.elapsed()
}

#[tokio::test]
async fn tls_is_required_and_verify_full_works() {
    let proxy = start_proxy("").await;
    let (db, user, password) = tenant("tls");

    // tokio-postgres verifies the chain and host name against the test CA.
    let (client, _conn) = connect(proxy.addr, &db, &user, &password)
        .await
        .expect("TLS login");
    let row = client
        .query_one("select current_database()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), db);

    // psql with verify-full against the CA, and without TLS.
    let out = common::run_psql(
        &common::psql_url(proxy.addr, &db, &user, &password, "verify-full"),
        "select 'through-' || current_database()",
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("through-{db}")));

    let out = common::run_psql(
        &common::psql_url(proxy.addr, &db, &user, &password, "disable"),
        "select 1",
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SSL connection is required"), "{stderr}");
}

/// Passthrough mode relays each method the cluster asks for. Proxy mode
/// checks SCRAM-SHA-256 itself and so needs a SCRAM verifier: a role whose
/// password is stored as md5 is refused with a hint saying so, and a role
/// without a password (which the cluster would trust) is refused like an
/// unknown role; neither costs a cluster backend or a slot.
#[tokio::test]
async fn scram_md5_and_trust_logins_pass_through_and_proxy_mode_needs_scram() {
    let proxy = start_proxy("").await;
    let c = cluster();

    let (db, user, password) = tenant("scram");
    let (client, _conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    drop(client);

    let md5_user = unique("md5u");
    c.create_role(
        &md5_user,
        Some("md5-secret"),
        pgtier_testkit::sandbox::PasswordEncryption::Md5,
    )
    .unwrap();
    c.psql("postgres", &format!("grant md5_users to {md5_user}"))
        .unwrap();
    let md5_db = unique("md5db");
    c.create_database(&md5_db, &md5_user).unwrap();
    let md5 = connect(proxy.addr, &md5_db, &md5_user, "md5-secret").await;

    let trust_user = unique("trustu");
    c.create_role(
        &trust_user,
        None,
        pgtier_testkit::sandbox::PasswordEncryption::Scram,
    )
    .unwrap();
    c.psql("postgres", &format!("grant trust_users to {trust_user}"))
        .unwrap();
    let trust_db = unique("trustdb");
    c.create_database(&trust_db, &trust_user).unwrap();
    let trust = connect(proxy.addr, &trust_db, &trust_user, "ignored").await;

    if !common::proxy_auth() {
        let (client, _conn) = md5.expect("md5 login");
        client.simple_query("select 1").await.unwrap();
        let (client, _conn) = trust.expect("trust login");
        client.simple_query("select 1").await.unwrap();
        return;
    }
    let Err(err) = md5 else {
        panic!("proxy mode cannot check an md5-stored password")
    };
    assert_eq!(code(&err), Some(&SqlState::INVALID_PASSWORD), "{err}");
    assert_eq!(
        common::message(&err),
        format!("password authentication failed for user \"{md5_user}\"")
    );
    let hint = err.as_db_error().and_then(|e| e.hint()).unwrap_or_default();
    assert!(
        hint.contains("stored as SCRAM-SHA-256"),
        "the hint names the fix: {hint:?}"
    );
    let Err(err) = trust else {
        panic!("proxy mode lets no client in without a password")
    };
    assert_eq!(code(&err), Some(&SqlState::INVALID_PASSWORD), "{err}");
    assert_eq!(
        common::message(&err),
        format!("password authentication failed for user \"{trust_user}\"")
    );
    // Refused before any slot: their tenants were never even registered.
    for refused in [&md5_db, &trust_db] {
        assert!(
            proxy.handle.shared().tenants.get(refused).is_none(),
            "{refused}"
        );
    }
}

/// A wrong password gets 28P01 (the cluster's, relayed, in passthrough
/// mode; pgtier's own in proxy mode) and takes no slot.
#[tokio::test]
async fn wrong_password_gives_28p01_and_takes_no_slot() {
    let (db, user, password) = tenant("badpw");
    // Listed, so the proxy counts its slots from the start (a tenant it
    // never registered reads as 0 whatever happens).
    let proxy = common::start_proxy_with("", &format!("[tenants.{db}]\ntier = \"free\"\n")).await;
    let (a, _conn_a) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    // A client stalled in the middle of SCRAM (plaintext, which this proxy
    // allows): the cluster (in proxy mode pgtier) has asked for its first
    // message.
    let mut stalled = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stalled
        .write_all(&common::startup_packet(&[
            ("user", &user),
            ("database", &db),
        ]))
        .await
        .unwrap();
    let tag = tokio::time::timeout(Duration::from_secs(10), stalled.read_u8())
        .await
        .expect("the cluster's authentication request")
        .unwrap();
    assert_eq!(tag, b'R');

    let Err(err) = connect(proxy.addr, &db, &user, "not-the-password").await else {
        panic!("login with a wrong password must fail");
    };
    assert_eq!(code(&err), Some(&SqlState::INVALID_PASSWORD), "{err}");
    let reason = if common::proxy_auth() {
        "wrong_password"
    } else {
        "cluster_refused"
    };
    let tenant = proxy.handle.shared().tenants.get(&db).unwrap();
    wait_until(Duration::from_secs(5), "the refusal counted", || {
        tenant.rejected_by_reason().get(reason) == Some(&1)
    })
    .await;
    // While the stalled client is still connected (the refused one's task
    // may take a moment to end), only `a` holds a slot...
    wait_until(Duration::from_secs(5), "the refused client gone", || {
        proxy.handle.shared().open_connections() == 2
    })
    .await;
    assert_eq!(common::slots(&proxy.handle, &db), 1);
    // ...so a second session fits under the cap of 2, and a third is refused.
    let (b, _conn_b) = connect(proxy.addr, &db, &user, &password)
        .await
        .expect("the stalled and the refused clients hold no slot");
    let Err(err) = connect(proxy.addr, &db, &user, &password).await else {
        panic!("a third session must be refused");
    };
    assert_eq!(code(&err), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    assert_eq!(common::slots(&proxy.handle, &db), 2);
    wait_until(
        Duration::from_secs(5),
        "the refused third client gone",
        || proxy.handle.shared().open_connections() == 3,
    )
    .await;
    assert_eq!(common::slots(&proxy.handle, &db), 2);
    a.simple_query("select 1").await.unwrap();
    b.simple_query("select 1").await.unwrap();
    drop(stalled);
}

#[tokio::test]
async fn free_tenant_gets_two_connections_and_the_third_is_refused() {
    let proxy = start_proxy("").await;
    let (db, user, password) = tenant("free");
    let (a, conn_a) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let (b, _conn_b) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let Err(err) = connect(proxy.addr, &db, &user, &password).await else {
        panic!("third connection must be refused");
    };
    assert_eq!(code(&err), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    assert_eq!(
        common::message(&err),
        format!("too many connections for database \"{db}\": the free tier allows 2")
    );
    // The refusal left the two sessions working.
    a.simple_query("select 1").await.unwrap();
    b.simple_query("select 1").await.unwrap();

    drop(a);
    conn_a.await.ok();
    wait_until(Duration::from_secs(5), "slot given back", || {
        proxy.handle.tenant_connections(&db) == Some(1)
    })
    .await;
    let (c, _conn_c) = connect(proxy.addr, &db, &user, &password)
        .await
        .expect("a slot is free again");
    c.simple_query("select 1").await.unwrap();
}

#[tokio::test]
async fn standard_tenant_holds_ten_connections() {
    let (db, user, password) = tenant("std");
    let proxy = start_proxy(&format!("[tenants.{db}]\ntier = \"standard\"\n")).await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(connect(proxy.addr, &db, &user, &password).await.unwrap());
    }
    for (client, _) in &clients {
        client.simple_query("select 1").await.unwrap();
    }
    assert_eq!(proxy.handle.tenant_connections(&db), Some(10));
}

#[tokio::test]
async fn racing_logins_never_exceed_the_cap() {
    let proxy = start_proxy("").await;
    let (db, user, password) = tenant("race");
    let attempts = (0..20).map(|_| connect(proxy.addr, &db, &user, &password));
    let results = futures_util::future::join_all(attempts).await;
    let mut ok = Vec::new();
    for r in results {
        match r {
            Ok(session) => ok.push(session),
            Err(e) => assert_eq!(code(&e), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e}"),
        }
    }
    assert_eq!(ok.len(), 2);
    assert_eq!(proxy.handle.tenant_connections(&db), Some(2));
}

#[tokio::test]
async fn no_slot_leaks_when_clients_vanish_mid_query() {
    let (db, user, password) = tenant("leak");
    let proxy = start_proxy(&format!("[tenants.{db}]\ntier = \"standard\"\n")).await;
    let log_from = common::cluster_log_len();
    let mut pids = Vec::new();
    for _wave in 0..5 {
        let mut conns = Vec::new();
        for _ in 0..40 {
            let (client, conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
            // Inside a transaction, so that the backend would log an
            // unexpected EOF if the proxy hung up without a Terminate.
            client.batch_execute("begin").await.unwrap();
            let pid: i32 = client
                .query_one("select pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            pids.push(pid);
            // A query in flight, then the client disappears without Terminate.
            let query =
                tokio::spawn(async move { client.simple_query("select pg_sleep(2)").await });
            conns.push((query, conn));
        }
        wait_until(Duration::from_secs(10), "all sessions in", || {
            proxy.handle.tenant_connections(&db) == Some(40)
        })
        .await;
        for (query, conn) in conns {
            conn.abort();
            query.abort();
        }
        wait_until(Duration::from_secs(10), "slots given back", || {
            proxy.handle.tenant_connections(&db) == Some(0)
        })
        .await;
    }
    // And the cluster's backends went away too, once their query ended,
    // because they were told Terminate: none logged an unexpected EOF.
    common::wait_for_cluster(
        &format!("select count(*) from pg_stat_activity where datname = '{db}'"),
        "0",
        "the cluster's backends of the vanished clients to end",
    )
    .await;
    let log = common::cluster_log_since(log_from);
    let unclean: Vec<String> = pids
        .iter()
        .flat_map(|&pid| common::unclean_disconnects(&log, pid))
        .collect();
    assert!(
        unclean.is_empty(),
        "backends lost the proxy without a Terminate:\n{}",
        unclean.join("\n")
    );
}

#[tokio::test]
async fn cancel_reaches_the_cluster_within_two_seconds() {
    let proxy = start_proxy("").await;
    let (db, user, password) = tenant("cancel");
    let (client, _conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let took = cancel_a_running_sleep(client, &db).await;
    assert!(took < Duration::from_secs(2), "cancel took {took:?}");
}

#[tokio::test]
async fn copy_of_50_mb_round_trips_byte_identical() {
    let proxy = start_proxy("").await;
    let (db, user, password) = tenant("copy");
    let (client, _conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    client
        .simple_query("create table t (id int, payload text)")
        .await
        .unwrap();

    // 50 MB of rows with varied content, in COPY text format.
    let mut data = Vec::with_capacity(51 << 20);
    let mut i = 0u64;
    while data.len() < 50 << 20 {
        let payload: String = (0..200)
            .map(|k| (b'a' + ((i * 31 + k) % 26) as u8) as char)
            .collect();
        data.extend_from_slice(format!("{i}\t{payload}\n").as_bytes());
        i += 1;
    }
    let sink = client
        .copy_in::<_, Bytes>("copy t from stdin")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(256 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let rows = sink.finish().await.unwrap();
    assert_eq!(rows, i);

    let out = client
        .copy_out("copy (select * from t order by id) to stdout")
        .await
        .unwrap();
    let chunks: Vec<Bytes> = out.try_collect().await.unwrap();
    let back: Vec<u8> = chunks.concat();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "COPY OUT differs from what went in");
}

#[tokio::test]
async fn a_20_mb_bytea_row_round_trips() {
    let proxy = start_proxy("").await;
    let (db, user, password) = tenant("bytea");
    let (client, _conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    client
        .simple_query("create table b (v bytea)")
        .await
        .unwrap();
    let value: Vec<u8> = (0..20 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    client
        .execute("insert into b values ($1)", &[&value])
        .await
        .unwrap();
    // Binary format back through the proxy.
    let row = client.query_one("select v from b", &[]).await.unwrap();
    let back: Vec<u8> = row.get(0);
    assert!(back == value, "bytea differs");
    // And as a 40 MB hex text row through the simple protocol.
    let rows = client.simple_query("select v from b").await.unwrap();
    let text = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::len),
            _ => None,
        })
        .unwrap();
    assert_eq!(text, 2 + 2 * value.len());
}

#[tokio::test]
async fn listen_notify_between_two_sessions() {
    let (db, user, password) = tenant("notify");
    let proxy = start_proxy(&format!("[tenants.{db}]\ntier = \"standard\"\n")).await;
    let (listener, mut notes) =
        common::connect_with_notifications(proxy.addr, &db, &user, &password)
            .await
            .unwrap();
    listener.batch_execute("listen jobs").await.unwrap();
    let (sender, _conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let sender_pid: i32 = sender
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    sender
        .batch_execute("notify jobs, 'hello through pgtier'")
        .await
        .unwrap();
    let note = tokio::time::timeout(Duration::from_secs(5), notes.recv())
        .await
        .expect("notification arrived")
        .expect("stream open");
    assert_eq!(note.channel(), "jobs");
    assert_eq!(note.payload(), "hello through pgtier");
    assert_eq!(note.process_id(), sender_pid);
}

#[tokio::test]
async fn extended_protocol_and_pipelining() {
    let proxy = start_proxy("").await;
    let (db, user, password) = tenant("ext");
    let (client, _conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let stmt = client
        .prepare("select $1::int * 2, $2::text")
        .await
        .unwrap();
    for i in 0..50 {
        let row = client.query_one(&stmt, &[&i, &"x"]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i * 2);
    }
    // tokio-postgres pipelines requests polled together: 200 in flight.
    let futures = (0..200).map(|i| {
        let client = &client;
        let stmt = &stmt;
        async move {
            client
                .query_one(stmt, &[&i, &"p"])
                .await
                .map(|r| r.get::<_, i32>(0))
        }
    });
    let results = futures_util::future::try_join_all(futures).await.unwrap();
    assert_eq!(results, (0..200).map(|i| i * 2).collect::<Vec<_>>());
    // An error mid-pipeline fails only its own query.
    let (bad, good) = tokio::join!(
        client.query_one("select 1/0", &[]),
        client.query_one("select 7", &[])
    );
    assert_eq!(code(&bad.unwrap_err()), Some(&SqlState::DIVISION_BY_ZERO));
    assert_eq!(good.unwrap().get::<_, i32>(0), 7);
}

#[tokio::test]
async fn shutdown_closes_remaining_sessions_with_57p01_after_grace() {
    let (db, user, password) = tenant("shut");
    let grace = Duration::from_secs(1);
    let mut proxy = common::start_proxy_with("shutdown_grace = \"1s\"\n", "").await;
    let (client, conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let pid: i32 = client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(common::slots(&proxy.handle, &db), 1);
    let drain_started = Instant::now();
    proxy.handle.shutdown();
    // Draining: the session goes on working...
    let row = client.query_one("select 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    // ...while new connections are refused at the door.
    assert!(connect(proxy.addr, &db, &user, &password).await.is_err());
    assert!(
        drain_started.elapsed() < grace,
        "the checks above took longer than the grace period"
    );
    // After the grace period the connection ends with the proxy's FATAL,
    // not a bare hang-up.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("session closed after the grace period")
        .unwrap();
    assert!(
        drain_started.elapsed() >= grace,
        "closed {:?} after the drain began, before the grace of {grace:?}",
        drain_started.elapsed()
    );
    let err = ended.expect_err("connection ended by an error from the proxy");
    assert_eq!(code(&err), Some(&SqlState::ADMIN_SHUTDOWN), "{err}");
    assert_eq!(
        common::message(&err),
        "terminating connection due to administrator command"
    );
    // The proxy stops, the slot is back, the backend is gone.
    tokio::time::timeout(Duration::from_secs(15), &mut proxy.task)
        .await
        .expect("the proxy stopped")
        .unwrap()
        .unwrap();
    assert_eq!(common::slots(&proxy.handle, &db), 0);
    common::wait_for_cluster(
        &format!("select count(*) from pg_stat_activity where pid = {pid}"),
        "0",
        "the session's backend to end",
    )
    .await;
}

#[tokio::test]
async fn a_backend_terminated_by_the_cluster_gives_its_slot_back() {
    let (db, user, password) = tenant("terminated");
    let proxy = start_proxy("").await;
    let (a, conn_a) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let (b, _conn_b) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let pid: i32 = a
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(common::slots(&proxy.handle, &db), 2);
    let su = common::superuser_client().await;
    let row = su
        .query_one("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    // The session ends. Idle, tokio-postgres may report the cluster's
    // FATAL or only the close that follows it (seen once in ~20 runs, as
    // tests/it/faults.rs allows for its idle session too); any code it does
    // report is the cluster's own. faults.rs asserts the 57P01 itself on
    // a session whose query the termination interrupts.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn_a)
        .await
        .expect("the terminated session ended")
        .unwrap();
    if let Some(c) = ended.as_ref().err().and_then(code) {
        assert_eq!(c, &SqlState::ADMIN_SHUTDOWN, "{ended:?}");
    }
    wait_until(Duration::from_secs(5), "the slot given back", || {
        common::slots(&proxy.handle, &db) == 1
    })
    .await;
    let (c, _conn_c) = connect(proxy.addr, &db, &user, &password)
        .await
        .expect("the terminated session's slot is free");
    c.simple_query("select 1").await.unwrap();
    b.simple_query("select 1").await.unwrap();
}

/// PostgreSQL authenticates a client before it locks the database it logs
/// into, so a transaction holding that lock (an uncommitted `ALTER
/// DATABASE … RENAME`) keeps the login between AuthenticationOk and
/// ReadyForQuery for as long as the test likes.
#[tokio::test]
async fn a_client_gone_mid_login_leaves_no_slot_and_no_login_behind() {
    let t = common::trust_tenant("vanish");
    let proxy = start_proxy(&format!("[tenants.{}]\ntier = \"free\"\n", t.db)).await;
    let su = common::superuser_client().await;
    su.batch_execute(&format!(
        "begin; alter database {db} rename to {db}_held",
        db = t.db
    ))
    .await
    .unwrap();
    let (addr, db, user, password) = (proxy.addr, t.db.clone(), t.user.clone(), t.password.clone());
    let login = tokio::spawn(async move { connect(addr, &db, &user, &password).await.map(|_| ()) });
    common::wait_for_cluster(
        "select count(*) from pg_locks where locktype = 'object' \
         and classid = 'pg_database'::regclass and not granted",
        "1",
        "the login to wait on the cluster for the database lock",
    )
    .await;
    let shared = proxy.handle.shared().clone();
    assert_eq!(
        shared.logins.in_progress_for(&t.db),
        1,
        "a login in progress"
    );
    // The client vanishes while the cluster still holds its login: the
    // proxy notices at once (it watches the client while it waits on the
    // cluster), ends the login and takes no slot.
    login.abort();
    let _ = login.await;
    let db = t.db.clone();
    wait_until(
        Duration::from_secs(10),
        "the login ended with its client",
        || shared.logins.in_progress_for(&db) == 0 && shared.logins.in_progress() == 0,
    )
    .await;
    su.batch_execute("rollback").await.unwrap();
    common::wait_for_cluster(
        &format!(
            "select count(*) from pg_stat_activity where datname = '{}'",
            t.db
        ),
        "0",
        "the backend of the vanished client to end",
    )
    .await;
    let tenant = shared.tenants.get(&t.db).unwrap();
    assert_eq!(tenant.connections(), 0, "no slot held");
    // Passthrough mode takes the slot at the cluster's AuthenticationOk,
    // which never came; proxy mode took it once it had checked the
    // password itself, before it reached for the cluster, and counted it.
    let slots_taken = u64::from(common::proxy_auth());
    assert_eq!(tenant.sessions_total(), slots_taken, "slots ever taken");
}

#[tokio::test]
async fn a_unix_socket_link_to_the_cluster_carries_sessions_and_cancels() {
    let (db, user, password) = tenant("unix");
    let text = common::config_text("", "require", "").replace(
        "host = \"127.0.0.1\"",
        &format!("host = \"{}\"", cluster().socket_dir().display()),
    );
    let proxy = common::start_proxy_from(&text).await;
    let (client, _conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    // inet_client_addr() is NULL for a Unix-socket backend.
    let row = client
        .query_one("select inet_client_addr() is null", &[])
        .await
        .unwrap();
    assert!(
        row.get::<_, bool>(0),
        "the proxy reached the cluster over TCP"
    );

    cancel_a_running_sleep(client, &db).await;
}

#[tokio::test]
async fn unauthenticated_logins_do_not_register_tenants() {
    let proxy = start_proxy("").await;
    // Each attempt as a role of its own: proxy mode slows down repeated
    // wrong passwords per client and role (up to 5 s each; tests/it/proxy_auth.rs
    // covers that), which would have this test wait over a minute.
    let users: Vec<String> = (0..20).map(|i| unique(&format!("ghostowner{i}"))).collect();
    let create: String = users
        .iter()
        .map(|u| format!("CREATE ROLE {u} LOGIN PASSWORD 'pw-{u}';"))
        .collect();
    cluster().psql("postgres", &create).unwrap();
    for (i, user) in users.iter().enumerate() {
        let ghost = unique(&format!("ghost{i}"));
        let Err(err) = connect(proxy.addr, &ghost, user, "wrong").await else {
            panic!("login with a wrong password must fail");
        };
        assert_eq!(code(&err), Some(&SqlState::INVALID_PASSWORD), "{err}");
        assert!(
            proxy.handle.shared().tenants.get(&ghost).is_none(),
            "a made-up database became a tenant"
        );
    }
    // An authenticated one does.
    let (db, user, password) = tenant("real");
    let (_client, _conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    assert!(proxy.handle.shared().tenants.get(&db).is_some());
}

#[tokio::test]
async fn the_whole_proxy_refuses_clients_past_max_client_connections() {
    let (db, user, password) = tenant("full");
    let proxy = common::start_proxy_with(
        "max_client_connections = 2\n",
        &format!("[tenants.{db}]\ntier = \"standard\"\n"),
    )
    .await;
    let (a, _conn_a) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let (_b, _conn_b) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let Err(err) = connect(proxy.addr, &db, &user, &password).await else {
        panic!("a third client must be refused");
    };
    assert_eq!(code(&err), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    assert_eq!(common::message(&err), "sorry, too many clients already");
    a.simple_query("select 1").await.unwrap();
}

/// The cluster link over TLS (`cluster.tls = "require"`, verified against
/// the cluster's CA) to roles the cluster trusts, checks with md5, or asks
/// for a cleartext `password`.
///
/// Passthrough mode relays all three over the TLS link, and cleartext over
/// a plaintext link too. (SCRAM over a TLS link is its documented
/// exception, see the README.)
///
/// Proxy mode checks SCRAM-SHA-256 itself first (with verifiers looked up
/// on this cluster), so it needs each role to have a SCRAM password: the
/// trusted role, given one, logs in over the TLS link; the md5-stored
/// role is refused with the hint; and the cleartext role, whose password
/// pgtier checked, is refused (28000, a misconfiguration to name) when the
/// cluster then asks for a cleartext password the proxy does not hold,
/// over either link. A wrong password is pgtier's own 28P01 in either
/// mode's terms.
#[tokio::test]
async fn a_tls_link_to_the_cluster_with_trust_md5_and_cleartext_roles_in_each_auth_mode() {
    use pgtier_testkit::sandbox::{Cluster, ClusterOptions, PasswordEncryption};
    let proxy_auth = common::proxy_auth();
    let tls_cluster = tokio::task::spawn_blocking(|| {
        Cluster::start(ClusterOptions {
            ssl: true,
            max_connections: 30,
            extra_hba: vec![
                "host all +trust_users 127.0.0.1/32 trust".to_owned(),
                "host all +md5_users 127.0.0.1/32 md5".to_owned(),
                "host all +password_users 127.0.0.1/32 password".to_owned(),
            ],
            installation: common::installation(),
        })
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("starting a TLS cluster: {e}"));
    let ca = tls_cluster
        .certs()
        .expect("ssl clusters have certificates")
        .ca_path
        .clone();
    // (role, password, how it is stored, its group); the trusted role has
    // a password only where pgtier has to check one.
    let trust_password = if proxy_auth { "trust-pw" } else { "" };
    let roles = [
        (
            "tl_trust",
            trust_password,
            PasswordEncryption::Scram,
            "trust_users",
        ),
        ("tl_md5", "md5-pw", PasswordEncryption::Md5, "md5_users"),
        (
            "tl_clear",
            "clear-pw",
            PasswordEncryption::Scram,
            "password_users",
        ),
    ];
    for (role, password, encryption, group) in roles {
        let password = (!password.is_empty()).then_some(password);
        tls_cluster.create_group(group).unwrap();
        tls_cluster.create_role(role, password, encryption).unwrap();
        tls_cluster
            .psql("postgres", &format!("grant {group} to {role}"))
            .unwrap();
        tls_cluster.create_database(role, role).unwrap();
    }
    // Proxy mode looks verifiers up on this cluster.
    let auth = if proxy_auth {
        common::install_auth_role(&tls_cluster, "tl_auth", "tl-auth-pw");
        common::auth_table_for("tl_auth", "tl-auth-pw", "30s")
    } else {
        String::new()
    };
    let link = |tls: &str| {
        common::config_text("", "require", &auth)
            .replace(
                &format!("port = {}", cluster().port()),
                &format!("port = {}", tls_cluster.port()),
            )
            .replace(
                "tls = \"disable\"",
                &format!("tls = \"{tls}\"\nca = {:?}", ca.display().to_string()),
            )
    };
    let over_tls = common::start_proxy_from(&link("require")).await;
    let over_plain = common::start_proxy_from(&link("disable")).await;
    let ssl_of_link = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
    for (role, password, _, _) in roles {
        let login = connect(over_tls.addr, role, role, password).await;
        let login = match (proxy_auth, role) {
            (true, "tl_md5") => {
                let Err(err) = login else {
                    panic!("proxy mode cannot check md5")
                };
                assert_eq!(code(&err), Some(&SqlState::INVALID_PASSWORD), "{err}");
                let hint = err.as_db_error().and_then(|e| e.hint()).unwrap_or_default();
                assert!(hint.contains("stored as SCRAM-SHA-256"), "{hint:?}");
                continue;
            }
            (true, "tl_clear") => {
                let Err(err) = login else {
                    panic!("the cluster's cleartext request cannot be answered")
                };
                assert_eq!(
                    code(&err),
                    Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
                    "{err}"
                );
                assert_eq!(
                    common::message(&err),
                    "the database cluster asks for password (cleartext) authentication, \
                     which the proxy cannot answer"
                );
                continue;
            }
            _ => login,
        };
        let (client, _conn) = login.unwrap_or_else(|e| panic!("{role} over a TLS link: {e}"));
        let row = client.query_one(ssl_of_link, &[]).await.unwrap();
        assert!(row.get::<_, bool>(0), "{role}: the cluster link is TLS");
        let row = client
            .query_one("select current_user::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), role);
    }
    let plain = connect(over_plain.addr, "tl_clear", "tl_clear", "clear-pw").await;
    if proxy_auth {
        let Err(err) = plain else {
            panic!("not over a plaintext link either")
        };
        assert_eq!(
            code(&err),
            Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
            "{err}"
        );
    } else {
        let (client, _conn) = plain.expect("cleartext password over a plaintext link");
        let row = client.query_one(ssl_of_link, &[]).await.unwrap();
        assert!(!row.get::<_, bool>(0), "the cluster link is plaintext");
    }
    // A wrong cleartext password: the cluster's 28P01, relayed (in proxy
    // mode pgtier's own, before it reaches for the cluster).
    let err = connect(over_tls.addr, "tl_clear", "tl_clear", "wrong")
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(&SqlState::INVALID_PASSWORD), "{err}");
}
