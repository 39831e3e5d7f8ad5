//! The tenant is exactly the database the cluster opens, and the role
//! exactly the one it logs in: hand-made StartupMessages that would make
//! pgtier count, cap or classify a session as one database while the
//! cluster opens another. PostgreSQL (15, 17, 18) keeps the last of two
//! values of a parameter and cuts `database` and `user` to 63 bytes; pgtier
//! refuses the first and applies the second itself, so every spelling of a
//! tenant meets the same cap and the same tier.

use crate::common;

use std::time::Duration;

use common::{cluster, start_proxy_with, startup_packet, unique, wait_until, Message, TestProxy};
use pgtier::protocol::error::field_of;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A plaintext-accepting proxy (raw sockets) with `top_level` keys and
/// `tables`; the free tier (2 connections, the statement policy) is the
/// default unless `top_level` says otherwise.
async fn proxy(top_level: &str, tables: &str) -> TestProxy {
    start_proxy_with(top_level, tables).await
}

/// A tenant database `db` owned by SCRAM role `user` (so raw logins work
/// the same in passthrough and proxy mode).
fn tenant(db: &str, user: &str) -> String {
    let password = format!("pw-{}", unique("identity"));
    cluster()
        .create_tenant(db, user, &password)
        .unwrap_or_else(|e| panic!("creating tenant {db:?}: {e}"));
    password
}

/// `prefix` made unique and padded to exactly 63 bytes, ending in as many
/// `pad` characters as fit (after an `x` or two where they do not divide).
fn name_of_63(prefix: &str, pad: char) -> String {
    let mut name = unique(prefix);
    while !(63 - name.len()).is_multiple_of(pad.len_utf8()) {
        name.push('x');
    }
    while name.len() < 63 {
        name.push(pad);
    }
    assert_eq!(name.len(), 63, "{name}");
    name
}

/// How a login ended: its SQLSTATE and message, or `None` for
/// ReadyForQuery.
type Outcome = Option<(String, String)>;

/// Logs in with a StartupMessage of `params`, answering SCRAM with
/// `password`; keeps the connection open for the caller.
async fn login(proxy: &TestProxy, params: &[(&str, &str)], password: &str) -> (TcpStream, Outcome) {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let msgs = common::raw_login_packet(&mut s, &startup_packet(params), password).await;
    let outcome = outcome(&msgs);
    (s, outcome)
}

fn outcome(msgs: &[Message]) -> Outcome {
    let (tag, body) = msgs.last().expect("a message");
    match tag {
        b'Z' => None,
        b'E' => Some((
            field_of(body, b'C').unwrap_or_default().to_owned(),
            field_of(body, b'M').unwrap_or_default().to_owned(),
        )),
        other => panic!("login ended with {:?}", *other as char),
    }
}

/// A login that must succeed; the open connection.
async fn login_ok(proxy: &TestProxy, params: &[(&str, &str)], password: &str) -> TcpStream {
    let (s, outcome) = login(proxy, params, password).await;
    assert_eq!(outcome, None, "login with {params:?}");
    s
}

/// A login that must be refused with `code`; its message.
async fn refused(proxy: &TestProxy, params: &[(&str, &str)], password: &str, code: &str) -> String {
    let (_s, outcome) = login(proxy, params, password).await;
    let (got, message) = outcome.unwrap_or_else(|| panic!("{params:?} logged in"));
    assert_eq!(got, code, "{params:?}: {message}");
    message
}

/// Runs `sql` as a simple query; the SQLSTATE of its error, if any.
async fn query(s: &mut TcpStream, sql: &str) -> Option<String> {
    let mut frame = vec![b'Q'];
    frame.extend(((sql.len() + 5) as u32).to_be_bytes());
    frame.extend(sql.as_bytes());
    frame.push(0);
    s.write_all(&frame).await.unwrap();
    let mut code = None;
    loop {
        let (tag, body) = common::read_message(s).await;
        match tag {
            b'E' => code = code.or(field_of(&body, b'C').map(str::to_owned)),
            b'Z' => return code,
            _ => {}
        }
    }
}

/// Waits until the proxy has counted `n` refusals under `reason` that
/// belong to no tenant: the StartupMessage was refused before any tenant
/// (or the cluster) was involved.
async fn refused_before_any_tenant(proxy: &TestProxy, reason: &'static str, n: u64) {
    let metrics = &proxy.handle.shared().metrics;
    wait_until(Duration::from_secs(5), "the refusals counted", || {
        metrics.unattributed_rejections().get(reason).copied() == Some(n)
    })
    .await;
}

