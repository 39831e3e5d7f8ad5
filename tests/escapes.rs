//! A hostile tenant tries to escape its row quota through the proxy's own
//! machinery (issue 19): by claiming the marker a refusal is replaced by,
//! by desynchronising the proxy's map of prepared statements from the
//! cluster's, and through FunctionCall. Each attack here worked against the
//! proxy before the rule it tests; each ends with the table's rows counted
//! by the cluster itself, so an INSERT that slipped through cannot hide.

mod common;

use std::time::Duration;

use common::frames::{
    bind, bind_portal, close, execute, execute_portal, function_call, parse, query, sync,
};
use common::{cluster, quota_table, read_message, start_proxy_with, wait_until};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const LIMIT: u64 = 10;

/// A trust tenant owning `t` with 20 rows, a proxy giving it a 10-row
/// limit, and the proxy's word that the tenant is over it.
async fn over_limit(prefix: &str) -> (common::Tenant, common::TestProxy) {
    let t = common::trust_tenant(prefix);
    let tables = format!(
        "{}[tenants.{}]\nrow_limit = {LIMIT}\n",
        quota_table("1s"),
        t.db
    );
    let proxy = start_proxy_with("", &tables).await;
    cluster()
        .psql(
            &t.db,
            &format!(
                "CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 20);
                 ALTER TABLE t OWNER TO {}",
                t.user
            ),
        )
        .unwrap();
    // The first login asks for the first measurement.
    let _first = raw_login(&proxy, &t).await;
    let shared = proxy.handle.shared().clone();
    let db = t.db.clone();
    wait_until(
        Duration::from_secs(5),
        "the tenant over its limit",
        move || {
            shared
                .tenants
                .get(&db)
                .is_some_and(|t| t.rows.figure().is_some_and(|f| f.is_over(LIMIT)))
        },
    )
    .await;
    (t, proxy)
}

async fn raw_login(proxy: &common::TestProxy, t: &common::Tenant) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    common::raw_login_ok(&mut s, &t.user, &t.db, &t.password).await;
    s
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
    let mut a = raw_login(&proxy, &t).await;
    let pid = send(&mut a, &query("SELECT pg_backend_pid()"), 1)
        .await
        .rows[0]
        .clone();

    let refused = send(&mut a, &query("INSERT INTO t VALUES (0)"), 1).await;
    assert_eq!(refused.errors, ["53400"]);
    // The marker the refusal ran, as the tenant's other session sees it.
    let mut b = raw_login(&proxy, &t).await;
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
    let mut s = raw_login(&proxy, &t).await;
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
    let mut s = raw_login(&proxy, &t).await;

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
