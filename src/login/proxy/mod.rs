//! Proxy-side authentication (`auth.mode = "proxy"`): pgtier verifies the
//! client itself against the role's SCRAM verifier, takes the tenant's slot,
//! and only then reaches the cluster: through a warm connection of the same
//! database, role and parameters, or a fresh login it answers with the
//! ClientKey recovered from the client's proof.
//!
//! So a wrong password, an unknown role or a tenant at its cap never costs
//! the cluster a backend; the link to the cluster may be TLS (with channel
//! binding); and clients may bind their SCRAM to pgtier's own certificate
//! (`SCRAM-SHA-256-PLUS`).
//!
//! This module is the client-facing exchange and the hand-over; the
//! cluster side of a fresh login is `fresh`, learning which protocol
//! version the cluster speaks is `probe`.

mod fresh;
mod probe;

pub use probe::probe_cluster_protocol;

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use pgwire::messages::startup::NegotiateProtocolVersion;
use pgwire::messages::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::cancel::LONG_SECRET;
use crate::backend::warm::{Backend, PoolKey};
use crate::config::{Config, Limits};
use crate::login::frames::{
    flush_to, read_frame, ReadError, AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL,
    MAX_LOGIN_FRAME,
};
use crate::login::scram::{self, ScramError, ServerExchange};
use crate::login::verifiers::Lookup;
use crate::login::{LoggedIn, LoginError};
use crate::protocol::error::sqlstate_of;
use crate::protocol::frame::put_frame;
use crate::protocol::startup::{CancelKey, StartupMessage, PROTOCOL_3_0, PROTOCOL_3_2};
use crate::protocol::{sqlstate, ErrorFields};
use crate::refusal::Refusal;
use crate::runtime::shared::Shared;
use crate::stream::Stream;
use fresh::{fresh_backend, FreshError};

/// A login to authenticate in the proxy.
pub struct Request<'a> {
    pub shared: &'a Arc<Shared>,
    pub config: &'a Config,
    pub limits: &'a Limits,
    pub startup: &'a StartupMessage,
    pub peer: IpAddr,
    /// Warnings for the client before its first ReadyForQuery.
    pub notice: Vec<ErrorFields>,
    /// Told once the password has checked out (see
    /// [`crate::login::Admission::refuse_once_authenticated`]).
    pub refuse_once_authenticated: Option<crate::refusal::Refusal>,
}

/// A logged-in session and its cluster connection.
#[derive(Debug)]
pub struct Session {
    pub logged_in: LoggedIn,
    pub cluster: Stream,
    /// What the cluster connection is good for, to keep it warm after.
    pub pool_key: PoolKey,
    /// What its login told (replayed if it is kept warm).
    pub parameters: BytesMut,
    pub cluster_key: CancelKey,
    /// Whether it came warm.
    pub warm: bool,
}

