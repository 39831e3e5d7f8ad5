//! Measures tenants' rows on the cluster: the live rows of every table (and
//! populated materialized view) in the tenant's database outside
//! `pg_catalog`, `information_schema` and `pg_toast`, counted exactly, not
//! estimated; plus what a count cannot reach, so that the tenant cannot
//! hide rows from it:
//!
//! - large objects (`pg_largeobject`, in `pg_catalog`): one row each, plus
//!   one per 2 KiB page of data;
//! - temporary tables, which only their own session can read: one row per
//!   8 KiB page they occupy (the cluster's file size, which needs no access
//!   to the other session's buffers);
//! - a table the tenant holds locked (a count would wait on it): the
//!   cluster's statistics for it (`n_live_tup`, `reltuples`, `relpages`:
//!   the greatest), which need no lock;
//! - rows row-level security would hide: counted with `row_security = off`,
//!   so a policy makes the count fail (and the tenant unmeasurable) rather
//!   than read low.
//!
//! With the rows (or alone, for a tenant with a storage limit and no row
//! limit) it takes the database's size, `pg_database_size`, for the
//! storage limit ([`crate::rules::storage`]): file sizes, no table lock.
//!
//! A measurement that fails leaves the tenant *unmeasurable*; after a grace
//! it counts as over its limit ([`crate::rules::RowCount::unmeasurable`]).
//!
//! Counting stays cheap however large a tenant grows: each table is
//! counted at most up to the remaining budget + 1 (a `LIMIT`ed subquery),
//! so a tenant with ten million rows costs no more than one just over its
//! limit; a tenant is measured only when asked for (its first login after
//! start, a statement whose effect the tags do not tell) or when it wrote
//! and `[quota] interval` has passed since its last measurement; at most
//! one measurement per tenant runs at a time, and [`MAX_CONCURRENT`]
//! across the proxy.
//!
//! The auditor logs in as `[quota] user` with a real client library
//! (tokio-postgres, TLS when `cluster.tls` says so), never through the
//! proxy's own framing, and keeps a few idle connections per database for
//! the next measurement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::backend::control::{self, Login};
use crate::config::Config;
use crate::limits::tenants::{unix_now, Tenant};
use crate::rules::{log_crossing, log_storage_crossing, Unmeasurable};
use crate::runtime::shared::Shared;
use crate::runtime::shutdown::Stage;

/// Measurements running at once across the proxy.
pub const MAX_CONCURRENT: usize = 4;
/// How often the auditor looks for tenants that are due.
const TICK: Duration = Duration::from_secs(1);
/// Idle auditor connections kept for reuse, all databases together, and
/// how long each is kept.
const MAX_IDLE_CONNECTIONS: usize = 16;
const IDLE_CONNECTION_TTL: Duration = Duration::from_secs(60);
/// A measurement never waits long on a lock (a tenant's ALTER TABLE in
/// progress): it gives up and is tried again later.
const LOCK_TIMEOUT: &str = "2s";
const STATEMENT_TIMEOUT: &str = "60s";

/// The tables that hold a tenant's rows, and whether each is another
/// session's temporary table (which only its size can measure).
const TABLES: &str = "SELECT c.oid, n.nspname, c.relname, c.relpersistence = 't' \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE (c.relkind = 'r' OR (c.relkind = 'm' AND c.relispopulated)) \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
       AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%' \
     ORDER BY c.oid";
/// A locked table's rows as the statistics say (no lock needed).
const STATISTICS: &str = "SELECT greatest(pg_catalog.pg_stat_get_live_tuples(c.oid), \
     c.reltuples::bigint, c.relpages::bigint) FROM pg_catalog.pg_class c WHERE c.oid = $1";
/// A temporary table's rows: its statistics (which trail its session),
/// and never fewer than one per 8 KiB page it occupies (heap and TOAST).
const TEMPORARY: &str = "SELECT greatest(pg_catalog.pg_stat_get_live_tuples($1::oid), \
     pg_catalog.pg_table_size($1::oid) / 8192)";
/// PostgreSQL's SQLSTATE for a lock not granted within `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Serves measurement requests and the periodic re-measurements until
/// shutdown closes sessions. Does nothing without `[quota]`.
pub async fn run(shared: Arc<Shared>) {
    let Some(mut requests) = shared.take_audit_requests() else {
        return;
    };
    let auditor = Arc::new(Auditor {
        shared: Arc::clone(&shared),
        idle: Mutex::new(HashMap::new()),
        running: Semaphore::new(MAX_CONCURRENT),
    });
    if shared.config().quota.is_some() {
        tokio::spawn(Arc::clone(&auditor).check_credentials());
    }
    let mut shutdown = shared.subscribe_shutdown();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.reached(Stage::Closing) => return,
            request = requests.recv() => match request {
                Some(tenant) => {
                    tokio::spawn(Arc::clone(&auditor).measure(tenant));
                }
                None => return,
            },
            _ = tick.tick() => auditor.queue_due(),
        }
    }
}

