//! One client connection from accept to close, in phases: handshake,
//! admission, cluster connection, login relay, passthrough. Each phase is
//! its own module; this one strings them together, enforces the login
//! deadline, and ends every connection that does not become a session in
//! one place ([`finish`]): the client's last word, the log line and the
//! metric.

pub mod handshake;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use tracing::Instrument;

use crate::backend::warm::{self, PoolKey};
use crate::backend::{cancel, connect};
use crate::config::{AuthMode, Config, Limits};
use crate::login::{self, proxy, Admission, LoggedIn, LoginError};
use crate::protocol::startup::{CancelKey, StartupMessage};
use crate::protocol::ErrorFields;
use crate::refusal::{Refusal, RefusalReason};
use crate::rules::{gate, policy, storage};
use crate::runtime::shared::Shared;
use crate::runtime::shutdown::Stage;
use crate::session::live::KillReason;
use crate::session::{pump, statement_time};
use crate::stream::Stream;
use handshake::{HandshakeError, Opening};

/// How long the proxy's own last words to a client may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
/// A tenant with a connection cap (the free tier's 2) has at most this many
/// more logins in progress than it may have sessions, whatever
/// `max_pending_logins_per_tenant` allows: in pass-through mode each one
/// starts a backend on the cluster before the cap can refuse it.
const PENDING_OVER_CAP: usize = 8;

/// How many logins of a tenant may be in progress at once: the configured
/// bound (0 = none), and for a tenant with a connection cap at most the cap
/// plus [`PENDING_OVER_CAP`].
fn pending_bound(configured: usize, cap: u32) -> usize {
    match (configured, cap) {
        (0, _) => 0,
        (n, 0) => n,
        (n, cap) => n.min(cap as usize + PENDING_OVER_CAP),
    }
}

/// How the proxy turned a connection or a login away: what the client is
/// told, the label the metrics and the log use, and what the log alone
/// reads.
#[derive(Debug)]
struct TurnedAway {
    /// What the client is told; `None` when someone (the cluster) has
    /// already told it, or nobody is left to tell.
    refusal: Option<Refusal>,
    /// The label: the refusal's own, or why nothing was said.
    reason: RefusalReason,
    /// For the log line alone, like PostgreSQL's server-log DETAIL (why a
    /// password failed): the client is not told.
    detail: Option<String>,
}

impl TurnedAway {
    /// Nothing said by the proxy: counted and logged as `reason`.
    fn silent(reason: RefusalReason) -> Self {
        TurnedAway {
            refusal: None,
            reason,
            detail: None,
        }
    }
}

impl From<Refusal> for TurnedAway {
    fn from(refusal: Refusal) -> Self {
        TurnedAway {
            reason: refusal.reason(),
            refusal: Some(refusal),
            detail: None,
        }
    }
}

/// How a connection that did not become a session ended.
#[derive(Debug)]
enum Exit {
    /// A cancel request, handled (forwarded or dropped).
    Cancel,
    /// The proxy refuses: [`finish`] tells the client on `stream` (if one is
    /// left to tell it on), logs and counts.
    Refused {
        stream: Option<Stream>,
        refusal: TurnedAway,
    },
    /// Nobody to tell: the client went away, the TLS handshake failed, …
    Lost(String),
}

/// Who is logging in, once the StartupMessage has said so.
struct Login<'a> {
    shared: &'a Arc<Shared>,
    config: &'a Config,
    /// The client's address (for slowing down its failed logins).
    peer: IpAddr,
    accepted: Instant,
    deadline: tokio::time::Instant,
}

/// Serves one accepted connection to its end. `span` carries the client
/// address; the tenant and session id are added to it here. The login runs
/// inside it; the passthrough does not (entering a span on every poll cost
/// about 6 % of the proxy's CPU per query): its own log lines enter it.
///
/// The login and the refusal are boxed: a task's future is as large as its
/// largest state, and the login's (TLS handshake, authentication) is about
/// four times the passthrough's (14.3 vs 3.6 KiB). Inline, every idle session would carry
/// that space for its whole life; boxed, it is freed when the login ends.
pub async fn serve(shared: Arc<Shared>, tcp: TcpStream, span: tracing::Span) {
    let (login, exit) = Box::pin(log_in(&shared, tcp, &span).instrument(span.clone())).await;
    match login {
        Some(session) => session.run(span).await,
        None => {
            if let Some((startup, exit)) = exit {
                Box::pin(finish(&shared, startup.as_ref(), exit).instrument(span)).await
            }
        }
    }
}

