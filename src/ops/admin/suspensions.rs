//! `/tenants/{name}/suspend` and `/tenants/{name}/resume`: the API's own
//! suspensions (`crate::limits::suspend`), taken by the fleet's store
//! first when there is one, so that an answer of yes holds on every
//! instance, and written to the state file at once, so that it survives a
//! crash.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::error;
use crate::limits::tenants::unix_now;
use crate::runtime::shared::Shared;

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
pub(super) async fn suspend(
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
pub(super) async fn resume(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Response {
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
