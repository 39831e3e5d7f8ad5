//! The connections proxy mode's `auth_query` runs on: a few, opened as
//! concurrent lookups need them, so one slow lookup does not hold up the
//! rest, and only one at a time being opened, so a cluster that stops
//! answering is not asked again by every login that waits.
//!
//! A lookup takes an open connection with no lookup in flight. When each
//! one has some and there are fewer than [`MAX_CONNECTIONS`], it opens one
//! more, and the lookups that come meanwhile wait for that one; past
//! [`MAX_CONNECTIONS`], or for [`RETRY_AFTER`] after an attempt failed,
//! they queue on the least busy (tokio-postgres pipelines them). With no
//! connection open, one login opens it and the others wait for that
//! attempt; if it timed out, they fail with it, and so does every lookup
//! for [`RETRY_AFTER`]. Those opened for a burst are closed once idle for
//! `server_idle_timeout`; one stays.
//!
//! The tenant registry (`crate::limits::registry`) runs its lookups on a set of
//! its own, logged in as its own role: the same rules, another `Login`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::backend::control::{self, Login};
use crate::config::ClusterConfig;

/// The most connections `auth_query` runs on at once. Lookups are short
/// and pipeline on a connection; more only help while some are slow, and
/// each is a backend of the cluster's.
pub const MAX_CONNECTIONS: usize = 4;

/// For this long after an attempt at a lookup connection timed out,
/// lookups that find no connection open fail at once, rather than each
/// trying again in turn and waiting a whole `connect_timeout` (a cluster
/// that refuses at once, e.g. with 57P03 while it starts, is asked again
/// each time).
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One open lookup connection and how many lookups are on it.
#[derive(Debug)]
struct Link {
    client: tokio_postgres::Client,
    in_flight: AtomicUsize,
    /// When its last lookup ended.
    last_used: Mutex<Instant>,
}

#[derive(Debug, Default)]
struct State {
    links: Vec<Arc<Link>>,
    /// A connection is being opened.
    connecting: bool,
    /// When the last attempt at a connection timed out.
    timed_out: Option<Instant>,
    /// When the last attempt at a connection failed, either way: no more
    /// are opened for [`RETRY_AFTER`] while some are open.
    failed: Option<Instant>,
}

/// The lookup connections.
#[derive(Debug, Default)]
pub struct AuthQueryConnections {
    /// Held only to look and to mark, never across an await.
    state: Mutex<State>,
    /// Told when an attempt at a connection ends, either way.
    attempt_ended: Notify,
}

/// A lookup's place on a connection; given back when dropped.
pub struct OnLink(Arc<Link>);

impl Drop for OnLink {
    fn drop(&mut self) {
        *self.0.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl OnLink {
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.0.client
    }
}

/// What a lookup does next, decided under the lock.
enum Next {
    Use(OnLink),
    /// Open a connection; `true` when others are open (to fall back on).
    Open(bool),
    Wait,
    Fail(LookupError),
}

fn use_link(link: Arc<Link>) -> Next {
    link.in_flight.fetch_add(1, Ordering::Relaxed);
    Next::Use(OnLink(link))
}

/// Marks the attempt at a connection as over, however it ends (a login
/// that gives up drops it midway), and wakes the lookups that wait for it.
struct Attempt<'a>(&'a AuthQueryConnections);

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.0.lock().connecting = false;
        self.0.attempt_ended.notify_waiters();
    }
}

