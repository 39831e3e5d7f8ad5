//! The operator API end to end: a real proxy in front of a real cluster,
//! driven over HTTP as an operator (or Prometheus) would.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::http::http;
use common::{connect, unique, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;

const TOKEN: &str = "s3cret-token";

/// A fresh tenant that logs in with SCRAM: (database, user, password).
fn tenant(prefix: &str) -> (String, String, String) {
    let t = common::scram_tenant(prefix);
    (t.db, t.user, t.password)
}

/// A TLS-requiring proxy with the operator API on a free port.
async fn admin_proxy(extra_top_level: &str, tables: &str) -> common::TestProxy {
    let top = format!("admin_listen = \"127.0.0.1:0\"\n{extra_top_level}");
    common::start_proxy_from(&common::config_text(&top, "require", tables)).await
}

fn admin(proxy: &common::TestProxy) -> SocketAddr {
    proxy
        .handle
        .admin_addr()
        .expect("admin_listen is set, so the API is bound")
}

/// Parses `/metrics` with a Prometheus text parser.
async fn scrape(addr: SocketAddr, token: Option<&str>) -> prometheus_parse::Scrape {
    let reply = http(addr, "GET", "/metrics", token).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let lines = reply.body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text")
}

/// The value of the one sample of `metric` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert!(
        matching.len() <= 1,
        "several samples of {metric} {labels:?}"
    );
    matching.first().map(|s| match &s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        prometheus_parse::Value::Histogram(buckets) => {
            buckets.iter().map(|b| b.count).fold(0.0, f64::max)
        }
        other => panic!("unexpected value {other:?}"),
    })
}

/// Polls an async condition until it holds, failing the test at the deadline.
async fn eventually<F, Fut>(deadline: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    while !f().await {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn token_is_required_everywhere_but_health() {
    let proxy = admin_proxy(&format!("admin_token = \"{TOKEN}\"\n"), "").await;
    let api = admin(&proxy);

    let health = http(api, "GET", "/health", None).await;
    assert_eq!((health.status, health.body.trim()), (200, "ok"));

    for (method, path) in [
        ("GET", "/tenants"),
        ("GET", "/tenants/nobody"),
        ("POST", "/tenants/nobody/disconnect"),
        ("POST", "/reload"),
        ("GET", "/metrics"),
    ] {
        let none = http(api, method, path, None).await;
        assert_eq!(none.status, 401, "{method} {path} without a token");
        let wrong = http(api, method, path, Some("s3cret-tokeN")).await;
        assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");
        let right = http(api, method, path, Some(TOKEN)).await;
        assert_ne!(right.status, 401, "{method} {path} with the token");
    }
    assert_eq!(http(api, "GET", "/tenants", Some(TOKEN)).await.status, 200);
    assert_eq!(http(api, "GET", "/metrics", Some(TOKEN)).await.status, 200);
}

#[tokio::test]
async fn health_turns_503_while_draining() {
    let proxy = admin_proxy("shutdown_grace = \"30s\"\n", "").await;
    let api = admin(&proxy);
    let (db, user, password) = tenant("drain");
    let (client, _conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    assert_eq!(http(api, "GET", "/health", None).await.status, 200);
    // An open session keeps the proxy draining (not stopped) for the grace.
    proxy.handle.shutdown();
    eventually(Duration::from_secs(5), "/health says 503", || async {
        http(api, "GET", "/health", None).await.status == 503
    })
    .await;
    drop(client);
}

#[tokio::test]
async fn tenants_lists_seen_and_configured_tenants() {
    let listed = unique("listed");
    let tables = format!("[tenants.{listed}]\ntier = \"standard\"\nidle_timeout = \"90s\"\n");
    let proxy = admin_proxy("", &tables).await;
    let api = admin(&proxy);
    let (db, user, password) = tenant("seen");
    let (client, _conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    client.simple_query("select 1").await.unwrap();

    let all = http(api, "GET", "/tenants", None).await;
    assert_eq!(all.status, 200, "{}", all.body);
    let all = all.json();
    let find = |name: &str| {
        all.as_array()
            .expect("a JSON array")
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {all}"))
    };
    let seen = find(&db);
    assert_eq!(seen["tier"], "free");
    assert_eq!(seen["connections"], 1);
    assert_eq!(seen["max_connections"], 2);
    assert_eq!(seen["idle_timeout_s"], 300);
    assert_eq!(seen["rejected_total"], 0);
    let last = seen["last_activity"].as_str().expect("last_activity set");
    let at = humantime::parse_rfc3339(last).expect("RFC 3339");
    let age = std::time::SystemTime::now()
        .duration_since(at)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "{last}");

    let configured = find(&listed);
    assert_eq!(configured["tier"], "standard");
    assert_eq!(configured["max_connections"], 0);
    assert_eq!(configured["idle_timeout_s"], 90);
    assert_eq!(configured["connections"], 0);
    assert!(configured["last_activity"].is_null());

    let one = http(api, "GET", &format!("/tenants/{db}"), None).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json(), seen);
    let missing = http(api, "GET", "/tenants/no_such_tenant", None).await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"]
        .as_str()
        .unwrap()
        .contains("no_such_tenant"));

    // Inactivity: the configured, never-seen tenant is inactive for any
    // span; the one just used (and still connected) is not.
    let inactive = http(api, "GET", "/tenants?inactive_for=30d", None)
        .await
        .json();
    let names: Vec<&str> = inactive
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&listed.as_str()), "{names:?}");
    assert!(!names.contains(&db.as_str()), "{names:?}");
    let bad = http(api, "GET", "/tenants?inactive_for=soon", None).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
}

