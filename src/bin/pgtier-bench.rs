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
//!   free tier's rules (row quota of 10,000 with its auditor, the four
//!   denied statement kinds), the connection cap lifted so that they can
//!   still run 20 clients.
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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use pgtier::sandbox::{Certs, Cluster, ClusterOptions};

/// Benchmark pgtier against a direct TLS connection and PgBouncer.
#[derive(Debug, Parser)]
#[command(name = "pgtier-bench", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A minimal PostgreSQL backend (AuthenticationOk, BackendKeyData,
    /// ReadyForQuery) for the idle-session measurement. Internal.
    #[command(hide = true)]
    FakeBackend {
        #[arg(long)]
        port: u16,
    },
}

const ALL_TARGETS: &str = "direct,pgbouncer,pgtier,pgtier-proxy,pgtier-rules";
const ALL_WORKLOADS: &str = "a,b,c,d,e,f";

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Rounds of (every target) per workload; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Targets, any of direct,pgbouncer,pgtier,pgtier-proxy,pgtier-rules.
    #[arg(long, default_value = ALL_TARGETS, value_delimiter = ',')]
    targets: Vec<String>,
    /// Workloads to run, any of a,b,c,d,e,f (see the README's Performance
    /// section); empty for the idle-session measurement alone. (f) is
    /// compared with (a) of the same round, so it brings (a) along.
    #[arg(long, default_value = ALL_WORKLOADS, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Size of the bulk COPY in workload (e), MiB.
    #[arg(long, default_value_t = 1024)]
    copy_mb: u64,
    /// Free-tier tenants in the fleet workload (c), 2 clients each.
    #[arg(long, default_value_t = 200)]
    free_tenants: usize,
    /// Standard tenants for workloads (a), (b), (d), (e), (f).
    #[arg(long, default_value_t = 10)]
    std_tenants: usize,
    /// Clients spread over the standard tenants in (a), (b), (d), (f).
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// Attacker tasks in (f), each one login attempt at a time.
    #[arg(long, default_value_t = 8)]
    attackers: usize,
    /// (f)'s attack rates, attempts per second of all attackers together:
    /// 0 = as fast as they are answered (what the target absorbs at most);
    /// a number = that many offered, so that targets are compared under
    /// the same load. One (f) run per rate and target in every round.
    #[arg(long, default_value = "0,50", value_delimiter = ',')]
    attack_rates: Vec<u32>,
    /// Where (f)'s attackers connect from: `many` (a new loopback address
    /// for every attempt, as a distributed attack, so that pgtier's delay
    /// after repeated failures from one address never engages) or `one`
    /// (127.0.0.1, as a single misbehaving client).
    #[arg(long, default_value = "many", value_parser = ["many", "one"])]
    attack_from: String,
    /// Idle TLS sessions held through pgtier for the memory measurement
    /// (0 = skip). Clamped to what the open-file limit allows.
    #[arg(long, default_value_t = 10_000)]
    idle_sessions: usize,
    /// Markdown results file (relative paths are taken from the crate root).
    #[arg(long, default_value = "bench/results.md")]
    out: PathBuf,
    /// Use this pgtier binary instead of building one with `cargo build --release`.
    #[arg(long)]
    pgtier_bin: Option<PathBuf>,
    /// Do not run scripts/ensure-deps.sh --bench.
    #[arg(long)]
    no_deps: bool,
    /// Do not attach `perf stat` in (a) and (b), even where it works.
    #[arg(long)]
    no_perf: bool,
    /// Keep the work directory (configs, logs, pgbench output) for a look.
    #[arg(long)]
    keep: bool,
    /// How the proxies reach the cluster: `tcp` (127.0.0.1) or `unix` (the
    /// cluster's socket directory, for a proxy on the cluster's host).
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "unix"])]
    cluster_link: String,
}

const CRATE_ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs a set-up command to completion; a failure carries its stderr.
fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::FakeBackend { port }) => fake::serve(port),
        None => run(cli.run),
    }
}

// ---------------------------------------------------------------------------
// The targets and the workloads.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Direct,
    PgBouncer,
    Pgtier,
    PgtierProxy,
    PgtierRules,
}

impl Target {
    const ALL: [Target; 5] = [
        Target::Direct,
        Target::PgBouncer,
        Target::Pgtier,
        Target::PgtierProxy,
        Target::PgtierRules,
    ];

    fn parse(key: &str) -> Result<Target> {
        Target::ALL
            .into_iter()
            .find(|t| t.key() == key.trim())
            .ok_or_else(|| anyhow!("unknown target {key:?}: use {ALL_TARGETS}"))
    }

    /// The name `--targets` takes.
    fn key(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::PgBouncer => "pgbouncer",
            Target::Pgtier => "pgtier",
            Target::PgtierProxy => "pgtier-proxy",
            Target::PgtierRules => "pgtier-rules",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::PgBouncer => "PgBouncer",
            Target::Pgtier => "pgtier",
            Target::PgtierProxy => "pgtier proxy",
            Target::PgtierRules => "pgtier rules",
        }
    }

    /// Whether this target runs `workload`. Direct has no (f): refusing
    /// logins is the cluster's own business there, and pass-through pgtier
    /// shows what it costs. The rules target runs what issue 7 measures
    /// ((a), (b)) and what the rules could slow ((c), (e)); its logins
    /// ((d)) and refusals ((f)) are pass-through pgtier's.
    fn runs(self, workload: Workload) -> bool {
        !matches!(
            (self, workload),
            (Target::Direct, Workload::Attack(_))
                | (Target::PgtierRules, Workload::Churn | Workload::Attack(_))
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    Simple,
    Prepared,
    Fleet,
    Churn,
    Copy,
    /// (a) under attack; the attackers' attempts per second, all together
    /// (0 = as fast as they are answered).
    Attack(u32),
}

impl Workload {
    fn parse(key: &str) -> Result<Workload> {
        Ok(match key.trim() {
            "a" => Workload::Simple,
            "b" => Workload::Prepared,
            "c" => Workload::Fleet,
            "d" => Workload::Churn,
            "e" => Workload::Copy,
            // The rates come from --attack-rates.
            "f" => Workload::Attack(0),
            other => bail!("unknown workload {other:?}: use {ALL_WORKLOADS}"),
        })
    }

    fn key(self) -> &'static str {
        match self {
            Workload::Simple => "a",
            Workload::Prepared => "b",
            Workload::Fleet => "c",
            Workload::Churn => "d",
            Workload::Copy => "e",
            Workload::Attack(_) => "f",
        }
    }

    /// The key, and for (f) at a capped rate the rate: `f`, `f-50`.
    fn label(self) -> String {
        match self {
            Workload::Attack(rate) if rate > 0 => format!("f-{rate}"),
            other => other.key().to_owned(),
        }
    }

    /// Position within a round: (f) right after (a), so that the attacked
    /// run and the unattacked one it is compared with are close in time.
    fn run_rank(self) -> u8 {
        match self {
            Workload::Simple => 0,
            Workload::Attack(_) => 1,
            Workload::Prepared => 2,
            Workload::Fleet => 3,
            Workload::Churn => 4,
            Workload::Copy => 5,
        }
    }

    fn title(self, args: &RunArgs) -> String {
        match self {
            Workload::Simple => format!(
                "(a) select-only, simple protocol, {} clients / {} tenants",
                args.clients, args.std_tenants
            ),
            Workload::Prepared => format!(
                "(b) select-only, `-M prepared`, {} clients / {} tenants",
                args.clients, args.std_tenants
            ),
            Workload::Fleet => format!("(c) free fleet, {} tenants × 2 clients", args.free_tenants),
            Workload::Churn => format!(
                "(d) connection churn `-C`, {} clients / {} tenants",
                args.clients, args.std_tenants
            ),
            Workload::Copy => format!("(e) `COPY … TO STDOUT`, {} MiB", args.copy_mb),
            Workload::Attack(0) => format!(
                "(f) (a) while {} attackers make refused logins as fast as answered",
                args.attackers
            ),
            Workload::Attack(rate) => format!(
                "(f) (a) while {} attackers make refused logins, {rate}/s offered",
                args.attackers
            ),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Workload::Copy => "MiB/s",
            _ => "TPS",
        }
    }

    /// Where `perf stat` is attached: the select-only workloads whose
    /// per-transaction costs the README's analysis is about.
    fn wants_perf(self) -> bool {
        matches!(self, Workload::Simple | Workload::Prepared)
    }
}

/// One run of one workload against one target.
#[derive(Debug, Clone, Default)]
struct Sample {
    round: u32,
    /// TPS (summed over the parallel pgbench processes) or MiB/s.
    value: f64,
    /// Transaction-weighted mean latency, ms (pgbench workloads).
    latency_ms: Option<f64>,
    /// Seconds measured.
    window_secs: f64,
    /// Transactions in the measured window: what the proxy's CPU time is
    /// divided by.
    total_queries: u64,
    /// CPU seconds the proxy of this target used during the window.
    proxy_cpu: Option<f64>,
    /// `perf stat` counts per transaction ((a), (b)).
    perf: Option<perf::PerTransaction>,
    /// What the attackers of (f) got during the window.
    attack: Option<attack::Figures>,
    /// (f) as fast as answered: what a refusal costs, attackers alone.
    refusal_cost: Option<RefusalCost>,
}

/// CPU per refused login with no other load, µs: a clean figure where the
/// CPU of the proxy under (f) mixes refusals and pgbench's transactions.
#[derive(Debug, Clone, Copy, Default)]
struct RefusalCost {
    refused_per_s: f64,
    proxy_us: f64,
    /// The cluster's backends that ended in the window (a refused login's
    /// backend ends at once), from the postmaster's reaped-children CPU.
    cluster_us: f64,
    attacker_us: f64,
}

// ---------------------------------------------------------------------------
// Orchestration.

/// What a run needs to reach a target.
#[derive(Debug, Clone, Copy)]
struct Endpoint {
    target: Target,
    port: u16,
    /// The proxy process whose CPU is measured (none for direct).
    pid: Option<u32>,
}

/// What every run of a workload shares.
struct Bench<'a> {
    args: &'a RunArgs,
    tenants: &'a Tenants,
    cluster: &'a Cluster,
    work: &'a Path,
    certs: &'a Certs,
    /// `perf stat`, where it works and is wanted.
    perf: Option<&'a perf::Support>,
}

