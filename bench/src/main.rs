//! `floe-bench`: librdkafka (the `rdkafka` crate) against any bootstrap
//! address, so Floe and a peer broker are measured with the same client and
//! configuration. Scenarios:
//! - `produce`: N records as fast as the broker takes them (or at `--rate`),
//!   acks=all; produce latency is send → delivery report.
//! - `consume`: every record of a filled topic from the start.
//! - `e2e`: produce at `--rate` while a consumer reads (`--consume-topic`, or
//!   the same topic); end-to-end latency is send → consumed, stamped in the
//!   payload.
//!
//! With `--metrics-url` (Floe's `/metrics`), it also reports object-store PUTs
//! per GiB written and PUTs per second per shard over the run.
//!
//! `--serve-mock` runs librdkafka's own mock broker instead (records kept in
//! memory, nothing else done), so another `floe-bench` can measure what the
//! client costs against the cheapest broker there is: the floor under any
//! broker's figures on the same machine.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    Produce,
    Consume,
    E2e,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Payload {
    Random,
    Repeated,
}

#[derive(Parser, Debug)]
#[command(about = "Kafka throughput and latency with librdkafka")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, value_enum, default_value = "produce")]
    scenario: Scenario,
    /// Topic to use; created with --partitions when it does not exist.
    #[arg(long)]
    topic: Option<String>,
    /// `e2e`: read from this topic instead (the output of a transform of
    /// `--topic`, say; it must exist, with as many partitions).
    #[arg(long)]
    consume_topic: Option<String>,
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Record value size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Record values: `random` bytes, like records a producer compressed, or
    /// one `repeated` byte, which the store (SeaweedFS gzips what it finds
    /// compressible) and any codec squeeze to nothing.
    #[arg(long, value_enum, default_value = "random")]
    payload: Payload,
    /// Records per second to offer; 0 means as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    #[arg(long, default_value = "all")]
    acks: String,
    #[arg(long, default_value = "none")]
    compression: String,
    /// Floe's Prometheus endpoint, for object-store cost per run.
    #[arg(long)]
    metrics_url: Option<String>,
    /// Shards the topic spans (Floe: one per tenant today).
    #[arg(long, default_value_t = 1)]
    shards: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Produce: also report where the client's latency went, from
    /// librdkafka's statistics (one window a second): time queued in the
    /// client (`int_latency`, linger included), waiting to be written
    /// (`outbuf_latency`) and the request's round trip (`rtt`: the broker
    /// and the network, as the client sees them).
    #[arg(long)]
    client_stats: bool,
    /// Serve librdkafka's mock broker (one, in this process) with `--topic`
    /// and `--partitions` created, print its bootstrap address, and run until
    /// stdin closes. It answers no CreateTopics: runs against it pass
    /// `--existing-topic`.
    #[arg(long)]
    serve_mock: bool,
    /// The topic exists already: do not ask to create it.
    #[arg(long)]
    existing_topic: bool,
    /// librdkafka settings for every client, as KEY=VALUE (repeatable):
    /// e.g. `-X security.protocol=SASL_PLAINTEXT`.
    #[arg(short = 'X', value_parser = key_value)]
    config: Vec<(String, String)>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    Ok((k.to_string(), v.to_string()))
}

/// A client config: the bootstrap address and every `-X` setting.
fn client(a: &Args) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &a.bootstrap);
    for (k, v) in &a.config {
        c.set(k, v);
    }
    c
}

#[derive(Serialize, Default)]
struct Latency {
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Latency {
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }
}

#[derive(Serialize)]
struct Report {
    scenario: Scenario,
    bootstrap: String,
    topic: String,
    partitions: i32,
    records: u64,
    record_bytes: usize,
    seconds: f64,
    records_per_s: f64,
    mb_per_s: f64,
    produce_latency: Option<Latency>,
    e2e_latency: Option<Latency>,
    puts_per_gib: Option<f64>,
    puts_per_s_per_shard: Option<f64>,
    /// Connecting and the first record's acknowledgement, before the run.
    warmup_ms: Option<f64>,
    /// Consume: from assigning the partitions (already connected, metadata
    /// known) to the first record. `records_per_s` starts its clock at that
    /// record; `records_per_s_from_assign` also counts this wait, which is
    /// the broker's first response.
    first_record_ms: Option<f64>,
    records_per_s_from_assign: Option<f64>,
    /// `--client-stats`: per part of the path, the p50 and p99 of each 1 s
    /// window in which the broker sent or answered something.
    client_windows: Option<ClientWindows>,
}