/// The phases up to a logged-in session (or the way the connection ended,
/// with its StartupMessage if one came).
async fn log_in(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    span: &tracing::Span,
) -> (Option<Session>, Option<(Option<StartupMessage>, Exit)>) {
    let accepted = Instant::now();
    let config = shared.config();
    let login = Login {
        shared,
        config: &config,
        peer: tcp
            .peer_addr()
            .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip()),
        accepted,
        deadline: tokio::time::Instant::from_std(accepted + config.login_timeout),
    };
    let _ = tcp.set_nodelay(true);
    // Counted as logging in until the session starts or the connection
    // ends; past the bound, refused before anything else is spent on it.
    let Some(pending) = shared.logins.begin(config.max_pending_logins) else {
        let refusal = Refusal::TooManyLoggingIn {
            max: config.max_pending_logins,
        }
        .into();
        let stream = Some(Stream::Plain(tcp));
        return (None, Some((None, Exit::Refused { stream, refusal })));
    };
    let (client, startup) = match login.open(tcp).await {
        Ok(opened) => opened,
        Err(exit) => return (None, Some((None, exit))),
    };
    span.record("tenant", tracing::field::display(startup.database()));
    match login.log_in(client, &startup).await {
        Ok(session) => {
            drop(pending);
            (Some(session), None)
        }
        Err(exit) => (None, Some((Some(startup), exit))),
    }
}

