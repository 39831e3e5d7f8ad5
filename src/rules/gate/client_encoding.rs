//! The session's client encoding as the cluster last reported it, shared by
//! the two gates: the cluster gate notes each ParameterStatus and counts
//! ReadyForQuery; the client gate asks in which encoding the cluster will
//! read the message at hand (unknown while an earlier change may still be
//! in flight), so that statement text and names are read as the cluster
//! reads them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use crate::rules::encoding::{self, Reading, Stepping};

/// The client encoding the cluster reported last (ParameterStatus in the
/// login greeting and after every change), and how many ReadyForQuery had
/// been seen when it was: a message the client sent before the cluster
/// answered all earlier ones may be read in an encoding still in flight.
#[derive(Debug)]
pub(super) struct EncodingState {
    /// `Stepping::ALL` index, or [`UNKNOWN_ENCODING`].
    stepping: AtomicU8,
    /// The server encoding is UTF8: with a UTF8 client, names are stored as
    /// the client sent them (no conversion, no folding).
    pub(super) server_utf8: AtomicBool,
    /// ReadyForQuery messages the cluster gate has seen (published after
    /// the ParameterStatus messages before them).
    pub(super) readies: AtomicU64,
}

/// An encoding the cluster named that the proxy does not know, or none.
const UNKNOWN_ENCODING: u8 = u8::MAX;

impl Default for EncodingState {
    fn default() -> EncodingState {
        EncodingState {
            stepping: AtomicU8::new(UNKNOWN_ENCODING),
            server_utf8: AtomicBool::new(false),
            readies: AtomicU64::new(0),
        }
    }
}

impl EncodingState {
    /// Notes a ParameterStatus body if it is `client_encoding` or
    /// `server_encoding`.
    pub(super) fn note_parameter(&self, body: &[u8]) {
        if body.starts_with(b"client_encoding\0") {
            // A value cut off by the peek is no encoding PostgreSQL knows.
            let code = encoding::parameter_value(body, "client_encoding")
                .and_then(encoding::stepping_of_value)
                .and_then(|s| Stepping::ALL.iter().position(|&a| a == s))
                .map_or(UNKNOWN_ENCODING, |i| i as u8);
            self.stepping.store(code, Ordering::Release);
        } else if let Some(value) = encoding::parameter_value(body, "server_encoding") {
            self.server_utf8.store(
                encoding::stepping_of_value(value) == Some(Stepping::Utf8),
                Ordering::Release,
            );
        }
    }

    /// The encoding the cluster reads the next message in, once it has
    /// answered `requests` requests.
    pub(super) fn reading(&self, requests: u64) -> Reading {
        if self.readies.load(Ordering::Acquire) < requests {
            return Reading::Unknown;
        }
        match Stepping::ALL.get(self.stepping.load(Ordering::Acquire) as usize) {
            Some(&stepping) => Reading::Known(stepping),
            None => Reading::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reported_encoding_counts_once_earlier_requests_are_answered() {
        let state = EncodingState::default();
        assert_eq!(state.reading(0), Reading::Unknown, "nothing reported");
        state.note_parameter(b"client_encoding\0SJIS\0");
        assert_eq!(state.reading(0), Reading::Known(Stepping::Sjis));
        assert_eq!(state.reading(1), Reading::Unknown, "a request unanswered");
        state.readies.store(1, Ordering::Release);
        assert_eq!(state.reading(1), Reading::Known(Stepping::Sjis));
        state.note_parameter(b"client_encoding\0EBCDIC\0");
        assert_eq!(state.reading(1), Reading::Unknown, "an unknown name");
        state.note_parameter(b"client_encoding\0UTF8\0");
        state.note_parameter(b"client_encoding\0UTF");
        assert_eq!(state.reading(1), Reading::Unknown, "a value cut off");
        state.note_parameter(b"client_encoding\0UTF8\0");
        state.note_parameter(b"application_name\0SJIS\0");
        assert_eq!(state.reading(1), Reading::Known(Stepping::Utf8));
        assert!(!state.server_utf8.load(Ordering::Acquire));
        state.note_parameter(b"server_encoding\0UTF8\0");
        assert!(state.server_utf8.load(Ordering::Acquire));
    }
}
