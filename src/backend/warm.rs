//! Warm cluster connections (proxy mode): when a session ends cleanly, its
//! cluster connection is reset (`DISCARD ALL`, checked) and kept for the
//! next login of the same database, role and startup parameters, which
//! then skips the cluster's fork and SCRAM exchange.
//!
//! Bounded two ways, so idle free tenants never pin backends on the shared
//! cluster: per tenant never more than its connection cap, and in all
//! `max_warm_backends`, the least recently used closed first. A warm
//! connection unused for `server_idle_timeout` is closed, as is one that
//! says anything while it waits (the cluster restarting, an idle-session
//! timeout on the cluster side).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::protocol::frame::FrameHeader;
use crate::protocol::startup::{CancelKey, StartupMessage};
use crate::stream::Stream;

/// What a warm connection is good for: a login of this database and role
/// with these startup parameters, at this protocol version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
    /// The client's parameters, sorted (order does not matter to the
    /// cluster).
    pub parameters: Vec<(String, String)>,
    pub protocol: u32,
}

impl PoolKey {
    pub fn new(startup: &StartupMessage, protocol: u32) -> PoolKey {
        let mut parameters = startup.params.clone();
        parameters.sort();
        PoolKey {
            database: startup.database().to_owned(),
            user: startup.user().to_owned(),
            parameters,
            protocol,
        }
    }
}

/// A logged-in cluster connection and what its login told.
#[derive(Debug)]
pub struct Backend {
    pub stream: Stream,
    /// The ParameterStatus messages the backend sent at login, replayed to
    /// each client that gets it (a `DISCARD ALL` restores those values).
    pub parameters: BytesMut,
    /// The backend's own cancel key (its real PID).
    pub key: CancelKey,
}

#[derive(Debug)]
struct Entry {
    key: PoolKey,
    backend: Backend,
    since: Instant,
}

/// The warm connections of the whole proxy.
#[derive(Debug, Default)]
pub struct WarmPool {
    entries: Mutex<Vec<Entry>>,
}

/// How long the reset of a returning connection may take.
const RESET_TIMEOUT: Duration = Duration::from_secs(2);

impl WarmPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A warm connection for `key` that is still healthy, most recently
    /// returned first; stale or broken ones met on the way are closed.
    pub fn take(&self, key: &PoolKey, idle_timeout: Duration) -> Option<Backend> {
        loop {
            let entry = {
                let mut entries = self.lock();
                let at = entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| &e.key == key)
                    .max_by_key(|(_, e)| e.since)
                    .map(|(i, _)| i)?;
                entries.swap_remove(at)
            };
            let mut backend = entry.backend;
            if entry.since.elapsed() < idle_timeout && quiet(&mut backend.stream) {
                return Some(backend);
            }
            close(backend);
        }
    }

    /// Keeps `backend` for `key` unless that would put more than
    /// `tenant_cap` (0 = no cap) warm connections on its database, or more
    /// than `max_total` in all (then the least recently used goes).
    pub fn put(&self, key: PoolKey, backend: Backend, tenant_cap: u32, max_total: usize) {
        if max_total == 0 {
            return close(backend);
        }
        let mut closing = Vec::new();
        {
            let mut entries = self.lock();
            let of_tenant = entries
                .iter()
                .filter(|e| e.key.database == key.database)
                .count();
            if tenant_cap > 0 && of_tenant >= tenant_cap as usize {
                // The tenant's oldest makes room: the newest is likeliest
                // to be wanted again.
                if let Some(oldest) = oldest_where(&entries, |e| e.key.database == key.database) {
                    closing.push(entries.swap_remove(oldest));
                }
            }
            while entries.len() >= max_total {
                let Some(oldest) = oldest_where(&entries, |_| true) else {
                    break;
                };
                closing.push(entries.swap_remove(oldest));
            }
            entries.push(Entry {
                key,
                backend,
                since: Instant::now(),
            });
        }
        for entry in closing {
            close(entry.backend);
        }
    }

    /// Closes the connections idle for `idle_timeout` or more; returns how
    /// many.
    pub fn expire(&self, idle_timeout: Duration) -> usize {
        let expired: Vec<Entry> = {
            let mut entries = self.lock();
            let (old, keep): (Vec<Entry>, Vec<Entry>) = entries
                .drain(..)
                .partition(|e| e.since.elapsed() >= idle_timeout);
            *entries = keep;
            old
        };
        let n = expired.len();
        for entry in expired {
            close(entry.backend);
        }
        n
    }

    /// Closes every warm connection (shutdown).
    pub fn clear(&self) -> usize {
        self.expire(Duration::ZERO)
    }

    /// Closes the warm connections of `database` (its tenant's sessions
    /// were disconnected by the operator).
    pub fn clear_tenant(&self, database: &str) -> usize {
        let gone: Vec<Entry> = {
            let mut entries = self.lock();
            let (gone, keep) = entries.drain(..).partition(|e| e.key.database == database);
            *entries = keep;
            gone
        };
        let n = gone.len();
        for entry in gone {
            close(entry.backend);
        }
        n
    }

    /// Warm connections now: in all, and of `database`.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len_of(&self, database: &str) -> usize {
        self.lock()
            .iter()
            .filter(|e| e.key.database == database)
            .count()
    }
}

