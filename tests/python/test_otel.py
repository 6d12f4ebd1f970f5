"""Traces over OTLP/HTTP: a small OTLP/HTTP receiver (Python's http.server,
decoding with the opentelemetry-proto package) collects what `floe dev`
exports when OTEL_EXPORTER_OTLP_ENDPOINT names it. A produce must make one
trace: the Kafka request's span with the shard's append and its wait for
durability under it; the WAL PUT is a store call span of its own (the
flusher writes many produces' records at once). Fetch and consumer groups
likewise."""
import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kafka import KafkaConsumer, KafkaProducer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)

from conftest import Floe

SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind


class Receiver:
    """Accepts POST /v1/traces; keeps every span with its service name."""

    def __init__(self):
        self.spans = []
        self.paths = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                with receiver.lock:
                    receiver.paths.append((self.path, self.headers.get("Content-Type")))
                    for rs in req.resource_spans:
                        service = next((a.value.string_value for a in rs.resource.attributes
                                        if a.key == "service.name"), None)
                        for ss in rs.scope_spans:
                            for s in ss.spans:
                                receiver.spans.append((service, s))
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def named(self, name):
        with self.lock:
            return [s for _, s in self.spans if s.name == name]

    def wait_for(self, name, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = self.named(name)
            if found:
                return found
            time.sleep(0.1)
        with self.lock:
            names = sorted({s.name for _, s in self.spans})
        pytest.fail(f"no {name} span in {timeout} s; got {names}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def attrs(span):
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value or v.int_value or v.bool_value
    return out


def under(span, root, spans_by_id):
    """Whether `root` is among `span`'s ancestors."""
    seen = 0
    while span.parent_span_id and seen < 50:
        if span.parent_span_id == root.span_id:
            return True
        span = spans_by_id.get(span.parent_span_id)
        if span is None:
            return False
        seen += 1
    return False


@pytest.fixture
def traced(tmp_path, monkeypatch):
    r = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{r.port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "floe-under-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    f = Floe(str(tmp_path))
    try:
        yield f, r
    finally:
        f.close()
        r.close()


def test_a_produce_makes_a_trace_with_the_shards_spans(traced):
    f, r = traced
    p = KafkaProducer(bootstrap_servers=f.bootstrap, acks="all")
    p.send("traced", b"hello").get(timeout=30)
    p.close()

    produce = r.wait_for("kafka.Produce")[0]
    r.wait_for("shard.durable")
    with r.lock:
        spans = [s for _, s in r.spans]
        services = {svc for svc, _ in r.spans}
    assert services == {"floe-under-test"}
    assert r.paths[0] == ("/v1/traces", "application/x-protobuf")
    assert produce.kind == SERVER
    assert attrs(produce)["tenant"] == "default"
    by_id = {s.span_id: s for s in spans}
    in_trace = [s for s in spans if s.trace_id == produce.trace_id]
    names = {s.name for s in in_trace if under(s, produce, by_id)}
    assert {"shard.append", "shard.durable"} <= names, names
    append = next(s for s in in_trace if s.name == "shard.append")
    assert attrs(append)["topic"] == "traced" and attrs(append)["partition"] == 0
    assert produce.start_time_unix_nano <= append.start_time_unix_nano <= produce.end_time_unix_nano
    # The record's WAL object: a store call of the flusher's.
    puts = [s for s in r.wait_for("store.put") if "/wal/" in attrs(s).get("path", "")]
    assert puts, [attrs(s) for s in r.named("store.put")]
    assert all(s.kind == CLIENT and int(attrs(s)["bytes"]) > 0 for s in puts)


def test_fetches_and_groups_are_traced(traced):
    f, r = traced
    p = KafkaProducer(bootstrap_servers=f.bootstrap, acks="all")
    p.send("grouped", b"one").get(timeout=30)
    p.close()
    c = KafkaConsumer("grouped", bootstrap_servers=f.bootstrap, group_id="g",
                      auto_offset_reset="earliest")
    got, deadline = [], time.time() + 30
    while not got and time.time() < deadline:
        for records in c.poll(timeout_ms=500).values():
            got += [m.value for m in records]
    c.commit()
    c.close()
    assert b"one" in got
    fetch = r.wait_for("kafka.Fetch")
    reads = r.wait_for("shard.read")
    assert any(s.parent_span_id == fs.span_id for s in reads for fs in fetch)
    join = r.wait_for("kafka.JoinGroup")
    joins = r.wait_for("group.join")
    assert any(j.trace_id == k.trace_id for j in joins for k in join)
    r.wait_for("group.commit_offsets")


def test_spans_in_flight_are_sent_at_shutdown(tmp_path, monkeypatch):
    r = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{r.port}")
    # Longer than the test: only the shutdown's flush can send them.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    f = Floe(str(tmp_path))
    try:
        p = KafkaProducer(bootstrap_servers=f.bootstrap, acks="all")
        p.send("late", b"x").get(timeout=30)
        p.close()
        assert not r.named("kafka.Produce")
        assert f.stop() == 0
        r.wait_for("kafka.Produce", timeout=10)
    finally:
        f.close()
        r.close()


def test_a_cluster_produce_is_one_trace_across_gateway_and_worker(tmp_path):
    """Cluster mode: the gateway sends its span's `traceparent` with each
    call, so the worker's spans land in the gateway's trace."""
    import os
    import subprocess

    from conftest import free_port, wait_for_port

    r = Receiver()
    floe = os.environ.get("FLOE_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "floe")
    certs, store = str(tmp_path / "certs"), str(tmp_path / "store")
    subprocess.run([floe, "cluster", "init", "--out", certs], check=True, capture_output=True)
    common = ["--store", store, "--cluster-certs", certs, "--beat-ms", "200", "--lease-ms", "1000"]
    env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{r.port}",
               OTEL_BSP_SCHEDULE_DELAY="100")
    log = open(tmp_path / "floe.log", "ab")
    procs = []
    try:
        w_http, w_rpc, g_kafka, g_http = free_port(), free_port(), free_port(), free_port()
        procs.append(subprocess.Popen(
            [floe, "worker", "--rpc-listen", f"127.0.0.1:{w_rpc}", "--http-listen",
             f"127.0.0.1:{w_http}", *common],
            env=dict(env, OTEL_SERVICE_NAME="floe-worker"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log))
        procs.append(subprocess.Popen(
            [floe, "gateway", "--kafka-listen", f"127.0.0.1:{g_kafka}", "--http-listen",
             f"127.0.0.1:{g_http}", *common],
            env=dict(env, OTEL_SERVICE_NAME="floe-gateway"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log))
        assert wait_for_port(w_http) and wait_for_port(g_kafka), f"see {log.name}"
        p = KafkaProducer(bootstrap_servers=f"127.0.0.1:{g_kafka}", acks="all")
        p.send("spread", b"over two processes").get(timeout=60)
        p.close()
        r.wait_for("shard.durable")
        deadline = time.time() + 30
        while time.time() < deadline:
            with r.lock:
                spans = list(r.spans)
            produce = [s for svc, s in spans if svc == "floe-gateway" and s.name == "kafka.Produce"]
            appends = [s for svc, s in spans if svc == "floe-worker" and s.name == "shard.append"]
            joined = [(p, a) for p in produce for a in appends if p.trace_id == a.trace_id]
            if joined:
                break
            time.sleep(0.2)
        assert joined, f"no worker span in a gateway produce's trace: {sorted({(svc, s.name) for svc, s in spans})}"
        produce, append = joined[0]
        by_id = {s.span_id: s for _, s in spans}
        serve = by_id[append.parent_span_id]
        assert serve.name == "rpc.serve" and serve.kind == SERVER
        assert serve.parent_span_id == produce.span_id
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        log.close()
        r.close()


def test_health_endpoints_and_an_unsupported_otlp_protocol(tmp_path, monkeypatch):
    """`/readyz` answers 200 while serving and only to GET (405 otherwise,
    as `/healthz` and `/metrics`); an OTLP protocol Floe does not speak
    turns traces off with a warning, and the process serves on."""
    import urllib.error
    import urllib.request

    r = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{r.port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    f = Floe(str(tmp_path))
    try:
        base = f"http://127.0.0.1:{f.http_port}"
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as resp:
            assert resp.status == 200 and resp.read() == b"ready\n"
        for path in ("/readyz", "/healthz", "/metrics"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(f"{base}{path}", method="POST"), timeout=5)
            assert e.value.code == 405, path
        p = KafkaProducer(bootstrap_servers=f.bootstrap, acks="all")
        p.send("plain", b"still served").get(timeout=30)
        p.close()
        time.sleep(0.5)
        assert not r.named("kafka.Produce"), "no spans: traces are off"
        with open(f.log.name, "rb") as log:
            assert b"traces are off" in log.read()
    finally:
        f.close()
        r.close()
