# shellcheck shell=bash
# deploy/common.sh: the helpers deploy/kafka.sh and deploy/redis.sh share. Sourced, not run:
#   . "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# Messages go to stderr, prefixed with the running script's name (kafka.sh, redis.sh).

SCRIPT_NAME=${0##*/}

log() { printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The script's header comment (line 2 up to `set -euo pipefail`) as its help text.
usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
}

# Run the script's command: `main NAME ARGS...` calls its function cmd_NAME with ARGS; help,
# or a command it does not have, shows the usage (exit 2 for the latter).
main() {
    local cmd=${1:-}
    (($#)) && shift
    case $cmd in
        -h | --help | help) usage ;;
        *)
            if [[ ! $cmd =~ ^[a-z]+$ ]] || ! declare -F "cmd_$cmd" >/dev/null; then usage; exit 2; fi
            "cmd_$cmd" "$@"
            ;;
    esac
}

# Whether something listens on the loopback port $1 (HOST is the script's address).
port_in_use() { (exec 8<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# The full command line of a process (ps -ww: never cut to the terminal's width).
process_args() {
    if [[ -r /proc/$1/cmdline ]]; then
        tr '\0' ' ' <"/proc/$1/cmdline"
    else
        ps -ww -p "$1" -o args= 2>/dev/null
    fi
}

# The pid in pid file $1 if that process runs and its command line holds $2, else nothing
# (and a stale pid file is removed): a recycled pid is not mistaken for ours.
live_pid() {
    local pidfile=$1 pattern=$2 pid
    [[ -f $pidfile ]] || return 0
    pid=$(<"$pidfile")
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && process_args "$pid" | grep -qF -- "$pattern"; then
        echo "$pid"
    else
        rm -f "$pidfile"
    fi
}

# Stop process $1, named $3 in messages: SIGTERM (a clean shutdown), SIGKILL once $2
# seconds have passed, and return when it is gone.
stop_pid() {
    local pid=$1 timeout=$2 what=$3 deadline
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$what (pid $pid) still up after ${timeout} s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
}
