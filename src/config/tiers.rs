//! `[tiers.NAME]` and `[tenants.NAME]`: the keys a tier sets and a tenant
//! overrides, how one table's keys lie over another's, and the built-in
//! `free` and `standard` tiers. Every key is optional so that a table
//! states only what it changes; `effective` turns them into the figures
//! in force.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{ByteSize, Config, DenySet};
use crate::rules::classify::DenyKind;

/// The limits a tier sets. `0` means unlimited (or never, for timeouts).
///
/// Every key is optional in the file: a `[tiers.NAME]` table changes the
/// keys it names and keeps the rest (of the built-in tier of that name, or
/// of the unlimited defaults for a tier of the operator's own).
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub max_connections: Option<u32>,
    /// How long a session may sit idle (between ReadyForQuery and the
    /// client's next message) before it is closed with 57P05.
    #[serde(default, with = "humantime_serde::option")]
    pub idle_timeout: Option<Duration>,
    /// A separate, usually shorter, limit for idling inside a transaction;
    /// `idle_timeout` applies when absent.
    #[serde(default, with = "humantime_serde::option")]
    pub idle_in_transaction_timeout: Option<Duration>,
    /// How long one request may run on the cluster before the proxy
    /// cancels it (57014). The tenant's own `SET statement_timeout` works
    /// below it and cannot lift it; see `crate::session::statement_time`.
    #[serde(default, with = "humantime_serde::option")]
    pub statement_timeout: Option<Duration>,
    /// Rows a tenant's tables may hold together; above it, statements that
    /// add rows are refused (53400). Needs `[quota]`.
    pub row_limit: Option<u64>,
    /// Bytes the tenant's database may take on the cluster
    /// (`pg_database_size`; `"256MB"`, `"1GB"`; 0 = no limit); above it,
    /// statements that can grow the database are refused (53100). Needs
    /// `[quota]`. See `crate::rules::storage`.
    pub storage_limit: Option<ByteSize>,
    /// Statement kinds refused (42501): `extension`, `function`, `trigger`,
    /// `role`.
    pub deny: Option<Vec<String>>,
    /// Every login is refused (FATAL 55000) and running sessions are
    /// closed (57P01); see `crate::limits::suspend`.
    pub suspended: Option<bool>,
    /// What a refused login is told (`{database}` is replaced by the
    /// database's name); `crate::limits::suspend` has the default.
    pub suspended_message: Option<String>,
    pub suspended_hint: Option<String>,
}

impl TierConfig {
    /// `self`'s keys over `base`'s.
    pub(super) fn over(&self, base: &TierConfig) -> TierConfig {
        TierConfig {
            max_connections: self.max_connections.or(base.max_connections),
            idle_timeout: self.idle_timeout.or(base.idle_timeout),
            idle_in_transaction_timeout: self
                .idle_in_transaction_timeout
                .or(base.idle_in_transaction_timeout),
            statement_timeout: self.statement_timeout.or(base.statement_timeout),
            row_limit: self.row_limit.or(base.row_limit),
            storage_limit: self.storage_limit.or(base.storage_limit),
            deny: self.deny.clone().or_else(|| base.deny.clone()),
            suspended: self.suspended.or(base.suspended),
            suspended_message: self
                .suspended_message
                .clone()
                .or_else(|| base.suspended_message.clone()),
            suspended_hint: self
                .suspended_hint
                .clone()
                .or_else(|| base.suspended_hint.clone()),
        }
    }
}

/// A tenant listed by name; any tier key can be overridden.
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub tier: Option<String>,
    pub max_connections: Option<u32>,
    #[serde(default, with = "humantime_serde::option")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub idle_in_transaction_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub statement_timeout: Option<Duration>,
    pub row_limit: Option<u64>,
    pub storage_limit: Option<ByteSize>,
    pub deny: Option<Vec<String>>,
    pub suspended: Option<bool>,
    pub suspended_message: Option<String>,
    pub suspended_hint: Option<String>,
}

