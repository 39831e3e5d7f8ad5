//! Suspension: a database whose every login is refused and whose running
//! sessions are closed, while everything else the proxy knows of it (row
//! figures, last activity, counters) stays. It is the step before an
//! operator drops an inactive database (README, "Inactive databases").
//!
//! Two sources, and a tenant is suspended if EITHER says so:
//! - the configuration: `suspended = true` under `[tiers.x]` or
//!   `[tenants.x]` (a per-tenant key like the others, so a tenant registry
//!   that maps its columns to those keys carries it too). A reload that
//!   sets or clears it takes effect at once (the idle sweep closes the
//!   sessions of a tenant that became suspended);
//! - the operator API (`POST /tenants/{name}/suspend`, `…/resume`), kept
//!   in [`Suspensions`], written to the state file and, in a fleet, to the
//!   store every instance reads on its heartbeat. A reload never touches
//!   it, so editing `proxy.toml` cannot silently lift an API suspension;
//!   and resuming through the API cannot lift a configured one (the API
//!   says so with 409).
//!
//! The refusal is PostgreSQL's own for a database closed to connections
//! (`ALTER DATABASE x ALLOW_CONNECTIONS false`): FATAL 55000
//! `object_not_in_prerequisite_state`. Not 57P03 `cannot_connect_now`,
//! which says "starting up / shutting down, try again" and which pools and
//! drivers (libpq's `PQping` reports it as a server that will accept
//! connections; several poolers and orchestrators retry it) treat as
//! transient; not 53300, which pools retry with back-off: a suspended
//! database will not come back by retrying, and a client that retries in a
//! loop only adds load.
//!
//! A login is refused before the proxy contacts the cluster, so no backend
//! is ever started in a suspended database (and a `DROP DATABASE` cannot
//! race a new session). A login already past that check when the
//! suspension lands is closed as soon as it registers as a session: the
//! suspension is recorded before running sessions are walked, and a
//! session is registered before it looks, so one of the two sees the other.

use crate::config::Limits;
use crate::refusal::Refusal;
use crate::runtime::shared::Shared;
use crate::session::live::KillReason;

/// What a refused login is told unless the operator said otherwise;
/// `{database}` is replaced by the database's name.
pub const DEFAULT_MESSAGE: &str = "database \"{database}\" is suspended";
pub const DEFAULT_HINT: &str = "Contact your provider to restore it.";

pub use crate::limits::suspensions::Suspension;

/// Who suspended a tenant (both may have).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// `suspended = true` in the tenant's or its tier's configuration.
    pub by_config: bool,
    pub by_api: Option<Suspension>,
}

impl Status {
    pub fn of(shared: &Shared, name: &str, limits: &Limits) -> Status {
        Status {
            by_config: limits.suspended,
            by_api: shared.suspensions.get(name),
        }
    }

    pub fn suspended(&self) -> bool {
        self.by_config || self.by_api.is_some()
    }

    /// `["api", "config"]`, the sources in force.
    pub fn sources(&self) -> Vec<&'static str> {
        let mut by = Vec::new();
        if self.by_api.is_some() {
            by.push("api");
        }
        if self.by_config {
            by.push("config");
        }
        by
    }
}

/// Whether `name` is suspended (configured `limits`, or the API).
#[inline]
pub fn is_suspended(shared: &Shared, name: &str, limits: &Limits) -> bool {
    limits.suspended || shared.suspensions.contains(name)
}

/// The refusal of a login to `name`, if it is suspended.
pub fn login_refusal(shared: &Shared, name: &str, limits: &Limits) -> Option<Refusal> {
    if !is_suspended(shared, name, limits) {
        return None;
    }
    Some(refusal(name, limits, shared.suspensions.get(name).as_ref()))
}

/// The one place the refusal is built: FATAL 55000 with the API's message
/// and hint if it gave them, else the configuration's, else the defaults.
pub fn refusal(name: &str, limits: &Limits, api: Option<&Suspension>) -> Refusal {
    let message = api
        .and_then(|s| s.message.as_deref())
        .or(limits.suspended_message.as_deref())
        .unwrap_or(DEFAULT_MESSAGE);
    let hint = api
        .and_then(|s| s.hint.as_deref())
        .or(limits.suspended_hint.as_deref())
        .unwrap_or(DEFAULT_HINT);
    Refusal::Suspended {
        message: message.replace("{database}", name),
        hint: (!hint.is_empty()).then(|| hint.replace("{database}", name)),
    }
}