impl Login<'_> {
    /// The handshake up to a StartupMessage the proxy accepts; cancel
    /// requests are handled here and end the connection.
    async fn open(&self, tcp: TcpStream) -> Result<(Stream, StartupMessage), Exit> {
        let acceptor = self.shared.tls_acceptor();
        let opening = match timeout_at(
            self.deadline,
            handshake::handshake(tcp, acceptor.as_ref(), self.config.tls.mode),
        )
        .await
        {
            Ok(Ok(opening)) => opening,
            Ok(Err(HandshakeError::Refused { stream, refusal })) => {
                return Err(Exit::Refused {
                    stream: Some(*stream),
                    refusal: refusal.into(),
                })
            }
            Ok(Err(e)) => return Err(Exit::Lost(e.to_string())),
            Err(_) => {
                return Err(Exit::Refused {
                    stream: None,
                    refusal: TurnedAway::silent(RefusalReason::LoginTimeout),
                })
            }
        };
        let (client, startup) = match opening {
            Opening::Cancel { stream, key } => {
                let sent = cancel::forward(
                    &self.shared.cancel_keys,
                    &self.shared.fleet,
                    &key,
                    &self.config.cluster,
                    &self.shared.cluster_tls(),
                )
                .await;
                tracing::debug!(pid = key.pid, forwarded = sent, "cancel request");
                // Only now, after the cluster has acted on it, does the
                // client learn that its cancel was processed: the close.
                goodbye(stream, None).await;
                return Err(Exit::Cancel);
            }
            Opening::Session { stream, startup } => (stream, startup),
        };
        let cap = self.config.max_client_connections;
        if cap > 0 && self.shared.open_connections() > cap {
            return Err(Exit::Refused {
                stream: Some(client),
                refusal: Refusal::TooManyClients.into(),
            });
        }
        Ok((client, startup))
    }

    /// From the StartupMessage to the first ReadyForQuery: negotiation, the
    /// cluster connection, the relayed login and the tenant's slot.
    async fn log_in(&self, mut client: Stream, startup: &StartupMessage) -> Result<Session, Exit> {
        let tenant_name = startup.database();
        let refuse_once_authenticated = match self.consult_registry(tenant_name).await {
            Ok(later) => later,
            Err(refusal) => {
                return Err(Exit::Refused {
                    stream: Some(client),
                    refusal,
                })
            }
        };
        let limits = self.shared.limits_for(tenant_name);
        // Before anything is spent on it, the cluster above all: no
        // backend is ever started in a suspended database.
        if let Some(refusal) =
            crate::limits::suspend::login_refusal(self.shared, tenant_name, &limits)
        {
            return Err(Exit::Refused {
                stream: Some(client),
                refusal: refusal.into(),
            });
        }
        let max = pending_bound(
            self.config.max_pending_logins_per_tenant,
            limits.max_connections,
        );
        let Some(_tenant_login) = self.shared.logins.begin_for(tenant_name, max) else {
            return Err(Exit::Refused {
                stream: Some(client),
                refusal: Refusal::TooManyTenantLogins {
                    database: tenant_name.to_owned(),
                    max,
                }
                .into(),
            });
        };
        let notice: Vec<ErrorFields> = self
            .shared
            .tenants
            .get(tenant_name)
            .map(|t| {
                let rows = policy::row_limit_warning(
                    tenant_name,
                    t.rows.figure(),
                    limits.row_limit,
                    &limits.tier,
                )
                .map(|warning| warning.render());
                let bytes = storage::storage_limit_warning(
                    tenant_name,
                    t.rows.bytes(),
                    limits.storage_limit,
                    &limits.tier,
                )
                .map(|warning| warning.render());
                rows.into_iter().chain(bytes).collect()
            })
            .unwrap_or_default();
        if self.config.auth.mode == AuthMode::Proxy {
            return self
                .log_in_proxied(client, startup, limits, notice, refuse_once_authenticated)
                .await;
        }
        let refused = |client: Stream, refusal: Refusal| Exit::Refused {
            stream: Some(client),
            refusal: refusal.into(),
        };
        let mut cluster = match timeout_at(
            self.deadline,
            connect::connect(&self.config.cluster, &self.shared.cluster_tls()),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                // The cause (with the cluster's internal address) goes to
                // the log, not to the client.
                tracing::warn!(error = %e, "cluster unreachable");
                return Err(refused(client, Refusal::ClusterUnreachable));
            }
            Err(_) => return Err(refused(client, self.login_timeout())),
        };

        let admission = Admission {
            tenants: &self.shared.tenants,
            name: tenant_name,
            max_connections: limits.max_connections,
            tier: &limits.tier,
            cancel_keys: &self.shared.cancel_keys,
            fleet: &self.shared.fleet,
            notice,
            refuse_once_authenticated,
        };
        let logged_in = match timeout_at(
            self.deadline,
            login::relay(&mut client, &mut cluster, startup, admission),
        )
        .await
        {
            Ok(Ok(logged_in)) => logged_in,
            Ok(Err(e)) => return Err(login_failed(client, e)),
            Err(_) => {
                let _ = cluster.write_all(&[b'X', 0, 0, 0, 4]).await;
                return Err(refused(client, self.login_timeout()));
            }
        };
        let login_duration = self.accepted.elapsed();
        self.shared.metrics.login(login_duration);
        Ok(Session {
            shared: Arc::clone(self.shared),
            user: startup.user().to_owned(),
            limits,
            client,
            cluster,
            logged_in,
            login_duration,
            keep: None,
        })
    }

    /// The login in proxy mode: the proxy checks the password, takes the
    /// slot, and only then reaches the cluster (warm or fresh).
    async fn log_in_proxied(
        &self,
        mut client: Stream,
        startup: &StartupMessage,
        limits: Limits,
        notice: Vec<ErrorFields>,
        refuse_once_authenticated: Option<Refusal>,
    ) -> Result<Session, Exit> {
        let request = proxy::Request {
            shared: self.shared,
            config: self.config,
            limits: &limits,
            startup,
            peer: self.peer,
            notice,
            refuse_once_authenticated,
        };
        let refused = |client: Stream, refusal: Refusal| Exit::Refused {
            stream: Some(client),
            refusal: refusal.into(),
        };
        let proxied = match timeout_at(self.deadline, proxy::log_in(&mut client, request)).await {
            Ok(Ok(proxied)) => proxied,
            Ok(Err(e)) => return Err(login_failed(client, e)),
            Err(_) => return Err(refused(client, self.login_timeout())),
        };
        let login_duration = self.accepted.elapsed();
        self.shared.metrics.login(login_duration);
        tracing::debug!(warm = proxied.warm, "cluster connection");
        let keep = (self.config.server_idle_timeout > Duration::ZERO
            && self.config.max_warm_backends > 0)
            .then(|| Keep {
                key: proxied.pool_key,
                parameters: proxied.parameters,
                cluster_key: proxied.cluster_key,
            });
        Ok(Session {
            shared: Arc::clone(self.shared),
            user: startup.user().to_owned(),
            limits,
            client,
            cluster: proxied.cluster,
            logged_in: proxied.logged_in,
            login_duration,
            keep,
        })
    }

    /// With `[registry]`: makes sure the tenant's row is known (asking the
    /// registry on a cache miss), or says why the login is refused: at once
    /// (the registry cannot be read), or once the client has authenticated
    /// (`database "x" does not exist`, which PostgreSQL too says only to an
    /// authenticated client).
    async fn consult_registry(&self, tenant_name: &str) -> Result<Option<Refusal>, TurnedAway> {
        use crate::config::{OnRegistryError, RegistryUnknown};
        use crate::limits::registry::{self, Found, Refused};
        let Some(settings) = &self.config.registry else {
            return Ok(None);
        };
        let resolved = timeout_at(
            self.deadline,
            self.shared
                .registry
                .resolve(tenant_name, self.config, &self.shared.cluster_tls()),
        )
        .await;
        let detail = match resolved {
            Ok(Ok(Found::Known)) => return Ok(None),
            Ok(Ok(Found::Unknown)) => match settings.unknown {
                RegistryUnknown::Default => return Ok(None),
                RegistryUnknown::Refuse => {
                    return Ok(Some(registry::refusal(Refused::Unknown, tenant_name)))
                }
            },
            Ok(Err(e)) => match settings.on_error {
                OnRegistryError::Open => {
                    tracing::warn!(error = %e, "tenant registry unreadable: the file's limits apply (on_error = \"open\")");
                    return Ok(None);
                }
                OnRegistryError::Closed => e.to_string(),
            },
            Err(_) => return Err(self.login_timeout().into()),
        };
        let refusal = registry::refusal(Refused::Unavailable, tenant_name);
        Err(TurnedAway {
            reason: refusal.reason(),
            refusal: Some(refusal),
            detail: Some(detail),
        })
    }

    fn login_timeout(&self) -> Refusal {
        Refusal::LoginTimeout {
            limit: self.config.login_timeout,
        }
    }
}

