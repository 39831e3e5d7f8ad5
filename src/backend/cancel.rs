//! Query cancellation across the proxy.
//!
//! Each client gets a BackendKeyData whose process ID is the cluster's real
//! one (so `pg_backend_pid()`, NOTIFY sender PIDs and `pg_stat_activity`
//! agree with what the client was told) and whose secret is the proxy's own,
//! random one: 4 bytes under protocol 3.0, 32 under 3.2 (a key that cannot
//! be guessed). A CancelRequest carrying that pair is forwarded to the
//! cluster with the real key; anything else is dropped silently, as
//! PostgreSQL does.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::connect;
use crate::config::ClusterConfig;
use crate::limits::fleet::{Fleet, Op, OpsQueue};
use crate::protocol::startup::CancelKey;

/// Proxy key → cluster key for every live session.
#[derive(Debug, Default)]
pub struct CancelKeys {
    map: DashMap<CancelKey, CancelKey>,
    /// In a fleet, where registrations are mirrored, so that a cancel
    /// reaching another instance finds its session.
    mirror: std::sync::OnceLock<OpsQueue>,
}

/// Keeps a mapping alive for as long as its session; removes it on drop.
#[derive(Debug)]
pub struct CancelRegistration {
    keys: Arc<CancelKeys>,
    pub client_key: CancelKey,
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        self.keys.map.remove(&self.client_key);
        if let Some(mirror) = self.keys.mirror.get() {
            mirror.push(Op::CancelDel(self.client_key.clone()));
        }
    }
}

/// Length of the proxy's own secrets under protocol 3.2 (PostgreSQL 18
/// uses the same).
pub const LONG_SECRET: usize = 32;

impl CancelKeys {
    /// Issues the client key for a session whose cluster key is
    /// `cluster_key`, with a secret of `secret_len` random bytes (4 for
    /// protocol 3.0, [`LONG_SECRET`] for 3.2).
    pub fn register(
        self: &Arc<Self>,
        cluster_key: CancelKey,
        secret_len: usize,
    ) -> CancelRegistration {
        loop {
            let mut secret = vec![0u8; secret_len];
            rand::fill(&mut secret[..]);
            let client_key = CancelKey {
                pid: cluster_key.pid,
                secret: secret.into(),
            };
            if let dashmap::Entry::Vacant(slot) = self.map.entry(client_key.clone()) {
                if let Some(mirror) = self.mirror.get() {
                    mirror.push(Op::CancelAdd(client_key.clone(), cluster_key.clone()));
                }
                slot.insert(cluster_key);
                return CancelRegistration {
                    keys: Arc::clone(self),
                    client_key,
                };
            }
        }
    }

    /// Mirrors every registration (and its end) to a fleet's store.
    pub fn mirror_to(&self, ops: OpsQueue) {
        let _ = self.mirror.set(ops);
    }

    pub fn lookup(&self, client_key: &CancelKey) -> Option<CancelKey> {
        self.map.get(client_key).map(|k| k.value().clone())
    }

    /// Every live session's client key and cluster key (for a fleet's
    /// store that lost them).
    pub fn snapshot(&self) -> Vec<(CancelKey, CancelKey)> {
        self.map
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Forwards a client's cancel request if its key is known, and returns
/// once the cluster has acted on it: PostgreSQL closes a cancel connection
/// only after signalling the backend, and libpq relies on that order (its
/// `PQcancel` waits for the close, so that the client's *next* statement
/// cannot be hit by a late signal meant for the previous one). So the
/// proxy waits for the cluster's close (bounded by `connect_timeout`)
/// before its caller closes the client's cancel connection.
///
/// Returns whether a request was sent; failures to reach the cluster are
/// logged, not returned, as the client expects no answer either way.
pub async fn forward(
    keys: &CancelKeys,
    fleet: &Fleet,
    client_key: &CancelKey,
    config: &ClusterConfig,
    tls: &Arc<rustls::ClientConfig>,
) -> bool {
    // This instance's sessions first; in a fleet, then the others'.
    let cluster_key = match keys.lookup(client_key) {
        Some(key) => Some(key),
        None => fleet.lookup_cancel(client_key).await,
    };
    let Some(cluster_key) = cluster_key else {
        tracing::debug!(
            pid = client_key.pid,
            "cancel request with unknown key ignored"
        );
        return false;
    };
    let mut stream = match connect::connect(config, tls).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(pid = client_key.pid, error = %e, "could not forward cancel request");
            return false;
        }
    };
    if let Err(e) = stream.write_all(&cluster_key.request_packet()).await {
        tracing::warn!(pid = client_key.pid, error = %e, "could not forward cancel request");
        return false;
    }
    let _ = stream.flush().await;
    // The cluster sends nothing back; its close means "done". Anything it
    // does send is drained, a bounded amount at a time.
    let closed = tokio::time::timeout(config.connect_timeout, async {
        let mut sink = [0u8; 64];
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    if closed.is_err() {
        tracing::warn!(
            pid = client_key.pid,
            "the cluster did not close the cancel connection within connect_timeout"
        );
    }
    let _ = stream.shutdown().await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_the_pid_and_vanish_with_their_session() {
        let keys = Arc::new(CancelKeys::default());
        for (cluster_secret, secret_len) in [(vec![0, 0, 0, 99], 4), (vec![5u8; 32], LONG_SECRET)] {
            let cluster_key = CancelKey {
                pid: 4242,
                secret: cluster_secret.into(),
            };
            let reg = keys.register(cluster_key.clone(), secret_len);
            assert_eq!(reg.client_key.pid, 4242);
            assert_eq!(reg.client_key.secret.len(), secret_len);
            assert_ne!(
                reg.client_key.secret, cluster_key.secret,
                "the proxy's own secret"
            );
            assert_eq!(keys.lookup(&reg.client_key), Some(cluster_key));
            let mut wrong = reg.client_key.clone();
            let mut secret = wrong.secret.to_vec();
            secret[0] = secret[0].wrapping_add(1);
            wrong.secret = secret.into();
            assert_eq!(keys.lookup(&wrong), None);
            let mut truncated = reg.client_key.clone();
            truncated.secret = reg.client_key.secret[..secret_len - 1].into();
            assert_eq!(keys.lookup(&truncated), None);
            let client_key = reg.client_key.clone();
            drop(reg);
            assert_eq!(keys.lookup(&client_key), None);
        }
    }
}
