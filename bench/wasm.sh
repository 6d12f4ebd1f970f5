#!/usr/bin/env bash
# Wasm transforms against the release binary (issue 8). Not part of CI.
#  1. Cold deploy to first output: a record waits in a topic; the clock runs
#     from the PUT of a transform never seen by the process (so compiled
#     then) reading from the start, until a consumer (kcat, already
#     connected) receives its output. For the WAT identity fixture and the
#     Rust SDK's identity example.
#  2. Isolation: tenant `good` runs the SDK identity transform; its
#     end-to-end latency (produce to `in` -> consume from `out`, floe-bench
#     e2e at RATE records/s of 100 B) is measured alone; beside tenant
#     `busy`, whose identity transform takes a steady stream (the control:
#     load alone); and beside tenant `evil`, whose hostile fixtures (spin,
#     bomb, trap, amplify) take the same stream; in turn, ROUNDS times.
# Prints JSON lines, then a table.
#
#   bench/wasm.sh [ROUNDS] [RATE]
#
# Needs: cargo build --release -p floe-gateway -p floe-bench -p floe-fixtures,
# and scripts/build-guests (the SDK's examples), kcat and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
rate=${2:-500}
work=$(mktemp -d /tmp/floe-wasm-XXXX)
. bench/lib.sh

guests=$(scripts/build-guests)
target/release/floe-fixtures "$work/fixtures" > /dev/null

# A fresh compile cache: the cold deploy below compiles, as a new component would.
start_floe_dev --wasm-deadline-ms 300 --wasm-memory-mib 16 --wasm-cache-dir "$work/wasm-cache"
for t in good evil busy; do api POST /tenants "{\"id\":\"$t\",\"plan\":\"standard\"}" > /dev/null; done
read -r gk gs < <(key good)
read -r ek es < <(key evil)
read -r bk bs < <(key busy)
topic() { # key secret tenant name
    curl -sf -u "$1:$2" -H 'content-type: application/json' \
        "http://127.0.0.1:$fh/v3/clusters/floe-$3/topics" \
        -d "{\"topic_name\":\"$4\",\"partitions_count\":1}" > /dev/null
}
deploy() { # key secret name query file
    curl -sf -u "$1:$2" -X PUT --data-binary "@$5" \
        "http://127.0.0.1:$fh/v1/transforms/$3?$4" > /dev/null
}
kc() { # key secret kcat-args...
    local k=$1 s=$2; shift 2
    kcat -b "127.0.0.1:$fk" -X security.protocol=SASL_PLAINTEXT -X sasl.mechanisms=PLAIN \
        -X "sasl.username=$k" -X "sasl.password=$s" "$@"
}
now_ms() { date +%s%3N; }

out="$work/results.jsonl"
for guest in "$work/fixtures/identity.wasm" "$guests/identity.wasm"; do
    name=cold$((RANDOM))
    topic "$gk" "$gs" good "$name-in"; topic "$gk" "$gs" good "$name-out"
    echo waiting | kc "$gk" "$gs" -P -t "$name-in"
    kc "$gk" "$gs" -C -t "$name-out" -o beginning -c 1 -q > /dev/null & reader=$!
    sleep 2   # the consumer is connected and long-polling
    t0=$(now_ms)
    deploy "$gk" "$gs" "$name" "input=$name-in&output=$name-out&from=start" "$guest"
    wait "$reader"
    t1=$(now_ms)
    echo "{\"cold_deploy_ms\":$((t1 - t0)),\"guest\":\"$(basename "$(dirname "$guest")")/$(basename "$guest")\",\"bytes\":$(stat -c %s "$guest")}" | tee -a "$out"
done

# Isolation.
for t in in out; do
    topic "$gk" "$gs" good "$t"; topic "$ek" "$es" evil "$t"; topic "$bk" "$bs" busy "$t"
done
deploy "$gk" "$gs" copy "input=in&output=out" "$guests/identity.wasm"
deploy "$bk" "$bs" copy "input=in&output=out" "$guests/identity.wasm"
for h in spin bomb trap amplify; do
    deploy "$ek" "$es" "$h" "input=in&output=out" "$work/fixtures/$h.wasm"
done
login() { echo "-X security.protocol=SASL_PLAINTEXT -X sasl.mechanisms=PLAIN -X sasl.username=$1 -X sasl.password=$2"; }
good_run() {
    # shellcheck disable=SC2046
    target/release/floe-bench --bootstrap "127.0.0.1:$fk" --json --scenario e2e --topic in \
        --consume-topic out --size 100 --rate "$rate" --records $((rate * 10)) --linger-ms 1 \
        $(login "$gk" "$gs")
}
beside() { # label key secret: good_run while that tenant takes 200 records/s
    # shellcheck disable=SC2046
    target/release/floe-bench --bootstrap "127.0.0.1:$fk" --json --scenario produce --topic in \
        --size 100 --rate 200 --records 1000000 $(login "$2" "$3") > /dev/null 2>&1 & flood=$!
    sleep 2   # its transforms are busy (or busy failing)
    echo "{\"round\":$r,\"beside\":\"$1\",\"result\":$(good_run)}" | tee -a "$out"
    kill "$flood" 2>/dev/null || true
    wait "$flood" 2>/dev/null || true
}
good_run > /dev/null   # warms up
for r in $(seq 1 "$rounds"); do
    echo "{\"round\":$r,\"beside\":\"nothing\",\"result\":$(good_run)}" | tee -a "$out"
    beside busy "$bk" "$bs"
    beside hostile "$ek" "$es"
done
curl -s -u "$ek:$es" "http://127.0.0.1:$fh/v1/transforms" | python3 -c '
import json, sys
for t in json.load(sys.stdin)["transforms"]:
    e = t.get("last_error") or {}
    print("  evil/%s: records in %s, errors %s, last error %s" % (t["name"], t["records_in"], t["errors"], e.get("kind")))'
python3 - "$out" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    if "cold_deploy_ms" in r:
        print(f"cold deploy to first output, {r['guest']} ({r['bytes']} B): {r['cold_deploy_ms']} ms")
print("round  beside   e2e p50 us  p99 us  p999 us")
by = {}
for r in rows:
    if "round" not in r:
        continue
    l = r["result"]["e2e_latency"]
    by.setdefault(r["beside"], []).append(l)
    print(f"{r['round']:>5}  {r['beside']:>7}  {l['p50_us']:>10}  {l['p99_us']:>6}  {l['p999_us']:>7}")
med = lambda xs: sorted(xs)[len(xs) // 2]
for q in ("p50_us", "p99_us"):
    alone = med([l[q] for l in by["nothing"]])
    rest = ", ".join(f"beside {k} {med([l[q] for l in v])} ({med([l[q] for l in v]) / alone:.2f})"
                     for k, v in by.items() if k != "nothing")
    print(f"median {q}: alone {alone}, {rest}")
EOF
