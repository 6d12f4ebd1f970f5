"""kcat (Debian's, linking librdkafka 2.0.2: the old-client case) against the
real binary: metadata, 100k keyed records over 8 partitions with every codec,
byte-identical back with contiguous offsets, again after a restart."""
import subprocess
from collections import defaultdict

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
N = 100_000
PARTITIONS = 8


def kcat(*args, input=None):
    r = subprocess.run(["kcat", *args], input=input, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def consume(bootstrap, topic):
    out = kcat("-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q",
               "-f", "%p %o %k %s\n")
    rows = [line.split(b" ", 3) for line in out.splitlines()]
    return [(int(p), int(o), k, v) for p, o, k, v in rows]


@pytest.mark.parametrize("codec", CODECS)
def test_kcat_round_trip(floe, codec):
    topic = f"kcat-{codec}"
    # kcat partitions by key hash, so the records spread over all 8.
    admin = AdminClient({"bootstrap.servers": floe.bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(timeout=30)
    lines = b"".join(b"key-%d:value-%d-%s\n" % (i, i, codec.encode()) for i in range(N))
    kcat("-b", floe.bootstrap, "-P", "-t", topic, "-z", codec, "-K", ":", "-X", "linger.ms=10", input=lines)
    for _ in range(2):
        got = consume(floe.bootstrap, topic)
        assert len(got) == N
        by_partition = defaultdict(list)
        for p, o, k, v in got:
            by_partition[p].append(o)
            i = int(k[4:])
            assert v == b"value-%d-%s" % (i, codec.encode())
        assert len(by_partition) == PARTITIONS
        for offsets in by_partition.values():
            assert offsets == list(range(len(offsets))), "contiguous offsets per partition"
        assert sorted(int(k[4:]) for _, _, k, _ in got) == list(range(N)), "each record exactly once"
        floe.restart()


def test_kcat_metadata(floe):
    kcat("-b", floe.bootstrap, "-P", "-t", "md", input=b"x\n")
    out = kcat("-b", floe.bootstrap, "-L", "-t", "md").decode()
    assert 'topic "md" with 1 partitions' in out
    assert "broker 0 at 127.0.0.1" in out
