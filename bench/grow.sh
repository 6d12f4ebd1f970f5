#!/usr/bin/env bash
# What a long paced produce leaves behind, for each build in turn: a fresh
# `floe dev` on /dev/shm, SECS (default 30) of RATE (default 20000)
# records/s of 1 KiB on PARTS (default 64) partitions at linger 1 ms;
# prints latency, the process's RSS, the newest checkpoint's size and the
# store's PUT bytes. The batch index and checkpoints grow with the run:
# this is where that shows. Not part of CI.
#
#   bench/grow.sh old=/tmp/floe-old new=target/release/floe
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECS:-30} rate=${RATE:-20000} parts=${PARTS:-64}
. bench/lib.sh
trap 'cleanup; rm -rf "${data:-}"' EXIT
show='import json, sys; x = json.load(sys.stdin); l = x["produce_latency"]; print("%.0f records/s p50 %.2f p99 %.2f p999 %.2f ms" % (x["records_per_s"], l["p50_us"] / 1000, l["p99_us"] / 1000, l["p999_us"] / 1000))'
for build in "$@"; do
    label=${build%%=*}
    work=$(mktemp -d /tmp/floe-grow-XXXX); data=$(mktemp -d /dev/shm/floe-grow-XXXX)
    pids=()
    BIN=${build#*=} start_floe --data-dir "$data"
    floe=${pids[-1]}
    latency=$(target/release/floe-bench --bootstrap "127.0.0.1:$fk" --json --scenario produce \
        --partitions "$parts" --topic grow --records $((rate * secs)) --rate "$rate" --linger-ms 1 | python3 -c "$show")
    rss=$(awk '/VmRSS/ {print $2 " kB"}' "/proc/$floe/status")
    ckpt=$(ls -l "$data"/tenants/default/shards/0/ckpt | awk 'END {print $5}')
    put=$(curl -s "http://127.0.0.1:$fh/metrics" | awk '/^floe_store_put_bytes_total/ {print $2}')
    echo "$label: $latency; RSS $rss; newest checkpoint $ckpt bytes; $put bytes PUT"
    cleanup; rm -rf "$data"
done
