//! The report's tables of throughput, goals and CPU per transaction.

use std::fmt::Write as _;

use anyhow::Result;

use crate::targets::{Target, Workload};

use super::*;

impl Report<'_> {
    pub(crate) fn throughput(&self, r: &mut String, table: &[Workload]) -> Result<()> {
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

    pub(crate) fn goals(&self, r: &mut String) -> Result<()> {
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

    pub(crate) fn proxies(&self) -> Vec<Target> {
        self.targets
            .iter()
            .copied()
            .filter(|t| *t != Target::Direct)
            .collect()
    }

    pub(crate) fn cpu(&self, r: &mut String, table: &[Workload]) -> Result<()> {
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
}
