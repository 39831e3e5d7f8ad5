//! The passthrough: after login, bytes flow both ways untouched while the
//! proxy watches a few message types go by.
//!
//! Each direction is its own loop (so a client that pipelines writes while
//! the cluster streams results can never deadlock the pair): read what has
//! arrived, walk the complete frame headers ([`crate::session::walk`]), let the hooks see the few tags
//! they care about, write the whole batch with one write. Frames are never
//! decoded or copied, and a frame larger than the buffer streams through in
//! pieces, so memory per session stays bounded by the read size (plus, for
//! the few frames a hook asks to see whole, their bounded size).
//!
//! The pump knows no policy. It tracks what idle detection needs (requests
//! and the ReadyForQuery that answer them, and whether a batch did work,
//! which `crate::session::ping` decides: keep-alive pings are not activity) and
//! hands the frames a [`Hook`]
//! asks for to it; the hook answers with a [`Verdict`]: forward the frame,
//! or send other bytes in its place. Quota and statement policy live behind
//! that trait, in `crate::rules`.

use std::future::Future;
use std::io;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::frame::{FrameError, Scanner};
use crate::refusal::Refusal;
use crate::session::hook::Hook;
use crate::session::live::{KillReason, SessionControl};
use crate::session::ping::{self, PingWatch, Watched};
use crate::session::walk::{walk_from_client, walk_from_cluster, Splices};
use crate::stream::{ReadSide, Stream, WriteSide};

/// The read size while traffic is light. An idle TLS leg waits on a buffer
/// this small (only a read can tell whether rustls has data); an idle
/// socket leg waits on none.
const SMALL_READ: usize = 2 * 1024;
/// The read size once reads fill the buffer (bulk results, COPY).
const LARGE_READ: usize = 64 * 1024;
/// How long the proxy's own last words (an error, a Terminate) may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after a kill request a session stuck in a write is cut off.
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// Why the pump stopped.
#[derive(Debug)]
pub enum PumpEnd {
    /// The client sent Terminate.
    ClientTerminated,
    /// The client closed its connection without Terminate.
    ClientClosed,
    /// The cluster closed the connection (after a FATAL it sent, a crash, …).
    ClusterClosed,
    /// The proxy ended the session: idle timeout, operator, shutdown.
    Killed(KillReason),
    ClientIo(io::Error),
    ClusterIo(io::Error),
    ClientProtocol(FrameError),
    ClusterProtocol(FrameError),
}

impl PumpEnd {
    /// A short label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            PumpEnd::ClientTerminated => "client_terminated",
            PumpEnd::ClientClosed => "client_closed",
            PumpEnd::ClusterClosed => "cluster_closed",
            PumpEnd::Killed(reason) => reason.as_str(),
            PumpEnd::ClientIo(_) => "client_error",
            PumpEnd::ClusterIo(_) => "cluster_error",
            PumpEnd::ClientProtocol(_) => "client_protocol_error",
            PumpEnd::ClusterProtocol(_) => "cluster_protocol_error",
        }
    }
}

/// Bytes moved by a session.
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    pub from_client: u64,
    pub to_client: u64,
}

/// Where a direction stood when the pump stopped.
#[derive(Debug)]
struct Progress {
    bytes: u64,
    /// True between the start and the end of a write: the peer may have part
    /// of a message.
    mid_write: bool,
    /// True when everything written ends on a message boundary.
    at_boundary: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            bytes: 0,
            mid_write: false,
            at_boundary: true,
        }
    }
}

impl Progress {
    /// True when a message of the proxy's own can follow what was written.
    fn clean(&self) -> bool {
        !self.mid_write && self.at_boundary
    }
}

/// How a session ended, and what is left of it.
#[derive(Debug)]
pub struct Ended {
    pub end: PumpEnd,
    pub traffic: Traffic,
    /// The cluster connection, when `keep_cluster` was asked for and the
    /// session ended cleanly: the client said Terminate with every request
    /// answered, outside a transaction, with nothing of the cluster's
    /// unsent and no message cut in half. Otherwise it is closed.
    pub cluster: Option<Stream>,
}

