#!/usr/bin/env bash
# Runs the same tern-bench scenarios against tern and Mosquitto on loopback, one broker after the
# other for each scenario, and prints Markdown tables: absolute figures and the ratio
# tern/mosquitto, then tern with its durable store on against tern with it off. Every JSON line
# and broker log is kept in $OUT.
#
#   benches/compare.sh                          # 10 s per scenario, ~5 minutes on 2 cores
#   DURATION=3 benches/compare.sh               # shorter
#   TERN_BIN=/path/to/tern benches/compare.sh   # measure a prebuilt tern instead of building
#   RUMQTTD=/path/to/rumqttd benches/compare.sh # also against rumqttd (a third table)
#   RUMQTTD=install benches/compare.sh          # the same, building rumqttd 0.20 first
#
# Settings (environment): DURATION (s per publishing scenario, 10), CLIENTS (the N of fan-in,
# fan-out and pairs, 8), PAYLOAD (bytes, 64), INFLIGHT (QoS 1 publisher window, 100),
# CONNECTIONS (connect storm, 5000), IDLE_CONNECTIONS (idle memory, 50000; 0 skips it),
# RETAINED (retained topics, 100000), LATENCY_RATE (msg/s,
# 1000), LATENCY_RUNS (alternating latency rounds, 3), THREADS (generator threads, default every
# core), TERN_PORT/MOSQ_PORT/RUMQ_PORT/RELAY_PORT (18831/18832/18833/18834),
# OUT (target/bench), STORE_TABLE (0 skips the second table), DURABLE_INFLIGHT (the window of the
# second offline row, 1000).
#
# Equivalent settings: both brokers listen on 127.0.0.1 with anonymous access, keep nothing on
# disk (Mosquitto: persistence false; tern: store.enabled = false where tern has a store), cap
# unacknowledged QoS 1/2 messages towards a client at 1024 (tern's mqtt.max_inflight, Mosquitto's
# max_inflight_messages) and queue up to 1 GiB per client (tern's session.max_queued_bytes;
# Mosquitto's max_queued_bytes, with max_queued_messages raised from 1000 to 1,000,000 so its
# message count is not the limit). Each keeps its own default for TCP_NODELAY: tern sets it and
# writes many packets per syscall; Mosquitto writes one packet per syscall and leaves Nagle on,
# which on this machine doubles its QoS 0 throughput over `set_tcp_nodelay true` at no cost in
# latency at 1k msg/s. Each scenario gets a freshly started broker. rumqttd (optional) gets
# its sample configuration's router and a v4 listener with 1024 inflight messages per client and
# 1 MiB payloads; it keeps nothing on disk. Clients connect with a keep alive of 600 s (rumqttd
# refuses 0, which MQTT allows), more than any run lasts, so none sends PINGREQ.
#
# The second table needs a tern with a durable store (`[store] enabled` and `fsync`, probed with
# `tern check-config`): store on with fsync always against store off, subscribers keeping their
# sessions (`tern-bench --persistent`) so that QoS 1 messages are stored before PUBACK.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-8}
PAYLOAD=${PAYLOAD:-64}
INFLIGHT=${INFLIGHT:-100}
CONNECTIONS=${CONNECTIONS:-5000}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-50000}
RETAINED=${RETAINED:-100000}
LATENCY_RATE=${LATENCY_RATE:-1000}
TERN_PORT=${TERN_PORT:-18831}
MOSQ_PORT=${MOSQ_PORT:-18832}
RUMQ_PORT=${RUMQ_PORT:-18833}
RELAY_PORT=${RELAY_PORT:-18834}
LATENCY_RUNS=${LATENCY_RUNS:-3}
RUMQTTD=${RUMQTTD:-}
OUT=${OUT:-target/bench}
STORE_TABLE=${STORE_TABLE:-1}
FILTER_TABLE=${FILTER_TABLE:-1}
FILTER_SUBS=${FILTER_SUBS:-1000}
OFFLINE_MESSAGES=${OFFLINE_MESSAGES:-150000}
DURABLE_INFLIGHT=${DURABLE_INFLIGHT:-1000}
THREADS_ARG=()
[[ -n "${THREADS:-}" ]] && THREADS_ARG=(--threads "$THREADS")

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

