//! pgtier: a TLS-terminating PostgreSQL wire-protocol proxy that enforces
//! per-tenant tiers (connection caps, idle timeouts, row quota, statement
//! policy, …) in front of one shared, multi-tenant PostgreSQL cluster.
//!
//! The folders follow a connection's path, one stage each:
//! [`runtime`] accepts (and holds what every connection shares) →
//! [`conn`] strings the phases together, from the handshake to the last
//! word → [`login`] relays or checks the password and admits the session
//! into its tenant's [`limits`] → [`backend`] reaches the cluster →
//! [`session`] pumps bytes both ways while the tier's [`rules`] watch the
//! statements → [`ops`] is what the operator sees. [`config`] is
//! `proxy.toml`; [`refusal`] every word the proxy says on its own account;
//! [`protocol`], [`stream`] and [`tls`] the wire underneath; [`cli`] the
//! commands.
#![forbid(unsafe_code)]

pub mod backend;
pub mod cli;
pub(crate) mod clock;
pub mod config;
pub(crate) mod conn;
pub mod limits;
pub mod login;
pub mod ops;
pub mod protocol;
pub(crate) mod refusal;
pub mod rules;
pub mod runtime;
pub mod session;
pub(crate) mod size;
pub mod stream;
pub mod tls;
