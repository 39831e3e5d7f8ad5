//! The operator API on `admin_listen`: health, tenants, disconnects,
//! suspensions, reload and Prometheus metrics, as small JSON endpoints.
//!
//! It shares nothing with the data path but [`Shared`]:
//! every answer is read from the same atomics the sessions update, so
//! serving it costs the proxy nothing while nobody asks. It binds with the
//! proxy (so a taken port fails the start, not a later request) and stops
//! when the proxy has stopped; while the proxy drains it keeps answering,
//! so that `/health` can say 503.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::limits::tenants::{unix_now, Tenant};
use crate::rules::grace_s;
use crate::runtime::shared::Shared;
use crate::runtime::shutdown::Stage;
use crate::session::live::KillReason;

/// How long in-flight admin requests get to finish once the proxy stopped.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the admin address (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The running API; [`stop`](AdminServer::stop) ends it.
#[derive(Debug)]
pub struct AdminServer {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Serves the API on `listener` for the proxy whose state is `shared`.
pub fn spawn(listener: TcpListener, shared: Arc<Shared>) -> AdminServer {
    let (stop, stopped) = oneshot::channel::<()>();
    let addr = listener.local_addr().ok();
    let app = router(shared);
    let task = tokio::spawn(async move {
        tracing::info!(admin = ?addr, "operator API listening");
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "operator API failed");
        }
    });
    AdminServer { stop, task }
}

impl AdminServer {
    /// Stops accepting, lets requests in flight finish (briefly), and returns.
    pub async fn stop(self) {
        let AdminServer { stop, mut task } = self;
        let _ = stop.send(());
        if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// The routes; `/health` is open, everything else may need the token.
pub fn router(shared: Arc<Shared>) -> Router {
    let guarded = Router::new()
        .route("/tenants", get(list_tenants))
        .route("/tenants/{name}", get(one_tenant))
        .route("/tenants/{name}/disconnect", post(disconnect))
        .route("/tenants/{name}/suspend", post(suspend))
        .route("/tenants/{name}/resume", post(resume))
        .route("/reload", post(reload))
        .route("/fleet", get(fleet))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(guarded)
        .with_state(shared)
}

/// A JSON error body with `status`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct Body {
        error: String,
    }
    (
        status,
        Json(Body {
            error: message.into(),
        }),
    )
        .into_response()
}

/// Compares in time independent of where the inputs differ, so the token
/// cannot be guessed byte by byte from response times. (The length is not
/// secret enough to hide.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// With `admin_token` set (read per request, so a reload can rotate it),
/// requires `Authorization: Bearer <token>`.
async fn require_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let config = shared.config();
    if let Some(token) = config.admin_token.as_deref() {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let ok = presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes()));
        if !ok {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <admin_token>)",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

/// `200 ok` while accepting connections, `503` once draining for shutdown.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    match shared.shutdown_stage() {
        Stage::Running => (StatusCode::OK, "ok\n").into_response(),
        Stage::Draining | Stage::Closing => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
        }
    }
}

/// One tenant as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TenantView {
    pub name: String,
    pub tier: String,
    /// Sessions holding a slot now.
    pub connections: u32,
    /// 0 = unlimited.
    pub max_connections: u32,
    /// 0 = never.
    pub idle_timeout_s: u64,
    pub idle_in_transaction_timeout_s: u64,
    /// RFC 3339 time of the last login or query; null if never seen.
    pub last_activity: Option<String>,
    pub rejected_total: u64,
    pub sessions_total: u64,
    /// Rows the tenant's tables hold as far as the proxy knows (the last
    /// measurement plus committed changes since); null until measured.
    pub rows: Option<i64>,
    /// False when `rows` is a lower bound (counting stops past the limit).
    pub rows_exact: bool,
    /// 0 = unlimited.
    pub row_limit: u64,
    /// Statements that add rows are refused while this is true (over the
    /// limit, or unmeasurable past the grace).
    pub over_quota: bool,
    /// The database's size in bytes at the last measurement
    /// (`pg_database_size`); null until measured.
    #[serde(default)]
    pub storage_bytes: Option<u64>,
    /// Bytes; 0 = unlimited.
    #[serde(default)]
    pub storage_limit: u64,
    /// Statements that can grow the database are refused while this is
    /// true (over the storage limit, or unmeasurable past the grace).
    #[serde(default)]
    pub over_storage_limit: bool,
    /// Why the auditor cannot measure the tenant (`connect`, `permission`,
    /// `lock`, `timeout`, `other`; `unmeasured` when no measurement has
    /// finished yet), null when the last measurement worked.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rows_unmeasurable: Option<String>,
    /// Sessions across the whole fleet (`[fleet] store = "redis"`, when
    /// the store answered: the list asks it once for all its tenants).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fleet_connections: Option<u32>,
    /// Every login is refused and sessions are closed (`crate::limits::suspend`).
    #[serde(default)]
    pub suspended: bool,
    /// Who suspended it: `api`, `config` (its tenant or tier key), or both.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub suspended_by: Vec<String>,
    /// RFC 3339 time of the API's suspension.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub suspended_at: Option<String>,
}

