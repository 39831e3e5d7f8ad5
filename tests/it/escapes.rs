//! A hostile tenant tries to escape its row quota. Through the proxy's own
//! machinery (issue 19): by claiming the marker a refusal is replaced by,
//! by desynchronising the proxy's map of prepared statements from the
//! cluster's, and through FunctionCall. Through the measurement (issue
//! 20): by keeping rows where a count does not look (large objects,
//! temporary tables), or by blinding the auditor (row-level security,
//! CONNECT revoked, a table held locked). Each attack here worked against
//! the proxy before the rule it tests.

use crate::common;

use std::time::Duration;

use common::frames::{
    bind, bind_portal, close, execute, execute_portal, function_call, parse, query, sync,
};
use common::{cluster, quota_table, read_message, start_proxy_with, wait_until};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const LIMIT: u64 = 10;

/// A trust tenant owning `t` with `rows` rows (made by another session, so
/// that the cluster's statistics know them), and a proxy measuring every
/// second that gives it `limit` rows, its `[quota]` table being `quota`.
async fn tenant_with_rows(
    prefix: &str,
    rows: u32,
    limit: u64,
    quota: &str,
) -> (common::Tenant, common::TestProxy) {
    let t = common::trust_tenant(prefix);
    common::table_of_rows(&t, rows);
    let tables = format!("{quota}[tenants.{}]\nrow_limit = {limit}\n", t.db);
    (t, start_proxy_with("", &tables).await)
}

/// Waits until the proxy holds `db` over (or not over) `limit`, as its
/// last measurement (and the tags since) say.
async fn wait_over(proxy: &common::TestProxy, db: &str, limit: u64, over: bool, within: u64) {
    let shared = proxy.handle.shared().clone();
    let db = db.to_owned();
    let what = format!("{db} {} its limit", if over { "over" } else { "not over" });
    wait_until(Duration::from_secs(within), &what, move || {
        shared
            .tenants
            .get(&db)
            .and_then(|t| t.rows.figure().filter(|_| t.rows.failure().is_none()))
            .is_some_and(|f| f.is_over(limit) == over)
    })
    .await;
}

/// A trust tenant owning `t` with 20 rows, a proxy giving it a 10-row
/// limit, and the proxy's word that the tenant is over it.
async fn over_limit(prefix: &str) -> (common::Tenant, common::TestProxy) {
    let (t, proxy) = tenant_with_rows(prefix, 20, LIMIT, &quota_table("1s")).await;
    // The first login asks for the first measurement.
    let _first = common::raw_session(&proxy, &t).await;
    wait_over(&proxy, &t.db, LIMIT, true, 5).await;
    (t, proxy)
}

/// What the cluster (through the proxy) answered up to `readies`
/// ReadyForQuery messages: the SQLSTATE of each error, and each command
/// tag.
#[derive(Debug, Default)]
struct Answers {
    errors: Vec<String>,
    tags: Vec<String>,
    rows: Vec<String>,
    /// The message types, in order.
    kinds: String,
}

async fn answers(s: &mut TcpStream, readies: usize) -> Answers {
    let mut seen = Answers::default();
    let mut ready = 0;
    while ready < readies {
        let (tag, body) = read_message(s).await;
        seen.kinds.push(tag as char);
        match tag {
            b'Z' => ready += 1,
            b'E' => seen.errors.push(
                pgtier::protocol::error::sqlstate_of(&body)
                    .unwrap_or("")
                    .to_owned(),
            ),
            b'C' => seen
                .tags
                .push(String::from_utf8_lossy(&body[..body.len() - 1]).into_owned()),
            b'D' => seen
                .rows
                .push(String::from_utf8_lossy(body.get(6..).unwrap_or_default()).into_owned()),
            _ => {}
        }
    }
    seen
}

/// Sends `bytes` and reads the answers up to `readies` ReadyForQuery.
async fn send(s: &mut TcpStream, bytes: &[u8], readies: usize) -> Answers {
    s.write_all(bytes).await.unwrap();
    answers(s, readies).await
}

