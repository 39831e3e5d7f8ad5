//! A throwaway Redis server for the fleet's tests: `redis-server` on a free
//! loopback port, nothing persisted, stopped when dropped or when the
//! process that started it dies (the same pipe-watching watchdog as the
//! PostgreSQL sandbox).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use pgtier_sandbox::SandboxError;

/// `$1`: the server's PID, `$2`: its directory. Stops both once the owner's
/// end of stdin closes.
const WATCHDOG_SCRIPT: &str = r#"
trap '' INT HUP
while read -r _; do :; done
kill -TERM "$1" 2>/dev/null
sleep 1
kill -KILL "$1" 2>/dev/null
rm -rf -- "$2" 2>/dev/null
"#;

/// A running throwaway Redis.
#[derive(Debug)]
pub struct RedisServer {
    dir: tempfile::TempDir,
    port: u16,
    server: Child,
    watchdog: Option<(Child, ChildStdin)>,
}

/// Where `redis-server` is: `$REDIS_SERVER`, then `PATH`, then Debian's.
pub fn redis_server_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("REDIS_SERVER") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("redis-server"))
        .chain([PathBuf::from("/usr/bin/redis-server")])
        .find(|p| p.is_file())
}

impl RedisServer {
    /// Starts one and waits until it answers.
    pub fn start() -> Result<RedisServer, SandboxError> {
        let dir = tempfile::Builder::new()
            .prefix("pgtier-redis-")
            .tempdir()
            .map_err(SandboxError::io("creating the Redis directory"))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(SandboxError::io("picking a port for Redis"))?;
        let server = spawn(dir.path(), port)?;
        let mut redis = RedisServer {
            dir,
            port,
            server,
            watchdog: None,
        };
        redis.watchdog = Some(redis.spawn_watchdog()?);
        redis.wait_ready()?;
        Ok(redis)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (for tests that signal it themselves).
    pub fn pid(&self) -> u32 {
        self.server.id()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL: everything in memory is lost) and starts
    /// a fresh, empty one on the same port: a store restart.
    pub fn restart(&mut self) -> Result<(), SandboxError> {
        self.kill();
        self.server = spawn(self.dir.path(), self.port)?;
        if let Some((mut old, _)) = self.watchdog.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        self.watchdog = Some(self.spawn_watchdog()?);
        self.wait_ready()
    }

    /// Stops the server without starting another: the store unreachable.
    pub fn kill(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }

    /// Freezes the server (SIGSTOP): connections stay open and what
    /// clients send waits in the kernel, to be run when it
    /// [resumes](Self::resume): a stalled store.
    pub fn stall(&self) -> Result<(), SandboxError> {
        self.signal("STOP")
    }

    /// Lets a [stalled](Self::stall) server run again (SIGCONT).
    pub fn resume(&self) -> Result<(), SandboxError> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> Result<(), SandboxError> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.server.id().to_string())
            .status()
            .map_err(SandboxError::io("signalling redis-server"))?;
        if status.success() {
            Ok(())
        } else {
            Err(SandboxError::Io {
                what: format!("sending SIG{name} to redis-server"),
                source: std::io::Error::other(format!("kill exited with {status}")),
            })
        }
    }

    /// Starts the server again after [`kill`](Self::kill).
    pub fn start_again(&mut self) -> Result<(), SandboxError> {
        self.restart()
    }

    fn wait_ready(&mut self) -> Result<(), SandboxError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.server.try_wait() {
                return Err(SandboxError::Io {
                    what: "starting redis-server".into(),
                    source: std::io::Error::other(format!("it exited with {status}")),
                });
            }
            if Instant::now() > deadline {
                return Err(SandboxError::Io {
                    what: "starting redis-server".into(),
                    source: std::io::Error::other("not listening within 10 s"),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn_watchdog(&self) -> Result<(Child, ChildStdin), SandboxError> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("pgtier-redis-watchdog")
            .arg(self.server.id().to_string())
            .arg(self.dir.path())
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(SandboxError::io("starting the Redis watchdog (sh)"))?;
        let pipe = child.stdin.take().ok_or_else(|| SandboxError::Io {
            what: "starting the Redis watchdog".into(),
            source: std::io::Error::other("no stdin pipe"),
        })?;
        Ok((child, pipe))
    }
}

fn spawn(dir: &Path, port: u16) -> Result<Child, SandboxError> {
    let path = redis_server_path().ok_or_else(|| SandboxError::Io {
        what: "finding redis-server".into(),
        source: std::io::Error::other(
            "redis-server not found: run scripts/ensure-deps.sh (Debian: apt-get install -y redis-server)",
        ),
    })?;
    Command::new(path)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(SandboxError::io("starting redis-server"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some((mut watchdog, _)) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        self.kill();
    }
}
