"""Run every ClickHouse migration on modern ClickHouse (chdb-core, ClickHouse 26.x in-process).

The split rule mirrors `schemas/src/migrate.rs::statements`: a statement ends at a line whose
last non-blank character is `;`, and `--` comment lines are dropped.
"""

import pathlib

import chdb
from chdb import session as chs

ROOT = pathlib.Path(__file__).resolve().parents[1]
MIGRATIONS = sorted((ROOT / "migrations" / "clickhouse").glob("[0-9][0-9][0-9][0-9]_*.sql"))
SUMMARY_SQL = ROOT.parent / "aggregator" / "sql" / "summary.sql"


def statements(sql: str):
    out, current = [], []
    for line in sql.splitlines():
        t = line.strip()
        if not t or t.startswith("--"):
            continue
        current.append(line)
        if t.endswith(";"):
            stmt = "\n".join(current).strip().rstrip(";").strip()
            if stmt:
                out.append(stmt)
            current = []
    rest = "\n".join(current).strip()
    if rest:
        out.append(rest)
    return out


def summary_sql() -> str:
    """The demo summary query, read from the file the Rust code compiles in."""
    return " ".join(statements(SUMMARY_SQL.read_text())).replace("{filter}", "")


def test_there_are_migrations():
    assert MIGRATIONS, "no migration files found"
    print("chdb", chdb.__version__, "migrations:", [m.name for m in MIGRATIONS])


def test_migrations_run_twice_and_summary_query_works(tmp_path):
    sess = chs.Session(str(tmp_path / "chdb"))
    try:
        sess.query("CREATE DATABASE IF NOT EXISTS tg")
        sess.query("USE tg")
        for _ in range(2):  # idempotent
            for path in MIGRATIONS:
                for stmt in statements(path.read_text()):
                    sess.query(stmt)
        cols = sess.query(
            "SELECT name FROM system.columns WHERE database = 'tg' AND table = 'usage_events'", "CSV"
        ).bytes().decode()
        for col in ("event_id", "ttft_us", "cost_nanos", "kafka_offset", "metadata_keys"):
            assert f'"{col}"' in cols, col
        sess.query(
            "INSERT INTO usage_events (event_id, ts, ts_ms, model, stream, status_code, latency_us, ttft_us,"
            " prompt_tokens, completion_tokens, cost_nanos, kafka_topic, kafka_partition, kafka_offset) VALUES"
            " ('e1', 1700000000, 1700000000000, 'm', 1, 200, 1500, 700, 10, 20, 50000, 't', 0, 0),"
            " ('e2', 1700000001, 1700000001000, 'm', 0, 500, 2500, NULL, 5, 0, 5000, 't', 0, 1)"
        )
        out = sess.query(summary_sql(), "CSV").bytes().decode().strip()
        assert out.startswith('"m",2,1,1,15,20,55000,'), out
    finally:
        sess.close()


def rows(sess, sql):
    return [line.split("\t") for line in sess.query(sql, "TSV").bytes().decode().strip().splitlines()]


def test_rollups_sequence_health_and_dead_letters(tmp_path):
    """Migrations 0002+ on modern ClickHouse: the rollup materialized views fill on insert and
    their totals equal usage_events totals; the sequence-health view finds gaps and duplicates;
    the dead-letter table takes the aggregator's columns."""
    sess = chs.Session(str(tmp_path / "chdb"))
    try:
        sess.query("CREATE DATABASE IF NOT EXISTS tg")
        sess.query("USE tg")
        for path in MIGRATIONS:
            for stmt in statements(path.read_text()):
                sess.query(stmt)
        values = []
        # proxy p: seqs 1..10 without 4, seq 7 twice; two minutes, two keys, one error.
        seqs = [1, 2, 3, 5, 6, 7, 7, 8, 9, 10]
        for off, seq in enumerate(seqs):
            ts = 1700000000 + off * 20
            key = "k1" if off % 2 else "k2"
            status = 500 if off == 3 else 200
            ttft = "NULL" if off % 3 else str(100 + off)
            values.append(
                f"('e{off}', {ts}, {ts * 1000}, 'p', {seq}, 'a', '{key}', 'm', {int(ttft != 'NULL')},"
                f" {status}, {1000 + off}, {ttft}, {off}, {2 * off}, 1, {10 * off}, 't', 0, {off})"
            )
        sess.query(
            "INSERT INTO usage_events (event_id, ts, ts_ms, proxy_id, proxy_seq, account_id, api_key_id, model,"
            " stream, status_code, latency_us, ttft_us, prompt_tokens, completion_tokens, cached_tokens,"
            " cost_nanos, kafka_topic, kafka_partition, kafka_offset) VALUES " + ", ".join(values)
        )
        sess.query(
            "INSERT INTO usage_dead_letters (kafka_topic, kafka_partition, kafka_offset, kafka_ts_ms, reason,"
            " error, payload_hex, payload_bytes, event_id, proxy_id, proxy_seq) VALUES"
            " ('t', 0, 10, 0, 'not_avro', 'missing C3 01 header', '6869', 2, '', '', 0)"
        )
        base = (
            "SELECT count(), countIf(status_code >= 400), sum(prompt_tokens), sum(completion_tokens),"
            " sum(cached_tokens), sum(cost_nanos) FROM usage_events"
        )
        expected = rows(sess, base)
        assert expected == [["10", "1", "45", "90", "10", "450"]], expected
        for view in ("usage_by_minute", "usage_by_day"):
            got = rows(
                sess,
                "SELECT sum(requests), sum(errors), sum(prompt_tokens), sum(completion_tokens),"
                f" sum(cached_tokens), sum(cost_nanos) FROM {view}",
            )
            assert got == expected, (view, got)
        groups = rows(sess, "SELECT count() FROM usage_by_minute")
        assert int(groups[0][0]) > 2, groups
        quant = rows(sess, "SELECT latency_quantiles_us[1], ttft_quantiles_us[1] FROM usage_by_day WHERE api_key_id = 'k2'")
        assert 1000 <= float(quant[0][0]) <= 1009, quant
        health = rows(sess, "SELECT proxy_id, events, distinct_seqs, min_seq, max_seq, gaps, duplicates FROM usage_sequence_health")
        assert health == [["p", "10", "9", "1", "10", "1", "1"]], health
        stored = rows(
            sess,
            "SELECT max(o) FROM (SELECT kafka_offset AS o FROM usage_events UNION ALL"
            " SELECT kafka_offset AS o FROM usage_dead_letters)",
        )
        assert stored == [["10"]], stored
    finally:
        sess.close()


