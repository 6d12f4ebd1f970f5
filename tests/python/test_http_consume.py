"""Consuming over HTTP (issue 9) against the real binary: v2 consumer
instances whose state lives in the log, served alternately by two gateway
processes on one store; instances of a group splitting its partitions;
Server-Sent Events resumed by Last-Event-ID and by group; slow clients cut
off; and the OpenAPI document checked by schemathesis against the server."""
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from conftest import Floe
from test_http import call
from test_tenants import TOKEN, admin, sasl

V2 = "application/vnd.kafka.v2+json"
BINARY = "application/vnd.kafka.binary.v2+json"


@pytest.fixture
def store_dir():
    with tempfile.TemporaryDirectory(prefix="floe-py-") as d:
        yield d


def start(d, extra=()):
    return Floe(d, ["--admin-token", TOKEN, "--auth", "required", *extra])


def tenant(floe):
    assert admin(floe, "POST", "/tenants", {"id": "acme", "plan": "standard"})[0] == 201
    k = admin(floe, "POST", "/tenants/acme/keys")[1]
    return k["key"], k["secret"]


def v2(floe, key, method, path, body=None, accept=None):
    """A v2 call; `body` is JSON-encoded, or None for none."""
    import urllib.request
    import urllib.error
    token = base64.b64encode(f"{key[0]}:{key[1]}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": V2}
    if accept:
        headers["Accept"] = accept
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{floe.http_port}{path}", method=method,
                                 data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode() or "null")


def produce_kafka(floe, key, topic, partitions, n):
    conf = sasl(floe, key, "PLAIN")
    a = KafkaAdminClient(**conf)
    a.create_topics([NewTopic(topic, partitions, 1)])
    a.close()
    p = KafkaProducer(**conf, acks="all")
    sent = {}
    for i in range(n):
        value = bytes([i % 256]) * (i + 1) + b"\x00\xff"
        meta = p.send(topic, value, key=f"k{i}".encode(), partition=i % partitions).get(10)
        sent[(meta.partition, meta.offset)] = (f"k{i}".encode(), value)
    p.close()
    return sent


def drain(calls, base, want):
    """GET records, rotating over `calls` (one per gateway), until `want`
    records came back; returns {(partition, offset): (key, value)}."""
    got = {}
    for i in range(200):
        floe, key = calls[i % len(calls)]
        status, recs = v2(floe, key, "GET", f"{base}/records?timeout=500&max_bytes=100",
                          accept=BINARY)
        assert status == 200, recs
        for r in recs:
            where = (r["partition"], r["offset"])
            assert where not in got, f"{where} delivered twice"
            assert r["timestamp"] > 0
            got[where] = (base64.b64decode(r["key"]), base64.b64decode(r["value"]))
        if len(got) >= want:
            return got
    return got