fn run(args: RunArgs) -> Result<()> {
    let started = Instant::now();
    let mut loads = vec![("start".to_owned(), loadavg())];
    let mut workloads = args
        .workloads
        .iter()
        .filter(|w| !w.trim().is_empty())
        .map(|w| Workload::parse(w))
        .collect::<Result<Vec<_>>>()?;
    if workloads.contains(&Workload::Attack(0)) {
        workloads.retain(|w| *w != Workload::Attack(0));
        workloads.extend(args.attack_rates.iter().map(|&r| Workload::Attack(r)));
        if !workloads.contains(&Workload::Simple) {
            eprintln!("==> (f) is compared with (a) of the same round: running (a) too");
            workloads.push(Workload::Simple);
        }
    }
    workloads.sort();
    workloads.dedup();
    let mut targets = args
        .targets
        .iter()
        .filter(|t| !t.trim().is_empty())
        .map(|t| Target::parse(t))
        .collect::<Result<Vec<_>>>()?;
    targets.sort();
    targets.dedup();
    if targets.is_empty() && !workloads.is_empty() {
        bail!("--targets names no target (use {ALL_TARGETS})");
    }
    let mut run_order = workloads.clone();
    run_order.sort_by_key(|w| w.run_rank());
    raise_fd_limit();

    if !args.no_deps {
        ensure_deps()?;
    }
    let pgtier_bin = match &args.pgtier_bin {
        Some(bin) => bin.clone(),
        None => build_pgtier()?,
    };
    let perf_support = if args.no_perf {
        None
    } else {
        let support = perf::probe();
        match &support {
            Some(s) => eprintln!("==> perf stat works; {}", s.describe()),
            None => eprintln!("==> perf stat does not work here: no per-transaction counts"),
        }
        support
    };

    let work = tempfile::Builder::new()
        .prefix("pgtier-bench-")
        .tempdir()
        .context("creating a work directory")?;
    let certs = Certs::generate(work.path()).context("generating certificates")?;

    let mut results = Results::default();
    let mut env = None;
    if !workloads.is_empty() {
        let setup = Instant::now();
        // PgBouncer keeps its server connections for 30 s after its
        // clients leave and proxy-mode pgtier up to 100 warm ones, so the
        // cluster must hold the fleet three times over, plus the auditor's
        // and auth_query's own connections.
        let fleet = args.free_tenants * 2;
        let cluster = Cluster::start(ClusterOptions {
            max_connections: (3 * fleet + 4 * args.clients + 300) as u32,
            ssl: true,
            ..ClusterOptions::default()
        })
        .context("starting the throwaway cluster")?;
        let pg_version = cluster
            .psql("postgres", "SHOW server_version")?
            .trim()
            .to_owned();
        eprintln!(
            "==> PostgreSQL {pg_version} on port {} (ssl=on)",
            cluster.port()
        );
        let tenants = create_tenants(&cluster, &args, &workloads)?;
        let roles = create_service_roles(&cluster, &targets)?;
        let cluster_host = match args.cluster_link.as_str() {
            "unix" => cluster.socket_dir().display().to_string(),
            _ => "127.0.0.1".to_owned(),
        };
        let bouncer = if targets.contains(&Target::PgBouncer) {
            Some(PgBouncer::start(
                work.path(),
                &certs,
                &cluster_host,
                &cluster,
                &tenants,
            )?)
        } else {
            None
        };
        let mut proxies = BTreeMap::new();
        for &target in &targets {
            let flavor = match target {
                Target::Pgtier => Flavor::Passthrough,
                Target::PgtierProxy => Flavor::ProxyAuth,
                Target::PgtierRules => Flavor::Rules,
                Target::Direct | Target::PgBouncer => continue,
            };
            let proxy = Proxy::start(
                &pgtier_bin,
                work.path(),
                &certs,
                &cluster_host,
                cluster.port(),
                &tenants,
                flavor,
                &roles,
            )?;
            proxies.insert(target, proxy);
        }
        let bench = Bench {
            args: &args,
            tenants: &tenants,
            cluster: &cluster,
            work: work.path(),
            certs: &certs,
            perf: perf_support.as_ref(),
        };
        eprintln!(
            "==> setup took {:.0}s; running {} rounds × {} workloads × {} targets, {}s each",
            setup.elapsed().as_secs_f64(),
            args.rounds,
            workloads.len(),
            targets.len(),
            args.seconds
        );

        for round in 1..=args.rounds {
            let load = loadavg();
            eprintln!("==> round {round} of {} (load average {load})", args.rounds);
            loads.push((format!("round {round}"), load));
            for &workload in &run_order {
                for &target in targets.iter().filter(|t| t.runs(workload)) {
                    let endpoint = match target {
                        Target::Direct => Endpoint {
                            target,
                            port: cluster.port(),
                            pid: None,
                        },
                        Target::PgBouncer => bouncer
                            .as_ref()
                            .map(|b| Endpoint {
                                target,
                                port: b.port,
                                pid: Some(b.child.id()),
                            })
                            .ok_or_else(|| anyhow!("PgBouncer is not running"))?,
                        _ => proxies
                            .get(&target)
                            .map(|p: &Proxy| Endpoint {
                                target,
                                port: p.port,
                                pid: Some(p.child.id()),
                            })
                            .ok_or_else(|| anyhow!("{} is not running", target.name()))?,
                    };
                    let run_started = Instant::now();
                    let sample = match run_workload(&bench, workload, endpoint, round) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!(
                                "    round {round} ({}) {}: FAILED: {e:#}",
                                workload.label(),
                                target.name()
                            );
                            continue;
                        }
                    };
                    eprintln!(
                        "    round {round} ({}) {:<13} {:>10.1} {}{}{}  (window {:.1}s of {:.1}s)",
                        workload.label(),
                        target.name(),
                        sample.value,
                        workload.unit(),
                        sample
                            .latency_ms
                            .map(|l| format!("  lat {l:.3} ms"))
                            .unwrap_or_default(),
                        sample
                            .attack
                            .as_ref()
                            .map(|a| format!(
                                "  refused {:.0}/s {}",
                                a.refused_per_s(),
                                a.outcomes()
                            ))
                            .unwrap_or_default(),
                        sample.window_secs,
                        run_started.elapsed().as_secs_f64(),
                    );
                    results.push(workload, target, sample);
                }
            }
        }
        let mut hwm = BTreeMap::new();
        if let Some(b) = &bouncer {
            hwm.insert(Target::PgBouncer, proc_status_kib(b.child.id(), "VmHWM")?);
        }
        for (target, proxy) in &proxies {
            hwm.insert(*target, proc_status_kib(proxy.child.id(), "VmHWM")?);
        }
        env = Some(Env { pg_version, hwm });
        drop(proxies);
        drop(bouncer);
        drop(cluster);
    }
    loads.push(("after the workloads".to_owned(), loadavg()));

    let idle = if args.idle_sessions > 0 {
        Some(idle_sessions(&args, &pgtier_bin, work.path(), &certs)?)
    } else {
        None
    };
    loads.push(("end".to_owned(), loadavg()));

    if args.keep {
        eprintln!("==> work directory kept: {}", work.keep().display());
    }
    let report = Report {
        args: &args,
        workloads: &workloads,
        targets: &targets,
        results: &results,
        env: env.as_ref(),
        idle: idle.as_ref(),
        perf: perf_support.as_ref(),
        loads: &loads,
        minutes: started.elapsed().as_secs_f64() / 60.0,
    }
    .render()?;
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        Path::new(CRATE_ROOT).join(&args.out)
    };
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    println!("{report}");
    eprintln!(
        "==> wrote {} in {:.0}s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

struct Env {
    pg_version: String,
    /// Peak RSS (VmHWM) of each proxy over the whole run, KiB.
    hwm: BTreeMap<Target, u64>,
}

/// The machine's load averages (1, 5, 15 minutes): the harness shares
/// the cores with whatever else runs, and the report says how busy they
/// were.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// Soft open-file limit up to the hard one, for this process and (inherited)
/// the pgtier it starts: the idle-session test needs two descriptors per
/// session in pgtier.
fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }
}
fn ensure_deps() -> Result<()> {
    let script = Path::new(CRATE_ROOT).join("scripts/ensure-deps.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg("--bench")
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} --bench failed ({status})", script.display());
    }
    if pgbouncer_path().is_none() {
        eprintln!("==> installing pgbouncer");
        let status = Command::new("apt-get")
            .args(["install", "-y", "-qq", "pgbouncer"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if !status.success() || pgbouncer_path().is_none() {
            bail!("pgbouncer is not installed and could not be installed");
        }
    }
    Ok(())
}

fn pgbouncer_path() -> Option<PathBuf> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| which("pgbouncer"))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    })
}

fn build_pgtier() -> Result<PathBuf> {
    eprintln!("==> cargo build --release --bin pgtier");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--bin",
            "pgtier",
            "--message-format=short",
        ])
        .current_dir(CRATE_ROOT)
        .stdout(Stdio::null())
        .status()
        .context("running cargo build")?;
    if !out.success() {
        bail!("cargo build --release --bin pgtier failed");
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(CRATE_ROOT).join("target"));
    let bin = target_dir.join("release/pgtier");
    if !bin.exists() {
        bail!("{} not found after the build", bin.display());
    }
    Ok(bin)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(port: u16, child: &mut Child, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited ({status}): {}", tail(log, 10));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} not listening on {port}: {}", tail(log, 10))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // Already reaped: its pid may belong to someone else by now.
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Guard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

// ---------------------------------------------------------------------------
// Tenants.

#[derive(Debug, Clone)]
struct Tenant {
    name: String,
    password: String,
}

struct Tenants {
    standard: Vec<Tenant>,
    free: Vec<Tenant>,
    /// (f)'s free tenant at its cap: two idle sessions hold its slots while
    /// attackers log in with its right password and are refused.
    capped: Option<Tenant>,
}

impl Tenants {
    fn all(&self) -> impl Iterator<Item = &Tenant> {
        self.standard.iter().chain(&self.free).chain(&self.capped)
    }
}

/// Roles with SCRAM passwords and databases copied from one template that
/// `pgbench -i -s 1` filled once: far faster than initialising each.
fn create_tenants(cluster: &Cluster, args: &RunArgs, workloads: &[Workload]) -> Result<Tenants> {
    let t = Instant::now();
    let make = |prefix: &str, n: usize| -> Vec<Tenant> {
        (1..=n)
            .map(|i| Tenant {
                name: format!("{prefix}{i:03}"),
                password: format!("pw-{prefix}{i:03}-{}", rand::random::<u32>()),
            })
            .collect()
    };
    let tenants = Tenants {
        standard: make("std", args.std_tenants),
        free: if workloads.contains(&Workload::Fleet) {
            make("free", args.free_tenants)
        } else {
            Vec::new()
        },
        capped: workloads
            .iter()
            .any(|w| matches!(w, Workload::Attack(_)))
            .then(|| make("capped", 1).remove(0)),
    };

    cluster.psql("postgres", "CREATE DATABASE bench_template")?;
    let pgbench = pg_tool(cluster, "pgbench");
    run_checked(
        Command::new(&pgbench)
            .args(["-i", "-s", "1", "-q", "-h"])
            .arg(cluster.socket_dir())
            .args(["-p", &cluster.port().to_string(), "-U", "postgres"])
            .arg("bench_template"),
        "pgbench -i",
    )?;
    cluster.psql(
        "bench_template",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO PUBLIC; VACUUM ANALYZE",
    )?;

    // One psql per batch: CREATE DATABASE cannot share a transaction, so
    // the statements go in as a script, one implicit transaction each.
    let mut script = String::from("SET password_encryption = 'scram-sha-256';\n");
    for t in tenants.all() {
        writeln!(
            script,
            "CREATE ROLE {n} LOGIN PASSWORD '{p}';\n\
             CREATE DATABASE {n} OWNER {n} TEMPLATE bench_template STRATEGY FILE_COPY;",
            n = t.name,
            p = t.password
        )?;
    }
    let file = cluster.socket_dir().join("tenants.sql");
    fs::write(&file, script)?;
    run_checked(
        Command::new(pg_tool(cluster, "psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(cluster.socket_dir())
            .args(["-p", &cluster.port().to_string(), "-U", "postgres", "-d"])
            .arg("postgres")
            .arg("-f")
            .arg(&file),
        "creating tenants with psql",
    )?;
    eprintln!(
        "==> {} standard + {} free tenants{} created in {:.1}s",
        tenants.standard.len(),
        tenants.free.len(),
        if tenants.capped.is_some() {
            " + 1 capped"
        } else {
            ""
        },
        t.elapsed().as_secs_f64()
    );
    Ok(tenants)
}

/// A client tool from the cluster's own bin directory when present (so the
/// versions match), else from PATH.
fn pg_tool(cluster: &Cluster, name: &str) -> PathBuf {
    let own = cluster.bin_dir().join(name);
    if own.exists() {
        own
    } else {
        PathBuf::from(name)
    }
}

/// The roles pgtier logs in as on its own: auth_query's (proxy mode) and
/// the row quota's auditor (rules), with their passwords.
#[derive(Debug, Default)]
struct ServiceRoles {
    auth: Option<(String, String)>,
    quota: Option<(String, String)>,
}

/// auth_query's role reads verifiers only through the SECURITY DEFINER
/// function the README shows (no superuser, no direct `pg_authid`); the
/// auditor's role reads every table through `pg_read_all_data` and
/// connects to tenant databases through PUBLIC's CONNECT.
fn create_service_roles(cluster: &Cluster, targets: &[Target]) -> Result<ServiceRoles> {
    let mut roles = ServiceRoles::default();
    if targets.contains(&Target::PgtierProxy) {
        let (user, password) = ("pgtier_auth", format!("pw-auth-{}", rand::random::<u32>()));
        cluster.install_auth_role(user, &password)?;
        roles.auth = Some((user.to_owned(), password));
    }
    if targets.contains(&Target::PgtierRules) {
        let (user, password) = (
            "pgtier_quota",
            format!("pw-quota-{}", rand::random::<u32>()),
        );
        cluster.psql(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256'; \
                 CREATE ROLE {user} LOGIN PASSWORD '{password}' BYPASSRLS IN ROLE pg_read_all_data;"
            ),
        )?;
        roles.quota = Some((user.to_owned(), password));
    }
    Ok(roles)
}

// ---------------------------------------------------------------------------
// PgBouncer and pgtier.

struct PgBouncer {
    child: Guard,
    port: u16,
}

impl PgBouncer {
    /// Session mode, TLS toward clients with pgtier's certificate, SCRAM
    /// with the cluster's own verifiers in the auth_file (so PgBouncer logs
    /// into the cluster with the client's SCRAM keys, as pgtier relays it),
    /// plaintext toward the cluster as pgtier, and no limit that throttles.
    fn start(
        work: &Path,
        certs: &Certs,
        cluster_host: &str,
        cluster: &Cluster,
        tenants: &Tenants,
    ) -> Result<PgBouncer> {
        let dir = work.join("pgbouncer");
        fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let names: Vec<String> = tenants.all().map(|t| format!("'{}'", t.name)).collect();
        let userlist = cluster.psql(
            "postgres",
            &format!(
                "SELECT '\"' || rolname || '\" \"' || rolpassword || '\"' FROM pg_authid \
                 WHERE rolname IN ({})",
                names.join(",")
            ),
        )?;
        fs::write(dir.join("userlist.txt"), userlist)?;
        fs::copy(&certs.cert_path, dir.join("server.crt"))?;
        fs::copy(&certs.key_path, dir.join("server.key"))?;
        let ini = format!(
            "[databases]\n\
             * = host={cluster_host} port={cluster_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             listen_backlog = 4096\n\
             unix_socket_dir =\n\
             auth_type = scram-sha-256\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = session\n\
             max_client_conn = 5000\n\
             default_pool_size = 50\n\
             max_db_connections = 0\n\
             max_user_connections = 0\n\
             server_idle_timeout = 30\n\
             client_tls_sslmode = require\n\
             client_tls_cert_file = {dir}/server.crt\n\
             client_tls_key_file = {dir}/server.key\n\
             server_tls_sslmode = disable\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {dir}/pgbouncer.log\n",
            cluster_port = cluster.port(),
            cluster_host = cluster_host,
            dir = dir.display(),
        );
        fs::write(dir.join("pgbouncer.ini"), ini)?;
        let bin = pgbouncer_path().ok_or_else(|| anyhow!("pgbouncer not found"))?;
        // PgBouncer refuses to run as root: run it as `postgres`, as the
        // sandbox runs the cluster.
        let as_root = fs::metadata("/proc/self").map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        })?;
        let mut cmd = if as_root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?;
            if !status.success() {
                bail!("chown of the pgbouncer directory failed");
            }
            let _ = Command::new("chmod").args(["755"]).arg(work).status();
            let mut cmd = Command::new("setpriv");
            cmd.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(bin);
            cmd
        } else {
            Command::new(bin)
        };
        let log = dir.join("pgbouncer.log");
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("stderr.log"))?)
            .spawn()
            .context("starting pgbouncer")?;
        let mut child = Guard(child);
        wait_listening(port, &mut child.0, "pgbouncer", &log)?;
        eprintln!("==> PgBouncer on port {port}");
        Ok(PgBouncer { child, port })
    }
}