/// Closes every session of `name` with FATAL 57P01 and drops its warm
/// cluster connections; returns how many sessions were asked to end.
pub fn close_sessions(shared: &Shared, name: &str) -> usize {
    let n = shared
        .sessions
        .kill_where(Some(name), KillReason::Suspended);
    shared.warm.clear_tenant(name);
    n
}

/// Checks a database name given to the API: what the cluster could open
/// (PostgreSQL cuts names to 63 bytes, and so does the proxy when it names
/// the tenant, so a longer name would never match a login).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('\0') {
        return Err("a database name is not empty and has no NUL character".to_owned());
    }
    if name.len() > crate::protocol::startup::MAX_NAME_BYTES {
        return Err(format!(
            "a database name has at most 63 bytes (this one has {}); PostgreSQL cuts longer names",
            name.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{check_operator_text, Config, MAX_OPERATOR_TEXT_BYTES};
    use crate::limits::suspensions::Suspensions;
    use std::collections::BTreeMap;

    fn limits(tables: &str) -> Limits {
        // The built-in free tier's row limit needs a [quota]; not here.
        let tables = if tables.contains("[tiers.free]\n") {
            tables.replace("[tiers.free]\n", "[tiers.free]\nrow_limit = 0\n")
        } else {
            format!("[tiers.free]\nrow_limit = 0\n{tables}")
        };
        let text = format!("[tls]\nmode = \"disable\"\n{tables}");
        Config::from_toml_str(&text).unwrap().limits_for("x")
    }

    #[test]
    fn tier_and_tenant_keys_combine_and_the_message_names_the_database() {
        let free = limits("[tiers.free]\nsuspended = true\nsuspended_message = \"database \\\"{database}\\\" is suspended for inactivity\"\n");
        assert!(free.suspended);
        let e = refusal("x", &free, None).render();
        assert_eq!(e.code, "55000");
        assert_eq!(e.message, "database \"x\" is suspended for inactivity");
        assert_eq!(e.hint.as_deref(), Some(DEFAULT_HINT));
        // The tenant's own key wins over its tier's.
        let lifted = limits("[tiers.free]\nsuspended = true\n[tenants.x]\nsuspended = false\n");
        assert!(!lifted.suspended);
        // The API's texts win over the configuration's; an empty hint is none.
        let api = Suspension {
            message: Some("closed".into()),
            hint: Some(String::new()),
            at: 1,
        };
        let e = refusal("x", &free, Some(&api)).render();
        assert_eq!((e.message.as_str(), e.hint), ("closed", None));
        let e = refusal("y", &limits(""), None).render();
        assert_eq!(e.message, "database \"y\" is suspended");
    }

    #[test]
    fn texts_and_names_are_bounded_and_nul_free() {
        assert!(check_operator_text("ok").is_ok());
        assert!(check_operator_text("a\0b").is_err());
        assert!(check_operator_text(&"x".repeat(MAX_OPERATOR_TEXT_BYTES + 1)).is_err());
        let err = Config::from_toml_str(
            "[tls]\nmode = \"disable\"\n[tenants.x]\nsuspended_hint = \"a\\u0000b\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tenants.x.suspended_hint"), "{err}");
        assert!(check_name("").is_err());
        assert!(check_name(&"n".repeat(64)).is_err());
        assert!(check_name(&"n".repeat(63)).is_ok());
    }

    #[test]
    fn replace_all_adopts_the_stores_set() {
        let s = Suspensions::default();
        assert!(!s.contains("a"));
        s.insert("a", Suspension::default());
        s.insert("b", Suspension::default());
        s.replace_all(BTreeMap::from([
            ("b".to_owned(), Suspension::default()),
            ("c".to_owned(), Suspension::default()),
        ]));
        assert!(!s.contains("a") && s.contains("b") && s.contains("c"));
        assert!(s.remove("b") && !s.remove("b"));
    }
}
