//! Protocol semantics against the real binary, over a raw connection: fetch
//! long-polls and byte limits, pipelining order, acks=0 and 1, timestamps,
//! leader epochs across restarts, and the drain on SIGTERM.

use std::thread;
use std::time::Duration;

use bytes::Bytes;
use floe_e2e::raw::{produce_request, topic_name as name, Conn};
use floe_e2e::records::batch;
use floe_e2e::{temp_dir, Floe};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;

fn fetch_req(
    topic: &str,
    offset: i64,
    wait_ms: i32,
    min_bytes: i32,
    part_max: i32,
    max: i32,
) -> FetchRequest {
    let p = FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(offset)
        .with_partition_max_bytes(part_max);
    let t = FetchTopic::default()
        .with_topic(name(topic))
        .with_partitions(vec![p]);
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(max)
        .with_topics(vec![t])
}

fn records(r: &FetchResponse) -> Bytes {
    r.responses[0].partitions[0]
        .records
        .clone()
        .unwrap_or_default()
}

/// Number of whole batches in a record set.
fn batches(b: &[u8]) -> usize {
    let (mut n, mut at) = (0, 0);
    while at + 12 <= b.len() {
        at += 12 + i32::from_be_bytes(b[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
        n += 1;
    }
    n
}

#[test]
fn fetch_long_polls_until_data_arrives_and_respects_byte_limits() {
    let f = Floe::start(temp_dir("fetch"), &[]);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("lp", 1);
    // Nothing there: a short wait comes back empty.
    let r = c.call(12, &fetch_req("lp", 0, 100, 1, 1 << 20, 1 << 20));
    assert_eq!(
        (r.responses[0].partitions[0].error_code, records(&r).len()),
        (0, 0)
    );
    // A long wait is answered by data produced meanwhile, not by the timeout:
    // the timeout would answer with no records.
    let bootstrap = f.bootstrap();
    let producer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        let mut p = Conn::connect(&bootstrap);
        p.call(9, &produce_request("lp", 0, -1, batch(3, 100)))
    });
    let r = c.call(12, &fetch_req("lp", 0, 20_000, 1, 1 << 20, 1 << 20));
    assert_eq!(batches(&records(&r)), 1, "woken by the append");
    assert_eq!(r.responses[0].partitions[0].high_watermark, 3);
    assert_eq!(
        producer.join().expect("producer").responses[0].partition_responses[0].error_code,
        0
    );
    // Ten more batches of ~1.2 KiB each.
    for _ in 0..10 {
        c.call(9, &produce_request("lp", 0, -1, batch(4, 300)));
    }
    let all = records(&c.call(12, &fetch_req("lp", 0, 0, 1, 1 << 20, 1 << 20)));
    assert_eq!(batches(&all), 11);
    let limited = records(&c.call(12, &fetch_req("lp", 0, 0, 1, 3000, 1 << 20)));
    assert!(
        limited.len() <= 3000 && batches(&limited) >= 1,
        "partition_max_bytes caps the answer"
    );
    let tiny = records(&c.call(12, &fetch_req("lp", 3, 0, 1, 10, 10)));
    assert_eq!(
        batches(&tiny),
        1,
        "at least one whole batch even over the limits (KIP-74)"
    );
    // Fetching from the middle of a batch returns that whole batch.
    let mid = records(&c.call(12, &fetch_req("lp", 4, 0, 1, 1, 1 << 20)));
    assert_eq!(i64::from_be_bytes(mid[..8].try_into().expect("8 bytes")), 3);
    // At the high watermark: empty, no error.
    let r = c.call(12, &fetch_req("lp", 43, 0, 1, 1 << 20, 1 << 20));
    assert_eq!(
        (r.responses[0].partitions[0].error_code, records(&r).len()),
        (0, 0)
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let f = Floe::start(temp_dir("pipeline"), &[]);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("pipe", 1);
    // Send a burst without reading: slow produces mixed with instant
    // requests, more of those than a connection takes at once (64).
    let mut ids = Vec::new();
    for i in 0..300 {
        let frame = if i % 3 == 0 {
            c.encode(9, &produce_request("pipe", 0, -1, batch(2, 50)))
        } else if i % 3 == 1 {
            c.encode(3, &ApiVersionsRequest::default())
        } else {
            c.encode(12, &MetadataRequest::default().with_topics(None))
        };
        ids.push(i32::from_be_bytes(frame[4..8].try_into().expect("4 bytes")));
        c.send_frame(&frame).expect("send");
    }
    for want in ids {
        let mut resp = c.read_frame().expect("response");
        let got = i32::from_be_bytes(resp[..4].try_into().expect("4 bytes"));
        assert_eq!(got, want, "responses come back in request order");
        bytes::Buf::advance(&mut resp, 4);
    }
}

/// A client that sends each partition its own request (librdkafka does)
/// has rate × store latency of them in progress on one connection. All of
/// a burst must be taken in and share PUTs; with 64 at a time (the old
/// bound) each 64 waited for a PUT of its own, and on S3 a producer to 64
/// partitions saw seconds of latency.
#[test]
fn hundreds_of_pipelined_produces_share_puts() {
    const REQUESTS: usize = 640;
    // Every PUT takes 200 ms, one at a time: what is in progress while one
    // runs goes into the next.
    let args = [
        "--store-latency",
        "200,200,1,1",
        "--max-in-flight",
        "1",
        "--timer-in-flight",
        "1",
    ];
    let f = Floe::start(temp_dir("deep"), &args);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("deep", 8);
    let puts = counter(&f, "floe_store_puts_total");
    for i in 0..REQUESTS {
        c.send(
            9,
            &produce_request("deep", (i % 8) as i32, -1, batch(1, 100)),
        );
    }
    let mut next = [0i64; 8];
    for i in 0..REQUESTS {
        let r = c.recv::<ProduceRequest>(9);
        let p = &r.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (0, next[i % 8]));
        next[i % 8] += 1;
    }
    let puts = counter(&f, "floe_store_puts_total") - puts;
    // One PUT for the first request, one for the rest, and slack for a slow
    // reader taking in the burst; ten rounds of 64 take at least ten (21
    // here with the old bound).
    assert!(puts < 10, "{REQUESTS} pipelined produces took {puts} PUTs");
}

