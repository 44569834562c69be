"""Load the Tollgate Grafana dashboards and turn their queries into what the data sources run.

ClickHouse panels go through the same two steps as in Grafana with the
`grafana-clickhouse-datasource` plugin:

1. Front end (`CHDatasource.applyTemplateVariables`): `$__conditionalAll(cond, $var)` becomes
   `1=1` when the variable is "All" (else `cond`), then Grafana's template service replaces
   `$var`, `${var}`, `${var:format}` and `[[var]]` (multi-values without a format become
   `'a','b'`, the plugin's own format function; custom "All" values are not formatted) and the
   global variables (`$__interval`, `$__range_s`, `$__from`, ...).
2. Back end (`pkg/macros/macros.go`): `$__timeFilter(col)`, `$__fromTime`, `$__toTime`,
   `$__dateFilter(col)`, `$__interval_s`, ... become ClickHouse expressions.

Prometheus panels go through Grafana's template service with the Prometheus data source's
escaping (multi-values become `(a|b)` with regex characters escaped) and `$__rate_interval`.

As a script: `python3 grafana_sql.py plan --from UNIX --to UNIX [--interval S] [--var
NAME=v1,v2]...` prints every rendered query as JSON (the Rust end-to-end test
`tests/tests/dashboards.rs` runs them on the local ClickHouse 18.16 and checks the Prometheus
series against running processes); `... chdb --events FILE.tsv [--dead-letters FILE.tsv]`
loads exported rows into chdb (modern ClickHouse) and runs every query there.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

DASHBOARDS_DIR = pathlib.Path(__file__).resolve().parents[1]
REPO_ROOT = DASHBOARDS_DIR.parent
QUERYING_MD = REPO_ROOT / "docs" / "querying.md"

CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"
PROMETHEUS_TYPE = "prometheus"
CLICKHOUSE_UID = "tollgate-clickhouse"
PROMETHEUS_UID = "tollgate-prometheus"

# ClickHouse panels whose query may legitimately return no rows after a short load with every
# variable set to "All" (title -> why). Every other panel must show data in the tests.
MAY_BE_EMPTY: dict = {}

ALL = "$__all"


class RenderError(Exception):
    """A query uses a variable, format or macro this renderer (and Grafana) cannot resolve."""


# ------------------------------------------------------------------ loading ----


def dashboard_paths():
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def load_dashboards():
    return [(p.name, json.loads(p.read_text())) for p in dashboard_paths()]


def iter_panels(panels):
    """Every panel, including those nested in collapsed rows."""
    for p in panels:
        yield p
        yield from iter_panels(p.get("panels", []))


def datasource_of(panel, target):
    ds = target.get("datasource") or panel.get("datasource") or {}
    return ds.get("type"), ds.get("uid")


def variables(dashboard):
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


# ------------------------------------------------------------ front end (1) ----


def macro_args(text, open_index):
    """Split the arguments of a macro whose `(` is at `open_index` (balanced parentheses), as
    CHDatasource.getMacroArgs does. Returns (args, index after the closing parenthesis)."""
    depth, start, args = 0, open_index + 1, []
    for i in range(open_index, len(text)):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                args.append(text[start:i])
                return args, i + 1
        elif c == "," and depth == 1:
            args.append(text[start:i])
            start = i + 1
    raise RenderError(f"unbalanced parentheses after {text[open_index - 20:open_index + 1]!r}")


def apply_conditional_all(sql, values):
    """`$__conditionalAll(condition, $var)`: `1=1` when var is All (or empty), else condition.
    Processed from the last occurrence backwards, as the plugin does."""
    macro = "$__conditionalAll("
    while True:
        idx = sql.rfind(macro)
        if idx == -1:
            return sql
        args, end = macro_args(sql, idx + len(macro) - 1)
        if len(args) != 2:
            raise RenderError(f"$__conditionalAll takes 2 arguments, got {args}")
        m = re.search(r"(?<=\$\{)\w+(?=\})|(?<=\$)\w+", args[1].strip())
        phrase = args[0]
        if m:
            if m.group(0) not in values:
                raise RenderError(f"$__conditionalAll names unknown variable {m.group(0)}")
            value = values[m.group(0)]
            if value in ("", ALL) or value == [ALL]:
                phrase = "1=1"
        sql = sql[:idx] + phrase + sql[end:]


def sql_string(v):
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def regex_escape(v):
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m.group(0), str(v))


def prometheus_regex_escape(v):
    """Grafana's prometheusSpecialRegexEscape (double backslashes: PromQL string + regex)."""
    v = str(v).replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), v)


