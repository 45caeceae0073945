#!/usr/bin/env bash
# Cold 256 MiB GETs through registry-proxy and through the distribution
# registry's proxy mode, alternating, each on a fresh store and process,
# with `perf stat` on the proxy during each GET (BENCHMARKS.md, "Issue 21's
# targets"). A Debian distribution registry on loopback holds one random
# 256 MiB blob; curl pulls it. Prints one line per GET and the medians,
# including how many cores were busy during the GET (all processes, from
# /proc/stat): what a pipeline that stalls on hand-offs leaves idle; and
# the clients' CPU (user + system of the curls or get-many).
#
#   ROUNDS=8 scripts/bench-cold-ab.sh
#   VARIANTS="ours dist MALLOC_ARENA_MAX=1" scripts/bench-cold-ab.sh
#   VARIANTS="ours /tmp/registry-proxy-before" scripts/bench-cold-ab.sh
#   CLIENTS=16 VARIANTS="ours server.connection_threads=2 dist" scripts/bench-cold-ab.sh
#   CLIENT=reqwest CLIENTS=16 VARIANTS="ours /tmp/registry-proxy-before" scripts/bench-cold-ab.sh
#
# A variant is `ours`, `dist`, NAME=VALUE: ours with that environment
# variable set (a glibc tunable, say), server.KEY=VALUE: ours with that
# line in its config's [server] table, or a path: another build of ours
# (an earlier commit's, to compare two versions side by side). CLIENTS=N
# runs N curls at once for each cold blob (BENCHMARKS' 16 concurrent cold
# GETs): first byte is then the earliest, total the latest, and peak RSS
# the proxy's during all of them. CLIENT=reqwest makes the N GETs from one
# process (benches' get-many, reqwest on one tokio worker per core), as
# the end-to-end harness's clients are, instead of N curls. Needs
# docker-registry, curl, perf and
# python3 (Debian: docker-registry, curl, linux-perf, python3). Loopback
# only; bounded: ROUNDS x variants GETs, each with curl's 60 s limit.
set -euo pipefail
cd "$(dirname "$0")/.."
for bin in docker-registry curl perf python3; do
    command -v "$bin" >/dev/null || { echo "$bin is missing: apt-get install docker-registry curl linux-perf python3" >&2; exit 1; }
done
ROUNDS=${ROUNDS:-8}
CLIENTS=${CLIENTS:-1}
CLIENT=${CLIENT:-curl}
VARIANTS=${VARIANTS:-ours dist}
. scripts/upstream-blob.sh
# CPU (ms) the clients used between two `times` outputs ($1, $2), each
# taken in the loop's own shell: its reaped children's user + system.
clients_cpu_ms() {
    awk 'FNR == 2 { for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t[FILENAME] += a[1] * 60 + a[2] } }
        END { printf "%d\n", (t[ARGV[2]] - t[ARGV[1]]) * 1000 }' "$1" "$2"
}
start_upstream_with_blob
[ "$CLIENT" = reqwest ] && need_get_many
# The upstream's file in the page cache before the first measured GET.
curl -sf -o /dev/null "http://$UP/v2/bench/big/blobs/$DG"
for i in $(seq "$ROUNDS"); do
    for v in $VARIANTS; do
        PX=127.0.0.1:$(port)
        rm -rf "$D/store"
        if [ "$v" = dist ]; then
            printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n  secret: bench-only\nproxy:\n  remoteurl: http://%s\n' \
                "$D/store" "$PX" "$UP" > "$D/dist.yml"
            docker-registry serve "$D/dist.yml" > "$D/proxy.log" 2>&1 & P=$!
        else
            write_proxy_config "$PX" "$D/store"
            envs=(RUST_LOG=warn); bin=$BIN
            case "$v" in
                ours) ;;
                server.*=*) printf '[server]\n%s = %s\n' "${v%%=*}" "${v#*=}" | sed 's/^server\.//' >> "$D/proxy.toml" ;;
                */*) bin=$v ;;
                *) envs+=("$v") ;;
            esac
            env "${envs[@]}" "$bin" --config "$D/proxy.toml" > "$D/proxy.log" 2>&1 & P=$!
        fi
        PIDS+=("$P")
        for _ in $(seq 100); do curl -sf "http://$PX/v2/" >/dev/null && break; sleep 0.05; done
        sync; sleep 0.3
        perf stat -e task-clock,context-switches,page-faults -p "$P" -o "$D/stat" 2>/dev/null & S=$!
        sleep 0.3
        cpu0=$(awk '/^cpu /{print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
        times > "$D/times0"
        if [ "$CLIENT" = reqwest ]; then
            "$GET_MANY" "$CLIENTS" "http://$PX/v2/bench/big/blobs/$DG" > "$D/curl.all"
        else
            CURLS=()
            for c in $(seq "$CLIENTS"); do
                curl -sS --max-time 60 -o /dev/null -w '%{time_starttransfer} %{time_total} %{size_download}\n' "http://$PX/v2/bench/big/blobs/$DG" > "$D/curl.$c" & CURLS+=($!)
            done
            wait "${CURLS[@]}"
        fi
        times > "$D/times1"
        t=$(cat "$D"/curl.* | awk 'NR == 1 || $1 < f {f = $1} NR == 1 || $2 > l {l = $2} NR == 1 || $3 < s {s = $3} END {print f, l, s}')
        rm -f "$D"/curl.*
        kill -INT "$S"; wait "$S" 2>/dev/null || true
        hwm=$(awk '/VmHWM/{print $2}' "/proc/$P/status")
        stat=$(awk '/task-clock/{c=$1} /context-switches/{s=$1} /page-faults/{f=$1} END{gsub(",","",c); gsub(",","",s); gsub(",","",f); print c, s, f}' "$D/stat")
        cpu1=$(awk '/^cpu /{print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
        # Cores busy during the GET, whoever kept them busy (all processes).
        busy=$(echo "$cpu0 $cpu1" | awk -v n="$(nproc)" '{t = $4 - $2; print (t > 0 ? n * (1 - ($3 - $1) / t) : 0)}')
        # Between the two, the shell reaped the clients (and for curls one `seq`).
        echo "$v $t $stat $hwm $busy $(clients_cpu_ms "$D/times0" "$D/times1")"
        kill "$P"; wait "$P" 2>/dev/null || true
    done
done | tee "$D/lines"
python3 - "$D/lines" <<'EOF'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    v, ttfb, total, size, cpu_ms, cs, faults, hwm, busy, kids = line.split()
    rows[v].append((float(ttfb), float(total), float(cpu_ms), float(cs), float(faults), float(hwm), float(busy), float(kids)))
print("variant: medians of first byte (s), total (s), proxy CPU (ms, perf task-clock, until the GET ends), context switches, page faults, peak RSS (KiB), cores busy during the GET (all processes), clients' CPU (ms)")
for v, r in rows.items():
    med = [statistics.median(x) for x in zip(*r)]
    print(f"{v}: {med[0]:.3f} s, {med[1]:.3f} s, {med[2]:.0f} ms, {med[3]:.0f}, {med[4]:.0f}, {med[5]:.0f}, {med[6]:.2f}, {med[7]:.0f}")
EOF