/// Which pgtier: what its configuration turns on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// Pass-through authentication, no rules: standard tenants uncapped,
    /// the free tier at 2 connections with no row quota and no denied
    /// statements, no idle timeouts (they would only add noise).
    Passthrough,
    /// As `Passthrough`, with `[auth] mode = "proxy"` and the warm cluster
    /// connections at their defaults.
    ProxyAuth,
    /// As `Passthrough`, with every tenant in the free tier at its defaults
    /// (row quota 10,000 with the auditor, the four denied statement kinds,
    /// 5 minutes idle), the standard tenants' cap lifted (20 clients).
    Rules,
    /// The idle-session set-up: every tenant standard, against the fake
    /// backend.
    Fake,
}

impl Flavor {
    fn name(self) -> &'static str {
        match self {
            Flavor::Passthrough => "pgtier",
            Flavor::ProxyAuth => "pgtier-proxy",
            Flavor::Rules => "pgtier-rules",
            Flavor::Fake => "pgtier-idle",
        }
    }
}

struct Proxy {
    child: Guard,
    port: u16,
}

impl Proxy {
    #[allow(clippy::too_many_arguments)] // set-up only; a struct would only rename them
    fn start(
        bin: &Path,
        work: &Path,
        certs: &Certs,
        cluster_host: &str,
        cluster_port: u16,
        tenants: &Tenants,
        flavor: Flavor,
        roles: &ServiceRoles,
    ) -> Result<Proxy> {
        let port = free_port()?;
        let name = flavor.name();
        let mut toml = format!(
            "listen = \"127.0.0.1:{port}\"\n\
             default_tier = \"{tier}\"\n\
             login_timeout = \"60s\"\n\
             shutdown_grace = \"1s\"\n\
             {logins}\
             [tls]\n\
             cert = \"{cert}\"\n\
             key = \"{key}\"\n\
             mode = \"require\"\n\
             [cluster]\n\
             host = \"{cluster_host}\"\n\
             port = {cluster_port}\n\
             tls = \"disable\"\n",
            tier = if flavor == Flavor::Fake {
                "standard"
            } else {
                "free"
            },
            cert = certs.cert_path.display(),
            key = certs.key_path.display(),
            // The idle-session measurement logs in 64 at a time over 10
            // tenants: more than the default 8 logins of one tenant in
            // progress, which is not what it measures.
            logins = if flavor == Flavor::Fake {
                "max_pending_logins_per_tenant = 64\n"
            } else {
                ""
            },
        );
        match flavor {
            Flavor::Passthrough | Flavor::ProxyAuth | Flavor::Fake => toml.push_str(
                "[tiers.free]\n\
                 max_connections = 2\n\
                 idle_timeout = \"0s\"\n\
                 row_limit = 0\n\
                 deny = []\n\
                 [tiers.standard]\n\
                 max_connections = 0\n\
                 idle_timeout = \"0s\"\n",
            ),
            Flavor::Rules => {
                let (user, password) = roles
                    .quota
                    .as_ref()
                    .ok_or_else(|| anyhow!("the rules target needs the quota role"))?;
                write!(
                    toml,
                    "[quota]\n\
                     user = \"{user}\"\n\
                     password = \"{password}\"\n\
                     [tiers.free]\n\
                     max_connections = 2\n\
                     idle_timeout = \"5m\"\n\
                     row_limit = 10000\n\
                     deny = [\"extension\", \"function\", \"trigger\", \"role\"]\n"
                )?;
            }
        }
        if flavor == Flavor::ProxyAuth {
            let (user, password) = roles
                .auth
                .as_ref()
                .ok_or_else(|| anyhow!("proxy mode needs the auth role"))?;
            write!(
                toml,
                "[auth]\n\
                 mode = \"proxy\"\n\
                 user = \"{user}\"\n\
                 password = \"{password}\"\n\
                 auth_query = \"{query}\"\n",
                query = pgtier::sandbox::VERIFIER_QUERY
            )?;
        }
        for t in &tenants.standard {
            match flavor {
                Flavor::Rules => writeln!(
                    toml,
                    "[tenants.{}]\ntier = \"free\"\nmax_connections = 0",
                    t.name
                )?,
                _ => writeln!(toml, "[tenants.{}]\ntier = \"standard\"", t.name)?,
            }
        }
        let config = work.join(format!("{name}.toml"));
        fs::write(&config, toml)?;
        let log = work.join(format!("{name}.log"));
        // PGTIER_BENCH_LOG sets pgtier's RUST_LOG; it must not reach pgtier
        // itself, which reads every PGTIER_ variable as a configuration key
        // and refuses unknown ones.
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("PGTIER_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("PGTIER_BENCH_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut child = Guard(child);
        wait_listening(port, &mut child.0, name, &log)?;
        eprintln!("==> {name} on port {port} (log: {})", log.display());
        Ok(Proxy { child, port })
    }
}

// ---------------------------------------------------------------------------
// Running a workload.

fn run_workload(
    bench: &Bench,
    workload: Workload,
    endpoint: Endpoint,
    round: u32,
) -> Result<Sample> {
    let Bench {
        args,
        tenants,
        cluster,
        work,
        ..
    } = *bench;
    let port = endpoint.port;
    let per = (args.clients / args.std_tenants.max(1)).max(1);
    let jobs: Vec<(&Tenant, usize, &[&str])> = match workload {
        Workload::Simple | Workload::Attack(_) => {
            tenants.standard.iter().map(|t| (t, per, &[][..])).collect()
        }
        Workload::Prepared => tenants
            .standard
            .iter()
            .map(|t| (t, per, &["-M", "prepared"][..]))
            .collect(),
        Workload::Churn => tenants
            .standard
            .iter()
            .map(|t| (t, per, &["-C"][..]))
            .collect(),
        Workload::Fleet => tenants.free.iter().map(|t| (t, 2, &[][..])).collect(),
        Workload::Copy => {
            let tenant = tenants
                .standard
                .first()
                .ok_or_else(|| anyhow!("no standard tenant"))?;
            let mut sample = run_copy(args, tenant, cluster, port, endpoint.pid)?;
            sample.round = round;
            return Ok(sample);
        }
    };
    // Built before pgbench starts, so that a mistake costs no run.
    let attack_plan = match workload {
        Workload::Attack(rate) => Some(attack_plan(bench, endpoint, rate)?),
        _ => None,
    };
    let refusal_cost = match workload {
        Workload::Attack(0) => Some(refusal_cost(bench, endpoint)?),
        _ => None,
    };
    let logs = work.join("logs");
    fs::create_dir_all(&logs)?;
    let dir = tempfile::Builder::new()
        .prefix(&format!(
            "{}-{}-r{round}-",
            workload.label(),
            endpoint.target.key()
        ))
        .tempdir_in(&logs)?
        .keep();
    // A start barrier: each process's first transaction (its clients are
    // all connected by then) checks in and waits on a lock the harness holds
    // until all have, so that every measured second has all clients running
    // (400 TLS logins take longer than a short run, and the first processes
    // up would otherwise have the machine to themselves). A lock, not a
    // polling loop: 200 waiting shells must not load the machine.
    let barrier = dir.join("barrier.sh");
    fs::write(
        &barrier,
        "#!/bin/sh\ntouch \"$1/ready.$$\"\nexec flock -s \"$1/lock\" true\n",
    )?;
    let gate = fs::File::create(dir.join("lock"))?;
    gate.lock()?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&barrier, fs::Permissions::from_mode(0o755))?;
    }
    // pgbench's built-in select-only script (`-S`), behind the barrier.
    let script = dir.join("select-only.sql");
    fs::write(
        &script,
        format!(
            "\\if :started = 0\n\\shell {barrier} {dir}\n\\set started 1\n\\endif\n\
             \\set aid random(1, 100000)\n\
             SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n",
            barrier = barrier.display(),
            dir = dir.display()
        ),
    )?;
    let pgbench = pg_tool(cluster, "pgbench");
    let mut children = Vec::new();
    let mut clients_total = 0;
    for (i, (tenant, clients, extra)) in jobs.iter().enumerate() {
        let err = dir.join(format!("{i}.err"));
        clients_total += clients;
        let child = Command::new(&pgbench)
            .args(["-n", "-j", "1", "-P", "1", "--progress-timestamp"])
            .args(["-D", "started=0", "-f"])
            .arg(&script)
            .args(["-c", &clients.to_string()])
            // Stopped by the harness once the window is measured.
            .args(["-T", &(args.seconds + 600).to_string()])
            .args(*extra)
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", port.to_string())
            .env("PGUSER", &tenant.name)
            .env("PGDATABASE", &tenant.name)
            .env("PGPASSWORD", &tenant.password)
            .env("PGSSLMODE", "require")
            .env("PGCONNECT_TIMEOUT", "60")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err)?)
            .spawn()
            .context("starting pgbench")?;
        children.push((Guard(child), err));
    }

    // Wait until every client has logged in and checked in.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let ready = fs::read_dir(&dir)?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("ready."))
            .count();
        if ready >= jobs.len() {
            break;
        }
        for (child, err) in &mut children {
            if let Some(status) = child.0.try_wait()? {
                bail!(
                    "pgbench exited before the start ({status}): {}",
                    tail(err, 3).replace('\n', " / ")
                );
            }
        }
        if Instant::now() > deadline {
            bail!(
                "only {ready} of {} pgbench processes ({clients_total} clients) logged in within 180s",
                jobs.len()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    gate.unlock()?;
    // (f): the free tenant's slots taken, then the attackers go, through
    // the warm-up and the whole window.
    let attack = attack_plan.map(attack::Attack::start).transpose()?;
    // Half a second into the warm-up, perf stat attaches (its start-up is
    // not the proxy's cost); its own interval is measured separately.
    std::thread::sleep(Duration::from_millis(500));
    let perf_from = unix_now();
    let mut perf_runs = Vec::new();
    if let (true, Some(support)) = (workload.wants_perf(), bench.perf) {
        if let Some(pid) = endpoint.pid {
            perf_runs.push((
                true,
                perf::Running::start(
                    perf::Scope::Process(pid),
                    &support.process_events(),
                    dir.join("perf-proxy.csv"),
                )?,
            ));
        }
        perf_runs.push((
            false,
            perf::Running::start(
                perf::Scope::System,
                perf::SYSTEM_EVENTS,
                dir.join("perf-system.csv"),
            )?,
        ));
    }
    let preempted_from = match perf_runs.first() {
        Some((true, _)) => endpoint.pid.map(preemptions).transpose()?,
        _ => None,
    };
    std::thread::sleep(Duration::from_millis(500));
    let from = unix_now();
    let cpu_from = endpoint.pid.map(cpu_seconds).transpose()?;
    let attack_from = attack.as_ref().map(|a| a.snapshot()).transpose()?;
    std::thread::sleep(Duration::from_secs(args.seconds.into()));
    let to = unix_now();
    let cpu_to = endpoint.pid.map(cpu_seconds).transpose()?;
    let attack_to = attack.as_ref().map(|a| a.snapshot()).transpose()?;
    let mut perf_counts = Vec::new();
    for (of_proxy, running) in perf_runs {
        let mut counts = running.stop()?;
        if let (true, Some(from), Some(pid)) = (of_proxy, preempted_from, endpoint.pid) {
            counts.insert("preempted".to_owned(), Some(preemptions(pid)? - from));
        }
        perf_counts.push((of_proxy, counts));
    }
    let perf_to = unix_now();
    if let Some(attack) = attack {
        attack.stop()?;
    }
    // Let every process report the second that covers `perf_to`.
    std::thread::sleep(Duration::from_millis(1500));
    // Stop them all at once (pgbench has no orderly stop; SIGKILL needs no
    // helper process), before reaping any: stopping one at a time while the
    // rest still load the machine takes minutes for the fleet.
    for (child, err) in &mut children {
        if let Some(status) = child.0.try_wait()? {
            bail!(
                "pgbench exited during the run ({status}): {}",
                tail(err, 3).replace('\n', " / ")
            );
        }
    }
    for (child, _) in &mut children {
        let _ = child.0.kill();
    }
    let mut progress = Vec::new();
    for (mut child, err) in children {
        let _ = child.0.wait();
        let intervals = parse_progress(&fs::read_to_string(&err).unwrap_or_default());
        if intervals.last().is_none_or(|i| i.end < perf_to.max(to)) {
            bail!(
                "a pgbench process stopped reporting progress ({}): {}",
                err.display(),
                tail(&err, 3).replace('\n', " / ")
            );
        }
        progress.push(intervals);
    }
    let mut sample = in_window(&progress, from, to);
    sample.round = round;
    sample.proxy_cpu = cpu_from.zip(cpu_to).map(|(a, b)| b - a);
    if !perf_counts.is_empty() {
        let transactions = in_window(&progress, perf_from, perf_to).total_queries;
        sample.perf = Some(perf::PerTransaction::new(perf_counts, transactions));
    }
    if let (Some(a), Some(b)) = (attack_from, attack_to) {
        let mut figures = attack::Figures::between(&a, &b, to - from);
        figures.proxy_cores = sample.proxy_cpu.map(|c| c / (to - from));
        sample.attack = Some(figures);
    }
    sample.refusal_cost = refusal_cost;
    Ok(sample)
}

/// How long [`refusal_cost`] measures.
const REFUSAL_COST_SECS: f64 = 3.0;

/// The attackers of (f), as fast as answered, with nothing else running:
/// CPU per refusal of the proxy, of the cluster and of the attackers.
fn refusal_cost(bench: &Bench, endpoint: Endpoint) -> Result<RefusalCost> {
    let attack = attack::Attack::start(attack_plan(bench, endpoint, 0)?)?;
    std::thread::sleep(Duration::from_millis(500));
    let postmaster = bench.cluster.pid();
    let t0 = Instant::now();
    let a = attack.snapshot()?;
    let proxy0 = endpoint.pid.map(cpu_seconds).transpose()?;
    let cluster0 = children_cpu_seconds(postmaster)?;
    std::thread::sleep(Duration::from_secs_f64(REFUSAL_COST_SECS));
    let b = attack.snapshot()?;
    let proxy1 = endpoint.pid.map(cpu_seconds).transpose()?;
    let cluster1 = children_cpu_seconds(postmaster)?;
    let secs = t0.elapsed().as_secs_f64();
    attack.stop()?;
    let figures = attack::Figures::between(&a, &b, secs);
    let refused = (figures.refused_per_s() * secs).max(1.0);
    Ok(RefusalCost {
        refused_per_s: figures.refused_per_s(),
        proxy_us: proxy0
            .zip(proxy1)
            .map_or(0.0, |(x, y)| (y - x) / refused * 1e6),
        cluster_us: (cluster1 - cluster0) / refused * 1e6,
        attacker_us: figures.attacker_cores * secs / refused * 1e6,
    })
}

/// (f)'s attackers against `endpoint`: half of them try wrong passwords
/// on the standard tenants (each starting at another one), half log into
/// the capped free tenant with its right password while two idle sessions
/// hold its two slots. PgBouncer 1.18 has no per-database client cap
/// (`max_db_connections` caps server connections, and clients beyond it
/// wait instead of being refused), so against it every attacker tries
/// wrong passwords: the same number of attackers, each refused.
fn attack_plan(bench: &Bench, endpoint: Endpoint, rate: u32) -> Result<attack::Plan> {
    let capped = bench
        .tenants
        .capped
        .as_ref()
        .ok_or_else(|| anyhow!("(f) needs the capped tenant"))?;
    let wrong: Vec<attack::Login> = bench
        .tenants
        .standard
        .iter()
        .map(|t| attack::Login {
            role: t.name.clone(),
            database: t.name.clone(),
            password: format!("not-{}", t.password),
        })
        .collect();
    let right = attack::Login {
        role: capped.name.clone(),
        database: capped.name.clone(),
        password: capped.password.clone(),
    };
    let has_cap = endpoint.target != Target::PgBouncer;
    let attackers = (0..bench.args.attackers)
        .map(|i| {
            if has_cap && i % 2 == 1 {
                attack::Attacker {
                    kind: attack::OVER_CAP,
                    logins: vec![right.clone()],
                }
            } else {
                let mut logins = wrong.clone();
                logins.rotate_left(i % wrong.len().max(1));
                attack::Attacker {
                    kind: attack::WRONG_PASSWORD,
                    logins,
                }
            }
        })
        .collect();
    Ok(attack::Plan {
        port: endpoint.port,
        ca_pem: bench.certs.ca_pem.clone(),
        attackers,
        hold: if has_cap {
            vec![right.clone(), right]
        } else {
            Vec::new()
        },
        many_sources: bench.args.attack_from == "many",
        rate,
        deadline: Instant::now() + Duration::from_secs(u64::from(bench.args.seconds) + 300),
    })
}
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One `-P 1` progress report: the interval ending at `end` (Unix seconds).
#[derive(Debug, Clone, Copy)]
struct Interval {
    start: f64,
    end: f64,
    tps: f64,
    latency_ms: f64,
}

/// pgbench's `--progress-timestamp` lines:
/// `progress: 1732575450.123 s, 2563.0 tps, lat 0.780 ms stddev 0.123, 0 failed`.
fn parse_progress(log: &str) -> Vec<Interval> {
    let mut out: Vec<Interval> = Vec::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("progress: ") else {
            continue;
        };
        let mut words = rest.split([' ', ',']).filter(|w| !w.is_empty());
        let (Some(ts), Some("s"), Some(tps), Some("tps"), Some("lat"), Some(lat)) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) else {
            continue;
        };
        let (Ok(end), Ok(tps), Ok(latency_ms)) = (ts.parse::<f64>(), tps.parse(), lat.parse())
        else {
            continue;
        };
        let start = out.last().map_or(end - 1.0, |p| p.end);
        out.push(Interval {
            start,
            end,
            tps,
            latency_ms,
        });
    }
    out
}

