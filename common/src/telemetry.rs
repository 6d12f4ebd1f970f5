//! Metrics through the OpenTelemetry API: every series is an instrument of
//! the global meter `floe`. The binary installs the SDK with a pull reader
//! before anything else, and `/metrics` encodes what a scrape collects
//! (`floe_gateway::metrics`). Figures kept in atomics (the hot paths' one
//! relaxed add) are observed by callbacks at each collection; latencies are
//! histograms. Without the SDK (unit tests) every instrument is a no-op.
//!
//! Names are the Prometheus series' own (`_total` and units included), so
//! what the code says is what `/metrics` shows.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;

/// The meter every Floe instrument belongs to.
pub fn meter() -> Meter {
    opentelemetry::global::meter("floe")
}

/// Upper bounds of latency buckets, in seconds: requests and store calls.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// A counter whose value `value` reads at each collection.
pub fn counter(
    m: &Meter,
    name: &'static str,
    help: &'static str,
    value: impl Fn() -> u64 + Send + Sync + 'static,
) {
    m.u64_observable_counter(name)
        .with_description(help)
        .with_callback(move |o| o.observe(value(), &[]))
        .build();
}

/// A series read from an atomic of `T`: name, help, and where it is.
pub type Series<T> = (&'static str, &'static str, fn(&T) -> &AtomicU64);

/// Counters read from `source`'s atomics at each collection.
pub fn counters<T: Send + Sync + 'static>(m: &Meter, source: &Arc<T>, series: &[Series<T>]) {
    for &(name, help, field) in series {
        let s = source.clone();
        counter(m, name, help, move || field(&s).load(Relaxed));
    }
}

/// A gauge whose value `value` reads at each collection.
pub fn gauge(
    m: &Meter,
    name: &'static str,
    help: &'static str,
    value: impl Fn() -> i64 + Send + Sync + 'static,
) {
    m.i64_observable_gauge(name)
        .with_description(help)
        .with_callback(move |o| o.observe(value(), &[]))
        .build();
}

/// A latency histogram in seconds, with [`LATENCY_BUCKETS`].
pub fn seconds(m: &Meter, name: &'static str, help: &'static str) -> Histogram<f64> {
    m.f64_histogram(name)
        .with_description(help)
        .with_unit("s")
        .with_boundaries(LATENCY_BUCKETS.to_vec())
        .build()
}

static WASM_FAILURES: LazyLock<Counter<u64>> = LazyLock::new(|| {
    meter()
        .u64_counter("floe_wasm_failures_total")
        .with_description(
            "Guest calls that failed, by tenant, world and why (trap, fuel, deadline, memory, error, outputs).",
        )
        .build()
});

/// Counts a failed guest call of `tenant` in `world` (`transform`,
/// `connector`), for `kind` of failure.
pub fn wasm_failure(tenant: &str, world: &'static str, kind: &'static str) {
    WASM_FAILURES.add(
        1,
        &[
            KeyValue::new("tenant", tenant.to_string()),
            KeyValue::new("world", world),
            KeyValue::new("kind", kind),
        ],
    );
}
