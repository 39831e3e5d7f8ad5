//! Installing pgtier like the software operators already run: the built
//! binary speaks systemd's readiness protocol on a datagram socket the test
//! owns (`READY=1` only once the port accepts, `RELOADING=1` … `READY=1`
//! around a SIGHUP or `POST /reload`, `STOPPING=1` on SIGTERM),
//! `--version` names the commit, and the Debian package built from the
//! debug binary (scripts/package.sh;
//! the release build is for a real release only) holds the right files,
//! modes, conffiles, maintainer scripts, man pages and a unit that
//! `systemd-analyze verify` accepts.
//!
//! No PostgreSQL cluster is needed: the proxy is configured without TLS and
//! without the row quota, and these tests never log in through it.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pgtier");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The `pgtier` binary with none of the caller's `PGTIER_…` variables
/// (which would override the configuration under test) nor its
/// `NOTIFY_SOCKET`.
fn pgtier() -> Command {
    let mut command = Command::new(BIN);
    command
        .env("NO_COLOR", "1")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null());
    for (name, _) in std::env::vars() {
        if name.starts_with("PGTIER_") {
            command.env_remove(name);
        }
    }
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run a command")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A free loopback port (bound, then released for pgtier to take).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A config that runs without a cluster: no TLS, no row quota.
fn config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{port}\"\nshutdown_grace = \"5s\"\n\
             [tls]\nmode = \"disable\"\n[tiers.free]\nrow_limit = 0\n"
        ),
    )
    .unwrap();
    path
}

/// The service manager's end of `NOTIFY_SOCKET`: a datagram socket the
/// test binds, and what pgtier sent to it.
struct Manager {
    socket: UnixDatagram,
    /// The value of `NOTIFY_SOCKET`.
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl Manager {
    /// At a path in a fresh directory.
    fn at_path() -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Manager {
            socket,
            name: path.display().to_string(),
            _dir: Some(dir),
        }
    }

    /// In Linux's abstract namespace (`@name`), as systemd itself binds it.
    fn abstract_name() -> Manager {
        let name = format!("pgtier-test-notify-{}-{}", std::process::id(), free_port());
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        Manager {
            socket,
            name: format!("@{name}"),
            _dir: None,
        }
    }

    /// The next notification, as `KEY=value` pairs, within `within`.
    fn next(&self, within: Duration) -> Option<BTreeMap<String, String>> {
        self.socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(
            text(&buf[..n])
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// The next notification, which must come within 10 s.
    fn expect(&self, what: &str) -> BTreeMap<String, String> {
        self.next(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no notification within 10 s; expected {what}"))
    }
}

/// pgtier run under `manager`, killed when dropped.
struct Service(Child);

impl Service {
    fn start(config: &Path, manager: &Manager) -> Service {
        let child = pgtier()
            .args(["run", "--config", config.to_str().unwrap()])
            .env("NOTIFY_SOCKET", &manager.name)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgtier");
        Service(child)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name}");
    }

    fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "pgtier still running after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[test]
fn ready_is_sent_once_the_port_accepts_connections() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let manager = Manager::at_path();
    let _service = Service::start(&config(dir.path(), port), &manager);
    let ready = manager.expect("READY=1");
    assert_eq!(
        ready.get("READY").map(String::as_str),
        Some("1"),
        "{ready:?}"
    );
    // The moment the manager hears READY=1, a client is accepted: a unit
    // ordered after pgtier never meets a refused connection.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .expect("the port accepts as soon as READY=1 is sent");
    assert!(
        manager.next(Duration::from_millis(200)).is_none(),
        "one READY=1, then nothing until something changes"
    );
}

#[test]
fn a_proxy_that_cannot_bind_never_says_ready() {
    let dir = tempfile::tempdir().unwrap();
    // The test holds the port: pgtier's bind fails.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let manager = Manager::at_path();
    let mut service = Service::start(&config(dir.path(), port), &manager);
    let status = service.exited(Duration::from_secs(10));
    assert!(!status.success(), "{status}");
    assert_eq!(
        manager.next(Duration::from_millis(100)),
        None,
        "no notification from a proxy that is not listening"
    );
}

#[test]
fn sighup_is_bracketed_by_reloading_and_ready_and_sigterm_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = config(dir.path(), port);
    // systemd binds NOTIFY_SOCKET in the abstract namespace.
    let manager = Manager::abstract_name();
    let mut service = Service::start(&path, &manager);
    assert_eq!(manager.expect("READY=1").get("READY").unwrap(), "1");

    let before = monotonic_usec();
    service.signal("HUP");
    let reloading = manager.expect("RELOADING=1");
    let after = monotonic_usec();
    assert_eq!(
        reloading.get("RELOADING").map(String::as_str),
        Some("1"),
        "{reloading:?}"
    );
    // Type=notify-reload (systemd 253+) tells this reload from an older one
    // by CLOCK_MONOTONIC in microseconds.
    let stamp: u64 = reloading
        .get("MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"));
    assert!(
        (before..=after).contains(&stamp),
        "{before} <= {stamp} <= {after}"
    );
    let ready = manager.expect("READY=1 after the reload");
    assert_eq!(
        ready.get("READY").map(String::as_str),
        Some("1"),
        "{ready:?}"
    );
    assert_eq!(
        ready.get("STATUS").map(String::as_str),
        Some("accepting connections")
    );

