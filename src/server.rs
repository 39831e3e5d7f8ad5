//! The accept loop, the state every connection shares, and shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::cancel::CancelKeys;
use crate::config::{ClientTlsMode, Config};
use crate::metrics::Metrics;
use crate::sessions::{KillReason, Sessions};
use crate::shutdown::{self, Shutdown, ShutdownTrigger, Stage};
use crate::tenants::Tenants;
use crate::tls::{self, CertStore, TlsError};

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

/// TLS toward clients as currently configured.
struct ClientTls {
    certs: Option<Arc<CertStore>>,
    acceptor: Option<TlsAcceptor>,
}

/// What every connection task shares.
pub struct Shared {
    config: ArcSwap<Config>,
    client_tls: ArcSwap<ClientTls>,
    cluster_tls: ArcSwap<rustls::ClientConfig>,
    pub tenants: Tenants,
    pub sessions: Sessions,
    pub cancel_keys: Arc<CancelKeys>,
    pub metrics: Metrics,
    shutdown: ShutdownTrigger,
    /// Open client connections, logging in or in session.
    open: watch::Sender<usize>,
    /// The file `POST /reload` re-reads; `None` when started from memory.
    config_path: Mutex<Option<PathBuf>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The configuration in force now (a snapshot: a reload does not change
    /// it under a login in progress).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn tls_acceptor(&self) -> Option<TlsAcceptor> {
        self.client_tls.load().acceptor.clone()
    }

    pub fn cluster_tls(&self) -> Arc<rustls::ClientConfig> {
        self.cluster_tls.load_full()
    }

    pub fn shutdown_stage(&self) -> Stage {
        self.shutdown.stage()
    }

    pub fn subscribe_shutdown(&self) -> Shutdown {
        self.shutdown.subscribe()
    }

    /// Client connections open right now (including those still logging in).
    pub fn open_connections(&self) -> usize {
        *self.open.borrow()
    }

    /// Puts `config` in force for new logins. TLS material is loaded first,
    /// so a broken certificate leaves everything as it was.
    pub fn apply_config(&self, config: Config) -> Result<(), TlsError> {
        let client_tls = build_client_tls(&config, self.client_tls.load().certs.as_ref())?;
        let cluster_tls = tls::cluster_client_config(config.cluster.ca.as_deref())?;
        let old = self.config.load();
        if old.listen != config.listen {
            tracing::warn!(
                old = %old.listen, new = %config.listen,
                "listen address changed: it takes effect only after a restart"
            );
        }
        if old.admin_listen != config.admin_listen {
            tracing::warn!("admin_listen changed: it takes effect only after a restart");
        }
        self.client_tls.store(Arc::new(client_tls));
        self.cluster_tls.store(cluster_tls);
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// The configuration file the proxy was started from, if any.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config_path.lock().ok().and_then(|p| p.clone())
    }

    fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.open.send_modify(|n| *n += 1);
        OpenConnection {
            shared: Arc::clone(self),
        }
    }
}

/// Counts a connection as open until dropped.
struct OpenConnection {
    shared: Arc<Shared>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.shared.open.send_modify(|n| *n -= 1);
    }
}

fn build_client_tls(
    config: &Config,
    existing: Option<&Arc<CertStore>>,
) -> Result<ClientTls, TlsError> {
    if config.tls.mode == ClientTlsMode::Disable {
        return Ok(ClientTls {
            certs: existing.cloned(),
            acceptor: None,
        });
    }
    let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
        // Validation requires both whenever TLS is on.
        return Err(TlsError::Cert {
            path: String::new(),
            message: "tls.cert and tls.key are required".to_owned(),
        });
    };
    let certified = tls::load_certified_key(cert, key)?;
    let certs = match existing {
        Some(store) => {
            store.replace(certified);
            Arc::clone(store)
        }
        None => CertStore::new(certified),
    };
    let acceptor = TlsAcceptor::from(tls::server_config(Arc::clone(&certs)));
    Ok(ClientTls {
        certs: Some(certs),
        acceptor: Some(acceptor),
    })
}

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
        let client_tls = build_client_tls(&config, None)?;
        let cluster_tls = tls::cluster_client_config(config.cluster.ca.as_deref())?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ProxyError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let admin = match config.admin_listen {
            Some(addr) => Some(crate::admin::bind(addr).await?),
            None => None,
        };
        let (trigger, _) = shutdown::channel();
        let tenants = Tenants::default();
        for name in config.tenants.keys() {
            tenants.get_or_insert(name);
        }
        if let Some(dir) = &config.state_dir {
            crate::state::load(dir, &tenants);
        }
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(config),
            client_tls: ArcSwap::from_pointee(client_tls),
            cluster_tls: ArcSwap::new(cluster_tls),
            tenants,
            sessions: Sessions::default(),
            cancel_keys: Arc::new(CancelKeys::default()),
            metrics: Metrics::default(),
            shutdown: trigger,
            open: watch::channel(0).0,
            config_path: Mutex::new(None),
        });
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
        let admin = admin.map(|l| crate::admin::spawn(l, handle));
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
                        tokio::spawn(async move {
                            crate::session::serve(shared, tcp, peer).await;
                            drop(open);
                        });
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
        let mut open = shared.open.subscribe();
        if tokio::time::timeout(grace, open.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            shared.shutdown.advance(Stage::Closing);
            let n = shared.sessions.kill_where(None, KillReason::Shutdown);
            tracing::info!(
                sessions = n,
                "grace period over: closing remaining sessions"
            );
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, open.wait_for(|n| *n == 0)).await;
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
        if let Ok(mut p) = self.shared.config_path.lock() {
            *p = Some(path.into());
        }
    }

    /// Begins a graceful shutdown; [`Proxy::run`] returns when it is done.
    pub fn shutdown(&self) {
        self.shared.shutdown.advance(Stage::Draining);
    }

    /// Skips the rest of the grace period: closes every session now.
    pub fn close_now(&self) {
        self.shared.shutdown.advance(Stage::Closing);
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
