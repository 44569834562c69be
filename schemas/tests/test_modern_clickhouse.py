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
