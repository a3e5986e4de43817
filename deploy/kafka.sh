#!/usr/bin/env bash
# deploy/kafka.sh: a local Apache Kafka broker (KRaft mode, no ZooKeeper, no Docker)
# for development, the integration tests and CI.
#
#   deploy/kafka.sh fetch                     download the broker jars from Maven Central (once)
#   deploy/kafka.sh start  [--data-dir DIR] [--port PORT] [--brokers 1|3] [--secure]
#   deploy/kafka.sh stop   [--data-dir DIR] [--node ID]
#   deploy/kafka.sh status [--data-dir DIR]
#
# `start` prints one line on stdout, LIMAML_KAFKA_BOOTSTRAP=127.0.0.1:PORT[,...], so
#   export "$(deploy/kafka.sh start)"
# sets the variable the tests, the benchmarks and every limaml command read ([kafka] bootstrap). Everything else goes to stderr.
#
# Secured mode (`start --secure`, or LIMAML_KAFKA_SECURITY=sasl_ssl; a data dir keeps the
# mode it was first started with): the client listener speaks SASL_SSL with SCRAM-SHA-512
# only. At the first start the script makes a CA and a broker certificate for 127.0.0.1
# (openssl) and two SCRAM users with random passwords, `admin` (between brokers) and
# `limaml` (the clients), created when the storage is formatted. Nothing of it is
# committed: it all lives in the data dir, and
#   DIR/client.env   LIMAML_KAFKA_* settings for a limaml client (bootstrap, protocol,
#                    mechanism, user, password file, CA file): `set -a; . DIR/client.env`
# The controller quorum stays PLAINTEXT on loopback.
#
# Layout of a data dir (default $PWD/.cache/kafka):
#   cluster.env                   cluster id, base port and broker count, kept across restarts
#   node-<id>/server.properties   generated at every start
#   node-<id>/log4j2.properties   broker logging: to node-<id>/logs/server.log, not the terminal
#   node-<id>/kafka.pid           pid of the running broker
#   node-<id>/data/               the Kafka log dirs (topics and the KRaft metadata log)
#   tls/ca.pem, tls/broker.pem    secured mode: the CA and the broker's key and certificate
#   secrets/<user>.password       secured mode: the SCRAM users' passwords (mode 600)
#   client.env                    secured mode: a client's settings (above)
#
# Ports: node <id> (1-based) listens for clients on PORT + 2*(id-1) and for the KRaft
# controller quorum on the port after it (single node: PORT and PORT+1). Loopback only.
#
# Environment knobs (all optional):
#   LIMAML_CACHE_DIR            jar cache root             (default ~/.cache/limaml)
#   LIMAML_KAFKA_VERSION        Kafka release              (default below; keep docker-compose.yml in step)
#   LIMAML_KAFKA_DIR            data dir                   (default $PWD/.cache/kafka)
#   LIMAML_KAFKA_PORT           base client port           (default 9092)
#   LIMAML_KAFKA_SECURITY       plaintext or sasl_ssl      (default plaintext; --secure: sasl_ssl)
#   LIMAML_KAFKA_PARTITIONS     num.partitions for auto-created topics (default 1)
#   LIMAML_KAFKA_RETENTION_HOURS  log.retention.hours      (default 168)
#   LIMAML_KAFKA_HEAP_OPTS      JVM heap per broker        (default "-Xms128m -Xmx512m"; with
#                               more than one broker "-Xms64m -Xmx256m", for three JVMs on a laptop)
#   LIMAML_KAFKA_START_TIMEOUT  seconds to wait for readiness (default 60)
#   LIMAML_KAFKA_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default 30)
#   MVN, JAVA_HOME              the Maven and Java to use (Kafka 4 needs Java 17+)
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ---------------------------------------------------------------------------------------
# Versions. 4.4.0 was the newest 4.x release of org.apache.kafka:kafka_2.13 on Maven
# Central when this was written. The log4j2 binding is not a dependency of the kafka
# artifact (the binary distribution ships it separately), so it is added here.
# ---------------------------------------------------------------------------------------
KAFKA_VERSION="${LIMAML_KAFKA_VERSION:-4.4.0}"
SCALA_BINARY_VERSION=2.13
LOG4J_VERSION=2.25.5
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

