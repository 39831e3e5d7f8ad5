//! Which prepared statements and portals of a session add rows or grow
//! storage ([`Writes`]), as the *cluster* has them.
//!
//! A name's meaning changes only when the cluster confirms the change:
//! ParseComplete for a Parse, BindComplete for a Bind, CloseComplete for a
//! Close, the `PREPARE` / `DEALLOCATE` / `DISCARD ALL` command tags for the
//! SQL forms. Following what was *sent* instead lets a tenant desynchronise
//! the proxy from the cluster: a PREPARE the cluster rejects (the name is
//! taken, the transaction is aborted, an earlier statement of the query
//! failed) or a `DEALLOCATE s; PREPARE s AS INSERT …` applied in the wrong
//! order would make an INSERT look like a SELECT.
//!
//! A message is judged against the names as the cluster will have them
//! when it runs that message. Changes sent earlier in the *same* request
//! (up to its Sync, or in the same Query) count as done: if one of them
//! fails, the cluster skips the rest of the request, this message included.
//! Changes of *earlier* requests still unconfirmed may or may not happen,
//! so there the tracker is pessimistic: a name adds rows if its confirmed
//! meaning does or a definition in flight does. A change that is never
//! confirmed (the cluster skipped it after an error, or the proxy could not
//! match its confirmation) is settled at its request's ReadyForQuery the
//! fail-closed way: a definition that adds rows is assumed to have
//! happened, a removal is assumed not to have. The only cost of that
//! pessimism is a refusal while the tenant is over its limit.
//!
//! The client gate records changes and asks questions; the cluster gate
//! reports confirmations and ReadyForQuery. Both sides hold one mutex for a
//! few map operations per Parse/Bind/Close, and only for tenants with rules.

use std::collections::{HashMap, VecDeque};

use crate::rules::classify::Writes;

/// Statements and portals tracked per session; past this the session's
/// tracking is unreliable and every unknown name counts as adding rows.
pub const MAX_TRACKED: usize = 10_000;
/// Changes waiting for the cluster's confirmation (each lookup scans them);
/// a client that pipelines more without reading makes every name count as
/// adding rows for the rest of its session.
const MAX_IN_FLIGHT: usize = 4096;

/// The two namespaces of the extended protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Statement,
    Portal,
}

/// The message whose arrival from the cluster confirms a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    ParseComplete,
    BindComplete,
    CloseComplete,
    /// The command tag `PREPARE`.
    PrepareTag,
    /// The command tag `DEALLOCATE` (one name).
    DeallocateTag,
    /// `DEALLOCATE ALL` or `DISCARD ALL`.
    DeallocateAllTag,
}

const CONFIRMATIONS: usize = 6;

impl Confirmation {
    fn index(self) -> usize {
        self as usize
    }

    /// The tracked confirmation a command tag is, if any.
    pub fn of_tag(tag: &str) -> Option<Confirmation> {
        match tag {
            "PREPARE" => Some(Confirmation::PrepareTag),
            "DEALLOCATE" => Some(Confirmation::DeallocateTag),
            "DEALLOCATE ALL" | "DISCARD ALL" => Some(Confirmation::DeallocateAllTag),
            _ => None,
        }
    }
}

/// A change to one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The name now means a statement (or portal) that writes this.
    Define(Box<str>, Writes),
    Remove(Box<str>),
    /// Every prepared statement (and, for DISCARD ALL, portal) is gone.
    RemoveAll,
}

#[derive(Debug)]
struct InFlight {
    /// The request (counted Query, Sync and FunctionCall messages) whose
    /// ReadyForQuery ends it: by then it is confirmed or never will be.
    request: u64,
    /// The order the client sent changes in, across confirmation kinds.
    seq: u64,
    space: Space,
    change: Change,
}

