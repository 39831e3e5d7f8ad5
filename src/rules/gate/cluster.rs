//! The cluster side of a session's gate: every message on its way back to
//! the client. It swaps the cluster's failure of a refusal's marker for the
//! proxy's own error, notes the client encoding the cluster reports, and
//! turns command tags into the tenant's committed row delta, asking for a
//! measurement where the tags cannot tell (a [`Tag`] per command tag).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{cstr, Link, Rules};
use super::{MAX_SMALL_MESSAGE, PARAMETER_PEEK, TAG_PEEK};
use crate::limits::fleet::Op;
use crate::limits::tenants::Tenant;
use crate::protocol::error::field_of;
use crate::protocol::frame::{FrameHeader, Interest};
use crate::refusal::MARKER_PREFIX;
use crate::rules::log_crossing;
use crate::rules::prepared::Confirmation;
use crate::runtime::shared::Shared;
use crate::session::hook::{Hook, Verdict};

/// Cluster → client: swaps the cluster's failure of a marker for the
/// proxy's refusal, and turns command tags into committed row deltas.
#[derive(Debug)]
pub struct ClusterGate {
    shared: Arc<Shared>,
    tenant: Arc<Tenant>,
    rules: Rules,
    link: Arc<Link>,
    /// ReadyForQuery messages seen.
    readies: u64,
    /// Rows added (or, if negative, removed) by the current transaction's
    /// statements so far.
    delta: i64,
    /// The current transaction wrote something (rows may have changed even
    /// where the tags cannot tell by how much).
    wrote: bool,
    /// A CopyInResponse came: the next `COPY n` counts rows added.
    copy_in: bool,
    /// An ErrorResponse since the last ReadyForQuery: an implicit
    /// transaction ending now was rolled back.
    error_since_ready: bool,
}

impl Hook for ClusterGate {
    fn batch(&mut self) {
        self.rules.refresh(&self.shared, &self.tenant);
    }

    fn interest(&mut self, header: &FrameHeader) -> Interest {
        match header.tag {
            b'E' => {
                self.error_since_ready = true;
                if self.link.pending_count.load(Ordering::Acquire) > 0
                    && header.frame_len <= MAX_SMALL_MESSAGE
                {
                    Interest::Whole {
                        max_len: MAX_SMALL_MESSAGE,
                    }
                } else {
                    Interest::Pass
                }
            }
            b'G' => {
                self.copy_in = true;
                Interest::Pass
            }
            b'C' if self.rules.active() => Interest::Peek { len: TAG_PEEK },
            // ParseComplete, BindComplete, CloseComplete confirm names.
            b'1' | b'2' | b'3' if self.rules.active() => Interest::Peek { len: 5 },
            // Rare (a reported setting changed): `client_encoding` is read.
            b'S' => Interest::Peek {
                len: PARAMETER_PEEK,
            },
            _ => Interest::Pass,
        }
    }

    fn frame(&mut self, header: &FrameHeader, bytes: &[u8]) -> Verdict {
        let body = &bytes[5..];
        match header.tag {
            b'E' => return self.on_error(body),
            b'C' => self.on_command_complete(body),
            b'Z' => {
                self.on_ready(body.first().copied().unwrap_or(b'I'));
                self.link
                    .encoding
                    .readies
                    .store(self.readies, Ordering::Release);
            }
            b'S' => self.link.encoding.note_parameter(body),
            b'1' => self.confirm(Confirmation::ParseComplete),
            b'2' => self.confirm(Confirmation::BindComplete),
            b'3' => self.confirm(Confirmation::CloseComplete),
            _ => {}
        }
        Verdict::Forward
    }
}

impl ClusterGate {
    /// A session's cluster side, sharing `link` with its client side.
    pub(super) fn new(shared: &Arc<Shared>, tenant: &Arc<Tenant>, link: Arc<Link>) -> ClusterGate {
        ClusterGate {
            shared: Arc::clone(shared),
            tenant: Arc::clone(tenant),
            rules: Rules::load(shared, tenant),
            link,
            readies: 0,
            delta: 0,
            wrote: false,
            copy_in: false,
            error_since_ready: false,
        }
    }