/// Runs the session until either side ends it or the proxy does.
/// `greeting` goes to the client first (the end of its login, which the
/// session holds back until it is registered); `from_client` and
/// `from_cluster` are the session's rules for each direction;
/// `keep_cluster` asks for the cluster connection back when the session
/// ends cleanly (see [`Ended::cluster`]).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Stream,
    cluster: Stream,
    greeting: BytesMut,
    client_pending: BytesMut,
    cluster_pending: BytesMut,
    control: &SessionControl,
    from_client: &mut (impl Hook + Send),
    from_cluster: &mut (impl Hook + Send),
    keep_cluster: bool,
) -> Ended {
    let (mut client_rx, mut client_tx) = client.split();
    let (mut cluster_rx, mut cluster_tx) = cluster.split();
    let mut up = Progress::default();
    let mut down = Progress::default();
    let mut cluster_buf = cluster_pending;

    let end = {
        let upstream = client_to_cluster(
            &mut client_rx,
            &mut cluster_tx,
            client_pending,
            control,
            &mut up,
            from_client,
            keep_cluster,
        );
        let downstream = cluster_to_client(
            &mut cluster_rx,
            &mut client_tx,
            greeting,
            &mut cluster_buf,
            control,
            &mut down,
            from_cluster,
        );
        let stuck = async {
            control.kill_signal().await;
            tokio::time::sleep(KILL_DEADLINE).await;
        };
        tokio::select! {
            end = upstream => end,
            end = downstream => end,
            _ = stuck => PumpEnd::Killed(control.kill_reason().unwrap_or(KillReason::Shutdown)),
        }
    };

    let mut client = Stream::unsplit(client_rx, client_tx);
    let mut cluster = Stream::unsplit(cluster_rx, cluster_tx);
    let keep = keep_cluster
        && matches!(end, PumpEnd::ClientTerminated)
        && up.clean()
        && down.clean()
        && cluster_buf.is_empty()
        && control.settled();
    let goodbye = async {
        let last_word = match &end {
            PumpEnd::Killed(reason) => control.announce_once().then(|| reason.refusal().render()),
            PumpEnd::ClientProtocol(e) => Some(Refusal::Message(e.clone()).render()),
            _ => None,
        };
        if let Some(error) = last_word {
            if down.clean() {
                let _ = client.write_all(&error.to_bytes()).await;
            }
        }
        // Tell the cluster the session is over unless the client did (or
        // the connection is kept), so it logs a clean disconnect rather
        // than an unexpected EOF.
        if !keep {
            let terminated = matches!(end, PumpEnd::ClientTerminated | PumpEnd::ClusterClosed);
            if (!terminated || keep_cluster) && up.clean() {
                let _ = cluster.write_all(&[b'X', 0, 0, 0, 4]).await;
            }
            let _ = cluster.shutdown().await;
        }
        let _ = client.shutdown().await;
    };
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
    Ended {
        end,
        traffic: Traffic {
            from_client: up.bytes,
            to_client: down.bytes,
        },
        cluster: keep.then_some(cluster),
    }
}

