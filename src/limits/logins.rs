//! Bounds on logins in progress: a flood of connections that never finish
//! logging in (slowloris, a scanner, a broken pool hammering one database)
//! must not take the proxy's capacity from everyone else.
//!
//! Two bounds, both reloadable: `max_pending_logins` counts every
//! connection between accept and the end of its login; and
//! `max_pending_logins_per_tenant` counts one database's logins from their
//! StartupMessage on, so that one tenant cannot use up the global bound and
//! other tenants are unaffected. Each count is held by a guard and given
//! back on drop, so no exit path can leak one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

/// Logins in progress, in all and per tenant.
#[derive(Debug, Default)]
pub struct Logins {
    total: Arc<AtomicUsize>,
    /// Only tenants with a login in progress have an entry, so the map is
    /// bounded by the global bound, whatever names clients make up.
    by_tenant: Arc<DashMap<String, usize>>,
}

/// A connection counted as logging in; dropping it ends the count.
#[derive(Debug)]
pub struct PendingLogin {
    total: Arc<AtomicUsize>,
}

impl Drop for PendingLogin {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A login counted against its tenant; dropping it ends the count.
#[derive(Debug)]
pub struct TenantLogin {
    by_tenant: Arc<DashMap<String, usize>>,
    tenant: String,
}

impl Drop for TenantLogin {
    fn drop(&mut self) {
        self.by_tenant.remove_if_mut(&self.tenant, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

impl Logins {
    /// Counts a new connection unless `max` (0 = no limit) are already
    /// logging in.
    pub fn begin(&self, max: usize) -> Option<PendingLogin> {
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()?;
        Some(PendingLogin {
            total: Arc::clone(&self.total),
        })
    }

    /// Counts a login of `tenant` unless `max` (0 = no limit) of its logins
    /// are already in progress.
    pub fn begin_for(&self, tenant: &str, max: usize) -> Option<TenantLogin> {
        let mut entry = self.by_tenant.entry(tenant.to_owned()).or_insert(0);
        if max > 0 && *entry >= max {
            return None;
        }
        *entry += 1;
        Some(TenantLogin {
            by_tenant: Arc::clone(&self.by_tenant),
            tenant: tenant.to_owned(),
        })
    }

    /// Connections logging in now.
    pub fn in_progress(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Logins of `tenant` in progress now.
    pub fn in_progress_for(&self, tenant: &str) -> usize {
        self.by_tenant.get(tenant).map_or(0, |n| *n)
    }

    /// Tenants with a login in progress (the map's size).
    pub fn tenants_logging_in(&self) -> usize {
        self.by_tenant.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_hold_and_guards_give_back() {
        let logins = Logins::default();
        let a = logins.begin(2).unwrap();
        let b = logins.begin(2).unwrap();
        assert!(logins.begin(2).is_none());
        assert!(logins.begin(0).is_some(), "0 = no limit");
        drop(a);
        assert_eq!(logins.in_progress(), 1);
        let _c = logins.begin(2).unwrap();
        drop(b);

        let x1 = logins.begin_for("x", 2).unwrap();
        let _x2 = logins.begin_for("x", 2).unwrap();
        assert!(logins.begin_for("x", 2).is_none());
        let _y = logins.begin_for("y", 2).expect("other tenants unaffected");
        drop(x1);
        assert_eq!(logins.in_progress_for("x"), 1);
        assert!(logins.begin_for("x", 2).is_some());
    }

    #[test]
    fn the_map_holds_only_tenants_logging_in() {
        let logins = Logins::default();
        let held: Vec<_> = (0..100)
            .map(|i| logins.begin_for(&format!("t{i}"), 8).unwrap())
            .collect();
        assert_eq!(logins.tenants_logging_in(), 100);
        drop(held);
        assert_eq!(logins.tenants_logging_in(), 0);
        assert!(logins.begin_for("full", 0).is_some());
        assert_eq!(logins.tenants_logging_in(), 0, "the guard above dropped");
    }
}
