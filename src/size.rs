//! Sizes in bytes as operators write them and as PostgreSQL prints them:
//! `"256MB"` in the configuration (PostgreSQL's memory units, as
//! `pg_size_bytes` reads them: `kB`, `MB`, `GB`, `TB` are powers of 1024)
//! and `270 MB` in messages (as `pg_size_pretty` writes it). A value type
//! the configuration and the storage limit both use, so it belongs to
//! neither.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A size in bytes as the configuration writes it: a number of bytes, or a
/// string with a unit (`"256MB"`, `"1 GB"`, `"0"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Reads `"256MB"`, `"1 GB"`, `"512kB"`, `"1048576"`, `"1048576B"`.
    /// Units are case-insensitive; fractions and overflow are errors.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let digits = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(digits);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size (e.g. \"256MB\", \"1GB\")"))?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" | "bytes" => 0,
            "kb" => 10,
            "mb" => 20,
            "gb" => 30,
            "tb" => 40,
            other => {
                return Err(format!(
                    "{other:?} is not a size unit (known: B, kB, MB, GB, TB)"
                ))
            }
        };
        number
            .checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
        struct Size;
        impl Visitor<'_> for Size {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes, or a string such as \"256MB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Size)
    }
}

/// A size as PostgreSQL's `pg_size_pretty` writes it (`270 MB`,
/// `7580 kB`, `512 bytes`): the largest unit that keeps 10 or more of it,
/// rounded half up.
pub fn pretty(bytes: u64) -> String {
    const LIMIT: u64 = 10 * 1024;
    if bytes < LIMIT {
        return format!("{bytes} bytes");
    }
    // Half units, so that the last step can round half up (pg_size_pretty's
    // own arithmetic).
    let mut half = bytes >> 9;
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    let mut unit = 0;
    while half >= LIMIT * 2 - 1 && unit + 1 < UNITS.len() {
        half >>= 10;
        unit += 1;
    }
    format!("{} {}", half / 2 + half % 2, UNITS[unit])
}

/// `12345` → `12,345`, as the quota's messages write numbers.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_postgresql_memory_units() {
        assert_eq!(ByteSize::parse("256MB"), Ok(ByteSize(256 << 20)));
        assert_eq!(ByteSize::parse("1 GB"), Ok(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("512kB"), Ok(ByteSize(512 << 10)));
        assert_eq!(ByteSize::parse("1tb"), Ok(ByteSize(1 << 40)));
        assert_eq!(ByteSize::parse("0"), Ok(ByteSize(0)));
        assert_eq!(ByteSize::parse("1048576"), Ok(ByteSize(1 << 20)));
        assert_eq!(ByteSize::parse("100 bytes"), Ok(ByteSize(100)));
        for bad in ["", "MB", "1.5GB", "-1MB", "12 parsecs", "99999999999TB"] {
            assert!(ByteSize::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_print_like_pg_size_pretty() {
        assert_eq!(pretty(512), "512 bytes");
        assert_eq!(pretty(10 * 1024 - 1), "10239 bytes");
        assert_eq!(pretty(10 * 1024), "10 kB");
        assert_eq!(pretty(7_762_435), "7581 kB");
        assert_eq!(pretty(270 << 20), "270 MB");
        assert_eq!(pretty(256 << 20), "256 MB");
        assert_eq!(pretty(1 << 30), "1024 MB");
        assert_eq!(pretty(20 << 30), "20 GB");
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(10212), "10,212");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(-4000), "-4,000");
    }
}
