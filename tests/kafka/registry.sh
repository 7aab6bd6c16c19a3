#!/usr/bin/env bash
# tests/kafka/registry.sh - a real Schema Registry for kbatch's Avro tests and
# benchmarks: Apicurio Registry, whose Confluent-compatible API is served
# under /apis/ccompat/v7.
#
#   registry.sh fetch            download and unpack the distribution once
#   registry.sh start            start it; prints its base URL on stdout:
#                                http://127.0.0.1:PORT/apis/ccompat/v7
#   registry.sh stop [--clean]   stop it (--clean also deletes its run dir)
#   registry.sh status           "running URL" (0), "starting" (3), "stopped" (1)
#
# See tests/kafka/README.md for the environment variables.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=registry.sh
# shellcheck source=tests/kafka/common.sh
. "$HERE/common.sh"

POM=$HERE/registry-pom.xml
VERSION=2.6.13.Final
ARCHIVE=apicurio-registry-app-$VERSION-all.tar.gz
# sha256 of $ARCHIVE (Maven checks Central's sha1 too, -C)
ARCHIVE_SHA256=3cda1b34aa020fb4ac4dd6a66018d757e81e437f97e20a1f92d366b70091c6ba
RUNNER=apicurio-registry-app-$VERSION-runner.jar
CACHE_DIR=${REGISTRY_CACHE_DIR:-$HERE/cache}
DIST_DIR=$CACHE_DIR/apicurio-registry-$VERSION
RUN_DIR=$(realpath -m -- "${REGISTRY_RUN_DIR:-$HERE/run/registry}")
START_TIMEOUT=${REGISTRY_START_TIMEOUT:-120}
STOP_TIMEOUT=${REGISTRY_STOP_TIMEOUT:-20}
HEAP_OPTS=${REGISTRY_HEAP_OPTS:--Xmx128m}
JVM_OPTS=${REGISTRY_JVM_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true}
COMPATIBILITY=${REGISTRY_COMPATIBILITY:-BACKWARD}
API=/apis/ccompat/v7

usage() {
    cat >&2 <<'EOF'
usage: registry.sh fetch | start | stop [--clean] | status
  env: REGISTRY_RUN_DIR REGISTRY_CACHE_DIR REGISTRY_PORT REGISTRY_HEAP_OPTS
       REGISTRY_JVM_OPTS REGISTRY_COMPATIBILITY REGISTRY_START_TIMEOUT
       REGISTRY_STOP_TIMEOUT REGISTRY_MVN_OPTS
EOF
    exit 2
}

# ---------------------------------------------------------------- fetch

stamp() { echo "pom-sha256=$(sha256sum "$POM" | cut -d' ' -f1) archive-sha256=$ARCHIVE_SHA256"; }

is_fetched() {
    [ -f "$DIST_DIR/.stamp" ] && [ "$(cat "$DIST_DIR/.stamp")" = "$(stamp)" ] &&
        [ -f "$DIST_DIR/$RUNNER" ]
}

