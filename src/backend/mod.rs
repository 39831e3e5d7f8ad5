//! The cluster's side of a session: connecting to it, the warm
//! connections proxy mode keeps, forwarding cancel requests, and the
//! proxy's own control connections (auditor, auth_query, registry).

pub mod cancel;
pub(crate) mod connect;
pub(crate) mod control;
pub(crate) mod warm;