#[tokio::test]
async fn metrics_parse_and_gauges_match_the_sessions() {
    let proxy = admin_proxy("", "").await;
    let api = admin(&proxy);
    let (a, a_user, a_pw) = tenant("meta");
    let (b, b_user, b_pw) = tenant("metb");
    let (a1, _a1c) = connect(proxy.addr, &a, &a_user, &a_pw).await.unwrap();
    let (a2, _a2c) = connect(proxy.addr, &a, &a_user, &a_pw).await.unwrap();
    let (b1, _b1c) = connect(proxy.addr, &b, &b_user, &b_pw).await.unwrap();
    for c in [&a1, &a2, &b1] {
        c.simple_query("select 1").await.unwrap();
    }
    // The free tier's cap refuses a third session of `a`.
    let refused = connect(proxy.addr, &a, &a_user, &a_pw).await.unwrap_err();
    assert_eq!(refused.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));

    let m = scrape(api, None).await;
    let conns = "pgtier_client_connections";
    assert_eq!(
        sample(&m, conns, &[("tenant", &a), ("tier", "free")]),
        Some(2.0)
    );
    assert_eq!(
        sample(&m, conns, &[("tenant", &b), ("tier", "free")]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "pgtier_connections_rejected_total",
            &[("tenant", &a), ("reason", "max_connections")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "pgtier_sessions_total", &[("tenant", &a)]),
        Some(2.0)
    );
    assert!(sample(&m, "pgtier_queries_total", &[("tenant", &a)]).unwrap() >= 2.0);
    for direction in ["from_client", "to_client"] {
        let bytes = sample(
            &m,
            "pgtier_bytes_total",
            &[("tenant", &b), ("direction", direction)],
        );
        assert!(bytes.unwrap() > 0.0, "{direction}");
    }
    assert!(sample(&m, "pgtier_login_duration_seconds", &[]).unwrap() >= 3.0);
    assert_eq!(
        sample(
            &m,
            "pgtier_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );

    // The gauge follows the sessions down.
    drop(a1);
    eventually(Duration::from_secs(5), "gauge drops to 1", || async {
        sample(&scrape(api, None).await, conns, &[("tenant", &a)]) == Some(1.0)
    })
    .await;
    assert_eq!(proxy.handle.tenant_connections(&a), Some(1));
    drop((a2, b1));
}

#[tokio::test]
async fn disconnect_closes_exactly_that_tenants_sessions() {
    let proxy = admin_proxy("", "").await;
    let api = admin(&proxy);
    let (a, a_user, a_pw) = tenant("disa");
    let (b, b_user, b_pw) = tenant("disb");
    let (a1, a1_conn) = connect(proxy.addr, &a, &a_user, &a_pw).await.unwrap();
    let (a2, a2_conn) = connect(proxy.addr, &a, &a_user, &a_pw).await.unwrap();
    let (b1, _b1_conn) = connect(proxy.addr, &b, &b_user, &b_pw).await.unwrap();
    for c in [&a1, &a2, &b1] {
        c.simple_query("select 1").await.unwrap();
    }

    let reply = http(api, "POST", &format!("/tenants/{a}/disconnect"), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["disconnected"], 2);

    for conn in [a1_conn, a2_conn] {
        let ended = tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("session closed by the operator")
            .unwrap();
        let err = ended.expect_err("closed with an error from the proxy");
        assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err}");
        assert_eq!(
            common::message(&err),
            "terminating connection due to administrator command"
        );
    }
    wait_until(Duration::from_secs(2), "a's slots are free", || {
        proxy.handle.tenant_connections(&a) == Some(0)
    })
    .await;
    // The other tenant did not notice.
    let row = b1.query_one("select 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(proxy.handle.tenant_connections(&b), Some(1));
    // And `a` may log in again.
    let (again, _c) = connect(proxy.addr, &a, &a_user, &a_pw).await.unwrap();
    again.simple_query("select 1").await.unwrap();

    let unknown = http(api, "POST", "/tenants/no_such_tenant/disconnect", None).await;
    assert_eq!(unknown.status, 404);
}

fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config file");
}

#[tokio::test]
async fn reload_upgrades_a_tenant_without_dropping_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let top = "admin_listen = \"127.0.0.1:0\"\n";
    let (db, user, password) = tenant("upg");
    let text = common::config_text(top, "require", "");
    write_config(&path, &text);
    let proxy = common::start_proxy_from(&text).await;
    proxy.handle.set_config_path(&path);
    let api = admin(&proxy);

    let (s1, _c1) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let (s2, _c2) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let refused = connect(proxy.addr, &db, &user, &password)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));

    // listen = 127.0.0.1:0 in the file: a "changed" listener only warns.
    let upgraded = common::config_text(
        top,
        "require",
        &format!("[tenants.{db}]\ntier = \"standard\"\n"),
    );
    write_config(&path, &upgraded);
    let reply = http(api, "POST", "/reload", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let (s3, _c3) = connect(proxy.addr, &db, &user, &password)
        .await
        .expect("a third session after the upgrade");
    for s in [&s1, &s2, &s3] {
        s.simple_query("select 1")
            .await
            .expect("every session works");
    }
    assert_eq!(proxy.handle.tenant_connections(&db), Some(3));
    let view = http(api, "GET", &format!("/tenants/{db}"), None)
        .await
        .json();
    assert_eq!(view["tier"], "standard");
    assert_eq!(view["connections"], 3);
}

