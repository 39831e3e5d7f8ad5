//! Query cancellation across the proxy.
//!
//! Each client gets a BackendKeyData whose process ID is the cluster's real
//! one (so `pg_backend_pid()`, NOTIFY sender PIDs and `pg_stat_activity`
//! agree with what the client was told) and whose secret is the proxy's own,
//! random one. A CancelRequest carrying that pair is forwarded to the cluster
//! with the real secret; anything else is dropped silently, as PostgreSQL
//! does.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster;
use crate::config::ClusterConfig;
use crate::protocol::startup::CancelKey;

/// Proxy key → cluster key for every live session.
#[derive(Debug, Default)]
pub struct CancelKeys {
    map: DashMap<CancelKey, CancelKey>,
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
    }
}

impl CancelKeys {
    /// Issues the client key for a session whose cluster key is `cluster_key`.
    pub fn register(self: &Arc<Self>, cluster_key: CancelKey) -> CancelRegistration {
        loop {
            let client_key = CancelKey {
                pid: cluster_key.pid,
                secret: rand::random(),
            };
            if let dashmap::Entry::Vacant(slot) = self.map.entry(client_key) {
                slot.insert(cluster_key);
                return CancelRegistration {
                    keys: Arc::clone(self),
                    client_key,
                };
            }
        }
    }

    pub fn lookup(&self, client_key: &CancelKey) -> Option<CancelKey> {
        self.map.get(client_key).map(|k| *k.value())
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
    client_key: CancelKey,
    config: &ClusterConfig,
    tls: &Arc<rustls::ClientConfig>,
) -> bool {
    let Some(cluster_key) = keys.lookup(&client_key) else {
        tracing::debug!(
            pid = client_key.pid,
            "cancel request with unknown key ignored"
        );
        return false;
    };
    let mut stream = match cluster::connect(config, tls).await {
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
        let cluster_key = CancelKey {
            pid: 4242,
            secret: 99,
        };
        let reg = keys.register(cluster_key);
        assert_eq!(reg.client_key.pid, 4242);
        assert_eq!(keys.lookup(&reg.client_key), Some(cluster_key));
        let wrong = CancelKey {
            pid: 4242,
            secret: reg.client_key.secret.wrapping_add(1),
        };
        assert_eq!(keys.lookup(&wrong), None);
        let client_key = reg.client_key;
        drop(reg);
        assert_eq!(keys.lookup(&client_key), None);
    }
}
