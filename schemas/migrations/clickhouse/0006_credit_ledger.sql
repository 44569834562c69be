-- Prepaid credit top-ups and adjustments, one row per entry (a payment id of the signed
-- payment webhook, or an admin entry id). Usage debits are the account's usage_events rows
-- (cost_nanos) since the credit account's start; statements join both.
-- Idempotent on (account_id, entry_id): a repeated insert collapses; readers group by
-- entry_id (or use FINAL) so a duplicate never counts twice.
-- Runs on ClickHouse 18.16 and 23+.
CREATE TABLE IF NOT EXISTS credit_ledger
(
    account_id   String,
    entry_id     String,
    ts           DateTime,
    ts_ms        Int64,
    kind         String,
    source       String,
    amount_nanos Int64,
    reference    String,
    created_at   DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree()
ORDER BY (account_id, entry_id);
