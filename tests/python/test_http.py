"""The HTTP data API's first part (issue 9) over the real binary: v3
produce, single and streamed, read back by kafka-python byte for byte;
kafka-python's records read over HTTP; keys partitioned as Kafka's default
partitioner does; and each bad input with its status."""
import base64
import json
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from conftest import Floe
from test_tenants import TOKEN, admin, sasl


@pytest.fixture
def http_floe():
    with tempfile.TemporaryDirectory(prefix="floe-py-") as d:
        f = Floe(d, ["--admin-token", TOKEN, "--auth", "required"])
        try:
            assert admin(f, "POST", "/tenants", {"id": "acme", "plan": "standard"})[0] == 201
            k = admin(f, "POST", "/tenants/acme/keys")[1]
            yield f, (k["key"], k["secret"])
        finally:
            f.close()


def call(floe, key, method, path, body=None, ctype="application/json", timeout=30):
    token = base64.b64encode(f"{key[0]}:{key[1]}".encode()).decode()
    data = body if isinstance(body, (bytes, type(None))) else body.encode()
    req = urllib.request.Request(f"http://127.0.0.1:{floe.http_port}{path}", method=method,
                                 data=data, headers={"Authorization": f"Basic {token}",
                                                     "Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def tenant_cli(floe, key, command):
    """Runs `floe COMMAND ...` as a tenant (the README's exported key): the
    answer's JSON, or with ok=False the failed run."""
    env = {"FLOE_URL": f"http://127.0.0.1:{floe.http_port}", "FLOE_API_KEY": key[0],
           "FLOE_API_SECRET": key[1], "PATH": "/usr/bin:/bin"}

    def cli(*args, ok=True):
        r = subprocess.run([floe.bin, command, *args], capture_output=True, env=env,
                           timeout=120)
        assert (r.returncode == 0) == ok, (r.stdout, r.stderr)
        return json.loads(r.stdout) if ok and r.stdout.strip() else r
    return cli


def create_topic(conf, name, partitions):
    a = KafkaAdminClient(**conf)
    a.create_topics([NewTopic(name, partitions, 1)])
    a.close()


def b64(b):
    return base64.b64encode(b).decode()


def test_http_and_kafka_records_are_the_same_bytes(http_floe):
    floe, key = http_floe
    conf = sasl(floe, key, "PLAIN")
    create_topic(conf, "web", 4)
    records = "/v3/clusters/floe-acme/topics/web/records"
    raw = bytes(range(256))
    status, body = call(floe, key, "POST", records, json.dumps(
        {"partition_id": 0, "key": {"type": "STRING", "data": "k0"},
         "value": {"type": "BINARY", "data": b64(raw)},
         "headers": [{"name": "h", "value": b64(b"hv")}]}))
    assert status == 200, body
    first = json.loads(body)
    assert (first["partition_id"], first["offset"], first["value"]["size"]) == (0, 0, 256)
    # Streaming mode: three records in one body, three answers in order.
    stream = "".join(json.dumps(r) for r in [
        {"partition_id": 0, "value": {"type": "JSON", "data": {"n": 1}}},
        {"partition_id": 0, "value": {"type": "STRING", "data": "two"}},
        {"partition_id": 0, "value": {"data": [3]}}])
    status, body = call(floe, key, "POST", records, stream)
    lines = [json.loads(l) for l in body.splitlines()]
    assert status == 200 and [l["offset"] for l in lines] == [1, 2, 3], body
    # kafka-python reads the same bytes.
    c = KafkaConsumer(**conf, auto_offset_reset="earliest", consumer_timeout_ms=5000)
    c.assign([TopicPartition("web", 0)])
    got = [m for m in c]
    c.close()
    assert [m.value for m in got] == [raw, b'{"n":1}', b"two", b"[3]"]
    assert got[0].key == b"k0" and got[0].headers == [("h", b"hv")]

    # And the other way: kafka-python's records over HTTP.
    p = KafkaProducer(**conf, acks="all")
    p.send("web", b"\x00\xffbinary", key=b"kk", partition=1, headers=[("x", b"\x01")]).get(10)
    p.close()
    status, body = call(floe, key, "GET", "/v1/topics/web/partitions/1/records?offset=0")
    read = json.loads(body)
    assert status == 200 and len(read["records"]) == 1, body
    r = read["records"][0]
    assert base64.b64decode(r["value"]) == b"\x00\xffbinary"
    assert base64.b64decode(r["key"]) == b"kk"
    assert r["headers"] == [{"name": "x", "value": b64(b"\x01")}]
    assert read["next_offset"] == 1 and r["timestamp"] > 0

    # A keyed record lands where kafka-python's default partitioner puts it.
    status, body = call(floe, key, "POST", records,
                        json.dumps({"key": {"type": "STRING", "data": "user-7"},
                                    "value": {"type": "STRING", "data": "v"}}))
    p = KafkaProducer(**conf, acks="all")
    meta = p.send("web", b"v", key=b"user-7").get(10)
    p.close()
    assert json.loads(body)["partition_id"] == meta.partition


def test_a_stream_across_partitions_is_answered_in_order(http_floe):
    """A body's records go a batch per partition, yet each answer line is
    the record's own, in the body's order; a malformed record ends the
    stream: those before it stand, none after it is appended."""
    floe, key = http_floe
    conf = sasl(floe, key, "PLAIN")
    create_topic(conf, "spread", 3)
    records = "/v3/clusters/floe-acme/topics/spread/records"
    stream = "".join(json.dumps({"partition_id": i % 3, "value": {"type": "STRING",
                                                                  "data": f"v{i}"}})
                     for i in range(9))
    status, body = call(floe, key, "POST", records, stream + '{"value": nope}' + stream)
    lines = [json.loads(l) for l in body.splitlines()]
    assert status == 200 and len(lines) == 10, body
    assert [(l["partition_id"], l["offset"]) for l in lines[:9]] == \
        [(i % 3, i // 3) for i in range(9)], body
    assert lines[9]["error_code"] == 400, lines[9]
    c = KafkaConsumer(**conf, auto_offset_reset="earliest", consumer_timeout_ms=5000)
    c.assign([TopicPartition("spread", p) for p in range(3)])
    got = sorted((m.partition, m.offset, m.value) for m in c)
    c.close()
    assert got == sorted((i % 3, i // 3, f"v{i}".encode()) for i in range(9))
    # Batches stay within the topic's max.message.bytes: twenty 4 KB
    # records to a topic taking 64 KB batches all land.
    a = KafkaAdminClient(**conf)
    a.create_topics([NewTopic("small", 1, 1, topic_configs={"max.message.bytes": "65536"})])
    a.close()
    stream = "".join(json.dumps({"value": {"type": "STRING", "data": "x" * 4000}})
                     for _ in range(20))
    status, body = call(floe, key, "POST", "/v3/clusters/floe-acme/topics/small/records", stream)
    lines = [json.loads(l) for l in body.splitlines()]
    assert status == 200 and [l.get("offset") for l in lines] == list(range(20)), body


def test_bad_http_input_gets_its_status_and_appends_nothing(http_floe):
    floe, key = http_floe
    conf = sasl(floe, key, "PLAIN")
    create_topic(conf, "strict", 1)
    records = "/v3/clusters/floe-acme/topics/strict/records"
    cases = [
        ("POST", records, "{not json", "application/json", 400),
        ("POST", records, json.dumps({"value": {"type": "BINARY", "data": "@@@"}}),
         "application/json", 400),
        ("POST", records, json.dumps({"value": {"type": "NOPE", "data": "x"}}),
         "application/json", 400),
        ("POST", records, json.dumps({"velue": {"data": 1}}), "application/json", 400),
        ("POST", records, json.dumps({"value": {"data": 1}}), "text/plain", 415),
        ("POST", records, "x" * (9 << 20), "application/json", 413),
        ("POST", records, "{}" * 10_001, "application/json", 413),
        ("POST", "/v3/clusters/floe-acme/topics/nope/records", json.dumps({"value": {"data": 1}}),
         "application/json", 404),
        ("POST", "/v3/clusters/other/topics/strict/records", json.dumps({"value": {"data": 1}}),
         "application/json", 404),
        ("GET", "/v1/topics/strict/partitions/x/records", None, "application/json", 400),
        ("GET", "/v1/topics/strict/partitions/0/records?offset=-1", None, "application/json", 400),
        ("GET", "/v1/topics/nope/partitions/0/records", None, "application/json", 404),
        ("DELETE", records, None, "application/json", 405),
    ]
    for method, path, body, ctype, want in cases:
        status, text = call(floe, key, method, path, body, ctype)
        assert status == want, (method, path, status, text)
    status, text = call(floe, key, "POST", "/v3/clusters/floe-acme/topics/nope/records",
                        json.dumps({"value": {"data": 1}}))
    assert json.loads(text)["kafka_error_code"] == 3
    # Nothing of any of it was appended; a long-poll read waits, then says so.
    status, text = call(floe, key, "GET", "/v1/topics/strict/partitions/0/records?timeout_ms=300")
    assert status == 200 and json.loads(text)["records"] == [] and \
        json.loads(text)["high_watermark"] == 0, text


def test_v3_clusters_and_topics(http_floe):
    floe, key = http_floe
    base = "/v3/clusters/floe-acme"
    status, body = call(floe, key, "GET", "/v3/clusters")
    assert status == 200 and [c["cluster_id"] for c in json.loads(body)["data"]] == ["floe-acme"]
    assert call(floe, key, "GET", base)[0] == 200
    assert call(floe, key, "GET", "/v3/clusters/floe-other")[0] == 404
    new = json.dumps({"topic_name": "made", "partitions_count": 3,
                      "configs": [{"name": "retention.ms", "value": "60000"}]})
    status, body = call(floe, key, "POST", f"{base}/topics", new)
    assert status == 201 and json.loads(body)["partitions_count"] == 3, body
    assert call(floe, key, "POST", f"{base}/topics", new)[0] == 409
    for bad in ['{"topic_name": "r3", "replication_factor": 3}', '{"topic_name": "p0", "partitions_count": 0}',
                '{"topic_name": "c", "configs": [{"name": "no.such", "value": "1"}]}', "{oops"]:
        assert call(floe, key, "POST", f"{base}/topics", bad)[0] == 400, bad
    status, body = call(floe, key, "GET", f"{base}/topics")
    assert [t["topic_name"] for t in json.loads(body)["data"]] == ["made"], body
    assert json.loads(call(floe, key, "GET", f"{base}/topics/made")[1])["partitions_count"] == 3
    # Kafka clients see the same topic.
    a = KafkaAdminClient(**sasl(floe, key, "PLAIN"))
    assert "made" in a.list_topics()
    a.close()
    assert call(floe, key, "DELETE", f"{base}/topics/made")[0] == 204
    assert call(floe, key, "GET", f"{base}/topics/made")[0] == 404
    assert call(floe, key, "DELETE", f"{base}/topics/made")[0] == 404


def test_log_append_time_over_http(http_floe):
    """On a LogAppendTime topic the HTTP produce answers the log's time and
    the HTTP read shows it, for records from HTTP and from Kafka clients."""
    floe, key = http_floe
    conf = sasl(floe, key, "PLAIN")
    a = KafkaAdminClient(**conf)
    a.create_topics([NewTopic("stamped", 1, 1,
                              topic_configs={"message.timestamp.type": "LogAppendTime"})])
    a.close()
    old = 1_600_000_000_000
    before = int(time.time() * 1000)
    status, body = call(floe, key, "POST", "/v3/clusters/floe-acme/topics/stamped/records",
                        json.dumps({"partition_id": 0, "timestamp": old,
                                    "value": {"type": "STRING", "data": "web"}}))
    assert status == 200, body
    answered = json.loads(body)["timestamp"]
    p = KafkaProducer(**conf, acks="all")
    p.send("stamped", b"kafka", partition=0, timestamp_ms=old).get(10)
    p.close()
    after = int(time.time() * 1000)
    assert before <= answered <= after, "the HTTP produce answers the log's time"
    status, body = call(floe, key, "GET", "/v1/topics/stamped/partitions/0/records?offset=0")
    read = json.loads(body)["records"]
    assert status == 200 and len(read) == 2, body
    assert read[0]["timestamp"] == answered
    assert all(before <= r["timestamp"] <= after for r in read), read


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_read_over_http(http_floe, codec):
    floe, key = http_floe
    conf = sasl(floe, key, "PLAIN")
    p = KafkaProducer(**conf, acks="all", compression_type=codec, linger_ms=50)
    values = [f"{codec}-{i}".encode() * 20 for i in range(10)]
    futures = [p.send("packed", v, partition=0) for v in values]
    [f.get(10) for f in futures]
    p.close()
    status, body = call(floe, key, "GET", "/v1/topics/packed/partitions/0/records?offset=3")
    assert status == 200, body
    read = json.loads(body)
    assert [base64.b64decode(r["value"]) for r in read["records"]] == values[3:]
    assert [r["offset"] for r in read["records"]] == list(range(3, 10))


def test_reads_step_past_transaction_markers(http_floe):
    """A committed transaction ends in a control batch: reads return its
    record, then resume after the marker instead of reading it again."""
    floe, key = http_floe
    conf = sasl(floe, key, "PLAIN")
    create_topic(conf, "txn", 1)
    p = KafkaProducer(**conf, transactional_id="http-txn")
    p.init_transactions()
    p.begin_transaction()
    p.send("txn", b"in a transaction", partition=0)
    p.commit_transaction()
    p.close()
    status, body = call(floe, key, "GET", "/v1/topics/txn/partitions/0/records?offset=0&timeout_ms=1000")
    read = json.loads(body)
    assert status == 200 and [base64.b64decode(r["value"]) for r in read["records"]] == \
        [b"in a transaction"], body
    # Offset 1 is the commit marker; the next read starts after it.
    assert read["next_offset"] == read["high_watermark"] == 2, body
