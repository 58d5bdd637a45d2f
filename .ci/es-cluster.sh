#!/usr/bin/env bash
# A throw-away 3-node Elasticsearch cluster for the scale-out tests: the same Maven Central
# distribution as .ci/elasticsearch.sh (fetched by it), three nodes on 127.0.0.1 that find
# each other through discovery.seed_hosts, stopped and wiped afterwards.
#
#   .ci/es-cluster.sh start         fetch if needed, start the nodes, wait for green, print URLs
#   .ci/es-cluster.sh stop          stop every node (by pid) and delete data and logs
#   .ci/es-cluster.sh urls          print the nodes' URLs, comma-separated
#   .ci/es-cluster.sh pid N         print node N's pid (exit 1 when it does not run)
#   .ci/es-cluster.sh start-node N  start node N again on its data (after a kill), wait until
#                                   the cluster has every node again
#   .ci/es-cluster.sh status        one line per node, exit 1 when one does not run
#
# Node N (1..3) is named shopsearch-<name>-N, listens for HTTP on HTTP_BASE+N-1 and for the
# other nodes on TRANSPORT_BASE+N-1, and keeps its pid in <run dir>/node-N/pid.
#
# Environment (all optional):
#   SHOPSEARCH_ES_CLUSTER_NAME       instance name (default "cluster"): run dir and node names
#   SHOPSEARCH_ES_CLUSTER_HTTP       first HTTP port (default 9211)
#   SHOPSEARCH_ES_CLUSTER_TRANSPORT  first transport port (default 9311)
#   SHOPSEARCH_ES_CLUSTER_HEAP       JVM heap of each node (default 256m)
#   SHOPSEARCH_ES_TIMEOUT            seconds to wait for green (default 240)
#   SHOPSEARCH_ES_VERSION, SHOPSEARCH_CACHE, ES_JAVA_HOME, SHOPSEARCH_ES_USER: as in
#                                    .ci/elasticsearch.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ES_VERSION="${SHOPSEARCH_ES_VERSION:-8.19.21}"
ES_HOME="${SHOPSEARCH_CACHE:-$HOME/.cache/shopsearch}/elasticsearch/elasticsearch-$ES_VERSION"
NAME="${SHOPSEARCH_ES_CLUSTER_NAME:-cluster}"
RUN_DIR="${TMPDIR:-/tmp}/shopsearch-es-$(id -u)-$NAME"
HTTP_BASE="${SHOPSEARCH_ES_CLUSTER_HTTP:-9211}"
TRANSPORT_BASE="${SHOPSEARCH_ES_CLUSTER_TRANSPORT:-9311}"
HEAP="${SHOPSEARCH_ES_CLUSTER_HEAP:-256m}"
TIMEOUT="${SHOPSEARCH_ES_TIMEOUT:-240}"
NODES=(1 2 3)

