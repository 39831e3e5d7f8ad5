//! Throwaway PostgreSQL clusters and local certificates: what `pgtier demo`
//! and `pgtier gen-cert` stand on, and what the integration tests and the
//! benchmark set up (through `pgtier-testkit`, which re-exports this crate).
//!
//! Why a crate of its own rather than part of the product or of the
//! testkit: the product needs a throwaway cluster (for `pgtier demo`) and
//! certificate generation (for `gen-cert`), and the testkit needs both too.
//! If they lived in the product, the library would export 1.5k lines of
//! tooling to the tests; if they lived in the testkit, the product would
//! depend on its own test support. Here both depend on this crate and
//! neither on the other's internals: product → sandbox ← testkit → product,
//! no cycle. It needs nothing from pgtier.
//!
//! Everything here is synchronous (`std::process`), so it can be used from a
//! `static OnceLock` in a test binary, from `pgtier demo` before or inside a
//! runtime, and from benchmark set-up code alike.
//!
//! * [`Cluster`]: `initdb` + `postgres` in a temporary directory on a free
//!   loopback port, run as the `postgres` OS user when we are root (the
//!   server refuses to run as root). It stops and removes itself on drop and,
//!   through a small watchdog process, also when its owner dies without
//!   dropping it (tests keep clusters in statics, which are never dropped).
//! * [`Installation`]: which PostgreSQL runs it: the machine's own (the
//!   default) or a major version, e.g. the pinned downloads of 17 and 18
//!   that the test matrix uses.
//! * [`Certs`]: a private CA and a server certificate for `localhost`,
//!   `127.0.0.1` and `::1`, as PEM files (also `pgtier gen-cert`'s output).
#![forbid(unsafe_code)]

pub mod certs;
pub mod cluster;
pub mod install;

pub use certs::Certs;
pub use cluster::{Cluster, ClusterOptions, PasswordEncryption, VERIFIER_QUERY};
pub use install::{installations, newest_program, Installation};

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// What went wrong while setting up or using a sandbox; each variant says
/// what to do about it where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A PostgreSQL program is not installed (or not where we looked).
    #[error(
        "{program} not found (looked in {searched}): install PostgreSQL server binaries \
         (Debian: apt-get install -y postgresql), or point PG_BIN at the directory holding initdb"
    )]
    MissingBinary { program: String, searched: String },
    /// A specific major version was asked for and is not installed.
    #[error(
        "PostgreSQL {major} not found (looked in {searched}): run scripts/ensure-deps.sh --pg {major} \
         (pinned download into .deps/), or point PG_BIN at a PostgreSQL {major} bin directory"
    )]
    MissingVersion { major: u32, searched: String },
    /// We run as root, but PostgreSQL refuses to run as root and there is no
    /// unprivileged `postgres` user to run it as.
    #[error(
        "running as root, but there is no `postgres` OS user to run the server as \
         (Debian: apt-get install -y postgresql creates it; or run as an ordinary user)"
    )]
    NoPostgresUser,
    /// A filesystem or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A helper program (initdb, psql, …) ran but failed.
    #[error("{what} failed ({status}): {stderr}")]
    Command {
        what: String,
        status: ExitStatus,
        stderr: String,
    },
    /// The server did not start; `log` is the end of its log file.
    #[error("postgres did not start: {reason}\n--- {} (last lines) ---\n{log}", log_path.display())]
    Start {
        reason: String,
        log_path: PathBuf,
        log: String,
    },
    /// The server did not accept connections within the deadline.
    #[error("postgres did not accept connections within {waited:?}\n--- {} (last lines) ---\n{log}", log_path.display())]
    StartTimeout {
        waited: Duration,
        log_path: PathBuf,
        log: String,
    },
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Certificate(#[from] rcgen::Error),
}

impl SandboxError {
    /// Wraps an I/O error with what was being done (also for the
    /// testkit's Redis, which reports through this error type).
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
        let what = what.into();
        move |source| SandboxError::Io { what, source }
    }
}
