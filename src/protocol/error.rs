//! Building the ErrorResponse (and NoticeResponse) messages the proxy sends
//! on its own account.

use bytes::BytesMut;
use pgwire::messages::response::{ErrorResponse, NoticeResponse};
use pgwire::messages::Message;

/// How bad an error the proxy reports is; PostgreSQL's severities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Not an error: sent as a NoticeResponse, the session goes on.
    Warning,
    /// The statement failed; the session goes on.
    Error,
    /// The session ends right after this message.
    Fatal,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// The fields of an ErrorResponse the proxy writes: severity, SQLSTATE,
/// a primary message in PostgreSQL's style (lower case, no full stop) and
/// optional detail and hint lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorFields {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: Severity::Error,
            ..Self::fatal(code, message)
        }
    }

    /// A NoticeResponse of severity WARNING.
    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: Severity::Warning,
            ..Self::fatal(code, message)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Appends the encoded message to `out`: an ErrorResponse, or a
    /// NoticeResponse for a warning.
    pub fn encode(&self, out: &mut BytesMut) {
        let severity = self.severity.as_str().to_owned();
        let mut fields = vec![
            (b'S', severity.clone()),
            (b'V', severity),
            (b'C', self.code.to_owned()),
            (b'M', strip_nul(&self.message)),
        ];
        if let Some(detail) = &self.detail {
            fields.push((b'D', strip_nul(detail)));
        }
        if let Some(hint) = &self.hint {
            fields.push((b'H', strip_nul(hint)));
        }
        if self.severity == Severity::Warning {
            let _ = NoticeResponse::new(fields).encode(out);
            return;
        }
        // Encoding only fails when a message exceeds pgwire's size limit;
        // our messages are short, so fall back to a bare message if it ever does.
        if ErrorResponse::new(fields).encode(out).is_err() {
            let bare = vec![(b'S', "FATAL".to_owned()), (b'C', self.code.to_owned())];
            let _ = ErrorResponse::new(bare).encode(out);
        }
    }

    pub fn to_bytes(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(64 + self.message.len());
        self.encode(&mut out);
        out
    }
}

/// A NUL inside a C string would truncate it on the client: drop it.
fn strip_nul(s: &str) -> String {
    s.replace('\0', "")
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_str(),
            self.code,
            self.message
        )
    }
}

/// Reads the SQLSTATE (`C` field) out of an ErrorResponse body (the bytes
/// after the 5-byte header). Tolerates malformed bodies by returning `None`.
pub fn sqlstate_of(body: &[u8]) -> Option<&str> {
    field_of(body, b'C')
}

/// Reads field `code` (`M` message, `C` SQLSTATE, …) out of an
/// ErrorResponse or NoticeResponse body. `None` if absent, not UTF-8, or
/// the body is malformed.
pub fn field_of(body: &[u8], code: u8) -> Option<&str> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if field == code {
            return std::str::from_utf8(&tail[..end]).ok();
        }
        rest = &tail[end + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_fields_in_order_and_reads_back_the_code() {
        let bytes = ErrorFields::fatal("53300", "too many connections").to_bytes();
        assert_eq!(bytes[0], b'E');
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len + 1, bytes.len());
        assert_eq!(sqlstate_of(&bytes[5..]), Some("53300"));
        assert!(bytes.ends_with(b"too many connections\0\0"));
    }

    #[test]
    fn sqlstate_of_malformed_body_is_none() {
        assert_eq!(sqlstate_of(b"Cabc"), None);
        assert_eq!(sqlstate_of(b""), None);
        assert_eq!(sqlstate_of(b"\0"), None);
    }
}
