//! The configuration as an operator writes it: TOML text in; effective
//! limits, errors and warnings out.

use super::*;
use crate::rules::classify::DenyKind;

const BASE: &str = r#"
    listen = "127.0.0.1:6432"
    [tls]
    mode = "disable"
    [quota]
    user = "pgtier_quota"
"#;

#[test]
fn tiers_and_overrides_combine() {
    let text = format!(
        "{BASE}\n[tenants.acme]\ntier = \"standard\"\n[tenants.hobby]\nmax_connections = 3\n"
    );
    let config = Config::from_toml_str(&text).unwrap();
    assert_eq!(config.limits_for("acme").max_connections, 0);
    assert_eq!(config.limits_for("hobby").max_connections, 3);
    assert_eq!(config.limits_for("hobby").tier, "free");
    let other = config.limits_for("someone");
    assert_eq!(other.max_connections, 2);
    assert_eq!(other.idle_timeout, Duration::from_secs(300));
    assert_eq!(other.idle_in_transaction_timeout, Duration::from_secs(300));
}

#[test]
fn a_registry_row_overrides_the_files_entry_key_by_key() {
    let config = Config::from_toml_str(&format!(
        "{BASE}\n[tenants.hobby]\nmax_connections = 3\nidle_timeout = \"1m\"\n"
    ))
    .unwrap();
    let row = TenantConfig {
        tier: Some("standard".to_owned()),
        idle_timeout: Some(Duration::from_secs(7)),
        ..TenantConfig::default()
    };
    let limits = config.limits_with("hobby", Some(&row));
    assert_eq!(limits.tier, "standard");
    assert_eq!(limits.max_connections, 3, "the file's key, the row's NULL");
    assert_eq!(limits.idle_timeout, Duration::from_secs(7));
    let other = config.limits_with("other", Some(&row));
    assert_eq!(
        (other.tier.as_str(), other.max_connections),
        ("standard", 0)
    );
    assert_eq!(
        config.limits_with("hobby", None),
        config.limits_for("hobby")
    );
    let bad = TenantConfig {
        tier: Some("gold".to_owned()),
        ..TenantConfig::default()
    };
    assert_eq!(bad.check(&config).unwrap_err().0, "tier");
}

#[test]
fn errors_name_line_and_key() {
    let err = Config::from_toml_str("listen = \"127.0.0.1:6432\"\nlogin_timeout = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("login_timeout"), "{err}");
    assert!(!err.contains('\n'), "{err}");

    let err = Config::from_toml_str("[tiers.free]\nmax_conections = 2\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_conections"), "{err}");

    let err = Config::from_toml_str(&format!("{BASE}\n[tenants.x]\ntier = \"gold\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tenants.x.tier"), "{err}");

    let long = "d".repeat(64);
    let err = Config::from_toml_str(&format!("{BASE}\n[tenants.{long}]\ntier = \"free\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 63 bytes"), "{err}");
    let exact = "d".repeat(63);
    Config::from_toml_str(&format!("{BASE}\n[tenants.{exact}]\ntier = \"free\"\n")).unwrap();
}

