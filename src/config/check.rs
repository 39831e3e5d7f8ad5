//! What makes a parsed configuration invalid (an error that stops a load
//! or a reload, the old configuration staying in force) and what is only
//! worth telling the operator (a warning); also the check of an operator's
//! refusal text, which the admin API applies to its own too. Validation is
//! also where the built-in tiers join the file's.

use std::time::Duration;

use super::{
    builtin_tiers, AuthMode, ByteSize, ClientTlsMode, ClusterTlsMode, Config, ConfigError, DenySet,
    FleetStore,
};

/// Something worth telling the operator that does not stop the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning(pub String);

impl Config {
    pub(super) fn validated(mut self, origin: &str) -> Result<Config, ConfigError> {
        let mut builtin = builtin_tiers();
        if self.quota.is_none() {
            // Nothing can measure sizes: a built-in storage_limit is off
            // unless the file asks for one (then it is an error below). A
            // configuration that turned the row limit off without a
            // [quota] stays valid.
            for tier in builtin.values_mut() {
                tier.storage_limit = Some(ByteSize(0));
            }
        }
        for (name, tier) in self.tiers.iter_mut() {
            if let Some(base) = builtin.get(name) {
                *tier = tier.over(base);
            }
        }
        for (name, tier) in builtin {
            self.tiers.entry(name).or_insert(tier);
        }
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        if !self.tiers.contains_key(&self.default_tier) {
            return Err(invalid(format!(
                "default_tier = {:?} names no tier (known: {})",
                self.default_tier,
                self.tier_names()
            )));
        }
        for (tenant, t) in &self.tenants {
            // PostgreSQL cuts a database name to 63 bytes, and so does the
            // proxy when it names the tenant: a longer entry would never
            // apply, and its tenant would get the default tier.
            if tenant.len() > crate::protocol::startup::MAX_NAME_BYTES {
                return Err(invalid(format!(
                    "tenants.{tenant:?}: a database name has at most 63 bytes (this one has {}); \
                     PostgreSQL and pgtier cut longer names, so this entry would never apply",
                    tenant.len()
                )));
            }
            if let Some(tier) = &t.tier {
                if !self.tiers.contains_key(tier) {
                    return Err(invalid(format!(
                        "tenants.{tenant}.tier = {tier:?} names no tier (known: {})",
                        self.tier_names()
                    )));
                }
            }
        }
        if self.tls.mode != ClientTlsMode::Disable {
            if self.tls.cert.is_none() {
                return Err(invalid(format!(
                    "tls.cert is required when tls.mode = {:?} (set tls.mode = \"disable\" to run without TLS)",
                    mode_name(self.tls.mode)
                )));
            }
            if self.tls.key.is_none() {
                return Err(invalid(format!(
                    "tls.key is required when tls.mode = {:?}",
                    mode_name(self.tls.mode)
                )));
            }
        }
        if self.login_timeout.is_zero() {
            return Err(invalid(
                "login_timeout must be greater than zero".to_owned(),
            ));
        }
        if self.cluster.connect_timeout.is_zero() {
            return Err(invalid(
                "cluster.connect_timeout must be greater than zero".to_owned(),
            ));
        }
        let tier_keys = self.tiers.iter().map(|(name, t)| {
            let storage = t.storage_limit.map(|b| b.0);
            (
                format!("tiers.{name}"),
                t.row_limit,
                storage,
                t.deny.as_deref(),
            )
        });
        let tenant_keys = self.tenants.iter().map(|(name, t)| {
            let storage = t.storage_limit.map(|b| b.0);
            (
                format!("tenants.{name}"),
                t.row_limit,
                storage,
                t.deny.as_deref(),
            )
        });
        let texts = self
            .tiers
            .iter()
            .map(|(name, t)| {
                (
                    format!("tiers.{name}"),
                    &t.suspended_message,
                    &t.suspended_hint,
                )
            })
            .chain(self.tenants.iter().map(|(name, t)| {
                (
                    format!("tenants.{name}"),
                    &t.suspended_message,
                    &t.suspended_hint,
                )
            }));
        for (key, message, hint) in texts {
            for (field, text) in [("suspended_message", message), ("suspended_hint", hint)] {
                if let Some(text) = text {
                    check_operator_text(text)
                        .map_err(|e| invalid(format!("{key}.{field}: {e}")))?;
                }
            }
        }
        for (key, row_limit, storage_limit, deny) in tier_keys.chain(tenant_keys) {
            if let Some(names) = deny {
                DenySet::parse(names).map_err(|e| invalid(format!("{key}.deny: {e}")))?;
            }
            if let (Some(limit @ 1..), None) = (storage_limit, &self.quota) {
                return Err(invalid(format!(
                    "{key}.storage_limit = {limit} bytes needs a [quota] table (the role pgtier measures \
                     databases as: user, password); add one, or set storage_limit = 0"
                )));
            }
            if let (Some(limit @ 1..), None) = (row_limit, &self.quota) {
                return Err(invalid(format!(
                    "{key}.row_limit = {limit} needs a [quota] table (the role pgtier counts rows as: \
                     user, password); add one, or set row_limit = 0"
                )));
            }
        }
        if self.fleet.store == FleetStore::Redis && self.fleet.url.is_none() {
            return Err(invalid(
                "fleet.store = \"redis\" needs fleet.url (e.g. \"redis://10.0.0.5:6379/\")"
                    .to_owned(),
            ));
        }
        if self.fleet.lease_ttl < Duration::from_secs(1) {
            return Err(invalid("fleet.lease_ttl must be at least 1s".to_owned()));
        }
        if self.auth.mode == AuthMode::Proxy && self.auth.user.is_none() {
            return Err(invalid(
                "auth.mode = \"proxy\" needs auth.user (the role auth_query runs as)".to_owned(),
            ));
        }
        if self.cluster.tls == ClusterTlsMode::VerifyFull && self.cluster.ca.is_none() {
            return Err(invalid(
                "cluster.tls = \"verify-full\" needs cluster.ca (the CA to verify the cluster against)"
                    .to_owned(),
            ));
        }
        if let Some(registry) = &self.registry {
            if registry.cache_ttl.is_zero() {
                return Err(invalid(
                    "registry.cache_ttl must be greater than zero".to_owned(),
                ));
            }
            if registry.channel.is_empty() || registry.channel.len() > 63 {
                return Err(invalid(
                    "registry.channel must be a name of 1 to 63 bytes".to_owned(),
                ));
            }
            if !registry.query.contains("$1") {
                return Err(invalid(
                    "registry.query must use $1 (the database name being looked up)".to_owned(),
                ));
            }
        }
        if let Some(quota) = &self.quota {
            if quota.interval.is_zero() {
                return Err(invalid(
                    "quota.interval must be greater than zero".to_owned(),
                ));
            }
        }
        Ok(self)
    }

