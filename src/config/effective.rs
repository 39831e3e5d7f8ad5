//! A tenant's effective limits: its registry row over its `[tenants]` entry
//! over its tier, every key resolved to a figure (0 = unlimited, or never).
//! The rest of the proxy reads [`Limits`], never the optional keys of the
//! file.

use std::time::Duration;

use super::{Config, DenySet, TenantConfig};

/// The limits in force for one tenant, tier and overrides combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub tier: String,
    /// 0 = unlimited.
    pub max_connections: u32,
    /// Zero = never.
    pub idle_timeout: Duration,
    pub idle_in_transaction_timeout: Duration,
    /// Zero = none.
    pub statement_timeout: Duration,
    /// 0 = unlimited.
    pub row_limit: u64,
    /// Bytes; 0 = unlimited.
    pub storage_limit: u64,
    pub deny: DenySet,
    /// Suspended by the configuration (the tenant's key, else its tier's).
    pub suspended: bool,
    pub suspended_message: Option<String>,
    pub suspended_hint: Option<String>,
}

impl Config {
    /// The effective limits of the tenant (database) `name`, from the
    /// file alone.
    pub fn limits_for(&self, name: &str) -> Limits {
        self.limits_with(name, None)
    }

    /// The effective limits of `name` with `row`'s keys (the registry's)
    /// over its `[tenants]` entry's.
    pub fn limits_with(&self, name: &str, row: Option<&TenantConfig>) -> Limits {
        let merged_entry;
        let tenant = match (row, self.tenants.get(name)) {
            (Some(row), Some(file)) => {
                merged_entry = row.over(file);
                Some(&merged_entry)
            }
            (Some(row), None) => Some(row),
            (None, file) => file,
        };
        let tier_name = tenant
            .and_then(|t| t.tier.as_deref())
            .unwrap_or(&self.default_tier);
        // Validation guarantees the tier exists; an empty tier is the safe
        // reading should it ever not.
        let tier = self.tiers.get(tier_name).cloned().unwrap_or_default();
        let merged = match tenant {
            Some(t) => t.as_tier().over(&tier),
            None => tier,
        };
        let idle_timeout = merged.idle_timeout.unwrap_or_default();
        Limits {
            tier: tier_name.to_owned(),
            max_connections: merged.max_connections.unwrap_or(0),
            idle_timeout,
            idle_in_transaction_timeout: merged.idle_in_transaction_timeout.unwrap_or(idle_timeout),
            statement_timeout: merged.statement_timeout.unwrap_or_default(),
            row_limit: merged.row_limit.unwrap_or(0),
            storage_limit: merged.storage_limit.unwrap_or_default().0,
            // Validation checked the names.
            deny: merged
                .deny
                .as_deref()
                .and_then(|names| DenySet::parse(names).ok())
                .unwrap_or_default(),
            suspended: merged.suspended.unwrap_or(false),
            suspended_message: merged.suspended_message,
            suspended_hint: merged.suspended_hint,
        }
    }
}
