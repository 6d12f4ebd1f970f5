"""kafkajs 2.2.4 (Node.js; its own protocol code, no librdkafka) against the
real binary. Each test runs a scenario of tests/node/kafkajs.js, which drives
the client and prints what it saw as JSON; the checks are here.

scripts/test installs the Node packages (`npm ci` in tests/node)."""
import json
import os
import subprocess
import tempfile

import pytest

from conftest import Floe, free_port
from test_idempotence import CuttingProxy, metric
from test_tenants import MECHANISMS, tenants, tls_floe  # noqa: F401 (fixtures)

NODE_DIR = os.path.join(os.path.dirname(__file__), "..", "node")


def kafkajs(scenario, timeout=300, **args):
    assert os.path.isdir(os.path.join(NODE_DIR, "node_modules")), \
        "kafkajs is not installed: scripts/test runs `npm ci` in tests/node"
    run = subprocess.run(["node", "kafkajs.js", scenario, json.dumps(args)], cwd=NODE_DIR,
                         capture_output=True, timeout=timeout)
    lines = run.stdout.decode().strip().splitlines()
    assert lines, f"no output; stderr: {run.stderr.decode()[-2000:]}"
    out = json.loads(lines[-1])
    assert run.returncode == 0 and "error" not in out, out
    return out


def test_every_codec_round_trips_and_survives_restart_and_kill9(floe):
    with tempfile.TemporaryDirectory(prefix="floe-js-") as d:
        common = dict(partitions=4, dir=d)
        first = kafkajs("codecs", bootstrap=floe.bootstrap, records=20_000, group="g", **common)
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
            r = first[codec]
            assert (r["acked"], r["read"], r["problems"]) == (20_000, 20_000, []), (codec, r)
        floe.restart()
        again = kafkajs("reread", bootstrap=floe.bootstrap, group="after-restart", **common)
        assert all((r["read"], r["problems"]) == (20_000, []) for r in again.values()), again
        floe.kill9()
        floe.start()
        again = kafkajs("reread", bootstrap=floe.bootstrap, group="after-kill", **common)
        assert all((r["read"], r["problems"]) == (20_000, []) for r in again.values()), again


def test_a_group_shares_partitions_through_joins_and_leaves(floe):
    r = kafkajs("groups", bootstrap=floe.bootstrap, topic="js-group", partitions=6,
                records=12_000, group="js-readers")
    assert r["distinct"] == 12_000, "every record read"
    # kafkajs commits after each batch, so a record is read again only when
    # a rebalance took its partition between reading and committing it: at
    # most a fetch (100 records a send, two sends in flight) per partition
    # and rebalance (two).
    assert r["readTwice"] <= 2 * 6 * 200, r["readTwice"]
    live = r["live"]
    assert (live["state"], live["members"], live["protocol"]) == ("Stable", 3, "RoundRobinAssigner")
    assert live["assigned"] == list(range(6)), "each partition assigned once"
    assert r["listed"]
    assert r["committed"] == r["ends"] == [[p, "2000"] for p in range(6)]
    assert r["empty"] == {"state": "Empty", "members": 0}
    assert r["afterReset"] == [[p, "0"] for p in range(6)]
    assert r["rereadDistinct"] == 12_000
    assert r["firstOffsets"] == {str(p): "0" for p in range(6)}
    assert r["deleted"] == [0] and not r["listedAfterDelete"]


def test_transactions_commit_and_abort_exactly_once(floe):
    r = kafkajs("transactions", bootstrap=floe.bootstrap, partitions=3, records=300)
    assert r["aborted"] >= 1 and r["transactions"] > r["aborted"]
    assert r["committedExactlyOnce"], "read_committed sees each input transformed once"
    assert r["readCommitted"] == 300
    # The aborted transactions' records are in the log, visible uncommitted.
    assert r["readUncommitted"] > 300
    assert r["committed"] == r["ends"] == [[p, "100"] for p in range(3)]


