//! `/tenants`, `/tenants/{name}` and `/tenants/{name}/disconnect`: every
//! tenant the proxy knows of, shown as one [`TenantView`] assembled from
//! its configured limits, its live counters, its row and size
//! measurements and its suspension, and its sessions closed on request.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error;
use crate::limits::tenants::{unix_now, Tenant};
use crate::rules::grace_s;
use crate::runtime::shared::Shared;
use crate::session::live::KillReason;

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
pub(super) struct ListQuery {
    /// Only tenants without activity for this long (`30d`, `12h`), never-seen
    /// ones included; tenants with an open session are never inactive.
    inactive_for: Option<String>,
}

pub(super) async fn list_tenants(
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

pub(super) async fn one_tenant(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Response {
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

/// Closes every session of the tenant with FATAL 57P01.
pub(super) async fn disconnect(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Response {
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
