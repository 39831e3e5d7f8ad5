//! Running one workload against one endpoint: pgbench processes with
//! progress lines, the measured window cut from them, CPU and `perf stat`
//! around it, the bulk COPY of (e), and the attack of (f).

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pgtier_testkit::sandbox::Cluster;

use crate::attack;
use crate::cli::RunArgs;
use crate::perf;
use crate::process::{tail, Guard};
use crate::procfs::{children_cpu_seconds, cpu_seconds, preemptions};
use crate::run::{Bench, Endpoint};
use crate::sample::{RefusalCost, Sample};
use crate::targets::{Target, Workload};
use crate::tenants::{pg_tool, Tenant};

pub(crate) fn run_workload(
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
pub(crate) const REFUSAL_COST_SECS: f64 = 3.0;

/// The attackers of (f), as fast as answered, with nothing else running:
/// CPU per refusal of the proxy, of the cluster and of the attackers.
pub(crate) fn refusal_cost(bench: &Bench, endpoint: Endpoint) -> Result<RefusalCost> {
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
pub(crate) fn attack_plan(bench: &Bench, endpoint: Endpoint, rate: u32) -> Result<attack::Plan> {
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
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One `-P 1` progress report: the interval ending at `end` (Unix seconds).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Interval {
    pub(crate) start: f64,
    pub(crate) end: f64,
    pub(crate) tps: f64,
    pub(crate) latency_ms: f64,
}

/// pgbench's `--progress-timestamp` lines:
/// `progress: 1732575450.123 s, 2563.0 tps, lat 0.780 ms stddev 0.123, 0 failed`.
pub(crate) fn parse_progress(log: &str) -> Vec<Interval> {
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
pub(crate) fn in_window(processes: &[Vec<Interval>], from: f64, to: f64) -> Sample {
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
pub(crate) fn run_copy(
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