    /// Advice for the operator about a valid configuration.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut out = Vec::new();
        let unix_socket = self.cluster.host.starts_with('/');
        if unix_socket && self.cluster.tls != ClusterTlsMode::Disable {
            out.push(Warning(
                "cluster.host is a Unix socket directory: cluster.tls does not apply there and is ignored"
                    .to_owned(),
            ));
        }
        if self.cluster.tls != ClusterTlsMode::Disable
            && !unix_socket
            && self.auth.mode == AuthMode::Passthrough
        {
            out.push(Warning(format!(
                "cluster.tls = {:?}: with pass-through authentication, libpq clients using SCRAM over TLS \
                 fail with \"SCRAM channel binding negotiation error\" when the cluster link is TLS too \
                 (the cluster offers SCRAM-SHA-256-PLUS, the client signed that it saw no channel binding); \
                 use cluster.tls = \"disable\" on a private network, auth.mode = \"proxy\", or md5/trust auth on the cluster",
                match self.cluster.tls {
                    ClusterTlsMode::Prefer => "prefer",
                    ClusterTlsMode::VerifyFull => "verify-full",
                    _ => "require",
                }
            )));
        }
        if let Some(admin) = self.admin_listen {
            if !admin.ip().is_loopback() && self.admin_token.is_none() {
                out.push(Warning(format!(
                    "admin_listen = \"{admin}\" is reachable from other hosts and admin_token is not set: \
                     anyone who can reach it can disconnect tenants and reload the configuration"
                )));
            }
        }
        if self.tls.mode != ClientTlsMode::Require {
            out.push(Warning(format!(
                "tls.mode = {:?}: clients may log in without TLS, sending passwords in the clear",
                mode_name(self.tls.mode)
            )));
        }
        out
    }
}

fn mode_name(mode: ClientTlsMode) -> &'static str {
    match mode {
        ClientTlsMode::Require => "require",
        ClientTlsMode::Prefer => "prefer",
        ClientTlsMode::Disable => "disable",
    }
}

/// The most an operator's message or hint may hold.
pub const MAX_OPERATOR_TEXT_BYTES: usize = 1024;

/// Checks an operator's message or hint: it is sent in a NUL-terminated
/// field of every refusal, so a NUL would cut it (or, unchecked, end the
/// field early and corrupt the message), and its size is bounded.
pub fn check_operator_text(text: &str) -> Result<(), String> {
    if text.contains('\0') {
        return Err("must not contain a NUL character".to_owned());
    }
    if text.len() > MAX_OPERATOR_TEXT_BYTES {
        return Err(format!(
            "at most {MAX_OPERATOR_TEXT_BYTES} bytes (this one has {})",
            text.len()
        ));
    }
    Ok(())
}