/// Windows' percentiles, in µs, in the order librdkafka emitted them.
#[derive(Serialize, Default, Clone)]
struct ClientWindows {
    int_latency: Vec<(i64, i64)>,
    outbuf_latency: Vec<(i64, i64)>,
    rtt: Vec<(i64, i64)>,
}

/// Microsecond histograms up to 60 s, 3 significant figures.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

struct Delivery {
    base: Instant,
    latency: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    failed: AtomicU64,
    windows: Mutex<ClientWindows>,
}

impl ClientContext for Delivery {
    fn stats(&self, s: rdkafka::Statistics) {
        let mut guard = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = &mut *guard;
        // Brokers learnt from metadata; the bootstrap entry (id -1) only
        // asked for it.
        for b in s.brokers.values().filter(|b| b.nodeid >= 0) {
            for (win, into) in [
                (&b.int_latency, &mut w.int_latency),
                (&b.outbuf_latency, &mut w.outbuf_latency),
                (&b.rtt, &mut w.rtt),
            ] {
                if let Some(x) = win.as_ref().filter(|x| x.cnt > 0) {
                    into.push((x.p50, x.p99));
                }
            }
        }
    }
}

impl ProducerContext for Delivery {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_us: usize) {
        match result {
            Ok(_) => {
                let us = (self.base.elapsed().as_micros() as u64)
                    .saturating_sub(sent_us as u64)
                    .max(1);
                let mut h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
                let _ = h.record(us);
                self.delivered.fetch_add(1, Relaxed);
            }
            Err(_) => {
                self.failed.fetch_add(1, Relaxed);
            }
        }
    }
}

fn producer(a: &Args, ctx: Delivery) -> anyhow::Result<ThreadedProducer<Delivery>> {
    let mut c = client(a);
    if a.client_stats {
        c.set("statistics.interval.ms", "1000");
    }
    Ok(c.set("acks", &a.acks)
        .set("linger.ms", a.linger_ms.to_string())
        .set("compression.type", &a.compression)
        .set("enable.idempotence", "false")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create_with_context(ctx)?)
}

/// A consumer assigned every partition from the start; returns it and when
/// it was assigned (after it connected and learnt the topic's leaders).
fn consumer(a: &Args, topic: &str, partitions: i32) -> anyhow::Result<(BaseConsumer, Instant)> {
    let c: BaseConsumer = client(a)
        .set("group.id", "floe-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "8388608")
        .create()?;
    c.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    Ok((c, Instant::now()))
}

/// A consumer positioned at the current end of every partition, already
/// past its first fetches.
fn consumer_at_end(a: &Args, topic: &str) -> anyhow::Result<BaseConsumer> {
    let (c, _) = consumer(a, topic, a.partitions)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..a.partitions {
        let (_, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
    }
    c.assign(&tpl)?;
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(500) {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(50)) {
            bail!("{topic} is being written by someone else");
        }
    }
    Ok(c)
}

async fn ensure_topic(a: &Args, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(a).create()?;
    let t = NewTopic::new(topic, a.partitions, TopicReplication::Fixed(1));
    let r = admin.create_topics([&t], &AdminOptions::new()).await?;
    match &r[0] {
        Ok(_) => Ok(()),
        Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => Ok(()),
        Err((_, e)) => bail!("creating {topic}: {e}"),
    }
}

/// `--serve-mock`: librdkafka's mock broker until stdin closes.
fn serve_mock(a: &Args, topic: &str) -> anyhow::Result<()> {
    let mock = rdkafka::mocking::MockCluster::new(1)?;
    mock.create_topic(topic, a.partitions, 1)?;
    println!("{}", mock.bootstrap_servers());
    std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())?;
    Ok(())
}

/// The bytes record values are cut from.
fn payloads(kind: Payload, size: usize) -> Vec<u8> {
    match kind {
        Payload::Repeated => vec![b'x'; size],
        Payload::Random => {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let words = (4 << 20).max(size) / 8 + 1;
            (0..words)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()
                })
                .collect()
        }
    }
}

