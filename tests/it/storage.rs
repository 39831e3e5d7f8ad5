//! The storage limit (issue 24), end to end: a real cluster, the real
//! auditor taking `pg_database_size` as a real role, real clients. A tenant
//! over its limit is refused whatever can grow the database (INSERT,
//! UPDATE, CREATE INDEX, large objects, by either protocol), keeps reading
//! and deleting, gets back under by TRUNCATE, and is warned at login; the
//! limit follows reloads; a standard tenant is untouched.

use crate::common;
use crate::common::{code, refused};

use std::net::SocketAddr;
use std::time::Duration;

use common::{
    connect, connect_keeping_notices, quota_table, scram_tenant, start_proxy_from, wait_until,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a measurement may take to show: the auditor runs every second
/// here, a measurement waits for a written tenant's interval to pass, and
/// the machine may be loaded.
const MEASURED: Duration = Duration::from_secs(20);

/// About `mb` MiB of data that does not compress (TOAST would shrink
/// anything repetitive), in rows of ~320 kB.
pub(crate) fn fill(table: &str, mb: u32) -> String {
    // Each md5 is 16 random-looking bytes; 20,000 of them are 320 kB.
    let rows = mb * 1024 / 320 + 1;
    format!(
        "INSERT INTO {table} SELECT decode(string_agg(md5(i::text || ':' || j::text), ''), 'hex') \
         FROM generate_series(1, 20000) i, generate_series(1, {rows}) j GROUP BY j"
    )
}

/// The size of `db` as the cluster reports it, asked behind the proxy.
pub(crate) async fn size_of(db: &str) -> u64 {
    let su = common::superuser_client().await;
    let size: i64 = su
        .query_one("SELECT pg_database_size($1::text::name)", &[&db])
        .await
        .unwrap()
        .get(0);
    size as u64
}

/// A limit in whole MiB, `extra` MiB above `db`'s size now.
pub(crate) async fn mb_above(db: &str, extra: u64) -> u64 {
    size_of(db).await.div_ceil(1 << 20) + extra
}

/// Waits until the proxy holds `db` over (or under) a storage limit of
/// `limit` bytes.
async fn wait_storage(proxy: &common::TestProxy, db: &str, limit: u64, over: bool) {
    let shared = proxy.handle.shared().clone();
    let name = db.to_owned();
    wait_until(
        MEASURED,
        &format!(
            "{db} {} its storage limit",
            if over { "over" } else { "under" }
        ),
        move || {
            shared
                .tenants
                .get(&name)
                .and_then(|t| t.rows.bytes())
                .is_some_and(|b| (b > limit) == over)
        },
    )
    .await;
}

/// `GET path` on the admin API: the body.
async fn admin_text(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: pgtier\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("admin API answered in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head and body");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// `GET path` on the admin API: the JSON body.
async fn admin_get(addr: SocketAddr, path: &str) -> serde_json::Value {
    let body = admin_text(addr, path).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// A proxy from a configuration file at `path` (so that it can be
/// reloaded), with the admin API and the auditor measuring every second.
async fn proxy_at(path: &std::path::Path, tenants: &str) -> common::TestProxy {
    std::fs::write(path, config(tenants)).unwrap();
    let proxy = start_proxy_from(&std::fs::read_to_string(path).unwrap()).await;
    proxy.handle.set_config_path(path);
    proxy
}

fn config(tenants: &str) -> String {
    common::config_text(
        "admin_listen = \"127.0.0.1:0\"\n",
        "prefer",
        &format!("{}{tenants}", quota_table("1s")),
    )
}

async fn reload(proxy: &common::TestProxy, path: &std::path::Path, tenants: &str) {
    std::fs::write(path, config(tenants)).unwrap();
    let shared = proxy.handle.shared().clone();
    tokio::task::spawn_blocking(move || shared.reload())
        .await
        .unwrap()
        .expect("reload");
}

#[tokio::test]
async fn over_the_storage_limit_growth_is_refused_until_truncate_frees_space() {
    let t = scram_tenant("storage");
    let paid = scram_tenant("storage_paid");
    let limit_mb = mb_above(&t.db, 3).await;
    let limit = limit_mb << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let proxy = proxy_at(
        &path,
        &format!(
            "[tenants.{}]\nstorage_limit = \"{limit_mb}MB\"\n[tenants.{}]\ntier = \"standard\"\n",
            t.db, paid.db
        ),
    )
    .await;
    let (client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE big (b bytea); CREATE TABLE small (n int); INSERT INTO small VALUES (1)",
        )
        .await
        .unwrap();
    // Under the limit, growth is allowed; a statement named now is one the
    // tracker must judge later.
    let update = client.prepare("UPDATE small SET n = n + $1").await.unwrap();
    client.batch_execute(&fill("big", 6)).await.unwrap();
    wait_storage(&proxy, &t.db, limit, true).await;

    let message = refused(&client, "INSERT INTO small VALUES (2)", "53100").await;
    let prefix = format!("storage limit exceeded: database \"{}\" uses ", t.db);
    assert!(message.starts_with(&prefix), "{message}");
    assert!(
        message.ends_with(&format!("MB; the free tier allows {limit_mb} MB")),
        "{message}"
    );
    for sql in [
        "UPDATE small SET n = 2",
        "update SMALL set n = 2 /* a comment */",
        "WITH x AS (UPDATE small SET n = 3 RETURNING n) SELECT * FROM x",
        "CREATE INDEX ON small (n)",
        "CREATE TABLE other (n int)",
        "ALTER TABLE small ADD COLUMN note text DEFAULT 'x'",
        "SELECT lo_from_bytea(0, 'data')",
        "DO $$BEGIN UPDATE small SET n = 4; END$$",
    ] {
        refused(&client, sql, "53100").await;
    }
    // The extended protocol: a statement prepared while under, executed
    // now, and an unnamed one.
    let e = client.execute(&update, &[&1i32]).await.unwrap_err();
    assert_eq!(code(&e), "53100", "{e:?}");
    let e = client
        .execute("UPDATE small SET n = $1", &[&5i32])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "53100", "{e:?}");
    // A refusal inside a transaction aborts it, as PostgreSQL's own errors
    // do: client and cluster agree.
    client.batch_execute("BEGIN").await.unwrap();
    refused(&client, "UPDATE small SET n = 6", "53100").await;
    refused(&client, "SELECT 1", "25P02").await;
    client.batch_execute("ROLLBACK").await.unwrap();
    // What cannot grow the database still works.
    let n: i64 = client
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 0);
    client
        .batch_execute("SET work_mem = '8MB'; ANALYZE small; DELETE FROM small WHERE n = 1")
        .await
        .unwrap();

    // A login while over is warned.
    let (warned, notices) = connect_keeping_notices(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    drop(warned);
    let (notices, _) = notices.await.unwrap();
    assert!(
        notices.iter().any(|n| n.severity() == "WARNING"
            && n.message().contains("uses")
            && n.message()
                .ends_with(&format!("of the {limit_mb} MB its free tier allows"))),
        "{notices:?}"
    );

    // The operator sees the figure.
    let admin = proxy.handle.admin_addr().expect("admin API bound");
    let view = admin_get(admin, &format!("/tenants/{}", t.db)).await;
    assert_eq!(view["storage_limit"], serde_json::json!(limit), "{view}");
    assert!(
        view["storage_bytes"].as_u64().is_some_and(|b| b > limit),
        "{view}"
    );
    assert_eq!(
        view["over_storage_limit"],
        serde_json::json!(true),
        "{view}"
    );
    let metrics = admin_text(admin, "/metrics").await;
    let tenant = format!("tenant=\"{}\"", t.db);
    let bytes = common::http::sample(&metrics, "pgtier_tenant_storage_bytes", &[&tenant]);
    assert!(bytes.is_some_and(|b| b > limit as f64), "{metrics}");
    let configured =
        common::http::sample(&metrics, "pgtier_tenant_storage_limit_bytes", &[&tenant]);
    assert_eq!(configured, Some(limit as f64), "{metrics}");
    let refusals = common::http::sample(
        &metrics,
        "pgtier_statements_refused_total",
        &[&tenant, "reason=\"storage_limit\""],
    );
    assert!(refusals.is_some_and(|n| n >= 10.0), "{metrics}");

    // A standard tenant holding as much is not limited.
    let (standard, _conn2) = connect(proxy.addr, &paid.db, &paid.user, &paid.password)
        .await
        .unwrap();
    standard
        .batch_execute(&format!(
            "CREATE TABLE big (b bytea); {}; UPDATE big SET b = b; CREATE INDEX ON big (length(b))",
            fill("big", 6)
        ))
        .await
        .unwrap();

    // TRUNCATE frees the space; the next measurement lets writes back in.
    client.batch_execute("TRUNCATE big").await.unwrap();
    wait_storage(&proxy, &t.db, limit, false).await;
    client
        .batch_execute(
            "INSERT INTO small VALUES (7); UPDATE small SET n = 8; CREATE INDEX ON small (n)",
        )
        .await
        .unwrap();
    client.execute(&update, &[&1i32]).await.unwrap();
    let view = admin_get(admin, &format!("/tenants/{}", t.db)).await;
    assert_eq!(
        view["over_storage_limit"],
        serde_json::json!(false),
        "{view}"
    );
}

/// A rolled-back transaction commits no rows, but the files it wrote stay
/// until VACUUM: the proxy measures again, and the tenant is over.
#[tokio::test]
async fn a_rolled_back_write_still_counts() {
    let t = scram_tenant("storage_rollback");
    let limit_mb = mb_above(&t.db, 3).await;
    let limit = limit_mb << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let proxy = proxy_at(
        &path,
        &format!("[tenants.{}]\nstorage_limit = \"{limit_mb}MB\"\n", t.db),
    )
    .await;
    let (client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE big (b bytea)")
        .await
        .unwrap();
    wait_storage(&proxy, &t.db, limit, false).await;
    client
        .batch_execute(&format!("BEGIN; {}; ROLLBACK", fill("big", 6)))
        .await
        .unwrap();
    wait_storage(&proxy, &t.db, limit, true).await;
    refused(&client, "INSERT INTO big VALUES ('x')", "53100").await;
    // VACUUM FULL gives the space back and asks for a measurement.
    client.batch_execute("VACUUM FULL big").await.unwrap();
    wait_storage(&proxy, &t.db, limit, false).await;
    client
        .batch_execute("INSERT INTO big VALUES ('x')")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_reload_that_changes_the_storage_limit_takes_effect_in_running_sessions() {
    let t = scram_tenant("storage_reload");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let tenant = |limit: &str| format!("[tenants.{}]\nstorage_limit = \"{limit}\"\n", t.db);
    let proxy = proxy_at(&path, &tenant("1GB")).await;
    let (client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE big (b bytea); {}; UPDATE big SET b = b",
            fill("big", 8)
        ))
        .await
        .unwrap();
    // Lower the limit under what the database holds: the same session is
    // refused once the figure shows it.
    let size = size_of(&t.db).await;
    let lower_mb = (size >> 20).saturating_sub(2);
    // pg_size_pretty's units: 10 MB and more read in MB.
    assert!(lower_mb >= 10, "{size} bytes");
    reload(&proxy, &path, &tenant(&format!("{lower_mb}MB"))).await;
    wait_storage(&proxy, &t.db, lower_mb << 20, true).await;
    let message = refused(&client, "UPDATE big SET b = b", "53100").await;
    assert!(
        message.ends_with(&format!("the free tier allows {lower_mb} MB")),
        "{message}"
    );
    // Lift it (0 = no limit): the same session writes again at once.
    reload(&proxy, &path, &tenant("0")).await;
    client.batch_execute("UPDATE big SET b = b").await.unwrap();
}
