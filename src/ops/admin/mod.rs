//! The operator API on `admin_listen`: health, tenants, disconnects,
//! suspensions, reload and Prometheus metrics, as small JSON endpoints.
//!
//! It shares nothing with the data path but [`Shared`]:
//! every answer is read from the same atomics the sessions update, so
//! serving it costs the proxy nothing while nobody asks. It binds with the
//! proxy (so a taken port fails the start, not a later request) and stops
//! when the proxy has stopped; while the proxy drains it keeps answering,
//! so that `/health` can say 503.
//!
//! This file holds what every endpoint shares: binding, serving and
//! stopping, the routes, the bearer-token check and the JSON error body.
//! The handlers live by what they act on: `tenants` (views, lists,
//! disconnects), `suspensions` (suspend, resume, and the state file they
//! write) and `instance` (health, fleet, reload, metrics).

mod instance;
mod suspensions;
mod tenants;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::runtime::shared::Shared;

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
        .route("/tenants", get(tenants::list_tenants))
        .route("/tenants/{name}", get(tenants::one_tenant))
        .route("/tenants/{name}/disconnect", post(tenants::disconnect))
        .route("/tenants/{name}/suspend", post(suspensions::suspend))
        .route("/tenants/{name}/resume", post(suspensions::resume))
        .route("/reload", post(instance::reload))
        .route("/fleet", get(instance::fleet))
        .route("/metrics", get(instance::metrics))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            require_token,
        ));
    Router::new()
        .route("/health", get(instance::health))
        .merge(guarded)
        .with_state(shared)
}

/// A JSON error body with `status`.
pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
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
