//! Counters, rendered by hand in the Prometheus text format (a few atomics do
//! not justify a metrics framework).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use floe_storage::store::StoreStats;
use floe_storage::LogStats;
use floe_tenants::usage::{Counts, Totals};

/// Kafka API keys are below this; requests are counted per key.
const API_KEYS: usize = 96;

pub struct Metrics {
    pub store: Arc<StoreStats>,
    pub log: Arc<LogStats>,
    /// Each tenant's metered usage.
    pub tenants: Arc<Totals>,
    requests: [AtomicU64; API_KEYS],
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    pub bad_requests: AtomicU64,
    pub produced_bytes: AtomicU64,
    pub produced_batches: AtomicU64,
    pub fetched_bytes: AtomicU64,
    /// Requests answered with a throttle, and its total in milliseconds.
    pub throttled_requests: AtomicU64,
    pub throttle_ms: AtomicU64,
    /// Produce requests, arrival to every partition durable.
    pub produce_seconds: Histogram,
    /// Series of the process's role in a cluster, rendered last.
    pub extra: std::sync::OnceLock<Render>,
    /// Whether `/readyz` says ready: set once the process serves, cleared
    /// when it starts to drain.
    pub ready: std::sync::atomic::AtomicBool,
}

/// Appends series to a `/metrics` page.
pub type Render = Box<dyn Fn(&mut String) + Send + Sync>;

/// A per-tenant series: name, help, and its value from a tenant's counts.
type Series = (&'static str, &'static str, fn(&Counts) -> f64);

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A Prometheus histogram: cumulative only when rendered.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut total = 0;
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Relaxed);
            match BUCKETS.get(i) {
                Some(b) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {total}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
                }
            }
        }
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

