//! librdkafka (the `rdkafka` crate, bundled librdkafka) against the real
//! binary: every codec round-trips byte-identical with contiguous offsets,
//! survives a restart, and a kill -9 right after acks loses nothing acked and
//! never reuses an offset a consumer saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floe_e2e::{temp_dir, Floe};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 8;
const RECORDS: usize = 100_000;
const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
const BASE_TS: i64 = 1_700_000_000_000;

fn producer(bootstrap: &str, codec: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", codec)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer")
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "unused-assign-only")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer")
}

async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    // Records carry 2023 timestamps: keep them past Kafka's 7-day retention.
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1)).set("retention.ms", "-1");
    let r = admin
        .create_topics([&t], &AdminOptions::new())
        .await
        .expect("create topics");
    assert!(r[0].is_ok(), "create {name}: {:?}", r[0]);
}

/// What record `i` of a codec's run carries.
fn expected(codec: usize, i: usize) -> (String, Vec<u8>, Vec<u8>, i64) {
    let key = format!("key-{i}");
    let value: Vec<u8> = (0..64 + i % 64)
        .map(|j| ((i * 31 + j * 7 + codec) % 251) as u8)
        .collect();
    let header = (i as u64).to_be_bytes().to_vec();
    (key, value, header, BASE_TS + i as i64)
}

