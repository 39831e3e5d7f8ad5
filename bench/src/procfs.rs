//! Readings from `/proc`: load averages, CPU seconds of a process and its
//! children, involuntary context switches, memory figures.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, Result};

/// The machine's load averages (1, 5, 15 minutes): the harness shares
/// the cores with whatever else runs, and the report says how busy they
/// were.
pub(crate) fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid` (all its threads), seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    cpu_seconds_at(Path::new(&format!("/proc/{pid}/stat")))
}

/// utime + stime from a `/proc/…/stat` file (a process's or one thread's).
pub(crate) fn cpu_seconds_at(path: &Path) -> Result<f64> {
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
pub(crate) fn preemptions(pid: u32) -> Result<f64> {
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
pub(crate) fn children_cpu_seconds(pid: u32) -> Result<f64> {
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
pub(crate) fn proc_status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no {key} in /proc/{pid}/status"))
}
