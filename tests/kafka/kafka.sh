#!/usr/bin/env bash
# tests/kafka/kafka.sh - a real, single-node Apache Kafka (KRaft) broker for
# kbatch's e2e tests, benchmarks and `make demo`.
#
#   kafka.sh fetch            download the broker jars (Maven Central) once
#   kafka.sh start            start a broker; prints 127.0.0.1:PORT on stdout
#   kafka.sh stop [--clean]   stop it (--clean also deletes its run dir)
#   kafka.sh status           "running 127.0.0.1:PORT" (0) or "stopped" (1)
#
# See tests/kafka/README.md for the environment variables.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
POM=$HERE/pom.xml
CACHE_DIR=${KAFKA_CACHE_DIR:-$HERE/cache}
LIB_DIR=$CACHE_DIR/lib
RUN_DIR_RAW=${KAFKA_RUN_DIR:-$HERE/run/default}
START_TIMEOUT=${KAFKA_START_TIMEOUT:-120}
STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-20}
HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
JVM_OPTS=${KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}
OFFSETS_PARTITIONS=${KAFKA_OFFSETS_PARTITIONS:-1}
CDS=${KAFKA_CDS:-1}
EXTRA_PROPS=${KAFKA_EXTRA_PROPS:-}

# fds 8 (fetch) and 9 (run dir) hold the locks (common.sh); both are closed
# in the broker process so that a running broker never holds a lock.

PROG=kafka.sh
# shellcheck source=tests/kafka/common.sh
. "$HERE/common.sh"

usage() {
    cat >&2 <<'EOF'
usage: kafka.sh fetch | start | stop [--clean] | status
  env: KAFKA_RUN_DIR KAFKA_CACHE_DIR KAFKA_HEAP_OPTS KAFKA_JVM_OPTS
       KAFKA_EXTRA_PROPS KAFKA_FORMAT_ARGS KAFKA_START_TIMEOUT KAFKA_STOP_TIMEOUT
       KAFKA_OFFSETS_PARTITIONS KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_MVN_OPTS
EOF
    exit 2
}

abs_path() { realpath -m -- "$1"; }
RUN_DIR=$(abs_path "$RUN_DIR_RAW")

# ---------------------------------------------------------------- fetch

pom_stamp() { echo "pom-sha256=$(sha256sum "$POM" | cut -d' ' -f1)"; }

is_fetched() {
    [ -f "$LIB_DIR/.stamp" ] || return 1
    [ "$(cat "$LIB_DIR/.stamp")" = "$(pom_stamp)" ] || return 1
    compgen -G "$LIB_DIR/kafka_2.13-*.jar" >/dev/null
}

fetch_jars() {
    local tmp t0=$SECONDS
    tmp=$(mktemp -d "$CACHE_DIR/lib.tmp.XXXXXX")
    chmod 755 "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    log "fetching Kafka broker jars from Maven Central into $LIB_DIR"
    # = mvn dependency:copy-dependencies, spelled out so that Maven takes
    # the plugin version pinned in pom.xml without resolving the prefix.
    MVN_OPTS=${KAFKA_MVN_OPTS:-} mvn_quiet "$POM" \
        org.apache.maven.plugins:maven-dependency-plugin:copy-dependencies \
        -DoutputDirectory="$tmp" || die "mvn dependency:copy-dependencies failed"
    compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || die "no kafka_2.13 jar after mvn"
    pom_stamp >"$tmp/.stamp"
    rm -rf "$LIB_DIR"
    mv "$tmp" "$LIB_DIR"
    trap - EXIT
    log "fetched $(find "$LIB_DIR" -name "*.jar" | wc -l) jars in $((SECONDS - t0)) s"
}

do_fetch() { fetch_once "$CACHE_DIR/.fetch.lock" is_fetched fetch_jars; }

# ---------------------------------------------------------------- ports

# api_versions_ok P: a real Kafka protocol round trip. Sends ApiVersions v0
# (correlation id 0x4b42, client id "kafka.sh") and expects the same
# correlation id back with error_code 0.
api_versions_ok() {
    local got
    # shellcheck disable=SC2016 # the inner script gets the port as \$1
    got=$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "\x00\x00\x00\x12\x00\x12\x00\x00\x00\x00\x4b\x42\x00\x08kafka.sh" >&3
        head -c 10 <&3 | od -An -tx1 | tr -d " \n"
    ' _ "$1" 2>/dev/null) || return 1
    [[ $got =~ ^[0-9a-f]{8}00004b420000$ ]]
}

# ---------------------------------------------------------------- state

pid_file() { echo "$RUN_DIR/kafka.pid"; }

# broker_pid: prints the pid of this run dir's broker if it is alive.
broker_pid() { pid_alive "$(pid_file)" kafka.Kafka "$RUN_DIR/server.properties"; }

