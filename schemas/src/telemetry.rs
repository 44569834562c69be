//! The telemetry contract: every metric Tollgate exports, in one place.
//!
//! Names follow `tollgate_<thing>_<unit>`. Labels are bounded: model, endpoint, status class,
//! reason, kind, partition; never an API key, account or request id. `docs/metrics.md` lists the
//! same catalogue (a test keeps the two in sync) and dashboards may only use these names.

/// Prometheus metric kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter (`_total`).
    Counter,
    /// Gauge.
    Gauge,
    /// Histogram (`_seconds`, `_rows`, ...).
    Histogram,
}

/// One catalogue entry.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Full name.
    pub name: &'static str,
    /// Kind.
    pub kind: Kind,
    /// Allowed labels (all bounded).
    pub labels: &'static [&'static str],
    /// What it measures.
    pub help: &'static str,
}

macro_rules! catalogue {
    ($( $(#[$doc:meta])* $ident:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal; )*) => {
        $( $(#[$doc])* #[doc = $help] pub const $ident: &str = $name; )*
        /// Every metric, for docs and tests.
        pub const CATALOGUE: &[Metric] = &[ $( Metric { name: $name, kind: Kind::$kind, labels: &[$($label),*], help: $help } ),* ];
    };
}

catalogue! {
    PROXY_REQUESTS = "tollgate_proxy_requests_total", Counter, ["model", "endpoint", "status"], "Requests answered, by public model, endpoint and HTTP status.";
    PROXY_REQUEST_DURATION = "tollgate_proxy_request_duration_seconds", Histogram, ["model", "endpoint"], "Total request time in the proxy, until the last byte.";
    PROXY_OVERHEAD = "tollgate_proxy_overhead_seconds", Histogram, ["endpoint"], "Time the proxy adds: total time minus time waiting on the upstream.";
    PROXY_TTFT = "tollgate_proxy_ttft_seconds", Histogram, ["model"], "Time to first token of streamed responses.";
    PROXY_UPSTREAM_DURATION = "tollgate_proxy_upstream_duration_seconds", Histogram, ["model"], "Time waiting on the upstream provider.";
    PROXY_TOKENS = "tollgate_proxy_tokens_total", Counter, ["model", "kind"], "Tokens metered, kind = prompt | completion | cached.";
    PROXY_COST = "tollgate_proxy_cost_nanousd_total", Counter, ["model"], "Cost metered, nano-USD.";
    PROXY_REJECTIONS = "tollgate_proxy_rejections_total", Counter, ["reason"], "Requests refused before the upstream (auth, validation, limits, budgets).";
    USAGE_EVENTS_SUBMITTED = "tollgate_usage_events_submitted_total", Counter, [], "Usage events handed to the publisher.";
    USAGE_EVENTS_PUBLISHED = "tollgate_usage_events_published_total", Counter, [], "Usage events acknowledged by Kafka.";
    USAGE_EVENTS_SPOOLED = "tollgate_usage_events_spooled_total", Counter, [], "Usage events written to the disk spool.";
    USAGE_EVENTS_REPLAYED = "tollgate_usage_events_replayed_total", Counter, [], "Spooled usage events replayed to Kafka.";
    USAGE_EVENTS_DROPPED = "tollgate_usage_events_dropped_total", Counter, ["reason"], "Usage events lost, reason = queue_full | spool_full | encode | spool_io.";
    USAGE_SPOOL_BYTES = "tollgate_usage_spool_bytes", Gauge, [], "Bytes in the disk spool not yet replayed.";
    USAGE_SPOOL_EVENTS = "tollgate_usage_spool_events", Gauge, [], "Events in the disk spool not yet replayed.";
    USAGE_QUEUE_EVENTS = "tollgate_usage_queue_events", Gauge, [], "Events waiting in the in-memory publish queue.";
    AGG_CONSUMED = "tollgate_aggregator_events_consumed_total", Counter, [], "Messages read from the usage topic.";
    AGG_INSERTED = "tollgate_aggregator_rows_inserted_total", Counter, [], "Rows inserted into usage_events.";
    AGG_SKIPPED = "tollgate_aggregator_rows_skipped_total", Counter, [], "Messages skipped because ClickHouse already held them (replays).";
    AGG_DEAD_LETTERS = "tollgate_aggregator_dead_letters_total", Counter, ["reason"], "Messages sent to the dead-letter table.";
    AGG_BATCH_ROWS = "tollgate_aggregator_batch_rows", Histogram, [], "Rows per insert.";
    AGG_INSERT_DURATION = "tollgate_aggregator_insert_duration_seconds", Histogram, [], "ClickHouse insert latency.";
    AGG_CLICKHOUSE_ERRORS = "tollgate_aggregator_clickhouse_errors_total", Counter, ["kind"], "ClickHouse errors, kind = transient | bad_data.";
    AGG_LAG = "tollgate_aggregator_consumer_lag_events", Gauge, ["partition"], "Messages behind the partition's high watermark.";
    AGG_GROUP_REJOINS = "tollgate_aggregator_group_rejoins_total", Counter, [], "Consumer group rejoins forced because partitions had unconsumed events and no consumer (orphaned).";
    AGG_RESENDS_SKIPPED = "tollgate_aggregator_resends_skipped_total", Counter, [], "Events not stored again because their event_id was already stored (proxy spool re-sends).";
    AGG_GAPS = "tollgate_aggregator_sequence_gaps_total", Counter, [], "Missing proxy_seq numbers seen (events lost between proxy and Kafka).";
    AGG_DUPLICATES = "tollgate_aggregator_sequence_duplicates_total", Counter, [], "Repeated proxy_seq numbers seen (events produced twice).";
    AGG_SEQUENCE_LATE = "tollgate_aggregator_sequence_late_total", Counter, [], "proxy_seq numbers that arrived after the gap window had passed them (read late while catching up a backlog, or old duplicates).";
    RATELIMIT_DECISION_DURATION = "tollgate_ratelimit_decision_duration_seconds", Histogram, ["backend"], "Time of a request's rate-limit pre-check, backend = local | redis | slice (admitted from a quota slice) | fallback.";
    RATELIMIT_SLICE_MISSES = "tollgate_ratelimit_slice_misses_total", Counter, ["reason"], "Requests with Redis limits that a quota slice could not admit (checked in Redis instead), reason = no_slice | expired | requests | tokens | slots.";
    RATELIMIT_BACKEND_ERRORS = "tollgate_ratelimit_backend_errors_total", Counter, ["op"], "Failed calls to the shared rate-limit store, op = acquire | settle | renew.";
    BUDGET_CHECK_DURATION = "tollgate_budget_check_duration_seconds", Histogram, [], "Time of a request's budget check in the proxy (cached decisions, reservations).";
    BUDGET_RESERVATIONS = "tollgate_budget_reservations_total", Counter, ["result"], "Worst-case reservations of requests near a hard budget, result = granted | denied | error.";
    BUDGET_DECISIONS = "tollgate_budget_decisions_total", Counter, ["kind"], "Budget and credit decisions written by the aggregator, kind = block | reserve | clear.";
    BUDGET_ALERTS = "tollgate_budget_alerts_total", Counter, ["mode"], "Budget alert thresholds crossed (one per budget, window and threshold), mode = hard | warn.";
    BUDGET_REBUILDS = "tollgate_budget_rebuilds_total", Counter, ["result"], "Counter rebuilds from ClickHouse, result = done | stale | error.";
    BUDGET_REDIS_ERRORS = "tollgate_budget_redis_errors_total", Counter, ["op"], "Failed Redis calls of budgets and credits, op = read | reserve | settle (proxy) | apply | decide | rebuild | load (aggregator).";
    CREDITS_TOPUPS = "tollgate_credits_topups_total", Counter, ["source", "result"], "Credit top-ups, source = webhook | admin, result = applied | duplicate | rejected.";
    CREDITS_WEBHOOK_REJECTED = "tollgate_credits_webhook_rejected_total", Counter, ["reason"], "Payment webhooks refused, reason = unsigned | bad_signature | stale | invalid | unknown_account | disabled.";
}

/// Budget and credit metrics only the aggregator exports (the proxy exports the other
/// `tollgate_budget_*` / `tollgate_credits_*` entries; both export the shared ones).
pub const AGGREGATOR_ONLY: &[&str] = &[
    BUDGET_DECISIONS,
    BUDGET_ALERTS,
    BUDGET_REBUILDS,
    CREDITS_WEBHOOK_REJECTED,
];

/// Whether the aggregator (not the proxy) exports `name`.
pub fn aggregator_owned(name: &str) -> bool {
    name.starts_with("tollgate_aggregator_") || AGGREGATOR_ONLY.contains(&name)
}

/// Label values of the budget and credit counters, for registering them at zero.
pub mod budget_labels {
    /// `tollgate_budget_decisions_total{kind}`.
    pub const DECISION_KINDS: &[&str] = &["block", "reserve", "clear"];
    /// `tollgate_budget_alerts_total{mode}`.
    pub const ALERT_MODES: &[&str] = &["hard", "warn"];
    /// `tollgate_budget_rebuilds_total{result}`.
    pub const REBUILD_RESULTS: &[&str] = &["done", "stale", "error"];
    /// `tollgate_budget_reservations_total{result}`.
    pub const RESERVATION_RESULTS: &[&str] = &["granted", "denied", "error"];
    /// `tollgate_credits_topups_total{result}`.
    pub const TOPUP_RESULTS: &[&str] = &["applied", "duplicate", "rejected"];
    /// `tollgate_credits_webhook_rejected_total{reason}`.
    pub const WEBHOOK_REJECTIONS: &[&str] = &[
        "unsigned",
        "bad_signature",
        "stale",
        "invalid",
        "unknown_account",
        "disabled",
    ];
    /// `tollgate_budget_redis_errors_total{op}` in the proxy.
    pub const PROXY_REDIS_OPS: &[&str] = &["read", "reserve", "settle"];
    /// `tollgate_budget_redis_errors_total{op}` in the aggregator.
    pub const AGGREGATOR_REDIS_OPS: &[&str] = &["apply", "decide", "rebuild", "load", "read"];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention_and_are_unique() {
        let mut names: Vec<&str> = CATALOGUE.iter().map(|m| m.name).collect();
        for m in CATALOGUE {
            assert!(m.name.starts_with("tollgate_"), "{}", m.name);
            if m.kind == Kind::Counter {
                assert!(m.name.ends_with("_total"), "{}", m.name);
            }
            for l in m.labels {
                assert!(!["api_key", "account", "account_id", "key", "request_id"].contains(l));
            }
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
    }

    #[test]
    fn docs_list_every_metric() {
        let doc = include_str!("../../docs/metrics.md");
        for m in CATALOGUE {
            assert!(doc.contains(m.name), "docs/metrics.md misses {}", m.name);
        }
    }
}
