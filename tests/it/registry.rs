//! Tenants read from a control-plane table (`[registry]`): a real control
//! database on the test cluster, a trigger that NOTIFYs, and proxies that
//! LISTEN to it.

use crate::common;
use crate::common::code;

use std::time::{Duration, Instant};

use common::{cluster, config_text, connect, start_proxy_from, trust_tenant, wait_until};

/// A control database of the test's own, with the README's table and
/// trigger, readable by a role of its own (and by no tenant).
struct Control {
    db: String,
    user: String,
    password: String,
    /// The superuser, in the control database.
    client: tokio_postgres::Client,
}

async fn superuser_in(db: &str) -> tokio_postgres::Client {
    let c = cluster();
    let (client, connection) = tokio_postgres::Config::new()
        .host(c.host())
        .port(c.port())
        .user(c.superuser())
        .password(c.superuser_password())
        .dbname(db)
        .connect_timeout(Duration::from_secs(10))
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("superuser connection to {db}: {e}"));
    tokio::spawn(connection);
    client
}

async fn control() -> Control {
    let db = common::unique("control");
    let user = format!("{db}_reader");
    let password = format!("pw-{db}");
    let su = common::superuser_client().await;
    for sql in [
        format!("CREATE ROLE {user} LOGIN PASSWORD '{password}'"),
        format!("CREATE DATABASE {db}"),
        format!("REVOKE CONNECT ON DATABASE {db} FROM PUBLIC"),
        format!("GRANT CONNECT ON DATABASE {db} TO {user}"),
    ] {
        su.batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", common::message(&e)));
    }
    let client = superuser_in(&db).await;
    client
        .batch_execute(&format!(
            r#"
            CREATE TABLE databases (
                name text PRIMARY KEY,
                tier text,
                max_connections integer,
                idle_timeout interval,
                row_limit bigint
            );
            GRANT SELECT ON databases TO {user};
            CREATE FUNCTION notify_pgtier() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP <> 'INSERT' THEN PERFORM pg_notify('pgtier_tenants', OLD.name); END IF;
                IF TG_OP <> 'DELETE' THEN PERFORM pg_notify('pgtier_tenants', NEW.name); END IF;
                RETURN NULL;
            END $$;
            CREATE TRIGGER databases_notify AFTER INSERT OR UPDATE OR DELETE ON databases
                FOR EACH ROW EXECUTE FUNCTION notify_pgtier();
            "#
        ))
        .await
        .unwrap_or_else(|e| panic!("control table: {}", common::message(&e)));
    Control {
        db,
        user,
        password,
        client,
    }
}

impl Control {
    /// The `[registry]` table reading this control database.
    fn table(&self, query: &str, unknown: &str, on_error: &str) -> String {
        format!(
            "[registry]\nquery = {query:?}\nuser = {:?}\npassword = {:?}\ndatabase = {:?}\n\
             cache_ttl = \"60s\"\nunknown = {unknown:?}\non_error = {on_error:?}\n",
            self.user, self.password, self.db
        )
    }

    fn default_table(&self, unknown: &str, on_error: &str) -> String {
        self.table(
            "SELECT tier, max_connections, idle_timeout, row_limit FROM databases WHERE name = $1",
            unknown,
            on_error,
        )
    }

    async fn run(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", common::message(&e)));
    }
}

/// A proxy reading the registry, once its LISTEN connection is up.
async fn registry_proxy(tables: &str) -> common::TestProxy {
    let top = "admin_listen = \"127.0.0.1:0\"\n";
    let proxy = start_proxy_from(&config_text(top, "require", tables)).await;
    let shared = proxy.handle.shared().clone();
    wait_until(
        Duration::from_secs(5),
        "the registry's LISTEN connection",
        move || shared.registry.listening(),
    )
    .await;
    proxy
}