/// Pipelined produces past the bytes a connection takes in at once (64
/// MiB): the reader waits for room and every one is stored, in order.
#[test]
fn produces_past_a_connections_bytes_in_progress_are_all_stored() {
    let f = Floe::start(temp_dir("bytes"), &[]);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("bytes", 1);
    // Under the topic's max.message.bytes; 80 of them are 70 MiB.
    let big = batch(1, 900 << 10);
    for _ in 0..80 {
        c.send(9, &produce_request("bytes", 0, -1, big.clone()));
    }
    for want in 0..80 {
        let r = c.recv::<ProduceRequest>(9);
        let p = &r.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (0, want));
    }
}

#[test]
fn acks_zero_and_one_are_stored_like_all() {
    let mut f = Floe::start(temp_dir("acks"), &[]);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("acks", 1);
    // acks=0: no response at all, so the next answer is the ApiVersions one.
    let frame = c.encode(9, &produce_request("acks", 0, 0, batch(5, 10)));
    c.send_frame(&frame).expect("send");
    let v = c.call(3, &ApiVersionsRequest::default());
    assert_eq!(v.error_code, 0);
    let r = c.call(9, &produce_request("acks", 0, 1, batch(5, 10)));
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 5);
    // acks=1 is as durable as -1: visible after a kill -9.
    f.restart_after_kill9();
    let mut c = Conn::connect(&f.bootstrap());
    let all = records(&c.call(12, &fetch_req("acks", 0, 0, 1, 1 << 20, 1 << 20)));
    assert_eq!(batches(&all), 2);
}

fn list_offset(c: &mut Conn, topic: &str, ts: i64) -> (i64, i64) {
    let p = c.list_offset(topic, 0, ts);
    assert_eq!(p.error_code, 0);
    (p.offset, p.timestamp)
}

#[test]
fn list_offsets_earliest_latest_max_and_by_timestamp() {
    let f = Floe::start(temp_dir("offsets"), &[]);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("ts", 1);
    // batch(n, _) stamps records 1_700_000_000_000 + i.
    for _ in 0..3 {
        c.call(9, &produce_request("ts", 0, -1, batch(4, 10)));
    }
    assert_eq!(list_offset(&mut c, "ts", -2).0, 0);
    assert_eq!(list_offset(&mut c, "ts", -1).0, 12);
    let (off, ts) = list_offset(&mut c, "ts", -3);
    assert_eq!(ts, 1_700_000_000_003);
    assert!((0..12).contains(&off));
    assert_eq!(list_offset(&mut c, "ts", 1_700_000_000_000).0, 0);
    assert_eq!(
        list_offset(&mut c, "ts", 1_800_000_000_000),
        (-1, -1),
        "nothing that late"
    );
}

fn leader_epoch(c: &mut Conn, topic: &str) -> i32 {
    let t = MetadataRequestTopic::default().with_name(Some(name(topic)));
    let md = c.call(12, &MetadataRequest::default().with_topics(Some(vec![t])));
    md.topics[0].partitions[0].leader_epoch
}

