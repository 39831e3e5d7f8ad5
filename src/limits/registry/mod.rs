//! Tenants read from a control-plane table (`[registry]`).
//!
//! A hosting provider keeps its databases and their plans in a table of
//! its own; pgtier reads a tenant's row there when it first logs in (one
//! query on a few connections of the registry's own role, bounded like
//! `auth_query`'s), keeps it, and re-reads it when the control plane says
//! so: `NOTIFY pgtier_tenants, 'name'` (or an empty payload for all),
//! heard by every instance on its own LISTEN connection ([`listen`]).
//! Without a NOTIFY a row is trusted for `cache_ttl`, which also bounds
//! staleness while the LISTEN connection is down.
//!
//! A row's columns are named by the keys `[tenants.x]` accepts ([`row`]),
//! and override that entry key by key; the limits are combined by
//! [`crate::config::Config::limits_with`]. A row that changes bumps
//! [`Registry::generation`], which running sessions watch as they watch a
//! reload (so upgrades reach them; nothing is killed by a downgrade).
//!
//! Once read, a row is never looked up on the data path: only a login
//! whose row is missing or stale asks the registry, and a registry that
//! cannot be read leaves a cached row in force (stale beats refusing a
//! tenant the control plane knows).

pub mod listen;
pub mod row;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dashmap::DashMap;

use crate::backend::control::Login;
use crate::config::{Config, RegistryConfig, TenantConfig};
use crate::login::auth_query::AuthQueryConnections;
use crate::refusal::Refusal;

/// Databases the registry said it does not know, kept at most: made-up
/// names cannot grow the cache without bound (past it, each such login
/// asks again, which the pending-login bounds limit).
pub const MAX_UNKNOWN_CACHED: usize = 10_000;

/// What the registry said about one database.
#[derive(Debug, Clone)]
struct Entry {
    /// `None`: no row.
    row: Option<Arc<TenantConfig>>,
    fetched: Instant,
    /// [`Registry::events`] when the lookup began: an invalidation after
    /// that (a NOTIFY that raced the lookup) leaves the entry stale.
    epoch: u64,
    /// Usable without asking again (until `cache_ttl`).
    fresh: bool,
}

/// The cache of registry rows and the connections that read them.
#[derive(Debug, Default)]
pub struct Registry {
    cache: DashMap<String, Entry>,
    unknown_cached: AtomicUsize,
    /// Bumped by every invalidation.
    events: AtomicU64,
    /// Entries whose epoch is below this were invalidated all at once.
    all_before: AtomicU64,
    /// Bumped whenever a cached row changes (see the module docs).
    generation: AtomicU64,
    connections: AuthQueryConnections,
    /// The last thing that went wrong, for the operator (and tests).
    last_error: Mutex<Option<String>>,
    /// Reads of the registry that failed (`pgtier_registry_errors_total`).
    errors: AtomicU64,
    /// The LISTEN connection is up (NOTIFYs are being heard).
    listening: AtomicBool,
}

/// What a login learns from the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The registry has a row (possibly a cached one, if it cannot be read).
    Known,
    /// The registry has no row for this database.
    Unknown,
}

/// Why the registry could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("tenant registry: {0}")]
pub struct RegistryError(pub String);

/// The refusals this module makes a login end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `unknown = "refuse"` and the registry has no row.
    Unknown,
    /// The registry cannot be read, nothing is cached, `on_error = "closed"`.
    Unavailable,
}

/// What the client is told for every refusal this module decides (the
/// words are the catalog's, `crate::refusal`).
pub fn refusal(why: Refused, database: &str) -> Refusal {
    let database = database.to_owned();
    match why {
        Refused::Unknown => Refusal::UnknownDatabase { database },
        Refused::Unavailable => Refusal::RegistryUnavailable { database },
    }
}

impl Registry {
    /// The row in force for `name`, stale or not (for limits).
    pub fn cached(&self, name: &str) -> Option<Arc<TenantConfig>> {
        self.cache.get(name).and_then(|e| e.row.clone())
    }

    /// Whether `name` has an entry (a row or a "no row").
    pub fn is_cached(&self, name: &str) -> bool {
        self.cache.contains_key(name)
    }

    /// Entries cached (rows and "no row"s).
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Changes whenever a cached row does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The last error reading the registry, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads of the registry that failed since the proxy started.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Whether NOTIFYs on the channel are being heard right now.
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Set by the LISTEN connection's task.
    pub(crate) fn set_listening(&self, up: bool) {
        self.listening.store(up, Ordering::Release);
    }

    /// Open lookup connections.
    pub fn connections(&self) -> usize {
        self.connections.len()
    }

