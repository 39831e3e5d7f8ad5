//! Relaying the login: the cluster authenticates the client, the proxy passes
//! the exchange through, and takes the tenant's slot the moment the cluster
//! says AuthenticationOk.
//!
//! Three things are changed on the way: the protocol version is negotiated
//! with both sides (the proxy speaks 3.0 and 3.2; the client learns what
//! the cluster and the proxy both speak), `SCRAM-SHA-256-PLUS` is removed
//! from the mechanisms the cluster offers (the client's TLS ends at the
//! proxy, so it cannot bind to the cluster's channel), and BackendKeyData
//! gets the proxy's own secret (see [`crate::backend::cancel`]).

pub(crate) mod auth_query;
pub(crate) mod frames;
pub(crate) mod proxy;
pub mod scram;
pub(crate) mod verifiers;

use std::io;
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use pgwire::messages::startup::NegotiateProtocolVersion;
use pgwire::messages::Message;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::cancel::{CancelKeys, CancelRegistration, LONG_SECRET};
use crate::limits::fleet::Fleet;
use crate::limits::tenants::{Slot, Tenants};
use crate::protocol::error::sqlstate_of;
use crate::protocol::frame::{put_frame, FrameHeader};
use crate::protocol::startup::{CancelKey, StartupMessage, PROTOCOL_3_0, PROTOCOL_3_2};
use crate::protocol::ErrorFields;
use crate::refusal::Refusal;
use crate::stream::Stream;
use frames::{
    flush_to, read_frame, ReadError, AUTH_CLEARTEXT, AUTH_MD5, AUTH_OK, AUTH_SASL,
    AUTH_SASL_CONTINUE, AUTH_SASL_FINAL, MAX_LOGIN_FRAME,
};

const SCRAM_PLUS: &[u8] = b"SCRAM-SHA-256-PLUS";

/// A session that has logged in: the cluster connection, the slot it holds,
/// and any bytes either side sent beyond the login.
#[derive(Debug)]
pub struct LoggedIn {
    pub slot: Slot,
    pub cancel: Option<CancelRegistration>,
    pub backend_pid: Option<i32>,
    /// The protocol version the session runs at (3.0 or 3.2).
    pub protocol: u32,
    /// The login's last messages to the client, ending in its first
    /// ReadyForQuery, not yet sent: the session sends them once it is
    /// registered, so that a client that has seen ReadyForQuery is always
    /// in reach of an operator's disconnect and the idle sweep.
    pub greeting: BytesMut,
    pub client_pending: BytesMut,
    pub cluster_pending: BytesMut,
}

/// Why a login did not finish.
#[derive(Debug, Error)]
pub enum LoginError {
    /// The cluster refused (wrong password, no such database, …); its own
    /// ErrorResponse has been relayed to the client.
    #[error("cluster refused the login with SQLSTATE {0}")]
    ClusterRefused(String),
    /// The proxy refuses; `refusal` is still to be said to the client.
    /// `detail` goes to the log alone, as PostgreSQL's DETAIL does (why a
    /// password failed: "Role \"x\" does not exist."): the client hears
    /// only that the password failed, so it cannot tell a missing role
    /// from a wrong password.
    #[error("{}", .refusal.render())]
    Refused {
        refusal: Refusal,
        detail: Option<String>,
    },
    #[error("client went away during login")]
    ClientGone,
    #[error("cluster connection lost during login: {0}")]
    ClusterIo(io::Error),
    #[error("client connection failed during login: {0}")]
    ClientIo(io::Error),
}

impl From<Refusal> for LoginError {
    fn from(refusal: Refusal) -> Self {
        LoginError::Refused {
            refusal,
            detail: None,
        }
    }
}

/// What the relay needs to know about the tenant. The tenant is looked up
/// (and registered if new) only once the cluster has authenticated the
/// client, so that unauthenticated clients cannot grow the registry with
/// made-up database names.
pub struct Admission<'a> {
    pub tenants: &'a Tenants,
    pub name: &'a str,
    pub max_connections: u32,
    pub tier: &'a str,
    pub cancel_keys: &'a Arc<CancelKeys>,
    /// Where slots are taken: this process, or the fleet's store.
    pub fleet: &'a Fleet,
    /// NoticeResponses for the client just before its first ReadyForQuery
    /// (a tenant near its row or storage limit is warned at login).
    pub notice: Vec<ErrorFields>,
    /// A refusal decided before the login but told only once the client
    /// has authenticated, as PostgreSQL tells `database "x" does not
    /// exist` only then (so an unauthenticated client learns nothing
    /// about which databases exist).
    pub refuse_once_authenticated: Option<crate::refusal::Refusal>,
}

