#!/usr/bin/env bash
# Cluster mode against a single node, on loopback (issue 17; README "Cluster mode"): one
# nats-server with JetStream and NODES (3) tern nodes in cluster mode, and a single tern
# without a cluster, each freshly started per round, the same tern-bench for all. Rounds
# alternate single / cluster so that a noisy moment of a shared machine does not fall on one
# side only; the table shows every run and the median.
#
#   benches/cluster.sh                    # 3 rounds, 10 s per scenario
#   ROUNDS=1 DURATION=3 benches/cluster.sh
#   TERN_BIN=target/release/tern BENCH_BIN=target/release/tern-bench benches/cluster.sh
#
# Scenarios (64-byte payloads, 3.1.1):
# - latency QoS 0 and QoS 1 at LATENCY_RATE msg/s (1000): single node; cluster with publisher
#   and subscriber on the same node; cluster with the subscriber on the other node (the
#   message crosses NATS: QoS 0 on core NATS, QoS 1 through a JetStream shard stream, PUBACK
#   after JetStream's ack)
# - fan-in 8→1 QoS 0 and QoS 1 (window INFLIGHT, 100): single node; cluster across nodes.
#   Unpaced QoS 0 floods the publishing node: what its outgoing queue cannot take is dropped
#   (QoS 0), so the cross-node figure is what was forwarded while 8 publishers and every
#   process share the cores
# - QoS 0 paced at PACED_RATE msg/s (100000) from one publisher: single node; across nodes
# - devices layer (tern-cluster gw.rs): gw-ingest (8 clients POST batches of 100 to an HTTP
#   channel, each answered once durable) on a single node and on node A of the cluster, whose
#   other nodes apply every message; gw-replicate: GW_MESSAGES (100000) messages posted on A
#   in batches of 1,000 until node B applied the last, and 20 single messages each timed from
#   its POST on A to B showing it. These nodes run with their store on and HTTP
# - resume: RESUME_CLIENTS (500) persistent sessions (MQTT 5) on node A, which is killed
#   (kill -9); the clients reconnect to node B and a publisher there sends each one message:
#   the time from the kill to every CONNACK (session present) and every message delivered.
#   These nodes run with their store on (persistent sessions have records in the cluster)
#
# Needs nats-server (Debian's package) on PATH. Every JSON line and log is kept in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
INFLIGHT=${INFLIGHT:-100}
LATENCY_RATE=${LATENCY_RATE:-1000}
PACED_RATE=${PACED_RATE:-100000}
RESUME_CLIENTS=${RESUME_CLIENTS:-500}
GW_MESSAGES=${GW_MESSAGES:-100000}
TOKEN=ClusterBenchMasterToken0123456789abcdefghijklmnopqrstuvwxyzABCDE
NODES=${NODES:-3}
OUT=${OUT:-target/bench-cluster}
NATS_PORT=${NATS_PORT:-14322}
BASE_PORT=${BASE_PORT:-18931}

command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq is not installed" >&2; exit 1; }
if [[ -z "${TERN_BIN:-}" || -z "${BENCH_BIN:-}" ]]; then
    cargo build --release -p tern -p tern-bench >&2
fi
TERN_BIN=${TERN_BIN:-target/release/tern}
BENCH_BIN=${BENCH_BIN:-target/release/tern-bench}
mkdir -p "$OUT"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# start_tern NAME PORT [NATS [store [HTTP_PORT]]]: a tern with the store off (on with "store"),
# anonymous access in account 7; with HTTP_PORT, REST there with $TOKEN as master token.
start_tern() {
    local name=$1 port=$2 nats=${3:-} store=${4:-} http=${5:-} dir="$OUT/run/$1"
    local web=(--http off)
    [[ -n "$http" ]] && web=(--http "127.0.0.1:$http" --master-token "$TOKEN")
    rm -rf "$dir"
    mkdir -p "$dir"
    {
        [[ "$store" == store ]] || printf '[store]\nenabled = false\n'
        printf '[auth]\nanonymous = true\nanonymous_cid = 7\n'
        printf '[mqtt]\nmax_inflight = 1024\n[session]\nmax_queued_bytes = 1073741824\n'
        if [[ -n "$nats" ]]; then
            printf '[cluster]\nnats = ["%s"]\nnode = "%s"\n' "$nats" "$name"
        fi
    } > "$dir/tern.toml"
    "$TERN_BIN" --config "$dir/tern.toml" --log-level warn --mqtt "127.0.0.1:$port" "${web[@]}" \
        --data-dir "$dir" > "$OUT/$name.log" 2>&1 &
    PIDS+=($!)
    wait_port "$port"
}

start_nats() {
    rm -rf "$OUT/run/nats"
    mkdir -p "$OUT/run/nats"
    nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$OUT/run/nats" > "$OUT/nats.log" 2>&1 &
    PIDS+=($!)
    wait_port "$NATS_PORT"
}