struct Auditor {
    shared: Arc<Shared>,
    /// Idle connections by database, with when they were last used.
    idle: Mutex<HashMap<String, Vec<(tokio_postgres::Client, Instant)>>>,
    running: Semaphore,
}

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
enum AuditError {
    #[error("no [quota] table in the configuration")]
    NotConfigured,
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("timed out")]
    Timeout,
    #[error("could not log in: {0}")]
    Connect(tokio_postgres::Error),
}

impl AuditError {
    /// What the operator sees as the reason.
    fn reason(&self) -> Unmeasurable {
        match self {
            AuditError::NotConfigured | AuditError::Connect(_) => Unmeasurable::Connect,
            AuditError::Timeout => Unmeasurable::Timeout,
            AuditError::Postgres(e) => match e.code().map(|c| c.code()) {
                Some("42501") => Unmeasurable::Permission,
                Some(LOCK_NOT_AVAILABLE) => Unmeasurable::Lock,
                Some("57014") => Unmeasurable::Timeout,
                _ if e.is_closed() => Unmeasurable::Connect,
                _ => Unmeasurable::Other,
            },
        }
    }
}

impl Auditor {
    /// Queues every tenant that is due (see [`crate::rules::RowCount::due`]).
    fn queue_due(&self) {
        let config = self.shared.config();
        let Some(quota) = &config.quota else {
            return;
        };
        let now = unix_now();
        let interval = quota.interval.as_secs().max(1);
        for tenant in self.shared.tenants.all() {
            let limits = self.shared.limits_for(tenant.name());
            // A suspended database has no sessions to change its rows, and
            // the auditor's idle connection in it would stand in the way
            // of the DROP DATABASE that usually follows: closed, not used.
            if crate::limits::suspend::is_suspended(&self.shared, tenant.name(), &limits) {
                if let Ok(mut idle) = self.idle.lock() {
                    idle.remove(tenant.name());
                }
                continue;
            }
            if (limits.row_limit > 0 || limits.storage_limit > 0) && tenant.rows.due(now, interval)
            {
                self.shared.audits.request(&tenant);
            }
        }
    }

    async fn measure(self: Arc<Self>, tenant: Arc<Tenant>) {
        let Ok(_running) = self.running.acquire().await else {
            tenant.rows.release();
            return;
        };
        let config = self.shared.config();
        let limits = self.shared.limits_for(tenant.name());
        let (limit, storage_limit) = (limits.row_limit, limits.storage_limit);
        let Some(quota) = config
            .quota
            .as_ref()
            .filter(|_| limit > 0 || storage_limit > 0)
        else {
            // The limit (or the quota) went away since the request.
            tenant.rows.release();
            return;
        };
        // In a fleet, one instance measures a tenant at a time; the others
        // adopt what it publishes.
        let fleet = &self.shared.fleet;
        if let Some(store) = fleet.store() {
            let locked = store.lock_measurement(&fleet.instance, tenant.name()).await;
            fleet.noted(&locked);
            if let Ok(false) = locked {
                tenant.rows.release();
                return;
            }
        }
        tenant.rows.begin_measurement();
        let started = Instant::now();
        match self.count(&config, tenant.name(), limit).await {
            Ok((counted, bytes)) => {
                // The size first: the figures are in place before the
                // measurement counts as finished.
                let storage_crossing = tenant.rows.set_bytes(bytes, storage_limit);
                let crossing = match counted {
                    Some((rows, Exactness::Exact)) => {
                        tenant.rows.finish_measurement(rows, true, limit)
                    }
                    Some((rows, Exactness::LowerBound)) => {
                        tenant.rows.finish_measurement(rows, false, limit)
                    }
                    Some((rows, Exactness::Estimate)) => tenant.rows.finish_estimate(rows, limit),
                    None => {
                        tenant.rows.finish_size_only();
                        None
                    }
                };
                let figure = tenant.rows.figure();
                let rows = figure.map(|f| (f.rows, f.exact));
                if let Some(store) = fleet.store() {
                    let published = store
                        .publish_rows(&fleet.instance, tenant.name(), rows, bytes, unix_now())
                        .await;
                    fleet.noted(&published);
                }
                tracing::debug!(
                    tenant = tenant.name(),
                    rows = rows.map(|r| r.0),
                    exact = rows.is_some_and(|r| r.1),
                    bytes,
                    took_ms = started.elapsed().as_millis() as u64,
                    "tenant measured"
                );
                log_crossing(&tenant, crossing, limit);
                log_storage_crossing(&tenant, storage_crossing, storage_limit);
            }
            Err(e) => {
                // At most one line per tenant per interval: failed
                // measurements are retried that often.
                tracing::warn!(
                    tenant = tenant.name(),
                    user = quota.user,
                    reason = e.reason().as_str(),
                    error = %e,
                    "could not measure the tenant: statements that add rows (or, under a storage limit, can grow the database) are refused until it can be; trying again later"
                );
                tenant
                    .rows
                    .abandon_measurement(quota.interval.as_secs().max(1), e.reason());
            }
        }
    }

