"""kafka-python's transactional producer against the real binary: a
consume-transform-produce loop that commits two transactions in three and
aborts the third (rewinding its input). A read_committed consumer sees every
input record transformed exactly once; a read_uncommitted one also sees the
aborted copies; the group's offsets, committed inside the transactions, end
at the input's end."""
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata

PARTITIONS = 3
INPUT = 300


def read_all(bootstrap, topic, isolation, want):
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      isolation_level=isolation, fetch_max_wait_ms=100)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    got, deadline, quiet = [], time.time() + 60, time.time()
    while time.time() < deadline and (len(got) < want or time.time() - quiet < 1):
        for recs in c.poll(timeout_ms=200).values():
            got.extend(r.value.decode() for r in recs)
            quiet = time.time()
    c.close()
    return got


def test_consume_transform_produce_never_shows_aborted_records(floe):
    KafkaAdminClient(bootstrap_servers=floe.bootstrap).create_topics(
        [NewTopic("py-tx-in", PARTITIONS, 1), NewTopic("py-tx-out", PARTITIONS, 1)])
    p = KafkaProducer(bootstrap_servers=floe.bootstrap)
    for i in range(INPUT):
        p.send("py-tx-in", value=b"%05d" % i, partition=i % PARTITIONS)
    p.flush()
    p.close()

    tps = [TopicPartition("py-tx-in", q) for q in range(PARTITIONS)]
    consumer = KafkaConsumer(bootstrap_servers=floe.bootstrap, group_id="py-tx-app",
                             enable_auto_commit=False, isolation_level="read_committed",
                             fetch_max_wait_ms=100)
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    producer = KafkaProducer(bootstrap_servers=floe.bootstrap, transactional_id="py-tx-app-1")
    producer.init_transactions()
    committed = {tp: 0 for tp in tps}
    commits = aborts = aborted_records = 0
    deadline = time.time() + 120
    while sum(committed.values()) < INPUT:
        assert time.time() < deadline, "the loop did not finish"
        polled = consumer.poll(timeout_ms=500, max_records=40)
        records = [r for recs in polled.values() for r in recs]
        if not records:
            continue
        producer.begin_transaction()
        nxt = dict(committed)
        for r in records:
            producer.send("py-tx-out", value=b"out-" + r.value, partition=r.partition)
            nxt[TopicPartition(r.topic, r.partition)] = r.offset + 1
        producer.send_offsets_to_transaction(
            {tp: OffsetAndMetadata(o, "", -1) for tp, o in nxt.items()},
            consumer.group_metadata())
        if (commits + aborts) % 3 == 2:
            producer.flush()  # the aborted records reach the log
            producer.abort_transaction()
            aborts += 1
            aborted_records += len(records)
            for tp, o in committed.items():
                consumer.seek(tp, o)
        else:
            producer.commit_transaction()
            commits += 1
            committed = nxt
    producer.close()
    assert aborts > 0

    seen = read_all(floe.bootstrap, "py-tx-out", "read_committed", INPUT)
    assert sorted(seen) == ["out-%05d" % i for i in range(INPUT)], \
        f"read_committed saw {len(seen)} records, {len(set(seen))} distinct"
    everything = read_all(floe.bootstrap, "py-tx-out", "read_uncommitted", INPUT + aborted_records)
    print(f"{commits} commits, {aborts} aborts: read_committed {len(seen)}, "
          f"read_uncommitted {len(everything)} ({aborted_records} aborted)")
    assert len(everything) == INPUT + aborted_records

    for tp in tps:
        got = consumer.committed(tp)
        assert got == INPUT // PARTITIONS, f"{tp} committed {got}"
    consumer.close()
