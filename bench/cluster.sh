#!/usr/bin/env bash
# Cluster throughput with 1, 2 and 3 workers (issue 7): two gateways and W
# workers as processes over SeaweedFS, TENANTS tenants each producing to its
# own topic through the gateways in turn, all at once. A tenant's shard is
# on one worker, so more workers help only across tenants. Each
# configuration is a fresh cluster (its own store prefix); the order runs
# up then down (1 2 3 3 2 1 ...) so drift on a shared machine hits every
# configuration alike. Not part of CI.
#
#   bench/cluster.sh [ROUNDS] [TENANTS] [RECORDS_PER_TENANT]
#
# Prints one JSON line per run, then a table: aggregate MB/s (the sum of the
# tenants' bytes over the slowest tenant's time), the median per-tenant p99,
# and each configuration's throughput as a ratio to one worker's.
#
# Needs target/release/floe and target/release/floe-bench (cargo build
# --release -p floe-gateway -p floe-bench) and `weed` on PATH (scripts/test
# installs it into its Python environment).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1}
tenants=${2:-6}
records=${3:-100000}
work=$(mktemp -d /tmp/floe-cluster-bench-XXXX)
. bench/lib.sh

start_weed bench
target/release/floe cluster init --out "$work/certs" > /dev/null
token=bench-token
out="$work/results.jsonl"

# run WORKERS: a fresh cluster, every tenant producing at once; one JSON line.
run() {
    local w=$1 prefix="s3://bench/c$RANDOM$RANDOM" cpids=() gk=() gh=()
    local common=(--store "$prefix" --cluster-certs "$work/certs")
    for i in $(seq 1 "$w"); do
        local rpc hp
        rpc=$(port); hp=$(port)
        target/release/floe worker "${common[@]}" --rpc-listen "127.0.0.1:$rpc" \
            --http-listen "127.0.0.1:$hp" ${FLOE_ARGS:-} > "$work/worker$i.log" 2>&1 & cpids+=($!)
        wait_port "$hp"
    done
    for g in a b; do
        local k h
        k=$(port); h=$(port)
        target/release/floe gateway "${common[@]}" --kafka-listen "127.0.0.1:$k" \
            --http-listen "127.0.0.1:$h" --auth required --admin-token "$token" \
            > "$work/gateway-$g.log" 2>&1 & cpids+=($!)
        wait_port "$k"; wait_port "$h"
        gk+=("$k"); gh+=("$h")
    done
    pids+=("${cpids[@]}")
    api() { # method path [json]
        curl -sf -X "$1" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
            "http://127.0.0.1:${gh[0]}/admin/v1$2" ${3:+-d "$3"}
    }
    local runs=()
    for t in $(seq 1 "$tenants"); do
        api POST /tenants "{\"id\":\"t$t\",\"plan\":\"unlimited\"}" > /dev/null
        read -r key secret < <(api POST "/tenants/t$t/keys" |
            python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["key"], d["secret"])')
        echo "$key $secret" > "$work/key$t"
    done
    sleep 2   # the other gateway follows the registry
    for t in $(seq 1 "$tenants"); do
        read -r key secret < "$work/key$t"
        target/release/floe-bench --bootstrap "127.0.0.1:${gk[$((t % 2))]}" --json \
            --scenario produce --topic "t$t" --records "$records" \
            -X security.protocol=SASL_PLAINTEXT -X sasl.mechanisms=PLAIN \
            -X "sasl.username=$key" -X "sasl.password=$secret" \
            > "$work/run$t.json" 2> "$work/run$t.err" & runs+=($!)
    done
    for p in "${runs[@]}"; do wait "$p"; done
    for p in "${cpids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${cpids[@]}"; do wait "$p" 2>/dev/null || true; done
    python3 - "$w" "$work" "$tenants" <<'PY'
import json, sys
w, work, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
runs = [json.loads(open(f"{work}/run{t}.json").read()) for t in range(1, n + 1)]
total = sum(r["records"] * r["record_bytes"] for r in runs)
slowest = max(r["seconds"] for r in runs)
p99s = sorted(r["produce_latency"]["p99_us"] for r in runs)
print(json.dumps({"workers": w, "tenants": n, "mb_per_s": total / slowest / 1e6,
                  "median_tenant_p99_us": p99s[len(p99s) // 2],
                  "tenant_mb_per_s": [round(r["mb_per_s"], 2) for r in runs]}))
PY
}

order=()
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order+=(1 2 3); else order+=(3 2 1); fi
done
for w in "${order[@]}"; do run "$w" | tee -a "$out"; done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {w: [r for r in rows if r["workers"] == w] for w in (1, 2, 3)}
base = statistics.median(r["mb_per_s"] for r in by[1])
print("workers  aggregate MB/s (median)  median tenant p99 (ms)  ratio to 1 worker")
for w, rs in by.items():
    mb = statistics.median(r["mb_per_s"] for r in rs)
    p99 = statistics.median(r["median_tenant_p99_us"] for r in rs) / 1e3
    print(f"{w:7}  {mb:23.1f}  {p99:22.1f}  {mb / base:17.2f}")
PY
