//! The catalog against README.md's "What clients see" table: every variant
//! renders a row of it, and every row is rendered by a variant.

use super::*;
use crate::rules::classify::DenyKind;

/// Lists every kind of refusal once, as patterns: `kind_index` numbers them
/// and `KINDS` counts them. The `match` in `kind_index` has no wildcard,
/// so a new variant (or a new `StartupError` / `FrameError`) does not
/// compile until it is listed here; the test then fails until
/// `all_examples` has an example of it.
macro_rules! kinds {
    ($($kind:pat),* $(,)?) => {
        const KINDS: usize = [$(stringify!($kind)),*].len();

        fn kind_index(refusal: &Refusal) -> usize {
            match refusal {
                $($kind)|* => {}
            }
            let mut index = 0;
            $(
                if matches!(refusal, $kind) {
                    return index;
                }
                index += 1;
            )*
            index
        }
    };
}

kinds!(
    Refusal::TooManyLoggingIn { .. },
    Refusal::TooManyTenantLogins { .. },
    Refusal::TooManyClients,
    Refusal::ConnectionCap { .. },
    Refusal::FleetUnavailable,
    Refusal::TlsRequired,
    Refusal::SslRequestOnTls,
    Refusal::Startup(StartupError::BadLength),
    Refusal::Startup(StartupError::MissingTerminator),
    Refusal::Startup(StartupError::NotUtf8),
    Refusal::Startup(StartupError::NoUser),
    Refusal::Startup(StartupError::UnsupportedVersion { .. }),
    Refusal::Startup(StartupError::BadCancel),
    Refusal::Startup(StartupError::DuplicateParameter(_)),
    Refusal::Startup(StartupError::NameCutInCharacter { .. }),
    Refusal::Startup(StartupError::Replication),
    Refusal::LoginTimeout { .. },
    Refusal::ClusterUnreachable,
    Refusal::ClusterStartingUp { .. },
    Refusal::VerifierUnavailable,
    Refusal::PasswordFailed { .. },
    Refusal::InvalidSaslMechanism,
    Refusal::MalformedSaslInitial,
    Refusal::ExpectedSaslResponse { .. },
    Refusal::ExpectedPasswordResponse { .. },
    Refusal::BadLoginMessage { .. },
    Refusal::OnlyScramPlus,
    Refusal::AuthMethodUnsupported { .. },
    Refusal::CannotAnswerAuth { .. },
    Refusal::MalformedBackendKeyData,
    Refusal::ReadyBeforeAuthentication,
    Refusal::ClusterInvalidMessage { .. },
    Refusal::IdleTimeout,
    Refusal::AdminDisconnect,
    Refusal::Shutdown,
    Refusal::Message(FrameError::TooLong { .. }),
    Refusal::Message(FrameError::BadLength { .. }),
    Refusal::Policy { .. },
    Refusal::RowLimit { .. },
    Refusal::Unmeasured { .. },
    Refusal::ReservedName { .. },
    Refusal::StatementTimeout { .. },
    Refusal::RowLimitWarning { .. },
    Refusal::Suspended { .. },
    Refusal::UnknownDatabase { .. },
    Refusal::RegistryUnavailable { .. },
    Refusal::SuspendedWhileConnected,
    Refusal::StorageLimit { .. },
    Refusal::StorageUnmeasured { .. },
    Refusal::StorageLimitWarning { .. },
);

