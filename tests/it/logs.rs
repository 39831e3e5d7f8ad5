//! Log lines as they reach a file or a log shipper: plain text without
//! colour codes when stderr is not a terminal, or JSON lines; every line of
//! a session carries its session id, tenant and client address.

use crate::common;
use crate::harden;

use std::time::Duration;

use harden::ChildProxy;

/// A `pgtier` binary running with its stderr's lines read in order, from
/// the one after "accepting connections".
struct Logging {
    proxy: ChildProxy,
    addr: std::net::SocketAddr,
    /// Lines already read.
    read: usize,
}

impl Logging {
    /// With `top_level` added to the test configuration.
    async fn start(top_level: &str) -> Logging {
        Logging::spawn(&common::config_text(top_level, "require", "")).await
    }

    /// From a whole configuration text (see `config_text`).
    async fn spawn(text: &str) -> Logging {
        let text = text.to_owned();
        let proxy = tokio::task::spawn_blocking(move || ChildProxy::start(&text))
            .await
            .unwrap();
        let read = proxy
            .log
            .lock()
            .unwrap()
            .iter()
            .position(|l| l.contains("accepting connections"))
            .expect("the line that gave the address")
            + 1;
        Logging {
            addr: proxy.addr,
            proxy,
            read,
        }
    }

    /// The next line, within `wait`.
    async fn next_line_within(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(line) = self.proxy.log.lock().unwrap().get(self.read).cloned() {
                self.read += 1;
                return Some(line);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next line, within 10 s.
    async fn next_line(&mut self) -> String {
        self.next_line_within(Duration::from_secs(10))
            .await
            .expect("a log line in time")
    }
}

/// Runs the `pgtier` binary with `log_format`, logs a client in and out,
/// and returns stderr's lines up to the session's end.
async fn session_log(log_format: &str) -> Vec<String> {
    let t = common::scram_tenant(&format!("logs_{log_format}"));
    let mut pgtier = Logging::start(&format!("log_format = \"{log_format}\"")).await;
    let (client, conn) = common::connect(pgtier.addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    let _ = conn.await;
    let mut seen = Vec::new();
    loop {
        let line = pgtier.next_line().await;
        let end = line.contains("session ended");
        seen.push(line);
        if end {
            break;
        }
    }
    seen.into_iter()
        .map(|l| l.replace(&t.db, "TENANT"))
        .collect()
}

/// A plaintext login where TLS is required: refused at once, by the proxy.
async fn refused_login(addr: std::net::SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&common::startup_packet(&[
        ("user", "flood"),
        ("database", "flood"),
    ]))
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    assert_eq!(answer.first(), Some(&b'E'), "refused with an error");
}

/// A flood of refused logins is logged at `log_refusals_per_second`; the
/// refusals held back are counted on a later line (the next refusal's, or
/// once the flood's second is over a line of their own), so that none goes
/// unaccounted for even when the flood stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_logins_is_logged_at_the_budget_and_the_rest_counted() {
    let mut pgtier = Logging::start("log_refusals_per_second = 5").await;
    const SENT: u64 = 60;
    for _ in 0..SENT {
        refused_login(pgtier.addr).await;
    }
    let (mut logged, mut unlogged) = (0u64, 0u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while logged + unlogged < SENT {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{logged} logged + {unlogged} counted of {SENT} refusals after the flood stopped"
        );
        let Some(line) = pgtier.next_line_within(Duration::from_millis(300)).await else {
            continue;
        };
        // Refused before the proxy took the StartupMessage in: a
        // "connection refused" line.
        if line.contains("connection refused") || line.contains("login refused") {
            logged += 1;
        }
        if let Some(n) = line.split("unlogged=").nth(1) {
            let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
            unlogged += digits.parse::<u64>().unwrap();
        }
    }
    assert_eq!(logged + unlogged, SENT);
    assert!(unlogged > 0, "some of the flood was held back");
    assert!(
        logged < SENT,
        "{logged} lines for a flood of {SENT} at 5 a second"
    );
}

/// The next "login refused" line for `user`.
async fn refusal_of(pgtier: &mut Logging, user: &str) -> String {
    loop {
        let line = pgtier.next_line().await;
        if line.contains("login refused") && line.contains(&format!("user=\"{user}\"")) {
            return line;
        }
    }
}

/// In proxy mode, why a password failed (no password assigned, no such
/// role) is in the log line, as in PostgreSQL's server log, and not told to
/// the client, who hears the same as for a wrong password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_a_password_failed_is_logged_and_not_told() {
    let t = common::scram_tenant("logs_why");
    let passwordless = common::unique("logs_nopw");
    common::cluster()
        .create_role(
            &passwordless,
            None,
            pgtier_testkit::sandbox::PasswordEncryption::Scram,
        )
        .unwrap();
    let text = common::config_text("", "require", &common::auth_table("0s"));
    let mut pgtier = Logging::spawn(&text).await;
    let told = |user: &str, e: tokio_postgres::Error| {
        let db = e.as_db_error().expect("a refusal from the proxy");
        assert_eq!(db.code().code(), "28P01", "{user}: {e}");
        assert_eq!(
            db.message(),
            format!("password authentication failed for user \"{user}\"")
        );
        assert_eq!((db.detail(), db.hint()), (None, None), "{user}: {e}");
    };

    let e = common::connect(pgtier.addr, &t.db, &passwordless, "anything")
        .await
        .unwrap_err();
    told(&passwordless, e);
    let line = refusal_of(&mut pgtier, &passwordless).await;
    assert!(line.contains("reason=\"wrong_password\""), "{line}");
    assert!(
        line.contains(&format!(
            "found no password for role \\\"{passwordless}\\\""
        )),
        "{line}"
    );

    let e = common::connect(pgtier.addr, &t.db, &t.user, "wrong")
        .await
        .unwrap_err();
    told(&t.user, e);
    let line = refusal_of(&mut pgtier, &t.user).await;
    assert!(line.contains("reason=\"wrong_password\""), "{line}");
    assert!(
        !line.contains("detail="),
        "a wrong password needs no why: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_have_no_colour_codes_off_a_terminal_and_carry_the_session() {
    let lines = session_log("text").await;
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "escape code in {line:?}");
    }
    for event in ["session started", "session ended"] {
        let line = lines
            .iter()
            .find(|l| l.contains(event))
            .unwrap_or_else(|| panic!("no {event:?} in {lines:#?}"));
        assert!(
            line.contains("session{client=127.0.0.1:") && line.contains("tenant=TENANT id="),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_session_fields() {
    let lines = session_log("json").await;
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for event in ["session started", "session ended"] {
        let e = events
            .iter()
            .find(|e| e["message"] == event)
            .unwrap_or_else(|| panic!("no {event:?} in {lines:#?}"));
        let span = &e["span"];
        assert_eq!(span["tenant"], "TENANT", "{e}");
        assert!(
            span["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("127.0.0.1:")),
            "{e}"
        );
        assert!(span["id"].as_u64().is_some_and(|id| id > 0), "{e}");
        assert_eq!(e["level"], "INFO");
        assert!(e["timestamp"].is_string());
    }
    let started = events
        .iter()
        .find(|e| e["message"] == "session started")
        .unwrap();
    assert!(
        started["user"]
            .as_str()
            .is_some_and(|u| u.ends_with("_owner")),
        "{started}"
    );
}
