//! What the operator sees and drives: the admin API, metrics and their
//! Prometheus exposition, the state file, and the log budget.

pub mod admin;
pub mod log_budget;
pub mod metrics;
pub mod scrape;
pub mod state;
