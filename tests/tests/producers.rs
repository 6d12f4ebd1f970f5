//! Idempotent producers against the real binary.
//! - Raw protocol: InitProducerId never hands out an id twice (also across a
//!   kill -9); a retried batch is answered with its first offset, also while
//!   the original is still in flight and after a restart; gaps, stale epochs,
//!   unknown producers and malformed producer fields get Kafka's errors (a
//!   gap a retriable one, also from a producer new to the partition) and
//!   store nothing; DescribeProducers shows what each partition remembers.
//! - librdkafka: a producer whose connections are cut while its requests are
//!   in flight (they land, their acks are lost) leaves every record exactly
//!   once and in order; one whose state expired bumps its epoch (KIP-360) on
//!   UNKNOWN_PRODUCER_ID and carries on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use floe_e2e::proxy::Proxy;
use floe_e2e::raw::{produce_request, topic_name as name, Conn};
use floe_e2e::records::{batch, idempotent_batch, log_append_time_batch};
use floe_e2e::{temp_dir, Floe};
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::describe_producers_response::ProducerState;
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    DescribeProducersRequest, InitProducerIdRequest, ProduceRequest, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};

fn init_producer_id(c: &mut Conn) -> (i64, i16) {
    let r = c.call(
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(r.error_code, 0, "InitProducerId");
    (r.producer_id.0, r.producer_epoch)
}

fn first_partition(mut r: kafka_protocol::messages::ProduceResponse) -> PartitionProduceResponse {
    r.responses
        .swap_remove(0)
        .partition_responses
        .swap_remove(0)
}

fn produce(c: &mut Conn, topic: &str, records: Bytes) -> PartitionProduceResponse {
    first_partition(c.call(9, &produce_request(topic, 0, -1, records)))
}

/// Produces and expects `code`; returns the base offset.
fn expect(c: &mut Conn, topic: &str, records: Bytes, code: ResponseError) -> i64 {
    let r = produce(c, topic, records);
    assert_eq!(
        r.error_code,
        code.code(),
        "{code:?} expected; got {:?}",
        r.error_message
    );
    r.base_offset
}

fn ok(c: &mut Conn, topic: &str, records: Bytes) -> i64 {
    let r = produce(c, topic, records);
    assert_eq!(r.error_code, 0, "produce: {:?}", r.error_message);
    r.base_offset
}

fn producers(c: &mut Conn, topic: &str) -> Vec<ProducerState> {
    let t = TopicRequest::default()
        .with_name(name(topic))
        .with_partition_indexes(vec![0]);
    let mut r = c.call(0, &DescribeProducersRequest::default().with_topics(vec![t]));
    let p = r.topics.swap_remove(0).partitions.swap_remove(0);
    assert_eq!(p.error_code, 0);
    let mut all = p.active_producers;
    all.sort_by_key(|p| p.producer_id.0);
    all
}

fn high_watermark(c: &mut Conn, topic: &str) -> i64 {
    c.list_offset(topic, 0, -1).offset
}

#[test]
fn a_retry_on_a_log_append_time_topic_gets_its_originals_time() {
    let f = Floe::start(temp_dir("idempotent-lat"), &[]);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic_with("stamped", 1, &[("message.timestamp.type", "LogAppendTime")]);
    let (pid, _) = init_producer_id(&mut c);
    let first = produce(&mut c, "stamped", idempotent_batch(3, pid, 0, 0));
    assert_eq!((first.error_code, first.base_offset), (0, 0));
    assert!(first.log_append_time_ms > 0, "the log's time is answered");
    std::thread::sleep(Duration::from_millis(20));
    let retry = produce(&mut c, "stamped", idempotent_batch(3, pid, 0, 0));
    assert_eq!(
        (
            retry.error_code,
            retry.base_offset,
            retry.log_append_time_ms
        ),
        (0, 0, first.log_append_time_ms),
        "a retry is answered with what was stored"
    );
    // What is stored carries that time (maxTimestamp, @35) and the
    // timestamp-type bit (attributes, @21); its CRC is checked in floe-common.
    let (_, _, records) = c.fetch("stamped", 0, 0);
    assert_ne!(records[22] & 0x08, 0);
    let stored = i64::from_be_bytes(records[35..43].try_into().expect("8 bytes"));
    assert_eq!(stored, first.log_append_time_ms);
    // A CreateTime topic answers -1, and stores a client's batch as
    // CreateTime even if the client set the LogAppendTime bit (as Kafka
    // does), so readers see each record's own time.
    c.create_topic("own", 1);
    assert_eq!(produce(&mut c, "own", batch(2, 10)).log_append_time_ms, -1);
    let sent = log_append_time_batch(2, 10);
    assert_ne!(sent[22] & 0x08, 0);
    assert_eq!(produce(&mut c, "own", sent).log_append_time_ms, -1);
    let (_, _, records) = c.fetch("own", 0, 2);
    assert_eq!(records[22] & 0x08, 0);
    let max = i64::from_be_bytes(records[35..43].try_into().expect("8 bytes"));
    assert_eq!(max, 1_700_000_000_001, "the newer record's time");
}

#[test]
fn sequences_are_checked_and_retries_answered_with_their_first_offset() {
    use ResponseError::*;
    let mut f = Floe::start(temp_dir("idempotent"), &[]);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("idem", 1);
    let (pid, epoch) = init_producer_id(&mut c);
    let (other, _) = init_producer_id(&mut c);
    assert_eq!(epoch, 0);
    assert_ne!(pid, other, "producer ids are never handed out twice");

    assert_eq!(ok(&mut c, "idem", idempotent_batch(3, pid, 0, 0)), 0);
    assert_eq!(ok(&mut c, "idem", idempotent_batch(2, pid, 0, 3)), 3);
    // Retries of either are answered with their first offset; nothing is stored.
    assert_eq!(ok(&mut c, "idem", idempotent_batch(3, pid, 0, 0)), 0);
    assert_eq!(ok(&mut c, "idem", idempotent_batch(2, pid, 0, 3)), 3);
    assert_eq!(high_watermark(&mut c, "idem"), 5);

    // A retry of a batch still in flight: pipelined behind its original.
    let b = idempotent_batch(4, pid, 0, 5);
    for _ in 0..3 {
        c.send(9, &produce_request("idem", 0, -1, b.clone()));
    }
    for _ in 0..3 {
        let r = first_partition(c.recv::<ProduceRequest>(9));
        assert_eq!((r.error_code, r.base_offset), (0, 5));
    }
    assert_eq!(high_watermark(&mut c, "idem"), 9);

    // A gap, and a new epoch not starting at 0: an earlier batch is still
    // on its way (or failed retriably), so the answer is retriable, not
    // OUT_OF_ORDER_SEQUENCE_NUMBER (librdkafka would bump its epoch and
    // renumber records whose lost answers hid that they were stored).
    expect(
        &mut c,
        "idem",
        idempotent_batch(1, pid, 0, 10),
        NotLeaderOrFollower,
    );
    expect(
        &mut c,
        "idem",
        idempotent_batch(1, pid, 1, 9),
        NotLeaderOrFollower,
    );
    // A retry that does not match a remembered batch: refused. A producer
    // that never wrote here, past 0: its first batch is on its way, so
    // retriable. Nothing stored.
    expect(
        &mut c,
        "idem",
        idempotent_batch(2, pid, 0, 5),
        OutOfOrderSequenceNumber,
    );
    expect(
        &mut c,
        "idem",
        idempotent_batch(1, other + 10, 0, 7),
        NotLeaderOrFollower,
    );
    // Producer fields a client cannot send.
    expect(
        &mut c,
        "idem",
        idempotent_batch(1, pid, -1, 9),
        InvalidRecord,
    );
    expect(
        &mut c,
        "idem",
        idempotent_batch(1, pid, 0, -1),
        InvalidRecord,
    );
    assert_eq!(high_watermark(&mut c, "idem"), 9);

    // A new epoch starts at 0 and fences the old one, retries included.
    assert_eq!(ok(&mut c, "idem", idempotent_batch(1, pid, 1, 0)), 9);
    expect(
        &mut c,
        "idem",
        idempotent_batch(1, pid, 0, 9),
        InvalidProducerEpoch,
    );
    expect(
        &mut c,
        "idem",
        idempotent_batch(4, pid, 0, 5),
        InvalidProducerEpoch,
    );
    // Plain batches are not checked at all; another producer is independent.
    assert_eq!(ok(&mut c, "idem", batch(2, 10)), 10);
    assert_eq!(ok(&mut c, "idem", idempotent_batch(2, other, 0, 0)), 12);
    assert_eq!(high_watermark(&mut c, "idem"), 14);

    let described = producers(&mut c, "idem");
    let seen: Vec<(i64, i32, i32)> = described
        .iter()
        .map(|p| (p.producer_id.0, p.producer_epoch, p.last_sequence))
        .collect();
    assert_eq!(seen, vec![(pid, 1, 0), (other, 0, 1)]);
    assert!(described.iter().all(|p| p.current_txn_start_offset == -1));

    // kill -9: producer state comes back from the log.
    drop(c);
    f.restart_after_kill9();
    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(ok(&mut c, "idem", idempotent_batch(2, other, 0, 0)), 12);
    assert_eq!(ok(&mut c, "idem", idempotent_batch(1, pid, 1, 0)), 9);
    expect(
        &mut c,
        "idem",
        idempotent_batch(1, pid, 0, 9),
        InvalidProducerEpoch,
    );
    // Past a gap, the missing batch and then the one that was early.
    expect(
        &mut c,
        "idem",
        idempotent_batch(1, pid, 1, 2),
        NotLeaderOrFollower,
    );
    assert_eq!(ok(&mut c, "idem", idempotent_batch(1, pid, 1, 1)), 14);
    assert_eq!(ok(&mut c, "idem", idempotent_batch(1, pid, 1, 2)), 15);
    assert_eq!(producers(&mut c, "idem").len(), 2);
    // Ids handed out before the crash are never handed out again.
    let (after, _) = init_producer_id(&mut c);
    assert!(after > other, "id {after} after {other}");

    // A partition a producer never wrote to, past 0: its first batch is
    // on its way, retriable, also for a producer older than the partition.
    c.create_topic("fresh", 1);
    expect(
        &mut c,
        "fresh",
        idempotent_batch(1, other, 0, 5),
        NotLeaderOrFollower,
    );
    // A producer that wrote to a deleted topic may carry on its sequence
    // on the re-created one, which does not know it: it starts again
    // (KIP-360), also after a kill -9. One handed out since never wrote
    // to a deleted topic: retriable.
    let (gone, _) = init_producer_id(&mut c);
    c.create_topic("again", 1);
    assert_eq!(ok(&mut c, "again", idempotent_batch(2, gone, 0, 0)), 0);
    c.delete_topic("again");
    c.create_topic("again", 1);
    let (newer, _) = init_producer_id(&mut c);
    for round in 0..2 {
        expect(
            &mut c,
            "again",
            idempotent_batch(1, gone, 0, 2),
            UnknownProducerId,
        );
        expect(
            &mut c,
            "again",
            idempotent_batch(1, newer, 0, 2),
            NotLeaderOrFollower,
        );
        if round == 0 {
            drop(c);
            f.restart_after_kill9();
            c = Conn::connect(&f.bootstrap());
        }
    }
    assert_eq!(high_watermark(&mut c, "again"), 0);
    assert_eq!(high_watermark(&mut c, "fresh"), 0);

    // An empty transactional id is no id at all.
    let r = c.call(
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(""))))
            .with_transaction_timeout_ms(60_000),
    );
    assert_eq!(r.error_code, InvalidRequest.code());
}

