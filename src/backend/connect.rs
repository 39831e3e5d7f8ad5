//! Connections from the proxy to the cluster: TCP, then TLS if configured.

use std::sync::Arc;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::config::{ClusterConfig, ClusterTlsMode};
use crate::stream::Stream;

/// The 8-byte SSLRequest packet.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("could not connect to the database cluster at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("could not connect to the database cluster at {addr}: timed out after {secs:.1}s")]
    Timeout { addr: String, secs: f64 },
    #[error("the database cluster at {addr} does not accept TLS, which cluster.tls = \"require\" demands")]
    TlsRefused { addr: String },
    #[error("TLS handshake with the database cluster at {addr} failed: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
}

/// Opens a connection to the cluster, ready for a StartupMessage or a
/// CancelRequest. A `host` that starts with `/` is a directory holding the
/// cluster's Unix socket, as in libpq (TLS does not apply there): the
/// cheapest link to a cluster on the same machine.
pub async fn connect(
    config: &ClusterConfig,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Stream, ClusterError> {
    if let Some(path) = unix_socket_path(config) {
        let addr = path.clone();
        let attempt = async {
            UnixStream::connect(&path)
                .await
                .map(Stream::Unix)
                .map_err(|source| ClusterError::Connect {
                    addr: addr.clone(),
                    source,
                })
        };
        return match tokio::time::timeout(config.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ClusterError::Timeout {
                addr,
                secs: config.connect_timeout.as_secs_f64(),
            }),
        };
    }
    let addr = format!("{}:{}", config.host, config.port);
    let attempt = async {
        let tcp = TcpStream::connect((config.host.as_str(), config.port))
            .await
            .map_err(|source| ClusterError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        if config.tls == ClusterTlsMode::Disable {
            return Ok(Stream::Plain(tcp));
        }
        negotiate_tls(tcp, config, tls, &addr).await
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ClusterError::Timeout {
            addr,
            secs: config.connect_timeout.as_secs_f64(),
        }),
    }
}

async fn negotiate_tls(
    mut tcp: TcpStream,
    config: &ClusterConfig,
    tls: &Arc<rustls::ClientConfig>,
    addr: &str,
) -> Result<Stream, ClusterError> {
    let io_error = |source| ClusterError::Connect {
        addr: addr.to_owned(),
        source,
    };
    tcp.write_all(&SSL_REQUEST).await.map_err(io_error)?;
    let answer = tcp.read_u8().await.map_err(io_error)?;
    if answer != b'S' {
        return match config.tls {
            ClusterTlsMode::Require | ClusterTlsMode::VerifyFull => Err(ClusterError::TlsRefused {
                addr: addr.to_owned(),
            }),
            _ => Ok(Stream::Plain(tcp)),
        };
    }
    let name = rustls_pki_types::ServerName::try_from(config.host.clone()).unwrap_or_else(|_| {
        rustls_pki_types::ServerName::try_from("localhost").expect("a valid DNS name")
    });
    let stream = TlsConnector::from(Arc::clone(tls))
        .connect(name, tcp)
        .await
        .map_err(|source| ClusterError::Tls {
            addr: addr.to_owned(),
            source,
        })?;
    Ok(Stream::ClusterTls(Box::new(stream)))
}

/// The socket path for a Unix-socket `host` (`/run/postgresql` and port 5432
/// make `/run/postgresql/.s.PGSQL.5432`), `None` for a TCP host.
pub fn unix_socket_path(config: &ClusterConfig) -> Option<String> {
    config.host.starts_with('/').then(|| {
        format!(
            "{}/.s.PGSQL.{}",
            config.host.trim_end_matches('/'),
            config.port
        )
    })
}
