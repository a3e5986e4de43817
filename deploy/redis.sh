#!/usr/bin/env bash
# deploy/redis.sh: a local Redis server, the production-style Feast online store, for
# development, the tests and the benchmarks. Needs redis-server on PATH
# (`install` gets Debian's package; macOS: brew install redis).
#
#   deploy/redis.sh install
#   deploy/redis.sh start  [--data-dir DIR] [--port PORT]
#   deploy/redis.sh stop   [--data-dir DIR]
#   deploy/redis.sh status [--data-dir DIR]
#
# `install` does nothing when redis-server is on PATH; otherwise it installs Debian's
# redis-server package with apt-get (as root, or through sudo), `make test` runs it.
# `start` prints one line on stdout, REDIS_URL=redis://127.0.0.1:PORT/0 (rediss:// with TLS;
# never the password), so
#   export "$(deploy/redis.sh start)"
# sets a URL for FeatureStoreConfig.online_store. Everything else goes to stderr.
#
# Layout of a data dir (default $PWD/.cache/redis):
#   redis.port   the port it was started on, kept for stop/status
#   redis.pid    pid of the running server
#   redis.log    the server's log
#   appendonly*  the append-only file, when persistence is on
#   secrets.conf the password, when one is required (mode 0600, off the command line)
#
# Loopback only, protected mode on, no password unless LIMAML_REDIS_PASSWORD is set: a
# development server, not a deployment.
#
# Environment knobs (all optional):
#   LIMAML_REDIS_DIR            data dir                            (default $PWD/.cache/redis)
#   LIMAML_REDIS_PORT           port                                (default 6379)
#   LIMAML_REDIS_APPENDONLY     yes|no: keep the data across restarts (default yes)
#   LIMAML_REDIS_MAXMEMORY      maxmemory, e.g. 2gb                 (default 0 = no limit)
#   LIMAML_REDIS_START_TIMEOUT  seconds to wait for readiness       (default 20)
#   LIMAML_REDIS_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default 20)
#   LIMAML_REDIS_PASSWORD       password clients must give (requirepass)  (default none)
#   LIMAML_REDIS_TLS_CERT       PEM certificate: serve TLS only on PORT   (default plain TCP)
#   LIMAML_REDIS_TLS_KEY        PEM private key of that certificate
# status and stop read the same variables (PING authenticates with the password).
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HOST=127.0.0.1
REDIS_SERVER="${REDIS_SERVER:-redis-server}"

parse_opts() {
    DATA_DIR="${LIMAML_REDIS_DIR:-$PWD/.cache/redis}"
    OPT_PORT=""
    while (($#)); do
        case $1 in
            --data-dir) DATA_DIR=${2:?--data-dir needs a value}; shift 2 ;;
            --port) OPT_PORT=${2:?--port needs a value}; shift 2 ;;
            *) die "unknown option $1" ;;
        esac
    done
    PORT=${OPT_PORT:-${LIMAML_REDIS_PORT:-6379}}
    [[ $PORT =~ ^[0-9]+$ ]] && ((PORT > 0 && PORT < 65536)) || die "port $PORT out of range"
}

# The port the server in DATA_DIR was started on (stop and status use that one).
saved_port() { [[ -f $DATA_DIR/redis.port ]] && cat "$DATA_DIR/redis.port"; }

# The pid of our server if it is running, else nothing (and a stale pid file is removed).
# The command line is checked too, so a recycled pid is not mistaken for ours.
server_pid() {
    live_pid "$DATA_DIR/redis.pid" "redis-server $HOST:$(saved_port || true)"
}

# PING over the RESP protocol (after AUTH when a password is set; through redis-cli with
# TLS); a ready server (data loaded) answers PONG.
ping_ok() {
    local reply password=${LIMAML_REDIS_PASSWORD:-}
    if [[ -n ${LIMAML_REDIS_TLS_CERT:-} ]]; then  # a readiness check: the certificate is not verified
        reply=$(REDISCLI_AUTH=$password timeout 2 redis-cli --tls --insecure -h "$HOST" -p "$1" ping 2>/dev/null) || true
        [[ $reply == PONG ]]
        return
    fi
    { exec 8<>"/dev/tcp/$HOST/$1"; } 2>/dev/null || return 1
    if [[ -n $password ]]; then  # a RESP array: the password may hold spaces
        printf '*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n' "$(LC_ALL=C; echo ${#password})" "$password" >&8 2>/dev/null \
            || { exec 8<&-; return 1; }
        reply=$(timeout 1 head -c 5 <&8) || true
        [[ $reply == "+OK"* ]] || { exec 8<&-; return 1; }
    fi
    printf 'PING\r\n' >&8 2>/dev/null || { exec 8<&-; return 1; }
    reply=$(timeout 1 head -c 5 <&8) || true
    exec 8<&-
    [[ $reply == "+PONG" ]]
}

