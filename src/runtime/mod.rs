//! The running proxy: the accept loop and its threads, the state every
//! connection shares (built once, reloaded in place), graceful shutdown,
//! and the service manager's readiness protocol.
//!
//! - [`server`]: binding, accepting, draining, the background tasks;
//! - [`shared`]: the composition root every connection reads, and reload;
//! - [`shutdown`]: the stop signal as a small reusable type;
//! - [`notify`]: sd_notify (READY, RELOADING, STOPPING).

pub(crate) mod notify;
pub mod server;
pub mod shared;
pub(crate) mod shutdown;
