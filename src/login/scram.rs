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

/// The `tls-server-end-point` channel-binding data of a DER certificate
/// (RFC 5929): its hash with the hash function of its signature algorithm,
/// SHA-256 where that is MD5 or SHA-1. `None` for signature algorithms
/// without a defined hash (Ed25519), where PostgreSQL cannot bind either.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let algorithm = match signature_algorithm_oid(cert_der)? {
        // sha1/md5 with RSA, ecdsa-with-SHA1: SHA-256 per RFC 5929.
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04 | 0x05]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]
        // sha256WithRSAEncryption, ecdsa-with-SHA256, RSASSA-PSS (the
        // usual SHA-256 parameters)
        | [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]
        | [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a] => &digest::SHA256,
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03] => &digest::SHA384,
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04] => &digest::SHA512,
        _ => return None,
    };
    Some(digest::digest(algorithm, cert_der).as_ref().to_vec())
}

/// The OID of a certificate's outer `signatureAlgorithm`: `Certificate ::=
/// SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier,
/// signature BIT STRING }`, walked with just enough DER.
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    let (tag, certificate, _) = der_tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after_tbs) = der_tlv(certificate)?;
    let (tag, algorithm, _) = der_tlv(after_tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_tlv(algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// One DER tag-length-value: `(tag, value, rest)`.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The channel-binding flag a client's first message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Binding {
    /// `n`: the client does not support channel binding.
    None,
    /// `y`: it does, but thinks the server does not.
    ClientOnly,
    /// `p=tls-server-end-point`: bound to the server's certificate.
    EndPoint,
}

/// The server side of one SCRAM exchange with a client.
#[derive(Debug)]
pub struct ServerExchange {
    verifier: Verifier,
    /// `tls-server-end-point` data of the certificate the client's TLS
    /// uses; `None` on plaintext (then PLUS is not offered).
    channel: Option<Vec<u8>>,
    state: ServerState,
}

#[derive(Debug)]
enum ServerState {
    Initial,
    /// After the client-first message: what the client-final must match.
    FirstAnswered {
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done,
}

/// A verified client: the server-final message to send and the key the
/// proxy logs into the cluster with.
#[derive(Debug)]
pub struct Verified {
    pub server_final: String,
    pub client_key: Key,
}

impl ServerExchange {
    pub fn new(verifier: Verifier, channel: Option<Vec<u8>>) -> ServerExchange {
        ServerExchange {
            verifier,
            channel,
            state: ServerState::Initial,
        }
    }

    /// The mechanisms to offer, best first: PLUS only where there is a
    /// channel to bind to.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.channel.is_some() {
            &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        } else {
            &[SCRAM_SHA_256]
        }
    }

    /// The client's SASLInitialResponse: `mechanism` and its client-first
    /// message. Returns the server-first message.
    pub fn client_first(&mut self, mechanism: &str, message: &[u8]) -> Result<String, ScramError> {
        if !matches!(self.state, ServerState::Initial) {
            return Err(ScramError::State);
        }
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS if self.channel.is_some() => true,
            other => return Err(ScramError::Mechanism(other.to_owned())),
        };
        let message = text(message)?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = message
            .split_once(',')
            .ok_or(ScramError::Malformed("no channel-binding flag"))?;
        let binding = match flag {
            "n" => Binding::None,
            "y" => Binding::ClientOnly,
            _ => match flag.strip_prefix("p=") {
                Some(TLS_SERVER_END_POINT) => Binding::EndPoint,
                Some(_) => return Err(ScramError::Malformed("unsupported channel-binding type")),
                None => return Err(ScramError::Malformed("bad channel-binding flag")),
            },
        };
        let (authzid, client_first_bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no authorization identity field"))?;
        if !authzid.is_empty() {
            // PostgreSQL does not support an authorization identity.
            return Err(ScramError::Malformed(
                "authorization identity not supported",
            ));
        }
        match (&binding, plus) {
            (Binding::EndPoint, true) | (Binding::None, false) => {}
            // Offered PLUS over TLS, yet the client says it could bind but
            // saw no server support: a downgrade, refused as PostgreSQL does.
            (Binding::ClientOnly, false) if self.channel.is_some() => {
                return Err(ScramError::ChannelBindingNegotiation)
            }
            (Binding::ClientOnly, false) => {}
            _ => return Err(ScramError::ChannelBindingNegotiation),
        }
        let client_nonce = attribute(client_first_bare, 1, 'r')?;
        if !attribute_at(client_first_bare, 0, 'n')? {
            return Err(ScramError::Malformed("no user name attribute"));
        }
        if client_nonce.is_empty()
            || !client_nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(ScramError::Malformed("bad client nonce"));
        }
        let nonce = format!("{client_nonce}{}", random_nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let gs2_len = message.len() - client_first_bare.len();
        self.state = ServerState::FirstAnswered {
            gs2_header: message[..gs2_len].to_owned(),
            client_first_bare: client_first_bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first)
    }

    /// The client's final message: checks the binding, the nonce and the
    /// proof. On success, the server-final message and the ClientKey.
    pub fn client_final(&mut self, message: &[u8]) -> Result<Verified, ScramError> {
        let ServerState::FirstAnswered {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(ScramError::State);
        };
        let message = text(message)?;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let binding = attribute(without_proof, 0, 'c')?;
        let binding = BASE64
            .decode(binding)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        let mut expected = gs2_header.clone().into_bytes();
        if gs2_header.starts_with("p=") {
            expected.extend_from_slice(self.channel.as_deref().unwrap_or_default());
        }
        if !constant_time_eq(&binding, &expected) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if attribute(without_proof, 1, 'r')? != nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof: Key = BASE64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("proof is not 32 bytes of base64"))?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        if !constant_time_eq(&sha256(&client_key), &self.verifier.stored_key) {
            return Err(ScramError::Proof);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok(Verified {
            server_final: format!("v={}", BASE64.encode(server_signature)),
            client_key,
        })
    }
}

