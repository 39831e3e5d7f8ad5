//! Statement text as the cluster will read it, whatever the client encoding.
//!
//! PostgreSQL converts every string of a client message to the server
//! encoding (`pq_getmsgstring` → `pg_client_to_server`) with the
//! `client_encoding` in force when it reads the message, and lexes the
//! result. The classifier lexes bytes. The two agree on where a literal,
//! identifier or comment ends only if every ASCII byte the classifier sees
//! is an ASCII character to PostgreSQL. That holds for UTF-8, the
//! single-byte encodings and the EUC family, whose multibyte characters are
//! made of high-bit bytes only. It does not hold for the client-only
//! encodings SJIS, SHIFT_JIS_2004, BIG5, GBK, UHC and GB18030, whose
//! multibyte characters may end in an ASCII byte: in SJIS, `\x83\x5c` is one
//! character to PostgreSQL but `\x83` and a backslash to a byte lexer, so
//! `SELECT E'\x83\x5c'; CREATE EXTENSION x; -- '` hides a statement from it.
//! (UHC's only convertible ASCII trail bytes are letters, which end nothing,
//! but it is stepped as PostgreSQL steps it all the same.)
//!
//! [`lexable`] turns a message string into the text the classifier lexes:
//! ASCII characters unchanged, every non-ASCII character (in the dangerous
//! encodings, the whole multibyte character, its ASCII trail byte included)
//! replaced by one private-use code point per byte (U+F700 + byte), so that
//! no byte of a multibyte character can end a literal, and equal names stay
//! equal and different names different. Characters are delimited as
//! PostgreSQL's `pg_*_mblen` in `src/common/wchar.c` delimits them; its
//! verifiers accept a character only with that length (GB18030: 4 bytes
//! when the second is `0x30`–`0x39`, else 2), and reject the whole message
//! otherwise (`22021`), so text that runs is read exactly; a truncated last
//! character just becomes placeholders. JOHAB, though a client-only encoding
//! in real life with ASCII trail bytes, is accepted by PostgreSQL only with
//! trail bytes `0xA1`–`0xFE` (`pg_johab_verifychar`), so it is safe as bytes.
//! A multibyte character is never converted to an ASCII one (PostgreSQL's
//! conversion maps keep ASCII one-to-one).
//!
//! Which encoding applies is the gate's to know ([`Reading`]): the one the
//! cluster last reported, or, while a change may still be in flight,
//! every stepping at once ([`for_each_reading`], [`cautious_union`]).
//!
//! Cost: UTF-8 text is borrowed as it is (one validity scan, which the
//! classifier needed anyway); pure-ASCII text in any encoding is borrowed
//! after an `is_ascii` scan. Other text is copied once, at most three bytes
//! per byte.

use std::borrow::Cow;
use std::sync::Arc;

use crate::rules::classify::{Classification, Writes};

/// How PostgreSQL delimits characters in a client encoding, as far as the
/// classifier needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stepping {
    /// UTF8: the text is read as it is (invalid UTF-8 is refused by the
    /// cluster, so its lossy reading never runs).
    Utf8,
    /// Every byte of a multibyte character has the high bit (SQL_ASCII,
    /// LATIN*, WIN*, KOI8*, ISO_8859_*, EUC_*, MULE_INTERNAL, JOHAB): each
    /// non-ASCII byte is read on its own.
    Bytes,
    /// SJIS, SHIFT_JIS_2004: `0xA1`–`0xDF` is one byte (half-width kana),
    /// any other high-bit byte leads a 2-byte character.
    Sjis,
    /// BIG5, GBK, UHC: any high-bit byte leads a 2-byte character.
    DoubleByte,
    /// GB18030: a high-bit byte leads a 4-byte character when the next
    /// byte is `0x30`–`0x39`, else a 2-byte one.
    Gb18030,
}

