//! Prometheus metrics of the aggregator: the process-wide recorder and the `/metrics` text.
//!
//! Names come from `tollgate_schemas::telemetry` (the catalogue); every `tollgate_aggregator_*`
//! entry is described and, where its label values are known up front, registered at zero so
//! dashboards see the series before the first event.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tollgate_schemas::telemetry::{
    Kind, AGG_BATCH_ROWS, AGG_CLICKHOUSE_ERRORS, AGG_DEAD_LETTERS, AGG_INSERT_DURATION, CATALOGUE,
};

use crate::buffer::DeadReason;
use crate::classify::ErrorKind;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const ROW_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0,
];
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn build() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(AGG_BATCH_ROWS.into()), ROW_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(AGG_INSERT_DURATION.into()), SECONDS_BUCKETS)
        });
    let handle = match builder.and_then(PrometheusBuilder::install_recorder) {
        Ok(handle) => handle,
        Err(e) => {
            // Another component of this process installed the global recorder first (tests
            // that run several components in one process); /metrics then says so.
            tracing::warn!(error = %e, "metrics recorder not installed");
            return None;
        }
    };
    for m in CATALOGUE.iter().filter(|m| {
        tollgate_schemas::telemetry::aggregator_owned(m.name)
            || m.name == tollgate_schemas::telemetry::BUDGET_REDIS_ERRORS
            || m.name == tollgate_schemas::telemetry::CREDITS_TOPUPS
    }) {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
        if m.kind == Kind::Counter && m.labels.is_empty() {
            metrics::counter!(m.name).increment(0);
        }
    }
    for reason in DeadReason::ALL {
        metrics::counter!(AGG_DEAD_LETTERS, "reason" => reason.as_str()).increment(0);
    }
    for kind in [ErrorKind::Transient, ErrorKind::BadData] {
        metrics::counter!(AGG_CLICKHOUSE_ERRORS, "kind" => kind.label()).increment(0);
    }
    register_budget_series();
    Some(handle)
}

/// Budget and credit series of the aggregator at zero (budgets may be off).
fn register_budget_series() {
    use tollgate_schemas::telemetry::{
        budget_labels as l, BUDGET_ALERTS, BUDGET_DECISIONS, BUDGET_REBUILDS, BUDGET_REDIS_ERRORS,
        CREDITS_TOPUPS, CREDITS_WEBHOOK_REJECTED,
    };
    for kind in l::DECISION_KINDS {
        metrics::counter!(BUDGET_DECISIONS, "kind" => *kind).increment(0);
    }
    for mode in l::ALERT_MODES {
        metrics::counter!(BUDGET_ALERTS, "mode" => *mode).increment(0);
    }
    for result in l::REBUILD_RESULTS {
        metrics::counter!(BUDGET_REBUILDS, "result" => *result).increment(0);
    }
    for op in l::AGGREGATOR_REDIS_OPS {
        metrics::counter!(BUDGET_REDIS_ERRORS, "op" => *op).increment(0);
    }
    for result in l::TOPUP_RESULTS {
        metrics::counter!(CREDITS_TOPUPS, "source" => "webhook", "result" => *result).increment(0);
    }
    for reason in l::WEBHOOK_REJECTIONS {
        metrics::counter!(CREDITS_WEBHOOK_REJECTED, "reason" => *reason).increment(0);
    }
}

/// Install the process-wide recorder once (later calls reuse it).
pub fn install() {
    HANDLE.get_or_init(build);
}

/// The Prometheus text exposition of every metric recorded in this process.
pub fn render() -> String {
    match HANDLE.get_or_init(build) {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => "# metrics recorder owned by another component of this process\n".into(),
    }
}
