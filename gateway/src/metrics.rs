//! The gateway's and the process's series, through the OpenTelemetry
//! metrics API (`floe_common::telemetry`), and `/metrics`: what the SDK's
//! pull reader collects, encoded in the Prometheus text format
//! ([`exposition`]). Hot paths add to atomics; callbacks read them at each
//! collection.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use floe_common::telemetry;
use floe_storage::store::StoreStats;
use floe_storage::LogStats;
use floe_tenants::usage::{Counts, Totals};
use kafka_protocol::messages::ApiKey;
use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{
    AggregatedMetrics, HistogramDataPoint, Metric, MetricData, ResourceMetrics,
};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};

/// Kafka API keys are below this; requests are counted per key.
const API_KEYS: usize = 96;

pub struct Metrics {
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
    pub produce_seconds: Histogram<f64>,
    /// Kafka requests by API, arrival to answer (`request_took`).
    request_seconds: Histogram<f64>,
    /// Each API key's `api` attribute, named once rather than per request.
    api_names: Vec<KeyValue>,
    /// Whether `/readyz` says ready: set once the process serves, cleared
    /// when it starts to drain.
    pub ready: std::sync::atomic::AtomicBool,
}

/// A per-tenant series: name, help, and its value from a tenant's counts.
type TenantSeries = (&'static str, &'static str, fn(&Counts) -> f64);

impl Metrics {
    /// The gateway's series, and the process's: its store calls, its logs'
    /// work, its tenants' metered usage, its CPU time.
    pub fn new(store: Arc<StoreStats>, log: Arc<LogStats>, tenants: Arc<Totals>) -> Arc<Self> {
        let m = telemetry::meter();
        let me = Arc::new(Self {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            connections_opened: AtomicU64::new(0),
            connections_closed: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
            produced_bytes: AtomicU64::new(0),
            produced_batches: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            throttled_requests: AtomicU64::new(0),
            throttle_ms: AtomicU64::new(0),
            produce_seconds: telemetry::seconds(
                &m,
                "floe_produce_duration_seconds",
                "Produce requests, from arrival until durable (acks=0 included).",
            ),
            request_seconds: telemetry::seconds(
                &m,
                "floe_kafka_request_duration_seconds",
                "Kafka requests by API, from decoded to answered.",
            ),
            api_names: (0..API_KEYS)
                .map(|key| {
                    let name = i16::try_from(key)
                        .ok()
                        .and_then(|k| ApiKey::try_from(k).ok())
                        .map_or_else(|| key.to_string(), |a| format!("{a:?}"));
                    KeyValue::new("api", name)
                })
                .collect(),
            ready: std::sync::atomic::AtomicBool::new(false),
        });
        me.register(&m);
        register_store(&m, store);
        register_log(&m, log);
        register_tenants(&m, tenants);
        if cpu_seconds().is_some() {
            m.f64_observable_counter("process_cpu_seconds_total")
                .with_description("User and system CPU time of this process.")
                .with_callback(|o| o.observe(cpu_seconds().unwrap_or(0.0), &[]))
                .build();
        }
        me
    }

    fn register(self: &Arc<Self>, m: &Meter) {
        let series: [telemetry::Series<Metrics>; 8] = [
            (
                "floe_connections_opened_total",
                "Kafka connections accepted.",
                |s| &s.connections_opened,
            ),
            (
                "floe_connections_closed_total",
                "Kafka connections closed.",
                |s| &s.connections_closed,
            ),
            (
                "floe_bad_requests_total",
                "Requests that closed their connection.",
                |s| &s.bad_requests,
            ),
            (
                "floe_produced_bytes_total",
                "Record-batch bytes acknowledged.",
                |s| &s.produced_bytes,
            ),
            (
                "floe_produced_batches_total",
                "Record batches acknowledged.",
                |s| &s.produced_batches,
            ),
            (
                "floe_fetched_bytes_total",
                "Record-batch bytes served.",
                |s| &s.fetched_bytes,
            ),
            (
                "floe_throttled_requests_total",
                "Requests answered with a quota throttle (KIP-219).",
                |s| &s.throttled_requests,
            ),
            (
                "floe_throttle_milliseconds_total",
                "Milliseconds of throttle given to connections.",
                |s| &s.throttle_ms,
            ),
        ];
        telemetry::counters(m, self, &series);
        let me = Arc::downgrade(self);
        m.u64_observable_counter("floe_kafka_requests_total")
            .with_description("Kafka requests by API key.")
            .with_callback(move |o| {
                let Some(s) = me.upgrade() else { return };
                for (key, c) in s.requests.iter().enumerate() {
                    let n = c.load(Relaxed);
                    if n > 0 {
                        o.observe(n, &[KeyValue::new("api_key", key.to_string())]);
                    }
                }
            })
            .build();
    }

    pub fn request(&self, api_key: i16) {
        if let Some(c) = usize::try_from(api_key)
            .ok()
            .and_then(|k| self.requests.get(k))
        {
            c.fetch_add(1, Relaxed);
        }
    }

