#!/usr/bin/env bash
# Soak test (`make soak`, not in CI): DURATION seconds (default 3600) of mixed open-loop traffic
# (OpenAI and Anthropic models, 30 % streams, several keys with Redis rate limits) through the
# proxy binary, while the broker, the aggregator and Redis are restarted in turn every
# RESTART_EVERY seconds (default 60; each outage lasts OUTAGE seconds, default 10).
#
# The broker and Redis are PRIVATE instances (own ports and state dir, via stack.sh's
# TOLLGATE_* variables), so the soak never disturbs the shared stack other tests run against;
# ClickHouse is the shared one (a fresh database per run).
#
# Prints: requests sent / answered 2xx, rows in ClickHouse, lost (2xx without a row),
# duplicated (rows beyond one per request), the max RSS of every process and its RSS over time,
# forced consumer-group rejoins. Before counting it waits (DRAIN_DEADLINE seconds, default
# 300) until the group's committed offsets reach the topic's end (read from the private Tansu
# store) and the proxy's spool is empty, and prints how long that took.
#
# Env: DURATION, RATE (req/s, default 20), RESTART_EVERY, OUTAGE, SOAK_PROFILE (release|debug,
# default release), SOAK_KEEP=1 keeps the temp dir, SOAK_NO_BUILD=1 uses the binaries already built.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK=$REPO/infra/dev/stack.sh
DURATION=${DURATION:-3600}
RATE=${RATE:-20}
RESTART_EVERY=${RESTART_EVERY:-60}
OUTAGE=${OUTAGE:-10}
DRAIN_DEADLINE=${DRAIN_DEADLINE:-300}
PROFILE=${SOAK_PROFILE:-release}
BIN=${CARGO_TARGET_DIR:-$REPO/target}/$PROFILE

