//! pgtier: a TLS-terminating PostgreSQL wire-protocol proxy that enforces
//! per-tenant tiers (connection caps, idle timeouts, …) in front of one
//! shared, multi-tenant PostgreSQL cluster.
#![forbid(unsafe_code)]

pub mod sandbox;