CACHE_ROOT="${LIMAML_CACHE_DIR:-$HOME/.cache/limaml}"
KAFKA_HOME_DIR="$CACHE_ROOT/kafka-$KAFKA_VERSION"
LIBS_DIR="$KAFKA_HOME_DIR/libs"
FETCH_MARKER="$LIBS_DIR/.complete"

JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
MVN="${MVN:-mvn}"
HOST=127.0.0.1

# Hold an exclusive lock on a file until this (sub)shell exits, so that two concurrent
# `fetch`es, or two `start`s on one data dir, do not trample each other. The lock lives
# on fd 9; launch_node closes it for the broker. flock(1) is util-linux; where it is
# missing (macOS) we go without.
take_lock() {
    local lockfile=$1
    command -v flock >/dev/null 2>&1 || return 0
    exec 9>"$lockfile"
    flock -w 300 9 || die "timed out waiting for the lock $lockfile"
}

# ---------------------------------------------------------------------------------------
# fetch: resolve kafka_2.13 and its runtime dependencies into $LIBS_DIR with Maven.
# ---------------------------------------------------------------------------------------
cmd_fetch() {
    [[ -f $FETCH_MARKER ]] && { log "Kafka $KAFKA_VERSION jars already in $LIBS_DIR"; return 0; }
    mkdir -p "$KAFKA_HOME_DIR"
    take_lock "$KAFKA_HOME_DIR/.lock"
    # Another process may have finished the download while we waited for the lock.
    [[ -f $FETCH_MARKER ]] && { log "Kafka $KAFKA_VERSION jars already in $LIBS_DIR"; return 0; }
    command -v "$MVN" >/dev/null 2>&1 || die "Maven ($MVN) is needed to fetch the Kafka jars"

    # Download into a scratch dir next to the cache, then move it into place: an
    # interrupted fetch never leaves a half-filled libs dir behind.
    local work
    work=$(mktemp -d "$KAFKA_HOME_DIR/.fetch.XXXXXX")
    # shellcheck disable=SC2064  # expand $work now
    trap "rm -rf '$work'" EXIT
    cat >"$work/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by deploy/kafka.sh fetch: only used to resolve the broker's classpath. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>limaml.local</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA_BINARY_VERSION</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- Kafka logs through slf4j 1.7; route it to log4j2, which writes to a file. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
    log "fetching Kafka $KAFKA_VERSION from Maven Central into $LIBS_DIR"
    # Maven's output is kept in a file and shown only if it fails.
    "$MVN" -B -q -Dstyle.color=never -f "$work/pom.xml" "$DEPENDENCY_PLUGIN:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$work/libs" >"$work/mvn.log" 2>&1 \
        || { cat "$work/mvn.log" >&2; die "mvn could not resolve org.apache.kafka:kafka_$SCALA_BINARY_VERSION:$KAFKA_VERSION"; }
    [[ -f $work/libs/kafka_$SCALA_BINARY_VERSION-$KAFKA_VERSION.jar ]] \
        || die "the broker jar is missing from the resolved dependencies"
    ls "$work"/libs/log4j-slf4j-impl-*.jar >/dev/null 2>&1 || die "the slf4j->log4j2 binding is missing"

    rm -rf "$LIBS_DIR"
    mv "$work/libs" "$LIBS_DIR"
    touch "$FETCH_MARKER"
    log "fetched $(find "$LIBS_DIR" -name '*.jar' | wc -l) jars"
}

# ---------------------------------------------------------------------------------------
# Helpers for one node of the cluster. A node is identified by its dir, $DATA_DIR/node-<id>.
# ---------------------------------------------------------------------------------------
node_dir()         { printf '%s/node-%d' "$DATA_DIR" "$1"; }
broker_port()      { echo $((PORT + 2 * ($1 - 1))); }
controller_port()  { echo $((PORT + 2 * ($1 - 1) + 1)); }

bootstrap_servers() {
    local id servers=()
    for ((id = 1; id <= BROKERS; id++)); do servers+=("$HOST:$(broker_port "$id")"); done
    local IFS=,
    echo "${servers[*]}"
}

# The pid of the node's broker if it is running, else nothing (and a stale pid file is
# removed). The command line is checked too, so a recycled pid is not mistaken for ours.
node_pid() {
    local dir
    dir=$(node_dir "$1")
    live_pid "$dir/kafka.pid" "kafka.Kafka $dir/server.properties"
}