fn rfc3339(unix_secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix_secs))
        .to_string()
}

fn view(shared: &Shared, name: &str, tenant: Option<&Tenant>) -> TenantView {
    let limits = shared.limits_for(name);
    let last = tenant.map(Tenant::last_activity).unwrap_or(0);
    let figure = tenant.and_then(|t| t.rows.figure());
    let suspension = crate::limits::suspend::Status::of(shared, name, &limits);
    let unmeasurable = |t: &Tenant| {
        let grace = shared.config().quota.as_ref().map(|q| grace_s(q.interval));
        grace.is_some_and(|g| t.rows.unmeasurable(unix_now(), g))
    };
    TenantView {
        name: name.to_owned(),
        tier: limits.tier,
        connections: tenant.map(Tenant::connections).unwrap_or(0),
        max_connections: limits.max_connections,
        idle_timeout_s: limits.idle_timeout.as_secs(),
        idle_in_transaction_timeout_s: limits.idle_in_transaction_timeout.as_secs(),
        last_activity: (last > 0).then(|| rfc3339(last)),
        rejected_total: tenant.map(Tenant::rejected_total).unwrap_or(0),
        sessions_total: tenant.map(Tenant::sessions_total).unwrap_or(0),
        rows: figure.map(|f| f.rows),
        rows_exact: figure.is_some_and(|f| f.exact),
        row_limit: limits.row_limit,
        over_quota: limits.row_limit > 0
            && (figure.is_some_and(|f| f.is_over(limits.row_limit))
                || tenant.is_some_and(unmeasurable)),
        storage_bytes: tenant.and_then(|t| t.rows.bytes()),
        storage_limit: limits.storage_limit,
        over_storage_limit: limits.storage_limit > 0
            && tenant.is_some_and(|t| {
                t.rows.storage_over(limits.storage_limit).is_some() || unmeasurable(t)
            }),
        rows_unmeasurable: (limits.row_limit > 0 || limits.storage_limit > 0)
            .then(|| {
                tenant.and_then(|t| match t.rows.failure() {
                    Some(reason) => Some(reason.as_str().to_owned()),
                    None if t.rows.figure().is_none() && t.rows.measured_at() == 0 => t
                        .rows
                        .unmeasurable(unix_now(), 0)
                        .then(|| "unmeasured".to_owned()),
                    None => None,
                })
            })
            .flatten(),
        fleet_connections: None,
        suspended: suspension.suspended(),
        suspended_by: suspension
            .sources()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        suspended_at: suspension
            .by_api
            .as_ref()
            .filter(|s| s.at > 0)
            .map(|s| rfc3339(s.at)),
    }
}

/// Every tenant seen since start (or remembered in the state file) or
/// listed in the configuration in force, by name.
fn known_tenants(shared: &Shared) -> Vec<(String, Option<Arc<Tenant>>)> {
    let mut all: std::collections::BTreeMap<String, Option<Arc<Tenant>>> = shared
        .tenants
        .all()
        .into_iter()
        .map(|t| (t.name().to_owned(), Some(t)))
        .collect();
    for name in shared.config().tenants.keys() {
        all.entry(name.clone()).or_insert(None);
    }
    for name in shared.suspensions.snapshot().into_keys() {
        all.entry(name).or_insert(None);
    }
    all.into_iter().collect()
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    /// Only tenants without activity for this long (`30d`, `12h`), never-seen
    /// ones included; tenants with an open session are never inactive.
    inactive_for: Option<String>,
}

