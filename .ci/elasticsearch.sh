#!/usr/bin/env bash
# A throw-away Elasticsearch node for the tests: fetched from Maven Central, started on
# 127.0.0.1, stopped and wiped afterwards. No hand install, no root, no Docker.
#
#   .ci/elasticsearch.sh fetch    download (Maven) and unpack once into the cache
#   .ci/elasticsearch.sh start    fetch if needed, start one node, wait for green/yellow
#   .ci/elasticsearch.sh stop     stop the node (by pid) and delete its data and logs
#   .ci/elasticsearch.sh url      print the node's URL (e.g. http://127.0.0.1:9201)
#   .ci/elasticsearch.sh status   print whether the node runs, exit 1 when it does not
#
# Environment (all optional):
#   SHOPSEARCH_ES_VERSION  artifact version (default below: the newest Maven Central serves,
#                          checked when this was written; 9.x is not published there)
#   SHOPSEARCH_CACHE       cache root, reused between runs (default ~/.cache/shopsearch)
#   SHOPSEARCH_ES_PORT     HTTP port; "auto" picks a free one (default 9201, or a free one
#                          when 9201 is taken by something else)
#   SHOPSEARCH_ES_NAME     instance name, so several nodes can run side by side (default "default")
#   SHOPSEARCH_ES_HEAP     JVM heap (default 512m)
#   SHOPSEARCH_ES_TIMEOUT  seconds to wait for health (default 180)
#   ES_JAVA_HOME           JDK to run on (default: the newest Temurin JDK under /usr/lib/jvm)
set -euo pipefail

ES_GROUP="org.elasticsearch.distribution.integ-test-zip"
ES_ARTIFACT="elasticsearch"
ES_VERSION="${SHOPSEARCH_ES_VERSION:-8.19.21}"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

CACHE_DIR="${SHOPSEARCH_CACHE:-$HOME/.cache/shopsearch}/elasticsearch"
ES_HOME="$CACHE_DIR/elasticsearch-$ES_VERSION"
NAME="${SHOPSEARCH_ES_NAME:-default}"
RUN_DIR="${TMPDIR:-/tmp}/shopsearch-es-$(id -u)-$NAME"
HEAP="${SHOPSEARCH_ES_HEAP:-512m}"
TIMEOUT="${SHOPSEARCH_ES_TIMEOUT:-180}"
DEFAULT_PORT=9201

log() { echo "elasticsearch.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

port_in_use() { # port -> 0 when something listens on 127.0.0.1:port
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
    local p
    for p in $(seq 9202 9299); do
        if ! port_in_use "$p"; then echo "$p"; return 0; fi
    done
    die "no free port in 9202-9299; set SHOPSEARCH_ES_PORT"
}

java_home() {
    if [[ -n "${ES_JAVA_HOME:-}" ]]; then echo "$ES_JAVA_HOME"; return 0; fi
    local jdk
    jdk=$(ls -d /usr/lib/jvm/temurin-*-jdk* 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n "$jdk" && -x "$jdk/bin/java" ]] \
        || die "no Temurin JDK under /usr/lib/jvm; install one (Java 21+) or set ES_JAVA_HOME"
    echo "$jdk"
}