impl Stepping {
    /// Every distinct way of reading text: what a message is read under
    /// when the encoding the cluster will use for it is not known.
    pub const ALL: [Stepping; 5] = [
        Stepping::Utf8,
        Stepping::Bytes,
        Stepping::Sjis,
        Stepping::DoubleByte,
        Stepping::Gb18030,
    ];

    /// The length of the character `bytes` starts with, as PostgreSQL's
    /// `pg_encoding_mblen` says (it may run past the end of `bytes`: a
    /// truncated character). `bytes` must not be empty.
    pub fn char_len(self, bytes: &[u8]) -> usize {
        let Some(&lead) = bytes.first() else {
            return 1;
        };
        if lead < 0x80 {
            return 1;
        }
        match self {
            // pg_utf_mblen: lengths by the lead byte, 1 for an illegal one.
            Stepping::Utf8 => match lead {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            },
            Stepping::Bytes => 1,
            Stepping::Sjis if (0xA1..=0xDF).contains(&lead) => 1,
            Stepping::Sjis | Stepping::DoubleByte => 2,
            Stepping::Gb18030 => match bytes.get(1) {
                Some(0x30..=0x39) => 4,
                _ => 2,
            },
        }
    }

    /// The stepping of a client encoding named as PostgreSQL names it in
    /// ParameterStatus (`SJIS`, `UTF8`, …), or by one of its aliases
    /// (`Shift_JIS`, `win932`, `UNICODE`, …; case and punctuation ignored,
    /// as `pg_char_to_encoding` does). `None` for a name PostgreSQL does not
    /// know: the caller then reads text every way (fail closed).
    pub fn of_encoding(name: &str) -> Option<Stepping> {
        let mut key = [0u8; 24];
        let mut len = 0;
        for b in name.bytes().filter(u8::is_ascii_alphanumeric) {
            *key.get_mut(len)? = b.to_ascii_lowercase();
            len += 1;
        }
        let key = std::str::from_utf8(&key[..len]).ok()?;
        let stepping = match key {
            "utf8" | "unicode" => Stepping::Utf8,
            "sjis" | "shiftjis" | "mskanji" | "win932" | "windows932" | "shiftjis2004" => {
                Stepping::Sjis
            }
            "big5" | "win950" | "windows950" | "gbk" | "win936" | "windows936" | "uhc"
            | "win949" | "windows949" => Stepping::DoubleByte,
            "gb18030" => Stepping::Gb18030,
            "sqlascii" | "eucjp" | "euccn" | "euckr" | "euctw" | "eucjis2004" | "muleinternal"
            | "johab" | "koi8" | "koi8r" | "koi8u" | "alt" | "abc" | "tcvn" | "tcvn5712"
            | "vscii" | "win" => Stepping::Bytes,
            _ if single_byte(key) => Stepping::Bytes,
            _ => return None,
        };
        Some(stepping)
    }
}

/// LATIN1–10, ISO 8859-x, WIN/WINDOWS 866, 874, 1250–1258: single-byte
/// encodings (their cleaned names, as `pg_encname_tbl` lists them).
fn single_byte(key: &str) -> bool {
    let number = |prefix: &str| {
        key.strip_prefix(prefix)
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok())
    };
    if let Some(n) = number("latin") {
        return (1..=10).contains(&n);
    }
    if let Some(n) = number("iso8859") {
        return (1..=10).contains(&n) || (13..=16).contains(&n);
    }
    // "iso_8859_5" cleans to "iso88595", handled above.
    match number("windows").or_else(|| number("win")) {
        Some(n) => n == 866 || n == 874 || (1250..=1258).contains(&n),
        None => false,
    }
}

