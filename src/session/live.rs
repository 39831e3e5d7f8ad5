//! The live sessions and the few facts about each that other tasks need:
//! whether it is idle (for the idle sweep), and a way to ask it to end (for
//! operator disconnects and shutdown).
//!
//! The pump owns its session; everything here is atomics written with
//! relaxed stores on the hot path and read by the rare outside observer.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use dashmap::DashMap;
use tokio::sync::Notify;

use crate::limits::tenants::Tenant;
use crate::protocol::startup::CancelKey;

/// Why the proxy ended a session on its own initiative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    IdleTimeout,
    AdminDisconnect,
    Shutdown,
    /// The tenant was suspended (`crate::limits::suspend`).
    Suspended,
}

impl KillReason {
    fn to_u8(self) -> u8 {
        match self {
            KillReason::IdleTimeout => 1,
            KillReason::AdminDisconnect => 2,
            KillReason::Shutdown => 3,
            KillReason::Suspended => 4,
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(KillReason::IdleTimeout),
            2 => Some(KillReason::AdminDisconnect),
            3 => Some(KillReason::Shutdown),
            4 => Some(KillReason::Suspended),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KillReason::IdleTimeout => "idle_timeout",
            KillReason::AdminDisconnect => "admin_disconnect",
            KillReason::Shutdown => "shutdown",
            KillReason::Suspended => "suspended",
        }
    }
}

/// Milliseconds on the proxy's monotonic clock (never 0 once started).
pub fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| Instant::now() - Duration::from_millis(1));
    epoch.elapsed().as_millis() as u64
}

/// Transaction status from the last ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

/// The outside view of one session.
#[derive(Debug)]
pub struct SessionControl {
    pub id: u64,
    pub tenant: Arc<Tenant>,
    kill_reason: AtomicU8,
    kill: Notify,
    /// The session's own task, woken by a kill: the pump polls its kill
    /// signal on every wake-up, and an atomic load plus this register is
    /// far cheaper there than polling a `Notify`.
    kill_waker: AtomicWaker,
    /// Requests that will each be answered by one ReadyForQuery (Query, Sync,
    /// FunctionCall) sent by the client, and ReadyForQuery seen in return.
    requests: AtomicU64,
    readies: AtomicU64,
    /// The count of ReadyForQuery that ends the client's last work: until
    /// `readies` reaches it the session is busy. Pings (`crate::session::ping`) are
    /// answered too but never move it, so they neither make the session
    /// busy nor restart its idle clock.
    work_mark: AtomicU64,
    /// [`clock_ms`] when `readies` last reached `work_mark` (or the session
    /// began): where the idle clock starts.
    idle_since: AtomicU64,
    tx_status: AtomicU8,
    /// True once a proxy-initiated end has been announced to the client.
    announced: AtomicBool,
    /// The statement clock (see `crate::session::statement_time`).
    pub statement: StatementClock,
}

/// When the request the cluster is working on began, for the tier's
/// `statement_timeout` (see `crate::session::statement_time`, which owns the
/// rules). Written by the session's two pump tasks with one store at the
/// start of a request, read by the sweeper.
#[derive(Debug, Default)]
pub struct StatementClock {
    /// [`clock_ms`] when the oldest unanswered request began running on the
    /// cluster: when it was sent if nothing was outstanding, else when the
    /// request before it was answered.
    pub(crate) since: AtomicU64,
    /// The ReadyForQuery index (counted like `readies`) of a request whose
    /// COPY FROM STDIN waits on the client: not counted until the client
    /// ends its data (or the request is answered).
    pub(crate) copy_in: AtomicU64,
    /// The ReadyForQuery index of the request the proxy cancelled (0:
    /// none): its 57014 is the proxy's, rewritten on the way back.
    pub(crate) cancelled: AtomicU64,
    /// The limit (ms) that request was cancelled at, for the message.
    pub(crate) limit_ms: AtomicU64,
    /// The cluster's own cancel key for this session's backend.
    pub(crate) cluster_key: OnceLock<CancelKey>,
    /// Cancels of the proxy's on their way and not yet acted on.
    pub(crate) in_flight: AtomicU32,
    /// Woken when one of them has been acted on.
    pub(crate) settled: Notify,
}

