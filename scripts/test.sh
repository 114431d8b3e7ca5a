#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, property tests and the black-box tests against
# a real broker. Installs the external test clients first if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
cargo nextest run --workspace --no-fail-fast "$@"
