//! A logged-in session, from its registration to its end: the tier's
//! gates and statement clock put on both directions, the passthrough run,
//! the session's log lines written, and (proxy mode) its cluster
//! connection reset and kept warm for the next login.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::warm::{self, PoolKey};
use crate::config::Limits;
use crate::login::LoggedIn;
use crate::protocol::startup::CancelKey;
use crate::rules::gate;
use crate::runtime::shared::Shared;
use crate::runtime::shutdown::Stage;
use crate::session::live::KillReason;
use crate::session::{pump, statement_time};
use crate::stream::Stream;

/// What a cluster connection needs to be kept warm after its session.
pub(super) struct Keep {
    pub(super) key: PoolKey,
    pub(super) parameters: bytes::BytesMut,
    pub(super) cluster_key: CancelKey,
}

/// A logged-in session, ready for the passthrough.
pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) user: String,
    pub(super) limits: Limits,
    pub(super) client: Stream,
    pub(super) cluster: Stream,
    pub(super) logged_in: LoggedIn,
    pub(super) login_duration: Duration,
    /// Proxy mode: keep the cluster connection warm after a clean end.
    pub(super) keep: Option<Keep>,
}

impl Session {
    /// Runs the passthrough to the end and writes the session's log lines
    /// (in `span`). The slot and the cancel key are given back when `self`
    /// drops.
    pub(super) async fn run(self, span: tracing::Span) {
        let Session {
            shared,
            user,
            limits,
            client,
            cluster,
            logged_in,
            login_duration,
            keep,
        } = self;
        let tenant = Arc::clone(logged_in.slot.tenant());
        if tenant
            .rows
            .unknown_for(limits.row_limit, limits.storage_limit)
        {
            // A tenant's first login after start is when it is measured.
            tenant.rows.want_measurement();
            shared.audits.request(&tenant);
        }
        let (to_cluster, to_client) = gate::gates(&shared, &tenant, &logged_in.greeting);
        let registration = shared.sessions.register(Arc::clone(&tenant));
        let control = &registration.control;
        // The tier's statement_timeout: the key to cancel with, and the
        // clock's watch on each direction.
        if let Some(key) = logged_in
            .cancel
            .as_ref()
            .and_then(|c| shared.cancel_keys.lookup(&c.client_key))
        {
            let _ = control.statement.cluster_key.set(key);
        }
        let mut to_cluster = statement_time::ClientSide::new(to_cluster, Arc::clone(control));
        let mut to_client =
            statement_time::ClusterSide::new(to_client, Arc::clone(control), Arc::clone(&shared));
        span.record("id", control.id);
        let entered = span.enter();
        // A session that finished logging in after shutdown's grace ran out
        // would otherwise escape the final sweep.
        if shared.shutdown_stage() >= Stage::Closing {
            control.kill(KillReason::Shutdown);
        }
        // Nor may one that was suspended while it logged in: the
        // suspension is recorded before sessions are walked, and this
        // session was registered before it looks (see `crate::limits::suspend`).
        if crate::limits::suspend::is_suspended(&shared, tenant.name(), &limits) {
            control.kill(KillReason::Suspended);
        }
        tracing::info!(
            tier = %limits.tier,
            user,
            tls = client.is_tls(),
            backend_pid = logged_in.backend_pid,
            protocol = %format_args!("3.{}", logged_in.protocol & 0xffff),
            login_ms = login_duration.as_millis() as u64,
            "session started"
        );
        drop(entered);
        let started = Instant::now();
        let LoggedIn {
            slot,
            cancel,
            greeting,
            client_pending,
            cluster_pending,
            ..
        } = logged_in;
        let pump::Ended {
            end,
            traffic,
            cluster,
        } = pump::run(
            client,
            cluster,
            greeting,
            client_pending,
            cluster_pending,
            control,
            &mut to_cluster,
            &mut to_client,
            keep.is_some(),
        )
        .await;
        let detail = match &end {
            pump::PumpEnd::ClientIo(e) | pump::PumpEnd::ClusterIo(e) => Some(e.to_string()),
            pump::PumpEnd::ClientProtocol(e) | pump::PumpEnd::ClusterProtocol(e) => {
                Some(e.to_string())
            }
            _ => None,
        };
        span.in_scope(|| {
            tracing::info!(
                duration_ms = started.elapsed().as_millis() as u64,
                bytes_from_client = traffic.from_client,
                bytes_to_client = traffic.to_client,
                reason = end.as_str(),
                detail,
                "session ended"
            )
        });
        drop(slot);
        drop(cancel);
        // The client has gone; its cluster connection, reset, waits for
        // the next login of the same database, role and parameters; not
        // when the operator closed the session (a disconnect or a
        // suspension clears the tenant's warm connections so that its
        // database can be dropped, and must not find one put back).
        let operator_closed = matches!(
            registration.control.kill_reason(),
            Some(KillReason::AdminDisconnect | KillReason::Suspended)
        );
        if let (Some(mut stream), Some(keep), false) = (cluster, keep, operator_closed) {
            // A cancel of the proxy's still in flight could otherwise land
            // on the next client's statement (see `crate::session::statement_time`).
            registration.control.statement.cancel_settled().await;
            if warm::reset(&mut stream).await {
                let config = shared.config();
                shared.warm.put(
                    keep.key,
                    warm::Backend {
                        stream,
                        parameters: keep.parameters,
                        key: keep.cluster_key,
                    },
                    limits.max_connections,
                    config.max_warm_backends,
                );
            } else {
                tracing::debug!("cluster connection not kept: its reset did not succeed");
            }
        }
    }
}