/// Transactions of all processes together within `[from, to]`, taking each
/// progress interval's share of the window.
fn in_window(processes: &[Vec<Interval>], from: f64, to: f64) -> Sample {
    let mut transactions = 0.0;
    let mut latency_weighted = 0.0;
    for process in processes {
        for i in process {
            let overlap = (i.end.min(to) - i.start.max(from)).max(0.0);
            let n = i.tps * overlap;
            transactions += n;
            latency_weighted += n * i.latency_ms;
        }
    }
    Sample {
        value: transactions / (to - from),
        latency_ms: (transactions > 0.0).then(|| latency_weighted / transactions),
        window_secs: to - from,
        total_queries: transactions as u64,
        ..Sample::default()
    }
}

/// psql streams `COPY (SELECT …) TO STDOUT` of 1 KiB rows into /dev/null.
fn run_copy(
    args: &RunArgs,
    tenant: &Tenant,
    cluster: &Cluster,
    port: u16,
    proxy_pid: Option<u32>,
) -> Result<Sample> {
    let rows = args.copy_mb * 1024;
    let sql = format!("COPY (SELECT repeat('x', 1023) FROM generate_series(1, {rows})) TO STDOUT");
    let cpu_from = proxy_pid.map(cpu_seconds).transpose()?;
    let t = Instant::now();
    let out = Command::new(pg_tool(cluster, "psql"))
        .args(["-X", "-q", "-c", &sql])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", &tenant.name)
        .env("PGDATABASE", &tenant.name)
        .env("PGPASSWORD", &tenant.password)
        .env("PGSSLMODE", "require")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    let cpu_to = proxy_pid.map(cpu_seconds).transpose()?;
    if !out.status.success() {
        bail!("psql COPY failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(Sample {
        value: args.copy_mb as f64 / secs,
        latency_ms: None,
        window_secs: secs,
        total_queries: 1,
        proxy_cpu: cpu_from.zip(cpu_to).map(|(a, b)| b - a),
        ..Sample::default()
    })
}

