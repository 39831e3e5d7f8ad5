//! `pgtier-bench`: the end-to-end benchmark of issue 4. One machine, one
//! throwaway PostgreSQL cluster with TLS on, and three ways to reach it over
//! `sslmode=require`: directly, through PgBouncer (session mode, SCRAM) and
//! through pgtier. The same pgbench workloads run against each, interleaved
//! (direct, PgBouncer, pgtier, direct, …) so that drift on a shared machine
//! hits all three alike; medians are reported.
//!
//! Then, separately, memory per idle TLS session: thousands of client
//! sessions held open through a pgtier whose cluster is a tiny fake backend
//! (a real cluster cannot hold 10,000 backends on a 2-core machine).
//!
//! This is orchestration, not library code: it shells out to pgbench, psql,
//! pgbouncer and the pgtier binary with `std::process`, and uses `anyhow`.
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

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Rounds of (direct, PgBouncer, pgtier) per workload; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Workloads to run, any of a,b,c,d,e (see bench/README-section.md);
    /// empty for the idle-session measurement alone.
    #[arg(long, default_value = "a,b,c,d,e", value_delimiter = ',')]
    workloads: Vec<String>,
    /// Size of the bulk COPY in workload (e), MiB.
    #[arg(long, default_value_t = 1024)]
    copy_mb: u64,
    /// Free-tier tenants in the fleet workload (c), 2 clients each.
    #[arg(long, default_value_t = 200)]
    free_tenants: usize,
    /// Standard tenants for workloads (a), (b), (d), (e).
    #[arg(long, default_value_t = 10)]
    std_tenants: usize,
    /// Clients spread over the standard tenants in (a), (b), (d).
    #[arg(long, default_value_t = 20)]
    clients: usize,
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
    /// Keep the work directory (configs, logs, pgbench output) for a look.
    #[arg(long)]
    keep: bool,
    /// How both proxies reach the cluster: `tcp` (127.0.0.1) or `unix` (the
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
// The three targets and the workloads.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Direct,
    PgBouncer,
    Pgtier,
}

const TARGETS: [Target; 3] = [Target::Direct, Target::PgBouncer, Target::Pgtier];

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::PgBouncer => "PgBouncer",
            Target::Pgtier => "pgtier",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    Simple,
    Prepared,
    Fleet,
    Churn,
    Copy,
}

impl Workload {
    fn parse(key: &str) -> Result<Workload> {
        Ok(match key.trim() {
            "a" => Workload::Simple,
            "b" => Workload::Prepared,
            "c" => Workload::Fleet,
            "d" => Workload::Churn,
            "e" => Workload::Copy,
            other => bail!("unknown workload {other:?}: use a,b,c,d,e"),
        })
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
        }
    }

    /// The targets: (minimum pgtier/PgBouncer, minimum pgtier/direct).
    fn targets(self) -> (Option<f64>, Option<f64>) {
        match self {
            Workload::Simple | Workload::Prepared | Workload::Fleet => (Some(1.25), Some(0.85)),
            Workload::Churn => (Some(1.0), None),
            Workload::Copy => (None, Some(0.9)),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Workload::Copy => "MiB/s",
            _ => "TPS",
        }
    }
}

/// One run of one workload against one target.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// TPS (summed over the parallel pgbench processes) or MiB/s.
    value: f64,
    /// Mean of the processes' average latencies, ms (pgbench workloads).
    latency_ms: Option<f64>,
    /// Seconds measured.
    window_secs: f64,
    /// All transactions of the run, ramp included: what the proxy's CPU
    /// time is divided by.
    total_queries: u64,
    /// CPU seconds the proxy of this target used during the run.
    proxy_cpu: Option<f64>,
}

// ---------------------------------------------------------------------------
// Orchestration.