def test_two_gateways_serve_one_v2_consumer_alternately(store_dir):
    g1 = start(store_dir)
    g2 = None
    try:
        key = tenant(g1)
        sent = produce_kafka(g1, key, "orders", 3, 30)
        # A second gateway process on the same store: it holds nothing of
        # the instance, which only the log does.
        g2 = start(store_dir)
        base = "/consumers/billing/instances/web-1"
        status, made = v2(g1, key, "POST", "/consumers/billing",
                          {"name": "web-1", "format": "binary", "auto.offset.reset": "earliest",
                           "auto.commit.enable": "false"})
        assert status == 200 and made["base_uri"].endswith(base), made
        assert v2(g2, key, "POST", f"{base}/subscription", {"topics": ["orders"]})[0] == 204
        assert v2(g1, key, "GET", f"{base}/subscription")[1] == {"topics": ["orders"]}
        got = drain([(g1, key), (g2, key)], base, len(sent))
        assert got == sent  # every record once, byte-identical
        # Nothing more, from either gateway: both see where it got to.
        for g in (g1, g2):
            status, recs = v2(g, key, "GET", f"{base}/records?timeout=200", accept=BINARY)
            assert (status, recs) == (200, []), recs
        # Commit on one, read the committed offsets on the other.
        assert v2(g2, key, "POST", f"{base}/offsets")[0] == 204
        status, offs = v2(g1, key, "GET", f"{base}/offsets")
        assert status == 200 and sorted((o["partition"], o["offset"]) for o in offs["offsets"]) == \
            [(0, 10), (1, 10), (2, 10)], offs
        # Seek back on g1; g2 serves from there.
        assert v2(g1, key, "POST", f"{base}/positions",
                  {"offsets": [{"topic": "orders", "partition": 1, "offset": 8}]})[0] == 204
        status, recs = v2(g2, key, "GET", f"{base}/records?timeout=500", accept=BINARY)
        assert [(r["partition"], r["offset"]) for r in recs] == [(1, 8), (1, 9)], recs
        # Deleted on one gateway, gone on the other.
        assert v2(g2, key, "DELETE", base)[0] == 204
        status, e = v2(g1, key, "GET", f"{base}/records", accept=BINARY)
        assert status == 404 and e["error_code"] == 40403, e
        # A Kafka consumer of the group resumes at what was committed over HTTP.
        c = KafkaConsumer(**sasl(g1, key, "PLAIN"), group_id="billing", enable_auto_commit=False)
        tps = [TopicPartition("orders", p) for p in range(3)]
        assert [c.committed(tp) for tp in tps] == [10, 10, 10]
        c.close()
    finally:
        g1.close()
        if g2:
            g2.close()


def test_a_committed_offset_inside_an_open_transaction_is_where_reads_start(store_dir):
    """A group's committed offset past the last stable offset but within the
    high watermark (inside a transaction still open) is where its HTTP reads
    start, not out of range (which would reset it to earliest and deliver
    records the group had read); the transaction's records after it come
    once it commits."""
    floe = start(store_dir)
    try:
        key = tenant(floe)
        produce_kafka(floe, key, "tx", 1, 10)  # offsets 0-9
        p = KafkaProducer(**sasl(floe, key, "PLAIN"), transactional_id="tx-1", acks="all")
        p.init_transactions()
        p.begin_transaction()
        for i in range(5):
            p.send("tx", b"t%d" % i, partition=0)
        p.flush()  # offsets 10-14, open: last stable offset 10, high watermark 15
        base = "/consumers/g/instances/a"
        assert v2(floe, key, "POST", "/consumers/g",
                  {"name": "a", "auto.offset.reset": "earliest"})[0] == 200
        # The last record processed is 11: the group resumes at 12.
        assert v2(floe, key, "POST", f"{base}/offsets",
                  {"offsets": [{"topic": "tx", "partition": 0, "offset": 11}]})[0] == 204
        assert v2(floe, key, "POST", f"{base}/subscription", {"topics": ["tx"]})[0] == 204
        status, recs = v2(floe, key, "GET", f"{base}/records?timeout=1000", accept=BINARY)
        assert (status, recs) == (200, []), recs
        p.commit_transaction()
        p.close()
        got = []
        for _ in range(20):
            status, recs = v2(floe, key, "GET", f"{base}/records?timeout=500", accept=BINARY)
            assert status == 200, recs
            got += [(r["offset"], base64.b64decode(r["value"])) for r in recs]
            if len(got) >= 3:
                break
        assert got == [(12, b"t2"), (13, b"t3"), (14, b"t4")], got
    finally:
        floe.close()


