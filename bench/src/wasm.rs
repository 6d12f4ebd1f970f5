//! `floe-wasm-bench`: the Wasm host's costs, in-process (no broker):
//! - `compile` and `load`: a component compiled, and the same read back
//!   from the disk cache by a new engine (what a restarted process pays);
//! - `instantiate`: a transform instance from a compiled component (pooling
//!   allocator): a store, the instance, and its `init` call; and the whole
//!   cycle, with the drop that gives the slot back;
//! - `per-record`: one 1000-record batch of 100-byte values through an
//!   identity transform, against native Rust doing the same work (copying
//!   each record into an output record), interleaved run by run so both
//!   see the same machine. The difference per record is the host's
//!   overhead: lowering, the guest's copy, lifting, limits.
//!
//! Guests: the WAT identity fixture, and any component files given
//! (`--guest guests/target/wasm32-wasip2/release/identity.wasm`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use floe_runtime::{Digest, InputRecord, Labels, Limits, OutputRecord, Runtime, StateRead};
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
#[command(about = "Wasm host costs: instantiation, and per-record overhead against native")]
struct Args {
    /// Identity transform components to measure besides the WAT fixture.
    #[arg(long)]
    guest: Vec<std::path::PathBuf>,
    /// Instances made per guest.
    #[arg(long, default_value_t = 20_000)]
    instances: u32,
    /// Batches per guest (each 1000 records), and as many native runs.
    #[arg(long, default_value_t = 2_000)]
    batches: u32,
    #[arg(long, default_value_t = 1000)]
    batch_records: usize,
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
}

struct NoState;

impl StateRead for NoState {
    fn get(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

fn labels() -> Labels {
    Labels {
        tenant: "bench".into(),
        plugin: "identity".into(),
    }
}

fn batch(records: usize, value_bytes: usize) -> Vec<InputRecord> {
    (0..records)
        .map(|i| InputRecord {
            key: None,
            value: Some(vec![(i % 251) as u8; value_bytes]),
            headers: Vec::new(),
            timestamp: 1_700_000_000_000 + i as i64,
            offset: i as i64,
            partition: 0,
        })
        .collect()
}

/// The same work natively: every record copied to output 0.
#[inline(never)]
fn native_identity(batch: &[InputRecord]) -> Vec<OutputRecord> {
    batch
        .iter()
        .map(|r| OutputRecord {
            output: 0,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
            timestamp: r.timestamp,
        })
        .collect()
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

fn summary(h: &Histogram<u64>) -> String {
    format!(
        "mean {:.0} ns, p50 {} ns, p99 {} ns",
        h.mean(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99)
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rt = Runtime::new(Limits::default()).map_err(anyhow::Error::msg)?;
    let mut guests = vec![("wat identity".to_string(), floe_fixtures::identity())];
    for path in &a.guest {
        guests.push((path.display().to_string(), std::fs::read(path)?));
    }
    let input = batch(a.batch_records, a.value_bytes);
    let state: Arc<dyn StateRead> = Arc::new(NoState);
    for (name, wasm) in &guests {
        let digest = Digest::of(wasm);
        let compile = Instant::now();
        rt.check(floe_runtime::World::Transform, wasm)
            .map_err(anyhow::Error::msg)?;
        println!(
            "{name}: {} bytes, compiled in {:?}",
            wasm.len(),
            compile.elapsed()
        );
        let cache = std::env::temp_dir().join(format!("floe-wasm-bench-{}", std::process::id()));
        // Each engine is a new process's: the first compiles, the second loads.
        let checked_by_a_new_engine = || -> anyhow::Result<(Duration, u64)> {
            let rt = Runtime::new(Limits {
                cache_dir: Some(cache.clone()),
                ..Limits::default()
            })
            .map_err(anyhow::Error::msg)?;
            let t0 = Instant::now();
            rt.check(floe_runtime::World::Transform, wasm)
                .map_err(anyhow::Error::msg)?;
            Ok((t0.elapsed(), rt.cache_stats().loaded()))
        };
        let (stored, _) = checked_by_a_new_engine()?;
        let (loaded, from_disk) = checked_by_a_new_engine()?;
        anyhow::ensure!(from_disk == 1, "not read from the disk cache");
        println!("  compiled and kept on disk in {stored:?}; a new engine loaded it in {loaded:?}");
        std::fs::remove_dir_all(&cache)?;

        let (mut inst, mut cycle) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
        for _ in 0..a.instances {
            let t0 = Instant::now();
            let t = rt
                .transform_of(&digest, wasm, &[], labels())
                .await
                .map_err(anyhow::Error::msg)?;
            inst.record(ns(t0.elapsed()).max(1))?;
            // Dropping gives the slot back to the pool (its memory reset):
            // part of what an instance costs, though not of its start.
            drop(t);
            cycle.record(ns(t0.elapsed()).max(1))?;
        }
        println!(
            "  instantiate (store + instance + init): {}",
            summary(&inst)
        );
        println!("  instantiate and drop: {}", summary(&cycle));

        let mut t = rt
            .transform_of(&digest, wasm, &[], labels())
            .await
            .map_err(anyhow::Error::msg)?;
        let (mut wasm_h, mut native_h) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
        for _ in 0..a.batches {
            let t0 = Instant::now();
            let out = t
                .process(&input, 1, state.clone())
                .await
                .map_err(|f| anyhow::anyhow!("{}", f.message))?;
            wasm_h.record(ns(t0.elapsed()).max(1))?;
            anyhow::ensure!(out.outputs.len() == input.len(), "identity lost records");
            let t0 = Instant::now();
            let out = std::hint::black_box(native_identity(std::hint::black_box(&input)));
            native_h.record(ns(t0.elapsed()).max(1))?;
            drop(out);
        }
        let per = |h: &Histogram<u64>| h.mean() / a.batch_records as f64;
        println!(
            "  batch of {} x {} B: wasm {}; native {}",
            a.batch_records,
            a.value_bytes,
            summary(&wasm_h),
            summary(&native_h)
        );
        println!(
            "  per record: wasm {:.0} ns, native {:.0} ns, overhead {:.0} ns",
            per(&wasm_h),
            per(&native_h),
            per(&wasm_h) - per(&native_h)
        );
    }
    Ok(())
}