impl StatementClock {
    /// Whether the client's next bytes must wait for the proxy's cancel.
    /// PostgreSQL's cancel may signal the backend twice (the process and
    /// its group, not atomically), and a signal landing after the
    /// cancelled statement's error would cancel whatever the client sends
    /// next; once the cluster has closed the cancel connection, both have
    /// landed. One relaxed load per batch when no cancel is in flight.
    #[inline]
    pub fn cancel_in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Resolves once no cancel of the proxy's is in flight. Cancel-safe.
    pub async fn cancel_settled(&self) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl SessionControl {
    pub fn new(id: u64, tenant: Arc<Tenant>) -> Self {
        SessionControl {
            id,
            tenant,
            kill_reason: AtomicU8::new(0),
            kill: Notify::new(),
            kill_waker: AtomicWaker::new(),
            requests: AtomicU64::new(0),
            readies: AtomicU64::new(0),
            work_mark: AtomicU64::new(0),
            idle_since: AtomicU64::new(clock_ms()),
            tx_status: AtomicU8::new(b'I'),
            announced: AtomicBool::new(false),
            statement: StatementClock::default(),
        }
    }

    /// Asks the session to end; the first reason given wins.
    pub fn kill(&self, reason: KillReason) {
        if self
            .kill_reason
            .compare_exchange(0, reason.to_u8(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // Wake every waiter (the pump waits in more than one place);
            // one that is not waiting yet sees the reason when it next looks.
            self.kill.notify_waiters();
            self.kill_waker.wake();
        }
    }

    pub fn kill_reason(&self) -> Option<KillReason> {
        KillReason::from_u8(self.kill_reason.load(Ordering::Acquire))
    }

    /// Resolves when [`kill`](Self::kill) has been called. Cancel-safe.
    pub async fn killed(&self) -> KillReason {
        loop {
            // Register before looking, so a kill between the look and the
            // wait cannot be missed.
            let notified = self.kill.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.kill_reason() {
                return reason;
            }
            notified.await;
        }
    }

    /// Resolves when [`kill`](Self::kill) has been called, for the
    /// session's own task (any number of these in that one task); other
    /// tasks wait with [`killed`](Self::killed). Cancel-safe.
    pub fn kill_signal(&self) -> KillSignal<'_> {
        KillSignal { control: self }
    }

    /// The client's bytes of one batch, before they are forwarded: `n`
    /// messages that will each be answered by a ReadyForQuery, and whether
    /// the batch did work (anything but pings, see `crate::session::ping`). Work
    /// keeps the session busy until the ReadyForQuery that answers it: the
    /// last of the requests sent so far, or the next one when none is
    /// outstanding (an Execute waiting for its Sync).
    ///
    /// A batch that finds nothing outstanding starts the statement clock.
    /// The request count is raised before `readies` is read here, and
    /// `readies` raised before the count is read in [`note_ready`]
    /// (sequentially consistent, both): of a batch and an answer that
    /// cross, at least one sees the other and starts the clock.
    ///
    /// [`note_ready`]: Self::note_ready
    #[inline]
    pub fn note_batch(&self, n: u64, work: bool) {
        let before = if n > 0 {
            self.requests.fetch_add(n, Ordering::SeqCst)
        } else if work {
            self.requests.load(Ordering::Relaxed)
        } else {
            return;
        };
        let requests = before + n;
        let readies = self.readies.load(Ordering::SeqCst);
        if readies >= before && readies >= self.work_mark.load(Ordering::Relaxed) {
            self.statement.since.store(clock_ms(), Ordering::Relaxed);
        }
        if work {
            let mark = if n == 0 && self.readies.load(Ordering::Relaxed) >= requests {
                requests + 1
            } else {
                requests
            };
            // Only this session's client task writes it, and marks only grow.
            self.work_mark.store(mark, Ordering::Relaxed);
        }
    }

    /// `n` ReadyForQuery messages, the last with `status`, reached the client.
    /// When they answer the client's last work the idle clock starts.
    #[inline]
    pub fn note_ready(&self, n: u64, status: u8) {
        self.tx_status.store(status, Ordering::Relaxed);
        let before = self.readies.fetch_add(n, Ordering::SeqCst);
        let mark = self.work_mark.load(Ordering::Relaxed);
        let after = before + n;
        let ends_work = before < mark && after >= mark;
        // A request pipelined behind these starts running now.
        let next_runs = after < self.requests.load(Ordering::SeqCst) || after < mark;
        if ends_work || next_runs {
            let now = clock_ms();
            if ends_work {
                self.idle_since.store(now, Ordering::Relaxed);
            }
            if next_runs {
                self.statement.since.store(now, Ordering::Relaxed);
            }
        }
    }

    /// ReadyForQuery messages that reached the client.
    pub fn readies(&self) -> u64 {
        self.readies.load(Ordering::SeqCst)
    }

    /// Whether the request answered by ReadyForQuery number `index` is
    /// still outstanding: everything before it answered, it not yet.
    pub fn outstanding(&self, index: u64) -> bool {
        let readies = self.readies.load(Ordering::SeqCst);
        readies + 1 == index
            && (readies < self.requests.load(Ordering::SeqCst)
                || readies < self.work_mark.load(Ordering::Relaxed))
    }

    pub fn tx_status(&self) -> TxStatus {
        match self.tx_status.load(Ordering::Relaxed) {
            b'T' => TxStatus::InTransaction,
            b'E' => TxStatus::Failed,
            _ => TxStatus::Idle,
        }
    }

    /// How long the session has been idle, if it is.
    pub fn idle_for(&self, now_ms: u64) -> Option<Duration> {
        let readies = self.readies.load(Ordering::Relaxed);
        if readies < self.requests.load(Ordering::Relaxed)
            || readies < self.work_mark.load(Ordering::Relaxed)
        {
            return None;
        }
        let since = self.idle_since.load(Ordering::Relaxed);
        Some(Duration::from_millis(now_ms.saturating_sub(since)))
    }

    /// Every request answered and no transaction open: the session's
    /// cluster connection is at rest.
    pub fn settled(&self) -> bool {
        self.readies.load(Ordering::Relaxed) >= self.requests.load(Ordering::Relaxed)
            && self.tx_status() == TxStatus::Idle
    }

    /// Marks the end as announced; returns false if it already was.
    pub fn announce_once(&self) -> bool {
        !self.announced.swap(true, Ordering::AcqRel)
    }
}

/// See [`SessionControl::kill_signal`].
#[derive(Debug)]
pub struct KillSignal<'a> {
    control: &'a SessionControl,
}

