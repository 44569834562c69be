#!/usr/bin/env bash
# `make demo`: start the stack, the mock upstream, the proxy and the aggregator; send a few
# hundred requests (some streaming); print the usage summary from ClickHouse; leave it all
# running. Stop everything with `make stop`.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
# shellcheck source=infra/dev/lib.sh
source "$SCRIPT_DIR/lib.sh"
cd "$REPO_ROOT"

STATE_DIR=${TOLLGATE_STATE_DIR:-$REPO_ROOT/.tollgate}
RUN_DIR=$STATE_DIR/run
LOG_DIR=$STATE_DIR/logs
BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug
KEY=sk-tollgate-demo-0001
REQUESTS_MINI=${DEMO_REQUESTS_MINI:-200}
REQUESTS_4O=${DEMO_REQUESTS_4O:-100}
RUN_ID=${DEMO_RUN_ID:-demo-$(date -u +%Y%m%dT%H%M%S)-$$}
mkdir -p "$RUN_DIR" "$LOG_DIR"

demo_stop() {
  for svc in proxy aggregator mock; do
    stop_pid "demo-$svc" "$RUN_DIR/demo-$svc.pid" "tollgate-" || true
  done
}

if [[ ${1:-} == stop ]]; then
  demo_stop
  exit 0
fi

"$SCRIPT_DIR/stack.sh" install
"$SCRIPT_DIR/stack.sh" up
log "building the binaries (first time: a few minutes)"
cargo build --quiet -p tollgate-proxy -p tollgate-aggregator -p tollgate-loadtest --bins

demo_stop
export TOLLGATE_LOG_FORMAT=json
start_daemon "$RUN_DIR/demo-mock.pid" "$LOG_DIR/demo-mock.log" "$REPO_ROOT" \
  "$BIN/tollgate-mock" --listen 127.0.0.1:8090 --latency-ms 20 --chunk-delay-ms 3
start_daemon "$RUN_DIR/demo-aggregator.pid" "$LOG_DIR/demo-aggregator.log" "$REPO_ROOT" \
  "$BIN/tollgate-aggregator" run
start_daemon "$RUN_DIR/demo-proxy.pid" "$LOG_DIR/demo-proxy.log" "$REPO_ROOT" \
  "$BIN/tollgate-proxy" --config infra/dev/demo-proxy.yaml
wait_for "mock upstream" 30 "$LOG_DIR/demo-mock.log" "$RUN_DIR/demo-mock.pid" tollgate-mock curl -sf http://127.0.0.1:8090/healthz
wait_for "proxy" 30 "$LOG_DIR/demo-proxy.log" "$RUN_DIR/demo-proxy.pid" tollgate-proxy curl -sf http://127.0.0.1:8080/healthz

log "run $RUN_ID: $REQUESTS_MINI requests to gpt-4o-mini and $REQUESTS_4O to gpt-4o, 30% streaming"
ok=0
for spec in "gpt-4o-mini:$REQUESTS_MINI" "gpt-4o:$REQUESTS_4O"; do
  model=${spec%%:*} n=${spec##*:}
  "$BIN/tollgate-loadtest" run --url http://127.0.0.1:8080 --key "$KEY" --model "$model" \
    --requests "$n" --concurrency 16 --stream-share 0.3 --max-tokens 64 \
    --metadata "{\"run_id\":\"$RUN_ID\"}" --json "$RUN_DIR/demo-$model.json" >/dev/null
  got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ok"])' "$RUN_DIR/demo-$model.json")
  log "$model: $got of $n requests succeeded"
  ok=$((ok + got))
done

count_sql="SELECT count() FROM tollgate.usage_events WHERE has(metadata_keys, 'run_id') AND metadata_values[indexOf(metadata_keys, 'run_id')] = '$RUN_ID'"
deadline=$((SECONDS + 60))
while :; do
  stored=$(curl -sf "http://127.0.0.1:${TOLLGATE_CLICKHOUSE_HTTP_PORT:-8123}/" --data-binary "$count_sql" || echo 0)
  [[ $stored -ge $ok ]] && break
  if ((SECONDS > deadline)); then
    die "only $stored of $ok usage rows reached ClickHouse; see $LOG_DIR/demo-aggregator.log and $LOG_DIR/demo-proxy.log"
  fi
  sleep 0.5
done

echo
echo "Usage summary of run $RUN_ID (from ClickHouse table tollgate.usage_events):"
"$BIN/tollgate-aggregator" summary --run-id "$RUN_ID"
echo
echo "run_id: $RUN_ID   rows: $stored   requests ok: $ok"
echo "Proxy http://127.0.0.1:8080 (key $KEY), mock :8090; logs in $LOG_DIR"
echo "Where to look (docs/observability.md):"
echo "  metrics     http://127.0.0.1:8080/metrics (proxy), http://127.0.0.1:8082/metrics (aggregator); catalogue: docs/metrics.md"
echo "  Prometheus  http://127.0.0.1:${TOLLGATE_PROMETHEUS_PORT:-9090}/graph?g0.expr=sum%20by%20(model)%20(rate(tollgate_proxy_requests_total%5B1m%5D))  (scrape targets: /targets)"
echo "  ClickHouse  clickhouse-client --port ${TOLLGATE_CLICKHOUSE_TCP_PORT:-9000} --database tollgate; ready-made SQL: docs/querying.md"
echo "  Grafana     dashboards/*.json + dashboards/provisioning/ (Usage & cost, Latency & errors, Gateway & pipeline health)"
echo "  logs        $LOG_DIR/demo-proxy.log (JSON; request lines carry request_id = the x-request-id response header)"
echo "Everything keeps running. Stop it all with: make stop"
