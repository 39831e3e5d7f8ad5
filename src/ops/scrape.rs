//! What `GET /metrics` says, in the Prometheus text format.
//!
//! Nothing on the hot path touches a metrics registry: sessions bump plain
//! atomics on their [`Tenant`], and this [`Collector`] reads them when
//! Prometheus scrapes. Per-tenant series are kept bounded by leaving out
//! tenants that hold no session and have had no activity for
//! `metrics_series_ttl` (an hour unless configured); their counters come
//! back (continuing where they were) when they are active again.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::limits::tenants::{unix_now, Tenant};
use crate::runtime::shared::Shared;

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Renders every metric of the proxy.
pub fn render(shared: &Arc<Shared>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProxyCollector {
        shared: Arc::clone(shared),
    }));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Reads the proxy's figures at scrape time.
#[derive(Debug)]
struct ProxyCollector {
    shared: Arc<Shared>,
}

/// Whether `tenant` belongs in the per-tenant series at `now` (Unix secs):
/// while it holds a session, and for `ttl` after its last activity.
fn in_series(tenant: &Tenant, now: u64, ttl: Duration) -> bool {
    tenant.connections() > 0
        || (tenant.last_activity() > 0
            && now.saturating_sub(tenant.last_activity()) < ttl.as_secs())
}

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = &self.shared;
        let config = shared.config();
        let now = unix_now();
        let tenants: Vec<(Arc<Tenant>, String)> = shared
            .tenants
            .all()
            .into_iter()
            .filter(|t| in_series(t, now, config.metrics_series_ttl))
            .map(|t| {
                let tier = shared.limits_for(t.name()).tier;
                (t, tier)
            })
            .collect();

        let mut m = encoder.encode_descriptor(
            "pgtier_client_connections",
            "Client sessions holding a slot now",
            None,
            MetricType::Gauge,
        )?;
        for (t, tier) in &tenants {
            let labels = [("tenant", t.name()), ("tier", tier.as_str())];
            ConstGauge::new(i64::from(t.connections())).encode(m.encode_family(&labels)?)?;
        }

        let mut m = encoder.encode_descriptor(
            "pgtier_connections_rejected",
            "Connections and logins refused, and sessions ended by a limit, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in shared.metrics.unattributed_rejections() {
            let labels = [("tenant", ""), ("reason", reason)];
            ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
        }
        for (t, _) in &tenants {
            for (reason, n) in t.rejected_by_reason() {
                let labels = [("tenant", t.name()), ("reason", reason)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }

        let mut m = encoder.encode_descriptor(
            "pgtier_sessions",
            "Sessions that logged in",
            None,
            MetricType::Counter,
        )?;
        for (t, _) in &tenants {
            ConstCounter::new(t.sessions_total())
                .encode(m.encode_family(&[("tenant", t.name())])?)?;
        }

        let mut m = encoder.encode_descriptor(
            "pgtier_bytes",
            "Bytes relayed, by direction",
            None,
            MetricType::Counter,
        )?;
        for (t, _) in &tenants {
            for (direction, n) in [
                ("from_client", t.bytes_from_clients()),
                ("to_client", t.bytes_to_clients()),
            ] {
                let labels = [("tenant", t.name()), ("direction", direction)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }

        let mut m = encoder.encode_descriptor(
            "pgtier_queries",
            "Queries relayed (Query, Sync and FunctionCall messages)",
            None,
            MetricType::Counter,
        )?;
        for (t, _) in &tenants {
            ConstCounter::new(t.queries_total())
                .encode(m.encode_family(&[("tenant", t.name())])?)?;
        }

        let mut m = encoder.encode_descriptor(
            "pgtier_tenant_rows",
            "Rows the tenant's tables hold as far as the proxy knows (measured, plus committed changes since)",
            None,
            MetricType::Gauge,
        )?;
        for (t, _) in &tenants {
            if let Some(figure) = t.rows.figure() {
                ConstGauge::new(figure.rows).encode(m.encode_family(&[("tenant", t.name())])?)?;
            }
        }

        let mut m = encoder.encode_descriptor(
            "pgtier_tenant_row_limit",
            "The tenant's row limit (0 = unlimited)",
            None,
            MetricType::Gauge,
        )?;
        for (t, _) in &tenants {
            let limit = i64::try_from(shared.limits_for(t.name()).row_limit).unwrap_or(i64::MAX);
            ConstGauge::new(limit).encode(m.encode_family(&[("tenant", t.name())])?)?;
        }

        let mut m = encoder.encode_descriptor(
            "pgtier_tenant_storage_bytes",
            "The tenant's database size in bytes at the last measurement (pg_database_size)",
            None,
            MetricType::Gauge,
        )?;
        for (t, _) in &tenants {
            if let Some(bytes) = t.rows.bytes() {
                let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
                ConstGauge::new(bytes).encode(m.encode_family(&[("tenant", t.name())])?)?;
            }
        }

        let mut m = encoder.encode_descriptor(
            "pgtier_tenant_storage_limit_bytes",
            "The tenant's storage limit in bytes (0 = unlimited)",
            None,
            MetricType::Gauge,
        )?;
        for (t, _) in &tenants {
            let limit =
                i64::try_from(config.limits_for(t.name()).storage_limit).unwrap_or(i64::MAX);
            ConstGauge::new(limit).encode(m.encode_family(&[("tenant", t.name())])?)?;
        }

        let mut m = encoder.encode_descriptor(
            "pgtier_statements_refused",
            "Statements refused: over the row limit (row_limit), over the storage limit (storage_limit) or denied by the tier (policy)",
            None,
            MetricType::Counter,
        )?;
        for (t, _) in &tenants {
            let (row_limit, policy) = t.statements_refused();
            let storage_limit = t.statements_refused_storage();
            for (reason, n) in [
                ("row_limit", row_limit),
                ("storage_limit", storage_limit),
                ("policy", policy),
            ] {
                let labels = [("tenant", t.name()), ("reason", reason)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }

        let mut m = encoder.encode_descriptor(
            "pgtier_quota_measure_failures",
            "Failed measurements of a tenant's rows, by reason (connect, permission, lock, timeout, other); while they fail, statements that add rows are refused",
            None,
            MetricType::Counter,
        )?;
        for (t, _) in &tenants {
            for (reason, n) in t.rows.failures().filter(|(_, n)| *n > 0) {
                let labels = [("tenant", t.name()), ("reason", reason.as_str())];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }

        ConstCounter::new(shared.metrics.session_panics()).encode(encoder.encode_descriptor(
            "pgtier_session_panics",
            "Connection tasks that ended in a panic (each is a bug; the log has the panic)",
            None,
            MetricType::Counter,
        )?)?;

        let mut m = encoder.encode_descriptor(
            "pgtier_connections_accepted",
            "Client connections accepted, by serving thread",
            None,
            MetricType::Counter,
        )?;
        for (thread, n) in shared.metrics.accepted_by_thread() {
            let thread = thread.to_string();
            ConstCounter::new(n).encode(m.encode_family(&[("thread", thread.as_str())])?)?;
        }

        let mut m = encoder.encode_descriptor(
            "pgtier_auth_failures",
            "Proxy mode: failed password checks (delayed: made to wait first)",
            None,
            MetricType::Counter,
        )?;
        for (kind, counter) in [
            ("all", &shared.metrics.auth_failures),
            ("delayed", &shared.metrics.auth_delayed),
        ] {
            let n = counter.load(std::sync::atomic::Ordering::Relaxed);
            ConstCounter::new(n).encode(m.encode_family(&[("kind", kind)])?)?;
        }

        let mut m = encoder.encode_descriptor(
            "pgtier_cluster_connections",
            "Proxy mode: cluster connections handed to sessions, warm (reused) or fresh (a new login)",
            None,
            MetricType::Counter,
        )?;
        for (kind, counter) in [
            ("warm", &shared.metrics.backends_warm),
            ("fresh", &shared.metrics.backends_fresh),
        ] {
            let n = counter.load(std::sync::atomic::Ordering::Relaxed);
            ConstCounter::new(n).encode(m.encode_family(&[("kind", kind)])?)?;
        }

        if shared.fleet.is_shared() {
            let mut m = encoder.encode_descriptor(
                "pgtier_fleet_store_up",
                "1 while the fleet's store answered the last time it was asked",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(shared.fleet.store_up()))
                .encode(m.encode_family::<[(&str, &str); 0]>(&[])?)?;
            let mut m = encoder.encode_descriptor(
                "pgtier_fleet_store_errors",
                "Calls to the fleet's store that failed",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(shared.fleet.store_errors())
                .encode(m.encode_family::<[(&str, &str); 0]>(&[])?)?;

            let mut m = encoder.encode_descriptor(
                "pgtier_fleet_ops_dropped",
                "Releases, cancel keys and row changes not written to the fleet's store \
                 (its queue full, or the store failing)",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(shared.fleet.ops_dropped())
                .encode(m.encode_family::<[(&str, &str); 0]>(&[])?)?;
        }

        if shared.config().registry.is_some() {
            let registry = &shared.registry;
            let mut m = encoder.encode_descriptor(
                "pgtier_registry_listening",
                "1 while the registry's LISTEN connection is up (its NOTIFYs are heard)",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(registry.listening()))
                .encode(m.encode_family::<[(&str, &str); 0]>(&[])?)?;
            let mut m = encoder.encode_descriptor(
                "pgtier_registry_cached_tenants",
                "Databases whose registry answer (a row, or none) is cached",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(registry.len() as i64)
                .encode(m.encode_family::<[(&str, &str); 0]>(&[])?)?;
            let mut m = encoder.encode_descriptor(
                "pgtier_registry_errors",
                "Reads of the tenant registry that failed",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(registry.errors())
                .encode(m.encode_family::<[(&str, &str); 0]>(&[])?)?;
        }

        let mut m = encoder.encode_descriptor(
            "pgtier_warm_backends",
            "Proxy mode: warm cluster connections waiting for a login now",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(shared.warm.len() as i64)
            .encode(m.encode_family::<[(&str, &str); 0]>(&[])?)?;

        let mut m = encoder.encode_descriptor(
            "pgtier_auth_query_connections",
            "Proxy mode: cluster connections auth_query runs on now",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(shared.verifiers.connections() as i64)
            .encode(m.encode_family::<[(&str, &str); 0]>(&[])?)?;

        let login = &shared.metrics.login_duration;
        login.encode(encoder.encode_descriptor(
            "pgtier_login_duration_seconds",
            "Time from accept to the first ReadyForQuery of successful logins",
            None,
            login.metric_type(),
        )?)?;

        let mut m = encoder.encode_descriptor(
            "pgtier_build_info",
            "Always 1; the version is in the label",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64)
            .encode(m.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::tenants::Tenants;

    #[test]
    fn idle_tenants_leave_the_series_after_the_ttl() {
        let hour = Duration::from_secs(3600);
        let tenants = Tenants::default();
        let now = 10_000_000;
        let never = tenants.get_or_insert("never");
        assert!(!in_series(&never, now, hour));
        let recent = tenants.get_or_insert("recent");
        recent.restore_last_activity(now - 60);
        assert!(in_series(&recent, now, hour));
        assert!(!in_series(&recent, now, Duration::from_secs(60)));
        let old = tenants.get_or_insert("old");
        old.restore_last_activity(now - 7200);
        assert!(!in_series(&old, now, hour));
        let _slot = old.try_take_slot(0).unwrap();
        // Taking a slot touches it; a session keeps it in regardless.
        assert!(in_series(&old, now + 7200, hour));
    }
}
