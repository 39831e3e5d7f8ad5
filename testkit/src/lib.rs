//! Test support for pgtier: what the integration tests, the benchmark and
//! the fuzzers share, so that none of it ships in the product.
//!
//! * [`sandbox`]: throwaway PostgreSQL clusters and certificates (the
//!   `pgtier-sandbox` crate, which `pgtier demo` uses too) and a throwaway
//!   Redis, the fleet's store in tests.
//! * [`wire`]: raw protocol frames built and read by hand: a
//!   StartupMessage, the client messages, one backend message.
//!
//! The product never depends on this crate (only its dev-dependencies and
//! the benchmark do), so this crate is free to depend on the product later.
#![forbid(unsafe_code)]

pub mod sandbox;
pub mod wire;