fn oldest_where(entries: &[Entry], f: impl Fn(&Entry) -> bool) -> Option<usize> {
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| f(e))
        .min_by_key(|(_, e)| e.since)
        .map(|(i, _)| i)
}

/// True when the connection has nothing to say: no bytes, no EOF. A warm
/// backend that speaks while it waits (a FATAL from a restarting cluster,
/// a notice) is not handed to a client.
fn quiet(stream: &mut Stream) -> bool {
    use tokio::io::AsyncRead;
    let mut probe = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut probe);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // One poll, registering nothing: would it block? Then it is quiet.
    std::pin::Pin::new(stream)
        .poll_read(&mut cx, &mut buf)
        .is_pending()
}

/// Closes a connection politely (Terminate, then close) without holding
/// anyone up.
fn close(backend: Backend) {
    let mut stream = backend.stream;
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(RESET_TIMEOUT, async {
                let _ = stream.write_all(&[b'X', 0, 0, 0, 4]).await;
                let _ = stream.shutdown().await;
            })
            .await;
        });
    }
}

/// Resets a cluster connection a session has finished with, so that it
/// carries nothing of that session (`DISCARD ALL`: temporary tables,
/// prepared statements, settings, LISTEN, advisory locks, `SET ROLE`…).
/// True when the cluster confirmed it and the connection is idle again.
pub async fn reset(stream: &mut Stream) -> bool {
    let reset = async {
        stream.write_all(b"Q\0\0\0\x10DISCARD ALL\0").await.ok()?;
        let mut buf = BytesMut::with_capacity(256);
        let mut confirmed = false;
        loop {
            let header = loop {
                match FrameHeader::parse(&buf) {
                    Ok(Some(h)) if h.frame_len <= 64 * 1024 && buf.len() >= h.frame_len => break h,
                    Ok(Some(h)) if h.frame_len > 64 * 1024 => return None,
                    Err(_) => return None,
                    _ => {}
                }
                if stream.read_buf(&mut buf).await.ok()? == 0 {
                    return None;
                }
            };
            let frame = buf.split_to(header.frame_len);
            match header.tag {
                b'C' => confirmed = &frame[5..] == b"DISCARD ALL\0",
                // ParameterStatus as settings return to their defaults,
                // notices: expected on the way.
                b'S' | b'N' => {}
                b'Z' => return Some(confirmed && frame.get(5) == Some(&b'I') && buf.is_empty()),
                _ => return None,
            }
        }
    };
    matches!(
        tokio::time::timeout(RESET_TIMEOUT, reset).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(db: &str) -> PoolKey {
        PoolKey {
            database: db.to_owned(),
            user: "u".to_owned(),
            parameters: vec![],
            protocol: 3 << 16,
        }
    }

    async fn backend() -> (Backend, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (
            Backend {
                stream: Stream::Plain(client),
                parameters: BytesMut::new(),
                key: CancelKey {
                    pid: 1,
                    secret: vec![0; 4].into(),
                },
            },
            server,
        )
    }

    #[tokio::test]
    async fn bounded_per_tenant_and_in_all_lru_first() {
        let pool = WarmPool::default();
        let mut peers = Vec::new();
        for db in ["a", "a", "a", "b"] {
            let (b, peer) = backend().await;
            peers.push(peer);
            pool.put(key(db), b, 2, 3);
        }
        assert_eq!(pool.len_of("a"), 2, "the tenant's cap");
        assert_eq!(pool.len(), 3);
        let (b, _peer) = backend().await;
        pool.put(key("c"), b, 0, 3);
        assert_eq!(pool.len(), 3, "the total bound, the oldest gone");
        assert_eq!(pool.len_of("a"), 1);
        assert!(pool.take(&key("b"), Duration::from_secs(30)).is_some());
        assert!(pool.take(&key("b"), Duration::from_secs(30)).is_none());
        assert_eq!(pool.expire(Duration::ZERO), 2);
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn a_connection_that_spoke_or_closed_is_not_handed_out() {
        let pool = WarmPool::default();
        let (b, mut peer) = backend().await;
        pool.put(key("a"), b, 0, 10);
        peer.write_all(b"E").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(&key("a"), Duration::from_secs(30)).is_none());
        let (b, peer) = backend().await;
        pool.put(key("a"), b, 0, 10);
        drop(peer);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(&key("a"), Duration::from_secs(30)).is_none());
        let (b, _peer) = backend().await;
        pool.put(key("a"), b, 0, 10);
        assert!(pool.take(&key("a"), Duration::ZERO).is_none(), "expired");
    }
}
