//! The report's `perf stat` section: counts per transaction of the proxy
//! process and of the machine.

use std::fmt::Write as _;

use anyhow::Result;

use crate::perf;
use crate::targets::Workload;

use super::*;

impl Report<'_> {
    pub(crate) fn perf(&self, r: &mut String) -> Result<()> {
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
}