# Send an ApiVersions request (v0: api key 18, correlation id 7, null client id) to a
# broker listener and check the reply carries our correlation id and error code 0.
# A KRaft broker enables its client listener only after it has caught up with the
# metadata log and been unfenced by the controller, so an answer here means it is ready
# to serve produce, fetch and metadata requests.
api_versions_ok() {
    local port=$1 reply
    # The connect itself fails fast when nothing listens; the read is bounded by timeout.
    { exec 8<>"/dev/tcp/$HOST/$port"; } 2>/dev/null || return 1
    printf '\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x07\xff\xff' >&8 2>/dev/null || { exec 8<&-; return 1; }
    reply=$(timeout 1 head -c 10 <&8 | od -An -tx1 | tr -d ' \n') || true
    exec 8<&-
    # 4 bytes length, then correlation id 00000007, then error code 0000.
    [[ ${reply:8:12} == 000000070000 ]]
}

# The same request through TLS (secured mode): a SASL listener answers ApiVersions before
# authentication. s_client -quiet keeps the connection open after the request is written;
# head closes it once the reply is in.
api_versions_ok_tls() {
    local port=$1 reply
    reply=$(printf '\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x07\xff\xff' \
        | timeout 3 openssl s_client -quiet -connect "$HOST:$port" -CAfile "$TLS_DIR/ca.pem" \
            -verify_return_error 2>/dev/null \
        | head -c 10 | od -An -tx1 | tr -d ' \n') || true
    [[ ${reply:8:12} == 000000070000 ]]
}

broker_answers() {
    if [[ $SECURITY == sasl_ssl ]]; then api_versions_ok_tls "$1"; else api_versions_ok "$1"; fi
}

# The last lines of a node's logs, for error messages.
show_logs() {
    local dir
    dir=$(node_dir "$1")
    for f in "$dir/logs/stdout.log" "$dir/logs/server.log"; do
        [[ -s $f ]] || continue
        log "---- last lines of $f ----"
        tail -n "${2:-40}" "$f" >&2
    done
}

write_node_config() {
    local id=$1 dir voters="" i
    dir=$(node_dir "$id")
    mkdir -p "$dir/logs" "$dir/data"
    for ((i = 1; i <= BROKERS; i++)); do
        voters+="${voters:+,}$i@$HOST:$(controller_port "$i")"
    done
    # One broker: every internal topic with replication factor 1. Three brokers: the
    # usual production shape (RF 3, min ISR 2), so replication tests mean something.
    local rf=1 min_isr=1
    if ((BROKERS >= 3)); then rf=3; min_isr=2; fi

    cat >"$dir/server.properties" <<EOF
# Generated by deploy/kafka.sh start; edits are overwritten at the next start.
# --- KRaft: every node is both broker and controller ("combined" mode).
process.roles=broker,controller
node.id=$id
# A static quorum: the voter set is fixed by configuration (KIP-595 style).
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER

$(listener_config "$id")

# --- Storage.
log.dirs=$dir/data
num.recovery.threads.per.data.dir=1

# --- Topics.
auto.create.topics.enable=true
delete.topic.enable=true
num.partitions=${LIMAML_KAFKA_PARTITIONS:-1}
default.replication.factor=$rf
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$rf
# Few coordinator partitions: a fresh broker creates and loads them on the first group
# join or idempotent producer, and with the default 50 that takes seconds.
offsets.topic.num.partitions=$BROKERS
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=$BROKERS
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$min_isr
# Consumers join a group at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0

# --- Leadership. A stopped broker's partitions fail over at once (controlled shutdown:
# 49 partitions moved 20 ms after the SIGTERM in bench/chaos.py). By default the controller
# moves their leadership back once the broker is up again, at its next imbalance check
# (every 300 s): a second round of "not leader" errors for every client, minutes later and
# in the middle of whatever else happens then (seen as such retries in later chaos cycles,
# docs/benchmarks.md). Brokers on one machine have no load to balance, so leadership stays
# where the failover put it. Unclean leader election stays off: no acknowledged write is lost.
auto.leader.rebalance.enable=false

# --- Retention. Note that time retention is judged by the records' timestamps: a
# replay that stamps records with historic event times needs retention.ms=-1 on its topic.
log.retention.hours=${LIMAML_KAFKA_RETENTION_HOURS:-168}
log.segment.bytes=134217728
log.retention.check.interval.ms=300000
# The compaction (compacted topics such as limaml.meta-embeddings) buffer comes out of the heap.
log.cleaner.dedupe.buffer.size=33554432

# --- A small machine runs the broker next to the workers.
num.network.threads=2
num.io.threads=4
background.threads=4
EOF

    cat >"$dir/log4j2.properties" <<'EOF'
# Generated by deploy/kafka.sh: broker logs go to logs/server.log, never to the terminal.
status = warn
name = limaml-kafka
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
# Per-request and state-change chatter stays out of the way.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
EOF
}