async fn client_to_cluster(
    rx: &mut ReadSide,
    tx: &mut WriteSide,
    mut buf: BytesMut,
    control: &SessionControl,
    progress: &mut Progress,
    hook: &mut impl Hook,
    keep_cluster: bool,
) -> PumpEnd {
    let mut scanner = Scanner::default();
    let mut splices = Splices::default();
    let mut pings = PingWatch::default();
    let mut last_read = 0;
    loop {
        let mut watched = Watched::new(&mut *hook, &mut pings);
        watched.batch();
        let requests = match walk_from_client(&mut scanner, &buf, &mut watched, &mut splices) {
            Ok(requests) => requests,
            Err(e) => {
                drain_refused(rx, &mut buf, &scanner, &e).await;
                return PumpEnd::ClientProtocol(e);
            }
        };
        // Counted before the write, so a ReadyForQuery can never be seen
        // before the request it answers.
        control.note_batch(requests.count, ping::work_in_batch(&mut pings, &scanner));
        let walked = scanner.walked();
        if walked > 0 {
            if control.statement.cancel_in_flight() {
                // The proxy's own cancel lands before the client's next
                // bytes can be hit by it (see `crate::session::statement_time`).
                control.statement.cancel_settled().await;
            }
            control.tenant.note_from_client(walked, requests.count);
            if let (Some((start, len)), true) = (requests.terminate, keep_cluster) {
                // The cluster connection may be kept for another client:
                // the Terminate is this client's, not the connection's.
                splices.push(start, len, BytesMut::new());
            }
            if let Err(e) = forward(tx, &mut buf, &mut scanner, &mut splices, progress).await {
                return PumpEnd::ClusterIo(e);
            }
            if requests.terminate.is_some() {
                return PumpEnd::ClientTerminated;
            }
        }
        match read_more(rx, &mut buf, &mut last_read).await {
            Ok(0) => return PumpEnd::ClientClosed,
            Ok(_) => {}
            Err(e) => return PumpEnd::ClientIo(e),
        }
    }
}

async fn cluster_to_client(
    rx: &mut ReadSide,
    tx: &mut WriteSide,
    greeting: BytesMut,
    buf: &mut BytesMut,
    control: &SessionControl,
    progress: &mut Progress,
    hook: &mut impl Hook,
) -> PumpEnd {
    if !greeting.is_empty() {
        // Whole messages of the login's: not the session's traffic.
        progress.mid_write = true;
        if let Err(e) = write_flush(tx, &greeting).await {
            return PumpEnd::ClientIo(e);
        }
        progress.mid_write = false;
    }
    // Not kept for the session's life: an idle session holds no more than
    // it must.
    drop(greeting);
    let mut scanner = Scanner::default();
    let mut splices = Splices::default();
    let mut last_read = 0;
    // Polled on every wake-up: an atomic load, not a Notify.
    let killed = control.kill_signal();
    tokio::pin!(killed);
    loop {
        hook.batch();
        let readies = match walk_from_cluster(&mut scanner, buf, hook, &mut splices) {
            Ok(readies) => readies,
            Err(e) => return PumpEnd::ClusterProtocol(e),
        };
        let walked = scanner.walked();
        if walked > 0 {
            if let Err(e) = forward(tx, buf, &mut scanner, &mut splices, progress).await {
                return PumpEnd::ClientIo(e);
            }
            control.tenant.note_to_client(walked);
            if readies.count > 0 {
                control.note_ready(readies.count, readies.status);
            }
        }
        tokio::select! {
            biased;
            reason = &mut killed => return PumpEnd::Killed(reason),
            read = read_more(rx, buf, &mut last_read) => match read {
                Ok(0) => return PumpEnd::ClusterClosed,
                Ok(_) => {}
                Err(e) => return PumpEnd::ClusterIo(e),
            },
        }
    }
}

/// The most of a refused message read and thrown away before the refusal
/// is sent: PostgreSQL's own bound on a message's length.
const DRAIN_MAX: usize = 1 << 30;
/// How long the rest of a refused message may take to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pause in the middle of the refused message ends the draining:
/// a client that stopped writing is waiting for an answer.
const DRAIN_PAUSE: Duration = Duration::from_millis(250);
/// After the refused message, how long a pause in the client's writes ends
/// the draining (the messages it pipelined behind it usually arrive with it).
const DRAIN_QUIET: Duration = Duration::from_millis(50);
/// What is read and thrown away after the refused message, at most.
const DRAIN_AFTER: usize = 1 << 20;

