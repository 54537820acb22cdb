#!/usr/bin/env bash
# State GET through Tandem (HTTP) versus the same read sent directly, for Redis and PostgreSQL,
# side by side in one run. Needs the local Redis (6379) and PostgreSQL (5432, database test).
#   bench/state-get.sh            # 1 000 req/s for 10 s per path
#   bench/state-get.sh --quick    # a few seconds in all (a smoke test; figures mean little)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=1000 SECONDS_EACH=10 WORKERS=8
if [ "${1:-}" = "--quick" ]; then RATE=200 SECONDS_EACH=1 WORKERS=4; fi

TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p tandem -p tandem-bench
work=$(mktemp -d)
trap 'kill $SIDECAR 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/stores.yaml" <<YAML
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: redisstore
spec:
  type: state.redis
  version: v1
  metadata:
  - name: redisHost
    value: 127.0.0.1:6379
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pgstore
spec:
  type: state.postgresql
  version: v1
  metadata:
  - name: connectionString
    value: "host=127.0.0.1 port=5432 user=postgres dbname=test"
  - name: tableName
    value: bench_state
YAML
"$TARGET"/release/tandem sidecar --app-id bench --dapr-http-port 0 --dapr-grpc-port 0 \
  --dapr-listen-addresses 127.0.0.1 --resources-path "$work" --ports-file "$work/ports.json" \
  --log-level warn > "$work/sidecar.log" 2>&1 &
SIDECAR=$!
for _ in $(seq 1 200); do [ -s "$work/ports.json" ] && break; sleep 0.05; done
PORT=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['http'])" "$work/ports.json")
for store in redisstore pgstore; do
  curl -sf -X POST "http://127.0.0.1:$PORT/v1.0/state/$store" -H 'content-type: application/json' \
    -d '[{"key":"bench-key","value":{"id":42,"name":"a typical small JSON value","tags":["x","y"]}}]'
done
echo "== state GET, Redis"
"$TARGET"/release/tandem-bench --sidecar "127.0.0.1:$PORT" --store redisstore --key bench-key \
  --direct redis://127.0.0.1:6379 --direct-key 'bench||bench-key' \
  --rate $RATE --seconds $SECONDS_EACH --workers $WORKERS
echo "== state GET, PostgreSQL"
"$TARGET"/release/tandem-bench --sidecar "127.0.0.1:$PORT" --store pgstore --key bench-key \
  --direct "postgres:host=127.0.0.1 port=5432 user=postgres dbname=test" --direct-key 'bench||bench-key' \
  --table bench_state --rate $RATE --seconds $SECONDS_EACH --workers $WORKERS