def format_value(value, fmt, var, flavour):
    """Format a variable value like Grafana's template service (explicit `fmt`) or, without a
    format, like the data source's interpolation function (`flavour`)."""
    values = value if isinstance(value, list) else [value]
    if fmt is None:
        if flavour == "clickhouse":  # CHDatasource.format
            return "'" + "','".join(map(str, values)) + "'" if isinstance(value, list) else str(value)
        # Prometheus data source: interpolateQueryExpr
        if not var.get("multi") and not var.get("includeAll"):
            return str(value).replace("\\", "\\\\").replace("'", "\\\\'")
        escaped = [prometheus_regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "singlequote":
        return ",".join(sql_string(v) for v in values)
    if fmt == "doublequote":
        return ",".join('"' + str(v).replace('"', '\\"') + '"' for v in values)
    if fmt == "sqlstring":
        return ",".join("'" + str(v).replace("'", "''") + "'" for v in values)
    if fmt == "csv":
        return ",".join(map(str, values))
    if fmt == "pipe":
        return "|".join(map(str, values))
    if fmt == "raw":
        return ",".join(map(str, values))
    if fmt == "regex":
        escaped = [regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    raise RenderError(f"variable format {fmt!r} is not supported by this renderer")


def builtin_globals(ctx):
    frm, to, interval = ctx["from"], ctx["to"], ctx["interval_s"]
    rng = max(to - frm, 1)
    return {
        "__interval": f"{interval}s",
        "__interval_ms": str(interval * 1000),
        "__range": f"{rng}s",
        "__range_s": str(rng),
        "__range_ms": str(rng * 1000),
        "__from": str(frm * 1000),
        "__to": str(to * 1000),
        # Prometheus data source: max(4 x scrape interval, $__interval + scrape interval).
        "__rate_interval": f"{max(4 * ctx.get('scrape_s', 5), interval + ctx.get('scrape_s', 5))}s",
    }


VARIABLE_RE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?::([^}]+))?\}")


def replace_variables(text, dash_vars, values, ctx, flavour):
    """Grafana's templateSrv.replace with the data source's format function."""
    globals_ = builtin_globals(ctx)

    def sub(m):
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(5)
        if name in dash_vars:
            var = dash_vars[name]
            value = values[name]
            if value == ALL or value == [ALL]:
                if var.get("allValue"):
                    return var["allValue"]  # custom all values are not formatted
                raise RenderError(
                    f"${name} is 'All' without a custom all value outside $__conditionalAll: "
                    "an empty option list would break the query"
                )
            return format_value(value, fmt, var, flavour)
        if name in globals_:
            return globals_[name]
        return m.group(0)  # not a variable: a back-end macro or literal text

    return VARIABLE_RE.sub(sub, text)


# ------------------------------------------------------------- back end (2) ----


def _dt(unix):
    return f"toDateTime({int(unix)})"


def _date(unix):
    import datetime

    d = datetime.datetime.fromtimestamp(int(unix), tz=datetime.timezone.utc).strftime("%Y-%m-%d")
    return f"toDate('{d}')"


def _dt64(unix):
    return f"fromUnixTimestamp64Milli({int(unix) * 1000})"


def backend_macros(ctx):
    f, t, iv = ctx["from"], ctx["to"], max(int(ctx["interval_s"]), 1)

    def nargs(n, args, name):
        if len(args) != n:
            raise RenderError(f"$__{name} expects {n} argument(s), got {len(args)}")

    def time_filter(a):
        nargs(1, a, "timeFilter")
        return f"{a[0]} >= {_dt(f)} AND {a[0]} <= {_dt(t)}"

    def time_filter_ms(a):
        nargs(1, a, "timeFilter_ms")
        return f"{a[0]} >= {_dt64(f)} AND {a[0]} <= {_dt64(t)}"

    def date_filter(a):
        nargs(1, a, "dateFilter")
        return f"{a[0]} >= {_date(f)} AND {a[0]} <= {_date(t)}"

    def date_time_filter(a):
        nargs(2, a, "dateTimeFilter")
        return (
            f"({a[0]} >= {_date(f)} AND {a[0]} <= {_date(t)}) AND "
            f"({a[1]} >= {_dt(f)} AND {a[1]} <= {_dt(t)})"
        )

    def time_interval(a):
        nargs(1, a, "timeInterval")
        return f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {iv} second)"

    def time_interval_ms(a):
        nargs(1, a, "timeInterval_ms")
        return f"toStartOfInterval(toDateTime64({a[0]}, 3), INTERVAL {iv * 1000} millisecond)"

    return {
        "fromTime": lambda a: _dt(f),
        "toTime": lambda a: _dt(t),
        "fromTime_ms": lambda a: _dt64(f),
        "toTime_ms": lambda a: _dt64(t),
        "timeFilter": time_filter,
        "timeFilter_ms": time_filter_ms,
        "dateFilter": date_filter,
        "dateTimeFilter": date_time_filter,
        "dt": date_time_filter,
        "timeInterval": time_interval,
        "timeInterval_ms": time_interval_ms,
        "interval_s": lambda a: str(iv),
    }