impl Future for KillSignal<'_> {
    type Output = KillReason;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<KillReason> {
        if let Some(reason) = self.control.kill_reason() {
            return Poll::Ready(reason);
        }
        self.control.kill_waker.register(cx.waker());
        // A kill between the first look and the registration would
        // otherwise be missed.
        match self.control.kill_reason() {
            Some(reason) => Poll::Ready(reason),
            None => Poll::Pending,
        }
    }
}

/// All live sessions, by id.
#[derive(Debug, Default)]
pub struct Sessions {
    map: DashMap<u64, Arc<SessionControl>>,
    next_id: AtomicU64,
}

/// Removes its session from the registry when dropped.
#[derive(Debug)]
pub struct Registration<'a> {
    sessions: &'a Sessions,
    pub control: Arc<SessionControl>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.sessions.map.remove(&self.control.id);
    }
}

impl Sessions {
    pub fn register(&self, tenant: Arc<Tenant>) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let control = Arc::new(SessionControl::new(id, tenant));
        self.map.insert(id, Arc::clone(&control));
        Registration {
            sessions: self,
            control,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Calls `f` on every live session.
    pub fn for_each(&self, mut f: impl FnMut(&Arc<SessionControl>)) {
        for entry in self.map.iter() {
            f(entry.value());
        }
    }

    /// Asks every session of `tenant` (or all, for `None`) to end; returns
    /// how many were asked.
    pub fn kill_where(&self, tenant: Option<&str>, reason: KillReason) -> usize {
        let mut n = 0;
        self.for_each(|s| {
            if tenant.is_none_or(|t| s.tenant.name() == t) {
                s.kill(reason);
                n += 1;
            }
        });
        n
    }
}

impl KillReason {
    /// What a session the proxy ends for this reason hears.
    pub fn refusal(self) -> crate::refusal::Refusal {
        use crate::refusal::Refusal;
        match self {
            KillReason::IdleTimeout => Refusal::IdleTimeout,
            KillReason::AdminDisconnect => Refusal::AdminDisconnect,
            KillReason::Shutdown => Refusal::Shutdown,
            KillReason::Suspended => Refusal::SuspendedWhileConnected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::tenants::Tenants;

    #[test]
    fn idle_only_when_every_request_is_answered() {
        let t = Tenants::default().get_or_insert("t");
        let s = SessionControl::new(1, t);
        s.note_batch(2, true); // pipelined: two Syncs after work
        assert_eq!(s.idle_for(clock_ms()), None);
        s.note_ready(1, b'T');
        assert_eq!(s.idle_for(clock_ms()), None);
        s.note_ready(1, b'T');
        assert!(s.idle_for(clock_ms()).is_some());
        assert_eq!(s.tx_status(), TxStatus::InTransaction);
    }

    /// Pings are answered but do not restart the idle clock, whatever
    /// order they come in with work.
    #[test]
    fn pings_do_not_restart_the_idle_clock() {
        let t = Tenants::default().get_or_insert("t");
        let s = SessionControl::new(1, t);
        let start = s.idle_since.load(Ordering::Relaxed);
        let idle_since = || s.idle_since.load(Ordering::Relaxed);
        // A ping alone, from login on.
        s.note_batch(1, false);
        assert_eq!(s.idle_for(clock_ms()), None, "answer outstanding");
        std::thread::sleep(Duration::from_millis(3));
        s.note_ready(1, b'I');
        assert_eq!(idle_since(), start);
        assert!(s.idle_for(clock_ms()).is_some());
        // Work, then a ping pipelined behind it: idle from the work's end.
        s.note_batch(1, true);
        s.note_batch(1, false);
        std::thread::sleep(Duration::from_millis(3));
        s.note_ready(1, b'I');
        let work_end = idle_since();
        assert!(work_end > start);
        assert_eq!(s.idle_for(clock_ms()), None, "the ping is outstanding");
        std::thread::sleep(Duration::from_millis(3));
        s.note_ready(1, b'I');
        assert_eq!(idle_since(), work_end);
        // A ping in flight, then work behind it: busy until the work's answer.
        s.note_batch(1, false);
        s.note_batch(1, true);
        s.note_ready(1, b'I');
        assert_eq!(s.idle_for(clock_ms()), None);
        assert_eq!(idle_since(), work_end);
        std::thread::sleep(Duration::from_millis(3));
        s.note_ready(1, b'I');
        assert!(idle_since() > work_end);
        // An Execute waiting for its Sync is busy until the Sync's answer,
        // although the Sync alone would be a ping.
        let before = idle_since();
        s.note_batch(0, true);
        assert_eq!(s.idle_for(clock_ms()), None);
        s.note_batch(1, false);
        std::thread::sleep(Duration::from_millis(3));
        s.note_ready(1, b'I');
        assert!(idle_since() > before);
        assert!(s.idle_for(clock_ms()).is_some());
        // COPY data while the COPY's Query is outstanding: idle from its end.
        s.note_batch(1, true);
        s.note_batch(0, true);
        s.note_ready(1, b'I');
        assert!(s.idle_for(clock_ms()).is_some());
    }

    /// The statement clock starts when a request reaches a cluster that
    /// owes nothing, or when the request before it is answered.
    #[test]
    fn the_statement_clock_times_each_request_from_its_own_start() {
        let t = Tenants::default().get_or_insert("t");
        let s = SessionControl::new(1, t);
        let since = || s.statement.since.load(Ordering::Relaxed);
        s.note_batch(1, true);
        let first = since();
        assert!(first > 0);
        assert!(s.outstanding(1) && !s.outstanding(2));
        std::thread::sleep(Duration::from_millis(3));
        // Pipelined behind it: still the first one's clock.
        s.note_batch(1, true);
        assert_eq!(since(), first);
        std::thread::sleep(Duration::from_millis(3));
        s.note_ready(1, b'I');
        let second = since();
        assert!(second > first, "the second runs from the first's answer");
        assert!(s.outstanding(2) && !s.outstanding(1));
        s.note_ready(1, b'I');
        assert!(!s.outstanding(3));
        assert_eq!(since(), second, "nothing runs: the clock is left alone");
        // An Execute flushed without a Sync runs too.
        std::thread::sleep(Duration::from_millis(3));
        s.note_batch(0, true);
        assert!(since() > second);
        assert!(s.outstanding(3));
    }

    #[tokio::test]
    async fn a_kill_wakes_every_waiter() {
        let t = Tenants::default().get_or_insert("t");
        let s = Arc::new(SessionControl::new(1, t));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let s = Arc::clone(&s);
                tokio::spawn(async move { s.killed().await })
            })
            .collect();
        tokio::task::yield_now().await;
        s.kill(KillReason::AdminDisconnect);
        for w in waiters {
            let reason = tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("waiter woken")
                .unwrap();
            assert_eq!(reason, KillReason::AdminDisconnect);
        }
    }

