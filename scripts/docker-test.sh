#!/usr/bin/env bash
# Builds the `FROM scratch` image and checks it as a user would (CI runs this):
#   - a Docker Engine: started (and installed from Debian's docker.io) when none runs;
#   - the image from the static binary (scripts/docker-image.sh);
#   - a container starts, `docker logs` shows the master token, mosquitto_pub/sub work over
#     1883 and MQTT 5 over WebSocket over the HTTP port, the health check reaches `healthy`;
#   - a REST token, a retained message and a persistent session with a queued QoS 1 message
#     survive into a second container on the same volume; `tern token list` runs one-off on it;
#   - `docker stop` ends the container with exit code 0 within the grace period, and a v5
#     client gets DISCONNECT 0x8B;
#   - docker/compose.yaml comes up on the same image (Debian's docker-compose or the compose
#     plugin), serves, and goes down with its volume;
#   - docker/cluster/compose.yaml (three tern nodes, three NATS servers) comes up with a
#     `FROM scratch` image of the host's nats-server (Debian's, installed by test-deps) and its
#     libraries: every node turns healthy, a message published on one node reaches a
#     subscriber on another, a retained message set on a third is seen on the first, a
#     device and its message made over REST on the first are read on the third; down.
# Everything created (containers, volumes, the image, a dockerd it started) is removed on exit.
# It skips, saying so and exiting 0, only where no Docker Engine can run at all.
set -euo pipefail
cd "$(dirname "$0")/.."

run_id="ternci$$"
image="tern-ci:$run_id"
nats_image="tern-ci-nats:$run_id"
vol="$run_id-data"
tmp=$(mktemp -d)
started_dockerd=""
containers=()
compose=()

log() { echo "docker-test: $*"; }
fail() {
  echo "docker-test: FAILED: $*" >&2
  for c in "${containers[@]}"; do
    echo "--- docker logs $c" >&2
    docker logs "$c" 2>&1 | tail -30 >&2 || true
  done
  exit 1
}
skip() {
  echo "docker-test: SKIPPED: $*"
  exit 0
}

cleanup() {
  set +e
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1; done
  if [ "${#compose[@]}" -gt 0 ]; then "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1; fi
  docker volume rm -f "$vol" >/dev/null 2>&1
  docker image rm -f "$image" "$nats_image" >/dev/null 2>&1
  if [ -n "$started_dockerd" ]; then
    kill "$started_dockerd" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -rf "$tmp"
}
trap 'rc=$?; cleanup; exit $rc' EXIT

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif sudo -n true 2>/dev/null; then sudo "$@"; else return 1; fi
}

# --- a Docker Engine ---------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null 2>&1; then
    log "installing Debian's docker.io"
    as_root apt-get update -qq || skip "no Docker Engine, and no root to install one"
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq docker.io >/dev/null \
      || skip "docker.io could not be installed"
  fi
  if ! docker info >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || skip "no Docker Engine runs and starting dockerd needs root"
    log "starting dockerd"
    dockerd >"$tmp/dockerd.log" 2>&1 &
    started_dockerd=$!
    for _ in $(seq 1 60); do
      docker info >/dev/null 2>&1 && break
      kill -0 "$started_dockerd" 2>/dev/null || break
      sleep 0.5
    done
    docker info >/dev/null 2>&1 || skip "dockerd cannot run here: $(tail -3 "$tmp/dockerd.log")"
  fi
fi
if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  log "installing Debian's docker-compose"
  as_root apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq docker-compose >/dev/null \
    || fail "no docker compose and docker-compose could not be installed"
fi
for tool in mosquitto_pub mosquitto_sub python3; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing (scripts/test-deps.sh installs it)"
done