def test_instances_of_a_group_split_its_partitions(store_dir):
    floe = start(store_dir)
    try:
        key = tenant(floe)
        sent = produce_kafka(floe, key, "events", 4, 40)
        bases = []
        for name in ("a", "b"):
            status, _ = v2(floe, key, "POST", "/consumers/split",
                           {"name": name, "auto.offset.reset": "earliest"})
            assert status == 200
            base = f"/consumers/split/instances/{name}"
            assert v2(floe, key, "POST", f"{base}/subscription", {"topic_pattern": "ev.*"})[0] == 204
            bases.append(base)
        parts = [sorted(p["partition"] for p in v2(floe, key, "GET", f"{b}/assignments")[1]["partitions"])
                 for b in bases]
        assert parts == [[0, 2], [1, 3]], parts
        got = {}
        for b, mine in zip(bases, parts):
            part = drain([(floe, key)], b, 20)
            assert {p for p, _ in part} == set(mine)
            got.update(part)
        assert got == sent
        # Subscriptions and assignments do not mix; formats are as asked.
        assert v2(floe, key, "POST", f"{bases[0]}/assignments",
                  {"partitions": [{"topic": "events", "partition": 0}]})[1]["error_code"] == 40903
        status, e = v2(floe, key, "GET", f"{bases[0]}/records",
                       accept="application/vnd.kafka.json.v2+json")
        assert status == 406, e
        # Auto-commit: what the instances returned is committed by their
        # next request, and deleting one commits its positions.
        for b in bases:
            assert v2(floe, key, "DELETE", b)[0] == 204
        c = KafkaConsumer(**sasl(floe, key, "PLAIN"), group_id="split", enable_auto_commit=False)
        assert [c.committed(TopicPartition("events", p)) for p in range(4)] == [10, 10, 10, 10]
        c.close()
    finally:
        floe.close()


def test_v2_bad_input(store_dir):
    floe = start(store_dir)
    try:
        key = tenant(floe)
        produce_kafka(floe, key, "bad", 1, 1)
        assert v2(floe, key, "POST", "/consumers/g", {"name": "i"})[0] == 200
        base = "/consumers/g/instances/i"
        cases = [
            ("POST", "/consumers/g", {"name": "i"}, 409),                 # exists
            ("POST", "/consumers/g", {"format": "avro"}, 422),
            ("POST", "/consumers/g", {"auto.offset.reset": "sometimes"}, 422),
            ("POST", "/consumers/g", {"no.such": "1"}, 422),
            ("POST", "/consumers/g", [1, 2], 422),
            ("POST", f"{base}/subscription", {}, 422),
            ("POST", f"{base}/subscription", {"topics": "bad"}, 422),
            ("POST", f"{base}/subscription", {"topics": ["bad"], "topic_pattern": "b.*"}, 409),
            ("POST", f"{base}/subscription", {"topic_pattern": "(unclosed"}, 422),
            ("POST", f"{base}/positions", {"offsets": [{"topic": "bad", "partition": 0, "offset": -1}]}, 422),
            ("POST", f"{base}/positions", {"offsets": [{"topic": "bad", "partition": 0, "offset": 0}]}, 409),
            ("GET", f"{base}/records?timeout=x", None, 400),
            ("POST", f"{base}/offsets",
             {"offsets": [{"topic": "bad", "partition": 0, "offset": 2**63 - 1}]}, 422),
            ("GET", "/consumers/g/instances/nope/records", None, 404),
            ("POST", "/consumers/g/instances/nope/subscription", {"topics": ["bad"]}, 404),
            ("DELETE", "/consumers/g/instances/nope", None, 404),
            ("PUT", base, None, 405),
        ]
        for method, path, body, want in cases:
            status, e = v2(floe, key, method, path, body)
            assert status == want, (method, path, body, status, e)
            assert isinstance(e["error_code"], int) and e["message"], e
        # Not JSON at all, or the wrong type: 400 and 415.
        status, text = call(floe, key, "POST", "/consumers/g", "{oops", V2)
        assert status == 400, text
        status, text = call(floe, key, "POST", "/consumers/g", "{}", "text/plain")
        assert status == 415, text
        # The instance still works after all of it.
        assert v2(floe, key, "POST", f"{base}/assignments",
                  {"partitions": [{"topic": "bad", "partition": 0}]})[0] == 204
        assert v2(floe, key, "POST", f"{base}/positions/beginning",
                  {"partitions": [{"topic": "bad", "partition": 0}]})[0] == 204
        status, recs = v2(floe, key, "GET", f"{base}/records?timeout=1000", accept=BINARY)
        assert status == 200 and [r["offset"] for r in recs] == [0], recs
    finally:
        floe.close()


