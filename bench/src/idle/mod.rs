//! Memory per idle TLS session: thousands of sessions held open through a
//! pgtier whose cluster is the fake backend ([`crate::fake`]), RSS before
//! and after.

mod clients;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use pgtier_testkit::sandbox::Certs;

use crate::cli::RunArgs;
use crate::process::{free_port, wait_listening, Guard};
use crate::procfs::proc_status_kib;
use crate::proxy::{Flavor, Proxy};
use crate::tenants::{ServiceRoles, Tenant, Tenants};

pub(crate) struct IdleResult {
    pub(crate) sessions: usize,
    pub(crate) requested: usize,
    pub(crate) rss_before: u64,
    pub(crate) rss_after: u64,
    pub(crate) hwm: u64,
    pub(crate) open_secs: f64,
}

pub(crate) fn idle_sessions(
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
        capped: None,
    };
    let proxy = Proxy::start(
        pgtier_bin,
        work,
        certs,
        "127.0.0.1",
        backend_port,
        &tenants,
        Flavor::Fake,
        &ServiceRoles::default(),
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
    let held = rt.block_on(clients::open(proxy.port, &certs.ca_pem, sessions, &tenants))?;
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
