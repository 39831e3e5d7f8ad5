//! One client connection from accept to close, in phases: handshake,
//! tenant resolution, cluster connection, login relay, passthrough. Each
//! phase is its own module; this one strings them together, enforces the
//! login deadline, and writes the session's log lines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use pgwire::messages::startup::NegotiateProtocolVersion;
use pgwire::messages::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout_at;

use crate::auth::{self, Admission, LoginError};
use crate::protocol::{sqlstate, ErrorFields};
use crate::server::Shared;
use crate::sessions::KillReason;
use crate::shutdown::Stage;
use crate::startup::{self, HandshakeError, Opening};
use crate::stream::Stream;
use crate::{cancel, cluster, pump};

/// Serves one accepted connection to its end.
pub async fn serve(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let accepted = Instant::now();
    let config = shared.config();
    let deadline = tokio::time::Instant::from_std(accepted + config.login_timeout);
    let _ = tcp.set_nodelay(true);

    let acceptor = shared.tls_acceptor();
    let opening = match timeout_at(
        deadline,
        startup::handshake(tcp, acceptor.as_ref(), config.tls.mode),
    )
    .await
    {
        Ok(Ok(opening)) => opening,
        Ok(Err(HandshakeError::Refused {
            mut stream,
            error,
            reason,
        })) => {
            tracing::info!(client = %peer, reason, error = %error, "connection refused");
            shared.metrics.rejected(None, reason);
            say_goodbye(&mut stream, &error).await;
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "connection closed during startup");
            return;
        }
        Err(_) => {
            tracing::info!(client = %peer, "startup packet not received within login_timeout");
            shared.metrics.rejected(None, "login_timeout");
            return;
        }
    };

    let (mut client, startup) = match opening {
        Opening::Cancel(key) => {
            let sent = cancel::forward(
                &shared.cancel_keys,
                key,
                &config.cluster,
                &shared.cluster_tls(),
            )
            .await;
            tracing::debug!(client = %peer, pid = key.pid, forwarded = sent, "cancel request");
            return;
        }
        Opening::Session { stream, startup } => (stream, startup),
    };

    let cap = config.max_client_connections;
    if cap > 0 && shared.open_connections() > cap {
        let error = ErrorFields::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already",
        );
        tracing::warn!(client = %peer, max_client_connections = cap, "connection refused: proxy full");
        shared.metrics.rejected(None, "max_client_connections");
        say_goodbye(&mut client, &error).await;
        return;
    }
    let tenant_name = startup.database();
    let limits = config.limits_for(tenant_name);
    // Refusals count against the tenant only if it is known (listed in the
    // config or seen authenticated), never creating one for a made-up name.
    let refuse = |error: ErrorFields, reason: &'static str| {
        tracing::info!(
            client = %peer, tenant = tenant_name, user = startup.user(),
            reason, error = %error, "login refused"
        );
        shared
            .metrics
            .rejected(shared.tenants.get(tenant_name).as_deref(), reason);
        error
    };

    if startup.needs_negotiation() {
        let mut out = BytesMut::new();
        let answer = NegotiateProtocolVersion::new(0, startup.unsupported_options.clone());
        if answer.encode(&mut out).is_err() || client.write_all(&out).await.is_err() {
            return;
        }
    }

    let mut cluster = match timeout_at(
        deadline,
        cluster::connect(&config.cluster, &shared.cluster_tls()),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            // The cause (with the cluster's internal address) goes to the
            // log, not to the client.
            tracing::warn!(error = %e, "cluster unreachable");
            let error = refuse(
                ErrorFields::fatal(
                    sqlstate::CONNECTION_FAILURE,
                    "could not connect to the database cluster",
                )
                .with_hint("The database service is unavailable; try again shortly."),
                "cluster_unreachable",
            );
            say_goodbye(&mut client, &error).await;
            return;
        }
        Err(_) => {
            let error = refuse(login_timeout_error(&config.login_timeout), "login_timeout");
            say_goodbye(&mut client, &error).await;
            return;
        }
    };

    let admission = Admission {
        tenants: &shared.tenants,
        name: tenant_name,
        max_connections: limits.max_connections,
        tier: &limits.tier,
        cancel_keys: &shared.cancel_keys,
    };
    let logged_in = match timeout_at(
        deadline,
        auth::relay(&mut client, &mut cluster, &startup, admission),
    )
    .await
    {
        Ok(Ok(logged_in)) => logged_in,
        Ok(Err(LoginError::Refused { error, reason })) => {
            let error = refuse(error, reason);
            say_goodbye(&mut client, &error).await;
            return;
        }
        Ok(Err(LoginError::ClusterRefused(code))) => {
            tracing::info!(
                client = %peer, tenant = tenant_name, user = startup.user(),
                sqlstate = %code, "login refused by the cluster"
            );
            shared.metrics.rejected(
                shared.tenants.get(tenant_name).as_deref(),
                "cluster_refused",
            );
            let _ = client.shutdown().await;
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(client = %peer, tenant = tenant_name, error = %e, "login failed");
            return;
        }
        Err(_) => {
            let error = refuse(login_timeout_error(&config.login_timeout), "login_timeout");
            let _ = cluster.write_all(&[b'X', 0, 0, 0, 4]).await;
            say_goodbye(&mut client, &error).await;
            return;
        }
    };
    let tenant = Arc::clone(logged_in.slot.tenant());
    let login_duration = accepted.elapsed();
    shared.metrics.login(login_duration);

    let registration = shared.sessions.register(Arc::clone(&tenant));
    let control = &registration.control;
    // A session that finished logging in after shutdown's grace ran out
    // would otherwise escape the final sweep.
    if shared.shutdown_stage() >= Stage::Closing {
        control.kill(KillReason::Shutdown);
    }
    tracing::info!(
        session = control.id,
        tenant = tenant.name(),
        tier = %limits.tier,
        user = startup.user(),
        client = %peer,
        tls = client.is_tls(),
        backend_pid = logged_in.backend_pid,
        login_ms = login_duration.as_millis() as u64,
        "session started"
    );
    let session_started = Instant::now();
    let (end, traffic) = pump::run(
        client,
        cluster,
        logged_in.client_pending,
        logged_in.cluster_pending,
        control,
    )
    .await;
    let detail = match &end {
        pump::PumpEnd::ClientIo(e) | pump::PumpEnd::ClusterIo(e) => Some(e.to_string()),
        pump::PumpEnd::ClientProtocol(e) | pump::PumpEnd::ClusterProtocol(e) => Some(e.to_string()),
        _ => None,
    };
    tracing::info!(
        session = control.id,
        tenant = tenant.name(),
        client = %peer,
        duration_ms = session_started.elapsed().as_millis() as u64,
        bytes_from_client = traffic.from_client,
        bytes_to_client = traffic.to_client,
        reason = end.as_str(),
        detail,
        "session ended"
    );
    // `logged_in.slot` and the cancel registration drop here, and with them
    // the tenant's slot and the cancel key.
    drop(logged_in.slot);
    drop(logged_in.cancel);
}

fn login_timeout_error(limit: &std::time::Duration) -> ErrorFields {
    ErrorFields::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        format!(
            "login did not complete within login_timeout ({})",
            humantime::format_duration(*limit)
        ),
    )
}

/// Sends the proxy's last word and closes, without waiting long on a client
/// that does not read.
async fn say_goodbye(stream: &mut Stream, error: &ErrorFields) {
    let bytes = error.to_bytes();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let _ = stream.write_all(&bytes).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    })
    .await;
}