# kill_broker PID: SIGTERM to its process group, SIGKILL after STOP_TIMEOUT.
KILLED=0
kill_broker() {
    kill_group broker "$1" "$STOP_TIMEOUT" broker_pid || KILLED=1
    cds_finish
    return 0
}

# ---------------------------------------------------------------- class data sharing
# The broker spends most of its startup loading classes. The first broker
# started after a fetch records the classes it loaded when it exits cleanly
# (-XX:ArchiveClassesAtExit); later starts map that archive
# (-XX:SharedArchiveFile), which saves about a second of startup on this
# machine. The archive is keyed by the jars' stamp and the java version; the
# JVM validates it too and silently runs without it on any mismatch.

cds_file() {
    local key
    key=$( { cat "$LIB_DIR/.stamp"; java -version 2>&1; } | sha256sum | cut -c1-16)
    echo "$CACHE_DIR/cds/kafka-$key.jsa"
}

# cds_args [dump]: sets CDS_ARGS to the JVM options for this JVM: use the
# archive if there is one, else (with "dump") record one at exit.
CDS_ARGS=()
cds_args() {
    CDS_ARGS=()
    [ "$CDS" = 1 ] || return 0
    local jsa
    jsa=$(cds_file)
    if [ -s "$jsa" ]; then
        CDS_ARGS=("-XX:SharedArchiveFile=$jsa" "-Xlog:cds*=off")
    elif [ "${1:-}" = dump ]; then
        mkdir -p "$CACHE_DIR/cds"
        echo "$jsa.tmp.$$" >"$RUN_DIR/cds_pending"
        CDS_ARGS=("-XX:ArchiveClassesAtExit=$jsa.tmp.$$" "-Xlog:cds*=off")
    fi
}

# cds_finish: after the broker exited, publish the archive it dumped.
cds_finish() {
    [ -f "$RUN_DIR/cds_pending" ] || return 0
    local tmp jsa
    tmp=$(cat "$RUN_DIR/cds_pending")
    rm -f "$RUN_DIR/cds_pending"
    jsa=${tmp%.tmp.*}
    if [ "$KILLED" = 0 ] && [ -s "$tmp" ] && [ ! -e "$jsa" ]; then
        mv -f "$tmp" "$jsa"
        log "saved class data sharing archive $jsa"
        # archives of other jars or javas (a running JVM keeps its mapping)
        find "$CACHE_DIR/cds" -maxdepth 1 -name 'kafka-*.jsa' ! -path "$jsa" -delete
    fi
    rm -f "$tmp"
}

# ---------------------------------------------------------------- start

write_configs() {
    local port=$1 cport=$2 eport=${3:-}
    cat >"$RUN_DIR/server.properties" <<EOF
# written by tests/kafka/kafka.sh - rewritten on every start
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
log.dirs=$RUN_DIR/data

# single node, test friendly
num.network.threads=2
num.io.threads=4
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
# tests must create their topics explicitly
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=$OFFSETS_PARTITIONS
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
log.segment.bytes=67108864
log.retention.hours=24
log.cleaner.dedupe.buffer.size=16777216
EOF
    if [ -n "$EXTRA_PROPS" ]; then
        [ -f "$EXTRA_PROPS" ] || die "KAFKA_EXTRA_PROPS=$EXTRA_PROPS: no such file"
        {
            echo
            echo "# from KAFKA_EXTRA_PROPS=$EXTRA_PROPS (later keys win)"
            sed -e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$cport|g" \
                -e "s|@EXTRA_PORT@|$eport|g" -e "s|@RUN_DIR@|$RUN_DIR|g" "$EXTRA_PROPS"
        } >>"$RUN_DIR/server.properties"
    fi

    cat >"$RUN_DIR/log4j.properties" <<EOF
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=$RUN_DIR/broker.log
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.authorizer.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.org.apache.kafka.clients=WARN
log4j.logger.org.apache.zookeeper=WARN
EOF
    cat >"$RUN_DIR/log4j-tools.properties" <<'EOF'
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
}

new_cluster_id() {
    local id
    while :; do
        id=$(head -c 16 /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d '=')
        [[ $id != -* && $id != AAAAAAAAAAAAAAAAAAAAA* ]] && break
    done
    echo "$id"
}

format_storage() {
    [ -f "$RUN_DIR/data/meta.properties" ] && return 0
    local cid
    cid=$(new_cluster_id)
    log "formatting KRaft storage (cluster id $cid)"
    cds_args
    # KAFKA_FORMAT_ARGS: extra StorageTool arguments, split on blanks, never
    # globbed (e.g. --add-scram SCRAM-SHA-512=[name=u,password=p]).
    local fargs=()
    [ -n "${KAFKA_FORMAT_ARGS:-}" ] && read -r -a fargs <<<"$KAFKA_FORMAT_ARGS"
    # shellcheck disable=SC2086
    java $HEAP_OPTS "${CDS_ARGS[@]}" -Dlog4j.configuration="file:$RUN_DIR/log4j-tools.properties" \
        -cp "$LIB_DIR/*" kafka.tools.StorageTool format \
        -t "$cid" -c "$RUN_DIR/server.properties" "${fargs[@]}" >&2 </dev/null \
        || die "kafka.tools.StorageTool format failed"
    echo "$cid" >"$RUN_DIR/cluster.id"
}