    // A broken file: still bracketed, the manager is told it failed, and
    // the proxy serves on with the old configuration.
    std::fs::write(&path, "listen = 5\n").unwrap();
    service.signal("HUP");
    assert_eq!(manager.expect("RELOADING=1").get("RELOADING").unwrap(), "1");
    let ready = manager.expect("READY=1 after a failed reload");
    assert_eq!(
        ready.get("READY").map(String::as_str),
        Some("1"),
        "{ready:?}"
    );
    assert!(
        ready
            .get("STATUS")
            .is_some_and(|s| s.contains("reload failed")),
        "{ready:?}"
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).expect("still serving");

    service.signal("TERM");
    let stopping = manager.expect("STOPPING=1");
    assert_eq!(
        stopping.get("STOPPING").map(String::as_str),
        Some("1"),
        "{stopping:?}"
    );
    assert!(service.exited(Duration::from_secs(10)).success());
}

/// `POST /reload` (the admin API's status code; within 10 s for the API to
/// come up).
fn post_reload(admin: u16) -> u16 {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let end = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(stream) => break stream,
            Err(e) => {
                assert!(Instant::now() < end, "the admin API never came up: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    stream
        .write_all(
            b"POST /reload HTTP/1.1\r\nHost: pgtier\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP reply: {reply:?}"))
}

/// A reload through the operator API is a reload like SIGHUP's: the
/// manager hears it bracketed by `RELOADING=1` … `READY=1` (systemd would
/// otherwise never know the unit reloaded), and a failed one says so.
#[test]
fn an_api_reload_is_bracketed_like_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let path = config(dir.path(), port);
    let with_admin = |rest: &str| format!("admin_listen = \"127.0.0.1:{admin}\"\n{rest}");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, with_admin(&text)).unwrap();
    let manager = Manager::at_path();
    let mut service = Service::start(&path, &manager);
    assert_eq!(manager.expect("READY=1").get("READY").unwrap(), "1");

    assert_eq!(post_reload(admin), 200);
    let reloading = manager.expect("RELOADING=1 for the API's reload");
    assert_eq!(
        reloading.get("RELOADING").map(String::as_str),
        Some("1"),
        "{reloading:?}"
    );
    assert!(reloading.contains_key("MONOTONIC_USEC"), "{reloading:?}");
    let ready = manager.expect("READY=1 after the API's reload");
    assert_eq!(
        ready.get("STATUS").map(String::as_str),
        Some("accepting connections"),
        "{ready:?}"
    );

    std::fs::write(&path, with_admin("listen = 5\n")).unwrap();
    assert_eq!(post_reload(admin), 400);
    assert_eq!(manager.expect("RELOADING=1").get("RELOADING").unwrap(), "1");
    let ready = manager.expect("READY=1 after a failed API reload");
    assert!(
        ready
            .get("STATUS")
            .is_some_and(|s| s.contains("reload failed")),
        "{ready:?}"
    );
    service.signal("TERM");
    assert_eq!(manager.expect("STOPPING=1").get("STOPPING").unwrap(), "1");
    assert!(service.exited(Duration::from_secs(10)).success());
}

#[test]
fn version_names_the_commit() {
    let out = run(pgtier().arg("--version"));
    assert!(out.status.success());
    let version = text(&out.stdout);
    let expected = format!("pgtier {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&expected), "{version}");
    let commit = version
        .trim()
        .trim_start_matches(&expected)
        .trim_end_matches(')');
    let head = Command::new("git")
        .args(["-C", ROOT, "rev-parse", "--short=12", "HEAD"])
        .output();
    match head {
        Ok(head) if head.status.success() => {
            assert_eq!(commit, text(&head.stdout).trim(), "built from HEAD")
        }
        // A tarball without .git: build.rs says so rather than failing.
        _ => assert_eq!(commit, "unknown"),
    }
}

/// One entry of `dpkg-deb -c`: mode string, owner/group, path.
fn contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    let out = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields[5].trim_start_matches('.').to_owned();
            (path, (fields[0].to_owned(), fields[1].to_owned()))
        })
        .collect()
}

