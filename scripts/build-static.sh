#!/usr/bin/env bash
# Builds tern as one statically linked executable (glibc, `-C target-feature=+crt-static`) for
# the `FROM scratch` image (docker/Dockerfile.scratch), then checks that it is static and that
# it runs: `--version`, and a real start on free loopback ports, a `tern health` probe, SIGTERM
# and exit 0.
#
# The binary lands in target/x86_64-unknown-linux-gnu/release/tern. `--target` is required:
# with it, RUSTFLAGS apply to tern and not to build scripts and proc macros, which cannot be
# linked statically.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
bin="target/$target/release/tern"

# Debug line tables are dropped (symbols stay, so panics still name functions): the image is
# for running, and 35 MB of DWARF would dwarf tern itself.
CARGO_PROFILE_RELEASE_STRIP=debuginfo RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$target" -p tern --bin tern

if readelf -d "$bin" | grep -q '(NEEDED)'; then
  echo "$bin is not static:"
  readelf -d "$bin" | grep '(NEEDED)'
  exit 1
fi
if readelf -l "$bin" | grep -q 'INTERP'; then
  echo "$bin asks for a dynamic loader"
  exit 1
fi

"$bin" --version

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
mqtt_port=$(free_port)
http_port=$(free_port)
data=$(mktemp -d)
log="$data/tern.log"
"$bin" --mqtt "127.0.0.1:$mqtt_port" --http "127.0.0.1:$http_port" --data-dir "$data/data" 2>"$log" &
pid=$!
cleanup() {
  kill -KILL "$pid" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

healthy=""
for _ in $(seq 1 100); do
  if "$bin" health --addr "127.0.0.1:$http_port" --timeout 1 >/dev/null 2>&1; then
    healthy=yes
    break
  fi
  sleep 0.1
done
if [ -z "$healthy" ]; then
  echo "the static binary did not become healthy:"
  cat "$log"
  exit 1
fi

kill -TERM "$pid"
status=0
for _ in $(seq 1 150); do
  if ! kill -0 "$pid" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then
  echo "the static binary did not stop within 15 s of SIGTERM"
  cat "$log"
  exit 1
fi
wait "$pid" || status=$?
if [ "$status" -ne 0 ]; then
  echo "the static binary exited with $status after SIGTERM:"
  cat "$log"
  exit 1
fi
echo "static binary ok: $bin ($(du -h "$bin" | cut -f1))"