need() { # command package
    command -v "$1" >/dev/null 2>&1 && return
    echo "== installing $2" >&2
    if ! apt-get install -y "$2" >/dev/null 2>&1; then
        apt-get update >/dev/null && apt-get install -y "$2" >/dev/null
    fi
}
need mosquitto mosquitto
need jq jq

if [[ -z "${TERN_BIN:-}" ]]; then
    echo "== building tern and tern-bench (release)" >&2
    cargo build --release -p tern -p tern-bench >&2
    TERN_BIN=target/release/tern
else
    cargo build --release -p tern-bench >&2
fi
BENCH=target/release/tern-bench

if [[ "$RUMQTTD" == install ]]; then
    echo "== building rumqttd 0.20 (cargo install, a few minutes)" >&2
    cargo install rumqttd --version 0.20.0 --locked --root "$OUT/rumqttd" >&2
    RUMQTTD="$OUT/rumqttd/bin/rumqttd"
fi

# Only the MQTT listener: newer tern also serves HTTP/WebSocket on :8080 by default.
TERN_ARGS=()
if "$TERN_BIN" --help 2>/dev/null | grep -q -- '--http '; then TERN_ARGS+=(--http off); fi

# The durable store, where this tern has one: off for the first table, on for the second.
printf '[store]\nenabled = false\n' >"$OUT/tern-store-off.toml"
printf '[store]\nenabled = true\nfsync = "always"\n' >"$OUT/tern-store-on.toml"
HAS_STORE=
if "$TERN_BIN" check-config "$OUT/tern-store-on.toml" >/dev/null 2>&1 &&
    "$TERN_BIN" check-config "$OUT/tern-store-off.toml" >/dev/null 2>&1; then
    HAS_STORE=1
fi

# The storm and the idle-memory run hold thousands of sockets in the generator and in the
# broker (both inherit this limit; tern and tern-bench also raise their own): above the hard
# limit where we may (root), else up to it.
FDS=$((IDLE_CONNECTIONS + 4096))
if [[ "$(ulimit -Hn)" != unlimited && "$(ulimit -Hn)" -lt $FDS ]]; then
    ulimit -Hn "$FDS" 2>/dev/null || true
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Where the hard limit cannot be raised (no CAP_SYS_RESOURCE: this VM's is 20,000), the idle
# run holds what fits in one process.
if [[ "$(ulimit -n)" != unlimited && "$IDLE_CONNECTIONS" -gt $(($(ulimit -n) - 1024)) ]]; then
    echo "== the descriptor limit is $(ulimit -n): idle memory at $(($(ulimit -n) - 1024))" \
        "connections instead of $IDLE_CONNECTIONS" >&2
    IDLE_CONNECTIONS=$(($(ulimit -n) - 1024))
fi

BROKER_PID=
# On disk (not tmpfs), so that fsync costs what it costs.
DATA_DIR="$OUT/data"
cleanup() {
    if [[ -n "$BROKER_PID" ]]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$DATA_DIR"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "broker did not open port $1" >&2
    return 1
}

cat >"$OUT/mosquitto.conf" <<EOF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 1024
max_queued_messages 1000000
max_queued_bytes 1073741824
max_connections -1
log_dest stderr
log_type error
log_type warning
EOF

cat >"$OUT/rumqttd.toml" <<EOF
id = 0
[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$RUMQ_PORT"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 1024
    dynamic_filters = true
EOF

start_broker() { # name: tern (store off), tern-store (store on), mosquitto, rumqttd, relay
    local name=$1
    case $name in
    tern*)
        local config=()
        if [[ -n "$HAS_STORE" && $name == tern-store ]]; then
            config=(--config "$OUT/tern-store-on.toml")
        elif [[ -n "$HAS_STORE" ]]; then
            config=(--config "$OUT/tern-store-off.toml")
        fi
        rm -rf "$DATA_DIR" && mkdir -p "$DATA_DIR"
        "$TERN_BIN" "${config[@]}" --anonymous --mqtt "127.0.0.1:$TERN_PORT" \
            --data-dir "$DATA_DIR" --log-level warn "${TERN_ARGS[@]}" >>"$OUT/$name.log" 2>&1 &
        BROKER_PID=$!
        PORT=$TERN_PORT
        ;;
    mosquitto)
        mosquitto -c "$OUT/mosquitto.conf" >>"$OUT/mosquitto.log" 2>&1 &
        BROKER_PID=$!
        PORT=$MOSQ_PORT
        ;;
    relay)
        "$BENCH" relay --listen "127.0.0.1:$RELAY_PORT" >>"$OUT/relay.log" 2>&1 &
        BROKER_PID=$!
        PORT=$RELAY_PORT
        ;;
    rumqttd)
        "$RUMQTTD" -q -c "$OUT/rumqttd.toml" >>"$OUT/rumqttd.log" 2>&1 &
        BROKER_PID=$!
        PORT=$RUMQ_PORT
        ;;
    esac
    wait_port "$PORT"
}

