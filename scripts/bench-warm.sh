#!/usr/bin/env bash
# The warm small-request comparison: registry-proxy against nginx serving the
# same bytes and the distribution registry's proxy mode, with wrk. Installs
# what is missing, builds release binaries, prints the table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for pair in docker-registry:docker-registry skopeo:skopeo nginx:nginx-light wrk:wrk; do
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
cargo build --release -p benches --bin warm-small
exec "${CARGO_TARGET_DIR:-target}"/release/warm-small