def test_admin_calls_and_their_errors(floe):
    r = kafkajs("admin", bootstrap=floe.bootstrap)
    assert r["create"] == {"ok": True}
    assert r["createAgain"] == {"ok": False}, "kafkajs answers false for TOPIC_ALREADY_EXISTS"
    assert r["createBad"]["error"] == "INVALID_TOPIC_EXCEPTION"
    assert r["listed"] == {"ok": True}
    assert "error" not in r["grow"]
    assert r["shrink"]["error"] == "INVALID_PARTITIONS"
    assert r["partitions"] == {"ok": 4}
    assert r["unknownMetadata"]["error"] == "UNKNOWN_TOPIC_OR_PARTITION"
    assert r["alter"]["ok"]["resources"][0]["errorCode"] == 0
    assert r["retention"] == {"ok": [["retention.ms", "86400000"]]}
    assert "error" not in r["deleteRecords"]
    assert r["offsets"]["ok"] == {"partition": 0, "offset": "10", "high": "10", "low": "4"}
    # Records were stamped one second apart: the first at or after 6.5 s is 7.
    assert r["byTimestamp"] == {"ok": "7"}
    assert r["readFromLow"] == {"ok": [[str(o), f"r-{o}"] for o in range(4, 10)]}
    assert r["tooLarge"]["error"] == "MESSAGE_TOO_LARGE"
    assert r["afterTooLarge"] == {"ok": "0"}, "the producer carries on"
    assert "error" not in r["delete"]
    assert r["listedAfterDelete"] == {"ok": False}
    # kafkajs wraps the retriable UNKNOWN_TOPIC_OR_PARTITION once retries end.
    assert r["deleteUnknown"]["message"] == "This server does not host this topic-partition"


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_logins(tenants, mechanism):  # noqa: F811 (the fixture)
    floe, keys = tenants
    key, secret = keys["acme"]
    r = kafkajs("sasl", bootstrap=floe.bootstrap, mechanism=mechanism, username=key, password=secret)
    assert r == {"read": ["hello", "world"], "wrong": "KafkaJSSASLAuthenticationError"}


def test_an_idempotent_producer_through_cut_connections_stores_each_record_once():
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="floe-js-") as d:
        floe = Floe(d, ["--advertised-kafka", f"127.0.0.1:{port}"])
        proxy = CuttingProxy(port, floe.kafka_port)
        try:
            with proxy.cutting() as cuts:
                sent = kafkajs("idempotent", bootstrap=f"127.0.0.1:{port}", topic="js-idem",
                               partitions=4, records=20_000)
            got = kafkajs("values", bootstrap=f"127.0.0.1:{port}", topic="js-idem", records=20_000)
            retried = metric(floe, "floe_idempotent_duplicates_total")
        finally:
            proxy.close()
            floe.close()
    print(f"{len(cuts)} cuts of {sum(cuts)} connections; {retried} retried batches answered "
          f"as duplicates")
    assert sent == {"acked": 20_000}
    for q in range(4):
        want = [f"{q}:{i:08d}" for i in range(q, 20_000, 4)]
        assert got[str(q)] == want, f"partition {q}: each record once, in order"
    assert sum(cuts) > 0 and retried > 0, "the cuts made no retried batch reach the broker"


def test_sasl_over_tls(tls_floe):  # noqa: F811 (the fixture)
    floe, cert, (key, secret) = tls_floe
    r = kafkajs("sasl", bootstrap=floe.bootstrap, mechanism="SCRAM-SHA-512", username=key,
                password=secret, ca=cert)
    assert r == {"read": ["hello", "world"], "wrong": "KafkaJSSASLAuthenticationError"}
    # The same client without TLS: the TLS listener closes the connection.
    with pytest.raises(AssertionError, match="Closed connection"):
        kafkajs("sasl", bootstrap=floe.bootstrap, mechanism="SCRAM-SHA-512", username=key,
                password=secret, retries=1)