/// `GET /metrics` of `proxy` (its operator API).
async fn metrics(proxy: &common::TestProxy) -> String {
    let addr = proxy.handle.admin_addr().expect("admin_listen is set");
    let reply = common::http::http(addr, "GET", "/metrics", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

type Held = (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
);

async fn log_in(
    proxy: &common::TestProxy,
    t: &common::Tenant,
) -> Result<Held, tokio_postgres::Error> {
    connect(proxy.addr, &t.db, &t.user, &t.password).await
}

const CREATE_FUNCTION: &str =
    "CREATE OR REPLACE FUNCTION one() RETURNS int LANGUAGE sql AS 'SELECT 1'";

/// The seed's upgrade: UPDATE the plan in the control table, and within a
/// second every instance lets a third connection in and the running
/// sessions may do what the new tier allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_lifts_the_cap_on_two_instances_within_a_second() {
    let control = control().await;
    let t = trust_tenant("upgrade");
    control
        .run(&format!(
            "INSERT INTO databases (name, tier) VALUES ('{}', 'free')",
            t.db
        ))
        .await;
    let table = control.default_table("refuse", "closed");
    let proxies = [registry_proxy(&table).await, registry_proxy(&table).await];
    let mut held = Vec::new();
    for proxy in &proxies {
        for _ in 0..2 {
            held.push(
                log_in(proxy, &t)
                    .await
                    .expect("a free tenant's two connections"),
            );
        }
        let e = log_in(proxy, &t)
            .await
            .expect_err("the free tier's third connection");
        assert_eq!(code(&e), "53300", "{e:?}");
    }
    let e = held[0]
        .0
        .batch_execute(CREATE_FUNCTION)
        .await
        .expect_err("the free tier denies functions");
    assert_eq!(code(&e), "42501", "{e:?}");

    let upgraded = Instant::now();
    control
        .run(&format!(
            "UPDATE databases SET tier = 'standard' WHERE name = '{}'",
            t.db
        ))
        .await;
    for (i, proxy) in proxies.iter().enumerate() {
        loop {
            match log_in(proxy, &t).await {
                Ok(third) => {
                    held.push(third);
                    break;
                }
                Err(e) => {
                    assert_eq!(code(&e), "53300", "{e:?}");
                    assert!(
                        upgraded.elapsed() < Duration::from_secs(1),
                        "instance {i} still caps the tenant {:?} after the upgrade",
                        upgraded.elapsed()
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    // The running session (logged in on the free tier) is lifted too.
    loop {
        match held[0].0.batch_execute(CREATE_FUNCTION).await {
            Ok(()) => break,
            Err(e) => {
                assert_eq!(code(&e), "42501", "{e:?}");
                assert!(
                    upgraded.elapsed() < Duration::from_secs(1),
                    "a running session still on the free tier's policy after {:?}",
                    upgraded.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    for proxy in &proxies {
        assert_eq!(proxy.handle.shared().limits_for(&t.db).tier, "standard");
    }

    // A downgrade keeps every running session (three per instance now).
    control
        .run(&format!(
            "UPDATE databases SET tier = 'free' WHERE name = '{}'",
            t.db
        ))
        .await;
    for proxy in &proxies {
        let shared = proxy.handle.shared().clone();
        let db = t.db.clone();
        wait_until(
            Duration::from_secs(1),
            "the downgrade reaches the instance",
            move || shared.limits_for(&db).tier == "free",
        )
        .await;
    }
    for (client, _) in &held {
        client
            .batch_execute("SELECT 1")
            .await
            .expect("a downgrade kills no running session");
    }
    for proxy in &proxies {
        let e = log_in(proxy, &t)
            .await
            .expect_err("the free tier's cap again");
        assert_eq!(code(&e), "53300", "{e:?}");
    }
}

/// A database the registry has no row for: refused as PostgreSQL refuses
/// a database that does not exist, or given the default tier; a row
/// inserted later (its trigger NOTIFYs) lets it in at once, and so does an
/// empty NOTIFY (everything changed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_database_follows_the_unknown_setting() {
    let control = control().await;
    let t = trust_tenant("unknown");
    let refusing = registry_proxy(&control.default_table("refuse", "closed")).await;
    let defaulting = registry_proxy(&control.default_table("default", "closed")).await;

    // As PostgreSQL: only an authenticated client learns that a database
    // does not exist; a wrong password hears only that.
    let s = common::scram_tenant("unknownpw");
    let e = connect(refusing.addr, &s.db, &s.user, "not-the-password")
        .await
        .expect_err("a wrong password");
    assert_eq!(code(&e), "28P01", "{e:?}");
    let e = log_in(&refusing, &s).await.expect_err("unknown = refuse");
    assert_eq!(code(&e), "3D000", "{e:?}");
    let e = log_in(&refusing, &t).await.expect_err("unknown = refuse");
    assert_eq!(code(&e), "3D000", "{e:?}");
    assert_eq!(
        common::message(&e),
        format!("database \"{}\" does not exist", t.db)
    );
    let (client, _task) = log_in(&defaulting, &t).await.expect("unknown = default");
    client.batch_execute("SELECT 1").await.unwrap();
    assert_eq!(defaulting.handle.shared().limits_for(&t.db).tier, "free");
    drop(client);

    // Known now: the INSERT's NOTIFY reaches the refusing instance.
    control
        .run(&format!(
            "INSERT INTO databases (name, tier) VALUES ('{}', 'standard')",
            t.db
        ))
        .await;
    let inserted = Instant::now();
    loop {
        match log_in(&refusing, &t).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(code(&e), "3D000", "{e:?}");
                assert!(inserted.elapsed() < Duration::from_secs(1), "still unknown");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert_eq!(refusing.handle.shared().limits_for(&t.db).tier, "standard");

    // Unknown again without its own NOTIFY (the trigger is off), then an
    // empty payload: everything is read again.
    control
        .run(&format!(
            "ALTER TABLE databases DISABLE TRIGGER databases_notify; \
             DELETE FROM databases WHERE name = '{}'; \
             ALTER TABLE databases ENABLE TRIGGER databases_notify",
            t.db
        ))
        .await;
    log_in(&refusing, &t)
        .await
        .expect("the cached row stands until told");
    control.run("NOTIFY pgtier_tenants").await;
    let notified = Instant::now();
    loop {
        match log_in(&refusing, &t).await {
            Err(e) if code(&e) == "3D000" => break,
            other => {
                assert!(
                    notified.elapsed() < Duration::from_secs(1),
                    "an empty NOTIFY did not reach the instance: {:?}",
                    other.map(|_| ())
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The registry cannot be read (its table renamed away): a tenant already
/// cached keeps its row (sessions and new logins), and one that is not
/// follows `on_error`: refused with 57P03, or let in with the file's limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_down_keeps_cached_tenants_and_follows_on_error() {
    let control = control().await;
    let cached = trust_tenant("cached");
    let uncached = trust_tenant("uncached");
    control
        .run(&format!(
            "INSERT INTO databases (name, tier) VALUES ('{}', 'standard'), ('{}', 'standard')",
            cached.db, uncached.db
        ))
        .await;
    let closed = registry_proxy(&control.default_table("refuse", "closed")).await;
    let open = registry_proxy(&control.default_table("refuse", "open")).await;
    let mut sessions = Vec::new();
    for proxy in [&closed, &open] {
        sessions.push(log_in(proxy, &cached).await.expect("a known tenant"));
        // The operator sees the registry heard and read, without errors.
        let metrics = metrics(proxy).await;
        assert_eq!(
            common::http::sample(&metrics, "pgtier_registry_listening", &[]),
            Some(1.0),
            "{metrics}"
        );
        assert!(
            common::http::sample(&metrics, "pgtier_registry_cached_tenants", &[])
                .is_some_and(|n| n >= 1.0),
            "{metrics}"
        );
        assert_eq!(
            common::http::sample(&metrics, "pgtier_registry_errors_total", &[]),
            Some(0.0),
            "{metrics}"
        );
    }
    control
        .run("ALTER TABLE databases RENAME TO databases_gone; NOTIFY pgtier_tenants")
        .await;
    for proxy in [&closed, &open] {
        // The NOTIFY made it read the live tenant's row again, and fail.
        let shared = proxy.handle.shared().clone();
        wait_until(
            Duration::from_secs(2),
            "the registry error is seen",
            move || {
                shared
                    .registry
                    .last_error()
                    .is_some_and(|e| e.contains("databases") && e.contains("does not exist"))
            },
        )
        .await;
        assert_eq!(
            proxy.handle.shared().limits_for(&cached.db).tier,
            "standard"
        );
        let metrics = metrics(proxy).await;
        assert!(
            common::http::sample(&metrics, "pgtier_registry_errors_total", &[])
                .is_some_and(|n| n >= 1.0),
            "the failed read is counted: {metrics}"
        );
    }
    for (client, _) in &sessions {
        client
            .batch_execute("SELECT 1")
            .await
            .expect("running sessions go on");
    }
    for proxy in [&closed, &open] {
        let (client, _task) = log_in(proxy, &cached)
            .await
            .expect("a cached tenant logs in while the registry is down");
        client
            .batch_execute(CREATE_FUNCTION)
            .await
            .expect("with its cached tier");
    }
    let e = log_in(&closed, &uncached)
        .await
        .expect_err("on_error = closed refuses an uncached tenant");
    assert_eq!(code(&e), "57P03", "{e:?}");
    assert!(
        common::message(&e).contains(&format!("database \"{}\"", uncached.db)),
        "{e:?}"
    );
    let (client, _task) = log_in(&open, &uncached)
        .await
        .expect("on_error = open lets an uncached tenant in");
    assert_eq!(
        open.handle.shared().limits_for(&uncached.db).tier,
        "free",
        "with the file's tier"
    );
    drop(client);

    // Back: the renamed table is found again at the next login.
    control
        .run("ALTER TABLE databases_gone RENAME TO databases")
        .await;
    let (_client, _task) = log_in(&closed, &uncached)
        .await
        .expect("the registry is back");
}

/// A query whose columns do not fit: the error names the column, and a
/// tenant the registry cannot be read for is refused (on_error = closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_columns_give_an_error_naming_the_column() {
    let control = control().await;
    let t = trust_tenant("cols");
    control
        .run(&format!(
            "INSERT INTO databases (name, tier, max_connections) VALUES ('{}', 'gold', 3)",
            t.db
        ))
        .await;
    let cases = [
        (
            "SELECT tier, max_connections AS max_conections FROM databases WHERE name = $1",
            "column \"max_conections\" of registry.query is not a tenant key",
        ),
        (
            "SELECT max_connections::numeric AS max_connections FROM databases WHERE name = $1",
            "column \"max_connections\" of registry.query has type numeric",
        ),
        (
            "SELECT max_connections::text AS max_connections FROM databases WHERE name = $1",
            "column \"max_connections\": invalid type: string \"3\"",
        ),
        (
            "SELECT tier FROM databases WHERE name = $1",
            "column \"tier\" for database",
        ),
        (
            "SELECT tier, tier FROM databases WHERE name = $1",
            "column \"tier\" appears twice",
        ),
    ];
    for (query, expected) in cases {
        let proxy = registry_proxy(&control.table(query, "refuse", "closed")).await;
        let e = log_in(&proxy, &t).await.expect_err(query);
        assert_eq!(code(&e), "57P03", "{query}: {e:?}");
        // What the tenant is told names no column (that is the operator's).
        assert!(!common::message(&e).contains("column \""), "{e:?}");
        let error = proxy
            .handle
            .shared()
            .registry
            .last_error()
            .unwrap_or_default();
        assert!(error.contains(expected), "{query}: {error}");
    }
}

/// Resident memory of this process (the proxy runs in it), in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// CPU time this process has used (user + system), from /proc.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

/// The numbers in the README's "Tenants from a control-plane table":
/// 100,000 tenants in the registry; login latency on a cache miss and a
/// hit, memory per cached tenant, and a storm of 10,000 NOTIFYs.
/// `cargo test --release --test registry -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it with --ignored --nocapture"]
async fn scale_with_100000_tenants() {
    const TENANTS: usize = 100_000;
    let control = control().await;
    let t = trust_tenant("scale");
    control
        .run(&format!(
            "ALTER TABLE databases DISABLE TRIGGER databases_notify; \
             INSERT INTO databases (name, tier, max_connections) \
               SELECT 'tenant_' || i, CASE WHEN i % 10 = 0 THEN 'standard' ELSE 'free' END, \
                      CASE WHEN i % 7 = 0 THEN 5 END \
               FROM generate_series(1, {TENANTS}) i; \
             INSERT INTO databases (name, tier) VALUES ('{}', 'free'); \
             ALTER TABLE databases ENABLE TRIGGER databases_notify; ANALYZE databases",
            t.db
        ))
        .await;
    let proxy = registry_proxy(&control.default_table("refuse", "closed")).await;
    let shared = proxy.handle.shared().clone();

    // Whole logins through the proxy (TLS, SCRAM or trust, the cluster's
    // backend), with the tenant's row looked up (miss) or cached (hit).
    let (mut miss, mut hit) = (Vec::new(), Vec::new());
    for round in 0..60 {
        let cold = round % 2 == 0;
        if cold {
            shared.registry.invalidate(&t.db);
        }
        let started = Instant::now();
        let (client, _task) = log_in(&proxy, &t).await.expect("login");
        let took = started.elapsed();
        drop(client);
        if round >= 2 {
            if cold {
                miss.push(took)
            } else {
                hit.push(took)
            }
        }
    }
    println!(
        "login through the proxy: cache miss p50 {:?} p90 {:?}; cache hit p50 {:?} p90 {:?}",
        percentile(&mut miss, 0.5),
        percentile(&mut miss, 0.9),
        percentile(&mut hit, 0.5),
        percentile(&mut hit, 0.9)
    );

    // The registry's part alone, for all 100,000 (8 logins at a time).
    let config = shared.config();
    let tls = shared.cluster_tls();
    let before = rss();
    let started = Instant::now();
    let names: Vec<String> = (1..=TENANTS).map(|i| format!("tenant_{i}")).collect();
    let lookups = {
        use futures_util::StreamExt;
        let (shared, config, tls) = (&shared, &config, &tls);
        futures_util::stream::iter(names.iter())
            .map(|name| async move {
                let started = Instant::now();
                shared
                    .registry
                    .resolve(name, config, tls)
                    .await
                    .expect("lookup");
                started.elapsed()
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await
    };
    let all_misses = started.elapsed();
    let mut lookups = lookups;
    let grown = rss().saturating_sub(before);
    let started = Instant::now();
    let mut hits = Vec::with_capacity(TENANTS);
    for name in &names {
        let one = Instant::now();
        shared
            .registry
            .resolve(name, &config, &tls)
            .await
            .expect("hit");
        hits.push(one.elapsed());
    }
    let all_hits = started.elapsed();
    println!(
        "registry lookups, {TENANTS} tenants: misses in {all_misses:?} (8 at a time: p50 {:?}, p99 {:?}), \
         hits in {all_hits:?} (p50 {:?}, p99 {:?})",
        percentile(&mut lookups, 0.5),
        percentile(&mut lookups, 0.99),
        percentile(&mut hits, 0.5),
        percentile(&mut hits, 0.99),
    );
    println!(
        "memory: {} cached, resident set grew {:.1} MiB, {} bytes per cached tenant",
        shared.registry.len(),
        grown as f64 / 1048576.0,
        grown / TENANTS as u64
    );

    // A storm: 10,000 tenants changed in one transaction (delivered at
    // commit, all at once), while a tenant logs in.
    let cpu_before = cpu();
    let started = Instant::now();
    control
        .run("SELECT pg_notify('pgtier_tenants', 'tenant_' || i) FROM generate_series(1, 10000) i")
        .await;
    let registry = shared.clone();
    wait_until(Duration::from_secs(30), "the storm is applied", move || {
        registry.registry.len() <= TENANTS + 1 - 10_000
    })
    .await;
    let applied = started.elapsed();
    let storm_cpu = cpu().saturating_sub(cpu_before);
    let mut during = Vec::new();
    control
        .run("SELECT pg_notify('pgtier_tenants', 'tenant_' || i) FROM generate_series(10001, 20000) i")
        .await;
    for _ in 0..10 {
        let started = Instant::now();
        let (client, _task) = log_in(&proxy, &t).await.expect("login during a storm");
        during.push(started.elapsed());
        drop(client);
    }
    println!(
        "NOTIFY storm of 10,000: applied {applied:?} after the commit, {storm_cpu:?} of CPU; \
         logins during a second storm p50 {:?}",
        percentile(&mut during, 0.5)
    );
}

/// The inactive-database workflow from the control plane: a `suspended`
/// column in the registry suspends the tenant on the proxy (its session
/// closed with 57P01, logins refused with 55000 and the row's message),
/// and clearing it restores logins, each within a second of the UPDATE.
#[tokio::test]
async fn a_suspension_in_the_registry_closes_sessions_and_lifting_it_restores_logins() {
    let control = control().await;
    control
        .run(
            "ALTER TABLE databases ADD COLUMN suspended boolean, ADD COLUMN suspended_message text",
        )
        .await;
    let t = trust_tenant("reg_susp");
    control
        .run(&format!(
            "INSERT INTO databases (name, tier, suspended) VALUES ('{}', 'free', false)",
            t.db
        ))
        .await;
    let proxy = registry_proxy(&control.table(
        "SELECT tier, suspended, suspended_message FROM databases WHERE name = $1",
        "default",
        "closed",
    ))
    .await;
    let (client, conn) = log_in(&proxy, &t)
        .await
        .expect("a login before the suspension");
    client.simple_query("SELECT 1").await.unwrap();

    control
        .run(&format!(
            "UPDATE databases SET suspended = true, suspended_message = 'database \"{{database}}\" was idle for 30 days' WHERE name = '{}'",
            t.db
        ))
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(2), conn)
        .await
        .expect("the running session was closed within a second or so")
        .expect("the connection task");
    let e = ended.expect_err("closed with an error");
    assert_eq!(code(&e), "57P01", "{e}");
    let Err(e) = log_in(&proxy, &t).await else {
        panic!("a login while suspended was let in");
    };
    assert_eq!(code(&e), "55000");
    assert_eq!(
        e.as_db_error().map(|d| d.message().to_owned()).as_deref(),
        Some(format!("database \"{}\" was idle for 30 days", t.db).as_str())
    );

    control
        .run(&format!(
            "UPDATE databases SET suspended = false WHERE name = '{}'",
            t.db
        ))
        .await;
    let lifted = Instant::now();
    loop {
        match log_in(&proxy, &t).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(code(&e), "55000", "{e}");
                assert!(
                    lifted.elapsed() < Duration::from_secs(1),
                    "still suspended {:?} after the UPDATE",
                    lifted.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
