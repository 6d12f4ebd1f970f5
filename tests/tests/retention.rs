//! Compaction, retention and DeleteRecords against the real binary on a local
//! directory, with maintenance timings shortened by flags: fetches stay
//! byte-identical through compaction and a cold restart, expired data and its
//! objects go, and a long steady produce keeps the object count bounded.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use floe_e2e::raw::{produce_request, topic_name as name, Conn};
use floe_e2e::records::{batch, batch_at};
use floe_e2e::{temp_dir, Floe};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

/// Maintenance in milliseconds instead of minutes.
const FAST: &[&str] = &[
    "--compact-bytes",
    "262144",
    "--compact-after-ms",
    "300",
    "--sweep-grace-ms",
    "200",
    "--checkpoint-interval-ms",
    "200",
    "--maintain-every-ms",
    "50",
    "--retention-every-ms",
    "200",
    "--block-bytes",
    "65536",
];

const OFFSET_OUT_OF_RANGE: i16 = 1;

fn create(c: &mut Conn, topic: &str, partitions: i32, retention_ms: i64) {
    create_with(c, topic, partitions, &[("retention.ms", retention_ms)]);
}

fn create_with(c: &mut Conn, topic: &str, partitions: i32, configs: &[(&'static str, i64)]) {
    let configs = configs
        .iter()
        .map(|(k, v)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_static_str(k))
                .with_value(Some(StrBytes::from_string(v.to_string())))
        })
        .collect();
    let t = CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
        .with_configs(configs);
    let r = c.call(7, &CreateTopicsRequest::default().with_topics(vec![t]));
    assert_eq!(r.topics[0].error_code, 0, "create {topic}");
}

fn produce(c: &mut Conn, topic: &str, partition: i32, records: Bytes) -> i64 {
    let r = c.call(9, &produce_request(topic, partition, -1, records));
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0, "produce to {topic}[{partition}]");
    p.base_offset
}

fn fetch(c: &mut Conn, topic: &str, partition: i32, offset: i64) -> (i16, i64, Bytes) {
    c.fetch(topic, partition, offset)
}

/// Every stored byte of a partition, fetched from its log start.
fn fetch_all(c: &mut Conn, topic: &str, partition: i32) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = earliest(c, topic, partition);
    loop {
        let (err, hw, records) = fetch(c, topic, partition, at);
        assert_eq!(err, 0, "fetch {topic}[{partition}] at {at}");
        if at >= hw {
            return out;
        }
        let mut rest = records;
        while rest.len() >= 12 {
            let len = i32::from_be_bytes(rest[8..12].try_into().expect("4 bytes")) as usize + 12;
            let b = rest.split_to(len.min(rest.len()));
            let base = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
            let last_delta = i32::from_be_bytes(b[23..27].try_into().expect("4 bytes")) as i64;
            at = base + last_delta + 1;
            out.push(b);
        }
    }
}

fn earliest(c: &mut Conn, topic: &str, partition: i32) -> i64 {
    c.list_offset(topic, partition, -2).offset
}