# --- the image ---------------------------------------------------------------------------
scripts/docker-image.sh "$image"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until container $1 is healthy (the image's HEALTHCHECK runs `tern health`).
wait_healthy() {
  local status=""
  for _ in $(seq 1 120); do
    status=$(docker inspect -f '{{.State.Health.Status}}' "$1" 2>/dev/null || echo gone)
    [ "$status" = healthy ] && return 0
    [ "$status" = gone ] && break
    sleep 0.5
  done
  fail "$1 is not healthy (last status: $status)"
}

# Starts a container on the volume with its MQTT and HTTP ports on loopback; the health
# check every second instead of every 30 s, so the test need not wait.
start() {
  local name=$1
  docker run -d --name "$name" \
    -p "127.0.0.1:$mqtt_port:1883" -p "127.0.0.1:$http_port:8080" \
    -v "$vol:/data" --stop-timeout 15 \
    --health-interval 1s --health-start-period 10s --health-retries 3 \
    "$image" >/dev/null
  containers+=("$name")
  wait_healthy "$name"
}

sub_one() { # TOPIC KEY [extra mosquitto_sub options]: prints one message
  local topic=$1 key=$2
  shift 2
  mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -u "$key" -t "$topic" -C 1 -W 10 "$@"
}

mqtt_port=$(free_port)
http_port=$(free_port)
docker volume create "$vol" >/dev/null

# --- first container ---------------------------------------------------------------------
start "$run_id-a"
logs=$(docker logs "$run_id-a" 2>&1)
key=$(sed -n 's/^master token: \([A-Za-z0-9]\{64\}\)$/\1/p' <<<"$logs")
[ -n "$key" ] || fail "docker logs shows no master token"
log "container healthy; docker logs shows the master token"

mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -u "$key" -q 1 -r -t ci/retained -m kept
[ "$(sub_one ci/retained "$key")" = kept ] || fail "mosquitto_sub did not get the retained message"
sub_one ci/live "$key" -q 1 >"$tmp/live" &
sub_pid=$!
sleep 1
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -u "$key" -q 1 -t ci/live -m hello
wait "$sub_pid" || true
[ "$(cat "$tmp/live")" = hello ] || fail "mosquitto_sub did not get a live message"
log "mosquitto_pub/mosquitto_sub over 1883 ok"

python3 tests/python/deploy_probe.py ws 127.0.0.1 "$http_port" "$key" || fail "MQTT over WebSocket"

# State that must survive: a token made over REST, a persistent session with a queued message.
python3 tests/python/deploy_probe.py http POST "http://127.0.0.1:$http_port/platform/tokens" "$key" \
  '[{"info": "ci-token"}]' >"$tmp/token" || fail "REST token create: $(cat "$tmp/token")"
token=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().split("\n",1)[1])["result"][0]["key"])' "$tmp/token")
mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -u "$key" -V 5 -i ci-persist -c -q 1 -t ci/persist -W 1 >/dev/null 2>&1 || true
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -u "$key" -V 5 -q 1 -t ci/persist -m queued

# docker stop: a v5 client gets DISCONNECT 0x8B, the container exits 0 within the grace period.
python3 tests/python/deploy_probe.py shutdown 127.0.0.1 "$mqtt_port" "$key" >"$tmp/shutdown" 2>&1 &
probe=$!
for _ in $(seq 1 50); do grep -qs connected "$tmp/shutdown" && break; sleep 0.2; done
t0=$(date +%s%N)
docker stop -t 15 "$run_id-a" >/dev/null
elapsed_ms=$((($(date +%s%N) - t0) / 1000000))
wait "$probe" || fail "v5 client at docker stop: $(cat "$tmp/shutdown")"
code=$(docker inspect -f '{{.State.ExitCode}}' "$run_id-a")
[ "$code" = 0 ] || fail "the container exited with $code after docker stop"
[ "$elapsed_ms" -lt 15000 ] || fail "docker stop took ${elapsed_ms} ms"
log "docker stop: exit 0 in ${elapsed_ms} ms, the v5 client got DISCONNECT 0x8B"

