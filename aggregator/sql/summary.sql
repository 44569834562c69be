-- Usage summary per model (tollgate-aggregator summary, make demo). The filter placeholder
-- below is replaced by an optional WHERE clause. Runs on ClickHouse 18.16 and 23+.
SELECT model,
       count() AS requests,
       countIf(status_code >= 400) AS errors,
       countIf(stream = 1) AS streams,
       sum(prompt_tokens) AS prompt_tokens,
       sum(completion_tokens) AS completion_tokens,
       sum(cost_nanos) AS cost_nanos,
       toInt64(quantileExact(0.5)(latency_us)) AS latency_p50_us,
       toInt64(quantileExact(0.99)(latency_us)) AS latency_p99_us,
       toInt64(quantileExactIf(0.5)(ifNull(ttft_us, 0), isNotNull(ttft_us))) AS ttft_p50_us,
       toInt64(quantileExactIf(0.99)(ifNull(ttft_us, 0), isNotNull(ttft_us))) AS ttft_p99_us
FROM usage_events {filter}
GROUP BY model
ORDER BY model