# The listeners, loopback only: PLAINTEXT, or (secured mode) SASL_SSL with SCRAM-SHA-512 for
# clients and between brokers, the broker's key and certificate as PEM. The controller
# quorum stays PLAINTEXT.
listener_config() {
    local id=$1 client=PLAINTEXT
    [[ $SECURITY == sasl_ssl ]] && client=SASL_SSL
    cat <<END
# --- Listeners, loopback only.
listeners=$client://$HOST:$(broker_port "$id"),CONTROLLER://$HOST:$(controller_port "$id")
advertised.listeners=$client://$HOST:$(broker_port "$id")
inter.broker.listener.name=$client
listener.security.protocol.map=$client:$client,CONTROLLER:PLAINTEXT
END
    [[ $SECURITY == sasl_ssl ]] || return 0
    cat <<END
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(<"$SECRETS_DIR/admin.password")";
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
ssl.endpoint.identification.algorithm=https
END
}

# Secured mode, once per data dir: a CA, a broker certificate for $HOST signed by it, the
# SCRAM users' random passwords, and client.env. The CA's key is deleted once it has signed.
make_security_files() {
    [[ -f $DATA_DIR/client.env ]] && return 0
    command -v openssl >/dev/null 2>&1 || die "openssl is needed for --secure (the CA and broker certificate)"
    mkdir -p "$TLS_DIR" "$SECRETS_DIR"
    chmod 700 "$SECRETS_DIR"
    local user
    for user in admin limaml; do
        (umask 077; head -c 24 /dev/urandom | base64 | tr -d '+/=\n' >"$SECRETS_DIR/$user.password")
    done
    (
        cd "$TLS_DIR"
        umask 077
        openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=limaml local Kafka CA" \
            -keyout ca.key -out ca.pem
        openssl req -newkey rsa:2048 -nodes -subj "/CN=$HOST" -keyout broker.key -out broker.csr
        printf 'subjectAltName=IP:%s,DNS:localhost\n' "$HOST" >broker.ext
        openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
            -extfile broker.ext -out broker.crt
        cat broker.key broker.crt >broker.pem
        rm -f ca.key ca.srl broker.csr broker.ext broker.key broker.crt
        chmod 644 ca.pem
    ) >"$DATA_DIR/tls.log" 2>&1 || { cat "$DATA_DIR/tls.log" >&2; die "making the TLS certificates failed"; }
    cat >"$DATA_DIR/client.env" <<END
# Written by deploy/kafka.sh start --secure: a limaml client's [kafka] settings.
LIMAML_KAFKA_BOOTSTRAP=$(bootstrap_servers)
LIMAML_KAFKA_SECURITY_PROTOCOL=SASL_SSL
LIMAML_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
LIMAML_KAFKA_SASL_USERNAME=limaml
LIMAML_KAFKA_SASL_PASSWORD_FILE=$SECRETS_DIR/limaml.password
LIMAML_KAFKA_SSL_CAFILE=$TLS_DIR/ca.pem
END
}

