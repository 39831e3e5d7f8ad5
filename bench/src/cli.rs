//! The command line: `pgtier-bench [options]` runs the benchmark; the hidden
//! `fake-backend` subcommand is the idle-session measurement's backend.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Benchmark pgtier against a direct TLS connection and PgBouncer.
#[derive(Debug, Parser)]
#[command(name = "pgtier-bench", about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Cmd>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// A minimal PostgreSQL backend (AuthenticationOk, BackendKeyData,
    /// ReadyForQuery) for the idle-session measurement. Internal.
    #[command(hide = true)]
    FakeBackend {
        #[arg(long)]
        port: u16,
    },
}

pub(crate) const ALL_TARGETS: &str = "direct,pgbouncer,pgtier,pgtier-proxy,pgtier-rules";
pub(crate) const ALL_WORKLOADS: &str = "a,b,c,d,e,f";

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RunArgs {
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u32,
    /// Rounds of (every target) per workload; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: u32,
    /// Targets, any of direct,pgbouncer,pgtier,pgtier-proxy,pgtier-rules.
    #[arg(long, default_value = ALL_TARGETS, value_delimiter = ',')]
    pub(crate) targets: Vec<String>,
    /// Workloads to run, any of a,b,c,d,e,f (see the README's Performance
    /// section); empty for the idle-session measurement alone. (f) is
    /// compared with (a) of the same round, so it brings (a) along.
    #[arg(long, default_value = ALL_WORKLOADS, value_delimiter = ',')]
    pub(crate) workloads: Vec<String>,
    /// Size of the bulk COPY in workload (e), MiB.
    #[arg(long, default_value_t = 1024)]
    pub(crate) copy_mb: u64,
    /// Free-tier tenants in the fleet workload (c), 2 clients each.
    #[arg(long, default_value_t = 200)]
    pub(crate) free_tenants: usize,
    /// Standard tenants for workloads (a), (b), (d), (e), (f).
    #[arg(long, default_value_t = 10)]
    pub(crate) std_tenants: usize,
    /// Clients spread over the standard tenants in (a), (b), (d), (f).
    #[arg(long, default_value_t = 20)]
    pub(crate) clients: usize,
    /// Attacker tasks in (f), each one login attempt at a time.
    #[arg(long, default_value_t = 8)]
    pub(crate) attackers: usize,
    /// (f)'s attack rates, attempts per second of all attackers together:
    /// 0 = as fast as they are answered (what the target absorbs at most);
    /// a number = that many offered, so that targets are compared under
    /// the same load. One (f) run per rate and target in every round.
    #[arg(long, default_value = "0,50", value_delimiter = ',')]
    pub(crate) attack_rates: Vec<u32>,
    /// Where (f)'s attackers connect from: `many` (a new loopback address
    /// for every attempt, as a distributed attack, so that pgtier's delay
    /// after repeated failures from one address never engages) or `one`
    /// (127.0.0.1, as a single misbehaving client).
    #[arg(long, default_value = "many", value_parser = ["many", "one"])]
    pub(crate) attack_from: String,
    /// Idle TLS sessions held through pgtier for the memory measurement
    /// (0 = skip). Clamped to what the open-file limit allows.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) idle_sessions: usize,
    /// Markdown results file (relative paths are taken from the repository root).
    #[arg(long, default_value = "bench/results.md")]
    pub(crate) out: PathBuf,
    /// Use this pgtier binary instead of building one with `cargo build --release`.
    #[arg(long)]
    pub(crate) pgtier_bin: Option<PathBuf>,
    /// Do not run scripts/ensure-deps.sh --bench.
    #[arg(long)]
    pub(crate) no_deps: bool,
    /// Do not attach `perf stat` in (a) and (b), even where it works.
    #[arg(long)]
    pub(crate) no_perf: bool,
    /// Keep the work directory (configs, logs, pgbench output) for a look.
    #[arg(long)]
    pub(crate) keep: bool,
    /// How the proxies reach the cluster: `tcp` (127.0.0.1) or `unix` (the
    /// cluster's socket directory, for a proxy on the cluster's host).
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "unix"])]
    pub(crate) cluster_link: String,
}
