#!/usr/bin/env bash
# Object storage through registry-proxy on Azurite: warm reads against a
# direct ranged GET from Azurite, and a cold blob over three instances
# against one. Installs Azurite if missing, builds release binaries, prints
# the tables for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
AZURITE_VERSION=3.35.0
if ! grep -qs "\"version\": \"$AZURITE_VERSION\"" .tools/node_modules/azurite/package.json; then
    npm install --prefix .tools --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION"
fi
cargo build --release -p registry-proxy
cargo build --release -p benches --bin replicas
exec "${CARGO_TARGET_DIR:-target}/release/replicas"
