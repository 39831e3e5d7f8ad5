//! Loading `proxy.toml`: the TOML parsed directly, then the `PGTIER_`
//! environment overlay, then `check`'s validation. Errors are one line
//! each and name the line, column and key (or the environment variables)
//! they are about.

use std::path::Path;

use serde::Deserialize;

use super::{Config, ConfigError};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "PGTIER_";

impl Config {
    /// Reads `path`, applies `PGTIER_` overrides from the process environment
    /// and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_with_env(&text, &path.display().to_string(), std::env::vars())
    }

    /// Parses and validates TOML text (no environment overrides).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_with_env(text, "config", std::iter::empty())
    }

    /// Parses `text` (named `origin` in errors), overlays the `PGTIER_`
    /// variables among `env`, and validates.
    pub fn from_toml_with_env(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        // First the file alone, so errors carry its line and column.
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: one_line(&e),
        })?;
        let _: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: one_line(&e),
        })?;
        let mut overridden = Vec::new();
        for (name, value) in env {
            if let Some(key) = name.strip_prefix(ENV_PREFIX) {
                apply_override(&mut table, key, &value);
                overridden.push(name);
            }
        }
        let config: Config = if overridden.is_empty() {
            toml::from_str(text).map_err(|e| ConfigError::Parse {
                origin: origin.to_owned(),
                message: one_line(&e),
            })?
        } else {
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                origin: format!("{origin} with {}", overridden.join(", ")),
                message: one_line(&e),
            })?
        };
        config.validated(origin)
    }
}

/// Sets `key` (`a__b__c`, lower-cased) in `table` to `value`, read as a TOML
/// value where it parses as one (numbers, booleans) and as a string otherwise.
fn apply_override(table: &mut toml::Table, key: &str, value: &str) {
    let path: Vec<String> = key.split("__").map(|p| p.to_ascii_lowercase()).collect();
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
    current.insert(last.clone(), parsed);
}

/// toml's errors span several lines (a source excerpt); keep them readable
/// in one log line while keeping the line/column and the offending line.
fn one_line(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let head = lines.next().unwrap_or_default().to_owned();
    let mut source = None;
    let mut message = Vec::new();
    for line in lines {
        if let Some((number, code)) = line.split_once(" | ") {
            if number.trim().chars().all(|c| c.is_ascii_digit()) {
                source = Some(code.trim().to_owned());
                continue;
            }
        }
        if !line.starts_with('|') {
            message.push(line);
        }
    }
    let mut out = head;
    if !message.is_empty() {
        out.push_str(": ");
        out.push_str(&message.join("; "));
    }
    if let Some(source) = source {
        out.push_str(&format!(" (in `{source}`)"));
    }
    out
}
