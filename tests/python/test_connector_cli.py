"""README.md's webhook sink, with the `floe connector` CLI against the real
binary: created in one command (after the key is exported and the guests
built), it POSTs what kafka-python produces to a local HTTP server as JSON
lines; then status, list, pause, resume and delete."""
import http.server
import json
import os
import threading
import time

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from test_http import http_floe, tenant_cli  # noqa: F401 (a fixture)
from test_tenants import sasl


class Receiver(http.server.BaseHTTPRequestHandler):
    got = []

    def do_POST(self):  # noqa: N802 (the http.server name)
        body = self.rfile.read(int(self.headers["content-length"]))
        Receiver.got.append((dict(self.headers), body))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    Receiver.got = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_the_readme_webhook_sink_with_the_cli(http_floe, receiver):  # noqa: F811
    guests = os.environ.get("FLOE_GUESTS", "wat")
    if guests == "wat":
        pytest.skip("wasm32-wasip2 unavailable: the http_sink example was not built")
    floe, key = http_floe
    cli = tenant_cli(floe, key, "connector")

    conf = sasl(floe, key, "PLAIN")
    a = KafkaAdminClient(**conf)
    a.create_topics([NewTopic("demo", 1, 1)])
    a.close()
    url = f"http://127.0.0.1:{receiver}/floe"
    created = cli("create", "--name", "hook", "--kind", "sink", "--topic", "demo",
                  "--config", f"url={url}", "--allow", f"127.0.0.1:{receiver}",
                  os.path.join(guests, "http_sink.wasm"))
    assert created["kind"] == "sink" and created["state"] in ("starting", "running"), created

    p = KafkaProducer(**conf, acks="all")
    p.send("demo", b"hello webhook", key=b"k1")
    p.flush()
    deadline = time.time() + 60
    while not Receiver.got:
        assert time.time() < deadline, cli("status", "hook")
        time.sleep(0.1)
    headers, body = Receiver.got[0]
    line = json.loads(body.splitlines()[0])
    assert (line["value"], line["key"], line["offset"]) == ("hello webhook", "k1", 0)
    assert headers["floe-partition"] == "0" and headers["floe-offset"] == "0"

    status = cli("status", "hook")
    assert status["records"] == 1 and status["lag"] == 0, status
    assert [c["name"] for c in cli("list")["connectors"]] == ["hook"]
    assert cli("pause", "hook")["state"] == "paused"
    assert cli("resume", "hook")["state"] in ("starting", "running")
    cli("delete", "hook")
    r = cli("status", "hook", ok=False)
    assert b"404" in r.stderr, r.stderr
