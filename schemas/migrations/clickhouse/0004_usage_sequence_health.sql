-- Gap and duplicate accounting per producing proxy process, from proxy_id/proxy_seq (every
-- proxy numbers its events 1, 2, 3, ...). Events ClickHouse rejected (usage_dead_letters with a
-- proxy_id) count as received. gaps = sequence numbers between min_seq and max_seq never
-- received (lost between proxy and Kafka); duplicates = events received more than once.
-- Runs on ClickHouse 18.16 and 23+.
CREATE VIEW IF NOT EXISTS usage_sequence_health AS
SELECT proxy_id,
       count() AS events,
       uniqExact(proxy_seq) AS distinct_seqs,
       min(proxy_seq) AS min_seq,
       max(proxy_seq) AS max_seq,
       toInt64(max(proxy_seq) - min(proxy_seq) + 1) - toInt64(uniqExact(proxy_seq)) AS gaps,
       toInt64(count()) - toInt64(uniqExact(proxy_seq)) AS duplicates
FROM
(
    SELECT proxy_id, proxy_seq FROM usage_events
    UNION ALL
    SELECT proxy_id, proxy_seq FROM usage_dead_letters WHERE proxy_id != ''
)
GROUP BY proxy_id;
