//! Process-wide Prometheus recorder (names in `tollgate_schemas::telemetry`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tollgate_schemas::telemetry::{
    Kind, CATALOGUE, RATELIMIT_BACKEND_ERRORS, USAGE_EVENTS_DROPPED,
};

/// The handle that renders `/metrics`; installs the recorder on first use. `None` when another
/// recorder was installed first.
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ])
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()?;
            register_catalogue();
            Some(handle)
        })
        .clone()
}

/// Describe the proxy's catalogue entries and export the event counters, gauges and the
/// label values known up front at zero, so dashboards show 0 rather than "no data" before the
/// first spool, drop or rate-limit store error.
fn register_catalogue() {
    let ours = [
        "tollgate_proxy_",
        "tollgate_usage_",
        "tollgate_ratelimit_",
        "tollgate_budget_",
        "tollgate_credits_",
    ];
    for m in CATALOGUE.iter().filter(|m| {
        ours.iter().any(|p| m.name.starts_with(p))
            && !tollgate_schemas::telemetry::aggregator_owned(m.name)
    }) {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
        if m.labels.is_empty() {
            match m.kind {
                Kind::Counter => metrics::counter!(m.name).increment(0),
                Kind::Gauge => metrics::gauge!(m.name).increment(0.0),
                Kind::Histogram => {}
            }
        }
    }
    for reason in ["queue_full", "spool_full", "encode", "spool_io"] {
        metrics::counter!(USAGE_EVENTS_DROPPED, "reason" => reason).increment(0);
    }
    for op in ["acquire", "settle", "renew"] {
        metrics::counter!(RATELIMIT_BACKEND_ERRORS, "op" => op).increment(0);
    }
    use tollgate_schemas::telemetry::{
        budget_labels as l, BUDGET_REDIS_ERRORS, BUDGET_RESERVATIONS, CREDITS_TOPUPS,
    };
    for result in l::RESERVATION_RESULTS {
        metrics::counter!(BUDGET_RESERVATIONS, "result" => *result).increment(0);
    }
    for op in l::PROXY_REDIS_OPS {
        metrics::counter!(BUDGET_REDIS_ERRORS, "op" => *op).increment(0);
    }
    for result in l::TOPUP_RESULTS {
        metrics::counter!(CREDITS_TOPUPS, "source" => "admin", "result" => *result).increment(0);
    }
}