/// Builds the package from the debug binary into a fresh directory.
fn build_package(out: &Path) -> PathBuf {
    let built = run(
        Command::new(Path::new(ROOT).join("scripts/package.sh")).args([
            "--binary",
            BIN,
            "--out",
            out.to_str().unwrap(),
            "--compress",
            "none",
        ]),
    );
    assert!(
        built.status.success(),
        "package.sh: {}",
        text(&built.stderr)
    );
    let deb = PathBuf::from(text(&built.stdout).trim());
    assert!(deb.is_file(), "{}", deb.display());
    deb
}

/// The keys in the first column of the README's configuration table.
fn readme_keys() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let mut keys = Vec::new();
    let mut table = false;
    for line in readme.lines() {
        if line.starts_with("| key | default | meaning |") {
            table = true;
            continue;
        }
        if !table || line.starts_with("|---") {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        let first = line.split('|').nth(1).unwrap_or("");
        for (i, part) in first.split('`').enumerate() {
            if i % 2 == 1 {
                for key in part.split_whitespace() {
                    let key = key.trim_matches(',');
                    if !key.starts_with('[') && !key.is_empty() {
                        keys.push(key.to_owned());
                    }
                }
            }
        }
    }
    assert!(keys.len() > 20, "the README's key table: {keys:?}");
    keys
}

