#!/usr/bin/env bash
# Builds the `FROM scratch` image (docker/Dockerfile.scratch) from the static binary, with no
# registry: the build context is a staging directory holding only what the image needs (the
# binary, config/tern.toml, the empty data directory), so the classic builder sends a few MB
# rather than the whole checkout, and no BuildKit frontend image is fetched.
#
#   scripts/docker-image.sh [TAG]          (default tern:scratch; builds the binary if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${1:-tern:scratch}"
bin=target/x86_64-unknown-linux-gnu/release/tern
if [ ! -x "$bin" ]; then
  scripts/build-static.sh
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/$(dirname "$bin")" "$ctx/config" "$ctx/docker/data"
cp "$bin" "$ctx/$bin"
cp config/tern.toml "$ctx/config/tern.toml"
cp docker/Dockerfile.scratch "$ctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null
echo "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}'))"
