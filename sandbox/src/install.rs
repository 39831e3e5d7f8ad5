//! PostgreSQL installations: which directory holds the programs of the
//! version a sandbox cluster (or a test's client) should run.
//!
//! Two sources exist side by side. The distribution's packages (Debian 12:
//! PostgreSQL 15 under `/usr/lib/postgresql/15/bin`) or a developer's own
//! build (`PG_BIN`, `pg_config`) are the default, as they always were.
//! Newer majors, which the distribution does not carry, are pinned
//! downloads that `scripts/ensure-deps.sh --pg 17,18` unpacks into the
//! repository's `.deps/postgresql-<version>/` (bin/, lib/, share/; the
//! programs find their libraries through their own `$ORIGIN/../lib`
//! run path and their share/ relative to bin/, so nothing else is needed
//! to run them).

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::SandboxError;

/// Where `scripts/ensure-deps.sh` unpacks the pinned downloads. Fixed at
/// compile time: the sandbox serves the tests, the demo and the benchmark
/// harness, which all run from the repository (this crate sits one level
/// below its root).
pub const DEPS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.deps");

/// Which PostgreSQL installation to use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Installation {
    /// The first of `$PG_BIN`, `pg_config --bindir`, the newest
    /// `/usr/lib/postgresql/*/bin`, `PATH`: what the machine itself has.
    #[default]
    Default,
    /// Major version N, wherever it is: the default installation if it is
    /// N, else `/usr/lib/postgresql/N/bin`, else the newest pinned
    /// download `.deps/postgresql-N.*/bin`. Asking for a version that is
    /// not there is an error naming the command that installs it, never a
    /// silent fallback to another version.
    Major(u32),
    /// This directory, which must hold `initdb` (and `postgres` to start a
    /// cluster).
    BinDir(PathBuf),
}

impl Installation {
    /// The directory holding the programs (`initdb`, `postgres`, `psql`, …).
    pub fn bin_dir(&self) -> Result<PathBuf, SandboxError> {
        match self {
            Installation::Default => default_bin_dir(),
            Installation::BinDir(dir) => {
                if has_initdb(dir) {
                    Ok(dir.clone())
                } else {
                    Err(SandboxError::MissingBinary {
                        program: "initdb".into(),
                        searched: dir.display().to_string(),
                    })
                }
            }
            Installation::Major(major) => {
                let mut searched = Vec::new();
                match default_bin_dir() {
                    Ok(dir) if major_version(&dir).ok() == Some(*major) => return Ok(dir),
                    Ok(dir) => searched.push(format!("{} (the default)", dir.display())),
                    Err(_) => searched.push("the default installation".to_owned()),
                }
                for dir in candidates() {
                    if major_version(&dir).ok() == Some(*major) {
                        return Ok(dir);
                    }
                }
                searched.push(format!("/usr/lib/postgresql/{major}/bin"));
                searched.push(format!("{DEPS_DIR}/postgresql-{major}.*/bin"));
                Err(SandboxError::MissingVersion {
                    major: *major,
                    searched: searched.join(", "),
                })
            }
        }
    }
}

/// Every installation on this machine with its major version, newest
/// first, each directory once: the default one, each
/// `/usr/lib/postgresql/*/bin` and each pinned download.
pub fn installations() -> Vec<(u32, PathBuf)> {
    let mut dirs: Vec<PathBuf> = default_bin_dir().into_iter().collect();
    dirs.extend(candidates());
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for dir in dirs {
        let real = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        if found
            .iter()
            .any(|(_, d)| fs::canonicalize(d).unwrap_or_else(|_| d.clone()) == real)
        {
            continue;
        }
        if let Ok(major) = major_version(&dir) {
            found.push((major, dir));
        }
    }
    // Stable: among equal majors the earlier source (the default) wins.
    found.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    found
}

/// The newest installation that has `program`, with its major version:
/// e.g. `psql` 18, whose libpq 18 knows `sslnegotiation=direct`, whatever
/// version the cluster under test runs.
pub fn newest_program(program: &str) -> Option<(u32, PathBuf)> {
    installations()
        .into_iter()
        .map(|(major, dir)| (major, dir.join(program)))
        .find(|(_, path)| path.is_file())
}

/// The major version of the installation in `bin_dir`, asked of its
/// `postgres` (or, in a client-only installation, `psql`) binary, so that
/// a directory's name can never claim a version it does not have.
pub fn major_version(bin_dir: &Path) -> Result<u32, SandboxError> {
    let program = ["postgres", "psql"]
        .iter()
        .map(|name| bin_dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| SandboxError::MissingBinary {
            program: "postgres or psql".into(),
            searched: bin_dir.display().to_string(),
        })?;
    let output = Command::new(&program)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(SandboxError::io(format!(
            "running {} --version",
            program.display()
        )))?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_major(&text).ok_or_else(|| SandboxError::Io {
        what: format!("reading the version of {}", program.display()),
        source: std::io::Error::other(format!("unexpected output {:?}", text.trim())),
    })
}

