//! A fresh cluster connection for a client the proxy has authenticated:
//! connect, send the client's StartupMessage, and answer the cluster's
//! SCRAM with the ClientKey recovered from the client's proof (binding to
//! the cluster's certificate where it offers PLUS), up to its first
//! ReadyForQuery. A cluster asking for anything a proxy without the
//! password cannot answer is named as the configuration problem it is.

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::AsyncWriteExt;

use crate::backend::warm::Backend;
use crate::config::Config;
use crate::login::frames::{
    read_frame, ReadError, AUTH_CLEARTEXT, AUTH_MD5, AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
};
use crate::login::scram::{self, ClientExchange, Verifier};
use crate::login::LoginError;
use crate::protocol::frame::put_frame;
use crate::protocol::startup::{CancelKey, StartupMessage, PROTOCOL_3_0};
use crate::refusal::Refusal;
use crate::runtime::shared::Shared;
use crate::stream::Stream;

/// Why a fresh cluster login failed.
pub(super) enum FreshError {
    /// The cluster refused with this ErrorResponse frame (to relay).
    Refused(BytesMut),
    Login(LoginError),
}

impl From<LoginError> for FreshError {
    fn from(e: LoginError) -> Self {
        FreshError::Login(e)
    }
}

/// Logs into the cluster as the client's role, answering SCRAM with the
/// ClientKey.
pub(super) async fn fresh_backend(
    shared: &Shared,
    config: &Config,
    startup: &StartupMessage,
    protocol: u32,
    verifier: &Verifier,
    client_key: scram::Key,
) -> Result<Backend, FreshError> {
    let mut cluster = crate::backend::connect::connect(&config.cluster, &shared.cluster_tls())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cluster unreachable");
            LoginError::from(Refusal::ClusterUnreachable)
        })?;
    cluster
        .write_all(&startup.encode(protocol))
        .await
        .map_err(LoginError::ClusterIo)?;
    let cluster_binding = match &cluster {
        Stream::ClusterTls(tls) => tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| scram::tls_server_end_point(cert.as_ref())),
        _ => None,
    };
    let mut buf = BytesMut::with_capacity(1024);
    let mut exchange: Option<ClientExchange> = None;
    let mut parameters = BytesMut::new();
    let mut key = None;
    let cluster_error =
        |message: String| LoginError::from(Refusal::ClusterInvalidMessage { message });
    loop {
        let header = read_frame(&mut cluster, &mut buf)
            .await
            .map_err(|e| match e {
                ReadError::Io(e) => LoginError::ClusterIo(e),
                ReadError::Protocol(m) => cluster_error(m),
            })?;
        let frame = buf.split_to(header.frame_len);
        let body = &frame[5..];
        match header.tag {
            b'R' => {
                let code = body.get(..4).map_or(u32::MAX, |mut b| b.get_u32());
                let data = &body[4.min(body.len())..];
                match code {
                    AUTH_OK => {}
                    AUTH_SASL => {
                        let offered: Vec<&[u8]> =
                            data.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                        let plus = cluster_binding.is_some()
                            && offered.contains(&scram::SCRAM_SHA_256_PLUS.as_bytes());
                        if !plus && !offered.contains(&scram::SCRAM_SHA_256.as_bytes()) {
                            return Err(
                                cannot_answer("a SASL mechanism other than SCRAM-SHA-256").into()
                            );
                        }
                        let channel = if plus { cluster_binding.clone() } else { None };
                        let (scram, first) = ClientExchange::new(verifier, client_key, channel);
                        let mut out = BytesMut::new();
                        out.put_slice(scram.mechanism().as_bytes());
                        out.put_u8(0);
                        out.put_i32(first.len() as i32);
                        out.put_slice(first.as_bytes());
                        let mut msg = BytesMut::new();
                        put_frame(&mut msg, b'p', &out);
                        cluster
                            .write_all(&msg)
                            .await
                            .map_err(LoginError::ClusterIo)?;
                        exchange = Some(scram);
                    }
                    AUTH_SASL_CONTINUE => {
                        let scram = exchange
                            .as_mut()
                            .ok_or_else(|| cluster_error("SASL out of order".into()))?;
                        let last = scram
                            .server_first(data)
                            .map_err(|e| cluster_error(e.to_string()))?;
                        let mut msg = BytesMut::new();
                        put_frame(&mut msg, b'p', last.as_bytes());
                        cluster
                            .write_all(&msg)
                            .await
                            .map_err(LoginError::ClusterIo)?;
                    }
                    AUTH_SASL_FINAL => {
                        let scram = exchange
                            .as_mut()
                            .ok_or_else(|| cluster_error("SASL out of order".into()))?;
                        scram.server_final(data).map_err(|e| {
                            tracing::error!(error = %e, "the database cluster's SCRAM signature is wrong");
                            cluster_error(e.to_string())
                        })?;
                    }
                    AUTH_CLEARTEXT => {
                        return Err(cannot_answer("password (cleartext) authentication").into())
                    }
                    AUTH_MD5 => return Err(cannot_answer("md5 authentication").into()),
                    other => {
                        return Err(cannot_answer(&format!("authentication method {other}")).into())
                    }
                }
            }
            b'S' => parameters.extend_from_slice(&frame),
            b'K' => key = CancelKey::from_backend_key_data(body),
            // A cluster before 18 asked for 3.2 (the probe found otherwise
            // since): it speaks 3.0 with us; the client's version is ours.
            b'v' => {
                if let Some(newest) = body.get(..4).map(|mut b| b.get_u32()) {
                    shared.learn_cluster_protocol(newest.max(PROTOCOL_3_0));
                }
            }
            b'N' => {}
            b'E' => return Err(FreshError::Refused(frame)),
            b'Z' => {
                let key = key.ok_or_else(|| cluster_error("no BackendKeyData".into()))?;
                return Ok(Backend {
                    stream: cluster,
                    parameters,
                    key,
                });
            }
            _ => {}
        }
    }
}

/// The cluster asks for something a proxy holding no password cannot
/// answer: a configuration problem to name.
fn cannot_answer(what: &str) -> LoginError {
    tracing::error!(
        method = what,
        "the cluster asks pgtier for {what}, which auth.mode = \"proxy\" cannot answer: \
         use scram-sha-256 (or trust) in the cluster's pg_hba.conf for connections from pgtier"
    );
    Refusal::CannotAnswerAuth {
        what: what.to_owned(),
    }
    .into()
}
