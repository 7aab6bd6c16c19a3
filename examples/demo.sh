#!/usr/bin/env bash
# make demo: a local broker, the fake model API, a sample batch of 20 chat
# requests in OpenAI Batch format submitted with `kbatch submit`, one worker,
# and `kbatch collect` until every result is in; then a summary. Stops
# everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${KBATCH_BUILD:-build}
py=build/venv/bin/python
export KAFKA_RUN_DIR=$PWD/build/kafka-demo
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  tests/kafka/kafka.sh stop --clean >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

say "$("$build/kbatch" --version | sed 's/ libcurl.*//')"
say "starting a local Kafka broker (first run fetches it from Maven Central)"
bootstrap=$(tests/kafka/kafka.sh start)
say "broker at $bootstrap"

say "starting the fake model API"
"$build/fake_model" --port 0 --latency-ms 100-400 > "$work/fake.out" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q listening "$work/fake.out" && break; sleep 0.1; done
model_url="http://$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$work/fake.out" | head -1)"
say "fake model at $model_url"

cat > "$work/worker.conf" <<CONF
kafka: { bootstrap_servers = "$bootstrap"; };
worker: { roles = ["items", "aggregator"]; commit_interval_ms = 500; };
admin: { listen = ""; };
log: { level = "info"; format = "text"; };
routes = ( { model = "*"; base_url = "$model_url"; } );
CONF

say "creating topics"
"$build/kbatch" topics create -c "$work/worker.conf" --partitions 4 >/dev/null

say "submitting examples/sample-batch.jsonl (OpenAI Batch input lines)"
batch=$("$build/kbatch" submit examples/sample-batch.jsonl -c "$work/worker.conf" \
        --completion-window 1h --metadata source=demo)
total=$(grep -c . examples/sample-batch.jsonl)
say "batch $batch: $total items"

say "running the worker (items + aggregator) and collecting the results"
"$build/kbatch" worker -c "$work/worker.conf" 2> "$work/worker.log" &
wpid=$!
pids+=($wpid)
"$build/kbatch" collect "$batch" -c "$work/worker.conf" --timeout 120s \
  -o "$work/results.jsonl" --errors "$work/errors.jsonl"
# the aggregator commits the batch's final state within a second or so
for _ in $(seq 40); do
  "$build/kbatch" status "$batch" -c "$work/worker.conf" --json 2>/dev/null |
    grep -q '"completed_at":[0-9]' && break
  sleep 0.25
done
"$build/kbatch" status "$batch" -c "$work/worker.conf" || true
"$py" - "$work/results.jsonl" "$work/errors.jsonl" "$total" <<'PY'
import json, sys
ok = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
bad = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
total = int(sys.argv[3])
tok = sum(l["response"]["body"].get("usage", {}).get("total_tokens", 0) for l in ok)
print(f"\nresults.jsonl: {len(ok)} succeeded, errors.jsonl: {len(bad)}; {tok} tokens")
for l in sorted(ok, key=lambda l: l["custom_id"])[:3]:
    body = l["response"]["body"]
    print(f"  {l['custom_id']}: {l['response']['status_code']} -> "
          f"{body['choices'][0]['message']['content']!r}")
sys.exit(0 if len(ok) + len(bad) == total else 1)
PY
kill -TERM "$wpid"; wait "$wpid" || true
say "worker stopped; done"
