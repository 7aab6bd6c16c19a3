#!/usr/bin/env bash
# Builds the kbatch image from deploy/Dockerfile with podman, as DESIGN.md
# describes: the bookworm base images come from tests/deploy/base-image.sh
# (debootstrap + podman import), nothing is pulled (--pull=never), RUN steps
# use the host network. Prints the image's size on stdout (bytes).
#
#   build-image.sh [TAG]      default $KB_IMAGE (localhost/kbatch:test)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
kb_podman_env
cd "$KB_ROOT"
tag=${1:-$KB_IMAGE}

"$(dirname "$0")/base-image.sh"
# The librdkafka 2.8.0 tarball the image builds (fetched and checked once,
# into tests/rdkafka/cache/, the only part of the cache in the context).
tests/rdkafka.sh >&2

gitrev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
log=$KB_DEPLOY_BUILD/image-build.log
kb_say "podman build -f deploy/Dockerfile -t $tag (log: ${log#"$KB_ROOT"/})"
t0=$(date +%s)
build() {   # build [ARGS...]: podman build of deploy/Dockerfile, log appended
        podman build --pull=never --network host --layers \
                -f deploy/Dockerfile --ignorefile deploy/Dockerfile.dockerignore \
                --build-arg KBATCH_GITREV="$gitrev" \
                --build-arg KBATCH_VERSION="$(cat VERSION)" \
                "$@" . >> "$log" 2>&1 || { tail -40 "$log" >&2; exit 1; }
}
: > "$log"
# The build stage gets a tag of its own, so that its layers (the -dev
# packages above all) stay as the cache of the next build; then the image.
build --target build -t localhost/kbatch-build:cache
build -t "$tag"
# vfs keeps a full copy of the tree per layer: drop what no image uses any
# more (the layers of earlier builds).
podman image prune -f >/dev/null 2>&1 || true
size=$(podman image inspect "$tag" --format '{{.Size}}')
kb_say "image $tag built in $(( $(date +%s) - t0 ))s: $(( size / 1000000 )) MB"
echo "$size"
