//! A logged-in session: the pump that passes bytes both ways, the hook
//! interface the rules plug into, and what watches a session from outside
//! (the live-session table, the idle sweep, keep-alive pings, the
//! statement clock).

pub mod hook;
pub(crate) mod idle;
pub mod live;
pub(crate) mod ping;
pub mod pump;
pub(crate) mod statement_time;
pub mod walk;
