//! The parts of the PostgreSQL wire protocol (version 3.0) that the proxy
//! itself reads or writes. Everything else passes through as raw bytes.
//!
//! See <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

pub mod error;
pub mod frame;
pub(crate) mod sqlstate;
pub mod startup;

pub use error::ErrorFields;
pub use frame::{FrameError, FrameHeader};
