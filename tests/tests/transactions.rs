//! Transactions against the real binary.
//! - librdkafka: a consume-transform-produce loop commits two transactions
//!   in three and aborts the third (rewinding its input); a read_committed
//!   consumer then sees every input record transformed exactly once and
//!   nothing aborted, while a read_uncommitted one sees the aborted copies
//!   too; the group's committed offsets end at the input's end.
//! - Raw protocol: the coordinator's errors, the KIP-890 part 1 check
//!   (a transactional batch for a partition not in the transaction is
//!   refused), the last stable offset held by an open transaction across a
//!   kill -9, and the timeout that aborts a transaction and fences its
//!   producer.
//! - Compaction removing a commit marker once its transaction has no
//!   record left, and keeping the others, read by librdkafka after.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use floe_e2e::raw::{produce_request, topic_name as name, Conn};
use floe_e2e::records::{batch, control_batch, idempotent_batch, transactional_batch};
use floe_e2e::{temp_dir, Floe};
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, DescribeTransactionsRequest, EndTxnRequest, FindCoordinatorRequest,
    InitProducerIdRequest, ListTransactionsRequest, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use kafka_protocol::ResponseError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;
const INPUT: usize = 600;
const TIMEOUT: Duration = Duration::from_secs(30);

fn consumer(bootstrap: &str, group: &str, isolation: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer")
}

fn assign(c: &BaseConsumer, topic: &str, offsets: &HashMap<i32, i64>) {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let o = offsets
            .get(&p)
            .map_or(Offset::Beginning, |&o| Offset::Offset(o));
        tpl.add_partition_offset(topic, p, o).expect("partition");
    }
    c.assign(&tpl).expect("assign");
}

/// Values of `topic` as `isolation` shows them, read until `want` came and
/// nothing more arrives for a second.
fn read_all(bootstrap: &str, topic: &str, isolation: &str, want: usize) -> Vec<String> {
    let c = consumer(bootstrap, "verify", isolation);
    assign(&c, topic, &HashMap::new());
    let mut got = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    let mut quiet = Instant::now();
    while Instant::now() < deadline
        && (got.len() < want || quiet.elapsed() < Duration::from_secs(1))
    {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("message");
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string());
            quiet = Instant::now();
        }
    }
    got
}

