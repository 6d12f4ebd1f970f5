"""Compacted topics (cleanup.policy=compact) with kafka-python and
confluent-kafka against the real binary: after the cleaner runs, each key's
last record is what is left (tombstones too, until delete.retention.ms
after the clean that first read them, written to or not),
at the offsets it was acknowledged at, across codecs and a restart; old
records of a compact-only topic outlive retention.ms; a record without a
key is refused with INVALID_RECORD."""
import tempfile
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaProducer
from kafka.errors import KafkaError

from conftest import Floe
from test_confluent_admin import watermarks
from test_idempotence import metric

KEYS = 60


@pytest.fixture
def cleaning_floe():
    with tempfile.TemporaryDirectory(prefix="floe-py-") as d:
        # Small WAL objects wait --compact-after-ms for compaction, and the
        # cleaner rewrites only what compaction has been through.
        f = Floe(d, ["--clean-every-ms", "200", "--retention-every-ms", "200",
                     "--compact-after-ms", "100"])
        try:
            yield f
        finally:
            f.close()


def read(floe, topic, quiet_s=1.0, timeout_s=30, isolation="read_committed"):
    """Every record of partition 0: (offset, key, value, timestamp)."""
    c = Consumer({"bootstrap.servers": floe.bootstrap, "group.id": "reader",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 50,
                  "isolation.level": isolation})
    c.assign([TopicPartition(topic, 0, 0)])
    got, deadline, last = [], time.time() + timeout_s, time.time()
    while time.time() < deadline and time.time() - last < quiet_s:
        m = c.poll(0.1)
        if m is not None and m.error() is None:
            got.append((m.offset(), m.key(), m.value(), m.timestamp()[1]))
            last = time.time()
    c.close()
    return got


def test_a_compacted_topic_keeps_each_keys_last_record(cleaning_floe):
    floe = cleaning_floe
    a = AdminClient({"bootstrap.servers": floe.bootstrap})
    for f in a.create_topics([
            NewTopic("latest", 1, 1, config={
                "cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01",
                "delete.retention.ms": "8000"}),
            NewTopic("both", 1, 1, config={"cleanup.policy": "compact,delete"})]).values():
        f.result(timeout=30)

    acked = {}  # key -> (offset, value) of its last record
    old = 1_600_000_000_000

    def on_delivery(err, m):
        assert err is None, err
        acked[m.key()] = (m.offset(), m.value())

    # Round 0: every key, with 2020 timestamps (retention.ms is 7 days).
    # Rounds 1-2: keys 0-49 again, in other codecs; round 2 deletes 0-9,
    # with 2020 timestamps too: a tombstone's time runs from the clean.
    for rnd, codec in enumerate(["none", "lz4", "zstd"]):
        p = Producer({"bootstrap.servers": floe.bootstrap, "compression.type": codec,
                      "linger.ms": 20, "enable.idempotence": True})
        for i in range(KEYS if rnd == 0 else 50):
            value = None if rnd == 2 and i < 10 else b"v%d-%d" % (rnd, i)
            p.produce("latest", key=b"k%d" % i, value=value, partition=0,
                      timestamp=old + i if rnd == 0 or value is None else 0,
                      on_delivery=on_delivery)
        p.flush(30)
    tombstoned = time.time()
    produced = KEYS + 50 + 50
    assert watermarks(floe, "latest") == (0, produced)

    # The cleaner (every 200 ms) leaves one record per key.
    want = sorted((off, k, v) for k, (off, v) in acked.items())
    deadline = time.time() + 60
    while time.time() < deadline:
        got = read(floe, "latest", quiet_s=0.3)
        if [(o, k, v) for o, k, v, _ in got] == want:
            break
        time.sleep(0.2)
    assert [(o, k, v) for o, k, v, _ in got] == want, "each key's last record, where it was acked"
    assert sum(v is None for _, _, v, _ in got) == 10, "tombstones stay a while"
    # Keys 50-59 exist only in round 0, with 2020 timestamps: a compact-only
    # topic keeps them. Offsets do not move; the high watermark stays.
    assert [k for _, k, v, ts in got if ts < old + KEYS and v is not None] == \
        [b"k%d" % i for i in range(50, KEYS)]
    assert watermarks(floe, "latest") == (0, produced)
    assert metric(floe, "floe_rewrites_total") > 0

    # A record without a key: refused, and the producer carries on.
    kp = KafkaProducer(bootstrap_servers=floe.bootstrap, acks="all", retries=0)
    with pytest.raises(KafkaError) as refused:
        kp.send("latest", value=b"no key", partition=0).get(10)
    assert type(refused.value).__name__ == "InvalidRecordError", refused.value
    assert kp.send("latest", key=b"k1", value=b"again", partition=0).get(10).offset == produced
    kp.close()

    # delete.retention.ms (8 s) after the clean that first read them, the
    # tombstones go too, with nothing more written (Kafka's KIP-534): the
    # cleaner comes back for them.
    time.sleep(max(0.0, tombstoned + 8.5 - time.time()))
    deadline = time.time() + 60
    got = read(floe, "latest", quiet_s=0.3)
    # (A read cut short by a slow start has no tombstone either.)
    while (any(v is None for _, _, v, _ in got) or len(got) != KEYS - 9) \
            and time.time() < deadline:
        time.sleep(0.5)
        got = read(floe, "latest", quiet_s=0.3)
    keys = {k: v for _, k, v, _ in got}
    assert len(got) == len(keys) == KEYS - 9, "k0-k9 deleted, k1 written again"
    assert keys[b"k1"] == b"again"
    assert watermarks(floe, "latest") == (0, produced + 1), "nothing else was written"

    # The same after a restart (replayed from the log).
    floe.restart()
    deadline = time.time() + 30
    again = read(floe, "latest")
    while again != got and time.time() < deadline:
        again = read(floe, "latest")
    assert again == got

    # DeleteRecords on a compact-only topic: POLICY_VIOLATION, as Kafka.
    a = AdminClient({"bootstrap.servers": floe.bootstrap})
    with pytest.raises(KafkaException, match="POLICY_VIOLATION"):
        a.delete_records([TopicPartition("latest", 0, 5)])[TopicPartition("latest", 0, 5)].result(30)

    # compact,delete: retention drops the old record as well.
    p = Producer({"bootstrap.servers": floe.bootstrap})
    p.produce("both", key=b"k", value=b"old", partition=0, timestamp=old)
    p.flush(30)
    deadline = time.time() + 30
    while watermarks(floe, "both") != (1, 1) and time.time() < deadline:
        time.sleep(0.1)
    assert watermarks(floe, "both") == (1, 1)