    #[tokio::test]
    async fn the_kill_signal_wakes_its_task() {
        let t = Tenants::default().get_or_insert("t");
        let s = Arc::new(SessionControl::new(1, t));
        let waiting = {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                // Two signals in one task, as the pump has.
                let (a, b) = tokio::join!(s.kill_signal(), s.kill_signal());
                (a, b)
            })
        };
        tokio::task::yield_now().await;
        s.kill(KillReason::Shutdown);
        let (a, b) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!((a, b), (KillReason::Shutdown, KillReason::Shutdown));
        assert_eq!(
            s.kill_signal().await,
            KillReason::Shutdown,
            "already killed"
        );
    }

    #[tokio::test]
    async fn first_kill_reason_wins_and_wakes_a_later_waiter() {
        let t = Tenants::default().get_or_insert("t");
        let s = SessionControl::new(1, t);
        s.kill(KillReason::IdleTimeout);
        s.kill(KillReason::Shutdown);
        assert_eq!(s.killed().await, KillReason::IdleTimeout);
    }

    #[test]
    fn registrations_leave_on_drop() {
        let sessions = Sessions::default();
        let t = Tenants::default().get_or_insert("t");
        let a = sessions.register(Arc::clone(&t));
        let _b = sessions.register(t);
        assert_eq!(
            sessions.kill_where(Some("t"), KillReason::AdminDisconnect),
            2
        );
        drop(a);
        assert_eq!(sessions.len(), 1);
    }
}