/// Before a message too long to inspect is refused: reads and throws away
/// the rest of it (bounded in bytes and time), and whatever the client sent
/// right behind it. A client that writes its whole message before reading
/// (Postgrex, tokio-postgres) would otherwise have its write cut off by the
/// close and never read the `54000` waiting for it.
async fn drain_refused(rx: &mut ReadSide, buf: &mut BytesMut, scanner: &Scanner, e: &FrameError) {
    let FrameError::TooLong { len, .. } = *e else {
        return;
    };
    // The refused frame starts where the walk stopped.
    let have = buf.len().saturating_sub(scanner.walked());
    let mut left = len.min(DRAIN_MAX).saturating_sub(have);
    let mut after = DRAIN_AFTER;
    let drain = async {
        loop {
            buf.clear();
            if buf.capacity() < LARGE_READ {
                buf.reserve(LARGE_READ);
            }
            let quiet = if left > 0 { DRAIN_PAUSE } else { DRAIN_QUIET };
            let Ok(read) = tokio::time::timeout(quiet, rx.read_buf(buf)).await else {
                return;
            };
            let n = match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let into_frame = n.min(left);
            left -= into_frame;
            after = after.saturating_sub(n - into_frame);
            if left == 0 && after == 0 {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    *buf = BytesMut::new();
}

/// Reads whatever is available into `buf`, sizing the buffer to the
/// traffic: a small buffer while reads come in small, a large one while
/// reads come in full (bulk results, COPY), and none while a socket has
/// nothing to read (so an idle session waits on little memory). `last` is
/// the size of the previous read. Cancel-safe: nothing is lost if the
/// future is dropped before it completes.
async fn read_more(rx: &mut ReadSide, buf: &mut BytesMut, last: &mut usize) -> io::Result<usize> {
    let want = if *last >= SMALL_READ {
        LARGE_READ
    } else {
        SMALL_READ
    };
    if buf.is_empty() && buf.capacity() > want {
        // Traffic got light: give the large buffer back.
        *buf = BytesMut::new();
    }
    if buf.is_empty() {
        // A stream with nothing to read yet is waited on without a buffer.
        let readable = rx.wait_readable();
        tokio::pin!(readable);
        match std::future::poll_fn(|cx| Poll::Ready(readable.as_mut().poll(cx))).await {
            Poll::Ready(ready) => {
                ready?;
            }
            Poll::Pending => {
                *buf = BytesMut::new();
                readable.await?;
            }
        }
    }
    if buf.capacity() - buf.len() < want / 2 {
        buf.reserve(want);
    }
    let n = rx.read_buf(buf).await?;
    *last = n;
    Ok(n)
}

/// Writes the walked part of `buf` (with any replacements) in one write,
/// then drops it from `buf`.
async fn forward(
    tx: &mut (impl AsyncWrite + Unpin),
    buf: &mut BytesMut,
    scanner: &mut Scanner,
    splices: &mut Splices,
    progress: &mut Progress,
) -> io::Result<()> {
    let walked = scanner.walked();
    progress.mid_write = true;
    if splices.is_empty() {
        write_flush(tx, &buf[..walked]).await?;
    } else {
        let out = splices.apply(buf, walked);
        write_flush(tx, &out).await?;
    }
    progress.mid_write = false;
    progress.bytes += walked as u64;
    progress.at_boundary = scanner.at_boundary();
    buf.advance(walked);
    scanner.consumed();
    Ok(())
}

async fn write_flush(tx: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> io::Result<()> {
    tx.write_all(bytes).await?;
    tx.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle session holds no read buffer for a plain socket: the pump
    /// waits for readiness first and takes a buffer only to read.
    #[tokio::test]
    async fn a_socket_with_nothing_to_read_is_waited_on_without_a_buffer() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let (mut rx, _tx) = Stream::Unix(ours).split();
        let mut buf = BytesMut::with_capacity(SMALL_READ);
        let mut last = 0;
        {
            let read = read_more(&mut rx, &mut buf, &mut last);
            tokio::pin!(read);
            let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
            assert!(first.is_pending(), "nothing was sent yet");
        }
        assert_eq!(buf.capacity(), 0, "the buffer was given back while waiting");
        theirs.write_all(b"hello").await.unwrap();
        let n = read_more(&mut rx, &mut buf, &mut last).await.unwrap();
        assert_eq!((n, &buf[..]), (5, &b"hello"[..]));
        assert!(buf.capacity() >= SMALL_READ / 2);
    }
}
