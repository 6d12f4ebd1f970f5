# Shared by the bench scripts (sourced, not run): free loopback ports,
# stopping what the script started, and a SeaweedFS S3 server.
#
# Needs $work (a scratch directory) set before `start_weed`.

pids=()
# The scratch directory goes too (stores of hundreds of MB), unless KEEP=1.
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${work:-}" ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# start_weed BUCKET[,BUCKET...]: `weed mini` on loopback with every port free,
# the buckets created; exports the AWS_* variables Floe's s3:// store reads.
start_weed() {
    local buckets=$1 s3
    s3=$(port)
    local args=(mini -dir="$work/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 -admin.ui=false -webdav=false
          -master.telemetry=false -s3.port="$s3" -bucket="$buckets"
          -filer.localSocket="$work/filer.sock" -s3.localSocket="$work/s3.sock")
    for f in s3.port.grpc admin.port admin.port.grpc master.port master.port.grpc volume.port volume.port.grpc \
             filer.port filer.port.grpc debug.port metricsPort s3.metricsPort s3.debug.port s3.port.iceberg s3.port.lance; do
        args+=("-$f=$(port)")
    done
    mkdir -p "$work/s3"
    weed "${args[@]}" > "$work/weed.log" 2>&1 & pids+=($!)
    wait_port "$s3"
    local last=${buckets##*,}
    until curl -s -o /dev/null -w '%{http_code}' -I "http://127.0.0.1:$s3/$last" | grep -q 200; do sleep 0.2; done
    export AWS_ENDPOINT="http://127.0.0.1:$s3" AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
}

# start_tansu: Tansu 0.6.0 ($TANSU, default ~/.cache/floe-peer/bin/tansu)
# on a free loopback port, storing in the `tansu` bucket of start_weed's
# server; sets $tk (its port) once it is open.
start_tansu() {
    tk=$(port)
    "${TANSU:-$HOME/.cache/floe-peer/bin/tansu}" broker --listener-url "tcp://127.0.0.1:$tk" \
        --advertised-listener-url "tcp://127.0.0.1:$tk" --storage-engine s3://tansu/ \
        > "$work/tansu.log" 2>&1 & pids+=($!)
    wait_port "$tk"
}

# client_ms: user and system CPU of this shell's finished children, in ms
# (the bench client, and the few ms of any curl or python around it).
# `times` must run in the measuring shell, not in a `$(...)` subshell,
# which has no such children: write it to a file.
client_ms() {
    times > "$work/times"
    awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); n += t[1] * 60000 + t[2] * 1000 } print int(n) }' "$work/times"
}

# cpu_ms PID: CPU (user + system) of a process, its threads and its reaped
# children so far, in ms.
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{print int(($14 + $15 + $16 + $17) * 1000 / hz)}' "/proc/$1/stat"; }

# produce_requests: Produce requests (API key 0) start_floe's Floe has
# counted so far.
produce_requests() { curl -s "http://127.0.0.1:$fh/metrics" | awk '/^floe_kafka_requests_total\{.*api_key="0"/ {n += $NF} END {print n + 0}'; }

# start_floe FLAG...: `floe dev` ($BIN, default the release build) on free
# loopback ports with FLAG... and $FLOE_ARGS; sets $fk and $fh (Kafka and
# HTTP ports) once both are open.
start_floe() {
    fk=$(port); fh=$(port)
    # shellcheck disable=SC2086
    "${BIN:-target/release/floe}" dev --kafka-listen "127.0.0.1:$fk" --http-listen "127.0.0.1:$fh" \
        "$@" ${FLOE_ARGS:-} > "$work/floe.log" 2>&1 & pids+=($!)
    wait_port "$fk"; wait_port "$fh"
}

# start_floe_dev [FLAG...]: start_floe on $work/data with required auth and
# the admin token bench-token. Then `api METHOD PATH [JSON]` calls the admin
# API and `key TENANT` prints a new key and its secret.
token=bench-token
start_floe_dev() {
    start_floe --data-dir "$work/data" --auth required --admin-token "$token" "$@"
}
api() { # method path [json]
    curl -sf -X "$1" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
        "http://127.0.0.1:$fh/admin/v1$2" ${3:+-d "$3"}
}
key() { api POST "/tenants/$1/keys" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["key"], d["secret"])'; }