async fn list_tenants(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ListQuery>,
) -> Response {
    let cutoff = match query.inactive_for.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(unix_now().saturating_sub(d.as_secs())),
        Some(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("inactive_for: {e} (use a duration such as 30d or 12h)"),
            )
        }
    };
    let mut views: Vec<TenantView> = known_tenants(&shared)
        .into_iter()
        .filter(|(_, t)| match (cutoff, t) {
            (None, _) => true,
            (Some(_), None) => true,
            (Some(cutoff), Some(t)) => t.connections() == 0 && t.last_activity() <= cutoff,
        })
        .map(|(name, t)| view(&shared, &name, t.as_deref()))
        .collect();
    // The fleet's counts of the whole list in one round trip (per couple
    // of thousand tenants), not one per tenant.
    if let Some(store) = shared.fleet.store() {
        let names: Vec<String> = views.iter().map(|v| v.name.clone()).collect();
        let counted = store.fleet_connections_of(&names).await;
        shared.fleet.noted(&counted);
        if let Ok(counts) = counted {
            for (view, n) in views.iter_mut().zip(counts) {
                view.fleet_connections = Some(n);
            }
        }
    }
    Json(views).into_response()
}

fn unknown_tenant(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no tenant {name:?}: not seen since start nor listed in the configuration"),
    )
}

async fn one_tenant(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let tenant = shared.tenants.get(&name);
    if tenant.is_none()
        && !shared.config().tenants.contains_key(&name)
        && !shared.suspensions.contains(&name)
    {
        return unknown_tenant(&name);
    }
    let mut view = view(&shared, &name, tenant.as_deref());
    if let Some(store) = shared.fleet.store() {
        let counted = store.fleet_connections(&name).await;
        shared.fleet.noted(&counted);
        view.fleet_connections = counted.ok();
    }
    Json(view).into_response()
}

/// This instance and the fleet it belongs to: the store, whether it
/// answers, and every live instance with what it said of itself.
async fn fleet(State(shared): State<Arc<Shared>>) -> Response {
    let fleet = &shared.fleet;
    let instances = match fleet.store() {
        Some(store) => {
            let listed = store.instances().await;
            fleet.noted(&listed);
            listed
                .map(|all| {
                    all.into_iter()
                        .map(|(id, about)| {
                            let about: serde_json::Value =
                                serde_json::from_str(&about).unwrap_or(serde_json::Value::Null);
                            serde_json::json!({ "instance": id, "about": about })
                        })
                        .collect::<Vec<_>>()
                })
                .ok()
        }
        None => None,
    };
    Json(serde_json::json!({
        "instance": fleet.instance,
        "store": if fleet.is_shared() { "redis" } else { "local" },
        "store_up": fleet.is_shared().then(|| fleet.store_up()),
        "store_errors": fleet.store_errors(),
        "instances": instances,
    }))
    .into_response()
}

/// Closes every session of the tenant with FATAL 57P01.
async fn disconnect(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    if shared.tenants.get(&name).is_none() && !shared.config().tenants.contains_key(&name) {
        return unknown_tenant(&name);
    }
    let n = shared
        .sessions
        .kill_where(Some(&name), KillReason::AdminDisconnect);
    // Its warm cluster connections go too (so that, say, the database can
    // be dropped next).
    shared.warm.clear_tenant(&name);
    tracing::info!(tenant = %name, sessions = n, "operator disconnect");
    Json(serde_json::json!({ "disconnected": n })).into_response()
}

/// The optional body of `POST /tenants/{name}/suspend`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendBody {
    /// What refused logins are told (`{database}` is replaced).
    message: Option<String>,
    hint: Option<String>,
}

/// Where an API suspension was kept, for the answer.
fn kept_in(shared: &Shared) -> &'static str {
    if shared.fleet.is_shared() {
        "fleet_store"
    } else if shared.config().state_dir.is_some() {
        "state_file"
    } else {
        "memory"
    }
}