/// How a failed login (either mode) ends the connection: with the proxy's
/// refusal, with the cluster's own (its ErrorResponse has already reached
/// the client), or lost.
fn login_failed(client: Stream, e: LoginError) -> Exit {
    let refusal = match e {
        LoginError::Refused { refusal, detail } => TurnedAway {
            detail,
            ..refusal.into()
        },
        LoginError::ClusterRefused(code) => {
            tracing::debug!(sqlstate = %code, "login refused by the cluster");
            TurnedAway::silent(RefusalReason::ClusterRefused)
        }
        e => return Exit::Lost(e.to_string()),
    };
    Exit::Refused {
        stream: Some(client),
        refusal,
    }
}

/// What a cluster connection needs to be kept warm after its session.
struct Keep {
    key: PoolKey,
    parameters: bytes::BytesMut,
    cluster_key: CancelKey,
}

/// A logged-in session, ready for the passthrough.
struct Session {
    shared: Arc<Shared>,
    user: String,
    limits: Limits,
    client: Stream,
    cluster: Stream,
    logged_in: LoggedIn,
    login_duration: Duration,
    /// Proxy mode: keep the cluster connection warm after a clean end.
    keep: Option<Keep>,
}

impl Session {
    /// Runs the passthrough to the end and writes the session's log lines
    /// (in `span`). The slot and the cancel key are given back when `self`
    /// drops.
    async fn run(self, span: tracing::Span) {
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

/// Ends a connection that did not become a session: the client's last
/// word (if there is a stream to say it on), the log line, the metric.
async fn finish(shared: &Shared, startup: Option<&StartupMessage>, exit: Exit) {
    match exit {
        Exit::Cancel => {}
        Exit::Lost(detail) => {
            tracing::debug!(detail, "connection closed before a session started");
        }
        Exit::Refused { stream, refusal } => {
            let said = refusal.refusal.as_ref().map(Refusal::render);
            let limit = shared.config().log_refusals_per_second;
            if let Some(unlogged) = shared.refusal_log.admit(limit) {
                // How many refusals before this one went unlogged, if any.
                let unlogged = (unlogged > 0).then_some(unlogged);
                let error = said.as_ref().map(ToString::to_string);
                match startup {
                    Some(startup) => tracing::info!(
                        user = startup.user(),
                        reason = refusal.reason.as_str(),
                        error,
                        detail = refusal.detail,
                        unlogged,
                        "login refused"
                    ),
                    None => tracing::info!(
                        reason = refusal.reason.as_str(),
                        error,
                        unlogged,
                        "connection refused"
                    ),
                }
            }
            // Counted against the tenant only if it is known (listed in the
            // config or seen authenticated), never creating one for a
            // made-up name.
            let tenant = startup.and_then(|startup| shared.tenants.get(startup.database()));
            shared.metrics.rejected(tenant.as_deref(), refusal.reason);
            if let Some(stream) = stream {
                goodbye(stream, said.as_ref()).await;
            }
        }
    }
}

/// Sends the proxy's last word (if any) and closes the connection cleanly
/// (TLS `close_notify`, then FIN), without waiting long on a client that
/// does not read.
async fn goodbye(mut stream: Stream, error: Option<&ErrorFields>) {
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        if let Some(error) = error {
            let _ = stream.write_all(&error.to_bytes()).await;
        }
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_tier_bounds_its_logins_in_progress_near_its_cap() {
        // Standard (no cap): the configured bound.
        assert_eq!(pending_bound(32, 0), 32);
        // Free (cap 2): the cap plus the margin, below the configured bound.
        assert_eq!(pending_bound(32, 2), 2 + PENDING_OVER_CAP);
        // A configured bound below that still holds; 0 is no bound at all.
        assert_eq!(pending_bound(4, 2), 4);
        assert_eq!(pending_bound(0, 2), 0);
    }
}
