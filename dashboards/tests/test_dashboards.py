"""The Grafana dashboards and provisioning files: structure as Grafana provisioning expects it,
every ClickHouse query (panels, template variables, docs/querying.md) on modern ClickHouse
(chdb) with known data and known answers, every PromQL expression parsed by promtool and made
of catalogue series only, and the Prometheus scrape config.

The same queries run on the local ClickHouse 18.16 with data from a real load, and the series
are checked against running processes, in `tests/tests/dashboards.rs`.
"""

import datetime
import pathlib
import re
import shutil
import subprocess
import time

import pytest
import yaml

import grafana_sql as g

ROOT = g.REPO_ROOT
PROVISIONING = g.DASHBOARDS_DIR / "provisioning"
TELEMETRY_RS = ROOT / "schemas" / "src" / "telemetry.rs"
PROMETHEUS_YML = ROOT / "infra" / "prometheus" / "prometheus.yml"
OBSERVABILITY_MD = ROOT / "docs" / "observability.md"

PANEL_TYPES = {"row", "stat", "timeseries", "table", "barchart", "bargauge", "gauge", "text", "piechart"}
UID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
EXPECTED_DASHBOARDS = {
    "tollgate-usage-cost": "Usage & cost",
    "tollgate-latency-errors": "Latency & errors",
    "tollgate-gateway-health": "Gateway & pipeline health",
}


def dashboards():
    return g.load_dashboards()


# ------------------------------------------------------------------ structure ----


def test_the_three_dashboards_exist():
    uids = {d["uid"]: d["title"] for _, d in dashboards()}
    for uid, title in EXPECTED_DASHBOARDS.items():
        assert uid in uids, f"missing dashboard {uid}"
        assert title in uids[uid], (uid, uids[uid])


@pytest.mark.parametrize("name,dash", dashboards(), ids=[n for n, _ in dashboards()])
def test_dashboard_is_what_file_provisioning_loads(name, dash):
    # A file-provisioned dashboard is the dashboard model itself (not the API's
    # {"dashboard": ...} envelope), with a stable uid and no database id.
    assert "dashboard" not in dash, f"{name}: API envelope, not a dashboard model"
    assert dash.get("id") is None, f"{name}: provisioned dashboards must not carry an id"
    assert UID_RE.match(dash["uid"]), dash["uid"]
    assert isinstance(dash["title"], str) and dash["title"]
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert isinstance(dash.get("version", 0), int)
    assert isinstance(dash["panels"], list) and dash["panels"]
    assert {"from", "to"} <= set(dash["time"])
    assert isinstance(dash["templating"]["list"], list)
    assert "tollgate" in dash.get("tags", [])
    for link in dash.get("links", []):
        assert link["type"] in ("dashboards", "link"), link


def test_uids_and_titles_are_unique():
    ds = [d for _, d in dashboards()]
    assert len({d["uid"] for d in ds}) == len(ds)
    assert len({d["title"] for d in ds}) == len(ds)


def overlaps(a, b):
    return not (
        a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
        or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"]
    )


@pytest.mark.parametrize("name,dash", dashboards(), ids=[n for n, _ in dashboards()])
def test_panels_layout_datasources_and_targets(name, dash):
    panels = list(g.iter_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), f"{name}: duplicate panel titles"
    boxes = []
    for p in panels:
        where = f"{name}: panel {p.get('title')!r}"
        assert p["type"] in PANEL_TYPES, f"{where}: type {p['type']}"
        assert isinstance(p["id"], int)
        gp = p["gridPos"]
        assert all(isinstance(gp[k], int) for k in "hwxy"), where
        assert gp["w"] > 0 and gp["h"] > 0 and gp["x"] >= 0 and gp["y"] >= 0
        assert gp["x"] + gp["w"] <= 24, f"{where}: wider than the grid"
        for other_title, other in boxes:
            assert not overlaps(gp, other), f"{where} overlaps {other_title!r}"
        boxes.append((p.get("title"), gp))
        if p["type"] in ("row", "text"):
            continue
        assert p.get("title"), f"{name}: untitled panel {p['id']}"
        assert p.get("description"), f"{where}: describe what the panel shows"
        targets = p.get("targets") or []
        assert targets, f"{where}: no queries"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), f"{where}: duplicate refIds"
        for t in targets:
            for ds in (t.get("datasource"), p.get("datasource")):
                # By uid (a name would break when the data source is renamed).
                assert isinstance(ds, dict) and set(ds) == {"type", "uid"}, f"{where}: {ds}"
            kind, uid = g.datasource_of(p, t)
            assert (kind, uid) in (
                (g.CLICKHOUSE_TYPE, g.CLICKHOUSE_UID),
                (g.PROMETHEUS_TYPE, g.PROMETHEUS_UID),
            ), f"{where}: unknown data source {kind}/{uid}"
            if kind == g.CLICKHOUSE_TYPE:
                assert t["editorType"] == "sql" and t["rawSql"].strip(), where
                assert t["queryType"] in ("table", "timeseries"), where
                assert t["format"] in (0, 1), where  # 0 time series, 1 table
                if t["format"] == 0:
                    assert re.search(r"\bAS time\b", t["rawSql"]), f"{where}: time column"
                    assert re.search(r"ORDER BY time", t["rawSql"]), f"{where}: sort by time"
                assert "toStartOfInterval" not in t["rawSql"], (
                    f"{where}: $__timeInterval/toStartOfInterval does not exist on ClickHouse 18.16"
                )
            else:
                assert t["expr"].strip(), where


