-- The highest Kafka offset stored in usage_events per topic and partition, kept by a
-- materialized view, so that the aggregator learns where its stored offsets end (after every
-- assignment) without scanning usage_events, whose sort key does not lead with the partition.
-- A value that is too high (rows deleted by hand) only makes the aggregator check the offsets
-- below it one by one; it never skips a message that is not stored.
CREATE TABLE IF NOT EXISTS usage_offsets
(
    kafka_topic     String,
    kafka_partition Int32,
    max_offset      AggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree()
ORDER BY (kafka_topic, kafka_partition);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_offsets_mv TO usage_offsets AS
SELECT kafka_topic, kafka_partition, maxState(kafka_offset) AS max_offset
FROM usage_events
GROUP BY kafka_topic, kafka_partition;

-- Rows stored before this migration (running it again only repeats a maximum).
INSERT INTO usage_offsets
SELECT kafka_topic, kafka_partition, maxState(kafka_offset) AS max_offset
FROM usage_events
GROUP BY kafka_topic, kafka_partition;