def test_compaction_configs_are_checked(cleaning_floe):
    a = AdminClient({"bootstrap.servers": cleaning_floe.bootstrap})
    for name, value in [("cleanup.policy", "compacted"), ("min.cleanable.dirty.ratio", "2"),
                        ("delete.retention.ms", "-1"), ("max.compaction.lag.ms", "0")]:
        with pytest.raises(KafkaException, match="INVALID_CONFIG"):
            a.create_topics([NewTopic("bad", 1, 1, config={name: value})])["bad"].result(30)


def test_aborted_records_go_and_committed_ones_compact(cleaning_floe):
    """A transactional producer on a compacted topic: the cleaner removes
    the aborted transaction's records (read_uncommitted no longer sees
    them) and compacts the committed ones like any others."""
    floe = cleaning_floe
    a = AdminClient({"bootstrap.servers": floe.bootstrap})
    a.create_topics([NewTopic("txn-latest", 1, 1, config={
        "cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01"})])["txn-latest"].result(30)
    p = KafkaProducer(bootstrap_servers=floe.bootstrap, transactional_id="compacting")
    p.init_transactions()
    for value, commit in [(b"a1", True), (b"aborted", False), (b"a2", True)]:
        p.begin_transaction()
        for i in range(5):
            p.send("txn-latest", key=b"k%d" % i, value=value + b"-%d" % i, partition=0)
        p.flush()
        if commit:
            p.commit_transaction()
        else:
            p.abort_transaction()
    p.close()
    # 15 records and 3 markers; left: the five of the last transaction,
    # and the markers.
    want = [(b"k%d" % i, b"a2-%d" % i) for i in range(5)]
    deadline = time.time() + 60
    while time.time() < deadline:
        # Uncommitted: the aborted records themselves are gone.
        got = [(k, v) for _, k, v, _ in
               read(floe, "txn-latest", quiet_s=0.3, isolation="read_uncommitted")]
        if got == want:
            break
        time.sleep(0.2)
    assert got == want
    assert watermarks(floe, "txn-latest") == (0, 18)
