//! The `pgtier` command line: `check` explains a bad config in one line
//! with its location and exits 2; `--help` names the commands.

use std::process::Command;

fn pgtier(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgtier"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run pgtier")
}

fn write_config(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn check_accepts_a_valid_config() {
    let (_dir, path) = write_config(
        "[tls]\nmode = \"disable\"\n[quota]\nuser = \"q\"\n[tenants.acme]\ntier = \"standard\"\n",
    );
    let out = pgtier(&["check", "--config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

#[test]
fn check_names_line_and_key_of_a_bad_value_and_exits_2() {
    let (_dir, path) = write_config(
        "listen = \"127.0.0.1:6432\"\n[tls]\nmode = \"disable\"\n[tiers.free]\nmax_connections = \"two\"\n",
    );
    let out = pgtier(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("line 5"), "{stderr}");
    assert!(stderr.contains("max_connections"), "{stderr}");
}

#[test]
fn run_with_a_missing_certificate_fails_cleanly_with_2() {
    let (_dir, path) = write_config(
        "[tls]\ncert = \"/nonexistent/server.crt\"\nkey = \"/nonexistent/server.key\"\n[quota]\nuser = \"q\"\n",
    );
    let out = pgtier(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/server.crt"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unknown_keys_and_tiers_are_errors() {
    let (_dir, path) = write_config("[tls]\nmode = \"disable\"\n[tenants.x]\ntier = \"gold\"\n");
    let out = pgtier(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tenants.x.tier"));
}

#[test]
fn environment_overrides_reach_check() {
    let (_dir, path) = write_config("[tls]\nmode = \"disable\"\n");
    let out = Command::new(env!("CARGO_BIN_EXE_pgtier"))
        .args(["check", "--config", path.to_str().unwrap()])
        .env("PGTIER_CLUSTER__PORT", "not-a-port")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PGTIER_CLUSTER__PORT"));
}

#[test]
fn help_explains_the_commands() {
    let out = pgtier(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["check", "demo", "run", "--config"] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
}

#[test]
fn the_shipped_proxy_toml_is_valid_apart_from_its_certificate() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")).unwrap();
    let config = pgtier::config::Config::from_toml_str(&text).expect("proxy.toml parses");
    assert_eq!(config.limits_for("hobby").max_connections, 3);
    assert_eq!(config.limits_for("acme_prod").max_connections, 0);
    assert_eq!(config.limits_for("someone_else").max_connections, 2);
}
