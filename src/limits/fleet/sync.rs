//! An instance's side of the fleet's store, in the background: the
//! heartbeat that keeps its leases (and re-asserts its share of every
//! tenant's slots), the queue of releases, cancel keys and row changes the
//! sessions hand over without waiting, the quota figures every instance
//! adopts, last activity for the fleet-wide inactivity report, and the
//! operator API's suspensions every instance applies.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::Receiver;

use crate::limits::fleet::ops::{Batch, Op};
use crate::limits::fleet::redis::Store;
use crate::limits::suspend::Suspension;
use crate::rules::{log_crossing, log_storage_crossing};
use crate::runtime::shared::Shared;
use crate::runtime::shutdown::Stage;

/// How often quota figures are read back from the store, so that blocked
/// and unblocked decisions agree across instances within about this.
const ROWS_REFRESH: Duration = Duration::from_secs(1);
/// How often last activity is exchanged with the store.
const ACTIVITY_SYNC: Duration = Duration::from_secs(10);
/// How many heartbeats in a row must succeed before a tenant in doubt is
/// trusted again: the first corrects the entry; a second covers a late
/// call the store received on an earlier connection (dropped by the
/// client after a timeout) and ran just after the first.
const DOUBT_HEARTBEATS: u8 = 2;
/// The most queued work taken as one batch.
const MAX_BATCH: usize = 1024;

/// Runs until shutdown closes sessions; nothing to do for a local fleet.
pub async fn run(shared: Arc<Shared>) {
    let fleet = &shared.fleet;
    let (Some(store), Some(ops)) = (fleet.store().cloned(), fleet.take_ops()) else {
        return;
    };
    let instance = fleet.instance.clone();
    let listen = shared.config().listen;
    let mut shutdown = shared.subscribe_shutdown();
    let mut heartbeat = tokio::time::interval(fleet.config.lease_ttl / 3);
    let mut rows = tokio::time::interval(ROWS_REFRESH);
    let mut activity = tokio::time::interval(ACTIVITY_SYNC);
    // As often as the heartbeat, on its own tick so that a slow store call
    // here never delays a lease.
    let mut suspensions = tokio::time::interval(fleet.config.lease_ttl / 3);
    for tick in [&mut heartbeat, &mut rows, &mut activity, &mut suspensions] {
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    // Tenants this instance asserted sessions for at the last heartbeat:
    // those it has none of any more get their entry removed.
    let mut asserted: HashSet<String> = HashSet::new();
    // Tenants in doubt, and how many more heartbeats must succeed before
    // this instance trusts the store's entry of them again.
    let mut doubts: HashMap<String, u8> = HashMap::new();
    // The store's epoch this instance last wrote all its cancel keys
    // under.
    let mut cancels_epoch: Option<String> = None;
    let mut pushed: HashMap<String, u64> = HashMap::new();
    // The version of the store's suspensions this instance applies.
    let mut suspensions_seen: Option<i64> = None;
    // The sessions' work runs beside the heartbeat, so that a store slow
    // to answer it cannot hold the heartbeat up until the leases expire.
    tokio::spawn(drain(
        Arc::clone(&shared),
        store.clone(),
        instance.clone(),
        ops,
    ));
    tracing::info!(instance, "joined the fleet");
    loop {
        tokio::select! {
            _ = shutdown.reached(Stage::Closing) => break,
            _ = heartbeat.tick() => {
                for tenant in fleet.take_doubts() {
                    doubts.insert(tenant, DOUBT_HEARTBEATS);
                }
                let mut counts = Vec::new();
                let mut sessions = 0u64;
                for tenant in shared.tenants.all() {
                    let n = tenant.connections();
                    if n > 0 {
                        sessions += u64::from(n);
                        counts.push((tenant.name().to_owned(), n));
                    }
                }
                let now: HashSet<String> = counts.iter().map(|(t, _)| t.clone()).collect();
                // Zero for those asserted last time and gone since, and for
                // those in doubt (with whatever this instance holds of them).
                let others: HashSet<&String> = asserted.iter().chain(doubts.keys()).collect();
                for name in others {
                    if !now.contains(name) {
                        let n = shared.tenants.get(name).map_or(0, |t| t.connections());
                        counts.push((name.clone(), n));
                    }
                }
                let about = serde_json::json!({
                    "listen": listen.to_string(),
                    "sessions": sessions,
                    "version": env!("CARGO_PKG_VERSION"),
                })
                .to_string();
                let beat = store.heartbeat(&instance, &about, &counts).await;
                fleet.noted(&beat);
                if let Ok(epoch) = beat {
                    asserted = now;
                    doubts.retain(|_, left| {
                        *left -= 1;
                        *left > 0
                    });
                    if cancels_epoch.as_deref() != Some(epoch.as_str()) {
                        // A new store (or this instance's first beat): it
                        // holds none of this instance's cancel keys.
                        let keys = shared.cancel_keys.snapshot();
                        let written = store.assert_cancels(&instance, &keys).await;
                        fleet.noted(&written);
                        if written.is_ok() {
                            if cancels_epoch.is_some() {
                                tracing::warn!(keys = keys.len(), "the fleet store lost its data; cancel keys written again");
                            }
                            cancels_epoch = Some(epoch);
                        }
                    }
                } else {
                    // The beat may have landed or not; what it asserted is
                    // asserted again next time.
                    asserted.extend(now);
                }
            }
            _ = rows.tick() => adopt_rows(&shared, &store).await,
            _ = activity.tick() => sync_activity(&shared, &store, &mut pushed).await,
            _ = suspensions.tick() => adopt_suspensions(&shared, &store, &mut suspensions_seen).await,
        }
    }
    // Leaving cleanly: this instance's leases go at once instead of at
    // their expiry.
    let gone: Vec<(String, u32)> = asserted
        .into_iter()
        .chain(doubts.into_keys())
        .chain(fleet.take_doubts())
        .map(|t| (t, 0))
        .collect();
    let farewell = store.heartbeat(&instance, "{}", &gone).await;
    fleet.noted(&farewell);
}

/// Takes the sessions' work from the queue in batches and does it, until
/// shutdown closes the sessions.
async fn drain(shared: Arc<Shared>, store: Store, instance: String, mut ops: Receiver<Op>) {
    let mut shutdown = shared.subscribe_shutdown();
    let mut queued = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            _ = shutdown.reached(Stage::Closing) => break,
            taken = ops.recv_many(&mut queued, MAX_BATCH) => {
                if taken == 0 {
                    break;
                }
                let batch = Batch::new(queued.drain(..));
                apply(&shared, &store, &instance, batch).await;
            }
        }
    }
}