#[test]
fn consume_transform_produce_never_shows_aborted_records() {
    let f = Floe::start(temp_dir("txn-loop"), &[]);
    let bootstrap = f.bootstrap();
    let mut raw = Conn::connect(&bootstrap);
    raw.create_topic("tx-in", PARTITIONS);
    raw.create_topic("tx-out", PARTITIONS);
    let plain: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    for i in 0..INPUT {
        let v = format!("{i:05}");
        let p = (i % PARTITIONS as usize) as i32;
        plain
            .send(BaseRecord::<(), str>::to("tx-in").partition(p).payload(&v))
            .expect("queued");
    }
    plain.flush(TIMEOUT).expect("flush");

    let input = consumer(&bootstrap, "tx-app", "read_committed");
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", "tx-app-1")
        .set("linger.ms", "5")
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions");
    // Next offset to read per partition, as of the last commit.
    let mut committed: HashMap<i32, i64> = HashMap::new();
    assign(&input, "tx-in", &committed);
    let (mut commits, mut aborts, mut aborted_records) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed.values().sum::<i64>() < INPUT as i64 {
        assert!(Instant::now() < deadline, "the loop did not finish");
        let mut polled = Vec::new();
        while polled.len() < 50 {
            match input.poll(Duration::from_millis(200)) {
                Some(m) => {
                    let m = m.expect("message");
                    let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
                    polled.push((m.partition(), m.offset(), v));
                }
                None => break,
            }
        }
        if polled.is_empty() {
            continue;
        }
        producer.begin_transaction().expect("begin");
        let mut next = committed.clone();
        for (p, offset, v) in &polled {
            let out = format!("out-{v}");
            producer
                .send(
                    BaseRecord::<(), str>::to("tx-out")
                        .partition(*p)
                        .payload(&out),
                )
                .expect("queued");
            next.insert(*p, offset + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in &next {
            tpl.add_partition_offset("tx-in", p, Offset::Offset(o))
                .expect("offset");
        }
        let cgm = input.group_metadata().expect("group metadata");
        producer
            .send_offsets_to_transaction(&tpl, &cgm, TIMEOUT)
            .expect("send offsets");
        if (commits + aborts) % 3 == 2 {
            // Delivered first, so the aborted records are in the log
            // (librdkafka would otherwise drop what it has not sent).
            producer.flush(TIMEOUT).expect("flush before abort");
            producer.abort_transaction(TIMEOUT).expect("abort");
            aborts += 1;
            aborted_records += polled.len();
            // Process the same input again.
            assign(&input, "tx-in", &committed);
        } else {
            producer.commit_transaction(TIMEOUT).expect("commit");
            commits += 1;
            committed = next;
        }
    }
    assert!(aborts > 0, "some transactions aborted");

    let seen = read_all(&bootstrap, "tx-out", "read_committed", INPUT);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    let want: Vec<String> = (0..INPUT).map(|i| format!("out-{i:05}")).collect();
    assert!(
        sorted == want && seen.len() == INPUT,
        "read_committed saw {} records, {} distinct, of {INPUT}",
        seen.len(),
        sorted.len()
    );
    let all = read_all(
        &bootstrap,
        "tx-out",
        "read_uncommitted",
        INPUT + aborted_records,
    );
    println!(
        "{commits} commits, {aborts} aborts: read_committed saw {}, read_uncommitted {} ({aborted_records} aborted)",
        seen.len(),
        all.len()
    );
    assert_eq!(
        all.len(),
        INPUT + aborted_records,
        "aborted records are stored"
    );

    // The offsets committed with the transactions are the group's.
    let check = consumer(&bootstrap, "tx-app", "read_committed");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition("tx-in", p);
    }
    let got = check.committed_offsets(tpl, TIMEOUT).expect("committed");
    for e in got.elements() {
        let end = (INPUT / PARTITIONS as usize) as i64;
        assert_eq!(
            e.offset(),
            Offset::Offset(end),
            "partition {}",
            e.partition()
        );
    }
}

/// Partition 0 of `topic` as a raw fetch from 0 shows it: (offset, key) of
/// each data record, and the offsets of the markers.
fn records_and_markers(c: &mut Conn, topic: &str) -> (Vec<(i64, String)>, Vec<i64>) {
    let (code, _, mut bytes) = c.fetch(topic, 0, 0);
    assert_eq!(code, 0);
    let (mut records, mut markers) = (Vec::new(), Vec::new());
    for set in RecordBatchDecoder::decode_all(&mut bytes).expect("batches") {
        for r in set.records {
            if r.control {
                markers.push(r.offset);
            } else {
                let key = String::from_utf8_lossy(&r.key.unwrap_or_default()).to_string();
                records.push((r.offset, key));
            }
        }
    }
    (records, markers)
}

/// On a compacted topic, a commit marker goes once its transaction has no
/// record left and `delete.retention.ms` has passed; an abort marker stays,
/// as does the marker of a transaction with records left; a read_committed
/// librdkafka consumer reads what is left.
#[test]
fn compaction_removes_commit_markers_of_transactions_with_no_record_left() {
    let f = Floe::start(
        temp_dir("txn-compact"),
        &["--clean-every-ms", "100", "--compact-after-ms", "100"],
    );
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic_with(
        "ct",
        PARTITIONS,
        &[
            ("cleanup.policy", "compact"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "1000"),
        ],
    );
    let p = init_txn(&mut c, "m", 60_000);
    for (i, commit) in [true, false, true].into_iter().enumerate() {
        assert_eq!(add_partition(&mut c, "m", p, "ct"), 0);
        let records = transactional_batch(3, p.0, p.1, 3 * i as i32);
        assert_eq!(produce(&mut c, "ct", records).error_code, 0);
        assert_eq!(end_txn(&mut c, "m", p, commit), 0);
    }
    // k0-k2 at 0-2, committed at 3; aborted at 4-6 and 7; k0-k2 again at
    // 8-10, committed at 11.
    assert_eq!(records_and_markers(&mut c, "ct").1, [3, 7, 11]);
    // A plain k0 now and then, until the first transaction's records and
    // then its marker are gone; the last one supersedes the k0 at 8 and the
    // older plain ones.
    let deadline = Instant::now() + TIMEOUT;
    let mut last = 0;
    loop {
        let (records, markers) = records_and_markers(&mut c, "ct");
        let want = [(9, "k1".into()), (10, "k2".into()), (last, "k0".into())];
        if markers == [7, 11] && records == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "records {records:?}, markers {markers:?}"
        );
        if markers != [7, 11] {
            let r = produce(&mut c, "ct", batch(1, 10));
            assert_eq!(r.error_code, 0);
            last = r.base_offset;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let consumer = consumer(&f.bootstrap(), "marker-reader", "read_committed");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("ct", 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    while got.len() < 3 && Instant::now() < deadline + TIMEOUT {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("message");
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
            got.push((m.offset(), key));
        }
    }
    assert_eq!(
        got,
        [(9, "k1".into()), (10, "k2".into()), (last, "k0".into())]
    );
}

fn init_txn(c: &mut Conn, id: &str, timeout_ms: i32) -> (i64, i16) {
    let r = c.call(
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_string(id.into()))))
            .with_transaction_timeout_ms(timeout_ms),
    );
    assert_eq!(r.error_code, 0, "InitProducerId");
    (r.producer_id.0, r.producer_epoch)
}

