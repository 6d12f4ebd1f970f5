//! Committed offsets (FindCoordinator, OffsetCommit, OffsetFetch) with
//! librdkafka against the real binary: commits survive a restart, a consumer
//! resumes exactly after them, and every bad commit gets Kafka's error while
//! the good ones in the same request land.

use std::time::{Duration, Instant};

use floe_e2e::raw::{topic_name as name, Conn};
use floe_e2e::{temp_dir, Floe};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    FindCoordinatorRequest, GroupId, OffsetCommitRequest, OffsetFetchRequest,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;
const PER_PARTITION: i64 = 100;
const TIMEOUT: Duration = Duration::from_secs(20);

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin")
}

async fn create_topic(bootstrap: &str, topic: &str) {
    let t = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    let r = admin(bootstrap)
        .create_topics([&t], &AdminOptions::new())
        .await
        .expect("create");
    assert!(r[0].is_ok(), "create {topic}: {:?}", r[0]);
}

async fn fill(bootstrap: &str, topic: &str) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "false")
        .create()
        .expect("producer");
    for partition in 0..PARTITIONS {
        for i in 0..PER_PARTITION {
            let v = format!("{partition}-{i}");
            let rec = FutureRecord::<(), _>::to(topic)
                .partition(partition)
                .payload(&v);
            p.send(rec, TIMEOUT).await.expect("produce");
        }
    }
}

fn consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer")
}

fn all_partitions(topic: &str, offset: Offset) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, offset)
            .expect("partition");
    }
    tpl
}

/// Reads until `n` records came or `wait` passed; returns (partition, offset)s.
fn read(c: &BaseConsumer, n: usize, wait: Duration) -> Vec<(i32, i64)> {
    use rdkafka::Message;
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("message");
            got.push((m.partition(), m.offset()));
        }
    }
    got
}

