//! Proxy-side authentication (`auth.mode = "proxy"`) end to end: pgtier
//! checks SCRAM itself (channel binding included), refuses wrong passwords
//! and over-cap logins without touching the cluster, logs into the cluster
//! with the recovered ClientKey (over a verify-full TLS link too), and keeps
//! cluster connections warm for the next login, reset.

use crate::common;
use crate::common::code;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{auth_table, cluster, config_text, connect, psql_url, scram_tenant, start_proxy_from};
use tokio::net::{TcpListener, TcpStream};

/// A TCP relay in front of the test cluster that counts the connections
/// the proxy opens to it: every backend the cluster forks for the proxy
/// shows here.
async fn counting_relay() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opened = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&opened);
    let target = SocketAddr::new(cluster().host().parse().unwrap(), cluster().port());
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, opened)
}

/// A proxy-mode proxy; `cluster_at` replaces the cluster's address (a
/// relay), `tables` are appended.
async fn proxy_mode(
    top_level: &str,
    cluster_at: Option<SocketAddr>,
    tables: &str,
) -> common::TestProxy {
    let mut text = config_text(
        top_level,
        "prefer",
        &format!("{}{tables}", auth_table("30s")),
    );
    if let Some(addr) = cluster_at {
        text = text.replace(
            &format!("port = {}", cluster().port()),
            &format!("port = {}", addr.port()),
        );
    }
    start_proxy_from(&text).await
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn wrong_passwords_and_over_cap_logins_never_reach_the_cluster() {
    let (relay, opened) = counting_relay().await;
    let t = scram_tenant("pa_refused");
    let proxy = proxy_mode("server_idle_timeout = \"0s\"", Some(relay), "").await;
    // The proxy asks the cluster once which protocol it speaks.
    let shared = proxy.handle.shared().clone();
    common::wait_until(Duration::from_secs(5), "the protocol probe", || {
        shared.cluster_protocol_known()
    })
    .await;
    assert_eq!(opened.load(Ordering::SeqCst), 1, "the probe");
    let (a, _ca) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .expect("the right password logs in");
    let (b, _cb) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    assert_eq!(
        opened.load(Ordering::SeqCst),
        4,
        "+ auth_query + two backends"
    );

    let e = connect(proxy.addr, &t.db, &t.user, "wrong")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "28P01");
    assert_eq!(
        common::message(&e),
        format!("password authentication failed for user \"{}\"", t.user)
    );
    let e = connect(proxy.addr, &t.db, "no_such_role_at_all", "x")
        .await
        .unwrap_err();
    assert_eq!(
        code(&e),
        "28P01",
        "an unknown role reads like a wrong password"
    );
    let e = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "53300", "the free tier's third connection");
    assert_eq!(
        opened.load(Ordering::SeqCst),
        4,
        "no cluster connection for the refused logins"
    );
    assert_ne!(backend_pid(&a).await, backend_pid(&b).await);
}

#[tokio::test]
async fn psql_with_channel_binding_required_logs_in() {
    let t = scram_tenant("pa_plus");
    let proxy = proxy_mode("", None, "").await;
    let url = format!(
        "{}&channel_binding=require",
        psql_url(proxy.addr, &t.db, &t.user, &t.password, "verify-full")
    );
    let out = common::run_psql(&url, "SELECT current_user").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), t.user);
    // Bound to the proxy's certificate: a plaintext client cannot require it.
    let plain = format!(
        "{}&channel_binding=require",
        psql_url(proxy.addr, &t.db, &t.user, &t.password, "disable")
    );
    let out = common::run_psql(&plain, "SELECT 1").await;
    assert!(!out.status.success(), "channel binding without TLS");
}

