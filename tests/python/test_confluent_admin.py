"""Admin APIs through confluent-kafka's AdminClient (librdkafka 2.16):
CreateTopics with configs, DescribeConfigs, AlterConfigs,
IncrementalAlterConfigs, CreatePartitions, DescribeCluster, DeleteTopics,
and offsets by timestamp; the configs Floe keeps without effect, and
message.timestamp.type=LogAppendTime."""
import tempfile
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   NewPartitions, NewTopic, ResourceType)

from conftest import Floe


def admin(floe):
    return AdminClient({"bootstrap.servers": floe.bootstrap})


def wait(futures):
    return {k: f.result(timeout=30) for k, f in futures.items()}


def configs(a, topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    return wait(a.describe_configs([res]))[res]


def test_topic_admin_lifecycle(floe):
    a = admin(floe)
    wait(a.create_topics([NewTopic("adm", num_partitions=2, replication_factor=1,
                                   config={"retention.ms": "3600000"})]))
    c = configs(a, "adm")
    assert c["retention.ms"].value == "3600000" and not c["retention.ms"].is_default
    assert c["max.message.bytes"].value == "1048588" and c["max.message.bytes"].is_default
    assert c["cleanup.policy"].value == "delete"

    # AlterConfigs replaces the whole set: retention.ms goes back to its default.
    res = ConfigResource(ResourceType.TOPIC, "adm", set_config={"max.message.bytes": "2000"})
    wait(a.alter_configs([res]))
    c = configs(a, "adm")
    assert c["max.message.bytes"].value == "2000" and c["retention.ms"].is_default

    # IncrementalAlterConfigs: SET one, DELETE another.
    res = ConfigResource(ResourceType.TOPIC, "adm", incremental_configs=[
        ConfigEntry("retention.bytes", "1000000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("max.message.bytes", None, incremental_operation=AlterConfigOpType.DELETE)])
    wait(a.incremental_alter_configs([res]))
    c = configs(a, "adm")
    assert c["retention.bytes"].value == "1000000" and c["max.message.bytes"].is_default

    bad = ConfigResource(ResourceType.TOPIC, "adm", set_config={"cleanup.policy": "compacted"})
    with pytest.raises(KafkaException, match="INVALID_CONFIG|not supported"):
        wait(a.alter_configs([bad]))

    wait(a.create_partitions([NewPartitions("adm", 5)]))
    assert len(a.list_topics(timeout=10).topics["adm"].partitions) == 5
    with pytest.raises(KafkaException, match="INVALID_PARTITIONS|cannot go"):
        wait(a.create_partitions([NewPartitions("adm", 3)]))

    cluster = a.describe_cluster().result(timeout=10)
    assert [n.port for n in cluster.nodes] == [floe.kafka_port]

    wait(a.delete_topics(["adm"]))
    assert "adm" not in a.list_topics(timeout=10).topics
    # Survives a restart the same way.
    floe.restart()
    assert "adm" not in admin(floe).list_topics(timeout=10).topics


def test_offsets_for_times_and_default_producer(floe):
    # 1970 timestamps: the topic keeps them past the default 7-day retention.
    a = admin(floe)  # kept alive until the result is in
    wait(a.create_topics([NewTopic("times", num_partitions=1, replication_factor=1,
                                   config={"retention.ms": "-1"})]))
    # librdkafka's defaults (idempotence off, acks=all) need no special settings.
    p = Producer({"bootstrap.servers": floe.bootstrap, "linger.ms": 0})
    for i in range(10):
        p.produce("times", value=b"v%d" % i, timestamp=1_000_000 + i * 1000)
        p.flush()
    c = Consumer({"bootstrap.servers": floe.bootstrap, "group.id": "unused"})
    got = c.offsets_for_times([TopicPartition("times", 0, 1_004_500)], timeout=10)
    assert got[0].offset == 5
    low, high = c.get_watermark_offsets(TopicPartition("times", 0), timeout=10)
    assert (low, high) == (0, 10)
    c.close()


def test_configs_frameworks_set_are_kept_and_bad_ones_refused(floe):
    # What Kafka Streams, Connect and Terraform set when they create topics:
    # Floe keeps them (they have no effect on its log) and describes them.
    a = admin(floe)
    wait(a.create_topics([NewTopic("framework", num_partitions=1, replication_factor=1, config={
        "min.insync.replicas": "2", "segment.bytes": "1048576",
        "unclean.leader.election.enable": "false", "message.timestamp.type": "CreateTime"})]))
    c = configs(a, "framework")
    assert c["min.insync.replicas"].value == "2" and not c["min.insync.replicas"].is_default
    assert c["segment.bytes"].value == "1048576" and not c["segment.bytes"].is_default
    assert c["segment.ms"].value == "604800000" and c["segment.ms"].is_default
    assert c["compression.type"].value == "producer" and c["compression.type"].is_default
    for name, value in [("min.insync.replicas", "0"), ("compression.type", "lz4"),
                        ("cleanup.policy", "compacted"), ("segment.bytes", "10"),
                        ("message.timestamp.type", "Now"),
                        ("message.timestamp.difference.max.ms", "1000")]:
        with pytest.raises(KafkaException, match="INVALID_CONFIG"):
            wait(a.create_topics([NewTopic("refused", num_partitions=1, replication_factor=1,
                                           config={name: value})]))
    assert "refused" not in a.list_topics(timeout=10).topics
    # The kept ones survive a restart.
    floe.restart()
    c = configs(admin(floe), "framework")
    assert c["min.insync.replicas"].value == "2"


def test_log_append_time_stamps_records_with_the_brokers_clock():
    """Records sent with 2020 timestamps: on a LogAppendTime topic they get
    the time they were appended (also in the delivery report), and the
    default 7-day retention keeps them; on a CreateTime topic they keep their
    own and retention drops them."""
    with tempfile.TemporaryDirectory(prefix="floe-py-") as d:
        floe = Floe(d, ["--retention-every-ms", "200"])
        try:
            a = admin(floe)
            wait(a.create_topics([
                NewTopic("stamped", num_partitions=1, replication_factor=1,
                         config={"message.timestamp.type": "LogAppendTime"}),
                NewTopic("own", num_partitions=1, replication_factor=1)]))
            old = 1_600_000_000_000
            before = int(time.time() * 1000)
            reports = []
            p = Producer({"bootstrap.servers": floe.bootstrap, "linger.ms": 5})
            for topic in ["stamped", "own"]:
                for i in range(5):
                    p.produce(topic, value=b"v%d" % i, timestamp=old + i,
                              on_delivery=lambda err, m: reports.append((err, m.topic(), m.timestamp())))
            p.flush(30)
            after = int(time.time() * 1000)
            assert all(err is None for err, _, _ in reports), reports
            stamped = [ts for _, t, ts in reports if t == "stamped"]
            assert len(stamped) == 5
            for kind, ts in stamped:
                assert kind == 2 and before <= ts <= after, "the delivery report has the append time"
            # Retention (every 200 ms) drops the CreateTime topic's 2020
            # records; the stamped ones stay.
            deadline = time.time() + 30
            while watermarks(floe, "own") != (5, 5) and time.time() < deadline:
                time.sleep(0.1)
            assert watermarks(floe, "own") == (5, 5), "past retention on the CreateTime topic"
            got = read(floe, "stamped", 5)
            assert [v for v, _ in got] == [b"v%d" % i for i in range(5)]
            assert all(kind == 2 and before <= ts <= after for _, (kind, ts) in got)
            assert watermarks(floe, "stamped") == (0, 5)

            # Back to CreateTime: new records keep their own timestamps.
            res = ConfigResource(ResourceType.TOPIC, "stamped", incremental_configs=[ConfigEntry(
                "message.timestamp.type", None, incremental_operation=AlterConfigOpType.DELETE)])
            wait(a.incremental_alter_configs([res]))
            now = int(time.time() * 1000)
            p.produce("stamped", value=b"late", timestamp=now - 1000)
            p.flush(30)
            assert read(floe, "stamped", 6)[-1] == (b"late", (1, now - 1000))
        finally:
            floe.close()


def read(floe, topic, n):
    c = Consumer({"bootstrap.servers": floe.bootstrap, "group.id": "reader-" + topic,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    got, deadline = [], time.time() + 30
    while len(got) < n and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append((m.value(), m.timestamp()))
    c.close()
    return got


def watermarks(floe, topic):
    c = Consumer({"bootstrap.servers": floe.bootstrap, "group.id": "watermarks"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        c.close()
