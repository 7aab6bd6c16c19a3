#!/usr/bin/env bash
# Runs the e2e suite: starts a real Kafka broker of its own (unless
# KBATCH_TEST_BOOTSTRAP names one), runs pytest, stops the broker.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${KBATCH_BUILD:-build}
py=build/venv/bin/python
[ -x "$py" ] || tests/deps.sh
export KBATCH_BUILD=$build
started=""
if [ -z "${KBATCH_TEST_BOOTSTRAP:-}" ]; then
  export KAFKA_RUN_DIR=${KAFKA_RUN_DIR:-$PWD/build/kafka-e2e}
  KBATCH_TEST_BOOTSTRAP=$(tests/kafka/kafka.sh start)
  export KBATCH_TEST_BOOTSTRAP
  started=1
fi
cleanup() {
  if [ -n "$started" ]; then tests/kafka/kafka.sh stop --clean >/dev/null 2>&1 || true; fi
  # the Schema Registry of the Avro tests (conftest.py's schema_registry
  # stops it; this is for a pytest that was killed)
  REGISTRY_RUN_DIR=$(realpath -m "$build")/registry-e2e tests/kafka/registry.sh stop --clean >/dev/null 2>&1 || true
}
trap cleanup EXIT
echo "e2e: broker at $KBATCH_TEST_BOOTSTRAP" >&2
"$py" -m pytest tests/e2e -p no:cacheprovider -q -rfE --durations=10 "$@"
