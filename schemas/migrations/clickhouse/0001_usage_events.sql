-- One row per metered request. Written by tollgate-aggregator from the Kafka usage topic.
-- Runs on ClickHouse 18.16 and 23+: no DateTime64, no LowCardinality, no Map.
-- kafka_partition/kafka_offset let the aggregator skip what is already stored after a restart.
CREATE TABLE IF NOT EXISTS usage_events
(
    event_id            String,
    request_id          String,
    ts                  DateTime,
    ts_ms               Int64,
    proxy_id            String,
    proxy_seq           Int64,
    api_key_id          String,
    account_id          String,
    team_id             String,
    model               String,
    provider            String,
    upstream_model      String,
    endpoint            String,
    stream              UInt8,
    status_code         UInt16,
    error_type          String,
    latency_us          Int64,
    upstream_latency_us Int64,
    ttft_us             Nullable(Int64),
    prompt_tokens       Int64,
    completion_tokens   Int64,
    cached_tokens       Int64,
    usage_estimated     UInt8,
    cost_nanos          Int64,
    attempts            UInt16,
    metadata_keys       Array(String),
    metadata_values     Array(String),
    kafka_topic         String,
    kafka_partition     Int32,
    kafka_offset        Int64,
    ingested_at         DateTime DEFAULT now()
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(ts)
ORDER BY (account_id, api_key_id, ts, event_id);
