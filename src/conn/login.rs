//! The login phase of a connection, from its StartupMessage to its first
//! ReadyForQuery: the tenant is resolved (the registry, if any), a
//! suspended tenant refused before anything is spent on it, the logins in
//! progress bounded per tenant, the tier's login warnings gathered, and
//! then the login handed to the mode that performs it: relayed to a fresh
//! cluster connection ([`crate::login::relay`]) or checked by the proxy
//! itself ([`crate::login::proxy`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::timeout_at;

use super::session::{Keep, Session};
use super::{Exit, Login, TurnedAway};
use crate::backend::connect;
use crate::config::{AuthMode, Limits};
use crate::login::{self, proxy, Admission, LoginError};
use crate::protocol::startup::StartupMessage;
use crate::protocol::ErrorFields;
use crate::refusal::{Refusal, RefusalReason};
use crate::rules::{policy, storage};
use crate::stream::Stream;

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

impl Login<'_> {
    /// From the StartupMessage to the first ReadyForQuery: negotiation, the
    /// cluster connection, the relayed login and the tenant's slot.
    pub(super) async fn log_in(
        &self,
        mut client: Stream,
        startup: &StartupMessage,
    ) -> Result<Session, Exit> {
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
        // The cluster went away mid-login (a restart, a crash, a network
        // cut): the client is still there, between messages (the relay
        // forwards only whole frames), and hears what a cluster it could
        // not reach would have told it, instead of a bare close.
        LoginError::ClusterIo(e) => {
            tracing::warn!(error = %e, "cluster connection lost during login");
            Refusal::ClusterUnreachable.into()
        }
        e => return Exit::Lost(e.to_string()),
    };
    Exit::Refused {
        stream: Some(client),
        refusal,
    }
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
