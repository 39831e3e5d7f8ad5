//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, on both
//! sides: [`ServerExchange`] verifies a client against the role's stored
//! verifier (with `tls-server-end-point` channel binding for
//! `SCRAM-SHA-256-PLUS`), and recovers the client's ClientKey from its
//! proof; [`ClientExchange`] logs into the cluster as that role with the
//! ClientKey instead of the password, and checks the cluster's signature.
//!
//! Why the ClientKey works: a SCRAM proof is `ClientKey XOR
//! HMAC(StoredKey, AuthMessage)`. The server knows StoredKey, so it can
//! compute the HMAC and XOR it away, and `H(ClientKey) == StoredKey` proves
//! the key genuine. With the ClientKey the proxy can answer any later
//! exchange for the same verifier (same salt and iterations: the cluster's
//! own), without ever learning the password.
//!
//! The crypto is ring's (HMAC-SHA-256, SHA-256), as rustls already uses.
//! Every parse is of attacker-controlled bytes: no panics, bounded sizes,
//! errors that name what was wrong.
//!
//! This module holds what both sides share: the [`Verifier`] and its
//! keys, the small crypto helpers, the errors and the message parsing.
//! `server` is the side facing the client, `client` the side facing
//! the cluster, `channel_binding` the certificate hash PLUS binds to.

mod channel_binding;
mod client;
mod server;
#[cfg(test)]
mod tests;

pub use channel_binding::tls_server_end_point;
pub use client::ClientExchange;
pub use server::{ServerExchange, Verified};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ring::{digest, hmac};
use thiserror::Error;

/// The mechanism names PostgreSQL offers.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The only channel-binding type PostgreSQL supports.
const TLS_SERVER_END_POINT: &str = "tls-server-end-point";
/// Raw bytes of the server's nonce part (PostgreSQL's `SCRAM_RAW_NONCE_LEN`).
const NONCE_LEN: usize = 18;
/// SCRAM messages in a PostgreSQL login are a few hundred bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Iterations the proxy accepts in a verifier: PostgreSQL's default is
/// 4096; anything past this would let a hostile verifier burn CPU.
const MAX_ITERATIONS: u32 = 1 << 24;
const KEY_LEN: usize = 32;

/// A 32-byte SCRAM key (StoredKey, ServerKey, ClientKey).
pub type Key = [u8; KEY_LEN];

/// What went wrong in an exchange. `Proof` is the wrong-password case.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("SCRAM channel binding negotiation error")]
    ChannelBindingNegotiation,
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    #[error("unsupported SASL mechanism {0:?}")]
    Mechanism(String),
    #[error("wrong SCRAM proof")]
    Proof,
    #[error("the server's SCRAM signature does not match")]
    ServerSignature,
    #[error("SCRAM messages out of order")]
    State,
}

/// A role's stored SCRAM-SHA-256 verifier, as in `pg_authid.rolpassword`:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Key,
    pub server_key: Key,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are secrets: never in logs.
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Why a stored password cannot be used for SCRAM.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum VerifierError {
    #[error("the role has no password")]
    Missing,
    #[error("the role's password is stored as md5, not as a SCRAM-SHA-256 verifier")]
    Md5,
    #[error("the role's password is stored in plain text, not as a SCRAM-SHA-256 verifier")]
    Plain,
    #[error("the role's SCRAM verifier is malformed")]
    Malformed,
}

impl Verifier {
    /// Parses `rolpassword`.
    pub fn parse(stored: Option<&str>) -> Result<Verifier, VerifierError> {
        let stored = stored.ok_or(VerifierError::Missing)?;
        if stored.is_empty() {
            return Err(VerifierError::Missing);
        }
        let Some(rest) = stored.strip_prefix("SCRAM-SHA-256$") else {
            return Err(if stored.starts_with("md5") && stored.len() == 35 {
                VerifierError::Md5
            } else {
                VerifierError::Plain
            });
        };
        let parse = || -> Option<Verifier> {
            let (params, keys) = rest.split_once('$')?;
            let (iterations, salt) = params.split_once(':')?;
            let (stored_key, server_key) = keys.split_once(':')?;
            let iterations: u32 = iterations.parse().ok()?;
            if iterations == 0 || iterations > MAX_ITERATIONS {
                return None;
            }
            Some(Verifier {
                iterations,
                salt: BASE64.decode(salt).ok()?,
                stored_key: BASE64.decode(stored_key).ok()?.try_into().ok()?,
                server_key: BASE64.decode(server_key).ok()?.try_into().ok()?,
            })
        };
        parse().ok_or(VerifierError::Malformed)
    }

    /// The verifier of `password` (with `salt` and `iterations`): what
    /// PostgreSQL stores for it. For tests and for mock exchanges.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// A verifier no password matches, the same for the same `seed` every
    /// time: for roles that do not exist, so that an exchange with them
    /// looks like any other (as PostgreSQL's mock authentication does) and
    /// does not tell who exists.
    pub fn mock(seed: &[u8]) -> Verifier {
        let salt = hmac_sha256(seed, b"salt");
        Verifier {
            iterations: 4096,
            salt: salt[..16].to_vec(),
            stored_key: hmac_sha256(seed, b"stored"),
            server_key: hmac_sha256(seed, b"server"),
        }
    }

    /// The stored form, as `pg_authid` holds it.
    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> Key {
    let mut salted = [0u8; KEY_LEN];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN),
        salt,
        password.as_bytes(),
        &mut salted,
    );
    salted
}

/// The ClientKey a client with `password` proves, for the salt and
/// iterations a server-first message named: what a client computes (test
/// clients use it with [`ClientExchange`]).
pub fn client_key(password: &str, salt: &[u8], iterations: u32) -> Key {
    hmac_sha256(&salted_password(password, salt, iterations), b"Client Key")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Key {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, data);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> Key {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

fn xor(a: &Key, b: &Key) -> Key {
    let mut out = [0u8; KEY_LEN];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

/// Equal in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn random_nonce() -> String {
    let mut raw = [0u8; NONCE_LEN];
    rand::fill(&mut raw[..]);
    BASE64.encode(raw)
}

fn text(message: &[u8]) -> Result<&str, ScramError> {
    if message.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::Malformed("message too long"));
    }
    std::str::from_utf8(message).map_err(|_| ScramError::Malformed("message is not UTF-8"))
}

/// The value of the `index`th comma-separated attribute, which must be
/// `name=`.
fn attribute(message: &str, index: usize, name: char) -> Result<&str, ScramError> {
    let part = message
        .split(',')
        .nth(index)
        .ok_or(ScramError::Malformed("missing attribute"))?;
    let mut chars = part.chars();
    if chars.next() != Some(name) || chars.next() != Some('=') {
        return Err(ScramError::Malformed("unexpected attribute"));
    }
    Ok(&part[2..])
}

fn attribute_at(message: &str, index: usize, name: char) -> Result<bool, ScramError> {
    Ok(attribute(message, index, name).is_ok())
}