fetch_dist() {
    local tmp t0=$SECONDS sum
    tmp=$(mktemp -d "$CACHE_DIR/registry.tmp.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    log "fetching Apicurio Registry $VERSION from Maven Central into $DIST_DIR"
    # = mvn dependency:copy, the plugin version and the artifact pinned
    # in the pom; -C: fail on a checksum mismatch with Central.
    MVN_OPTS="-C ${REGISTRY_MVN_OPTS:-}" mvn_quiet "$POM" \
        org.apache.maven.plugins:maven-dependency-plugin:copy \
        -DoutputDirectory="$tmp" || die "mvn dependency:copy failed"
    [ -f "$tmp/$ARCHIVE" ] || die "no $ARCHIVE after mvn"
    sum=$(sha256sum "$tmp/$ARCHIVE" | cut -d' ' -f1)
    [ "$sum" = "$ARCHIVE_SHA256" ] ||
        die "$ARCHIVE: sha256 $sum, expected $ARCHIVE_SHA256"
    mkdir "$tmp/dist"
    tar -xzf "$tmp/$ARCHIVE" -C "$tmp/dist" || die "cannot unpack $ARCHIVE"
    [ -f "$tmp/dist/$RUNNER" ] || die "no $RUNNER in $ARCHIVE"
    stamp >"$tmp/dist/.stamp"
    rm -rf "$DIST_DIR"
    mv "$tmp/dist" "$DIST_DIR"
    # The EXIT trap names this function's local: clear it before the
    # subshell exits (under set -u it failed the fetch: "tmp: unbound").
    rm -rf "$tmp"
    trap - EXIT
    log "fetched in $((SECONDS - t0)) s"
}

do_fetch() { fetch_once "$CACHE_DIR/.registry-fetch.lock" is_fetched fetch_dist; }

# ---------------------------------------------------------------- state

pid_file() { echo "$RUN_DIR/registry.pid"; }

# registry_pid: the pid of this run dir's registry if it is alive.
registry_pid() { pid_alive "$(pid_file)" "$RUNNER" "-Dkbatch.run.dir=$RUN_DIR "; }

# kill_registry PID: SIGTERM to its process group, SIGKILL after
# STOP_TIMEOUT; returns once no process of the group is left (a JVM that is
# exiting has no command line any more, registry_pid misses it).
kill_registry() {
    local pid=$1 i
    kill_group registry "$pid" "$STOP_TIMEOUT" registry_pid || true
    for ((i = 0; i < 100; i++)); do
        kill -0 -- "-$pid" 2>/dev/null || return 0
        sleep 0.05
    done
    die "processes of group $pid still alive"
}

# ---------------------------------------------------------------- start

# http_status METHOD URL [BODY]: prints the HTTP status (000: no answer).
http_status() {
    local args=(-s -o /dev/null -w '%{http_code}' --max-time 5 -X "$1")
    [ $# -ge 3 ] && args+=(-H 'Content-Type: application/vnd.schemaregistry.v1+json' -d "$3")
    curl "${args[@]}" "$2" 2>/dev/null || true
}

launch() {
    local port=$1
    rm -f "$(pid_file)" "$RUN_DIR/url"
    [ -f "$RUN_DIR/registry.out" ] && mv -f "$RUN_DIR/registry.out" "$RUN_DIR/registry.out.prev"
    # Storage: Apicurio's in-memory H2 store, but in a file of the run dir,
    # so that a restart keeps the schemas and their ids (a real registry's
    # storage outlives its process).
    # shellcheck disable=SC2086
    REGISTRY_DATASOURCE_URL="jdbc:h2:file:$RUN_DIR/db/registry" \
    spawn_service registry "$(pid_file)" "$RUN_DIR/registry.out" \
        java $HEAP_OPTS $JVM_OPTS \
        "-Dkbatch.run.dir=$RUN_DIR" -Dkbatch.end \
        -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
        -Dregistry.ccompat.use-canonical-hash=true \
        -Dquarkus.datasource.jdbc.initial-size=2 -Dquarkus.datasource.jdbc.min-size=2 \
        -jar "$DIST_DIR/$RUNNER"
}

# wait_ready URL: 0 ready, 2 port clash (retry on another port), 1 failure.
wait_ready() {
    local url=$1 deadline=$((SECONDS + START_TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
        if ! registry_pid >/dev/null; then
            grep -qs 'Port .* seems to be in use\|Address already in use' \
                "$RUN_DIR/registry.out" && return 2
            log "registry exited during startup"
            return 1
        fi
        [ "$(http_status GET "$url/subjects")" = 200 ] && return 0
        sleep 0.1
    done
    log "registry not ready after ${START_TIMEOUT}s"
    return 1
}

# try_start ATTEMPT: one start on REGISTRY_PORT, the last start's port
# (first attempt, when free: a restarted registry keeps its URL) or a new
# one, then the compatibility rule; sets START_RC.
try_start() {
    local attempt=$1 port url st
    ensure_tools java curl
    if [ -n "${REGISTRY_PORT:-}" ]; then
        port=$REGISTRY_PORT
        port_free "$port" || die "port $port (REGISTRY_PORT) is in use"
    else
        port=""
        if [ "$attempt" = 1 ] && [ -f "$RUN_DIR/port" ]; then
            read -r port <"$RUN_DIR/port" || true
            [ -n "$port" ] && ! port_free "$port" && port=""
        fi
        [ -n "$port" ] || port=$(free_ports 1)
    fi
    echo "$port" >"$RUN_DIR/port"
    url="http://127.0.0.1:$port$API"
    log "starting Apicurio Registry $VERSION on $url, run dir $RUN_DIR"
    launch "$port"
    START_RC=0
    wait_ready "$url" || START_RC=$?
    [ "$START_RC" = 0 ] || return 0
    # Confluent's default; Apicurio's is NONE
    st=$(http_status PUT "$url/config" "{\"compatibility\":\"$COMPATIBILITY\"}")
    if [ "$st" != 200 ]; then
        kill_registry "$(cat "$(pid_file)")"
        die "PUT $url/config {compatibility: $COMPATIBILITY}: HTTP $st"
    fi
    echo "$url" >"$RUN_DIR/url"
}

show_logs() {
    [ -s "$RUN_DIR/registry.out" ] || return 0
    log "---- last lines of $RUN_DIR/registry.out ----"
    tail -n 40 "$RUN_DIR/registry.out" >&2
}

# ---------------------------------------------------------------- commands

service_main registry registry_pid kill_registry "$RUN_DIR/url" "${REGISTRY_PORT:-}" "$@"