fn run(args: RunArgs) -> Result<()> {
    let started = Instant::now();
    let workloads = args
        .workloads
        .iter()
        .filter(|w| !w.trim().is_empty())
        .map(|w| Workload::parse(w))
        .collect::<Result<Vec<_>>>()?;
    raise_fd_limit();

    if !args.no_deps {
        ensure_deps()?;
    }
    let pgtier_bin = match &args.pgtier_bin {
        Some(bin) => bin.clone(),
        None => build_pgtier()?,
    };

    let work = tempfile::Builder::new()
        .prefix("pgtier-bench-")
        .tempdir()
        .context("creating a work directory")?;
    let certs = Certs::generate(work.path()).context("generating certificates")?;

    let mut results: BTreeMap<(Workload, Target), Vec<Sample>> = BTreeMap::new();
    let mut env = None;
    if !workloads.is_empty() {
        let setup = Instant::now();
        // PgBouncer keeps its server connections pooled after its clients
        // leave, so the cluster must hold the fleet twice over.
        let fleet = args.free_tenants * 2;
        let cluster = Cluster::start(ClusterOptions {
            max_connections: (2 * fleet + 4 * args.clients + 100) as u32,
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
        let cluster_host = match args.cluster_link.as_str() {
            "unix" => cluster.socket_dir().display().to_string(),
            _ => "127.0.0.1".to_owned(),
        };
        let bouncer = PgBouncer::start(work.path(), &certs, &cluster_host, &cluster, &tenants)?;
        let proxy = Proxy::start(
            &pgtier_bin,
            work.path(),
            &certs,
            &cluster_host,
            cluster.port(),
            &tenants,
            false,
        )?;
        eprintln!(
            "==> setup took {:.0}s; running {} rounds × {} workloads × 3 targets, {}s each",
            setup.elapsed().as_secs_f64(),
            args.rounds,
            workloads.len(),
            args.seconds
        );

        for round in 1..=args.rounds {
            for &workload in &workloads {
                for target in TARGETS {
                    let (port, proxy_pid) = match target {
                        Target::Direct => (cluster.port(), None),
                        Target::PgBouncer => (bouncer.port, Some(bouncer.child.id())),
                        Target::Pgtier => (proxy.port, Some(proxy.child.id())),
                    };
                    let run_started = Instant::now();
                    let sample = run_workload(
                        workload,
                        &args,
                        &tenants,
                        &cluster,
                        port,
                        work.path(),
                        target,
                        proxy_pid,
                    );
                    let sample = match sample {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!(
                                "    round {round} {:?} {}: FAILED: {e:#}",
                                workload,
                                target.name()
                            );
                            continue;
                        }
                    };
                    eprintln!(
                        "    round {round} {:<8} {:<9} {:>10.1} {}{}  (window {:.1}s of {:.1}s)",
                        format!("{workload:?}"),
                        target.name(),
                        sample.value,
                        workload.unit(),
                        sample
                            .latency_ms
                            .map(|l| format!("  lat {l:.3} ms"))
                            .unwrap_or_default(),
                        sample.window_secs,
                        run_started.elapsed().as_secs_f64(),
                    );
                    results.entry((workload, target)).or_default().push(sample);
                }
            }
        }
        let pgtier_hwm = proc_status_kib(proxy.child.id(), "VmHWM")?;
        let bouncer_hwm = proc_status_kib(bouncer.child.id(), "VmHWM")?;
        env = Some(Env {
            pg_version,
            pgtier_hwm,
            bouncer_hwm,
        });
        drop(proxy);
        drop(bouncer);
        drop(cluster);
    }

    let idle = if args.idle_sessions > 0 {
        Some(idle_sessions(&args, &pgtier_bin, work.path(), &certs)?)
    } else {
        None
    };

    if args.keep {
        eprintln!("==> work directory kept: {}", work.keep().display());
    }
    let report = render_report(&args, &workloads, &results, env.as_ref(), idle.as_ref())?;
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
    pgtier_hwm: u64,
    bouncer_hwm: u64,
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
}

impl Tenants {
    fn all(&self) -> impl Iterator<Item = &Tenant> {
        self.standard.iter().chain(&self.free)
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
        "==> {} standard + {} free tenants created in {:.1}s",
        tenants.standard.len(),
        tenants.free.len(),
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

struct Proxy {
    child: Guard,
    port: u16,
}

impl Proxy {
    /// pgtier with the standard tenants uncapped and everyone else in the
    /// free tier (2 connections), no idle timeouts (they would only add
    /// noise). `fake` marks the idle-session set-up, where every tenant is
    /// standard.
    fn start(
        bin: &Path,
        work: &Path,
        certs: &Certs,
        cluster_host: &str,
        cluster_port: u16,
        tenants: &Tenants,
        fake: bool,
    ) -> Result<Proxy> {
        let port = free_port()?;
        let name = if fake { "pgtier-idle" } else { "pgtier" };
        let mut toml = format!(
            "listen = \"127.0.0.1:{port}\"\n\
             default_tier = \"{tier}\"\n\
             login_timeout = \"60s\"\n\
             shutdown_grace = \"1s\"\n\
             [tls]\n\
             cert = \"{cert}\"\n\
             key = \"{key}\"\n\
             mode = \"require\"\n\
             [cluster]\n\
             host = \"{cluster_host}\"\n\
             port = {cluster_port}\n\
             tls = \"disable\"\n\
             [tiers.free]\n\
             max_connections = 2\n\
             idle_timeout = \"0s\"\n\
             row_limit = 0\n\
             [tiers.standard]\n\
             max_connections = 0\n\
             idle_timeout = \"0s\"\n",
            tier = if fake { "standard" } else { "free" },
            cert = certs.cert_path.display(),
            key = certs.key_path.display(),
        );
        for t in &tenants.standard {
            writeln!(toml, "[tenants.{}]\ntier = \"standard\"", t.name)?;
        }
        let config = work.join(format!("{name}.toml"));
        fs::write(&config, toml)?;
        let log = work.join(format!("{name}.log"));
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("PGTIER_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut child = Guard(child);
        wait_listening(port, &mut child.0, "pgtier", &log)?;
        eprintln!("==> {name} on port {port} (log: {})", log.display());
        Ok(Proxy { child, port })
    }
}

// ---------------------------------------------------------------------------
// Running a workload.

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn run_workload(
    workload: Workload,
    args: &RunArgs,
    tenants: &Tenants,
    cluster: &Cluster,
    port: u16,
    work: &Path,
    target: Target,
    proxy_pid: Option<u32>,
) -> Result<Sample> {
    let per = (args.clients / args.std_tenants.max(1)).max(1);
    let jobs: Vec<(&Tenant, usize, &[&str])> = match workload {
        Workload::Simple => tenants.standard.iter().map(|t| (t, per, &[][..])).collect(),
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
            return run_copy(args, tenant, cluster, port, proxy_pid);
        }
    };
    let logs = work.join("logs");
    fs::create_dir_all(&logs)?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{workload:?}-{}-", target.name()))
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
    // One second of warm-up, then the measured window.
    std::thread::sleep(Duration::from_secs(1));
    let from = unix_now();
    let cpu_from = proxy_pid.map(cpu_seconds).transpose()?;
    std::thread::sleep(Duration::from_secs(args.seconds.into()));
    let to = unix_now();
    let cpu_to = proxy_pid.map(cpu_seconds).transpose()?;
    // Let every process report the second that covers `to`.
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
        if intervals.last().is_none_or(|i| i.end < to) {
            bail!(
                "a pgbench process stopped reporting progress ({}): {}",
                err.display(),
                tail(&err, 3).replace('\n', " / ")
            );
        }
        progress.push(intervals);
    }
    let mut sample = in_window(&progress, from, to);
    sample.proxy_cpu = cpu_from.zip(cpu_to).map(|(a, b)| b - a);
    Ok(sample)
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
        proxy_cpu: None,
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

/// utime + stime of `pid`, seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: f64 = fields.get(11).ok_or_else(|| anyhow!("no utime"))?.parse()?;
    let stime: f64 = fields.get(12).ok_or_else(|| anyhow!("no stime"))?.parse()?;
    Ok((utime + stime) / clock_ticks())
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
    };
    let proxy = Proxy::start(
        pgtier_bin,
        work,
        certs,
        "127.0.0.1",
        backend_port,
        &tenants,
        true,
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

fn render_report(
    args: &RunArgs,
    workloads: &[Workload],
    results: &BTreeMap<(Workload, Target), Vec<Sample>>,
    env: Option<&Env>,
    idle: Option<&IdleResult>,
) -> Result<String> {
    let mut r = String::new();
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
    writeln!(r, "# pgtier benchmark results\n")?;
    writeln!(
        r,
        "{date}; {cores} cores ({cpu_model}); PostgreSQL {}; {bouncer_version}; \
         {}s per run, {} rounds interleaved direct → PgBouncer → pgtier, medians shown. \
         Everything (pgbench, PostgreSQL, the proxy) shares the same cores; every \
         connection is TLS (`sslmode=require`) with SCRAM-SHA-256.\n",
        env.map_or("?", |e| e.pg_version.as_str()),
        args.seconds,
        args.rounds
    )?;
    if !workloads.is_empty() {
        writeln!(
            r,
            "| workload | direct | PgBouncer | pgtier | pgtier/direct | pgtier/PgBouncer | target | pgtier CPU | PgBouncer CPU |"
        )?;
        writeln!(r, "|---|---:|---:|---:|---:|---:|---|---:|---:|")?;
        for &w in workloads {
            let med = |t: Target, f: &dyn Fn(&Sample) -> Option<f64>| {
                median(
                    results
                        .get(&(w, t))
                        .map(|s| s.iter().filter_map(f).collect())
                        .unwrap_or_default(),
                )
            };
            let value = |t| med(t, &|s: &Sample| Some(s.value));
            let latency = |t| med(t, &|s: &Sample| s.latency_ms);
            let cell = |t: Target| match (value(t), latency(t)) {
                (Some(v), Some(l)) => format!("{v:.0} {} ({l:.2} ms)", w.unit()),
                (Some(v), None) => format!("{v:.0} {}", w.unit()),
                _ => "failed".into(),
            };
            let cpu = |t: Target| {
                let per = if w == Workload::Copy {
                    // CPU seconds per GiB moved.
                    med(t, &|s: &Sample| {
                        Some(s.proxy_cpu? / (args.copy_mb as f64 / 1024.0))
                    })
                    .map(|c| format!("{c:.2} s/GiB"))
                } else {
                    med(t, &|s: &Sample| {
                        (s.total_queries > 0)
                            .then(|| s.proxy_cpu.unwrap_or(0.0) * 1e5 / s.total_queries as f64)
                    })
                    .map(|c| format!("{c:.2} s/100k q"))
                };
                per.unwrap_or_else(|| "–".into())
            };
            let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
            let vs_direct = ratio(value(Target::Pgtier), value(Target::Direct));
            let vs_bouncer = ratio(value(Target::Pgtier), value(Target::PgBouncer));
            let (want_bouncer, want_direct) = w.targets();
            let mut goal = Vec::new();
            let mut met = true;
            if let Some(want) = want_bouncer {
                goal.push(format!("≥{want}× PgB"));
                met &= vs_bouncer.is_some_and(|v| v >= want);
            }
            if let Some(want) = want_direct {
                goal.push(format!("≥{want}× direct"));
                met &= vs_direct.is_some_and(|v| v >= want);
            }
            let fmt_ratio = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}×"));
            writeln!(
                r,
                "| {} | {} | {} | {} | {} | {} | {} {} | {} | {} |",
                w.title(args),
                cell(Target::Direct),
                cell(Target::PgBouncer),
                cell(Target::Pgtier),
                fmt_ratio(vs_direct),
                fmt_ratio(vs_bouncer),
                goal.join(", "),
                if met { "✅" } else { "❌" },
                cpu(Target::Pgtier),
                cpu(Target::PgBouncer),
            )?;
        }
        if let Some(env) = env {
            writeln!(
                r,
                "\nPeak RSS over the whole run (VmHWM): pgtier {:.1} MiB, PgBouncer {:.1} MiB.",
                env.pgtier_hwm as f64 / 1024.0,
                env.bouncer_hwm as f64 / 1024.0
            )?;
        }
        writeln!(
            r,
            "\nOne pgbench process per tenant database (`-j 1`, pgbench's select-only \
             script), all held at a start barrier until every one has logged in; TPS is \
             the sum of their per-second progress reports over the same {}s window after a \
             1s warm-up, latency the transaction-weighted mean. The fleet workload runs \
             {} such processes × 2 clients at once. CPU is the proxy process's utime+stime \
             (from /proc) over that window, per 100k transactions (per GiB for COPY, \
             which is timed end to end with psql writing to /dev/null).",
            args.seconds, args.free_tenants
        )?;
    }
    if let Some(idle) = idle {
        let per = (idle.rss_after.saturating_sub(idle.rss_before)) as f64 / idle.sessions as f64;
        writeln!(
            r,
            "\n## Memory per idle TLS session\n\n\
             {} idle TLS client sessions held through pgtier{}, against a **fake backend** \
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
    }
    let mut cmd = format!(
        "cargo run --release --bin pgtier-bench -- --seconds {} --rounds {} --copy-mb {} --idle-sessions {}",
        args.seconds, args.rounds, args.copy_mb, args.idle_sessions
    );
    if args.workloads.join(",") != "a,b,c,d,e" {
        write!(cmd, " --workloads {}", args.workloads.join(","))?;
    }
    writeln!(r, "\nReproduce with `{cmd}`.")?;
    std::io::stderr().flush()?;
    Ok(r)
}
