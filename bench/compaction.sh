#!/usr/bin/env bash
# Compaction and read-cache figures on a local directory (BENCHMARKS.md):
# objects per GiB before and after compaction, GETs per MiB for a consumer
# catching up from offset 0 after a restart (cold cache), and the CPU share
# of compaction: the same rate-limited produce load against two processes,
# compaction on and off, interleaved in one run, CPU time read from /proc.
# Not part of CI.
#
#   bench/compaction.sh [RECORDS] [RATE]
#
# Needs target/release/floe and target/release/floe-bench
# (cargo build --release --bins).
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}
rate=${2:-20000}
work=$(mktemp -d /tmp/floe-compaction-XXXX)
. bench/lib.sh
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
objects() { find "$1/tenants/default/shards/0/wal" "$1/tenants/default/shards/0/data" -type f 2>/dev/null | wc -l; }

# name kafka http dir extra-args...
start() {
    local name=$1 k=$2 h=$3 dir=$4; shift 4
    target/release/floe dev --data-dir "$dir" --kafka-listen "127.0.0.1:$k" --http-listen "127.0.0.1:$h" \
        --compact-after-ms 5000 "$@" \
        > "$work/$name.log" 2>&1 &
    pids+=($!)
    eval "${name}_pid=$!"
    wait_port "$k"
}

onk=$(port); onh=$(port); offk=$(port); offh=$(port)
start on "$onk" "$onh" "$work/on"
start off "$offk" "$offh" "$work/off" --compact-bytes 0
echo "== produce $records x 1 KiB at $rate/s, 64 partitions, to both (compaction on, off)"
bench_pids=()
for side in on off; do
    k=${side}k; h=${side}h
    target/release/floe-bench --bootstrap "127.0.0.1:${!k}" --scenario produce --partitions 64 --topic c \
        --records "$records" --rate "$rate" --linger-ms 5 --metrics-url "http://127.0.0.1:${!h}/metrics" --json \
        > "$work/produce-$side.json" &
    bench_pids+=($!)
done
wait "${bench_pids[@]}"
gib=$(python3 -c "print($records * 1024 / 2**30)")
echo "objects right after produce: on $(objects "$work/on"), off $(objects "$work/off") for $gib GiB"
# Let compaction and sweeping (30 s grace, 30 s checkpoint interval by
# default) finish: until the object count has not fallen for 40 s.
prev=-1; still=0
for _ in $(seq 1 60); do
    n=$(objects "$work/on")
    if [ "$n" = "$prev" ]; then still=$((still + 1)); else still=0; fi
    [ "$still" -ge 4 ] && break
    prev=$n; sleep 10
done
cpu_on=$(cpu_ticks "$on_pid"); cpu_off=$(cpu_ticks "$off_pid")
echo "objects after compaction: on $(objects "$work/on") (compactions $(metric "$onh" floe_compactions_total)), off $(objects "$work/off")"
python3 - "$cpu_on" "$cpu_off" "$(objects "$work/on")" "$(objects "$work/off")" "$gib" <<'EOF'
import sys
on, off, n_on, n_off, gib = map(float, sys.argv[1:])
print(f"objects per GiB: compacted {n_on / gib:.1f}, uncompacted {n_off / gib:.1f}")
print(f"process CPU: on {on / 100:.1f} s, off {off / 100:.1f} s; compaction share {(on - off) / on * 100:.1f}% of the on process")
EOF

echo "== restart (cold cache), consume from offset 0"
kill -TERM "$on_pid"; while kill -0 "$on_pid" 2>/dev/null; do sleep 0.2; done
start on "$onk" "$onh" "$work/on"
g0=$(metric "$onh" floe_store_gets_total); b0=$(metric "$onh" floe_store_get_bytes_total)
target/release/floe-bench --bootstrap "127.0.0.1:$onk" --scenario consume --partitions 64 --topic c --records "$records" \
    --json > "$work/consume.json"
g1=$(metric "$onh" floe_store_gets_total); b1=$(metric "$onh" floe_store_get_bytes_total)
python3 - "$g0" "$g1" "$b0" "$b1" "$records" "$work/consume.json" <<'EOF'
import json, sys
g0, g1, b0, b1, records = map(float, sys.argv[1:6])
r = json.load(open(sys.argv[6]))
mib = records * 1024 / 2**20
print(f"consume: {r['records_per_s']:.0f} records/s, {g1 - g0:.0f} GETs for {mib:.0f} MiB of records: "
      f"{(g1 - g0) / mib:.3f} GETs/MiB, {(b1 - b0) / 2**20 / mib:.2f} MiB read per MiB served")
EOF
echo "work dir: $work"
