//! Everything the proxy says to a client on its own account, in one place:
//! each refusal (and the one warning) is a variant of [`Refusal`], which
//! renders the words the client reads ([`Refusal::render`]: severity,
//! PostgreSQL's SQLSTATE, message, hint) and the label it is counted and
//! logged under ([`Refusal::reason`]).
//!
//! Why one catalog: the client's words are an interface (drivers and
//! tests match on SQLSTATEs and messages, dashboards on labels). Built
//! where each rule lives, the same refusal was written twice with two
//! wordings and labels were free strings nothing checked. Here a variant
//! carries only the data its message needs, and a test renders every
//! variant against README.md's "What clients see" table, so the code and
//! the table cannot drift apart.
//!
//! Adding one: a variant (with its data), an arm in [`Refusal::render`],
//! an arm in [`Refusal::reason`] (a new [`RefusalReason`] if it is counted
//! apart), an example in the tests' `all_examples` (the compiler points at
//! `kind_index`), and a row in README.md's table.

use std::time::Duration;

use crate::limits::rows::Figure;
use crate::protocol::frame::FrameError;
use crate::protocol::startup::StartupError;
use crate::protocol::{sqlstate, ErrorFields};
use crate::rules::classify::Feature;
use crate::rules::prepared::Space;
use crate::size::{pretty, thousands};

/// The hint of every refusal that is the service's trouble, not the
/// client's: worth a retry.
/// How a tenant over its storage limit gets back under.
const STORAGE_HINT: &str = "TRUNCATE or DROP tables you no longer need (DELETE alone frees no space until VACUUM FULL rewrites the table), or upgrade the database's tier.";

/// The prefix of the marker names refused statements are replaced by (see
/// the gate). A client's own statement or portal names never start with it
/// (any case): they get `42939`, as PostgreSQL answers names it reserves.
pub const MARKER_PREFIX: &str = "pgtier_refused_";

const UNAVAILABLE_HINT: &str = "The database service is unavailable; try again shortly.";

