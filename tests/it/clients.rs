//! The client matrix: real client libraries, as their users run them,
//! through a real pgtier over TLS with certificate verification against
//! the test CA, on a free tenant (2 connections) that is over its row
//! limit and a free tenant with a 2 s idle timeout.
//!
//! Each client's script (tests/clients/*) prints `ok <check> …` per check
//! that passed and exits non-zero on the first that did not; the test
//! asserts the exact list of checks, so a check that silently does not
//! run fails too. psql, tokio-postgres and Postgrex (its message shapes,
//! driven with raw frames: Hex is not reachable from here) run in this
//! process. The libraries are installed by `scripts/ensure-deps.sh`.
//!
//! One cluster version and one authentication mode run it (PostgreSQL 18,
//! passthrough: `scripts/test.sh` runs every integration binary once per
//! version and mode, and the matrix is about clients, not clusters);
//! other runs skip it and say why.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{cluster, quota_table, scram_tenant, wait_until, Tenant, TestProxy};

/// The version and mode the matrix runs under (see the module doc).
const MATRIX_PG_MAJOR: u32 = 18;
const MATRIX_AUTH_MODE: &str = "passthrough";

/// The idle timeout of the idle tenant, in seconds.
const IDLE_TIMEOUT_SECS: u64 = 2;

/// A close before this is not the idle timeout's (the sweep may run up to
/// a moment late, never early).
const EARLIEST_IDLE_CLOSE: Duration = Duration::from_millis(IDLE_TIMEOUT_SECS * 1000 - 500);

/// Checks that wait on issue 22's other parts, each built on its own
/// branch; the lead turns each on once that branch is merged.
///
/// Keep-alive pings (a bare Sync, an empty statement, pgjdbc's
/// `isValid`, psycopg_pool's check) do not reset the idle clock.
const IDLE_PINGS_ARE_NOT_WORK: bool = true;
/// `DO $$BEGIN LISTEN x; END$$` runs on the free tier.
const DO_LISTEN_RUNS: bool = true;
/// A statement over the 8 MiB inspection bound is answered with a 54000
/// that a client still writing it hears.
const OVERSIZED_IS_HEARD: bool = true;

/// The hint of the proxy's 53300 at a tenant's connection cap.
const HINT_53300: &str = "Close an idle connection (check your pool size)";

/// The checks every client prints, always.
const ALWAYS: &[&str] = &[
    "connect",
    "53300",
    "53300-recovered",
    "53400",
    "42501",
    "cancel",
    "idle",
];

/// The switched checks that are on, by the names the scripts know them:
/// those whose constant is true, and those `TEST_CLIENTS_PENDING` names
/// (e.g. `TEST_CLIENTS_PENDING=idle-ping,do-listen`, to try a merge before
/// turning the constant on).
fn switched_on() -> Vec<&'static str> {
    let asked = std::env::var("TEST_CLIENTS_PENDING").unwrap_or_default();
    [
        ("idle-ping", IDLE_PINGS_ARE_NOT_WORK),
        ("oversized", OVERSIZED_IS_HEARD),
        ("do-listen", DO_LISTEN_RUNS),
    ]
    .into_iter()
    .filter_map(|(name, on)| (on || asked.split(',').any(|a| a.trim() == name)).then_some(name))
    .collect()
}