@pytest.mark.parametrize("name,dash", dashboards(), ids=[n for n, _ in dashboards()])
def test_template_variables(name, dash):
    dvars = g.variables(dash)
    for v in ("account", "key", "model"):
        assert v in dvars, f"{name}: template variable {v} missing"
        var = dvars[v]
        assert var["type"] == "query" and var["multi"] and var["includeAll"], (name, v)
        assert var["datasource"] == {"type": g.CLICKHOUSE_TYPE, "uid": g.CLICKHOUSE_UID}
        assert isinstance(var["query"], str) and var["query"] == var["definition"]
        assert var["refresh"] in (1, 2)
    assert dvars["model"]["allValue"] == ".*", "Prometheus panels match model=~\"$model\""
    for p in g.iter_panels(dash["panels"]):
        for t in p.get("targets", []):
            if g.datasource_of(p, t)[0] == g.CLICKHOUSE_TYPE and "usage_" in t["rawSql"]:
                sql = t["rawSql"]
                if "usage_dead_letters" in sql or "usage_sequence_health" in sql:
                    continue  # no account / key / model columns
                for v, col in (("account", "account_id"), ("key", "api_key_id"), ("model", "model")):
                    assert f"$__conditionalAll({col} IN (${{{v}:singlequote}}), ${v})" in sql, (
                        f"{name}: panel {p['title']!r} ignores ${v}"
                    )


def test_budget_constant():
    dash = dict((d["uid"], d) for _, d in dashboards())["tollgate-usage-cost"]
    budget = g.variables(dash)["budget_usd"]
    assert budget["type"] == "constant" and float(budget["query"]) > 0
    used = [p["title"] for p in g.iter_panels(dash["panels"])
            for t in p.get("targets", []) if "$budget_usd" in t.get("rawSql", "")]
    assert len(used) >= 2, used


# --------------------------------------------------------------- provisioning ----

ENV = {
    "TOLLGATE_CLICKHOUSE_HOST": "127.0.0.1",
    "TOLLGATE_CLICKHOUSE_PORT": "8123",
    "TOLLGATE_CLICKHOUSE_PROTOCOL": "http",
    "TOLLGATE_CLICKHOUSE_USER": "default",
    "TOLLGATE_CLICKHOUSE_PASSWORD": "",
    "TOLLGATE_CLICKHOUSE_DATABASE": "tollgate",
    "TOLLGATE_PROMETHEUS_URL": "http://127.0.0.1:9090",
    "TOLLGATE_DASHBOARDS_DIR": str(g.DASHBOARDS_DIR),
}


def interpolate(text):
    """Grafana's provisioning interpolation: $VAR and ${VAR} (values only)."""
    def sub(m):
        name = m.group(1) or m.group(2)
        assert name in ENV, f"undocumented variable {name}"
        return ENV[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)


def provisioning(kind):
    files = sorted((PROVISIONING / kind).glob("*.yaml"))
    assert files, f"no provisioning/{kind}/*.yaml"
    return [(f, yaml.safe_load(interpolate(f.read_text()))) for f in files]


