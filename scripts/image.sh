#!/usr/bin/env bash
# Builds the container image localhost/registry-proxy:<version> (and :latest)
# with podman: a static release binary built here, copied with a CA bundle
# and the default configuration (deploy/container/) into a FROM scratch
# image. Needs no network beyond what cargo already fetched. Prints the
# image's name.
set -euo pipefail
cd "$(dirname "$0")/.."

for bin in podman; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "scripts/image.sh: $bin not found: apt-get install podman runc (scripts/test.sh does)" >&2
        exit 1
    fi
done

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
target=x86_64-unknown-linux-gnu
echo "==> building the static registry-proxy $version" >&2
# Where the binary lands is cargo's to say (CARGO_TARGET_DIR, a
# configured build.target-dir): it names the executable in its messages.
bin=$(RUSTFLAGS="-C target-feature=+crt-static" \
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --locked --release --target "$target" -p registry-proxy \
        --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\/registry-proxy\)".*/\1/p' | tail -n 1)
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "scripts/image.sh: cargo named no registry-proxy executable" >&2
    exit 1
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
cp deploy/container/config.toml "$ctx/"
mkdir "$ctx/data"

# podman's defaults do not suit every machine (crun under cgroups v1,
# ulimits above the hard limits): a containers.conf of ours unless the
# caller gave one.
if [ -z "${CONTAINERS_CONF:-}" ]; then
    cat > "$ctx/containers.conf" <<'CONF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
    export CONTAINERS_CONF="$ctx/containers.conf"
fi

echo "==> podman build localhost/registry-proxy:$version" >&2
podman build --quiet -f deploy/container/Containerfile \
    -t "localhost/registry-proxy:$version" -t localhost/registry-proxy:latest "$ctx" >&2
echo "localhost/registry-proxy:$version"