# A one-off command on the volume (tern is stopped, the store is free).
docker run --rm -v "$vol:/data" "$image" token list >"$tmp/tokens" || fail "tern token list on the volume"
grep -q '"ci-token"' "$tmp/tokens" || fail "token list does not show ci-token: $(cat "$tmp/tokens")"
log "docker run ... token list ok"

# --- second container on the same volume -------------------------------------------------
start "$run_id-b"
if docker logs "$run_id-b" 2>&1 | grep '^master token:' >/dev/null; then
  fail "the second container made a new master token"
fi
[ "$(sub_one ci/retained "$key")" = kept ] || fail "the retained message did not survive"
[ "$(sub_one ci/persist "$key" -V 5 -i ci-persist -c -q 1)" = queued ] \
  || fail "the persistent session's queued message did not survive"
[ "$(sub_one ci/retained "$token")" = kept ] || fail "the REST-made token did not survive"
log "second container: token, retained message and session kept"
docker stop -t 15 "$run_id-b" >/dev/null

# --- compose -----------------------------------------------------------------------------
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose -p "$run_id" -f docker/compose.yaml)
else
  compose=(docker-compose -p "$run_id" -f docker/compose.yaml)
fi
export TERN_IMAGE="$image" TERN_PUBLISH_ADDR=127.0.0.1
TERN_MQTT_PORT=$(free_port)
TERN_MQTTS_PORT=$(free_port)
TERN_HTTP_PORT=$(free_port)
TERN_HTTPS_PORT=$(free_port)
export TERN_MQTT_PORT TERN_MQTTS_PORT TERN_HTTP_PORT TERN_HTTPS_PORT
"${compose[@]}" up -d >"$tmp/compose" 2>&1 || fail "compose up: $(cat "$tmp/compose")"
# service_healthy SERVICE TRIES: waits until `tern health` answers in the compose service's
# container (the compose files keep the image's 30 s health interval: ask directly, every
# 0.2 s); its id in `healthy_cid`.
service_healthy() {
  healthy_cid=$("${compose[@]}" ps -q "$1")
  [ -n "$healthy_cid" ] || fail "compose started no $1 container"
  containers+=("$healthy_cid")
  for _ in $(seq 1 "$2"); do
    if docker exec "$healthy_cid" /tern health >/dev/null 2>&1; then return; fi
    sleep 0.2
  done
  fail "compose service $1 did not answer tern health"
}
service_healthy tern 100
ccid=$healthy_cid
logs=$(docker logs "$ccid" 2>&1)
ckey=$(sed -n 's/^master token: \([A-Za-z0-9]\{64\}\)$/\1/p' <<<"$logs")
[ -n "$ckey" ] || fail "compose: no master token in the logs"
mosquitto_pub -h 127.0.0.1 -p "$TERN_MQTT_PORT" -u "$ckey" -q 1 -r -t ci/compose -m up
[ "$(mosquitto_sub -h 127.0.0.1 -p "$TERN_MQTT_PORT" -u "$ckey" -t ci/compose -C 1 -W 10)" = up ] \
  || fail "compose: MQTT on the published port"
python3 tests/python/deploy_probe.py ws 127.0.0.1 "$TERN_HTTP_PORT" "$ckey" || fail "compose: WebSocket"
"${compose[@]}" down -v >/dev/null 2>&1 || fail "compose down"
compose=()
log "compose: up, serving on the published ports, down with its volume"

# --- cluster compose -----------------------------------------------------------------------
nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$nats_bin" ] || fail "nats-server is not installed (scripts/test-deps.sh installs it)"
nctx="$tmp/nats-image"
mkdir -p "$nctx"
cp "$nats_bin" "$nctx/nats-server"
# The binary and the libraries it links, at their own paths.
for lib in $(ldd "$nats_bin" | grep -o '/[^ ]*'); do
  mkdir -p "$nctx/root$(dirname "$lib")"
  cp -L "$lib" "$nctx/root$lib"