/// `postgres (PostgreSQL) 18.6` → 18, `psql (PostgreSQL) 15.18 (Debian
/// 15.18-0+deb12u1)` → 15, `… 19beta1` → 19.
pub(crate) fn parse_major(version_output: &str) -> Option<u32> {
    let (_, rest) = version_output.split_once("(PostgreSQL) ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn has_initdb(dir: &Path) -> bool {
    dir.join("initdb").is_file()
}

/// The installations looked at besides the default one: Debian's
/// `/usr/lib/postgresql/*/bin`, then the pinned downloads, each group
/// newest first.
fn candidates() -> Vec<PathBuf> {
    let mut dirs = versioned_dirs(Path::new("/usr/lib/postgresql"), "", "bin");
    dirs.extend(versioned_dirs(Path::new(DEPS_DIR), "postgresql-", "bin"));
    dirs
}

/// `parent/<prefix><version>/<sub>` for each entry whose name is a version
/// and that holds initdb, newest first.
fn versioned_dirs(parent: &Path, prefix: &str, sub: &str) -> Vec<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = version_key(OsStr::new(name.to_str()?.strip_prefix(prefix)?))?;
            let bin = entry.path().join(sub);
            has_initdb(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.into_iter().rev().map(|(_, dir)| dir).collect()
}

/// Where the machine's own PostgreSQL is; see [`Installation::Default`].
fn default_bin_dir() -> Result<PathBuf, SandboxError> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        if has_initdb(&dir) {
            return Ok(dir);
        }
        return Err(SandboxError::MissingBinary {
            program: "initdb".into(),
            searched: format!("PG_BIN={}", dir.display()),
        });
    }
    let mut searched = Vec::new();
    if let Ok(output) = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        if output.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            if has_initdb(&dir) {
                return Ok(dir);
            }
            searched.push(format!("{} (pg_config --bindir)", dir.display()));
        }
    }
    if let Some(bin) = versioned_dirs(Path::new("/usr/lib/postgresql"), "", "bin")
        .into_iter()
        .next()
    {
        return Ok(bin);
    }
    searched.push("/usr/lib/postgresql/*/bin".into());
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.is_file() {
                // Follow symlinks (e.g. /usr/local/bin/initdb ->
                // /usr/lib/postgresql/15/bin/initdb) to find the programs
                // that belong with it.
                let real = fs::canonicalize(&initdb)
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf));
                return Ok(real.filter(|d| has_initdb(d)).unwrap_or(dir));
            }
        }
    }
    searched.push("PATH".into());
    Err(SandboxError::MissingBinary {
        program: "initdb".into(),
        searched: searched.join(", "),
    })
}

/// `"15"` → `[15]`, `"9.6"` → `[9, 6]`, `"18.6.0"` → `[18, 6, 0]`;
/// anything else is not a version.
fn version_key(name: &OsStr) -> Option<Vec<u32>> {
    name.to_str()?
        .split('.')
        .map(|part| part.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = [
            version_key(OsStr::new("9.6")),
            version_key(OsStr::new("15")),
            version_key(OsStr::new("10")),
        ];
        v.sort();
        assert_eq!(v[2], Some(vec![15]));
        assert_eq!(version_key(OsStr::new("main")), None);
        assert_eq!(version_key(OsStr::new("18.6.0")), Some(vec![18, 6, 0]));
    }

    #[test]
    fn majors_from_version_output() {
        assert_eq!(parse_major("postgres (PostgreSQL) 18.6\n"), Some(18));
        assert_eq!(
            parse_major("psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 19beta1"), Some(19));
        assert_eq!(parse_major("something else 18"), None);
    }

    #[test]
    fn pinned_downloads_are_found_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "postgresql-17.9.0",
            "postgresql-17.11.0",
            "postgresql-x",
            "other-18",
        ] {
            let bin = dir.path().join(name).join("bin");
            fs::create_dir_all(&bin).unwrap();
            fs::write(bin.join("initdb"), "").unwrap();
        }
        // Without initdb a directory is no installation.
        fs::create_dir_all(dir.path().join("postgresql-18.0.0/bin")).unwrap();
        let found = versioned_dirs(dir.path(), "postgresql-", "bin");
        assert_eq!(
            found,
            vec![
                dir.path().join("postgresql-17.11.0/bin"),
                dir.path().join("postgresql-17.9.0/bin"),
            ]
        );
    }
}
