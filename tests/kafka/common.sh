# tests/kafka/common.sh - helpers shared by kafka.sh and registry.sh
# (sourced; PROG names the script in messages).

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_tools java [mvn] [curl]: installs what is missing with apt-get.
ensure_tools() {
    local pkgs=() t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 && continue
        case $t in
            java) pkgs+=(default-jre-headless) ;;
            mvn) pkgs+=(maven) ;;
            curl) pkgs+=(curl) ;;
        esac
    done
    [ ${#pkgs[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "missing ${pkgs[*]} and no apt-get to install them"
    log "installing ${pkgs[*]} with apt-get"
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || die "$t still missing after apt-get install"
    done
}

# free_ports N: N distinct free TCP ports on 127.0.0.1, space separated.
free_ports() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
        return
    fi
    local out=() p
    while [ ${#out[@]} -lt "$1" ]; do
        p=$((20000 + RANDOM % 12000))
        [[ " ${out[*]} " == *" $p "* ]] && continue
        port_free "$p" && out+=("$p")
    done
    echo "${out[*]}"
}

# port_free P: true when 127.0.0.1:P can be listened on.
port_free() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
        return
    fi
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# mvn_quiet POM GOAL ARGS...: runs Maven in batch mode and shows its output
# (without colour codes) only when it fails. Maven 3.8 prints stray colour
# resets even with -q -B.
mvn_quiet() {
    local pom=$1 log_file
    shift
    log_file=$(mktemp)
    # shellcheck disable=SC2086 # MVN_OPTS is a word list on purpose
    if ! mvn -q -B -Dstyle.color=never ${MVN_OPTS:-} -f "$pom" "$@" \
            >"$log_file" 2>&1 </dev/null; then
        sed 's/\x1b\[[0-9;]*m//g' "$log_file" >&2
        rm -f "$log_file"
        return 1
    fi
    rm -f "$log_file"
}

# pid_alive PID_FILE WORD...: prints the pid of PID_FILE when that process
# is alive (not a zombie) and its command line contains every WORD.
pid_alive() {
    local pid stat cmd w
    pid=$(cat "$1" 2>/dev/null) || return 1
    shift
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ] || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    for w in "$@"; do
        [[ $cmd == *"$w"* ]] || return 1
    done
    echo "$pid"
}

# kill_group WHAT PID TIMEOUT ALIVE: SIGTERM to PID's process group, SIGKILL
# after TIMEOUT seconds while the function ALIVE succeeds. Returns 1 when
# SIGKILL was needed; dies if the process survives it.
kill_group() {
    local what=$1 pid=$2 timeout=$3 alive=$4 i rc=0
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
        "$alive" >/dev/null || break
        sleep 0.1
    done
    if "$alive" >/dev/null; then
        log "$what (pid $pid) still alive after ${timeout}s, sending SIGKILL"
        rc=1
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            "$alive" >/dev/null || break
            sleep 0.1
        done
    fi
    kill -KILL -- "-$pid" 2>/dev/null || true    # stragglers in the group
    "$alive" >/dev/null && die "$what (pid $pid) would not die"
    return $rc
}

# print_status ALIVE ADDR_FILE: "running ADDR" (0), "starting" (3: alive,
# not ready yet) or "stopped" (1).
print_status() {
    if "$1" >/dev/null; then
        if [ -s "$2" ]; then
            echo "running $(cat "$2")"
            return 0
        fi
        echo "starting"
        return 3
    fi
    echo "stopped"
    return 1
}

# stop_service WHAT ALIVE KILL ADDR_FILE [--clean]: stops the process of
# RUN_DIR under its lock (lock_run_dir; pid_file, usage and the functions
# ALIVE and KILL PID are the caller's); --clean also deletes RUN_DIR.
stop_service() {
    local what=$1 alive=$2 killer=$3 addr=$4 clean=0 pid
    case ${5:-} in
        --clean) clean=1 ;;
        "") ;;
        *) usage ;;
    esac
    [ -d "$RUN_DIR" ] || return 0
    lock_run_dir
    if pid=$("$alive"); then
        log "stopping $what (pid $pid)"
        "$killer" "$pid"
    fi
    rm -f "$(pid_file)" "$addr"
    if [ $clean = 1 ]; then
        rm -rf "$RUN_DIR"
    fi
    return 0
}