#[test]
fn leader_epochs_grow_across_restarts_and_topic_ids_stay() {
    let mut f = Floe::start(temp_dir("epochs"), &[]);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("ep", 2);
    let md = c.call(12, &MetadataRequest::default().with_topics(None));
    let id = md.topics[0].topic_id;
    let mut last = leader_epoch(&mut c, "ep");
    for kill in [false, true, false] {
        if kill {
            f.restart_after_kill9();
        } else {
            f.restart();
        }
        let mut c = Conn::connect(&f.bootstrap());
        let e = leader_epoch(&mut c, "ep");
        assert!(e > last, "leader epoch {e} after restart, was {last}");
        last = e;
        let md = c.call(12, &MetadataRequest::default().with_topics(None));
        assert_eq!(md.topics[0].topic_id, id, "topic ids survive restarts");
    }
    let cluster = Conn::connect(&f.bootstrap()).call(1, &DescribeClusterRequest::default());
    assert_eq!((cluster.error_code, cluster.brokers.len()), (0, 1));
    assert_eq!(cluster.brokers[0].port as u16, f.kafka_port);
}

#[test]
fn sigterm_drains_in_flight_produces() {
    // A long linger keeps flushes open, so SIGTERM lands with requests waiting.
    let mut f = Floe::start(temp_dir("drain"), &["--linger-ms", "400"]);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("drain", 1);
    let mut sent = 0;
    for _ in 0..20 {
        let frame = c.encode(9, &produce_request("drain", 0, -1, batch(1, 10)));
        c.send_frame(&frame).expect("send");
        sent += 1;
    }
    // Signal only once the server has read every request: requests still
    // unread in the socket at shutdown are (rightly) never answered.
    let decoded = format!("floe_kafka_requests_total{{api_key=\"0\"}} {sent}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !f
        .http_get("/metrics")
        .unwrap_or_default()
        .contains(&decoded)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "server never read all {sent} requests"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let status = f.stop();
    assert!(status.success(), "clean exit: {status:?}");
    // Every request sent before the signal got an answer before the close.
    let mut acked = 0;
    while let Some(mut resp) = c.read_frame() {
        ResponseHeader::decode(&mut resp, 1).expect("header v1 (flexible produce)");
        let r = ProduceResponse::decode(&mut resp, 9).expect("produce response");
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        acked += 1;
    }
    assert_eq!(acked, sent, "no request dropped silently");
    f.restart();
    let mut c = Conn::connect(&f.bootstrap());
    let all = records(&c.call(12, &fetch_req("drain", 0, 0, 1, 1 << 20, 1 << 20)));
    assert_eq!(batches(&all), sent);
    assert!(f.log_text().contains("shutting down"));
}

/// SIGTERM lets an HTTP request in flight finish too (a fetch long-polling
/// past the signal gets its whole answer), and ends event streams.
#[test]
fn sigterm_lets_http_requests_in_flight_finish() {
    let mut f = Floe::start(temp_dir("drain-http"), &["--admin-token", "drain-token"]);
    let (key, secret) = f.tenant_with_key("drain-token", "acme");
    let auth = floe_e2e::basic_auth(&key, &secret);
    let created = f
        .http(
            "POST",
            "/v3/clusters/floe-acme/topics",
            &[&auth, "Content-Type: application/json"],
            r#"{"topic_name": "t", "partitions_count": 1}"#,
        )
        .expect("create");
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let port = f.http_port;
    let get = |path: &'static str| {
        let auth = auth.clone();
        thread::spawn(move || floe_e2e::http_request(port, "GET", path, &[&auth], b""))
    };
    let poll = get("/v1/topics/t/partitions/0/records?offset=0&timeout_ms=3000");
    let events = get("/v1/topics/t/events?from=earliest");
    thread::sleep(Duration::from_millis(500));
    let status = f.stop();
    assert!(status.success(), "clean exit: {status:?}");
    let answer = poll.join().expect("thread").expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""records":[]"#), "{answer}");
    let stream = events.join().expect("thread").expect("an answer");
    assert!(stream.starts_with("HTTP/1.1 200"), "{stream}");
    assert!(
        !f.log_text().contains("drain timed out"),
        "the event stream held the drain"
    );
}