    /// Counts `database`'s rows, stopping past `limit` (`(rows, exact)`;
    /// not counted with no row limit), and takes its size in bytes.
    async fn count(
        &self,
        config: &Config,
        database: &str,
        limit: u64,
    ) -> Result<(Option<(i64, Exactness)>, u64), AuditError> {
        let client = self.connection(config, database).await?;
        let deadline = config.cluster.connect_timeout + Duration::from_secs(60);
        let measure = async {
            let rows = match limit {
                0 => None,
                _ => Some(count_rows(&client, limit).await?),
            };
            Ok::<_, tokio_postgres::Error>((rows, database_size(&client).await?))
        };
        let counted = tokio::time::timeout(deadline, measure)
            .await
            .map_err(|_| AuditError::Timeout)
            .and_then(|r| r.map_err(AuditError::from));
        if counted.is_ok() {
            self.put_back(database, client);
        }
        counted
    }

    async fn connection(
        &self,
        config: &Config,
        database: &str,
    ) -> Result<tokio_postgres::Client, AuditError> {
        if let Ok(mut idle) = self.idle.lock() {
            if let Some(list) = idle.get_mut(database) {
                while let Some((client, since)) = list.pop() {
                    if !client.is_closed() && since.elapsed() < IDLE_CONNECTION_TTL {
                        return Ok(client);
                    }
                }
            }
        }
        let quota = config.quota.as_ref().ok_or(AuditError::NotConfigured)?;
        let login = Login {
            user: &quota.user,
            password: quota.password.as_deref(),
            database,
            application_name: "pgtier quota",
        };
        control::connect(&config.cluster, &login, &self.shared.cluster_tls())
            .await
            .map_err(AuditError::Connect)
    }

    fn put_back(&self, database: &str, client: tokio_postgres::Client) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        idle.retain(|_, list| {
            list.retain(|(c, since)| !c.is_closed() && since.elapsed() < IDLE_CONNECTION_TTL);
            !list.is_empty()
        });
        let held: usize = idle.values().map(Vec::len).sum();
        if held < MAX_IDLE_CONNECTIONS {
            idle.entry(database.to_owned())
                .or_default()
                .push((client, Instant::now()));
        }
    }

    /// Logs in once at start, so that a wrong `[quota]` shows in the log
    /// right away rather than at the first tenant's login; and warns when
    /// the role cannot read every table.
    async fn check_credentials(self: Arc<Self>) {
        let config = self.shared.config();
        let Some(quota) = &config.quota else {
            return;
        };
        let login = Login {
            user: &quota.user,
            password: quota.password.as_deref(),
            database: &quota.database,
            application_name: "pgtier quota",
        };
        let client = match control::connect(&config.cluster, &login, &self.shared.cluster_tls())
            .await
        {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(
                    user = quota.user,
                    database = quota.database,
                    error = %e,
                    "the quota auditor cannot log in: row limits cannot be measured (see the README's [quota] section)"
                );
                return;
            }
        };
        match role_shortcomings(&client).await {
            Ok(missing) if missing.is_empty() => {
                tracing::info!(user = quota.user, "quota auditor ready")
            }
            Ok(missing) => tracing::warn!(
                user = quota.user,
                missing = missing.join(", "),
                "the quota role lacks what measuring needs: tenants it cannot measure have statements that add rows refused (see the README's [quota] section)"
            ),
            Err(e) => tracing::warn!(error = %e, "could not check the quota role's privileges"),
        }
    }
}