# lock_run_dir: creates RUN_DIR and holds its lock (fd 9) until the script
# exits.
lock_run_dir() {
    mkdir -p "$RUN_DIR"
    exec 9>"$RUN_DIR/.lock"
    flock 9
}

# fetch_once LOCK_FILE IS_FETCHED FETCH: runs the function FETCH (in a
# subshell, java and mvn installed) unless IS_FETCHED succeeds, under
# LOCK_FILE (fd 8) so that concurrent callers fetch once.
fetch_once() {
    local lock=$1 is_fetched=$2 fetch=$3
    "$is_fetched" && return 0
    mkdir -p "$(dirname "$lock")"
    (
        exec 8>"$lock"
        flock 8
        "$is_fetched" && exit 0    # someone else fetched while we waited
        ensure_tools java mvn
        "$fetch"
    )
}

# spawn_service WHAT PID_FILE OUT_FILE CMD...: starts CMD in a session and
# process group of its own (setsid: stop kills the group, and the process
# outlives the caller), stdin /dev/null, stdout and stderr to OUT_FILE,
# without the lock fds 8 and 9 (a running service never holds a lock);
# returns once PID_FILE holds its pid (the group leader's, exec'ed into
# CMD).
spawn_service() {
    local what=$1 pidf=$2 out=$3 i
    shift 3
    # shellcheck disable=SC2016 # the inner script gets its arguments
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$pidf" "$@" \
        </dev/null >"$out" 2>&1 8>&- 9>&- &
    for ((i = 0; i < 100; i++)); do
        [ -s "$pidf" ] && return 0
        sleep 0.05
    done
    die "$what process did not come up (no pid file)"
}

# start_service WHAT ALIVE KILL ADDR_FILE TRY FIXED SHOW: the start of both
# scripts, under the run-dir lock: prints the address of a running one;
# else kills a half-started leftover, fetches, and calls the function TRY
# ATTEMPT (1..3), which picks its ports, launches, waits and sets
# START_RC: 0 ready (it wrote ADDR_FILE), 2 a port clash (retried with
# other ports unless FIXED, the port the environment names, is set), 1 a
# failure (the function SHOW prints the logs, and the script dies).
START_RC=1
start_service() {
    local what=$1 alive=$2 killer=$3 addr=$4 try=$5 fixed=$6 show=$7
    local pid attempt t0=$SECONDS
    lock_run_dir
    if pid=$("$alive") && [ -s "$addr" ]; then
        cat "$addr"
        return 0
    fi
    [ -n "${pid:-}" ] && "$killer" "$pid"    # half-started leftover
    do_fetch
    for attempt in 1 2 3; do
        START_RC=1
        "$try" "$attempt"
        if [ "$START_RC" = 0 ]; then
            log "$what ready in $((SECONDS - t0)) s"
            cat "$addr"
            return 0
        fi
        pid=$(cat "$(pid_file)" 2>/dev/null || true)
        [ -n "$pid" ] && "$killer" "$pid"
        rm -f "$(pid_file)"
        if [ "$START_RC" = 2 ] && [ -z "$fixed" ] && [ "$attempt" -lt 3 ]; then
            log "port clash, retrying with other ports"
            continue
        fi
        "$show"
        die "$what failed to start (run dir $RUN_DIR)"
    done
}

# service_main WHAT ALIVE KILL ADDR_FILE FIXED ARGS...: the commands of
# both scripts (do_fetch, try_start, show_logs, usage, pid_file and the
# functions ALIVE and KILL PID are the caller's; FIXED: see start_service).
service_main() {
    local what=$1 alive=$2 killer=$3 addr=$4 fixed=$5
    shift 5
    case ${1:-} in
        fetch) [ $# -eq 1 ] || usage; do_fetch ;;
        start)
            [ $# -eq 1 ] || usage
            start_service "$what" "$alive" "$killer" "$addr" try_start "$fixed" show_logs
            ;;
        stop) [ $# -le 2 ] || usage; stop_service "$what" "$alive" "$killer" "$addr" "${2:-}" ;;
        status) [ $# -eq 1 ] || usage; print_status "$alive" "$addr" ;;
        *) usage ;;
    esac
}
