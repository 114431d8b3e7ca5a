#!/usr/bin/env bash
# The Teltonika channel benchmark of README "Performance" / "Teltonika channel": a fresh tern
# per run (its defaults: the store on, fsync per batch) on its own data directory, then
#   ingest: one channel, a device per IMEI (every record is stored in a device's history),
#           TRACKERS trackers x PACKETS frames x RECORDS records at --rate 0 (the next frame
#           as soon as the last was ACKed); tern ACKs a frame once its records are durable,
#           so records ACKed/s is records stored/s;
#   idle:   one channel with max_connections 20000 and a device per IMEI, tern restarted on
#           that data, then IDLE trackers connected and holding the connection; tern's VmRSS
#           (/proc/<pid>/status) before they connect and while they are held (3 s after the
#           last connected), per connection = delta / IDLE.
# Each run prints the simulator's JSON line (and, for idle, the RSS figures) to stdout and to
# $OUT/results.jsonl.
#
#   cargo build --release -p tern -p tern-bench
#   benches/trackers.sh                 # RUNS=3 ingest runs, IDLE_RUNS=2 idle runs
#   RUNS=1 IDLE_RUNS=0 benches/trackers.sh
set -euo pipefail
cd "$(dirname "$0")/.."

TERN_BIN=${TERN_BIN:-target/release/tern}
SIM_BIN=${SIM_BIN:-target/release/tern-tracker-sim}
RUNS=${RUNS:-3}
IDLE_RUNS=${IDLE_RUNS:-2}
TRACKERS=${TRACKERS:-1000}
PACKETS=${PACKETS:-10}
RECORDS=${RECORDS:-10}
RATE=${RATE:-0}
IDLE=${IDLE:-10000}
HOLD=${HOLD:-20}
HTTP=${HTTP:-127.0.0.1:18080}
MQTT=${MQTT:-127.0.0.1:11883}
OUT=${OUT:-$(mktemp -d /tmp/tern-trackers.XXXXXX)}
mkdir -p "$OUT"

for b in "$TERN_BIN" "$SIM_BIN"; do
  [ -x "$b" ] || { echo "trackers.sh: no binary at $b (cargo build --release -p tern -p tern-bench)" >&2; exit 1; }
done
# 10,000 idle trackers take as many descriptors in tern and in the simulator.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((IDLE + 100)) ]; then
  echo "trackers.sh: ulimit -n is $(ulimit -n), $IDLE idle connections need more" >&2
  exit 1
fi

pid=""
sim=""
cleanup() {
  set +e
  [ -n "$sim" ] && kill "$sim" 2>/dev/null
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  fi
}
trap cleanup EXIT

start_tern() { # NAME [keep: start on the data directory as it is]
  local data="$OUT/data-$1"
  [ -n "${2:-}" ] || rm -rf "$data"
  "$TERN_BIN" --http "$HTTP" --mqtt "$MQTT" --data-dir "$data" >"$OUT/tern-$1.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    "$TERN_BIN" health --addr "$HTTP" --timeout 1 >/dev/null 2>&1 && break
    sleep 0.1
  done
  TOKEN=$(cat "$data/master-token")
}

stop_tern() { # [keep: leave the data directory]
  kill -TERM "$pid"
  wait "$pid" || true
  pid=""
  # A run's store is 100-150 MB; KEEP_DATA=1 keeps them all.
  [ -n "${1:-}" ] || [ -n "${KEEP_DATA:-}" ] || rm -rf "$OUT"/data-*
}

rest() { # METHOD PATH [BODY]
  curl -sS -f -X "$1" -H "Authorization: FlespiToken $TOKEN" ${3:+-d "$3"} "http://$HTTP$2"
}

# Waits until this tern listens on the channel's port (host:port); fails after 5 s. (Once, a
# restarted tern found the port taken: "cannot listen" in its log.)
listening() { # URI
  for _ in $(seq 1 50); do
    ss -Htlnp "( sport = :${1##*:} )" | grep -q "pid=$pid," && return 0
    sleep 0.1
  done
  echo "trackers.sh: tern does not listen on $1 (see $OUT/tern-*.log)" >&2
  return 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }

# A Teltonika channel; prints its uri.
channel() { # CONFIGURATION
  rest POST /gw/channels "{\"name\": \"bench\", \"protocol_name\": \"teltonika\", \"configuration\": $1}" |
    jq -r '.result[0].uri'
}

# A device of type 14 for each of the first N simulated IMEIs, in one POST.
devices() { # N
  "$SIM_BIN" --trackers "$1" --list-imeis |
    jq -R '{name: ("sim " + .), device_type_id: 14, configuration: {ident: .}}' | jq -s -c . |
    curl -sS -f -X POST -H "Authorization: FlespiToken $TOKEN" --data-binary @- \
      "http://$HTTP/gw/devices" >/dev/null
}

for run in $(seq 1 "$RUNS"); do
  start_tern "ingest-$run"
  uri=$(channel '{}')
  devices "$TRACKERS"
  "$SIM_BIN" --server "$uri" --trackers "$TRACKERS" --packets "$PACKETS" --records "$RECORDS" \
    --rate "$RATE" --duration 120 2>>"$OUT/sim.log" | tee -a "$OUT/results.jsonl"
  stop_tern
done

for run in $(seq 1 "$IDLE_RUNS"); do
  start_tern "idle-$run"
  uri=$(channel '{"max_connections": 20000}')
  devices "$IDLE"
  # A restart, so that what creating the devices allocated is not counted (nor reused).
  stop_tern keep
  mv "$OUT/tern-idle-$run.log" "$OUT/tern-idle-$run-setup.log"
  start_tern "idle-$run" keep
  listening "$uri"
  sleep 2
  before=$(rss_kib)
  "$SIM_BIN" --server "$uri" --trackers "$IDLE" --idle --duration "$HOLD" \
    >"$OUT/idle-$run.json" 2>"$OUT/idle-$run.log" &
  sim=$!
  # Measure once every tracker is connected and a few seconds have settled.
  for _ in $(seq 1 $((HOLD * 10))); do
    grep -q ' connected, ' "$OUT/idle-$run.log" && break
    sleep 0.1
  done
  sleep 3
  after=$(rss_kib)
  held=$(rest GET "/gw/channels/all?fields=connections_count" | jq '.result[0].connections_count')
  wait "$sim"
  sim=""
  jq -c --argjson before "$before" --argjson after "$after" --argjson held "$held" \
    '. + {tern_rss_before_kib: $before, tern_rss_after_kib: $after, connections_count: $held,
          tern_rss_per_conn_kib: (($after - $before) / .connected * 100 | round / 100)}' \
    "$OUT/idle-$run.json" | tee -a "$OUT/results.jsonl"
  stop_tern
done
echo "trackers.sh: results in $OUT/results.jsonl" >&2
