//! The free tier's row quota and statement policy, end to end: a real
//! cluster, the real auditor counting as a real role, and clients that speak
//! both protocols (tokio-postgres, psql, pg_dump/pg_restore, raw frames).

use crate::common;
use crate::common::{code, refused};

use std::time::Duration;

use common::frames::{bind, execute, frame, parse, sync};
use common::{
    cluster, connect, quota_table, read_message as read_msg, scram_tenant, start_proxy_with,
    wait_until,
};
use tokio::io::AsyncWriteExt;

/// A proxy (TLS preferred, plaintext allowed for raw-frame tests) with the
/// quota auditor measuring every second and `tables` appended.
async fn quota_proxy(tables: &str) -> common::TestProxy {
    start_proxy_with("", &format!("{}{tables}", quota_table("1s"))).await
}

/// A free tenant with its own row limit.
fn limited(db: &str, row_limit: u64) -> String {
    format!("[tenants.{db}]\nrow_limit = {row_limit}\n")
}

/// Waits until the proxy holds the tenant over (or under) its limit.
async fn wait_over(proxy: &common::TestProxy, db: &str, limit: u64, over: bool) {
    let shared = proxy.handle.shared().clone();
    let db = db.to_owned();
    wait_until(
        Duration::from_secs(3),
        &format!("{db} {} its row limit", if over { "over" } else { "under" }),
        move || {
            shared
                .tenants
                .get(&db)
                .is_some_and(|t| t.rows.figure().is_some_and(|f| f.is_over(limit) == over))
        },
    )
    .await;
}

/// The figure the proxy holds for `db`.
fn rows(proxy: &common::TestProxy, db: &str) -> Option<i64> {
    proxy
        .handle
        .shared()
        .tenants
        .get(db)
        .and_then(|t| t.rows.figure())
        .map(|f| f.rows)
}

#[tokio::test]
async fn over_the_limit_every_way_of_adding_rows_is_refused_and_nothing_else() {
    let t = scram_tenant("quota");
    let proxy = quota_proxy(&limited(&t.db, 100)).await;
    let (client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (n int PRIMARY KEY, note text);
             CREATE TABLE src (n int);
             INSERT INTO src VALUES (1000), (1001);
             CREATE MATERIALIZED VIEW mv AS SELECT n FROM src WITH NO DATA;
             PREPARE sql_insert (int) AS INSERT INTO t VALUES ($1)",
        )
        .await
        .unwrap();
    // Prepared through the protocol while still under the limit.
    let prepared = client
        .prepare("INSERT INTO t (n) VALUES ($1)")
        .await
        .unwrap();

    client
        .batch_execute("INSERT INTO t SELECT g FROM generate_series(1, 150) g")
        .await
        .unwrap();
    wait_over(&proxy, &t.db, 100, true).await;
    // A measurement that overlapped a write counts it twice (the figure
    // errs toward over-counting) until the next one settles it: wait for
    // that, so that the message below is the settled one.
    let shared = proxy.handle.shared().clone();
    let db = t.db.clone();
    wait_until(
        Duration::from_secs(5),
        "the row figure settles",
        move || {
            shared
                .tenants
                .get(&db)
                .and_then(|t| t.rows.figure())
                .is_some_and(|f| (f.exact && f.rows == 152) || (!f.exact && f.rows > 100))
        },
    )
    .await;

    let message = refused(&client, "INSERT INTO t VALUES (200)", "53400").await;
    // Exact from the tags (2 + 150), or, once re-measured, what counting
    // that stops past the limit can say.
    let exact = format!(
        "row limit exceeded: database \"{}\" holds 152 rows; the free tier allows 100",
        t.db
    );
    let bound = format!(
        "row limit exceeded: database \"{}\" holds more than 100 rows; the free tier allows 100",
        t.db
    );
    assert!(message == exact || message == bound, "{message}");
    for sql in [
        "WITH x AS (INSERT INTO t VALUES (201) RETURNING n) SELECT * FROM x",
        "CREATE TABLE copy_of_t AS SELECT * FROM t",
        "SELECT * INTO other FROM t",
        "MERGE INTO t USING src ON t.n = src.n WHEN NOT MATCHED THEN INSERT VALUES (src.n)",
        "REFRESH MATERIALIZED VIEW mv",
        "EXECUTE sql_insert(202)",
        "PREPARE late AS INSERT INTO t VALUES (203); EXECUTE late",
    ] {
        refused(&client, sql, "53400").await;
    }
    let e = client.execute(&prepared, &[&204i32]).await.unwrap_err();
    assert_eq!(code(&e), "53400", "protocol-prepared INSERT: {e:?}");
    // COPY FROM with psql (tokio-postgres itself loses track of the
    // connection after a COPY that fails at Execute, also against
    // PostgreSQL directly).
    let url = common::psql_url(proxy.addr, &t.db, &t.user, &t.password, "verify-full");
    let mut copy = common::psql_command(&url)
        .arg("-c")
        .arg("COPY t (n) FROM STDIN")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = copy.stdin.take().unwrap();
        stdin.write_all(b"205\n\\.\n").await.unwrap();
    }
    let out = copy.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "COPY FROM was not refused");
    assert!(stderr.contains("row limit exceeded"), "{stderr}");

    // Reading, changing and removing rows keep working, so the tenant can
    // always get back under.
    let count: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 150, "no refused statement added a row");
    client
        .batch_execute("UPDATE t SET note = 'x' WHERE n < 10")
        .await
        .unwrap();
    client
        .batch_execute("DELETE FROM t WHERE n > 90")
        .await
        .unwrap();
    wait_over(&proxy, &t.db, 100, false).await;
    client
        .batch_execute("INSERT INTO t VALUES (500)")
        .await
        .unwrap();

    // Over again, then TRUNCATE: writes work again without operator action.
    client
        .batch_execute("INSERT INTO t SELECT g FROM generate_series(1000, 1100) g")
        .await
        .unwrap();
    wait_over(&proxy, &t.db, 100, true).await;
    refused(&client, "INSERT INTO t VALUES (2000)", "53400").await;
    client.batch_execute("TRUNCATE t").await.unwrap();
    wait_over(&proxy, &t.db, 100, false).await;
    client
        .batch_execute("INSERT INTO t VALUES (2001)")
        .await
        .unwrap();
    assert_eq!(
        proxy
            .handle
            .shared()
            .tenants
            .get(&t.db)
            .unwrap()
            .statements_refused()
            .0,
        11,
        "every refusal counted"
    );
}

