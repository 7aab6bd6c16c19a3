#!/usr/bin/env bash
# tests/fuzz/run.sh - libFuzzer targets of kbatch (see docs/reliability.md).
#
#   run.sh build                    build the targets into build/fuzz/
#   run.sh check [SECONDS]          replay the saved corpora and regressions,
#                                   then fuzz each target SECONDS (default 10)
#                                   from a scratch copy (make test-fuzz)
#   run.sh fuzz [SECONDS] [TARGET..] longer runs by hand (default 600 s each):
#                                   new coverage is merged into the saved
#                                   corpus tests/fuzz/corpus/TARGET/
#   run.sh list                     the targets
#
# Targets are tests/fuzz/fuzz_*.c, linked against the worker modules built
# with clang -fsanitize=fuzzer-no-link,address,undefined in build/fuzz/obj
# (their own objects, not gcc's). A crash leaves its input in
# build/fuzz/artifacts/TARGET/; once fixed, copy it into
# tests/fuzz/regressions/TARGET/ so that every later check replays it.
# Needs clang and libclang-rt (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
FUZZ_DIR=tests/fuzz
OUT=build/fuzz
PKGS="rdkafka libcurl jansson avro-c libconfig libmicrohttpd libcrypto"
CLANG=${KB_FUZZ_CC:-clang}
# librdkafka 2.8.0 of tests/rdkafka.sh, as the Makefile links it (an empty
# RDKAFKA_PREFIX: the system one).
RDKAFKA_PREFIX=${RDKAFKA_PREFIX-$ROOT/build/rdkafka}
RPATH=""
if [ -n "$RDKAFKA_PREFIX" ]; then
    export PKG_CONFIG_PATH=$RDKAFKA_PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
    RPATH="-Wl,-rpath,$RDKAFKA_PREFIX/lib"
fi

