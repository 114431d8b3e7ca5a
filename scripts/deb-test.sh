#!/usr/bin/env bash
# Builds the Debian package and checks it as an operator would (CI runs this, as root):
# `dpkg -i` installs the binary, /etc/tern/tern.toml, the `tern` user and /var/lib/tern;
# `systemd-analyze verify` accepts the unit; the installed binary starts the way the unit
# starts it (its ExecStart, as user tern, in /var/lib/tern), serves MQTT with the master token
# it wrote, and exits 0 on SIGTERM; `dpkg -r` keeps the data, `dpkg --purge` removes
# everything. Skips, saying so, when not run as root (dpkg -i needs it).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "deb-test: $*"; }
fail() {
  echo "deb-test: FAILED: $*" >&2
  [ -f "${tmp:-/nonexistent}/tern.log" ] && tail -30 "$tmp/tern.log" >&2
  exit 1
}
if [ "$(id -u)" -ne 0 ]; then
  echo "deb-test: SKIPPED: dpkg -i needs root"
  exit 0
fi

tmp=$(mktemp -d)
pid=""
cleanup() {
  set +e
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  dpkg-query -W tern >/dev/null 2>&1 && dpkg --purge tern >/dev/null 2>&1
  rm -rf "$tmp"
}
trap 'rc=$?; cleanup; exit $rc' EXIT

if dpkg-query -W -f '${Status}' tern 2>/dev/null | grep installed >/dev/null; then
  fail "a tern package is already installed here; remove it first (dpkg --purge tern)"
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
  log "installing systemd (for systemd-analyze)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi

scripts/build-deb.sh
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
deb="target/debian/tern_${version}_amd64.deb"
[ "$(dpkg-deb --field "$deb" Package)" = tern ] || fail "$deb has no control file naming tern"

dpkg -i "$deb" >"$tmp/dpkg.log" 2>&1 || fail "dpkg -i: $(cat "$tmp/dpkg.log")"
/usr/bin/tern --version >/dev/null || fail "/usr/bin/tern does not run"
getent passwd tern >/dev/null || fail "no tern user"
[ "$(stat -c %U:%G /var/lib/tern)" = tern:tern ] || fail "/var/lib/tern is not tern's"
grep -q '^data_dir = "/var/lib/tern"$' /etc/tern/tern.toml || fail "/etc/tern/tern.toml data_dir"
unit=/lib/systemd/system/tern.service
[ -f "$unit" ] || fail "no $unit"
systemd-analyze verify "$unit" >"$tmp/verify.log" 2>&1 || fail "systemd-analyze verify: $(cat "$tmp/verify.log")"
for key in ProtectSystem=strict NoNewPrivileges=yes LimitNOFILE= User=tern; do
  grep -q "^$key" "$unit" || fail "the unit lacks $key"
done
log "installed: binary, user, /var/lib/tern, /etc/tern/tern.toml; the unit verifies"

# Start it the way the unit does: its ExecStart, as its user, in its working directory. The
# listeners move to free loopback ports (the unit's environment would be the place for it).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
mqtt_port=$(free_port)
http_port=$(free_port)
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
# setpriv execs (runuser would stay as a parent and turn SIGTERM into its own exit status).
(cd /var/lib/tern && exec setpriv --reuid=tern --regid=tern --init-groups env TERN_LISTENERS_MQTT="127.0.0.1:$mqtt_port" \
  TERN_LISTENERS_HTTP="127.0.0.1:$http_port" $exec_start) >"$tmp/tern.log" 2>&1 &
pid=$!
ok=""
for _ in $(seq 1 100); do
  if /usr/bin/tern health --addr "127.0.0.1:$http_port" --timeout 1 >/dev/null 2>&1; then ok=yes; break; fi
  sleep 0.1
done
[ -n "$ok" ] || fail "the installed tern did not become healthy"
[ -f /var/lib/tern/master-token ] || fail "no /var/lib/tern/master-token"
[ "$(stat -c %U /var/lib/tern/master-token)" = tern ] || fail "master-token is not tern's"
key=$(cat /var/lib/tern/master-token)
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -u "$key" -q 1 -r -t deb/ok -m installed
got=$(mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -u "$key" -t deb/ok -C 1 -W 10)
[ "$got" = installed ] || fail "MQTT with the master token: got '$got'"
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=""
[ "$status" = 0 ] || fail "exit status $status after SIGTERM"
log "the installed tern served MQTT and exited 0 on SIGTERM"

dpkg -r tern >"$tmp/dpkg.log" 2>&1 || fail "dpkg -r: $(cat "$tmp/dpkg.log")"
[ ! -e /usr/bin/tern ] || fail "dpkg -r left /usr/bin/tern"
[ ! -e "$unit" ] || fail "dpkg -r left the unit"
[ -d /var/lib/tern ] || fail "dpkg -r removed the data"
dpkg --purge tern >"$tmp/dpkg.log" 2>&1 || fail "dpkg --purge: $(cat "$tmp/dpkg.log")"
[ ! -e /etc/tern/tern.toml ] || fail "purge left /etc/tern/tern.toml"
[ ! -e /var/lib/tern ] || fail "purge left /var/lib/tern"
! getent passwd tern >/dev/null || fail "purge left the tern user"
log "dpkg -r kept the data; dpkg --purge removed everything"
log "ok"