/// Why this run skips the matrix, if it does.
fn skip_reason() -> Option<String> {
    let (major, mode) = (common::pg_major(), common::auth_mode());
    (major != MATRIX_PG_MAJOR || mode != MATRIX_AUTH_MODE).then(|| {
        format!(
            "client matrix skipped: it runs once per suite, against PostgreSQL \
             {MATRIX_PG_MAJOR} in {MATRIX_AUTH_MODE} mode (this run: {major}, {mode}); \
             TEST_PG_MAJOR={MATRIX_PG_MAJOR} TEST_AUTH_MODE={MATRIX_AUTH_MODE} runs it"
        )
    })
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `path` under the checkout, which must exist (ensure-deps installs it).
fn installed(path: &str) -> PathBuf {
    let p = root().join(path);
    assert!(
        p.exists(),
        "{} is missing: run scripts/ensure-deps.sh",
        p.display()
    );
    p
}

/// The two tenants one client gets: `main` (free, row limit 10, holding
/// 20 rows in `t`) and `idle` (free, idle timeout [`IDLE_TIMEOUT_SECS`]).
struct Pair {
    client: &'static str,
    main: Tenant,
    idle: Tenant,
}

impl Pair {
    fn new(client: &'static str) -> Pair {
        let main = scram_tenant(&format!("cm_{}", client.replace('-', "_")));
        cluster()
            .psql(
                &main.db,
                &format!(
                    "CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 20); \
                     ALTER TABLE t OWNER TO {}",
                    main.user
                ),
            )
            .unwrap_or_else(|e| panic!("filling {}: {e}", main.db));
        let idle = scram_tenant(&format!("ci_{}", client.replace('-', "_")));
        Pair { client, main, idle }
    }

    fn config(&self) -> String {
        format!(
            "[tenants.{}]\nrow_limit = 10\n[tenants.{}]\nidle_timeout = \"{IDLE_TIMEOUT_SECS}s\"\n",
            self.main.db, self.idle.db
        )
    }

    /// The environment a script reads (see tests/clients/*).
    fn env(&self, proxy: &TestProxy) -> Vec<(String, String)> {
        let mut env = vec![
            ("PGT_HOST".into(), "localhost".into()),
            ("PGT_HOSTADDR".into(), proxy.addr.ip().to_string()),
            ("PGT_PORT".into(), proxy.addr.port().to_string()),
            (
                "PGT_CA".into(),
                common::certs().ca_path.display().to_string(),
            ),
            ("PGT_IDLE_TIMEOUT".into(), IDLE_TIMEOUT_SECS.to_string()),
            ("PGT_CHECKS".into(), switched_on().join(",")),
        ];
        for (prefix, t) in [("PGT_", &self.main), ("PGT_IDLE_", &self.idle)] {
            env.push((format!("{prefix}DB"), t.db.clone()));
            env.push((format!("{prefix}USER"), t.user.clone()));
            env.push((format!("{prefix}PASSWORD"), t.password.clone()));
        }
        env
    }
}

/// The checks `client` must have passed: [`ALWAYS`] and the switched-on
/// ones, less those that do not apply: psql has no keep-alive of its own,
/// and Postgrex's raw frames stand in only for its own shapes (its
/// 53300/53400/42501/cancel are those of every client here).
fn expected(client: &str) -> BTreeSet<String> {
    let always: &[&str] = if client == "postgrex" {
        &["connect"]
    } else {
        ALWAYS
    };
    always
        .iter()
        .copied()
        .chain(
            switched_on()
                .into_iter()
                // psql has no ping; asyncpg's pool sends none, and its
                // `execute("")` fails in asyncpg itself (EmptyQueryResponse,
                // against PostgreSQL too), so it has no ping to test.
                .filter(|c| !(matches!(client, "psql" | "asyncpg") && *c == "idle-ping")),
        )
        .map(str::to_owned)
        .collect()
}

/// Runs a client's script; its report (stdout), or why it failed (the
/// status, stdout and stderr).
async fn run_script(
    pair: &Pair,
    proxy: &TestProxy,
    program: &Path,
    args: &[&str],
) -> Result<String, String> {
    let started = Instant::now();
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(pair.env(proxy))
        .env("NODE_PATH", root().join(".deps/node/node_modules"))
        .env("PSYCOPG_IMPL", "python")
        .current_dir(root())
        .kill_on_drop(true);
    for var in ["PGPASSWORD", "PGSSLMODE", "PGOPTIONS", "PGSERVICE"] {
        command.env_remove(var);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .map_err(|_| format!("{} did not finish within 120 s", pair.client))?
        .map_err(|e| format!("running {}: {e}", program.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "{} ({:.1} s):\n{stdout}",
        pair.client,
        started.elapsed().as_secs_f64()
    );
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}):\n{stdout}\n{stderr}",
            pair.client, out.status
        ));
    }
    check_report(pair.client, &stdout)?;
    Ok(stdout)
}

