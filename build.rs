//! Puts the git commit the binary is built from into `BUILD_GIT_COMMIT`,
//! for `pgtier --version`: an operator with a misbehaving proxy can say
//! exactly what runs. Built from a tarball without `.git` (or without git
//! installed) it is `BUILD_GIT_COMMIT` from the build's environment if set
//! (a packager's own record), else "unknown"; the build never fails for it.
//!
//! Not `PGTIER_…`: that prefix is the proxy's configuration namespace, and
//! cargo also sets this variable for the tests it runs, whose `pgtier`
//! processes would refuse it as an unknown key.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=BUILD_GIT_COMMIT");
    let commit = std::env::var("BUILD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    // Run again when HEAD moves: HEAD itself (a checkout) and the branch it
    // names (a commit), wherever this checkout or worktree keeps them.
    if commit.is_some() {
        // Only files that exist: cargo counts a missing one as changed on
        // every build (a repository with no packed refs yet has no
        // `packed-refs`), and would rebuild the crate each time.
        for path in ["HEAD", "packed-refs"] {
            if let Some(file) = git(&["rev-parse", "--git-path", path]) {
                if std::path::Path::new(&file).exists() {
                    println!("cargo:rerun-if-changed={file}");
                }
            }
        }
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            if let Some(file) = git(&["rev-parse", "--git-path", &branch]) {
                println!("cargo:rerun-if-changed={file}");
            }
        }
    }
    println!(
        "cargo:rustc-env=BUILD_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
