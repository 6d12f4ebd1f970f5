#!/usr/bin/env bash
# Where the CPU of a produce goes, Floe against Tansu on one SeaweedFS: the
# CPU (user + system, from /proc) of weed and of the broker, and the
# client's (from the shell's `times`), for the same produce to each, two
# rounds. Says whether a run is bound by the machine or by the broker. Not
# part of CI.
#
#   bench/cpu-split.sh [RECORDS]        # PARTS=64 for 64 partitions
#
# Needs what bench/side-by-side.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-200000}
work=$(mktemp -d /tmp/floe-split-XXXX)
. bench/lib.sh

start_weed floe,tansu
weed=${pids[-1]}
start_floe --store s3://floe/split
floe=${pids[-1]}
start_tansu
tansu_pid=${pids[-1]}

show='import json, sys; x = json.load(sys.stdin); print("%.0f records/s in %.2f s" % (x["records_per_s"], x["seconds"]))'
for round in 1 2; do
    for broker in floe tansu; do
        if [ "$broker" = floe ]; then addr=127.0.0.1:$fk pid=$floe; else addr=127.0.0.1:$tk pid=$tansu_pid; fi
        w0=$(cpu_ms "$weed"); b0=$(cpu_ms "$pid"); client_ms > "$work/c0"
        result=$(target/release/floe-bench --bootstrap "$addr" --json --scenario produce \
            --partitions "${PARTS:-1}" --topic "r$round" --records "$records" | python3 -c "$show")
        client_ms > "$work/c1"
        sleep 0.5 # the store's last writes
        echo "$broker, round $round: $result; CPU: weed $(( $(cpu_ms "$weed") - w0 )) ms," \
            "$broker $(( $(cpu_ms "$pid") - b0 )) ms, client $(( $(cat "$work/c1") - $(cat "$work/c0") )) ms"
    done
done
curl -s "http://127.0.0.1:$fh/metrics" | grep -E '^floe_(produced_bytes|store_put_bytes)_total'
