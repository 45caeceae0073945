#!/usr/bin/env bash
# Profiles one cold 256 MiB GET through registry-proxy (BENCHMARKS.md,
# "Issue 21's targets"): a Debian distribution registry on loopback holding
# one random 256 MiB blob, a fresh release registry-proxy in front of it,
# `perf record` of the proxy while curl pulls the blob once. Prints the
# GET's time, the proxy's CPU seconds and the perf report (inclusive shares).
# Needs docker-registry, curl and perf (Debian: docker-registry, curl,
# linux-perf). Loopback only; bounded: one GET, perf for 6 s.
set -euo pipefail
cd "$(dirname "$0")/.."
for bin in docker-registry curl perf; do
    command -v "$bin" >/dev/null || { echo "$bin is missing: apt-get install docker-registry curl linux-perf" >&2; exit 1; }
done
. scripts/upstream-blob.sh
start_upstream_with_blob
PX=127.0.0.1:$(port)
write_proxy_config "$PX" "$D/store"
RUST_LOG=warn "$BIN" --config "$D/proxy.toml" > "$D/proxy.log" 2>&1 & P=$!; PIDS+=($P)
for _ in $(seq 100); do curl -sf "http://$PX/v2/" >/dev/null && break; sleep 0.05; done
perf record -F 1999 -g --call-graph dwarf,16384 -p "$P" -o "$D/cold.perf" -- sleep 6 > "$D/perf.out" 2>&1 & R=$!
sleep 0.5
curl -s -o /dev/null -w "cold GET: %{time_total} s, %{size_download} bytes\n" "http://$PX/v2/bench/big/blobs/$DG"
wait "$R"
awk '{printf "proxy CPU: %.2f s user, %.2f s system\n", $14/100, $15/100}' "/proc/$P/stat"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
perf report -i "$D/cold.perf" --children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9]' \
    | grep -E 'digest_blocks$|vfs_write$|tcp_sendmsg$|tcp_recvmsg$|do_fsync$|ext4_writepages$|__x64_sys_futex$|schedule$|__x64_sys_epoll_wait$|asm_exc_page_fault$|do_syscall_64$' || true