/// Writes the state file now (a suspension must survive a crash right
/// after the API said yes); false if it could not be written.
async fn save_state(shared: &Arc<Shared>) -> bool {
    let Some(dir) = shared.config().state_dir.clone() else {
        return true;
    };
    let saving = Arc::clone(shared);
    let saved = tokio::task::spawn_blocking(move || {
        crate::ops::state::save(&dir, &saving.tenants, &saving.suspensions)
    })
    .await;
    match saved {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot write the state file");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "state writer failed");
            false
        }
    }
}

/// Suspends the tenant: refuses its logins and closes its sessions with
/// FATAL 57P01, on every instance (through the fleet's store, which must
/// answer: otherwise nothing changes and the operator is told to retry).
/// Any name PostgreSQL could open is accepted, seen or not.
async fn suspend(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = crate::limits::suspend::check_name(&name) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let body: SuspendBody = if body.iter().all(u8::is_ascii_whitespace) {
        SuspendBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                    "body: {e} (expected {{\"message\": \"…\", \"hint\": \"…\"}}, both optional)"
                ),
                )
            }
        }
    };
    for (field, text) in [("message", &body.message), ("hint", &body.hint)] {
        if let Some(text) = text {
            if let Err(e) = crate::config::check_operator_text(text) {
                return error(StatusCode::BAD_REQUEST, format!("{field}: {e}"));
            }
        }
    }
    let suspension = crate::limits::suspend::Suspension {
        message: body.message,
        hint: body.hint,
        at: unix_now(),
    };
    if let Some(store) = shared.fleet.store() {
        let record = serde_json::to_string(&suspension).unwrap_or_default();
        let written = store.suspend(&name, &record).await;
        shared.fleet.noted(&written);
        if let Err(e) = written {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the fleet store did not take the suspension ({e}); nothing changed on this \
                     instance, and the store may or may not have it: retry"
                ),
            );
        }
    }
    shared.suspensions.insert(&name, suspension);
    let n = crate::limits::suspend::close_sessions(&shared, &name);
    let saved = save_state(&shared).await;
    tracing::info!(tenant = %name, sessions = n, "tenant suspended");
    Json(serde_json::json!({
        "tenant": name,
        "suspended": true,
        "disconnected": n,
        "kept_in": kept_in(&shared),
        "state_file_written": saved,
    }))
    .into_response()
}

/// Lifts the API's suspension of the tenant, on every instance. One the
/// configuration makes stays (409 says so): the API cannot lift it, as a
/// reload cannot lift the API's.
async fn resume(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    if let Err(e) = crate::limits::suspend::check_name(&name) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    if let Some(store) = shared.fleet.store() {
        let written = store.resume(&name).await;
        shared.fleet.noted(&written);
        if let Err(e) = written {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the fleet store did not take the resumption ({e}); nothing changed on this \
                     instance, and the store may or may not have it: retry"
                ),
            );
        }
    }
    let resumed = shared.suspensions.remove(&name);
    let saved = save_state(&shared).await;
    if resumed {
        tracing::info!(tenant = %name, "tenant resumed");
    }
    if shared.config().limits_for(&name).suspended {
        return error(
            StatusCode::CONFLICT,
            format!(
                "{name:?} stays suspended by the configuration (suspended = true under \
                 [tenants.{name}] or its tier); the API lifts only its own suspensions"
            ),
        );
    }
    Json(serde_json::json!({
        "tenant": name,
        "suspended": false,
        "resumed": resumed,
        "state_file_written": saved,
    }))
    .into_response()
}

/// Re-reads the configuration file; on any error the old one stays.
async fn reload(State(shared): State<Arc<Shared>>) -> Response {
    // Reading files and parsing certificates is blocking work.
    let reloading = Arc::clone(&shared);
    match tokio::task::spawn_blocking(move || reloading.reload()).await {
        Ok(Ok(path)) => {
            Json(serde_json::json!({ "reloaded": path.display().to_string() })).into_response()
        }
        Ok(Err(message)) => {
            tracing::error!(error = %message, "reload failed; the previous configuration stays in force");
            error(StatusCode::BAD_REQUEST, message)
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload failed: {e}"),
        ),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    match crate::ops::scrape::render(&shared) {
        Ok(text) => (
            [(header::CONTENT_TYPE, crate::ops::scrape::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
