#!/usr/bin/env bash
# Produce latency on a local directory at a fixed rate: one `floe dev`,
# several 5-second runs in a row (a fresh topic each), p50/p99/p999, PUTs
# per second per shard, and Floe's and the client's CPU for each. Without
# RATE, one unpaced run for the maximum instead. Not part of CI.
#
#   bench/latency.sh                     # the maximum (2,000,000 records)
#   RATE=230000 ROUNDS="1 2 3" bench/latency.sh
#   DIR=/tmp PARTS=64 RATE=20000 FLOE_ARGS="--compact-bytes 0" bench/latency.sh
#
# DIR holds the data directory (default /dev/shm). On this project's VMs,
# keep what tmpfs holds under ~3 GB (two rounds at 230,000 records/s): past
# it, memory is slow to write and every run collapses (BENCHMARKS.md,
# sessions 17 and 18).
# BIN picks the floe binary (default target/release/floe), for A/B runs.
# Needs target/release/floe-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/floe-lat-XXXX)
data=$(mktemp -d "${DIR:-/dev/shm}/floe-lat-XXXX")
. bench/lib.sh
trap 'cleanup; rm -rf "$data"' EXIT
start_floe --data-dir "$data"
floe=${pids[-1]}
show=$(cat <<'PY'
import json, sys
x = json.load(sys.stdin)
l = x["produce_latency"]
print(f'{x["topic"]}: {x["records_per_s"]:,.0f} records/s, p50 {l["p50_us"] / 1000:.2f} ms, '
      f'p99 {l["p99_us"] / 1000:.2f} ms, p999 {l["p999_us"] / 1000:.2f} ms, '
      f'{x["puts_per_s_per_shard"] or 0:.0f} PUTs/s per shard')
PY
)
run() { # topic records [floe-bench args...]
    local topic=$1 records=$2 before reqs; shift 2
    before=$(cpu_ms "$floe"); reqs=$(produce_requests); client_ms > "$work/c0"
    target/release/floe-bench --bootstrap "127.0.0.1:$fk" --json --metrics-url "http://127.0.0.1:$fh/metrics" \
        --scenario produce --partitions "${PARTS:-1}" --topic "$topic" --records "$records" --linger-ms 1 "$@" |
        python3 -c "$show"
    client_ms > "$work/c1"
    local ms=$(( $(cpu_ms "$floe") - before )) n=$(( $(produce_requests) - reqs ))
    echo "  floe CPU $ms ms for $n produce requests ($(( n ? ms * 1000 / n : 0 )) us each), client CPU $(( $(cat "$work/c1") - $(cat "$work/c0") )) ms"
}
if [ -z "${RATE:-}" ]; then
    run max 2000000
    exit 0
fi
for i in ${ROUNDS:-1 2 3}; do
    run "r$i" $((RATE * 5)) --rate "$RATE"
done