/// Sends one record and waits for its acknowledgement, so the timed run does
/// not count connecting, metadata and the broker's first write. Returns how
/// long that took.
fn warm_up(p: &ThreadedProducer<Delivery>, topic: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    // Empty: consumers skip it (every timed record carries its send time).
    let rec = BaseRecord::<(), [u8], usize>::with_opaque_to(topic, 0)
        .payload(&[][..])
        .partition(0);
    p.send(rec)
        .map_err(|(e, _)| anyhow::anyhow!("warm-up record: {e}"))?;
    p.flush(Duration::from_secs(60))?;
    let ctx = p.context();
    if ctx.failed.load(Relaxed) > 0 {
        bail!("the warm-up record failed to deliver");
    }
    // Its latency is not the run's.
    ctx.latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .reset();
    ctx.delivered.store(0, Relaxed);
    *ctx.windows.lock().unwrap_or_else(|e| e.into_inner()) = ClientWindows::default();
    Ok(start.elapsed())
}

/// What a produce run measured: its duration, its latencies, the warm-up's
/// duration, and librdkafka's windows (`--client-stats`).
type Produced = (Duration, Histogram<u64>, Duration, ClientWindows);

/// Offers `a.records` records, paced to `a.rate` when set; each payload starts
/// with its send time (µs since `base`). Returns when all are delivered.
fn produce(a: &Args, topic: &str, base: Instant) -> anyhow::Result<Produced> {
    let ctx = Delivery {
        base,
        latency: Mutex::new(histogram()),
        delivered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        windows: Mutex::default(),
    };
    let p = producer(a, ctx)?;
    let warmup = warm_up(&p, topic)?;
    let size = a.size.max(8);
    let values = payloads(a.payload, size);
    let mut value = vec![0u8; size];
    let start = Instant::now();
    for i in 0..a.records {
        // Each record a different window of the pool, so no two are alike.
        let at = (i as usize * 8191) % (values.len() - size + 1);
        value.copy_from_slice(&values[at..at + size]);
        if a.rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / a.rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let sent_us = base.elapsed().as_micros() as u64;
        value[..8].copy_from_slice(&sent_us.to_be_bytes());
        let part = (i % a.partitions as u64) as i32;
        let mut rec = BaseRecord::<(), [u8], usize>::with_opaque_to(topic, sent_us as usize)
            .payload(&value)
            .partition(part);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }
    p.flush(Duration::from_secs(300))?;
    let took = start.elapsed();
    let ctx = p.context();
    let failed = ctx.failed.load(Relaxed);
    if failed > 0 {
        bail!("{failed} records failed to deliver");
    }
    let h = ctx
        .latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    // The window the run ended in (the producer's thread serves it).
    if a.client_stats {
        std::thread::sleep(Duration::from_millis(1100));
    }
    let w = ctx
        .windows
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok((took, h, warmup, w))
}

/// How long a consumer may see nothing before the run is declared stuck.
const STALL: Duration = Duration::from_secs(30);

/// Reads until `want` records arrived; records send → receive latency. The
/// clock starts at the first record, so connecting and looking up offsets
/// are not counted as throughput (as rdkafka_performance does). Returns the
/// run's duration, its latencies and when the first record arrived.
fn consume(
    c: &BaseConsumer,
    want: u64,
    base: Instant,
) -> anyhow::Result<(Duration, Histogram<u64>, Option<Instant>)> {
    let mut h = histogram();
    let mut start = None;
    let mut last = Instant::now();
    let mut n = 0;
    while n < want {
        if last.elapsed() > STALL {
            bail!("no record for {STALL:?} after {n} of {want}");
        }
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        last = Instant::now();
        start.get_or_insert(last);
        let m = m.context("consume")?;
        // A warm-up record has no send time and is not counted.
        let Some(v) = m.payload().filter(|v| v.len() >= 8) else {
            continue;
        };
        let sent = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
        let _ = h.record(
            (base.elapsed().as_micros() as u64)
                .saturating_sub(sent)
                .max(1),
        );
        n += 1;
    }
    Ok((start.map_or(Duration::ZERO, |s| s.elapsed()), h, start))
}

