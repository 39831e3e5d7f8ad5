//! The LISTEN connection: every instance holds its own on the registry's
//! channel, so `NOTIFY pgtier_tenants, 'hobby'` reaches each one within a
//! round trip. A payload is only a name: it makes the instance forget the
//! row and, if the tenant has sessions here, read it again at once (so an
//! upgrade reaches them); what the limits are always comes from the table.
//!
//! The connection is opened again with backoff when it drops. Every row
//! cached before it came back is then stale (NOTIFYs sent meanwhile were
//! missed); until it comes back, `cache_ttl` bounds how stale one can get.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::control::{self, Login, Notifications};
use crate::config::RegistryConfig;
use crate::runtime::shared::Shared;
use crate::runtime::shutdown::Stage;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// Rows read again at once after a NOTIFY (each on a lookup connection).
const REFRESHES_AT_ONCE: usize = 4;
/// Payloads taken from the queue per pass (the rest wait for the next).
const PAYLOADS_PER_PASS: usize = 100_000;

/// Keeps the LISTEN connection while `[registry]` is configured; ends when
/// sessions are being closed.
pub async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.subscribe_shutdown();
    let mut retry = FIRST_RETRY;
    loop {
        let config = shared.config();
        if let Some(registry) = config.registry.clone() {
            match connect(&shared, &registry).await {
                Ok((client, notes)) => {
                    retry = FIRST_RETRY;
                    tracing::info!(channel = %registry.channel, "listening for tenant registry changes");
                    // NOTIFYs sent while not listening were missed.
                    shared.registry.invalidate_all();
                    shared.registry.set_listening(true);
                    refresh_live(&shared, &registry).await;
                    let again = serve(&shared, &registry, &client, notes, &mut shutdown).await;
                    shared.registry.set_listening(false);
                    if !again {
                        return;
                    }
                    tracing::warn!("tenant registry LISTEN connection lost; reconnecting");
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "cannot LISTEN to the tenant registry");
                }
            }
        }
        tokio::select! {
            _ = shutdown.reached(Stage::Closing) => return,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(LAST_RETRY);
    }
}

async fn connect(
    shared: &Shared,
    registry: &RegistryConfig,
) -> Result<(tokio_postgres::Client, Notifications), String> {
    let config = shared.config();
    let login = Login {
        user: &registry.user,
        password: registry.password.as_deref(),
        database: &registry.database,
        application_name: "pgtier registry listen",
    };
    let timeout = config.cluster.connect_timeout;
    tokio::time::timeout(timeout, async {
        let (client, notes) =
            control::connect_listening(&config.cluster, &login, &shared.cluster_tls())
                .await
                .map_err(|e| super::row::pg_error(&e))?;
        // A quoted identifier: the channel is the operator's, spelled as
        // given (NOTIFY's channel is case-sensitive once quoted).
        let listen = format!("LISTEN \"{}\"", registry.channel.replace('"', "\"\""));
        client
            .batch_execute(&listen)
            .await
            .map_err(|e| super::row::pg_error(&e))?;
        // Told now rather than at the first login: a query the registry's
        // columns do not fit.
        match client.prepare(&registry.query).await {
            Ok(statement) => {
                if let Err(e) = super::row::check_columns(statement.columns()) {
                    tracing::error!(error = %e, "registry.query");
                }
            }
            Err(e) => {
                tracing::error!(error = %super::row::pg_error(&e), "registry.query does not prepare")
            }
        }
        Ok((client, notes))
    })
    .await
    .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// Applies NOTIFYs until the connection ends (`true`: reconnect) or
/// sessions are being closed (`false`).
async fn serve(
    shared: &Arc<Shared>,
    registry: &RegistryConfig,
    client: &tokio_postgres::Client,
    mut notes: Notifications,
    shutdown: &mut crate::runtime::shutdown::Shutdown,
) -> bool {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.reached(Stage::Closing) => return false,
            _ = tick.tick() => {
                // A reload that changed where or what to listen to.
                let same = shared.config().registry.as_ref().is_some_and(|r| {
                    r.channel == registry.channel
                        && r.user == registry.user
                        && r.password == registry.password
                        && r.database == registry.database
                });
                if client.is_closed() || !same {
                    return true;
                }
            }
            payload = notes.payloads.recv() => {
                let Some(first) = payload else { return true };
                let mut all = first.is_empty();
                let mut names = BTreeSet::new();
                names.insert(first);
                // A storm is taken as one batch: each name once.
                while names.len() < PAYLOADS_PER_PASS {
                    match notes.payloads.try_recv() {
                        Ok(p) => {
                            all |= p.is_empty();
                            names.insert(p);
                        }
                        Err(_) => break,
                    }
                }
                all |= notes.overflowed.swap(false, Ordering::AcqRel);
                apply(shared, registry, all, names).await;
            }
        }
    }
}

/// Forgets what the payloads name (everything when `all`), then reads
/// again the rows of tenants with sessions on this instance.
async fn apply(
    shared: &Arc<Shared>,
    registry: &RegistryConfig,
    all: bool,
    names: BTreeSet<String>,
) {
    tracing::debug!(all, names = names.len(), "tenant registry changed");
    if all {
        shared.registry.invalidate_all();
        refresh_live(shared, registry).await;
        return;
    }
    let mut live = Vec::new();
    for name in names {
        // A tenant with sessions keeps its row in force until the new one
        // is read (should that fail, they keep what they had).
        if shared
            .tenants
            .get(&name)
            .is_some_and(|t| t.connections() > 0)
        {
            shared.registry.mark_stale(&name);
            live.push(name);
        } else {
            shared.registry.invalidate(&name);
        }
    }
    refresh(shared, registry, live).await;
}

/// Reads again the rows of every tenant with a session here.
async fn refresh_live(shared: &Arc<Shared>, registry: &RegistryConfig) {
    let live = shared
        .tenants
        .all()
        .into_iter()
        .filter(|t| t.connections() > 0)
        .map(|t| t.name().to_owned())
        .collect();
    refresh(shared, registry, live).await;
}

async fn refresh(shared: &Arc<Shared>, registry: &RegistryConfig, names: Vec<String>) {
    if names.is_empty() {
        return;
    }
    let queue = Arc::new(std::sync::Mutex::new(names));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..REFRESHES_AT_ONCE {
        let (shared, registry, queue) = (Arc::clone(shared), registry.clone(), Arc::clone(&queue));
        workers.spawn(async move {
            let config = shared.config();
            let tls = shared.cluster_tls();
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some(name) = next else { return };
                if let Err(e) = shared.registry.refresh(&name, &registry, &config, &tls).await {
                    tracing::warn!(tenant = %name, error = %e, "cannot read the tenant's registry row again");
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
}
