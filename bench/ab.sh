#!/usr/bin/env bash
# Interleaved A/B of floe builds on a local directory: for each round, each
# build in turn gets a fresh `floe dev` (on /dev/shm), a warm-up second,
# then a paced produce of 5 s; prints p50/p99/p999 and Floe's CPU per
# produce request. Not part of CI.
#
#   bench/ab.sh ROUNDS LABEL=BIN [LABEL=BIN...]
#   PARTS=1 RATE=300000 bench/ab.sh 3 old=/tmp/floe-old new=target/release/floe
#
# PARTS (default 64) and RATE (default 20000) set the load. Needs
# target/release/floe-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1; shift
parts=${PARTS:-64} rate=${RATE:-20000}
. bench/lib.sh
trap 'cleanup; rm -rf "${data:-}"' EXIT
show='import json, sys; l = json.load(sys.stdin)["produce_latency"]; print("p50 %.1f p99 %.1f p999 %.1f ms" % (l["p50_us"] / 1000, l["p99_us"] / 1000, l["p999_us"] / 1000))'
for round in $(seq 1 "$rounds"); do
    for build in "$@"; do
        label=${build%%=*}
        work=$(mktemp -d /tmp/floe-ab-XXXX); data=$(mktemp -d /dev/shm/floe-ab-XXXX)
        pids=()
        BIN=${build#*=} start_floe --data-dir "$data"
        floe=${pids[-1]}
        bench() { target/release/floe-bench --bootstrap "127.0.0.1:$fk" --json --scenario produce \
            --partitions "$parts" --linger-ms 1 --rate "$rate" "$@"; }
        bench --topic warm --records "$rate" > /dev/null
        before=$(cpu_ms "$floe"); reqs=$(produce_requests)
        latency=$(bench --topic t --records $((rate * 5)) | python3 -c "$show")
        ms=$(( $(cpu_ms "$floe") - before )) n=$(( $(produce_requests) - reqs ))
        echo "$label, round $round: $latency; Floe $ms ms of CPU for $n produce requests ($(( ms * 1000 / n )) us each)"
        cleanup; rm -rf "$data"
    done
done