class Events:
    """A Server-Sent Events reader over a raw socket."""

    def __init__(self, floe, key, path, last_id=None):
        token = base64.b64encode(f"{key[0]}:{key[1]}".encode()).decode()
        self.s = socket.create_connection(("127.0.0.1", floe.http_port), timeout=20)
        extra = f"Last-Event-ID: {last_id}\r\n" if last_id else ""
        self.s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n"
                       f"Accept: text/event-stream\r\n{extra}\r\n".encode())
        self.buf = b""
        head = self._until(b"\r\n\r\n")
        assert b" 200 " in head.split(b"\r\n")[0], head
        assert b"text/event-stream" in head.lower()

    def _until(self, mark):
        while mark not in self.buf:
            chunk = self.s.recv(65536)
            assert chunk, "stream closed"
            self.buf += chunk
        out, self.buf = self.buf.split(mark, 1)
        return out

    def records(self, n):
        """The next `n` record events (chunk framing stripped), and the last id seen."""
        got, last_id = [], None
        while len(got) < n:
            line = self._until(b"\n")
            line = line.rstrip(b"\r")
            if line.startswith(b"data: "):
                got.append(json.loads(line[6:]))
            elif line.startswith(b"id: "):
                last_id = line[4:].decode()
        while last_id is None:  # the id closes the batch the last record was in
            line = self._until(b"\n").rstrip(b"\r")
            if line.startswith(b"id: "):
                last_id = line[4:].decode()
        return got, last_id

    def close(self):
        self.s.close()


def test_server_sent_events_resume_by_id_and_by_group(store_dir):
    floe = start(store_dir)
    try:
        key = tenant(floe)
        sent = produce_kafka(floe, key, "feed", 2, 10)
        ev = Events(floe, key, "/v1/topics/feed/events?from=earliest")
        got, last_id = ev.records(10)
        ev.close()
        assert {(r["partition"], r["offset"]): (base64.b64decode(r["key"]), base64.b64decode(r["value"]))
                for r in got} == sent
        assert last_id == "0:5,1:5", last_id
        # Resume: only what came after.
        p = KafkaProducer(**sasl(floe, key, "PLAIN"), acks="all")
        p.send("feed", b"later", partition=1).get(10)
        p.close()
        ev = Events(floe, key, "/v1/topics/feed/events?from=earliest", last_id=last_id)
        got, last_id = ev.records(1)
        ev.close()
        assert [(r["partition"], r["offset"], r["value"]) for r in got] == \
            [(1, 5, base64.b64encode(b"later").decode())]
        assert last_id == "0:5,1:6"
        # A group: starts at its committed offsets, commits as it goes.
        ev = Events(floe, key, "/v1/topics/feed/events?group=feeders&from=earliest&partition=0")
        got, _ = ev.records(5)
        time.sleep(1.5)
        # The stream commits on its next turn (a keep-alive or more data).
        p = KafkaProducer(**sasl(floe, key, "PLAIN"), acks="all")
        p.send("feed", b"more", partition=0).get(10)
        p.close()
        ev.records(1)
        ev.close()
        c = KafkaConsumer(**sasl(floe, key, "PLAIN"), group_id="feeders", enable_auto_commit=False)
        for _ in range(50):  # the commit after the last batch is on its way
            if c.committed(TopicPartition("feed", 0)) == 5:
                break
            time.sleep(0.1)
        assert c.committed(TopicPartition("feed", 0)) == 5
        c.close()
        # The committed offset falls below the log start (DeleteRecords):
        # the group's stream starts over where `from` says, as a Kafka
        # consumer resets, instead of failing on every reconnect.
        a = KafkaAdminClient(**sasl(floe, key, "PLAIN"))
        a.delete_records({TopicPartition("feed", 0): 6})
        a.close()
        p = KafkaProducer(**sasl(floe, key, "PLAIN"), acks="all")
        p.send("feed", b"after", partition=0).get(10)
        p.close()
        ev = Events(floe, key, "/v1/topics/feed/events?group=feeders&from=earliest&partition=0")
        got, _ = ev.records(1)
        ev.close()
        assert [(r["offset"], r["value"]) for r in got] == \
            [(6, base64.b64encode(b"after").decode())], got
        status, text = call(floe, key, "GET", "/v1/topics/feed/events?offset=x")
        assert status == 400, text
        status, text = call(floe, key, "GET", "/v1/topics/nope/events")
        assert status == 404, text
    finally:
        floe.close()


