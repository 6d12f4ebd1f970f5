"""README.md's three commands for a transform, with the `floe transform`
CLI against the real binary: the key exported, the identity guest deployed
from `demo` to `demo-copy`, and what kafka-python produces comes out
unchanged; then status, list and delete, and the uploads the CLI must
refuse with a message rather than deploy."""
import os
import subprocess
import tempfile
import time

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from conftest import Floe
from test_http import http_floe, tenant_cli  # noqa: F401 (a fixture)
from test_tenants import sasl
from test_transform_python import read_all


@pytest.fixture(scope="module")
def fixtures():
    """The WAT guests, written by the floe-fixtures binary built beside floe."""
    tool = os.path.join(os.path.dirname(Floe.binary()), "floe-fixtures")
    with tempfile.TemporaryDirectory(prefix="floe-fixtures-") as d:
        subprocess.run([tool, d], check=True, capture_output=True)
        yield d


def test_the_readme_transform_with_the_cli(http_floe, fixtures):  # noqa: F811
    # The README's guest when scripts/build-guests could build it, else the
    # WAT identity fixture: the same contract, record for record.
    guests = os.environ.get("FLOE_GUESTS", "wat")
    identity = os.path.join(fixtures if guests == "wat" else guests, "identity.wasm")
    floe, key = http_floe
    cli = tenant_cli(floe, key, "transform")

    conf = sasl(floe, key, "PLAIN")
    a = KafkaAdminClient(**conf)
    a.create_topics([NewTopic(t, 1, 1) for t in ("demo", "demo-copy")])
    a.close()

    # Refused, each with a reason, and nothing deployed.
    r = cli("deploy", "--name", "copy", "--input", "demo", "--output", "nowhere", identity,
            ok=False)
    assert b"topic \"nowhere\" does not exist" in r.stderr, r.stderr
    with tempfile.NamedTemporaryFile(suffix=".wasm") as junk:
        junk.write(b"not a component")
        junk.flush()
        r = cli("deploy", "--name", "copy", "--input", "demo", "--output", "demo-copy",
                junk.name, ok=False)
    assert b"not a WebAssembly binary" in r.stderr, r.stderr
    r = cli("deploy", "--name", "copy", "--input", "demo", "--output", "demo-copy",
            os.path.join(fixtures, "sneaky.wasm"), ok=False)
    assert b"evil:net/socket" in r.stderr, r.stderr
    r = cli("deploy", "--name", "copy", "--input", "demo", "--output", "demo-copy",
            os.path.join(fixtures, "missing.wasm"), ok=False)
    assert b"missing.wasm" in r.stderr, r.stderr
    assert cli("list")["transforms"] == []

    deployed = cli("deploy", "--name", "copy", "--input", "demo", "--output", "demo-copy",
                   identity)
    assert deployed["name"] == "copy" and deployed["state"] in ("starting", "running"), deployed

    p = KafkaProducer(**conf, acks="all")
    values = [f"record {i}".encode() for i in range(20)]
    for v in values:
        p.send("demo", v, key=b"k")
    p.flush()
    p.close()
    out = read_all(conf, "demo-copy", len(values))
    assert [(r.key, r.value) for r in out] == [(b"k", v) for v in values]

    deadline = time.time() + 60
    while cli("status", "copy")["records_in"] < len(values):
        assert time.time() < deadline, cli("status", "copy")
        time.sleep(0.2)
    s = cli("status", "copy")
    assert (s["state"], s["records_out"], s["errors"], s["lag"]) == \
        ("running", len(values), 0, 0), s
    assert s["fuel"] > 0, s
    assert [t["name"] for t in cli("list")["transforms"]] == ["copy"]
    cli("delete", "copy")
    r = cli("status", "copy", ok=False)
    assert b"404" in r.stderr, r.stderr
