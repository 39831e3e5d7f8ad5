//! `pgtier-bench`: the end-to-end benchmark (issues 4, 7 and 10). One
//! machine, one throwaway PostgreSQL cluster with TLS on, and up to five
//! ways to reach it, every one over `sslmode=require` with SCRAM-SHA-256:
//!
//! - **direct** to PostgreSQL (the physical limit: a proxy only adds cost);
//! - **PgBouncer** in session mode (what operators already run);
//! - **pgtier** with pass-through authentication (the cluster checks every
//!   password; no cluster connection outlives its client);
//! - **pgtier proxy**: `[auth] mode = "proxy"` (pgtier checks the password
//!   against the verifier auth_query returns, keeps warm cluster
//!   connections, the defaults);
//! - **pgtier rules**: pass-through, with the select-only tenants under the
//!   free tier's rules (row quota of 10,000 with its auditor, the 30 s
//!   statement time limit, the 256 MB storage limit, the four denied
//!   statement kinds), the connection cap lifted so that they can still run
//!   20 clients.
//!
//! The same workloads run against each, interleaved within every round
//! (direct, PgBouncer, pgtier, …) so that drift on a shared machine hits
//! all alike; medians are reported, and a ratio between two targets is the
//! median of the per-round ratios, each between runs minutes apart at most.
//!
//! Workload (f) runs (a) again while attacker tasks inside this process
//! hammer the same endpoint with logins it must refuse (module [`attack`]).
//!
//! Then, separately, memory per idle TLS session: thousands of client
//! sessions held open through a pgtier whose cluster is a tiny fake backend
//! (a real cluster cannot hold 10,000 backends on a 2-core machine).
//!
//! This is orchestration, not library code: it shells out to pgbench, psql,
//! pgbouncer, perf and the pgtier binary with `std::process`, and uses
//! `anyhow`.
#![forbid(unsafe_code)]

mod attack;
mod cli;
mod fake;
mod idle;
mod perf;
mod pgbouncer;
mod process;
mod procfs;
mod proxy;
mod report;
mod run;
mod sample;
mod targets;
mod tenants;
mod workload;

use std::path::Path;

use anyhow::Result;
use clap::Parser;

use cli::{Cli, Cmd};

/// The repository's root (this crate sits one level below it): where
/// `scripts/`, `target/` and relative `--out` paths are.
pub(crate) fn repo_root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::FakeBackend { port }) => fake::serve(port),
        None => run::run(cli.run),
    }
}
