//! Each tenant's limits and what counts against them: tenants and their
//! connection slots, row and size figures, bounds on logins in progress,
//! suspension, the fleet's shared store, and tenants read from the control
//! plane's registry.

pub mod fleet;
pub(crate) mod logins;
pub(crate) mod registry;
pub(crate) mod rows;
pub(crate) mod suspend;
pub(crate) mod suspensions;
pub mod tenants;