MACRO_RE = re.compile(r"\$__(\w+)\b")


def apply_backend_macros(sql, ctx):
    macros = backend_macros(ctx)
    while True:
        m = MACRO_RE.search(sql)
        if not m:
            return sql
        name = m.group(1)
        if name not in macros:
            raise RenderError(f"unknown ClickHouse macro $__{name}")
        end = m.end()
        args = []
        if end < len(sql) and sql[end] == "(":
            raw, end = macro_args(sql, end)
            args = [a.strip() for a in raw if a.strip() != ""]
        sql = sql[: m.start()] + macros[name](args) + sql[end:]


def check_no_leftovers(text, where):
    if "$" in text or "[[" in text:
        raise RenderError(f"{where}: unresolved '$' after rendering:\n{text}")


def render_clickhouse(sql, dash_vars, values, ctx, where="query"):
    sql = apply_conditional_all(sql, values)
    sql = replace_variables(sql, dash_vars, values, ctx, "clickhouse")
    sql = apply_backend_macros(sql, ctx)
    check_no_leftovers(sql, where)
    return sql.strip().rstrip(";").strip()


def render_prometheus(expr, dash_vars, values, ctx, where="query"):
    expr = replace_variables(expr, dash_vars, values, ctx, "prometheus")
    check_no_leftovers(expr, where)
    return expr


# ---------------------------------------------------------------- PromQL ----

PROM_NAME_RE = re.compile(r"\b(tollgate_[a-z0-9_]+)\b")
PROM_SELECTOR_RE = re.compile(r"\b(tollgate_[a-z0-9_]+)\s*(\{([^}]*)\})?")
PROM_GROUPING_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
PROM_MATCHER_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")


def prom_series(expr):
    """{series name: set of label names the expression filters or groups on}. Grouping labels
    are attributed to every series of the expression."""
    out = {}
    for m in PROM_SELECTOR_RE.finditer(expr):
        labels = {lm.group(1) for lm in PROM_MATCHER_RE.finditer(m.group(3) or "")}
        out.setdefault(m.group(1), set()).update(labels)
    grouping = set()
    for g in PROM_GROUPING_RE.finditer(expr):
        grouping.update(x.strip() for x in g.group(1).split(",") if x.strip())
    for name in out:
        out[name].update(grouping)
    return out


# ------------------------------------------------------------- docs queries ----


def querying_md_queries(path=QUERYING_MD):
    """Every ```sql block of docs/querying.md: (heading above it, SQL, may be empty). A block
    preceded by `<!-- test: may return no rows -->` may legitimately return nothing."""
    text = path.read_text()
    out, heading = [], "docs/querying.md"
    pattern = r"^(#+ [^\n]*)$|^(<!-- test: may return no rows -->\n)?```sql\n(.*?)^```"
    for m in re.finditer(pattern, text, re.M | re.S):
        if m.group(1):
            heading = m.group(1).lstrip("# ").strip()
        else:
            out.append((heading, m.group(3).strip().rstrip(";").strip(), bool(m.group(2))))
    return out


# ----------------------------------------------------------------- planning ----


def value_sets(dash_vars, chosen):
    """The variable settings every query is rendered with: all "All", then `chosen` (only
    the variables the dashboard has)."""
    base = {}
    for name, v in dash_vars.items():
        if v.get("type") in ("constant", "textbox", "custom", "interval"):
            base[name] = v.get("query", "")
        else:
            base[name] = [ALL] if v.get("multi") else ALL
    sets = [("all", base)]
    picked = dict(base)
    applied = False
    for name, vals in chosen.items():
        if name in dash_vars:
            picked[name] = vals if dash_vars[name].get("multi") else vals[0]
            applied = True
    if applied:
        sets.append(("selected", picked))
    return sets


