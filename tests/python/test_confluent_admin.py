"""Admin APIs through confluent-kafka's AdminClient (librdkafka 2.16):
CreateTopics with configs, DescribeConfigs, AlterConfigs,
IncrementalAlterConfigs, CreatePartitions, DescribeCluster, DeleteTopics,
and offsets by timestamp."""
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   NewPartitions, NewTopic, ResourceType)


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

    bad = ConfigResource(ResourceType.TOPIC, "adm", set_config={"cleanup.policy": "compact"})
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
