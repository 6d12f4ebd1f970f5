"""kafka-python against the real binary: 100k records over 8 partitions with
every codec, byte-identical back (keys, values, headers, timestamps) with
contiguous offsets, again after a restart, and kill -9 right after acks.

kafka-python 3.x enables the idempotent producer by default (InitProducerId,
sequence numbers): these tests run with it on."""
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

PARTITIONS = 8
RECORDS = 100_000
CODECS = [None, "gzip", "snappy", "lz4", "zstd"]
BASE_TS = 1_700_000_000_000


def expected(codec_idx, i):
    key = b"key-%d" % i
    value = bytes((i * 31 + j * 7 + codec_idx) % 251 for j in range(16 + i % 48))
    return key, value, [("h", i.to_bytes(8, "big"))], BASE_TS + i


def producer(bootstrap, codec):
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type=codec,
                         linger_ms=20, batch_size=256 * 1024,
                         max_in_flight_requests_per_connection=5)


def consume_all(bootstrap, topic, count, partitions=PARTITIONS, timeout=300):
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      fetch_max_wait_ms=100, max_partition_fetch_bytes=4 << 20)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out = []
    deadline = time.time() + timeout
    while len(out) < count and time.time() < deadline:
        for recs in c.poll(timeout_ms=500, max_records=50_000).values():
            out.extend(recs)
    c.close()
    return out


def check(records, codec_idx, acked):
    assert len(records) == RECORDS
    next_offset = [0] * PARTITIONS
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert r.offset == next_offset[r.partition], "offsets are contiguous"
        next_offset[r.partition] += 1
        i = int(r.key[4:])
        key, value, headers, ts = expected(codec_idx, i)
        assert (r.key, r.value, list(r.headers), r.timestamp) == (key, value, headers, ts)
        assert acked[i] == (r.partition, r.offset), f"record {i} is where it was acked"


def test_every_codec_round_trips_and_survives_restart(floe):
    admin = KafkaAdminClient(bootstrap_servers=floe.bootstrap)
    # Records carry 2023 timestamps: keep them past the default 7-day retention.
    admin.create_topics([NewTopic(f"py-{c}", PARTITIONS, 1, topic_configs={"retention.ms": "-1"})
                         for c in CODECS])
    admin.close()
    acked = []
    for ci, codec in enumerate(CODECS):
        p = producer(floe.bootstrap, codec)
        futures = []
        for i in range(RECORDS):
            key, value, headers, ts = expected(ci, i)
            futures.append(p.send(f"py-{codec}", key=key, value=value, headers=headers,
                                  partition=i % PARTITIONS, timestamp_ms=ts))
        p.flush()
        acked.append([(m.partition, m.offset) for m in (f.get(timeout=60) for f in futures)])
        p.close()
        check(consume_all(floe.bootstrap, f"py-{codec}", RECORDS), ci, acked[ci])
    floe.restart()
    for ci, codec in enumerate(CODECS):
        check(consume_all(floe.bootstrap, f"py-{codec}", RECORDS), ci, acked[ci])


def test_kill9_right_after_acks(floe):
    admin = KafkaAdminClient(bootstrap_servers=floe.bootstrap)
    admin.create_topics([NewTopic("py-kill", 4, 1)])
    admin.close()
    p = producer(floe.bootstrap, "lz4")
    futures = [(p.send("py-kill", value=b"v-%d" % i, partition=i % 4), b"v-%d" % i) for i in range(20_000)]
    p.flush()
    acked = {(m.partition, m.offset): v for m, v in ((f.get(timeout=60), v) for f, v in futures)}
    floe.kill9()
    p.close(timeout=0)
    floe.start()
    stored = {(r.partition, r.offset): r.value for r in consume_all(floe.bootstrap, "py-kill", len(acked), 4)}
    for at, value in acked.items():
        assert stored.get(at) == value, f"acked record at {at} lost"