node_pid() { # prints the pid of this instance's running node, exit 1 when none runs
    [[ -f "$RUN_DIR/pid" ]] || return 1
    local pid
    pid=$(cat "$RUN_DIR/pid" 2>/dev/null || true)
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

node_url() {
    local port="$DEFAULT_PORT"
    if [[ -f "$RUN_DIR/port" ]]; then
        port=$(cat "$RUN_DIR/port")
    elif [[ -n "${SHOPSEARCH_ES_PORT:-}" && "${SHOPSEARCH_ES_PORT}" != auto ]]; then
        port="$SHOPSEARCH_ES_PORT"
    fi
    echo "http://127.0.0.1:$port"
}

cmd_fetch() {
    if [[ -x "$ES_HOME/bin/elasticsearch" ]]; then
        log "Elasticsearch $ES_VERSION already in $ES_HOME"
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found; install Maven (apt-get install maven)"
    command -v unzip >/dev/null || die "unzip not found; install it (apt-get install unzip)"
    mkdir -p "$CACHE_DIR"
    local zip="$CACHE_DIR/$ES_ARTIFACT-$ES_VERSION.zip"
    if [[ ! -s "$zip" ]]; then
        log "downloading $ES_GROUP:$ES_ARTIFACT:$ES_VERSION:zip from Maven Central"
        # --strict-checksums: a corrupt download fails here, not at start-up.
        if ! mvn -B --no-transfer-progress -Dstyle.color=never --strict-checksums \
            "$DEP_PLUGIN:copy" -Dartifact="$ES_GROUP:$ES_ARTIFACT:$ES_VERSION:zip" \
            -DoutputDirectory="$CACHE_DIR" -Dmdep.overWriteReleases=true \
            >"$CACHE_DIR/mvn.log" 2>&1; then
            tail -n 30 "$CACHE_DIR/mvn.log" >&2
            die "Maven could not fetch $ES_GROUP:$ES_ARTIFACT:$ES_VERSION:zip" \
                "(is Maven Central reachable? is SHOPSEARCH_ES_VERSION=$ES_VERSION published?)"
        fi
    fi
    # Unpack beside the target and rename, so an interrupted unzip never looks complete.
    local tmp
    tmp=$(mktemp -d "$CACHE_DIR/.unpack.XXXXXX")
    unzip -q "$zip" -d "$tmp" || { rm -rf "$tmp" "$zip"; die "corrupt archive $zip (deleted; re-run fetch)"; }
    [[ -x "$tmp/elasticsearch-$ES_VERSION/bin/elasticsearch" ]] \
        || { rm -rf "$tmp"; die "$zip does not hold elasticsearch-$ES_VERSION/bin/elasticsearch"; }
    rm -rf "$ES_HOME"
    mv "$tmp/elasticsearch-$ES_VERSION" "$ES_HOME"
    rm -rf "$tmp" "$zip" "$CACHE_DIR/mvn.log"  # Maven keeps its own copy in ~/.m2
    log "Elasticsearch $ES_VERSION unpacked in $ES_HOME"
}

print_logs() {
    log "---- last lines of the node's output and log ($RUN_DIR) ----"
    tail -n 40 "$RUN_DIR/startup.out" >&2 2>/dev/null || true
    tail -n 60 "$RUN_DIR/logs/shopsearch-test.log" >&2 2>/dev/null || true
}

cmd_start() {
    if pid=$(node_pid); then
        log "already running (pid $pid) at $(node_url)"
        return 0
    fi
    cmd_fetch
    local port="${SHOPSEARCH_ES_PORT:-}"
    if [[ -z "$port" ]]; then
        port=$DEFAULT_PORT
        if port_in_use "$port"; then
            port=$(free_port)
            log "port $DEFAULT_PORT is taken by another process; using $port"
        fi
    elif [[ "$port" == auto ]]; then
        port=$(free_port)
    elif port_in_use "$port"; then
        die "port $port is already in use; stop what listens there or set SHOPSEARCH_ES_PORT"
    fi

    rm -rf "$RUN_DIR"
    mkdir -p "$RUN_DIR/data" "$RUN_DIR/logs" "$RUN_DIR/tmp"
    # A private copy of config/: the node writes its keystore there, the cache stays clean.
    cp -r "$ES_HOME/config" "$RUN_DIR/config"
    echo "$port" >"$RUN_DIR/port"

    local home="$ES_HOME" runas=() settings=()
    if [[ $(id -u) == 0 ]]; then
        # Elasticsearch refuses to run as root (CI runs as root): drop to an unprivileged
        # user. It cannot reach a cache under /root (mode 700), so it runs from a
        # hard-linked copy of the distribution in the run dir (a real copy across devices).
        local user="${SHOPSEARCH_ES_USER:-nobody}" group
        id "$user" >/dev/null 2>&1 || die "user '$user' does not exist; set SHOPSEARCH_ES_USER"
        group=$(id -gn "$user")
        home="$RUN_DIR/home"
        cp -al "$ES_HOME" "$home" 2>/dev/null || { rm -rf "$home"; cp -a "$ES_HOME" "$home"; }
        chmod -R a+rX "$home"
        chown -R "$user:$group" "$RUN_DIR/data" "$RUN_DIR/logs" "$RUN_DIR/config" "$RUN_DIR/tmp"
        chown "$user:$group" "$RUN_DIR"
        runas=(setpriv --reuid="$user" --regid="$group" --clear-groups)
        log "running as root: the node runs as user '$user'"
    fi
    # This distribution ships x-pack security as a module; a test node runs without it.
    if [[ -d "$ES_HOME/modules/x-pack-security" ]]; then
        settings+=(-E xpack.security.enabled=false)
    fi

    local jdk
    jdk=$(java_home)
    log "starting Elasticsearch $ES_VERSION on 127.0.0.1:$port (java $jdk, heap $HEAP, dir $RUN_DIR)"
    # Every temporary file of the launcher and the node goes in the run dir, which stop deletes.
    (
        cd "$RUN_DIR"
        ES_JAVA_HOME="$jdk" ES_PATH_CONF="$RUN_DIR/config" ES_TMPDIR="$RUN_DIR/tmp" \
            CLI_JAVA_OPTS="-Djava.io.tmpdir=$RUN_DIR/tmp -XX:-UsePerfData" \
            ES_JAVA_OPTS="-Xms$HEAP -Xmx$HEAP -XX:-UsePerfData ${SHOPSEARCH_ES_JAVA_OPTS:-}" \
            "${runas[@]}" "$home/bin/elasticsearch" -d -p "$RUN_DIR/pid" \
            -E cluster.name=shopsearch-test \
            -E node.name="shopsearch-$NAME" \
            -E discovery.type=single-node \
            -E network.host=127.0.0.1 \
            -E http.port="$port" \
            -E path.data="$RUN_DIR/data" \
            -E path.logs="$RUN_DIR/logs" \
            -E cluster.routing.allocation.disk.threshold_enabled=false \
            -E action.auto_create_index=false \
            "${settings[@]}"
    ) >"$RUN_DIR/startup.out" 2>&1 || { print_logs; die "the node did not start"; }

    local url="http://127.0.0.1:$port" deadline=$((SECONDS + TIMEOUT)) status=""
    while ((SECONDS < deadline)); do
        if ! node_pid >/dev/null; then
            print_logs
            die "the node exited during start-up"
        fi
        status=$(curl -s -m 5 "$url/_cluster/health?wait_for_status=yellow&timeout=2s" 2>/dev/null \
            | grep -o '"status":"[a-z]*"' || true)
        case "$status" in
            *green* | *yellow*)
                log "ready at $url ($status, pid $(node_pid))"
                return 0
                ;;
        esac
        sleep 1
    done
    print_logs
    cmd_stop || true
    die "no green/yellow health at $url after ${TIMEOUT}s (raise SHOPSEARCH_ES_TIMEOUT?)"
}

cmd_stop() {
    local pid
    if pid=$(node_pid); then
        kill -TERM "$pid"
        local i
        for i in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid ignored SIGTERM for 30 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
        fi
        log "stopped (pid $pid)"
    else
        log "no node running for instance '$NAME'"
    fi
    rm -rf "$RUN_DIR"
}

cmd_status() {
    if pid=$(node_pid); then
        echo "running (pid $pid) at $(node_url)"
    else
        echo "not running"
        return 1
    fi
}

case "${1:-}" in
    fetch) cmd_fetch ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    url) node_url ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 fetch|start|stop|url|status" >&2
        exit 2
        ;;
esac