fn store_puts(url: &str) -> anyhow::Result<(f64, f64)> {
    // A tiny HTTP GET keeps the bench free of an HTTP client dependency.
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .context("--metrics-url is http://HOST:PORT/metrics")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, "metrics"));
    let mut s = std::net::TcpStream::connect(host)?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let value = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((
        value("floe_store_puts_total "),
        value("floe_produced_bytes_total "),
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let topic = a
        .topic
        .clone()
        .unwrap_or_else(|| format!("bench-{}p", a.partitions));
    if a.serve_mock {
        return serve_mock(&a, &topic);
    }
    if !a.existing_topic {
        ensure_topic(&a, &topic).await?;
    }
    let before = a.metrics_url.as_deref().map(store_puts).transpose()?;
    let base = Instant::now();
    let mut first_record = None;
    let mut windows = None;
    let (took, produce_h, e2e_h, warmup) = match a.scenario {
        Scenario::Produce => {
            let (took, h, warmup, w) = produce(&a, &topic, base)?;
            windows = Some(w);
            (took, Some(h), None, Some(warmup))
        }
        Scenario::Consume => {
            let (c, assigned) = consumer(&a, &topic, a.partitions)?;
            let (took, _, first) = consume(&c, a.records, base)?;
            first_record = first.map(|f| f - assigned);
            (took, None, None, None)
        }
        Scenario::E2e => {
            // Start from the end, and only produce once the consumer is
            // fetching, so its start-up is not counted as latency.
            let c = consumer_at_end(&a, a.consume_topic.as_deref().unwrap_or(&topic))?;
            let want = a.records;
            let reader = std::thread::spawn(move || consume(&c, want, base));
            let (took, h, warmup, w) = produce(&a, &topic, base)?;
            windows = Some(w);
            let (_, e2e, _) = reader
                .join()
                .map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
            (took, Some(h), Some(e2e), Some(warmup))
        }
    };
    let after = a.metrics_url.as_deref().map(store_puts).transpose()?;
    let secs = took.as_secs_f64();
    let bytes = a.records as f64 * a.size as f64;
    let (puts_per_gib, puts_per_s) = match (before, after) {
        (Some((p0, b0)), Some((p1, b1))) if b1 > b0 => (
            Some((p1 - p0) / ((b1 - b0) / (1u64 << 30) as f64)),
            Some((p1 - p0) / secs / a.shards as f64),
        ),
        _ => (None, None),
    };
    let report = Report {
        scenario: a.scenario,
        bootstrap: a.bootstrap.clone(),
        topic,
        partitions: a.partitions,
        records: a.records,
        record_bytes: a.size,
        seconds: secs,
        records_per_s: a.records as f64 / secs,
        mb_per_s: bytes / secs / 1e6,
        produce_latency: produce_h.as_ref().and_then(Latency::of),
        e2e_latency: e2e_h.as_ref().and_then(Latency::of),
        puts_per_gib,
        puts_per_s_per_shard: puts_per_s,
        warmup_ms: warmup.map(|w| w.as_secs_f64() * 1000.0),
        first_record_ms: first_record.map(|f| f.as_secs_f64() * 1000.0),
        records_per_s_from_assign: first_record
            .map(|f| a.records as f64 / (f.as_secs_f64() + secs)),
        client_windows: windows.filter(|_| a.client_stats),
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{:?} {} x {} B, {} partitions: {:.2}s, {:.0} records/s, {:.1} MB/s",
        report.scenario,
        report.records,
        report.record_bytes,
        report.partitions,
        secs,
        report.records_per_s,
        report.mb_per_s
    );
    if let (Some(f), Some(r)) = (report.first_record_ms, report.records_per_s_from_assign) {
        println!("  first record {f:.0} ms after assigning: {r:.0} records/s counting it");
    }
    for (name, l) in [
        ("produce", &report.produce_latency),
        ("e2e", &report.e2e_latency),
    ] {
        if let Some(l) = l {
            println!(
                "  {name} latency: p50 {} us, p99 {} us, p999 {} us, max {} us",
                l.p50_us, l.p99_us, l.p999_us, l.max_us
            );
        }
    }
    if let Some(w) = &report.client_windows {
        for (name, ws) in [
            ("queued in the client", &w.int_latency),
            ("waiting to be written", &w.outbuf_latency),
            ("request round trip", &w.rtt),
        ] {
            let p99s: Vec<String> = ws.iter().map(|(_, p99)| p99.to_string()).collect();
            println!("  {name}: p99 per 1 s window {} us", p99s.join(", "));
        }
    }
    if let (Some(g), Some(s)) = (report.puts_per_gib, report.puts_per_s_per_shard) {
        println!("  object store: {g:.0} PUTs per GiB written, {s:.1} PUTs/s per shard");
    }
    Ok(())
}
