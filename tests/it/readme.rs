//! The README's configuration table is the operator's reference: every
//! default it states is the default the proxy runs with. The table is read
//! from README.md at test time, so the two cannot drift: a changed default,
//! or a new single-key row whose default this file does not know, fails.

use std::time::Duration;

use pgtier::config::Config;
use pgtier::rules::classify::DenyKind;

/// The rows of the table under "Running it for real": (key cell, default
/// cell), backticks kept.
fn readme_rows() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let table = readme
        .split("| key | default | meaning |")
        .nth(1)
        .expect("the configuration table");
    table
        .lines()
        .skip(2) // the header's underline, after the split's own line end
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].to_owned(), cells[2].to_owned())
        })
        .collect()
}

/// What a config must say besides the defaults: TLS (a certificate is
/// required by default) and the quota role (the free tier has a row limit).
const NO_TLS: &str = "[tls]\nmode = \"disable\"\n[quota]\nuser = \"q\"\npassword = \"p\"\n";

fn humantime(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The default the proxy runs with for a top-level key, rendered as the
/// README writes it; `None` for a key this test does not know.
fn actual(config: &Config, key: &str) -> Option<String> {
    Some(match key {
        "listen" => config.listen.to_string(),
        "default_tier" => config.default_tier.clone(),
        "login_timeout" => humantime(config.login_timeout),
        "shutdown_grace" => humantime(config.shutdown_grace),
        "max_client_connections" => config.max_client_connections.to_string(),
        "max_pending_logins" => config.max_pending_logins.to_string(),
        "max_pending_logins_per_tenant" => config.max_pending_logins_per_tenant.to_string(),
        "worker_threads" => config.worker_threads.to_string(),
        "threading" => format!("{:?}", config.threading),
        "log_format" => format!("{:?}", config.log_format),
        "log_refusals_per_second" => config.log_refusals_per_second.to_string(),
        "metrics_series_ttl" => humantime(config.metrics_series_ttl),
        "server_idle_timeout" => humantime(config.server_idle_timeout),
        "max_warm_backends" => config.max_warm_backends.to_string(),
        _ => return None,
    })
}

/// `per-core` and `PerCore`, `text` and `Text` are the same value.
fn same(readme: &str, actual: &str) -> bool {
    let norm = |s: &str| s.replace(['-', '_'], "").to_ascii_lowercase();
    norm(readme) == norm(actual)
}

#[test]
fn every_top_level_default_in_the_readme_is_the_proxys() {
    let config = Config::from_toml_str(NO_TLS).expect("a config of defaults is valid");
    let mut checked = 0;
    for (key, default) in readme_rows() {
        // Single-key rows with a single default: `key` | `value`.
        let (Some(key), Some(default)) = (
            key.strip_prefix('`').and_then(|k| k.strip_suffix('`')),
            default.strip_prefix('`').and_then(|d| d.strip_suffix('`')),
        ) else {
            continue;
        };
        if key.contains(['`', ' ', '[']) || default.contains('`') {
            continue;
        }
        let actual = actual(&config, key).unwrap_or_else(|| {
            panic!("README's configuration table names `{key}`, which this test does not know")
        });
        assert!(
            same(default, &actual),
            "README says `{key}` defaults to {default}; the proxy runs with {actual}"
        );
        checked += 1;
    }
    assert!(
        checked >= 12,
        "only {checked} rows checked: the table's format changed?"
    );
}

#[test]
fn the_tiers_defaults_in_the_readme_are_the_proxys() {
    let (keys, defaults) = readme_rows()
        .into_iter()
        .find(|(k, _)| k.starts_with("`[tiers.NAME]"))
        .expect("the [tiers.NAME] row");
    let keys: Vec<String> = keys
        .split(',')
        .map(|k| {
            k.replace("[tiers.NAME]", "")
                .replace('`', "")
                .trim()
                .to_owned()
        })
        .collect();
    let config = Config::from_toml_str(&format!(
        "{NO_TLS}[tenants.f]\ntier = \"free\"\n[tenants.s]\ntier = \"standard\"\n"
    ))
    .expect("valid");
    for part in defaults.split(';') {
        let (tier, values) = part.trim().split_once(": ").expect("tier: values");
        let values: Vec<&str> = values.split(", ").map(str::trim).collect();
        assert_eq!(
            values.len(),
            keys.len(),
            "README's {tier} defaults {values:?} do not name one value per key {keys:?}"
        );
        let limits = config.limits_for(if tier == "free" { "f" } else { "s" });
        for (key, value) in keys.iter().zip(values) {
            let actual = match key.as_str() {
                "max_connections" => limits.max_connections.to_string(),
                "idle_timeout" => humantime(limits.idle_timeout),
                "idle_in_transaction_timeout" => {
                    if limits.idle_in_transaction_timeout == limits.idle_timeout {
                        "as idle_timeout".to_owned()
                    } else {
                        humantime(limits.idle_in_transaction_timeout)
                    }
                }
                "statement_timeout" => humantime(limits.statement_timeout),
                "row_limit" => limits.row_limit.to_string(),
                "storage_limit" => match limits.storage_limit {
                    0 => "0".to_owned(),
                    b if b % (1 << 30) == 0 => format!("{}GB", b >> 30),
                    b if b % (1 << 20) == 0 => format!("{}MB", b >> 20),
                    b => b.to_string(),
                },
                "deny" => match DenyKind::ALL
                    .iter()
                    .filter(|k| limits.deny.contains(**k))
                    .count()
                {
                    0 => "none".to_owned(),
                    4 => "all four kinds".to_owned(),
                    n => format!("{n} kinds"),
                },
                other => panic!("README's tier row names `{other}`, which this test does not know"),
            };
            // `"256MB"` in the README is the TOML a reader would write.
            let value = value.trim_matches(['`', '"']);
            assert_eq!(value, actual, "README's {tier} default for {key}");
        }
    }
}

/// The metric names README.md's operator API table lists for `/metrics`.
fn readme_metrics() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `GET /metrics` |"))
        .expect("the /metrics row of the operator API table");
    let mut names: Vec<String> = row
        .split('`')
        .filter(|cell| cell.starts_with("pgtier_"))
        .map(|cell| cell.split('{').next().unwrap_or(cell).to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Every metric the README lists is in the exposition, and every metric
/// family in the exposition is in the README: an operator reading the
/// table sees every series the proxy has, under the name it has.
#[tokio::test]
async fn the_metrics_the_readme_lists_are_the_metrics_the_proxy_exposes() {
    let proxy = crate::common::start_proxy_from(&crate::common::config_text(
        "admin_listen = \"127.0.0.1:0\"",
        "prefer",
        "",
    ))
    .await;
    let api = proxy.handle.admin_addr().expect("the operator API");
    let reply = crate::common::http::http(api, "GET", "/metrics", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Families as declared (`# TYPE name kind`); a counter's samples carry
    // `_total`, its family name may not.
    let declared: Vec<String> = reply
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    let listed = readme_metrics();
    assert!(
        listed.len() >= 15,
        "only {} metrics in the README's row",
        listed.len()
    );
    let is_declared = |name: &str| {
        declared
            .iter()
            .any(|d| d == name || name.strip_suffix("_total") == Some(d.as_str()))
    };
    // The fleet's series exist only with a [fleet] store, the registry's
    // only with a [registry] (tests/it/fleet.rs and tests/it/registry.rs
    // read them there).
    let missing: Vec<&String> = listed
        .iter()
        .filter(|n| {
            !n.starts_with("pgtier_fleet_") && !n.starts_with("pgtier_registry_") && !is_declared(n)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the README lists {missing:?}, which /metrics does not declare (declared: {declared:?})"
    );
    let undocumented: Vec<&String> = declared
        .iter()
        .filter(|d| {
            !listed
                .iter()
                .any(|n| n == *d || n.strip_suffix("_total") == Some(d.as_str()))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "/metrics declares {undocumented:?}, which the README's operator API table does not list"
    );
}
