-- Rollups of usage_events per minute and per day by account, API key and model, filled by
-- materialized views on every insert into usage_events. AggregatingMergeTree with -State
-- columns (no SimpleAggregateFunction: 18.16 lacks it); read them through the usage_by_minute
-- and usage_by_day views, which apply the -Merge functions. Days are UTC days.
-- Rows already in usage_events when this migration runs are not rolled up; see
-- docs/architecture.md ("ClickHouse") for the backfill statement.
-- Runs on ClickHouse 18.16 and 23+.
CREATE TABLE IF NOT EXISTS usage_rollup_minute
(
    minute         DateTime,
    account_id     String,
    api_key_id     String,
    model          String,
    requests       AggregateFunction(count),
    errors         AggregateFunction(sum, UInt64),
    prompt_sum     AggregateFunction(sum, Int64),
    completion_sum AggregateFunction(sum, Int64),
    cached_sum     AggregateFunction(sum, Int64),
    cost_sum       AggregateFunction(sum, Int64),
    latency_q      AggregateFunction(quantiles(0.5, 0.9, 0.99), Int64),
    ttft_q         AggregateFunction(quantilesIf(0.5, 0.9, 0.99), Int64, UInt8)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(minute)
ORDER BY (account_id, api_key_id, model, minute);

CREATE TABLE IF NOT EXISTS usage_rollup_day
(
    day            Date,
    account_id     String,
    api_key_id     String,
    model          String,
    requests       AggregateFunction(count),
    errors         AggregateFunction(sum, UInt64),
    prompt_sum     AggregateFunction(sum, Int64),
    completion_sum AggregateFunction(sum, Int64),
    cached_sum     AggregateFunction(sum, Int64),
    cost_sum       AggregateFunction(sum, Int64),
    latency_q      AggregateFunction(quantiles(0.5, 0.9, 0.99), Int64),
    ttft_q         AggregateFunction(quantilesIf(0.5, 0.9, 0.99), Int64, UInt8)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (account_id, api_key_id, model, day);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_rollup_minute_mv TO usage_rollup_minute AS
SELECT toStartOfMinute(ts) AS minute,
       account_id,
       api_key_id,
       model,
       countState() AS requests,
       sumState(toUInt64(status_code >= 400)) AS errors,
       sumState(prompt_tokens) AS prompt_sum,
       sumState(completion_tokens) AS completion_sum,
       sumState(cached_tokens) AS cached_sum,
       sumState(cost_nanos) AS cost_sum,
       quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_q,
       quantilesIfState(0.5, 0.9, 0.99)(ifNull(ttft_us, toInt64(0)), isNotNull(ttft_us)) AS ttft_q
FROM usage_events
GROUP BY minute, account_id, api_key_id, model;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_rollup_day_mv TO usage_rollup_day AS
SELECT toDate(ts, 'UTC') AS day,
       account_id,
       api_key_id,
       model,
       countState() AS requests,
       sumState(toUInt64(status_code >= 400)) AS errors,
       sumState(prompt_tokens) AS prompt_sum,
       sumState(completion_tokens) AS completion_sum,
       sumState(cached_tokens) AS cached_sum,
       sumState(cost_nanos) AS cost_sum,
       quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_q,
       quantilesIfState(0.5, 0.9, 0.99)(ifNull(ttft_us, toInt64(0)), isNotNull(ttft_us)) AS ttft_q
FROM usage_events
GROUP BY day, account_id, api_key_id, model;

CREATE VIEW IF NOT EXISTS usage_by_minute AS
SELECT minute,
       account_id,
       api_key_id,
       model,
       countMerge(requests) AS requests,
       sumMerge(errors) AS errors,
       sumMerge(prompt_sum) AS prompt_tokens,
       sumMerge(completion_sum) AS completion_tokens,
       sumMerge(cached_sum) AS cached_tokens,
       sumMerge(cost_sum) AS cost_nanos,
       quantilesMerge(0.5, 0.9, 0.99)(latency_q) AS latency_quantiles_us,
       quantilesIfMerge(0.5, 0.9, 0.99)(ttft_q) AS ttft_quantiles_us
FROM usage_rollup_minute
GROUP BY minute, account_id, api_key_id, model;

CREATE VIEW IF NOT EXISTS usage_by_day AS
SELECT day,
       account_id,
       api_key_id,
       model,
       countMerge(requests) AS requests,
       sumMerge(errors) AS errors,
       sumMerge(prompt_sum) AS prompt_tokens,
       sumMerge(completion_sum) AS completion_tokens,
       sumMerge(cached_sum) AS cached_tokens,
       sumMerge(cost_sum) AS cost_nanos,
       quantilesMerge(0.5, 0.9, 0.99)(latency_q) AS latency_quantiles_us,
       quantilesIfMerge(0.5, 0.9, 0.99)(ttft_q) AS ttft_quantiles_us
FROM usage_rollup_day
GROUP BY day, account_id, api_key_id, model;