# bench KEY PUB_PORT SUB_PORTS args...: one tern-bench run, its JSON line kept (SUB_PORTS:
# one port, or several comma-separated that the subscribers take in turn).
bench() {
    local key=$1 pub=$2 subs
    subs=$(sed 's/\([0-9][0-9]*\)/127.0.0.1:\1/g' <<< "$3")
    shift 3
    "$BENCH_BIN" --broker "127.0.0.1:$pub" --sub-broker "$subs" --keep-alive 600 "$@" \
        >> "$OUT/$key.jsonl" 2>> "$OUT/bench.log" || echo '{"error":"run failed"}' >> "$OUT/$key.jsonl"
}

rm -f "$OUT"/*.jsonl
FLOW=(--duration "$DURATION" --inflight "$INFLIGHT" --drain 20)
LAT0=(--scenario latency --qos 0 --rate "$LATENCY_RATE" "${FLOW[@]}")
LAT1=(--scenario latency --qos 1 --rate "$LATENCY_RATE" "${FLOW[@]}")
PACED0=(--scenario latency --qos 0 --rate "$PACED_RATE" "${FLOW[@]}")
for round in $(seq "$ROUNDS"); do
    echo "round $round: single node" >&2
    start_tern single "$BASE_PORT"
    bench single-lat0 "$BASE_PORT" "$BASE_PORT" "${LAT0[@]}"
    bench single-lat1 "$BASE_PORT" "$BASE_PORT" "${LAT1[@]}"
    bench single-fanin0 "$BASE_PORT" "$BASE_PORT" --scenario fan-in --qos 0 --clients 8 "${FLOW[@]}"
    bench single-fanin1 "$BASE_PORT" "$BASE_PORT" --scenario fan-in --qos 1 --clients 8 "${FLOW[@]}"
    bench single-paced0 "$BASE_PORT" "$BASE_PORT" "${PACED0[@]}"
    bench single-fanout0 "$BASE_PORT" "$BASE_PORT" --scenario fan-out --qos 0 --clients 8 "${FLOW[@]}"
    bench single-fanout1 "$BASE_PORT" "$BASE_PORT" --scenario fan-out --qos 1 --clients 8 "${FLOW[@]}"
    cleanup

    echo "round $round: cluster of $NODES" >&2
    start_nats
    for n in $(seq "$NODES"); do
        start_tern "n$n" $((BASE_PORT + n)) "nats://127.0.0.1:$NATS_PORT"
    done
    A=$((BASE_PORT + 1))
    B=$((BASE_PORT + 2))
    bench same-lat0 "$A" "$A" "${LAT0[@]}"
    bench same-lat1 "$A" "$A" "${LAT1[@]}"
    bench cross-lat0 "$A" "$B" "${LAT0[@]}"
    bench cross-lat1 "$A" "$B" "${LAT1[@]}"
    bench cross-fanin0 "$A" "$B" --scenario fan-in --qos 0 --clients 8 "${FLOW[@]}"
    bench cross-fanin1 "$A" "$B" --scenario fan-in --qos 1 --clients 8 "${FLOW[@]}"
    bench cross-paced0 "$A" "$B" "${PACED0[@]}"
    # Fan-out 1→8 with the subscribers spread over every other node.
    OTHERS=$(seq -s, $((BASE_PORT + 2)) $((BASE_PORT + NODES)))
    bench spread-fanout0 "$A" "$OTHERS" --scenario fan-out --qos 0 --clients 8 "${FLOW[@]}"
    bench spread-fanout1 "$A" "$OTHERS" --scenario fan-out --qos 1 --clients 8 "${FLOW[@]}"
    cleanup

    echo "round $round: devices layer, single node and cluster" >&2
    H=$((BASE_PORT + 100))
    GW=(--scenario gw-ingest --token "$TOKEN" --clients 8 --batch 100 --duration "$DURATION")
    start_tern gsingle "$BASE_PORT" "" store "$H"
    bench single-gwingest "$BASE_PORT" "$BASE_PORT" "${GW[@]}" --http "127.0.0.1:$H"
    cleanup
    start_nats
    for n in $(seq "$NODES"); do
        start_tern "g$n" $((BASE_PORT + n)) "nats://127.0.0.1:$NATS_PORT" store $((H + n))
    done
    bench cluster-gwingest "$A" "$A" "${GW[@]}" --http "127.0.0.1:$((H + 1))"
    bench gw-replicate "$A" "$A" --scenario gw-replicate --token "$TOKEN" \
        --http "127.0.0.1:$((H + 1))" --peer-http "127.0.0.1:$((H + 2))" \
        --messages "$GW_MESSAGES" --batch 1000 --reads 20 --timeout 120
    cleanup

    echo "round $round: node death to sessions resumed" >&2
    start_nats
    start_tern r1 $((BASE_PORT + 1)) "nats://127.0.0.1:$NATS_PORT" store
    VICTIM=${PIDS[-1]}
    start_tern r2 $((BASE_PORT + 2)) "nats://127.0.0.1:$NATS_PORT" store
    bench resume "$A" "$B" --scenario resume --clients "$RESUME_CLIENTS" --broker-pid "$VICTIM" --timeout 60
    cleanup
done

# One table row: KEY LABEL JQ-FIELD: every run's figure and their median.
row() {
    local key=$1 label=$2 field=$3
    jq -rs --arg name "$label" "
        [.[] | $field // empty] as \$v
        | (\$v | sort) as \$s
        | \"| \(\$name) | \(\$v | map(tostring) | join(\", \")) | \(if (\$s|length) > 0 then \$s[(\$s|length)/2|floor] else \"-\" end) |\"
    " "$OUT/$key.jsonl"
}

echo
echo "| scenario | runs | median |"
echo "|---|---|---:|"
row single-lat0 "latency QoS 0, single node, p50 µs" .latency_us.p50_us
row same-lat0 "latency QoS 0, cluster, same node, p50 µs" .latency_us.p50_us
row cross-lat0 "latency QoS 0, cluster, across nodes, p50 µs" .latency_us.p50_us
row single-lat0 "latency QoS 0, single node, p99 µs" .latency_us.p99_us
row same-lat0 "latency QoS 0, cluster, same node, p99 µs" .latency_us.p99_us
row cross-lat0 "latency QoS 0, cluster, across nodes, p99 µs" .latency_us.p99_us
row single-lat1 "latency QoS 1, single node, p50 µs" .latency_us.p50_us
row same-lat1 "latency QoS 1, cluster, same node, p50 µs" .latency_us.p50_us
row cross-lat1 "latency QoS 1, cluster, across nodes, p50 µs" .latency_us.p50_us
row single-lat1 "latency QoS 1, single node, p99 µs" .latency_us.p99_us
row same-lat1 "latency QoS 1, cluster, same node, p99 µs" .latency_us.p99_us
row cross-lat1 "latency QoS 1, cluster, across nodes, p99 µs" .latency_us.p99_us
row single-lat1 "PUBACK QoS 1, single node, p50 µs" .ack_latency_us.p50_us
row same-lat1 "PUBACK QoS 1, cluster, p50 µs" .ack_latency_us.p50_us
row single-lat1 "PUBACK QoS 1, single node, p99 µs" .ack_latency_us.p99_us
row same-lat1 "PUBACK QoS 1, cluster, p99 µs" .ack_latency_us.p99_us
row single-fanin0 "fan-in 8→1 QoS 0, single node, delivered msg/s" .delivered_per_s
row cross-fanin0 "fan-in 8→1 QoS 0, cluster across nodes, delivered msg/s" .delivered_per_s
row single-fanin1 "fan-in 8→1 QoS 1, single node, acked msg/s" .acked_per_s
row cross-fanin1 "fan-in 8→1 QoS 1, cluster across nodes, acked msg/s" .acked_per_s
row cross-fanin1 "fan-in 8→1 QoS 1, cluster across nodes, delivered msg/s" .delivered_per_s
row single-paced0 "QoS 0 at $PACED_RATE msg/s, single node, delivered" .delivered
row cross-paced0 "QoS 0 at $PACED_RATE msg/s, across nodes, delivered" .delivered
row cross-paced0 "QoS 0 at $PACED_RATE msg/s, across nodes, lost" .lost
row cross-paced0 "QoS 0 at $PACED_RATE msg/s, across nodes, p50 µs" .latency_us.p50_us
row single-lat1 "latency QoS 1, single node, lost" .lost
row cross-lat1 "latency QoS 1, across nodes, lost" .lost
row cross-fanin1 "fan-in QoS 1 across nodes, acked but lost" .lost_acked
row single-fanout0 "fan-out 1→8 QoS 0, single node, delivered msg/s" .delivered_per_s
row spread-fanout0 "fan-out 1→8 QoS 0, cluster of $NODES, subscribers on the other nodes, delivered msg/s" .delivered_per_s
row single-fanout1 "fan-out 1→8 QoS 1, single node, delivered msg/s" .delivered_per_s
row spread-fanout1 "fan-out 1→8 QoS 1, cluster of $NODES, subscribers on the other nodes, delivered msg/s" .delivered_per_s
row spread-fanout1 "fan-out 1→8 QoS 1, cluster of $NODES, lost" .lost
row single-gwingest "devices: HTTP channel ingest, single node, acked msg/s" .acked_per_s
row cluster-gwingest "devices: HTTP channel ingest, cluster node (shared with the others), acked msg/s" .acked_per_s
row gw-replicate "devices: $GW_MESSAGES messages posted on A (batches of 1,000), posted msg/s" .posted_per_s
row gw-replicate "devices: the same, applied on B, msg/s (first POST to the last applied)" .replicated_per_s
row gw-replicate "devices: last POST answered on A to applied on B, ms" .lag_ms
row gw-replicate "devices: a device made on A, seen on B, ms" .device_ms
row gw-replicate "devices: one message, POST on A to seen on B, median ms" .single_median_ms
row resume "$RESUME_CLIENTS sessions after kill -9 of their node: resumed (session present)" .resumed
row resume "resume: kill to the last CONNACK, ms" .all_connacks_ms
row resume "resume: kill to the last missed message delivered, ms" .all_delivered_ms
row resume "resume: kill to CONNACK per client, p50 ms" '(.connack_us.p50_us / 1000)'
row resume "resume: kill to message per client, p50 ms" '(.delivered_us.p50_us / 1000)'
