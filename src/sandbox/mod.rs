//! Throwaway PostgreSQL clusters and certificates, for `pgtier demo`, the
//! integration tests and the benchmarks: real parts, started and removed on
//! demand, never a mock.

pub mod certs;
pub mod cluster;

pub use certs::Certs;
pub use cluster::{Cluster, ClusterOptions, PasswordEncryption};

use thiserror::Error;

/// Why a sandbox could not be set up; each names what to do about it.
#[derive(Debug, Error)]
pub enum SandboxError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found: install them \
         (Debian: apt-get install -y postgresql) or set PG_BIN to their directory"
    )]
    NoServerBinaries,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("PostgreSQL did not start: {0}")]
    Start(String),
    #[error("certificate generation failed: {0}")]
    Certs(String),
}

impl SandboxError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
        let what = what.into();
        move |source| SandboxError::Io { what, source }
    }
}