/// Produces every record; returns (partition, offset) of each, by index.
async fn produce_all(bootstrap: &str, topic: &str, codec_idx: usize) -> Vec<(i32, i64)> {
    let p = producer(bootstrap, CODECS[codec_idx]);
    let mut pending = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let (key, value, header, ts) = expected(codec_idx, i);
        let headers = OwnedHeaders::new().insert(Header {
            key: "h",
            value: Some(&header),
        });
        let mut rec = FutureRecord::to(topic)
            .key(&key)
            .payload(&value)
            .partition(i as i32 % PARTITIONS)
            .timestamp(ts)
            .headers(headers);
        loop {
            match p.send_result(rec) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                // Local queue full: let deliveries drain.
                Err((_, r)) => {
                    rec = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(RECORDS);
    for f in pending {
        let d = f
            .await
            .expect("delivery")
            .unwrap_or_else(|(e, _)| panic!("delivery failed: {e}"));
        out.push((d.partition, d.offset));
    }
    out
}

/// Reads every partition from the start until `want` records; checks each
/// against what was sent and where it was acknowledged.
fn consume_and_check(bootstrap: &str, topic: &str, codec_idx: usize, acked: &[(i32, i64)]) {
    let c = consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let mut next = [0i64; PARTITIONS as usize];
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while n < RECORDS {
        assert!(
            Instant::now() < deadline,
            "{topic}: consumed only {n} of {RECORDS}"
        );
        let Some(m) = c.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.expect("consume");
        let p = m.partition() as usize;
        assert_eq!(m.offset(), next[p], "{topic}[{p}]: offsets are contiguous");
        next[p] += 1;
        let key = std::str::from_utf8(m.key().expect("key")).expect("utf-8");
        let i: usize = key
            .strip_prefix("key-")
            .and_then(|s| s.parse().ok())
            .expect("our key");
        let (_, value, header, ts) = expected(codec_idx, i);
        assert_eq!(
            m.payload().expect("value"),
            &value[..],
            "{topic}: value of record {i}"
        );
        let h = m.headers().expect("headers").get(0);
        assert_eq!(
            (h.key, h.value),
            ("h", Some(&header[..])),
            "{topic}: header of record {i}"
        );
        assert_eq!(
            m.timestamp().to_millis(),
            Some(ts),
            "{topic}: timestamp of record {i}"
        );
        assert_eq!(
            acked[i],
            (m.partition(), m.offset()),
            "{topic}: record {i} where it was acked"
        );
        n += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_round_trips_and_survives_restart() {
    let mut f = Floe::start(temp_dir("librdkafka"), &[]);
    let bootstrap = f.bootstrap();
    let mut acked = Vec::new();
    for (ci, codec) in CODECS.iter().enumerate() {
        let topic = format!("codec-{codec}");
        create_topic(&bootstrap, &topic, PARTITIONS).await;
        let started = Instant::now();
        acked.push(produce_all(&bootstrap, &topic, ci).await);
        eprintln!("{codec}: produced {RECORDS} in {:?}", started.elapsed());
        let started = Instant::now();
        consume_and_check(&bootstrap, &topic, ci, &acked[ci]);
        eprintln!("{codec}: consumed {RECORDS} in {:?}", started.elapsed());
    }
    f.restart();
    let bootstrap = f.bootstrap();
    for (ci, codec) in CODECS.iter().enumerate() {
        consume_and_check(&bootstrap, &format!("codec-{codec}"), ci, &acked[ci]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_acks_loses_nothing_and_reuses_no_offset() {
    let mut f = Floe::start(temp_dir("kill9"), &[]);
    let bootstrap = f.bootstrap();
    let topic = "kill9";
    create_topic(&bootstrap, topic, 4).await;
    // A consumer reads as records become visible, and remembers what it saw.
    // (partition, offset) to value.
    type Seen = HashMap<(i32, i64), Vec<u8>>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (seen, stop, bootstrap) = (seen.clone(), stop.clone(), bootstrap.clone());
        std::thread::spawn(move || {
            let c = consumer(&bootstrap);
            let mut tpl = TopicPartitionList::new();
            for p in 0..4 {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .expect("tpl");
            }
            c.assign(&tpl).expect("assign");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                    let v = m.payload().unwrap_or_default().to_vec();
                    seen.lock()
                        .expect("seen")
                        .insert((m.partition(), m.offset()), v);
                }
            }
        })
    };
    // Produce, with acks=all, until enough have been acknowledged; then kill -9
    // while more are in flight.
    let p = producer(&bootstrap, "lz4");
    let mut pending = Vec::new();
    let mut acked: Vec<((i32, i64), Vec<u8>)> = Vec::new();
    for i in 0..20_000u32 {
        let value = format!("record-{i}").into_bytes();
        let rec = FutureRecord::<(), _>::to(topic)
            .payload(&value)
            .partition((i % 4) as i32);
        if let Ok(fut) = p.send_result(rec) {
            pending.push((fut, value));
        }
        if i % 500 == 499 {
            for (fut, value) in pending.drain(..) {
                if let Ok(Ok(d)) = fut.await {
                    acked.push(((d.partition, d.offset), value));
                }
            }
        }
        if acked.len() >= 10_000 {
            break;
        }
    }
    // The check on offsets is only as strong as what the reader saw first.
    let wait = Instant::now();
    while seen.lock().expect("seen").len() < 1_000 && wait.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen.lock().expect("seen").len() >= 1_000,
        "the reader saw records before the kill"
    );
    // More in flight; kill -9 the moment the first of them is acknowledged,
    // so later flushes are mid-write. Those may or may not have landed.
    let mut late = Vec::new();
    for i in 0..5_000u32 {
        let value = format!("late-{i}").into_bytes();
        if let Ok(fut) = p.send_result(
            FutureRecord::<(), _>::to(topic)
                .payload(&value)
                .partition((i % 4) as i32),
        ) {
            late.push((fut, value));
        }
    }
    let mut late = late.into_iter();
    if let Some((fut, value)) = late.next() {
        if let Ok(Ok(d)) = fut.await {
            f.kill9();
            acked.push(((d.partition, d.offset), value));
        }
    }
    f.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().expect("reader");
    drop(p);
    f.restart_after_kill9();
    let bootstrap = f.bootstrap();
    // Read everything back.
    let c = consumer(&bootstrap);
    let mut tpl = TopicPartitionList::new();
    for part in 0..4 {
        tpl.add_partition_offset(topic, part, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let mut stored: HashMap<(i32, i64), Vec<u8>> = HashMap::new();
    let mut idle = 0;
    while idle < 20 {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                idle = 0;
                stored.insert(
                    (m.partition(), m.offset()),
                    m.payload().unwrap_or_default().to_vec(),
                );
            }
            _ => idle += 1,
        }
    }
    for part in 0..4 {
        let n = stored.keys().filter(|(p, _)| *p == part).count() as i64;
        assert!(
            (0..n).all(|o| stored.contains_key(&(part, o))),
            "partition {part}: offsets 0..{n} contiguous"
        );
    }
    assert!(acked.len() >= 10_000);
    for (at, value) in &acked {
        assert_eq!(
            stored.get(at),
            Some(value),
            "acked record at {at:?} lost or changed"
        );
    }
    let seen = seen.lock().expect("seen");
    for (at, value) in seen.iter() {
        assert_eq!(
            stored.get(at),
            Some(value),
            "offset {at:?} was read before the kill, different after"
        );
    }
    eprintln!(
        "acked {}, read before kill {}, stored after {}",
        acked.len(),
        seen.len(),
        stored.len()
    );
}