/// One thing the proxy says to a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    // ---- Admission: before or at the tenant's slot. ----
    /// The whole proxy has `max_pending_logins` logins in progress.
    TooManyLoggingIn { max: usize },
    /// The tenant has its bound of logins in progress.
    TooManyTenantLogins { database: String, max: usize },
    /// The whole proxy at `max_client_connections`.
    TooManyClients,
    /// The tenant holds its tier's connection cap (across the fleet).
    ConnectionCap {
        database: String,
        tier: String,
        limit: u32,
    },
    /// The fleet's store is unreachable and `on_store_error = "closed"`.
    FleetUnavailable,
    /// The tenant is suspended (configuration, API or registry): the
    /// operator's message and hint, `{database}` already replaced.
    Suspended {
        message: String,
        hint: Option<String>,
    },
    /// `[registry] unknown = "refuse"` and the registry has no row for it:
    /// PostgreSQL's own words for a database that does not exist (told
    /// only once the client has authenticated).
    UnknownDatabase { database: String },
    /// The registry cannot be read and nothing is cached for the tenant
    /// (`on_error = "closed"`).
    RegistryUnavailable { database: String },

    // ---- Handshake and StartupMessage. ----
    /// Plaintext StartupMessage where `tls.mode = "require"`.
    TlsRequired,
    /// An SSLRequest inside TLS.
    SslRequestOnTls,
    /// A startup packet PostgreSQL would refuse, or one the proxy cannot
    /// read as the cluster would; the words are the decoder's (PostgreSQL's
    /// own where it has them).
    Startup(StartupError),

    // ---- Login (both auth modes). ----
    /// The login did not finish within `login_timeout`.
    LoginTimeout { limit: Duration },
    /// The cluster cannot be reached (the cause goes to the log).
    ClusterUnreachable,
    /// Proxy mode: the cluster refused the verifier lookup with its own
    /// `57P03` (starting up, shutting down, in recovery): its message.
    ClusterStartingUp { message: String },
    /// Proxy mode: the role's verifier cannot be looked up.
    VerifierUnavailable,
    /// Proxy mode: wrong password, unknown role, no password (the client
    /// cannot tell which; the log's detail says). `scram_needed`: the role
    /// has a password the proxy cannot check (not SCRAM).
    PasswordFailed { user: String, scram_needed: bool },
    /// Proxy mode: the client picked a SASL mechanism not offered.
    InvalidSaslMechanism,
    /// Proxy mode: a SASLInitialResponse that does not parse.
    MalformedSaslInitial,
    /// Proxy mode: another message where a SASL response belongs.
    ExpectedSaslResponse { tag: u8 },
    /// Passthrough: another message where a password response belongs.
    ExpectedPasswordResponse { tag: u8 },
    /// A login-phase message from the client that is malformed (too long,
    /// a bad length, a SCRAM message that does not parse): its description.
    BadLoginMessage { message: String },
    /// Passthrough: the cluster offers only `SCRAM-SHA-256-PLUS`, which
    /// cannot cross the proxy's TLS termination.
    OnlyScramPlus,
    /// Passthrough: the cluster asks for an authentication the relay does
    /// not know.
    AuthMethodUnsupported { code: u32 },
    /// Proxy mode: the cluster asks the proxy for what it cannot answer
    /// holding no password (cleartext, md5, …).
    CannotAnswerAuth { what: String },
    /// The cluster sent a BackendKeyData no PostgreSQL sends.
    MalformedBackendKeyData,
    /// The cluster said ReadyForQuery before AuthenticationOk.
    ReadyBeforeAuthentication,
    /// The cluster sent bytes that are no message: their description.
    ClusterInvalidMessage { message: String },

    // ---- A running session ended by the proxy. ----
    /// Idle past the tier's timeout.
    IdleTimeout,
    /// An operator's disconnect (admin API).
    AdminDisconnect,
    /// The proxy shutting down.
    Shutdown,
    /// The tenant was suspended while the session ran.
    SuspendedWhileConnected,
    /// The client's bytes: a message longer than the proxy inspects, or
    /// no message at all.
    Message(FrameError),

    // ---- A statement refused; the session goes on. ----
    /// A feature the tier denies.
    Policy { feature: Feature, tier: String },
    /// The tenant is over its row limit and the statement may add rows.
    RowLimit {
        database: String,
        figure: Figure,
        limit: u64,
        tier: String,
    },
    /// The tenant cannot be measured and the statement may add rows.
    Unmeasured { database: String, tier: String },
    /// A statement or portal name with the proxy's marker prefix.
    ReservedName { space: Space, name: String },
    /// The proxy cancelled a request past the tier's `statement_timeout`:
    /// replaces the cluster's "canceling statement due to user request".
    StatementTimeout { tier: String, limit_ms: u64 },
    /// The tenant is over its storage limit (`bytes` used) and the
    /// statement can grow the database.
    StorageLimit {
        database: String,
        bytes: u64,
        limit: u64,
        tier: String,
    },
    /// The tenant's size cannot be measured and the statement can grow the
    /// database.
    StorageUnmeasured { database: String, tier: String },

    // ---- Not a refusal: a warning, the session goes on. ----
    /// At login, a tenant at 80 % or more of its row limit.
    RowLimitWarning {
        database: String,
        figure: Figure,
        limit: u64,
        tier: String,
    },
    /// At login, a tenant at 80 % or more of its storage limit.
    StorageLimitWarning {
        database: String,
        bytes: u64,
        limit: u64,
        tier: String,
    },
}

