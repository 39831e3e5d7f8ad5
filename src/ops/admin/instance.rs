//! `/health`, `/fleet`, `/reload` and `/metrics`: what the operator asks
//! of this proxy as a whole rather than of one tenant.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error;
use crate::runtime::shared::Shared;
use crate::runtime::shutdown::Stage;

/// `200 ok` while accepting connections, `503` once draining for shutdown.
pub(super) async fn health(State(shared): State<Arc<Shared>>) -> Response {
    match shared.shutdown_stage() {
        Stage::Running => (StatusCode::OK, "ok\n").into_response(),
        Stage::Draining | Stage::Closing => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
        }
    }
}

/// This instance and the fleet it belongs to: the store, whether it
/// answers, and every live instance with what it said of itself.
pub(super) async fn fleet(State(shared): State<Arc<Shared>>) -> Response {
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

/// Re-reads the configuration file; on any error the old one stays.
pub(super) async fn reload(State(shared): State<Arc<Shared>>) -> Response {
    match shared.reload_announced().await {
        Ok(path) => {
            Json(serde_json::json!({ "reloaded": path.display().to_string() })).into_response()
        }
        Err(message) => {
            tracing::error!(error = %message, "reload failed; the previous configuration stays in force");
            error(StatusCode::BAD_REQUEST, message)
        }
    }
}

pub(super) async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
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
