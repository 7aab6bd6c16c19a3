#!/usr/bin/env bash
# make bench: builds the contenders and the ceiling tools, starts a Kafka
# broker of its own, runs tests/bench/bench.py, stops the broker.
#
#   BENCH_SCENARIOS=overhead,lat500  BENCH_CONTENDERS=kbatch,python  BENCH_SCALE=0.2
#
# See tests/bench/README.md for every variable. Expects `make all` done
# (build/kbatch, build/fake_model); `make bench` does that first.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${KBATCH_BUILD:-build}
export KBATCH_BUILD=$build
log() { printf 'bench: %s\n' "$*" >&2; }

for f in "$build/kbatch" "$build/fake_model"; do
  [ -x "$f" ] || { log "$f missing: run make first"; exit 1; }
done
mkdir -p build/bench

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# wrk: the fake model's raw request rate (Debian package).
if ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk"
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >&2
fi

# The Python contender's and the harness's virtualenv.
venv=build/bench-venv
req=tests/bench/requirements.txt
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! cmp -s "$req" "$venv/.req-stamp" 2>/dev/null; then
  log "installing Python packages into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$venv/.req-stamp"
fi

# The raw consume ceiling (librdkafka, no work).
if [ ! -x build/bench/rawconsume ] || [ tests/bench/rawconsume.c -nt build/bench/rawconsume ]; then
  log "building build/bench/rawconsume"
  cc -O2 -Wall -Wextra -Werror -o build/bench/rawconsume tests/bench/rawconsume.c \
    $(pkg-config --cflags --libs rdkafka)
fi

# Only the contenders that will run are built.
wants() { [ -z "${BENCH_CONTENDERS:-}" ] || [[ ",$BENCH_CONTENDERS," == *",$1,"* ]]; }

# The Parallel Consumer contender (Maven Central), rebuilt when its sources change.
jar=build/bench/pc/pc-worker.jar
if wants pc && { [ ! -f "$jar" ] || [ -n "$(find tests/bench/pc -newer "$jar" -type f | head -1)" ]; }; then
  log "building $jar (mvn)"
  mvn -q -B -f tests/bench/pc/pom.xml package ${BENCH_MVN_OPTS:-} >&2
fi

# The Go contender (franz-go, pinned in go.mod/go.sum; the Go module proxy),
# rebuilt when its sources change.
gobin=build/bench/go-worker
if wants go && { [ ! -x "$gobin" ] || [ -n "$(find tests/bench/contenders/go -newer "$gobin" -type f | head -1)" ]; }; then
  if command -v go >/dev/null 2>&1; then
    log "building $gobin (go)"
    go build -C tests/bench/contenders/go -trimpath -o "$PWD/$gobin" . >&2
  else
    log "no Go toolchain: the go contender will be skipped"
  fi
fi

# A broker of our own, so that nobody else's tests share it.
export KAFKA_RUN_DIR=${BENCH_KAFKA_RUN_DIR:-$PWD/build/bench-kafka}
started=""
if [ -z "${BENCH_BOOTSTRAP:-}" ]; then
  BENCH_BOOTSTRAP=$(tests/kafka/kafka.sh start)
  started=1
fi
export BENCH_BOOTSTRAP
cleanup() {
  if [ -n "$started" ]; then tests/kafka/kafka.sh stop --clean >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
if [ -f "$KAFKA_RUN_DIR/kafka.pid" ]; then
  BENCH_BROKER_PID=$(cat "$KAFKA_RUN_DIR/kafka.pid")
  export BENCH_BROKER_PID
fi
log "broker at $BENCH_BOOTSTRAP; load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$venv/bin/python" tests/bench/bench.py