/// `user=hobby, database=acme, database=hobby` opened hobby (PostgreSQL
/// keeps the last value) while pgtier counted and classified it as acme,
/// a standard tenant: a free tenant with unlimited connections and the
/// standard tier. Refused in every order, before any tenant is looked up.
#[tokio::test]
async fn a_database_given_twice_is_refused() {
    let hobby = unique("dup_hobby");
    let hobby_user = format!("{hobby}_owner");
    let password = tenant(&hobby, &hobby_user);
    let acme = unique("dup_acme");
    let proxy = proxy("", &format!("[tenants.{acme}]\ntier = \"standard\"\n")).await;
    let u = hobby_user.as_str();
    let cases: &[&[(&str, &str)]] = &[
        &[("user", u), ("database", &acme), ("database", &hobby)],
        &[("database", &acme), ("user", u), ("database", &hobby)],
        &[("database", &acme), ("database", &hobby), ("user", u)],
        &[("user", u), ("database", &hobby), ("database", &acme)],
        &[("user", u), ("database", ""), ("database", &hobby)],
        &[("user", u), ("database", &hobby), ("database", &hobby)],
        &[
            ("user", u),
            ("database", &acme),
            ("application_name", "x"),
            ("database", &hobby),
        ],
    ];
    for params in cases {
        let message = refused(&proxy, params, &password, "08P01").await;
        assert_eq!(
            message,
            "invalid startup packet layout: parameter \"database\" given twice"
        );
    }
    refused_before_any_tenant(&proxy, "duplicate_parameter", cases.len() as u64).await;
    // The packet with each name once logs in: the refusal is the pair's.
    let _s = login_ok(&proxy, &[("user", u), ("database", &hobby)], &password).await;
    assert_eq!(common::slots(&proxy.handle, &hobby), 1);
    assert_eq!(common::slots(&proxy.handle, &acme), 0);
}

/// `user=x, user=hobby` with no database opened database hobby as role
/// hobby while pgtier counted tenant x (a new decoy name per connection).
#[tokio::test]
async fn a_user_given_twice_is_refused() {
    // A database named as its owner, as a database-less login opens.
    let name = unique("dup_user");
    let password = tenant(&name, &name);
    let decoy = unique("decoy");
    let proxy = proxy("", "").await;
    let n = name.as_str();
    let cases: &[&[(&str, &str)]] = &[
        &[("user", &decoy), ("user", n)],
        &[("user", n), ("user", &decoy)],
        &[("user", n), ("user", n)],
        &[("user", &decoy), ("database", n), ("user", n)],
        &[("database", n), ("user", n), ("user", n)],
        &[("user", ""), ("user", n)],
    ];
    for params in cases {
        let message = refused(&proxy, params, &password, "08P01").await;
        assert_eq!(
            message,
            "invalid startup packet layout: parameter \"user\" given twice"
        );
    }
    refused_before_any_tenant(&proxy, "duplicate_parameter", cases.len() as u64).await;
    let _s = login_ok(&proxy, &[("user", n)], &password).await;
    assert!(proxy.handle.shared().tenants.get(&decoy).is_none());
}

/// Any other parameter twice, too: PostgreSQL applies the last value
/// (`client_encoding`, `options`, … are read by the proxy as well), and
/// setting names are case-insensitive to it.
#[tokio::test]
async fn any_parameter_given_twice_is_refused() {
    let db = unique("dup_any");
    let user = format!("{db}_owner");
    let password = tenant(&db, &user);
    let proxy = proxy("", "").await;
    let base = [("user", user.as_str()), ("database", db.as_str())];
    let pairs: &[(&str, &[(&str, &str)])] = &[
        (
            "application_name",
            &[("application_name", "a"), ("application_name", "b")],
        ),
        (
            "client_encoding",
            &[("client_encoding", "UTF8"), ("client_encoding", "SJIS")],
        ),
        (
            "Client_Encoding",
            &[("client_encoding", "UTF8"), ("Client_Encoding", "SJIS")],
        ),
        ("timezone", &[("TimeZone", "UTC"), ("timezone", "UTC")]),
        (
            "options",
            &[("options", "-c work_mem=64MB"), ("options", "")],
        ),
    ];
    for (name, extra) in pairs {
        for extra_first in [false, true] {
            let params: Vec<(&str, &str)> = if extra_first {
                extra.iter().chain(&base).copied().collect()
            } else {
                base.iter().chain(extra.iter()).copied().collect()
            };
            let message = refused(&proxy, &params, &password, "08P01").await;
            assert_eq!(
                message,
                format!("invalid startup packet layout: parameter \"{name}\" given twice")
            );
        }
        // Each name once: logs in.
        let mut once: Vec<(&str, &str)> = base.to_vec();
        once.push(extra[0]);
        let _s = login_ok(&proxy, &once, &password).await;
    }
    refused_before_any_tenant(&proxy, "duplicate_parameter", 2 * pairs.len() as u64).await;
}