    /// A Kafka request of `api` answered `took` after it was decoded.
    pub fn request_took(&self, api: ApiKey, took: std::time::Duration) {
        if let Some(name) = self.api_names.get(api as i16 as usize) {
            self.request_seconds
                .record(took.as_secs_f64(), std::slice::from_ref(name));
        }
    }

    pub fn throttled(&self, d: std::time::Duration) {
        self.throttled_requests.fetch_add(1, Relaxed);
        self.throttle_ms.fetch_add(d.as_millis() as u64, Relaxed);
    }
}

fn register_store(m: &Meter, s: Arc<StoreStats>) {
    let series: [telemetry::Series<StoreStats>; 7] = [
        (
            "floe_store_puts_total",
            "Object-store PUTs (and copies).",
            |s| &s.puts,
        ),
        (
            "floe_store_put_bytes_total",
            "Bytes PUT to the object store.",
            |s| &s.put_bytes,
        ),
        ("floe_store_gets_total", "Object-store GETs.", |s| &s.gets),
        (
            "floe_store_get_bytes_total",
            "Bytes read from the object store.",
            |s| &s.get_bytes,
        ),
        ("floe_store_lists_total", "Object-store LISTs.", |s| {
            &s.lists
        }),
        ("floe_store_deletes_total", "Object-store DELETEs.", |s| {
            &s.deletes
        }),
        (
            "floe_store_errors_total",
            "Object-store calls that failed.",
            |s| &s.errors,
        ),
    ];
    telemetry::counters(m, &s, &series);
}

fn register_log(m: &Meter, l: Arc<LogStats>) {
    let series: [telemetry::Series<LogStats>; 10] = [
        (
            "floe_cache_hits_total",
            "Read-cache blocks found in memory.",
            |l| &l.cache_hits,
        ),
        (
            "floe_cache_misses_total",
            "Read-cache blocks fetched from the store.",
            |l| &l.cache_misses,
        ),
        ("floe_compactions_total", "Compactions committed.", |l| {
            &l.compactions
        }),
        (
            "floe_compacted_bytes_total",
            "Batch bytes moved into data objects.",
            |l| &l.compacted_bytes,
        ),
        (
            "floe_deleted_objects_total",
            "Garbage objects deleted.",
            |l| &l.deleted_objects,
        ),
        ("floe_checkpoints_total", "Checkpoints written.", |l| {
            &l.checkpoints
        }),
        (
            "floe_truncations_total",
            "DeleteRecords log-start moves.",
            |l| &l.truncations,
        ),
        (
            "floe_rewrites_total",
            "Rewrites of compacted topics' batches committed.",
            |l| &l.rewrites,
        ),
        (
            "floe_idempotent_duplicates_total",
            "Idempotent batches recognised as retries and answered with their first offset.",
            |l| &l.duplicates,
        ),
        (
            "floe_expired_producers_total",
            "Idempotent producers forgotten after producer.id.expiration.ms.",
            |l| &l.expired_producers,
        ),
    ];
    telemetry::counters(m, &l, &series);
}