def plan(ctx, chosen):
    """Rendered ClickHouse and Prometheus queries of every dashboard and docs/querying.md."""
    clickhouse, prometheus = [], []
    for fname, dash in load_dashboards():
        dvars = variables(dash)
        for label, values in value_sets(dvars, chosen):
            for name, var in dvars.items():
                if var.get("type") == "query":
                    q = var.get("query")
                    sql = q if isinstance(q, str) else (q or {}).get("rawSql", "")
                    clickhouse.append({
                        "source": f"{fname}: variable {name} [{label}]",
                        "sql": render_clickhouse(sql, dvars, values, ctx, f"{fname} variable {name}"),
                        "may_be_empty": False,
                        "strict": label == "all",
                    })
            for panel in iter_panels(dash.get("panels", [])):
                for target in panel.get("targets", []):
                    kind, _ = datasource_of(panel, target)
                    where = f"{fname}: panel {panel.get('title')!r} {target.get('refId')} [{label}]"
                    if kind == CLICKHOUSE_TYPE:
                        clickhouse.append({
                            "source": where,
                            "sql": render_clickhouse(target["rawSql"], dvars, values, ctx, where),
                            "may_be_empty": panel.get("title") in MAY_BE_EMPTY,
                            "strict": label == "all",
                        })
                    elif kind == PROMETHEUS_TYPE:
                        expr = render_prometheus(target["expr"], dvars, values, ctx, where)
                        prometheus.append({
                            "source": where,
                            "expr": expr,
                            "series": {k: sorted(v) for k, v in prom_series(expr).items()},
                        })
    for heading, sql, may_be_empty in querying_md_queries():
        check_no_leftovers(sql, f"docs/querying.md {heading}")
        clickhouse.append({
            "source": f"docs/querying.md: {heading}",
            "sql": sql,
            "may_be_empty": may_be_empty,
            "strict": True,
        })
    return {"clickhouse": clickhouse, "prometheus": prometheus}


def check_results(queries, execute):
    """Run every rendered ClickHouse query with `execute(sql) -> rows`; returns the problems
    (errors, and empty results where the data should show)."""
    problems = []
    for q in queries:
        try:
            rows = execute(q["sql"])
        except Exception as e:  # noqa: BLE001 - report every failure, not just the first
            problems.append(f"{q['source']}: {str(e).strip()[:600]}\n{q['sql']}")
            continue
        if q["strict"] and not q["may_be_empty"] and not rows:
            problems.append(f"{q['source']}: no rows\n{q['sql']}")
    return problems


def migration_statements():
    """Every statement of schemas/migrations/clickhouse, split as the Rust runner does."""
    import importlib.util

    path = REPO_ROOT / "schemas" / "tests" / "test_modern_clickhouse.py"
    spec = importlib.util.spec_from_file_location("tollgate_modern_ch", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return [stmt for m in mod.MIGRATIONS for stmt in mod.statements(m.read_text())]


class ChdbDatabase:
    """A migrated database `tg` in an in-process ClickHouse (chdb)."""

    def __init__(self, path):
        from chdb import session as chs

        self.sess = chs.Session(str(path))
        self.sess.query("CREATE DATABASE IF NOT EXISTS tg")
        self.sess.query("USE tg")
        for stmt in migration_statements():
            self.sess.query(stmt)

    def execute(self, sql):
        out = self.sess.query(sql + "\nFORMAT JSONCompact", "CSV").bytes().decode()
        return json.loads(out)["data"] if out.strip() else []

    def insert_tsv(self, table, tsv):
        if tsv.strip():
            self.sess.query(f"INSERT INTO {table} FORMAT TabSeparated\n{tsv}")

    def close(self):
        self.sess.close()


def parse_chosen(items):
    out = {}
    for item in items or []:
        name, _, vals = item.partition("=")
        out[name] = [v for v in vals.split(",") if v]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="print every rendered query as JSON")
    c = sub.add_parser("chdb", help="load exported rows into chdb and run every query there")
    for a in (p, c):
        a.add_argument("--from", dest="frm", type=int, required=True, help="range start, unix s")
        a.add_argument("--to", type=int, required=True, help="range end, unix seconds")
        a.add_argument("--interval", type=int, default=60, help="$__interval in seconds")
        a.add_argument("--var", action="append", help="NAME=v1,v2 for the 'selected' rendering")
    c.add_argument("--events", required=True, help="usage_events rows, TabSeparated")
    c.add_argument("--dead-letters", help="usage_dead_letters rows, TabSeparated")
    args = ap.parse_args(argv)
    ctx = {"from": args.frm, "to": args.to, "interval_s": args.interval}
    try:
        out = plan(ctx, parse_chosen(args.var))
    except RenderError as e:
        print(f"render error: {e}", file=sys.stderr)
        return 2
    if args.cmd == "plan":
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tollgate-chdb-") as tmp:
        db = ChdbDatabase(pathlib.Path(tmp) / "chdb")
        try:
            db.insert_tsv("usage_events", pathlib.Path(args.events).read_text())
            if args.dead_letters:
                db.insert_tsv("usage_dead_letters", pathlib.Path(args.dead_letters).read_text())
            problems = check_results(out["clickhouse"], db.execute)
        finally:
            db.close()
    for p_ in problems:
        print(p_, file=sys.stderr)
    print(f"chdb: {len(out['clickhouse'])} queries, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