done
printf 'FROM scratch\nCOPY root/ /\nCOPY nats-server /nats-server\nENTRYPOINT ["/nats-server"]\n' \
  >"$nctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$nats_image" "$nctx" >/dev/null 2>&1 \
  || fail "could not build the nats-server image"
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose -p "${run_id}cl" -f docker/cluster/compose.yaml)
else
  compose=(docker-compose -p "${run_id}cl" -f docker/cluster/compose.yaml)
fi
TERN_MASTER_TOKEN=$(head -c 4096 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 64)
export NATS_IMAGE="$nats_image" TERN_MASTER_TOKEN
ports=()
hports=()
for n in 1 2 3; do
  mqtt=$(free_port)
  hp=$(free_port)
  export "TERN${n}_MQTT_PORT=$mqtt" "TERN${n}_HTTP_PORT=$hp"
  ports+=("$mqtt")
  hports+=("$hp")
done
"${compose[@]}" up -d >"$tmp/cluster" 2>&1 || fail "cluster compose up: $(cat "$tmp/cluster")"
for n in 1 2 3; do
  service_healthy "tern$n" 300
done
sub_out="$tmp/cluster-sub"
mosquitto_sub -h 127.0.0.1 -p "${ports[0]}" -u "$TERN_MASTER_TOKEN" -q 1 -t ci/cluster -C 1 -W 20 \
  >"$sub_out" &
sub_pid=$!
# The subscription is in place once a probe through the same node comes back.
for _ in $(seq 1 50); do
  mosquitto_pub -h 127.0.0.1 -p "${ports[1]}" -u "$TERN_MASTER_TOKEN" -q 1 -t ci/cluster -m across
  sleep 0.2
  [ -s "$sub_out" ] && break
done
wait "$sub_pid" || true
[ "$(head -n 1 "$sub_out")" = across ] || fail "cluster: a message published on tern2 did not reach tern1"
mosquitto_pub -h 127.0.0.1 -p "${ports[2]}" -u "$TERN_MASTER_TOKEN" -q 1 -r -t ci/cluster-kept -m kept
got=""
for _ in $(seq 1 50); do
  got=$(mosquitto_sub -h 127.0.0.1 -p "${ports[0]}" -u "$TERN_MASTER_TOKEN" -t ci/cluster-kept -C 1 -W 1 || true)
  [ "$got" = kept ] && break
done
[ "$got" = kept ] || fail "cluster: a retained message set on tern3 is not on tern1"
# The devices layer: a device made on tern1 with a message posted there is read on tern3.
rest() { # NODE METHOD PATH [BODY]: the JSON answer (fails unless 200)
  local out="$tmp/rest"
  python3 tests/python/deploy_probe.py http "$2" "http://127.0.0.1:${hports[$1]}$3" "$TERN_MASTER_TOKEN" ${4:+"$4"} >"$out" \
    || return 1
  tail -n +2 "$out"
}
made=$(rest 0 POST /gw/devices '[{"name":"ci","device_type_id":1,"configuration":{"ident":"ci-1"}}]') \
  || fail "cluster: device create on tern1: $made"
device=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["result"][0]["id"])' "$made")
rest 0 POST "/gw/devices/$device/messages" '[{"ci.value": 42}]' >/dev/null \
  || fail "cluster: message post on tern1"
seen=""
for _ in $(seq 1 50); do
  seen=$(rest 2 GET "/gw/devices/$device/messages" || true)
  case "$seen" in *'"ci.value":42'*) break ;; esac
  sleep 0.2
done
case "$seen" in *'"ci.value":42'*) ;; *) fail "cluster: the device and message made on tern1 are not read on tern3: $seen" ;; esac
"${compose[@]}" down -v >/dev/null 2>&1 || fail "cluster compose down"
compose=()
log "cluster compose: three nodes healthy, a message across nodes, a retained message on every node, a device and its message made on one node read on another"

log "ok"
