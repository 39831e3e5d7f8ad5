//! A logged-in session: the pump that passes bytes both ways, the hook
//! interface the rules plug into, and what watches a session from outside
//! (the live-session table, the idle sweep, keep-alive pings, the
//! statement clock).

pub mod hook;
pub mod idle;
pub mod live;
pub mod ping;
pub mod pump;
pub mod statement_time;
