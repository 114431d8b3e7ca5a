#!/usr/bin/env bash
# Runs the README's REST API examples as written, in order, against a fresh tern on its
# default ports (MQTT 1883, HTTP 8080) in a new data directory: every curl must get a 2xx
# answer (curl -f). CI runs this after building the release binary.
#
#   scripts/readme-test.sh [TERN_BINARY]     (default: the static release binary)
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(realpath "${1:-target/x86_64-unknown-linux-gnu/release/tern}")
[ -x "$bin" ] || { echo "readme-test: no binary at $bin (scripts/build-static.sh)" >&2; exit 1; }
for port in 1883 8080; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "readme-test: FAILED: port $port is taken; the README's examples use the defaults" >&2
    exit 1
  fi
done

work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap 'rc=$?; cleanup; exit $rc' EXIT

# The first ```sh block after the "## REST API" heading.
python3 - README.md >"$work/rest.sh" <<'PY'
import sys
text = open(sys.argv[1]).read()
section = text[text.index("\n## REST API"):]
start = section.index("```sh\n") + len("```sh\n")
print(section[start:section.index("```", start)])
PY
[ -s "$work/rest.sh" ] || { echo "readme-test: no REST API example block" >&2; exit 1; }

(cd "$work" && exec "$bin" >"$work/tern.out" 2>"$work/tern.log") &
pid=$!
for _ in $(seq 1 100); do
  "$bin" health --addr 127.0.0.1:8080 --timeout 1 >/dev/null 2>&1 && break
  sleep 0.1
done

# As written, with curl failing on an error status and saying which call it was.
cat >"$work/run.sh" <<'SH'
set -euo pipefail
curl() { command curl -sS -f "$@" || { echo "readme-test: FAILED: curl $*" >&2; return 1; }; echo; }
SH
cat "$work/rest.sh" >>"$work/run.sh"
(cd "$work" && bash "$work/run.sh") >"$work/run.log" 2>&1 || {
  cat "$work/run.log"
  tail -20 "$work/tern.log"
  exit 1
}
echo "readme-test: $(grep -c '^curl' "$work/rest.sh") REST examples of the README ran as written"