#[tokio::test]
async fn a_warm_backend_is_reused_and_carries_nothing_of_its_last_session() {
    let t = scram_tenant("pa_warm");
    // A role the tenant's user may SET ROLE to, so that a session left
    // under it would show as current_user <> session_user.
    let other_role = format!("{}_other", t.user);
    common::cluster()
        .psql(
            "postgres",
            &format!(
                "CREATE ROLE {other_role} NOLOGIN; GRANT {other_role} TO {};",
                t.user
            ),
        )
        .unwrap();
    let proxy = proxy_mode("", None, "").await;
    let (first, conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let pid = backend_pid(&first).await;
    first
        .batch_execute(&format!(
            "CREATE TEMP TABLE scratch (n int);
             PREPARE leftover AS SELECT 1;
             SET statement_timeout = '42s';
             SET application_name = 'changed';
             LISTEN channel_left;
             SELECT pg_advisory_lock(4242);
             SET ROLE {other_role}"
        ))
        .await
        .unwrap();
    let role = first
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(role.get::<_, String>(0), other_role, "the role was set");
    drop(first);
    let _ = conn.await;
    let shared = proxy.handle.shared().clone();
    let db = t.db.clone();
    common::wait_until(Duration::from_secs(5), "the backend kept warm", || {
        shared.warm.len_of(&db) == 1
    })
    .await;

    let (second, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    assert_eq!(backend_pid(&second).await, pid, "the same backend, warm");
    let row = second
        .query_one(
            "SELECT to_regclass('pg_temp.scratch') IS NULL,
                    (SELECT count(*) FROM pg_prepared_statements WHERE name = 'leftover'),
                    current_setting('statement_timeout'),
                    current_setting('application_name'),
                    (SELECT count(*) FROM pg_listening_channels()),
                    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
                    current_user = session_user",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "no temp table");
    assert_eq!(row.get::<_, i64>(1), 0, "no prepared statement");
    assert_eq!(row.get::<_, String>(2), "0", "settings reset");
    assert_ne!(row.get::<_, String>(3), "changed", "application_name reset");
    assert_eq!(row.get::<_, i64>(4), 0, "no LISTEN");
    assert_eq!(row.get::<_, i64>(5), 0, "no advisory lock");
    assert!(row.get::<_, bool>(6), "no SET ROLE");
    let metrics = &proxy.handle.shared().metrics;
    assert_eq!(metrics.backends_warm.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_session_that_ends_inside_a_transaction_never_hands_its_backend_on() {
    let t = scram_tenant("pa_tx");
    let proxy = proxy_mode("", None, "").await;
    let (first, conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let pid = backend_pid(&first).await;
    first.batch_execute("BEGIN; SELECT 1").await.unwrap();
    drop(first);
    let _ = conn.await;
    let (second, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    assert_ne!(backend_pid(&second).await, pid, "a fresh backend");
    assert_eq!(proxy.handle.shared().warm.len_of(&t.db), 0);
}

#[tokio::test]
async fn a_changed_password_takes_effect_within_the_cache_ttl() {
    const TTL: Duration = Duration::from_secs(5);
    let t = scram_tenant("pa_rotate");
    let text = config_text("server_idle_timeout = \"0s\"", "prefer", &auth_table("5s"));
    let proxy = start_proxy_from(&text).await;
    // The verifier is looked up during this login and cached from then on.
    let looked_up = Instant::now();
    let (c, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    drop(c);
    let new = format!("{}-new", t.password);
    cluster()
        .psql(
            "postgres",
            &format!("ALTER ROLE {} PASSWORD '{new}'", t.user),
        )
        .unwrap();
    // Within the TTL the cached (old) verifier still answers, so the new
    // password is refused (with no cache it would work at once). The old
    // one is refused too, by the cluster, which has the new password.
    let new_login = connect(proxy.addr, &t.db, &t.user, &new).await;
    let within = looked_up.elapsed();
    assert!(
        within < TTL,
        "{within:?} for a login and an ALTER ROLE: the cache expired before it could be seen"
    );
    match new_login {
        Ok(_) => panic!("the new password worked while the old verifier was cached"),
        Err(e) => assert_eq!(code(&e), "28P01"),
    }
    // After it, the new one works and the old one no longer does.
    let deadline = looked_up + TTL + Duration::from_secs(5);
    loop {
        match connect(proxy.addr, &t.db, &t.user, &new).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => assert_eq!(code(&e), "28P01"),
            Err(e) => panic!("the new password never worked: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        looked_up.elapsed() >= TTL,
        "the new password worked before the TTL ran out"
    );
    let e = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "28P01", "the old password no longer works");
}

#[tokio::test]
async fn guessing_is_slowed_down_without_slowing_anyone_else() {
    let t = scram_tenant("pa_guess");
    let other = scram_tenant("pa_other");
    let proxy = proxy_mode("", None, "").await;
    let mut took = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let e = connect(proxy.addr, &t.db, &t.user, "guess")
            .await
            .unwrap_err();
        assert_eq!(code(&e), "28P01");
        took.push(started.elapsed());
    }
    // 0, 100, 200, 400, 800 ms of added delay.
    assert!(took[4] >= Duration::from_millis(800), "{took:?}");
    assert!(took[4] > took[1], "{took:?}");
    // Another client meanwhile logs in at full speed.
    let guessing = {
        let (addr, db, user) = (proxy.addr, t.db.clone(), t.user.clone());
        tokio::spawn(async move { connect(addr, &db, &user, "guess").await.is_err() })
    };
    let started = Instant::now();
    let (c, _conn) = connect(proxy.addr, &other.db, &other.user, &other.password)
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "another client waited {:?}",
        started.elapsed()
    );
    assert!(guessing.await.unwrap());
    // The right password clears the record.
    connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let started = Instant::now();
    let _ = connect(proxy.addr, &t.db, &t.user, "guess")
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(700));
    let failures = proxy
        .handle
        .shared()
        .metrics
        .auth_failures
        .load(Ordering::Relaxed);
    assert_eq!(failures, 7);
}

/// A cluster of its own that serves TLS (the shared test cluster does not),
/// with a tenant and the auth role and function on it.
fn tls_cluster() -> (
    pgtier_testkit::sandbox::Cluster,
    common::Tenant,
    (String, String),
) {
    let c = pgtier_testkit::sandbox::Cluster::start(pgtier_testkit::sandbox::ClusterOptions {
        ssl: true,
        max_connections: 30,
        installation: common::installation(),
        ..pgtier_testkit::sandbox::ClusterOptions::default()
    })
    .unwrap_or_else(|e| panic!("starting a TLS cluster: {e}"));
    let t = common::Tenant {
        db: common::unique("pa_tls"),
        user: common::unique("pa_tls_owner"),
        password: "pw-tls".to_owned(),
    };
    c.create_tenant(&t.db, &t.user, &t.password).unwrap();
    let auth = ("pgtier_auth_tls".to_owned(), "pw-auth-tls".to_owned());
    c.install_auth_role(&auth.0, &auth.1).unwrap();
    (c, t, auth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_full_tls_link_to_the_cluster_with_scram_from_three_clients() {
    let (tls, t, (user, password)) = tls_cluster();
    let ca = tls
        .certs()
        .expect("the TLS cluster's certificates")
        .ca_path
        .clone();
    let text = config_text("", "require", "[auth]\n")
        .replace("[auth]\n", "")
        .replace(
            &format!("port = {}\ntls = \"disable\"", cluster().port()),
            &format!(
                "port = {}\ntls = \"verify-full\"\nca = {:?}",
                tls.port(),
                ca.display().to_string()
            ),
        )
        + &format!(
            "[auth]\nmode = \"proxy\"\nuser = \"{user}\"\npassword = \"{password}\"\n\
             auth_query = \"{}\"\n",
            pgtier_testkit::sandbox::VERIFIER_QUERY
        );
    assert!(text.contains("verify-full"), "{text}");
    let proxy = start_proxy_from(&text).await;
    let on_tls = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

    let (client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .expect("tokio-postgres");
    let ssl: bool = client.query_one(on_tls, &[]).await.unwrap().get(0);
    assert!(ssl, "the cluster leg is TLS");
    drop(client);

    let url = psql_url(proxy.addr, &t.db, &t.user, &t.password, "verify-full");
    let out = common::run_psql(&url, on_tls).await;
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");

    let python = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/venv/bin/python");
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/psycopg_query.py");
    let dsn = format!(
        "host=localhost hostaddr={} port={} dbname={} user={} password={} sslmode=verify-full sslrootcert={}",
        proxy.addr.ip(),
        proxy.addr.port(),
        t.db,
        t.user,
        t.password,
        common::certs().ca_path.display()
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(python)
            .arg(script)
            .arg(dsn)
            .arg(on_tls)
            .env("PSYCOPG_IMPL", "python")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("psycopg finished")
    .expect("python ran");
    assert!(
        out.status.success(),
        "psycopg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "True");
}

/// A client asking for protocol 3.2 the moment the proxy has started, before
/// the background probe has learned what the cluster speaks, gets what the
/// cluster speaks: 3.2 (and a long cancel secret) from PostgreSQL 18, 3.0
/// from older ones. (It used to get 3.0 from any cluster until the probe
/// had answered.)
#[tokio::test]
async fn the_first_login_after_start_gets_the_protocol_the_cluster_speaks() {
    let t = scram_tenant("pa_first");
    let proxy = proxy_mode("", None, "").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let msgs = common::raw_login(&mut s, &t.user, &t.db, &t.password, (3 << 16) | 2).await;
    let (tag, body) = msgs.last().unwrap();
    assert_eq!(*tag, b'Z', "{}", String::from_utf8_lossy(body));
    let negotiated = msgs
        .iter()
        .find(|m| m.0 == b'v')
        .map(|m| u32::from_be_bytes(m.1[..4].try_into().unwrap()));
    let key = &msgs.iter().find(|m| m.0 == b'K').expect("BackendKeyData").1;
    if common::pg_major() >= 18 {
        assert_eq!(negotiated, None, "3.2 as asked");
        assert_eq!(key.len(), 4 + 32, "a long cancel secret");
    } else {
        assert_eq!(negotiated, Some(3 << 16), "3.0");
        assert_eq!(key.len(), 4 + 4);
    }
}

/// A relay to the test cluster that, while `ignoring` is set, holds every
/// connection whose StartupMessage names `application_name` `name` (the
/// proxy's protocol probe is "pgtier probe", its auth_query connection
/// "pgtier auth") without ever answering, and passes every other
/// connection through. Counts the connections it ignored.
async fn relay_ignoring(
    name: &'static str,
    ignoring: Arc<AtomicBool>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ignored = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&ignored);
    let target = SocketAddr::new(cluster().host().parse().unwrap(), cluster().port());
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            let ignoring = Arc::clone(&ignoring);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let len = inbound.read_u32().await.unwrap_or(0) as usize;
                let mut first = vec![0; len.saturating_sub(4)];
                if len < 8 || inbound.read_exact(&mut first).await.is_err() {
                    return;
                }
                if ignoring.load(Ordering::SeqCst)
                    && first.windows(name.len()).any(|w| w == name.as_bytes())
                {
                    count.fetch_add(1, Ordering::SeqCst);
                    // Held open, never answered.
                    let mut rest = Vec::new();
                    let _ = inbound.read_to_end(&mut rest).await;
                    return;
                }
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let mut packet = (len as u32).to_be_bytes().to_vec();
                packet.extend(first);
                if outbound.write_all(&packet).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, ignored)
}

/// A cluster that never answers the protocol probe holds up nothing else:
/// the probe gives up after `cluster.connect_timeout`, and warm cluster
/// connections past `server_idle_timeout` are still closed. (The probe
/// used to wait for ever, and with it the expiry of warm connections.)
#[tokio::test]
async fn warm_connections_expire_while_the_cluster_ignores_the_protocol_probe() {
    let (relay, probes) = relay_ignoring("pgtier probe", Arc::new(AtomicBool::new(true))).await;
    let t = scram_tenant("pa_probe");
    let text = config_text("server_idle_timeout = \"1s\"", "prefer", &auth_table("30s")).replace(
        &format!("port = {}", cluster().port()),
        &format!("port = {}\nconnect_timeout = \"1s\"", relay.port()),
    );
    let proxy = start_proxy_from(&text).await;
    let shared = proxy.handle.shared().clone();
    common::wait_until(Duration::from_secs(5), "the probe sent", || {
        probes.load(Ordering::SeqCst) == 1
    })
    .await;
    let (client, conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    let _ = conn.await;
    let db = t.db.clone();
    common::wait_until(Duration::from_secs(5), "the backend kept warm", || {
        shared.warm.len_of(&db) == 1
    })
    .await;
    common::wait_until(
        Duration::from_secs(5),
        "the warm backend closed after 1 s idle",
        || shared.warm.len_of(&db) == 0,
    )
    .await;
    assert!(!shared.cluster_protocol_known(), "the probe never answered");
}

/// A cluster that accepts the auth_query connection and then says nothing
/// fails the lookup within `cluster.connect_timeout` (08006, "could not
/// check the password now"), not at the client's `login_timeout`; logins
/// that waited behind that attempt fail with it rather than each trying
/// (and waiting) again; once the cluster answers, a fresh lookup
/// connection logs clients in.
#[tokio::test]
async fn a_cluster_silent_to_the_lookup_fails_logins_within_connect_timeout() {
    let ignoring = Arc::new(AtomicBool::new(true));
    let (relay, ignored) = relay_ignoring("pgtier auth", Arc::clone(&ignoring)).await;
    let t = scram_tenant("pa_silent");
    let text = config_text("login_timeout = \"60s\"", "prefer", &auth_table("0s")).replace(
        &format!("port = {}", cluster().port()),
        &format!("port = {}\nconnect_timeout = \"1s\"", relay.port()),
    );
    let proxy = start_proxy_from(&text).await;
    let started = Instant::now();
    let logins = (0..3).map(|_| async {
        let Err(err) = connect(proxy.addr, &t.db, &t.user, &t.password).await else {
            panic!("a login went through while the lookup went unanswered");
        };
        err
    });
    for err in futures_util::future::join_all(logins).await {
        assert_eq!(code(&err), "08006", "{err}");
        let message = err.as_db_error().map(|db| db.message().to_owned());
        assert_eq!(
            message.as_deref(),
            Some("could not check the password now"),
            "{err:?}"
        );
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(30),
        "refused after {waited:?}: connect_timeout is 1 s, login_timeout 60 s"
    );
    assert_eq!(
        ignored.load(Ordering::SeqCst),
        1,
        "one stalled lookup connection for three logins"
    );
    ignoring.store(false, Ordering::SeqCst);
    // Within a second of the failure a login still fails with it; after,
    // the lookup connects afresh.
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = loop {
        match connect(proxy.addr, &t.db, &t.user, &t.password).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                break client;
            }
            Err(e) => {
                assert_eq!(code(&e), "08006", "{e}");
                assert!(
                    Instant::now() < deadline,
                    "no login once the cluster answers"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    client.simple_query("SELECT 1").await.unwrap();
}

/// An auth_query that takes `seconds` and writes down each call (the role
/// asked for and the backend that answered) in a table of its own: the
/// query and the superuser connection that reads the table.
async fn counted_slow_auth_query(seconds: f64) -> (String, String, tokio_postgres::Client) {
    let table = common::unique("pa_lookups");
    let function = common::unique("pa_counted_verifier");
    let (auth_user, _) = common::auth_role();
    let admin = common::superuser_client().await;
    admin
        .batch_execute(&format!(
            "CREATE TABLE public.{table} (role_name text, pid int); \
             CREATE FUNCTION public.{function}(role_name text) RETURNS text \
             LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$ \
             INSERT INTO public.{table} VALUES (role_name, pg_backend_pid()); \
             SELECT pg_sleep({seconds}); \
             SELECT public.pgtier_verifier(role_name) $$; \
             REVOKE ALL ON FUNCTION public.{function}(text) FROM PUBLIC; \
             GRANT EXECUTE ON FUNCTION public.{function}(text) TO {auth_user};"
        ))
        .await
        .expect("creating the counted auth_query");
    (format!("SELECT public.{function}($1)"), table, admin)
}

/// A proxy-mode proxy whose auth_query is `query`, with `tenants` in the
/// standard tier (no cap) and `top_level` keys.
async fn proxy_with_auth_query(
    top_level: &str,
    query: &str,
    tenants: &[&common::Tenant],
) -> common::TestProxy {
    let (user, password) = common::auth_role();
    let mut tables = common::auth_table_for(user, password, "30s")
        .replace(pgtier_testkit::sandbox::VERIFIER_QUERY, query);
    for t in tenants {
        tables.push_str(&format!("[tenants.{}]\ntier = \"standard\"\n", t.db));
    }
    start_proxy_from(&config_text(top_level, "prefer", &tables)).await
}

/// Logins of one role that arrive while its verifier is being looked up
/// wait for that lookup: ten at once cost the cluster one auth_query.
#[tokio::test]
async fn logins_of_one_role_at_once_share_one_lookup() {
    let t = scram_tenant("pa_shared_lookup");
    let (query, table, admin) = counted_slow_auth_query(0.5).await;
    let proxy = proxy_with_auth_query("", &query, &[&t]).await;
    let logins = (0..10).map(|_| connect(proxy.addr, &t.db, &t.user, &t.password));
    let mut clients = Vec::new();
    for login in futures_util::future::join_all(logins).await {
        let (client, conn) = login.expect("each of the ten logs in");
        tokio::spawn(conn);
        clients.push(client);
    }
    let asked: i64 = admin
        .query_one(
            &format!("SELECT count(*) FROM public.{table} WHERE role_name = $1"),
            &[&t.user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(asked, 1, "auth_query calls for ten logins of one role");
    for client in &clients {
        client.simple_query("SELECT 1").await.unwrap();
    }
}

/// Slow lookups of different roles do not queue behind each other on one
/// connection: the proxy opens more (up to 4), and they answer side by
/// side on different backends; once idle for `server_idle_timeout`, all
/// but one close.
#[tokio::test]
async fn slow_lookups_of_different_roles_run_side_by_side() {
    let tenants: Vec<common::Tenant> = (0..6)
        .map(|i| scram_tenant(&format!("pa_side_{i}")))
        .collect();
    let (query, table, admin) = counted_slow_auth_query(1.0).await;
    let proxy = proxy_with_auth_query(
        "server_idle_timeout = \"1s\"",
        &query,
        &tenants.iter().collect::<Vec<_>>(),
    )
    .await;
    let logins = tenants
        .iter()
        .map(|t| connect(proxy.addr, &t.db, &t.user, &t.password));
    for login in futures_util::future::join_all(logins).await {
        let (client, conn) = login.expect("each role logs in");
        tokio::spawn(conn);
        client.simple_query("SELECT 1").await.unwrap();
    }
    let rows = admin
        .query(
            &format!("SELECT count(*), count(DISTINCT pid) FROM public.{table}"),
            &[],
        )
        .await
        .unwrap();
    let (asked, backends): (i64, i64) = (rows[0].get(0), rows[0].get(1));
    assert_eq!(asked, 6, "one lookup per role");
    assert!(
        (2..=4).contains(&backends),
        "six slow lookups answered by {backends} auth_query backends (1 = queued on one)"
    );
    let shared = proxy.handle.shared().clone();
    common::wait_until(
        Duration::from_secs(10),
        "the burst's auth_query connections closed but one",
        || shared.verifiers.connections() == 1,
    )
    .await;
    // The one kept still serves.
    let t = &tenants[0];
    let (client, conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .expect("a login after the burst");
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();
}
