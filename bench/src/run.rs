//! One benchmark run from start to report: dependencies, the cluster and
//! tenants, the proxies, every round of every workload against every target
//! (interleaved so that drift on a shared machine hits all alike), the
//! idle-session measurement, the Markdown file.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use pgtier_testkit::sandbox::{Certs, Cluster, ClusterOptions};

use crate::cli::{RunArgs, ALL_TARGETS};
use crate::idle::idle_sessions;
use crate::perf;
use crate::pgbouncer::PgBouncer;
use crate::process::{build_pgtier, ensure_deps, raise_fd_limit};
use crate::procfs::{loadavg, proc_status_kib};
use crate::proxy::{Flavor, Proxy};
use crate::report::{Report, Results};
use crate::targets::{Target, Workload};
use crate::tenants::{create_service_roles, create_tenants, Tenants};
use crate::workload::run_workload;

/// What a run needs to reach a target.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Endpoint {
    pub(crate) target: Target,
    pub(crate) port: u16,
    /// The proxy process whose CPU is measured (none for direct).
    pub(crate) pid: Option<u32>,
}

/// What every run of a workload shares.
pub(crate) struct Bench<'a> {
    pub(crate) args: &'a RunArgs,
    pub(crate) tenants: &'a Tenants,
    pub(crate) cluster: &'a Cluster,
    pub(crate) work: &'a Path,
    pub(crate) certs: &'a Certs,
    /// `perf stat`, where it works and is wanted.
    pub(crate) perf: Option<&'a perf::Support>,
}

pub(crate) fn run(args: RunArgs) -> Result<()> {
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
        crate::repo_root().join(&args.out)
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

pub(crate) struct Env {
    pub(crate) pg_version: String,
    /// Peak RSS (VmHWM) of each proxy over the whole run, KiB.
    pub(crate) hwm: BTreeMap<Target, u64>,
}
