#!/usr/bin/env bash
# The soak: 64 clients mixing hits, misses and faulted fetches against the
# release registry-proxy for SOAK_SECS seconds (default 600). Prints the
# table recorded in BENCHMARKS.md. Not part of the test command.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p registry-proxy
cargo build --release -p benches --bin soak
exec target/release/soak