/// The rows of `t`, counted by the cluster itself.
fn rows_of_t(t: &common::Tenant) -> String {
    cluster()
        .psql(&t.db, "SELECT count(*) FROM t")
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn a_refusal_marker_can_be_neither_predicted_nor_claimed() {
    let (t, proxy) = over_limit("esc_marker").await;
    let mut a = common::raw_session(&proxy, &t).await;
    let pid = send(&mut a, &query("SELECT pg_backend_pid()"), 1)
        .await
        .rows[0]
        .clone();

    let refused = send(&mut a, &query("INSERT INTO t VALUES (0)"), 1).await;
    assert_eq!(refused.errors, ["53400"]);
    // The marker the refusal ran, as the tenant's other session sees it.
    let mut b = common::raw_session(&proxy, &t).await;
    let seen = send(
        &mut b,
        &query(&format!(
            "SELECT query FROM pg_stat_activity WHERE pid = {pid}"
        )),
        1,
    )
    .await;
    let marker = seen.rows[0].clone();
    let hex = marker
        .trim_start_matches("EXECUTE \"pgtier_refused_")
        .trim_end_matches('"');
    assert!(
        hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "a 128-bit marker, not {marker:?}"
    );

    // Claim the next marker (or any of its spellings) with an INSERT: the
    // names are the proxy's.
    let next = u128::from_str_radix(hex, 16).unwrap().wrapping_add(1);
    for claim in [
        format!("PREPARE \"pgtier_refused_{next:032x}\" AS INSERT INTO t SELECT generate_series(1, 1000)"),
        format!("PREPARE pgtier_refused_{next:032x} AS INSERT INTO t VALUES (0)"),
        "PREPARE PGTIER_REFUSED_X AS INSERT INTO t VALUES (0)".to_owned(),
        "SELECT 1; PREPARE \"PgTier_Refused_y\" AS INSERT INTO t VALUES (0)".to_owned(),
    ] {
        let answer = send(&mut a, &query(&claim), 1).await;
        assert_eq!(answer.errors, ["42939"], "{claim}");
    }
    // Through the extended protocol: a statement name, then a portal name.
    let mut out = parse("pgtier_refused_s", "INSERT INTO t VALUES (0)");
    out.extend(sync());
    out.extend(parse("ok", "SELECT 1"));
    out.extend(bind_portal("PGTIER_REFUSED_P", "ok"));
    out.extend(execute_portal("PGTIER_REFUSED_P"));
    out.extend(sync());
    let answer = send(&mut a, &out, 2).await;
    assert_eq!(answer.errors, ["42939", "42939"]);
    assert_eq!(answer.kinds, "EZ12EZ", "each refused in step with its Sync");

    // The next refusal is a refusal still, and nothing was inserted.
    let refused = send(&mut a, &query("INSERT INTO t VALUES (0)"), 1).await;
    assert_eq!(refused.errors, ["53400"]);
    assert_eq!(rows_of_t(&t), "20");
}

#[tokio::test]
async fn prepared_statements_follow_what_the_cluster_confirmed() {
    let (t, proxy) = over_limit("esc_prepared").await;
    let mut s = common::raw_session(&proxy, &t).await;
    let insert = "INSERT INTO t VALUES (0)";

    // DEALLOCATE then PREPARE in one query: applied in the cluster's order.
    let answer = send(&mut s, &query("PREPARE a AS SELECT 1"), 1).await;
    assert!(answer.errors.is_empty(), "{answer:?}");
    let answer = send(
        &mut s,
        &query(&format!("DEALLOCATE a; PREPARE a AS {insert}")),
        1,
    )
    .await;
    assert_eq!(answer.tags, ["DEALLOCATE", "PREPARE"]);
    assert_eq!(send(&mut s, &query("EXECUTE a"), 1).await.errors, ["53400"]);

    // A PREPARE the cluster rejects (the name is taken) changes nothing.
    send(&mut s, &query(&format!("PREPARE b AS {insert}")), 1).await;
    let answer = send(&mut s, &query("PREPARE b AS SELECT 1"), 1).await;
    assert_eq!(answer.errors, ["42P05"]);
    assert_eq!(send(&mut s, &query("EXECUTE b"), 1).await.errors, ["53400"]);

    // Removals the cluster skips or rejects remove nothing: inside an
    // aborted transaction, DISCARD ALL in a transaction block, after a
    // failing earlier statement of the same query.
    let mut out = query("BEGIN");
    out.extend(query("SELECT 1/0"));
    out.extend(query("DEALLOCATE b"));
    out.extend(query("ROLLBACK"));
    let answer = send(&mut s, &out, 4).await;
    assert_eq!(answer.errors, ["22012", "25P02"]);
    assert_eq!(send(&mut s, &query("EXECUTE b"), 1).await.errors, ["53400"]);
    let mut out = query("BEGIN");
    out.extend(query("DISCARD ALL"));
    out.extend(query("ROLLBACK"));
    let answer = send(&mut s, &out, 3).await;
    assert_eq!(answer.errors, ["25001"]);
    assert_eq!(send(&mut s, &query("EXECUTE b"), 1).await.errors, ["53400"]);
    let answer = send(
        &mut s,
        &query("SELECT 1/0; DEALLOCATE b; DEALLOCATE ALL"),
        1,
    )
    .await;
    assert_eq!(answer.errors, ["22012"]);
    assert_eq!(send(&mut s, &query("EXECUTE b"), 1).await.errors, ["53400"]);

    // The extended protocol: a duplicate Parse the cluster rejects, and a
    // Close skipped after an error, leave the statement as it was.
    let mut out = parse("p", insert);
    out.extend(sync());
    out.extend(parse("p", "SELECT 1"));
    out.extend(sync());
    out.extend(parse("", "SELEC broken"));
    out.extend(close(b'S', "p"));
    out.extend(sync());
    let answer = send(&mut s, &out, 3).await;
    assert_eq!(answer.errors, ["42P05", "42601"], "{answer:?}");
    let mut out = bind("p");
    out.extend(execute());
    out.extend(sync());
    assert_eq!(send(&mut s, &out, 1).await.errors, ["53400"]);

    // Confirmed changes still count: a statement closed and prepared again
    // as a SELECT runs.
    let mut out = close(b'S', "p");
    out.extend(parse("p", "SELECT 41 + 1"));
    out.extend(bind("p"));
    out.extend(execute());
    out.extend(sync());
    let answer = send(&mut s, &out, 1).await;
    assert!(answer.errors.is_empty(), "{answer:?}");
    assert_eq!(answer.rows, ["42"]);

    assert_eq!(rows_of_t(&t), "20", "no INSERT reached the table");
}

/// `lo_creat`, `lo_create`, `loread`: fixed OIDs of PostgreSQL's catalog.
const LO_CREAT: u32 = 957;
const LO_CREATE: u32 = 715;
const LOREAD: u32 = 954;

#[tokio::test]
async fn a_function_call_that_may_add_rows_is_refused_over_the_limit() {
    let (t, proxy) = over_limit("esc_fastpath").await;
    let mut s = common::raw_session(&proxy, &t).await;

    let answer = send(&mut s, &function_call(LO_CREAT, &[0x20000]), 1).await;
    assert_eq!(answer.errors, ["53400"], "lo_creat: {answer:?}");
    assert_eq!(answer.kinds, "EZ");
    let answer = send(&mut s, &function_call(LO_CREATE, &[0]), 1).await;
    assert_eq!(answer.errors, ["53400"], "lo_create: {answer:?}");
    // A function known to add nothing reaches the cluster, which answers
    // (here: no such large-object descriptor).
    let answer = send(&mut s, &function_call(LOREAD, &[0, 10]), 1).await;
    assert_eq!(answer.errors, ["42704"], "loread: {answer:?}");
    // The session is in step.
    let answer = send(&mut s, &query("SELECT 5"), 1).await;
    assert_eq!(answer.rows, ["5"]);

    let objects = cluster()
        .psql(&t.db, "SELECT count(*) FROM pg_largeobject_metadata")
        .unwrap();
    assert_eq!(objects.trim(), "0", "no large object was created");
}

/// The proxy's tenant `db`.
fn tenant(proxy: &common::TestProxy, db: &str) -> std::sync::Arc<pgtier::limits::tenants::Tenant> {
    proxy
        .handle
        .shared()
        .tenants
        .get(db)
        .expect("a tenant the proxy knows")
}

/// The message of the one error in `answer`'s stream, read raw.
async fn error_message(s: &mut TcpStream, bytes: &[u8]) -> (String, String) {
    s.write_all(bytes).await.unwrap();
    let mut error = None;
    loop {
        let (tag, body) = read_message(s).await;
        match tag {
            b'E' => {
                let code = pgtier::protocol::error::sqlstate_of(&body)
                    .unwrap_or("")
                    .to_owned();
                let message = pgtier::protocol::error::field_of(&body, b'M')
                    .unwrap_or_default()
                    .to_owned();
                error = Some((code, message));
            }
            b'Z' => return error.unwrap_or_default(),
            _ => {}
        }
    }
}

#[tokio::test]
async fn large_objects_count_and_cannot_be_created_over_the_limit() {
    let (t, proxy) = tenant_with_rows("esc_lo", 5, LIMIT, &quota_table("1s")).await;
    let mut s = common::raw_session(&proxy, &t).await;
    wait_over(&proxy, &t.db, LIMIT, false, 5).await;
    // 10,000 bytes: one object and five 2 KiB pages; the INSERT makes the
    // tenant due for its next measurement.
    let made = send(
        &mut s,
        &query(
            "SELECT lo_from_bytea(0, decode(repeat('ab', 10000), 'hex')); INSERT INTO t VALUES (0)",
        ),
        1,
    )
    .await;
    assert!(made.errors.is_empty(), "{made:?}");
    wait_over(&proxy, &t.db, LIMIT, true, 6).await;
    let figure = tenant(&proxy, &t.db).rows.figure().unwrap();
    // (A write that overlaps a measurement may count twice until the next.)
    assert!(
        figure.rows >= 6 + 1 + 5,
        "the rows, the object and its pages: {figure:?}"
    );
    // Over the limit, libpq's large-object API is refused too.
    let answer = send(&mut s, &function_call(LO_CREAT, &[0x20000]), 1).await;
    assert_eq!(answer.errors, ["53400"]);
}

#[tokio::test]
async fn rows_in_a_temporary_table_stay_counted_while_its_session_lives() {
    let (t, proxy) = tenant_with_rows("esc_temp", 0, 100, &quota_table("1s")).await;
    let mut holder = common::raw_session(&proxy, &t).await;
    let made = send(
        &mut holder,
        &query("CREATE TEMP TABLE tt (n int); INSERT INTO tt SELECT generate_series(1, 150)"),
        1,
    )
    .await;
    assert!(made.errors.is_empty(), "{made:?}");
    wait_over(&proxy, &t.db, 100, true, 5).await;
    // Measurements that cannot read the other session's table (and whose
    // statistics trail it) do not unblock the tenant.
    let rows = tenant(&proxy, &t.db).rows.measured_at();
    let shared = proxy.handle.shared().clone();
    let db = t.db.clone();
    wait_until(Duration::from_secs(8), "two more measurements", move || {
        shared
            .tenants
            .get(&db)
            .is_some_and(|t| t.rows.measured_at() >= rows + 2)
    })
    .await;
    let mut other = common::raw_session(&proxy, &t).await;
    let answer = send(&mut other, &query("INSERT INTO t VALUES (1)"), 1).await;
    assert_eq!(answer.errors, ["53400"], "still over its limit");
    // Once the session and its table are gone, the tenant is under again.
    drop(holder);
    wait_over(&proxy, &t.db, 100, false, 8).await;
}

#[tokio::test]
async fn a_tenant_hiding_rows_behind_row_level_security_cannot_be_measured_and_is_refused() {
    // A quota role as an operator might have made it before BYPASSRLS was
    // in the recipe.
    let user = common::unique("quota_norls");
    let password = format!("pw-{user}");
    cluster()
        .psql(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256';
                 CREATE ROLE {user} LOGIN PASSWORD '{password}' IN ROLE pg_read_all_data"
            ),
        )
        .unwrap();
    let quota =
        format!("[quota]\nuser = \"{user}\"\npassword = \"{password}\"\ninterval = \"1s\"\n");
    let (t, proxy) = tenant_with_rows("esc_rls", 20, LIMIT, &quota).await;
    let mut s = common::raw_session(&proxy, &t).await;
    // Only its owner sees the rows: a count with row-level security on
    // reads 0.
    let hidden = send(
        &mut s,
        &query(&format!(
            "ALTER TABLE t ENABLE ROW LEVEL SECURITY; CREATE POLICY mine ON t USING (current_user = '{}')",
            t.user
        )),
        1,
    )
    .await;
    assert!(hidden.errors.is_empty(), "{hidden:?}");
    let shared = proxy.handle.shared().clone();
    let db = t.db.clone();
    wait_until(Duration::from_secs(8), "a failed measurement", move || {
        shared
            .tenants
            .get(&db)
            .is_some_and(|t| t.rows.failure().is_some())
    })
    .await;
    assert_eq!(
        tenant(&proxy, &t.db).rows.failure(),
        Some(pgtier::rules::Unmeasurable::Permission)
    );
    let shared = proxy.handle.shared().clone();
    let db = t.db.clone();
    wait_until(Duration::from_secs(8), "the grace over", move || {
        shared
            .tenants
            .get(&db)
            .is_some_and(|t| t.rows.unmeasurable(pgtier::limits::tenants::unix_now(), 3))
    })
    .await;
    let (code, message) = error_message(&mut s, &query("INSERT INTO t VALUES (0)")).await;
    assert_eq!(code, "53400");
    assert!(message.starts_with("cannot measure database"), "{message}");
    assert_eq!(rows_of_t(&t), "20");
}

