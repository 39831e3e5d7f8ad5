//! The untyped packets a client may send before its session starts: the
//! StartupMessage and the special requests (SSL, GSS encryption, cancel) that
//! share its framing (a length, then a 32-bit code, no tag byte).

use bytes::{BufMut, BytesMut};
use thiserror::Error;

/// PostgreSQL's own limit on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;
/// The length field plus the code.
pub const MIN_STARTUP_PACKET_LEN: usize = 8;

const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;
const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// Protocol 3.0: what every PostgreSQL since 7.4 speaks.
pub const PROTOCOL_3_0: u32 = 3 << 16;
/// Protocol 3.2 (PostgreSQL 18): cancel keys of up to 256 bytes. The newest
/// version the proxy speaks.
pub const PROTOCOL_3_2: u32 = (3 << 16) | 2;
/// The longest cancel-key secret protocol 3.2 allows.
pub const MAX_CANCEL_SECRET: usize = 256;
/// The longest database or role name PostgreSQL keeps: `NAMEDATALEN - 1`.
/// Every version the proxy supports (15, 17, 18) cuts the startup packet's
/// `database` and `user` to this many bytes before it looks them up, so a
/// longer name reaches the same database and role as its first 63 bytes.
pub const MAX_NAME_BYTES: usize = 63;

/// Why a startup packet is refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    BadLength,
    #[error("invalid startup packet layout: expected terminator as last byte")]
    MissingTerminator,
    #[error("invalid startup packet layout: parameter name or value is not valid UTF-8")]
    NotUtf8,
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2")]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("invalid length of cancel request packet")]
    BadCancel,
    /// The same parameter named twice (names compared ignoring ASCII case,
    /// as PostgreSQL compares setting names). PostgreSQL would keep the
    /// last value; refusing means no reader can take another one.
    #[error("invalid startup packet layout: parameter \"{0}\" given twice")]
    DuplicateParameter(String),
    /// A `database` or `user` longer than [`MAX_NAME_BYTES`] whose cut
    /// falls inside a UTF-8 character: PostgreSQL would look up a name
    /// ending in part of a character, which the proxy cannot name.
    #[error(
        "invalid startup packet layout: {what} name is longer than 63 bytes and \
         byte 63 ends inside a multibyte character"
    )]
    NameCutInCharacter { what: &'static str },
    /// `replication`: a walsender connection, which may open no database
    /// at all and speaks commands the proxy does not read.
    #[error("replication connections are not supported through this proxy")]
    Replication,
}

/// A cancel key: the backend's process ID and a secret. The secret is four
/// bytes under protocol 3.0 and up to [`MAX_CANCEL_SECRET`] under 3.2.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub pid: i32,
    pub secret: Box<[u8]>,
}

impl CancelKey {
    /// The CancelRequest packet carrying this key.
    pub fn request_packet(&self) -> Vec<u8> {
        let len = 12 + self.secret.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        out.extend_from_slice(&self.pid.to_be_bytes());
        out.extend_from_slice(&self.secret);
        out
    }

    /// Reads a BackendKeyData body (process ID, then the secret); `None`
    /// when the secret's length is not one a protocol version allows.
    pub fn from_backend_key_data(body: &[u8]) -> Option<CancelKey> {
        let (pid, secret) = body.split_first_chunk::<4>()?;
        (4..=MAX_CANCEL_SECRET)
            .contains(&secret.len())
            .then(|| CancelKey {
                pid: i32::from_be_bytes(*pid),
                secret: secret.into(),
            })
    }

    /// The BackendKeyData body for this key.
    pub fn backend_key_data(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.secret.len());
        out.extend_from_slice(&self.pid.to_be_bytes());
        out.extend_from_slice(&self.secret);
        out
    }
}

/// A decoded StartupMessage, read as the cluster will read it: each
/// parameter named once, and `database` and `user` already cut to
/// [`MAX_NAME_BYTES`]. So the tenant ([`Self::database`]), the role
/// ([`Self::user`]) and what [`Self::encode`] forwards are one and the same
/// name, whatever the cluster's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub minor_version: u16,
    /// Parameters in the order the client sent them, `_pq_.` options
    /// removed, no name twice, `database` and `user` truncated.
    pub params: Vec<(String, String)>,
    /// `_pq_.` protocol options the client asked for; the proxy supports none.
    pub unsupported_options: Vec<String>,
}

impl StartupMessage {
    /// A parameter by its exact name, as PostgreSQL matches `database`,
    /// `user` and `options` (settings: [`Self::setting`]).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A setting given as a startup parameter (`client_encoding`,
    /// `TimeZone`, …), found whatever the case it was sent in, as
    /// PostgreSQL finds settings: `Client_Encoding=SJIS` sets the client
    /// encoding. Unambiguous, since no name comes twice in any case. Not
    /// for `database`, `user`, `options` and `replication`, which
    /// PostgreSQL matches exactly ([`Self::param`]).
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn user(&self) -> &str {
        self.param("user").unwrap_or_default()
    }