    fn on_error(&mut self, body: &[u8]) -> Verdict {
        let Some(message) = field_of(body, b'M') else {
            return Verdict::Forward;
        };
        if !message.contains(MARKER_PREFIX) {
            return Verdict::Forward;
        }
        let mut pending = self.link.lock();
        let Some(at) = pending.iter().position(|p| message.contains(&p.marker)) else {
            return Verdict::Forward;
        };
        // Refusals before this one were skipped by the cluster.
        let refusal = pending.drain(..=at).next_back();
        self.link
            .pending_count
            .store(pending.len(), Ordering::Release);
        match refusal {
            Some(refusal) => Verdict::Replace(refusal.error.to_bytes()),
            None => Verdict::Forward,
        }
    }

    fn on_command_complete(&mut self, body: &[u8]) {
        let tag = cstr(body).map_or(body, |(tag, _)| tag);
        let tag = std::str::from_utf8(tag).unwrap_or_default();
        let copy_in = std::mem::take(&mut self.copy_in);
        if let Some(confirmation) = Confirmation::of_tag(tag) {
            self.confirm(confirmation);
        }
        if !self.rules.measured() {
            return;
        }
        if self.rules.limits.storage_limit > 0 && frees_space(tag) {
            // VACUUM FULL, DROP INDEX…: the size may have fallen; measure
            // promptly so that a tenant over its limit is let back in.
            self.wrote = true;
            self.link.remeasure.store(true, Ordering::Relaxed);
        }
        match Tag::parse(tag) {
            Tag::Rows(n) => {
                self.delta = self.delta.saturating_add(n);
                self.wrote = true;
            }
            Tag::CopyRows(n) => {
                if copy_in {
                    self.delta = self.delta.saturating_add(n);
                    self.wrote = true;
                }
            }
            Tag::Commit => self.settle(true),
            Tag::Rollback => self.settle(false),
            Tag::Remeasure => {
                self.wrote = true;
                self.link.remeasure.store(true, Ordering::Relaxed);
            }
            Tag::Wrote => self.wrote = true,
            Tag::Read => {}
        }
    }

    /// The cluster carried out a change of names of the request it is
    /// answering.
    fn confirm(&mut self, confirmation: Confirmation) {
        self.link.names().confirmed(self.readies + 1, confirmation);
    }

    fn on_ready(&mut self, status: u8) {
        self.readies += 1;
        if self.rules.active() {
            self.link.names().ready(self.readies);
        }
        if self.link.pending_count.load(Ordering::Acquire) > 0 {
            // Markers answered by now failed or were skipped.
            let mut pending = self.link.lock();
            while pending
                .front()
                .is_some_and(|p| p.ready_index <= self.readies)
            {
                pending.pop_front();
            }
            self.link
                .pending_count
                .store(pending.len(), Ordering::Release);
        }
        if status == b'I' {
            // An implicit transaction ends here: committed unless it failed.
            let committed = !self.error_since_ready;
            self.settle(committed);
            if self.link.remeasure.swap(false, Ordering::Relaxed) && self.rules.measured() {
                self.tenant.rows.want_measurement();
                self.shared.audits.request(&self.tenant);
            }
        }
        if self.error_since_ready && self.rules.limits.storage_limit > 0 {
            // A statement that failed may have written before it did (an
            // INSERT of a million rows failing on the last): dead rows on
            // disk that no commit announces.
            self.tenant.rows.touch();
        }
        self.error_since_ready = false;
        self.copy_in = false;
    }

    /// The transaction's deltas count (commit) or vanish (rollback).
    fn settle(&mut self, committed: bool) {
        let delta = std::mem::take(&mut self.delta);
        let wrote = std::mem::take(&mut self.wrote);
        let limit = self.rules.limits.row_limit;
        if !committed && wrote && self.rules.limits.storage_limit > 0 {
            // Rolled back: no rows, but the files grew all the same.
            self.tenant.rows.touch();
        }
        if committed && wrote && self.rules.measured() {
            let crossing = self.tenant.rows.commit(delta, limit);
            log_crossing(&self.tenant, crossing, limit);
            if delta != 0 && limit > 0 {
                self.shared
                    .fleet
                    .send(Op::RowDelta(self.tenant.name().to_owned(), delta));
            }
        }
    }
}

