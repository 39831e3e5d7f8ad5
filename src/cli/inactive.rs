//! `pgtier inactive --for 30d`: the databases with no login or query for
//! that long (or never), for the operator's inactive-database workflow
//! (README, "Inactive databases": report → notify → suspend → drop).
//!
//! It reads the running proxy through its operator API
//! (`GET /tenants?inactive_for=`), which in a fleet answers for every
//! instance (activity is merged through the store), or, when the proxy is
//! down, its state file (that instance's view, last activity and API
//! suspensions; no row figures). A tenant with a session open anywhere in
//! the fleet is never a candidate.
//!
//! The API speaks plain HTTP on `admin_listen`; a few lines of HTTP/1.1
//! over a socket do here (bounded in time and size) rather than a client
//! library for one GET.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;

/// How long the API may take to connect, and to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read (100,000 tenants are ~60 MB of JSON).
const MAX_RESPONSE: u64 = 256 << 20;

/// Where to read from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The operator API at `url` (`http://host:port`).
    Admin { url: String, token: Option<String> },
    /// The state file in `dir`; `config` names tiers and listed tenants.
    StateDir {
        dir: PathBuf,
        config: Option<Box<Config>>,
    },
}

/// One inactive database, as printed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub name: String,
    pub tier: Option<String>,
    /// RFC 3339, or null if never seen.
    pub last_activity: Option<String>,
    /// Days since `last_activity` (null if never).
    pub inactive_days: Option<u64>,
    pub rows: Option<i64>,
    /// Sessions open on the instance asked (and the fleet, when known).
    pub connections: u32,
    pub fleet_connections: Option<u32>,
    /// Bytes the database takes on disk, when the API reports it.
    pub size_bytes: Option<u64>,
    pub suspended: bool,
    pub suspended_by: Vec<String>,
}

/// What `pgtier inactive` was given.
#[derive(Debug, Clone)]
pub struct Args {
    pub inactive_for: Duration,
    pub admin: Option<String>,
    pub token: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub config: PathBuf,
    pub json: bool,
}

/// `pgtier inactive`: `--state-dir` reads that state file, `--admin` that
/// API; with neither, the configuration's `admin_listen` (and its
/// `admin_token`), falling back to its `state_dir` when the proxy does not
/// answer.
pub fn command(args: Args) -> ExitCode {
    let config = Config::load(&args.config).ok().map(Box::new);
    let token = args
        .token
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.admin_token.clone()));
    if let Some(dir) = args.state_dir {
        let source = Source::StateDir { dir, config };
        return run(args.inactive_for, &source, args.json);
    }
    if let Some(url) = args.admin {
        return run(args.inactive_for, &Source::Admin { url, token }, args.json);
    }
    let Some(config) = config else {
        eprintln!(
            "error: give --admin http://host:port or --state-dir DIR (or a readable --config {})",
            args.config.display()
        );
        return ExitCode::FAILURE;
    };
    let admin = config.admin_listen.map(|mut addr| {
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    });
    let state_dir = config.state_dir.clone();
    let Some(url) = admin else {
        let Some(dir) = state_dir else {
            eprintln!("error: the configuration has neither admin_listen nor state_dir; give --admin or --state-dir");
            return ExitCode::FAILURE;
        };
        let source = Source::StateDir {
            dir,
            config: Some(config),
        };
        return run(args.inactive_for, &source, args.json);
    };
    let now = crate::limits::tenants::unix_now();
    let found = match (
        from_api(&url, token.as_deref(), args.inactive_for, now),
        state_dir,
    ) {
        // Down (not an error answer, which is shown as it is): the file.
        (Err(e), Some(dir)) if e.starts_with(UNREACHABLE) => {
            eprintln!(
                "note: {e}; reading the state file in {} instead (this instance's view, no row figures)",
                dir.display()
            );
            from_state(&dir, Some(&config), args.inactive_for, now)
        }
        (found, _) => found,
    };
    print(found, args.json)
}

/// How [`get`]'s error starts when nothing answered.
const UNREACHABLE: &str = "cannot reach";