fn metric(f: &Floe, name: &str) -> u64 {
    let text = f.http_get("/metrics").unwrap_or_default();
    let line = text.lines().find(|l| l.split(' ').next() == Some(name));
    line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// (files, bytes) of the shard's WAL and data objects.
fn objects(data_dir: &Path) -> (usize, u64) {
    let shard = data_dir.join("tenants/default/shards/0");
    let mut n = (0, 0);
    for dir in ["wal", "data"] {
        for e in std::fs::read_dir(shard.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            n.0 += 1;
            n.1 += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    n
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[test]
fn fetches_are_byte_identical_through_compaction_and_a_cold_restart() {
    let dir = temp_dir("compaction");
    let mut f = Floe::start(dir.clone(), FAST);
    let mut c = Conn::connect(&f.bootstrap());
    create(&mut c, "c", 4, -1);
    // One small WAL object per request.
    for i in 0..400 {
        produce(&mut c, "c", i % 4, batch(20, 100 + (i as usize * 37) % 400));
    }
    let before: Vec<Vec<Bytes>> = (0..4).map(|p| fetch_all(&mut c, "c", p)).collect();
    assert_eq!(before.iter().map(Vec::len).sum::<usize>(), 400);
    let (wal_before, _) = objects(&dir);
    wait_until("compaction and deletes", Duration::from_secs(60), || {
        metric(&f, "floe_compactions_total") >= 2 && objects(&dir).0 * 4 < wal_before
    });
    let after: Vec<Vec<Bytes>> = (0..4).map(|p| fetch_all(&mut c, "c", p)).collect();
    assert!(after == before, "fetches after compaction differ");
    let data = std::fs::read_dir(dir.join("tenants/default/shards/0/data"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(data >= 2, "compaction wrote data objects ({data})");
    eprintln!(
        "objects: {wal_before} before compaction, {:?} after",
        objects(&dir)
    );
    // A new process has nothing in memory: every batch comes from the store.
    f.restart();
    let mut c = Conn::connect(&f.bootstrap());
    let cold: Vec<Vec<Bytes>> = (0..4).map(|p| fetch_all(&mut c, "c", p)).collect();
    assert!(cold == before, "fetches after a restart differ");
    assert!(
        metric(&f, "floe_cache_misses_total") > 0,
        "the restarted process read from the store"
    );
}

#[test]
fn retention_ms_drops_old_data_and_its_objects() {
    let dir = temp_dir("retention");
    let f = Floe::start(dir.clone(), FAST);
    let mut c = Conn::connect(&f.bootstrap());
    create(&mut c, "keep", 1, -1);
    produce(&mut c, "keep", 0, batch(5, 10));
    let (_, empty_bytes) = objects(&dir);
    create(&mut c, "r", 2, 2000);
    for i in 0..100 {
        produce(&mut c, "r", i % 2, batch_at(20, 1000, now_ms()));
    }
    let (_, full_bytes) = objects(&dir);
    assert!(full_bytes > empty_bytes + 1_000_000, "2 MB written");
    assert_eq!(earliest(&mut c, "r", 0), 0);
    wait_until("retention", Duration::from_secs(30), || {
        (0..2).all(|p| earliest(&mut c, "r", p) == 1000)
    });
    let (err, hw, _) = fetch(&mut c, "r", 0, 0);
    assert_eq!(
        (err, hw),
        (OFFSET_OUT_OF_RANGE, 1000),
        "fetch below the log start"
    );
    // The objects that held the expired records go too.
    wait_until("expired objects deleted", Duration::from_secs(60), || {
        objects(&dir).1 < empty_bytes + 200_000
    });
    // Other topics are untouched, and the expired one takes new records on.
    assert_eq!(fetch_all(&mut c, "keep", 0).len(), 1);
    assert_eq!(produce(&mut c, "r", 0, batch_at(1, 10, now_ms())), 1000);
    let (err, hw, records) = fetch(&mut c, "r", 0, 1000);
    assert_eq!((err, hw), (0, 1001));
    assert!(!records.is_empty());
}

#[test]
fn retention_bytes_keeps_the_newest_batches_within_the_bound() {
    let f = Floe::start(temp_dir("retention-bytes"), FAST);
    let mut c = Conn::connect(&f.bootstrap());
    create_with(
        &mut c,
        "b",
        1,
        &[("retention.ms", -1), ("retention.bytes", 50_000)],
    );
    let one = batch(10, 1000);
    for _ in 0..40 {
        produce(&mut c, "b", 0, one.clone());
    }
    // 40 batches of ~10 KB: as in Kafka, old ones go while at least
    // 50,000 bytes stay.
    let keep = 50_000_usize.div_ceil(one.len()) as i64;
    wait_until("retention.bytes", Duration::from_secs(30), || {
        earliest(&mut c, "b", 0) == (40 - keep) * 10
    });
    let kept = fetch_all(&mut c, "b", 0);
    assert_eq!(kept.len() as i64, keep);
    let bytes = kept.iter().map(Bytes::len).sum::<usize>();
    assert!(
        (50_000..50_000 + one.len()).contains(&bytes),
        "{bytes} kept"
    );
    assert_eq!(fetch(&mut c, "b", 0, 0).0, OFFSET_OUT_OF_RANGE);
}

#[test]
fn delete_records_moves_the_log_start() {
    let f = Floe::start(temp_dir("delete-records"), FAST);
    let mut c = Conn::connect(&f.bootstrap());
    create(&mut c, "d", 1, -1);
    for _ in 0..10 {
        produce(&mut c, "d", 0, batch(10, 10));
    }
    let delete = |c: &mut Conn, offset: i64| {
        let p = DeleteRecordsPartition::default()
            .with_partition_index(0)
            .with_offset(offset);
        let t = DeleteRecordsTopic::default()
            .with_name(name("d"))
            .with_partitions(vec![p]);
        let r = c.call(
            2,
            &DeleteRecordsRequest::default()
                .with_topics(vec![t])
                .with_timeout_ms(5000),
        );
        let p = &r.topics[0].partitions[0];
        (p.error_code, p.low_watermark)
    };
    assert_eq!(delete(&mut c, 35), (0, 35));
    assert_eq!(earliest(&mut c, "d", 0), 35);
    assert_eq!(fetch(&mut c, "d", 0, 29).0, OFFSET_OUT_OF_RANGE);
    // The batch holding offset 35 is served whole; the client skips 30-34.
    let (err, _, records) = fetch(&mut c, "d", 0, 35);
    assert_eq!(err, 0);
    assert_eq!(
        i64::from_be_bytes(records[..8].try_into().expect("8 bytes")),
        30
    );
    assert_eq!(
        delete(&mut c, 20),
        (0, 35),
        "the log start never moves back"
    );
    assert_eq!(
        delete(&mut c, 101).0,
        OFFSET_OUT_OF_RANGE,
        "past the high watermark"
    );
    assert_eq!(delete(&mut c, -1), (0, 100), "-1 means the high watermark");
    let p = DeleteRecordsPartition::default()
        .with_partition_index(7)
        .with_offset(1);
    let t = DeleteRecordsTopic::default()
        .with_name(name("d"))
        .with_partitions(vec![p]);
    let r = c.call(2, &DeleteRecordsRequest::default().with_topics(vec![t]));
    assert_eq!(r.topics[0].partitions[0].error_code, 3, "unknown partition");
}

/// Minutes of steady produce with a short retention: the object count
/// levels off instead of growing with the data. `FLOE_LONG_RUN_SECS` sets
/// the length (default 120).
#[test]
fn steady_produce_keeps_the_object_count_bounded() {
    let secs: u64 = std::env::var("FLOE_LONG_RUN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let dir = temp_dir("long-run");
    let f = Floe::start(dir.clone(), FAST);
    let mut c = Conn::connect(&f.bootstrap());
    create(&mut c, "steady", 8, 5000);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut i = 0;
    let mut bytes = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        let b = batch_at(10, 200, now_ms());
        bytes += b.len() as u64;
        produce(&mut c, "steady", i % 8, b);
        i += 1;
        if started.elapsed() >= next_sample {
            samples.push(objects(&dir).0);
            next_sample += Duration::from_secs(secs / 20).max(Duration::from_secs(1));
        }
        // About 200 produces a second: far below the size trigger, so each
        // is its own small WAL object without compaction.
        std::thread::sleep(Duration::from_millis(5));
    }
    let third = samples.len() / 3;
    let early = *samples[..third].iter().max().unwrap_or(&0);
    let late = *samples[2 * third..].iter().max().unwrap_or(&0);
    eprintln!(
        "long run: {secs} s, {i} produces, {} MiB, {} compactions, objects sampled {samples:?}",
        bytes >> 20,
        metric(&f, "floe_compactions_total")
    );
    assert!(i as usize > samples.len() * 20, "the run produced steadily");
    assert!(
        late <= early * 3 / 2 + 20,
        "object count grew from {early} to {late} under steady load"
    );
}