/// What the quota role lacks of what measuring needs: reading every table
/// (`pg_read_all_data` or superuser) and bypassing row-level security
/// (`BYPASSRLS` or superuser).
async fn role_shortcomings(
    client: &tokio_postgres::Client,
) -> Result<Vec<&'static str>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT r.rolsuper OR pg_catalog.pg_has_role(current_user, 'pg_read_all_data', 'MEMBER'), \
                    r.rolsuper OR r.rolbypassrls \
             FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await?;
    let mut missing = Vec::new();
    if !row.get::<_, Option<bool>>(0).unwrap_or(false) {
        missing.push("membership in pg_read_all_data");
    }
    if !row.get::<_, Option<bool>>(1).unwrap_or(false) {
        missing.push("BYPASSRLS");
    }
    Ok(missing)
}

/// How far a measurement's figure can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exactness {
    /// Every row counted.
    Exact,
    /// Counting stopped past the limit: at least this many.
    LowerBound,
    /// Some tables only estimated (temporary tables, tables held locked).
    Estimate,
}

impl Exactness {
    /// Counting stopped past the budget (an estimate stays one).
    fn stopped(&mut self) {
        if *self == Exactness::Exact {
            *self = Exactness::LowerBound;
        }
    }
}

/// Counts the rows of every table visible to `client`'s database, each at
/// most up to the remaining budget + 1, and the large objects, in one
/// read-only transaction with row-level security off.
async fn count_rows(
    client: &tokio_postgres::Client,
    limit: u64,
) -> Result<(i64, Exactness), tokio_postgres::Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX - 1);
    client
        .batch_execute(&format!(
            "BEGIN READ ONLY; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; \
             SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'; \
             SET LOCAL row_security = off"
        ))
        .await?;
    let tables = client.query(TABLES, &[]).await?;
    let mut total: i64 = 0;
    let mut exactness = Exactness::Exact;
    let budget_left = |total: i64| limit.saturating_add(1).saturating_sub(total);
    for table in tables {
        let budget = budget_left(total);
        if budget <= 0 {
            exactness.stopped();
            break;
        }
        let oid: u32 = table.get(0);
        let schema: String = table.get(1);
        let name: String = table.get(2);
        let temporary: bool = table.get(3);
        let rows = if temporary {
            // Another session's: only its statistics and size are
            // readable.
            exactness = Exactness::Estimate;
            client.query_one(TEMPORARY, &[&oid]).await?.get::<_, i64>(0)
        } else {
            let sql = format!(
                "SELECT count(*) FROM (SELECT FROM ONLY {}.{} LIMIT {budget}) AS t",
                quote_ident(&schema),
                quote_ident(&name)
            );
            client.batch_execute("SAVEPOINT measure").await?;
            match client.query_one(&sql, &[]).await {
                Ok(row) => {
                    client.batch_execute("RELEASE SAVEPOINT measure").await?;
                    row.get(0)
                }
                Err(e) if e.code().map(|c| c.code()) == Some(LOCK_NOT_AVAILABLE) => {
                    // Held locked: its statistics, which need no lock.
                    client
                        .batch_execute("ROLLBACK TO SAVEPOINT measure; RELEASE SAVEPOINT measure")
                        .await?;
                    exactness = Exactness::Estimate;
                    client.query_one(STATISTICS, &[&oid]).await?.get(0)
                }
                Err(e) => return Err(e),
            }
        };
        total = total.saturating_add(rows);
        if rows >= budget {
            // Counting stopped here: the tenant is over, by at least this.
            exactness.stopped();
            break;
        }
    }
    let budget = budget_left(total);
    if budget > 0 {
        // Large objects: one row each, and one per 2 KiB page of data.
        let sql = format!(
            "SELECT (SELECT count(*) FROM (SELECT FROM pg_catalog.pg_largeobject_metadata LIMIT {budget}) m) \
                  + (SELECT count(*) FROM (SELECT FROM pg_catalog.pg_largeobject LIMIT {budget}) p)"
        );
        let objects: i64 = client.query_one(&sql, &[]).await?.get(0);
        total = total.saturating_add(objects);
        if objects >= budget {
            exactness.stopped();
        }
    }
    client.batch_execute("COMMIT").await?;
    Ok((total, exactness))
}

/// The database's size on disk as PostgreSQL reports it: every relation's
/// files (tables, indexes, TOAST, the free space and visibility maps,
/// temporary tables' too) and large objects. It reads file sizes and takes
/// no table lock, so no tenant's lock can hold it off.
async fn database_size(client: &tokio_postgres::Client) -> Result<u64, tokio_postgres::Error> {
    let size: i64 = client
        .query_one(
            "SELECT pg_catalog.pg_database_size(pg_catalog.current_database())",
            &[],
        )
        .await?
        .get(0);
    Ok(u64::try_from(size).unwrap_or(0))
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::quote_ident;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("users"), "\"users\"");
        assert_eq!(quote_ident("Odd \"Name\""), "\"Odd \"\"Name\"\"\"");
    }
}
