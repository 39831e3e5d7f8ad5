//! State that survives a restart: each tenant's last activity, for the
//! inactivity report (`GET /tenants?inactive_for=30d`, `pgtier
//! inactive`), and the suspensions made through the operator API.
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

use crate::limits::suspensions::{Suspension, Suspensions};
use crate::limits::tenants::Tenants;

/// One writer at a time, so that an older snapshot is never renamed over a
/// newer one (the API saves at once; the periodic saver too).
static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    /// Suspensions made through the API (absent in files written before
    /// they existed, which therefore still load).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    suspended: BTreeMap<String, Suspension>,
}

const VERSION: u32 = 1;

pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Every tenant's known last activity (tenants never seen are left out),
/// and the API's suspensions.
fn snapshot(tenants: &Tenants, suspensions: &Suspensions) -> StateFile {
    StateFile {
        version: VERSION,
        last_activity: tenants
            .all()
            .into_iter()
            .filter(|t| t.last_activity() > 0)
            .map(|t| (t.name().to_owned(), t.last_activity()))
            .collect(),
        suspended: suspensions.snapshot(),
    }
}

/// What a state file holds, for `pgtier inactive --state-dir` (the proxy
/// may be down): last activity and API suspensions by tenant.
pub type Contents = (BTreeMap<String, u64>, BTreeMap<String, Suspension>);

/// Reads the state file in `dir`; unlike [`load`], every problem is an
/// error (a report read from a corrupt file would be wrong, not late).
pub fn read(dir: &Path) -> Result<Contents, String> {
    let path = path_in(dir);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let state: StateFile =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if state.version != VERSION {
        return Err(format!(
            "{}: unknown version {}",
            path.display(),
            state.version
        ));
    }
    Ok((state.last_activity, state.suspended))
}

/// Restores last-activity times from `dir` into `tenants`. A missing file
/// is a first start; an unreadable or corrupt one is logged and ignored,
/// because the proxy must come up regardless; the next save replaces it.
/// Returns how many tenants were restored. API suspensions come back too,
/// so a restart does not lift them (in a fleet the store's set replaces
/// them once it answers).
pub fn load(dir: &Path, tenants: &Tenants, suspensions: &Suspensions) -> usize {
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
    for (name, suspension) in state.suspended {
        suspensions.insert(&name, suspension);
    }
    state.last_activity.len()
}

/// Writes `state` to `dir` atomically.
fn write(dir: &Path, state: &StateFile) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
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

/// Saves the current state now (at shutdown, and when the API changed a
/// suspension). Blocking.
pub fn save(dir: &Path, tenants: &Tenants, suspensions: &Suspensions) -> std::io::Result<()> {
    let _one = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    write(dir, &snapshot(tenants, suspensions))
}

/// Saves every [`SAVE_INTERVAL`] while something changed; runs until
/// aborted (the proxy saves once more itself when it stops). `parts` finds
/// the tenants and suspensions in their `owner` (the proxy's shared state,
/// which this module does not need to know).
pub async fn save_periodically<S: Send + Sync + 'static>(
    owner: Arc<S>,
    dir: PathBuf,
    parts: fn(&S) -> (&Tenants, &Suspensions),
) {
    let mut saved = {
        let (tenants, suspensions) = parts(&owner);
        snapshot(tenants, suspensions)
    };
    let mut tick = tokio::time::interval(SAVE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = {
            let (tenants, suspensions) = parts(&owner);
            snapshot(tenants, suspensions)
        };
        if now == saved {
            continue;
        }
        let dir = dir.clone();
        let writing = Arc::clone(&owner);
        // fsync can take a while: keep it off the runtime's workers.
        match tokio::task::spawn_blocking(move || {
            let (tenants, suspensions) = parts(&writing);
            save(&dir, tenants, suspensions)
        })
        .await
        {
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
        save(dir.path(), &tenants, &Suspensions::default()).unwrap();

        let restored = Tenants::default();
        restored.get_or_insert("a").restore_last_activity(2_000);
        assert_eq!(load(dir.path(), &restored, &Suspensions::default()), 1);
        assert_eq!(restored.get("a").unwrap().last_activity(), 2_000);
        assert!(restored.get("never").is_none());

        let fresh = Tenants::default();
        load(dir.path(), &fresh, &Suspensions::default());
        assert_eq!(fresh.get("a").unwrap().last_activity(), 1_000);
    }

    #[test]
    fn missing_or_corrupt_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let tenants = Tenants::default();
        assert_eq!(load(dir.path(), &tenants, &Suspensions::default()), 0);
        std::fs::write(path_in(dir.path()), b"{not json").unwrap();
        assert_eq!(load(dir.path(), &tenants, &Suspensions::default()), 0);
        assert!(tenants.all().is_empty());
        // And the next save replaces the corrupt file.
        tenants.get_or_insert("b").restore_last_activity(5);
        save(dir.path(), &tenants, &Suspensions::default()).unwrap();
        let again = Tenants::default();
        assert_eq!(load(dir.path(), &again, &Suspensions::default()), 1);
    }

    #[test]
    fn suspensions_survive_a_restart_and_old_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let tenants = Tenants::default();
        let suspensions = Suspensions::default();
        let s = Suspension {
            message: Some("gone".into()),
            hint: None,
            at: 7,
        };
        suspensions.insert("idle", s.clone());
        save(dir.path(), &tenants, &suspensions).unwrap();
        let back = Suspensions::default();
        load(dir.path(), &Tenants::default(), &back);
        assert_eq!(back.get("idle"), Some(s));
        let (_, read_back) = read(dir.path()).unwrap();
        assert_eq!(read_back.len(), 1);
        std::fs::write(
            path_in(dir.path()),
            br#"{"version":1,"last_activity":{"a":3}}"#,
        )
        .unwrap();
        let (activity, suspended) = read(dir.path()).unwrap();
        assert_eq!((activity["a"], suspended.len()), (3, 0));
    }
}
