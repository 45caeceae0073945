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
    "python3:python3"                   # runs moto, the S3 server
    "podman:podman"                     # builds and runs the container image
    "runc:runc"                         # podman's runtime here (crun fails under cgroups v1)
    "openssl:openssl"                   # makes keys and signatures for the trust tests
    "curl:curl"                         # a client in the prefetch test
    "promtool:prometheus"               # checks and unit-tests the alerting rules in deploy/
    "chromium:chromium"                 # the browser the web console's tests drive, headless
    "chromedriver:chromium-driver"      # ... over WebDriver
)

missing=()
for pair in "${NEEDED[@]}"; do
    bin="${pair%%:*}"; pkg="${pair##*:}"
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/bin/$bin" ]; then
        missing+=("$pkg")
    fi
done
# moto's server runs from a virtual environment (Debian's python3-venv).
if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
    missing+=("python3-venv")
fi
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

# moto (PyPI), an S3 implementation with conditional writes, for the S3
# backend's tests; in a virtual environment in .tools/moto (git-ignored).
MOTO_VERSION=5.2.5
if ! .tools/moto/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('moto') != '$MOTO_VERSION')" >/dev/null 2>&1; then
    echo "==> installing moto $MOTO_VERSION (PyPI) into .tools/moto"
    python3 -m venv .tools/moto
    .tools/moto/bin/pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi

# The Sigstore public corpus the trust tests verify offline: the test data
# of the `sigstore` crate (sigstore-rs) on crates.io, real bundles signed
# by the public-good Fulcio and logged in Rekor, with the trusted root
# they verify against. Fetched as crate source (nothing is compiled) and
# unpacked into .tools/sigstore-corpus (git-ignored).
SIGSTORE_CORPUS=0.15.0
CORPUS=.tools/sigstore-corpus
if [ ! -f "$CORPUS/sigstore-$SIGSTORE_CORPUS/tests/data/bundle_v03.json" ]; then
    echo "==> fetching the sigstore $SIGSTORE_CORPUS crate's test corpus into $CORPUS"
    mkdir -p "$CORPUS/src"
    : > "$CORPUS/src/lib.rs"
    printf '[package]\nname = "sigstore-corpus"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\nsigstore = { version = "=%s", default-features = false }\n\n[workspace]\n' \
        "$SIGSTORE_CORPUS" > "$CORPUS/Cargo.toml"
    cargo fetch --quiet --manifest-path "$CORPUS/Cargo.toml"
    crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"sigstore-$SIGSTORE_CORPUS.crate" | head -n 1)
    tar -xzf "$crate" -C "$CORPUS" \
        "sigstore-$SIGSTORE_CORPUS/tests/data" "sigstore-$SIGSTORE_CORPUS/trust_root"
fi

echo "==> cargo fmt --check"
cargo fmt --all --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "==> cargo doc (broken intra-doc links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --locked --quiet

echo "==> scripts/image.sh (the container image the image test runs)"
# Without the release profile's fat LTO: the image test checks what the
# image does, not its speed, and the cross-crate link would add minutes to
# every fresh run of this suite. scripts/image.sh alone builds it with LTO.
CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 scripts/image.sh

echo "==> cargo test"
cargo test --workspace --all-features --locked