#[tokio::test]
async fn a_broken_config_is_refused_and_the_old_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let top = "admin_listen = \"127.0.0.1:0\"\n";
    let (db, user, password) = tenant("broken");
    let text = common::config_text(top, "require", "");
    write_config(&path, &text);
    let proxy = common::start_proxy_from(&text).await;
    let api = admin(&proxy);

    // Not started from a file yet: nothing to reload.
    assert_eq!(http(api, "POST", "/reload", None).await.status, 400);
    proxy.handle.set_config_path(&path);

    let bad_toml = format!("{text}\n[tenants.{db}\ntier = \"standard\"\n");
    let unknown_tier = format!("{text}\n[tenants.{db}]\ntier = \"gold\"\n");
    let missing_cert = text.replace(
        &common::certs().cert_path.display().to_string(),
        "/nonexistent/server.crt",
    );
    for (broken, expect) in [
        (bad_toml, "proxy.toml"),
        (unknown_tier, "gold"),
        (missing_cert, "/nonexistent/server.crt"),
    ] {
        write_config(&path, &broken);
        let reply = http(api, "POST", "/reload", None).await;
        assert_eq!(reply.status, 400, "{}", reply.body);
        let message = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains(expect), "{message}");
    }

    // Still free (2), still TLS with the old certificate.
    let (s1, _c1) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let (_s2, _c2) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let refused = connect(proxy.addr, &db, &user, &password)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    s1.simple_query("select 1").await.unwrap();
    let view = http(api, "GET", &format!("/tenants/{db}"), None)
        .await
        .json();
    assert_eq!(view["tier"], "free");
}

