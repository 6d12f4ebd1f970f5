"""A stopgap throughput check until issue 3's `floe bench`: produce N records
of SIZE bytes over P partitions with librdkafka (confluent-kafka), acks=all,
then consume them all back, and print records/s and MB/s for each phase.

    python3 bench/quick.py --bootstrap 127.0.0.1:9092 [--records 500000] [--size 1024] [--partitions 8]

The client runs on the same 2-core machine as the server, so these are
lower bounds shaped by the client too; compare figures only within one run.
"""
import argparse
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--records", type=int, default=500_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--linger-ms", type=int, default=5)
    a = ap.parse_args()
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    admin.create_topics([NewTopic(topic, a.partitions, 1)])[topic].result(timeout=30)
    value = b"x" * a.size
    p = Producer({"bootstrap.servers": a.bootstrap, "acks": "all", "linger.ms": a.linger_ms,
                  "batch.size": 1_000_000, "queue.buffering.max.messages": 1_000_000,
                  "queue.buffering.max.kbytes": 1_048_576})
    failed = []

    def report(err, _msg):
        if err is not None:
            failed.append(err)

    start = time.perf_counter()
    for i in range(a.records):
        while True:
            try:
                p.produce(topic, value, partition=i % a.partitions, on_delivery=report)
                break
            except BufferError:
                p.poll(0.01)
    p.flush()
    took = time.perf_counter() - start
    assert not failed, failed[:3]
    mb = a.records * a.size / 1e6
    print(f"produce: {a.records} x {a.size} B over {a.partitions} partitions in {took:.2f}s: "
          f"{a.records / took:,.0f} records/s, {mb / took:,.1f} MB/s")

    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": "bench", "enable.auto.commit": False,
                  "fetch.max.bytes": 52_428_800, "max.partition.fetch.bytes": 8_388_608})
    c.assign([TopicPartition(topic, p, 0) for p in range(a.partitions)])
    n = 0
    start = time.perf_counter()
    while n < a.records:
        for m in c.consume(num_messages=10_000, timeout=1.0):
            if m.error() is None:
                n += 1
    took = time.perf_counter() - start
    print(f"consume: {n} records in {took:.2f}s: {n / took:,.0f} records/s, {mb / took:,.1f} MB/s")
    c.close()


if __name__ == "__main__":
    main()
