//! Statements are classified in the encoding the cluster decodes them with.
//!
//! In SJIS, SHIFT_JIS_2004, BIG5, GBK and GB18030 a multibyte character may
//! end in the byte `\`: `E'\x83\x5c'` is one character and a closing quote
//! to PostgreSQL, and an escaped quote to a byte lexer. Each test hides a
//! denied `CREATE EXTENSION` or a row-adding INSERT behind such a character,
//! with the client encoding set every way a client can set it (startup
//! parameter, `options`, SET, SET NAMES, set_config, RESET or DISCARD ALL
//! back to a startup value, and changes still in flight when the statement
//! arrives), over the simple and the extended protocol, and checks the proxy
//! refuses it and the cluster ran nothing. Raw frames, because a driver
//! would convert the text itself.

use crate::common;
use crate::common::frames::{frame, sync};

use std::time::Duration;

use common::{cluster, quota_table, read_message, scram_tenant, start_proxy_with, wait_until};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Encodings whose characters can end in `\`, with one such character that
/// PostgreSQL converts (ソ, 許, 縗, 縗).
const DANGEROUS: &[(&str, &[u8])] = &[
    ("SJIS", b"\x83\x5c"),
    ("SHIFT_JIS_2004", b"\x83\x5c"),
    ("BIG5", b"\xa5\x5c"),
    ("GBK", b"\xbf\x5c"),
    ("GB18030", b"\xbf\x5c"),
];

/// How the session comes to use the encoding.
#[derive(Debug, Clone, Copy)]
enum Way {
    Startup,
    Options,
    Set,
    SetNames,
    SetConfig,
    /// Startup value, SET to UTF8, RESET back: the cluster's word counts.
    Reset,
    /// Startup value, SET to UTF8, DISCARD ALL.
    Discard,
    /// `SET client_encoding` and the statement in one write.
    Pipelined,
}

const WAYS: [Way; 8] = [
    Way::Startup,
    Way::Options,
    Way::Set,
    Way::SetNames,
    Way::SetConfig,
    Way::Reset,
    Way::Discard,
    Way::Pipelined,
];

fn query(sql: &[u8]) -> Vec<u8> {
    let mut body = sql.to_vec();
    body.push(0);
    frame(b'Q', &body)
}

/// Parse (unnamed), Bind, Execute.
fn extended(sql: &[u8]) -> Vec<u8> {
    let mut body = b"\0".to_vec();
    body.extend(sql);
    body.extend(b"\0\0\0");
    let mut out = frame(b'P', &body);
    out.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
    out.extend(frame(b'E', b"\0\0\0\0\0"));
    out
}

/// What came back until `readies` ReadyForQuery: error SQLSTATEs and the
/// first column of each DataRow.
async fn exchange(s: &mut TcpStream, out: &[u8], readies: usize) -> (Vec<String>, Vec<Vec<u8>>) {
    s.write_all(out).await.unwrap();
    let mut errors = Vec::new();
    let mut rows = Vec::new();
    let mut seen = 0;
    while seen < readies {
        let (tag, body) = read_message(s).await;
        match tag {
            b'Z' => seen += 1,
            b'E' => errors.push(
                pgtier::protocol::error::sqlstate_of(&body)
                    .unwrap_or("")
                    .to_owned(),
            ),
            b'D' => {
                let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                rows.push(body[6..6 + len.max(0) as usize].to_vec());
            }
            _ => {}
        }
    }
    (errors, rows)
}

/// Logs in with raw frames, with `extra` startup parameters.
async fn login(proxy: &common::TestProxy, t: &common::Tenant, extra: &[(&str, &str)]) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut params = vec![("user", t.user.as_str()), ("database", t.db.as_str())];
    params.extend_from_slice(extra);
    let msgs =
        common::raw_login_packet(&mut s, &common::startup_packet(&params), &t.password).await;
    let (tag, body) = msgs.last().expect("a message");
    assert_eq!(
        *tag,
        b'Z',
        "login failed: {}",
        String::from_utf8_lossy(body)
    );
    s
}

/// A session whose client encoding is `encoding` by `way`, and the bytes to
/// send before the statement in the same write (for `Way::Pipelined`).
async fn session(
    proxy: &common::TestProxy,
    t: &common::Tenant,
    encoding: &str,
    way: Way,
    extended_set: bool,
) -> (TcpStream, Vec<u8>) {
    let options = format!("-c client_encoding={encoding}");
    let extra: Vec<(&str, &str)> = match way {
        Way::Startup | Way::Reset | Way::Discard => vec![("client_encoding", encoding)],
        Way::Options => vec![("options", options.as_str())],
        _ => vec![],
    };
    let mut s = login(proxy, t, &extra).await;
    let set = match way {
        Way::Set | Way::Pipelined => format!("SET client_encoding = '{encoding}'"),
        Way::SetNames => format!("SET NAMES '{encoding}'"),
        Way::SetConfig => format!("SELECT set_config('client_encoding', '{encoding}', false)"),
        Way::Reset | Way::Discard => {
            let (errors, _) = exchange(&mut s, &query(b"SET client_encoding = 'UTF8'"), 1).await;
            assert!(errors.is_empty(), "{errors:?}");
            match way {
                Way::Reset => "RESET client_encoding".to_owned(),
                _ => "DISCARD ALL".to_owned(),
            }
        }
        Way::Startup | Way::Options => return (s, Vec::new()),
    };
    let set = if extended_set {
        let mut out = extended(set.as_bytes());
        out.extend(sync());
        out
    } else {
        query(set.as_bytes())
    };
    if matches!(way, Way::Pipelined) {
        return (s, set);
    }
    let (errors, _) = exchange(&mut s, &set, 1).await;
    assert!(errors.is_empty(), "{way:?} {encoding}: {errors:?}");
    (s, Vec::new())
}

/// `prefix` + `tail` + `suffix`.
fn hide(prefix: &[u8], tail: &[u8], suffix: &[u8]) -> Vec<u8> {
    [prefix, tail, suffix].concat()
}

/// A tenant over its 10-row limit (a table of 20 rows), with room for the
/// many sessions these tests open.
async fn over_limit_tenant(prefix: &str) -> (common::TestProxy, common::Tenant) {
    let t = scram_tenant(prefix);
    common::table_of_rows(&t, 20);
    let proxy = start_proxy_with(
        "",
        &format!(
            "{}[tenants.{}]\nrow_limit = 10\nmax_connections = 100\n",
            quota_table("1s"),
            t.db
        ),
    )
    .await;
    // The first login measures the tenant.
    drop(login(&proxy, &t, &[]).await);
    let shared = proxy.handle.shared().clone();
    let db = t.db.clone();
    wait_until(
        Duration::from_secs(5),
        "the tenant measured over",
        move || {
            shared
                .tenants
                .get(&db)
                .is_some_and(|t| t.rows.figure().is_some_and(|f| f.is_over(10)))
        },
    )
    .await;
    (proxy, t)
}

fn rows_in_t(t: &common::Tenant) -> String {
    cluster().psql(&t.db, "SELECT count(*) FROM t").unwrap()
}

#[tokio::test]
async fn a_simple_query_hides_nothing_behind_a_multibyte_backslash() {
    let (proxy, t) = over_limit_tenant("enc_simple").await;
    let mut missed = Vec::new();
    for &(encoding, character) in DANGEROUS {
        for way in WAYS {
            let what = format!("{encoding} by {way:?}");
            let (mut s, before) = session(&proxy, &t, encoding, way, false).await;
            let readies = if before.is_empty() { 1 } else { 2 };

            let extension = hide(
                b"SELECT E'",
                character,
                b"'; CREATE EXTENSION IF NOT EXISTS plpgsql; -- '",
            );
            let (errors, _) = exchange(
                &mut s,
                &[before.clone(), query(&extension)].concat(),
                readies,
            )
            .await;
            if errors != ["42501"] {
                missed.push(format!("CREATE EXTENSION, {what}: {errors:?}"));
            }

            let insert = hide(
                b"SELECT E'",
                character,
                b"'; INSERT INTO t VALUES (0); -- '",
            );
            let (errors, _) = exchange(&mut s, &query(&insert), 1).await;
            if errors != ["53400"] {
                missed.push(format!("INSERT, {what}: {errors:?}"));
            }

            // Over its limit, the tenant still reads, in its encoding.
            let select = hide(b"SELECT E'", character, b"' AS v -- '");
            let (errors, rows) = exchange(&mut s, &query(&select), 1).await;
            assert!(errors.is_empty(), "SELECT, {what}: {errors:?}");
            assert_eq!(rows, vec![character.to_vec()], "SELECT, {what}");
            let _ = s.write_all(&frame(b'X', b"")).await;
        }
    }
    assert!(missed.is_empty(), "not refused:\n{}", missed.join("\n"));
    assert_eq!(rows_in_t(&t), "20", "no INSERT reached the table");
}

#[tokio::test]
async fn a_parse_hides_no_insert_behind_a_multibyte_backslash() {
    let (proxy, t) = over_limit_tenant("enc_parse").await;
    let mut missed = Vec::new();
    // One statement: to the cluster a WITH whose INSERT runs; to a byte
    // lexer a SELECT of one long string.
    let insert = |character: &[u8]| {
        hide(
            b"WITH w AS (SELECT E'",
            character,
            b"' AS v), i AS (INSERT INTO t VALUES (0) RETURNING 1) SELECT v FROM w -- ' AS v) SELECT v FROM w",
        )
    };
    for &(encoding, character) in DANGEROUS {
        for (way, extended_set) in [
            (Way::Startup, false),
            (Way::Set, true),
            (Way::SetConfig, false),
            // Parse/Bind/Execute/Sync of the SET and of the statement in
            // one write: the statement arrives before the change is
            // confirmed.
            (Way::Pipelined, true),
        ] {
            let what = format!("{encoding} by {way:?}");
            let (mut s, before) = session(&proxy, &t, encoding, way, extended_set).await;
            let readies = if before.is_empty() { 1 } else { 2 };
            let mut out = before;
            out.extend(extended(&insert(character)));
            out.extend(sync());
            let (errors, _) = exchange(&mut s, &out, readies).await;
            if errors != ["53400"] {
                missed.push(format!("{what}: {errors:?}"));
            }
            let _ = s.write_all(&frame(b'X', b"")).await;
        }

        // The SET executed in the same batch as the Parse, no Sync between.
        let (mut s, _) = session(&proxy, &t, "UTF8", Way::Startup, false).await;
        let mut out = extended(format!("SET client_encoding = '{encoding}'").as_bytes());
        out.extend(extended(&insert(character)));
        out.extend(sync());
        let (errors, _) = exchange(&mut s, &out, 1).await;
        if errors != ["53400"] {
            missed.push(format!(
                "{encoding}, SET and Parse in one batch: {errors:?}"
            ));
        }
        let _ = s.write_all(&frame(b'X', b"")).await;
    }
    assert!(missed.is_empty(), "not refused:\n{}", missed.join("\n"));
    assert_eq!(rows_in_t(&t), "20", "no INSERT reached the table");
}

#[tokio::test]
async fn innocent_multibyte_text_still_runs() {
    let t = scram_tenant("enc_innocent");
    let proxy = start_proxy_with(
        "",
        &format!(
            "{}[tenants.{}]\nrow_limit = 1000\nmax_connections = 100\n",
            quota_table("1s"),
            t.db
        ),
    )
    .await;
    let mut cases: Vec<(&str, &[u8])> = DANGEROUS.to_vec();
    // UHC: PostgreSQL converts no character with a `\` trail byte; 가.
    cases.push(("UHC", b"\xb0\xa1"));
    // GB18030's four-byte form: U+0080.
    cases.push(("GB18030", b"\x81\x30\x81\x30"));
    for (encoding, character) in cases {
        for way in [Way::Startup, Way::Set, Way::Pipelined] {
            let what = format!("{encoding} by {way:?}");
            let (mut s, before) = session(&proxy, &t, encoding, way, false).await;
            let readies = if before.is_empty() { 1 } else { 2 };
            let select = hide(b"SELECT E'", character, b"' AS v -- '");
            let (errors, rows) =
                exchange(&mut s, &[before, query(&select)].concat(), readies).await;
            assert!(errors.is_empty(), "{what}: {errors:?}");
            assert_eq!(rows.last().map(Vec::as_slice), Some(character), "{what}");

            let mut out = extended(&select);
            out.extend(sync());
            let (errors, rows) = exchange(&mut s, &out, 1).await;
            assert!(errors.is_empty(), "{what}, extended: {errors:?}");
            assert_eq!(rows, vec![character.to_vec()], "{what}, extended");
            let _ = s.write_all(&frame(b'X', b"")).await;
        }
    }
}

#[tokio::test]
async fn a_name_spelled_two_ways_cannot_hide_a_prepared_insert() {
    let (proxy, t) = over_limit_tenant("enc_names").await;
    let mut missed = Vec::new();
    // One statement, two spellings: LATIN1 `é` prepared, UTF-8 `é` executed
    // after the client changed its encoding (the cluster stores UTF-8).
    let mut s = login(&proxy, &t, &[("client_encoding", "LATIN1")]).await;
    let mut out = query(b"PREPARE \"\xe9\" AS INSERT INTO t VALUES (0)");
    out.extend(query(b"SET client_encoding = 'UTF8'"));
    let (errors, _) = exchange(&mut s, &out, 2).await;
    assert!(errors.is_empty(), "{errors:?}");
    let (errors, _) = exchange(&mut s, &query("EXECUTE \"é\"".as_bytes()), 1).await;
    if errors != ["53400"] {
        missed.push(format!("LATIN1 then UTF8: {errors:?}"));
    }
    let _ = s.write_all(&frame(b'X', b"")).await;

    // Cut to 63 bytes: the cluster keeps `é` (two bytes in UTF-8) after 61
    // bytes of ASCII, a cut of its three-byte placeholder would not.
    let mut s = login(&proxy, &t, &[("client_encoding", "LATIN1")]).await;
    let long = "a".repeat(61);
    for sql in [
        format!("PREPARE {long}\u{e9} AS INSERT INTO t VALUES (0)"),
        format!("PREPARE {long} AS SELECT 1"),
    ] {
        let sql: Vec<u8> = sql.chars().map(|c| c as u8).collect();
        let (errors, _) = exchange(&mut s, &query(&sql), 1).await;
        assert!(errors.is_empty(), "{errors:?}");
    }
    let execute: Vec<u8> = format!("EXECUTE {long}\u{e9}")
        .chars()
        .map(|c| c as u8)
        .collect();
    let (errors, _) = exchange(&mut s, &query(&execute), 1).await;
    if errors != ["53400"] {
        missed.push(format!("LATIN1, a cut name: {errors:?}"));
    }
    let _ = s.write_all(&frame(b'X', b"")).await;

    // CP932's duplicates: SJIS 0xED40 and 0xFA5C are both U+7E8A to the
    // cluster, so DEALLOCATE and PREPARE of one replace the other.
    let mut s = login(&proxy, &t, &[("client_encoding", "SJIS")]).await;
    for sql in [
        &b"PREPARE \"\xed\x40\" AS SELECT 1"[..],
        b"DEALLOCATE \"\xfa\x5c\"",
        b"PREPARE \"\xfa\x5c\" AS INSERT INTO t VALUES (0)",
    ] {
        let (errors, _) = exchange(&mut s, &query(sql), 1).await;
        assert!(errors.is_empty(), "{errors:?}");
    }
    let (errors, _) = exchange(&mut s, &query(b"EXECUTE \"\xed\x40\""), 1).await;
    if errors != ["53400"] {
        missed.push(format!("SJIS duplicates, SQL EXECUTE: {errors:?}"));
    }
    // The same through Bind/Execute of the protocol-level name.
    let mut body = b"\0\xed\x40\0".to_vec();
    body.extend([0, 0, 0, 0, 0, 0]);
    let mut out = frame(b'B', &body);
    out.extend(frame(b'E', b"\0\0\0\0\0"));
    out.extend(sync());
    let (errors, _) = exchange(&mut s, &out, 1).await;
    if errors != ["53400"] {
        missed.push(format!("SJIS duplicates, Bind/Execute: {errors:?}"));
    }
    let _ = s.write_all(&frame(b'X', b"")).await;
    assert!(missed.is_empty(), "not refused:\n{}", missed.join("\n"));
    assert_eq!(rows_in_t(&t), "20", "no INSERT reached the table");
}