/// One or more examples of every kind, with the README's example values
/// (database "x", the free tier, user "u") so that most render the
/// table's message exactly.
fn all_examples() -> Vec<Refusal> {
    let x = || "x".to_owned();
    let free = || "free".to_owned();
    let exact = |rows| Figure { rows, exact: true };
    vec![
        Refusal::TooManyLoggingIn { max: 64 },
        Refusal::TooManyTenantLogins {
            database: x(),
            max: 10,
        },
        Refusal::TooManyClients,
        Refusal::ConnectionCap {
            database: x(),
            tier: free(),
            limit: 2,
        },
        Refusal::FleetUnavailable,
        Refusal::TlsRequired,
        Refusal::SslRequestOnTls,
        Refusal::Startup(StartupError::BadLength),
        Refusal::Startup(StartupError::MissingTerminator),
        Refusal::Startup(StartupError::NotUtf8),
        Refusal::Startup(StartupError::NoUser),
        Refusal::Startup(StartupError::UnsupportedVersion { major: 2, minor: 0 }),
        Refusal::Startup(StartupError::BadCancel),
        Refusal::Startup(StartupError::DuplicateParameter("database".to_owned())),
        Refusal::Startup(StartupError::NameCutInCharacter { what: "database" }),
        Refusal::Startup(StartupError::Replication),
        Refusal::LoginTimeout {
            limit: Duration::from_secs(10),
        },
        Refusal::ClusterUnreachable,
        Refusal::ClusterStartingUp {
            message: "the database system is starting up".to_owned(),
        },
        Refusal::VerifierUnavailable,
        Refusal::PasswordFailed {
            user: "u".to_owned(),
            scram_needed: false,
        },
        Refusal::PasswordFailed {
            user: "u".to_owned(),
            scram_needed: true,
        },
        Refusal::InvalidSaslMechanism,
        Refusal::MalformedSaslInitial,
        Refusal::ExpectedSaslResponse { tag: b'Q' },
        Refusal::ExpectedPasswordResponse { tag: b'Q' },
        Refusal::BadLoginMessage {
            message: "message type 'p' of 70000 bytes is too long for the login phase".to_owned(),
        },
        Refusal::OnlyScramPlus,
        Refusal::AuthMethodUnsupported { code: 7 },
        Refusal::CannotAnswerAuth {
            what: "md5 authentication".to_owned(),
        },
        Refusal::MalformedBackendKeyData,
        Refusal::ReadyBeforeAuthentication,
        Refusal::ClusterInvalidMessage {
            message: "invalid message length 2 for message type 'R'".to_owned(),
        },
        Refusal::IdleTimeout,
        Refusal::AdminDisconnect,
        Refusal::Shutdown,
        Refusal::Message(FrameError::TooLong {
            tag: 'Q',
            len: 9_000_000,
            max: 8 << 20,
        }),
        Refusal::Message(FrameError::BadLength { tag: 'Q', len: 2 }),
        Refusal::Policy {
            feature: Feature {
                kind: DenyKind::Extension,
                name: "CREATE EXTENSION",
                hint: None,
            },
            tier: free(),
        },
        Refusal::RowLimit {
            database: x(),
            figure: exact(10_212),
            limit: 10_000,
            tier: free(),
        },
        Refusal::Unmeasured {
            database: x(),
            tier: free(),
        },
        Refusal::ReservedName {
            space: Space::Statement,
            name: "pgtier_refused_x".to_owned(),
        },
        Refusal::ReservedName {
            space: Space::Portal,
            name: "pgtier_refused_x".to_owned(),
        },
        Refusal::StatementTimeout {
            tier: free(),
            limit_ms: 30_000,
        },
        Refusal::RowLimitWarning {
            database: x(),
            figure: exact(8_500),
            limit: 10_000,
            tier: free(),
        },
        Refusal::Suspended {
            message: "database \"x\" is suspended".to_owned(),
            hint: Some("Contact your provider to restore it.".to_owned()),
        },
        Refusal::UnknownDatabase { database: x() },
        Refusal::RegistryUnavailable { database: x() },
        Refusal::SuspendedWhileConnected,
        Refusal::StorageLimit {
            database: x(),
            bytes: 270 << 20,
            limit: 256 << 20,
            tier: free(),
        },
        Refusal::StorageUnmeasured {
            database: x(),
            tier: free(),
        },
        Refusal::StorageLimitWarning {
            database: x(),
            bytes: 210 << 20,
            limit: 256 << 20,
            tier: free(),
        },
    ]
}

