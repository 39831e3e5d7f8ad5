//! The per-session hook the pump hands statements and results to: it
//! refuses what the tenant's tier forbids, and keeps the tenant's row
//! figure current from the command tags between measurements.
//!
//! A refusal never desynchronises client and cluster. The refused message
//! is not dropped but *replaced* by one the cluster itself will fail with a
//! recognisable marker: a simple Query or a FunctionCall by `EXECUTE
//! "pgtier_refused_<128 random bits>"`, an extended-protocol Parse or
//! Execute by an Execute of a portal of that name, drawn afresh for each
//! refusal so that no tenant can predict or claim it (client names with the
//! prefix are refused). The cluster then does what PostgreSQL does for any
//! error: rolls back the implicit transaction or aborts the explicit one
//! (the next statement gets `25P02`), skips to the next Sync, and answers
//! ReadyForQuery with the right status. On the way back, the cluster's
//! error naming the marker is swapped for the proxy's own (`53400`,
//! `42501`). If the cluster never raises it (it was already skipping to
//! Sync after an earlier error, exactly when PostgreSQL would not have run
//! the refused statement either), nothing is swapped and the client sees
//! what PostgreSQL would have shown.
//!
//! The storage limit rides on the same machinery: a statement's
//! [`Writes`](crate::rules::classify::Writes) say whether it adds rows (the
//! row limit) and whether it can grow the database at all (the storage limit,
//! [`crate::rules::storage`]); the refusal is the same marker swap, with
//! `53100` in place of the cluster's error.
//!
//! Which prepared statements and portals add rows is kept as the cluster
//! confirms it ([`crate::rules::prepared`]); statement text and names are
//! read in the session's client encoding ([`crate::rules::encoding`]).

//!
//! ## Where each part lives
//!
//! - this file: [`gates`], what the two sides share ([`Link`]: refusals on
//!   their way, the name tracker, the encoding), the tenant's [`Rules`] as
//!   configured, and how much of each message the gate reads;
//! - `client`: [`ClientGate`], statements on their way to the cluster;
//! - `cluster`: [`ClusterGate`], results on their way back;
//! - `client_encoding`: the client encoding the cluster last reported.

mod client;
mod client_encoding;
mod cluster;

pub use client::ClientGate;
pub use cluster::ClusterGate;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};

use client_encoding::EncodingState;

use crate::config::Limits;
use crate::limits::tenants::Tenant;
use crate::protocol::frame::FrameHeader;
use crate::protocol::ErrorFields;
use crate::rules::grace_s;
use crate::rules::prepared::Tracker;
use crate::runtime::shared::Shared;

/// The longest Query or Parse the gate inspects. The frame is held whole
/// while it is classified; a longer one ends the session with `54000`
/// rather than pass unchecked.
pub const MAX_INSPECTED_STATEMENT: usize = 8 * 1024 * 1024;
/// Execute, CommandComplete and the ErrorResponses the gate may rewrite
/// are small; longer ones are passed on without a look.
const MAX_SMALL_MESSAGE: usize = 64 * 1024;
/// How much of a Bind or Close the gate peeks at for the portal and
/// statement names (longer names make the session's tracking unreliable,
/// which it then says, see `Tracker::lose_track`).
const NAME_PEEK: usize = 5 + 2048;
/// How much of a CommandComplete is read for its tag.
const TAG_PEEK: usize = 5 + 64;
/// How much of a ParameterStatus is read: enough for `client_encoding`
/// and any encoding name (a longer value is no encoding PostgreSQL knows).
const PARAMETER_PEEK: usize = 5 + 64;
/// The shortest ASCII name that may be what is left of a longer non-ASCII
/// identifier after the classifier's 63-byte cut: 63 less a 3-byte
/// placeholder, plus one.
const TRUNCATION_ARTEFACT: usize = 61;

/// A refusal on its way: the cluster will fail the marker, and the gate's
/// cluster side swaps that failure for `error`.
#[derive(Debug)]
struct Pending {
    /// The ReadyForQuery (counted from the session's start) that closes the
    /// marker's part of the stream; by then it has failed or been skipped.
    ready_index: u64,
    marker: String,
    error: ErrorFields,
}

/// What a session's two gates share.
#[derive(Debug, Default)]
struct Link {
    pending: Mutex<VecDeque<Pending>>,
    /// `pending.len()`, readable without the lock on every ErrorResponse.
    pending_count: AtomicUsize,
    /// A statement changed row counts in a way the tags do not tell:
    /// measure the tenant once its transaction is over.
    remeasure: AtomicBool,
    /// Prepared statements and portals as the cluster has confirmed them.
    names: Mutex<Tracker>,
    /// The session's client encoding as the cluster last reported it.
    encoding: EncodingState,
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The tenant's rules as the configuration in force says, refreshed when a
/// reload changes it.
#[derive(Debug)]
struct Rules {
    generation: u64,
    limits: Limits,
    /// How long the tenant may go unmeasured before it counts as over
    /// ([`crate::rules::grace_s`]).
    grace_s: u64,
}

impl Rules {
    fn load(shared: &Shared, tenant: &Tenant) -> Rules {
        let generation = shared.config_generation();
        let config = shared.config();
        Rules {
            generation,
            limits: shared.limits_for(tenant.name()),
            grace_s: config
                .quota
                .as_ref()
                .map_or(u64::MAX, |q| grace_s(q.interval)),
        }
    }

    /// Whether anything is enforced or counted for this tenant at all. A
    /// tenant without a row limit, a storage limit or denied kinds pays for
    /// nothing.
    fn active(&self) -> bool {
        self.limits.row_limit > 0 || self.limits.storage_limit > 0 || !self.limits.deny.is_empty()
    }

    /// Whether a quota in bytes or rows applies: writes are followed.
    fn measured(&self) -> bool {
        self.limits.row_limit > 0 || self.limits.storage_limit > 0
    }

    /// Reloads when the configuration changed; returns whether the rules
    /// became active just now.
    fn refresh(&mut self, shared: &Shared, tenant: &Tenant) -> bool {
        if shared.config_generation() == self.generation {
            return false;
        }
        let was_active = self.active();
        *self = Rules::load(shared, tenant);
        !was_active && self.active()
    }
}

/// The gates of one session: `(client → cluster, cluster → client)`.
///
/// `greeting` is what the login sends the client (its ParameterStatus
/// messages say the session's client and server encodings).
pub fn gates(
    shared: &Arc<Shared>,
    tenant: &Arc<Tenant>,
    greeting: &[u8],
) -> (ClientGate, ClusterGate) {
    let link = Arc::new(Link::default());
    let mut rest = greeting;
    while let Ok(Some(header)) = FrameHeader::parse(rest) {
        let Some(frame) = rest.get(..header.frame_len) else {
            break;
        };
        if header.tag == b'S' {
            link.encoding.note_parameter(&frame[5..]);
        }
        rest = &rest[header.frame_len..];
    }
    let client = ClientGate::new(shared, tenant, Arc::clone(&link));
    let cluster = ClusterGate::new(shared, tenant, link);
    (client, cluster)
}

/// Splits a NUL-terminated string off the front of `bytes`.
fn cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..end], &bytes[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cstr_needs_its_terminator() {
        assert_eq!(cstr(b"abc\0rest"), Some((&b"abc"[..], &b"rest"[..])));
        assert_eq!(cstr(b"abc"), None);
        assert_eq!(cstr(b"\0"), Some((&b""[..], &b""[..])));
    }
}
