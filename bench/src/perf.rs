//! `perf stat` around the measured window of (a) and (b): context
//! switches, CPU migrations, task clock and page faults of the proxy
//! process (all its threads) and context switches and migrations of the
//! whole machine, per transaction. Hardware counters (instructions,
//! cycles) only where the machine has them: a VM without a PMU answers
//! `<not supported>`, and the report says so.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::Guard;

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