def test_datasource_provisioning():
    found = {}
    for f, doc in provisioning("datasources"):
        assert doc["apiVersion"] == 1, f
        for ds in doc["datasources"]:
            assert {"name", "type", "uid", "access"} <= set(ds), ds
            assert ds["access"] == "proxy"
            found[ds["uid"]] = ds
    ch, prom = found[g.CLICKHOUSE_UID], found[g.PROMETHEUS_UID]
    assert ch["type"] == g.CLICKHOUSE_TYPE and prom["type"] == g.PROMETHEUS_TYPE
    jd = ch["jsonData"]
    assert jd["host"] == "127.0.0.1" and jd["port"] == 8123 and jd["protocol"] in ("http", "native")
    assert jd["defaultDatabase"] == "tollgate" and jd["username"] == "default"
    assert prom["url"].startswith("http://")
    assert sum(1 for ds in found.values() if ds.get("isDefault")) <= 1


def test_dashboard_provisioning():
    for f, doc in provisioning("dashboards"):
        assert doc["apiVersion"] == 1, f
        for p in doc["providers"]:
            assert p["type"] == "file" and p["name"]
            path = pathlib.Path(p["options"]["path"])
            assert sorted(path.glob("*.json")) == g.dashboard_paths()


def test_every_provisioning_variable_is_documented():
    doc = OBSERVABILITY_MD.read_text()
    for f in PROVISIONING.rglob("*.yaml"):
        for name in re.findall(r"\$\{?(\w+)\}?", f.read_text()):
            assert name in doc, f"{name} ({f.name}) is not documented in docs/observability.md"


# ------------------------------------------------------------------ renderer ----


def test_renderer_follows_the_plugin():
    ctx = {"from": 1700000000, "to": 1700003600, "interval_s": 30}
    dvars = {
        "account": {"name": "account", "multi": True, "includeAll": True},
        "model": {"name": "model", "multi": True, "includeAll": True, "allValue": ".*"},
        "budget": {"name": "budget", "type": "constant"},
    }
    values = {"account": ["a", "b'c"], "model": [g.ALL], "budget": "100"}
    sql = ("SELECT $budget FROM t WHERE $__timeFilter(ts) AND "
           "$__conditionalAll(account_id IN (${account:singlequote}), $account) AND "
           "$__conditionalAll(model IN (${model:singlequote}), $model) AND x IN ($account) "
           "AND d >= $__dateFilter(day) GROUP BY intDiv(toUInt32(ts), $__interval_s)")
    out = g.render_clickhouse(sql, dvars, values, ctx)
    assert out == (
        "SELECT 100 FROM t WHERE ts >= toDateTime(1700000000) AND ts <= toDateTime(1700003600) AND "
        "account_id IN ('a','b\\'c') AND 1=1 AND x IN ('a','b'c') "
        "AND d >= day >= toDate('2023-11-14') AND day <= toDate('2023-11-14') "
        "GROUP BY intDiv(toUInt32(ts), 30)"
    ), out
    prom = g.render_prometheus('rate(x{model=~"$model"}[$__rate_interval])', dvars, values, ctx)
    assert prom == 'rate(x{model=~".*"}[35s])', prom
    values["model"] = ["gpt-4.1", "m"]
    prom = g.render_prometheus('x{model=~"$model"}', dvars, values, ctx)
    assert prom == 'x{model=~"(gpt-4\\\\.1|m)"}', prom
    with pytest.raises(g.RenderError):
        g.render_clickhouse("SELECT $__timeInterval_s(x)", dvars, values, ctx)
    with pytest.raises(g.RenderError):
        g.render_clickhouse("SELECT $nope", dvars, values, ctx)
    values["account"] = [g.ALL]
    with pytest.raises(g.RenderError):  # All without a custom value outside $__conditionalAll
        g.render_clickhouse("SELECT 1 WHERE a IN ($account)", dvars, values, ctx)


# ------------------------------------------------------- ClickHouse 26 (chdb) ----

MODELS = {"gpt-4o": (2.5, 10.0), "gpt-4o-mini": (0.15, 0.6)}
KEYS = [("k_a1", "acct_a"), ("k_a2", "acct_a"), ("k_b1", "acct_b"), ("k_c1", "acct_c")]


