# Sourced by the cold-path bench scripts from the repository's root (not
# run on its own). Builds the release registry-proxy (unless NO_BUILD is
# set) and sets BIN to it; makes a scratch directory D and an array PIDS of
# processes, both cleaned up on exit. Then `start_upstream_with_blob`
# starts a Debian distribution registry on a free loopback port holding
# one random 256 MiB blob in bench/big (sets UP, its host:port, and DG, the
# blob's digest), and `write_proxy_config` writes a registry-proxy config
# in front of it. `need_get_many` builds benches' get-many (unless
# NO_BUILD) and sets GET_MANY to it, for CLIENT=reqwest.

[ -n "${NO_BUILD:-}" ] || cargo build --release -p registry-proxy
BIN="${CARGO_TARGET_DIR:-target}/release/registry-proxy"
D=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$D"; }
trap cleanup EXIT

need_get_many() {
    GET_MANY="${CARGO_TARGET_DIR:-target}/release/get-many"
    [ -n "${NO_BUILD:-}" ] || cargo build --release -p benches --bin get-many
    [ -x "$GET_MANY" ] || { echo "$GET_MANY is missing: cargo build --release -p benches --bin get-many" >&2; exit 1; }
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_upstream_with_blob() {
    UP=127.0.0.1:$(port)
    mkdir -p "$D/reg"
    printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n  secret: bench-only\n' "$D/reg" "$UP" > "$D/reg.yml"
    docker-registry serve "$D/reg.yml" > "$D/reg.log" 2>&1 & PIDS+=($!)
    head -c $((256 * 1024 * 1024)) /dev/urandom > "$D/blob"
    DG=sha256:$(sha256sum "$D/blob" | cut -d' ' -f1)
    for _ in $(seq 100); do curl -sf "http://$UP/v2/" >/dev/null && break; sleep 0.1; done
    local loc sep
    loc=$(curl -sfi -X POST "http://$UP/v2/bench/big/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
    case "$loc" in http*) ;; *) loc="http://$UP$loc" ;; esac
    sep='?'; case "$loc" in *\?*) sep='&' ;; esac
    curl -sf -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$D/blob" "$loc${sep}digest=$DG" >/dev/null
    rm -f "$D/blob"
}

# Writes $D/proxy.toml: registry-proxy on $1 (host:port), store $2, the rule bench/* for $UP.
write_proxy_config() {
    printf 'listen = "%s"\n[storage]\npath = "%s"\n[[registry]]\nhost = "%s"\nendpoint = "http://%s"\n[[rule]]\nname = "bench"\nsource = "%s/bench/*"\ntarget = "bench/*"\n' \
        "$1" "$2" "$UP" "$UP" "$UP" > "$D/proxy.toml"
}
