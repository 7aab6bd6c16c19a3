#!/usr/bin/env bash
# make test-deploy: the container image and the Kubernetes manifests.
#   1. installs what is missing (tests/deploy/deps.sh: podman, runc,
#      debootstrap, kustomize, kubeconform, PyYAML) and builds the fakes;
#   2. makes the validation schemas (tests/deploy/schemas.sh);
#   3. builds the image with podman from debootstrap'ed base images
#      (tests/deploy/build-image.sh);
#   4. starts a Kafka broker of its own and runs tests/deploy with pytest.
# Caches (base tarballs, tools, schemas, podman storage) live in
# build/deploy/; a rerun reuses them. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/deploy/lib.sh
t_start=$(date +%s)
stamp() { echo "$(( $(date +%s) - t_start ))s"; }

tests/deploy/deps.sh
make --no-print-directory -s all >/dev/null
kb_say "tools ready at $(stamp)"
tests/deploy/schemas.sh
kb_say "schemas ready at $(stamp)"
size=$(tests/deploy/build-image.sh "$KB_IMAGE")
kb_say "image ready at $(stamp)"

kb_podman_env
export KB_IMAGE KB_DEPLOY_TOOLS KB_DEPLOY_SCHEMAS K8S_VERSIONS
export KBATCH_BUILD=${KBATCH_BUILD:-build}
started=""
cleanup() {
        if [ -n "$started" ]; then tests/kafka/kafka.sh stop --clean >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
if [ -z "${KBATCH_TEST_BOOTSTRAP:-}" ]; then
        export KAFKA_RUN_DIR=${KAFKA_RUN_DIR:-$PWD/build/kafka-deploy}
        KBATCH_TEST_BOOTSTRAP=$(tests/kafka/kafka.sh start)
        export KBATCH_TEST_BOOTSTRAP
        started=1
fi
kb_say "broker at $KBATCH_TEST_BOOTSTRAP; image $KB_IMAGE: $size bytes ($(( size / 1000000 )) MB)"
kb_say "ready for the tests at $(stamp)"
build/venv/bin/python -m pytest tests/deploy -p no:cacheprovider -q -rfEs --durations=5 "$@"