#[tokio::test]
async fn last_activity_survives_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let top = format!("state_dir = \"{}\"\n", state.path().display());
    let (db, user, password) = tenant("persist");

    let mut first = admin_proxy(&top, "").await;
    let (client, conn) = connect(first.addr, &db, &user, &password).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    let before = http(admin(&first), "GET", &format!("/tenants/{db}"), None)
        .await
        .json();
    let last = before["last_activity"]
        .as_str()
        .expect("activity recorded")
        .to_owned();
    drop(client);
    let _ = conn.await;
    first.handle.shutdown();
    tokio::time::timeout(Duration::from_secs(10), &mut first.task)
        .await
        .expect("proxy stopped")
        .unwrap()
        .unwrap();
    assert!(
        state.path().join(pgtier::ops::state::FILE_NAME).exists(),
        "state written at shutdown"
    );

    // A new proxy, nothing in its config about the tenant, never seen by it.
    let second = admin_proxy(&top, "").await;
    let after = http(admin(&second), "GET", &format!("/tenants/{db}"), None).await;
    assert_eq!(after.status, 200, "{}", after.body);
    let after = after.json();
    assert_eq!(after["last_activity"].as_str(), Some(last.as_str()));
    assert_eq!(after["connections"], 0);
    // Active a moment ago: not inactive for an hour, but inactive for 0s.
    let names = |v: serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect()
    };
    let hour = http(admin(&second), "GET", "/tenants?inactive_for=1h", None)
        .await
        .json();
    assert!(!names(hour).contains(&db));
    let zero = http(admin(&second), "GET", "/tenants?inactive_for=0s", None)
        .await
        .json();
    assert!(names(zero).contains(&db));
}

/// Every labelled sample of the per-tenant or fleet series that names
/// `tenant`.
fn series_of(scrape: &prometheus_parse::Scrape, tenant: &str) -> Vec<String> {
    scrape
        .samples
        .iter()
        .filter(|s| s.labels.get("tenant") == Some(tenant))
        .map(|s| s.metric.clone())
        .collect()
}

/// Each refusal the README lists, provoked for real, appears in
/// `pgtier_connections_rejected_total` under its reason, against the
/// tenant when the proxy knows which one it was (`tenant=""` before a
/// StartupMessage).
#[tokio::test]
async fn every_refusal_is_counted_under_its_reason() {
    let (db, user, password) = tenant("reasons");
    let (other, other_user, other_pw) = tenant("reasonsother");
    let proxy = admin_proxy(
        "login_timeout = \"2s\"\nmax_client_connections = 4\n",
        &format!(
            "[tenants.{db}]\ntier = \"free\"\nidle_timeout = \"1s\"\n[tenants.{other}]\ntier = \"standard\"\n"
        ),
    )
    .await;
    let api = admin(&proxy);

    // tls_required: a plaintext StartupMessage.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&common::startup_packet(&[
        ("user", &user),
        ("database", &db),
    ]))
    .await
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert_eq!(
        pgtier::protocol::error::sqlstate_of(&answer[5..]),
        Some("28000")
    );
    // bad_startup: one byte over the cap.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&10_001u32.to_be_bytes()).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert_eq!(
        pgtier::protocol::error::sqlstate_of(&answer[5..]),
        Some("08P01")
    );
    // A wrong password: the cluster's refusal in passthrough mode
    // (cluster_refused); in proxy mode pgtier's own (wrong_password), the
    // cluster never asked.
    let err = connect(proxy.addr, &db, &user, "wrong").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
    // cluster_refused in either mode: a role with the right password that
    // may not connect to this database, which only the cluster knows.
    let intruder = unique("reasons_intruder");
    let c = common::cluster();
    c.create_role(
        &intruder,
        Some("pw-intruder"),
        pgtier_testkit::sandbox::PasswordEncryption::Scram,
    )
    .and_then(|()| {
        c.psql(
            "postgres",
            &format!("REVOKE CONNECT ON DATABASE {db} FROM PUBLIC"),
        )
    })
    .unwrap();
    let err = connect(proxy.addr, &db, &intruder, "pw-intruder")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    // login_timeout: a client stalled mid-SCRAM.
    let mut stalled = common::ssl_request_tls(proxy.addr).await;
    stalled
        .write_all(&common::startup_packet(&[
            ("user", &user),
            ("database", &db),
        ]))
        .await
        .unwrap();
    stalled.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut answer))
        .await
        .expect("closed at the login timeout");
    // max_client_connections: four connections held, a fifth refused.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            connect(proxy.addr, &other, &other_user, &other_pw)
                .await
                .unwrap(),
        );
    }
    let err = connect(proxy.addr, &other, &other_user, &other_pw)
        .await
        .unwrap_err();
    assert_eq!(common::message(&err), "sorry, too many clients already");
    drop(held);
    wait_until(
        Duration::from_secs(5),
        "the held connections closed",
        || proxy.handle.shared().open_connections() == 0,
    )
    .await;
    // max_connections: the free tier's third session.
    let (_a1, a1_conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let (_a2, a2_conn) = connect(proxy.addr, &db, &user, &password).await.unwrap();
    let err = connect(proxy.addr, &db, &user, &password)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    // idle_timeout: both sessions sit idle past 1 s.
    for conn in [a1_conn, a2_conn] {
        let ended = tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("closed when idle")
            .unwrap();
        let err = ended.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::IDLE_SESSION_TIMEOUT), "{err}");
    }

    let m = scrape(api, None).await;
    let rejected = |tenant: &str, reason: &str| {
        sample(
            &m,
            "pgtier_connections_rejected_total",
            &[("tenant", tenant), ("reason", reason)],
        )
    };
    let proxy_auth = common::proxy_auth();
    for (tenant, reason, count) in [
        ("", "tls_required", Some(1.0)),
        ("", "bad_startup", Some(1.0)),
        ("", "max_client_connections", Some(1.0)),
        (
            db.as_str(),
            "cluster_refused",
            Some(if proxy_auth { 1.0 } else { 2.0 }),
        ),
        (
            db.as_str(),
            "wrong_password",
            if proxy_auth { Some(1.0) } else { None },
        ),
        (db.as_str(), "login_timeout", Some(1.0)),
        (db.as_str(), "max_connections", Some(1.0)),
        (db.as_str(), "idle_timeout", Some(2.0)),
    ] {
        assert_eq!(
            rejected(tenant, reason),
            count,
            "pgtier_connections_rejected_total{{tenant={tenant:?},reason={reason:?}}}"
        );
    }
    assert_eq!(sample(&m, "pgtier_session_panics_total", &[]), Some(0.0));

    // cluster_unreachable, from a proxy whose cluster is not there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = common::config_text("admin_listen = \"127.0.0.1:0\"\n", "require", "").replace(
        &format!("port = {}", common::cluster().port()),
        &format!("port = {closed}"),
    );
    let lonely = common::start_proxy_from(&text).await;
    let err = connect(lonely.addr, &db, &user, &password)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err}");
    // Proxy mode first reaches for the role's verifier (auth_query), and
    // says that it could not check the password.
    let reason = if proxy_auth {
        "auth_unavailable"
    } else {
        "cluster_unreachable"
    };
    let m = scrape(admin(&lonely), None).await;
    assert_eq!(
        sample(
            &m,
            "pgtier_connections_rejected_total",
            &[("tenant", ""), ("reason", reason)]
        ),
        Some(1.0),
        "{reason}"
    );
}