/// Runs the login from the StartupMessage to the first ReadyForQuery, which
/// it leaves for the session to send (see [`LoggedIn::greeting`]).
pub async fn relay(
    client: &mut Stream,
    cluster: &mut Stream,
    startup: &StartupMessage,
    admission: Admission<'_>,
) -> Result<LoggedIn, LoginError> {
    // Ask the cluster for what the client asked for, up to what the proxy
    // speaks; a cluster that speaks less says so with its own
    // NegotiateProtocolVersion, before anything else.
    let offered = startup.version().min(PROTOCOL_3_2);
    cluster
        .write_all(&startup.encode(offered))
        .await
        .map_err(LoginError::ClusterIo)?;

    let mut from_cluster = BytesMut::with_capacity(1024);
    let mut from_client = BytesMut::new();
    let mut to_client = BytesMut::with_capacity(1024);
    let mut slot = None;
    let mut cancel = None;
    let mut backend_pid = None;
    let mut protocol = None;

    loop {
        let header = cluster_frame(cluster, &mut from_cluster, client, &mut from_client).await?;
        let frame = from_cluster.split_to(header.frame_len);
        let body = &frame[5..];
        let negotiated = match protocol {
            Some(version) => version,
            None => {
                let version = match header.tag {
                    b'v' => cluster_newest(body).map_or(PROTOCOL_3_0, |v| v.min(offered)),
                    _ => offered,
                };
                // The one NegotiateProtocolVersion the client gets, as
                // PostgreSQL would send it: the newest version both sides
                // speak (a full version number) and the `_pq_.` options the
                // proxy does not support (all of them).
                if version != startup.version() || !startup.unsupported_options.is_empty() {
                    let answer = NegotiateProtocolVersion::new(
                        version as i32,
                        startup.unsupported_options.clone(),
                    );
                    let _ = answer.encode(&mut to_client);
                }
                protocol = Some(version);
                if header.tag == b'v' {
                    continue;
                }
                version
            }
        };
        match header.tag {
            b'R' => {
                let code = body.get(..4).map(|mut b| b.get_u32()).unwrap_or(u32::MAX);
                match code {
                    AUTH_OK => {
                        if let Some(refusal) = admission.refuse_once_authenticated {
                            let _ = cluster.write_all(&[b'X', 0, 0, 0, 4]).await;
                            return Err(refusal.into());
                        }
                        let tenant = admission.tenants.get_or_insert(admission.name);
                        match admission
                            .fleet
                            .take_slot(&tenant, admission.max_connections)
                            .await
                        {
                            Ok(taken) => slot = Some(taken),
                            Err(refused) => {
                                let _ = cluster.write_all(&[b'X', 0, 0, 0, 4]).await;
                                return Err(refused.refusal(admission.name, admission.tier).into());
                            }
                        }
                        to_client.extend_from_slice(&frame);
                    }
                    AUTH_SASL => {
                        let rewritten = without_scram_plus(body)
                            .ok_or_else(|| LoginError::from(Refusal::OnlyScramPlus))?;
                        to_client.extend_from_slice(&rewritten);
                        answer_from_client(client, cluster, &mut to_client, &mut from_client)
                            .await?;
                    }
                    AUTH_CLEARTEXT | AUTH_MD5 | AUTH_SASL_CONTINUE => {
                        to_client.extend_from_slice(&frame);
                        answer_from_client(client, cluster, &mut to_client, &mut from_client)
                            .await?;
                    }
                    AUTH_SASL_FINAL => to_client.extend_from_slice(&frame),
                    other => {
                        let _ = cluster.write_all(&[b'X', 0, 0, 0, 4]).await;
                        return Err(Refusal::AuthMethodUnsupported { code: other }.into());
                    }
                }
            }
            b'K' => {
                // No PostgreSQL sends another: relayed, it would leave the
                // client a key nothing can cancel with.
                let Some(cluster_key) = CancelKey::from_backend_key_data(body) else {
                    return Err(Refusal::MalformedBackendKeyData.into());
                };
                let secret_len = if negotiated >= PROTOCOL_3_2 {
                    LONG_SECRET
                } else {
                    4
                };
                backend_pid = Some(cluster_key.pid);
                let registration = admission.cancel_keys.register(cluster_key, secret_len);
                put_frame(
                    &mut to_client,
                    b'K',
                    &registration.client_key.backend_key_data(),
                );
                cancel = Some(registration);
            }
            b'Z' => {
                for notice in &admission.notice {
                    notice.encode(&mut to_client);
                }
                to_client.extend_from_slice(&frame);
                let Some(slot) = slot else {
                    return Err(Refusal::ReadyBeforeAuthentication.into());
                };
                return Ok(LoggedIn {
                    slot,
                    cancel,
                    backend_pid,
                    protocol: negotiated,
                    greeting: to_client,
                    client_pending: from_client,
                    cluster_pending: from_cluster,
                });
            }
            b'E' => {
                to_client.extend_from_slice(&frame);
                flush_to(client, &mut to_client).await?;
                let code = sqlstate_of(body).unwrap_or("XX000").to_owned();
                return Err(LoginError::ClusterRefused(code));
            }
            // ParameterStatus, NoticeResponse, NegotiateProtocolVersion:
            // the client needs them as they are.
            _ => to_client.extend_from_slice(&frame),
        }
    }
}

