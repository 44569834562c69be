#!/usr/bin/env python3
"""Check `make demo`: its printed summary must equal a direct SELECT in ClickHouse.

Usage: check_demo.py DEMO_OUTPUT_FILE. Reads the run id and the summary table from the demo's
output, queries ClickHouse over HTTP independently, and compares requests, errors, streams,
tokens and cost per model. Exits non-zero on any difference.
"""

import re
import sys
import urllib.request

CH = "http://127.0.0.1:8123/"


def query(sql: str):
    with urllib.request.urlopen(urllib.request.Request(CH, data=sql.encode())) as r:
        return [line.split("\t") for line in r.read().decode().strip().splitlines()]


def main(path: str) -> int:
    text = open(path).read()
    m = re.search(r"^run_id: (\S+)\s+rows: (\d+)\s+requests ok: (\d+)", text, re.M)
    if not m:
        print("demo output has no run_id line", file=sys.stderr)
        return 1
    run_id, rows, ok = m.group(1), int(m.group(2)), int(m.group(3))
    printed = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 11 and parts[0] in ("gpt-4o-mini", "gpt-4o"):
            printed[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4]), int(parts[5]), float(parts[6]))
    direct = {
        r[0]: (int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]) / 1e9)
        for r in query(
            "SELECT model, count(), countIf(status_code >= 400), countIf(stream = 1), sum(prompt_tokens), "
            "sum(completion_tokens), sum(cost_nanos) FROM tollgate.usage_events "
            f"WHERE metadata_values[indexOf(metadata_keys, 'run_id')] = '{run_id}' GROUP BY model"
        )
    }
    print(f"run {run_id}: printed {printed}\n direct {direct}")
    errors = []
    if set(printed) != set(direct) or not printed:
        errors.append(f"models differ: printed {sorted(printed)} vs ClickHouse {sorted(direct)}")
    for model, p in printed.items():
        d = direct.get(model)
        if d is None:
            continue
        if p[:5] != d[:5] or abs(p[5] - d[5]) > 1e-6:
            errors.append(f"{model}: printed {p} != direct {d}")
    total = sum(d[0] for d in direct.values())
    if total != rows or total != ok:
        errors.append(f"rows in ClickHouse {total}, demo said rows={rows} ok={ok}")
    for e in errors:
        print("MISMATCH:", e, file=sys.stderr)
    if not errors:
        print(f"demo summary matches ClickHouse: {total} requests")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