/// Whether `report` has one `ok <check>` line per expected check and no
/// other.
fn check_report(client: &str, report: &str) -> Result<(), String> {
    let seen: Vec<String> = report
        .lines()
        .filter_map(|l| l.strip_prefix("ok "))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .collect();
    let set: BTreeSet<String> = seen.iter().cloned().collect();
    if set.len() != seen.len() {
        return Err(format!("{client} reported a check twice:\n{report}"));
    }
    if set != expected(client) {
        return Err(format!(
            "{client} passed {set:?}, expected {:?}:\n{report}",
            expected(client)
        ));
    }
    Ok(())
}

/// Panics with every failure in `results` (all clients ran to the end, so
/// one failing hides no other).
fn assert_all(results: Vec<Result<String, String>>) {
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_connects_hears_the_limits_and_keeps_working() {
    if let Some(why) = skip_reason() {
        eprintln!("{why}");
        return;
    }
    let python = installed(".deps/venv/bin/python");
    installed(".deps/node/node_modules/pg");
    let jdbc = PathBuf::from("/usr/share/java/postgresql.jar");
    assert!(
        jdbc.exists(),
        "{} is missing: run scripts/ensure-deps.sh",
        jdbc.display()
    );

    let jdbc_cp = jdbc.display().to_string();
    let python = python.display().to_string();
    // Scripts run as subprocesses (argv); the others in this process.
    let clients: Vec<(&'static str, Vec<&str>)> = vec![
        ("psycopg", vec![&python, "tests/clients/psycopg_matrix.py"]),
        ("asyncpg", vec![&python, "tests/clients/asyncpg_matrix.py"]),
        ("node", vec!["node", "tests/clients/pg_matrix.js"]),
        (
            "pgjdbc",
            // Single-source launch; C1 only: the checks are short, the
            // JVM's start is most of the time.
            vec![
                "java",
                "-XX:TieredStopAtLevel=1",
                "-cp",
                &jdbc_cp,
                "tests/clients/PgjdbcMatrix.java",
            ],
        ),
        ("psql", vec![]),
        ("tokio-postgres", vec![]),
        ("postgrex", vec![]),
    ];
    // TEST_CLIENTS=psycopg,node runs only those (a debugging aid; the
    // suite runs them all).
    let only = std::env::var("TEST_CLIENTS").unwrap_or_default();
    let clients: Vec<_> = clients
        .into_iter()
        .filter(|(name, _)| only.is_empty() || only.split(',').any(|o| o == *name))
        .collect();
    if !only.is_empty() {
        eprintln!(
            "TEST_CLIENTS={only}: running only {:?}",
            clients.iter().map(|c| c.0).collect::<Vec<_>>()
        );
    }
    let pairs: Vec<Pair> = clients.iter().map(|(name, _)| Pair::new(name)).collect();
    let tables: String = pairs.iter().map(Pair::config).collect();
    let proxy = common::start_proxy_from(&common::config_text(
        "",
        "require",
        &format!("{}{tables}", quota_table("1s")),
    ))
    .await;
    for pair in &pairs {
        // The auditor measures the tenants the proxy has seen log in.
        let (client, _conn) = common::connect(
            proxy.addr,
            &pair.main.db,
            &pair.main.user,
            &pair.main.password,
        )
        .await
        .unwrap_or_else(|e| panic!("first login to {}: {e}", pair.main.db));
        client.simple_query("SELECT 1").await.unwrap();
        drop(client);
        wait_over(&proxy, &pair.main.db).await;
    }
    // Those first sessions are gone: every slot is free again.
    for pair in &pairs {
        wait_until(
            Duration::from_secs(5),
            "the first logins' slots free",
            || proxy.handle.tenant_connections(&pair.main.db) == Some(0),
        )
        .await;
    }
    let started = Instant::now();
    let runs = pairs.iter().zip(&clients).map(|(pair, (name, argv))| {
        let proxy = &proxy;
        async move {
            let report = match *name {
                "psql" => psql_checks(pair, proxy).await,
                "tokio-postgres" => tokio_postgres_checks(pair, proxy).await,
                "postgrex" => postgrex_checks(pair, proxy).await,
                _ => return run_script(pair, proxy, Path::new(argv[0]), &argv[1..]).await,
            };
            eprintln!("{name}:\n{}", report.as_deref().unwrap_or_else(|e| e));
            report.and_then(|r| check_report(name, &r).map(|()| r))
        }
    });
    let results = futures_util::future::join_all(runs).await;
    eprintln!("client matrix: {:.1} s", started.elapsed().as_secs_f64());
    assert_all(results);
}

/// Waits until the proxy holds `db` over its row limit (10).
async fn wait_over(proxy: &TestProxy, db: &str) {
    let shared = proxy.handle.shared().clone();
    let name = db.to_owned();
    wait_until(
        Duration::from_secs(10),
        &format!("{db} over its row limit"),
        move || {
            shared
                .tenants
                .get(&name)
                .is_some_and(|t| t.rows.figure().is_some_and(|f| f.is_over(10)))
        },
    )
    .await;
}

// --- The clients that run in this process ------------------------------------

/// `Err(message)` from a check that runs in this process, so that one
/// client's failure still lets the others run to the end.
macro_rules! ensure {
    ($cond:expr, $($what:tt)+) => {
        if !$cond {
            return Err(format!($($what)+));
        }
    };
}

/// Waits (at most 10 s) until a statement starting with `prefix` runs in
/// `db`, seen from the cluster: the moment a cancel can only hit it.
async fn wait_running(db: &str, prefix: &str) -> Result<(), String> {
    let su = common::superuser_client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = $1 AND state = 'active' AND starts_with(query, $2)",
                &[&db, &prefix],
            )
            .await
            .map_err(|e| format!("pg_stat_activity: {e}"))?
            .get(0);
        if n > 0 {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{prefix}… never ran in {db}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most `within`) until `db` holds no slot: the proxy closed its
/// sessions. Returns how long that took.
async fn wait_no_slots(proxy: &TestProxy, db: &str, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    while proxy.handle.tenant_connections(db) != Some(0) {
        ensure!(
            started.elapsed() < within,
            "{db} still holds a slot after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(started.elapsed())
}

/// tokio-postgres through the proxy to tenant `t`.
async fn connect_to(
    proxy: &TestProxy,
    t: &Tenant,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    tokio_postgres::Error,
> {
    common::connect(proxy.addr, &t.db, &t.user, &t.password).await
}

/// A tokio-postgres error as a report line: SQLSTATE and message.
fn pg(e: &tokio_postgres::Error) -> String {
    format!("{} {}", sqlstate(e), common::message(e))
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE ({e})"))
}

fn hint_of(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .and_then(|d| d.hint())
        .unwrap_or_default()
        .to_owned()
}

/// A 9 MiB statement: over the 8 MiB a tier with rules inspects.
fn oversized_statement() -> String {
    format!("SELECT '{}'", "x".repeat(9 << 20))
}

/// tokio-postgres, the client the rest of the suite uses.
async fn tokio_postgres_checks(pair: &Pair, proxy: &TestProxy) -> Result<String, String> {
    let (m, i) = (&pair.main, &pair.idle);
    let mut report = String::new();
    let on = switched_on();

    let (a, _a) = connect_to(proxy, m)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    a.simple_query("SELECT 1").await.map_err(|e| pg(&e))?;
    report += "ok connect rustls verifying the test CA\n";

    let (b, _b) = connect_to(proxy, m)
        .await
        .map_err(|e| format!("second: {e}"))?;
    match connect_to(proxy, m).await {
        Ok(_) => return Err("a third connection got in".into()),
        Err(e) => {
            ensure!(sqlstate(&e) == "53300", "third: {e}");
            ensure!(hint_of(&e).contains(HINT_53300), "hint: {e:?}");
        }
    }
    report += "ok 53300 code and hint\n";
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (b, _b) = loop {
        match connect_to(proxy, m).await {
            Ok(pair) => break pair,
            Err(e) if sqlstate(&e) == "53300" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(format!("after a slot freed: {e}")),
        }
    };
    report += "ok 53300-recovered\n";

    for (sql, state) in [
        ("INSERT INTO t VALUES (0)", "53400"),
        ("CREATE EXTENSION pgcrypto", "42501"),
    ] {
        let e = a
            .batch_execute(sql)
            .await
            .err()
            .ok_or(format!("{sql} ran"))?;
        ensure!(
            sqlstate(&e) == state && !hint_of(&e).is_empty(),
            "{sql}: {e:?}"
        );
        a.simple_query("SELECT 1")
            .await
            .map_err(|e| format!("after {state}: {e}"))?;
        report += &format!("ok {state} connection kept\n");
    }

    let token = a.cancel_token();
    let (slept, cancelled) = tokio::join!(a.simple_query("SELECT pg_sleep(30)"), async {
        wait_running(&m.db, "SELECT pg_sleep(30)").await?;
        token
            .cancel_query(common::tls_connector())
            .await
            .map_err(|e| format!("cancel_query: {e}"))
    });
    cancelled?;
    let e = slept.err().ok_or("pg_sleep(30) finished")?;
    ensure!(sqlstate(&e) == "57014", "cancelled: {e}");
    a.simple_query("SELECT 1").await.map_err(|e| pg(&e))?;
    report += "ok cancel CancelToken::cancel_query over TLS\n";

    if on.contains(&"do-listen") {
        // A third session fits once `a` is gone.
        drop(a);
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.handle.tenant_connections(&m.db) != Some(1) {
            ensure!(Instant::now() < deadline, "a's slot never freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (l, mut notes) =
            common::connect_with_notifications(proxy.addr, &m.db, &m.user, &m.password)
                .await
                .map_err(|e| format!("listener: {}", pg(&e)))?;
        l.batch_execute("DO $$BEGIN LISTEN pgt_chan; END$$")
            .await
            .map_err(|e| format!("DO LISTEN: {}", pg(&e)))?;
        b.batch_execute("NOTIFY pgt_chan, 'tokio-postgres'")
            .await
            .map_err(|e| pg(&e))?;
        let n = tokio::time::timeout(Duration::from_secs(5), notes.recv())
            .await
            .map_err(|_| "no notification within 5 s".to_owned())?
            .ok_or("notification stream ended")?;
        ensure!(n.payload() == "tokio-postgres", "{n:?}");
        report += "ok do-listen\n";
    }

    if on.contains(&"oversized") {
        let e = b
            .simple_query(&oversized_statement())
            .await
            .err()
            .ok_or("a 9 MiB statement ran")?;
        ensure!(sqlstate(&e) == "54000", "9 MiB statement: {e}");
        report += "ok oversized 54000 heard\n";
    }

    let (c, conn) = connect_to(proxy, i)
        .await
        .map_err(|e| format!("idle tenant: {e}"))?;
    c.simple_query("SELECT 1").await.map_err(|e| pg(&e))?;
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(IDLE_TIMEOUT_SECS + 5), conn)
        .await
        .map_err(|_| "the idle session was not closed".to_owned())?
        .map_err(|e| e.to_string())?;
    let waited = started.elapsed();
    let e = ended
        .err()
        .ok_or("the idle session ended without an error")?;
    ensure!(sqlstate(&e) == "57P05", "idle: {e}");
    ensure!(waited > EARLIEST_IDLE_CLOSE, "closed after {waited:?}");
    let (c, _conn) = connect_to(proxy, i)
        .await
        .map_err(|e| format!("reconnect: {e}"))?;
    c.simple_query("SELECT 1").await.map_err(|e| pg(&e))?;
    report += &format!(
        "ok idle 57P05 after {:.1} s; reconnected\n",
        waited.as_secs_f64()
    );

    if on.contains(&"idle-ping") {
        let started = Instant::now();
        let e = loop {
            ensure!(
                started.elapsed().as_secs() < IDLE_TIMEOUT_SECS + 5,
                "pings kept the session open"
            );
            if let Err(e) = c.simple_query("").await {
                break e;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let waited = started.elapsed();
        ensure!(sqlstate(&e) == "57P05" || c.is_closed(), "ping: {e}");
        ensure!(waited > EARLIEST_IDLE_CLOSE, "closed after {waited:?}");
        let (c, _conn) = connect_to(proxy, i)
            .await
            .map_err(|e| format!("reconnect: {e}"))?;
        c.simple_query("SELECT 1").await.map_err(|e| pg(&e))?;
        report += &format!(
            "ok idle-ping closed after {:.1} s of empty queries\n",
            waited.as_secs_f64()
        );
    }
    Ok(report)
}

/// Runs `psql` on `url` with `input` on stdin (no ON_ERROR_STOP, verbose
/// errors so that each carries its SQLSTATE); its exit status, stdout and
/// stderr.
async fn psql_stdin(url: &str, input: &str) -> Result<(bool, String, String), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = common::psql_command(url)
        .args([
            "-v",
            "ON_ERROR_STOP=0",
            "-v",
            "VERBOSITY=verbose",
            "-f",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("psql: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("psql's stdin")?;
    stdin
        .write_all(input.as_bytes())
        .await
        .map_err(|e| format!("writing to psql: {e}"))?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| "psql did not finish within 60 s".to_owned())?
        .map_err(|e| format!("psql: {e}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `psql` (libpq) of the cluster's version, `sslmode=verify-full`.
async fn psql_checks(pair: &Pair, proxy: &TestProxy) -> Result<String, String> {
    let (m, i) = (&pair.main, &pair.idle);
    let url = |t: &Tenant| common::psql_url(proxy.addr, &t.db, &t.user, &t.password, "verify-full");
    let mut report = String::new();
    let on = switched_on();

    let (ok, out, err) = psql_stdin(&url(m), "SELECT 'connected';").await?;
    ensure!(ok && out.trim() == "connected", "connect: {out}{err}");
    report += "ok connect sslmode=verify-full\n";

    let (a, _a) = connect_to(proxy, m).await.map_err(|e| pg(&e))?;
    let (b, _b) = connect_to(proxy, m).await.map_err(|e| pg(&e))?;
    let (ok, out, err) = psql_stdin(&url(m), "SELECT 1;").await?;
    // libpq reports a refused login by its text (no SQLSTATE before the
    // connection is up).
    ensure!(
        !ok && err.contains("too many connections for database") && err.contains(HINT_53300),
        "third: {out}{err}"
    );
    report += "ok 53300 message and hint\n";
    drop((a, b));
    wait_no_slots(proxy, &m.db, Duration::from_secs(5)).await?;
    let (ok, out, err) = psql_stdin(&url(m), "SELECT 'back';").await?;
    ensure!(
        ok && out.trim() == "back",
        "after the slots freed: {out}{err}"
    );
    report += "ok 53300-recovered\n";

    let (ok, out, err) = psql_stdin(
        &url(m),
        "INSERT INTO t VALUES (0);\nSELECT 'after 53400';\nCREATE EXTENSION pgcrypto;\nSELECT 'after 42501';\n",
    )
    .await?;
    ensure!(ok, "{out}{err}");
    ensure!(
        err.contains("ERROR:  53400:") && out.contains("after 53400"),
        "53400: {out}{err}"
    );
    report += "ok 53400 connection kept\n";
    ensure!(
        err.contains("ERROR:  42501:") && out.contains("after 42501"),
        "42501: {out}{err}"
    );
    report += "ok 42501 connection kept\n";

    // psql's own cancel: SIGINT while a statement runs.
    let child = common::psql_command(&url(m))
        .args(["-v", "VERBOSITY=verbose", "-c", "SELECT pg_sleep(30)"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("psql: {e}"))?;
    wait_running(&m.db, "SELECT pg_sleep(30)").await?;
    let pid = child.id().ok_or("psql's PID")?;
    let kill = tokio::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .await
        .map_err(|e| format!("kill: {e}"))?;
    ensure!(kill.success(), "kill -INT {pid}");
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| "psql kept sleeping after SIGINT".to_owned())?
        .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("ERROR:  57014: canceling statement due to user request"),
        "cancel: {err}"
    );
    report += "ok cancel SIGINT\n";

    if on.contains(&"do-listen") {
        // A session hears its own notifications: psql prints them after
        // the statement that received them.
        let (ok, out, err) = psql_stdin(
            &url(m),
            "DO $$BEGIN LISTEN pgt_chan; END$$;\nNOTIFY pgt_chan, 'psql';\nSELECT 1;\n",
        )
        .await?;
        ensure!(
            ok && out.contains("Asynchronous notification \"pgt_chan\" with payload \"psql\""),
            "do-listen: {out}{err}"
        );
        report += "ok do-listen\n";
    }
    if on.contains(&"oversized") {
        let (_, out, err) = psql_stdin(&url(m), &format!("{};\n", oversized_statement())).await?;
        ensure!(err.contains("54000"), "oversized: {out}{err}");
        report += "ok oversized 54000 heard\n";
    }

    // An idle session: psql sits waiting on its input; the proxy closes
    // the session; the next statement finds the 57P05 (a script's psql
    // then exits, as it does when any connection is lost) and a new psql
    // gets in.
    let mut child = common::psql_command(&url(i))
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("psql: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("stdin")?;
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().ok_or("stdout")?);
    {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        stdin
            .write_all(b"SELECT 'before';\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
            .await
            .map_err(|_| "psql said nothing".to_owned())?
            .map_err(|e| e.to_string())?;
        ensure!(line.trim() == "before", "{line}");
        let waited =
            wait_no_slots(proxy, &i.db, Duration::from_secs(IDLE_TIMEOUT_SECS + 5)).await?;
        ensure!(waited > EARLIEST_IDLE_CLOSE, "closed after {waited:?}");
        stdin
            .write_all(b"SELECT 'after';\n")
            .await
            .map_err(|e| e.to_string())?;
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .map_err(|_| "psql did not end".to_owned())?
            .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            err.contains("terminating connection due to idle-session timeout"),
            "idle: {err}"
        );
        let (ok, out, err) = psql_stdin(&url(i), "SELECT 'again';").await?;
        ensure!(ok && out.trim() == "again", "reconnect: {out}{err}");
        report += &format!(
            "ok idle 57P05 after {:.1} s; a new psql gets in\n",
            waited.as_secs_f64()
        );
    }
    Ok(report)
}

/// Reads one backend message, or says why not (a close, 10 s of silence).
async fn next_message(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<(u8, Vec<u8>), String> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let tag = s.read_u8().await?;
        let len = s.read_u32().await? as usize;
        if !(4..=1 << 20).contains(&len) {
            return Err(std::io::Error::other(format!("a message of length {len}")));
        }
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await?;
        Ok((tag, body))
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| "no message within 10 s".to_owned())?
        .map_err(|e| format!("reading: {e}"))
}

/// An ErrorResponse body as text (fields separated by `|`).
fn error_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).replace('\0', " | ")
}

/// The SQLSTATE of an ErrorResponse body.
fn error_code(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

/// A raw TLS session (SSLRequest, then rustls verifying the test CA, as
/// Postgrex's `ssl: true` does against the system's roots) logged in.
async fn raw_session(
    proxy: &TestProxy,
    t: &Tenant,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let mut s = common::ssl_request_tls(proxy.addr).await;
    let msgs = common::raw_login(&mut s, &t.user, &t.db, &t.password, common::PROTOCOL_3_0).await;
    match msgs.last() {
        Some((b'Z', _)) => Ok(s),
        other => Err(format!("login: {other:?}")),
    }
}

/// Postgrex (Elixir; Hex is not reachable from here, so its message
/// shapes are spoken with raw frames): DBConnection's idle ping, which
/// Postgrex sends as a bare Sync (every second by default, every 200 ms
/// here); Postgrex.Notifications' (and Oban's) re-subscription after a
/// reconnect, `DO $$BEGIN LISTEN "a";\nLISTEN "b"; END$$` as a simple
/// Query; and a statement it writes whole before reading (Parse of 9 MiB).
/// Every one of them waits on other work: only `connect` is always on.
async fn postgrex_checks(pair: &Pair, proxy: &TestProxy) -> Result<String, String> {
    use common::frames::{frame, parse, query, sync};
    use tokio::io::AsyncWriteExt;
    let (m, i) = (&pair.main, &pair.idle);
    let on = switched_on();
    let mut report = String::new();

    let mut s = raw_session(proxy, m).await?;
    s.write_all(&sync()).await.map_err(|e| e.to_string())?;
    let (tag, _) = next_message(&mut s).await?;
    ensure!(
        tag == b'Z',
        "a Sync is answered by ReadyForQuery, got {:?}",
        tag as char
    );
    report += "ok connect TLS verifying the test CA; a Sync answered\n";

    if on.contains(&"do-listen") {
        // Postgrex.Notifications subscribes with a plain LISTEN per
        // channel; after the connection drops it reconnects and
        // re-subscribes to every channel in one DO.
        for channel in ["pgt_a", "pgt_b"] {
            s.write_all(&query(&format!("LISTEN \"{channel}\"")))
                .await
                .map_err(|e| e.to_string())?;
            let (tag, body) = next_message(&mut s).await?;
            ensure!(tag == b'C', "LISTEN: {}", error_text(&body));
            ensure!(
                next_message(&mut s).await?.0 == b'Z',
                "LISTEN's ReadyForQuery"
            );
        }
        drop(s);
        wait_no_slots(proxy, &m.db, Duration::from_secs(5)).await?;
        s = raw_session(proxy, m).await?;
        s.write_all(&query(
            "DO $$BEGIN LISTEN \"pgt_a\";\nLISTEN \"pgt_b\"; END$$",
        ))
        .await
        .map_err(|e| e.to_string())?;
        let mut tags = Vec::new();
        loop {
            let (tag, body) = next_message(&mut s).await?;
            ensure!(tag != b'E', "DO LISTEN refused: {}", error_text(&body));
            tags.push(tag);
            if tag == b'Z' {
                break;
            }
        }
        ensure!(tags == [b'C', b'Z'], "DO LISTEN answered {tags:?}");
        let (notifier, _conn) = common::connect(proxy.addr, &m.db, &m.user, &m.password)
            .await
            .map_err(|e| pg(&e))?;
        notifier
            .batch_execute("NOTIFY pgt_a, 'one'; NOTIFY pgt_b, 'two'")
            .await
            .map_err(|e| pg(&e))?;
        let mut got = Vec::new();
        while got.len() < 2 {
            let (tag, body) = next_message(&mut s).await?;
            if tag == b'A' {
                // PID, channel, payload.
                let fields: Vec<String> = body[4..]
                    .split(|&b| b == 0)
                    .take(2)
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect();
                got.push(fields.join(":"));
            }
        }
        ensure!(got == ["pgt_a:one", "pgt_b:two"], "notifications {got:?}");
        report += "ok do-listen re-subscribed by DO after a reconnect; both channels notified\n";
    }

    if on.contains(&"oversized") {
        let mut big = parse("", &oversized_statement());
        big.extend(frame(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
        big.extend(sync());
        // Postgrex writes the whole request, then reads.
        let written = s.write_all(&big).await.and(s.flush().await);
        // Postgrex reports a failed send ("ssl send: closed") and reads
        // nothing: the whole message must go through.
        ensure!(written.is_ok(), "oversized: the send failed: {written:?}");
        let answer = next_message(&mut s).await;
        match answer {
            Ok((b'E', body)) => ensure!(
                error_code(&body) == "54000",
                "oversized: {}",
                error_text(&body)
            ),
            other => return Err(format!("oversized: wrote {written:?}, read {other:?}")),
        }
        report += "ok oversized 54000 heard after writing it all\n";
    }
    drop(s);

    if on.contains(&"idle-ping") {
        let mut s = raw_session(proxy, i).await?;
        let started = Instant::now();
        let (closed_with, waited) = loop {
            ensure!(
                started.elapsed().as_secs() < IDLE_TIMEOUT_SECS + 5,
                "Sync pings kept the session open"
            );
            if s.write_all(&sync()).await.is_err() {
                break (String::from("a closed socket"), started.elapsed());
            }
            match next_message(&mut s).await {
                Ok((b'Z', _)) => {}
                Ok((b'E', body)) => break (error_code(&body), started.elapsed()),
                other => return Err(format!("a Sync answered {other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        ensure!(
            closed_with == "57P05",
            "the pinging session ended with {closed_with}"
        );
        ensure!(waited > EARLIEST_IDLE_CLOSE, "closed after {waited:?}");
        let mut s = raw_session(proxy, i).await?;
        s.write_all(&sync()).await.map_err(|e| e.to_string())?;
        ensure!(
            next_message(&mut s).await?.0 == b'Z',
            "the reconnected session answers"
        );
        report += &format!(
            "ok idle-ping 57P05 after {:.1} s of Sync pings; reconnected\n",
            waited.as_secs_f64()
        );
    }
    Ok(report)
}