/// Sends what is pending to the client, then relays its one answer (a
/// PasswordMessage / SASL response) to the cluster.
async fn answer_from_client(
    client: &mut Stream,
    cluster: &mut Stream,
    to_client: &mut BytesMut,
    from_client: &mut BytesMut,
) -> Result<(), LoginError> {
    flush_to(client, to_client).await?;
    let header = match read_frame(client, from_client).await {
        Ok(h) => h,
        Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(LoginError::ClientGone)
        }
        Err(ReadError::Io(e)) => return Err(LoginError::ClientIo(e)),
        Err(ReadError::Protocol(message)) => {
            return Err(Refusal::BadLoginMessage { message }.into())
        }
    };
    if header.tag == b'X' {
        return Err(LoginError::ClientGone);
    }
    if header.tag != b'p' {
        return Err(Refusal::ExpectedPasswordResponse { tag: header.tag }.into());
    }
    let frame = from_client.split_to(header.frame_len);
    cluster
        .write_all(&frame)
        .await
        .map_err(LoginError::ClusterIo)
}

/// Reads the cluster's next login frame, noticing meanwhile a client that
/// hangs up (a client that gives up mid-login must not keep its login
/// counted until `login_timeout`). Bytes the client sends early are kept in
/// `from_client` for later.
async fn cluster_frame(
    cluster: &mut Stream,
    from_cluster: &mut BytesMut,
    client: &mut Stream,
    from_client: &mut BytesMut,
) -> Result<FrameHeader, LoginError> {
    loop {
        tokio::select! {
            biased;
            frame = read_frame(cluster, from_cluster) => {
                return frame.map_err(|e| match e {
                    ReadError::Io(e) => LoginError::ClusterIo(e),
                    ReadError::Protocol(message) => {
                        Refusal::ClusterInvalidMessage { message }.into()
                    }
                });
            }
            read = client.read_buf(from_client), if from_client.len() < MAX_LOGIN_FRAME => {
                match read {
                    Ok(0) => return Err(LoginError::ClientGone),
                    Ok(_) => {}
                    Err(e) => return Err(LoginError::ClientIo(e)),
                }
            }
        }
    }
}

/// The newest protocol version a cluster's NegotiateProtocolVersion names:
/// a full version number, as PostgreSQL sends it, or (from servers that
/// send the minor alone) a minor of 3.
fn cluster_newest(body: &[u8]) -> Option<u32> {
    let newest = u32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    Some(if newest < PROTOCOL_3_0 {
        PROTOCOL_3_0 | (newest & 0xffff)
    } else {
        newest
    })
}

/// Rebuilds an AuthenticationSASL message without `SCRAM-SHA-256-PLUS`.
/// `None` if nothing would be left to offer.
fn without_scram_plus(body: &[u8]) -> Option<BytesMut> {
    let list = body.get(4..)?;
    let mut kept = BytesMut::with_capacity(list.len());
    kept.put_u32(AUTH_SASL);
    for mechanism in list.split(|&b| b == 0).filter(|m| !m.is_empty()) {
        if mechanism != SCRAM_PLUS {
            kept.put_slice(mechanism);
            kept.put_u8(0);
        }
    }
    if kept.len() == 4 {
        return None;
    }
    kept.put_u8(0);
    let mut out = BytesMut::with_capacity(kept.len() + 5);
    put_frame(&mut out, b'R', &kept);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_plus_is_removed_and_the_rest_kept() {
        let mut body = AUTH_SASL.to_be_bytes().to_vec();
        body.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let out = without_scram_plus(&body).unwrap();
        let mut expected = BytesMut::new();
        let mut want = AUTH_SASL.to_be_bytes().to_vec();
        want.extend_from_slice(b"SCRAM-SHA-256\0\0");
        put_frame(&mut expected, b'R', &want);
        assert_eq!(out, expected);

        let mut only_plus = AUTH_SASL.to_be_bytes().to_vec();
        only_plus.extend_from_slice(b"SCRAM-SHA-256-PLUS\0\0");
        assert!(without_scram_plus(&only_plus).is_none());
        assert!(without_scram_plus(b"\0\0").is_none());
    }
}
