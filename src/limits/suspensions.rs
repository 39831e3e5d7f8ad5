//! The operator API's suspensions in force, as data: what the state file
//! saves, the fleet's store shares and the login checks. What a suspension
//! does (refusing logins, closing sessions) is `crate::limits::suspend`.

use std::collections::BTreeMap;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// A suspension made through the operator API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Unix seconds when it was made.
    #[serde(default)]
    pub at: u64,
}

/// The API's suspensions in force on this instance, by database name.
#[derive(Debug, Default)]
pub struct Suspensions {
    map: DashMap<String, Suspension>,
}

impl Suspensions {
    pub fn get(&self, name: &str) -> Option<Suspension> {
        self.map.get(name).map(|s| s.value().clone())
    }

    /// One map lookup, none at all while nothing is suspended.
    pub fn contains(&self, name: &str) -> bool {
        !self.map.is_empty() && self.map.contains_key(name)
    }

    pub fn insert(&self, name: &str, suspension: Suspension) {
        self.map.insert(name.to_owned(), suspension);
    }

    /// Returns whether `name` was suspended.
    pub fn remove(&self, name: &str) -> bool {
        self.map.remove(name).is_some()
    }

    /// Makes `all` the suspensions in force (the fleet store's set).
    pub fn replace_all(&self, all: BTreeMap<String, Suspension>) {
        self.map.retain(|name, _| all.contains_key(name));
        for (name, suspension) in all {
            self.map.insert(name, suspension);
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, Suspension> {
        self.map
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
