//! The accept loop and graceful shutdown. The state connections share
//! lives in [`crate::runtime::shared`], below this module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinSet;

use crate::config::{Config, Threading};
use crate::runtime::shared::{OpenConnection, Shared};
use crate::runtime::shutdown::Stage;
use crate::session::live::KillReason;
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
    /// One listener per serving thread (`per-core`: each bound to the same
    /// address with SO_REUSEPORT), or one (`shared`).
    listeners: Vec<std::net::TcpListener>,
    local_addr: SocketAddr,
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
        let threads = match (config.threading, config.worker_threads) {
            (Threading::Shared, _) => 1,
            (Threading::PerCore, 0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
            (Threading::PerCore, n) => n,
        };
        let bind_error = |source| ProxyError::Bind {
            addr: config.listen,
            source,
        };
        let mut listeners = Vec::with_capacity(threads);
        let mut addr = config.listen;
        for _ in 0..threads {
            let listener = listen(addr, threads > 1).map_err(bind_error)?;
            // Port 0 picks a port for the first; the others share it.
            addr = listener.local_addr().map_err(bind_error)?;
            listeners.push(listener);
        }
        let admin = match config.admin_listen {
            Some(addr) => Some(
                crate::ops::admin::bind(addr)
                    .await
                    .map_err(|source| ProxyError::Bind { addr, source })?,
            ),
            None => None,
        };
        let shared = Shared::new(config)?;
        Ok(Proxy {
            listeners,
            local_addr: addr,
            admin,
            shared,
        })
    }

    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle {
            shared: Arc::clone(&self.shared),
            local_addr: self.local_addr,
            admin_addr: self.admin.as_ref().and_then(|l| l.local_addr().ok()),
        }
    }

    /// Accepts connections until shutdown is asked for, then drains: waits
    /// up to `shutdown_grace` for sessions to end, closes the rest with
    /// 57P01, and returns once every connection is gone.
    pub async fn run(self) -> Result<(), ProxyError> {
        let handle = self.handle();
        let Proxy {
            listeners,
            local_addr,
            admin,
            shared,
        } = self;
        let mut shutdown = shared.subscribe_shutdown();
        tokio::spawn(crate::session::idle::sweep(Arc::clone(&shared)));
        let budget = Arc::clone(&shared);
        tokio::spawn(crate::ops::log_budget::report_held_back(move || {
            budget.refusal_log.take_overdue()
        }));
        tokio::spawn(crate::rules::auditor::run(Arc::clone(&shared)));
        tokio::spawn(keep_warm(Arc::clone(&shared)));
        tokio::spawn(crate::limits::registry::listen::run(Arc::clone(&shared)));
        let fleet_sync = tokio::spawn(crate::limits::fleet::sync::run(Arc::clone(&shared)));
        let admin = admin.map(|l| crate::ops::admin::spawn(l, Arc::clone(&handle.shared)));
        let state_dir = shared.config().state_dir.clone();
        let saver = state_dir.clone().map(|dir| {
            tokio::spawn(crate::ops::state::save_periodically(
                Arc::clone(&shared),
                dir,
                |s: &Shared| (&s.tenants, &s.suspensions),
            ))
        });
        let threading = shared.config().threading;
        tracing::info!(
            listen = %local_addr,
            threads = listeners.len(),
            threading = ?threading,
            "accepting connections"
        );
        let mut serving = Vec::new();
        let mut shared_loop = None;
        for (index, listener) in listeners.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            match threading {
                Threading::PerCore => {
                    let thread = std::thread::Builder::new()
                        .name(format!("pgtier-{index}"))
                        .spawn(move || serve_on_own_thread(listener, shared, index))
                        .map_err(|source| ProxyError::Bind {
                            addr: local_addr,
                            source,
                        })?;
                    serving.push(thread);
                }
                Threading::Shared => {
                    let listener =
                        TcpListener::from_std(listener).map_err(|source| ProxyError::Bind {
                            addr: local_addr,
                            source,
                        })?;
                    shared_loop = Some(tokio::spawn(accept(listener, shared, index)));
                }
            }
        }
        shutdown.reached(Stage::Draining).await;
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
        if let Some(accepting) = shared_loop {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, accepting).await;
        }
        for thread in serving {
            // Each thread ends once its sessions have; give it the same
            // bound as the sessions had.
            let joined = tokio::task::spawn_blocking(move || thread.join());
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, joined).await;
        }
        // Everything that waits for the closing stage ends now (the
        // sessions are gone); the fleet's farewell drops this instance's
        // leases at once.
        shared.advance_shutdown(Stage::Closing);
        let _ = tokio::time::timeout(Duration::from_secs(2), fleet_sync).await;
        let closed = shared.warm.clear();
        if closed > 0 {
            tracing::info!(connections = closed, "warm cluster connections closed");
        }
        if let Some(saver) = saver {
            saver.abort();
        }
        if let Some(dir) = &state_dir {
            if let Err(e) = crate::ops::state::save(dir, &shared.tenants, &shared.suspensions) {
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

/// Binds a listening socket at `addr`, with SO_REUSEPORT when several
/// threads listen on it (the kernel then spreads new connections over
/// them). Returned as a std listener, ready to join any thread's runtime.
fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

/// A `per-core` serving thread: a single-threaded runtime of its own that
/// accepts on its listener and runs the sessions it accepted to their end.
fn serve_on_own_thread(listener: std::net::TcpListener, shared: Arc<Shared>, index: usize) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a serving thread's runtime");
            return;
        }
    };
    runtime.block_on(async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => accept(listener, shared, index).await,
            Err(e) => tracing::error!(error = %e, "cannot listen on a serving thread"),
        }
    });
}

