//! The queue of store work the sessions hand over without waiting
//! (releases, cancel keys, committed row changes), and the batches the
//! background task takes from it.
//!
//! The queue is bounded: a store that stops answering makes every call wait
//! its timeout, and a busy instance would otherwise queue work faster than
//! it drains, without limit. Past [`MAX_QUEUED`] new work is dropped and
//! counted (`pgtier_fleet_ops_dropped_total`); nothing is lost for good, as
//! the heartbeat re-asserts this instance's slots, cancel keys expire with
//! their instance, and row figures are measured again.
//!
//! A tenant whose slot entry is in doubt (a call that changes it failed or
//! timed out, and may yet be run by the store later; or its release was
//! dropped here) is noted too: the heartbeat then asserts this instance's
//! count of it, zero included, until the store has taken it (see
//! [`OpsQueue::doubt`]).
//!
//! The background task takes what is queued as one [`Batch`], in which work
//! that cancels out (a session's cancel key added and removed) is gone and
//! row changes are summed per tenant, so a burst costs the store one call
//! per tenant, not one per transaction.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::protocol::startup::CancelKey;

/// The most work items waiting for the background task.
pub const MAX_QUEUED: usize = 65_536;

/// One item of work for the store.
#[derive(Debug)]
pub enum Op {
    Release(String),
    CancelAdd(CancelKey, CancelKey),
    CancelDel(CancelKey),
    RowDelta(String, i64),
    /// Write this instance's count of the tenant as it is when done (a
    /// call that changed it timed out: correct it as soon as the store
    /// answers, behind the late call on the same connection).
    Assert(String),
}

/// The sessions' end of the queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct OpsQueue {
    tx: mpsc::Sender<Op>,
    dropped: Arc<AtomicU64>,
    /// Tenants whose entry in the store may be wrong (at most one per
    /// tenant known to this instance).
    doubts: Arc<std::sync::Mutex<HashSet<String>>>,
}

impl OpsQueue {
    /// A queue of at most `capacity` items and its receiving end.
    pub fn new(capacity: usize) -> (OpsQueue, mpsc::Receiver<Op>) {
        let (tx, rx) = mpsc::channel(capacity);
        let queue = OpsQueue {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            doubts: Arc::default(),
        };
        (queue, rx)
    }

    /// Queues `op`, or drops and counts it when the queue is full. Never
    /// waits. (Once the background task has ended, at shutdown, there is
    /// nothing left to do it for.)
    pub fn push(&self, op: Op) {
        if let Err(mpsc::error::TrySendError::Full(op)) = self.tx.try_send(op) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if let Op::Release(tenant) = op {
                self.doubt(tenant);
            }
        }
    }

    /// Notes that the store's entry of this instance for `tenant` may be
    /// wrong: a call that changes it failed or timed out (a store that
    /// stalled runs it when it resumes, long after the caller gave up), or
    /// a release was dropped. The heartbeat asserts the true count.
    pub fn doubt(&self, tenant: impl Into<String>) {
        if let Ok(mut doubts) = self.doubts.lock() {
            doubts.insert(tenant.into());
        }
    }

    /// The tenants in doubt since the last call.
    pub fn take_doubts(&self) -> HashSet<String> {
        self.doubts
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }

    /// Counts `n` items dropped after they were taken from the queue.
    pub fn dropped_later(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Items dropped since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Work taken from the queue at once, with what cancels out removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Cancel keys to add: client key → cluster key.
    pub cancel_adds: HashMap<CancelKey, CancelKey>,
    /// Cancel keys to remove, added in an earlier batch.
    pub cancel_dels: Vec<CancelKey>,
    /// Slots to give back, per tenant.
    pub releases: HashMap<String, u32>,
    /// Committed row changes, summed per tenant (none that sum to 0).
    pub row_deltas: HashMap<String, i64>,
    /// Tenants whose count is written absolutely (their releases in the
    /// batch are then moot: the count is read after them).
    pub asserts: HashSet<String>,
}