/// PostgreSQL cuts `database` to 63 bytes: `<63 bytes>zzz` opened the same
/// database as a new tenant each time, never meeting the cap. Every
/// spelling is the one tenant now, and the third session gets 53300.
#[tokio::test]
async fn a_63_byte_database_is_one_tenant_however_long_the_name_sent() {
    let db = name_of_63("long_db", 'x');
    let user = unique("long_db_owner");
    let password = tenant(&db, &user);
    let proxy = proxy("", "").await;
    let u = user.as_str();
    let zzz = format!("{db}zzz");
    let very_long = format!("{db}{}", "z".repeat(500));
    let _a = login_ok(&proxy, &[("user", u), ("database", &zzz)], &password).await;
    let _b = login_ok(&proxy, &[("user", u), ("database", &very_long)], &password).await;
    assert_eq!(common::slots(&proxy.handle, &db), 2);
    assert!(proxy.handle.shared().tenants.get(&zzz).is_none());
    for suffix in ["", "a", "zzz", "é", &"q".repeat(2_000)] {
        let name = format!("{db}{suffix}");
        let message = refused(
            &proxy,
            &[("user", u), ("database", &name)],
            &password,
            "53300",
        )
        .await;
        assert!(message.contains(&format!("\"{db}\"")), "{message}");
    }
    assert_eq!(common::slots(&proxy.handle, &db), 2);
}

/// No database: PostgreSQL opens the user's name, cut to 63 bytes. The
/// role is cut too, so proxy-mode authentication looks up the role the
/// cluster logs in (it looked up `<name>zzz`, which does not exist).
#[tokio::test]
async fn an_over_long_user_without_a_database_is_one_tenant() {
    let name = name_of_63("long_user", 'x');
    let password = tenant(&name, &name);
    let proxy = proxy("", "").await;
    let zzz = format!("{name}zzz");
    let longer = format!("{name}{}", "q".repeat(300));
    let _a = login_ok(&proxy, &[("user", &zzz)], &password).await;
    let _b = login_ok(&proxy, &[("user", &longer), ("database", "")], &password).await;
    assert_eq!(common::slots(&proxy.handle, &name), 2);
    assert!(proxy.handle.shared().tenants.get(&zzz).is_none());
    for user in [format!("{name}w"), name.clone()] {
        refused(&proxy, &[("user", &user)], &password, "53300").await;
    }
    // A long role name with a database named apart from it: the same role.
    let (mut s, outcome) = login(
        &proxy,
        &[("user", &zzz), ("database", "postgres")],
        &password,
    )
    .await;
    assert_eq!(outcome, None, "the cut role logs in to another database");
    assert_eq!(query(&mut s, "SELECT 1").await, None);
}

/// The tier follows the cut name: a free tenant listed by its 63-byte name
/// under a `standard` default, reached with a longer name (database or, with
/// none, user), used to run standard-tier statements.
#[tokio::test]
async fn the_tier_of_the_cut_name_applies() {
    let db = name_of_63("tier_db", 'x');
    let user = name_of_63("tier_user", 'x');
    let password = tenant(&db, &user);
    // The role's own database, for the login without a database.
    cluster().create_database(&user, &user).unwrap();
    let proxy = proxy(
        "default_tier = \"standard\"",
        &format!("[tenants.\"{db}\"]\ntier = \"free\"\n[tenants.\"{user}\"]\ntier = \"free\"\n"),
    )
    .await;
    let long_user = format!("{user}zzz");
    let long_db = format!("{db}zzz");
    for params in [
        vec![("user", user.as_str()), ("database", long_db.as_str())],
        vec![("user", long_user.as_str()), ("database", long_db.as_str())],
        vec![("user", long_user.as_str())],
    ] {
        let mut s = login_ok(&proxy, &params, &password).await;
        for sql in [
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE EXTENSION IF NOT EXISTS pgcrypto",
        ] {
            assert_eq!(
                query(&mut s, sql).await.as_deref(),
                Some("42501"),
                "{sql} with {params:?}"
            );
        }
        assert_eq!(query(&mut s, "SELECT 1").await, None);
    }
}

