//! SQLSTATE codes the proxy speaks itself (PostgreSQL's Appendix A).
//!
//! Everything the cluster says reaches the client verbatim; these are only for
//! the situations where the proxy has to answer on the cluster's behalf.

/// `too_many_connections`: a tenant is at its tier's connection cap.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// `idle_session_timeout`: a session sat idle past its tier's limit.
pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
/// `admin_shutdown`: an operator disconnect or the proxy shutting down.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// `cannot_connect_now`: the cluster is starting up or shutting down
/// (proxy mode passes on its refusal of the verifier lookup).
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// `object_not_in_prerequisite_state`: PostgreSQL's refusal of a login to
/// a database closed to connections (`datallowconn = false`), and the
/// proxy's for a suspended one (see `crate::limits::suspend` for why not 57P03).
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
/// `invalid_authorization_specification`: plaintext where TLS is required.
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
/// `protocol_violation`: malformed or oversized startup, login timeout.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// `connection_failure`: the cluster could not be reached.
pub const CONNECTION_FAILURE: &str = "08006";
/// `feature_not_supported`: e.g. an unsupported protocol major version or
/// authentication method.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// `configuration_limit_exceeded`: a tenant over its row limit.
pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
/// `program_limit_exceeded`: a message longer than the proxy inspects.
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
/// `insufficient_privilege`: a statement kind the tier denies.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// `warning`: the class of the proxy's own warnings (a tenant near its row
/// limit).
pub const WARNING: &str = "01000";
/// `invalid_password`: a wrong password (proxy-side authentication).
pub const INVALID_PASSWORD: &str = "28P01";
/// `invalid_catalog_name`: the database does not exist.
pub const INVALID_CATALOG_NAME: &str = "3D000";
/// A name the proxy reserves for itself (the refusal markers), as
/// PostgreSQL answers names it reserves (`pg_` roles, …).
pub const RESERVED_NAME: &str = "42939";
/// `query_canceled`: a statement cancelled (a cancel request, a timeout).
pub const QUERY_CANCELED: &str = "57014";
/// `disk_full`: PostgreSQL's own for "could not extend file"; the storage
/// limit's refusal.
pub const DISK_FULL: &str = "53100";
