//! The Markdown report: medians and per-round ratios of the samples, the
//! goals they are held to, and one section per measurement (the tables,
//! `perf stat` counters, the attack's refusals, idle-session memory), with
//! the method and the command that reproduces the run.

mod counters;
mod refusals;
mod tables;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::process::Command;

use anyhow::Result;

use crate::cli::{RunArgs, ALL_TARGETS, ALL_WORKLOADS};
use crate::idle::IdleResult;
use crate::perf;
use crate::process::pgbouncer_path;
use crate::run::Env;
use crate::sample::Sample;
use crate::targets::{Target, Workload};

pub(crate) fn median(mut values: Vec<f64>) -> Option<f64> {
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
pub(crate) struct Results(BTreeMap<(Workload, Target), Vec<Sample>>);

impl Results {
    pub(crate) fn push(&mut self, workload: Workload, target: Target, sample: Sample) {
        self.0.entry((workload, target)).or_default().push(sample);
    }

    pub(crate) fn get(&self, workload: Workload, target: Target) -> &[Sample] {
        self.0
            .get(&(workload, target))
            .map_or(&[][..], Vec::as_slice)
    }

    pub(crate) fn median(
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
    pub(crate) fn paired(
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
pub(crate) struct Goal {
    pub(crate) workload: Workload,
    pub(crate) num: Target,
    pub(crate) den: Target,
    pub(crate) min: Option<f64>,
    pub(crate) issue: &'static str,
}

pub(crate) fn goals() -> Vec<Goal> {
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
pub(crate) fn ratio_cell(ratios: &[f64]) -> String {
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

pub(crate) struct Report<'a> {
    pub(crate) args: &'a RunArgs,
    pub(crate) workloads: &'a [Workload],
    pub(crate) targets: &'a [Target],
    pub(crate) results: &'a Results,
    pub(crate) env: Option<&'a Env>,
    pub(crate) idle: Option<&'a IdleResult>,
    pub(crate) perf: Option<&'a perf::Support>,
    pub(crate) loads: &'a [(String, String)],
    pub(crate) minutes: f64,
}

impl Report<'_> {
    pub(crate) fn render(&self) -> Result<String> {
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
            "cargo run --release -p pgtier-bench -- --seconds {} --rounds {} --copy-mb {} --idle-sessions {}",
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

    pub(crate) fn header(&self, r: &mut String) -> Result<()> {
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

    pub(crate) fn method(&self, r: &mut String) -> Result<()> {
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

    pub(crate) fn idle(&self, r: &mut String, idle: &IdleResult) -> Result<()> {
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
pub(crate) fn shares_cell(shares: &[f64]) -> String {
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