#[tokio::test]
async fn revoking_the_auditors_connect_blinds_nothing() {
    let t = common::trust_tenant("esc_connect");
    cluster()
        .psql(
            &t.db,
            &format!(
                "CREATE TABLE t (n int); ALTER TABLE t OWNER TO {};
                 REVOKE CONNECT ON DATABASE {} FROM PUBLIC",
                t.user, t.db
            ),
        )
        .unwrap();
    let tables = format!(
        "{}[tenants.{}]\nrow_limit = 1000\n",
        quota_table("1s"),
        t.db
    );
    let proxy = start_proxy_with("", &tables).await;
    let mut s = common::raw_session(&proxy, &t).await;
    let shared = proxy.handle.shared().clone();
    let db = t.db.clone();
    wait_until(
        Duration::from_secs(8),
        "refused for want of a measurement",
        move || {
            shared.tenants.get(&db).is_some_and(|t| {
                t.rows.failure() == Some(pgtier::rules::Unmeasurable::Connect)
                    && t.rows.unmeasurable(pgtier::limits::tenants::unix_now(), 3)
            })
        },
    )
    .await;
    let (code, message) = error_message(
        &mut s,
        &query("CREATE TABLE big AS SELECT generate_series(1, 5000) AS n"),
    )
    .await;
    assert_eq!(code, "53400", "{message}");
    // Reads and deletes still work.
    assert!(send(&mut s, &query("SELECT count(*) FROM t"), 1)
        .await
        .errors
        .is_empty());
    // CONNECT given back: measured, and writes work again.
    let (quota_user, _) = common::quota_role();
    cluster()
        .psql(
            &t.db,
            &format!("GRANT CONNECT ON DATABASE {} TO {quota_user}", t.db),
        )
        .unwrap();
    wait_over(&proxy, &t.db, 1000, false, 8).await;
    let answer = send(&mut s, &query("INSERT INTO t VALUES (1)"), 1).await;
    assert!(answer.errors.is_empty(), "{answer:?}");
}