/// Runs the report; exit 0 with the list (empty or not), 1 if it could not
/// be read.
pub fn run(inactive_for: Duration, source: &Source, json: bool) -> ExitCode {
    let now = crate::limits::tenants::unix_now();
    let candidates = match source {
        Source::Admin { url, token } => from_api(url, token.as_deref(), inactive_for, now),
        Source::StateDir { dir, config } => from_state(dir, config.as_deref(), inactive_for, now),
    };
    print(candidates, json)
}

/// Prints the report (or its error); exit 0 with the list, 1 without.
fn print(candidates: Result<Vec<Candidate>, String>, json: bool) -> ExitCode {
    let candidates = match candidates {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = if json {
        serde_json::to_string_pretty(&candidates).unwrap_or_else(|_| "[]".to_owned()) + "\n"
    } else {
        table(&candidates)
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn days_since(at: u64, now: u64) -> u64 {
    now.saturating_sub(at) / 86_400
}

/// Reads `/tenants?inactive_for=` and keeps those with no session open
/// anywhere.
pub fn from_api(
    url: &str,
    token: Option<&str>,
    inactive_for: Duration,
    now: u64,
) -> Result<Vec<Candidate>, String> {
    let path = format!("/tenants?inactive_for={}s", inactive_for.as_secs());
    let body = get(url, &path, token)?;
    let views: Vec<serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|e| format!("{url}{path}: the answer is not a list of tenants ({e})"))?;
    let mut out = Vec::new();
    for v in views {
        let Some(name) = v.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        let u32_of = |key: &str| {
            v.get(key)
                .and_then(serde_json::Value::as_u64)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
        };
        let connections = u32_of("connections").unwrap_or(0);
        let fleet_connections = u32_of("fleet_connections");
        if connections > 0 || fleet_connections.unwrap_or(0) > 0 {
            continue;
        }
        let last_activity = v
            .get("last_activity")
            .and_then(|a| a.as_str())
            .map(str::to_owned);
        let at = last_activity
            .as_deref()
            .and_then(|a| humantime::parse_rfc3339(a).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        out.push(Candidate {
            name: name.to_owned(),
            tier: v.get("tier").and_then(|t| t.as_str()).map(str::to_owned),
            inactive_days: at.map(|at| days_since(at, now)),
            last_activity,
            rows: v.get("rows").and_then(serde_json::Value::as_i64),
            connections,
            fleet_connections,
            size_bytes: ["size_bytes", "storage_bytes", "bytes"]
                .iter()
                .find_map(|k| v.get(*k).and_then(serde_json::Value::as_u64)),
            suspended: v
                .get("suspended")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            suspended_by: v
                .get("suspended_by")
                .and_then(|b| b.as_array())
                .map(|b| {
                    b.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

/// The same report from a state file: every tenant it or `config` names
/// whose last activity is older than the cutoff, or unknown.
pub fn from_state(
    dir: &std::path::Path,
    config: Option<&Config>,
    inactive_for: Duration,
    now: u64,
) -> Result<Vec<Candidate>, String> {
    let (activity, suspended) = crate::ops::state::read(dir)?;
    let cutoff = now.saturating_sub(inactive_for.as_secs());
    let mut names: BTreeMap<String, Option<u64>> = activity
        .into_iter()
        .map(|(name, at)| (name, Some(at)))
        .collect();
    for name in config
        .map(|c| c.tenants.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(suspended.keys().cloned())
    {
        names.entry(name).or_insert(None);
    }
    Ok(names
        .into_iter()
        .filter(|(_, at)| at.is_none_or(|at| at <= cutoff))
        .map(|(name, at)| {
            let limits = config.map(|c| c.limits_for(&name));
            let mut by = Vec::new();
            if suspended.contains_key(&name) {
                by.push("api".to_owned());
            }
            if limits.as_ref().is_some_and(|l| l.suspended) {
                by.push("config".to_owned());
            }
            Candidate {
                tier: limits.map(|l| l.tier),
                last_activity: at.filter(|&at| at > 0).map(|at| {
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(at),
                    )
                    .to_string()
                }),
                inactive_days: at.filter(|&at| at > 0).map(|at| days_since(at, now)),
                rows: None,
                connections: 0,
                fleet_connections: None,
                size_bytes: None,
                suspended: !by.is_empty(),
                suspended_by: by,
                name,
            }
        })
        .collect())
}

/// The candidates as an aligned table.
pub fn table(candidates: &[Candidate]) -> String {
    let dash = || "-".to_owned();
    let rows: Vec<[String; 6]> = candidates
        .iter()
        .map(|c| {
            [
                c.name.clone(),
                c.tier.clone().unwrap_or_else(dash),
                c.last_activity
                    .clone()
                    .unwrap_or_else(|| "never".to_owned()),
                c.rows.map_or_else(dash, |r| r.to_string()),
                c.size_bytes.map_or_else(dash, |b| b.to_string()),
                if c.suspended {
                    c.suspended_by.join("+")
                } else {
                    "no".to_owned()
                },
            ]
        })
        .collect();
    let head = [
        "DATABASE",
        "TIER",
        "LAST ACTIVITY",
        "ROWS",
        "SIZE (BYTES)",
        "SUSPENDED",
    ];
    let mut widths = head.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut l = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        l.truncate(l.trim_end().len());
        l + "\n"
    };
    let mut out = line(&head);
    for row in &rows {
        out += &line(&row.each_ref().map(String::as_str));
    }
    out += &format!("{} inactive\n", rows.len());
    out
}

/// `GET url+path` with the bearer token; the body of a 200, else an error
/// with the API's own message.
fn get(url: &str, path: &str, token: Option<&str>) -> Result<Vec<u8>, String> {
    let authority = url
        .strip_prefix("http://")
        .ok_or_else(|| {
            format!(
                "--admin {url:?}: give the operator API as http://host:port (it speaks plain HTTP)"
            )
        })?
        .trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(format!("--admin {url:?}: expected http://host:port"));
    }
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("{UNREACHABLE} the operator API at {url}: {e}"))?;
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\n{auth}Accept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{url}: {e}"))?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|e| format!("{url}: {e}"))?;
    let (status, chunked, body) =
        parse_response(&raw).ok_or_else(|| format!("{url}: not an HTTP answer"))?;
    let body = if chunked {
        dechunk(body).ok_or_else(|| format!("{url}: malformed chunked answer"))?
    } else {
        body.to_vec()
    };
    if status != 200 {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(format!("{url}{path}: HTTP {status}: {message}"));
    }
    Ok(body)
}

/// Status, whether the body is chunked, and the body.
fn parse_response(raw: &[u8]) -> Option<(u16, bool, &[u8])> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Some((status, chunked, &raw[end + 4..]))
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_are_read_plain_or_chunked_and_never_panic() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]";
        assert_eq!(parse_response(plain), Some((200, false, &b"[]"[..])));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n";
        let (_, is_chunked, body) = parse_response(chunked).unwrap();
        assert!(is_chunked);
        assert_eq!(dechunk(body).unwrap(), b"[]");
        for bad in [
            &b"garbage"[..],
            b"HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 abc x\r\n\r\n",
        ] {
            assert_eq!(parse_response(bad), None);
        }
        for bad in [&b"ff\r\nshort"[..], b"zz\r\n", b"2\r\n[]"] {
            assert_eq!(dechunk(bad), None);
        }
    }

    #[test]
    fn the_state_file_report_keeps_the_old_and_the_never_seen() {
        let dir = tempfile::tempdir().unwrap();
        let now = 100 * 86_400;
        std::fs::write(
            crate::ops::state::path_in(dir.path()),
            format!(
                r#"{{"version":1,"last_activity":{{"old":{},"recent":{}}},"suspended":{{"gone":{{"at":5}}}}}}"#,
                now - 40 * 86_400,
                now - 3_600
            ),
        )
        .unwrap();
        let config = Config::from_toml_str(
            "[tls]\nmode = \"disable\"\n[tiers.free]\nrow_limit = 0\n[tenants.listed]\ntier = \"standard\"\n",
        )
        .unwrap();
        let found = from_state(
            dir.path(),
            Some(&config),
            Duration::from_secs(30 * 86_400),
            now,
        )
        .unwrap();
        let names: Vec<_> = found.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["gone", "listed", "old"]);
        assert_eq!(found[2].inactive_days, Some(40));
        assert_eq!(found[1].tier.as_deref(), Some("standard"));
        assert!(found[0].suspended && found[0].last_activity.is_none());
        let text = table(&found);
        assert!(
            text.contains("never") && text.ends_with("3 inactive\n"),
            "{text}"
        );
    }
}