/// Counts delivery outcomes.
#[derive(Default, Clone)]
struct Deliveries {
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => self.failed.lock().expect("failed").push(e.to_string()),
        }
    }
}

fn idempotent_producer(bootstrap: &str, d: &Deliveries) -> ThreadedProducer<Deliveries> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("batch.num.messages", "200")
        .set("message.timeout.ms", "120000")
        .set("socket.timeout.ms", "5000")
        .set("retry.backoff.ms", "50")
        .create_with_context(d.clone())
        .expect("producer")
}

/// Every record of `topic` (partitions `0..partitions`), as (partition, value).
fn read_all(bootstrap: &str, topic: &str, partitions: i32, want: usize) -> Vec<(i32, String)> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "verify")
        .set("fetch.wait.max.ms", "100");
    floe_e2e::kafka::read_from_start(&config, topic, partitions, want)
        .iter()
        .map(|m| {
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
            (m.partition(), v)
        })
        .collect()
}

fn metric(f: &Floe, name: &str) -> u64 {
    let text = f.http_get("/metrics").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn cut_connections_leave_every_record_once_and_in_order() {
    const PARTITIONS: i32 = 4;
    const RECORDS: usize = 20_000;
    // The proxy's port is chosen first so Floe can advertise it: every
    // client connection, after bootstrap too, goes through the proxy.
    let port = floe_e2e::free_port();
    let advertised = format!("127.0.0.1:{port}");
    let f = Floe::start(
        temp_dir("idem-cut"),
        &[
            "--advertised-kafka",
            &advertised,
            "--default-partitions",
            "4",
        ],
    );
    let proxy = Arc::new(Proxy::start_on(port, f.kafka_port));
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("cut", PARTITIONS);

    let d = Deliveries::default();
    let p = idempotent_producer(&proxy.address(), &d);
    // Cut every connection every 700 ms while records flow, two ways in
    // turn: requests sent in the 300 ms before a cut land, but their acks
    // are lost; or a connection's next Produce answer is withheld (that
    // request certainly landed) and the connection closed.
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let cutter = {
        let (proxy, producing) = (proxy.clone(), producing.clone());
        std::thread::spawn(move || {
            let mut cuts = 0;
            while producing.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(400));
                if cuts % 2 == 0 {
                    proxy.cut_all(Duration::from_millis(300));
                } else {
                    proxy.cut_after_produce_answer();
                    std::thread::sleep(Duration::from_millis(300));
                }
                cuts += 1;
            }
            cuts
        })
    };
    // At least RECORDS, and on until a cut has made the producer resend a
    // batch that had landed (certain after a withheld answer; bounded).
    let mut sent = 0;
    loop {
        let enough = sent >= RECORDS && sent % 1000 == 0;
        if enough && (sent >= RECORDS * 5 || metric(&f, "floe_idempotent_duplicates_total") > 0) {
            break;
        }
        let i = sent;
        sent += 1;
        let partition = (i % PARTITIONS as usize) as i32;
        let v = format!("{partition}:{i:08}");
        let mut rec = BaseRecord::<(), str>::to("cut")
            .partition(partition)
            .payload(&v);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        // About 5,000 records a second, so the cuts fall mid-stream.
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    producing.store(false, Ordering::Relaxed);
    let cuts = cutter.join().expect("cutter");
    p.flush(Duration::from_secs(120)).expect("flush");
    let failed = d.failed.lock().expect("failed").clone();
    assert!(failed.is_empty(), "deliveries failed: {failed:?}");
    assert_eq!(d.ok.load(Ordering::Relaxed), sent);

    let got = read_all(&proxy.address(), "cut", PARTITIONS, sent);
    let mut per: HashMap<i32, Vec<&str>> = HashMap::new();
    for (p, v) in &got {
        per.entry(*p).or_default().push(v);
    }
    let mut seen = std::collections::HashSet::new();
    let dups = got.iter().filter(|(_, v)| !seen.insert(v.clone())).count();
    let retried = metric(&f, "floe_idempotent_duplicates_total");
    println!(
        "{cuts} cuts of {} connections, {} produce answers withheld; {retried} retried batches answered as duplicates; {} records read, {dups} duplicates",
        proxy.cuts.load(Ordering::Relaxed),
        proxy.withheld(),
        got.len()
    );
    assert_eq!(dups, 0, "records stored twice");
    assert_eq!(got.len(), sent, "records lost");
    for (partition, values) in &per {
        let mut sorted = values.clone();
        sorted.sort();
        assert_eq!(values, &sorted, "partition {partition} out of order");
    }
    // The cuts really made the producer resend batches that had landed.
    assert!(proxy.withheld() > 0, "no produce answer was withheld");
    assert!(retried > 0, "no retried batch reached the broker");
}