def synthetic_rows(now):
    """120 requests over the last 15 minutes (kept inside the current UTC month): streams,
    upstream failures, rate limits, a client disconnect, a proxy_seq gap and a duplicate."""
    month_start = int(datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
                      .replace(day=1, hour=0, minute=0, second=0).timestamp())
    rows, seq = [], 0
    for i in range(120):
        ts = max(now - 900 + i * 7, month_start)
        key, account = KEYS[i % len(KEYS)]
        model = "gpt-4o" if i % 3 == 0 else "gpt-4o-mini"
        stream = i % 2
        status, error = 200, ""
        if i % 10 == 7:
            status, error = 503, "upstream_503"
        elif i % 15 == 4:
            status, error = 429, "rate_limit_exceeded"
        elif i == 50:
            status, error = 499, "client_disconnected"
        prompt, completion = (20 + i, 10 + i % 7) if status == 200 else (0, 0)
        pin, pout = MODELS[model]
        cost = int(prompt * pin * 1000 + completion * pout * 1000)
        seq += 1 if i != 60 else 2  # seq 61 never arrives
        rows.append({
            "event_id": f"e{i}", "request_id": f"r{i}", "ts": ts, "ts_ms": ts * 1000,
            "proxy_id": "p1", "proxy_seq": seq, "api_key_id": key, "account_id": account,
            "team_id": "t", "model": model, "provider": "openai", "upstream_model": model + "-x",
            "endpoint": "chat.completions", "stream": stream, "status_code": status,
            "error_type": error, "latency_us": 50_000 + i * 1000, "upstream_latency_us": 45_000 + i * 1000,
            "ttft_us": (20_000 + i * 500) if stream and status == 200 else None,
            "prompt_tokens": prompt, "completion_tokens": completion, "cost_nanos": cost,
            "attempts": 2 if status == 503 else 1,
            "metadata_keys": ["run_id"] if i % 3 == 0 else [],
            "metadata_values": ["nightly-1"] if i % 3 == 0 else [],
            "kafka_topic": "t", "kafka_partition": i % 3, "kafka_offset": i, "ingested_at": ts + 1,
        })
    dup = dict(rows[10], event_id="e10-again", kafka_offset=1000)  # produced twice
    rows.append(dup)
    return rows