/// Authenticates the client, takes its slot, and gets a cluster connection.
pub async fn log_in(client: &mut Stream, request: Request<'_>) -> Result<Session, LoginError> {
    let Request {
        shared,
        config,
        limits,
        startup,
        peer,
        notice,
        refuse_once_authenticated,
    } = request;
    let role = startup.user();
    let database = startup.database();
    // Every wait on the cluster below watches the client too, so that one
    // that hangs up ends its login (and gives back its slot) at once, as in
    // passthrough mode, not at login_timeout.
    let mut from_client = BytesMut::new();
    if startup.version() > PROTOCOL_3_0 && !shared.cluster_protocol_known() {
        // The background probe has not answered yet (the proxy has just
        // started): ask now rather than hold this client to 3.0.
        if let Some(newest) =
            watching_client(client, &mut from_client, probe_cluster_protocol(shared)).await?
        {
            shared.learn_cluster_protocol(newest);
        }
    }
    // The version the client gets: what it asked for, up to what the proxy
    // and (as far as known) the cluster speak.
    let protocol = startup
        .version()
        .min(PROTOCOL_3_2)
        .min(shared.cluster_protocol());
    let mut to_client = BytesMut::with_capacity(512);
    if protocol != startup.version() || !startup.unsupported_options.is_empty() {
        let answer =
            NegotiateProtocolVersion::new(protocol as i32, startup.unsupported_options.clone());
        let _ = answer.encode(&mut to_client);
    }

    let lookup = watching_client(
        client,
        &mut from_client,
        shared
            .verifiers
            .lookup(role, &config.auth, &config.cluster, &shared.cluster_tls()),
    )
    .await?
    .map_err(|e| {
        // A cluster starting up or shutting down refuses the lookup with
        // its own 57P03, which says more than "unavailable" and tells the
        // client it is worth retrying: pass it on, as passthrough would.
        if let Some(message) = e.cannot_connect_now() {
            return LoginError::from(Refusal::ClusterStartingUp { message });
        }
        tracing::warn!(error = %e, "cannot look up the role's password verifier");
        Refusal::VerifierUnavailable.into()
    })?;
    // Without a usable verifier: an exchange against one nothing matches,
    // so the answer does not tell whether the role exists; why it failed
    // goes to the log.
    let (verifier, why, unusable) = match lookup {
        Lookup::Scram(verifier) => (verifier, None, false),
        Lookup::Unknown => (
            shared.verifiers.mock(role),
            Some(format!("Role \"{role}\" does not exist or cannot log in.")),
            false,
        ),
        Lookup::NoPassword => (
            shared.verifiers.mock(role),
            Some(format!(
                "auth_query found no password for role \"{role}\" \
                 (none assigned, or no such role)."
            )),
            false,
        ),
        Lookup::Unusable(e) => (
            shared.verifiers.mock(role),
            Some(format!(
                "The password of role \"{role}\" cannot be checked by the proxy: {e}."
            )),
            true,
        ),
    };

    let binding = if client.is_tls() {
        shared.channel_binding()
    } else {
        None
    };
    let mut exchange = ServerExchange::new(verifier.clone(), binding);
    let mut mechanisms = BytesMut::new();
    mechanisms.put_u32(AUTH_SASL);
    for mechanism in exchange.mechanisms() {
        mechanisms.put_slice(mechanism.as_bytes());
        mechanisms.put_u8(0);
    }
    mechanisms.put_u8(0);
    put_frame(&mut to_client, b'R', &mechanisms);
    flush_to(client, &mut to_client).await?;

    let initial = password_message(client, &mut from_client).await?;
    let (mechanism, data) =
        sasl_initial(&initial).ok_or_else(|| LoginError::from(Refusal::MalformedSaslInitial))?;
    let server_first = exchange
        .client_first(mechanism, data)
        .map_err(|e| scram_refusal(e, role))?;
    let mut continue_ = BytesMut::new();
    continue_.put_u32(AUTH_SASL_CONTINUE);
    continue_.put_slice(server_first.as_bytes());
    put_frame(&mut to_client, b'R', &continue_);
    flush_to(client, &mut to_client).await?;

    let last = password_message(client, &mut from_client).await?;
    let verified = match (exchange.client_final(&last), why) {
        (Ok(verified), None) => verified,
        (Ok(_) | Err(ScramError::Proof), why) => {
            let delay = shared.verifiers.failed(peer, role);
            shared.metrics.auth_failed(!delay.is_zero());
            tokio::time::sleep(delay).await;
            let refusal = Refusal::PasswordFailed {
                user: role.to_owned(),
                scram_needed: unusable,
            };
            return Err(LoginError::Refused {
                refusal,
                detail: why,
            });
        }
        (Err(e), _) => return Err(scram_refusal(e, role)),
    };
    shared.verifiers.succeeded(peer, role);

    if let Some(refusal) = refuse_once_authenticated {
        return Err(refusal.into());
    }
    // The cap, before the cluster is touched.
    let tenant = shared.tenants.get_or_insert(database);
    let slot = shared
        .fleet
        .take_slot(&tenant, limits.max_connections)
        .await
        .map_err(|refused| LoginError::from(refused.refusal(database, &limits.tier)))?;

    let pool_key = PoolKey::new(startup, protocol);
    let (backend, warm) = match shared.warm.take(&pool_key, config.server_idle_timeout) {
        Some(backend) => (backend, true),
        None => {
            let fresh = watching_client(
                client,
                &mut from_client,
                fresh_backend(
                    shared,
                    config,
                    startup,
                    protocol,
                    &verifier,
                    verified.client_key,
                ),
            )
            .await?;
            match fresh {
                Ok(backend) => (backend, false),
                Err(FreshError::Refused(frame)) => {
                    // The cluster's own word (no such database, …) reaches
                    // the client as it said it.
                    let code = sqlstate_of(&frame[5..]).unwrap_or("XX000").to_owned();
                    if code == sqlstate::INVALID_PASSWORD {
                        // The password changed since the verifier was read.
                        shared.verifiers.forget(role);
                    }
                    if code == sqlstate::INVALID_CATALOG_NAME && tenant.sessions_total() == 1 {
                        // A made-up database name must not stay registered.
                        drop(slot);
                        shared.tenants.forget_if_unused(database);
                    }
                    client
                        .write_all(&frame)
                        .await
                        .map_err(LoginError::ClientIo)?;
                    return Err(LoginError::ClusterRefused(code));
                }
                Err(FreshError::Login(e)) => return Err(e),
            }
        }
    };
    shared.metrics.backend_handed(warm);

    let secret_len = if protocol >= PROTOCOL_3_2 {
        LONG_SECRET
    } else {
        4
    };
    let registration = shared.cancel_keys.register(backend.key.clone(), secret_len);
    let mut final_ = BytesMut::new();
    final_.put_u32(AUTH_SASL_FINAL);
    final_.put_slice(verified.server_final.as_bytes());
    put_frame(&mut to_client, b'R', &final_);
    put_frame(&mut to_client, b'R', &AUTH_OK.to_be_bytes());
    to_client.extend_from_slice(&backend.parameters);
    put_frame(
        &mut to_client,
        b'K',
        &registration.client_key.backend_key_data(),
    );
    for notice in &notice {
        notice.encode(&mut to_client);
    }
    put_frame(&mut to_client, b'Z', b"I");
    let Backend {
        stream,
        parameters,
        key,
    } = backend;
    Ok(Session {
        logged_in: LoggedIn {
            slot,
            cancel: Some(registration),
            backend_pid: Some(key.pid),
            protocol,
            greeting: to_client,
            client_pending: from_client,
            cluster_pending: BytesMut::new(),
        },
        cluster: stream,
        pool_key,
        parameters,
        cluster_key: key,
        warm,
    })
}