/// InitProducerId naming the producer's current id and epoch (KIP-360):
/// (error code, (id, epoch)).
fn init_as(c: &mut Conn, version: i16, id: &str, (pid, epoch): (i64, i16)) -> (i16, (i64, i16)) {
    let r = c.call(
        version,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_string(id.into()))))
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch),
    );
    (r.error_code, (r.producer_id.0, r.producer_epoch))
}

fn add_partition(c: &mut Conn, id: &str, producer: (i64, i16), topic: &str) -> i16 {
    add_partition_v(c, 3, id, producer, topic)
}

fn add_partition_v(
    c: &mut Conn,
    version: i16,
    id: &str,
    (pid, epoch): (i64, i16),
    topic: &str,
) -> i16 {
    let t = AddPartitionsToTxnTopic::default()
        .with_name(name(topic))
        .with_partitions(vec![0]);
    let r = c.call(
        version,
        &AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_string(id.into())))
            .with_v3_and_below_producer_id(ProducerId(pid))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(vec![t]),
    );
    r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
}

fn end_txn(c: &mut Conn, id: &str, (pid, epoch): (i64, i16), commit: bool) -> i16 {
    c.call(
        3,
        &EndTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(id.into())))
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_committed(commit),
    )
    .error_code
}

fn produce(c: &mut Conn, topic: &str, records: Bytes) -> PartitionProduceResponse {
    let mut r = c.call(9, &produce_request(topic, 0, -1, records));
    r.responses
        .swap_remove(0)
        .partition_responses
        .swap_remove(0)
}

/// (latest with read_uncommitted, latest with read_committed).
fn ends(c: &mut Conn, topic: &str) -> (i64, i64) {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{BrokerId, ListOffsetsRequest};
    let mut at = |isolation: i8| {
        let p = ListOffsetsPartition::default()
            .with_partition_index(0)
            .with_timestamp(-1);
        let t = ListOffsetsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![p]);
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(isolation)
            .with_topics(vec![t]);
        c.call(7, &req).topics[0].partitions[0].offset
    };
    (at(0), at(1))
}

fn state(c: &mut Conn, id: &str) -> (String, i16) {
    let r = c.call(
        0,
        &DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![TransactionalId(StrBytes::from_string(id.into()))]),
    );
    let s = &r.transaction_states[0];
    assert_eq!(s.error_code, 0);
    (s.transaction_state.to_string(), s.producer_epoch)
}