/// The private-use character a byte of a non-ASCII character is read as.
fn placeholder(byte: u8) -> char {
    char::from_u32(0xF700 + u32::from(byte)).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The text the classifier lexes for the raw bytes of a message string
/// (no NUL) that the cluster reads under `stepping`. See the module
/// documentation for the rule.
pub fn lexable(bytes: &[u8], stepping: Stepping) -> Cow<'_, str> {
    if stepping == Stepping::Utf8 {
        // Invalid UTF-8 is refused by the cluster (22021): never runs.
        return String::from_utf8_lossy(bytes);
    }
    if bytes.is_ascii() {
        if let Ok(text) = std::str::from_utf8(bytes) {
            return Cow::Borrowed(text);
        }
    }
    let mut out = String::with_capacity(bytes.len() + bytes.len() / 2);
    let mut at = 0;
    while let Some(rest) = bytes.get(at..).filter(|rest| !rest.is_empty()) {
        let len = stepping.char_len(rest).min(rest.len());
        match rest {
            [b, ..] if b.is_ascii() => out.push(char::from(*b)),
            _ => out.extend(rest[..len].iter().copied().map(placeholder)),
        }
        at += len;
    }
    Cow::Owned(out)
}

/// What the gate knows of the encoding the cluster will read a message in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// The client encoding in force, as the cluster last reported it.
    Known(Stepping),
    /// A change may be in flight (or the cluster named an encoding this
    /// proxy does not know): any stepping may apply.
    Unknown,
}

/// Calls `f` with each text `bytes` may be to the cluster under `reading`:
/// one for a known encoding or pure-ASCII text (the same in every
/// encoding), else one per stepping. One reading is held at a time, so an
/// 8 MiB statement costs one converted copy, not five.
pub fn for_each_reading(bytes: &[u8], reading: Reading, mut f: impl FnMut(&str)) {
    match reading {
        Reading::Known(stepping) => f(&lexable(bytes, stepping)),
        Reading::Unknown if bytes.is_ascii() => f(&lexable(bytes, Stepping::Bytes)),
        Reading::Unknown => {
            for stepping in Stepping::ALL {
                f(&lexable(bytes, stepping));
            }
        }
    }
}

/// One verdict for a text read several ways, of which the cluster will
/// apply exactly one: every feature and every row-adding effect any reading
/// finds. Names the readings prepare are marked as adding rows, and names
/// they deallocate are kept (a reading that is not the cluster's may name
/// a statement that exists and must not lose or lower what is known of it).
pub fn cautious_union(verdicts: Vec<Arc<Classification>>) -> Arc<Classification> {
    let mut verdicts = verdicts.into_iter();
    let Some(first) = verdicts.next() else {
        return Arc::new(Classification::default());
    };
    let rest: Vec<_> = verdicts.filter(|v| **v != *first).collect();
    if rest.is_empty() {
        return first;
    }
    let mut union = rest
        .into_iter()
        .fold(Classification::clone(&first), |union, v| {
            union.union(Classification::clone(&v))
        });
    for (_, writes) in union.prepares.iter_mut() {
        *writes = Writes::ALL;
    }
    for (_, adds_rows) in union.cursors.iter_mut() {
        *adds_rows = true;
    }
    union.deallocates.clear();
    Arc::new(union)
}

/// The value of a ParameterStatus body (`name\0value\0`) if it names
/// `parameter`.
pub fn parameter_value<'a>(body: &'a [u8], parameter: &str) -> Option<&'a [u8]> {
    let rest = body
        .strip_prefix(parameter.as_bytes())?
        .strip_prefix(b"\0")?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..end])
}