/// A tenant with no session and no activity for `metrics_series_ttl` (an
/// hour by default, 1 s here) leaves the per-tenant series and stays in
/// `/tenants`; a tenant holding a session stays in the series however long
/// it has been quiet; activity brings a tenant back with its counters.
#[tokio::test]
async fn a_quiet_tenant_leaves_the_series_and_stays_in_tenants() {
    let proxy = admin_proxy("metrics_series_ttl = \"1s\"\n", "").await;
    let api = admin(&proxy);
    let (held, held_user, held_pw) = tenant("ttlheld");
    let (quiet, quiet_user, quiet_pw) = tenant("ttlquiet");
    let (h, _h_conn) = connect(proxy.addr, &held, &held_user, &held_pw)
        .await
        .unwrap();
    h.simple_query("select 1").await.unwrap();
    let (q, q_conn) = connect(proxy.addr, &quiet, &quiet_user, &quiet_pw)
        .await
        .unwrap();
    q.simple_query("select 1").await.unwrap();
    let m = scrape(api, None).await;
    assert_eq!(
        sample(&m, "pgtier_sessions_total", &[("tenant", &quiet)]),
        Some(1.0)
    );
    drop(q);
    let _ = q_conn.await;
    wait_until(
        Duration::from_secs(5),
        "the quiet tenant's slot back",
        || proxy.handle.tenant_connections(&quiet) == Some(0),
    )
    .await;

    eventually(
        Duration::from_secs(10),
        "the quiet tenant leaves the series",
        || async { series_of(&scrape(api, None).await, &quiet).is_empty() },
    )
    .await;
    // The held tenant was last active before the quiet one, and stays.
    let m = scrape(api, None).await;
    assert_eq!(
        sample(&m, "pgtier_client_connections", &[("tenant", &held)]),
        Some(1.0)
    );
    let listed = http(api, "GET", &format!("/tenants/{quiet}"), None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.json()["connections"], 0);

    let (q, _q_conn) = connect(proxy.addr, &quiet, &quiet_user, &quiet_pw)
        .await
        .unwrap();
    q.simple_query("select 1").await.unwrap();
    let m = scrape(api, None).await;
    assert_eq!(
        sample(&m, "pgtier_sessions_total", &[("tenant", &quiet)]),
        Some(2.0)
    );
}

