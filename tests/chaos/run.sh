#!/usr/bin/env bash
# Runs the chaos scenarios (tests/chaos/test_chaos.py) against a broker of
# their own (one scenario stops and restarts it, so never a shared one):
# build/kafka-chaos unless KBATCH_CHAOS_KAFKA_RUN_DIR names another run dir.
# Extra arguments go to pytest (e.g. -k sigkill). Duplicate rates and other
# figures: $KBATCH_BUILD/chaos-report.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${KBATCH_BUILD:-build}
py=build/venv/bin/python
[ -x "$py" ] || tests/deps.sh
export KBATCH_BUILD=$build
export KAFKA_RUN_DIR=${KBATCH_CHAOS_KAFKA_RUN_DIR:-$PWD/build/kafka-chaos}
export KBATCH_CHAOS_KAFKA_RUN_DIR=$KAFKA_RUN_DIR
tests/kafka/kafka.sh stop --clean >/dev/null 2>&1 || true
KBATCH_TEST_BOOTSTRAP=$(tests/kafka/kafka.sh start)
export KBATCH_TEST_BOOTSTRAP
cleanup() { tests/kafka/kafka.sh stop --clean >/dev/null 2>&1 || true; }
trap cleanup EXIT
echo "chaos: broker at $KBATCH_TEST_BOOTSTRAP (run dir $KAFKA_RUN_DIR)" >&2
rm -f "$build/chaos-report.jsonl"
"$py" -m pytest tests/chaos -p no:cacheprovider -q -rfE -s --durations=10 "$@"
