//! The tier's `statement_timeout`: a request that has run that long on the
//! cluster is cancelled by the proxy, and the client is told why.
//!
//! PostgreSQL's own `statement_timeout` is the tenant's to change (`SET
//! statement_timeout = 0`), so the proxy keeps its own clock and uses the
//! cluster's cancel, with the session's real backend key, when it runs out.
//! The tenant's setting still works below the tier's limit (its own 57014
//! reaches the client untouched) and cannot lift it.
//!
//! **What the clock counts.** The proxy sees requests, not statements: a
//! simple Query, or the extended-protocol messages up to their Sync (or an
//! Execute flushed without one). The clock of a request starts when it is
//! sent to a cluster that owes nothing else, or, pipelined, when the
//! request before it is answered: only the time the cluster spends on it.
//! It stops at the ReadyForQuery that answers it. Unlike PostgreSQL 13 and
//! later, which time each statement of a multi-statement simple Query
//! separately, the proxy times the Query as a whole. While a COPY FROM
//! STDIN waits for the client's data (from the cluster's CopyInResponse to
//! the client's CopyDone or CopyFail) the clock does not run; it restarts
//! at the end of the data. A COPY TO STDOUT whose client reads slowly, like
//! any result, counts: the backend is held all the same.
//!
//! **Cost.** Nothing is armed per statement. Each session stores one
//! timestamp when a request starts running (see
//! [`SessionControl::note_batch`] and [`SessionControl::note_ready`]);
//! the idle sweeper (`crate::session::idle`, four times a second) calls [`check`]
//! for every busy session of a tier with a limit. The limit is honoured to
//! within the sweep interval (250 ms) plus the cancel's round trip.
//!
//! **The race.** The request may be answered just as the cancel goes out.
//! The cancel connection is opened first, and the request checked to be
//! still outstanding (its ReadyForQuery not yet through the proxy) right
//! before the cancel is written. PostgreSQL ignores a cancel that reaches
//! a backend waiting for the client, but one that reaches it after it has
//! started a request the client had already pipelined cancels that one:
//! the same best effort as any client's cancel. Only the 57014 answering
//! the request the proxy cancelled (counted by ReadyForQuery) is rewritten
//! to name the tier; any other reaches the client as PostgreSQL wrote it.
//! PostgreSQL signals the backend twice for one cancel (the process, then
//! its process group), and a second signal landing after the first has
//! cancelled the statement would cancel the client's next one: so while
//! the proxy's cancel is in flight (until the cluster closes its cancel
//! connection, by when both have landed) the client's next bytes wait
//! (see `crate::session::pump`, bounded by the cluster's `connect_timeout` twice).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::connect;
use crate::config::ClusterConfig;
use crate::protocol::error::sqlstate_of;
use crate::protocol::frame::{FrameHeader, Interest};
use crate::protocol::{sqlstate, ErrorFields};
use crate::refusal::{Refusal, RefusalReason};
use crate::runtime::shared::Shared;
use crate::session::hook::{Hook, Verdict};
use crate::session::live::{clock_ms, SessionControl};

/// The cluster's ErrorResponse for a cancelled statement is small; a
/// larger one is passed on untouched.
const MAX_ERROR: usize = 16 * 1024;

/// One sweep's look at `session` under `limit` (zero: none): cancels its
/// running request if it has run `limit` or longer. Returns whether a
/// cancel was started.
pub fn check(shared: &Shared, session: &Arc<SessionControl>, limit: Duration, now: u64) -> bool {
    if limit.is_zero() {
        return false;
    }
    let clock = &session.statement;
    let index = session.readies() + 1;
    if !session.outstanding(index)
        || clock.copy_in.load(Ordering::Relaxed) == index
        || clock.cancelled.load(Ordering::Relaxed) == index
    {
        return false;
    }
    let since = clock.since.load(Ordering::Relaxed);
    let limit_ms = limit.as_millis().min(u64::MAX as u128) as u64;
    if since == 0 || now.saturating_sub(since) < limit_ms || !session.outstanding(index) {
        return false;
    }
    let Some(key) = clock.cluster_key.get().cloned() else {
        // PostgreSQL always sends BackendKeyData; without it no cancel is
        // possible, which the log says once per request.
        clock.cancelled.store(index, Ordering::Relaxed);
        tracing::warn!(
            session = session.id,
            "statement_timeout reached but the cluster gave no cancel key"
        );
        return false;
    };
    // Armed before the cancel can be sent, so that its 57014 cannot come
    // back before the rewrite is ready; also keeps later sweeps from
    // sending another for the same request.
    clock.limit_ms.store(limit_ms, Ordering::Relaxed);
    clock.cancelled.store(index, Ordering::Release);
    shared
        .metrics
        .rejected(Some(&session.tenant), RefusalReason::StatementTimeout);
    let config = shared.config();
    let tls = shared.cluster_tls();
    let session = Arc::clone(session);
    clock.in_flight.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
        let sent = send_cancel(&config.cluster, &tls, &key, &session, index).await;
        session.statement.in_flight.fetch_sub(1, Ordering::AcqRel);
        session.statement.settled.notify_waiters();
        tracing::info!(
            session = session.id,
            tenant = session.tenant.name(),
            limit_ms,
            sent,
            "statement_timeout: request cancelled"
        );
    });
    true
}