# Common JVM flags: classpath, logging, a small heap (broker and workers share the box).
jvm_flags() {
    local dir
    dir=$(node_dir "$1")
    local default_heap="-Xms128m -Xmx512m"
    ((BROKERS > 1)) && default_heap="-Xms64m -Xmx256m"
    # shellcheck disable=SC2206  # the heap options are meant to be split into words
    local heap=(${LIMAML_KAFKA_HEAP_OPTS:-$default_heap})
    printf '%s\n' "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExitOnOutOfMemoryError \
        -Djava.awt.headless=true \
        "-Dkafka.logs.dir=$dir/logs" "-Dlog4j2.configurationFile=$dir/log4j2.properties" \
        -cp "$LIBS_DIR/*"
}

# Format the node's storage once: writes meta.properties and the bootstrap metadata
# (kafka-storage.sh format, i.e. kafka.tools.StorageTool). Skipped if already formatted.
format_node() {
    local id=$1 dir
    dir=$(node_dir "$id")
    [[ -f $dir/data/meta.properties ]] && return 0
    local flags
    mapfile -t flags < <(jvm_flags "$id")
    local users=() user
    if [[ $SECURITY == sasl_ssl ]]; then
        for user in admin limaml; do
            users+=(--add-scram "SCRAM-SHA-512=[name=$user,password=$(<"$SECRETS_DIR/$user.password")]")
        done
    fi
    "$JAVA" "${flags[@]}" kafka.tools.StorageTool format \
        --cluster-id "$CLUSTER_ID" --config "$dir/server.properties" "${users[@]}" \
        >"$dir/logs/format.log" 2>&1 \
        || { cat "$dir/logs/format.log" >&2; die "formatting the storage of node $id failed"; }
}

launch_node() {
    local id=$1 dir flags
    dir=$(node_dir "$id")
    mapfile -t flags < <(jvm_flags "$id")
    rm -f "$dir/kafka.pid"
    # setsid: the broker gets its own session, so it outlives this script and a Ctrl-C
    # in the terminal that started it. stdin/stdout/stderr are detached from the caller
    # (a caller capturing our output must not wait on the broker). The inner shell writes
    # its own pid, which exec hands over to java.
    # shellcheck disable=SC2016  # $$ and $1 are for the inner shell
    setsid bash -c 'echo $$ >"$1/kafka.pid"; shift; exec "$@"' _ "$dir" \
        "$JAVA" "${flags[@]}" kafka.Kafka "$dir/server.properties" \
        </dev/null >>"$dir/logs/stdout.log" 2>&1 9>&- &
    local i
    for ((i = 0; i < 50; i++)); do [[ -s $dir/kafka.pid ]] && return 0; sleep 0.1; done
    die "node $id did not start (no pid file)"
}

# Wait until every node answers on its client port, failing early if one dies.
wait_ready() {
    local deadline=$((SECONDS + ${LIMAML_KAFKA_START_TIMEOUT:-60})) id pending
    while :; do
        pending=0
        for ((id = 1; id <= BROKERS; id++)); do
            if [[ -z $(node_pid "$id") ]]; then
                show_logs "$id"
                return 1
            fi
            broker_answers "$(broker_port "$id")" || pending=1
        done
        ((pending == 0)) && return 0
        if ((SECONDS >= deadline)); then
            log "brokers not ready after ${LIMAML_KAFKA_START_TIMEOUT:-60} s"
            for ((id = 1; id <= BROKERS; id++)); do show_logs "$id" 20; done
            return 1
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------------
# Options shared by start/stop/status; the cluster state remembered in cluster.env.
# ---------------------------------------------------------------------------------------
parse_opts() {
    DATA_DIR="${LIMAML_KAFKA_DIR:-$PWD/.cache/kafka}"
    OPT_PORT="${LIMAML_KAFKA_PORT:-}"
    OPT_BROKERS=""
    OPT_NODE=""
    OPT_SECURITY="${LIMAML_KAFKA_SECURITY:-}"
    while (($#)); do
        case $1 in
            --data-dir) DATA_DIR=${2:?--data-dir needs a value}; shift 2 ;;
            --data-dir=*) DATA_DIR=${1#*=}; shift ;;
            --port) OPT_PORT=${2:?--port needs a value}; shift 2 ;;
            --port=*) OPT_PORT=${1#*=}; shift ;;
            --brokers) OPT_BROKERS=${2:?--brokers needs a value}; shift 2 ;;
            --brokers=*) OPT_BROKERS=${1#*=}; shift ;;
            --node) OPT_NODE=${2:?--node needs a value}; shift 2 ;;
            --node=*) OPT_NODE=${1#*=}; shift ;;
            --secure) OPT_SECURITY=sasl_ssl; shift ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown option $1 (see $0 --help)" ;;
        esac
    done
    [[ -z $OPT_PORT || $OPT_PORT =~ ^[0-9]+$ ]] || die "--port must be a number"
    [[ -z $OPT_BROKERS || $OPT_BROKERS =~ ^[1-9]$ ]] || die "--brokers must be 1..9"
    [[ -z $OPT_NODE || $OPT_NODE =~ ^[1-9]$ ]] || die "--node must be 1..9"
    [[ -z $OPT_SECURITY || $OPT_SECURITY == plaintext || $OPT_SECURITY == sasl_ssl ]] \
        || die "LIMAML_KAFKA_SECURITY must be plaintext or sasl_ssl, got $OPT_SECURITY"
    resolve_data_dir
}

# The data dir as a canonical absolute path: it is part of the broker's command line,
# which node_pid matches, so ./x, x/ and a symlink to x must all come out the same.
resolve_data_dir() {
    if [[ -d $DATA_DIR ]]; then
        DATA_DIR=$(cd "$DATA_DIR" && pwd -P)
    elif [[ $DATA_DIR != /* ]]; then
        DATA_DIR="$PWD/$DATA_DIR"
    fi
    STATE_FILE="$DATA_DIR/cluster.env"
    TLS_DIR="$DATA_DIR/tls"
    SECRETS_DIR="$DATA_DIR/secrets"
}

# Defaults, overridden by what this data dir was last started with (cluster.env),
# overridden by explicit options. Call it holding the data dir lock where it matters.
load_state() {
    CLUSTER_ID="" PORT=9092 BROKERS=1 SECURITY=plaintext
    local key value
    if [[ -f $STATE_FILE ]]; then
        while IFS='=' read -r key value; do
            case $key in
                CLUSTER_ID) CLUSTER_ID=$value ;;
                PORT) PORT=$value ;;
                BROKERS) BROKERS=$value ;;
                SECURITY) SECURITY=$value ;;
            esac
        done <"$STATE_FILE"
    fi
    SAVED_PORT=$PORT
    FORMATTED_BROKERS=$BROKERS
    if [[ -f $STATE_FILE && -n $OPT_SECURITY && $OPT_SECURITY != "$SECURITY" ]]; then
        die "$DATA_DIR holds a $SECURITY cluster; use another --data-dir (or delete it) for $OPT_SECURITY"
    fi
    SECURITY=${OPT_SECURITY:-$SECURITY}
    PORT=${OPT_PORT:-$PORT}
    BROKERS=${OPT_BROKERS:-$BROKERS}
    ((PORT > 0 && PORT + 2 * BROKERS < 65536)) || die "port $PORT out of range"
}

save_state() {
    cat >"$STATE_FILE" <<EOF
# Written by deploy/kafka.sh start.
KAFKA_VERSION=$KAFKA_VERSION
CLUSTER_ID=$CLUSTER_ID
PORT=$PORT
BROKERS=$BROKERS
SECURITY=$SECURITY
EOF
}

# A KRaft cluster id: 16 random bytes, base64url without padding (what
# `kafka-storage.sh random-uuid` prints), never starting with '-'.
new_cluster_id() {
    local id
    while :; do
        id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
        [[ $id != -* ]] && { echo "$id"; return; }
    done
}

# ---------------------------------------------------------------------------------------
# start / stop / status
# ---------------------------------------------------------------------------------------
cmd_start() {
    parse_opts "$@"
    mkdir -p "$DATA_DIR"
    resolve_data_dir
    take_lock "$DATA_DIR/.lock"
    load_state

    local id running=() stopped=()
    for ((id = 1; id <= FORMATTED_BROKERS; id++)); do
        if [[ -n $(node_pid "$id") ]]; then running+=("$id"); fi
    done
    if ((${#running[@]})); then
        # Already (partly) running on this data dir: the layout cannot change under it.
        [[ $PORT == "$SAVED_PORT" && $BROKERS == "$FORMATTED_BROKERS" ]] \
            || die "already running in $DATA_DIR on port $SAVED_PORT with $FORMATTED_BROKERS broker(s); stop it first"
    elif [[ -f $STATE_FILE && $BROKERS != "$FORMATTED_BROKERS" ]]; then
        die "$DATA_DIR holds a $FORMATTED_BROKERS-broker cluster; use another --data-dir (or delete it) for $BROKERS"
    fi
    for ((id = 1; id <= BROKERS; id++)); do
        if [[ -z $(node_pid "$id") ]]; then stopped+=("$id"); fi
    done

    if ((${#stopped[@]})); then
        # In a subshell: its lock (fd 9) and cleanup trap end with it.
        [[ -f $FETCH_MARKER ]] || (cmd_fetch)
        "$JAVA" -version >/dev/null 2>&1 || die "no java found (Kafka $KAFKA_VERSION needs Java 17+)"
        for id in "${stopped[@]}"; do
            port_in_use "$(broker_port "$id")" && die "port $(broker_port "$id") is in use by another process"
            port_in_use "$(controller_port "$id")" && die "port $(controller_port "$id") is in use by another process"
        done
        [[ -n $CLUSTER_ID ]] || CLUSTER_ID=$(new_cluster_id)
        save_state
        if [[ $SECURITY == sasl_ssl ]]; then make_security_files; fi
        for id in "${stopped[@]}"; do
            write_node_config "$id"
            format_node "$id"
        done
        log "starting Kafka $KAFKA_VERSION: node(s) ${stopped[*]} in $DATA_DIR"
        for id in "${stopped[@]}"; do launch_node "$id"; done
    fi

    local t0=$SECONDS
    if ! wait_ready; then
        # Leave nothing half-started behind.
        for id in "${stopped[@]}"; do stop_node "$id" 10 || true; done
        die "Kafka did not become ready; logs are in $DATA_DIR/node-*/logs/"
    fi
    ((${#stopped[@]})) && log "ready after $((SECONDS - t0)) s; logs in $DATA_DIR/node-*/logs/server.log"
    if [[ $SECURITY == sasl_ssl ]]; then
        log "secured (SASL_SSL, SCRAM-SHA-512): client settings in $DATA_DIR/client.env, CA $TLS_DIR/ca.pem"
    fi
    echo "LIMAML_KAFKA_BOOTSTRAP=$(bootstrap_servers)"
}

# SIGTERM (a clean, controlled shutdown), then SIGKILL after the deadline.
stop_node() {
    local id=$1 timeout=$2 pid
    pid=$(node_pid "$id")
    [[ -n $pid ]] || return 0
    stop_pid "$pid" "$timeout" "node $id"
    rm -f "$(node_dir "$id")/kafka.pid"
}

cmd_stop() {
    parse_opts "$@"
    [[ -f $STATE_FILE ]] || { log "not running (nothing started in $DATA_DIR)"; return 0; }
    take_lock "$DATA_DIR/.lock"
    load_state
    local timeout=${LIMAML_KAFKA_STOP_TIMEOUT:-30} id ids=() pids=()
    if [[ -n $OPT_NODE ]]; then ids=("$OPT_NODE"); else
        for ((id = 1; id <= BROKERS; id++)); do ids+=("$id"); done
    fi
    for id in "${ids[@]}"; do
        [[ -n $(node_pid "$id") ]] || continue
        # Nodes of a quorum are stopped together, so none waits on the others' shutdown.
        stop_node "$id" "$timeout" &
        pids+=($!)
        log "stopping node $id"
    done
    ((${#pids[@]})) || { log "not running ($DATA_DIR)"; return 0; }
    wait "${pids[@]}"
    log "stopped"
}

# Exit 0: every node running and answering; 1: some down or not answering; 3: stopped.
cmd_status() {
    parse_opts "$@"
    load_state
    [[ -f $STATE_FILE ]] || { echo "stopped (nothing started in $DATA_DIR)"; exit 3; }
    local id pid up=0 ready=0
    for ((id = 1; id <= BROKERS; id++)); do
        pid=$(node_pid "$id")
        if [[ -z $pid ]]; then
            echo "node $id: stopped"
        elif broker_answers "$(broker_port "$id")"; then
            echo "node $id: running, pid $pid, $HOST:$(broker_port "$id")"
            up=$((up + 1)) ready=$((ready + 1))
        else
            echo "node $id: running, pid $pid, $HOST:$(broker_port "$id") not answering yet"
            up=$((up + 1))
        fi
    done
    echo "logs: $DATA_DIR/node-*/logs/server.log"
    ((up == 0)) && { echo "stopped"; exit 3; }
    echo "LIMAML_KAFKA_BOOTSTRAP=$(bootstrap_servers)"
    if ((ready == BROKERS)); then echo "running"; else echo "degraded"; exit 1; fi
}

main "$@"