#[test]
fn the_debian_package_holds_what_an_operator_needs() {
    let work = tempfile::tempdir().unwrap();
    let deb = build_package(&work.path().join("out"));

    // Files, modes, owners.
    let files = contents(&deb);
    let expect = [
        ("/usr/bin/pgtier", "-rwxr-xr-x"),
        ("/etc/pgtier/proxy.toml", "-rw-r-----"),
        ("/etc/default/pgtier", "-rw-------"),
        ("/lib/systemd/system/pgtier.service", "-rw-r--r--"),
        ("/usr/share/man/man1/pgtier.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/pgtier-run.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/pgtier-check.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man5/pgtier.toml.5.gz", "-rw-r--r--"),
        ("/usr/share/doc/pgtier/copyright", "-rw-r--r--"),
    ];
    for (path, mode) in expect {
        let (m, owner) = files
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not in the package: {files:?}"));
        assert_eq!(m, mode, "{path}");
        assert_eq!(owner, "root/root", "{path}");
    }
    for (path, (_, owner)) in &files {
        assert_eq!(owner, "root/root", "{path}: nothing owned by the builder");
    }

    // Control data: conffiles, maintainer scripts, fields.
    let control = work.path().join("control");
    let out = run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        ["/etc/pgtier/proxy.toml", "/etc/default/pgtier"]
    );
    use std::os::unix::fs::PermissionsExt;
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{script}");
        let syntax = run(Command::new("sh").arg("-n").arg(&path));
        assert!(
            syntax.status.success(),
            "{script}: {}",
            text(&syntax.stderr)
        );
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    for needle in [
        "adduser --system",
        "install -d -o pgtier -g pgtier -m 0750 /var/lib/pgtier",
        "gen-cert --dir /etc/pgtier/ssl",
    ] {
        assert!(postinst.contains(needle), "postinst lacks {needle}");
    }
    // Removal leaves state and user alone; only purge takes them.
    let postrm = std::fs::read_to_string(control.join("postrm")).unwrap();
    let purge = postrm.split("purge)").nth(1).expect("a purge branch");
    let purge = purge.split(";;").next().unwrap();
    assert!(purge.contains("rm -rf /var/lib/pgtier"), "{postrm}");
    assert!(purge.contains("deluser --system"), "{postrm}");
    assert_eq!(postrm.matches("/var/lib/pgtier").count(), 1, "{postrm}");
    let field = |name: &str| {
        let out = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name));
        text(&out.stdout).trim().to_owned()
    };
    assert_eq!(field("Package"), "pgtier");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert!(field("Depends").contains("adduser"), "{}", field("Depends"));

    // The tree itself.
    let tree = work.path().join("tree");
    let out = run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let packaged = tree.join("usr/bin/pgtier");
    let version = run(Command::new(&packaged).arg("--version"));
    assert!(
        text(&version.stdout).starts_with("pgtier "),
        "the packaged binary runs"
    );

    // The conffile: secure by default, and valid once postinst's
    // certificate exists (here: a pair of the test's own, by environment).
    let conf_path = tree.join("etc/pgtier/proxy.toml");
    let conf = std::fs::read_to_string(&conf_path).unwrap();
    for line in conf.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let key = line.split('=').next().unwrap().trim();
        assert!(
            key != "password" && key != "admin_token",
            "a secret in the packaged proxy.toml: {line}"
        );
    }
    let parsed = pgtier::config::Config::from_toml_str(&conf).expect("packaged proxy.toml");
    assert!(parsed.admin_listen.expect("admin API").ip().is_loopback());
    assert_eq!(
        parsed.state_dir.as_deref(),
        Some(Path::new("/var/lib/pgtier"))
    );
    assert!(
        parsed.tenants.is_empty(),
        "no example tenants in the package"
    );
    let certs = work.path().join("certs");
    let gen = run(pgtier().args(["gen-cert", "--dir", certs.to_str().unwrap()]));
    assert!(gen.status.success(), "{}", text(&gen.stderr));
    let check = run(pgtier()
        .args(["check", "--config", conf_path.to_str().unwrap()])
        .env("PGTIER_TLS__CERT", certs.join("server.crt"))
        .env("PGTIER_TLS__KEY", certs.join("server.key")));
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(
        !text(&check.stderr).contains("warning"),
        "{}",
        text(&check.stderr)
    );
    let env_file = std::fs::read_to_string(tree.join("etc/default/pgtier")).unwrap();
    for name in [
        "PGTIER_AUTH__PASSWORD",
        "PGTIER_QUOTA__PASSWORD",
        "PGTIER_ADMIN_TOKEN",
    ] {
        assert!(
            env_file.contains(&format!("#{name}=\n")),
            "{name} in /etc/default/pgtier"
        );
    }

    // The unit.
    let unit = std::fs::read_to_string(tree.join("lib/systemd/system/pgtier.service")).unwrap();
    let directives: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for needed in [
        "Type=notify",
        "User=pgtier",
        "EnvironmentFile=-/etc/default/pgtier",
        "ExecStartPre=/usr/bin/pgtier check --config /etc/pgtier/proxy.toml",
        "ExecStart=/usr/bin/pgtier run --config /etc/pgtier/proxy.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/pgtier",
        "CapabilityBoundingSet=",
    ] {
        assert!(directives.contains(&needed), "the unit lacks {needed}");
    }
    let nofile: usize = directives
        .iter()
        .find_map(|d| d.strip_prefix("LimitNOFILE="))
        .and_then(|v| v.parse().ok())
        .expect("LimitNOFILE");
    // Two descriptors per client connection (client, cluster), and room.
    assert!(
        nofile > 2 * parsed.max_client_connections,
        "LimitNOFILE={nofile}"
    );
    if let Ok(analyze) = Command::new("systemd-analyze").arg("--version").output() {
        if analyze.status.success() {
            // verify wants the commands to exist: point them at the tree.
            let copy = work.path().join("pgtier.service");
            std::fs::write(
                &copy,
                unit.replace("/usr/bin/pgtier", packaged.to_str().unwrap()),
            )
            .unwrap();
            let verify = run(Command::new("systemd-analyze")
                .args(["verify", "--man=no"])
                .arg(&copy));
            assert!(verify.status.success(), "{}", text(&verify.stderr));
            assert_eq!(text(&verify.stderr), "", "systemd-analyze verify is silent");
        }
    }

    // Man pages render without a warning; pgtier.toml(5) names every key
    // of the README's table, pgtier(1) every command.
    let render = |page: &Path| {
        let out = run(Command::new("man")
            .args(["-l", "--warnings", "-E", "UTF-8"])
            .arg(page)
            .env("MANWIDTH", "200"));
        assert!(
            out.status.success(),
            "{}: {}",
            page.display(),
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr), "", "{}: warnings", page.display());
        text(&out.stdout)
    };
    let five = render(&tree.join("usr/share/man/man5/pgtier.toml.5.gz"));
    for key in readme_keys() {
        assert!(five.contains(&key), "pgtier.toml(5) lacks {key}");
    }
    let one = render(&tree.join("usr/share/man/man1/pgtier.1.gz"));
    for command in ["run", "check", "gen-cert", "demo", "--config", "--version"] {
        assert!(one.contains(command), "pgtier(1) lacks {command}");
    }
}
