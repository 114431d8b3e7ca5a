#!/usr/bin/env bash
# Builds target/debian/tern_<version>_amd64.deb with dpkg-deb (Debian's own packager): the
# static binary as /usr/bin/tern, config/tern.toml as /etc/tern/tern.toml (a conffile, with
# store.data_dir = /var/lib/tern), the hardened systemd unit, and maintainer scripts that
# create the `tern` system user and /var/lib/tern (packaging/debian/).
#
#   scripts/build-deb.sh            (builds the static binary first when it is missing)
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/x86_64-unknown-linux-gnu/release/tern
if [ ! -x "$bin" ]; then
  scripts/build-static.sh
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || { echo "no version in Cargo.toml" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$bin" "$root/usr/bin/tern"
install -d -m 0755 "$root/etc/tern"
sed 's|^data_dir = .*|data_dir = "/var/lib/tern"|' config/tern.toml >"$root/etc/tern/tern.toml"
grep -q '^data_dir = "/var/lib/tern"$' "$root/etc/tern/tern.toml" \
  || { echo "config/tern.toml has no data_dir line to point at /var/lib/tern" >&2; exit 1; }
chmod 0640 "$root/etc/tern/tern.toml"
install -D -m 0644 packaging/debian/tern.service "$root/lib/systemd/system/tern.service"
install -D -m 0644 README.md "$root/usr/share/doc/tern/README.md"
install -D -m 0644 docs/expressions.md "$root/usr/share/doc/tern/expressions.md"
cat >"$root/usr/share/doc/tern/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tern
License: Apache-2.0

Files: *
Copyright: the tern developers
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT

install -d -m 0755 "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" packaging/debian/control.in >"$root/DEBIAN/control"
install -m 0644 packaging/debian/conffiles "$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
  install -m 0755 "packaging/debian/$script" "$root/DEBIAN/$script"
done

mkdir -p target/debian
deb="target/debian/tern_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "built $deb ($(du -h "$deb" | cut -f1))"