/// Does a batch's calls until one fails: with the store not answering,
/// each further call would wait out its timeout while the queue fills. That
/// call's work and the rest are dropped and counted (the heartbeat, the
/// cancel keys' expiry and the next measurement make up for it).
async fn apply(shared: &Shared, store: &Store, instance: &str, batch: Batch) {
    let fleet = &shared.fleet;
    let mut left = batch.calls();
    let mut done = |result: Result<(), ::redis::RedisError>| {
        fleet.noted(&result);
        if result.is_ok() {
            left -= 1;
        }
        result.is_ok()
    };
    let ok = 'calls: {
        for (client, cluster) in &batch.cancel_adds {
            if !done(store.add_cancel(instance, client, cluster).await) {
                break 'calls false;
            }
        }
        for client in &batch.cancel_dels {
            if !done(store.del_cancel(instance, client).await) {
                break 'calls false;
            }
        }
        for (tenant, &n) in &batch.releases {
            for _ in 0..n {
                if !done(store.release(instance, tenant).await) {
                    break 'calls false;
                }
            }
        }
        for (tenant, &delta) in &batch.row_deltas {
            if !done(store.row_delta(tenant, delta).await) {
                break 'calls false;
            }
        }
        for tenant in &batch.asserts {
            let n = shared.tenants.get(tenant).map_or(0, |t| t.connections());
            if !done(store.assert_count(instance, tenant, n).await) {
                break 'calls false;
            }
        }
        true
    };
    if !ok {
        if left > 0 {
            fleet.ops_dropped_later(left);
        }
        // The failed call may have been run, the rest were not: either
        // way the heartbeat asserts these tenants' true counts.
        for tenant in batch.releases.into_keys().chain(batch.asserts) {
            fleet.doubt(tenant);
        }
    }
}