impl AuthQueryConnections {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under the lock can panic halfway through a change.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place on a lookup connection, opening one if the rule above says so.
    pub async fn acquire(
        &self,
        login: &Login<'_>,
        cluster: &ClusterConfig,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<OnLink, LookupError> {
        loop {
            let ended = self.attempt_ended.notified();
            tokio::pin!(ended);
            // Registered before the state is read, so an attempt that
            // ends between the read and the await still wakes this one.
            ended.as_mut().enable();
            match self.next() {
                Next::Use(on) => return Ok(on),
                Next::Wait => ended.await,
                Next::Fail(e) => return Err(e),
                Next::Open(growing) => {
                    let attempt = Attempt(self);
                    let opened = open(login, cluster, tls).await;
                    let mut state = self.lock();
                    match opened {
                        Ok(client) => {
                            let link = Arc::new(Link {
                                client,
                                in_flight: AtomicUsize::new(1),
                                last_used: Mutex::new(Instant::now()),
                            });
                            state.links.push(Arc::clone(&link));
                            state.timed_out = None;
                            state.failed = None;
                            return Ok(OnLink(link));
                        }
                        Err(e) => {
                            state.failed = Some(Instant::now());
                            if matches!(e, LookupError::TimedOut(_)) {
                                state.timed_out = state.failed;
                            }
                            drop(state);
                            drop(attempt);
                            // One more connection could not be opened:
                            // this lookup queues on the open ones instead.
                            if !growing {
                                return Err(e);
                            }
                        }
                    }
                }
            }
        }
    }

    fn next(&self) -> Next {
        let mut state = self.lock();
        state.links.retain(|l| !l.client.is_closed());
        let least = state
            .links
            .iter()
            .min_by_key(|l| l.in_flight.load(Ordering::Relaxed))
            .cloned();
        let recently = |at: Option<Instant>| at.is_some_and(|at| at.elapsed() < RETRY_AFTER);
        let grow =
            !state.connecting && state.links.len() < MAX_CONNECTIONS && !recently(state.failed);
        match least {
            Some(link) if link.in_flight.load(Ordering::Relaxed) == 0 => use_link(link),
            // Every connection busy: this lookup opens one more (if that
            // fails, it queues on the busy ones, and no more are tried for
            // RETRY_AFTER).
            Some(_) if grow => {
                state.connecting = true;
                Next::Open(true)
            }
            // One more is on its way: wait for it, then look again.
            Some(_) if state.connecting && state.links.len() < MAX_CONNECTIONS => Next::Wait,
            Some(link) => use_link(link),
            None if state.connecting => Next::Wait,
            None if recently(state.timed_out) => Next::Fail(LookupError::TimedOutRecently),
            None => {
                state.connecting = true;
                Next::Open(false)
            }
        }
    }

    /// Closes the connection `on` is on (a query on it timed out, so its
    /// state is unknown); the lookups still on it end with it.
    pub fn discard(&self, on: &OnLink) {
        self.lock().links.retain(|l| !Arc::ptr_eq(l, &on.0));
    }

    /// Closes the connections opened for a burst once they have had no
    /// lookup for `idle` (the operator's `server_idle_timeout`), keeping
    /// one; returns how many.
    pub fn close_idle(&self, idle: Duration) -> usize {
        let mut state = self.lock();
        let before = state.links.len();
        let mut kept = 0;
        state.links.retain(|l| {
            let busy = l.in_flight.load(Ordering::Relaxed) > 0
                || l.last_used
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .elapsed()
                    < idle;
            let keep = busy || kept == 0;
            if keep {
                kept += 1;
            }
            keep
        });
        before - state.links.len()
    }

    /// Open lookup connections.
    pub fn len(&self) -> usize {
        self.lock().links.len()
    }
}

/// Logs into the cluster as `login` says, within `connect_timeout`:
/// tokio-postgres bounds the TCP connect alone, and a cluster that accepts
/// and then says nothing would hold the attempt (and every lookup waiting
/// for it) for ever.
async fn open(
    login: &Login<'_>,
    cluster: &ClusterConfig,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<tokio_postgres::Client, LookupError> {
    tokio::time::timeout(
        cluster.connect_timeout,
        control::connect(cluster, login, tls),
    )
    .await
    .map_err(|_| LookupError::TimedOut(cluster.connect_timeout))?
    .map_err(LookupError::from)
}

/// Why a verifier could not be looked up (the lookup's own failure, not
/// the answer "no such role").
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("auth_query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("[auth] user is not set")]
    NotConfigured,
    /// The cluster did not finish the lookup's login or answer its query
    /// within `cluster.connect_timeout`.
    #[error("auth_query got no answer within {0:?}")]
    TimedOut(Duration),
    /// The lookup connection timed out a moment ago (see [`RETRY_AFTER`]).
    #[error("the auth_query connection timed out less than {RETRY_AFTER:?} ago")]
    TimedOutRecently,
}

impl LookupError {
    /// The cluster's own message when it refused the lookup with 57P03
    /// (`cannot_connect_now`: starting up, shutting down, in recovery).
    pub fn cannot_connect_now(&self) -> Option<String> {
        match self {
            LookupError::Query(e) => e
                .as_db_error()
                .filter(|db| db.code() == &tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW)
                .map(|db| db.message().to_owned()),
            LookupError::NotConfigured
            | LookupError::TimedOut(_)
            | LookupError::TimedOutRecently => None,
        }
    }
}