log() { printf 'fuzz: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

targets() {
    local f
    for f in "$FUZZ_DIR"/fuzz_*.c; do
        f=${f##*/}
        echo "${f%.c}"
    done
}

# Installs clang and its runtime (libFuzzer, sanitizers) when missing.
ensure_clang() {
    local probe
    probe=$(mktemp -d)
    printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n){(void)d;(void)n;return 0;}\n' \
        >"$probe/p.c"
    if command -v "$CLANG" >/dev/null 2>&1 &&
        "$CLANG" -fsanitize=fuzzer,address,undefined -o "$probe/p" "$probe/p.c" 2>/dev/null; then
        rm -rf "$probe"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "clang with libFuzzer is missing and there is no apt-get"
    log "installing clang and libclang-rt-14-dev with apt-get"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        clang libclang-rt-14-dev >&2
    "$CLANG" -fsanitize=fuzzer,address,undefined -o "$probe/p" "$probe/p.c" ||
        die "clang still cannot link a libFuzzer target"
    rm -rf "$probe"
}

do_build() {
    ensure_clang
    local san=fuzzer-no-link,address,undefined t
    # The library with clang and the fuzzer's coverage; CFLAGS from the
    # environment is appended to by the Makefile (warnings clang has and gcc
    # has not are not errors of this build).
    CFLAGS="-O1 -g -Wno-unknown-warning-option" \
        make --no-print-directory -j2 CC="$CLANG" BUILD=$OUT SAN=$san \
        RDKAFKA_PREFIX="$RDKAFKA_PREFIX" $OUT/libkbatch.a >&2
    # fuzz_avro starts the fake registry (an ordinary build)
    make --no-print-directory build/fake_registry >&2
    local cflags libs
    cflags="-O1 -g -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter -Iworker $(pkg-config --cflags $PKGS | sed 's/-I/-isystem /g')"
    libs="$RPATH $(pkg-config --libs $PKGS) -lm -lpthread"
    for t in $(targets); do
        if [ ! -x "$OUT/$t" ] || [ "$FUZZ_DIR/$t.c" -nt "$OUT/$t" ] || [ $OUT/libkbatch.a -nt "$OUT/$t" ]; then
            log "linking $OUT/$t"
            # shellcheck disable=SC2086
            "$CLANG" $cflags -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
                -fno-omit-frame-pointer -o "$OUT/$t" "$FUZZ_DIR/$t.c" $OUT/libkbatch.a $libs
        fi
    done
}

# Common libFuzzer options: no leak false alarms from detect_leaks at exit
# are tolerated (leaks are bugs), a per-input timeout, bounded memory.
FUZZ_OPTS=(-timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=0)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:allocator_may_return_null=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$ROOT/$FUZZ_DIR/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

dict_of() {
    local d=$FUZZ_DIR/dicts/${1#fuzz_}.dict
    [ -f "$d" ] && echo "-dict=$d"
    return 0
}

# replay TARGET: every saved input (corpus + regressions) once.
replay() {
    local t=$1 dirs=() d n
    for d in "$FUZZ_DIR/corpus/$t" "$FUZZ_DIR/regressions/$t"; do
        [ -d "$d" ] && [ -n "$(ls -A "$d")" ] && dirs+=("$d")
    done
    [ ${#dirs[@]} -gt 0 ] || { log "$t: no saved inputs"; return 0; }
    n=$(find "${dirs[@]}" -type f | wc -l)
    if ! "$OUT/$t" "${FUZZ_OPTS[@]}" -runs=0 "${dirs[@]}" >"$OUT/logs/$t.replay.log" 2>&1; then
        tail -n 60 "$OUT/logs/$t.replay.log" >&2
        die "$t: a saved input fails (log: $OUT/logs/$t.replay.log)"
    fi
    log "$t: replayed $n saved inputs"
}

# run TARGET SECONDS CORPUS_DIR [extra options]: fuzzes; fails on a crash.
run_for() {
    local t=$1 secs=$2 corpus=$3
    shift 3
    mkdir -p "$OUT/artifacts/$t"
    # shellcheck disable=SC2046
    if ! "$OUT/$t" "${FUZZ_OPTS[@]}" $(dict_of "$t") -max_total_time="$secs" \
        -artifact_prefix="$OUT/artifacts/$t/" "$@" "$corpus" \
        >"$OUT/logs/$t.fuzz.log" 2>&1; then
        tail -n 60 "$OUT/logs/$t.fuzz.log" >&2
        die "$t: crash found; input in $OUT/artifacts/$t/ (log: $OUT/logs/$t.fuzz.log)"
    fi
    log "$t: $(grep -Eo 'stat::number_of_executed_units: [0-9]+' "$OUT/logs/$t.fuzz.log" | grep -Eo '[0-9]+' || grep -Eo '^#[0-9]+' "$OUT/logs/$t.fuzz.log" | tail -1 | tr -d '#') runs in ${secs}s, $(grep -Eo 'cov: [0-9]+' "$OUT/logs/$t.fuzz.log" | tail -1)"
}

do_check() {
    local secs=${1:-10} t work
    do_build
    mkdir -p "$OUT/logs"
    for t in $(targets); do
        replay "$t"
        work=$(mktemp -d "$OUT/work.XXXXXX")
        [ -d "$FUZZ_DIR/corpus/$t" ] && cp -r "$FUZZ_DIR/corpus/$t/." "$work/"
        run_for "$t" "$secs" "$work" -print_final_stats=1
        rm -rf "$work"
    done
    log "all targets passed"
}

do_fuzz() {
    local secs=${1:-600} t list=()
    [ $# -gt 0 ] && shift
    list=("$@")
    [ ${#list[@]} -gt 0 ] || mapfile -t list < <(targets)
    do_build
    mkdir -p "$OUT/logs"
    for t in "${list[@]}"; do
        [ -f "$FUZZ_DIR/$t.c" ] || die "no target $t (see run.sh list)"
        replay "$t"
        mkdir -p "$OUT/corpus/$t" "$FUZZ_DIR/corpus/$t"
        cp -rn "$FUZZ_DIR/corpus/$t/." "$OUT/corpus/$t/" 2>/dev/null || true
        run_for "$t" "$secs" "$OUT/corpus/$t" -print_final_stats=1
        # keep only inputs that add coverage to the saved corpus
        "$OUT/$t" "${FUZZ_OPTS[@]}" -merge=1 "$FUZZ_DIR/corpus/$t" "$OUT/corpus/$t" \
            >"$OUT/logs/$t.merge.log" 2>&1 || die "$t: merge failed (log: $OUT/logs/$t.merge.log)"
        log "$t: saved corpus now $(find "$FUZZ_DIR/corpus/$t" -type f | wc -l) inputs"
    done
}

case ${1:-} in
    build) do_build ;;
    check) shift; do_check "$@" ;;
    fuzz) shift; do_fuzz "$@" ;;
    list) targets ;;
    *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
