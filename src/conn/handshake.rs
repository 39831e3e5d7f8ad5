//! The client's side of the handshake, up to its StartupMessage: TLS (after
//! an SSLRequest, or "direct" as PostgreSQL 17 clients may do), declining GSS
//! encryption, and telling cancel requests apart from sessions.

use std::io;

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::config::ClientTlsMode;
use crate::protocol::startup::{self, CancelKey, StartupError, StartupMessage, StartupPacket};
use crate::refusal::Refusal;
use crate::stream::Stream;
use crate::tls::ALPN_POSTGRESQL;

/// The first byte of a TLS handshake record: a direct-TLS client.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a new connection turned out to be.
#[derive(Debug)]
pub enum Opening {
    Session {
        stream: Stream,
        startup: StartupMessage,
    },
    /// A CancelRequest. The stream stays open until the request has been
    /// acted on: its close is the client's acknowledgement.
    Cancel { stream: Stream, key: CancelKey },
}

/// Why a connection ended before its StartupMessage was accepted.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The client went away or the socket failed; nobody to tell.
    #[error("connection lost during startup: {0}")]
    Io(#[from] io::Error),
    /// The TLS handshake failed; there is no channel to send an error on.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The proxy refuses; `refusal` is to be said on `stream` before
    /// closing.
    #[error("{}", .refusal.render())]
    Refused {
        stream: Box<Stream>,
        refusal: Refusal,
    },
}

/// Runs the handshake on a freshly accepted connection.
pub async fn handshake(
    tcp: TcpStream,
    acceptor: Option<&TlsAcceptor>,
    mode: ClientTlsMode,
) -> Result<Opening, HandshakeError> {
    let mut first = [0u8; 1];
    let mut stream = if tcp.peek(&mut first).await? == 1 && first[0] == TLS_HANDSHAKE_RECORD {
        let Some(acceptor) = acceptor else {
            return Err(HandshakeError::Tls(
                "direct TLS connection attempted but TLS is disabled".to_owned(),
            ));
        };
        let tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| HandshakeError::Tls(e.to_string()))?;
        // PostgreSQL insists on ALPN for direct TLS so that a TLS connection
        // meant for another protocol can never be taken for its own.
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
            return Err(HandshakeError::Tls(
                "received direct SSL connection request without ALPN protocol negotiation extension"
                    .to_owned(),
            ));
        }
        Stream::ServerTls(Box::new(tls))
    } else {
        Stream::Plain(tcp)
    };

    let mut body = BytesMut::new();
    loop {
        let len = stream.read_u32().await?;
        let len = match startup::check_length(len) {
            Ok(len) => len,
            Err(e) => return Err(refuse(stream, Refusal::Startup(e))),
        };
        body.clear();
        body.resize(len - 4, 0);
        stream.read_exact(&mut body).await?;
        match startup::decode(&body) {
            Ok(StartupPacket::SslRequest) => {
                stream = match (stream, acceptor) {
                    (Stream::Plain(mut tcp), Some(acceptor)) => {
                        tcp.write_all(b"S").await?;
                        let tls = acceptor
                            .accept(tcp)
                            .await
                            .map_err(|e| HandshakeError::Tls(e.to_string()))?;
                        Stream::ServerTls(Box::new(tls))
                    }
                    (Stream::Plain(mut tcp), None) => {
                        tcp.write_all(b"N").await?;
                        Stream::Plain(tcp)
                    }
                    (tls, _) => return Err(refuse(tls, Refusal::SslRequestOnTls)),
                };
            }
            Ok(StartupPacket::GssEncRequest) => {
                stream.write_all(b"N").await?;
            }
            Ok(StartupPacket::Cancel(key)) => return Ok(Opening::Cancel { stream, key }),
            Ok(StartupPacket::Startup(startup)) => {
                if mode == ClientTlsMode::Require && !stream.is_tls() {
                    return Err(refuse(stream, Refusal::TlsRequired));
                }
                return Ok(Opening::Session { stream, startup });
            }
            // PostgreSQL answers a malformed cancel request with silence (it
            // only logs it): a cancel connection expects no reply.
            Err(StartupError::BadCancel) => {
                return Err(HandshakeError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    StartupError::BadCancel.to_string(),
                )))
            }
            Err(e) => return Err(refuse(stream, Refusal::Startup(e))),
        }
    }
}

/// Refuses the connection: `refusal` is said on `stream` (a startup packet
/// gets PostgreSQL's own SQLSTATE and message, see [`Refusal::Startup`]).
fn refuse(stream: Stream, refusal: Refusal) -> HandshakeError {
    HandshakeError::Refused {
        stream: Box::new(stream),
        refusal,
    }
}
