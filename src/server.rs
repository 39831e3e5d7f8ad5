//! The accept loop and graceful shutdown. The state connections share
//! lives in [`crate::shared`], below this module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::config::Config;
use crate::sessions::KillReason;
use crate::shared::Shared;
use crate::shutdown::Stage;
use crate::tls::TlsError;

#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// How long, after the grace period, sessions get to say goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound, not yet running proxy.
pub struct Proxy {
    listener: TcpListener,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
}

/// A cheap handle to a running proxy, for tests, the admin API and signals.
#[derive(Clone, Debug)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
}

impl Proxy {
    /// Loads TLS material and binds the listen address.
    pub async fn bind(config: Config) -> Result<Proxy, ProxyError> {
        for warning in config.warnings() {
            tracing::warn!("{}", warning.0);
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ProxyError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let admin = match config.admin_listen {
            Some(addr) => Some(
                crate::admin::bind(addr)
                    .await
                    .map_err(|source| ProxyError::Bind { addr, source })?,
            ),
            None => None,
        };
        let shared = Shared::new(config)?;
        Ok(Proxy {
            listener,
            admin,
            shared,
        })
    }

    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle {
            shared: Arc::clone(&self.shared),
            local_addr: self
                .listener
                .local_addr()
                .unwrap_or_else(|_| self.shared.config().listen),
            admin_addr: self.admin.as_ref().and_then(|l| l.local_addr().ok()),
        }
    }

    /// Accepts connections until shutdown is asked for, then drains: waits
    /// up to `shutdown_grace` for sessions to end, closes the rest with
    /// 57P01, and returns once every connection is gone.
    pub async fn run(self) -> Result<(), ProxyError> {
        let handle = self.handle();
        let Proxy {
            listener,
            admin,
            shared,
        } = self;
        let mut shutdown = shared.subscribe_shutdown();
        tokio::spawn(crate::idle::sweep(Arc::clone(&shared)));
        tokio::spawn(crate::quota::auditor::run(Arc::clone(&shared)));
        let admin = admin.map(|l| crate::admin::spawn(l, Arc::clone(&handle.shared)));
        let state_dir = shared.config().state_dir.clone();
        let saver = state_dir
            .clone()
            .map(|dir| tokio::spawn(crate::state::save_periodically(Arc::clone(&shared), dir)));
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "accepting connections");
        loop {
            tokio::select! {
                _ = shutdown.reached(Stage::Draining) => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let open = shared.connection_opened();
                        let shared = Arc::clone(&shared);
                        // Every log line of the connection carries its
                        // client, and once known its tenant and session id.
                        let span = tracing::info_span!(
                            "session",
                            client = %peer,
                            tenant = tracing::field::Empty,
                            id = tracing::field::Empty,
                        );
                        tokio::spawn(
                            async move {
                                crate::session::serve(shared, tcp).await;
                                drop(open);
                            }
                            .instrument(span),
                        );
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        let grace = shared.config().shutdown_grace;
        tracing::info!(
            sessions = shared.sessions.len(),
            grace_s = grace.as_secs_f64(),
            "shutting down: no new connections, waiting for sessions to end"
        );
        if tokio::time::timeout(grace, shared.all_closed())
            .await
            .is_err()
        {
            shared.advance_shutdown(Stage::Closing);
            let n = shared.sessions.kill_where(None, KillReason::Shutdown);
            tracing::info!(
                sessions = n,
                "grace period over: closing remaining sessions"
            );
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, shared.all_closed()).await;
        }
        if let Some(saver) = saver {
            saver.abort();
        }
        if let Some(dir) = &state_dir {
            if let Err(e) = crate::state::save(dir, &shared.tenants) {
                tracing::warn!(error = %e, "cannot write the state file");
            }
        }
        if let Some(admin) = admin {
            admin.stop().await;
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}

impl ProxyHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the operator API listens, if `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Tells the proxy which file `POST /reload` re-reads.
    pub fn set_config_path(&self, path: impl Into<PathBuf>) {
        self.shared.set_config_path(path);
    }

    /// Begins a graceful shutdown; [`Proxy::run`] returns when it is done.
    pub fn shutdown(&self) {
        self.shared.advance_shutdown(Stage::Draining);
    }

    /// Skips the rest of the grace period: closes every session now.
    pub fn close_now(&self) {
        self.shared.advance_shutdown(Stage::Closing);
        self.shared.sessions.kill_where(None, KillReason::Shutdown);
    }

    /// Sessions of tenant `name` holding a slot now.
    pub fn tenant_connections(&self, name: &str) -> usize {
        self.shared
            .tenants
            .get(name)
            .map(|t| t.connections() as usize)
            .unwrap_or(0)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}