/// The label a refusal is counted and logged under
/// (`pgtier_rejected_total{reason}` and the `/tenants` `rejected` map for
/// connections, logins and sessions; `pgtier_statements_refused_total` for
/// statements). The strings are an interface: dashboards and tests use
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    MaxPendingLogins,
    MaxPendingLoginsPerTenant,
    MaxClientConnections,
    MaxConnections,
    FleetUnavailable,
    TlsRequired,
    BadStartup,
    DuplicateParameter,
    NameCutInCharacter,
    Replication,
    LoginTimeout,
    ClusterUnreachable,
    /// The cluster refused the login itself (its own words reach the
    /// client; in proxy mode also its `57P03` to the verifier lookup).
    ClusterRefused,
    AuthUnavailable,
    WrongPassword,
    AuthUnsupported,
    ClusterError,
    IdleTimeout,
    AdminDisconnect,
    Shutdown,
    ClientProtocolError,
    Policy,
    RowLimit,
    Unmeasured,
    ReservedName,
    StatementTimeout,
    StorageLimit,
    StorageUnmeasured,
    Suspended,
    RegistryUnknown,
    RegistryUnavailable,
    /// Not counted: the label of the login warning in logs.
    RowLimitWarning,
    /// Not counted: the label of the storage warning in logs.
    StorageLimitWarning,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::MaxPendingLogins => "max_pending_logins",
            RefusalReason::MaxPendingLoginsPerTenant => "max_pending_logins_per_tenant",
            RefusalReason::MaxClientConnections => "max_client_connections",
            RefusalReason::MaxConnections => "max_connections",
            RefusalReason::FleetUnavailable => "fleet_unavailable",
            RefusalReason::TlsRequired => "tls_required",
            RefusalReason::BadStartup => "bad_startup",
            RefusalReason::DuplicateParameter => "duplicate_parameter",
            RefusalReason::NameCutInCharacter => "name_cut_in_character",
            RefusalReason::Replication => "replication",
            RefusalReason::LoginTimeout => "login_timeout",
            RefusalReason::ClusterUnreachable => "cluster_unreachable",
            RefusalReason::ClusterRefused => "cluster_refused",
            RefusalReason::AuthUnavailable => "auth_unavailable",
            RefusalReason::WrongPassword => "wrong_password",
            RefusalReason::AuthUnsupported => "auth_unsupported",
            RefusalReason::ClusterError => "cluster_error",
            RefusalReason::IdleTimeout => "idle_timeout",
            RefusalReason::AdminDisconnect => "admin_disconnect",
            RefusalReason::Shutdown => "shutdown",
            RefusalReason::ClientProtocolError => "client_protocol_error",
            RefusalReason::Policy => "policy",
            RefusalReason::RowLimit => "row_limit",
            RefusalReason::Unmeasured => "unmeasured",
            RefusalReason::ReservedName => "reserved_name",
            RefusalReason::StatementTimeout => "statement_timeout",
            RefusalReason::RowLimitWarning => "row_limit_warning",
            RefusalReason::StorageLimit => "storage_limit",
            RefusalReason::StorageUnmeasured => "storage_unmeasured",
            RefusalReason::Suspended => "suspended",
            RefusalReason::RegistryUnknown => "registry_unknown",
            RefusalReason::RegistryUnavailable => "registry_unavailable",
            RefusalReason::StorageLimitWarning => "storage_limit_warning",
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Refusal {
    /// What the client reads.
    pub fn render(&self) -> ErrorFields {
        use sqlstate::*;
        match self {
            Refusal::TooManyLoggingIn { max } => ErrorFields::fatal(
                TOO_MANY_CONNECTIONS,
                "sorry, too many clients logging in already",
            )
            .with_hint(format!(
                "The proxy takes {max} logins at once (max_pending_logins); try again shortly."
            )),
            Refusal::TooManyTenantLogins { database, max } => ErrorFields::fatal(
                TOO_MANY_CONNECTIONS,
                format!("too many logins in progress for database \"{database}\""),
            )
            .with_hint(format!(
                "At most {max} logins of this database may be in progress at once; \
                 try again shortly."
            )),
            Refusal::TooManyClients => {
                ErrorFields::fatal(TOO_MANY_CONNECTIONS, "sorry, too many clients already")
            }
            Refusal::ConnectionCap {
                database,
                tier,
                limit,
            } => ErrorFields::fatal(
                TOO_MANY_CONNECTIONS,
                format!(
                    "too many connections for database \"{database}\": the {tier} tier allows {limit}"
                ),
            )
            .with_hint(
                "Close an idle connection (check your pool size) or upgrade the database's tier.",
            ),
            Refusal::FleetUnavailable => ErrorFields::fatal(
                CONNECTION_FAILURE,
                "could not check the database's connection limit",
            )
            .with_hint(UNAVAILABLE_HINT),
            Refusal::Suspended { message, hint } => {
                let error = ErrorFields::fatal(OBJECT_NOT_IN_PREREQUISITE_STATE, message.clone());
                match hint {
                    Some(hint) => error.with_hint(hint.clone()),
                    None => error,
                }
            }
            Refusal::UnknownDatabase { database } => ErrorFields::fatal(
                INVALID_CATALOG_NAME,
                format!("database \"{database}\" does not exist"),
            ),
            // 57P03 (cannot_connect_now) is what PostgreSQL says while it
            // cannot admit anyone yet; clients and poolers retry on it.
            Refusal::RegistryUnavailable { database } => ErrorFields::fatal(
                CANNOT_CONNECT_NOW,
                format!("cannot admit database \"{database}\" now: its plan cannot be looked up"),
            )
            .with_hint("The service's tenant registry is not answering; try again shortly."),
            Refusal::TlsRequired => ErrorFields::fatal(
                INVALID_AUTHORIZATION_SPECIFICATION,
                "SSL connection is required",
            )
            .with_hint("Connect with sslmode=require (or verify-full)."),
            Refusal::SslRequestOnTls => ErrorFields::fatal(
                PROTOCOL_VIOLATION,
                "SSLRequest received on an encrypted connection",
            ),
            Refusal::Startup(e) => {
                let error = ErrorFields::fatal(startup_sqlstate(e), e.to_string());
                match startup_hint(e) {
                    Some(hint) => error.with_hint(hint),
                    None => error,
                }
            }
            Refusal::LoginTimeout { limit } => ErrorFields::fatal(
                PROTOCOL_VIOLATION,
                format!(
                    "login did not complete within login_timeout ({})",
                    humantime::format_duration(*limit)
                ),
            ),
            Refusal::ClusterUnreachable => ErrorFields::fatal(
                CONNECTION_FAILURE,
                "could not connect to the database cluster",
            )
            .with_hint(UNAVAILABLE_HINT),
            Refusal::ClusterStartingUp { message } => {
                ErrorFields::fatal(CANNOT_CONNECT_NOW, message.clone())
            }
            Refusal::VerifierUnavailable => {
                ErrorFields::fatal(CONNECTION_FAILURE, "could not check the password now")
                    .with_hint(UNAVAILABLE_HINT)
            }
            Refusal::PasswordFailed { user, scram_needed } => {
                let error = ErrorFields::fatal(
                    INVALID_PASSWORD,
                    format!("password authentication failed for user \"{user}\""),
                );
                if *scram_needed {
                    error.with_hint(
                        "pgtier's proxy authentication needs the role's password stored as SCRAM-SHA-256 \
                         (set password_encryption = 'scram-sha-256' and set the password again).",
                    )
                } else {
                    error
                }
            }
            Refusal::InvalidSaslMechanism => ErrorFields::fatal(
                PROTOCOL_VIOLATION,
                "client selected an invalid SASL authentication mechanism",
            ),
            Refusal::MalformedSaslInitial => ErrorFields::fatal(
                PROTOCOL_VIOLATION,
                "malformed SASLInitialResponse message",
            ),
            Refusal::ExpectedSaslResponse { tag } => ErrorFields::fatal(
                PROTOCOL_VIOLATION,
                format!("expected SASL response, got message type {}", *tag as char),
            ),
            Refusal::ExpectedPasswordResponse { tag } => ErrorFields::fatal(
                PROTOCOL_VIOLATION,
                format!("expected password response, got message type {tag}"),
            ),
            Refusal::BadLoginMessage { message } => {
                ErrorFields::fatal(PROTOCOL_VIOLATION, message.clone())
            }
            Refusal::OnlyScramPlus => ErrorFields::fatal(
                FEATURE_NOT_SUPPORTED,
                "the database cluster offers only SCRAM-SHA-256-PLUS, which cannot pass through the proxy",
            ),
            Refusal::AuthMethodUnsupported { code } => ErrorFields::fatal(
                FEATURE_NOT_SUPPORTED,
                format!("authentication method {code} is not supported by the proxy"),
            ),
            Refusal::CannotAnswerAuth { what } => ErrorFields::fatal(
                INVALID_AUTHORIZATION_SPECIFICATION,
                format!("the database cluster asks for {what}, which the proxy cannot answer"),
            )
            .with_hint("The service is misconfigured; contact its operator."),
            Refusal::MalformedBackendKeyData => ErrorFields::fatal(
                PROTOCOL_VIOLATION,
                "the database cluster sent a malformed BackendKeyData",
            ),
            Refusal::ReadyBeforeAuthentication => ErrorFields::fatal(
                CONNECTION_FAILURE,
                "the database cluster became ready before authenticating the client",
            ),
            Refusal::ClusterInvalidMessage { message } => ErrorFields::fatal(
                CONNECTION_FAILURE,
                format!("the database cluster sent an invalid message: {message}"),
            ),
            Refusal::IdleTimeout => ErrorFields::fatal(
                IDLE_SESSION_TIMEOUT,
                "terminating connection due to idle-session timeout",
            ),
            Refusal::AdminDisconnect | Refusal::Shutdown | Refusal::SuspendedWhileConnected => ErrorFields::fatal(
                ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            ),
            // PostgreSQL's `program_limit_exceeded` for what is too long to
            // inspect; anything that is no message at all is a violation.
            Refusal::Message(e) => match e {
                FrameError::TooLong { tag, len, max } => ErrorFields::fatal(
                    PROGRAM_LIMIT_EXCEEDED,
                    format!(
                        "message type {tag:?} of {len} bytes is longer than the proxy inspects ({max} bytes)"
                    ),
                ),
                FrameError::BadLength { .. } => {
                    ErrorFields::fatal(PROTOCOL_VIOLATION, e.to_string())
                }
            },
            Refusal::Policy { feature, tier } => ErrorFields::error(
                INSUFFICIENT_PRIVILEGE,
                format!("{} is not available on the {tier} tier", feature.name),
            )
            .with_hint(match feature.hint {
                Some(hint) => hint.to_owned(),
                None => format!("Upgrade the database's tier to use {}.", feature.name),
            }),
            Refusal::RowLimit {
                database,
                figure,
                limit,
                tier,
            } => ErrorFields::error(
                CONFIGURATION_LIMIT_EXCEEDED,
                format!(
                    "row limit exceeded: database \"{database}\" {}; the {tier} tier allows {}",
                    holds(*figure, *limit),
                    thousands(*limit as i64)
                ),
            )
            .with_hint("Delete rows or upgrade the database's tier."),
            Refusal::Unmeasured { database, tier } => ErrorFields::error(
                CONFIGURATION_LIMIT_EXCEEDED,
                format!(
                    "cannot measure database \"{database}\"'s rows; statements that add rows are refused until it can be measured"
                ),
            )
            .with_detail(format!("The {tier} tier limits the rows a database holds."))
            .with_hint(
                "Statements that do not add rows still work. Undo anything that keeps the database from being read (CONNECT or privileges revoked, row-level security, a session holding a lock), or contact the operator.",
            ),
            Refusal::ReservedName { space, name } => {
                let what = match space {
                    Space::Statement => "prepared statement",
                    Space::Portal => "portal",
                };
                ErrorFields::error(RESERVED_NAME, format!("{what} name \"{name}\" is reserved"))
                    .with_detail(format!(
                        "Names beginning with \"{MARKER_PREFIX}\" are reserved for the proxy."
                    ))
            }
            Refusal::StatementTimeout { tier, limit_ms } => {
                let limit = if limit_ms.is_multiple_of(1000) {
                    format!("{} s", limit_ms / 1000)
                } else {
                    format!("{limit_ms} ms")
                };
                ErrorFields::error(
                    QUERY_CANCELED,
                    format!(
                        "canceling statement due to statement timeout: the {tier} tier allows {limit}"
                    ),
                )
                .with_hint(format!(
                    "Statements on the {tier} tier may run for {limit} at most: make this one faster \
                     (an index, smaller batches), or upgrade to a tier that allows longer statements."
                ))
            }
            Refusal::StorageLimit {
                database,
                bytes,
                limit,
                tier,
            } => ErrorFields::error(
                DISK_FULL,
                format!(
                    "storage limit exceeded: database \"{database}\" uses {}; the {tier} tier allows {}",
                    pretty(*bytes),
                    pretty(*limit)
                ),
            )
            .with_detail(
                "Statements that can grow the database are refused until it is back under the limit; reads, DELETE, TRUNCATE, DROP and VACUUM still work.",
            )
            .with_hint(STORAGE_HINT),
            Refusal::StorageUnmeasured { database, tier } => ErrorFields::error(
                DISK_FULL,
                format!(
                    "cannot measure database \"{database}\"'s size; statements that can grow it are refused until it can be measured"
                ),
            )
            .with_detail(format!("The {tier} tier limits the space a database takes."))
            .with_hint(
                "Reads, DELETE, TRUNCATE, DROP and VACUUM still work. Undo anything that keeps the database from being read (CONNECT revoked, a session holding a lock), or contact the operator.",
            ),
            Refusal::StorageLimitWarning {
                database,
                bytes,
                limit,
                tier,
            } => ErrorFields::warning(
                WARNING,
                format!(
                    "database \"{database}\" uses {} of the {} its {tier} tier allows",
                    pretty(*bytes),
                    pretty(*limit)
                ),
            )
            .with_hint(if bytes > limit {
                "Statements that can grow the database are refused until it is back under the limit. TRUNCATE or DROP tables you no longer need (DELETE alone frees no space until VACUUM FULL), or upgrade the database's tier."
            } else {
                "Statements that can grow the database will be refused above the limit: TRUNCATE or DROP what you no longer need, or upgrade the database's tier."
            }),
            Refusal::RowLimitWarning {
                database,
                figure,
                limit,
                tier,
            } => ErrorFields::warning(
                WARNING,
                format!(
                    "database \"{database}\" {} of the {} its {tier} tier allows",
                    holds(*figure, *limit),
                    thousands(*limit as i64)
                ),
            )
            .with_hint(if figure.is_over(*limit) {
                "Statements that add rows are refused until rows are deleted or the database's tier is upgraded."
            } else {
                "Statements that add rows will be refused above the limit: delete rows or upgrade the database's tier."
            }),
        }
    }

    /// The label it is counted and logged under.
    pub fn reason(&self) -> RefusalReason {
        use RefusalReason as R;
        match self {
            Refusal::TooManyLoggingIn { .. } => R::MaxPendingLogins,
            Refusal::TooManyTenantLogins { .. } => R::MaxPendingLoginsPerTenant,
            Refusal::TooManyClients => R::MaxClientConnections,
            Refusal::ConnectionCap { .. } => R::MaxConnections,
            Refusal::FleetUnavailable => R::FleetUnavailable,
            Refusal::Suspended { .. } | Refusal::SuspendedWhileConnected => R::Suspended,
            Refusal::UnknownDatabase { .. } => R::RegistryUnknown,
            Refusal::RegistryUnavailable { .. } => R::RegistryUnavailable,
            Refusal::TlsRequired => R::TlsRequired,
            Refusal::SslRequestOnTls => R::BadStartup,
            // The attempts to make the proxy and the cluster read different
            // names have their own labels, so that they stand out from
            // clients that are merely broken.
            Refusal::Startup(e) => match e {
                StartupError::DuplicateParameter(_) => R::DuplicateParameter,
                StartupError::NameCutInCharacter { .. } => R::NameCutInCharacter,
                StartupError::Replication => R::Replication,
                StartupError::BadLength
                | StartupError::MissingTerminator
                | StartupError::NotUtf8
                | StartupError::NoUser
                | StartupError::UnsupportedVersion { .. }
                | StartupError::BadCancel => R::BadStartup,
            },
            Refusal::LoginTimeout { .. } => R::LoginTimeout,
            Refusal::ClusterUnreachable => R::ClusterUnreachable,
            Refusal::ClusterStartingUp { .. } => R::ClusterRefused,
            Refusal::VerifierUnavailable => R::AuthUnavailable,
            Refusal::PasswordFailed { .. } => R::WrongPassword,
            Refusal::InvalidSaslMechanism
            | Refusal::MalformedSaslInitial
            | Refusal::ExpectedSaslResponse { .. }
            | Refusal::ExpectedPasswordResponse { .. }
            | Refusal::BadLoginMessage { .. } => R::BadStartup,
            Refusal::OnlyScramPlus
            | Refusal::AuthMethodUnsupported { .. }
            | Refusal::CannotAnswerAuth { .. } => R::AuthUnsupported,
            Refusal::MalformedBackendKeyData
            | Refusal::ReadyBeforeAuthentication
            | Refusal::ClusterInvalidMessage { .. } => R::ClusterError,
            Refusal::IdleTimeout => R::IdleTimeout,
            Refusal::AdminDisconnect => R::AdminDisconnect,
            Refusal::Shutdown => R::Shutdown,
            Refusal::Message(_) => R::ClientProtocolError,
            Refusal::Policy { .. } => R::Policy,
            Refusal::RowLimit { .. } => R::RowLimit,
            Refusal::Unmeasured { .. } => R::Unmeasured,
            Refusal::ReservedName { .. } => R::ReservedName,
            Refusal::StatementTimeout { .. } => R::StatementTimeout,
            Refusal::RowLimitWarning { .. } => R::RowLimitWarning,
            Refusal::StorageLimit { .. } => R::StorageLimit,
            Refusal::StorageUnmeasured { .. } => R::StorageUnmeasured,
            Refusal::StorageLimitWarning { .. } => R::StorageLimitWarning,
        }
    }
}