/// Opens a cancel connection, and sends the cancel only if request `index`
/// is still outstanding once it is open; then waits (bounded) for the
/// cluster to close it, as `crate::backend::cancel::forward` does.
async fn send_cancel(
    config: &ClusterConfig,
    tls: &Arc<rustls::ClientConfig>,
    key: &crate::protocol::startup::CancelKey,
    session: &SessionControl,
    index: u64,
) -> bool {
    let mut stream = match connect::connect(config, tls).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(session = session.id, error = %e, "could not send the statement_timeout cancel");
            return false;
        }
    };
    if !session.outstanding(index) {
        let _ = stream.shutdown().await;
        return false;
    }
    if stream.write_all(&key.request_packet()).await.is_err() {
        return false;
    }
    let _ = stream.flush().await;
    let _ = tokio::time::timeout(config.connect_timeout, async {
        let mut sink = [0u8; 64];
        while let Ok(1..) = stream.read(&mut sink).await {}
    })
    .await;
    let _ = stream.shutdown().await;
    true
}

/// Client → cluster, around the session's own hook: the end of a COPY's
/// data restarts the clock.
#[derive(Debug)]
pub struct ClientSide<H> {
    inner: H,
    control: Arc<SessionControl>,
}

impl<H> ClientSide<H> {
    pub fn new(inner: H, control: Arc<SessionControl>) -> Self {
        ClientSide { inner, control }
    }
}

impl<H: Hook> Hook for ClientSide<H> {
    fn batch(&mut self) {
        self.inner.batch();
    }

    fn interest(&mut self, header: &FrameHeader) -> Interest {
        if matches!(header.tag, b'c' | b'f') {
            let clock = &self.control.statement;
            if clock.copy_in.swap(0, Ordering::Relaxed) != 0 {
                clock.since.store(clock_ms(), Ordering::Relaxed);
            }
        }
        self.inner.interest(header)
    }

    fn frame(&mut self, header: &FrameHeader, bytes: &[u8]) -> Verdict {
        self.inner.frame(header, bytes)
    }
}

/// Cluster → client, around the session's own hook: notes a COPY FROM
/// STDIN waiting on the client, and rewrites the 57014 answering the
/// proxy's own cancel.
#[derive(Debug)]
pub struct ClusterSide<H> {
    inner: H,
    control: Arc<SessionControl>,
    shared: Arc<Shared>,
    /// ReadyForQuery messages seen (the same count as the session's).
    readies: u64,
    /// For an ErrorResponse taken whole here: what the inner hook asked.
    in_hand: Option<Interest>,
}

impl<H> ClusterSide<H> {
    pub fn new(inner: H, control: Arc<SessionControl>, shared: Arc<Shared>) -> Self {
        ClusterSide {
            inner,
            control,
            shared,
            readies: 0,
            in_hand: None,
        }
    }

    /// The error replacing the cluster's, if `body` is the 57014 that
    /// answers the proxy's cancel.
    fn rewrite(&mut self, body: &[u8]) -> Option<ErrorFields> {
        if sqlstate_of(body) != Some(sqlstate::QUERY_CANCELED) {
            return None;
        }
        let clock = &self.control.statement;
        let index = self.readies + 1;
        // A request ends at its first error (the rest of a simple Query is
        // not run, the extended protocol skips to Sync): one to rewrite.
        if clock.cancelled.load(Ordering::Acquire) != index {
            return None;
        }
        let tier = self.shared.limits_for(self.control.tenant.name()).tier;
        // The 57014 the client gets instead of the cluster's "canceling
        // statement due to user request".
        let refusal = Refusal::StatementTimeout {
            tier,
            limit_ms: clock.limit_ms.load(Ordering::Relaxed),
        };
        Some(refusal.render())
    }
}

impl<H: Hook> Hook for ClusterSide<H> {
    fn batch(&mut self) {
        self.inner.batch();
    }

    fn interest(&mut self, header: &FrameHeader) -> Interest {
        let asked = self.inner.interest(header);
        match header.tag {
            b'G' => {
                self.control
                    .statement
                    .copy_in
                    .store(self.readies + 1, Ordering::Relaxed);
                asked
            }
            b'E' if header.frame_len <= MAX_ERROR
                && self.control.statement.cancelled.load(Ordering::Acquire) == self.readies + 1 =>
            {
                self.in_hand = Some(asked);
                Interest::Whole { max_len: MAX_ERROR }
            }
            _ => asked,
        }
    }

    fn frame(&mut self, header: &FrameHeader, bytes: &[u8]) -> Verdict {
        if header.tag == b'Z' {
            self.readies += 1;
        }
        let Some(asked) = self.in_hand.take() else {
            return self.inner.frame(header, bytes);
        };
        let verdict = match asked {
            Interest::Pass => Verdict::Forward,
            Interest::Peek { len } => {
                let _ = self.inner.frame(header, &bytes[..len.min(bytes.len())]);
                Verdict::Forward
            }
            Interest::Whole { .. } => self.inner.frame(header, bytes),
        };
        match self.rewrite(bytes.get(5..).unwrap_or_default()) {
            Some(error) => Verdict::Replace(error.to_bytes()),
            None => verdict,
        }
    }
}
