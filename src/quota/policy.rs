//! A tier's rules turned into verdicts, and the words clients read when a
//! rule speaks: PostgreSQL's own severities and SQLSTATEs, a message that
//! says what happened, a hint that says what to do.

use crate::config::DenySet;
use crate::protocol::{sqlstate, ErrorFields};
use crate::quota::classify::{Classification, Feature};
use crate::quota::prepared::Space;
use crate::quota::{thousands, Figure};

/// The prefix of the marker names refused statements are replaced by (see
/// the gate). A client's own statement or portal names never start with it
/// (any case): they get `42939`, as PostgreSQL answers names it reserves.
pub const MARKER_PREFIX: &str = "pgtier_refused_";

/// Why a statement is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It uses a feature the tier denies.
    Policy(Feature),
    /// It may add rows while the tenant is over its row limit.
    RowLimit(Figure),
    /// It names a prepared statement or portal with the prefix of the
    /// proxy's refusal markers.
    ReservedName(Space),
    /// It may add rows and the tenant cannot be measured (fail closed).
    Unmeasured,
    /// It can grow the database while the tenant is over its storage limit
    /// (the size in bytes).
    StorageLimit(u64),
    /// It can grow the database and the tenant's size cannot be measured
    /// (fail closed).
    StorageUnmeasured,
}

impl Refusal {
    /// The metrics label (`pgtier_statements_refused_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Policy(_) => "policy",
            Refusal::RowLimit(_) => "row_limit",
            Refusal::ReservedName(_) => "reserved_name",
            Refusal::Unmeasured => "unmeasured",
            Refusal::StorageLimit(_) => "storage_limit",
            Refusal::StorageUnmeasured => "storage_unmeasured",
        }
    }
}

/// The first feature `statement` uses that `deny` names.
pub fn denied_feature(statement: &Classification, deny: DenySet) -> Option<Feature> {
    if deny.is_empty() {
        return None;
    }
    statement
        .features
        .iter()
        .copied()
        .find(|f| deny.contains(f.kind))
}

/// `ERROR 42501`: the statement uses a feature the tier does not offer.
pub fn policy_error(feature: Feature, tier: &str) -> ErrorFields {
    ErrorFields::error(
        sqlstate::INSUFFICIENT_PRIVILEGE,
        format!("{} is not available on the {tier} tier", feature.name),
    )
    .with_hint(match feature.hint {
        Some(hint) => hint.to_owned(),
        None => format!("Upgrade the database's tier to use {}.", feature.name),
    })
}

/// `ERROR 42939`: a client's statement or portal name claims the prefix of
/// the proxy's refusal markers, which no client may use.
pub fn reserved_name_error(space: Space, name: &str) -> ErrorFields {
    let what = match space {
        Space::Statement => "prepared statement",
        Space::Portal => "portal",
    };
    ErrorFields::error(
        sqlstate::RESERVED_NAME,
        format!("{what} name \"{name}\" is reserved"),
    )
    .with_detail(format!(
        "Names beginning with \"{}\" are reserved for the proxy.",
        MARKER_PREFIX
    ))
}

/// `ERROR 53400`: the tenant cannot be measured, so statements that may
/// add rows are refused until it can (fail closed).
pub fn unmeasured_error(database: &str, tier: &str) -> ErrorFields {
    ErrorFields::error(
        sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
        format!(
            "cannot measure database \"{database}\"'s rows; statements that add rows are refused until it can be measured"
        ),
    )
    .with_detail(format!("The {tier} tier limits the rows a database holds."))
    .with_hint(
        "Statements that do not add rows still work. Undo anything that keeps the database from being read (CONNECT or privileges revoked, row-level security, a session holding a lock), or contact the operator.",
    )
}

/// How a figure reads in a message: exact, or "more than" the limit when
/// counting stopped past it.
fn holds(figure: Figure, limit: u64) -> String {
    if figure.exact {
        format!("holds {} rows", thousands(figure.rows))
    } else {
        format!("holds more than {} rows", thousands(limit as i64))
    }
}

/// `ERROR 53400`: the tenant is over its row limit and the statement may
/// add rows.
pub fn row_limit_error(database: &str, figure: Figure, limit: u64, tier: &str) -> ErrorFields {
    ErrorFields::error(
        sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
        format!(
            "row limit exceeded: database \"{database}\" {}; the {tier} tier allows {}",
            holds(figure, limit),
            thousands(limit as i64)
        ),
    )
    .with_hint("Delete rows or upgrade the database's tier.")
}

/// The share of its limit at which a tenant is warned at login.
pub const WARN_AT_PERCENT: u64 = 80;

/// A `WARNING` for a session that logs in at 80 % of its limit or more;
/// `None` below that, or with no limit, or when nothing is measured yet.
pub fn row_limit_warning(
    database: &str,
    figure: Option<Figure>,
    limit: u64,
    tier: &str,
) -> Option<ErrorFields> {
    let figure = figure?;
    if limit == 0 || (figure.rows.max(0) as u64).saturating_mul(100) < limit * WARN_AT_PERCENT {
        return None;
    }
    let over = figure.is_over(limit);
    Some(
        ErrorFields::warning(
            sqlstate::WARNING,
            format!(
                "database \"{database}\" {} of the {} its {tier} tier allows",
                holds(figure, limit),
                thousands(limit as i64)
            ),
        )
        .with_hint(if over {
            "Statements that add rows are refused until rows are deleted or the database's tier is upgraded."
        } else {
            "Statements that add rows will be refused above the limit: delete rows or upgrade the database's tier."
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::classify::DenyKind;

    #[test]
    fn messages_read_like_postgresql() {
        let e = row_limit_error(
            "hobby",
            Figure {
                rows: 10_212,
                exact: true,
            },
            10_000,
            "free",
        );
        assert_eq!(e.code, "53400");
        assert_eq!(
            e.message,
            "row limit exceeded: database \"hobby\" holds 10,212 rows; the free tier allows 10,000"
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("Delete rows or upgrade the database's tier.")
        );
        let capped = row_limit_error(
            "hobby",
            Figure {
                rows: 10_001,
                exact: false,
            },
            10_000,
            "free",
        );
        assert!(capped.message.contains("holds more than 10,000 rows"));

        let feature = Feature {
            kind: DenyKind::Extension,
            name: "CREATE EXTENSION",
            hint: None,
        };
        let with_hint = Feature {
            kind: DenyKind::Function,
            name: "DO with dynamic SQL (EXECUTE)",
            hint: Some("Write it as static plpgsql."),
        };
        let e = policy_error(with_hint, "free");
        assert_eq!(
            e.message,
            "DO with dynamic SQL (EXECUTE) is not available on the free tier"
        );
        assert_eq!(e.hint.as_deref(), Some("Write it as static plpgsql."));
        let e = policy_error(feature, "free");
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
    fn warned_from_80_percent() {
        let at = |rows| Some(Figure { rows, exact: true });
        assert!(row_limit_warning("d", at(7_999), 10_000, "free").is_none());
        let w = row_limit_warning("d", at(8_000), 10_000, "free").unwrap();
        assert_eq!(
            w.message,
            "database \"d\" holds 8,000 rows of the 10,000 its free tier allows"
        );
        assert!(row_limit_warning("d", at(50_000), 0, "free").is_none());
        assert!(row_limit_warning("d", None, 10_000, "free").is_none());
    }
}