/// The client side of one SCRAM exchange with the cluster, answering with
/// a ClientKey recovered from the client's own proof.
#[derive(Debug)]
pub struct ClientExchange {
    client_key: Key,
    server_key: Key,
    gs2_header: String,
    /// Channel-binding data for the cluster's certificate (PLUS only).
    channel: Option<Vec<u8>>,
    state: ClientState,
}

#[derive(Debug)]
enum ClientState {
    First {
        client_first_bare: String,
        nonce: String,
    },
    Final {
        auth_message: String,
    },
    Done,
}

impl ClientExchange {
    /// Starts an exchange; `channel` is the cluster certificate's
    /// `tls-server-end-point` data when binding (`SCRAM-SHA-256-PLUS`).
    /// Returns the exchange and the client-first message.
    pub fn new(verifier: &Verifier, client_key: Key, channel: Option<Vec<u8>>) -> (Self, String) {
        let nonce = random_nonce();
        let gs2_header = match channel {
            Some(_) => format!("p={TLS_SERVER_END_POINT},,"),
            None => "n,,".to_owned(),
        };
        let client_first_bare = format!("n=,r={nonce}");
        let first = format!("{gs2_header}{client_first_bare}");
        (
            ClientExchange {
                client_key,
                server_key: verifier.server_key,
                gs2_header,
                channel,
                state: ClientState::First {
                    client_first_bare,
                    nonce,
                },
            },
            first,
        )
    }