launch() {
    local f
    rm -f "$(pid_file)" "$RUN_DIR/bootstrap"
    if [ -f "$RUN_DIR/cds_pending" ]; then    # from a broker that crashed
        rm -f "$(cat "$RUN_DIR/cds_pending")" "$RUN_DIR/cds_pending"
    fi
    cds_args dump
    for f in broker.log broker.out; do
        [ -f "$RUN_DIR/$f" ] && mv -f "$RUN_DIR/$f" "$RUN_DIR/$f.prev"
    done
    rm -f "$RUN_DIR"/broker.log.[0-9]*
    # shellcheck disable=SC2086
    spawn_service broker "$(pid_file)" "$RUN_DIR/broker.out" \
        java $HEAP_OPTS $JVM_OPTS "${CDS_ARGS[@]}" \
        -Dlog4j.configuration="file:$RUN_DIR/log4j.properties" \
        -Dkafka.logs.dir="$RUN_DIR" \
        -cp "$LIB_DIR/*" kafka.Kafka "$RUN_DIR/server.properties"
}

# wait_ready PORT: 0 ready, 2 port clash (retry on other ports), 1 failure.
wait_ready() {
    local port=$1 deadline=$((SECONDS + START_TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
        if ! broker_pid >/dev/null; then
            if grep -qs 'Address already in use' "$RUN_DIR/broker.log" "$RUN_DIR/broker.out"; then
                return 2
            fi
            log "broker exited during startup"
            return 1
        fi
        if grep -qs 'Kafka Server started' "$RUN_DIR/broker.log" && api_versions_ok "$port"; then
            return 0
        fi
        sleep 0.1
    done
    log "broker not ready after ${START_TIMEOUT}s"
    return 1
}

show_logs() {
    local f
    for f in broker.log broker.out; do
        [ -s "$RUN_DIR/$f" ] || continue
        log "---- last lines of $RUN_DIR/$f ----"
        tail -n 40 "$RUN_DIR/$f" >&2
    done
}

# try_start ATTEMPT: one start on the ports of the environment, the last
# start's (first attempt, when free) or new ones; sets START_RC.
try_start() {
    local attempt=$1 want_extra=0 port cport eport="" ports p
    ensure_tools java
    [ -n "$EXTRA_PROPS" ] && grep -qs '@EXTRA_PORT@' "$EXTRA_PROPS" && want_extra=1
    if [ -n "${KAFKA_PORT:-}" ] || [ -n "${KAFKA_CONTROLLER_PORT:-}" ]; then
        if [ -z "${KAFKA_PORT:-}" ] || [ -z "${KAFKA_CONTROLLER_PORT:-}" ]; then
            die "set both KAFKA_PORT and KAFKA_CONTROLLER_PORT, or neither"
        fi
        port=$KAFKA_PORT cport=$KAFKA_CONTROLLER_PORT
        for p in $port $cport; do
            port_free "$p" || die "port $p (KAFKA_PORT/KAFKA_CONTROLLER_PORT) is in use"
        done
        [ $want_extra = 1 ] && eport=$(free_ports 1)
    else
        # reuse the previous ports of this run dir when they are free
        port="" cport="" eport=""
        if [ "$attempt" = 1 ] && [ -f "$RUN_DIR/ports" ]; then
            read -r port cport eport <"$RUN_DIR/ports" || true
            for p in $port $cport $eport; do
                port_free "$p" || { port=""; break; }
            done
            [ $want_extra = 1 ] && [ -z "$eport" ] && port=""
        fi
        if [ -z "$port" ] || [ -z "$cport" ]; then
            ports=$(free_ports $((2 + want_extra)))
            read -r port cport eport <<<"$ports"
        fi
    fi
    echo "$port $cport $eport" >"$RUN_DIR/ports"
    [ -n "$eport" ] && echo "$eport" >"$RUN_DIR/extra_port"

    write_configs "$port" "$cport" "$eport"
    format_storage
    log "starting broker on 127.0.0.1:$port (controller $cport), run dir $RUN_DIR"
    launch
    START_RC=0
    wait_ready "$port" || START_RC=$?
    [ "$START_RC" = 0 ] && echo "127.0.0.1:$port" >"$RUN_DIR/bootstrap"
    return 0
}

# ---------------------------------------------------------------- commands

service_main broker broker_pid kill_broker "$RUN_DIR/bootstrap" "${KAFKA_PORT:-}" "$@"
