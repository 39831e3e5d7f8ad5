//! What the operator sees and drives: the admin API, metrics and their
//! Prometheus exposition, the state file, and the log budget.

pub(crate) mod admin;
pub(crate) mod log_budget;
pub(crate) mod metrics;
pub(crate) mod scrape;
pub mod state;