/// A row of the README's table: severity, SQLSTATE, the messages it
/// quotes (`…` stands for any text) and whether it is open (a `…` outside
/// the quotes: "and other messages of this code").
#[derive(Debug)]
struct Row {
    line: String,
    severity: String,
    code: String,
    messages: Vec<String>,
    open: bool,
}

fn readme_rows() -> Vec<Row> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md is readable");
    let section = readme
        .split("\n## What clients see\n")
        .nth(1)
        .expect("README.md has a \"What clients see\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let rows: Vec<Row> = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header and its separator
        .map(|line| {
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            assert_eq!(cells.len(), 4, "a row of four cells: {line}");
            let quoted: Vec<&str> = cells[3].split('`').collect();
            Row {
                line: line.to_owned(),
                severity: cells[1].to_owned(),
                code: cells[2].trim_matches('`').to_owned(),
                messages: quoted
                    .iter()
                    .skip(1)
                    .step_by(2)
                    .map(|m| m.to_string())
                    .collect(),
                open: quoted
                    .iter()
                    .step_by(2)
                    .any(|outside| outside.contains('…')),
            }
        })
        .collect();
    assert!(rows.len() > 20, "the table was found: {rows:?}");
    rows
}

/// Whether `message` reads as `pattern`, where `…` stands for any text.
fn reads_as(message: &str, pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return message == pattern;
    };
    if parts.len() == 1 {
        return message == pattern;
    }
    let Some(mut rest) = message.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[test]
fn every_kind_of_refusal_has_an_example() {
    let mut seen = [false; KINDS];
    for example in all_examples() {
        seen[kind_index(&example)] = true;
    }
    let missing: Vec<usize> = (0..KINDS).filter(|&i| !seen[i]).collect();
    assert!(
        missing.is_empty(),
        "kinds (in the order `kinds!` lists them) without an example in all_examples: {missing:?}"
    );
}

/// The catalog's messages that README.md's table covers only by an open
/// row, sorted.
const OPEN_ROW_MESSAGES: &[&str] = &[
    "expected password response, got message type 81",
    "invalid length of cancel request packet",
    "invalid startup packet layout: expected terminator as last byte",
    "invalid startup packet layout: parameter name or value is not valid UTF-8",
    "malformed SASLInitialResponse message",
    "message type 'p' of 70000 bytes is too long for the login phase",
];

#[test]
fn the_catalog_and_the_readme_table_say_the_same() {
    let rows = readme_rows();
    let mut rendered_rows = vec![false; rows.len()];
    let mut only_by_open_row = Vec::new();
    for example in all_examples() {
        let error = example.render();
        let severity = error.severity.as_str();
        let (mut named, mut open) = (false, false);
        for (i, row) in rows.iter().enumerate() {
            if row.severity != severity || row.code != error.code {
                continue;
            }
            if row.messages.iter().any(|m| reads_as(&error.message, m)) {
                rendered_rows[i] = true;
                named = true;
            } else if row.open {
                open = true;
            }
        }
        if !named && open {
            only_by_open_row.push(error.message.clone());
        }
        let found = named || open;
        assert!(
            found,
            "README.md's \"What clients see\" has no row for {example:?}, which says \
             {severity} {}: {}",
            error.code, error.message
        );
    }
    // An open row ("…, …") stands for messages it does not spell out; which
    // ones it covers is pinned here, so that a new refusal cannot slip
    // under an open row unseen: name it in the README, or add it here.
    only_by_open_row.sort();
    only_by_open_row.dedup();
    assert_eq!(
        only_by_open_row, OPEN_ROW_MESSAGES,
        "the refusals README.md's table covers only by an open row (\"…\") changed"
    );
    for (row, rendered) in rows.iter().zip(rendered_rows) {
        assert!(
            rendered,
            "no variant of the catalog renders this row of README.md: {}",
            row.line
        );
    }
}

