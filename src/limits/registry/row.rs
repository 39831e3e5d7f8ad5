//! A registry row read as a `[tenants.x]` entry: each column is the key of
//! its name, so whatever `[tenants.x]` accepts (today's limits, and keys
//! added later) can come from the table, and a wrong column is an error
//! naming it rather than a key silently ignored.
//!
//! Column types: boolean; smallint, integer, bigint; text, varchar, name,
//! char; text[] or varchar[] (`deny`); interval (a timeout, months counted
//! as 30 days as PostgreSQL's `EXTRACT(epoch ...)` does). Timeouts may
//! also be text in the file's spelling (`'5m'`). A NULL leaves the file's
//! value.

use serde::Deserialize;
use tokio_postgres::types::{FromSql, Type};

use crate::config::TenantConfig;

/// One column's value as the TOML the file would hold.
struct Cell(toml::Value);

fn readable(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::BOOL
            | Type::INT2
            | Type::INT4
            | Type::INT8
            | Type::TEXT
            | Type::VARCHAR
            | Type::NAME
            | Type::BPCHAR
            | Type::TEXT_ARRAY
            | Type::VARCHAR_ARRAY
            | Type::INTERVAL
    )
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let value = match *ty {
            Type::BOOL => toml::Value::Boolean(bool::from_sql(ty, raw)?),
            Type::INT2 => toml::Value::Integer(i16::from_sql(ty, raw)?.into()),
            Type::INT4 => toml::Value::Integer(i32::from_sql(ty, raw)?.into()),
            Type::INT8 => toml::Value::Integer(i64::from_sql(ty, raw)?),
            Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
                toml::Value::String(<&str>::from_sql(ty, raw)?.to_owned())
            }
            Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => toml::Value::Array(
                Vec::<String>::from_sql(ty, raw)?
                    .into_iter()
                    .map(toml::Value::String)
                    .collect(),
            ),
            Type::INTERVAL => toml::Value::String(interval(raw)?),
            _ => return Err(format!("type {ty} is not read").into()),
        };
        Ok(Cell(value))
    }

    fn accepts(ty: &Type) -> bool {
        readable(ty)
    }
}

/// An interval's binary form (microseconds, days, months; big-endian) as
/// a duration in the file's spelling.
fn interval(raw: &[u8]) -> Result<String, BoxError> {
    let (Some(micros), Some(days), Some(months)) = (
        raw.get(0..8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_be_bytes),
        raw.get(8..12)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_be_bytes),
        raw.get(12..16)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_be_bytes),
    ) else {
        return Err("malformed interval".into());
    };
    const DAY_US: i128 = 86_400_000_000;
    let total = i128::from(micros) + (i128::from(days) + i128::from(months) * 30) * DAY_US;
    if total < 0 {
        return Err(format!("a negative interval ({total} µs) is not a timeout").into());
    }
    Ok(format!("{total}us"))
}

/// Checks the query's columns before any row: each must be named by a key
/// `[tenants.x]` accepts, once, and be of a type read here.
pub fn check_columns(columns: &[tokio_postgres::Column]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for column in columns {
        let name = column.name();
        if !seen.insert(name) {
            return Err(format!("column \"{name}\" appears twice in registry.query"));
        }
        if let Some(why) = unknown_key(name) {
            return Err(format!(
                "column \"{name}\" of registry.query is not a tenant key ({why}); \
                 rename it with AS or leave it out"
            ));
        }
        if !readable(column.type_()) {
            return Err(format!(
                "column \"{name}\" of registry.query has type {}, which pgtier does not read; \
                 cast it (to bigint, text, boolean, interval or text[])",
                column.type_()
            ));
        }
    }
    Ok(())
}

/// Why `[tenants.x]` does not accept the key `name` (serde's words, which
/// list the keys it does), or `None` if it does. Asked of the type itself,
/// so that a key added to it is accepted here without a list to update.
fn unknown_key(name: &str) -> Option<String> {
    let mut one = toml::Table::new();
    // A value no key accepts: a known key fails on its type, an unknown
    // one on its name.
    one.insert(name.to_owned(), toml::Value::Table(toml::Table::new()));
    match TenantConfig::deserialize(toml::Value::Table(one)) {
        Err(e) if e.to_string().contains("unknown field") => Some(one_line(&e)),
        _ => None,
    }
}

/// A row as the `[tenants.x]` entry it stands for; an error names the
/// column it is about.
pub fn read(row: &tokio_postgres::Row) -> Result<TenantConfig, String> {
    let mut table = toml::Table::new();
    for (index, column) in row.columns().iter().enumerate() {
        let name = column.name();
        let cell: Option<Cell> = row
            .try_get(index)
            .map_err(|e| format!("column \"{name}\": {e}"))?;
        let Some(Cell(value)) = cell else {
            continue;
        };
        let mut one = toml::Table::new();
        one.insert(name.to_owned(), value.clone());
        // Alone first, so the error names this column.
        TenantConfig::deserialize(toml::Value::Table(one))
            .map_err(|e| format!("column \"{name}\": {}", one_line(&e)))?;
        table.insert(name.to_owned(), value);
    }
    TenantConfig::deserialize(toml::Value::Table(table)).map_err(|e| one_line(&e))
}

fn one_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}

/// A cluster error with its own message (tokio-postgres's Display says
/// only "db error").
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_asked_of_the_tenant_entry() {
        for key in [
            "tier",
            "max_connections",
            "idle_timeout",
            "row_limit",
            "deny",
        ] {
            assert_eq!(unknown_key(key), None, "{key}");
        }
        let why = unknown_key("max_conections").unwrap();
        assert!(why.contains("max_connections"), "{why}");
        assert!(unknown_key("name").is_some());
    }

    #[test]
    fn intervals_become_durations_the_file_reads() {
        let mut raw = Vec::new();
        raw.extend_from_slice(&1_500_000i64.to_be_bytes());
        raw.extend_from_slice(&1i32.to_be_bytes());
        raw.extend_from_slice(&0i32.to_be_bytes());
        let text = interval(&raw).unwrap();
        assert_eq!(
            humantime::parse_duration(&text).unwrap(),
            std::time::Duration::from_micros(86_400_000_000 + 1_500_000)
        );
        let mut negative = (-1i64).to_be_bytes().to_vec();
        negative.extend_from_slice(&[0; 8]);
        assert!(interval(&negative).is_err());
        assert!(interval(&[0; 15]).is_err());
    }
}
