//! `[fleet]`: where the limits several instances share are kept, and what
//! an instance does while that store cannot be reached.

use std::time::Duration;

use serde::Deserialize;

/// Where the limits several instances share are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FleetStore {
    /// In this process: one instance.
    #[default]
    Local,
    /// In Redis (`[fleet] url`): slots, cancel keys, quota figures and last
    /// activity shared by every instance.
    Redis,
}

/// What an instance does while the fleet's store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Keep serving: each instance holds its own count against the limit
    /// (the fleet may briefly hold up to one limit per instance).
    #[default]
    Open,
    /// Refuse logins that need a slot until the store answers again.
    Closed,
}

/// `[fleet]`: several instances, one set of limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    #[serde(default)]
    pub store: FleetStore,
    /// `redis://host:port/` (needed for `store = "redis"`).
    pub url: Option<String>,
    /// This instance's name in the fleet (default: host name and port).
    pub instance: Option<String>,
    /// How long a dead instance's slots and cancel keys outlive it; its
    /// heartbeat renews them three times per lease.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    #[serde(default)]
    pub on_store_error: OnStoreError,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            store: FleetStore::Local,
            url: None,
            instance: None,
            lease_ttl: default_lease_ttl(),
            on_store_error: OnStoreError::Open,
        }
    }
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}