#[test]
fn coordinator_errors_open_transactions_and_timeouts() {
    use ResponseError::*;
    let mut f = Floe::start(temp_dir("txn-raw"), &[]);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("t", 1);
    c.create_topic("u", 1);
    let r = c.call(
        3,
        &FindCoordinatorRequest::default()
            .with_key(StrBytes::from_static_str("a"))
            .with_key_type(1),
    );
    assert_eq!((r.error_code, r.port), (0, f.kafka_port as i32));

    let a = init_txn(&mut c, "a", 60_000);
    assert_eq!(a.1, 0);
    // Not added yet: KIP-890 part 1 refuses the batch.
    let r = produce(&mut c, "t", transactional_batch(2, a.0, a.1, 0));
    assert_eq!(r.error_code, InvalidTxnState.code());
    assert_eq!(
        end_txn(&mut c, "a", a, true),
        InvalidTxnState.code(),
        "nothing to end"
    );
    assert_eq!(
        add_partition(&mut c, "a", (a.0 + 1, a.1), "t"),
        InvalidProducerIdMapping.code()
    );
    assert_eq!(
        add_partition(&mut c, "a", a, "missing"),
        UnknownTopicOrPartition.code()
    );
    assert_eq!(add_partition(&mut c, "a", a, "t"), 0);
    assert_eq!(produce(&mut c, "t", batch(1, 10)).error_code, 0); // offset 0, plain
    let r = produce(&mut c, "t", transactional_batch(2, a.0, a.1, 0)); // 1..3
    assert_eq!((r.error_code, r.base_offset), (0, 1));
    assert_eq!(produce(&mut c, "t", batch(1, 10)).error_code, 0); // 3, plain
    assert_eq!(
        ends(&mut c, "t"),
        (4, 1),
        "the open transaction holds the LSO"
    );
    // Batches no client may send: a marker, a transactional batch without a
    // producer, two producers' transactional batches in one request.
    let two = [
        transactional_batch(1, a.0, a.1, 2),
        transactional_batch(1, a.0 + 7, 0, 0),
    ]
    .concat();
    for bad in [
        control_batch(a.0, a.1),
        transactional_batch(1, -1, -1, -1),
        Bytes::from(two),
    ] {
        assert_eq!(produce(&mut c, "t", bad).error_code, InvalidRecord.code());
    }
    assert_eq!(ends(&mut c, "t"), (4, 1), "nothing of them stored");
    // Its producer id cannot write outside the transaction either.
    let r = produce(&mut c, "t", idempotent_batch(1, a.0, a.1 + 1, 0));
    assert_eq!(r.error_code, InvalidTxnState.code());
    assert_eq!(state(&mut c, "a").0, "Ongoing");

    // kill -9: the transaction is still open, and still ends.
    drop(c);
    f.restart_after_kill9();
    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(ends(&mut c, "t"), (4, 1));
    assert_eq!(end_txn(&mut c, "a", a, true), 0);
    assert_eq!(end_txn(&mut c, "a", a, true), 0, "a retried EndTxn");
    assert_eq!(end_txn(&mut c, "a", a, false), InvalidTxnState.code());
    assert_eq!(ends(&mut c, "t"), (5, 5), "the commit marker at 4");
    assert_eq!(state(&mut c, "a").0, "CompleteCommit");

    // A new instance fences the old one.
    let a2 = init_txn(&mut c, "a", 60_000);
    assert_eq!(a2, (a.0, a.1 + 1));
    assert_eq!(add_partition(&mut c, "a", a, "t"), ProducerFenced.code());
    let r = produce(&mut c, "t", transactional_batch(1, a.0, a.1, 2));
    assert_eq!(r.error_code, InvalidProducerEpoch.code());

    // A transaction past its timeout is aborted under a new epoch.
    let b = init_txn(&mut c, "b", 1000);
    assert_eq!(add_partition(&mut c, "b", b, "u"), 0);
    assert_eq!(
        produce(&mut c, "u", transactional_batch(3, b.0, b.1, 0)).error_code,
        0
    );
    assert_eq!(ends(&mut c, "u"), (3, 0));
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(&mut c, "b").0 != "CompleteAbort" {
        assert!(Instant::now() < deadline, "the transaction never timed out");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(state(&mut c, "b").1, b.1 + 1);
    assert_eq!(ends(&mut c, "u"), (4, 4), "the abort marker at 3");
    assert_eq!(end_txn(&mut c, "b", b, true), ProducerFenced.code());
    let r = produce(&mut c, "u", transactional_batch(1, b.0, b.1, 3));
    assert_eq!(r.error_code, InvalidProducerEpoch.code());
    // Nor can it re-initialise under its old epoch (Kafka's TV1 as well).
    assert_eq!(init_as(&mut c, 4, "b", b).0, ProducerFenced.code());

    let listed = c.call(
        1,
        &ListTransactionsRequest::default().with_duration_filter(-1),
    );
    let mut ids: Vec<(String, String)> = listed
        .transaction_states
        .iter()
        .map(|t| {
            (
                t.transactional_id.0.to_string(),
                t.transaction_state.to_string(),
            )
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            // A new InitProducerId leaves its id Empty, as in Kafka.
            ("a".to_string(), "Empty".to_string()),
            ("b".to_string(), "CompleteAbort".to_string())
        ]
    );
}

/// OffsetFetch v7 of partition 0 of `topic`: (error code, offset).
fn fetch_offset(c: &mut Conn, group: &str, topic: &str, require_stable: bool) -> (i16, i64) {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::{GroupId, OffsetFetchRequest};
    let r = c.call(
        7,
        &OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.into())))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(name(topic))
                .with_partition_indexes(vec![0])]))
            .with_require_stable(require_stable),
    );
    assert_eq!(r.error_code, 0);
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.committed_offset)
}