# Server options of the password and TLS knobs; the password goes to a file only its owner reads.
security_options() {
    local secrets=$DATA_DIR/secrets.conf password=${LIMAML_REDIS_PASSWORD:-}
    (umask 077 && : >"$secrets")
    if [[ -n $password ]]; then
        [[ $password != *$'\n'* ]] || die "LIMAML_REDIS_PASSWORD must be one line"
        password=${password//\\/\\\\}
        printf 'requirepass "%s"\n' "${password//\"/\\\"}" >"$secrets"
    fi
    SECURITY=("$secrets")  # a config file comes first on redis-server's command line
    if [[ -n ${LIMAML_REDIS_TLS_CERT:-} ]]; then
        [[ -n ${LIMAML_REDIS_TLS_KEY:-} ]] || die "LIMAML_REDIS_TLS_CERT needs LIMAML_REDIS_TLS_KEY"
        command -v redis-cli >/dev/null 2>&1 || die "TLS needs redis-cli (Debian's redis-tools) for the readiness check"
        SECURITY+=(--port 0 --tls-port "$PORT" --tls-cert-file "$LIMAML_REDIS_TLS_CERT"
                   --tls-key-file "$LIMAML_REDIS_TLS_KEY" --tls-auth-clients no)
        SCHEME=rediss
    else
        SECURITY+=(--port "$PORT")
        SCHEME=redis
    fi
}

cmd_install() {
    if command -v "$REDIS_SERVER" >/dev/null 2>&1; then
        log "$("$REDIS_SERVER" --version)"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "redis-server is not on PATH and there is no apt-get; install Redis (macOS: brew install redis)"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || die "installing redis-server needs root: apt-get install redis-server"
        sudo=(sudo)
    fi
    local install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server)
    log "installing Debian's redis-server"
    # An image's package lists may be missing or stale: update them only when the install fails.
    "${install[@]}" || { "${sudo[@]}" apt-get update && "${install[@]}"; } || die "apt-get could not install redis-server"
    command -v "$REDIS_SERVER" >/dev/null 2>&1 || die "redis-server is still not on PATH after installing it"
}

cmd_start() {
    parse_opts "$@"
    command -v "$REDIS_SERVER" >/dev/null 2>&1 || die "redis-server not found on PATH (apt-get install redis-server)"
    mkdir -p "$DATA_DIR"
    DATA_DIR=$(cd "$DATA_DIR" && pwd)
    security_options
    local pid
    pid=$(server_pid)
    if [[ -n $pid ]]; then
        [[ $PORT == "$(saved_port)" || -z $OPT_PORT ]] \
            || die "already running in $DATA_DIR on port $(saved_port); stop it first"
        PORT=$(saved_port)
    else
        port_in_use "$PORT" && die "port $PORT is in use by another process"
        echo "$PORT" >"$DATA_DIR/redis.port"
        log "starting redis-server on $HOST:$PORT in $DATA_DIR"
        "$REDIS_SERVER" "${SECURITY[@]}" --bind "$HOST" --protected-mode yes \
            --daemonize yes --pidfile "$DATA_DIR/redis.pid" --logfile "$DATA_DIR/redis.log" \
            --dir "$DATA_DIR" --save "" --appendonly "${LIMAML_REDIS_APPENDONLY:-yes}" \
            --maxmemory "${LIMAML_REDIS_MAXMEMORY:-0}" \
            || die "redis-server failed to start; see $DATA_DIR/redis.log"
    fi
    local deadline=$((SECONDS + ${LIMAML_REDIS_START_TIMEOUT:-20}))
    until ping_ok "$PORT"; do
        if ((SECONDS >= deadline)); then
            [[ -f $DATA_DIR/redis.log ]] && tail -n 20 "$DATA_DIR/redis.log" >&2
            cmd_stop --data-dir "$DATA_DIR"
            die "redis-server did not answer PING on $HOST:$PORT in time"
        fi
        sleep 0.1
    done
    echo "REDIS_URL=$SCHEME://$HOST:$PORT/0"
}

cmd_stop() {
    parse_opts "$@"
    local pid
    pid=$(server_pid)
    [[ -n $pid ]] || { log "not running ($DATA_DIR)"; return 0; }
    stop_pid "$pid" "${LIMAML_REDIS_STOP_TIMEOUT:-20}" redis-server
    rm -f "$DATA_DIR/redis.pid"
    log "stopped"
}

# Exit 0: running and answering; 1: running, not answering; 3: stopped.
cmd_status() {
    parse_opts "$@"
    local pid port
    pid=$(server_pid)
    [[ -n $pid ]] || { echo "stopped ($DATA_DIR)"; exit 3; }
    port=$(saved_port)
    if ping_ok "$port"; then
        echo "running, pid $pid, REDIS_URL=redis${LIMAML_REDIS_TLS_CERT:+s}://$HOST:$port/0"
    else
        echo "running, pid $pid, $HOST:$port not answering"
        exit 1
    fi
}

main "$@"