#[tokio::test]
async fn reload_lowering_a_cap_blocks_new_logins_and_keeps_running_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let top = "admin_listen = \"127.0.0.1:0\"\n";
    let (db, user, password) = tenant("lower");
    let standard = common::config_text(
        top,
        "require",
        &format!("[tenants.{db}]\ntier = \"standard\"\n"),
    );
    write_config(&path, &standard);
    let proxy = common::start_proxy_from(&standard).await;
    proxy.handle.set_config_path(&path);
    let api = admin(&proxy);
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(connect(proxy.addr, &db, &user, &password).await.unwrap());
    }

    write_config(
        &path,
        &common::config_text(
            top,
            "require",
            &format!("[tenants.{db}]\ntier = \"free\"\n"),
        ),
    );
    let reply = http(api, "POST", "/reload", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // The three running sessions carry on; a fourth is refused.
    for (s, _) in &sessions {
        s.simple_query("select 1")
            .await
            .expect("running sessions continue");
    }
    let refused = connect(proxy.addr, &db, &user, &password)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    assert_eq!(
        common::message(&refused),
        format!("too many connections for database \"{db}\": the free tier allows 2")
    );
    // Down to two: still at the cap.
    let (s, conn) = sessions.pop().unwrap();
    drop(s);
    let _ = conn.await;
    wait_until(Duration::from_secs(5), "two left", || {
        common::slots(&proxy.handle, &db) == 2
    })
    .await;
    let refused = connect(proxy.addr, &db, &user, &password)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    // Under it: a new login fits.
    let (s, conn) = sessions.pop().unwrap();
    drop(s);
    let _ = conn.await;
    wait_until(Duration::from_secs(5), "one left", || {
        common::slots(&proxy.handle, &db) == 1
    })
    .await;
    let (again, _c) = connect(proxy.addr, &db, &user, &password)
        .await
        .expect("under the lowered cap again");
    again.simple_query("select 1").await.unwrap();
}

/// A tokio-postgres TLS connector trusting only the CA in `ca_pem`.
fn connector_trusting(ca_pem: &str) -> tokio_postgres_rustls::MakeRustlsConnect {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(pgtier::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

async fn connect_trusting(
    addr: SocketAddr,
    ca_pem: &str,
    (db, user, password): (&str, &str, &str),
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("localhost")
        .hostaddr(addr.ip())
        .port(addr.port())
        .dbname(db)
        .user(user)
        .password(password)
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(Duration::from_secs(10))
        .connect(connector_trusting(ca_pem))
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test]
async fn reload_serves_a_new_certificate_to_new_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let top = "admin_listen = \"127.0.0.1:0\"\n";
    let (db, user, password) = tenant("newcert");
    let login = (db.as_str(), user.as_str(), password.as_str());
    let text = common::config_text(top, "require", "");
    write_config(&path, &text);
    let proxy = common::start_proxy_from(&text).await;
    proxy.handle.set_config_path(&path);
    let api = admin(&proxy);
    let old = common::certs();
    let before = connect_trusting(proxy.addr, &old.ca_pem, login)
        .await
        .expect("the old certificate before the reload");

    // A new certificate from a CA of its own.
    let new = pgtier_testkit::sandbox::Certs::generate(&dir.path().join("new-certs")).unwrap();
    let renewed = text
        .replace(
            &old.cert_path.display().to_string(),
            &new.cert_path.display().to_string(),
        )
        .replace(
            &old.key_path.display().to_string(),
            &new.key_path.display().to_string(),
        );
    assert_ne!(renewed, text);
    write_config(&path, &renewed);
    let reply = http(api, "POST", "/reload", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let after = connect_trusting(proxy.addr, &new.ca_pem, login)
        .await
        .expect("new handshakes get the new certificate");
    after.simple_query("select 1").await.unwrap();
    let Err(err) = connect_trusting(proxy.addr, &old.ca_pem, login).await else {
        panic!("the old CA must not verify the new certificate");
    };
    assert!(
        err.as_db_error().is_none(),
        "refused by TLS, not the server: {err}"
    );
    // The session from before the reload goes on.
    before
        .simple_query("select 1")
        .await
        .expect("the old session continues");
}
