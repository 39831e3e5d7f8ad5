//! The report's section on workload (f): what the paying tenants kept
//! while attackers were refused, and what each refusal cost.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;

use crate::attack;
use crate::sample::RefusalCost;
use crate::targets::{Target, Workload};
use crate::workload::REFUSAL_COST_SECS;

use super::*;

impl Report<'_> {
    pub(crate) fn attack(&self, r: &mut String) -> Result<()> {
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

    pub(crate) fn attack_row(
        &self,
        r: &mut String,
        w: Workload,
        rate: u32,
        t: Target,
    ) -> Result<()> {
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
}
