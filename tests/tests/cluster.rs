//! Cluster mode on a real S3-compatible server (SeaweedFS): two gateways,
//! three workers, each its own process.
//! - The shard's owner is killed with kill -9 twenty times under an
//!   idempotent producer's load, then every worker is stopped and the
//!   cluster scales back from zero.
//! - The owner is paused (SIGSTOP) under load until another worker has taken
//!   the shard, then resumed: the zombie must change nothing.
//!
//!   Checked on the history: every acknowledged record is present exactly
//!   once, at its acknowledged offset, read through the other gateway; in
//!   the zombie test each offset also reads as the same bytes through both.
//! - Transforms run on the shard owner and keep exactly-once outputs and
//!   state across kill -9 of their owner.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use floe_e2e::raw::{produce_request, Conn};
use floe_e2e::records::batch;
use floe_e2e::s3::S3Server;
use floe_e2e::{basic_auth, floe_bin, temp_dir, Floe};
use kafka_protocol::messages::{InitProducerIdRequest, ProduceRequest, TransactionalId};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const ROUNDS: usize = 20;
const PER_ROUND: usize = 100;
const PARTITIONS: i32 = 4;

struct Cluster {
    dir: std::path::PathBuf,
    common: Vec<String>,
    env: Vec<(&'static str, String)>,
    worker_args: Vec<String>,
    workers: Vec<Floe>,
    started: usize,
}

impl Cluster {
    fn args(&self) -> Vec<&str> {
        self.common.iter().map(String::as_str).collect()
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    fn start(&self, role: &'static str, name: &str, extra: &[&str]) -> Floe {
        let mut args = self.args();
        args.extend_from_slice(extra);
        Floe::start_role(role, self.dir.join(name), &args, &self.env())
    }

    fn add_worker(&mut self) {
        self.started += 1;
        let extra: Vec<&str> = self.worker_args.iter().map(String::as_str).collect();
        let w = self.start("worker", &format!("worker{}", self.started), &extra);
        self.workers.push(w);
    }

    /// The worker holding the shard's lease, by its `/metrics`.
    fn owner(&self) -> Option<usize> {
        self.workers.iter().position(|w| {
            w.http_get("/metrics")
                .is_some_and(|m| m.contains("\nfloe_worker_shards_owned 1\n"))
        })
    }
}

fn init_certs(dir: &Path) {
    let ok = std::process::Command::new(floe_bin())
        .args(["cluster", "init", "--out"])
        .arg(dir)
        .status()
        .expect("floe cluster init");
    assert!(ok.success());
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "120000")
        .set("retry.backoff.ms", "50")
        .set("retry.backoff.max.ms", "200")
        .create()
        .expect("producer")
}

async fn send(
    p: &FutureProducer,
    value: String,
    out: &mut Vec<(String, tokio::task::JoinHandle<(i32, i64)>)>,
) {
    let p = p.clone();
    let v = value.clone();
    out.push((
        value,
        tokio::spawn(async move {
            let d = p
                .send(
                    FutureRecord::to("orders").key(&v).payload(&v),
                    Duration::from_secs(120),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("produce {v}: {e}"));
            (d.partition, d.offset)
        }),
    ));
}

/// The S3 server, three workers (with `worker_args`), and gateways a and b.
fn launch(name: &str, worker_args: &[&str]) -> (Option<S3Server>, Cluster, Floe, Floe) {
    launch_with(name, 3, worker_args, true)
}

fn launch_with(
    name: &str,
    workers: usize,
    worker_args: &[&str],
    on_s3: bool,
) -> (Option<S3Server>, Cluster, Floe, Floe) {
    let s3 = on_s3.then(|| S3Server::start("floe").unwrap_or_else(|e| panic!("S3 server: {e}")));
    let dir = temp_dir(name);
    let certs = dir.join("certs");
    init_certs(&certs);
    // Or a local directory every process shares, as on one machine.
    let store = match s3 {
        Some(_) => "s3://floe/cluster".to_string(),
        None => dir.join("store").display().to_string(),
    };
    let mut c = Cluster {
        common: vec![
            "--store".into(),
            store,
            "--cluster-certs".into(),
            certs.display().to_string(),
            "--beat-ms".into(),
            "300".into(),
            "--lease-ms".into(),
            "1500".into(),
        ],
        env: s3.as_ref().map(S3Server::env).unwrap_or_default(),
        dir,
        worker_args: worker_args.iter().map(|a| a.to_string()).collect(),
        workers: Vec::new(),
        started: 0,
    };
    for _ in 0..workers {
        c.add_worker();
    }
    let gw_args = ["--default-partitions", "4", "--admin-token", "t"];
    let a = c.start("gateway", "gateway-a", &gw_args);
    let b = c.start("gateway", "gateway-b", &gw_args);
    (s3, c, a, b)
}

/// Every record of `orders` through `bootstrap`, by (partition, offset),
/// once at least `want` are in; no offset may be read twice.
fn read_all(bootstrap: &str, want: usize) -> HashMap<(i32, i64), String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "checker")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for part in 0..PARTITIONS {
        tpl.add_partition_offset("orders", part, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut seen: HashMap<(i32, i64), String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    // Past `want`, read on until a second passes with nothing new: a
    // duplicate or unacked record at the end must show too.
    let mut quiet_since = None::<Instant>;
    while Instant::now() < deadline {
        if seen.len() >= want
            && quiet_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(1)
        {
            break;
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            quiet_since = None;
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
            assert!(
                seen.insert((m.partition(), m.offset()), v).is_none(),
                "offset {}/{} read twice",
                m.partition(),
                m.offset()
            );
        }
    }
    seen
}

/// Every acked record present once, at its acked offset, and nothing else.
fn check_history(acked: &HashMap<String, (i32, i64)>, seen: &HashMap<(i32, i64), String>) {
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for v in seen.values() {
        *copies.entry(v.as_str()).or_default() += 1;
    }
    for (v, at) in acked {
        // librdkafka acks a batch whose answer was lost with no offset
        // (-1001) when a later batch of its idempotent producer succeeds:
        // such a record must still be present exactly once.
        if at.1 >= 0 {
            assert_eq!(seen.get(at), Some(v), "acked {v} at {at:?}");
        }
        if copies.get(v.as_str()) != Some(&1) {
            let mut found: Vec<_> = seen
                .iter()
                .filter(|(_, s)| *s == v)
                .map(|(k, _)| k)
                .collect();
            found.sort();
            panic!("{v} (acked at {at:?}) is present once, not at {found:?}");
        }
    }
    assert_eq!(
        seen.len(),
        acked.len(),
        "nothing unacked or duplicated shows up"
    );
}

/// Waits for the acks of `sent`: value → (partition, offset).
async fn acks(
    sent: Vec<(String, tokio::task::JoinHandle<(i32, i64)>)>,
    acked: &mut HashMap<String, (i32, i64)>,
) {
    for (v, h) in sent {
        let at = h.await.expect("delivery task");
        assert!(acked.insert(v, at).is_none());
    }
}

/// Metadata through either gateway lists both, the same way, with a
/// topic's partitions led by both.
async fn one_cluster_through_either_gateway(a: &Floe, b: &Floe) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", a.bootstrap())
        .create()
        .expect("admin client");
    let t = NewTopic::new("spread", 16, TopicReplication::Fixed(1));
    let made = admin
        .create_topics([&t], &AdminOptions::new())
        .await
        .expect("create topics");
    assert!(made.iter().all(Result::is_ok), "{made:?}");
    let look = |bootstrap: String| {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("consumer");
        let m = c
            .fetch_metadata(Some("spread"), Duration::from_secs(10))
            .expect("metadata");
        let mut brokers: Vec<(i32, String)> = m
            .brokers()
            .iter()
            .map(|b| (b.id(), format!("{}:{}", b.host(), b.port())))
            .collect();
        brokers.sort();
        let leaders: Vec<i32> = m.topics()[0]
            .partitions()
            .iter()
            .map(|p| p.leader())
            .collect();
        (brokers, leaders)
    };
    // Each gateway sees the other within a refresh or two.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (through_a, through_b) = loop {
        let (x, y) = (look(a.bootstrap()), look(b.bootstrap()));
        if x.0.len() == 2 && y.0.len() == 2 {
            break (x, y);
        }
        assert!(
            Instant::now() < deadline,
            "brokers: {:?} and {:?}",
            x.0,
            y.0
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(through_a, through_b, "one cluster through either gateway");
    let (brokers, leaders) = through_a;
    let addrs: Vec<&str> = brokers.iter().map(|b| b.1.as_str()).collect();
    assert!(addrs.contains(&a.bootstrap().as_str()) && addrs.contains(&b.bootstrap().as_str()));
    assert_eq!(leaders.len(), 16);
    for (id, _) in &brokers {
        assert!(
            leaders.contains(id),
            "gateway {id} leads no partition: {leaders:?}"
        );
    }
}

/// With no worker at all, calls wait at the gateway and then get the
/// retriable errors their clients expect, before a client's 30 s request
/// timeout (the connection's read timeout is 20 s).
fn no_worker_answers(gw: &Floe) {
    let mut raw = Conn::connect(&gw.bootstrap());
    raw.send(
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx"))))
            .with_transaction_timeout_ms(60_000),
    );
    raw.send(9, &produce_request("elsewhere", 0, -1, batch(1, 10)));
    let init = raw.recv::<InitProducerIdRequest>(4);
    assert_eq!(init.error_code, E::CoordinatorLoadInProgress.code());
    let produced = raw.recv::<ProduceRequest>(9);
    let code = produced.responses[0].partition_responses[0].error_code;
    assert_eq!(code, E::NotLeaderOrFollower.code());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_loses_nothing_acked_across_worker_kills_and_scale_from_zero() {
    let (_s3, mut c, a, b) = launch("cluster", &[]);
    one_cluster_through_either_gateway(&a, &b).await;
    let p = producer(&a.bootstrap());
    let mut sent = Vec::new();
    let mut failovers = Vec::new();
    let mut firsts = Vec::new();
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND / 2 {
            send(&p, format!("r{round}-{i}"), &mut sent).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let owner = loop {
            if let Some(o) = c.owner() {
                break o;
            }
            assert!(Instant::now() < deadline, "no worker took the shard");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // kill -9 the owner mid-load, and start a replacement (a new id).
        let mut dead = c.workers.remove(owner);
        let killed = Instant::now();
        dead.kill9();
        c.add_worker();
        let mut after = Vec::new();
        for i in PER_ROUND / 2..PER_ROUND {
            send(&p, format!("r{round}-{i}"), &mut after).await;
        }
        let (v, first) = after.remove(0);
        firsts.push((v, first.await.expect("delivery task")));
        failovers.push(killed.elapsed());
        sent.extend(after);
    }
    let mut acked: HashMap<String, (i32, i64)> = firsts.into_iter().collect();
    acks(sent, &mut acked).await;
    eprintln!("failovers in round order: {failovers:?}");
    failovers.sort();
    eprintln!(
        "failover (kill -9 to first ack), {ROUNDS} rounds: median {:?}, max {:?}",
        failovers[failovers.len() / 2],
        failovers[failovers.len() - 1]
    );

    // Scale to zero: every worker leaves gracefully; then a produce waits
    // at the gateway until a worker starts.
    for w in &mut c.workers {
        assert!(w.stop().success());
    }
    c.workers.clear();
    tokio::time::sleep(Duration::from_secs(2)).await;
    no_worker_answers(&b);
    let mut cold = Vec::new();
    send(&p, "from-zero".into(), &mut cold).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    c.add_worker();
    let (v, h) = cold.remove(0);
    let at = h.await.expect("delivery task");
    eprintln!(
        "cold start (worker start to first ack): {:?}",
        started.elapsed()
    );
    acked.insert(v, at);
    drop(p);

    // Everything, through the other gateway.
    check_history(&acked, &read_all(&b.bootstrap(), acked.len()));
    drop(a);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_that_wakes_after_losing_its_lease_changes_nothing() {
    let (_s3, mut c, a, b) = launch("zombie", &[]);
    let p = producer(&a.bootstrap());
    let mut acked = HashMap::new();
    let mut sent = Vec::new();
    for i in 0..PER_ROUND {
        send(&p, format!("before-{i}"), &mut sent).await;
    }
    acks(std::mem::take(&mut sent), &mut acked).await;
    let owner = c.owner().expect("a worker owns the shard");

    // Pause the owner under load; the records keep coming and another
    // worker takes the shard once the lease is gone.
    let mut paused = c.workers.remove(owner);
    let acquired = |w: &Floe| {
        let m = w.http_get("/metrics").unwrap_or_default();
        metric(&m, "floe_worker_shards_acquired_total").unwrap_or(0.0)
    };
    let acquired_before = acquired(&paused);
    for i in 0..PER_ROUND {
        send(&p, format!("during-{i}"), &mut sent).await;
        if i == PER_ROUND / 4 {
            paused.signal("STOP");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    acks(std::mem::take(&mut sent), &mut acked).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.owner().is_none() {
        assert!(Instant::now() < deadline, "no worker took the shard over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Wake the zombie while the new owner writes: whatever it had pending
    // fails at its next create; it gives the shard up and keeps running.
    paused.signal("CONT");
    for i in 0..PER_ROUND {
        send(&p, format!("after-{i}"), &mut sent).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    acks(sent, &mut acked).await;
    // It gives the shard up; being live again, it may also be the pick
    // and take it anew (a new claim and epoch), which is a hand-over.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = paused.http_get("/metrics").unwrap_or_default();
        if m.contains("\nfloe_worker_shards_owned 0\n") || acquired(&paused) > acquired_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the zombie still owns the shard:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(paused.is_running(), "the zombie carried on");
    drop(p);

    // The same history, and the same bytes at every offset, through both.
    let via_a = read_all(&a.bootstrap(), acked.len());
    let via_b = read_all(&b.bootstrap(), acked.len());
    if via_a != via_b || via_a.len() != acked.len() {
        let by_offset: HashMap<_, _> = acked.iter().map(|(v, at)| (*at, v)).collect();
        let mut at: Vec<_> = via_a
            .keys()
            .chain(via_b.keys())
            .chain(by_offset.keys())
            .collect();
        at.sort();
        at.dedup();
        for at in at {
            eprintln!(
                "{at:?}: a {:?} b {:?} acked {:?}",
                via_a.get(at),
                via_b.get(at),
                by_offset.get(at)
            );
        }
        let implicit: Vec<_> = acked.iter().filter(|(_, at)| at.1 < 0).collect();
        eprintln!("acked without an offset: {implicit:?}");
    }
    check_history(&acked, &via_a);
    assert_eq!(via_a, via_b, "each offset is one set of bytes across reads");
}

/// A `/metrics` series' value, if present.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Shards unloaded for idleness, over every worker.
fn unloads(c: &Cluster) -> f64 {
    c.workers
        .iter()
        .filter_map(|w| w.http_get("/metrics"))
        .filter_map(|m| metric(&m, "floe_worker_shards_unloaded_total"))
        .sum()
}

fn owned_anywhere(c: &Cluster) -> bool {
    c.workers.iter().any(|w| {
        w.http_get("/metrics")
            .and_then(|m| metric(&m, "floe_worker_shards_owned"))
            .is_none_or(|n| n > 0.0)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_shard_unloads_and_idle_consumers_do_not_load_it() {
    idle_shard(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_shard_on_a_local_directory_unloads_and_loads_again() {
    idle_shard(false).await;
}

async fn idle_shard(on_s3: bool) {
    let store = if on_s3 { "S3" } else { "a local directory" };
    let (_s3, c, a, b) = launch_with("idle", 3, &["--idle-timeout-ms", "1500"], on_s3);
    let p = producer(&a.bootstrap());
    let mut acked = HashMap::new();
    let mut sent = Vec::new();
    for i in 0..PER_ROUND {
        send(&p, format!("first-{i}"), &mut sent).await;
    }
    acks(std::mem::take(&mut sent), &mut acked).await;

    // A group member through the other gateway reads everything, commits,
    // then sits at the end: fetches, heartbeats, metadata refreshes.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("group.id", "idlers")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("heartbeat.interval.ms", "300")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .set("fetch.wait.max.ms", "200")
        .create()
        .expect("consumer");
    consumer.subscribe(&["orders"]).expect("subscribe");
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < PER_ROUND {
        assert!(Instant::now() < deadline, "read {got} of {PER_ROUND}");
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            m.expect("a record");
            got += 1;
        }
    }
    consumer
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .expect("commit");

    // The shard unloads though the consumer keeps polling, and stays
    // unloaded for several idle timeouts. Unloaded for idleness, that is:
    // a worker whose lease lapsed under load drops its shards too, and an
    // idle consumer may load them again then.
    let deadline = Instant::now() + Duration::from_secs(30);
    while owned_anywhere(&c) || unloads(&c) == 0.0 {
        assert!(Instant::now() < deadline, "the idle shard stayed loaded");
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            panic!("nothing new was produced: {:?}", m.map(|m| m.offset()));
        }
    }
    let idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_secs(5) {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            panic!("nothing new was produced: {:?}", m.map(|m| m.offset()));
        }
        assert!(!owned_anywhere(&c), "an idle consumer loaded the shard");
    }
    for w in &c.workers {
        let m = w.http_get("/metrics").unwrap_or_default();
        assert_eq!(metric(&m, "floe_worker_idle"), Some(1.0), "{m}");
        // The rest of an autoscaler's signal: CPU and bytes moved.
        assert!(
            metric(&m, "process_cpu_seconds_total").is_some_and(|s| s > 0.0),
            "{m}"
        );
        assert!(
            metric(&m, "floe_worker_rpc_bytes_out_total").is_some(),
            "{m}"
        );
    }
    // Metadata spreads the consumer's partitions and coordinator over both
    // gateways: together they answered it.
    let answers: f64 = [&a, &b]
        .iter()
        .map(|g| {
            let m = g.http_get("/metrics").unwrap_or_default();
            metric(&m, "floe_gateway_idle_answers_total").unwrap_or(0.0)
        })
        .sum();
    assert!(answers > 0.0, "the gateways answered the idle consumer");

    // A produce loads it again; the waiting consumer gets the records.
    let started = Instant::now();
    let mut cold = Vec::new();
    send(&p, "second-0".into(), &mut cold).await;
    acks(cold, &mut acked).await;
    eprintln!(
        "cold start on {store} (idle shard to first produce acked): {:?}",
        started.elapsed()
    );
    for i in 1..10 {
        send(&p, format!("second-{i}"), &mut sent).await;
    }
    acks(sent, &mut acked).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < PER_ROUND + 10 {
        assert!(Instant::now() < deadline, "read {got} after the reload");
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            m.expect("a record");
            got += 1;
        }
    }
    drop(consumer);
    drop(p);
    check_history(&acked, &read_all(&a.bootstrap(), acked.len()));
}

const TENANTS: usize = 24;

/// `floe cluster status`'s output: one line per worker.
fn status(c: &Cluster) -> String {
    let out = std::process::Command::new(floe_bin())
        .args(["cluster", "status", "--store", "s3://floe/cluster"])
        .envs(c.env())
        .output()
        .expect("floe cluster status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Shards owned per worker, by their `/metrics`.
fn owned(c: &Cluster) -> Vec<usize> {
    c.workers
        .iter()
        .map(|w| {
            let m = w.http_get("/metrics").unwrap_or_default();
            metric(&m, "floe_worker_shards_owned").unwrap_or(-1.0) as usize
        })
        .collect()
}

/// An HTTP call as a tenant's key; the status and the body.
fn call(gw: &Floe, auth: &str, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    gw.call_json(auth, method, path, body.as_bytes())
}

/// One record to each tenant over HTTP, through gateways a and b in turn;
/// each acked offset must be the tenant's next.
fn produce_round(tenants: &[(String, String)], gws: [&Floe; 2], acked: &mut [Vec<i64>]) {
    for (i, (t, auth)) in tenants.iter().enumerate() {
        let path = format!("/v3/clusters/floe-{t}/topics/t/records");
        let body = r#"{"partition_id": 0, "value": {"type": "STRING", "data": "x"}}"#;
        let (status, v) = call(gws[i % 2], auth, "POST", &path, body);
        assert_eq!(status, 200, "{t}: {v}");
        let offset = v["offset"].as_i64().expect("an offset");
        assert_eq!(offset, acked[i].len() as i64, "{t}: offsets run on");
        acked[i].push(offset);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_worker_takes_its_share_of_the_shards() {
    let (_s3, mut c, a, b) = launch_with("spread", 2, &[], true);
    let admin = "Authorization: Bearer t";
    let mut tenants = Vec::new();
    for i in 0..TENANTS {
        let t = format!("t{i:02}");
        let body = format!(r#"{{"id": "{t}", "plan": "standard"}}"#);
        let (status, v) = call(&a, admin, "POST", "/admin/v1/tenants", &body);
        assert_eq!(status, 201, "{v}");
        let (status, v) = call(
            &a,
            admin,
            "POST",
            &format!("/admin/v1/tenants/{t}/keys"),
            "",
        );
        assert_eq!(status, 201, "{v}");
        let auth = basic_auth(
            v["key"].as_str().expect("a key"),
            v["secret"].as_str().expect("a secret"),
        );
        tenants.push((t, auth));
    }
    // Gateway b follows the registry: it knows the keys within a refresh.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (t, auth) in &tenants {
        let path = format!("/v3/clusters/floe-{t}/topics");
        loop {
            let (status, v) = call(&b, auth, "POST", &path, r#"{"topic_name": "t"}"#);
            if status == 201 {
                break;
            }
            assert!(
                status == 401 && Instant::now() < deadline,
                "{t}: {status} {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut acked = vec![Vec::new(); TENANTS];
    produce_round(&tenants, [&a, &b], &mut acked);
    let before = owned(&c);
    assert_eq!(
        before.iter().sum::<usize>(),
        TENANTS,
        "{before:?} {}",
        status(&c)
    );
    assert!(
        before.iter().all(|n| *n > 0),
        "both workers own shards: {before:?}"
    );

    // A third worker: the shards it wins move to it as they are used,
    // and nothing else moves.
    c.add_worker();
    // Settled: every shard owned, the same way for five rounds running.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let after = loop {
        produce_round(&tenants, [&b, &a], &mut acked);
        seen.push(owned(&c));
        let last = &seen[seen.len().saturating_sub(5)..];
        let now = seen[seen.len() - 1].clone();
        let settled = last.len() == 5 && last.iter().all(|o| *o == now);
        if settled && now[2] > 0 && now.iter().sum::<usize>() == TENANTS {
            break now;
        }
        assert!(Instant::now() < deadline, "not spread: {seen:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    eprintln!("shards per worker: {before:?} with two workers, {after:?} with three");
    // `floe cluster status` shows the same: three live workers, each
    // tenant's shard on one of them.
    let shown = status(&c);
    assert!(shown.starts_with("3 worker(s) listed\n"), "{shown}");
    let lines: Vec<&str> = shown.lines().skip(1).collect();
    assert!(lines.iter().all(|l| l.contains("  live  ")), "{shown}");
    for (t, _) in &tenants {
        let holders = lines
            .iter()
            .filter(|l| {
                l.rsplit("shards: ")
                    .next()
                    .is_some_and(|s| s.split(',').any(|x| x == t))
            })
            .count();
        assert_eq!(holders, 1, "{t}: {shown}");
    }
    for i in 0..2 {
        assert!(
            after[i] <= before[i],
            "a shard moved between old workers: {before:?} -> {after:?}"
        );
    }

    // Every acked record is there once, at its offset, through either gateway.
    for (i, (t, auth)) in tenants.iter().enumerate() {
        let gw = if i % 2 == 0 { &a } else { &b };
        let path = "/v1/topics/t/partitions/0/records?offset=0";
        let (status, v) = call(gw, auth, "GET", path, "");
        assert_eq!(status, 200, "{t}: {v}");
        let offsets: Vec<i64> = v["records"]
            .as_array()
            .expect("records")
            .iter()
            .map(|r| r["offset"].as_i64().expect("an offset"))
            .collect();
        assert_eq!(offsets, acked[i], "{t}");
    }
}

/// Every value of `topic` (its `partitions`).
fn values_of(config: &ClientConfig, topic: &str, partitions: i32, want: usize) -> Vec<Vec<u8>> {
    floe_e2e::kafka::read_from_start(config, topic, partitions, want)
        .iter()
        .map(|m| m.payload().unwrap_or_default().to_vec())
        .collect()
}

/// Transforms deployed through a gateway run on the tenant's shard owner,
/// which is killed with kill -9 twice while input arrives: every input
/// record is in the output once, and the stateful counter's state moved
/// with its outputs (ordinals 1..=N, each once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_follow_their_shard_across_owner_kills() {
    const ROUNDS: usize = 3;
    const PER_ROUND: usize = 200;
    let (_s3, mut c, a, b) = launch("cluster-transforms", &[]);
    let admin = "Authorization: Bearer t";
    let (status, v) = call(
        &a,
        admin,
        "POST",
        "/admin/v1/tenants",
        r#"{"id": "acme", "plan": "standard"}"#,
    );
    assert_eq!(status, 201, "{v}");
    let (status, v) = call(&a, admin, "POST", "/admin/v1/tenants/acme/keys", "");
    assert_eq!(status, 201, "{v}");
    let (key, secret) = (
        v["key"].as_str().expect("key"),
        v["secret"].as_str().expect("secret"),
    );
    let auth = basic_auth(key, secret);
    for (topic, partitions) in [("in", 2), ("out", 2), ("counted", 1)] {
        let body = format!(r#"{{"topic_name": "{topic}", "partitions_count": {partitions}}}"#);
        let (status, v) = call(&a, &auth, "POST", "/v3/clusters/floe-acme/topics", &body);
        assert_eq!(status, 201, "{v}");
    }
    for (name, output, wasm) in [
        ("copy", "out", floe_fixtures::identity()),
        ("count", "counted", floe_fixtures::counter()),
    ] {
        let path = format!("/v1/transforms/{name}?input=in&output={output}");
        let (status, v) = a.call_json(&auth, "PUT", &path, &wasm);
        assert_eq!(status, 200, "{name}: {v}");
    }

    let p: FutureProducer = floe_e2e::kafka::tenant_client(&a.bootstrap(), key, secret)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "120000")
        .create()
        .expect("producer");
    for round in 0..ROUNDS {
        let mut pending = Vec::new();
        for i in 0..PER_ROUND {
            let (p, v) = (p.clone(), format!("r{round}-{i:03}"));
            pending.push(tokio::spawn(async move {
                p.send(
                    FutureRecord::to("in").key(&v).payload(&v),
                    Duration::from_secs(120),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("produce {v}: {e}"));
            }));
            if i == PER_ROUND / 2 && round + 1 < ROUNDS {
                // kill -9 the owner while the transforms work, and start a
                // replacement.
                tokio::time::sleep(Duration::from_millis(100)).await;
                // (Another shard, the gateways' default tenant's, may be
                // open too: every worker owning one goes.)
                let until = Instant::now() + Duration::from_secs(30);
                let owners = loop {
                    let owners: Vec<usize> = owned(&c)
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| (1..usize::MAX).contains(*n))
                        .map(|(i, _)| i)
                        .collect();
                    if !owners.is_empty() {
                        break owners;
                    }
                    assert!(Instant::now() < until, "no worker owns a shard");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                for &o in owners.iter().rev() {
                    c.workers.remove(o).kill9();
                    c.add_worker();
                }
            }
        }
        for h in pending {
            h.await.expect("delivery task");
        }
    }
    let total = (ROUNDS * PER_ROUND) as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    for name in ["copy", "count"] {
        loop {
            let (status, s) = call(&a, &auth, "GET", &format!("/v1/transforms/{name}"), "");
            if status == 200 && s["records_in"].as_u64() == Some(total) && s["lag"] == 0 {
                assert_eq!(s["errors"], 0, "{s}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not catch up: {status} {s}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Read through the other gateway: each input once in `out`.
    let reader = floe_e2e::kafka::tenant_client(&b.bootstrap(), key, secret);
    let out = values_of(&reader, "out", 2, total as usize);
    let mut copies: HashMap<Vec<u8>, usize> = HashMap::new();
    for v in &out {
        *copies.entry(v.clone()).or_default() += 1;
    }
    assert_eq!(out.len() as u64, total, "nothing lost or repeated");
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND {
            let v = format!("r{round}-{i:03}").into_bytes();
            assert_eq!(copies.get(&v), Some(&1), "{}", String::from_utf8_lossy(&v));
        }
    }
    let mut ordinals: Vec<u64> = values_of(&reader, "counted", 1, total as usize)
        .iter()
        .map(|v| u64::from_le_bytes(v.as_slice().try_into().expect("8 bytes")))
        .collect();
    ordinals.sort_unstable();
    assert_eq!(ordinals, (1..=total).collect::<Vec<_>>());
}