log() { printf '[soak %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [[ ${SOAK_NO_BUILD:-0} == 1 ]]; then
  : # use the binaries already in $BIN
elif [[ $PROFILE == release ]]; then
  (cd "$REPO" && cargo build --release -p tollgate-proxy -p tollgate-aggregator -p tollgate-loadtest --bins)
else
  (cd "$REPO" && cargo build -p tollgate-proxy -p tollgate-aggregator -p tollgate-loadtest --bins)
fi
"$STACK" start clickhouse >/dev/null

WORK=$(mktemp -d /tmp/tollgate-soak.XXXXXX)
mkdir -p "$WORK/pids" "$WORK/logs" "$WORK/rss"
KAFKA_PORT=$(free_port)
REDIS_PORT=$(free_port)
MOCK_PORT=$(free_port)
PROXY_PORT=$(free_port)
AGG_PORT=$(free_port)
# Private broker + Redis: stack.sh with our own ports and state dir.
priv() { TOLLGATE_STATE_DIR=$WORK/state TOLLGATE_KAFKA_PORT=$KAFKA_PORT TOLLGATE_REDIS_PORT=$REDIS_PORT "$STACK" "$@"; }
CH_URL=$("$STACK" env | sed -n 's/^export TOLLGATE_CLICKHOUSE_URL=//p')
DB=soak_$(date -u +%Y%m%d_%H%M%S)_$$
TOPIC=soak.usage.v1
GROUP=soak-aggregator

PIDS=()
cleanup() {
  log "stopping"
  [[ -n ${SAMPLER:-} ]] && kill "$SAMPLER" 2>/dev/null || true
  for name in proxy aggregator mock loadtest; do
    [[ -f $WORK/pids/$name ]] && kill "$(cat "$WORK/pids/$name")" 2>/dev/null || true
  done
  priv stop kafka >/dev/null 2>&1 || true
  priv stop redis >/dev/null 2>&1 || true
  if [[ ${SOAK_KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Tansu 0.6 sometimes exits right after a quick restart (a panic in its group store); retry.
start_kafka() {
  local try
  for try in 1 2 3; do
    priv start kafka >/dev/null 2>>"$WORK/logs/stack.log" && return 0
    log "broker did not start (try $try; see $WORK/state/logs/kafka.log); retrying"
    KAFKA_RETRIES=$((${KAFKA_RETRIES:-0} + 1))
    sleep 1
  done
  priv start kafka >/dev/null
}
start_kafka
priv start redis >/dev/null
priv topic "$TOPIC" 4 >/dev/null

cat >"$WORK/proxy.yaml" <<EOF
listen: 127.0.0.1:$PROXY_PORT
proxy_id: soak-proxy
shutdown_grace_secs: 5
models:
  - name: soak-openai
    base_url: http://127.0.0.1:$MOCK_PORT/v1
    upstream_model: mock-soak
    pricing: { input_per_mtok: 1.0, output_per_mtok: 2.0 }
  - name: soak-claude
    pricing: { input_per_mtok: 3.0, output_per_mtok: 15.0 }
    deployments:
      - { provider: anthropic, base_url: "http://127.0.0.1:$MOCK_PORT", upstream_model: claude-soak, api_key: sk-ant-soak }
api_keys:
  - { id: soak_a, secret: sk-soak-key-a, account_id: acct_soak_a, rate_limit: { rpm: 100000 } }
  - { id: soak_b, secret: sk-soak-key-b, account_id: acct_soak_b, rate_limit: { rpm: 100000 } }
  - { id: soak_c, secret: sk-soak-key-c, account_id: acct_soak_c }
kafka:
  idempotence: false
  brokers: "127.0.0.1:$KAFKA_PORT"
  topic: $TOPIC
  spool: { dir: "$WORK/spool" }
limits: { backend: redis, redis_url: "redis://127.0.0.1:$REDIS_PORT", prefix: soak }
EOF
cat >"$WORK/aggregator.yaml" <<EOF
listen: 127.0.0.1:$AGG_PORT
kafka: { brokers: "127.0.0.1:$KAFKA_PORT", topic: $TOPIC, group_id: $GROUP }
clickhouse: { url: "$CH_URL", database: $DB }
EOF
cat >"$WORK/scenario.yaml" <<EOF
name: soak
description: mixed soak traffic
mode: open
rate: $RATE
duration_secs: $DURATION
stream_share: 0.3
max_tokens: 24
models:
  - { name: soak-openai, weight: 3 }
  - { name: soak-claude, weight: 1 }
keys: [{ key: sk-soak-key-a, weight: 2 }, { key: sk-soak-key-b }, { key: sk-soak-key-c }]
metadata: { suite: soak }
timeout_secs: 30
EOF

start_bg() { # name cmd...
  local name=$1
  shift
  RUST_LOG=${RUST_LOG:-info} "$@" >>"$WORK/logs/$name.log" 2>&1 &
  echo $! >"$WORK/pids/$name"
  disown  # no "Killed" job notices when the aggregator is killed on purpose
}
start_aggregator() { start_bg aggregator "$BIN/tollgate-aggregator" --config "$WORK/aggregator.yaml" run; }
wait_http() { # url
  for _ in $(seq 1 300); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "not ready: $1"
  return 1
}

"$BIN/tollgate-aggregator" --config "$WORK/aggregator.yaml" migrate >>"$WORK/logs/migrate.log" 2>&1
start_bg mock "$BIN/tollgate-mock" --listen "127.0.0.1:$MOCK_PORT" --chunk-delay-ms 2
start_bg proxy "$BIN/tollgate-proxy" --config "$WORK/proxy.yaml"
start_aggregator
wait_http "http://127.0.0.1:$PROXY_PORT/healthz"
wait_http "http://127.0.0.1:$AGG_PORT/readyz"

# Max RSS per process (kB): every process's VmHWM (peak) and VmRSS, sampled every 2 s; a
# restarted process is a new pid, so the max over all its incarnations is kept.
svc_pid() {
  case $1 in
    kafka | redis) cat "$WORK/state/run/$1.pid" 2>/dev/null ;;
    *) cat "$WORK/pids/$1" 2>/dev/null ;;
  esac
}
# The current VmRSS of every process also goes to rss/series.tsv (seconds, name, kB).
T0=$(date +%s)
sample_rss() {
  local name pid kb old cur
  for name in proxy aggregator mock loadtest kafka redis; do
    pid=$(svc_pid "$name") || continue
    [[ -n $pid && -r /proc/$pid/status ]] || continue
    kb=$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status" 2>/dev/null) || continue
    [[ -n $kb ]] || continue
    old=$(cat "$WORK/rss/$name" 2>/dev/null || echo 0)
    ((kb > old)) && echo "$kb" >"$WORK/rss/$name"
    cur=$(awk '/^VmRSS:/{print $2}' "/proc/$pid/status" 2>/dev/null) || continue
    [[ -n $cur ]] && printf '%s\t%s\t%s\n' "$(($(date +%s) - T0))" "$name" "$cur" >>"$WORK/rss/series.tsv"
  done
  return 0
}
(while true; do sample_rss; sleep 2; done) &
SAMPLER=$!

log "traffic: $RATE req/s for ${DURATION}s; restarts every ${RESTART_EVERY}s (outage ${OUTAGE}s); work dir $WORK"
"$BIN/tollgate-loadtest" run --url "http://127.0.0.1:$PROXY_PORT" --scenario "$WORK/scenario.yaml" \
  --no-progress --json "$WORK/report.json" --run-id "$DB" \
  --verify-clickhouse "$CH_URL" --clickhouse-database "$DB" --verify-deadline-secs 300 \
  >"$WORK/logs/loadtest.out" 2>&1 &
echo $! >"$WORK/pids/loadtest"
LOADTEST=$!

RESTARTS=(kafka aggregator redis)
i=0
declare -A COUNT=([kafka]=0 [aggregator]=0 [redis]=0)
while kill -0 "$LOADTEST" 2>/dev/null; do
  for _ in $(seq 1 "$RESTART_EVERY"); do
    kill -0 "$LOADTEST" 2>/dev/null || break 2
    sleep 1
  done
  # No restarts once the measured part is over (the verification is running).
  [[ -f $WORK/report.json ]] && break
  what=${RESTARTS[$((i % 3))]}
  i=$((i + 1))
  sample_rss
  case $what in
    kafka)
      log "restart: broker (down ${OUTAGE}s)"
      priv stop kafka >/dev/null
      sleep "$OUTAGE"
      start_kafka
      ;;
    redis)
      log "restart: redis (down ${OUTAGE}s)"
      priv stop redis >/dev/null
      sleep "$OUTAGE"
      priv start redis >/dev/null
      ;;
    aggregator)
      log "restart: aggregator (kill -9, down ${OUTAGE}s)"
      kill -9 "$(cat "$WORK/pids/aggregator")" 2>/dev/null || true
      sleep "$OUTAGE"
      start_aggregator
      ;;
  esac
  COUNT[$what]=$((COUNT[$what] + 1))