stop_broker() {
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=
}

run() { # key broker tern-bench-args...
    local key=$1 name=$2
    shift 2
    start_broker "$name"
    echo "== $key against $name" >&2
    local line
    line=$("$BENCH" --broker "127.0.0.1:$PORT" --broker-pid "$BROKER_PID" --label "$name" \
        --payload "$PAYLOAD" --keep-alive 600 "${THREADS_ARG[@]}" "$@" 2>>"$OUT/tern-bench.log") || true
    if [[ -z "$line" ]]; then line='{"error":"tern-bench printed nothing"}'; fi
    echo "$line" | jq -c --arg key "$key" --arg name "$name" '. + {key: $key, label: $name}' >>"$RESULTS"
    echo "$line" | jq -c '{delivered_per_s, lost, acked_per_s, conn_per_s, deliver_s,
        p99_us: .latency_us.p99_us, error, errors}' >&2 || true
    stop_broker
    sleep 0.5
}

# A broker may still be delivering its backlog when the publishers stop: give it 20 s.
FLOW=(--duration "$DURATION" --inflight "$INFLIGHT" --drain 20)
# key brokers: one line per broker with key `key`, from the runs `key-1`, `key-2`, ...: the
# median of each latency figure, the sum of losses, and every run's p50/p99 (`runs`).
median_runs() {
    local key=$1 brokers=$2
    for b in ${brokers//,/ }; do
        jq -sc --arg k "$key" --arg b "$b" '
            def med: map(select(. != null)) | sort
                | if length == 0 then null
                  elif length % 2 == 1 then .[length / 2 | floor]
                  else (.[length / 2 - 1] + .[length / 2]) / 2 end;
            def lat(f): [.[] | f] as $runs
                | reduce ("p50_us", "p90_us", "p99_us", "max_us") as $p ({};
                    .[$p] = ([$runs[] | .[$p]?] | med));
            [.[] | select(.label == $b and (.key | startswith($k + "-")))] as $r
            | select($r | length > 0)
            | {key: $k, label: $b, runs_n: ($r | length), rss: $r[0].rss,
               latency_us: ($r | lat(.latency_us)), ack_latency_us: ($r | lat(.ack_latency_us)),
               lost: ([$r[] | .lost // 0] | add),
               runs: ([$r[] | "\(.latency_us.p50_us // "-")/\(.latency_us.p99_us // "-")"]
                   | join(", ")),
               error: ([$r[] | .error // empty] | first)}' "$RESULTS" >>"$RESULTS"
    done
}

scenario() { # key brokers args...: against each broker of the comma-separated list in turn
    local key=$1 brokers=$2
    shift 2
    for b in ${brokers//,/ }; do run "$key" "$b" "$@"; done
}

LOAD_BEFORE=$(uptime)
STARTED=$(date +%s)
B=tern,mosquitto
if [[ -n "$RUMQTTD" ]]; then B=tern,mosquitto,rumqttd; fi
scenario fanin-q0 $B --scenario fan-in --qos 0 --clients "$CLIENTS" "${FLOW[@]}"
scenario fanin-q1 $B --scenario fan-in --qos 1 --clients "$CLIENTS" "${FLOW[@]}"
scenario fanout-q0 $B --scenario fan-out --qos 0 --clients "$CLIENTS" "${FLOW[@]}"
scenario fanout-q1 $B --scenario fan-out --qos 1 --clients "$CLIENTS" "${FLOW[@]}"
scenario pairs-q0 $B --scenario pairs --qos 0 --clients "$CLIENTS" "${FLOW[@]}"
# Latency: LATENCY_RUNS rounds alternating the brokers (tern, mosquitto, relay, tern, ...), so
# that a noisy moment of the shared machine does not fall on one broker only; the tables show
# each run and the median. The relay (`tern-bench relay`) forwards and acknowledges and does
# nothing else: the floor of this machine, generator included.
for i in $(seq "$LATENCY_RUNS"); do
    scenario "latency-q1-$i" "$B,relay" --scenario latency --qos 1 --rate "$LATENCY_RATE" "${FLOW[@]}"
done
median_runs latency-q1 "$B,relay"
scenario storm $B --scenario connect-storm --connections "$CONNECTIONS"
# Memory per idle connection: IDLE_CONNECTIONS held open and idle while the broker's VmRSS is
# sampled (from 127.0.0.2.. so that the ephemeral ports of one address do not run out).
if [[ "$IDLE_CONNECTIONS" != 0 ]]; then
    scenario idle $B --scenario idle-memory --connections "$IDLE_CONNECTIONS" --hold 5 \
        --timeout 120
fi
scenario retained $B --scenario retained-flood --qos 1 --messages "$RETAINED" --inflight "$INFLIGHT"

if [[ -n "$HAS_STORE" && "$STORE_TABLE" != 0 ]]; then
    B=tern-store,tern
    P=(--persistent --qos 1 "${FLOW[@]}")
    scenario durable-fanin $B --scenario fan-in --clients "$CLIENTS" "${P[@]}"
    scenario durable-fanout $B --scenario fan-out --clients "$CLIENTS" "${P[@]}"
    scenario durable-latency $B --scenario latency --rate "$LATENCY_RATE" "${P[@]}"
    scenario durable-retained $B --scenario retained-flood --qos 1 --messages "$RETAINED" \
        --inflight "$INFLIGHT"
    # Fan-in to an offline persistent session: every message stored (and, with the store on,
    # synced) before its PUBACK; the session then reconnects and drains. Bounded in count so
    # that the queue stays inside its 1 GiB budget.
    scenario durable-offline $B --scenario fan-in --clients "$CLIENTS" --offline --qos 1 \
        --messages "$OFFLINE_MESSAGES" --duration 60 --inflight "$INFLIGHT" --drain 60
    # The same with a wider window: each PUBACK waits for the store's commit (and fsync) after
    # its message, so 8 publishers with INFLIGHT unacknowledged messages each cap the rate near
    # 8 x INFLIGHT / (one and a half commit cycles + the round trip); with DURABLE_INFLIGHT the
    # broker's own cost is what shows.
    scenario durable-offline-wide $B --scenario fan-in --clients "$CLIENTS" --offline --qos 1 \
        --messages "$OFFLINE_MESSAGES" --duration 60 --inflight "$DURABLE_INFLIGHT" --drain 60
fi

# \$filter: fan-out to FILTER_SUBS subscribers without a filter, all with the same payload
# filter, and each with its own (distinct) payload filter.
if [[ "$FILTER_TABLE" != 0 ]]; then
    # JSON payloads need 70 bytes at least: 100 for these runs.
    FF=(--scenario fan-out --qos 0 --clients "$FILTER_SUBS" --json "${FLOW[@]}")
    PAYLOAD=100 scenario filter-none tern "${FF[@]}"
    PAYLOAD=100 scenario filter-same tern "${FF[@]}" --sub-prefix '$filter/payload=v%3E10/'
    PAYLOAD=100 scenario filter-distinct tern "${FF[@]}" --sub-prefix '$filter/payload=v%3E-{i}/'
fi
ELAPSED=$(($(date +%s) - STARTED))
LOAD_AFTER=$(uptime)

# ---- the tables

val() { # key broker jq-expression -> value or "-"
    jq -r --arg k "$1" --arg b "$2" "select(.key == \$k and .label == \$b) | (try ($3) catch null) // \"-\"" \
        "$RESULTS" | head -1
}
fmt() { # a number with thousands separators, or as is
    awk -v v="$1" 'BEGIN {
        if (v ~ /^-?[0-9]+(\.[0-9]+)?$/) {
            if (v >= 1000 || v <= -1000) {
                s = sprintf("%.0f", v); out = ""
                while (length(s) > 3) { out = "," substr(s, length(s) - 2) out; s = substr(s, 1, length(s) - 3) }
                print s out
            } else if (v == int(v)) { print v } else { printf "%.1f\n", v }
        } else { print v }
    }'
}
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a ~ /^-?[0-9.]+$/ && b ~ /^-?[0-9.]+$/ && b + 0 != 0) printf "%.2f\n", a / b; else print "-"
    }'
}
labels() { # rows: substitute the run's settings into the labels
    local r=$1
    r=${r//8→1/$CLIENTS→1}
    r=${r//1→8/1→$CLIENTS}
    r=${r//8×/$CLIENTS×}
    r=${r//1k msg\/s/$LATENCY_RATE msg\/s}
    r=${r//connect storm|/connect storm, $CONNECTIONS conns|}
    r=${r//idle connections|/$IDLE_CONNECTIONS idle connections|}
    r=${r//retained flood|/retained flood, $RETAINED topics|}
    r=${r//window DURABLE_INFLIGHT/window $DURABLE_INFLIGHT}
    echo "$r"
}

# key | label | metric | jq expression
ROWS=$(labels "$(
    cat <<'EOF'
fanin-q0|fan-in 8→1 QoS 0|delivered msg/s|.delivered_per_s
fanin-q0|fan-in 8→1 QoS 0|sent msg/s|.sent_per_s
fanin-q0|fan-in 8→1 QoS 0|lost|.lost
fanin-q0|fan-in 8→1 QoS 0|latency p50 µs|.latency_us.p50_us
fanin-q0|fan-in 8→1 QoS 0|drain after the window, s|.drain_s
fanin-q0|fan-in 8→1 QoS 0|broker RSS max MiB|(.rss.max_kib / 1024 | floor)
fanin-q1|fan-in 8→1 QoS 1|delivered msg/s|.delivered_per_s
fanin-q1|fan-in 8→1 QoS 1|acked msg/s|.acked_per_s
fanin-q1|fan-in 8→1 QoS 1|acked but lost|.lost_acked
fanin-q1|fan-in 8→1 QoS 1|latency p50 µs|.latency_us.p50_us
fanin-q1|fan-in 8→1 QoS 1|broker RSS max MiB|(.rss.max_kib / 1024 | floor)
fanout-q0|fan-out 1→8 QoS 0|deliveries/s|.delivered_per_s
fanout-q0|fan-out 1→8 QoS 0|lost|.lost
fanout-q0|fan-out 1→8 QoS 0|latency p50 µs|.latency_us.p50_us
fanout-q0|fan-out 1→8 QoS 0|broker RSS max MiB|(.rss.max_kib / 1024 | floor)
fanout-q1|fan-out 1→8 QoS 1|deliveries/s|.delivered_per_s
fanout-q1|fan-out 1→8 QoS 1|acked msg/s|.acked_per_s
fanout-q1|fan-out 1→8 QoS 1|acked but lost|.lost_acked
fanout-q1|fan-out 1→8 QoS 1|broker RSS max MiB|(.rss.max_kib / 1024 | floor)
pairs-q0|pairs 8×(1→1) QoS 0|delivered msg/s|.delivered_per_s
pairs-q0|pairs 8×(1→1) QoS 0|lost|.lost
pairs-q0|pairs 8×(1→1) QoS 0|latency p50 µs|.latency_us.p50_us
latency-q1|latency QoS 1 @ 1k msg/s|p50 µs|.latency_us.p50_us
latency-q1|latency QoS 1 @ 1k msg/s|p90 µs|.latency_us.p90_us
latency-q1|latency QoS 1 @ 1k msg/s|p99 µs|.latency_us.p99_us
latency-q1|latency QoS 1 @ 1k msg/s|max µs|.latency_us.max_us
latency-q1|latency QoS 1 @ 1k msg/s|PUBACK p99 µs|.ack_latency_us.p99_us
latency-q1|latency QoS 1 @ 1k msg/s|lost|.lost
latency-q1|latency QoS 1 @ 1k msg/s|each run p50/p99 µs|.runs
storm|connect storm|connections/s|.conn_per_s
storm|connect storm|failed|.failed
storm|connect storm|broker RSS per connection KiB|.rss_per_conn_kib
idle|idle connections|broker VmRSS per connection, bytes|.rss_per_conn_bytes
idle|idle connections|connected|.connected
retained|retained flood|stored msg/s (QoS 1)|.stored_per_s
retained|retained flood|`#` subscriber: all received, ms|(if .lost == 0 then (.deliver_s * 1000 | floor) else "not all (\(.delivered) received)" end)
retained|retained flood|`#` subscriber msg/s|.delivered_per_s
retained|retained flood|lost|.lost
EOF
)")
DURABLE_ROWS=$(labels "$(
    cat <<'EOF'
durable-fanin|fan-in 8→1 QoS 1|acked msg/s|.acked_per_s
durable-fanin|fan-in 8→1 QoS 1|delivered msg/s|.delivered_per_s
durable-fanin|fan-in 8→1 QoS 1|PUBACK p50 µs|.ack_latency_us.p50_us
durable-fanin|fan-in 8→1 QoS 1|PUBACK p99 µs|.ack_latency_us.p99_us
durable-fanin|fan-in 8→1 QoS 1|acked but lost|.lost_acked
durable-fanout|fan-out 1→8 QoS 1|acked msg/s|.acked_per_s
durable-fanout|fan-out 1→8 QoS 1|deliveries/s|.delivered_per_s
durable-fanout|fan-out 1→8 QoS 1|PUBACK p99 µs|.ack_latency_us.p99_us
durable-fanout|fan-out 1→8 QoS 1|acked but lost|.lost_acked
durable-latency|latency QoS 1 @ 1k msg/s|PUBACK p50 µs|.ack_latency_us.p50_us
durable-latency|latency QoS 1 @ 1k msg/s|PUBACK p99 µs|.ack_latency_us.p99_us
durable-latency|latency QoS 1 @ 1k msg/s|delivery p50 µs|.latency_us.p50_us
durable-latency|latency QoS 1 @ 1k msg/s|delivery p99 µs|.latency_us.p99_us
durable-retained|retained flood|stored msg/s (QoS 1)|.stored_per_s
durable-retained|retained flood|`#` subscriber: all received, ms|(.deliver_s * 1000 | floor)
durable-offline|fan-in 8→1 QoS 1, offline session|acked msg/s|.acked_per_s
durable-offline|fan-in 8→1 QoS 1, offline session|PUBACK p50 µs|.ack_latency_us.p50_us
durable-offline|fan-in 8→1 QoS 1, offline session|PUBACK p99 µs|.ack_latency_us.p99_us
durable-offline|fan-in 8→1 QoS 1, offline session|delivered after reconnect|.delivered
durable-offline|fan-in 8→1 QoS 1, offline session|acked but lost|.lost_acked
durable-offline-wide|the same, window DURABLE_INFLIGHT|acked msg/s|.acked_per_s
durable-offline-wide|the same, window DURABLE_INFLIGHT|PUBACK p99 µs|.ack_latency_us.p99_us
durable-offline-wide|the same, window DURABLE_INFLIGHT|delivered after reconnect|.delivered
durable-offline-wide|the same, window DURABLE_INFLIGHT|acked but lost|.lost_acked
EOF
)")

table() { # broker-a broker-b rows
    echo "| scenario | metric | $1 | $2 | ratio $1/$2 |"
    echo "|---|---|---:|---:|---:|"
    while IFS='|' read -r key label metric expr; do
        local a b
        a=$(val "$key" "$1" "$expr")
        b=$(val "$key" "$2" "$expr")
        [[ -z "$a" && -z "$b" ]] && continue
        echo "| $label | $metric | $(fmt "${a:--}") | $(fmt "${b:--}") | $(ratio "${a:--}" "${b:--}") |"
    done <<<"$3"
}

{
    echo "### tern vs Mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}')"
    echo
    echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(uname -sr);" \
        "${PAYLOAD}-byte payloads, ${DURATION} s per scenario, MQTT 3.1.1, QoS 1 window ${INFLIGHT}," \
        "generator and broker on the same machine; $ELAPSED s in all."
    echo "Load before: \`${LOAD_BEFORE#*load }\`; after: \`${LOAD_AFTER#*load }\`."
    echo
    table tern mosquitto "$ROWS"
    echo
    echo "Latency QoS 1 at $LATENCY_RATE msg/s, $LATENCY_RUNS runs alternating the brokers; the relay" \
        "(\`tern-bench relay\`: forward and PUBACK, nothing else) is the machine's floor. Median (each run):"
    echo
    echo "| metric | tern | mosquitto | relay | tern/mosquitto | tern/relay |"
    echo "|---|---:|---:|---:|---:|---:|"
    for m in p50 p90 p99 max; do
        t=$(val latency-q1 tern ".latency_us.${m}_us")
        mq=$(val latency-q1 mosquitto ".latency_us.${m}_us")
        rl=$(val latency-q1 relay ".latency_us.${m}_us")
        each() { # broker
            jq -r --arg b "$1" --arg m "${m}_us" 'select(.label == $b and (.key | test("^latency-q1-[0-9]+$")))
                | .latency_us[$m] // "-"' "$RESULTS" | paste -sd/ - | sed 's/^$/-/'
        }
        echo "| $m µs | $(fmt "$t") ($(each tern)) | $(fmt "$mq") ($(each mosquitto)) |" \
            "$(fmt "$rl") ($(each relay)) | $(ratio "$t" "$mq") | $(ratio "$t" "$rl") |"
    done
    echo
    echo "Broker RSS at the end of each scenario, MiB (the storm: with every connection open):"
    echo
    echo "| scenario | tern | mosquitto |"
    echo "|---|---:|---:|"
    for key in fanin-q0 fanin-q1 fanout-q0 fanout-q1 pairs-q0 latency-q1 storm idle retained; do
        expr='((.rss.end_kib // .rss_after_kib) / 1024 * 10 | floor) / 10'
        echo "| $key | $(val "$key" tern "$expr") | $(val "$key" mosquitto "$expr") |"
    done
    if [[ -n "$RUMQTTD" ]]; then
        echo
        echo "### tern vs rumqttd $("$RUMQTTD" -V 2>/dev/null | awk '{print $2}')"
        echo
        echo "The same runs; rumqttd with its sample router settings and a v4 listener" \
            "(1024 inflight messages per client, 1 MiB payloads)."
        echo
        table tern rumqttd "$ROWS"
    fi
    echo
    echo "### tern with its durable store on"
    echo
    if [[ -z "$HAS_STORE" ]]; then
        echo "Skipped: \`$TERN_BIN check-config\` does not know \`[store] enabled\` and \`fsync\`:" \
            "this tern has no durable store."
    elif [[ "$STORE_TABLE" == 0 ]]; then
        echo "Skipped (STORE_TABLE=0)."
    else
        echo "Store on with \`fsync = \"always\"\` (tern-store) against store off (tern), data in" \
            "\`$OUT\`; subscribers keep their sessions (\`--persistent\`), so every QoS 1 message" \
            "is stored before its PUBACK."
        echo
        table tern-store tern "$DURABLE_ROWS"
    fi
    echo
    echo "### \$filter subscriptions"
    echo
    if [[ "$FILTER_TABLE" == 0 ]]; then
        echo "Skipped (FILTER_TABLE=0)."
    else
        echo "Fan-out 1→$FILTER_SUBS QoS 0, 100-byte JSON payloads; each subscriber without a filter," \
            "with the same \`\$filter/payload=v>10\`, or with its own \`\$filter/payload=v>-i\`."
        echo
        echo "| subscribers' filter | deliveries/s | lost | ratio to no filter |"
        echo "|---|---:|---:|---:|"
        none=$(val filter-none tern .delivered_per_s)
        for key in filter-none filter-same filter-distinct; do
            d=$(val "$key" tern .delivered_per_s)
            echo "| ${key#filter-} | $(fmt "$d") | $(fmt "$(val "$key" tern .lost)") | $(ratio "$d" "$none") |"
        done
    fi
    echo
    # Anything that went wrong, from the JSON lines.
    problems=$(jq -r 'select((.error // "") != "" or ((.errors // []) | length) > 0)
        | "- \(.key) against \(.label // "?"): \(.error // (.errors | join("; ")))"' "$RESULTS")
    if [[ -n "$problems" ]]; then
        echo "Errors:"
        echo "$problems"
    fi
} | tee "$OUT/table.md"
echo >&2
echo "JSON lines: $RESULTS; broker logs: $OUT/*.log" >&2
