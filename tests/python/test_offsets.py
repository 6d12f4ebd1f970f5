"""kafka-python's committed offsets against the real binary: a consumer that
assigns its own partitions commits, another instance of the group reads the
commits back, they survive a restart, and the group resumes after them.
(Group membership, JoinGroup and the rest, is not served yet: issue 5.)"""
import threading
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
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
    p = KafkaProducer(bootstrap_servers=floe.bootstrap)
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


def test_subscribed_consumers_share_partitions_and_resume(floe):
    admin = KafkaAdminClient(bootstrap_servers=floe.bootstrap)
    admin.create_topics([NewTopic("py-group", 6, 1)])
    admin.close()
    p = KafkaProducer(bootstrap_servers=floe.bootstrap)
    for i in range(600):
        p.send("py-group", value=b"%d" % i, partition=i % 6)
    p.flush()

    def member():
        c = KafkaConsumer(bootstrap_servers=floe.bootstrap, group_id="py-sub", enable_auto_commit=False,
                          auto_offset_reset="earliest", fetch_max_wait_ms=100, session_timeout_ms=10_000,
                          heartbeat_interval_ms=500)
        c.subscribe(["py-group"])
        return c

    # One thread per consumer, as separate processes would run them:
    # kafka-python 3.0.12 drops a JoinGroup answer that arrives after its
    # poll() timed out and joins again, so two members polled in turn from
    # one thread can keep a group rebalancing when a join phase waits.
    consumers = [member(), member()]
    seen, lock = {}, threading.Lock()
    deadline = time.time() + 60

    def run(c):
        while time.time() < deadline:
            with lock:
                if len(seen) >= 600 and all(x.assignment() for x in consumers):
                    return
            for recs in c.poll(timeout_ms=200).values():
                with lock:
                    for r in recs:
                        seen[(r.partition, r.offset)] = seen.get((r.partition, r.offset), 0) + 1
            try:
                c.commit()
            except KafkaError:
                pass  # a rebalance: the next poll rejoins

    threads = [threading.Thread(target=run, args=(c,)) for c in consumers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 600, "every record consumed"
    owned = [set(tp.partition for tp in c.assignment()) for c in consumers]
    assert owned[0] and owned[1] and not (owned[0] & owned[1]), f"the partitions are shared: {owned}"
    assert owned[0] | owned[1] == set(range(6))
    for c in consumers:
        c.close()

    # After a restart the group resumes at its commits: only new records.
    floe.restart()
    for i in range(60):
        p = p if i else KafkaProducer(bootstrap_servers=floe.bootstrap)
        p.send("py-group", value=b"new-%d" % i, partition=i % 6)
    p.flush()
    p.close()
    c = member()
    got = []
    deadline = time.time() + 60
    while len(got) < 60 and time.time() < deadline:
        for recs in c.poll(timeout_ms=200).values():
            got.extend(r.value for r in recs)
    c.close()
    assert sorted(got) == sorted(b"new-%d" % i for i in range(60))