/// Reads the fleet's figure of every tenant with a session here and a row
/// limit, so that every instance refuses (and stops refusing) alike.
async fn adopt_rows(shared: &Shared, store: &crate::limits::fleet::redis::Store) {
    for tenant in shared.tenants.all() {
        if tenant.connections() == 0 {
            continue;
        }
        let limits = shared.limits_for(tenant.name());
        let (limit, storage_limit) = (limits.row_limit, limits.storage_limit);
        if limit == 0 && storage_limit == 0 {
            continue;
        }
        let stored = store.rows(tenant.name()).await;
        shared.fleet.noted(&stored);
        match stored {
            Ok(Some(stored)) => {
                if stored.wanted {
                    tenant.rows.want_measurement();
                }
                // The size first: adopting settles the measurement state.
                if let Some(bytes) = stored.bytes {
                    let crossing = tenant.rows.set_bytes(bytes, storage_limit);
                    log_storage_crossing(&tenant, crossing, storage_limit);
                }
                match stored.rows {
                    Some((rows, exact)) if limit > 0 => {
                        let crossing = tenant.rows.adopt(rows, exact, stored.measured_at, limit);
                        log_crossing(&tenant, crossing, limit);
                    }
                    _ if stored.bytes.is_some() => tenant.rows.adopt_size(stored.measured_at),
                    _ => {}
                }
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

/// Raises the fleet's record of every tenant's last activity from this
/// instance's, and this instance's from the fleet's, so that
/// `/tenants?inactive_for=` answers for the whole fleet from any instance.
async fn sync_activity(
    shared: &Shared,
    store: &crate::limits::fleet::redis::Store,
    pushed: &mut HashMap<String, u64>,
) {
    let changed: Vec<(String, u64)> = shared
        .tenants
        .all()
        .into_iter()
        .filter(|t| t.last_activity() > 0 && pushed.get(t.name()) != Some(&t.last_activity()))
        .map(|t| (t.name().to_owned(), t.last_activity()))
        .collect();
    let push = store.push_activity(&changed).await;
    shared.fleet.noted(&push);
    if push.is_ok() {
        pushed.extend(changed);
    }
    let pulled = store.activity().await;
    shared.fleet.noted(&pulled);
    if let Ok(all) = pulled {
        for (name, at) in all {
            shared
                .tenants
                .get_or_insert(&name)
                .restore_last_activity(at);
        }
    }
}

/// Applies the store's suspensions when they changed (one GET per tick
/// otherwise); the idle sweep then closes the sessions of a tenant newly
/// suspended, within its quarter second. While the store does not answer
/// the last set read stays in force: a suspension is never lifted because
/// the store is unreachable.
///
/// A store without a version has never had a suspension, or lost its data
/// (a restart without persistence): this instance then writes back the
/// ones it applies, so that a store restart does not lift them. (One lifted
/// while this instance could not read the store, just before the store lost
/// its data, would come back the same way; resume it again.)
async fn adopt_suspensions(shared: &Shared, store: &Store, seen: &mut Option<i64>) {
    let version = store.suspensions_version().await;
    shared.fleet.noted(&version);
    let Ok(version) = version else {
        return;
    };
    if version.is_none() {
        let mine = shared.suspensions.snapshot();
        if mine.is_empty() {
            *seen = None;
            return;
        }
        let records: Vec<(String, String)> = mine
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), serde_json::to_string(s).ok()?)))
            .collect();
        let restored = store.restore_suspensions(&records).await;
        shared.fleet.noted(&restored);
        if restored.is_ok() {
            tracing::warn!(
                tenants = records.len(),
                "the fleet store had no suspensions; this instance's written back"
            );
        }
        return;
    }
    if version == *seen {
        return;
    }
    let read = store.suspensions().await;
    shared.fleet.noted(&read);
    let Ok((version, records)) = read else {
        return;
    };
    let all = records
        .into_iter()
        .map(|(name, record)| {
            // A record this version cannot read still suspends (with the
            // default message): fail closed.
            let suspension = serde_json::from_str::<Suspension>(&record).unwrap_or_default();
            (name, suspension)
        })
        .collect();
    shared.suspensions.replace_all(all);
    *seen = version;
}