/// What a CommandComplete tag says about rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    /// Rows added (negative: removed): INSERT, DELETE, MERGE.
    Rows(i64),
    /// `COPY n`: rows added if it was a COPY FROM.
    CopyRows(i64),
    Commit,
    Rollback,
    /// Rows changed by an amount the tag does not tell.
    Remeasure,
    /// A write that does not change how many rows there are (UPDATE, DDL).
    Wrote,
    /// Nothing written.
    Read,
}

impl Tag {
    fn parse(tag: &str) -> Tag {
        let mut words = tag.split(' ');
        let first = words.next().unwrap_or_default();
        let count = || -> i64 {
            tag.rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        match first {
            "INSERT" => Tag::Rows(count()),
            "DELETE" => Tag::Rows(-count()),
            // MERGE's count mixes inserts, updates and deletes: measure soon.
            "MERGE" => Tag::Remeasure,
            "COPY" => Tag::CopyRows(count()),
            "COMMIT" => Tag::Commit,
            "ROLLBACK" => Tag::Rollback,
            "TRUNCATE" | "CALL" | "DO" | "REFRESH" => Tag::Remeasure,
            "DROP" => match words.next() {
                Some("TABLE" | "SCHEMA" | "MATERIALIZED" | "OWNED" | "DATABASE") => Tag::Remeasure,
                _ => Tag::Wrote,
            },
            "PREPARE" if tag == "PREPARE TRANSACTION" => Tag::Remeasure,
            "SELECT" | "FETCH" | "MOVE" | "SHOW" | "BEGIN" | "START" | "SET" | "RESET"
            | "LISTEN" | "UNLISTEN" | "NOTIFY" | "DISCARD" | "DEALLOCATE" | "PREPARE"
            | "DECLARE" | "CLOSE" | "SAVEPOINT" | "RELEASE" | "EXPLAIN" | "ANALYZE" | "VACUUM"
            | "CHECKPOINT" | "LOCK" | "COMMENT" | "" => Tag::Read,
            _ => Tag::Wrote,
        }
    }
}

/// Whether a command tag is of a statement that can make the database
/// smaller in ways row tags do not tell (TRUNCATE and DROP TABLE already
/// ask for a measurement): VACUUM (FULL rewrites, plain VACUUM truncates
/// empty pages at a table's end), CLUSTER, and any DROP.
fn frees_space(tag: &str) -> bool {
    tag == "VACUUM" || tag == "CLUSTER" || tag.starts_with("DROP ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_tell_rows_added_and_removed() {
        assert_eq!(Tag::parse("INSERT 0 150"), Tag::Rows(150));
        assert_eq!(Tag::parse("DELETE 7"), Tag::Rows(-7));
        assert_eq!(Tag::parse("COPY 20000"), Tag::CopyRows(20000));
        assert_eq!(Tag::parse("MERGE 3"), Tag::Remeasure);
        assert_eq!(Tag::parse("UPDATE 9"), Tag::Wrote);
        assert_eq!(Tag::parse("COMMIT"), Tag::Commit);
        assert_eq!(Tag::parse("ROLLBACK"), Tag::Rollback);
        assert_eq!(Tag::parse("TRUNCATE TABLE"), Tag::Remeasure);
        assert_eq!(Tag::parse("DROP TABLE"), Tag::Remeasure);
        assert_eq!(Tag::parse("DROP INDEX"), Tag::Wrote);
        assert_eq!(Tag::parse("SELECT 5"), Tag::Read);
        assert_eq!(Tag::parse("CREATE TABLE"), Tag::Wrote);
        assert_eq!(Tag::parse("PREPARE TRANSACTION"), Tag::Remeasure);
        assert_eq!(Tag::parse("PREPARE"), Tag::Read);
    }
}
