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
# duplicated (rows beyond one per request), and the max RSS of every process.
#
# Env: DURATION, RATE (req/s, default 20), RESTART_EVERY, OUTAGE, SOAK_PROFILE (release|debug,
# default release), SOAK_KEEP=1 keeps the temp dir.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK=$REPO/infra/dev/stack.sh
DURATION=${DURATION:-3600}
RATE=${RATE:-20}
RESTART_EVERY=${RESTART_EVERY:-60}
OUTAGE=${OUTAGE:-10}
PROFILE=${SOAK_PROFILE:-release}
BIN=${CARGO_TARGET_DIR:-$REPO/target}/$PROFILE

log() { printf '[soak %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [[ $PROFILE == release ]]; then
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

priv start kafka >/dev/null
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
sample_rss() {
  local name pid kb old
  for name in proxy aggregator mock loadtest kafka redis; do
    pid=$(svc_pid "$name") || continue
    [[ -n $pid && -r /proc/$pid/status ]] || continue
    kb=$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status" 2>/dev/null) || continue
    [[ -n $kb ]] || continue
    old=$(cat "$WORK/rss/$name" 2>/dev/null || echo 0)
    ((kb > old)) && echo "$kb" >"$WORK/rss/$name"
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
      priv start kafka >/dev/null
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
rc=0
wait "$LOADTEST" || rc=$?
sample_rss

rows=$(curl -fsS "$CH_URL/?query=SELECT%20count()%20FROM%20$DB.usage_events" || echo "?")
distinct=$(curl -fsS "$CH_URL/?query=SELECT%20uniqExact(request_id)%20FROM%20$DB.usage_events" || echo "?")
verify=$(grep -o 'ClickHouse rows of run.*' "$WORK/logs/loadtest.out" || echo "verification missing (see $WORK/logs/loadtest.out)")
python3 - "$WORK" "$rows" "$distinct" "$verify" "${COUNT[kafka]}" "${COUNT[aggregator]}" "${COUNT[redis]}" "$DURATION" <<'EOF'
import json, os, re, sys
work, rows, distinct, verify, nk, na, nr, duration = sys.argv[1:]
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
print(f"restarts             broker {nk}, aggregator {na}, redis {nr}")
print(f"requests sent        {find(rep, 'sent')}")
print(f"requests 2xx         {m.group(1) if m else '?'}")
print(f"status counts        {json.dumps(find(rep, 'status_counts', scalar=False))}")
print(f"rows in ClickHouse   {rows.strip()} (distinct requests {distinct.strip()})")
print(f"lost (2xx, no row)   {m.group(4) if m else '?'}")
print(f"duplicated rows      {m.group(5) if m else '?'}")
print("max RSS (MiB):")
for name in ["proxy", "aggregator", "mock", "loadtest", "kafka", "redis"]:
    p = os.path.join(work, "rss", name)
    kb = int(open(p).read().strip()) if os.path.exists(p) else 0
    print(f"  {name:<12} {kb / 1024:8.1f}")
print(verify)
EOF
log "loadtest exit code $rc (0: verified, 3: rows missing or duplicated)"
exit "$rc"