/// One session's names.
#[derive(Debug, Default)]
pub struct Tracker {
    statements: HashMap<Box<str>, Writes>,
    portals: HashMap<Box<str>, Writes>,
    /// Names may exist that the tracker never saw defined (before the rules
    /// applied, past `MAX_TRACKED`): an unknown one then counts as adding
    /// rows.
    lost_track: bool,
    /// Too many changes in flight: every name counts as adding rows for the
    /// rest of the session.
    saturated: bool,
    in_flight: [VecDeque<InFlight>; CONFIRMATIONS],
    in_flight_len: usize,
    sent: u64,
}

impl Tracker {
    /// Statements the proxy did not see may exist from now on.
    pub fn lose_track(&mut self) {
        self.lost_track = true;
    }

    /// Whether executing `name` (in `space`) by a message of `request`
    /// may add rows (the tests' shorthand for [`Tracker::writes`]).
    #[cfg(test)]
    fn adds_rows(&self, space: Space, name: &str, request: u64) -> bool {
        self.writes(space, name, request).rows
    }

    /// What executing `name` (in `space`) by a message of `request` may
    /// write: pessimistically, each kind of write any possible meaning of
    /// the name has.
    pub fn writes(&self, space: Space, name: &str, request: u64) -> Writes {
        if self.saturated {
            return Writes::ALL;
        }
        let concerns = |f: &&InFlight| {
            f.space == space
                && match &f.change {
                    Change::Define(n, _) | Change::Remove(n) => &**n == name,
                    Change::RemoveAll => true,
                }
        };
        // Earlier requests: confirmed, or pessimistically in flight.
        let earlier_define = self
            .in_flight
            .iter()
            .flatten()
            .filter(concerns)
            .filter(|f| f.request < request)
            .fold(Writes::NONE, |writes, f| match f.change {
                Change::Define(_, w) => writes.or(w),
                _ => writes,
            });
        let mut now = match self.map(space).get(name) {
            Some(writes) => Some(writes.or(earlier_define)),
            None if earlier_define.any() => Some(earlier_define),
            None => None,
        };
        let mut unknown = self.lost_track;
        // This request's own changes, in the order sent, as done.
        let mut same: Vec<&InFlight> = self
            .in_flight
            .iter()
            .flatten()
            .filter(concerns)
            .filter(|f| f.request == request)
            .collect();
        same.sort_by_key(|f| f.seq);
        for f in same {
            match &f.change {
                Change::Define(_, writes) => now = Some(*writes),
                Change::Remove(_) => now = None,
                Change::RemoveAll => {
                    now = None;
                    unknown = false;
                }
            }
        }
        now.unwrap_or(if unknown { Writes::ALL } else { Writes::NONE })
    }

    /// A change the client sent, confirmed by `by` when the cluster
    /// carries out `request`.
    pub fn sent(&mut self, request: u64, by: Confirmation, space: Space, change: Change) {
        if self.in_flight_len >= MAX_IN_FLIGHT {
            self.saturated = true;
            return;
        }
        self.in_flight_len += 1;
        self.sent += 1;
        self.in_flight[by.index()].push_back(InFlight {
            request,
            seq: self.sent,
            space,
            change,
        });
    }

    /// A definition the cluster will carry out at a time the proxy cannot
    /// follow (a SQL PREPARE inside an extended-protocol Parse, run at each
    /// Execute): counted at once, and for good, when it writes.
    pub fn assume_defined(&mut self, space: Space, name: &str, writes: Writes) {
        if writes.any() {
            self.apply(space, Change::Define(name.into(), writes));
        }
    }

    /// The cluster sent `by` while answering `request`.
    pub fn confirmed(&mut self, request: u64, by: Confirmation) {
        let queue = &mut self.in_flight[by.index()];
        // Changes of earlier requests were skipped; ReadyForQuery settles
        // them, so only this request's are matched.
        if queue.front().is_none_or(|f| f.request != request) {
            return;
        }
        if let Some(f) = queue.pop_front() {
            self.in_flight_len -= 1;
            self.apply(f.space, f.change);
        }
    }

