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
use crate::shared::{OpenConnection, Shared};
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
        tokio::spawn(keep_warm(Arc::clone(&shared)));
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
                        let task = ConnectionTask::new(&shared, peer);
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
                                drop(task);
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
        let closed = shared.warm.clear();
        if closed > 0 {
            tracing::info!(connections = closed, "warm cluster connections closed");
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

/// What a connection's task holds until it ends: the connection's place
/// in the open count, and a watch for a panic.
///
/// Nobody awaits a connection task's `JoinHandle`, so tokio would swallow
/// a panic in one with the task; the client just loses its connection. A
/// panic unwinds through the task's future, which drops this guard on the
/// way: `Drop` sees [`std::thread::panicking`], counts the panic in
/// `pgtier_session_panics_total` and logs it with the client's address
/// (the panic hook has printed the message and location just before).
/// The count comes before the open connection is given back, so once
/// [`Shared::all_closed`] holds, every panic has been counted.
struct ConnectionTask {
    shared: Arc<Shared>,
    peer: SocketAddr,
    _open: OpenConnection,
}

impl ConnectionTask {
    fn new(shared: &Arc<Shared>, peer: SocketAddr) -> Self {
        ConnectionTask {
            shared: Arc::clone(shared),
            peer,
            _open: shared.connection_opened(),
        }
    }
}

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.metrics.session_panicked();
            tracing::error!(client = %self.peer, "connection task panicked (a bug); the client's connection was dropped");
        }
    }
}

/// Proxy mode's background work on the cluster connections: learns which
/// protocol the cluster speaks (so clients asking for 3.2 get it where the
/// cluster has it), and closes warm connections past
/// `server_idle_timeout`. Ends when sessions are being closed.
async fn keep_warm(shared: Arc<Shared>) {
    let mut shutdown = shared.subscribe_shutdown();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probed = false;
    let mut since_probe = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.reached(Stage::Closing) => return,
            _ = tick.tick() => {}
        }
        let config = shared.config();
        if config.auth.mode != crate::config::AuthMode::Proxy {
            continue;
        }
        // Learned once; tried again every half minute while it fails.
        since_probe += 1;
        if !probed && (since_probe == 1 || since_probe.is_multiple_of(30)) {
            if let Some(version) = crate::auth::proxy::probe_cluster_protocol(&shared).await {
                shared.learn_cluster_protocol(version);
                tracing::info!(protocol = %format_args!("3.{}", version & 0xffff), "the cluster's newest protocol version");
                probed = true;
            }
        }
        let expired = shared.warm.expire(config.server_idle_timeout);
        if expired > 0 {
            tracing::debug!(
                connections = expired,
                "idle warm cluster connections closed"
            );
        }
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

    /// Sessions of tenant `name` holding a slot now; `None` for a tenant
    /// the proxy has never registered (so that a check of "no slot held"
    /// cannot pass merely because the name is unknown).
    pub fn tenant_connections(&self, name: &str) -> Option<usize> {
        self.shared
            .tenants
            .get(name)
            .map(|t| t.connections() as usize)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<Shared> {
        let config =
            Config::from_toml_str("[tls]\nmode = \"disable\"\n[tiers.free]\nrow_limit = 0\n")
                .expect("config");
        Shared::new(config).expect("shared state")
    }

    #[tokio::test]
    async fn a_panicking_connection_task_is_counted_and_its_connection_given_back() {
        let shared = shared();
        let peer = SocketAddr::from(([127, 0, 0, 1], 5555));
        let task = ConnectionTask::new(&shared, peer);
        assert_eq!(shared.open_connections(), 1);
        // Held across an await, as in the accept loop: the guard lives in
        // the future's state, not on the stack of one poll.
        let join = tokio::spawn(async move {
            let _task = task;
            tokio::task::yield_now().await;
            panic!("a bug in a session");
        });
        assert!(join.await.expect_err("the task panicked").is_panic());
        assert_eq!(shared.metrics.session_panics(), 1);
        assert_eq!(shared.open_connections(), 0);

        let task = ConnectionTask::new(&shared, peer);
        tokio::spawn(async move {
            let _task = task;
            tokio::task::yield_now().await;
        })
        .await
        .expect("an ordinary end");
        assert_eq!(shared.metrics.session_panics(), 1, "only panics count");
        assert_eq!(shared.open_connections(), 0);
    }
}