#[test]
fn memory_store_serves_and_forgets_on_restart() {
    let mut f = Floe::start(temp_dir("memory"), &["--store", "memory://"]);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("mem", 1);
    assert_eq!(
        c.call(9, &produce_request("mem", 0, -1, batch(3, 10)))
            .responses[0]
            .partition_responses[0]
            .error_code,
        0
    );
    assert_eq!(
        batches(&records(
            &c.call(12, &fetch_req("mem", 0, 0, 1, 1 << 20, 1 << 20))
        )),
        1
    );
    assert!(
        std::fs::read_dir(&f.data_dir).map_or(true, |mut d| d.next().is_none()),
        "nothing written to disk"
    );
    f.restart();
    let mut c = Conn::connect(&f.bootstrap());
    let md = c.call(12, &MetadataRequest::default().with_topics(None));
    assert!(
        md.topics.is_empty(),
        "memory:// keeps nothing across processes"
    );
}

/// A fetch of every partition of `topic` from offset 0, 1 MiB per
/// partition, `max` in all, answered at once.
fn fetch_from_start(topic: &str, partitions: i32, max: i32) -> FetchRequest {
    let parts = (0..partitions)
        .map(|p| {
            FetchPartition::default()
                .with_partition(p)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)
        })
        .collect();
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(max)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(parts)])
}

#[test]
fn only_the_first_non_empty_partition_may_exceed_max_bytes() {
    let f = Floe::start(temp_dir("budget"), &[]);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("budget", 2);
    for partition in 0..2 {
        let r = c.call(9, &produce_request("budget", partition, -1, batch(4, 300)));
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    let fetch_both = |max: i32| fetch_from_start("budget", 2, max);
    let sizes = |r: &FetchResponse| -> Vec<usize> {
        r.responses[0]
            .partitions
            .iter()
            .map(|p| batches(p.records.as_deref().unwrap_or_default()))
            .collect()
    };
    // A 100-byte budget: partition 0's batch still comes (KIP-74); partition 1's does not.
    assert_eq!(sizes(&c.call(12, &fetch_both(100))), vec![1, 0]);
    assert_eq!(sizes(&c.call(12, &fetch_both(1 << 20))), vec![1, 1]);
}

/// The sum of a `/metrics` counter's series.
fn counter(f: &Floe, name: &str) -> u64 {
    let text = f.http_get("/metrics").expect("metrics");
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A fetch over many partitions whose budget runs out early answers as if
/// its partitions were read one after another, and leaves the store alone
/// for partitions it has no room for: it used to load every partition up to
/// its own limit before trimming.
#[test]
fn a_fetch_past_its_budget_is_sequential_and_reads_only_what_it_may_return() {
    const PARTITIONS: i32 = 40;
    let mut f = Floe::start(temp_dir("over"), &[]);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("over", PARTITIONS);
    // Two batches per partition, each produced alone: its own WAL object.
    for _round in 0..2 {
        for p in 0..PARTITIONS {
            let r = c.call(9, &produce_request("over", p, -1, batch(4, 300)));
            assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        }
    }
    let fetch_all = |max: i32| fetch_from_start("over", PARTITIONS, max);
    let sizes = |r: &FetchResponse| -> Vec<usize> {
        r.responses[0]
            .partitions
            .iter()
            .map(|p| p.records.as_deref().unwrap_or_default().len())
            .collect()
    };
    let batch_len = batch(4, 300).len();
    // Room for five batches: partitions 0 and 1 whole, half of 2.
    let budget = 5 * batch_len + batch_len / 2;
    f.restart(); // A cold cache: every batch served comes from the store.
    let mut c = Conn::connect(&f.bootstrap());
    let loaded = counter(&f, "floe_cache_misses_total");
    let r = c.call(12, &fetch_all(budget as i32));
    let loaded = counter(&f, "floe_cache_misses_total") - loaded;
    let mut want = vec![0; PARTITIONS as usize];
    want[..3].copy_from_slice(&[2 * batch_len, 2 * batch_len, batch_len]);
    assert_eq!(sizes(&r), want, "partitions filled in order");
    assert!(
        r.responses[0]
            .partitions
            .iter()
            .all(|p| p.error_code == 0 && p.high_watermark == 8),
        "every partition reports its watermark, served or not"
    );
    // Reads run 16 at a time, each begun with what was left of the budget:
    // at most 16 partitions past the three served were read, two objects
    // each. Reading all 40 loads 80 (and did: 80 before the fix).
    assert!(
        loaded <= 2 * (16 + 3),
        "{loaded} objects loaded from the store for a 3-partition answer"
    );
    // With room for everything, everything comes, each read exactly once.
    let all = sizes(&c.call(12, &fetch_all(1 << 24)));
    assert_eq!(all, vec![2 * batch_len; PARTITIONS as usize]);
}