fn committed(c: &BaseConsumer, topic: &str) -> Vec<(i32, Offset, String)> {
    let tpl = c
        .committed_offsets(all_partitions(topic, Offset::Invalid), TIMEOUT)
        .expect("committed");
    tpl.elements()
        .iter()
        .map(|e| (e.partition(), e.offset(), e.metadata().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_survive_restart_and_the_group_resumes_after_them() {
    let mut f = Floe::start(temp_dir("offsets"), &[]);
    let bootstrap = f.bootstrap();
    create_topic(&bootstrap, "orders").await;
    fill(&bootstrap, "orders").await;

    // A consumer reads part of each partition and commits where it stands.
    let c = consumer(&bootstrap, "billing");
    c.assign(&all_partitions("orders", Offset::Beginning))
        .expect("assign");
    let first = read(&c, 150, TIMEOUT);
    assert_eq!(first.len(), 150);
    c.commit_consumer_state(CommitMode::Sync).expect("commit");
    let positions: Vec<(i32, Offset)> = c
        .position()
        .expect("position")
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect();
    // One partition also gets metadata, committed explicitly.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("orders", 3, Offset::Offset(7))
        .expect("tpl");
    tpl.find_partition("orders", 3)
        .expect("p3")
        .set_metadata("checkpoint-7");
    c.commit(&tpl, CommitMode::Sync)
        .expect("commit with metadata");
    drop(c);

    let want = |p: i32| match p {
        3 => (Offset::Offset(7), "checkpoint-7".to_string()),
        _ => (
            positions
                .iter()
                .find(|(q, _)| *q == p)
                .map(|(_, o)| *o)
                .unwrap_or(Offset::Invalid),
            String::new(),
        ),
    };
    let check = |bootstrap: &str| {
        let c = consumer(bootstrap, "billing");
        for (p, offset, metadata) in committed(&c, "orders") {
            assert_eq!((offset, metadata), want(p), "partition {p}");
        }
        // Another group has nothing committed.
        let other = consumer(bootstrap, "audit");
        assert!(committed(&other, "orders")
            .iter()
            .all(|(_, o, _)| *o == Offset::Invalid));
    };
    check(&bootstrap);

    f.restart();
    let bootstrap = f.bootstrap();
    check(&bootstrap);

    // Resuming from the committed offsets reads exactly what is after them.
    let c = consumer(&bootstrap, "billing");
    c.assign(&all_partitions("orders", Offset::Stored))
        .expect("assign stored");
    let committed_total: i64 = (0..PARTITIONS)
        .map(|p| match want(p).0 {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    let rest = read(
        &c,
        (PARTITIONS as i64 * PER_PARTITION - committed_total) as usize,
        TIMEOUT,
    );
    for p in 0..PARTITIONS {
        // A partition the first consumer never read has no commit: it
        // starts over (auto.offset.reset=earliest).
        let from = match want(p).0 {
            Offset::Offset(o) => o,
            _ => 0,
        };
        let mut offsets: Vec<i64> = rest
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .collect();
        offsets.sort_unstable();
        assert_eq!(
            offsets,
            (from..PER_PARTITION).collect::<Vec<_>>(),
            "partition {p} resumes at {from}"
        );
    }
    assert!(
        read(&c, 1, Duration::from_secs(2)).is_empty(),
        "nothing past the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commits_get_kafkas_errors_and_good_ones_land() {
    let f = Floe::start(temp_dir("offsets-bad"), &[]);
    let bootstrap = f.bootstrap();
    create_topic(&bootstrap, "t").await;

    // librdkafka: a commit to a topic that does not exist fails, per partition.
    let c = consumer(&bootstrap, "g");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("no-such-topic", 0, Offset::Offset(1))
        .expect("tpl");
    match c.commit(&tpl, CommitMode::Sync) {
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
        other => panic!("commit to a missing topic: {other:?}"),
    }

    // Raw requests for what librdkafka would not send.
    let mut conn = Conn::connect(&bootstrap);
    let coord = conn.call(
        3,
        &FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g")),
    );
    assert_eq!(
        (coord.error_code, coord.port.to_string()),
        (0, bootstrap.rsplit(':').next().unwrap_or("").to_string())
    );

    let part = |p: i32, offset: i64, metadata: &str| {
        OffsetCommitRequestPartition::default()
            .with_partition_index(p)
            .with_committed_offset(offset)
            .with_committed_metadata(Some(StrBytes::from_string(metadata.to_string())))
    };
    let commit = |group: &str, generation: i32, parts: Vec<OffsetCommitRequestPartition>| {
        OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_generation_id_or_member_epoch(generation)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(name("t"))
                .with_partitions(parts)])
    };
    let codes = |r: kafka_protocol::messages::OffsetCommitResponse| -> Vec<i16> {
        r.topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect()
    };
    // Too much metadata and a partition out of range fail; the others land.
    let big = "m".repeat(4097);
    let r = conn.call(
        8,
        &commit(
            "g",
            -1,
            vec![
                part(0, 5, "ok"),
                part(1, 6, &big),
                part(9, 1, ""),
                part(2, 8, ""),
            ],
        ),
    );
    assert_eq!(
        codes(r),
        vec![
            0,
            ResponseError::OffsetMetadataTooLarge.code(),
            ResponseError::UnknownTopicOrPartition.code(),
            0
        ]
    );
    // A generation of a group nobody joined: ILLEGAL_GENERATION for a new
    // group, UNKNOWN_MEMBER_ID for one with commits; nothing is written.
    let r = conn.call(8, &commit("fresh", 3, vec![part(0, 1, "")]));
    assert_eq!(codes(r), vec![ResponseError::IllegalGeneration.code()]);
    let r = conn.call(8, &commit("g", 3, vec![part(0, 99, "")]));
    assert_eq!(codes(r), vec![ResponseError::UnknownMemberId.code()]);
    let r = conn.call(8, &commit("", -1, vec![part(0, 1, "")]));
    assert_eq!(codes(r), vec![ResponseError::InvalidGroupId.code()]);

    // What landed, read back over the wire: all of the group's topics (null).
    let fetched = conn.call(
        7,
        &OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_topics(None),
    );
    assert_eq!(fetched.error_code, 0);
    let got: Vec<(i32, i64, String)> = fetched
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| {
            (
                p.partition_index,
                p.committed_offset,
                p.metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(got, vec![(0, 5, "ok".to_string()), (2, 8, String::new())]);

    // A deleted and re-created topic starts with no committed offsets.
    admin(&bootstrap)
        .delete_topics(&["t"], &AdminOptions::new())
        .await
        .expect("delete");
    create_topic(&bootstrap, "t").await;
    assert!(committed(&c, "t")
        .iter()
        .all(|(_, o, _)| *o == Offset::Invalid));
    // The process carries on serving other requests.
    let r = conn.call(8, &commit("g", -1, vec![part(0, 2, "")]));
    assert_eq!(codes(r), vec![0]);
}