/// Metered usage by tenant.
fn register_tenants(m: &Meter, totals: Arc<Totals>) {
    let series: [TenantSeries; 7] = [
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
            "Fuel burned by the tenant's Wasm transforms and connectors.",
            |c| c.wasm_fuel as f64,
        ),
    ];
    for (name, help, value) in series {
        let totals = totals.clone();
        m.f64_observable_counter(name)
            .with_description(help)
            .with_callback(move |o| {
                for (t, c) in totals.snapshot() {
                    o.observe(value(&c), &[KeyValue::new("tenant", t.to_string())]);
                }
            })
            .build();
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

/// The pull reader `/metrics` collects from, once [`install`]ed.
static READER: OnceLock<Arc<ManualReader>> = OnceLock::new();

/// Lets the SDK hold the reader while `/metrics` collects through it.
#[derive(Debug)]
struct Shared(Arc<ManualReader>);

impl MetricReader for Shared {
    fn register_pipeline(&self, pipeline: std::sync::Weak<opentelemetry_sdk::metrics::Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(
        &self,
        kind: opentelemetry_sdk::metrics::InstrumentKind,
    ) -> opentelemetry_sdk::metrics::Temporality {
        self.0.temporality(kind)
    }
}

/// Installs the SDK as the global meter provider, with the pull reader.
/// Call it first: instruments made before are no-ops.
pub fn install() -> SdkMeterProvider {
    let reader = READER.get_or_init(|| Arc::new(ManualReader::builder().build()));
    let provider = SdkMeterProvider::builder()
        .with_reader(Shared(reader.clone()))
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    provider
}

/// `/metrics`: everything the meter provider collects, in the Prometheus
/// text format (0.0.4). Empty before [`install`].
pub fn exposition() -> String {
    let Some(reader) = READER.get() else {
        return String::new();
    };
    let mut rm = ResourceMetrics::default();
    if let Err(e) = reader.collect(&mut rm) {
        tracing::warn!(error = %e, "collecting metrics");
    }
    let mut out = String::with_capacity(16 * 1024);
    for scope in rm.scope_metrics() {
        for metric in scope.metrics() {
            encode(&mut out, metric);
        }
    }
    out
}

fn encode(out: &mut String, metric: &Metric) {
    let name = metric.name();
    let kind = match metric.data() {
        AggregatedMetrics::F64(MetricData::Sum(s)) if s.is_monotonic() => "counter",
        AggregatedMetrics::U64(MetricData::Sum(s)) if s.is_monotonic() => "counter",
        AggregatedMetrics::I64(MetricData::Sum(s)) if s.is_monotonic() => "counter",
        AggregatedMetrics::F64(MetricData::Histogram(_))
        | AggregatedMetrics::U64(MetricData::Histogram(_))
        | AggregatedMetrics::I64(MetricData::Histogram(_)) => "histogram",
        _ => "gauge",
    };
    let help = metric
        .description()
        .replace('\\', "\\\\")
        .replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    match metric.data() {
        AggregatedMetrics::F64(d) => points(out, name, d, |v| v),
        AggregatedMetrics::U64(d) => points(out, name, d, |v| v as f64),
        AggregatedMetrics::I64(d) => points(out, name, d, |v| v as f64),
    }
}

fn points<T: Copy>(out: &mut String, name: &str, data: &MetricData<T>, f: fn(T) -> f64) {
    match data {
        MetricData::Sum(s) => {
            for p in s.data_points() {
                sample(out, name, "", &labels(p.attributes(), None), f(p.value()));
            }
        }
        MetricData::Gauge(g) => {
            for p in g.data_points() {
                sample(out, name, "", &labels(p.attributes(), None), f(p.value()));
            }
        }
        MetricData::Histogram(h) => {
            for p in h.data_points() {
                histogram(out, name, p, f);
            }
        }
        // Not made by Floe's instruments.
        MetricData::ExponentialHistogram(_) => {}
    }
}

fn histogram<T: Copy>(out: &mut String, name: &str, p: &HistogramDataPoint<T>, f: fn(T) -> f64) {
    let mut total = 0;
    let counts: Vec<u64> = p.bucket_counts().collect();
    for (i, bound) in p.bounds().chain([f64::INFINITY]).enumerate() {
        total += counts.get(i).copied().unwrap_or(0);
        let le = if bound.is_infinite() {
            "+Inf".to_string()
        } else {
            bound.to_string()
        };
        let l = labels(p.attributes(), Some(&le));
        sample(out, name, "_bucket", &l, total as f64);
    }
    let l = labels(p.attributes(), None);
    sample(out, name, "_sum", &l, f(p.sum()));
    sample(out, name, "_count", &l, p.count() as f64);
}

/// `{k="v",...}` (with `le` last), or nothing.
fn labels<'a>(attrs: impl Iterator<Item = &'a KeyValue>, le: Option<&str>) -> String {
    let mut parts: Vec<String> = attrs
        .map(|kv| format!("{}=\"{}\"", kv.key.as_str(), escape(&kv.value)))
        .collect();
    parts.sort();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &Value) -> String {
    v.as_str()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn sample(out: &mut String, name: &str, suffix: &str, labels: &str, v: f64) {
    let _ = writeln!(out, "{name}{suffix}{labels} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_holds_counters_gauges_and_histograms() {
        let reader = Arc::new(ManualReader::builder().build());
        let provider = SdkMeterProvider::builder()
            .with_reader(Shared(reader.clone()))
            .build();
        let m = opentelemetry::metrics::MeterProvider::meter(&provider, "floe");
        telemetry::counter(&m, "t_calls_total", "Calls.\nTwo lines.", || 7);
        telemetry::gauge(&m, "t_level", "A level.", || -3);
        let h = telemetry::seconds(&m, "t_seconds", "Waits.");
        h.record(0.004, &[KeyValue::new("api", "Pro\"duce")]);
        h.record(40.0, &[KeyValue::new("api", "Pro\"duce")]);
        let mut rm = ResourceMetrics::default();
        reader.collect(&mut rm).expect("collect");
        let mut out = String::new();
        for s in rm.scope_metrics() {
            for metric in s.metrics() {
                encode(&mut out, metric);
            }
        }
        assert!(out.contains("# HELP t_calls_total Calls.\\nTwo lines.\n# TYPE t_calls_total counter\nt_calls_total 7\n"), "{out}");
        assert!(out.contains("# TYPE t_level gauge\nt_level -3\n"), "{out}");
        assert!(out.contains("# TYPE t_seconds histogram\n"), "{out}");
        assert!(
            out.contains("t_seconds_bucket{api=\"Pro\\\"duce\",le=\"0.003\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{api=\"Pro\\\"duce\",le=\"0.005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{api=\"Pro\\\"duce\",le=\"30\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{api=\"Pro\\\"duce\",le=\"+Inf\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_count{api=\"Pro\\\"duce\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_sum{api=\"Pro\\\"duce\"} 40.004\n"),
            "{out}"
        );
    }
}