/// PostgreSQL cuts at byte 63 whatever the encoding. A name whose 63rd
/// byte ends a character is cut cleanly (and is one tenant with its longer
/// spellings); one whose cut falls inside a character names nothing a UTF-8
/// cluster holds, and the proxy refuses it (08P01) rather than guess.
#[tokio::test]
async fn multibyte_names_near_the_cut() {
    let db = name_of_63("mb_é", 'é');
    assert!(db.ends_with('é'), "{db}");
    let user = unique("mb_owner");
    let password = tenant(&db, &user);
    let proxy = proxy("", "").await;
    let u = user.as_str();
    let _a = login_ok(
        &proxy,
        &[("user", u), ("database", &format!("{db}é"))],
        &password,
    )
    .await;
    let _b = login_ok(
        &proxy,
        &[("user", u), ("database", &format!("{db}𝄞x"))],
        &password,
    )
    .await;
    assert_eq!(common::slots(&proxy.handle, &db), 2);
    refused(
        &proxy,
        &[("user", u), ("database", &format!("{db}€"))],
        &password,
        "53300",
    )
    .await;

    // Cuts inside a 2-, 3- and 4-byte character, at every offset.
    let mut inside = 0;
    for ch in ['é', '€', '𝄞'] {
        let width = ch.len_utf8();
        for pad in 64 - width..63 {
            let name = format!("{}{ch}tail", "a".repeat(pad));
            for (params, what) in [
                (vec![("user", u), ("database", name.as_str())], "database"),
                (vec![("user", name.as_str())], "user"),
            ] {
                let message = refused(&proxy, &params, &password, "08P01").await;
                assert_eq!(
                    message,
                    format!(
                        "invalid startup packet layout: {what} name is longer than 63 bytes \
                         and byte 63 ends inside a multibyte character"
                    )
                );
                inside += 1;
            }
        }
    }
    refused_before_any_tenant(&proxy, "name_cut_in_character", inside).await;
}

/// A walsender connection (`replication=true`) opens no database at all,
/// and speaks commands the proxy does not read: refused whatever the value.
#[tokio::test]
async fn replication_connections_are_refused() {
    let db = unique("repl");
    let user = format!("{db}_owner");
    let password = tenant(&db, &user);
    let proxy = proxy("", "").await;
    for value in ["true", "database", "on", "1", "false"] {
        refused(
            &proxy,
            &[("user", &user), ("database", &db), ("replication", value)],
            &password,
            "0A000",
        )
        .await;
    }
    refused_before_any_tenant(&proxy, "replication", 5).await;
}

/// `options` cannot move the session: PostgreSQL takes no database name
/// from a client's command-line options, and `session_authorization` for
/// another role needs a superuser. Checked against each version, since the
/// proxy relies on it rather than reading `options` for identity.
#[tokio::test]
async fn options_cannot_change_the_database_or_the_role() {
    let hobby = unique("opt_hobby");
    let hobby_user = format!("{hobby}_owner");
    let password = tenant(&hobby, &hobby_user);
    let acme = unique("opt_acme");
    let acme_user = format!("{acme}_owner");
    tenant(&acme, &acme_user);
    let proxy = proxy("", "").await;
    let u = hobby_user.as_str();
    for (options, expected) in [
        (acme.clone(), "42601"),
        (format!("-c work_mem=64MB {acme}"), "42601"),
        (format!("-c session_authorization={acme_user}"), "42501"),
        (format!("--session_authorization={acme_user}"), "42501"),
    ] {
        let (_s, outcome) = login(
            &proxy,
            &[("user", u), ("database", &hobby), ("options", &options)],
            &password,
        )
        .await;
        let (code, message) = outcome.unwrap_or_else(|| panic!("options={options:?} logged in"));
        assert_eq!(code, expected, "options={options:?}: {message}");
    }
    // Without them, the same login works.
    let mut s = login_ok(&proxy, &[("user", u), ("database", &hobby)], &password).await;
    assert_eq!(query(&mut s, "SELECT 1").await, None);
}