def test_budget_alerts_and_credit_ledger_collapse_duplicates(tmp_path):
    """Migrations 0005/0006 on modern ClickHouse: a repeated alert or ledger insert (at-least-once
    writers) counts once with FINAL / GROUP BY entry_id, and the statement queries run."""
    sess = chs.Session(str(tmp_path / "chdb"))
    try:
        sess.query("CREATE DATABASE IF NOT EXISTS tg")
        sess.query("USE tg")
        for path in MIGRATIONS:
            for stmt in statements(path.read_text()):
                sess.query(stmt)
        for version in (1, 2):
            sess.query(
                "INSERT INTO budget_alerts (budget_id, window_start, threshold_pct, window_label, scope,"
                " scope_id, period, mode, unit, limit_value, spent, version) VALUES"
                f" ('b1', 1700000000, 80, 'd20231114', 'key', 'k1', 'daily', 'warn', 'usd', 100, 85, {version})"
            )
        assert rows(sess, "SELECT count(), max(version) FROM budget_alerts FINAL") == [["1", "2"]]
        for _ in range(2):
            sess.query(
                "INSERT INTO credit_ledger (account_id, entry_id, ts, ts_ms, kind, source, amount_nanos,"
                " reference) VALUES ('a1', 'pay_1', 1700000000, 1700000000000, 'topup', 'webhook',"
                " 5000000000, 'invoice 1')"
            )
        sess.query(
            "INSERT INTO credit_ledger (account_id, entry_id, ts, ts_ms, kind, source, amount_nanos,"
            " reference) VALUES ('a1', 'adm_1', 1700000100, 1700000100000, 'adjustment', 'admin', -1000, '')"
        )
        entries = rows(
            sess,
            "SELECT account_id, entry_id, min(ts), min(ts_ms), any(kind), any(source), any(amount_nanos),"
            " any(reference) FROM credit_ledger WHERE account_id = 'a1'"
            " GROUP BY account_id, entry_id ORDER BY min(ts_ms), entry_id",
        )
        assert [e[1] for e in entries] == ["pay_1", "adm_1"], entries
        assert sum(int(e[6]) for e in entries) == 4999999000
        sess.query(
            "INSERT INTO usage_events (event_id, ts, ts_ms, account_id, model, cost_nanos, prompt_tokens,"
            " completion_tokens, kafka_topic, kafka_partition, kafka_offset) VALUES"
            " ('e1', 1700000200, 1700000200000, 'a1', 'm', 700, 3, 4, 't', 0, 5),"
            " ('e2', 1700000300, 1700000300000, 'a1', 'm', 300, 1, 1, 't', 1, 9)"
        )
        by_day = rows(
            sess,
            "SELECT toString(toDate(ts)) AS day, model, count() AS requests, sum(prompt_tokens),"
            " sum(completion_tokens), sum(cost_nanos) FROM usage_events WHERE account_id = 'a1'"
            " AND ts >= toDateTime(1700000000) AND ts < toDateTime(1800000000) GROUP BY day, model ORDER BY day, model",
        )
        assert by_day == [["2023-11-14", "m", "2", "4", "5", "1000"]], by_day
        recount = rows(
            sess,
            "SELECT kafka_partition, max(kafka_offset), sum(cost_nanos) FROM usage_events"
            " WHERE kafka_topic = 't' AND ts >= toDateTime(0) AND ts < toDateTime(4294967295)"
            " AND account_id = 'a1' GROUP BY kafka_partition ORDER BY kafka_partition",
        )
        assert recount == [["0", "5", "700"], ["1", "9", "300"]], recount
    finally:
        sess.close()