def test_slow_clients_are_cut_off_and_others_carry_on(store_dir):
    floe = start(store_dir, ["--http-timeout-ms", "1000"])
    try:
        key = tenant(floe)
        token = base64.b64encode(f"{key[0]}:{key[1]}".encode()).decode()
        # Headers that never end: the connection is closed.
        slow = socket.create_connection(("127.0.0.1", floe.http_port), timeout=10)
        slow.sendall(b"GET /v3/clusters HTTP/1.1\r\nHost: x\r\n")
        # A body that stops halfway: 408.
        half = socket.create_connection(("127.0.0.1", floe.http_port), timeout=10)
        half.sendall(f"POST /v3/clusters/floe-acme/topics HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Basic {token}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: 100\r\n\r\n{{\"topic_name\":".encode())
        # Meanwhile everyone else is served.
        assert call(floe, key, "GET", "/v3/clusters")[0] == 200
        rest = b""
        while True:
            chunk = slow.recv(1024)
            if not chunk:
                break
            rest += chunk
        assert b"200 OK" not in rest, rest
        answer = half.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        slow.close()
        half.close()
        # Nothing was created by the cut-off request.
        status, text = call(floe, key, "GET", "/v3/clusters/floe-acme/topics")
        assert status == 200 and json.loads(text)["data"] == [], text
    finally:
        floe.close()


def test_openapi_document_holds_against_the_server(store_dir):
    """schemathesis generates requests from /openapi.json (valid and not)
    and checks that no answer is a 5xx and every answer is documented and
    matches its schema. Once with ids that exist (so requests reach the
    handlers), once with whatever it generates."""
    floe = start(store_dir)
    try:
        key = tenant(floe)
        produce_kafka(floe, key, "t", 2, 4)
        assert v2(floe, key, "POST", "/consumers/g1", {"name": "c1", "auto.offset.reset": "earliest"})[0] == 200
        assert v2(floe, key, "POST", "/consumers/g1/instances/c1/subscription", {"topics": ["t"]})[0] == 204
        st = os.path.join(os.path.dirname(sys.executable), "schemathesis")
        config = os.path.join(store_dir, "schemathesis.toml")
        with open(config, "w") as f:
            f.write('[parameters]\n"path.cluster_id" = "floe-acme"\n"path.topic_name" = "t"\n'
                    '"path.group" = "g1"\n"path.instance" = "c1"\n')
        base = [st, "run", f"http://127.0.0.1:{floe.http_port}/openapi.json",
                "--auth", f"{key[0]}:{key[1]}",
                "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                            "response_schema_conformance",
                # The event stream never ends, so it cannot be fetched whole.
                "--exclude-operation-id", "topicEvents",
                # Coverage is left out: under Python 3.11 it dies inside
                # hypothesis (a SystemError parsing a lambda's source).
                "--phases", "examples,fuzzing", "--max-examples", "25",
                "--request-timeout", "40", "--seed", "1"]
        env = dict(os.environ, NO_COLOR="1")
        for args in (["--config-file", config, *base[1:]], base[1:]):
            run = subprocess.run([st, *args], capture_output=True, text=True, env=env, timeout=600)
            assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    finally:
        floe.close()


