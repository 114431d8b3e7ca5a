#!/usr/bin/env bash
# Installs what the tests need besides Rust itself: the test runner cargo-nextest (built from
# crates.io), Debian's mosquitto-clients (mosquitto_pub/mosquitto_sub) and mosquitto (the broker
# tern-mqttc's tests connect to, with mosquitto_passwd), Debian's nats-server (the NATS server
# the cluster tests run their nodes on, with JetStream), Debian's iproute2 (`ip netns`: the cluster
# partition test cuts a node and its NATS server off in a network namespace, as root), PyPI's
# paho-mqtt and gmqtt, and MQTT.js from npm (tests/node, pinned by its package-lock.json).
# Idempotent; quick when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest (cargo install, a few minutes)"
  cargo install --locked cargo-nextest
fi

if ! command -v mosquitto_pub >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1; then
  echo "installing mosquitto-clients"
  sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq mosquitto-clients >/dev/null
fi

if [ ! -x /usr/sbin/mosquitto ] && ! command -v mosquitto >/dev/null 2>&1; then
  echo "installing mosquitto"
  sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq mosquitto >/dev/null
fi

if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ] && [ ! -x /usr/bin/nats-server ]; then
  echo "installing nats-server"
  sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq nats-server >/dev/null
fi

if ! command -v ip >/dev/null 2>&1 && [ ! -x /usr/sbin/ip ] && [ ! -x /sbin/ip ]; then
  echo "installing iproute2"
  sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq iproute2 >/dev/null
fi

if ! python3 -c 'import paho.mqtt' >/dev/null 2>&1; then
  echo "installing paho-mqtt"
  python3 -m pip install --quiet --disable-pip-version-check 'paho-mqtt>=2,<3'
fi

if ! python3 -c 'import gmqtt' >/dev/null 2>&1; then
  echo "installing gmqtt"
  python3 -m pip install --quiet --disable-pip-version-check 'gmqtt==0.8.0'
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "node and npm are needed for the MQTT.js tests (tests/node)" >&2
  exit 1
fi
if [ ! -d tests/node/node_modules ]; then
  echo "installing MQTT.js (tests/node)"
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi
