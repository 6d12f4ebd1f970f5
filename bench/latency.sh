#!/usr/bin/env bash
# Produce latency on a local directory at a fixed rate: one `floe dev`,
# several runs of SECS (default 5) seconds in a row (a fresh topic each), p50/p99/p999, PUTs
# per second per shard, and Floe's and the client's CPU for each. Without
# RATE, one unpaced run for the maximum instead. Not part of CI.
#
#   bench/latency.sh                     # the maximum (2,000,000 records)
#   RATE=230000 ROUNDS="1 2 3" bench/latency.sh
#   DIR=/tmp PARTS=64 RATE=20000 FLOE_ARGS="--compact-bytes 0" bench/latency.sh
#   CLIENT_STATS=1 PARTS=64 RATE=194000 bench/latency.sh
#   SECS=30 RATE=2000 FLOE_ARGS="--store-latency s3 ..." bench/latency.sh
#
# Each run also prints Floe's own share: the produce requests it answered
# within 2, 5 and 10 ms (`floe_produce_duration_seconds`, from reading a
# request to its answer being ready) and how long its WAL PUTs took. With
# CLIENT_STATS=1, the client's side too, from librdkafka's statistics: the
# p99 of each second's time queued in the client and request round trip.
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
w = x.get("client_windows")
for name, key in (("queued in the client", "int_latency"), ("request round trip", "rtt")):
    if w:
        print(f'  {name}: p99 per second', ", ".join(f"{p99 / 1000:.1f}" for _, p99 in w[key]), "ms")
PY
)
# The share of a histogram's observations within 2, 5 and 10 ms between two
# scrapes of /metrics: within NAME FILE0 FILE1.
within() {
    python3 - "$@" <<'PY'
import re, sys
name, f0, f1 = sys.argv[1:]
def buckets(f):
    return {m.group(1): float(l.split()[-1]) for l in open(f)
            if l.startswith(name) and (m := re.search(r'le="([^"]+)"', l))}
a, b = buckets(f0), buckets(f1)
n = b.get("+Inf", 0) - a.get("+Inf", 0)
if n:
    print(" / ".join(f"{(b[k] - a.get(k, 0)) / n:.1%}" for k in ("0.002", "0.005", "0.01")), end="")
PY
}
histograms() { curl -s "http://127.0.0.1:$fh/metrics" | grep -E '^floe_(produce_duration_seconds|store_call_duration_seconds)_bucket' || true; }
run() { # topic records [floe-bench args...]
    local topic=$1 records=$2 before reqs; shift 2
    before=$(cpu_ms "$floe"); reqs=$(produce_requests); client_ms > "$work/c0"; histograms > "$work/h0"
    target/release/floe-bench --bootstrap "127.0.0.1:$fk" --json --metrics-url "http://127.0.0.1:$fh/metrics" \
        --scenario produce --partitions "${PARTS:-1}" --topic "$topic" --records "$records" --linger-ms 1 \
        ${CLIENT_STATS:+--client-stats} "$@" |
        python3 -c "$show"
    client_ms > "$work/c1"; histograms > "$work/h1"
    local ms=$(( $(cpu_ms "$floe") - before )) n=$(( $(produce_requests) - reqs ))
    echo "  floe CPU $ms ms for $n produce requests ($(( n ? ms * 1000 / n : 0 )) us each), client CPU $(( $(cat "$work/c1") - $(cat "$work/c0") )) ms"
    echo "  within 2 / 5 / 10 ms: floe's produce requests $(within floe_produce_duration "$work/h0" "$work/h1"), its PUTs $(within 'floe_store_call_duration_seconds_bucket{op="put"' "$work/h0" "$work/h1")"
}
if [ -z "${RATE:-}" ]; then
    run max 2000000
    exit 0
fi
for i in ${ROUNDS:-1 2 3}; do
    run "r$i" $((RATE * ${SECS:-5})) --rate "$RATE"
done