    /// ReadyForQuery for `request`: its unconfirmed changes never happened,
    /// or happened where the proxy could not see; settle them fail-closed.
    pub fn ready(&mut self, request: u64) {
        if self.in_flight_len == 0 {
            return;
        }
        let mut settled = Vec::new();
        for queue in &mut self.in_flight {
            while queue.front().is_some_and(|f| f.request <= request) {
                if let Some(f) = queue.pop_front() {
                    settled.push(f);
                }
            }
        }
        self.in_flight_len -= settled.len();
        for f in settled {
            if let Change::Define(name, writes) = f.change {
                if writes.any() {
                    self.apply(f.space, Change::Define(name, writes));
                }
            }
        }
    }

    fn map(&self, space: Space) -> &HashMap<Box<str>, Writes> {
        match space {
            Space::Statement => &self.statements,
            Space::Portal => &self.portals,
        }
    }

    fn apply(&mut self, space: Space, change: Change) {
        let map = match space {
            Space::Statement => &mut self.statements,
            Space::Portal => &mut self.portals,
        };
        match change {
            Change::Define(name, adds) => {
                if map.len() >= MAX_TRACKED && !map.contains_key(&name) {
                    self.lost_track = true;
                    return;
                }
                map.insert(name, adds);
            }
            Change::Remove(name) => {
                map.remove(&name);
            }
            Change::RemoveAll => {
                // DEALLOCATE ALL / DISCARD ALL: every prepared statement is
                // gone, known or not.
                map.clear();
                if space == Space::Statement {
                    self.lost_track = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Confirmation::*;
    use Space::*;

    /// A request after every one the tests send changes in.
    const LATER: u64 = 99;

    fn define(name: &str, adds: bool) -> Change {
        let writes = if adds { Writes::ALL } else { Writes::NONE };
        Change::Define(name.into(), writes)
    }

    #[test]
    fn storage_growth_is_tracked_apart_from_rows() {
        let mut t = Tracker::default();
        // Parse u AS UPDATE …: grows storage, adds no rows.
        t.sent(
            1,
            ParseComplete,
            Statement,
            Change::Define("u".into(), Writes::STORAGE),
        );
        assert_eq!(t.writes(Statement, "u", LATER), Writes::STORAGE);
        t.confirmed(1, ParseComplete);
        assert!(!t.adds_rows(Statement, "u", LATER));
        assert!(t.writes(Statement, "u", LATER).storage);
        // Never confirmed: a growing definition is assumed, like rows.
        t.sent(
            2,
            PrepareTag,
            Statement,
            Change::Define("g".into(), Writes::STORAGE),
        );
        t.ready(2);
        assert_eq!(t.writes(Statement, "g", LATER), Writes::STORAGE);
        t.lose_track();
        assert_eq!(t.writes(Statement, "unknown", LATER), Writes::ALL);
    }

    #[test]
    fn a_definition_counts_once_confirmed_and_pessimistically_before() {
        let mut t = Tracker::default();
        t.sent(1, ParseComplete, Statement, define("s", true));
        assert!(
            t.adds_rows(Statement, "s", LATER),
            "in flight, it may add rows"
        );
        t.confirmed(1, ParseComplete);
        assert!(t.adds_rows(Statement, "s", LATER));
        t.sent(2, CloseComplete, Statement, Change::Remove("s".into()));
        assert!(
            t.adds_rows(Statement, "s", LATER),
            "not gone until confirmed"
        );
        t.confirmed(2, CloseComplete);
        assert!(!t.adds_rows(Statement, "s", LATER));
    }

    #[test]
    fn a_rejected_definition_that_adds_rows_is_assumed() {
        let mut t = Tracker::default();
        t.sent(1, ParseComplete, Statement, define("s", false));
        t.confirmed(1, ParseComplete);
        // PREPARE s AS INSERT …: rejected (42P05), never confirmed.
        t.sent(2, PrepareTag, Statement, define("s", true));
        t.ready(2);
        assert!(t.adds_rows(Statement, "s", LATER));
    }

    #[test]
    fn a_rejected_removal_keeps_the_name() {
        let mut t = Tracker::default();
        t.sent(1, PrepareTag, Statement, define("s", true));
        t.confirmed(1, PrepareTag);
        // DISCARD ALL inside a transaction block fails (25001).
        t.sent(2, DeallocateAllTag, Statement, Change::RemoveAll);
        t.ready(2);
        assert!(t.adds_rows(Statement, "s", LATER));
    }

    #[test]
    fn deallocate_then_prepare_in_one_query_follows_the_clusters_order() {
        let mut t = Tracker::default();
        t.sent(1, PrepareTag, Statement, define("s", false));
        t.confirmed(1, PrepareTag);
        // DEALLOCATE s; PREPARE s AS INSERT …
        t.sent(2, DeallocateTag, Statement, Change::Remove("s".into()));
        t.sent(2, PrepareTag, Statement, define("s", true));
        assert!(t.adds_rows(Statement, "s", LATER));
        t.confirmed(2, DeallocateTag);
        assert!(
            t.adds_rows(Statement, "s", LATER),
            "the PREPARE is still in flight"
        );
        t.confirmed(2, PrepareTag);
        t.ready(2);
        assert!(t.adds_rows(Statement, "s", LATER));
    }

    #[test]
    fn a_message_sees_the_changes_sent_before_it_in_its_own_request() {
        let mut t = Tracker::default();
        t.sent(1, ParseComplete, Statement, define("p", true));
        t.confirmed(1, ParseComplete);
        t.ready(1);
        // Close p; Parse p AS SELECT; Bind p, all before one Sync: the Bind
        // runs only if the Close and Parse did.
        t.sent(2, CloseComplete, Statement, Change::Remove("p".into()));
        t.sent(2, ParseComplete, Statement, define("p", false));
        assert!(!t.adds_rows(Statement, "p", 2));
        // A later request cannot know they succeeded.
        assert!(t.adds_rows(Statement, "p", 3));
        // Parse p AS INSERT; Close p in one request: gone for the rest of it.
        t.sent(4, ParseComplete, Statement, define("q", true));
        t.sent(4, CloseComplete, Statement, Change::Remove("q".into()));
        assert!(!t.adds_rows(Statement, "q", 4));
        assert!(
            t.adds_rows(Statement, "q", 5),
            "the Close may have been skipped"
        );
    }

    #[test]
    fn confirmations_of_other_requests_do_not_match() {
        let mut t = Tracker::default();
        t.sent(3, CloseComplete, Statement, Change::Remove("s".into()));
        t.assume_defined(Statement, "s", Writes::ALL);
        // A CloseComplete while request 2 is answered is not this one.
        t.confirmed(2, CloseComplete);
        assert!(t.adds_rows(Statement, "s", LATER));
        t.confirmed(3, CloseComplete);
        assert!(!t.adds_rows(Statement, "s", LATER));
    }

    #[test]
    fn unknown_names_follow_lost_track_until_deallocate_all() {
        let mut t = Tracker::default();
        assert!(!t.adds_rows(Statement, "x", LATER));
        t.lose_track();
        assert!(t.adds_rows(Statement, "x", LATER));
        t.sent(1, DeallocateAllTag, Statement, Change::RemoveAll);
        t.confirmed(1, DeallocateAllTag);
        assert!(!t.adds_rows(Statement, "x", LATER));
    }

    #[test]
    fn portals_and_statements_are_separate() {
        let mut t = Tracker::default();
        t.sent(1, BindComplete, Portal, define("p", true));
        t.confirmed(1, BindComplete);
        assert!(t.adds_rows(Portal, "p", LATER));
        assert!(!t.adds_rows(Statement, "p", LATER));
    }

    #[test]
    fn too_many_in_flight_makes_every_name_add_rows() {
        let mut t = Tracker::default();
        for i in 0..=MAX_IN_FLIGHT {
            t.sent(1, ParseComplete, Statement, define(&i.to_string(), false));
        }
        assert!(t.adds_rows(Statement, "anything", LATER));
    }
}