// ---------------------------------------------------------------------------
// /proc readings.

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid` (all its threads), seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    cpu_seconds_at(Path::new(&format!("/proc/{pid}/stat")))
}

/// utime + stime from a `/proc/…/stat` file (a process's or one thread's).
fn cpu_seconds_at(path: &Path) -> Result<f64> {
    let stat = fs::read_to_string(path)?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected {}", path.display()))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: f64 = fields.get(11).ok_or_else(|| anyhow!("no utime"))?.parse()?;
    let stime: f64 = fields.get(12).ok_or_else(|| anyhow!("no stime"))?.parse()?;
    Ok((utime + stime) / clock_ticks())
}

/// Times the threads of `pid` were switched out while still runnable
/// (`nonvoluntary_ctxt_switches`, summed over `/proc/PID/task`): preempted,
/// mostly by the process a write of theirs just woke, as opposed to going
/// to sleep with nothing to do.
fn preemptions(pid: u32) -> Result<f64> {
    let mut total = 0.0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread that ended between the listing and the read is skipped.
        let Ok(status) = fs::read_to_string(task?.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    Ok(total)
}

/// cutime + cstime of `pid`: the CPU of its children that ended and were
/// reaped (the postmaster reaps its backends at once), seconds.
fn children_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // cutime is field 16, cstime 17.
    let cutime: f64 = fields
        .get(13)
        .ok_or_else(|| anyhow!("no cutime"))?
        .parse()?;
    let cstime: f64 = fields
        .get(14)
        .ok_or_else(|| anyhow!("no cstime"))?
        .parse()?;
    Ok((cutime + cstime) / clock_ticks())
}

/// A `kB` line of /proc/PID/status (VmRSS, VmHWM), KiB.
fn proc_status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no {key} in /proc/{pid}/status"))
}

// ---------------------------------------------------------------------------
// Idle sessions.

struct IdleResult {
    sessions: usize,
    requested: usize,
    rss_before: u64,
    rss_after: u64,
    hwm: u64,
    open_secs: f64,
}

fn idle_sessions(
    args: &RunArgs,
    pgtier_bin: &Path,
    work: &Path,
    certs: &Certs,
) -> Result<IdleResult> {
    // pgtier holds two descriptors per session (client, cluster).
    let (soft, _hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let fit = (soft.saturating_sub(200) / 2) as usize;
    let sessions = args.idle_sessions.min(fit);
    if sessions < args.idle_sessions {
        eprintln!(
            "==> open-file limit {soft}: holding {sessions} sessions instead of {}",
            args.idle_sessions
        );
    }
    let backend_port = free_port()?;
    let exe = std::env::current_exe()?;
    let backend_log = work.join("fake-backend.log");
    let mut backend = Guard(
        Command::new(exe)
            .args(["fake-backend", "--port", &backend_port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&backend_log)?)
            .spawn()?,
    );
    wait_listening(backend_port, &mut backend.0, "fake backend", &backend_log)?;
    let tenants = Tenants {
        standard: (1..=10)
            .map(|i| Tenant {
                name: format!("idle{i:02}"),
                password: String::new(),
            })
            .collect(),
        free: Vec::new(),
        capped: None,
    };
    let proxy = Proxy::start(
        pgtier_bin,
        work,
        certs,
        "127.0.0.1",
        backend_port,
        &tenants,
        Flavor::Fake,
        &ServiceRoles::default(),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let pid = proxy.child.id();
    let rss_before = proc_status_kib(pid, "VmRSS")?;
    eprintln!(
        "==> idle sessions: opening {sessions} TLS sessions through pgtier to a FAKE backend \
         (pgtier RSS before: {rss_before} KiB)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let t = Instant::now();
    let held = rt.block_on(idle::open(proxy.port, &certs.ca_pem, sessions, &tenants))?;
    let open_secs = t.elapsed().as_secs_f64();
    // Let allocator and kernel settle before reading.
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = proc_status_kib(pid, "VmRSS")?;
    let hwm = proc_status_kib(pid, "VmHWM")?;
    eprintln!(
        "==> {} sessions open in {open_secs:.1}s; pgtier RSS after: {rss_after} KiB",
        held.len()
    );
    drop(held);
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(proxy);
    drop(backend);
    Ok(IdleResult {
        sessions,
        requested: args.idle_sessions,
        rss_before,
        rss_after,
        hwm,
        open_secs,
    })
}

mod idle {
    //! Clients that log in over TLS by hand and then sit idle.

    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::TlsConnector;

    pub async fn open(
        port: u16,
        ca_pem: &str,
        sessions: usize,
        tenants: &Tenants,
    ) -> Result<Vec<TlsStream<TcpStream>>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = TlsConnector::from(Arc::new(config));
        // Bounded concurrency: the listen backlog, not pgtier, would
        // otherwise be what is measured.
        let permits = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..sessions {
            let connector = connector.clone();
            let permits = Arc::clone(&permits);
            let db = tenants.standard[i % tenants.standard.len()].name.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await?;
                login(&connector, port, &db).await
            });
        }
        let mut held = Vec::with_capacity(sessions);
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined? {
                Ok(stream) => held.push(stream),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            bail!(
                "{} of {sessions} idle sessions failed to log in, e.g.: {e:#}",
                sessions - held.len()
            );
        }
        Ok(held)
    }

    async fn login(connector: &TlsConnector, port: u16, db: &str) -> Result<TlsStream<TcpStream>> {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        if answer[0] != b'S' {
            bail!("SSLRequest answered {:?}", answer[0] as char);
        }
        let mut tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let mut body = Vec::new();
        body.extend_from_slice(&196608u32.to_be_bytes());
        for (k, v) in [("user", db), ("database", db)] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        startup.extend(body);
        tls.write_all(&startup).await?;
        tls.flush().await?;
        // Read frames until ReadyForQuery.
        loop {
            let mut head = [0u8; 5];
            tls.read_exact(&mut head).await?;
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut body = vec![0u8; len.saturating_sub(4)];
            tls.read_exact(&mut body).await?;
            match head[0] {
                b'Z' => return Ok(tls),
                b'E' => bail!("login refused: {}", String::from_utf8_lossy(&body)),
                _ => {}
            }
        }
    }
}

mod fake {
    //! Just enough of a PostgreSQL backend to log a client in and keep it:
    //! trust authentication, a BackendKeyData, ReadyForQuery; a Query gets
    //! EmptyQueryResponse, a Terminate closes. Used only where a real cluster
    //! cannot reach the state measured (10,000 backends on one small machine).

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    pub fn serve(port: u16) -> Result<()> {
        super::raise_fd_limit();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let listener = TcpListener::bind(("127.0.0.1", port)).await?;
            let mut pid = 1000i32;
            loop {
                let (socket, _) = listener.accept().await?;
                pid = pid.wrapping_add(1);
                tokio::spawn(async move {
                    if let Err(e) = session(socket, pid).await {
                        eprintln!("fake backend session {pid}: {e}");
                    }
                });
            }
        })
    }

    fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
        out.push(tag);
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
    }

    async fn session(mut socket: TcpStream, pid: i32) -> Result<()> {
        loop {
            let len = socket.read_u32().await? as usize;
            if !(8..=10_000).contains(&len) {
                bail!("bad startup length {len}");
            }
            let mut body = vec![0u8; len - 4];
            socket.read_exact(&mut body).await?;
            let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            if code == 80877103 || code == 80877104 {
                socket.write_all(b"N").await?; // no TLS, no GSS
                continue;
            }
            break;
        }
        let mut out = Vec::new();
        frame(&mut out, b'R', &0u32.to_be_bytes());
        for (k, v) in [
            ("server_version", "15.0 (pgtier-bench fake backend)"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
        ] {
            let mut body = Vec::new();
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
            frame(&mut out, b'S', &body);
        }
        let mut key = pid.to_be_bytes().to_vec();
        key.extend_from_slice(&rand::random::<i32>().to_be_bytes());
        frame(&mut out, b'K', &key);
        frame(&mut out, b'Z', b"I");
        socket.write_all(&out).await?;
        drop(out);
        loop {
            let mut head = [0u8; 5];
            if socket.read_exact(&mut head).await.is_err() {
                return Ok(());
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut skip = len.saturating_sub(4) as u64;
            while skip > 0 {
                let mut chunk = [0u8; 512];
                let n = socket.read(&mut chunk[..skip.min(512) as usize]).await?;
                if n == 0 {
                    return Ok(());
                }
                skip -= n as u64;
            }
            match head[0] {
                b'X' => return Ok(()),
                b'Q' | b'S' => {
                    let mut reply = Vec::new();
                    if head[0] == b'Q' {
                        frame(&mut reply, b'I', b"");
                    }
                    frame(&mut reply, b'Z', b"I");
                    socket.write_all(&reply).await?;
                }
                _ => {}
            }
        }
    }
}

mod perf {
    //! `perf stat` around the measured window of (a) and (b): context
    //! switches, CPU migrations, task clock and page faults of the proxy
    //! process (all its threads) and context switches and migrations of the
    //! whole machine, per transaction. Hardware counters (instructions,
    //! cycles) only where the machine has them: a VM without a PMU answers
    //! `<not supported>`, and the report says so.

    use super::*;

    pub const SYSTEM_EVENTS: &str = "context-switches,cpu-migrations";
    const PROCESS_EVENTS: &str = "context-switches,cpu-migrations,task-clock,page-faults";
    const HARDWARE_EVENTS: &str = "instructions,cycles";
    /// Syscall tracepoints (root, or a permissive `perf_event_paranoid`):
    /// every syscall, and the ones a proxy's transaction is made of.
    const SYSCALL_EVENTS: &str = "raw_syscalls:sys_enter,\
        syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_recvmsg,\
        syscalls:sys_enter_write,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg,\
        syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,\
        syscalls:sys_enter_futex";
    /// The syscall columns of the report: a name and the events summed.
    pub const SYSCALL_COLUMNS: [(&str, &[&str]); 5] = [
        ("syscalls", &["raw_syscalls:sys_enter"]),
        (
            "reads",
            &[
                "syscalls:sys_enter_read",
                "syscalls:sys_enter_recvfrom",
                "syscalls:sys_enter_recvmsg",
            ],
        ),
        (
            "writes",
            &[
                "syscalls:sys_enter_write",
                "syscalls:sys_enter_sendto",
                "syscalls:sys_enter_sendmsg",
                "syscalls:sys_enter_writev",
            ],
        ),
        (
            "epoll waits",
            &[
                "syscalls:sys_enter_epoll_wait",
                "syscalls:sys_enter_epoll_pwait",
            ],
        ),
        ("futex", &["syscalls:sys_enter_futex"]),
    ];

    /// What `perf stat` can count here.
    #[derive(Debug, Clone)]
    pub struct Support {
        /// Each hardware event and whether it is counted.
        pub hardware: Vec<(String, bool)>,
        /// Whether syscall tracepoints can be counted.
        pub syscalls: bool,
    }

    impl Support {
        pub fn process_events(&self) -> String {
            let mut events = PROCESS_EVENTS.to_owned();
            if self.syscalls {
                events.push(',');
                events.push_str(SYSCALL_EVENTS);
            }
            for (event, _) in self.hardware.iter().filter(|(_, ok)| *ok) {
                events.push(',');
                events.push_str(event);
            }
            events
        }

        pub fn describe(&self) -> String {
            let (yes, no): (Vec<_>, Vec<_>) = self.hardware.iter().partition(|(_, ok)| *ok);
            let names = |v: Vec<&(String, bool)>| {
                v.iter()
                    .map(|(e, _)| e.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let counters = match (yes.is_empty(), no.is_empty()) {
                (_, true) => "hardware counters counted too".to_owned(),
                (true, false) => format!(
                    "software counters only: {} not supported (no PMU in this VM)",
                    names(no)
                ),
                (false, false) => format!("counted: {}; not supported: {}", names(yes), names(no)),
            };
            if self.syscalls {
                format!("{counters}; syscalls counted by tracepoint")
            } else {
                format!("{counters}; syscall tracepoints not available")
            }
        }
    }

    /// `None` when perf is missing or cannot count at all.
    pub fn probe() -> Option<Support> {
        let out = Command::new("perf")
            .args(["stat", "-x,", "-e"])
            .arg(format!("{HARDWARE_EVENTS},context-switches"))
            .arg("true")
            .output()
            .ok()?;
        let counts = parse(&String::from_utf8_lossy(&out.stderr));
        if !out.status.success() || !counts.contains_key("context-switches") {
            return None;
        }
        let syscalls = Command::new("perf")
            .args(["stat", "-x,", "-e", SYSCALL_EVENTS, "true"])
            .output()
            .is_ok_and(|out| {
                out.status.success()
                    && parse(&String::from_utf8_lossy(&out.stderr))
                        .get("raw_syscalls:sys_enter")
                        .is_some_and(Option::is_some)
            });
        Some(Support {
            hardware: HARDWARE_EVENTS
                .split(',')
                .map(|e| (e.to_owned(), counts.get(e).is_some_and(Option::is_some)))
                .collect(),
            syscalls,
        })
    }

    pub enum Scope {
        Process(u32),
        System,
    }

    /// A `perf stat` counting until [`Running::stop`].
    pub struct Running {
        child: Guard,
        out: PathBuf,
    }

    impl Running {
        pub fn start(scope: Scope, events: &str, out: PathBuf) -> Result<Running> {
            let mut cmd = Command::new("perf");
            cmd.args(["stat", "-x,", "-o"])
                .arg(&out)
                .args(["-e", events]);
            match scope {
                Scope::Process(pid) => cmd.args(["-p", &pid.to_string()]),
                Scope::System => cmd.arg("-a"),
            };
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting perf stat")?;
            Ok(Running {
                child: Guard(child),
                out,
            })
        }

        /// SIGINT makes perf stat write its counts and exit.
        pub fn stop(mut self) -> Result<BTreeMap<String, Option<f64>>> {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.child.0.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    bail!("perf stat did not stop on SIGINT");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(parse(&fs::read_to_string(&self.out).with_context(
                || format!("reading {}", self.out.display()),
            )?))
        }
    }

    /// `perf stat -x,` lines: `value,unit,event,…`; a value of
    /// `<not supported>` or `<not counted>` is `None`.
    fn parse(text: &str) -> BTreeMap<String, Option<f64>> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let fields: Vec<&str> = l.split(',').collect();
                let event = fields.get(2)?.trim();
                (!event.is_empty()).then(|| (event.to_owned(), fields[0].trim().parse().ok()))
            })
            .collect()
    }

    /// Counts per transaction; task-clock in µs.
    #[derive(Debug, Clone, Default)]
    pub struct PerTransaction {
        pub proxy: BTreeMap<String, Option<f64>>,
        pub system: BTreeMap<String, Option<f64>>,
    }

    impl PerTransaction {
        /// `counts`: (of the proxy process?, event → count).
        pub fn new(
            counts: Vec<(bool, BTreeMap<String, Option<f64>>)>,
            transactions: u64,
        ) -> PerTransaction {
            let mut out = PerTransaction::default();
            let tx = transactions.max(1) as f64;
            for (of_proxy, events) in counts {
                let mut per: BTreeMap<String, Option<f64>> = events
                    .into_iter()
                    .map(|(event, count)| {
                        // task-clock is in msec.
                        let scale = if event == "task-clock" { 1000.0 } else { 1.0 };
                        (event, count.map(|c| c * scale / tx))
                    })
                    .collect();
                for (column, events) in SYSCALL_COLUMNS {
                    let counted: Vec<f64> = events
                        .iter()
                        .filter_map(|e| per.get(*e).copied().flatten())
                        .collect();
                    if !counted.is_empty() {
                        per.insert(column.to_owned(), Some(counted.iter().sum()));
                    }
                }
                if of_proxy {
                    out.proxy = per;
                } else {
                    out.system = per;
                }
            }
            out
        }
    }
}

mod attack {
    //! The attackers of workload (f): tasks that log in again and again
    //! over TLS + SCRAM-SHA-256 and are refused, as a credential-stuffing
    //! bot or a pool misconfigured past its tier's cap would be, while
    //! pgbench measures what is left for the paying tenants.
    //!
    //! Raw protocol frames and a small SCRAM client rather than
    //! tokio-postgres, because the figure needs each refusal's SQLSTATE,
    //! and because the attackers share the machine with what they measure:
    //! the salted password is derived once per (password, salt, iterations)
    //! and kept, so an attempt costs the attacker a TLS handshake and a few
    //! hashes rather than 4,096 PBKDF2 rounds (a real attacker precomputes
    //! too). TLS session resumption is off, as in libpq: every attempt pays
    //! for a full handshake on both sides. All attackers run on one thread
    //! (a current-thread runtime), so they take at most one core, and the
    //! report shows how much of it they used.
    //!
    //! Every loop is bounded: each attempt by [`ATTEMPT_TIMEOUT`], the
    //! attack by the harness's stop and by the plan's hard deadline.

    use super::*;
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Mutex;

    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;
    use ring::{digest, hmac};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::TlsConnector;

    /// How long one attempt may take before it counts as timed out.
    const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Largest server message an attempt reads: a bound on what a broken
    /// peer can make the attacker allocate, not a protocol limit.
    const MAX_FRAME: usize = 64 * 1024;
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

    /// What an attacker does, the first part of its outcome labels.
    pub const WRONG_PASSWORD: &str = "wrong password";
    pub const OVER_CAP: &str = "over cap";

    #[derive(Debug, Clone)]
    pub struct Login {
        pub role: String,
        pub database: String,
        pub password: String,
    }

    /// One attacker task: the logins it tries in turn.
    #[derive(Debug, Clone)]
    pub struct Attacker {
        pub kind: &'static str,
        pub logins: Vec<Login>,
    }

    pub struct Plan {
        pub port: u16,
        pub ca_pem: String,
        pub attackers: Vec<Attacker>,
        /// Sessions logged in and held idle before the attackers start
        /// (the capped tenant's slots).
        pub hold: Vec<Login>,
        /// A new loopback source address for every attempt.
        pub many_sources: bool,
        /// Attempts per second of all attackers together; 0 = each starts
        /// its next attempt as soon as the last is answered.
        pub rate: u32,
        /// Hard stop, whatever happens to the harness.
        pub deadline: Instant,
    }

    /// The attackers' outcome counts and CPU time at one moment.
    #[derive(Debug, Clone)]
    pub struct Snapshot {
        counts: BTreeMap<String, u64>,
        cpu: f64,
    }

    /// What the attackers got in a window.
    #[derive(Debug, Clone, Default)]
    pub struct Figures {
        /// Outcomes per second, labelled `KIND: OUTCOME`: the kind of
        /// attacker ([`WRONG_PASSWORD`], [`OVER_CAP`]) and a SQLSTATE for a
        /// refusal, `accepted` for a login that got in, `error: …` for
        /// anything else.
        pub per_second: BTreeMap<String, f64>,
        /// CPU the attackers used, cores (seconds per second).
        pub attacker_cores: f64,
        /// CPU the target's proxy used, cores.
        pub proxy_cores: Option<f64>,
    }

    impl Figures {
        pub fn between(from: &Snapshot, to: &Snapshot, secs: f64) -> Figures {
            let secs = secs.max(1e-9);
            Figures {
                per_second: to
                    .counts
                    .iter()
                    .map(|(k, v)| {
                        let before = from.counts.get(k).copied().unwrap_or(0);
                        (k.clone(), v.saturating_sub(before) as f64 / secs)
                    })
                    .filter(|(_, v)| *v > 0.0)
                    .collect(),
                attacker_cores: (to.cpu - from.cpu) / secs,
                proxy_cores: None,
            }
        }

        /// Refusals (answers with a SQLSTATE) per second.
        pub fn refused_per_s(&self) -> f64 {
            self.refusals(None).map(|(_, v)| v).sum()
        }

        /// Refusals of attackers of `kind` per second.
        pub fn refused(&self, kind: &str) -> f64 {
            self.refusals(Some(kind)).map(|(_, v)| v).sum()
        }

        /// The SQLSTATEs attackers of `kind` were refused with.
        pub fn codes(&self, kind: &str) -> Vec<String> {
            self.refusals(Some(kind))
                .map(|(c, _)| c.to_owned())
                .collect()
        }

        /// Everything but refusals (`KIND: accepted`, `KIND: error: …`).
        pub fn others(&self) -> impl Iterator<Item = (&String, &f64)> {
            self.per_second.iter().filter(|(k, _)| {
                k.split_once(": ")
                    .is_none_or(|(_, outcome)| !is_sqlstate(outcome))
            })
        }

        fn refusals<'a>(&'a self, kind: Option<&'a str>) -> impl Iterator<Item = (&'a str, f64)> {
            self.per_second.iter().filter_map(move |(k, v)| {
                let (of, outcome) = k.split_once(": ")?;
                (is_sqlstate(outcome) && kind.is_none_or(|kind| kind == of))
                    .then_some((outcome, *v))
            })
        }

        /// `wrong password: 28P01 412/s, …`: every outcome seen.
        pub fn outcomes(&self) -> String {
            self.per_second
                .iter()
                .map(|(k, v)| format!("{k} {v:.0}/s"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    fn is_sqlstate(s: &str) -> bool {
        s.len() == 5 && s.bytes().all(|b| b.is_ascii_alphanumeric())
    }

    /// The attack, running on its own thread.
    pub struct Attack {
        stop: Arc<AtomicBool>,
        counts: Arc<Mutex<BTreeMap<String, u64>>>,
        thread: Option<std::thread::JoinHandle<Result<()>>>,
        /// The attack thread's `/proc/…/task/TID/stat`, for its CPU time.
        stat: PathBuf,
    }

    impl Attack {
        /// Logs the held sessions in, then lets the attackers go; returns
        /// once the held sessions are in (or could not get in).
        pub fn start(plan: Plan) -> Result<Attack> {
            let stop = Arc::new(AtomicBool::new(false));
            let counts = Arc::new(Mutex::new(BTreeMap::new()));
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name("attack".to_owned())
                .spawn({
                    let stop = Arc::clone(&stop);
                    let counts = Arc::clone(&counts);
                    move || run(plan, stop, counts, ready_tx)
                })?;
            let ready = ready_rx.recv();
            let mut attack = Attack {
                stop,
                counts,
                thread: Some(thread),
                stat: PathBuf::new(),
            };
            match ready {
                Ok(Ok(stat)) => {
                    attack.stat = stat;
                    Ok(attack)
                }
                Ok(Err(e)) => Err(e),
                // The thread ended without a word: its own error says why.
                Err(_) => Err(attack
                    .join()
                    .err()
                    .unwrap_or_else(|| anyhow!("the attack thread ended early"))),
            }
        }

        pub fn snapshot(&self) -> Result<Snapshot> {
            Ok(Snapshot {
                counts: lock(&self.counts).clone(),
                cpu: cpu_seconds_at(&self.stat)?,
            })
        }

        /// Stops the attackers (each finishes its attempt) and the held
        /// sessions.
        pub fn stop(mut self) -> Result<()> {
            self.join()
        }

        fn join(&mut self) -> Result<()> {
            self.stop.store(true, Ordering::Relaxed);
            match self.thread.take().map(|t| t.join()) {
                None => Ok(()),
                Some(Ok(result)) => result,
                Some(Err(_)) => bail!("the attack thread panicked"),
            }
        }
    }

    impl Drop for Attack {
        fn drop(&mut self) {
            let _ = self.join();
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(
        plan: Plan,
        stop: Arc<AtomicBool>,
        counts: Arc<Mutex<BTreeMap<String, u64>>>,
        ready: std::sync::mpsc::Sender<Result<PathBuf>>,
    ) -> Result<()> {
        let setup = || -> Result<_> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let client = Client::new(plan.port, &plan.ca_pem, plan.many_sources)?;
            // "/proc/thread-self" links to "PID/task/TID".
            let stat = Path::new("/proc")
                .join(fs::read_link("/proc/thread-self")?)
                .join("stat");
            Ok((rt, Arc::new(client), stat))
        };
        let (rt, client, stat) = match setup() {
            Ok(x) => x,
            Err(e) => {
                let _ = ready.send(Err(e));
                return Ok(());
            }
        };
        rt.block_on(async move {
            let mut held = Vec::new();
            for login in &plan.hold {
                let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, client.attempt(login)).await;
                match outcome {
                    Ok(Ok(Outcome::Accepted(stream))) => held.push(*stream),
                    Ok(Ok(Outcome::Refused { code, message })) => {
                        let _ = ready.send(Err(anyhow!(
                            "holding a session of {}: refused with {code}: {message}",
                            login.database
                        )));
                        return Ok(());
                    }
                    Ok(Err(e)) => {
                        let _ = ready.send(Err(
                            e.context(format!("holding a session of {}", login.database))
                        ));
                        return Ok(());
                    }
                    Err(_) => {
                        let _ = ready.send(Err(anyhow!(
                            "holding a session of {}: timed out",
                            login.database
                        )));
                        return Ok(());
                    }
                }
            }
            let _ = ready.send(Ok(stat));
            let pacer = Arc::new(Pacer::new(plan.rate));
            let mut tasks = tokio::task::JoinSet::new();
            for (i, one) in plan.attackers.into_iter().enumerate() {
                tasks.spawn(attacker(
                    Arc::clone(&client),
                    one,
                    i,
                    Arc::clone(&pacer),
                    Arc::clone(&stop),
                    Arc::clone(&counts),
                    plan.deadline,
                ));
            }
            while let Some(joined) = tasks.join_next().await {
                joined?;
            }
            for stream in held {
                terminate(stream).await;
            }
            Ok(())
        })
    }

    /// Spaces the attempts of all attackers `1 / rate` apart (none when
    /// the rate is 0). A target slower than the rate is not made up for
    /// with a burst later: a slot in the past becomes now.
    struct Pacer {
        interval: Option<Duration>,
        next: Mutex<Instant>,
    }

    impl Pacer {
        fn new(rate: u32) -> Pacer {
            Pacer {
                interval: (rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(rate))),
                next: Mutex::new(Instant::now()),
            }
        }

        async fn wait(&self) {
            let Some(interval) = self.interval else {
                return;
            };
            let at = {
                let mut next = lock(&self.next);
                let at = (*next).max(Instant::now());
                *next = at + interval;
                at
            };
            tokio::time::sleep_until(at.into()).await;
        }
    }

    async fn attacker(
        client: Arc<Client>,
        attacker: Attacker,
        offset: usize,
        pacer: Arc<Pacer>,
        stop: Arc<AtomicBool>,
        counts: Arc<Mutex<BTreeMap<String, u64>>>,
        deadline: Instant,
    ) {
        let Attacker { kind, logins } = attacker;
        let mut n = offset;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let Some(login) = logins.get(n % logins.len().max(1)) else {
                return;
            };
            n += 1;
            pacer.wait().await;
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, client.attempt(login)).await;
            let label = match outcome {
                Ok(Ok(Outcome::Refused { code, .. })) => code,
                Ok(Ok(Outcome::Accepted(stream))) => {
                    terminate(*stream).await;
                    "accepted".to_owned()
                }
                Ok(Err(e)) => format!("error: {}", short(&e)),
                Err(_) => "error: timed out".to_owned(),
            };
            let failed = label.starts_with("error");
            *lock(&counts).entry(format!("{kind}: {label}")).or_default() += 1;
            if failed {
                // No hot loop against a target that is down.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// The root cause, bounded in length (labels are map keys).
    fn short(e: &anyhow::Error) -> String {
        e.root_cause().to_string().chars().take(60).collect()
    }

    enum Outcome {
        Refused { code: String, message: String },
        Accepted(Box<TlsStream<TcpStream>>),
    }

    /// (password, salt, iterations).
    type KeyCacheKey = (String, Vec<u8>, u32);

    struct Client {
        connector: TlsConnector,
        port: u16,
        many_sources: bool,
        /// ClientKey per (password, salt, iterations): see the module doc.
        keys: Mutex<HashMap<KeyCacheKey, pgtier::auth::scram::Key>>,
    }

    /// The next source address, across runs: 127.1.x.y, 64,516 of them, so
    /// that within a run no (address, role) pair repeats and pgtier's
    /// per-address delay after failures never engages.
    fn source_address() -> Ipv4Addr {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed) % (254 * 254);
        Ipv4Addr::new(127, 1, (1 + k / 254) as u8, (1 + k % 254) as u8)
    }

    impl Client {
        fn new(port: u16, ca_pem: &str, many_sources: bool) -> Result<Client> {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
                roots.add(cert?)?;
            }
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.resumption = rustls::client::Resumption::disabled();
            Ok(Client {
                connector: TlsConnector::from(Arc::new(config)),
                port,
                many_sources,
                keys: Mutex::new(HashMap::new()),
            })
        }

        async fn connect(&self) -> Result<TcpStream> {
            let to = SocketAddr::from(([127, 0, 0, 1], self.port));
            let tcp = if self.many_sources {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::V4(SocketAddrV4::new(source_address(), 0)))?;
                socket.connect(to).await?
            } else {
                TcpStream::connect(to).await?
            };
            tcp.set_nodelay(true)?;
            Ok(tcp)
        }

        fn client_key(&self, password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
            let key = (password.to_owned(), salt.to_vec(), iterations);
            if let Some(k) = lock(&self.keys).get(&key) {
                return *k;
            }
            let k = pgtier::auth::scram::client_key(password, salt, iterations);
            lock(&self.keys).insert(key, k);
            k
        }

        /// One login: SSLRequest, TLS, StartupMessage, SCRAM-SHA-256 (never
        /// -PLUS: a client that cannot bind, which every server must
        /// accept), up to ReadyForQuery or an ErrorResponse.
        async fn attempt(&self, login: &Login) -> Result<Outcome> {
            let mut tcp = self.connect().await?;
            tcp.write_all(&SSL_REQUEST).await?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await?;
            if answer[0] != b'S' {
                bail!("SSLRequest answered {:?}", answer[0] as char);
            }
            let mut tls = self
                .connector
                .connect(ServerName::try_from("localhost")?, tcp)
                .await?;
            tls.write_all(&startup(login)).await?;
            let nonce = BASE64.encode(rand::random::<[u8; 18]>());
            let client_first_bare = format!("n=,r={nonce}");
            loop {
                let (tag, body) = read_frame(&mut tls).await?;
                match tag {
                    b'E' => {
                        let (code, message) = error_fields(&body);
                        return Ok(Outcome::Refused { code, message });
                    }
                    b'Z' => return Ok(Outcome::Accepted(Box::new(tls))),
                    b'R' => {
                        let code = body
                            .get(..4)
                            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                            .ok_or_else(|| anyhow!("short authentication message"))?;
                        let data = &body[4..];
                        match code {
                            // AuthenticationOk, SASLFinal: the answer follows.
                            0 | 12 => {}
                            10 => {
                                let offered =
                                    data.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                                if !offered {
                                    bail!("SCRAM-SHA-256 not offered");
                                }
                                let first = format!("n,,{client_first_bare}");
                                let mut msg = b"SCRAM-SHA-256\0".to_vec();
                                msg.extend_from_slice(&(first.len() as u32).to_be_bytes());
                                msg.extend_from_slice(first.as_bytes());
                                tls.write_all(&frame(b'p', &msg)).await?;
                            }
                            11 => {
                                let server_first = std::str::from_utf8(data)?;
                                let final_ = self.client_final(
                                    login,
                                    &client_first_bare,
                                    &nonce,
                                    server_first,
                                )?;
                                tls.write_all(&frame(b'p', final_.as_bytes())).await?;
                            }
                            other => bail!("unexpected authentication request {other}"),
                        }
                    }
                    // ParameterStatus, BackendKeyData, NoticeResponse,
                    // NegotiateProtocolVersion.
                    b'S' | b'K' | b'N' | b'v' => {}
                    other => bail!("unexpected message {:?} during login", other as char),
                }
            }
        }

        /// client-final-message for `server_first` (RFC 5802).
        fn client_final(
            &self,
            login: &Login,
            client_first_bare: &str,
            nonce: &str,
            server_first: &str,
        ) -> Result<String> {
            let mut combined = None;
            let mut salt = None;
            let mut iterations = None;
            for part in server_first.split(',') {
                match part.split_at_checked(2) {
                    Some(("r=", v)) => combined = Some(v),
                    Some(("s=", v)) => salt = Some(BASE64.decode(v)?),
                    Some(("i=", v)) => iterations = Some(v.parse::<u32>()?),
                    _ => {}
                }
            }
            let (Some(combined), Some(salt), Some(iterations)) = (combined, salt, iterations)
            else {
                bail!("malformed server-first-message");
            };
            if !combined.starts_with(nonce) {
                bail!("the server's nonce does not extend ours");
            }
            let client_key = self.client_key(&login.password, &salt, iterations);
            // "biws" = base64("n,,"): no channel binding.
            let without_proof = format!("c=biws,r={combined}");
            let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
            let stored_key = digest::digest(&digest::SHA256, &client_key);
            let signature = hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, stored_key.as_ref()),
                auth_message.as_bytes(),
            );
            let proof: Vec<u8> = client_key
                .iter()
                .zip(signature.as_ref())
                .map(|(k, s)| k ^ s)
                .collect();
            Ok(format!("{without_proof},p={}", BASE64.encode(proof)))
        }
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 5);
        out.push(tag);
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn startup(login: &Login) -> Vec<u8> {
        let mut body = 196608u32.to_be_bytes().to_vec();
        for (k, v) in [("user", &login.role), ("database", &login.database)] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend(body);
        packet
    }

    async fn read_frame(tls: &mut TlsStream<TcpStream>) -> Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        tls.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if !(4..=MAX_FRAME).contains(&len) {
            bail!("message {:?} of length {len}", head[0] as char);
        }
        let mut body = vec![0u8; len - 4];
        tls.read_exact(&mut body).await?;
        Ok((head[0], body))
    }

    /// SQLSTATE and message of an ErrorResponse body.
    fn error_fields(body: &[u8]) -> (String, String) {
        let mut code = String::from("?????");
        let mut message = String::new();
        for field in body.split(|&b| b == 0) {
            match field.split_first() {
                Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
                Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
                _ => {}
            }
        }
        (code, message)
    }

    async fn terminate(mut stream: TlsStream<TcpStream>) {
        let _ = stream.write_all(&frame(b'X', &[])).await;
        let _ = stream.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// The report.

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// Every sample, by workload and target.
#[derive(Debug, Default)]
struct Results(BTreeMap<(Workload, Target), Vec<Sample>>);

impl Results {
    fn push(&mut self, workload: Workload, target: Target, sample: Sample) {
        self.0.entry((workload, target)).or_default().push(sample);
    }

    fn get(&self, workload: Workload, target: Target) -> &[Sample] {
        self.0
            .get(&(workload, target))
            .map_or(&[][..], Vec::as_slice)
    }

    fn median(
        &self,
        workload: Workload,
        target: Target,
        f: impl Fn(&Sample) -> Option<f64>,
    ) -> Option<f64> {
        median(self.get(workload, target).iter().filter_map(f).collect())
    }

    /// `f(num) / f(den)` for every round both ran: a ratio between runs
    /// close in time, which the machine's drift affects far less than a
    /// ratio of medians taken over the whole run.
    fn paired(
        &self,
        num: (Workload, Target),
        den: (Workload, Target),
        f: impl Fn(&Sample) -> Option<f64>,
    ) -> Vec<f64> {
        self.get(num.0, num.1)
            .iter()
            .filter_map(|a| {
                let b = self.get(den.0, den.1).iter().find(|b| b.round == a.round)?;
                let (x, y) = (f(a)?, f(b)?);
                (y > 0.0).then(|| x / y)
            })
            .collect()
    }
}

/// A ratio the issues set a floor for (or none: shown for comparison).
struct Goal {
    workload: Workload,
    num: Target,
    den: Target,
    min: Option<f64>,
    issue: &'static str,
}

fn goals() -> Vec<Goal> {
    use Target::*;
    use Workload::*;
    let goal = |workload, num, den, min, issue| Goal {
        workload,
        num,
        den,
        min,
        issue,
    };
    let mut out = Vec::new();
    for w in [Simple, Prepared, Fleet] {
        out.push(goal(w, Pgtier, PgBouncer, Some(1.25), "4"));
        out.push(goal(w, Pgtier, Direct, Some(0.85), "4"));
        out.push(goal(w, PgtierProxy, Pgtier, Some(1.0), "10"));
        out.push(goal(w, PgtierProxy, PgBouncer, None, "10"));
    }
    for w in [Simple, Prepared] {
        out.push(goal(w, PgtierRules, Pgtier, Some(0.97), "7"));
    }
    out.push(goal(Fleet, PgtierRules, Pgtier, None, "7"));
    out.push(goal(Churn, Pgtier, PgBouncer, Some(1.0), "4"));
    out.push(goal(Churn, PgtierProxy, PgBouncer, Some(1.0), "10"));
    out.push(goal(Churn, PgtierProxy, Pgtier, None, "10"));
    out.push(goal(Copy, Pgtier, Direct, Some(0.9), "4"));
    out.push(goal(Copy, PgtierProxy, Pgtier, None, "10"));
    out.push(goal(Copy, PgtierRules, Pgtier, None, "7"));
    out
}

/// `1.02× (0.97–1.05)`: the median of per-round ratios and their range.
fn ratio_cell(ratios: &[f64]) -> String {
    let Some(m) = median(ratios.to_vec()) else {
        return "–".to_owned();
    };
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if ratios.len() > 1 {
        format!("{m:.2}× ({lo:.2}–{hi:.2})")
    } else {
        format!("{m:.2}×")
    }
}

struct Report<'a> {
    args: &'a RunArgs,
    workloads: &'a [Workload],
    targets: &'a [Target],
    results: &'a Results,
    env: Option<&'a Env>,
    idle: Option<&'a IdleResult>,
    perf: Option<&'a perf::Support>,
    loads: &'a [(String, String)],
    minutes: f64,
}

impl Report<'_> {
    fn render(&self) -> Result<String> {
        let mut r = String::new();
        self.header(&mut r)?;
        let table: Vec<Workload> = self
            .workloads
            .iter()
            .copied()
            .filter(|w| !matches!(w, Workload::Attack(_)))
            .collect();
        if !table.is_empty() {
            self.throughput(&mut r, &table)?;
            self.goals(&mut r)?;
            self.cpu(&mut r, &table)?;
            self.perf(&mut r)?;
        }
        if self
            .workloads
            .iter()
            .any(|w| matches!(w, Workload::Attack(_)))
        {
            self.attack(&mut r)?;
        }
        if !self.workloads.is_empty() {
            self.method(&mut r)?;
        }
        if let Some(idle) = self.idle {
            self.idle(&mut r, idle)?;
        }
        let args = self.args;
        let mut cmd = format!(
            "cargo run --release --bin pgtier-bench -- --seconds {} --rounds {} --copy-mb {} --idle-sessions {}",
            args.seconds, args.rounds, args.copy_mb, args.idle_sessions
        );
        if args.targets.join(",") != ALL_TARGETS {
            write!(cmd, " --targets {}", args.targets.join(","))?;
        }
        if args.workloads.join(",") != ALL_WORKLOADS {
            write!(cmd, " --workloads {}", args.workloads.join(","))?;
        }
        if args.attack_from != "many" {
            write!(cmd, " --attack-from {}", args.attack_from)?;
        }
        let rates: Vec<String> = args.attack_rates.iter().map(u32::to_string).collect();
        if rates.join(",") != "0,50" {
            write!(cmd, " --attack-rates {}", rates.join(","))?;
        }
        if args.attackers != 8 {
            write!(cmd, " --attackers {}", args.attackers)?;
        }
        writeln!(r, "\nReproduce with `{cmd}`.")?;
        std::io::stderr().flush()?;
        Ok(r)
    }

    fn header(&self, r: &mut String) -> Result<()> {
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines().find_map(|l| {
                    l.strip_prefix("model name")?
                        .split_once(':')
                        .map(|(_, v)| v.trim().to_owned())
                })
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let bouncer_version = pgbouncer_path()
            .and_then(|p| Command::new(p).arg("--version").output().ok())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let order = self
            .targets
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(" → ");
        writeln!(r, "# pgtier benchmark results\n")?;
        writeln!(
            r,
            "{date}; {cores} cores ({cpu_model}); PostgreSQL {}; {bouncer_version}; \
             {}s per run, {} rounds interleaved {order} within each round, medians shown; \
             {:.0} minutes in all. Everything (pgbench, PostgreSQL, the proxies, the \
             attackers) shares the same cores; every connection is TLS (`sslmode=require`) \
             with SCRAM-SHA-256.\n",
            self.env.map_or("?", |e| e.pg_version.as_str()),
            self.args.seconds,
            self.args.rounds,
            self.minutes,
        )?;
        writeln!(
            r,
            "**Load averages** (1/5/15 min; the machine is shared with other work, \
             and the figures include this run's own load): {}.\n",
            self.loads
                .iter()
                .map(|(when, load)| format!("{when} {load}"))
                .collect::<Vec<_>>()
                .join("; ")
        )?;
        Ok(())
    }

    fn throughput(&self, r: &mut String, table: &[Workload]) -> Result<()> {
        writeln!(r, "## Throughput\n")?;
        writeln!(
            r,
            "| workload | {} |",
            self.targets
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(" | ")
        )?;
        writeln!(r, "|---|{}", "---:|".repeat(self.targets.len()))?;
        for &w in table {
            let cells: Vec<String> = self
                .targets
                .iter()
                .map(|&t| {
                    if !t.runs(w) {
                        return "not run".to_owned();
                    }
                    let value = self.results.median(w, t, |s| Some(s.value));
                    let latency = self.results.median(w, t, |s| s.latency_ms);
                    match (value, latency) {
                        (Some(v), Some(l)) => format!("{v:.0} {} ({l:.2} ms)", w.unit()),
                        (Some(v), None) => format!("{v:.0} {}", w.unit()),
                        _ => "failed".into(),
                    }
                })
                .collect();
            writeln!(r, "| {} | {} |", w.title(self.args), cells.join(" | "))?;
        }
        Ok(())
    }

    fn goals(&self, r: &mut String) -> Result<()> {
        let rows: Vec<(Goal, Vec<f64>)> = goals()
            .into_iter()
            .filter(|g| {
                self.workloads.contains(&g.workload)
                    && self.targets.contains(&g.num)
                    && self.targets.contains(&g.den)
                    && g.num.runs(g.workload)
                    && g.den.runs(g.workload)
            })
            .map(|g| {
                let ratios = self
                    .results
                    .paired((g.workload, g.num), (g.workload, g.den), |s| Some(s.value));
                (g, ratios)
            })
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        writeln!(
            r,
            "\n## Ratios and targets\n\nEach ratio is the median of the per-round ratios \
             (two runs of the same round, at most minutes apart), with their range.\n"
        )?;
        writeln!(r, "| workload | ratio | per round | target | issue |")?;
        writeln!(r, "|---|---|---:|---|---|")?;
        for (g, ratios) in rows {
            let m = median(ratios.clone());
            let target = match g.min {
                Some(min) => format!(
                    "≥ {min:.2}× {}",
                    match m {
                        Some(m) if m >= min => "✅",
                        Some(_) => "❌",
                        None => "(failed)",
                    }
                ),
                None => "–".to_owned(),
            };
            writeln!(
                r,
                "| ({}) | {} / {} | {} | {target} | {} |",
                g.workload.key(),
                g.num.name(),
                g.den.name(),
                ratio_cell(&ratios),
                g.issue
            )?;
        }
        Ok(())
    }

    fn proxies(&self) -> Vec<Target> {
        self.targets
            .iter()
            .copied()
            .filter(|t| *t != Target::Direct)
            .collect()
    }

    fn cpu(&self, r: &mut String, table: &[Workload]) -> Result<()> {
        let proxies = self.proxies();
        if proxies.is_empty() {
            return Ok(());
        }
        writeln!(
            r,
            "\n## Proxy CPU per transaction\n\nThe proxy process's utime + stime (all \
             threads, from /proc) over the measured window, per 100,000 transactions \
             (per GiB for the COPY).\n"
        )?;
        writeln!(
            r,
            "| workload | {} |",
            proxies
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(" | ")
        )?;
        writeln!(r, "|---|{}", "---:|".repeat(proxies.len()))?;
        for &w in table {
            let cells: Vec<String> = proxies
                .iter()
                .map(|&t| {
                    let per = if w == Workload::Copy {
                        let gib = self.args.copy_mb as f64 / 1024.0;
                        self.results
                            .median(w, t, |s| Some(s.proxy_cpu? / gib))
                            .map(|c| format!("{c:.2} s/GiB"))
                    } else {
                        self.results
                            .median(w, t, |s| {
                                (s.total_queries > 0).then(|| {
                                    s.proxy_cpu.unwrap_or(0.0) * 1e5 / s.total_queries as f64
                                })
                            })
                            .map(|c| format!("{c:.2} s/100k q"))
                    };
                    per.unwrap_or_else(|| "–".into())
                })
                .collect();
            writeln!(r, "| ({}) | {} |", w.key(), cells.join(" | "))?;
        }
        Ok(())
    }

    fn perf(&self, r: &mut String) -> Result<()> {
        let workloads: Vec<Workload> = self
            .workloads
            .iter()
            .copied()
            .filter(|w| w.wants_perf())
            .collect();
        if workloads.is_empty() {
            return Ok(());
        }
        let Some(support) = self.perf else {
            writeln!(
                r,
                "\n`perf stat` was not used ({}).",
                if self.args.no_perf {
                    "--no-perf"
                } else {
                    "it does not work on this machine"
                }
            )?;
            return Ok(());
        };
        writeln!(
            r,
            "\n## `perf stat` per transaction, (a) and (b)\n\n`perf stat` attached to the \
             proxy process (`-p`, all its threads) and to the whole machine (`-a`) from half a \
             second into the warm-up to the end of the window, divided by the transactions \
             pgbench reported over the same interval. {}. *Preempted*: of the proxy's \
             context switches, those where a thread was switched out while still runnable \
             (`nonvoluntary_ctxt_switches` in /proc, over the same interval), as against \
             going to sleep with nothing to do. The machine-wide figures include \
             pgbench, PostgreSQL and anything else running.\n",
            support.describe()
        )?;
        let hw: Vec<&str> = support
            .hardware
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(e, _)| e.as_str())
            .collect();
        let mut proxy_events = vec![
            ("context-switches", "ctx switches"),
            ("preempted", "… of them preempted"),
            ("cpu-migrations", "migrations"),
            ("task-clock", "task-clock µs"),
            ("page-faults", "page faults"),
        ];
        proxy_events.extend(hw.iter().map(|e| (*e, *e)));
        if support.syscalls {
            proxy_events.extend(perf::SYSCALL_COLUMNS.iter().map(|(c, _)| (*c, *c)));
        }
        let system_events = [
            ("context-switches", "ctx switches"),
            ("cpu-migrations", "migrations"),
        ];
        writeln!(
            r,
            "| workload | target | {} | {} |",
            proxy_events
                .iter()
                .map(|(_, n)| format!("proxy {n}"))
                .collect::<Vec<_>>()
                .join(" | "),
            system_events
                .iter()
                .map(|(_, n)| format!("machine {n}"))
                .collect::<Vec<_>>()
                .join(" | ")
        )?;
        writeln!(
            r,
            "|---|---|{}",
            "---:|".repeat(proxy_events.len() + system_events.len())
        )?;
        let fmt = |v: Option<f64>| match v {
            Some(v) if v >= 100.0 => format!("{v:.0}"),
            Some(v) => format!("{v:.3}"),
            None => "–".to_owned(),
        };
        for &w in &workloads {
            for &t in self.targets {
                if self.results.get(w, t).is_empty() {
                    continue;
                }
                let proxy: Vec<String> = proxy_events
                    .iter()
                    .map(|(e, _)| {
                        fmt(self
                            .results
                            .median(w, t, |s| s.perf.as_ref()?.proxy.get(*e).copied().flatten()))
                    })
                    .collect();
                let system: Vec<String> = system_events
                    .iter()
                    .map(|(e, _)| {
                        fmt(self
                            .results
                            .median(w, t, |s| s.perf.as_ref()?.system.get(*e).copied().flatten()))
                    })
                    .collect();
                writeln!(
                    r,
                    "| ({}) | {} | {} | {} |",
                    w.key(),
                    t.name(),
                    proxy.join(" | "),
                    system.join(" | ")
                )?;
            }
        }
        Ok(())
    }

    fn attack(&self, r: &mut String) -> Result<()> {
        let attacks: Vec<Workload> = self
            .workloads
            .iter()
            .copied()
            .filter(|w| matches!(w, Workload::Attack(_)))
            .collect();
        let targets: Vec<Target> = self
            .targets
            .iter()
            .copied()
            .filter(|t| attacks.first().is_some_and(|w| t.runs(*w)))
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let args = self.args;
        writeln!(
            r,
            "\n## (f) Refused logins absorbed\n\n(a) again ({} clients on {} standard tenants, \
             select-only), while {} attacker tasks in the harness (one thread, at most one login \
             in flight each) log in over TLS + SCRAM-SHA-256, {}: half try wrong passwords on the \
             standard tenants, half log into a free tenant whose 2 slots two idle sessions hold, \
             with its right password (`53300`). PgBouncer has no per-database client cap, so all \
             its attackers try wrong passwords (it answers them with `08P01` \"SASL \
             authentication failed\", pgtier and PostgreSQL with `28P01`). \"Offered\" is the \
             attackers' pace: as fast as answered (what the target absorbs at most), or a fixed \
             rate of all attackers together (targets compared under the same load). Share = \
             (a) under attack / the same target's unattacked (a) of the same round. \"Alone\": \
             before each as-fast-as-answered run, the attackers run {REFUSAL_COST_SECS} s with \
             nothing else, and the CPU per refusal of the proxy process and of the cluster's \
             backends (those that ended, from the postmaster's reaped-children CPU time) is \
             what a refusal costs, free of pgbench's share.\n",
            args.clients,
            args.std_tenants,
            args.attackers,
            if args.attack_from == "many" {
                "each attempt from a new loopback address (a distributed attack: pgtier's \
                 delay after repeated failures from one address never engages)"
            } else {
                "all from 127.0.0.1 (one misbehaving client: pgtier's proxy mode delays its \
                 repeated failures, up to 5 s each)"
            }
        )?;
        writeln!(
            r,
            "| offered | target | refusals/s | wrong password/s | over cap/s | other outcomes | \
             (a) under attack | (a) unattacked | share | target | proxy CPU | attackers' CPU | \
             alone: refusals/s, CPU per refusal: proxy + cluster |"
        )?;
        writeln!(
            r,
            "|---|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|"
        )?;
        for &w in &attacks {
            let Workload::Attack(rate) = w else {
                continue;
            };
            for &t in &targets {
                self.attack_row(r, w, rate, t)?;
            }
        }
        Ok(())
    }

    fn attack_row(&self, r: &mut String, w: Workload, rate: u32, t: Target) -> Result<()> {
        let samples = self.results.get(w, t);
        let fig = |f: &dyn Fn(&attack::Figures) -> f64| {
            self.results.median(w, t, |s| s.attack.as_ref().map(f))
        };
        // `+ 0.0`: an empty f64 sum is -0.0.
        let num = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{:.0}", v + 0.0));
        let cores = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2} cores"));
        let codes = |kind: &str| {
            let mut codes: Vec<String> = samples
                .iter()
                .filter_map(|s| s.attack.as_ref())
                .flat_map(|a| a.codes(kind))
                .collect();
            codes.sort();
            codes.dedup();
            if codes.is_empty() {
                String::new()
            } else {
                format!(" (`{}`)", codes.join("`, `"))
            }
        };
        let mut others: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for a in samples.iter().filter_map(|s| s.attack.as_ref()) {
            for (k, v) in a.others() {
                others.entry(k.clone()).or_default().push(*v);
            }
        }
        let other = if others.is_empty() {
            "none".to_owned()
        } else {
            others
                .into_iter()
                .map(|(k, v)| format!("{k} {:.1}/s", median(v).unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let shares = self
            .results
            .paired((w, t), (Workload::Simple, t), |s| Some(s.value));
        let met = match median(shares.clone()) {
            Some(m) if m >= 0.9 => "≥ 90 % ✅",
            Some(_) => "≥ 90 % ❌",
            None => "≥ 90 % (failed)",
        };
        let cost = |f: fn(&RefusalCost) -> f64| {
            self.results
                .median(w, t, |s| s.refusal_cost.as_ref().map(f))
        };
        let alone = match (
            cost(|c| c.refused_per_s),
            cost(|c| c.proxy_us),
            cost(|c| c.cluster_us),
            cost(|c| c.attacker_us),
        ) {
            (Some(n), Some(p), Some(c), Some(a)) => {
                format!("{n:.0}/s: {p:.0} µs + {c:.0} µs (+ attackers {a:.0} µs)")
            }
            _ => "–".to_owned(),
        };
        writeln!(
            r,
            "| {} | {} | {} | {}{} | {}{} | {other} | {} TPS | {} TPS | {} | {met} | {} | {} | {} |",
            if rate == 0 {
                "as fast as answered".to_owned()
            } else {
                format!("{rate}/s")
            },
            t.name(),
            num(fig(&attack::Figures::refused_per_s)),
            num(fig(&|a| a.refused(attack::WRONG_PASSWORD))),
            codes(attack::WRONG_PASSWORD),
            num(fig(&|a| a.refused(attack::OVER_CAP))),
            codes(attack::OVER_CAP),
            num(self.results.median(w, t, |s| Some(s.value))),
            num(self.results.median(Workload::Simple, t, |s| Some(s.value))),
            shares_cell(&shares),
            cores(self.results.median(w, t, |s| s.attack.as_ref()?.proxy_cores)),
            cores(fig(&|a| a.attacker_cores)),
            alone,
        )?;
        Ok(())
    }

    fn method(&self, r: &mut String) -> Result<()> {
        let args = self.args;
        writeln!(
            r,
            "\n## How\n\nOne pgbench process per tenant database (`-j 1`, pgbench's select-only \
             script), all held at a start barrier until every one has logged in; TPS is \
             the sum of their per-second progress reports over the same {}s window after a \
             1s warm-up, latency the transaction-weighted mean. The fleet workload runs \
             {} such processes × 2 clients at once. The COPY is timed end to end with psql \
             writing to /dev/null. Targets: pgtier with pass-through authentication and no \
             rules (free tier: 2 connections, no row quota, no denied statements); pgtier \
             proxy, the same with `[auth] mode = \"proxy\"` (auth_query through the SECURITY \
             DEFINER function `public.pgtier_verifier`, run as a dedicated role; warm cluster \
             connections at their defaults: `server_idle_timeout = 30s`, \
             `max_warm_backends = 100`); pgtier rules, pass-through with every tenant in the \
             free tier at its defaults (`row_limit = 10000` counted by a `[quota]` role in \
             `pg_read_all_data`, `deny = [\"extension\", \"function\", \"trigger\", \"role\"]`, \
             5 minutes idle) and the standard tenants' cap lifted (`max_connections = 0`). \
             Each tenant holds pgbench's 100,000 accounts, so the rules target's tenants are \
             over their quota: reads pass, as they must. PgBouncer: session mode, the \
             cluster's SCRAM verifiers in its auth_file, plaintext to the cluster like pgtier.",
            args.seconds, args.free_tenants
        )?;
        if let Some(env) = self.env {
            writeln!(
                r,
                "\nPeak RSS over the whole run (VmHWM): {}.",
                env.hwm
                    .iter()
                    .map(|(t, kib)| format!("{} {:.1} MiB", t.name(), *kib as f64 / 1024.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
        }
        Ok(())
    }

    fn idle(&self, r: &mut String, idle: &IdleResult) -> Result<()> {
        let per = (idle.rss_after.saturating_sub(idle.rss_before)) as f64 / idle.sessions as f64;
        writeln!(
            r,
            "\n## Memory per idle TLS session\n\n\
             {} idle TLS client sessions held through pgtier (pass-through){}, against a **fake backend** \
             (a minimal PostgreSQL speaker in `pgtier-bench`: trust login, BackendKeyData, \
             ReadyForQuery), since the test cluster cannot hold that many backends. \
             pgtier RSS {} KiB before, {} KiB after (peak {} KiB): \
             **{per:.1} KiB per session** (target ≤ 16 KiB {}). Opening them took {:.1}s.",
            idle.sessions,
            if idle.sessions < idle.requested {
                format!(
                    " (of {} requested: the open-file hard limit allows no more, at two descriptors per session)",
                    idle.requested
                )
            } else {
                String::new()
            },
            idle.rss_before,
            idle.rss_after,
            idle.hwm,
            if per <= 16.0 { "✅" } else { "❌" },
            idle.open_secs,
        )?;
        Ok(())
    }
}

/// `97 % (95–99 %)`.
fn shares_cell(shares: &[f64]) -> String {
    let Some(m) = median(shares.to_vec()) else {
        return "–".to_owned();
    };
    let lo = shares.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = shares.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if shares.len() > 1 {
        format!("{:.0} % ({:.0}–{:.0} %)", m * 100.0, lo * 100.0, hi * 100.0)
    } else {
        format!("{:.0} %", m * 100.0)
    }
}
