//! The shared classifier ([`Classifier`]): the lexical fast path in front
//! of a bounded, sharded cache of parser verdicts keyed by statement text,
//! because the statements that reach the parser repeat (an ORM's CTEs, the
//! migrations a test suite replays). Bounded in entries and bytes, so no
//! client can grow it without limit.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use super::verdict::Classification;
use super::{classify_lexical, classify_parsed};

/// Most parser verdicts the cache holds (all shards together).
pub const CACHE_MAX_ENTRIES: usize = 4096;
/// Most bytes of statement text (plus a per-entry overhead) the cache holds.
pub const CACHE_MAX_BYTES: usize = 4 << 20;
/// Independent locks, so sessions on different threads rarely wait for each
/// other: each shard holds 1/16 of the entries and bytes.
const CACHE_SHARDS: usize = 16;
/// Longer statements are not cached: one must never take more than a quarter
/// of its shard's bytes, and a statement that long costs far more to send than
/// to parse.
pub const CACHE_MAX_STATEMENT: usize = CACHE_MAX_BYTES / CACHE_SHARDS / 4;
/// What an entry costs beyond its text (map slot, ring slot, the `Arc`).
const ENTRY_OVERHEAD: usize = 128;

/// A thread-safe classifier with a bounded cache of parser results, keyed by
/// statement text. The lexical fast path is not cached: it is cheaper than a
/// lookup. Eviction is CLOCK (second chance): a hit marks its entry, and the
/// sweep spares marked entries once, so statements an application repeats
/// stay while one-off texts pass through.
pub struct Classifier {
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    /// Shared verdicts for the two fast-path answers nearly every statement
    /// gets, so the hot path hands out a reference count, not an allocation.
    plain: Arc<Classification>,
    insert: Arc<Classification>,
}

#[derive(Default)]
struct Shard {
    /// Keyed by the text's 64-bit hash (a keyed SipHash, so tenants cannot
    /// aim collisions); the entry keeps the text to confirm a hit.
    map: HashMap<u64, Entry, BuildHasherDefault<HashIsKey>>,
    /// The CLOCK ring: every key in `map` exactly once.
    ring: VecDeque<u64>,
    bytes: usize,
}

struct Entry {
    text: Box<str>,
    verdict: Arc<Classification>,
    cost: usize,
    referenced: bool,
}

impl Entry {
    fn new(text: &str, verdict: Arc<Classification>) -> Entry {
        Entry {
            cost: text.len() + verdict.heap_bytes() + ENTRY_OVERHEAD,
            text: text.into(),
            verdict,
            referenced: false,
        }
    }
}

/// The map's keys are already hashes; hashing them again would waste time.
#[derive(Default)]
struct HashIsKey(u64);

impl Hasher for HashIsKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("cached", &self.cached_entries())
            .field("cached_bytes", &self.cached_bytes())
            .finish()
    }
}

impl Classifier {
    pub fn new() -> Self {
        let shards = (0..CACHE_SHARDS)
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        let mut insert = Classification::default();
        insert.add_rows(true);
        Classifier {
            hasher: RandomState::new(),
            shards,
            plain: Arc::new(Classification::default()),
            insert: Arc::new(insert),
        }
    }

    /// [`classify`](super::classify), with parser verdicts cached.
    pub fn classify(&self, sql: &str) -> Arc<Classification> {
        if let Some(verdict) = classify_lexical(sql) {
            return if verdict == *self.plain {
                Arc::clone(&self.plain)
            } else if verdict == *self.insert {
                Arc::clone(&self.insert)
            } else {
                Arc::new(verdict)
            };
        }
        let cacheable = sql.len() <= CACHE_MAX_STATEMENT;
        let (hash, shard) = self.shard_of(sql);
        if cacheable {
            let mut guard = lock(shard);
            if let Some(entry) = guard.map.get_mut(&hash) {
                if &*entry.text == sql {
                    entry.referenced = true;
                    return Arc::clone(&entry.verdict);
                }
            }
        }
        // Parse outside the lock: two sessions may parse the same new text at
        // once, which costs less than making every other session wait.
        let verdict = Arc::new(classify_parsed(sql));
        if cacheable {
            // The copy of the text is made before taking the lock.
            let entry = Entry::new(sql, Arc::clone(&verdict));
            lock(shard).insert(hash, entry);
        }
        verdict
    }

    fn shard_of(&self, sql: &str) -> (u64, &Mutex<Shard>) {
        let hash = self.hasher.hash_one(sql);
        (hash, &self.shards[(hash >> 60) as usize % CACHE_SHARDS])
    }

    #[cfg(test)]
    pub(super) fn is_cached(&self, sql: &str) -> bool {
        let (hash, shard) = self.shard_of(sql);
        lock(shard).map.get(&hash).is_some_and(|e| &*e.text == sql)
    }

    /// Parser verdicts held now.
    pub fn cached_entries(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Bytes the cache accounts for now (statement text plus overhead).
    pub fn cached_bytes(&self) -> usize {
        self.shards.iter().map(|s| lock(s).bytes).sum()
    }
}

/// A shard's lock; a poisoned lock still holds a consistent map (nothing
/// panics while holding it), so it is used as is.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shard {
    const MAX_ENTRIES: usize = CACHE_MAX_ENTRIES / CACHE_SHARDS;
    const MAX_BYTES: usize = CACHE_MAX_BYTES / CACHE_SHARDS;

    fn insert(&mut self, hash: u64, entry: Entry) {
        let cost = entry.cost;
        match self.map.insert(hash, entry) {
            // Another session cached it first, or a (keyed, so accidental)
            // hash collision: the key is in the ring already.
            Some(old) => self.bytes -= old.cost,
            None => self.ring.push_back(hash),
        }
        self.bytes += cost;
        self.evict();
    }

    /// CLOCK sweep down to the bounds. Each entry is spared at most once per
    /// sweep, so this ends within two turns of the ring.
    fn evict(&mut self) {
        while self.map.len() > Self::MAX_ENTRIES || self.bytes > Self::MAX_BYTES {
            let Some(hash) = self.ring.pop_front() else {
                break;
            };
            match self.map.get_mut(&hash) {
                Some(entry) if entry.referenced => {
                    entry.referenced = false;
                    self.ring.push_back(hash);
                }
                Some(_) => {
                    if let Some(old) = self.map.remove(&hash) {
                        self.bytes -= old.cost;
                    }
                }
                None => {}
            }
        }
    }
}
