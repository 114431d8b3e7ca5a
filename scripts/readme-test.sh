#!/usr/bin/env bash
# Runs the README's REST API examples as written, in order, against a fresh tern on its
# default ports (MQTT 1883, HTTP 8080) in a new data directory: every curl must get a 2xx
# answer (curl -f). CI runs this after building the release binary and the tracker simulator
# (the Teltonika walkthrough runs it as `tern-tracker-sim`).
#
#   scripts/readme-test.sh [TERN_BINARY [TRACKER_SIM_BINARY]]
#
# Defaults: the static release binary and the simulator built beside it
# (target/x86_64-unknown-linux-gnu/release/{tern,tern-tracker-sim}).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(realpath "${1:-target/x86_64-unknown-linux-gnu/release/tern}")
[ -x "$bin" ] || { echo "readme-test: no binary at $bin (scripts/build-static.sh)" >&2; exit 1; }
sim=$(realpath "${2:-$(dirname "$bin")/tern-tracker-sim}")
[ -x "$sim" ] || {
  echo "readme-test: no tracker simulator at $sim (cargo build --release -p tern-bench --bin tern-tracker-sim)" >&2
  exit 1
}
for port in 1883 8080; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "readme-test: FAILED: port $port is taken; the README's examples use the defaults" >&2
    exit 1
  fi
done

work=$(mktemp -d)
pid=""
cleanup() {
  set +e
  if [ -n "$pid" ]; then
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap 'rc=$?; cleanup; exit $rc' EXIT

# The first ```sh block after a heading.
block() {
  python3 - README.md "$1" <<'PY'
import sys
text = open(sys.argv[1]).read()
section = text[text.index("\n" + sys.argv[2] + "\n"):]
start = section.index("```sh\n") + len("```sh\n")
print(section[start:section.index("```", start)])
PY
}

# Each block runs as written in the work directory, with `tern` the binary under test and curl
# failing on an error status; background jobs a block starts are stopped after it.
run_block() { # HEADING
  local name=$1 script="$work/block.sh"
  {
    echo 'set -euo pipefail'
    echo "tern() { \"$bin\" \"\$@\"; }"
    echo "tern-tracker-sim() { \"$sim\" \"\$@\"; }"
    echo 'curl() { command curl -sS -f "$@" || { echo "readme-test: FAILED: curl $*" >&2; return 1; }; echo; }'
    block "$name"
    echo 'sleep 1; kill $(jobs -p) 2>/dev/null || true'
  } >"$script"
  if ! (cd "$work" && bash "$script") >"$work/out" 2>&1; then
    echo "readme-test: FAILED in \"$name\":"
    cat "$work/out"
    tail -20 "$work/tern.log" 2>/dev/null
    exit 1
  fi
  echo "readme-test: \"$name\" ran as written ($(grep -cE '^(curl|tern|mosquitto|[A-Z]+=)' <(block "$name")) commands)"
}

# Offline commands first, on the new data directory while no tern runs.
run_block "### Accounts and tokens"
run_block "### Durability"

(cd "$work" && exec "$bin" >"$work/tern.out" 2>"$work/tern.log") &
pid=$!
for _ in $(seq 1 100); do
  "$bin" health --addr 127.0.0.1:8080 --timeout 1 >/dev/null 2>&1 && break
  sleep 0.1
done

run_block "## REST API"
run_block "### REST over MQTT"
grep -q '^replies/1 {"result":' "$work/out" || {
  echo "readme-test: FAILED: REST over MQTT printed no answer on replies/1:"
  cat "$work/out"
  exit 1
}
run_block "### Browser apps (TrackIt, Toolbox, telemetry dashboard)"
grep -q '^access-control-allow-origin: \*' <(tr -d '\r' <"$work/out" | tr 'A-Z' 'a-z') || {
  echo "readme-test: FAILED: the preflight answered no Access-Control-Allow-Origin:"
  cat "$work/out"
  exit 1
}
grep -q '"rest":"http://localhost:8080","mqtt-ws":"localhost:8080","mqtt":"localhost:1883"' "$work/out" || {
  echo "readme-test: FAILED: /auth/regions did not answer the addresses curl used:"
  cat "$work/out"
  exit 1
}
run_block "### Devices"
grep -q '/telemetry/position.speed 42 cid:1 timestamp:1700000000.000000' "$work/out" || {
  echo "readme-test: FAILED: the device walkthrough showed no telemetry with its time:"
  cat "$work/out"
  exit 1
}
run_block "### Channels"
grep -qE '^flespi/message/gw/channels/[0-9]+/tr-2 \{' "$work/out" &&
  grep -qE '^flespi/message/gw/devices/[0-9]+ \{.*"ident":"tr-1"' "$work/out" || {
  echo "readme-test: FAILED: the channel walkthrough did not show both messages:"
  cat "$work/out"
  exit 1
}
run_block "### Trackers (Teltonika)"
grep -qE '^flespi/message/gw/devices/[0-9]+ \{.*"ident":"35209308000000[0-2]"' "$work/out" &&
  grep -q '"executed":true.*"response":"sim: getinfo"\|"response":"sim: getinfo".*"executed":true' "$work/out" || {
  echo "readme-test: FAILED: the tracker walkthrough showed no device message or no command response:"
  cat "$work/out"
  exit 1
}
# The streams and webhooks walkthroughs start tests/python/stream_receiver.py as receiver.
ln -s "$PWD/tests" "$work/tests"
run_block "### Streams"
grep -q '"position.speed": *42' "$work/received.jsonl" &&
  grep -qE '^fleet/tr-7/speed/43 \{' "$work/out" || {
  echo "readme-test: FAILED: the streams walkthrough: no message at the receiver or at the second broker:"
  cat "$work/out"
  exit 1
}
run_block "### Reading logs"
grep -q '"app":"my-dashboard/1.0"' "$work/out" || {
  echo "readme-test: FAILED: the logs walkthrough showed no REST call with its app:"
  cat "$work/out"
  exit 1
}
run_block "### Webhooks"
grep -q 'kitchen' "$work/received.jsonl" || {
  echo "readme-test: FAILED: the webhook walkthrough's receiver got no call:"
  cat "$work/out"
  exit 1
}
