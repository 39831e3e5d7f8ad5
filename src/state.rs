//! State that survives a restart: each tenant's last activity, for the
//! inactivity report (`GET /tenants?inactive_for=30d`).
//!
//! The file is tiny JSON in `state_dir`, replaced atomically (written to a
//! temporary file in the same directory, synced, renamed over the old one),
//! so a crash mid-write leaves the previous version, never half of one. It
//! is written every [`SAVE_INTERVAL`] when something changed and once more
//! at shutdown; losing the last few seconds in a crash only makes a tenant
//! look a few seconds less recently active.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::shared::Shared;
use crate::tenants::Tenants;

/// The file's name inside `state_dir`.
pub const FILE_NAME: &str = "last_activity.json";

/// How often changes are written while running.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(10);

/// What the file holds. Versioned so that a later format can tell an old
/// file from a corrupt one.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    /// Tenant name → Unix seconds of its last login or query.
    last_activity: BTreeMap<String, u64>,
}

const VERSION: u32 = 1;

pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Every tenant's known last activity (tenants never seen are left out).
fn snapshot(tenants: &Tenants) -> BTreeMap<String, u64> {
    tenants
        .all()
        .into_iter()
        .filter(|t| t.last_activity() > 0)
        .map(|t| (t.name().to_owned(), t.last_activity()))
        .collect()
}

/// Restores last-activity times from `dir` into `tenants`. A missing file
/// is a first start; an unreadable or corrupt one is logged and ignored,
/// because the proxy must come up regardless; the next save replaces it.
/// Returns how many tenants were restored.
pub fn load(dir: &Path, tenants: &Tenants) -> usize {
    let path = path_in(dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the state file; starting without it");
            return 0;
        }
    };
    let state: StateFile = match serde_json::from_slice(&bytes) {
        Ok(state) => state,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "state file is corrupt; ignoring it");
            return 0;
        }
    };
    if state.version != VERSION {
        tracing::warn!(path = %path.display(), version = state.version, "state file has an unknown version; ignoring it");
        return 0;
    }
    for (name, secs) in &state.last_activity {
        tenants.get_or_insert(name).restore_last_activity(*secs);
    }
    state.last_activity.len()
}

/// Writes `last_activity` to `dir` atomically.
fn write(dir: &Path, last_activity: BTreeMap<String, u64>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let state = StateFile {
        version: VERSION,
        last_activity,
    };
    let json = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&json)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path_in(dir)).map_err(|e| e.error)?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Saves the current state now (used at shutdown).
pub fn save(dir: &Path, tenants: &Tenants) -> std::io::Result<()> {
    write(dir, snapshot(tenants))
}

/// Saves every [`SAVE_INTERVAL`] while something changed; runs until
/// aborted (the proxy saves once more itself when it stops).
pub async fn save_periodically(shared: Arc<Shared>, dir: PathBuf) {
    let mut saved = snapshot(&shared.tenants);
    let mut tick = tokio::time::interval(SAVE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = snapshot(&shared.tenants);
        if now == saved {
            continue;
        }
        let dir = dir.clone();
        let to_write = now.clone();
        // fsync can take a while: keep it off the runtime's workers.
        match tokio::task::spawn_blocking(move || write(&dir, to_write)).await {
            Ok(Ok(())) => saved = now,
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the state file"),
            Err(e) => tracing::warn!(error = %e, "state writer failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_the_newer_time() {
        let dir = tempfile::tempdir().unwrap();
        let tenants = Tenants::default();
        tenants.get_or_insert("a").restore_last_activity(1_000);
        tenants.get_or_insert("never"); // not written: nothing known
        save(dir.path(), &tenants).unwrap();

        let restored = Tenants::default();
        restored.get_or_insert("a").restore_last_activity(2_000);
        assert_eq!(load(dir.path(), &restored), 1);
        assert_eq!(restored.get("a").unwrap().last_activity(), 2_000);
        assert!(restored.get("never").is_none());

        let fresh = Tenants::default();
        load(dir.path(), &fresh);
        assert_eq!(fresh.get("a").unwrap().last_activity(), 1_000);
    }

    #[test]
    fn missing_or_corrupt_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let tenants = Tenants::default();
        assert_eq!(load(dir.path(), &tenants), 0);
        std::fs::write(path_in(dir.path()), b"{not json").unwrap();
        assert_eq!(load(dir.path(), &tenants), 0);
        assert!(tenants.all().is_empty());
        // And the next save replaces the corrupt file.
        tenants.get_or_insert("b").restore_last_activity(5);
        save(dir.path(), &tenants).unwrap();
        let again = Tenants::default();
        assert_eq!(load(dir.path(), &again), 1);
    }
}
