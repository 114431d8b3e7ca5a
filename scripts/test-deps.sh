#!/usr/bin/env bash
# Installs what the black-box tests drive besides Rust: Debian's mosquitto-clients
# (mosquitto_pub/mosquitto_sub) and PyPI's paho-mqtt. Idempotent; quick when all is present.
set -euo pipefail

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v mosquitto_pub >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1; then
  echo "installing mosquitto-clients"
  sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq mosquitto-clients >/dev/null
fi

if ! python3 -c 'import paho.mqtt' >/dev/null 2>&1; then
  echo "installing paho-mqtt"
  python3 -m pip install --quiet --disable-pip-version-check 'paho-mqtt>=2,<3'
fi
