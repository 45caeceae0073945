#!/usr/bin/env bash
# Warm 256 MiB GETs side by side: registry-proxy, the distribution
# registry's proxy mode and nginx (sendfile, tcp_nopush) serving the very
# same file, round-robin in one run (BENCHMARKS.md, "Issue 21's targets").
# A Debian distribution registry on loopback holds one random 256 MiB blob;
# both proxies fetch it once, and the GETs begin only when each is done
# storing it. curl pulls; prints one line per GET and the medians.
#
#   ROUNDS=10 scripts/bench-warm-ab.sh
#   CLIENT=reqwest ROUNDS=15 scripts/bench-warm-ab.sh
#
# CLIENT=reqwest makes each GET with benches' get-many (reqwest, as the
# end-to-end harness's client) instead of curl.
# Needs docker-registry, nginx, curl and python3 (Debian: docker-registry,
# nginx-light, curl, python3). Loopback only; bounded: 3 x ROUNDS GETs,
# each with curl's 60 s limit.
set -euo pipefail
cd "$(dirname "$0")/.."
for bin in docker-registry curl python3; do
    command -v "$bin" >/dev/null || { echo "$bin is missing: apt-get install docker-registry nginx-light curl python3" >&2; exit 1; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx is missing: apt-get install nginx-light" >&2; exit 1; }
ROUNDS=${ROUNDS:-10}
CLIENT=${CLIENT:-curl}
. scripts/upstream-blob.sh
start_upstream_with_blob
[ "$CLIENT" = reqwest ] && need_get_many
hex=${DG#sha256:}

OURS=127.0.0.1:$(port)
write_proxy_config "$OURS" "$D/ours"
RUST_LOG=warn "$BIN" --config "$D/proxy.toml" > "$D/ours.log" 2>&1 & PIDS+=($!)
DIST=127.0.0.1:$(port)
printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n  secret: bench-only\nproxy:\n  remoteurl: http://%s\n' \
    "$D/dist" "$DIST" "$UP" > "$D/dist.yml"
docker-registry serve "$D/dist.yml" > "$D/dist.log" 2>&1 & PIDS+=($!)
NG=127.0.0.1:$(port)
mkdir -p "$D/ng"
ln -s "$D/reg/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data" "$D/ng/$hex"
printf 'daemon off;\nworker_processes 2;\nuser root;\npid %s/nginx.pid;\nerror_log %s/nginx.err;\nevents { worker_connections 64; }\nhttp {\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  client_body_temp_path %s;\n  proxy_temp_path %s;\n  fastcgi_temp_path %s;\n  uwsgi_temp_path %s;\n  scgi_temp_path %s;\n  server { listen %s; root %s; }\n}\n' \
    "$D" "$D" "$D" "$D" "$D" "$D" "$D" "$NG" "$D/ng" > "$D/nginx.conf"
"$NGINX" -c "$D/nginx.conf" -e "$D/nginx.err" & PIDS+=($!)
for hp in "$OURS/v2/" "$DIST/v2/" "$NG/"; do
    for _ in $(seq 100); do curl -s -o /dev/null "http://$hp" && break; sleep 0.05; done
done

ours_url="http://$OURS/v2/bench/big/blobs/$DG"
dist_url="http://$DIST/v2/bench/big/blobs/$DG"
ng_url="http://$NG/$hex"
curl -sf -o /dev/null "$ours_url"
curl -sf -o /dev/null "$dist_url"
# Distribution stores the blob from a second upstream GET after its
# client's: wait until its stored copy is whole.
stored="$D/dist/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data"
for _ in $(seq 600); do
    [ "$(stat -c %s "$stored" 2>/dev/null || echo 0)" = 268435456 ] && break
    sleep 0.1
done
sleep 1
for i in $(seq "$ROUNDS"); do
    for v in ours dist nginx; do
        case $v in ours) u=$ours_url ;; dist) u=$dist_url ;; nginx) u=$ng_url ;; esac
        if [ "$CLIENT" = reqwest ]; then
            t=$("$GET_MANY" 1 "$u" | awk '{print $2, $3}')
        else
            t=$(curl -sS --max-time 60 -o /dev/null -w '%{time_total} %{size_download}' "$u")
        fi
        echo "$v $t"
    done
done | tee "$D/lines"
python3 - "$D/lines" <<'EOF'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    v, total, size = line.split()
    assert int(size) == 256 * 1024 * 1024, line
    rows[v].append(float(total))
med = {v: statistics.median(t) for v, t in rows.items()}
for v, m in med.items():
    print(f"{v}: median {m:.3f} s, {256 / m:.0f} MiB/s")
print(f"ours against distribution: {med['dist'] / med['ours']:.2f}x throughput; against nginx: {med['nginx'] / med['ours']:.2f}x")
EOF
