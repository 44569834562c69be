-- One row per budget alert: a threshold (percent of the limit) crossed in one budget window.
-- Written by tollgate-aggregator (at least once; the row is idempotent: a repeated insert of
-- the same budget/window/threshold collapses, read with FINAL for exact counts).
-- Runs on ClickHouse 18.16 and 23+: no DateTime64, no LowCardinality.
CREATE TABLE IF NOT EXISTS budget_alerts
(
    budget_id     String,
    window_start  DateTime,
    threshold_pct UInt16,
    window_label  String,
    scope         String,
    scope_id      String,
    period        String,
    mode          String,
    unit          String,
    limit_value   Int64,
    spent         Int64,
    created_at    DateTime DEFAULT now(),
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (budget_id, window_start, threshold_pct);