#[tokio::test]
async fn a_table_held_locked_is_measured_from_statistics() {
    let (t, proxy) = tenant_with_rows("esc_lock", 20, 30, &quota_table("1s")).await;
    let mut locker = common::raw_session(&proxy, &t).await;
    wait_over(&proxy, &t.db, 30, false, 5).await;
    // A running query is never idle: the lock stays as long as the sleep.
    locker
        .write_all(&query(
            "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60)",
        ))
        .await
        .unwrap();
    let mut s = common::raw_session(&proxy, &t).await;
    let made = send(
        &mut s,
        &query("CREATE TABLE big AS SELECT generate_series(1, 50) AS n"),
        1,
    )
    .await;
    assert!(made.errors.is_empty(), "{made:?}");
    wait_over(&proxy, &t.db, 30, true, 10).await;
    let answer = send(&mut s, &query("INSERT INTO big VALUES (0)"), 1).await;
    assert_eq!(answer.errors, ["53400"]);
    drop(locker);
}

#[tokio::test]
async fn the_measurement_sees_every_kind_of_table() {
    let (t, proxy) = tenant_with_rows("esc_kinds", 1, 1000, &quota_table("1s")).await;
    // Made by the tenant: partitions, inheritance, unlogged, zero-column
    // tables, a materialized view, and schemas whose names only look like
    // the system's (PostgreSQL reserves the lower-case `pg_` prefix alone).
    let mut s = common::raw_session(&proxy, &t).await;
    let made = send(
        &mut s,
        &query(
            "CREATE TABLE p (n int) PARTITION BY RANGE (n);
             CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100);
             CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (100) TO (200);
             INSERT INTO p SELECT generate_series(1, 3);
             INSERT INTO p SELECT generate_series(101, 104);
             CREATE TABLE parent (n int);
             CREATE TABLE child () INHERITS (parent);
             INSERT INTO parent VALUES (1), (2);
             INSERT INTO child VALUES (1), (2), (3);
             CREATE UNLOGGED TABLE u AS SELECT generate_series(1, 5) AS n;
             CREATE TABLE z ();
             INSERT INTO z SELECT FROM generate_series(1, 6);
             CREATE MATERIALIZED VIEW mv AS SELECT generate_series(1, 7) AS n;
             CREATE SCHEMA \"Pg_Catalog\";
             CREATE TABLE \"Pg_Catalog\".t AS SELECT generate_series(1, 8) AS n;
             CREATE SCHEMA \"PG_TOAST_TEMP_1\";
             CREATE TABLE \"PG_TOAST_TEMP_1\".t AS SELECT generate_series(1, 9) AS n;
             CREATE SCHEMA information_schema_2;
             CREATE TABLE information_schema_2.t AS SELECT generate_series(1, 10) AS n",
        ),
        1,
    )
    .await;
    assert!(made.errors.is_empty(), "{made:?}");
    let expected = 1 + (3 + 4) + (2 + 3) + 5 + 6 + 7 + 8 + 9 + 10;
    let shared = proxy.handle.shared().clone();
    let db = t.db.clone();
    wait_until(
        Duration::from_secs(8),
        &format!("a measurement of {expected} rows"),
        move || {
            shared.tenants.get(&db).is_some_and(|t| {
                t.rows
                    .figure()
                    .is_some_and(|f| f.exact && f.rows == expected)
            })
        },
    )
    .await;
}

