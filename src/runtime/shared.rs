//! The state every connection shares, and reloading it.
//!
//! This module sits below the accept loop: `server`, `session`, `admin`,
//! `idle`, `scrape` and `state` all import it, and it imports none of them,
//! so the proxy's modules form a tree rather than a circle.

use crate::ops::log_budget::LogBudget;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::backend::cancel::CancelKeys;
use crate::backend::warm::WarmPool;
use crate::config::{ClientTlsMode, Config, Limits};
use crate::limits::fleet::Fleet;
use crate::limits::logins::Logins;
use crate::limits::registry::Registry;
use crate::limits::suspensions::Suspensions;
use crate::limits::tenants::{Tenant, Tenants};
use crate::login::verifiers::Verifiers;
use crate::ops::metrics::Metrics;
use crate::protocol::startup::PROTOCOL_3_0;
use crate::rules::classify::Classifier;
use crate::rules::AuditQueue;
use crate::runtime::shutdown::{self, Shutdown, ShutdownTrigger, Stage};
use crate::session::live::Sessions;
use crate::tls::{self, CertStore, TlsError};

/// TLS toward clients as currently configured.
struct ClientTls {
    certs: Option<Arc<CertStore>>,
    acceptor: Option<TlsAcceptor>,
}

/// What every connection task shares.
pub struct Shared {
    config: ArcSwap<Config>,
    /// Bumped by every reload, so that sessions can notice a new
    /// configuration with one atomic load instead of comparing configs.
    config_generation: AtomicU64,
    client_tls: ArcSwap<ClientTls>,
    cluster_tls: ArcSwap<rustls::ClientConfig>,
    pub tenants: Tenants,
    /// Suspensions made through the operator API (`crate::limits::suspend`).
    pub suspensions: Suspensions,
    pub sessions: Sessions,
    /// Logins in progress, bounded by `max_pending_logins[_per_tenant]`.
    pub logins: Logins,
    pub cancel_keys: Arc<CancelKeys>,
    pub metrics: Metrics,
    /// Statement classification for the quota and policy, with its cache.
    pub classifier: Classifier,
    /// Where sessions ask for a tenant's rows to be measured.
    pub audits: AuditQueue,
    /// Several instances, one set of limits (or this process alone).
    pub fleet: Fleet,
    /// Proxy mode: the roles' SCRAM verifiers and failed-login delays.
    pub verifiers: Verifiers,
    /// Proxy mode: warm cluster connections.
    pub warm: WarmPool,
    /// Tenants read from a control-plane table (`[registry]`).
    pub registry: Registry,
    /// How many refused logins are logged per second
    /// (`log_refusals_per_second`).
    pub refusal_log: LogBudget,
    /// The newest protocol version the cluster speaks, as far as known
    /// (3.0 until learned).
    cluster_protocol: AtomicU32,
    /// Whether `cluster_protocol` was learned (by a probe or a login).
    cluster_protocol_known: std::sync::atomic::AtomicBool,
    /// The auditor's end of `audits`, taken once by whoever runs it.
    audit_requests: Mutex<Option<mpsc::UnboundedReceiver<Arc<Tenant>>>>,
    shutdown: ShutdownTrigger,
    /// Open client connections, logging in or in session.
    open: watch::Sender<usize>,
    /// The file `POST /reload` and SIGHUP re-read; `None` when started from
    /// memory.
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
    /// Builds the shared state for `config`, loading its TLS material.
    pub fn new(config: Config) -> Result<Arc<Shared>, TlsError> {
        let client_tls = build_client_tls(&config, None)?;
        let cluster_tls = tls::cluster_client_config(config.cluster.ca.as_deref())?;
        let (trigger, _) = shutdown::channel();
        let tenants = Tenants::default();
        for name in config.tenants.keys() {
            tenants.get_or_insert(name);
        }
        let suspensions = Suspensions::default();
        if let Some(dir) = &config.state_dir {
            crate::ops::state::load(dir, &tenants, &suspensions);
        }
        let (audits, audit_requests) = AuditQueue::new();
        let fleet = Fleet::new(&config.fleet, config.listen);
        let cancel_keys = Arc::new(CancelKeys::default());
        if let Some(ops) = fleet.ops() {
            cancel_keys.mirror_to(ops);
        }
        Ok(Arc::new(Shared {
            config: ArcSwap::from_pointee(config),
            config_generation: AtomicU64::new(0),
            client_tls: ArcSwap::from_pointee(client_tls),
            cluster_tls: ArcSwap::new(cluster_tls),
            tenants,
            suspensions,
            sessions: Sessions::default(),
            logins: Logins::default(),
            cancel_keys,
            metrics: Metrics::default(),
            classifier: Classifier::new(),
            audits,
            fleet,
            verifiers: Verifiers::default(),
            warm: WarmPool::default(),
            registry: Registry::default(),
            refusal_log: LogBudget::default(),
            cluster_protocol: AtomicU32::new(PROTOCOL_3_0),
            cluster_protocol_known: std::sync::atomic::AtomicBool::new(false),
            audit_requests: Mutex::new(Some(audit_requests)),
            shutdown: trigger,
            open: watch::channel(0).0,
            config_path: Mutex::new(None),
        }))
    }

