//! `floe cluster local` on a real S3-compatible server (SeaweedFS): a load
//! ramp 0 → high → 0 through its gateway, from four tenants (four shards).
//! The workers go 0 → ≥2 → 0 by the autoscaling policy; every delivery
//! succeeds (librdkafka retries the retriable errors of shards moving
//! between workers) and every record is read back exactly once.
//!
//! The policy is scaled down to a test's size: 64 KiB/s per worker, polled
//! every 200 ms, a 2 s cooldown; workers unload a shard idle for 2 s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floe_e2e::s3::S3Server;
use floe_e2e::tenant::Tenant;
use floe_e2e::{temp_dir, Floe};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const TENANTS: usize = 4;
/// Records per tenant per second, of 1 KiB: 4 × 100 KiB/s in all.
const RATE: usize = 100;
const MAX_WORKERS: u32 = 3;

/// A series of the `/metrics` served at `port`.
fn series(port: u16, name: &str) -> Option<u64> {
    let m = floe_e2e::http_request(port, "GET", "/metrics", &[], b"")?;
    let line = m.lines().find(|l| l.starts_with(&format!("{name} ")))?;
    line[name.len() + 1..].trim().parse().ok()
}

/// Watches the worker count: (seconds since start, workers) at each change.
struct Watch {
    changes: Arc<Mutex<Vec<(Duration, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(f: &Floe, t0: Instant) -> Self {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let http_port = f.http_port;
        let (c, s) = (changes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut last = None;
            while !s.load(Relaxed) {
                if let Some(n) = series(http_port, "floe_autoscaler_workers") {
                    if last != Some(n) {
                        c.lock().expect("watch").push((t0.elapsed(), n));
                        last = Some(n);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            changes,
            stop,
            thread: Some(thread),
        }
    }

    fn now(&self) -> u64 {
        self.changes
            .lock()
            .expect("watch")
            .last()
            .map_or(0, |c| c.1)
    }

    /// When the count first reached `n` or more (`at_least`) or `n` or
    /// fewer, after `since`.
    fn first(&self, since: Duration, at_least: bool, n: u64) -> Option<Duration> {
        self.changes
            .lock()
            .expect("watch")
            .iter()
            .find(|(t, w)| *t >= since && if at_least { *w >= n } else { *w <= n })
            .map(|c| c.0)
    }

    fn wait_for(&self, at_least: bool, n: u64, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            let w = self.now();
            if if at_least { w >= n } else { w <= n } {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One tenant's load: RATE records a second until `stop`, each awaited.
async fn load(p: FutureProducer, tenant: String, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut pending = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let mut i = 0usize;
    let pad = "x".repeat(1000);
    while !stop.load(Relaxed) {
        pace.tick().await;
        for _ in 0..RATE / 10 {
            let v = format!("{tenant}-{i:06}-{pad}");
            i += 1;
            let p = p.clone();
            pending.push(tokio::spawn(async move {
                p.send(
                    FutureRecord::to("events").key(&v[..16]).payload(&v),
                    Duration::from_secs(120),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("produce {}: {e}", &v[..16]));
                v
            }));
        }
    }
    let mut acked = Vec::with_capacity(pending.len());
    for h in pending {
        acked.push(h.await.expect("delivery task"));
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_ramp_scales_workers_out_from_zero_and_back() {
    let s3 = S3Server::start("floe").unwrap_or_else(|e| panic!("S3 server: {e}"));
    let dir = temp_dir("autoscale");
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let max = MAX_WORKERS.to_string();
    let args = [
        "--store",
        "s3://floe/local",
        "--admin-token",
        "t",
        "--auth",
        "required",
        "--beat-ms",
        "200",
        "--lease-ms",
        "1000",
        "--idle-timeout-ms",
        "2000",
        "--worker-grace-s",
        "30",
        "--max-workers",
        &max,
        "--bytes-per-worker",
        "65536",
        "--polling-ms",
        "200",
        "--cooldown-ms",
        "2000",
        "--scale-down-window-ms",
        "2000",
        "--rate-window-ms",
        "2000",
    ];
    let f = Floe::start_role("cluster local", dir.join("local"), &args, &env);
    let t0 = Instant::now();
    let watch = Watch::start(&f, t0);
    // Tenants are the registry's: no worker is needed for them.
    let tenants: Vec<Tenant> = (0..TENANTS)
        .map(|i| Tenant::new_on(&f, "t", &format!("ramp{i}"), "unlimited"))
        .collect();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(watch.now(), 0, "no load, no workers");

    // Up: the first calls wait for a shard no worker holds, which starts one;
    // the throughput then asks for more.
    let stop = Arc::new(AtomicBool::new(false));
    let load_start = t0.elapsed();
    let loads: Vec<_> = tenants
        .iter()
        .map(|t| {
            let p: FutureProducer = t
                .kafka(&f)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                .set("message.timeout.ms", "120000")
                .set("retry.backoff.ms", "50")
                .set("retry.backoff.max.ms", "500")
                .create()
                .expect("producer");
            tokio::spawn(load(p, t.name.clone(), stop.clone()))
        })
        .collect();
    let scaled_out =
        tokio::task::block_in_place(|| watch.wait_for(true, 2, Duration::from_secs(60)));
    assert!(
        scaled_out,
        "workers never reached 2 under load; see {:?}",
        dir
    );
    // Keep the load on while shards move to the new workers.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let peak = watch
        .changes
        .lock()
        .expect("watch")
        .iter()
        .map(|c| c.1)
        .max();
    assert!(peak <= Some(u64::from(MAX_WORKERS)), "{peak:?} workers");
    stop.store(true, Relaxed);
    let mut acked: HashMap<String, Vec<String>> = HashMap::new();
    for (t, l) in tenants.iter().zip(loads) {
        acked.insert(t.name.clone(), l.await.expect("load"));
    }
    let load_end = t0.elapsed();

    // Every acknowledged record, once, read while workers are still up.
    for t in &tenants {
        let want = &acked[&t.name];
        let got = tokio::task::block_in_place(|| {
            floe_e2e::kafka::read_from_start(&t.kafka(&f), "events", 1, want.len())
        });
        let mut seen: HashMap<String, usize> = HashMap::new();
        for m in &got {
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
            *seen.entry(v).or_default() += 1;
        }
        for v in want {
            assert_eq!(
                seen.get(v),
                Some(&1),
                "{}: {} read {:?} times",
                t.name,
                &v[..16],
                seen.get(v)
            );
        }
        assert_eq!(
            got.len(),
            want.len(),
            "{}: records beyond those acknowledged",
            t.name
        );
    }

    // Down: idle shards unload, the cooldown passes, the workers stop.
    let scaled_in =
        tokio::task::block_in_place(|| watch.wait_for(false, 0, Duration::from_secs(90)));
    assert!(scaled_in, "workers never went back to 0; see {:?}", dir);
    assert_eq!(
        series(f.http_port, "floe_autoscaler_workers_exited_total"),
        Some(0)
    );

    let at = |at_least, n| {
        watch
            .first(load_start, at_least, n)
            .map(|t| (t - load_start).as_secs_f64())
    };
    let records: usize = acked.values().map(Vec::len).sum();
    eprintln!(
        "autoscale: {records} records acknowledged and read back once; \
         load start → 1 worker {:.1?} s, → 2 workers {:.1?} s; \
         load end → 0 workers {:.1?} s; worker counts {:?}",
        at(true, 1),
        at(true, 2),
        watch
            .first(load_end, false, 0)
            .map(|t| (t - load_end).as_secs_f64()),
        watch.changes.lock().expect("watch").clone()
    );
}
