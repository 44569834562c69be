-- Messages of the usage topic that could not become usage_events rows, one row per Kafka
-- offset: poison messages (not our Avro, unknown schema, malformed datum, empty payload) and
-- events ClickHouse rejected for their content. Written by tollgate-aggregator, which counts a
-- partition's offsets stored here and in usage_events together, so after a restart or a
-- rebalance it skips what either table holds (exactly once per offset).
-- Runs on ClickHouse 18.16 and 23+.
CREATE TABLE IF NOT EXISTS usage_dead_letters
(
    kafka_topic     String,
    kafka_partition Int32,
    kafka_offset    Int64,
    kafka_ts_ms     Int64,
    reason          String,
    error           String,
    payload_hex     String,
    payload_bytes   UInt32,
    event_id        String,
    proxy_id        String,
    proxy_seq       Int64,
    failed_at       DateTime DEFAULT now()
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(failed_at)
ORDER BY (kafka_topic, kafka_partition, kafka_offset);
