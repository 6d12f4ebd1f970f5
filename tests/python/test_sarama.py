"""Sarama 1.22.1 (Go; its own protocol code, speaking Kafka 2.1's request
versions) against the real binary. Each test runs a scenario of
tests/go/sarama/main.go, which drives the client and prints what it saw as
JSON; the checks are here.

scripts/test installs Go and Debian's sarama and xdg-go/scram packages; the
program is built here, in GOPATH mode, once per run."""
import json
import os
import subprocess
import tempfile

import pytest

from test_tenants import MECHANISMS, tenants, tls_floe  # noqa: F401 (fixtures)

GO_DIR = os.path.join(os.path.dirname(__file__), "..", "go", "sarama")

# Kafka's error codes, as sarama reports them.
TOPIC_ALREADY_EXISTS, INVALID_TOPIC, INVALID_PARTITIONS, INVALID_CONFIG = 36, 17, 37, 40
UNKNOWN_TOPIC_OR_PARTITION, MESSAGE_TOO_LARGE = 3, 10
GROUP_ID_NOT_FOUND = 69


@pytest.fixture(scope="module")
def sarama():
    with tempfile.TemporaryDirectory(prefix="floe-go-") as d:
        binary = os.path.join(d, "sarama")
        env = dict(os.environ, GOPATH="/usr/share/gocode", GO111MODULE="off",
                   GOCACHE=os.path.join(d, "cache"))
        build = subprocess.run(["go", "build", "-o", binary, "."], cwd=GO_DIR, env=env,
                               capture_output=True, timeout=600)
        assert build.returncode == 0, build.stderr.decode()[-3000:]

        def run(scenario, timeout=300, **args):
            r = subprocess.run([binary, scenario, json.dumps(args)], capture_output=True,
                               timeout=timeout)
            lines = r.stdout.decode().strip().splitlines()
            assert lines, f"no output; stderr: {r.stderr.decode()[-2000:]}"
            out = json.loads(lines[-1])
            assert r.returncode == 0 and "error" not in out, out
            return out
        yield run


def test_every_codec_round_trips_and_survives_restart_and_kill9(floe, sarama):
    with tempfile.TemporaryDirectory(prefix="floe-go-") as d:
        first = sarama("codecs", bootstrap=floe.bootstrap, records=20_000, partitions=4, dir=d)
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
            r = first[codec]
            assert (r["acked"], r["read"], r["problems"]) == (20_000, 20_000, []), (codec, r)
            assert r["byTime"] == [], (codec, r["byTime"])
        floe.restart()
        again = sarama("reread", bootstrap=floe.bootstrap, dir=d)
        assert all((r["read"], r["problems"]) == (20_000, []) for r in again.values()), again
        floe.kill9()
        floe.start()
        again = sarama("reread", bootstrap=floe.bootstrap, dir=d)
        assert all((r["read"], r["problems"]) == (20_000, []) for r in again.values()), again


def test_a_group_shares_partitions_through_joins_and_leaves(floe, sarama):
    r = sarama("groups", bootstrap=floe.bootstrap, topic="go-group", partitions=6,
               records=12_000, group="go-readers")
    assert r["distinct"] == 12_000, "every record read"
    # Offsets are committed every 100 ms, so a record is read again only when
    # a rebalance took its partition before its commit: bounded by what a
    # partition reads in that time, at most the topic's share per partition.
    assert r["readTwice"] <= 12_000 // 2, r["readTwice"]
    live = r["live"]
    assert (live["state"], live["members"], live["protocol"]) == ("Stable", 3, "roundrobin")
    assert live["assigned"] == list(range(6)), "each partition assigned once"
    assert r["listed"] and r["protocolType"] == "consumer"
    assert r["committed"] == r["ends"] == [[p, 2000] for p in range(6)]
    assert r["leaverClaims"], "the member that left had partitions"
    assert r["empty"] == {"state": "Empty", "members": 0}
    assert (r["deleted"], r["deletedUnknown"]) == (0, GROUP_ID_NOT_FOUND)
    assert not r["listedAfterDelete"]


def test_admin_calls_and_their_errors(floe, sarama):
    r = sarama("admin", bootstrap=floe.bootstrap)
    assert r["create"] is None
    assert r["createAgain"] == TOPIC_ALREADY_EXISTS
    assert r["createBadName"] == INVALID_TOPIC
    assert r["createBadConfig"] == INVALID_CONFIG
    assert r["grow"] is None
    assert r["shrink"] == INVALID_PARTITIONS
    assert r["describe:sarama-admin"] == {"err": 0, "partitions": 4}
    assert r["describe:sarama-nowhere"]["err"] == UNKNOWN_TOPIC_OR_PARTITION
    assert r["alter"] is None
    # This sarama turns AlterConfigs' errors into their messages.
    assert "no.such.config" in r["alterUnknown"]
    assert r["tooLarge"] == MESSAGE_TOO_LARGE
    assert r["afterTooLarge"] == 0, "the producer carries on; nothing of the refused record stored"
    # Records stamped one second apart: the first at or after 4 s is 4.
    assert r["offsetAtTime"] == 4
    # One batch of ten, its log start moved to 4 by DeleteRecords: by time,
    # the first record from the log start on.
    assert r["byTimeFromMidBatch"] == [4, 6]
    assert r["deleteRecords"] is None
    assert r["watermarks"] == [4, 10]
    assert r["deleteRecordsPastEnd"] is None and r["watermarksAfterPastEnd"] == [4, 10]
    assert r["delete"] is None
    assert r["deleteUnknown"] == UNKNOWN_TOPIC_OR_PARTITION
    assert r["listedAfterDelete"] is False
    # This sarama's DescribeConfig (and its admin's ListTopics, which calls
    # it) sends DescribeConfigs v0, which Kafka 4.0 removed (KIP-896): the
    # connection is closed, as Kafka 4 closes it.
    assert r["describeConfigV0"] == "EOF"


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_logins(tenants, sarama, mechanism):  # noqa: F811 (the fixture)
    floe, keys = tenants
    key, secret = keys["acme"]
    r = sarama("sasl", bootstrap=floe.bootstrap, topic="go-sasl", mechanism=mechanism,
               username=key, password=secret)
    assert r == {"offset": 0, "value": f"hello {mechanism}".encode().hex()}
    wrong = sarama("sasl", bootstrap=floe.bootstrap, topic="go-sasl", mechanism=mechanism,
                   username=key, password="wrong")
    assert "loginError" in wrong, wrong


def test_sasl_over_tls(tls_floe, sarama):  # noqa: F811 (the fixture)
    floe, cert, (key, secret) = tls_floe
    r = sarama("sasl", bootstrap=floe.bootstrap, topic="go-tls", mechanism="SCRAM-SHA-512",
               username=key, password=secret, ca=cert)
    assert r == {"offset": 0, "value": "hello SCRAM-SHA-512".encode().hex()}
    plain = sarama("sasl", bootstrap=floe.bootstrap, topic="go-tls", mechanism="SCRAM-SHA-512",
                   username=key, password=secret)
    assert "loginError" in plain, "the TLS listener refuses a client without TLS"