/// KIP-588's retried InitProducerId, PRODUCER_FENCED only for the versions
/// that know it, and KIP-447's UNSTABLE_OFFSET_COMMIT while a transaction
/// holds a group's offset.
#[test]
fn init_retries_fencing_versions_and_unstable_offsets() {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{
        AddOffsetsToTxnRequest, GroupId, OffsetCommitRequest, TxnOffsetCommitRequest,
    };
    use ResponseError::*;
    let f = Floe::start(temp_dir("txn-kip588"), &[]);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("t", 1);

    let first = init_txn(&mut c, "x", 60_000);
    // The producer bumps its epoch; the answer is lost and it asks again
    // with the epoch it had: it gets the same new epoch, not a third one.
    let (code, bumped) = init_as(&mut c, 4, "x", first);
    assert_eq!((code, bumped), (0, (first.0, first.1 + 1)));
    assert_eq!(init_as(&mut c, 4, "x", first), (0, bumped), "a retry");
    assert_eq!(state(&mut c, "x"), ("Empty".to_string(), bumped.1));
    // Anything else it names is fenced; old versions hear it as
    // INVALID_PRODUCER_EPOCH.
    let stale = (first.0, first.1 - 1);
    assert_eq!(init_as(&mut c, 4, "x", stale).0, ProducerFenced.code());
    assert_eq!(
        init_as(&mut c, 3, "x", stale).0,
        InvalidProducerEpoch.code()
    );
    let other = (first.0 + 1, bumped.1);
    assert_eq!(init_as(&mut c, 4, "x", other).0, ProducerFenced.code());
    assert_eq!(
        add_partition_v(&mut c, 2, "x", first, "t"),
        ProducerFenced.code()
    );
    assert_eq!(
        add_partition_v(&mut c, 1, "x", first, "t"),
        InvalidProducerEpoch.code()
    );
    let end_v1 = c.call(
        1,
        &EndTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_static_str("x")))
            .with_producer_id(ProducerId(first.0))
            .with_producer_epoch(first.1)
            .with_committed(false),
    );
    assert_eq!(end_v1.error_code, InvalidProducerEpoch.code());

    // Offsets: 5 committed plainly, then 9 inside a transaction.
    let plain = c.call(
        8,
        &OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(name("t"))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(5)])]),
    );
    assert_eq!(plain.topics[0].partitions[0].error_code, 0);
    let x = bumped;
    assert_eq!(add_partition(&mut c, "x", x, "t"), 0);
    let added = c.call(
        3,
        &AddOffsetsToTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_static_str("x")))
            .with_producer_id(ProducerId(x.0))
            .with_producer_epoch(x.1)
            .with_group_id(GroupId(StrBytes::from_static_str("g"))),
    );
    assert_eq!(added.error_code, 0);
    let txn_commit = c.call(
        3,
        &TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_static_str("x")))
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_producer_id(ProducerId(x.0))
            .with_producer_epoch(x.1)
            .with_generation_id(-1)
            .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                .with_name(name("t"))
                .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(9)])]),
    );
    assert_eq!(txn_commit.topics[0].partitions[0].error_code, 0);
    assert_eq!(
        fetch_offset(&mut c, "g", "t", true),
        (UnstableOffsetCommit.code(), -1),
        "an open transaction holds the offset"
    );
    assert_eq!(fetch_offset(&mut c, "g", "t", false), (0, 5));
    assert_eq!(fetch_offset(&mut c, "other", "t", true), (0, -1));
    // While open, a retry naming the previous epoch is no retry: fenced.
    assert_eq!(init_as(&mut c, 4, "x", first).0, ProducerFenced.code());
    assert_eq!(end_txn(&mut c, "x", x, true), 0);
    assert_eq!(fetch_offset(&mut c, "g", "t", true), (0, 9));
}
