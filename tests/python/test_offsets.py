"""kafka-python's committed offsets against the real binary: a consumer that
assigns its own partitions commits, another instance of the group reads the
commits back, they survive a restart, and the group resumes after them.
(Group membership, JoinGroup and the rest, is not served yet: issue 5.)"""
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata

PARTITIONS = 3
PER_PARTITION = 50


def consumer(bootstrap, group):
    return KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                         auto_offset_reset="earliest", fetch_max_wait_ms=100)


def test_commits_survive_restart_and_consumers_resume_after_them(floe):
    admin = KafkaAdminClient(bootstrap_servers=floe.bootstrap)
    admin.create_topics([NewTopic("py-offsets", PARTITIONS, 1)])
    admin.close()
    p = KafkaProducer(bootstrap_servers=floe.bootstrap, enable_idempotence=False)
    for part in range(PARTITIONS):
        for i in range(PER_PARTITION):
            p.send("py-offsets", value=b"%d-%d" % (part, i), partition=part)
    p.flush()
    p.close()

    tps = [TopicPartition("py-offsets", part) for part in range(PARTITIONS)]
    commits = {tps[0]: 10, tps[1]: 0, tps[2]: PER_PARTITION}
    c = consumer(floe.bootstrap, "py-group")
    c.assign(tps)
    c.commit({tp: OffsetAndMetadata(o, "meta-%d" % o, -1) for tp, o in commits.items()})
    c.close()

    def check():
        c = consumer(floe.bootstrap, "py-group")
        for tp, o in commits.items():
            assert c.committed(tp) == o, tp
        assert consumer(floe.bootstrap, "py-other").committed(tps[0]) is None
        c.close()

    check()
    floe.restart()
    check()

    c = consumer(floe.bootstrap, "py-group")
    c.assign(tps)
    got = []
    deadline = time.time() + 30
    want = sum(PER_PARTITION - o for o in commits.values())
    while len(got) < want and time.time() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            got.extend((r.partition, r.offset) for r in recs)
    c.close()
    assert sorted(got) == sorted((tp.partition, o) for tp, start in commits.items()
                                 for o in range(start, PER_PARTITION))
