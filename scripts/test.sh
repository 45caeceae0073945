#!/usr/bin/env bash
# The one command that runs every test: installs what the suite needs on a
# fresh Debian machine when it is missing, then runs formatting, lints and
# the whole test suite. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the suite needs: "command-it-provides:package".
NEEDED=(
    "docker-registry:docker-registry"   # the CNCF distribution registry, as upstream
    "skopeo:skopeo"                     # pushes test images, pulls through the proxy
    "htpasswd:apache2-utils"            # bcrypt htpasswd files for registry auth
    "npm:npm"                           # installs Azurite, the Azure Blob emulator
)

missing=()
for pair in "${NEEDED[@]}"; do
    bin="${pair%%:*}"; pkg="${pair##*:}"
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/bin/$bin" ]; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> installing missing Debian packages: ${missing[*]}"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# Azurite (npm), Microsoft's Azure Storage emulator, for the object storage
# backend's tests; kept in .tools/ (git-ignored). The tests find it there.
AZURITE_VERSION=3.35.0   # the newest that runs on Node.js 20
if ! grep -qs "\"version\": \"$AZURITE_VERSION\"" .tools/node_modules/azurite/package.json; then
    echo "==> installing Azurite $AZURITE_VERSION (npm) into .tools"
    npm install --prefix .tools --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION"
fi

echo "==> cargo fmt --check"
cargo fmt --all --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "==> cargo test"
cargo test --workspace --all-features --locked
