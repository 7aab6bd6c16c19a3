#!/usr/bin/env bash
# tests/kafka/secure.sh - the test broker of kafka.sh with a second listener,
# SASL_SSL with SCRAM-SHA-512, for the e2e test of a secured Kafka
# (tests/e2e/test_security.py).
#
#   secure.sh start           start it; prints the SASL_SSL address
#                             (127.0.0.1:PORT) on stdout
#   secure.sh env             shell assignments for tests (see below)
#   secure.sh stop [--clean]  stop it (kafka.sh stop)
#
# On the first start of a run dir it makes, with openssl only:
#   tls/ca.pem, tls/ca.key        a test CA (valid 30 days)
#   tls/broker.p12                the broker's key and certificate, signed by
#                                 that CA, for 127.0.0.1 and localhost
# and formats the KRaft storage with a SCRAM-SHA-512 user
# ($KAFKA_SCRAM_USER / $KAFKA_SCRAM_PASSWORD, default kbatch / a random
# password kept in <run dir>/scram_password).
#
# The PLAINTEXT listener stays (inter-broker, controller, and tests that
# need an unauthenticated view); the SASL_SSL listener is on the extra port
# (<run dir>/extra_port, also <run dir>/secure_bootstrap).
#
# `secure.sh env` prints:
#   KBATCH_TEST_SECURE_BOOTSTRAP=127.0.0.1:PORT   (SASL_SSL)
#   KBATCH_TEST_PLAIN_BOOTSTRAP=127.0.0.1:PORT    (PLAINTEXT)
#   KBATCH_TEST_SECURE_CA=<run dir>/tls/ca.pem
#   KBATCH_TEST_SCRAM_USER=kbatch
#   KBATCH_TEST_SCRAM_PASSWORD=...
#
# Environment: as kafka.sh (KAFKA_RUN_DIR defaults to tests/kafka/run/secure
# here), plus KAFKA_SCRAM_USER, KAFKA_SCRAM_PASSWORD.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export KAFKA_RUN_DIR=${KAFKA_RUN_DIR:-$HERE/run/secure}
RUN_DIR=$(realpath -m -- "$KAFKA_RUN_DIR")
TLS=$RUN_DIR/tls
USER_NAME=${KAFKA_SCRAM_USER:-kbatch}

log() { printf 'secure.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '4,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# The keystore password: only protects a file of a throwaway test CA.
store_pass() {
    [ -s "$TLS/store_password" ] || head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$TLS/store_password"
    cat "$TLS/store_password"
}

scram_password() {
    if [ -n "${KAFKA_SCRAM_PASSWORD:-}" ]; then
        echo "$KAFKA_SCRAM_PASSWORD"
        return
    fi
    [ -s "$RUN_DIR/scram_password" ] || head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$RUN_DIR/scram_password"
    cat "$RUN_DIR/scram_password"
}

make_tls() {
    [ -s "$TLS/broker.p12" ] && [ -s "$TLS/ca.pem" ] && return 0
    command -v openssl >/dev/null 2>&1 || die "openssl is missing"
    mkdir -p "$TLS"
    chmod 700 "$TLS"
    log "making a test CA and the broker's certificate in $TLS"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=kbatch test CA" \
        -keyout "$TLS/ca.key" -out "$TLS/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$TLS/broker.key" -out "$TLS/broker.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$TLS/ext.cnf"
    openssl x509 -req -in "$TLS/broker.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" \
        -CAcreateserial -days 30 -extfile "$TLS/ext.cnf" -out "$TLS/broker.pem" 2>/dev/null
    openssl pkcs12 -export -inkey "$TLS/broker.key" -in "$TLS/broker.pem" \
        -certfile "$TLS/ca.pem" -name broker -passout "pass:$(store_pass)" \
        -out "$TLS/broker.p12"
    rm -f "$TLS/broker.csr" "$TLS/ext.cnf"
}

write_props() {
    cat >"$RUN_DIR/secure.properties" <<EOF2
# written by tests/kafka/secure.sh
listeners=PLAINTEXT://127.0.0.1:@PORT@,CONTROLLER://127.0.0.1:@CONTROLLER_PORT@,SASL_SSL://127.0.0.1:@EXTRA_PORT@
advertised.listeners=PLAINTEXT://127.0.0.1:@PORT@,SASL_SSL://127.0.0.1:@EXTRA_PORT@
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$TLS/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=$(store_pass)
listener.name.sasl_ssl.ssl.client.auth=none
EOF2
}

do_start() {
    mkdir -p "$RUN_DIR"
    make_tls
    write_props
    local pass addr
    pass=$(scram_password)
    # read by kafka.sh without globbing; only used when the storage is new
    export KAFKA_FORMAT_ARGS="--add-scram SCRAM-SHA-512=[name=$USER_NAME,password=$pass]"
    export KAFKA_EXTRA_PROPS=$RUN_DIR/secure.properties
    "$HERE/kafka.sh" start >/dev/null
    [ -s "$RUN_DIR/extra_port" ] || die "kafka.sh started without the extra port"
    addr="127.0.0.1:$(cat "$RUN_DIR/extra_port")"
    echo "$addr" >"$RUN_DIR/secure_bootstrap"
    echo "$addr"
}

do_env() {
    [ -s "$RUN_DIR/secure_bootstrap" ] || die "not started (secure.sh start)"
    echo "KBATCH_TEST_SECURE_BOOTSTRAP=$(cat "$RUN_DIR/secure_bootstrap")"
    echo "KBATCH_TEST_PLAIN_BOOTSTRAP=$(cat "$RUN_DIR/bootstrap")"
    echo "KBATCH_TEST_SECURE_CA=$TLS/ca.pem"
    echo "KBATCH_TEST_SCRAM_USER=$USER_NAME"
    echo "KBATCH_TEST_SCRAM_PASSWORD=$(scram_password)"
}

case ${1:-} in
    start) [ $# -eq 1 ] || usage; do_start ;;
    env) [ $# -eq 1 ] || usage; do_env ;;
    stop) shift; rm -f "$RUN_DIR/secure_bootstrap"; "$HERE/kafka.sh" stop "$@" ;;
    *) usage ;;
esac