impl Metrics {
    pub fn new(store: Arc<StoreStats>, log: Arc<LogStats>, tenants: Arc<Totals>) -> Self {
        Self {
            store,
            log,
            tenants,
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            connections_opened: AtomicU64::new(0),
            connections_closed: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
            produced_bytes: AtomicU64::new(0),
            produced_batches: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            throttled_requests: AtomicU64::new(0),
            throttle_ms: AtomicU64::new(0),
            produce_seconds: Histogram::new(),
            extra: std::sync::OnceLock::new(),
            ready: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn request(&self, api_key: i16) {
        if let Some(c) = usize::try_from(api_key)
            .ok()
            .and_then(|k| self.requests.get(k))
        {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn throttled(&self, d: std::time::Duration) {
        self.throttled_requests.fetch_add(1, Relaxed);
        self.throttle_ms.fetch_add(d.as_millis() as u64, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        };
        counter(
            "floe_connections_opened_total",
            "Kafka connections accepted.",
            &self.connections_opened,
        );
        counter(
            "floe_connections_closed_total",
            "Kafka connections closed.",
            &self.connections_closed,
        );
        counter(
            "floe_bad_requests_total",
            "Requests that closed their connection.",
            &self.bad_requests,
        );
        counter(
            "floe_produced_bytes_total",
            "Record-batch bytes acknowledged.",
            &self.produced_bytes,
        );
        counter(
            "floe_produced_batches_total",
            "Record batches acknowledged.",
            &self.produced_batches,
        );
        counter(
            "floe_fetched_bytes_total",
            "Record-batch bytes served.",
            &self.fetched_bytes,
        );
        counter(
            "floe_throttled_requests_total",
            "Requests answered with a quota throttle (KIP-219).",
            &self.throttled_requests,
        );
        counter(
            "floe_throttle_milliseconds_total",
            "Milliseconds of throttle given to connections.",
            &self.throttle_ms,
        );
        let s = &self.store;
        counter(
            "floe_store_puts_total",
            "Object-store PUTs (and copies).",
            &s.puts,
        );
        counter(
            "floe_store_put_bytes_total",
            "Bytes PUT to the object store.",
            &s.put_bytes,
        );
        counter("floe_store_gets_total", "Object-store GETs.", &s.gets);
        counter(
            "floe_store_get_bytes_total",
            "Bytes read from the object store.",
            &s.get_bytes,
        );
        counter("floe_store_lists_total", "Object-store LISTs.", &s.lists);
        counter(
            "floe_store_deletes_total",
            "Object-store DELETEs.",
            &s.deletes,
        );
        counter(
            "floe_store_errors_total",
            "Object-store calls that failed.",
            &s.errors,
        );
        let l = &self.log;
        counter(
            "floe_cache_hits_total",
            "Read-cache blocks found in memory.",
            &l.cache_hits,
        );
        counter(
            "floe_cache_misses_total",
            "Read-cache blocks fetched from the store.",
            &l.cache_misses,
        );
        counter(
            "floe_compactions_total",
            "Compactions committed.",
            &l.compactions,
        );
        counter(
            "floe_compacted_bytes_total",
            "Batch bytes moved into data objects.",
            &l.compacted_bytes,
        );
        counter(
            "floe_deleted_objects_total",
            "Garbage objects deleted.",
            &l.deleted_objects,
        );
        counter(
            "floe_checkpoints_total",
            "Checkpoints written.",
            &l.checkpoints,
        );
        counter(
            "floe_truncations_total",
            "DeleteRecords log-start moves.",
            &l.truncations,
        );
        counter(
            "floe_idempotent_duplicates_total",
            "Idempotent batches recognised as retries and answered with their first offset.",
            &l.duplicates,
        );
        counter(
            "floe_expired_producers_total",
            "Idempotent producers forgotten after producer.id.expiration.ms.",
            &l.expired_producers,
        );
        self.produce_seconds.render(
            &mut out,
            "floe_produce_duration_seconds",
            "Produce requests, from arrival until durable (acks=0 included).",
        );
        let _ = writeln!(
            out,
            "# HELP floe_kafka_requests_total Kafka requests by API key."
        );
        let _ = writeln!(out, "# TYPE floe_kafka_requests_total counter");
        for (key, c) in self.requests.iter().enumerate() {
            let n = c.load(Relaxed);
            if n > 0 {
                let _ = writeln!(out, "floe_kafka_requests_total{{api_key=\"{key}\"}} {n}");
            }
        }
        if let Some(cpu) = cpu_seconds() {
            let name = "process_cpu_seconds_total";
            let _ = writeln!(
                out,
                "# HELP {name} User and system CPU time of this process.\n# TYPE {name} counter\n{name} {cpu:.2}"
            );
        }
        self.render_tenants(&mut out);
        if let Some(extra) = self.extra.get() {
            extra(&mut out);
        }
        out
    }

    /// Metered usage by tenant (tenant ids are path-safe, so label-safe).
    fn render_tenants(&self, out: &mut String) {
        let tenants = self.tenants.snapshot();
        let series: [Series; 7] = [
            (
                "floe_tenant_bytes_in_total",
                "Record-batch bytes produced, as sent.",
                |c| c.bytes_in as f64,
            ),
            (
                "floe_tenant_bytes_out_total",
                "Record-batch bytes fetched.",
                |c| c.bytes_out as f64,
            ),
            ("floe_tenant_requests_total", "Requests answered.", |c| {
                c.requests as f64
            }),
            (
                "floe_tenant_connection_seconds_total",
                "Connection time.",
                |c| c.connection_ms as f64 / 1e3,
            ),
            (
                "floe_tenant_stored_byte_hours_total",
                "Record bytes held, over time.",
                |c| c.stored_byte_seconds as f64 / 3600.0,
            ),
            (
                "floe_tenant_partition_hours_total",
                "Partitions held, over time.",
                |c| c.partition_ms as f64 / 3.6e6,
            ),
            (
                "floe_tenant_wasm_fuel_total",
                "Fuel burned by the tenant's Wasm transforms.",
                |c| c.wasm_fuel as f64,
            ),
        ];
        for (name, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (t, c) in &tenants {
                let _ = writeln!(out, "{name}{{tenant=\"{t}\"}} {}", value(c));
            }
        }
    }
}

/// This process's CPU time from `/proc/self/stat` (Linux; `None` elsewhere):
/// an autoscaler's load signal.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // anything: state is field 3, utime and stime fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // In clock ticks: USER_HZ, which Linux fixes at 100 for user space.
    Some((utime + stime) as f64 / 100.0)
}
