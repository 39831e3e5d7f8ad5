//! Log lines as they reach a file or a log shipper: plain text without
//! colour codes when stderr is not a terminal, or JSON lines; every line of
//! a session carries its session id, tenant and client address.

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// Runs the `pgtier` binary with `log_format`, logs a client in and out,
/// and returns stderr's lines up to the session's end.
async fn session_log(log_format: &str) -> Vec<String> {
    let t = common::scram_tenant(&format!("logs_{log_format}"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = common::config_text(&format!("log_format = \"{log_format}\""), "require", "")
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtier"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut next_line = async |seen: &mut Vec<String>| {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("a log line in time")
            .expect("stderr readable")
            .expect("pgtier still running");
        seen.push(line.clone());
        line
    };
    while !next_line(&mut seen).await.contains("accepting connections") {}
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (client, conn) = common::connect(addr, &t.db, &t.user, &t.password)
        .await
        .unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    let _ = conn.await;
    while !next_line(&mut seen).await.contains("session ended") {}
    let _ = child.kill().await;
    seen.into_iter()
        .map(|l| l.replace(&t.db, "TENANT"))
        .collect()
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