done

# Kafka side of the count: messages in the topic and the group's committed offsets, read from
# the private Tansu's SQLite store (read-only; no Kafka client needed).
kafka_offsets() {
  python3 - "$WORK/state/tansu/tansu.db" "$TOPIC" "$GROUP" <<'EOF'
import sqlite3, sys
db, topic, group = sys.argv[1:]
try:
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    rows = c.execute(
        "SELECT tp.partition, (SELECT max(offset_id) + 1 FROM record r WHERE r.topition = tp.id), "
        "(SELECT co.committed_offset FROM consumer_offset co JOIN consumer_group cg "
        " ON cg.id = co.consumer_group WHERE co.topition = tp.id AND cg.name = ?) "
        "FROM topition tp JOIN topic t ON t.id = tp.topic WHERE t.name = ? ORDER BY tp.partition",
        (group, topic)).fetchall()
except Exception as e:  # noqa: BLE001
    print(f"? ? error:{type(e).__name__}")
    sys.exit(0)
high = sum(h or 0 for _, h, _ in rows)
lag = sum(max((h or 0) - (co or 0), 0) for _, h, co in rows)
print(high, lag, " ".join(f"p{p}:{co or 0}/{h or 0}" for p, h, co in rows))
EOF
}
proxy_spool() {
  curl -fsS "http://127.0.0.1:$PROXY_PORT/metrics" 2>/dev/null |
    awk '$1 == "tollgate_usage_spool_events" {print $2; f=1} END {if (!f) print "?"}'
}
# Wait for the measured part to end, then for the backlog to drain before counting.
while kill -0 "$LOADTEST" 2>/dev/null && [[ ! -f $WORK/report.json ]]; do sleep 1; done
drain_start=$(date +%s)
drained=no
while (($(date +%s) - drain_start < DRAIN_DEADLINE)); do
  read -r _ lag _ < <(kafka_offsets)
  spool=$(proxy_spool)
  if [[ $lag == 0 && ($spool == 0 || $spool == "?") ]]; then
    drained=yes
    break
  fi
  sleep 1