#[tokio::test]
async fn a_portal_bound_under_the_limit_cannot_be_fetched_over_it() {
    let (t, proxy) = tenant_with_rows("esc_fetch", 20, 100, &quota_table("1s")).await;
    let mut s = common::raw_session(&proxy, &t).await;
    wait_over(&proxy, &t.db, 100, false, 5).await;
    // Inside a transaction a bound portal outlives its Sync; an INSERT …
    // RETURNING portal runs its INSERT at the first FETCH.
    let mut out = query("BEGIN");
    out.extend(parse(
        "ins",
        "INSERT INTO t SELECT generate_series(1, 500) RETURNING n",
    ));
    out.extend(bind_portal("p", "ins"));
    out.extend(sync());
    let answer = send(&mut s, &out, 2).await;
    assert!(answer.errors.is_empty(), "{answer:?}");
    // Another session takes the tenant over its limit.
    let mut other = common::raw_session(&proxy, &t).await;
    let filled = send(
        &mut other,
        &query("INSERT INTO t SELECT generate_series(1, 200)"),
        1,
    )
    .await;
    assert!(filled.errors.is_empty(), "{filled:?}");
    wait_over(&proxy, &t.db, 100, true, 5).await;
    for fetch in ["FETCH ALL FROM p", "MOVE FORWARD ALL IN \"p\"", "fetch 1 p"] {
        // A refusal aborts the transaction, as any error does: each try
        // from a savepoint (the portal, older, survives its rollback).
        send(&mut s, &query("SAVEPOINT x"), 1).await;
        let answer = send(&mut s, &query(fetch), 1).await;
        assert_eq!(answer.errors, ["53400"], "{fetch}");
        let back = send(&mut s, &query("ROLLBACK TO SAVEPOINT x"), 1).await;
        assert!(back.errors.is_empty(), "{back:?}");
    }
    send(&mut s, &query("COMMIT"), 1).await;
    assert_eq!(rows_of_t(&t), "220", "the portal's INSERT never ran");
}