/// The stepping a ParameterStatus value names (`None` if unknown).
pub fn stepping_of_value(value: &[u8]) -> Option<Stepping> {
    std::str::from_utf8(value)
        .ok()
        .and_then(Stepping::of_encoding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_names_and_aliases() {
        for (name, stepping) in [
            ("UTF8", Some(Stepping::Utf8)),
            ("UNICODE", Some(Stepping::Utf8)),
            ("utf-8", Some(Stepping::Utf8)),
            ("SJIS", Some(Stepping::Sjis)),
            ("Shift_JIS", Some(Stepping::Sjis)),
            ("SHIFT_JIS_2004", Some(Stepping::Sjis)),
            ("WIN932", Some(Stepping::Sjis)),
            ("BIG5", Some(Stepping::DoubleByte)),
            ("GBK", Some(Stepping::DoubleByte)),
            ("UHC", Some(Stepping::DoubleByte)),
            ("windows949", Some(Stepping::DoubleByte)),
            ("GB18030", Some(Stepping::Gb18030)),
            ("JOHAB", Some(Stepping::Bytes)),
            ("EUC_JP", Some(Stepping::Bytes)),
            ("EUC_TW", Some(Stepping::Bytes)),
            ("EUC_JIS_2004", Some(Stepping::Bytes)),
            ("MULE_INTERNAL", Some(Stepping::Bytes)),
            ("SQL_ASCII", Some(Stepping::Bytes)),
            ("LATIN1", Some(Stepping::Bytes)),
            ("LATIN10", Some(Stepping::Bytes)),
            ("ISO_8859_5", Some(Stepping::Bytes)),
            ("ISO-8859-16", Some(Stepping::Bytes)),
            ("WIN1258", Some(Stepping::Bytes)),
            ("WIN866", Some(Stepping::Bytes)),
            ("KOI8U", Some(Stepping::Bytes)),
            ("LATIN11", None),
            ("WIN1259", None),
            ("EBCDIC", None),
            ("", None),
            ("x".repeat(100).as_str(), None),
        ] {
            assert_eq!(Stepping::of_encoding(name), stepping, "{name}");
        }
    }

    #[test]
    fn sjis_backslash_trail_byte_stays_inside_its_character() {
        let sql = b"SELECT E'\x83\x5c'; CREATE EXTENSION pgcrypto; -- '";
        let text = lexable(sql, Stepping::Sjis);
        assert_eq!(
            text,
            "SELECT E'\u{F783}\u{F75C}'; CREATE EXTENSION pgcrypto; -- '"
        );
        let verdict = crate::rules::classify::classify(&text);
        assert!(!verdict.features.is_empty(), "{verdict:?}");
        // Read as bytes the extension hides inside the string.
        let bytes = crate::rules::classify::classify(&lexable(sql, Stepping::Bytes));
        assert!(bytes.features.is_empty());
    }

    #[test]
    fn each_stepping_delimits_as_postgresql() {
        // SJIS half-width kana is one byte: the quote after it is a quote.
        assert_eq!(lexable(b"'\xb1'", Stepping::Sjis), "'\u{F7B1}'");
        assert_eq!(
            lexable(b"'\xb1'", Stepping::DoubleByte),
            "'\u{F7B1}\u{F727}"
        );
        // GB18030: four bytes when the second is a digit.
        assert_eq!(
            lexable(b"\x81\x30\x81\x30'", Stepping::Gb18030),
            "\u{F781}\u{F730}\u{F781}\u{F730}'"
        );
        assert_eq!(lexable(b"\x81\x27", Stepping::Gb18030), "\u{F781}\u{F727}");
        // A truncated last character is placeholders to the end.
        assert_eq!(
            lexable(b"a\x81\x30", Stepping::Gb18030),
            "a\u{F781}\u{F730}"
        );
        assert_eq!(lexable(b"a\x83", Stepping::Sjis), "a\u{F783}");
        // Safe encodings: each high byte on its own.
        assert_eq!(lexable(b"\xe9'", Stepping::Bytes), "\u{F7E9}'");
        assert_eq!(lexable("é'".as_bytes(), Stepping::Utf8), "é'");
    }

    #[test]
    fn ascii_and_utf8_are_borrowed() {
        for stepping in Stepping::ALL {
            assert!(matches!(
                lexable(b"SELECT 1", stepping),
                Cow::Borrowed("SELECT 1")
            ));
        }
        assert!(matches!(
            lexable("SELECT 'é'".as_bytes(), Stepping::Utf8),
            Cow::Borrowed(_)
        ));
        let mut texts = Vec::new();
        for_each_reading(b"SELECT 1", Reading::Unknown, |t| texts.push(t.to_owned()));
        assert_eq!(texts, vec!["SELECT 1".to_owned()]);
    }

    #[test]
    fn unknown_reading_covers_every_stepping() {
        let sql = b"SELECT E'\x83\x5c'; CREATE EXTENSION pgcrypto; -- '";
        let mut texts = Vec::new();
        for_each_reading(sql, Reading::Unknown, |t| texts.push(t.to_owned()));
        assert!(texts.contains(&lexable(sql, Stepping::Sjis).into_owned()));
        assert!(texts.contains(&lexable(sql, Stepping::Bytes).into_owned()));
        assert_eq!(texts.len(), Stepping::ALL.len());
    }

    #[test]
    fn union_of_disagreeing_readings_is_cautious() {
        let a = Classification {
            prepares: vec![("s".into(), Writes::NONE)],
            deallocates: vec![Some("t".into())],
            ..Default::default()
        };
        let b = Classification {
            adds_rows: true,
            ..Default::default()
        };
        let same = cautious_union(vec![Arc::new(a.clone()), Arc::new(a.clone())]);
        assert_eq!(*same, a, "readings that agree are taken as they are");
        let union = cautious_union(vec![Arc::new(a), Arc::new(b)]);
        assert!(union.adds_rows);
        assert_eq!(union.prepares, vec![("s".to_owned(), Writes::ALL)]);
        assert!(union.deallocates.is_empty());
    }

    #[test]
    fn parameter_status_values() {
        assert_eq!(
            parameter_value(b"client_encoding\0SJIS\0", "client_encoding"),
            Some(&b"SJIS"[..])
        );
        assert_eq!(
            parameter_value(b"client_encoding\0SJIS", "client_encoding"),
            None
        );
        assert_eq!(
            parameter_value(b"client_encodingx\0SJIS\0", "client_encoding"),
            None
        );
        assert_eq!(
            parameter_value(b"server_encoding\0UTF8\0", "client_encoding"),
            None
        );
    }

    /// Bytes that end a literal, identifier or comment, or start one.
    const SPECIAL: &[u8] = b"'\"\\$-/*;E";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// For every dangerous encoding, no byte inside a multibyte
        /// character survives as ASCII: the ASCII characters of the lexable
        /// text are exactly the ASCII characters PostgreSQL sees.
        #[test]
        fn no_ascii_byte_of_a_multibyte_character_survives(
            bytes in proptest::collection::vec(
                prop_oneof![
                    3 => proptest::sample::select(SPECIAL.to_vec()),
                    1 => 0x30u8..=0x39,
                    4 => 0x80u8..=0xff,
                    1 => 0x01u8..=0x7f,
                ],
                0..48,
            )
        ) {
            for stepping in [Stepping::Sjis, Stepping::DoubleByte, Stepping::Gb18030] {
                let text = lexable(&bytes, stepping);
                // PostgreSQL's own walk (pg_sjis_mblen, pg_big5_mblen,
                // pg_gb18030_mblen, written out again): ASCII characters.
                let mut expected = Vec::new();
                let mut at = 0;
                while at < bytes.len() {
                    let s = &bytes[at..];
                    let len = if s[0] < 0x80 {
                        1
                    } else {
                        match stepping {
                            Stepping::Sjis if s[0] >= 0xa1 && s[0] <= 0xdf => 1,
                            Stepping::Gb18030 if s.len() > 1 && s[1] >= 0x30 && s[1] <= 0x39 => 4,
                            _ => 2,
                        }
                    };
                    if len == 1 && s[0] < 0x80 {
                        expected.push(s[0]);
                    }
                    at += len;
                }
                let ascii: Vec<u8> = text.bytes().filter(u8::is_ascii).collect();
                prop_assert_eq!(&ascii, &expected);
                // Deterministic and injective: the bytes come back.
                let back: Vec<u8> = text
                    .chars()
                    .map(|c| if c.is_ascii() { c as u8 } else { (u32::from(c) - 0xF700) as u8 })
                    .collect();
                prop_assert_eq!(&back, &bytes);
            }
        }
    }
}