done
DRAIN_SECS=$(($(date +%s) - drain_start))
read -r KAFKA_MSGS KAFKA_LAG KAFKA_DETAIL < <(kafka_offsets)
log "drain: $drained after ${DRAIN_SECS}s (group lag $KAFKA_LAG, proxy spool $(proxy_spool))"
# Forced rejoins of every aggregator incarnation (each logs its own).
REJOINS=$(grep -c "rejoining the consumer group" "$WORK/logs/aggregator.log" || true)

rc=0
wait "$LOADTEST" || rc=$?
sample_rss

rows=$(curl -fsS "$CH_URL/?query=SELECT%20count()%20FROM%20$DB.usage_events" || echo "?")
distinct=$(curl -fsS "$CH_URL/?query=SELECT%20uniqExact(request_id)%20FROM%20$DB.usage_events" || echo "?")
verify=$(grep -o 'ClickHouse rows of run.*' "$WORK/logs/loadtest.out" || echo "verification missing (see $WORK/logs/loadtest.out)")
python3 - "$WORK" "$rows" "$distinct" "$verify" "${COUNT[kafka]}" "${COUNT[aggregator]}" "${COUNT[redis]}" "$DURATION" \
  "$drained after ${DRAIN_SECS}s" "$KAFKA_MSGS" "$KAFKA_LAG" "$KAFKA_DETAIL" "${REJOINS:-0}" "${KAFKA_RETRIES:-0}" <<'EOF'
import json, os, re, sys
work, rows, distinct, verify, nk, na, nr, duration, drain, kmsgs, klag, kdetail, rejoins, kretries = sys.argv[1:]
try:
    rep = json.load(open(os.path.join(work, "report.json")))
except Exception:  # noqa: BLE001
    rep = {}
def find(d, key, scalar=True):
    if isinstance(d, dict):
        if key in d and (not scalar or not isinstance(d[key], (dict, list))):
            return d[key]
        for v in d.values():
            r = find(v, key, scalar)
            if r is not None:
                return r
    if isinstance(d, list):
        for v in d:
            r = find(v, key, scalar)
            if r is not None:
                return r
    return None
m = re.search(r"expected (\d+) rows (\d+) distinct (\d+) lost (\d+) duplicated (\d+) extra (\d+)", verify)
print("\n==== soak figures ====")
print(f"duration_secs        {duration}")
print(f"restarts             broker {nk}, aggregator {na}, redis {nr} (broker start retries {kretries})")
print(f"requests sent        {find(rep, 'sent')}")
print(f"requests 2xx         {m.group(1) if m else '?'}")
print(f"status counts        {json.dumps(find(rep, 'status_counts', scalar=False))}")
print(f"rows in ClickHouse   {rows.strip()} (distinct requests {distinct.strip()})")
print(f"lost (2xx, no row)   {m.group(4) if m else '?'}")
print(f"duplicated rows      {m.group(5) if m else '?'}")
print(f"kafka messages       {kmsgs} (group lag {klag}; committed/end {kdetail})")
print(f"drained              {drain} (group lag 0 and proxy spool empty)")
print(f"group rejoins        {rejoins} (orphaned partitions the aggregator recovered)")
print("max RSS (MiB):")
for name in ["proxy", "aggregator", "mock", "loadtest", "kafka", "redis"]:
    p = os.path.join(work, "rss", name)
    kb = int(open(p).read().strip()) if os.path.exists(p) else 0
    print(f"  {name:<12} {kb / 1024:8.1f}")
series = {}
try:
    for line in open(os.path.join(work, "rss", "series.tsv")):
        t, name, kb = line.split()
        series.setdefault(name, []).append((int(t), int(kb)))
except OSError:
    pass
if series:
    print("RSS over time (MiB @ seconds, at 0/25/50/75/100 % of the samples):")
    for name in ["proxy", "aggregator", "mock", "loadtest", "kafka", "redis"]:
        pts = series.get(name, [])
        if not pts:
            continue
        picks = [pts[min(len(pts) - 1, round(q * (len(pts) - 1)))] for q in (0, 0.25, 0.5, 0.75, 1)]
        print(f"  {name:<12} " + "  ".join(f"{kb / 1024:6.1f}@{t}s" for t, kb in picks))
print(verify)
EOF
log "loadtest exit code $rc (0: verified, 3: rows missing or duplicated)"
exit "$rc"
