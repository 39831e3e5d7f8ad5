//! Suspension and the inactive-database workflow end to end: a real proxy
//! (two sharing a real Redis for the fleet) in front of the real cluster,
//! driven through the operator API and the `pgtier` binary as an operator
//! would, with real clients logging in.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{connect, unique, wait_until};
use pgtier_testkit::sandbox::RedisServer;
use tokio_postgres::error::SqlState;

const TOKEN: &str = "suspend-token";
/// PostgreSQL's refusal of a database closed to connections.
const SUSPENDED: &str = "55000";

use common::http::{request as http, Reply};

fn admin(proxy: &common::TestProxy) -> SocketAddr {
    proxy.handle.admin_addr().expect("admin_listen is set")
}

fn top(extra: &str) -> String {
    format!("admin_listen = \"127.0.0.1:0\"\nadmin_token = \"{TOKEN}\"\n{extra}")
}

async fn post(api: SocketAddr, path: &str, body: &str) -> Reply {
    http(api, "POST", path, Some(TOKEN), body).await
}

async fn get(api: SocketAddr, path: &str) -> serde_json::Value {
    let reply = http(api, "GET", path, Some(TOKEN), "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// A login's error: (SQLSTATE, message, hint).
async fn refused(addr: SocketAddr, t: &common::Tenant) -> (String, String, Option<String>) {
    let err = connect(addr, &t.db, &t.user, &t.password)
        .await
        .map(|_| ())
        .expect_err("the login is refused");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    (
        db.code().code().to_owned(),
        db.message().to_owned(),
        db.hint().map(str::to_owned),
    )
}

/// Waits for a session's connection to end and returns its error.
async fn ended(
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    within: Duration,
) -> tokio_postgres::Error {
    tokio::time::timeout(within, conn)
        .await
        .expect("the session was closed in time")
        .unwrap()
        .expect_err("closed with an error from the proxy")
}

fn assert_closed_by_administrator(err: &tokio_postgres::Error) {
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err}");
    assert_eq!(
        common::message(err),
        "terminating connection due to administrator command"
    );
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn an_api_suspension_closes_sessions_refuses_logins_and_survives_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let top = top(&format!(
        "state_dir = {:?}\n",
        state.path().display().to_string()
    ));
    let text = common::config_text(&top, "require", "");
    let proxy = common::start_proxy_from(&text).await;
    let api = admin(&proxy);
    let t = common::scram_tenant("susp");
    let other = common::scram_tenant("susp_other");
    let (s1, c1) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    s1.simple_query("select 1").await.unwrap();
    let (o1, _o1c) = connect(proxy.addr, &other.db, &other.user, &other.password)
        .await
        .unwrap();
    let before = get(api, &format!("/tenants/{}", t.db)).await;
    assert!(before["last_activity"].is_string(), "{before}");

    // The token is required.
    let path = format!("/tenants/{}/suspend", t.db);
    for token in [None, Some("wrong")] {
        let reply = http(api, "POST", &path, token, "").await;
        assert_eq!(reply.status, 401, "{}", reply.body);
    }
    assert_eq!(
        http(api, "POST", &format!("/tenants/{}/resume", t.db), None, "")
            .await
            .status,
        401
    );
    // Texts the refusal could not carry are refused.
    let nul = post(api, &path, r#"{"message": "a\u0000b"}"#).await;
    assert_eq!(nul.status, 400, "{}", nul.body);
    let long = post(api, &format!("/tenants/{}/suspend", "n".repeat(64)), "").await;
    assert_eq!(long.status, 400, "{}", long.body);
    // Nothing was suspended by those.
    s1.simple_query("select 1").await.expect("still running");

    let body = r#"{"message": "database \"{database}\" is suspended for inactivity", "hint": "Write to support@example.com."}"#;
    let reply = post(api, &path, body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["disconnected"], 1, "{}", reply.body);
    assert_eq!(reply.json()["kept_in"], "state_file");
    assert_closed_by_administrator(&ended(c1, Duration::from_secs(5)).await);
    let (code, message, hint) = refused(proxy.addr, &t).await;
    assert_eq!(code, SUSPENDED);
    assert_eq!(
        message,
        format!("database \"{}\" is suspended for inactivity", t.db)
    );
    assert_eq!(hint.as_deref(), Some("Write to support@example.com."));
    // Another tenant is untouched.
    o1.simple_query("select 1")
        .await
        .expect("other tenants unaffected");

    let view = get(api, &format!("/tenants/{}", t.db)).await;
    assert_eq!(view["suspended"], true, "{view}");
    assert_eq!(view["suspended_by"], serde_json::json!(["api"]), "{view}");
    assert_eq!(
        view["last_activity"], before["last_activity"],
        "activity kept: {view}"
    );
    assert_eq!(view["connections"], 0);
    let metrics = http(api, "GET", "/metrics", Some(TOKEN), "").await.body;
    let line = format!("tenant=\"{}\",reason=\"suspended\"", t.db);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pgtier_connections_rejected") && l.contains(&line)),
        "a refusal under the suspended reason:\n{metrics}"
    );

    // A restart keeps it (the state file).
    proxy.handle.close_now();
    drop(proxy);
    let proxy = common::start_proxy_from(&text).await;
    let api = admin(&proxy);
    let (code, _, _) = refused(proxy.addr, &t).await;
    assert_eq!(code, SUSPENDED, "still suspended after the restart");

    // Resuming restores logins at once.
    let reply = post(api, &format!("/tenants/{}/resume", t.db), "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["resumed"], true);
    let (s2, _c2) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .expect("a login after the resumption");
    s2.simple_query("select 1").await.unwrap();
    let view = get(api, &format!("/tenants/{}", t.db)).await;
    assert_eq!(view["suspended"], false, "{view}");
}

#[tokio::test]
async fn a_configured_suspension_refuses_and_a_reload_does_not_lift_the_apis() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let by_tenant = common::scram_tenant("susp_cfg");
    let by_tier = common::scram_tenant("susp_tier");
    let by_api = common::scram_tenant("susp_api");
    let later = common::scram_tenant("susp_later");
    let tables = |later_suspended: bool| {
        format!(
            "[tiers.parked]\nmax_connections = 2\nsuspended = true\n\
             suspended_message = \"database \\\"{{database}}\\\" is parked\"\n\
             [tenants.{}]\nsuspended = true\n[tenants.{}]\ntier = \"parked\"\n\
             [tenants.{}]\nsuspended = {later_suspended}\n",
            by_tenant.db, by_tier.db, later.db
        )
    };
    let text = common::config_text(&top(""), "require", &tables(false));
    write(&path, &text);
    let proxy = common::start_proxy_from(&text).await;
    proxy.handle.set_config_path(&path);
    let api = admin(&proxy);

    let (code, message, hint) = refused(proxy.addr, &by_tenant).await;
    assert_eq!(code, SUSPENDED);
    assert_eq!(
        message,
        format!("database \"{}\" is suspended", by_tenant.db)
    );
    assert_eq!(
        hint.as_deref(),
        Some("Contact your provider to restore it.")
    );
    let (code, message, _) = refused(proxy.addr, &by_tier).await;
    assert_eq!(
        (code.as_str(), message),
        (SUSPENDED, format!("database \"{}\" is parked", by_tier.db))
    );
    let view = get(api, &format!("/tenants/{}", by_tenant.db)).await;
    assert_eq!(
        view["suspended_by"],
        serde_json::json!(["config"]),
        "{view}"
    );
    // The API cannot lift what the configuration says.
    let reply = post(api, &format!("/tenants/{}/resume", by_tenant.db), "").await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert_eq!(refused(proxy.addr, &by_tenant).await.0, SUSPENDED);

    // Suspended through the API, then a reload of a file that does not
    // mention it: still suspended.
    let (_l1, later_conn) = connect(proxy.addr, &later.db, &later.user, &later.password)
        .await
        .unwrap();
    let reply = post(api, &format!("/tenants/{}/suspend", by_api.db), "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // ... and the reload suspends `later`, whose running session goes.
    write(
        &path,
        &common::config_text(&top(""), "require", &tables(true)),
    );
    let reply = post(api, "/reload", "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        refused(proxy.addr, &by_api).await.0,
        SUSPENDED,
        "a reload keeps the API's suspension"
    );
    assert_closed_by_administrator(&ended(later_conn, Duration::from_secs(5)).await);
    assert_eq!(refused(proxy.addr, &later).await.0, SUSPENDED);

    // A reload that lifts the configured suspension lifts it at once.
    let lifted = format!("[tenants.{}]\nsuspended = false\n", by_tenant.db);
    write(&path, &common::config_text(&top(""), "require", &lifted));
    assert_eq!(post(api, "/reload", "").await.status, 200);
    let (c, _cc) = connect(
        proxy.addr,
        &by_tenant.db,
        &by_tenant.user,
        &by_tenant.password,
    )
    .await
    .expect("the configuration no longer suspends it");
    c.simple_query("select 1").await.unwrap();
    assert_eq!(
        refused(proxy.addr, &by_api).await.0,
        SUSPENDED,
        "still the API's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_reaches_every_instance_of_the_fleet_within_its_heartbeat() {
    let redis = RedisServer::start().unwrap();
    let fleet = format!(
        "[fleet]\nstore = \"redis\"\nurl = \"{}\"\nlease_ttl = \"2s\"\n",
        redis.url()
    );
    let a = common::start_proxy_from(&common::config_text(&top(""), "require", &fleet)).await;
    let b = common::start_proxy_from(&common::config_text("", "require", &fleet)).await;
    let api = admin(&a);
    let t = common::scram_tenant("susp_fleet");
    let (on_b, on_b_conn) = connect(b.addr, &t.db, &t.user, &t.password).await.unwrap();
    on_b.simple_query("select 1").await.unwrap();

    let reply = post(api, &format!("/tenants/{}/suspend", t.db), "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["kept_in"], "fleet_store");
    // B reads the store every third of the lease (667 ms) and its sweep
    // closes the session within a quarter second; 5 s covers a loaded
    // machine.
    assert_closed_by_administrator(&ended(on_b_conn, Duration::from_secs(5)).await);
    let (code, message, _) = refused(b.addr, &t).await;
    assert_eq!(code, SUSPENDED);
    assert_eq!(message, format!("database \"{}\" is suspended", t.db));
    assert_eq!(refused(a.addr, &t).await.0, SUSPENDED);

    // Resumed on A: B lets it in again within its heartbeat.
    let reply = post(api, &format!("/tenants/{}/resume", t.db), "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match connect(b.addr, &t.db, &t.user, &t.password).await {
            Ok((c, _conn)) => {
                c.simple_query("select 1").await.unwrap();
                break;
            }
            Err(e) => {
                assert_eq!(e.code().map(|c| c.code()), Some(SUSPENDED), "{e}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "B never resumed the tenant"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// `pgtier inactive` with `args`: (exit code, stdout, stderr).
async fn inactive(args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtier"))
        .arg("inactive")
        .args(args)
        .output()
        .await
        .expect("running pgtier inactive");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn names(json: &str) -> Vec<String> {
    let list: Vec<serde_json::Value> =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not a JSON list ({e}): {json}"));
    list.iter()
        .map(|c| c["name"].as_str().expect("a name").to_owned())
        .collect()
}

#[tokio::test]
async fn pgtier_inactive_lists_the_quiet_and_not_the_just_active() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("proxy.toml");
    let quiet = unique("inactive_quiet");
    let t = common::scram_tenant("inactive_busy");
    let top = top(&format!(
        "state_dir = {:?}\n",
        state.path().display().to_string()
    ));
    let text = common::config_text(
        &top,
        "require",
        &format!("[tenants.{quiet}]\ntier = \"free\"\n"),
    );
    write(&config_path, &text);
    let proxy = common::start_proxy_from(&text).await;
    let url = format!("http://{}", admin(&proxy));
    {
        let (c, conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
            .await
            .unwrap();
        c.simple_query("select 1").await.unwrap();
        drop(c);
        let _ = conn.await;
    }
    wait_until(
        Duration::from_secs(5),
        "the session's slot given back",
        || proxy.handle.tenant_connections(&t.db) == Some(0),
    )
    .await;

    // Through the API, with the token.
    let (code, out, err) =
        inactive(&["--for", "1h", "--admin", &url, "--token", TOKEN, "--json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let listed = names(&out);
    assert!(listed.contains(&quiet), "the never-seen tenant: {out}");
    assert!(
        !listed.contains(&t.db),
        "the one that just logged in: {out}"
    );
    let entry: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let q = entry.iter().find(|c| c["name"] == quiet.as_str()).unwrap();
    assert_eq!(q["last_activity"], serde_json::Value::Null);
    assert_eq!(q["tier"], "free");
    // Over 0 s, the one that logged in is a candidate too (it has no session).
    let (_, out, err) =
        inactive(&["--for", "0s", "--admin", &url, "--token", TOKEN, "--json"]).await;
    assert!(names(&out).contains(&t.db), "{out}{err}");
    // The table names both columns and the count.
    let (code, table, _) = inactive(&["--for", "1h", "--admin", &url, "--token", TOKEN]).await;
    assert_eq!(code, Some(0));
    assert!(
        table.starts_with("DATABASE") && table.contains(&quiet) && table.contains("never"),
        "{table}"
    );
    // Without the token: refused, exit 1, the API's reason on stderr.
    let (code, out, err) = inactive(&["--for", "1h", "--admin", &url, "--json"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(err.contains("401"), "{err}");

    // The proxy down: the state file (written at shutdown) says the same.
    proxy.handle.close_now();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while proxy
            .handle
            .admin_addr()
            .is_some_and(|a| std::net::TcpStream::connect(a).is_ok())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    wait_until(Duration::from_secs(10), "the state file written", || {
        std::fs::read_to_string(pgtier::ops::state::path_in(state.path()))
            .is_ok_and(|s| s.contains(&t.db))
    })
    .await;
    let state_dir = state.path().display().to_string();
    let config_arg = config_path.display().to_string();
    let (code, out, err) = inactive(&[
        "--config",
        &config_arg,
        "--for",
        "1h",
        "--state-dir",
        &state_dir,
        "--json",
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let listed = names(&out);
    assert!(listed.contains(&quiet) && !listed.contains(&t.db), "{out}");
}