#[test]
fn statement_timeout_is_a_tier_key_with_a_free_default() {
    let config = Config::from_toml_str(&format!(
        "{BASE}\n[tiers.free]\nmax_connections = 3\n[tenants.quick]\nstatement_timeout = \"1500ms\"\n\
         [tenants.paid]\ntier = \"standard\"\n[tenants.off]\nstatement_timeout = \"0s\"\n"
    ))
    .unwrap();
    assert_eq!(
        config.limits_for("someone").statement_timeout,
        Duration::from_secs(30),
        "the built-in free tier's, kept under a [tiers.free] table"
    );
    assert_eq!(
        config.limits_for("quick").statement_timeout,
        Duration::from_millis(1500)
    );
    assert_eq!(config.limits_for("paid").statement_timeout, Duration::ZERO);
    assert_eq!(config.limits_for("off").statement_timeout, Duration::ZERO);
    let err = Config::from_toml_str(&format!(
        "{BASE}\n[tiers.free]\nstatement_timeout = \"soon\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("statement_timeout"), "{err}");
}

#[test]
fn the_free_tier_limits_rows_and_denies_four_kinds_by_default() {
    let config = Config::from_toml_str(&format!(
        "{BASE}\n[tiers.free]\nmax_connections = 3\n[tenants.big]\nrow_limit = 50000\ndeny = [\"role\"]\n"
    ))
    .unwrap();
    let free = config.limits_for("someone");
    assert_eq!(free.max_connections, 3, "the file's key");
    assert_eq!(free.row_limit, 10_000, "the built-in's key, kept");
    assert_eq!(free.idle_timeout, Duration::from_secs(300));
    assert_eq!(free.deny.kinds().count(), 4);
    let big = config.limits_for("big");
    assert_eq!(big.row_limit, 50_000);
    assert_eq!(big.deny.kinds().collect::<Vec<_>>(), vec![DenyKind::Role]);
    let standard = config.limits_for("x");
    assert_eq!(standard.tier, "free");
    let mut with_standard = config.clone();
    with_standard.default_tier = "standard".to_owned();
    let standard = with_standard.limits_for("x");
    assert_eq!((standard.row_limit, standard.deny.is_empty()), (0, true));
}

#[test]
fn storage_limit_is_a_tier_key_in_bytes_with_a_free_default() {
    let config = Config::from_toml_str(&format!(
        "{BASE}\n[tenants.big]\nstorage_limit = \"1GB\"\n[tenants.raw]\nstorage_limit = 1048576\n\
         [tenants.paid]\ntier = \"standard\"\n[tenants.off]\nstorage_limit = \"0\"\n"
    ))
    .unwrap();
    assert_eq!(config.limits_for("someone").storage_limit, 256 << 20);
    assert_eq!(config.limits_for("big").storage_limit, 1 << 30);
    assert_eq!(config.limits_for("raw").storage_limit, 1 << 20);
    assert_eq!(config.limits_for("paid").storage_limit, 0);
    assert_eq!(config.limits_for("off").storage_limit, 0);
    let err = Config::from_toml_str(&format!("{BASE}\n[tiers.free]\nstorage_limit = \"lots\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("storage_limit") || err.contains("size"),
        "{err}"
    );
    // Without [quota], the built-in default is off; one written is an error.
    let no_quota = "[tls]\nmode = \"disable\"\n[tiers.free]\nrow_limit = 0\n";
    let config = Config::from_toml_str(no_quota).unwrap();
    assert_eq!(config.limits_for("someone").storage_limit, 0);
    let err = Config::from_toml_str(&format!("{no_quota}storage_limit = \"1GB\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tiers.free.storage_limit"), "{err}");
}

#[test]
fn a_row_limit_without_quota_and_unknown_deny_kinds_are_errors() {
    let no_quota = "[tls]\nmode = \"disable\"\n";
    let err = Config::from_toml_str(no_quota).unwrap_err().to_string();
    assert!(
        err.contains("tiers.free.row_limit = 10000 needs a [quota] table"),
        "{err}"
    );
    let fixed = format!("{no_quota}[tiers.free]\nrow_limit = 0\n");
    assert!(Config::from_toml_str(&fixed).is_ok());
    let err = Config::from_toml_str(&format!("{BASE}\n[tiers.free]\ndeny = [\"extensions\"]\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tiers.free.deny"), "{err}");
    assert!(
        err.contains("\"extensions\" is not a statement kind"),
        "{err}"
    );
}

#[test]
fn tls_needs_cert_and_key_unless_disabled() {
    let err = Config::from_toml_str("[tls]\nmode = \"require\"\n").unwrap_err();
    assert!(err.to_string().contains("tls.cert"));
}

#[test]
fn environment_overrides_nested_keys() {
    let env = vec![
        ("PGTIER_CLUSTER__PORT".to_owned(), "5433".to_owned()),
        (
            "PGTIER_TIERS__FREE__MAX_CONNECTIONS".to_owned(),
            "7".to_owned(),
        ),
        ("PGTIER_DEFAULT_TIER".to_owned(), "standard".to_owned()),
        ("HOME".to_owned(), "/root".to_owned()),
    ];
    let config = Config::from_toml_with_env(BASE, "t", env).unwrap();
    assert_eq!(config.cluster.port, 5433);
    assert_eq!(config.tiers["free"].max_connections, Some(7));
    assert_eq!(config.default_tier, "standard");

    let bad = vec![("PGTIER_CLUSTER__PORT".to_owned(), "many".to_owned())];
    let err = Config::from_toml_with_env(BASE, "t", bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("PGTIER_CLUSTER__PORT"), "{err}");
}

#[test]
fn an_open_admin_api_without_a_token_is_warned_about() {
    let open = Config::from_toml_str(&format!("admin_listen = \"0.0.0.0:9930\"\n{BASE}")).unwrap();
    assert!(open.warnings().iter().any(|w| w.0.contains("admin_token")));
    let local =
        Config::from_toml_str(&format!("admin_listen = \"127.0.0.1:9930\"\n{BASE}")).unwrap();
    assert!(!local.warnings().iter().any(|w| w.0.contains("admin_token")));
}

#[test]
fn cluster_tls_warns_about_scram() {
    let config = Config::from_toml_str(&format!("{BASE}\n[cluster]\ntls = \"require\"\n")).unwrap();
    assert!(config
        .warnings()
        .iter()
        .any(|w| w.0.contains("channel binding")));
}
