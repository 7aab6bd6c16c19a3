#!/usr/bin/env bash
# make demo: a local broker, the fake model API, a sample batch of 20 chat
# requests, one worker until every result is in; then a summary. Stops
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
worker: { roles = ["items"]; commit_interval_ms = 500; };
admin: { listen = ""; };
log: { level = "info"; format = "text"; };
routes = ( { model = "*"; base_url = "$model_url"; } );
CONF

say "creating topics"
"$build/kbatch" topics create -c "$work/worker.conf" --partitions 4 >/dev/null

say "publishing examples/sample-batch.jsonl"
batch=$("$py" examples/publish.py "$bootstrap" kbatch.items examples/sample-batch.jsonl)
total=$(grep -c . examples/sample-batch.jsonl)
say "batch $batch: $total items"

say "running the worker until all $total results are in"
"$build/kbatch" worker -c "$work/worker.conf" 2> "$work/worker.log" &
wpid=$!
pids+=($wpid)
"$py" - "$bootstrap" "$batch" "$total" <<'PY'
import json, sys, time
from confluent_kafka import Consumer
bootstrap, batch, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "demo-reader",
              "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe(["kbatch.results"])
seen = {}
deadline = time.time() + 120
while len(seen) < total and time.time() < deadline:
    m = c.poll(0.5)
    if m is None or m.error():
        continue
    r = json.loads(m.value())
    if r["batch_id"] == batch:
        seen[r["item_id"]] = r
c.close()
ok = sum(r["status"] == "succeeded" for r in seen.values())
tok = sum((r["usage"] or {}).get("total_tokens", 0) for r in seen.values())
lat = sorted(r["latency_ms"] for r in seen.values() if r["latency_ms"] is not None)
print(f"\nbatch {batch}: {len(seen)}/{total} results, {ok} succeeded, "
      f"{len(seen) - ok} failed; {tok} tokens; latency p50 {lat[len(lat)//2] if lat else '-'} ms")
for r in sorted(seen.values(), key=lambda r: r["item_index"])[:3]:
    content = r["output"]["choices"][0]["message"]["content"] if r["output"] else None
    print(f"  {r['item_id']}: {r['status']} http={r['http_status']} "
          f"tokens={r['usage']['total_tokens'] if r['usage'] else '-'} -> {content!r}")
sys.exit(0 if len(seen) == total else 1)
PY
kill -TERM "$wpid"; wait "$wpid" || true
say "worker stopped; done"