impl TenantConfig {
    /// `self`'s keys over `base`'s: a registry row over the file's entry.
    /// A key added to `TenantConfig` must be added here too.
    pub fn over(&self, base: &TenantConfig) -> TenantConfig {
        TenantConfig {
            tier: self.tier.clone().or_else(|| base.tier.clone()),
            max_connections: self.max_connections.or(base.max_connections),
            idle_timeout: self.idle_timeout.or(base.idle_timeout),
            idle_in_transaction_timeout: self
                .idle_in_transaction_timeout
                .or(base.idle_in_transaction_timeout),
            statement_timeout: self.statement_timeout.or(base.statement_timeout),
            row_limit: self.row_limit.or(base.row_limit),
            deny: self.deny.clone().or_else(|| base.deny.clone()),
            storage_limit: self.storage_limit.or(base.storage_limit),
            suspended: self.suspended.or(base.suspended),
            suspended_message: self
                .suspended_message
                .clone()
                .or_else(|| base.suspended_message.clone()),
            suspended_hint: self
                .suspended_hint
                .clone()
                .or_else(|| base.suspended_hint.clone()),
        }
    }

    /// What is wrong with this entry under `config` (a tier it names that
    /// does not exist, an unknown deny kind, a row limit without
    /// `[quota]`), with the key it is about; for registry rows, which are
    /// not checked when the file is.
    pub fn check(&self, config: &Config) -> Result<(), (&'static str, String)> {
        if let Some(tier) = &self.tier {
            if !config.tiers.contains_key(tier) {
                return Err((
                    "tier",
                    format!("{tier:?} names no tier (known: {})", config.tier_names()),
                ));
            }
        }
        if let Some(names) = &self.deny {
            DenySet::parse(names).map_err(|e| ("deny", e))?;
        }
        if let (Some(limit @ 1..), None) = (self.row_limit, &config.quota) {
            return Err((
                "row_limit",
                format!("{limit} needs a [quota] table in proxy.toml"),
            ));
        }
        Ok(())
    }

    /// The tier keys this tenant overrides.
    pub(super) fn as_tier(&self) -> TierConfig {
        TierConfig {
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout,
            idle_in_transaction_timeout: self.idle_in_transaction_timeout,
            statement_timeout: self.statement_timeout,
            row_limit: self.row_limit,
            storage_limit: self.storage_limit,
            deny: self.deny.clone(),
            suspended: self.suspended,
            suspended_message: self.suspended_message.clone(),
            suspended_hint: self.suspended_hint.clone(),
        }
    }
}

/// The tiers that exist even when `proxy.toml` does not mention them. A
/// `[tiers.NAME]` table of the same name changes the keys it names.
pub fn builtin_tiers() -> BTreeMap<String, TierConfig> {
    BTreeMap::from([
        (
            "free".to_owned(),
            TierConfig {
                max_connections: Some(2),
                idle_timeout: Some(Duration::from_secs(300)),
                idle_in_transaction_timeout: None,
                // A migration of 10,000 rows (CREATE INDEX, a rewriting
                // ALTER TABLE, an UPDATE of every row) takes well under a
                // second; 30 s caps a runaway at 30 s of one core. See the
                // README's "Statement timeout".
                statement_timeout: Some(Duration::from_secs(30)),
                row_limit: Some(10_000),
                // 10,000 rows of a typical application (≤ 20 kB a row with
                // its indexes and TOAST) plus an empty database's ~7.5 MB
                // fit with room for bloat; 10,000 rows of 1 GB each do not.
                // Peers' free tiers: Supabase 500 MB, Neon 0.5 GB, Heroku
                // essential-0 1 GB. See the README's "Storage limit".
                storage_limit: Some(ByteSize(256 << 20)),
                deny: Some(
                    DenyKind::ALL
                        .iter()
                        .map(|k| k.as_str().to_owned())
                        .collect(),
                ),
                ..TierConfig::default()
            },
        ),
        (
            "standard".to_owned(),
            TierConfig {
                max_connections: Some(0),
                idle_timeout: Some(Duration::ZERO),
                idle_in_transaction_timeout: None,
                statement_timeout: Some(Duration::ZERO),
                row_limit: Some(0),
                storage_limit: Some(ByteSize(0)),
                deny: Some(Vec::new()),
                ..TierConfig::default()
            },
        ),
    ])
}

impl Config {
    pub(super) fn tier_names(&self) -> String {
        self.tiers.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}
