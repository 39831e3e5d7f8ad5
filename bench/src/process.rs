//! Child processes and the tools they come from: set-up commands checked,
//! dependencies installed, the pgtier binary built, a port waited on, and
//! [`Guard`], which stops a child when dropped.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Runs a set-up command to completion; a failure carries its stderr.
pub(crate) fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Soft open-file limit up to the hard one, for this process and (inherited)
/// the pgtier it starts: the idle-session test needs two descriptors per
/// session in pgtier.
pub(crate) fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }
}
pub(crate) fn ensure_deps() -> Result<()> {
    let script = crate::repo_root().join("scripts/ensure-deps.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg("--bench")
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} --bench failed ({status})", script.display());
    }
    if pgbouncer_path().is_none() {
        eprintln!("==> installing pgbouncer");
        let status = Command::new("apt-get")
            .args(["install", "-y", "-qq", "pgbouncer"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if !status.success() || pgbouncer_path().is_none() {
            bail!("pgbouncer is not installed and could not be installed");
        }
    }
    Ok(())
}

pub(crate) fn pgbouncer_path() -> Option<PathBuf> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| which("pgbouncer"))
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    })
}

pub(crate) fn build_pgtier() -> Result<PathBuf> {
    eprintln!("==> cargo build --release --bin pgtier");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--bin",
            "pgtier",
            "--message-format=short",
        ])
        .current_dir(crate::repo_root())
        .stdout(Stdio::null())
        .status()
        .context("running cargo build")?;
    if !out.success() {
        bail!("cargo build --release --bin pgtier failed");
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target"));
    let bin = target_dir.join("release/pgtier");
    if !bin.exists() {
        bail!("{} not found after the build", bin.display());
    }
    Ok(bin)
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_listening(port: u16, child: &mut Child, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited ({status}): {}", tail(log, 10));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} not listening on {port}: {}", tail(log, 10))
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // Already reaped: its pid may belong to someone else by now.
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Guard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}
