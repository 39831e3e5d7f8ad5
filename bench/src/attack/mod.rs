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

mod client;
mod figures;

use client::{terminate, Client, Outcome};
pub use figures::{Figures, Snapshot};

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::procfs::cpu_seconds_at;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// How long one attempt may take before it counts as timed out.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest server message an attempt reads: a bound on what a broken
/// peer can make the attacker allocate, not a protocol limit.
const MAX_FRAME: usize = 64 * 1024;

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