#[tokio::test]
async fn a_rolled_back_insert_does_not_count() {
    let t = scram_tenant("rollback");
    let proxy = quota_proxy(&limited(&t.db, 100)).await;
    let (client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE t (n int)")
        .await
        .unwrap();
    let shared = proxy.handle.shared().clone();
    let db = t.db.clone();
    wait_until(Duration::from_secs(3), "first measurement", move || {
        shared
            .tenants
            .get(&db)
            .is_some_and(|t| t.rows.figure().is_some())
    })
    .await;
    client
        .batch_execute("BEGIN; INSERT INTO t SELECT generate_series(1, 1000); ROLLBACK")
        .await
        .unwrap();
    // An implicit transaction that fails is rolled back too.
    let e = client
        .batch_execute("INSERT INTO t SELECT generate_series(1, 1000); SELECT 1/0")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22012");
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    assert_eq!(
        rows(&proxy, &t.db),
        Some(1),
        "only the committed row counts"
    );
    client
        .batch_execute("INSERT INTO t SELECT generate_series(1, 98)")
        .await
        .unwrap();
    assert_eq!(rows(&proxy, &t.db), Some(99));
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    assert!(!proxy
        .handle
        .shared()
        .tenants
        .get(&t.db)
        .unwrap()
        .rows
        .is_over(100));
}

#[tokio::test]
async fn rows_that_exist_before_the_proxy_starts_are_counted_at_first_login() {
    let t = scram_tenant("preexisting");
    cluster()
        .psql(
            &t.db,
            &format!(
                "CREATE TABLE old (n int); INSERT INTO old SELECT generate_series(1, 150);
                 CREATE SCHEMA \"Other Schema\"; CREATE TABLE \"Other Schema\".\"Odd Name\" (n int);
                 INSERT INTO \"Other Schema\".\"Odd Name\" VALUES (1);
                 ALTER TABLE old OWNER TO {0}; ALTER SCHEMA \"Other Schema\" OWNER TO {0};
                 ALTER TABLE \"Other Schema\".\"Odd Name\" OWNER TO {0}",
                t.user
            ),
        )
        .unwrap();
    let proxy = quota_proxy(&limited(&t.db, 1000)).await;
    let (client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    wait_until(Duration::from_secs(3), "measured at first login", || {
        rows(&proxy, &t.db) == Some(151)
    })
    .await;
    // Measured exactly: under 1,000, writes go on.
    client
        .batch_execute("INSERT INTO old VALUES (0)")
        .await
        .unwrap();
    assert_eq!(rows(&proxy, &t.db), Some(152));
    drop(client);

    // Another proxy with a limit below what exists refuses at once.
    let t2 = scram_tenant("preexisting_over");
    cluster()
        .psql(
            &t2.db,
            &format!(
                "CREATE TABLE old (n int); INSERT INTO old SELECT generate_series(1, 150);
                 ALTER TABLE old OWNER TO {}",
                t2.user
            ),
        )
        .unwrap();
    let proxy = quota_proxy(&limited(&t2.db, 100)).await;
    let (client, _conn) = connect(proxy.addr, &t2.db, &t2.user, &t2.password)
        .await
        .unwrap();
    wait_over(&proxy, &t2.db, 100, true).await;
    let message = refused(&client, "INSERT INTO old VALUES (0)", "53400").await;
    assert!(
        message.contains("holds more than 100 rows"),
        "counting stopped past the limit: {message}"
    );
}

#[tokio::test]
async fn a_refusal_inside_a_transaction_aborts_it_as_postgresql_would() {
    let t = scram_tenant("quota_tx");
    let proxy = quota_proxy(&limited(&t.db, 10)).await;
    let (client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 20)")
        .await
        .unwrap();
    wait_over(&proxy, &t.db, 10, true).await;

    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("UPDATE t SET n = n + 1")
        .await
        .unwrap();
    refused(&client, "INSERT INTO t VALUES (0)", "53400").await;
    refused(&client, "SELECT 1", "25P02").await;
    client.batch_execute("ROLLBACK").await.unwrap();
    let max: i32 = client
        .query_one("SELECT max(n) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        max, 20,
        "the UPDATE before the refusal was rolled back with it"
    );

    // A multi-statement query is one implicit transaction: refused whole.
    refused(
        &client,
        "DELETE FROM t WHERE n = 1; INSERT INTO t VALUES (0)",
        "53400",
    )
    .await;
    let count: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 20);
}

#[tokio::test]
async fn a_pipelined_refusal_skips_to_sync_and_the_stream_stays_in_step() {
    let t = common::trust_tenant("quota_pipe");
    let proxy = quota_proxy(&limited(&t.db, 10)).await;
    common::table_of_rows(&t, 20);
    let mut s = common::raw_session(&proxy, &t).await;
    wait_over(&proxy, &t.db, 10, true).await;

    // Three pipelined Sync groups in one write: a SELECT, a refused INSERT
    // (with a Describe-free Bind/Execute after it, which PostgreSQL skips),
    // and a SELECT again.
    let mut out = Vec::new();
    out.extend(parse("", "SELECT 7"));
    out.extend(bind(""));
    out.extend(execute());
    out.extend(sync());
    out.extend(parse("ins", "INSERT INTO t VALUES (0)"));
    out.extend(bind("ins"));
    out.extend(execute());
    out.extend(bind("ins"));
    out.extend(execute());
    out.extend(sync());
    out.extend(parse("", "SELECT 8"));
    out.extend(bind(""));
    out.extend(execute());
    out.extend(sync());
    s.write_all(&out).await.unwrap();

    let mut tags = Vec::new();
    let mut errors = Vec::new();
    let mut rows = Vec::new();
    let mut readies = 0;
    while readies < 3 {
        let (tag, body) = read_msg(&mut s).await;
        tags.push(tag);
        match tag {
            b'Z' => readies += 1,
            b'E' => errors.push(
                pgtier::protocol::error::sqlstate_of(&body)
                    .unwrap_or("")
                    .to_owned(),
            ),
            b'D' => rows.push(String::from_utf8_lossy(&body[6..]).into_owned()),
            _ => {}
        }
    }
    // What PostgreSQL itself sends when an Execute fails: ParseComplete,
    // BindComplete, the error, nothing until Sync, ReadyForQuery.
    assert_eq!(
        String::from_utf8_lossy(&tags),
        "12DCZ12EZ12DCZ",
        "the responses, in order"
    );
    assert_eq!(errors, vec!["53400".to_owned()]);
    assert_eq!(rows, vec!["7".to_owned(), "8".to_owned()]);

    // And the same inside an explicit transaction: aborted, then 25P02.
    let mut out = frame(b'Q', b"BEGIN\0");
    out.extend(bind("ins"));
    out.extend(execute());
    out.extend(sync());
    out.extend(frame(b'Q', b"SELECT 1\0"));
    out.extend(frame(b'Q', b"ROLLBACK\0"));
    out.extend(frame(b'Q', b"SELECT 9\0"));
    s.write_all(&out).await.unwrap();
    let mut seen = Vec::new();
    let mut statuses = Vec::new();
    while statuses.len() < 5 {
        let (tag, body) = read_msg(&mut s).await;
        match tag {
            b'Z' => statuses.push(body[0]),
            b'E' => seen.push(
                pgtier::protocol::error::sqlstate_of(&body)
                    .unwrap_or("")
                    .to_owned(),
            ),
            _ => {}
        }
    }
    assert_eq!(seen, vec!["53400".to_owned(), "25P02".to_owned()]);
    assert_eq!(statuses, b"TEEII", "transaction status after each");
}

#[tokio::test]
async fn the_free_tier_denies_extensions_functions_triggers_and_roles() {
    let free = scram_tenant("policy_free");
    let standard = scram_tenant("policy_std");
    cluster()
        .psql(
            "postgres",
            &format!("ALTER ROLE {} CREATEROLE", standard.user),
        )
        .unwrap();
    let proxy = quota_proxy(&format!("[tenants.{}]\ntier = \"standard\"\n", standard.db)).await;
    let (f, _c1) = connect(proxy.addr, &free.db, &free.user, &free.password)
        .await
        .unwrap();
    let (s, _c2) = connect(proxy.addr, &standard.db, &standard.user, &standard.password)
        .await
        .unwrap();
    for client in [&f, &s] {
        client
            .batch_execute("CREATE TABLE t (n int, \"trigger\" int)")
            .await
            .unwrap();
    }
    let role = common::unique("made_role");
    let statements = [
        ("CREATE EXTENSION IF NOT EXISTS plpgsql", "CREATE EXTENSION"),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE FUNCTION",
        ),
        (
            "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'",
            "CREATE PROCEDURE",
        ),
        (
            "DO $$ BEGIN EXECUTE 'SELECT 1'; END $$",
            "DO with dynamic SQL (EXECUTE)",
        ),
        (
            "CREATE TRIGGER tr BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
            "CREATE TRIGGER",
        ),
        (&format!("CREATE ROLE {role}"), "CREATE ROLE"),
        (&format!("ALTER ROLE {role} NOLOGIN"), "ALTER ROLE"),
    ];
    for (sql, feature) in statements {
        let message = refused(&f, sql, "42501").await;
        assert_eq!(
            message,
            format!("{feature} is not available on the free tier")
        );
        s.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("standard tier: {sql}: {e:?}"));
    }
    // Also as the second statement of one Query (refused whole: the table
    // is not created) and through Parse.
    refused(
        &f,
        "CREATE TABLE before_it (n int); CREATE EXTENSION plpgsql",
        "42501",
    )
    .await;
    let exists: bool = f
        .query_one("SELECT to_regclass('before_it') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!exists, "nothing of a refused query ran");
    let e = f
        .prepare("CREATE FUNCTION g() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501", "through Parse: {e:?}");
    // Lookalikes pass.
    for sql in [
        "SELECT 'create extension'",
        "SELECT \"trigger\" FROM t",
        "/* CREATE FUNCTION f() */ SELECT 1",
        "-- CREATE ROLE x\nSELECT 2",
        "SELECT $$CREATE TRIGGER$$",
    ] {
        f.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let (_, policy) = proxy
        .handle
        .shared()
        .tenants
        .get(&free.db)
        .unwrap()
        .statements_refused();
    assert_eq!(policy, 9);
    s.batch_execute(&format!("DROP ROLE {role}")).await.unwrap();
}

#[tokio::test]
async fn an_ecto_style_migration_runs_untouched_on_a_free_tenant() {
    let t = scram_tenant("ecto");
    let proxy = quota_proxy(&limited(&t.db, 10_000)).await;
    let (mut client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS \"schema_migrations\" (\"version\" bigint, \"inserted_at\" timestamp(0), PRIMARY KEY (\"version\"))",
        )
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE \"schema_migrations\" IN SHARE UPDATE EXCLUSIVE MODE")
        .await
        .unwrap();
    for sql in [
        "CREATE TABLE \"users\" (\"id\" bigserial, \"email\" varchar(255) NOT NULL, \"inserted_at\" timestamp(0) NOT NULL, PRIMARY KEY (\"id\"))",
        "CREATE UNIQUE INDEX \"users_email_index\" ON \"users\" (\"email\")",
        "ALTER TABLE \"users\" ADD COLUMN \"name\" varchar(255)",
    ] {
        tx.execute(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    tx.execute(
        "INSERT INTO \"schema_migrations\" (\"version\",\"inserted_at\") VALUES ($1,$2)",
        &[&20_260_101_000_000i64, &std::time::SystemTime::now()],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let insert = client
        .prepare(
            "INSERT INTO \"users\" (\"email\",\"inserted_at\") VALUES ($1,$2) RETURNING \"id\"",
        )
        .await
        .unwrap();
    for i in 0..20 {
        client
            .query_one(
                &insert,
                &[&format!("u{i}@example.com"), &std::time::SystemTime::now()],
            )
            .await
            .unwrap();
    }
    // 21 rows. A measurement (every second) that overlapped the inserts
    // counts the ones that committed meanwhile twice, on purpose (it errs
    // toward over-counting), and leaves the tenant to be measured again:
    // the figure settles at the next measurement.
    wait_until(Duration::from_secs(5), "the row figure at 21", || {
        rows(&proxy, &t.db) == Some(21)
    })
    .await;
}

/// `pg_dump`/`pg_restore` of the cluster's installation.
fn program(name: &str) -> std::path::PathBuf {
    cluster().program(name)
}

#[tokio::test]
async fn pg_dump_and_restore_through_the_proxy_under_the_quota() {
    let source = scram_tenant("dump_src");
    let plain = scram_tenant("dump_plain");
    let custom = scram_tenant("dump_custom");
    let tables = [&source, &plain, &custom]
        .iter()
        .map(|t| limited(&t.db, 5_000))
        .collect::<String>();
    let proxy = quota_proxy(&tables).await;
    let (client, _conn) = connect(proxy.addr, &source.db, &source.user, &source.password)
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric);
             CREATE INDEX items_name ON items (name);
             CREATE VIEW cheap AS SELECT * FROM items WHERE price < 10;
             INSERT INTO items (name, price) SELECT 'item ' || g, g FROM generate_series(1, 1000) g;
             CREATE TABLE tags (item int REFERENCES items, tag text);
             INSERT INTO tags SELECT g, 'tag' FROM generate_series(1, 500) g",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = |t: &common::Tenant| {
        common::psql_url(proxy.addr, &t.db, &t.user, &t.password, "verify-full")
    };
    let run = |name: &str, args: Vec<String>| {
        let mut command = tokio::process::Command::new(program(name));
        command.args(args).kill_on_drop(true);
        command.env("PGSSLROOTCERT", &common::certs().ca_path);
        async move {
            let out = tokio::time::timeout(Duration::from_secs(120), command.output())
                .await
                .expect("finished in time")
                .expect("ran");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        }
    };
    let sql = dir.path().join("dump.sql");
    let archive = dir.path().join("dump.custom");
    run(
        "pg_dump",
        vec![
            "--no-owner".into(),
            "--no-privileges".into(),
            "-f".into(),
            sql.display().to_string(),
            url(&source),
        ],
    )
    .await;
    run(
        "pg_dump",
        vec![
            "-Fc".into(),
            "-f".into(),
            archive.display().to_string(),
            url(&source),
        ],
    )
    .await;
    let out = common::psql_command(&url(&plain))
        .arg("-f")
        .arg(&sql)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "psql -f: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    run(
        "pg_restore",
        vec![
            "--no-owner".into(),
            "--no-privileges".into(),
            "--exit-on-error".into(),
            "-d".into(),
            url(&custom),
            archive.display().to_string(),
        ],
    )
    .await;
    for t in [&plain, &custom] {
        let (c, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
            .await
            .unwrap();
        let n: i64 = c
            .query_one(
                "SELECT (SELECT count(*) FROM items) + (SELECT count(*) FROM tags)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1500, "{} restored", t.db);
        let cheap: i64 = c
            .query_one("SELECT count(*) FROM cheap", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(cheap, 9);
    }
    wait_until(Duration::from_secs(5), "the restored rows counted", || {
        rows(&proxy, &custom.db) == Some(1500)
    })
    .await;
}

#[tokio::test]
async fn a_tenant_near_its_limit_is_warned_once_at_login() {
    let t = scram_tenant("warned");
    common::table_of_rows(&t, 85);
    let proxy = quota_proxy(&limited(&t.db, 100)).await;
    // The first login has the tenant measured.
    let (first, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let shared = proxy.handle.shared().clone();
    let db = t.db.clone();
    wait_until(Duration::from_secs(3), "measured", move || {
        shared
            .tenants
            .get(&db)
            .and_then(|t| t.rows.figure())
            .is_some()
    })
    .await;
    drop(first);
    let url = common::psql_url(proxy.addr, &t.db, &t.user, &t.password, "verify-full");
    let out = common::run_psql(&url, "SELECT 1; SELECT 2").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warning = format!(
        "WARNING:  database \"{}\" holds 85 rows of the 100 its free tier allows",
        t.db
    );
    assert_eq!(stderr.matches(&warning).count(), 1, "{stderr}");
}

#[tokio::test]
async fn a_reload_applies_the_policy_and_the_limit_to_running_sessions() {
    let t = scram_tenant("reloaded");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let base =
        |tenant: &str| common::config_text("", "prefer", &format!("{}{tenant}", quota_table("1s")));
    std::fs::write(
        &path,
        base(&format!("[tenants.{}]\ntier = \"standard\"\n", t.db)),
    )
    .unwrap();
    let proxy = common::start_proxy_from(&std::fs::read_to_string(&path).unwrap()).await;
    proxy.handle.set_config_path(&path);
    let (client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 50); DO $$ BEGIN END $$")
        .await
        .unwrap();
    std::fs::write(
        &path,
        base(&format!(
            "[tenants.{}]\ntier = \"standard\"\nrow_limit = 20\ndeny = [\"function\"]\n",
            t.db
        )),
    )
    .unwrap();
    let shared = proxy.handle.shared().clone();
    tokio::task::spawn_blocking(move || shared.reload())
        .await
        .unwrap()
        .expect("reload");
    // The same session, without reconnecting.
    refused(&client, "DO $$ BEGIN EXECUTE 'SELECT 1'; END $$", "42501").await;
    // The new limit has the tenant measured (it never was: it had none).
    wait_over(&proxy, &t.db, 20, true).await;
    let message = refused(&client, "INSERT INTO t VALUES (0)", "53400").await;
    assert!(
        message.ends_with("the standard tier allows 20"),
        "{message}"
    );
}

/// Large objects live in `pg_largeobject`: over the limit, every way to
/// create or grow one is refused like an INSERT, in any spelling, inside a
/// DO block too, and the session carries on (issue 20).
#[tokio::test]
async fn over_the_limit_large_objects_cannot_be_created_or_grown() {
    let t = scram_tenant("quota_lo");
    let proxy = quota_proxy(&limited(&t.db, 100)).await;
    let (client, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    let lo = 4_000_000_000u32 - (std::process::id() % 1_000_000);
    // Under the limit they work.
    client
        .batch_execute(&format!(
            "CREATE TABLE t (n int);
             SELECT lo_create({lo});
             SELECT lo_put({lo}, 0, 'under');
             INSERT INTO t SELECT generate_series(1, 150)"
        ))
        .await
        .unwrap();
    wait_over(&proxy, &t.db, 100, true).await;
    let objects = "SELECT count(*) FROM pg_largeobject_metadata";
    let before: i64 = client.query_one(objects, &[]).await.unwrap().get(0);
    for sql in [
        "SELECT lo_from_bytea(0, 'x')".to_string(),
        "SELECT * FROM lo_from_bytea(0, 'x')".into(),
        "SELECT lo_create(0)".into(),
        "select LO_CREAT(-1)".into(),
        format!("SELECT lo_put({lo}, 0, 'x')"),
        format!("SELECT pg_catalog.lo_put({lo}, 0, 'x')"),
        format!("SELECT \"lo_put\"({lo}, 0, 'x')"),
        format!("SELECT U&\"lo\\005fput\"({lo}, 0, 'x')"),
        format!("SELECT 1 WHERE lo_put({lo}, 5, 'x') IS NULL"),
        format!("SELECT lowrite(lo_open({lo}, 131072), 'x')"),
        format!("SELECT lo_truncate(lo_open({lo}, 131072), 1000000)"),
        "WITH x AS (SELECT lo_creat(-1)) SELECT * FROM x".into(),
        "DO $$BEGIN PERFORM lo_from_bytea(0, 'x'); END$$".into(),
        "DO $$BEGIN INSERT INTO t VALUES (0); END$$".into(),
    ] {
        refused(&client, &sql, "53400").await;
    }
    // Through Parse/Bind/Execute as well.
    let e = client
        .query("SELECT lo_from_bytea(0, $1)", &[&b"x".to_vec()])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "53400", "{e:?}");
    // Nothing was created or grown; reading, seeking and deleting still work.
    let after: i64 = client.query_one(objects, &[]).await.unwrap().get(0);
    assert_eq!(after, before);
    let data: Vec<u8> = client
        .query_one(&format!("SELECT lo_get({lo})"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(data, b"under");
    client
        .batch_execute("DO $$BEGIN LISTEN still_fine; END$$")
        .await
        .unwrap();
    client
        .batch_execute(&format!("SELECT lo_unlink({lo})"))
        .await
        .unwrap();
}

/// Postgrex.Notifications re-subscribes with `DO $$BEGIN LISTEN "chan";
/// END$$`: on the free tier it runs, and the notification arrives; a DO
/// block that hides what it runs is still refused, and the session goes on
/// (issue 22).
#[tokio::test]
async fn a_free_tenant_listens_through_do_and_hears_notify() {
    let t = scram_tenant("do_listen");
    let proxy = quota_proxy("").await;
    let (listener, mut notifications) =
        common::connect_with_notifications(proxy.addr, &t.db, &t.user, &t.password)
            .await
            .unwrap();
    listener
        .batch_execute("DO $$BEGIN LISTEN \"chan\"; END$$")
        .await
        .unwrap();
    let (sender, _conn) = connect(proxy.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    sender
        .batch_execute("NOTIFY \"chan\", 'hello'")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), notifications.recv())
        .await
        .expect("a notification within 5 s")
        .expect("the notification stream is open");
    assert_eq!((n.channel(), n.payload()), ("chan", "hello"));

    for (sql, feature) in [
        (
            "DO $$BEGIN EXECUTE 'CREATE EXTENSION pgcrypto'; END$$",
            "DO with dynamic SQL (EXECUTE)",
        ),
        (
            "DO LANGUAGE plpython3u $$plpy.execute('select 1')$$",
            "DO in a language other than plpgsql",
        ),
        (
            "DO $$BEGIN CREATE EXTENSION pgcrypto; END$$",
            "CREATE EXTENSION",
        ),
    ] {
        let message = refused(&sender, sql, "42501").await;
        assert_eq!(
            message,
            format!("{feature} is not available on the free tier")
        );
    }
    let e = sender
        .batch_execute("DO $$BEGIN EXECUTE 'SELECT 1'; END$$")
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("a database error");
    assert!(
        db.hint().is_some_and(|h| h.contains("static")),
        "{:?}",
        db.hint()
    );
    // The session is intact, and unsubscribing through DO works too.
    listener
        .batch_execute("DO $$BEGIN UNLISTEN \"chan\"; END$$")
        .await
        .unwrap();
    let one: i32 = sender.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}
