//! pgtier: a TLS-terminating PostgreSQL wire-protocol proxy that enforces
//! per-tenant tiers (connection caps, idle timeouts, …) in front of one
//! shared, multi-tenant PostgreSQL cluster.
//!
//! A session's way through, one module per phase:
//! [`server`] accepts → [`startup`] (TLS, SSLRequest, cancel) →
//! [`session`] resolves the tenant → [`cluster`] connects → [`auth`] relays
//! the login and takes a [`tenants::Slot`] → [`pump`] passes bytes both ways
//! → the slot guard gives the slot back on drop.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod cancel;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
mod demo;
pub mod fleet;
pub mod hook;
pub mod idle;
pub mod inactive;
pub mod log_budget;
pub mod logins;
pub mod metrics;
pub mod notify;
pub mod ping;
pub mod pool;
pub mod protocol;
pub mod pump;
pub mod quota;
pub mod refusal;
pub mod registry;
pub mod scrape;
pub mod server;
pub mod session;
pub mod sessions;
pub mod shared;
pub mod shutdown;
pub mod signals;
pub mod size;
pub mod startup;
pub mod state;
pub mod statement_time;
pub mod stream;
pub mod suspend;
pub mod suspensions;
pub mod tenants;
pub mod tls;