/// How a failed exchange reads to the client, in PostgreSQL's words.
fn scram_refusal(e: ScramError, role: &str) -> LoginError {
    let refusal = match e {
        // Only `client_final` checks a proof, and its caller handles a
        // wrong one (with the delay); here for completeness.
        ScramError::Proof => Refusal::PasswordFailed {
            user: role.to_owned(),
            scram_needed: false,
        },
        ScramError::Mechanism(_) => Refusal::InvalidSaslMechanism,
        other => Refusal::BadLoginMessage {
            message: other.to_string(),
        },
    };
    refusal.into()
}

/// Awaits `work` (a wait on the cluster) while reading the client: a
/// client that hangs up ends the login with [`LoginError::ClientGone`]
/// (dropping `work`); bytes it sends meanwhile are kept in `from_client`.
async fn watching_client<T>(
    client: &mut Stream,
    from_client: &mut BytesMut,
    work: impl std::future::Future<Output = T>,
) -> Result<T, LoginError> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            done = &mut work => return Ok(done),
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

/// Reads the client's next PasswordMessage-type ('p') message body.
async fn password_message(
    client: &mut Stream,
    from_client: &mut BytesMut,
) -> Result<BytesMut, LoginError> {
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
    let mut frame = from_client.split_to(header.frame_len);
    match header.tag {
        b'p' => {
            frame.advance(5);
            Ok(frame)
        }
        b'X' => Err(LoginError::ClientGone),
        other => Err(Refusal::ExpectedSaslResponse { tag: other }.into()),
    }
}

/// A SASLInitialResponse body: mechanism name, then the length-prefixed
/// initial data.
fn sasl_initial(body: &[u8]) -> Option<(&str, &[u8])> {
    let end = body.iter().position(|&b| b == 0)?;
    let mechanism = std::str::from_utf8(&body[..end]).ok()?;
    let rest = &body[end + 1..];
    let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() || data.len() > scram::MAX_MESSAGE_LEN {
        return None;
    }
    Some((mechanism, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_initial_responses_are_read_strictly() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&(9i32).to_be_bytes());
        body.extend_from_slice(b"n,,n=,r=x");
        assert_eq!(
            sasl_initial(&body),
            Some(("SCRAM-SHA-256", &b"n,,n=,r=x"[..]))
        );
        let mut short = b"SCRAM-SHA-256\0".to_vec();
        short.extend_from_slice(&(100i32).to_be_bytes());
        short.extend_from_slice(b"n,,");
        assert_eq!(sasl_initial(&short), None);
        let mut negative = b"SCRAM-SHA-256\0".to_vec();
        negative.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(sasl_initial(&negative), None);
        assert_eq!(sasl_initial(b"no terminator"), None);
        assert_eq!(sasl_initial(b"\0\0\0"), None);
    }
}
