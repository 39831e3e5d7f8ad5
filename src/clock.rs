//! The wall clock in the unit the proxy stores times in (seconds since the
//! Unix epoch: last activity, measurement times), shared by every module
//! that stamps or compares them.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
