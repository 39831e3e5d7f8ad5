//! One client connection from accept to close, in phases: handshake,
//! admission, cluster connection, login relay, passthrough. Each phase is
//! its own module; this one strings them together, enforces the login
//! deadline, and ends every connection that does not become a session in
//! one place ([`finish`]): the client's last word, the log line and the
//! metric. The login phase is `login`, the logged-in session `session`.

pub mod handshake;
mod login;
mod session;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use tracing::Instrument;

use crate::backend::cancel;
use crate::config::Config;
use crate::protocol::startup::StartupMessage;
use crate::protocol::ErrorFields;
use crate::refusal::{Refusal, RefusalReason};
use crate::runtime::shared::Shared;
use crate::stream::Stream;
use handshake::{HandshakeError, Opening};
use session::Session;

/// How long the proxy's own last words to a client may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

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