/// The SQLSTATE PostgreSQL's own server answers a startup packet with, so
/// that a client cannot tell the proxy's refusal from the cluster's: a
/// missing user name is an authorization problem (`28000`), an unsupported
/// protocol version `0A000`, anything malformed `08P01`.
fn startup_sqlstate(e: &StartupError) -> &'static str {
    match e {
        StartupError::NoUser => sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
        StartupError::UnsupportedVersion { .. } | StartupError::Replication => {
            sqlstate::FEATURE_NOT_SUPPORTED
        }
        StartupError::BadLength
        | StartupError::MissingTerminator
        | StartupError::NotUtf8
        | StartupError::BadCancel
        | StartupError::DuplicateParameter(_)
        | StartupError::NameCutInCharacter { .. } => sqlstate::PROTOCOL_VIOLATION,
    }
}

/// A hint for a refused startup packet, where one helps.
fn startup_hint(e: &StartupError) -> Option<&'static str> {
    match e {
        StartupError::DuplicateParameter(_) => Some("Send each startup parameter once."),
        StartupError::NameCutInCharacter { .. } => Some(
            "PostgreSQL keeps the first 63 bytes of a database or user name; \
             use the name as the database stores it.",
        ),
        _ => None,
    }
}

/// How a figure reads in a message: exact, or "more than" the limit when
/// counting stopped past it.
fn holds(figure: Figure, limit: u64) -> String {
    if figure.exact {
        format!("holds {} rows", thousands(figure.rows))
    } else {
        format!("holds more than {} rows", thousands(limit as i64))
    }
}

#[cfg(test)]
mod tests;