impl Batch {
    pub fn new(ops: impl IntoIterator<Item = Op>) -> Batch {
        let mut batch = Batch::default();
        for op in ops {
            match op {
                Op::Release(tenant) => *batch.releases.entry(tenant).or_default() += 1,
                Op::CancelAdd(client, cluster) => {
                    batch.cancel_adds.insert(client, cluster);
                }
                Op::CancelDel(client) => {
                    // Added in this batch: neither call is needed.
                    if batch.cancel_adds.remove(&client).is_none() {
                        batch.cancel_dels.push(client);
                    }
                }
                Op::RowDelta(tenant, delta) => {
                    *batch.row_deltas.entry(tenant).or_default() += delta;
                }
                Op::Assert(tenant) => {
                    batch.asserts.insert(tenant);
                }
            }
        }
        batch.row_deltas.retain(|_, delta| *delta != 0);
        batch
            .releases
            .retain(|tenant, _| !batch.asserts.contains(tenant));
        batch
    }

    /// The calls to the store this batch takes.
    pub fn calls(&self) -> usize {
        self.cancel_adds.len()
            + self.cancel_dels.len()
            + self.releases.values().map(|&n| n as usize).sum::<usize>()
            + self.row_deltas.len()
            + self.asserts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> CancelKey {
        CancelKey {
            pid: i32::from(n),
            secret: vec![n; 4].into(),
        }
    }

    #[test]
    fn a_batch_keeps_only_the_work_that_does_not_cancel_out() {
        let batch = Batch::new([
            Op::CancelAdd(key(1), key(101)),
            Op::RowDelta("a".into(), 5),
            Op::Release("a".into()),
            Op::CancelAdd(key(2), key(102)),
            Op::CancelDel(key(1)),
            Op::CancelDel(key(3)),
            Op::RowDelta("a".into(), -2),
            Op::RowDelta("b".into(), 4),
            Op::RowDelta("b".into(), -4),
            Op::Release("a".into()),
            Op::Release("c".into()),
            Op::Assert("c".into()),
            Op::Release("c".into()),
        ]);
        assert_eq!(
            batch.cancel_adds,
            HashMap::from([(key(2), key(102))]),
            "key 1 came and went in the batch"
        );
        assert_eq!(batch.cancel_dels, vec![key(3)], "key 3 was added before");
        assert_eq!(batch.releases, HashMap::from([("a".to_owned(), 2)]));
        assert_eq!(
            batch.row_deltas,
            HashMap::from([("a".to_owned(), 3)]),
            "b's changes sum to nothing"
        );
        assert_eq!(
            batch.asserts,
            HashSet::from(["c".to_owned()]),
            "c's releases are moot: its count is written as it is"
        );
        assert_eq!(batch.calls(), 6);
        assert_eq!(Batch::new([]), Batch::default());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_never_waits() {
        let (queue, mut rx) = OpsQueue::new(3);
        for n in 0..5 {
            queue.push(Op::RowDelta("a".into(), n));
        }
        assert_eq!(queue.dropped(), 2);
        let mut taken = Vec::new();
        assert_eq!(rx.recv_many(&mut taken, 10).await, 3);
        assert_eq!(Batch::new(taken).row_deltas["a"], 1 + 2);
        for n in 0..3 {
            queue.push(Op::RowDelta("a".into(), n));
        }
        queue.push(Op::Release("b".into()));
        assert_eq!(queue.dropped(), 3);
        assert_eq!(
            queue.take_doubts(),
            HashSet::from(["b".to_owned()]),
            "a dropped release leaves its tenant in doubt"
        );
        assert!(queue.take_doubts().is_empty());
        let mut taken = Vec::new();
        assert_eq!(rx.recv_many(&mut taken, 10).await, 3);
        queue.push(Op::Release("a".into()));
        assert_eq!(queue.dropped(), 3, "room again once taken");
        drop(rx);
        queue.push(Op::Release("a".into()));
        assert_eq!(queue.dropped(), 3, "after shutdown: not counted");
    }
}