    /// The mechanism this exchange uses.
    pub fn mechanism(&self) -> &'static str {
        if self.channel.is_some() {
            SCRAM_SHA_256_PLUS
        } else {
            SCRAM_SHA_256
        }
    }

    /// The cluster's server-first message; returns the client-final one.
    pub fn server_first(&mut self, message: &[u8]) -> Result<String, ScramError> {
        let ClientState::First {
            client_first_bare,
            nonce,
        } = std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(ScramError::State);
        };
        let server_first = text(message)?;
        let combined = attribute(server_first, 0, 'r')?;
        if !combined.starts_with(&nonce) || combined.len() == nonce.len() {
            return Err(ScramError::Malformed(
                "the server's nonce does not extend ours",
            ));
        }
        let mut binding = self.gs2_header.clone().into_bytes();
        if let Some(channel) = &self.channel {
            binding.extend_from_slice(channel);
        }
        let without_proof = format!("c={},r={combined}", BASE64.encode(binding));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let stored_key = sha256(&self.client_key);
        let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof = xor(&self.client_key, &signature);
        self.state = ClientState::Final { auth_message };
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)))
    }

    /// The cluster's server-final message: its signature must be the one
    /// only the holder of the verifier can make.
    pub fn server_final(&mut self, message: &[u8]) -> Result<(), ScramError> {
        let ClientState::Final { auth_message } =
            std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(ScramError::State);
        };
        let message = text(message)?;
        if message.starts_with("e=") {
            return Err(ScramError::ServerSignature);
        }
        let signature = BASE64
            .decode(attribute(message, 0, 'v')?)
            .map_err(|_| ScramError::Malformed("server signature is not base64"))?;
        let expected = hmac_sha256(&self.server_key, auth_message.as_bytes());
        if constant_time_eq(&signature, &expected) {
            Ok(())
        } else {
            Err(ScramError::ServerSignature)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example: user "user", password "pencil".
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";

    fn verifier() -> Verifier {
        Verifier::from_password("pencil", &BASE64.decode(RFC_SALT).unwrap(), 4096)
    }

    #[test]
    fn rfc_7677_keys_and_proof() {
        // From RFC 7677 section 3: the proof and the server signature for
        // the fixed nonces there.
        let v = verifier();
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth = format!("n=user,r=rOprNGfwEbeRWgbNEkqO,{server_first},{without_proof}");
        let salted = {
            let mut out = [0u8; 32];
            ring::pbkdf2::derive(
                ring::pbkdf2::PBKDF2_HMAC_SHA256,
                std::num::NonZeroU32::new(4096).unwrap(),
                &BASE64.decode(RFC_SALT).unwrap(),
                b"pencil",
                &mut out,
            );
            out
        };
        let client_key = hmac_sha256(&salted, b"Client Key");
        let proof = xor(&client_key, &hmac_sha256(&v.stored_key, auth.as_bytes()));
        assert_eq!(
            BASE64.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let server_signature = hmac_sha256(&v.server_key, auth.as_bytes());
        assert_eq!(
            BASE64.encode(server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert_eq!(Verifier::parse(Some(&v.encode())), Ok(v));
    }

    /// A client that knows the password, as libpq computes it.
    fn client_final(
        v_password: &str,
        gs2: &str,
        cbind: &[u8],
        client_first_bare: &str,
        server_first: &str,
    ) -> String {
        let nonce = attribute(server_first, 0, 'r').unwrap();
        let salt = BASE64
            .decode(attribute(server_first, 1, 's').unwrap())
            .unwrap();
        let iterations: u32 = attribute(server_first, 2, 'i').unwrap().parse().unwrap();
        let v = Verifier::from_password(v_password, &salt, iterations);
        let mut binding = gs2.as_bytes().to_vec();
        binding.extend_from_slice(cbind);
        let without_proof = format!("c={},r={nonce}", BASE64.encode(binding));
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(iterations).unwrap(),
            &salt,
            v_password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let proof = xor(&client_key, &hmac_sha256(&v.stored_key, auth.as_bytes()));
        format!("{without_proof},p={}", BASE64.encode(proof))
    }

    #[test]
    fn the_right_password_verifies_and_its_client_key_logs_in_elsewhere() {
        let v = verifier();
        let mut server = ServerExchange::new(v.clone(), None);
        assert_eq!(server.mechanisms(), &[SCRAM_SHA_256]);
        let server_first = server
            .client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST.as_bytes())
            .unwrap();
        assert!(server_first.starts_with("r=rOprNGfwEbeRWgbNEkqO"));
        let last = client_final(
            "pencil",
            "n,,",
            b"",
            "n=user,r=rOprNGfwEbeRWgbNEkqO",
            &server_first,
        );
        let verified = server.client_final(last.as_bytes()).unwrap();
        assert!(verified.server_final.starts_with("v="));

        // The recovered key answers a second exchange against the same
        // verifier (the cluster's), and the cluster's signature checks out.
        let (mut client, first) = ClientExchange::new(&v, verified.client_key, None);
        let mut cluster = ServerExchange::new(v.clone(), None);
        let (_, bare) = first.split_at(3);
        let sf = cluster
            .client_first(SCRAM_SHA_256, first.as_bytes())
            .unwrap();
        assert!(sf.contains(&bare[bare.find("r=").unwrap() + 2..]));
        let cf = client.server_first(sf.as_bytes()).unwrap();
        let done = cluster.client_final(cf.as_bytes()).unwrap();
        assert_eq!(done.client_key, verified.client_key);
        client.server_final(done.server_final.as_bytes()).unwrap();
    }

    #[test]
    fn a_wrong_password_is_a_wrong_proof() {
        let mut server = ServerExchange::new(verifier(), None);
        let sf = server
            .client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST.as_bytes())
            .unwrap();
        let last = client_final("pencil2", "n,,", b"", "n=user,r=rOprNGfwEbeRWgbNEkqO", &sf);
        assert_eq!(
            server.client_final(last.as_bytes()).unwrap_err(),
            ScramError::Proof
        );
    }

    #[test]
    fn channel_binding_is_checked_and_downgrades_refused() {
        let channel = vec![9u8; 32];
        // Bound: the client's c= must carry our certificate hash.
        let mut server = ServerExchange::new(verifier(), Some(channel.clone()));
        assert_eq!(server.mechanisms(), &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
        let first = "p=tls-server-end-point,,n=,r=abc";
        let sf = server
            .client_first(SCRAM_SHA_256_PLUS, first.as_bytes())
            .unwrap();
        let good = client_final(
            "pencil",
            "p=tls-server-end-point,,",
            &channel,
            "n=,r=abc",
            &sf,
        );
        assert!(server.client_final(good.as_bytes()).is_ok());

        let mut server = ServerExchange::new(verifier(), Some(channel.clone()));
        let sf = server
            .client_first(SCRAM_SHA_256_PLUS, first.as_bytes())
            .unwrap();
        let bad = client_final(
            "pencil",
            "p=tls-server-end-point,,",
            &[1u8; 32],
            "n=,r=abc",
            &sf,
        );
        assert_eq!(
            server.client_final(bad.as_bytes()).unwrap_err(),
            ScramError::ChannelBindingMismatch
        );

        // 'y' where PLUS was offered is a downgrade; 'n' is fine; PLUS
        // without TLS is not offered.
        let mut server = ServerExchange::new(verifier(), Some(channel));
        assert_eq!(
            server
                .client_first(SCRAM_SHA_256, b"y,,n=,r=abc")
                .unwrap_err(),
            ScramError::ChannelBindingNegotiation
        );
        let mut server = ServerExchange::new(verifier(), None);
        assert!(server.client_first(SCRAM_SHA_256, b"y,,n=,r=abc").is_ok());
        let mut server = ServerExchange::new(verifier(), None);
        assert_eq!(
            server
                .client_first(SCRAM_SHA_256_PLUS, first.as_bytes())
                .unwrap_err(),
            ScramError::Mechanism(SCRAM_SHA_256_PLUS.to_owned())
        );
    }

    #[test]
    fn verifiers_of_other_kinds_are_named() {
        assert_eq!(Verifier::parse(None), Err(VerifierError::Missing));
        assert_eq!(
            Verifier::parse(Some("md5a0e4f7a1bf4c0d6b7b6f3f55a5a1f5c3")),
            Err(VerifierError::Md5)
        );
        assert_eq!(Verifier::parse(Some("hunter2")), Err(VerifierError::Plain));
        assert_eq!(
            Verifier::parse(Some("SCRAM-SHA-256$4096:abc$x:y")),
            Err(VerifierError::Malformed)
        );
        assert_eq!(
            Verifier::parse(Some("SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA")),
            Err(VerifierError::Malformed)
        );
        assert!(format!("{:?}", verifier()).contains("4096"));
        assert!(!format!("{:?}", verifier()).contains("stored"));
    }

    #[test]
    fn malformed_messages_are_errors_never_panics() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"nyp=,r=s=i=c=biws,tls-server-end-point abc";
        let v = verifier();
        for _ in 0..5_000 {
            let len = (next() % 48) as usize;
            let msg: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let mut server = ServerExchange::new(v.clone(), Some(vec![1; 32]));
            let _ = server.client_first(SCRAM_SHA_256, &msg);
            let _ = server.client_final(&msg);
            let mut server = ServerExchange::new(v.clone(), None);
            if server.client_first(SCRAM_SHA_256, b"n,,n=,r=x").is_ok() {
                let _ = server.client_final(&msg);
            }
            let (mut client, _) = ClientExchange::new(&v, [0; 32], None);
            let _ = client.server_first(&msg);
            let _ = client.server_final(&msg);
            let _ = Verifier::parse(std::str::from_utf8(&msg).ok());
            let _ = tls_server_end_point(&msg);
        }
    }

    #[test]
    fn end_point_binding_uses_the_certificates_hash() {
        let certs = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = certs.cert.der().to_vec();
        // rcgen signs with ECDSA P-256 / SHA-256 by default.
        let binding = tls_server_end_point(&der).expect("a known signature algorithm");
        assert_eq!(binding, sha256(&der).to_vec());
        assert_eq!(tls_server_end_point(b"\x30\x03\x02\x01\x00"), None);
    }
}