    /// The measurement requests, for the one auditor that serves them;
    /// `None` once taken.
    pub fn take_audit_requests(&self) -> Option<mpsc::UnboundedReceiver<Arc<Tenant>>> {
        self.audit_requests.lock().ok().and_then(|mut r| r.take())
    }

    /// The configuration in force now (a snapshot: a reload does not change
    /// it under a login in progress).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The newest protocol version the cluster is known to speak.
    pub fn cluster_protocol(&self) -> u32 {
        self.cluster_protocol.load(Ordering::Relaxed)
    }

    /// What a probe or a login found the cluster to speak.
    pub fn learn_cluster_protocol(&self, version: u32) {
        self.cluster_protocol.store(version, Ordering::Relaxed);
        self.cluster_protocol_known.store(true, Ordering::Release);
    }

    /// Whether the cluster's protocol version has been learned yet.
    pub fn cluster_protocol_known(&self) -> bool {
        self.cluster_protocol_known.load(Ordering::Acquire)
    }

    /// Changes with every reload (see [`Shared::apply_config`]) and every
    /// change of a registry row: running sessions watch it to take up new
    /// limits. (Two counters that only grow; so does their sum.)
    pub fn config_generation(&self) -> u64 {
        self.config_generation
            .load(Ordering::Acquire)
            .wrapping_add(self.registry.generation())
    }

    /// The limits in force for the tenant `name`: the file's, with its
    /// registry row's keys over them when `[registry]` is configured.
    pub fn limits_for(&self, name: &str) -> Limits {
        let config = self.config();
        match config.registry {
            Some(_) => config.limits_with(name, self.registry.cached(name).as_deref()),
            None => config.limits_for(name),
        }
    }

    pub fn tls_acceptor(&self) -> Option<TlsAcceptor> {
        self.client_tls.load().acceptor.clone()
    }

    /// `tls-server-end-point` data of the certificate served to clients.
    pub fn channel_binding(&self) -> Option<Vec<u8>> {
        self.client_tls
            .load()
            .certs
            .as_ref()
            .and_then(|c| c.channel_binding())
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

    /// Moves shutdown to `stage` (see [`Stage`]).
    pub fn advance_shutdown(&self, stage: Stage) {
        self.shutdown.advance(stage);
    }

    /// Client connections open right now (including those still logging in).
    pub fn open_connections(&self) -> usize {
        *self.open.borrow()
    }

    /// Waits until no client connection is open.
    pub async fn all_closed(&self) {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.open.send_modify(|n| *n += 1);
        OpenConnection {
            shared: Arc::clone(self),
        }
    }

    /// Puts `config` in force for new logins (and, for what applies to
    /// running sessions, for them). TLS material is loaded first, so a
    /// broken certificate leaves everything as it was.
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
        self.config_generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// The configuration file the proxy was started from, if any.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config_path.lock().ok().and_then(|p| p.clone())
    }

    /// Tells the proxy which file a reload re-reads.
    pub fn set_config_path(&self, path: impl Into<PathBuf>) {
        if let Ok(mut p) = self.config_path.lock() {
            *p = Some(path.into());
        }
    }

    /// [`Shared::reload`] off the async workers, bracketed for the service
    /// manager by `RELOADING=1` … `READY=1` whatever asked for it (SIGHUP
    /// or `POST /reload`): with `Type=notify-reload`, systemd shows the
    /// unit as reloading for exactly that long, and learns when a reload
    /// failed.
    pub async fn reload_announced(self: &Arc<Self>) -> Result<PathBuf, String> {
        if self.config_path().is_none() {
            // Nothing to read: fails at once, and was never a reload.
            return self.reload();
        }
        crate::runtime::notify::reloading();
        let shared = Arc::clone(self);
        let result = match tokio::task::spawn_blocking(move || shared.reload()).await {
            Ok(result) => result,
            Err(e) => Err(format!("the reload task failed: {e}")),
        };
        crate::runtime::notify::reloaded(result.is_err());
        result
    }

    /// Re-reads the configuration file and puts it in force. On any error
    /// the old configuration stays, and the error says why. Blocking (it
    /// reads files): call it off the async workers.
    pub fn reload(&self) -> Result<PathBuf, String> {
        let path = self.config_path().ok_or_else(|| {
            "the proxy was not started from a configuration file; nothing to reload".to_owned()
        })?;
        let config = load_config(&path)?;
        for warning in config.warnings() {
            tracing::warn!("{}", warning.0);
        }
        self.apply_config(config).map_err(|e| e.to_string())?;
        tracing::info!(config = %path.display(), "configuration reloaded");
        Ok(path)
    }
}

/// Loads a configuration file and checks its TLS files; one line per
/// problem. What `pgtier check`, `pgtier run` and every reload go through.
pub fn load_config(path: &Path) -> Result<Config, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        if config.tls.mode != ClientTlsMode::Disable {
            tls::load_certified_key(cert, key).map_err(|e| e.to_string())?;
        }
    }
    tls::cluster_client_config(config.cluster.ca.as_deref()).map_err(|e| e.to_string())?;
    Ok(config)
}

/// Counts a connection as open until dropped.
#[derive(Debug)]
pub struct OpenConnection {
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
