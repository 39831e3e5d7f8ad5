//! Throwaway servers for tests: everything of `pgtier-sandbox` (clusters,
//! installations, certificates) under one path, plus [`RedisServer`], which
//! only the tests need and so stays out of the crate the product uses.

pub use pgtier_sandbox::*;

pub mod redis;

pub use redis::RedisServer;