    /// At login: the registry's answer for `name`, from the cache while it
    /// is fresh, else asked now. A registry that cannot be read leaves a
    /// cached answer in force; with none, the error.
    pub async fn resolve(
        &self,
        name: &str,
        config: &Config,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Found, RegistryError> {
        let Some(registry) = &config.registry else {
            return Ok(Found::Unknown);
        };
        if let Some(entry) = self.cache.get(name) {
            if entry.fresh
                && entry.epoch >= self.all_before.load(Ordering::Acquire)
                && entry.fetched.elapsed() < registry.cache_ttl
            {
                return Ok(found(&entry.row));
            }
        }
        match self.refresh(name, registry, config, tls).await {
            Ok(found) => Ok(found),
            Err(e) => match self.cache.get(name) {
                Some(entry) => {
                    tracing::warn!(error = %e, "using the cached registry row");
                    Ok(found(&entry.row))
                }
                None => Err(e),
            },
        }
    }

    /// Asks the registry for `name` now and caches the answer.
    pub async fn refresh(
        &self,
        name: &str,
        registry: &RegistryConfig,
        config: &Config,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Found, RegistryError> {
        let epoch = self.events.load(Ordering::Acquire);
        let looked_up = self.query(name, registry, config, tls).await;
        let row = match looked_up {
            Ok(row) => row.map(Arc::new),
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.0.clone());
                return Err(e);
            }
        };
        let result = found(&row);
        let fresh = self.events.load(Ordering::Acquire) == epoch;
        let entry = Entry {
            row,
            fetched: Instant::now(),
            epoch,
            fresh,
        };
        self.store(name, entry);
        Ok(result)
    }

    fn store(&self, name: &str, entry: Entry) {
        let unknown = entry.row.is_none();
        let mut changed = true;
        match self.cache.entry(name.to_owned()) {
            dashmap::Entry::Occupied(mut old) => {
                changed = old.get().row != entry.row;
                match (old.get().row.is_none(), unknown) {
                    (true, false) => {
                        self.unknown_cached.fetch_sub(1, Ordering::Relaxed);
                    }
                    (false, true) => {
                        self.unknown_cached.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                old.insert(entry);
            }
            dashmap::Entry::Vacant(slot) => {
                if unknown {
                    if self.unknown_cached.load(Ordering::Relaxed) >= MAX_UNKNOWN_CACHED {
                        return;
                    }
                    self.unknown_cached.fetch_add(1, Ordering::Relaxed);
                }
                slot.insert(entry);
            }
        }
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Forgets `name`'s answer: its next login asks again.
    pub fn invalidate(&self, name: &str) {
        self.events.fetch_add(1, Ordering::AcqRel);
        if let Some((_, old)) = self.cache.remove(name) {
            if old.row.is_none() {
                self.unknown_cached.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Marks `name`'s answer stale, keeping it in force until read again.
    pub fn mark_stale(&self, name: &str) {
        self.events.fetch_add(1, Ordering::AcqRel);
        if let Some(mut entry) = self.cache.get_mut(name) {
            entry.fresh = false;
        }
    }

    /// Marks every answer stale (kept in force until asked again, so a
    /// registry that then fails leaves tenants as they were).
    pub fn invalidate_all(&self) {
        let now = self.events.fetch_add(1, Ordering::AcqRel) + 1;
        self.all_before.store(now, Ordering::Release);
    }

    async fn query(
        &self,
        name: &str,
        registry: &RegistryConfig,
        config: &Config,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Option<TenantConfig>, RegistryError> {
        let login = Login {
            user: &registry.user,
            password: registry.password.as_deref(),
            database: &registry.database,
            application_name: "pgtier registry",
        };
        let timeout = config.cluster.connect_timeout;
        let on = self
            .connections
            .acquire(&login, &config.cluster, tls)
            .await
            .map_err(|e| RegistryError(format!("cannot connect: {e}")))?;
        let client = on.client();
        let rows = tokio::time::timeout(timeout, async {
            // Preparing names the columns before any row comes: a wrong
            // column is reported even for a database with no row.
            let statement = client.prepare(&registry.query).await?;
            if let Err(e) = row::check_columns(statement.columns()) {
                return Ok(Err(e));
            }
            client.query(&statement, &[&name]).await.map(Ok)
        })
        .await
        .map_err(|_| {
            // Its state unknown: not used again.
            self.connections.discard(&on);
            RegistryError(format!("no answer within {timeout:?}"))
        })?
        .map_err(|e| {
            RegistryError(format!(
                "query failed: {}",
                crate::limits::registry::row::pg_error(&e)
            ))
        })?
        .map_err(RegistryError)?;
        match rows.as_slice() {
            [] => Ok(None),
            [one] => {
                let tenant = row::read(one).map_err(RegistryError)?;
                tenant.check(config).map_err(|(key, e)| {
                    RegistryError(format!("column \"{key}\" for database \"{name}\": {e}"))
                })?;
                Ok(Some(tenant))
            }
            more => Err(RegistryError(format!(
                "query returned {} rows for database \"{name}\"; it must return at most one",
                more.len()
            ))),
        }
    }
}

fn found(row: &Option<Arc<TenantConfig>>) -> Found {
    if row.is_some() {
        Found::Known
    } else {
        Found::Unknown
    }
}
