"""A transform written in Python (guests/python/upper), built into a
component with componentize-py, deployed over HTTP and run by the real
binary: kafka-python's records come out upper-cased with the deploy's
config applied, and a batch that is not UTF-8 goes to the dead letters with
the guest's error. A guest in an interpreted language loads: CPython's
WASI imports (files, sockets) are linked with nothing behind them."""
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from test_http import call, http_floe  # noqa: F401 (a fixture)
from test_tenants import sasl

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture(scope="module")
def upper_wasm():
    """The example built with the componentize-py next to this Python."""
    tool = os.path.join(os.path.dirname(sys.executable), "componentize-py")
    with tempfile.TemporaryDirectory(prefix="floe-py-guest-") as d:
        out = os.path.join(d, "upper.wasm")
        subprocess.run([tool, "-d", os.path.join(ROOT, "wit"), "-w", "transform",
                        "componentize", "app", "-o", out],
                       cwd=os.path.join(ROOT, "guests", "python", "upper"),
                       check=True, capture_output=True)
        with open(out, "rb") as f:
            yield f.read()


def status(floe, key, name):
    code, body = call(floe, key, "GET", f"/v1/transforms/{name}")
    assert code == 200, body
    return json.loads(body)


def read_all(conf, topic, want, timeout=60):
    c = KafkaConsumer(**conf, enable_auto_commit=False, consumer_timeout_ms=2000)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    got, deadline = [], time.time() + timeout
    while len(got) < want and time.time() < deadline:
        for batch in c.poll(timeout_ms=500).values():
            got.extend(batch)
    c.close()
    return got


def test_a_python_transform_built_with_componentize_py(http_floe, upper_wasm):  # noqa: F811
    floe, key = http_floe
    conf = sasl(floe, key, "PLAIN")
    a = KafkaAdminClient(**conf)
    a.create_topics([NewTopic(t, 1, 1) for t in ("words", "shouted")])
    a.close()
    # The deploy compiles CPython's component: many seconds in a debug
    # build on a busy machine.
    code, body = call(floe, key, "PUT",
                      "/v1/transforms/shout?input=words&output=shouted&config=suffix=!",
                      upper_wasm, "application/wasm", timeout=600)
    assert code == 200, body

    p = KafkaProducer(**conf, acks="all")
    words = [f"word {i}".encode() for i in range(50)]
    for w in words:
        p.send("words", w, headers=[("lang", b"en")])
    p.flush()
    deadline = time.time() + 120
    while status(floe, key, "shout")["records_in"] < len(words):
        assert time.time() < deadline, status(floe, key, "shout")
        time.sleep(0.2)
    out = read_all(conf, "shouted", len(words))
    assert [r.value for r in out] == [w.upper() + b"!" for w in words]
    assert all(r.headers == [("lang", b"en")] for r in out)

    # Not UTF-8: the guest raises; the batch is dead-lettered with its error.
    p.send("words", b"\xff\xfe")
    p.flush()
    p.close()
    while status(floe, key, "shout")["records_in"] < len(words) + 1:
        assert time.time() < deadline, status(floe, key, "shout")
        time.sleep(0.2)
    s = status(floe, key, "shout")
    assert s["errors"] == 1 and s["state"] == "running", s
    dead = read_all(conf, "shout-dlq", 1)
    assert [r.value for r in dead] == [b"\xff\xfe"]
    why = dict(dead[0].headers)["floe-error"].decode()
    assert why.startswith("error:") and "not UTF-8" in why, why
