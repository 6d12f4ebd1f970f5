#!/usr/bin/env bash
# Tenant isolation under throttling (issue 6): tenant `calm` produces at a
# steady rate and its produce latency is measured alone, then while tenant
# `noisy` floods produce far beyond its 1 MB/s quota (and is throttled),
# alternately, ROUNDS times. Not part of CI. Prints JSON lines, then a table
# of calm's p50/p99 alone and beside the flood, and their ratio.
#
#   bench/isolation.sh [ROUNDS] [CALM_RECORDS_PER_SEC]
#
# Needs target/release/floe and target/release/floe-bench (cargo build
# --release -p floe-gateway -p floe-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
rate=${2:-2000}
work=$(mktemp -d /tmp/floe-iso-XXXX)
. bench/lib.sh

start_floe_dev
for t in calm noisy; do api POST /tenants "{\"id\":\"$t\",\"plan\":\"standard\"}" > /dev/null; done
api PUT /tenants/noisy/quota '{"produce_bytes_per_sec":1000000}' > /dev/null
read -r ck cs < <(key calm)
read -r nk ns < <(key noisy)
login() { echo "-X security.protocol=SASL_PLAINTEXT -X sasl.mechanisms=PLAIN -X sasl.username=$1 -X sasl.password=$2"; }
bench() { # topic login extra...
    local topic=$1 login=$2; shift 2
    # shellcheck disable=SC2086
    target/release/floe-bench --bootstrap "127.0.0.1:$fk" --json --scenario produce \
        --topic "$topic" $login "$@"
}
# calm: 10 s at the given rate of 1 KiB records.
calm() { bench calm "$(login "$ck" "$cs")" --rate "$rate" --records $((rate * 10)); }

out="$work/results.jsonl"
# The broker's background work during a run: compactions, deleted objects,
# checkpoints (counters from /metrics).
work_done() {
    curl -s "http://127.0.0.1:$fh/metrics" | awk '
        /^floe_compactions_total/ {c=$2} /^floe_deleted_objects_total/ {d=$2}
        /^floe_checkpoints_total/ {k=$2} END {printf "[%d,%d,%d]", c, d, k}'
}
bench calm "$(login "$ck" "$cs")" --records 2000 > /dev/null   # creates the topic, warms up
for r in $(seq 1 "$rounds"); do
    before=$(work_done)
    echo "{\"round\":$r,\"noisy\":false,\"result\":$(calm),\"work\":[$before,$(work_done)]}" | tee -a "$out"
    bench noisy "$(login "$nk" "$ns")" --records 1000000 > "$work/noisy.json" 2>&1 & flood=$!
    sleep 2   # the flood reaches its throttle
    before=$(work_done)
    echo "{\"round\":$r,\"noisy\":true,\"result\":$(calm),\"work\":[$before,$(work_done)]}" | tee -a "$out"
    kill "$flood" 2>/dev/null || true
    wait "$flood" 2>/dev/null || true
done
throttled=$(curl -s "http://127.0.0.1:$fh/metrics" | awk '/^floe_throttled_requests_total/ {print $2}')
echo "throttled requests: $throttled"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def work(x):  # compactions, deleted objects, checkpoints during the run
    (c0, d0, k0), (c1, d1, k1) = x["work"]
    return f"{c1-c0}/{d1-d0}/{k1-k0}"
print("round  calm p50/p99 alone (ms)  beside the flood (ms)  p99 ratio  compactions/deletes/checkpoints alone, beside")
for r in sorted({x["round"] for x in rows}):
    xa = next(x for x in rows if x["round"] == r and not x["noisy"])
    xb = next(x for x in rows if x["round"] == r and x["noisy"])
    a, b = xa["result"]["produce_latency"], xb["result"]["produce_latency"]
    print(f"{r:5}  {a['p50_us']/1e3:8.2f} / {a['p99_us']/1e3:7.2f}  {b['p50_us']/1e3:10.2f} / {b['p99_us']/1e3:7.2f}  {b['p99_us']/a['p99_us']:9.2f}  {work(xa)}, {work(xb)}")
PY
