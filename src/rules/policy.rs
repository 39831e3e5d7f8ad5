//! A tier's rules turned into verdicts: which statements a tier refuses,
//! and when a tenant is warned. The words clients read are in
//! [`crate::refusal`].

use crate::config::DenySet;
use crate::refusal::Refusal;
use crate::rules::classify::{Classification, Feature};
use crate::rules::prepared::Space;
use crate::rules::Figure;

/// Why a statement is refused (the gate turns it into a [`Refusal`] with
/// the names and figures its message needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
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

/// The share of its limit at which a tenant is warned at login.
pub const WARN_AT_PERCENT: u64 = 80;

/// A `WARNING` for a session that logs in at 80 % of its limit or more;
/// `None` below that, or with no limit, or when nothing is measured yet.
pub fn row_limit_warning(
    database: &str,
    figure: Option<Figure>,
    limit: u64,
    tier: &str,
) -> Option<Refusal> {
    let figure = figure?;
    if limit == 0 || (figure.rows.max(0) as u64).saturating_mul(100) < limit * WARN_AT_PERCENT {
        return None;
    }
    Some(Refusal::RowLimitWarning {
        database: database.to_owned(),
        figure,
        limit,
        tier: tier.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warned_from_80_percent() {
        let at = |rows| Some(Figure { rows, exact: true });
        assert!(row_limit_warning("d", at(7_999), 10_000, "free").is_none());
        let w = row_limit_warning("d", at(8_000), 10_000, "free")
            .unwrap()
            .render();
        assert_eq!(
            w.message,
            "database \"d\" holds 8,000 rows of the 10,000 its free tier allows"
        );
        assert!(row_limit_warning("d", at(50_000), 0, "free").is_none());
        assert!(row_limit_warning("d", None, 10_000, "free").is_none());
    }
}