log() { echo "es-cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_port() { echo $((HTTP_BASE + $1 - 1)); }
transport_port() { echo $((TRANSPORT_BASE + $1 - 1)); }
node_name() { echo "shopsearch-$NAME-$1"; }
node_dir() { echo "$RUN_DIR/node-$1"; }

check_node() {
    [[ "$1" =~ ^[123]$ ]] || die "node must be 1, 2 or 3 (got '${1:-}')"
}

node_pid() { # N -> the pid of node N when it runs, exit 1 otherwise
    local file pid
    file="$(node_dir "$1")/pid"
    [[ -f "$file" ]] || return 1
    pid=$(cat "$file" 2>/dev/null || true)
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

urls() {
    local n out=()
    for n in "${NODES[@]}"; do out+=("http://127.0.0.1:$(http_port "$n")"); done
    (IFS=,; echo "${out[*]}")
}

java_home() {
    if [[ -n "${ES_JAVA_HOME:-}" ]]; then echo "$ES_JAVA_HOME"; return 0; fi
    local jdk
    jdk=$(ls -d /usr/lib/jvm/temurin-*-jdk* 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n "$jdk" && -x "$jdk/bin/java" ]] \
        || die "no Temurin JDK under /usr/lib/jvm; install one (Java 21+) or set ES_JAVA_HOME"
    echo "$jdk"
}

# Elasticsearch refuses to run as root (CI runs as root): then the nodes run as an
# unprivileged user from a hard-linked copy of the distribution (the cache under /root is
# not readable to it), shared by the three nodes.
RUNAS=()
es_home() {
    if [[ $(id -u) != 0 ]]; then echo "$ES_HOME"; return 0; fi
    echo "$RUN_DIR/home"
}
setup_runas() {
    [[ $(id -u) == 0 ]] || return 0
    local user="${SHOPSEARCH_ES_USER:-nobody}" group
    id "$user" >/dev/null 2>&1 || die "user '$user' does not exist; set SHOPSEARCH_ES_USER"
    group=$(id -gn "$user")
    RUNAS=(setpriv --reuid="$user" --regid="$group" --clear-groups)
    ES_USER_GROUP="$user:$group"
}

print_logs() { # N
    local dir
    dir=$(node_dir "$1")
    log "---- node $1: last lines of its output and log ($dir) ----"
    tail -n 30 "$dir/startup.out" >&2 2>/dev/null || true
    tail -n 40 "$dir/logs/shopsearch-cluster-test.log" >&2 2>/dev/null || true
}

launch() { # N: start node N on its (possibly existing) data dir; returns when it forked
    local n="$1" dir seeds masters jdk
    dir=$(node_dir "$n")
    mkdir -p "$dir/data" "$dir/logs" "$dir/tmp"
    [[ -d "$dir/config" ]] || cp -r "$ES_HOME/config" "$dir/config"
    rm -f "$dir/pid"
    if [[ -n "${ES_USER_GROUP:-}" ]]; then
        chown -R "$ES_USER_GROUP" "$dir"
    fi
    seeds=$(for m in "${NODES[@]}"; do echo -n "127.0.0.1:$(transport_port "$m"),"; done)
    masters=$(for m in "${NODES[@]}"; do echo -n "$(node_name "$m"),"; done)
    jdk=$(java_home)
    local settings=()
    # This distribution ships x-pack security as a module; a test cluster runs without it.
    if [[ -d "$ES_HOME/modules/x-pack-security" ]]; then
        settings+=(-E xpack.security.enabled=false)
    fi
    (
        cd "$dir"
        ES_JAVA_HOME="$jdk" ES_PATH_CONF="$dir/config" ES_TMPDIR="$dir/tmp" \
            CLI_JAVA_OPTS="-Djava.io.tmpdir=$dir/tmp -XX:-UsePerfData" \
            ES_JAVA_OPTS="-Xms$HEAP -Xmx$HEAP -XX:-UsePerfData ${SHOPSEARCH_ES_JAVA_OPTS:-}" \
            "${RUNAS[@]}" "$(es_home)/bin/elasticsearch" -d -p "$dir/pid" \
            -E cluster.name=shopsearch-cluster-test \
            -E node.name="$(node_name "$n")" \
            -E network.host=127.0.0.1 \
            -E http.port="$(http_port "$n")" \
            -E transport.port="$(transport_port "$n")" \
            -E discovery.seed_hosts="${seeds%,}" \
            -E cluster.initial_master_nodes="${masters%,}" \
            -E path.data="$dir/data" \
            -E path.logs="$dir/logs" \
            -E cluster.routing.allocation.disk.threshold_enabled=false \
            -E action.auto_create_index=false \
            "${settings[@]}"
    ) >"$dir/startup.out" 2>&1
}

health() { # URL QUERY -> the status word, empty when no answer
    curl -s -m 10 "$1/_cluster/health?$2" 2>/dev/null | grep -o '"status":"[a-z]*"' \
        | cut -d'"' -f4 || true
}

wait_for() { # WANTED_STATUS: wait until a live node reports 3 nodes and that status
    local want="$1" deadline=$((SECONDS + TIMEOUT)) n status
    while ((SECONDS < deadline)); do
        for n in "${NODES[@]}"; do
            node_pid "$n" >/dev/null || continue
            status=$(health "http://127.0.0.1:$(http_port "$n")" \
                "wait_for_nodes=3&wait_for_status=$want&timeout=5s")
            if [[ "$status" == green || ("$want" == yellow && "$status" == yellow) ]]; then
                echo "$status"
                return 0
            fi
            break
        done
        sleep 1
    done
    return 1
}

cmd_start() {
    local n running=0
    for n in "${NODES[@]}"; do
        if node_pid "$n" >/dev/null; then running=$((running + 1)); fi
    done
    if ((running == ${#NODES[@]})); then
        log "already running at $(urls)"
        urls
        return 0
    fi
    ((running == 0)) || die "only $running of ${#NODES[@]} nodes run; run stop first"
    for n in "${NODES[@]}"; do
        for port in "$(http_port "$n")" "$(transport_port "$n")"; do
            ! port_in_use "$port" || die "port $port is in use; stop what listens there or set" \
                "SHOPSEARCH_ES_CLUSTER_HTTP/SHOPSEARCH_ES_CLUSTER_TRANSPORT"
        done
    done
    "$HERE/elasticsearch.sh" fetch
    rm -rf "$RUN_DIR"
    mkdir -p "$RUN_DIR"
    setup_runas
    if [[ -n "${ES_USER_GROUP:-}" ]]; then
        cp -al "$ES_HOME" "$RUN_DIR/home" 2>/dev/null \
            || { rm -rf "$RUN_DIR/home"; cp -a "$ES_HOME" "$RUN_DIR/home"; }
        chmod -R a+rX "$RUN_DIR/home"
        chown "$ES_USER_GROUP" "$RUN_DIR"
        log "running as root: the nodes run as user '${ES_USER_GROUP%%:*}'"
    fi
    log "starting 3 nodes of Elasticsearch $ES_VERSION (heap $HEAP each, dir $RUN_DIR)"
    local pids=() failed=0
    for n in "${NODES[@]}"; do
        launch "$n" &
        pids+=($!)
    done
    for n in "${NODES[@]}"; do
        wait "${pids[$((n - 1))]}" || { print_logs "$n"; failed=1; }
    done
    ((failed == 0)) || { cmd_stop || true; die "a node did not start"; }
    local status
    if ! status=$(wait_for green); then
        for n in "${NODES[@]}"; do print_logs "$n"; done
        cmd_stop || true
        die "the cluster was not green with 3 nodes after ${TIMEOUT}s (raise SHOPSEARCH_ES_TIMEOUT?)"
    fi
    log "ready ($status) at $(urls) (pids $(for n in "${NODES[@]}"; do echo -n "$(node_pid "$n") "; done))"
    urls
}

cmd_start_node() {
    local n="$1"
    check_node "$n"
    [[ -d "$RUN_DIR/node-$n" ]] || die "no cluster in $RUN_DIR; run start first"
    if pid=$(node_pid "$n"); then
        log "node $n already runs (pid $pid)"
        return 0
    fi
    setup_runas
    log "starting node $n again on its data"
    launch "$n" || { print_logs "$n"; die "node $n did not start"; }
    local status
    status=$(wait_for yellow) || { print_logs "$n"; die "node $n did not rejoin in ${TIMEOUT}s"; }
    log "node $n back (pid $(node_pid "$n")), cluster $status"
}

cmd_stop() {
    local n pid stopped=()
    for n in "${NODES[@]}"; do
        if pid=$(node_pid "$n"); then
            kill -TERM "$pid"
            stopped+=("$pid")
        fi
    done
    for pid in "${stopped[@]}"; do
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid ignored SIGTERM for 30 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    log "stopped ${#stopped[@]} node(s)${stopped[*]:+ (pids ${stopped[*]})}"
    rm -rf "$RUN_DIR"
}

cmd_status() {
    local n pid missing=0
    for n in "${NODES[@]}"; do
        if pid=$(node_pid "$n"); then
            echo "node $n: running (pid $pid) at http://127.0.0.1:$(http_port "$n")"
        else
            echo "node $n: not running"
            missing=1
        fi
    done
    return "$missing"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    urls) urls ;;
    pid) check_node "${2:-}"; node_pid "$2" ;;
    start-node) cmd_start_node "${2:-}" ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|urls|pid N|start-node N|status" >&2
        exit 2
        ;;
esac