def to_tsv(rows):
    def cell(col, v):
        if v is None:
            return "\\N"
        if isinstance(v, list):
            return "[" + ",".join("'" + x + "'" for x in v) + "]"
        if col in ("ts", "ingested_at"):
            return datetime.datetime.fromtimestamp(v, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        return str(v)

    cols = list(rows[0])
    return "\n".join("\t".join(cell(c, r[c]) for c in cols) for r in rows) + "\n", cols


@pytest.fixture(scope="module")
def chdb_db(tmp_path_factory):
    now = int(time.time())
    rows = synthetic_rows(now)
    db = g.ChdbDatabase(tmp_path_factory.mktemp("chdb") / "db")
    tsv, cols = to_tsv(rows)
    db.sess.query(f"INSERT INTO usage_events ({', '.join(cols)}) FORMAT TabSeparated\n{tsv}")
    db.sess.query(
        "INSERT INTO usage_dead_letters (kafka_topic, kafka_partition, kafka_offset, kafka_ts_ms, reason,"
        " error, payload_hex, payload_bytes, event_id, proxy_id, proxy_seq) VALUES"
        f" ('t', 0, 5000, {now * 1000}, 'not_avro', 'missing C3 01 header', '6869', 2, '', '', 0)"
    )
    yield db, rows, now
    db.close()


CHOSEN = {"account": ["acct_a", "acct_b"], "key": ["k_a1", "k_b1"], "model": ["gpt-4o-mini"]}


def plan_for(now):
    return g.plan({"from": now - 3600, "to": now + 60, "interval_s": 60}, CHOSEN)


def test_every_clickhouse_query_runs_on_modern_clickhouse(chdb_db):
    db, _, now = chdb_db
    queries = plan_for(now)["clickhouse"]
    assert len(queries) >= 40
    problems = g.check_results(queries, db.execute)
    assert not problems, "\n\n".join(problems)


def results(db, now, source_prefix):
    out = {}
    for q in plan_for(now)["clickhouse"]:
        if q["source"].startswith(source_prefix):
            out[q["source"][len(source_prefix):]] = db.execute(q["sql"])
    return out


def test_panels_compute_the_right_numbers(chdb_db):
    db, rows, now = chdb_db
    r = results(db, now, "usage-and-cost.json: panel ")
    total_cost = sum(x["cost_nanos"] for x in rows) / 1e9
    assert float(r["'Spend' A [all]"][0][0]) == pytest.approx(total_cost)
    assert int(r["'Requests' A [all]"][0][0]) == len(rows)
    tokens = sum(x["prompt_tokens"] + x["completion_tokens"] for x in rows)
    assert int(r["'Tokens used' A [all]"][0][0]) == tokens
    spend = {}
    for x in rows:
        spend[x["account_id"]] = spend.get(x["account_id"], 0) + x["cost_nanos"] / 1e9
    top = r["'Top accounts' A [all]"]
    assert [t[0] for t in top] == sorted(spend, key=spend.get, reverse=True)
    assert float(top[0][1]) == pytest.approx(max(spend.values()))
    selected = r["'Top accounts' A [selected]"]
    assert {t[0] for t in selected} == {"acct_a", "acct_b"}
    burn = r["'Budget left this month' A [all]"]
    last = {}
    for _, account, left in burn:
        last[account] = float(left)
    assert last == pytest.approx({a: 100 - s for a, s in spend.items()})
    models = {m[0]: float(m[1]) for m in r["'Most expensive models' A [all]"]}
    assert models == pytest.approx({
        m: sum(x["cost_nanos"] for x in rows if x["model"] == m) / 1e9 for m in MODELS})

    e = results(db, now, "latency-and-errors.json: panel ")
    statuses = {row[1] for row in e["'Errors by status' A [all]"]}
    assert statuses == {"429", "499", "503"}
    failures = e["'Upstream failures' A [all]"]
    assert sum(int(f[5]) for f in failures) == sum(1 for x in rows if x["status_code"] == 503)
    slow = e["'Slowest first tokens' A [all]"]
    assert len(slow) == 20 and float(slow[0][5]) == max(
        x["ttft_us"] for x in rows if x["ttft_us"] is not None) / 1000

    h = results(db, now, "gateway-health.json: panel ")
    health = h["'Sequence health per proxy' A [all]"]
    assert health[0][0] == "p1" and int(health[0][4]) == 1 and int(health[0][5]) == 1
    assert h["'Dead letters' A [all]"][0][0] == "not_avro"


def test_docs_queries_answer_the_questions(chdb_db):
    db, rows, now = chdb_db
    docs = [(h, sql) for h, sql, _ in g.querying_md_queries()]
    assert len(docs) >= 10
    heads = {h for h, _ in docs}
    for topic in ("Spend per customer this month", "Most expensive models",
                  "Slowest time to first token", "Error spikes"):
        assert topic in heads, topic
    first = next(sql for h, sql in docs if h == "Spend per customer this month")
    got = {row[0]: float(row[1]) for row in db.execute(first)}
    assert sum(got.values()) == pytest.approx(sum(x["cost_nanos"] for x in rows) / 1e9)


# ------------------------------------------------------------------ Prometheus ----


def catalogue():
    """name -> labels, from schemas/src/telemetry.rs."""
    text = TELEMETRY_RS.read_text()
    out = {}
    for m in re.finditer(r'= "(tollgate_[a-z0-9_]+)", (\w+), \[([^\]]*)\]', text):
        out[m.group(1)] = (m.group(2), set(re.findall(r'"(\w+)"', m.group(3))))
    assert len(out) > 20
    return out


def test_prometheus_panels_use_catalogue_series_and_labels():
    cat = catalogue()
    used = set()
    for q in plan_for(int(time.time()))["prometheus"]:
        assert q["series"], f"{q['source']}: no tollgate_* series in {q['expr']}"
        for series, labels in q["series"].items():
            base = re.sub(r"_(bucket|sum|count)$", "", series)
            name = series if series in cat else base
            assert name in cat, f"{q['source']}: {series} is not in the catalogue"
            kind, allowed = cat[name]
            if name != series:
                assert kind == "Histogram", f"{q['source']}: {series} on a {kind}"
            extra = set(labels) - allowed - {"le", "job", "instance", "env"}
            assert not extra, f"{q['source']}: {series} has no label(s) {extra}"
            used.add(name)
    # The list: every catalogue metric has a panel except the internal ones.
    unused = set(cat) - used
    assert not unused, f"catalogue metrics without a panel: {sorted(unused)}"


def promtool():
    path = shutil.which("promtool")
    if not path:
        pytest.skip("promtool not installed (infra/dev/stack.sh install installs prometheus)")
    return path


def test_promql_parses(tmp_path):
    exprs = [q["expr"] for q in plan_for(int(time.time()))["prometheus"]]
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"tollgate_dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_scrapes_the_local_proxy_and_aggregator():
    out = subprocess.run([promtool(), "check", "config", str(PROMETHEUS_YML)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    targets = {}
    for job in cfg["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sc in job["static_configs"]:
            targets.setdefault(job["job_name"], set()).update(sc["targets"])
    assert "127.0.0.1:8080" in targets["tollgate-proxy"]
    assert "127.0.0.1:8082" in targets["tollgate-aggregator"]
