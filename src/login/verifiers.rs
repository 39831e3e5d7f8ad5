//! Where proxy-side authentication gets a role's SCRAM verifier: the
//! operator's `auth_query`, run as `[auth] user` on a few connections (see
//! [`crate::login::auth_query`]), cached for `auth_cache_ttl`, asked once for
//! all the logins of a role that arrive while it answers, and what slows
//! down guessing.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::OnceCell;

use crate::config::{AuthConfig, ClusterConfig};
use crate::login::auth_query::AuthQueryConnections;
pub use crate::login::auth_query::LookupError;
use crate::login::scram::{Verifier, VerifierError};

/// Roles whose answer is cached at once; past it, expired answers go, then
/// all (a flood of made-up role names cannot grow memory without bound).
const MAX_CACHED: usize = 10_000;
/// Failed logins remembered per (client address, role), for the delay.
const MAX_TRACKED_FAILURES: usize = 100_000;
/// The delay after the first failure; it doubles with each further one.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// A failure is forgotten this long after the last one.
const FAILURE_MEMORY: Duration = Duration::from_secs(600);

/// What auth_query said of a role.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A SCRAM verifier to check the client against.
    Scram(Verifier),
    /// auth_query returned no row (no such role, or it cannot log in):
    /// checked against a mock verifier no password matches, so the
    /// exchange does not tell.
    Unknown,
    /// auth_query returned NULL: no password assigned (or, for a function
    /// like the README's, no such role); checked like [`Lookup::Unknown`].
    NoPassword,
    /// The role exists but its password cannot be checked by the proxy.
    Unusable(VerifierError),
}

/// One lookup's answer, shared by every login of the role that waited for
/// it.
type Answer = Result<Lookup, Arc<LookupError>>;

/// The verifier cache and the connections auth_query runs on.
#[derive(Debug)]
pub struct Verifiers {
    cache: DashMap<String, (Lookup, Instant)>,
    /// The lookup under way for each role: a login of a role already being
    /// looked up waits for that answer instead of asking again (a pool
    /// that opens 20 connections at start, a cache entry that expires
    /// under load). Bounded by the logins in progress.
    asking: DashMap<String, Arc<OnceCell<Answer>>>,
    connections: AuthQueryConnections,
    /// Seeds mock verifiers: unpredictable, the same for a role for the
    /// proxy's life, so repeated attempts see the same salt.
    mock_seed: [u8; 32],
    failures: DashMap<(IpAddr, String), (u32, Instant)>,
}

impl Default for Verifiers {
    fn default() -> Self {
        let mut mock_seed = [0u8; 32];
        rand::fill(&mut mock_seed[..]);
        Verifiers {
            cache: DashMap::new(),
            asking: DashMap::new(),
            connections: AuthQueryConnections::default(),
            mock_seed,
            failures: DashMap::new(),
        }
    }
}

