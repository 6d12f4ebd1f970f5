#!/usr/bin/env bash
# The client's floor: the same paced produce run against librdkafka's own
# mock broker (`floe-bench --serve-mock`: records kept in memory, nothing
# else done) and against `floe dev`, interleaved, a fresh broker each run.
# What the client sees against the mock is the least any broker can give on
# this machine with this client and load. Not part of CI.
#
#   PARTS=64 RATE=165000 ROUNDS="1 2 3" bench/floor.sh
#
# DIR holds Floe's data directory (default /dev/shm); BIN picks the floe
# binary (default target/release/floe). Needs target/release/floe-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/floe-floor-XXXX)
. bench/lib.sh
parts=${PARTS:-64} rate=${RATE:?RATE records per second}
show=$(cat <<'PY'
import json, sys
x = json.load(sys.stdin)
l = x["produce_latency"]
w = x["client_windows"]
q = max(p99 for _, p99 in w["int_latency"]) / 1000 if w["int_latency"] else 0
r = max(p99 for _, p99 in w["rtt"]) / 1000 if w["rtt"] else 0
print(f'{x["records_per_s"]:,.0f} records/s, p50 {l["p50_us"] / 1000:.2f} ms, p99 {l["p99_us"] / 1000:.2f} ms, '
      f'p999 {l["p999_us"] / 1000:.2f} ms; worst second: queued p99 {q:.1f} ms, round trip p99 {r:.1f} ms', end="")
PY
)
bench() { # bootstrap broker-pid [floe-bench args...]
    local boot=$1 pid=$2 before; shift 2
    before=$(cpu_ms "$pid"); client_ms > "$work/c0"
    target/release/floe-bench --bootstrap "$boot" --json --client-stats --scenario produce \
        --partitions "$parts" --topic floor --records $((rate * 5)) --rate "$rate" --linger-ms 1 "$@" |
        python3 -c "$show"
    client_ms > "$work/c1"
    echo "; broker CPU $(( $(cpu_ms "$pid") - before )) ms, client CPU $(( $(cat "$work/c1") - $(cat "$work/c0") )) ms"
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; pids=(); }
for i in ${ROUNDS:-1 2 3}; do
    # The mock: its bootstrap address is its first line; closing its stdin
    # would stop it too, but it is stopped by pid like everything here.
    coproc MOCK { exec target/release/floe-bench --serve-mock --topic floor --partitions "$parts"; }
    mock=$MOCK_PID; pids+=("$mock")
    read -r boot <&"${MOCK[0]}"
    printf 'round %s, mock: ' "$i"
    bench "$boot" "$mock" --existing-topic
    stop "$mock"

    data=$(mktemp -d "${DIR:-/dev/shm}/floe-floor-XXXX")
    start_floe --data-dir "$data"
    printf 'round %s, floe: ' "$i"
    bench "127.0.0.1:$fk" "${pids[-1]}"
    stop "${pids[-1]}"
    rm -rf "$data"
done