/// Accepts connections until shutdown begins, then waits for the sessions
/// it started to end (the runtime they run on must outlive them).
async fn accept(listener: TcpListener, shared: Arc<Shared>, thread: usize) {
    let mut shutdown = shared.subscribe_shutdown();
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            // Shutdown first: once draining, a connection waiting in the
            // backlog must not be served (select! otherwise picks a ready
            // branch at random).
            biased;
            _ = shutdown.reached(Stage::Draining) => break,
            // Finished sessions are reaped as they go, so the set stays
            // the size of what runs.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    shared.metrics.accepted(thread);
                    let task = ConnectionTask::new(&shared, peer);
                    let shared = Arc::clone(&shared);
                    // Every log line of the connection carries its client,
                    // and once known its tenant and session id.
                    let span = tracing::info_span!(
                        "session",
                        client = %peer,
                        tenant = tracing::field::Empty,
                        id = tracing::field::Empty,
                    );
                    sessions.spawn(async move {
                        crate::conn::serve(shared, tcp, span).await;
                        drop(task);
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
    while sessions.join_next().await.is_some() {}
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
            if let Some(version) = crate::login::proxy::probe_cluster_protocol(&shared).await {
                shared.learn_cluster_protocol(version);
                tracing::info!(protocol = %format_args!("3.{}", version & 0xffff), "the cluster's newest protocol version");
                probed = true;
            }
        }
        let closed = shared
            .verifiers
            .close_idle_connections(config.server_idle_timeout);
        if closed > 0 {
            tracing::debug!(connections = closed, "idle auth_query connections closed");
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

    /// A connection's task is as large as its future's largest state, for
    /// the connection's whole life: the login's state (boxed in
    /// `conn::serve`) must not be part of it. Inline it was 14,632
    /// bytes, and every idle session carried it (27.7 KiB per idle TLS
    /// session instead of 17.3 in `pgtier-bench`).
    #[tokio::test]
    async fn a_connection_task_holds_no_login_state() {
        let shared = shared();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let task = crate::conn::serve(shared, tcp, tracing::Span::none());
        let size = std::mem::size_of_val(&task);
        // 3.7 KiB now (the passthrough's state); 8 KiB leaves it room to
        // grow and still catches the login's 14 KiB.
        assert!(size <= 8192, "a connection's future is {size} bytes");
    }
}