#[test]
fn an_expired_producer_bumps_its_epoch_and_carries_on() {
    let f = Floe::start(
        temp_dir("idem-expiry"),
        &[
            "--producer-id-expiration-ms",
            "1000",
            "--maintain-every-ms",
            "100",
        ],
    );
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("expiry", 1);
    let d = Deliveries::default();
    let p = idempotent_producer(&f.bootstrap(), &d);
    let send = |from: usize| {
        for i in from..from + 100 {
            let v = format!("{i:04}");
            p.send(BaseRecord::<(), str>::to("expiry").partition(0).payload(&v))
                .expect("queued");
        }
        p.flush(Duration::from_secs(30)).expect("flush");
    };
    send(0);
    let before = producers(&mut c, "expiry");
    assert_eq!(before.len(), 1);
    // Idle past the expiry: the partition forgets the producer.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !producers(&mut c, "expiry").is_empty() {
        assert!(Instant::now() < deadline, "producer never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metric(&f, "floe_expired_producers_total") >= 1);
    // Its next batch continues its sequence, gets UNKNOWN_PRODUCER_ID, and
    // librdkafka bumps its epoch (a new id, sequences from 0) and resends.
    send(100);
    let failed = d.failed.lock().expect("failed").clone();
    assert!(failed.is_empty(), "deliveries failed: {failed:?}");
    assert_eq!(d.ok.load(Ordering::Relaxed), 200);
    let after = producers(&mut c, "expiry");
    assert_eq!(after.len(), 1);
    let (b, a) = (&before[0], &after[0]);
    println!(
        "before expiry: producer {} epoch {}; after: producer {} epoch {}",
        b.producer_id.0, b.producer_epoch, a.producer_id.0, a.producer_epoch
    );
    // librdkafka bumps an idempotent producer's epoch itself (KIP-360);
    // other clients ask InitProducerId, which gives a new id.
    assert!(
        a.producer_id != b.producer_id || a.producer_epoch > b.producer_epoch,
        "the producer started a new epoch or id"
    );
    assert_eq!(a.last_sequence, 99, "sequences start again at 0");
    let got = read_all(&f.bootstrap(), "expiry", 1, 200);
    let values: Vec<String> = got.into_iter().map(|(_, v)| v).collect();
    let want: Vec<String> = (0..200).map(|i| format!("{i:04}")).collect();
    assert_eq!(values, want, "every record once, in order");
}