    /// The database, which names the tenant. PostgreSQL's default applies:
    /// the user name when `database` is absent or empty (both already
    /// truncated, which is the same as PostgreSQL's defaulting first and
    /// truncating after).
    pub fn database(&self) -> &str {
        match self.param("database") {
            Some(db) if !db.is_empty() => db,
            _ => self.user(),
        }
    }

    /// The protocol version the client asked for.
    pub fn version(&self) -> u32 {
        PROTOCOL_3_0 | u32::from(self.minor_version)
    }

    /// The StartupMessage to send to the cluster: protocol `version` and
    /// the client's parameters, protocol options removed.
    pub fn encode(&self, version: u32) -> BytesMut {
        let mut body = BytesMut::with_capacity(128);
        body.put_u32(version);
        for (k, v) in &self.params {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut out = BytesMut::with_capacity(body.len() + 4);
        out.put_u32((body.len() + 4) as u32);
        out.put_slice(&body);
        out
    }
}

/// The packets that may open a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelKey),
    Startup(StartupMessage),
}

/// Checks the length field that starts every startup packet.
pub fn check_length(len: u32) -> Result<usize, StartupError> {
    let len = len as usize;
    if !(MIN_STARTUP_PACKET_LEN..=MAX_STARTUP_PACKET_LEN).contains(&len) {
        return Err(StartupError::BadLength);
    }
    Ok(len)
}

/// Decodes a startup packet from its body (everything after the length).
pub fn decode(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let Some((code, rest)) = body.split_first_chunk::<4>() else {
        return Err(StartupError::BadLength);
    };
    match u32::from_be_bytes(*code) {
        SSL_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::GssEncRequest),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => Err(StartupError::BadLength),
        CANCEL_REQUEST_CODE => CancelKey::from_backend_key_data(rest)
            .map(StartupPacket::Cancel)
            .ok_or(StartupError::BadCancel),
        version => {
            let (major, minor) = ((version >> 16) as u16, version as u16);
            if major != 3 {
                return Err(StartupError::UnsupportedVersion { major, minor });
            }
            decode_params(minor, rest).map(StartupPacket::Startup)
        }
    }
}

fn decode_params(minor_version: u16, rest: &[u8]) -> Result<StartupMessage, StartupError> {
    // The list ends with an empty name, i.e. the packet's last byte is NUL.
    let Some((&0, list)) = rest.split_last() else {
        return Err(StartupError::MissingTerminator);
    };
    let mut strings = Vec::new();
    let mut remaining = list;
    while !remaining.is_empty() {
        let end = remaining
            .iter()
            .position(|&b| b == 0)
            .ok_or(StartupError::MissingTerminator)?;
        // An empty name is the list's terminator, so it must be the last
        // byte, as PostgreSQL insists: accepting parameters after it would
        // make the proxy read a different startup packet than the cluster.
        if end == 0 && strings.len().is_multiple_of(2) {
            return Err(StartupError::MissingTerminator);
        }
        let s = std::str::from_utf8(&remaining[..end]).map_err(|_| StartupError::NotUtf8)?;
        strings.push(s.to_owned());
        remaining = &remaining[end + 1..];
    }
    if strings.len() % 2 != 0 {
        return Err(StartupError::MissingTerminator);
    }
    let mut params = Vec::with_capacity(strings.len() / 2);
    let mut unsupported_options = Vec::new();
    // PostgreSQL keeps the last of two values; the proxy would have to
    // apply that rule in every reader (the tenant, the role, the client
    // encoding, …). Refusing the packet leaves nothing to disagree on.
    // Setting names are case-insensitive to PostgreSQL, so `TimeZone` and
    // `timezone` are the same parameter. A set, not pairwise comparisons:
    // a 10,000-byte packet holds over 3,000 names.
    let mut seen = std::collections::HashSet::with_capacity(strings.len() / 2);
    let mut iter = strings.into_iter();
    while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
        if !seen.insert(k.to_ascii_lowercase()) {
            return Err(StartupError::DuplicateParameter(k));
        }
        if k == "replication" {
            return Err(StartupError::Replication);
        }
        if k.starts_with("_pq_.") {
            unsupported_options.push(k);
        } else {
            params.push((k, v));
        }
    }
    let mut msg = StartupMessage {
        minor_version,
        params,
        unsupported_options,
    };
    if msg.user().is_empty() {
        return Err(StartupError::NoUser);
    }
    for (name, value) in &mut msg.params {
        // PostgreSQL's names for these two are exact (`strcmp`): `Database`
        // is a setting to it, and an unknown one at that.
        let what = match name.as_str() {
            "database" => "database",
            "user" => "user",
            _ => continue,
        };
        truncate_name(value, what)?;
    }
    Ok(msg)
}

/// Cuts `name` to [`MAX_NAME_BYTES`] as PostgreSQL does (bytes, not
/// characters: it does not know the name's encoding yet). A cut inside a
/// character is refused: the cluster would look up a name no UTF-8
/// database has, and the proxy could not even name it.
fn truncate_name(name: &mut String, what: &'static str) -> Result<(), StartupError> {
    if name.len() > MAX_NAME_BYTES {
        if !name.is_char_boundary(MAX_NAME_BYTES) {
            return Err(StartupError::NameCutInCharacter { what });
        }
        name.truncate(MAX_NAME_BYTES);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
