#!/usr/bin/env bash
# The end-to-end comparison: registry-proxy against the distribution
# registry's proxy mode, with nginx as the ceiling. Installs what is
# missing, builds release binaries, runs, and writes BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for pair in docker-registry:docker-registry skopeo:skopeo nginx:nginx-light; do
    bin="${pair%%:*}"; pkg="${pair##*:}"
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ] && [ ! -x "/usr/bin/$bin" ]; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""; if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
cargo build --release -p registry-proxy
cargo build --release -p benches --bin e2e-compare
exec "${CARGO_TARGET_DIR:-target}"/release/e2e-compare