impl Verifiers {
    /// The role's verifier, from the cache while fresh, else from
    /// auth_query (the lookup under way for the role, if there is one).
    pub async fn lookup(
        &self,
        role: &str,
        auth: &AuthConfig,
        cluster: &ClusterConfig,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Answer {
        if let Some(entry) = self.cache.get(role) {
            if entry.1.elapsed() < auth.auth_cache_ttl {
                return Ok(entry.0.clone());
            }
        }
        let asking = Arc::clone(self.asking.entry(role.to_owned()).or_default().value());
        // The first login to get here asks; if it gives up midway (its
        // client left), the next one waiting asks instead.
        let answer = asking
            .get_or_init(|| async {
                let answer = self.query(role, auth, cluster, tls).await;
                if let Ok(lookup) = &answer {
                    self.remember(role, lookup.clone(), auth.auth_cache_ttl);
                }
                answer.map_err(Arc::new)
            })
            .await
            .clone();
        // The next login asks afresh (or finds the cache).
        self.asking.remove_if(role, |_, a| Arc::ptr_eq(a, &asking));
        answer
    }

    fn remember(&self, role: &str, lookup: Lookup, ttl: Duration) {
        if self.cache.len() >= MAX_CACHED {
            self.cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
        }
        self.cache.insert(role.to_owned(), (lookup, Instant::now()));
    }

    /// A verifier no password matches, for `role`.
    pub fn mock(&self, role: &str) -> Verifier {
        let mut seed = self.mock_seed.to_vec();
        seed.extend_from_slice(role.as_bytes());
        Verifier::mock(&seed)
    }

    async fn query(
        &self,
        role: &str,
        auth: &AuthConfig,
        cluster: &ClusterConfig,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Lookup, LookupError> {
        let login = crate::backend::control::Login {
            user: auth.user.as_deref().ok_or(LookupError::NotConfigured)?,
            password: auth.password.as_deref(),
            database: &auth.database,
            application_name: "pgtier auth",
        };
        let on = self.connections.acquire(&login, cluster, tls).await?;
        // Bounded like the connection: a cluster that stops answering
        // fails lookups at once rather than holding every login in proxy
        // mode until its login_timeout. A broken connection is left
        // behind by the next lookup.
        let row = tokio::time::timeout(
            cluster.connect_timeout,
            on.client().query_opt(&auth.auth_query, &[&role]),
        )
        .await
        .map_err(|_| {
            // Its state unknown: not used again.
            self.connections.discard(&on);
            LookupError::TimedOut(cluster.connect_timeout)
        })??;
        let Some(row) = row else {
            return Ok(Lookup::Unknown);
        };
        let stored: Option<String> = row.try_get(0)?;
        Ok(match Verifier::parse(stored.as_deref()) {
            Ok(verifier) => Lookup::Scram(verifier),
            // Nothing a password could match; the client is told no more
            // than for a wrong one.
            Err(VerifierError::Missing) => Lookup::NoPassword,
            Err(e) => Lookup::Unusable(e),
        })
    }

    /// Open auth_query connections.
    pub fn connections(&self) -> usize {
        self.connections.len()
    }

    /// Closes auth_query connections idle for `idle`, but one.
    pub fn close_idle_connections(&self, idle: Duration) -> usize {
        self.connections.close_idle(idle)
    }

    /// Forgets a role's cached answer (its password was found wrong on the
    /// cluster: the cache may be stale).
    pub fn forget(&self, role: &str) {
        self.cache.remove(role);
    }

    /// Records a failed login of `role` from `client`; returns how long to
    /// wait before saying so: nothing for the first, then doubling from
    /// [`FIRST_DELAY`] up to [`MAX_DELAY`]. Only that login waits; other
    /// clients are not slowed.
    pub fn failed(&self, client: IpAddr, role: &str) -> Duration {
        if self.failures.len() >= MAX_TRACKED_FAILURES {
            self.failures
                .retain(|_, (_, last)| last.elapsed() < FAILURE_MEMORY);
            if self.failures.len() >= MAX_TRACKED_FAILURES {
                self.failures.clear();
            }
        }
        let mut entry = self
            .failures
            .entry((client, role.to_owned()))
            .or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_MEMORY {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = Instant::now();
        delay_after(entry.0)
    }

    /// A successful login clears the record of failures.
    pub fn succeeded(&self, client: IpAddr, role: &str) {
        self.failures.remove(&(client, role.to_owned()));
    }

    /// Roles with a cached answer and (client, role) pairs with failures.
    pub fn sizes(&self) -> (usize, usize) {
        (self.cache.len(), self.failures.len())
    }
}

/// The wait after the `n`th failure in a row.
fn delay_after(n: u32) -> Duration {
    if n <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (n - 2).min(16);
    FIRST_DELAY.saturating_mul(factor).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_a_bound_and_reset_on_success() {
        assert_eq!(delay_after(1), Duration::ZERO);
        assert_eq!(delay_after(2), Duration::from_millis(100));
        assert_eq!(delay_after(3), Duration::from_millis(200));
        assert_eq!(delay_after(7), Duration::from_millis(3200));
        assert_eq!(delay_after(8), MAX_DELAY);
        assert_eq!(delay_after(1000), MAX_DELAY);
        let v = Verifiers::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(v.failed(ip, "alice"), Duration::ZERO);
        assert_eq!(v.failed(ip, "alice"), Duration::from_millis(100));
        assert_eq!(
            v.failed("192.0.2.2".parse().unwrap(), "alice"),
            Duration::ZERO,
            "another client"
        );
        assert_eq!(v.failed(ip, "bob"), Duration::ZERO, "another role");
        v.succeeded(ip, "alice");
        assert_eq!(v.failed(ip, "alice"), Duration::ZERO);
    }

    #[test]
    fn mock_verifiers_are_stable_per_role_and_differ_between_roles() {
        let v = Verifiers::default();
        assert_eq!(v.mock("ghost"), v.mock("ghost"));
        assert_ne!(v.mock("ghost").salt, v.mock("other").salt);
        assert_ne!(
            Verifiers::default().mock("ghost").salt,
            v.mock("ghost").salt,
            "unpredictable across proxies"
        );
    }
}
