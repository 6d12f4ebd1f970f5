"""kcat (Debian's, linking librdkafka 2.0.2: the old-client case) against the
real binary: metadata, every codec with keys, contiguous offsets, a restart."""
import subprocess

import pytest

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
N = 100_000


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
    lines = b"".join(b"key-%d:value-%d-%s\n" % (i, i, codec.encode()) for i in range(N))
    kcat("-b", floe.bootstrap, "-P", "-t", topic, "-z", codec, "-K", ":", "-X", "linger.ms=10", input=lines)
    for _ in range(2):
        got = consume(floe.bootstrap, topic)
        assert [o for _, o, _, _ in got] == list(range(N)), "one partition, contiguous offsets"
        assert all(k == b"key-%d" % o and v == b"value-%d-%s" % (o, codec.encode()) for _, o, k, v in got)
        floe.restart()


def test_kcat_metadata(floe):
    kcat("-b", floe.bootstrap, "-P", "-t", "md", input=b"x\n")
    out = kcat("-b", floe.bootstrap, "-L", "-t", "md").decode()
    assert 'topic "md" with 1 partitions' in out
    assert "broker 0 at 127.0.0.1" in out