#[test]
fn labels_keep_their_names() {
    // Dashboards and tests use these strings: a change must be deliberate.
    const LABELS: &[&str] = &[
        "max_pending_logins",
        "max_pending_logins_per_tenant",
        "max_client_connections",
        "max_connections",
        "fleet_unavailable",
        "tls_required",
        "bad_startup",
        "duplicate_parameter",
        "name_cut_in_character",
        "replication",
        "login_timeout",
        "cluster_unreachable",
        "cluster_refused",
        "auth_unavailable",
        "wrong_password",
        "auth_unsupported",
        "cluster_error",
        "idle_timeout",
        "admin_disconnect",
        "shutdown",
        "client_protocol_error",
        "policy",
        "row_limit",
        "unmeasured",
        "reserved_name",
        "statement_timeout",
        "row_limit_warning",
        "storage_limit",
        "storage_unmeasured",
        "suspended",
        "registry_unknown",
        "registry_unavailable",
        "storage_limit_warning",
    ];
    for example in all_examples() {
        let label = example.reason().as_str();
        assert!(LABELS.contains(&label), "{example:?}: label {label}");
    }
    assert_eq!(RefusalReason::ClusterRefused.as_str(), "cluster_refused");
}

#[test]
fn messages_read_like_postgresql() {
    let e = Refusal::RowLimit {
        database: "hobby".to_owned(),
        figure: Figure {
            rows: 10_212,
            exact: true,
        },
        limit: 10_000,
        tier: "free".to_owned(),
    }
    .render();
    assert_eq!(e.code, "53400");
    assert_eq!(
        e.message,
        "row limit exceeded: database \"hobby\" holds 10,212 rows; the free tier allows 10,000"
    );
    assert_eq!(
        e.hint.as_deref(),
        Some("Delete rows or upgrade the database's tier.")
    );
    let capped = Refusal::RowLimit {
        database: "hobby".to_owned(),
        figure: Figure {
            rows: 10_001,
            exact: false,
        },
        limit: 10_000,
        tier: "free".to_owned(),
    }
    .render();
    assert!(capped.message.contains("holds more than 10,000 rows"));

    let policy = |feature| {
        Refusal::Policy {
            feature,
            tier: "free".to_owned(),
        }
        .render()
    };
    let e = policy(Feature {
        kind: DenyKind::Function,
        name: "DO with dynamic SQL (EXECUTE)",
        hint: Some("Write it as static plpgsql."),
    });
    assert_eq!(
        e.message,
        "DO with dynamic SQL (EXECUTE) is not available on the free tier"
    );
    assert_eq!(e.hint.as_deref(), Some("Write it as static plpgsql."));
    let e = policy(Feature {
        kind: DenyKind::Extension,
        name: "CREATE EXTENSION",
        hint: None,
    });
    assert_eq!(
        e.hint.as_deref(),
        Some("Upgrade the database's tier to use CREATE EXTENSION.")
    );
    assert_eq!(e.code, "42501");
    assert_eq!(
        e.message,
        "CREATE EXTENSION is not available on the free tier"
    );
}

#[test]
fn the_statement_timeout_names_the_tier_and_its_limit() {
    let timeout = |tier: &str, limit_ms| {
        Refusal::StatementTimeout {
            tier: tier.to_owned(),
            limit_ms,
        }
        .render()
    };
    let error = timeout("free", 30_000);
    assert_eq!(error.code, "57014");
    assert_eq!(
        error.message,
        "canceling statement due to statement timeout: the free tier allows 30 s"
    );
    assert!(error.hint.as_deref().is_some_and(|h| h.contains("upgrade")));
    assert!(timeout("hobby", 1500).message.ends_with("allows 1500 ms"));
}

#[test]
fn the_glob_reads_ellipses_as_any_text() {
    assert!(reads_as("a b c", "a b c"));
    assert!(reads_as(
        "message type 'Q' of 9 bytes is longer (8)",
        "message type 'Q' of … bytes is longer …"
    ));
    assert!(!reads_as(
        "message type 'Q' of 9 bytes",
        "message type 'X' of …"
    ));
    assert!(!reads_as("a b", "a b c"));
}