def test_concurrent_requests_for_one_instance_deliver_each_record_once(store_dir):
    """Requests racing on one instance: each reads the state, and only one
    can swap its new positions in; the others run again on the new state."""
    import threading
    floe = start(store_dir)
    try:
        key = tenant(floe)
        sent = produce_kafka(floe, key, "race", 2, 40)
        base = "/consumers/racers/instances/one"
        assert v2(floe, key, "POST", "/consumers/racers",
                  {"name": "one", "auto.offset.reset": "earliest", "auto.commit.enable": "false"})[0] == 200
        assert v2(floe, key, "POST", f"{base}/subscription", {"topics": ["race"]})[0] == 204
        seen, errors = [], []

        def reader():
            for _ in range(30):
                status, recs = v2(floe, key, "GET", f"{base}/records?timeout=100&max_bytes=100",
                                  accept=BINARY)
                if status == 409:  # lost the race five times in a row: allowed, retry
                    continue
                if status != 200:
                    errors.append((status, recs))
                    return
                seen.extend((r["partition"], r["offset"]) for r in recs)

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert sorted(seen) == sorted(sent), "each record exactly once"
    finally:
        floe.close()


def test_the_readmes_curl_examples(store_dir):
    """curl, as the README shows it: produce, then consume in a group; the
    record curl produced is what kafka-python reads, and kafka-python's
    record is what curl's consumer gets, byte for byte."""
    floe = start(store_dir)
    try:
        key = tenant(floe)
        user = f"{key[0]}:{key[1]}"
        url = f"127.0.0.1:{floe.http_port}"

        def curl(*args):
            run = subprocess.run(["curl", "-sS", "-u", user, "-w", "\n%{http_code}", *args],
                                 capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, run.stderr
            body, status = run.stdout.rsplit("\n", 1)
            return int(status), body

        status, body = curl("-H", "content-type: application/json", "-d",
                            '{"topic_name": "demo", "partitions_count": 1}',
                            f"{url}/v3/clusters/floe-acme/topics")
        assert status == 201, body
        status, body = curl("-H", "content-type: application/json", "-d",
                            '{"value": {"type": "STRING", "data": "hello over http"}}',
                            f"{url}/v3/clusters/floe-acme/topics/demo/records")
        assert status == 200 and json.loads(body)["offset"] == 0, body
        p = KafkaProducer(**sasl(floe, key, "PLAIN"), acks="all")
        p.send("demo", b"\x00from kafka\xff", key=b"k").get(10)
        p.close()
        c = KafkaConsumer(**sasl(floe, key, "PLAIN"), auto_offset_reset="earliest",
                          consumer_timeout_ms=5000)
        c.assign([TopicPartition("demo", 0)])
        assert [m.value for m in c] == [b"hello over http", b"\x00from kafka\xff"]
        c.close()

        v2type = "content-type: application/vnd.kafka.v2+json"
        status, body = curl("-H", v2type, "-d", '{"name": "c1", "auto.offset.reset": "earliest"}',
                            f"{url}/consumers/my-group")
        assert status == 200 and json.loads(body)["instance_id"] == "c1", body
        status, body = curl("-H", v2type, "-d", '{"topics": ["demo"]}',
                            f"{url}/consumers/my-group/instances/c1/subscription")
        assert status == 204, body
        status, body = curl("-H", f"accept: {BINARY}",
                            f"{url}/consumers/my-group/instances/c1/records")
        assert status == 200, body
        got = [(base64.b64decode(r["value"]), r["offset"]) for r in json.loads(body)]
        assert got == [(b"hello over http", 0), (b"\x00from kafka\xff", 1)], body
        status, body = curl("-X", "POST", "-H", v2type,
                            f"{url}/consumers/my-group/instances/c1/offsets")
        assert status == 204, body
        status, body = curl("-X", "DELETE", f"{url}/consumers/my-group/instances/c1")
        assert status == 204, body
        c = KafkaConsumer(**sasl(floe, key, "PLAIN"), group_id="my-group", enable_auto_commit=False)
        assert c.committed(TopicPartition("demo", 0)) == 2
        c.close()
    finally:
        floe.close()
