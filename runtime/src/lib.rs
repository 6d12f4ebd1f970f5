//! The wasmtime host. Tenants' transforms and operators' quota policies are
//! WebAssembly components of the worlds in `wit/plugin.wit`; this crate
//! compiles them once, checks what they import, and runs each call inside
//! hard limits (DESIGN.md invariant 7): a memory cap, fuel, and a CPU
//! deadline by epoch interruption. Calls are async and yield to the tokio
//! runtime at every epoch tick, so a guest never holds a runtime thread for
//! more than one tick (10 ms).
//!
//! This is the one crate that runs `bindgen!` over `wit/`.
//!
//! # Layout
//! - `lib.rs`: [`Runtime`]: the shared engine (pooling allocator), the
//!   compiled-component cache keyed by content hash, import checks.
//! - `host.rs`: a store's host state: WASI present but empty (no files, no
//!   sockets, an injected clock and seed), logging, the limits.
//! - `transform.rs`: the `transform` world: [`Transform`] instances and
//!   their batches, with state writes buffered per batch.
//! - `quota.rs`: the `quota` world: [`Policy`] decisions.
//! - `connector.rs`: the `connector` world: a source's polls and a sink's
//!   deliveries ([`Connector`]).
//! - `egress.rs`: connectors' `wasi:http` requests, let through only to
//!   their allow-list, checked on resolved addresses.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

mod connector;
mod disk;
mod egress;
mod host;
mod quota;
mod transform;

pub use connector::{Connector, Polled, Spent};
pub use disk::CacheStats;
pub use egress::AllowList;
pub use host::Labels;
pub use quota::{Decision, Kind, Policy, Query, RecentUsage};
pub use transform::{
    Failure, FailureKind, Header, InputRecord, OutputRecord, Processed, StateRead, Transform,
};

/// How often the engine's epoch advances: the granularity of CPU deadlines
/// and the longest a guest runs before yielding to the async runtime.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes of each pooled memory, table and stack kept mapped between uses
/// (reset by memset on reuse; the rest is given back to the kernel). With
/// PAGEMAP_SCAN these are the first 64 KiB of pages the instance wrote,
/// wherever they are; without it, the first 64 KiB of the memory. Measured
/// against 0, 256 KiB and 1 MiB (BENCHMARKS.md, 2026-11-23): no larger
/// value made a Rust or WAT guest's start or whole cycle cheaper, and
/// without PAGEMAP_SCAN a larger one is memset in full on every reuse.
const KEEP_RESIDENT: usize = 64 << 10;

/// Compiled components kept per process.
const MAX_COMPILED: usize = 256;

/// At most this many outputs a transform may name (Redpanda's limit too).
pub const MAX_OUTPUTS: usize = 8;

/// Limits every guest call runs under. Validated once at start-up.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Linear memory per instance. Costs nothing until touched; the pool
    /// reserves address space for `instances` of them.
    pub memory_bytes: usize,
    /// Fuel per call (about one unit per Wasm instruction): bounds work
    /// independently of machine speed and is what tenants are metered by.
    pub fuel_per_call: u64,
    /// Wall-clock budget per call, enforced at epoch ticks.
    pub deadline: Duration,
    /// A connector's budget per call: longer, as it includes its requests'
    /// network waits (fuel still bounds its CPU).
    pub connector_deadline: Duration,
    /// A batch may produce at most this many outputs per input record.
    pub outputs_per_input: usize,
    /// Instances alive at once in this process (the pool's size).
    pub instances: u32,
    /// Where compiled components are kept for the next process (`disk.rs`);
    /// `None` compiles each once per process.
    pub cache_dir: Option<std::path::PathBuf>,
    /// Whether a connector's allow list may open addresses that are not
    /// globally routable (loopback, private, link-local: a cloud's metadata
    /// service). The operator's choice: off where tenants share a network.
    pub private_egress: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            fuel_per_call: 2_000_000_000,
            deadline: Duration::from_secs(1),
            connector_deadline: Duration::from_secs(30),
            outputs_per_input: MAX_OUTPUTS,
            instances: 256,
            cache_dir: None,
            private_egress: true,
        }
    }
}

impl Limits {
    pub fn validate(&self) -> Result<(), String> {
        if self.memory_bytes < 64 << 10 {
            return Err("wasm memory must allow at least one 64 KiB page".into());
        }
        if self.fuel_per_call == 0
            || self.deadline < EPOCH_TICK
            || self.connector_deadline < EPOCH_TICK
        {
            return Err(format!(
                "wasm fuel must be positive and the deadline at least {EPOCH_TICK:?}"
            ));
        }
        if self.outputs_per_input == 0 || self.instances == 0 {
            return Err("wasm outputs per input and instances must be positive".into());
        }
        Ok(())
    }
}

/// Why a component was refused, or a call could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upload is not a component of the world, or imports what the
    /// world does not grant. The tenant's to fix.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// No instance could be made (the pool is full, or `init` failed).
    #[error("cannot start the component: {0}")]
    Start(String),
}

/// A component's identity: the SHA-256 of its bytes, in hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub String);

impl Digest {
    pub fn of(wasm: &[u8]) -> Self {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, wasm);
        Digest(disk::hex(d.as_ref()))
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The world a component is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum World {
    Transform,
    Quota,
    Connector,
}

impl World {
    pub fn name(self) -> &'static str {
        match self {
            World::Transform => "transform",
            World::Quota => "quota",
            World::Connector => "connector",
        }
    }
}

/// One engine and its compiled components, shared by every tenant.
pub struct Runtime {
    engine: Engine,
    limits: Limits,
    transform_linker: Linker<host::Host>,
    quota_linker: Linker<host::Host>,
    connector_linker: Linker<host::Host>,
    /// Compiled and pre-linked components by (world, content hash).
    compiled: Mutex<HashMap<(World, Digest), Compiled>>,
    /// Compiled components kept on local disk across processes, if
    /// configured and safe to use; never in the object store, since
    /// loading one runs its native code.
    disk: Option<disk::DiskCache>,
    stats: CacheStats,
}

#[derive(Clone)]
enum Compiled {
    Transform(transform::Pre),
    Quota(quota::Pre),
    Connector(connector::Pre),
}

impl Runtime {
    /// Builds the engine and starts its epoch clock (a thread that lives as
    /// long as the engine).
    pub fn new(limits: Limits) -> Result<Arc<Self>, Error> {
        limits.validate().map_err(Error::Start)?;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(limits.instances)
            .total_core_instances(limits.instances * 8)
            .total_memories(limits.instances)
            .total_tables(limits.instances * 2)
            .total_stacks(limits.instances)
            .max_memory_size(limits.memory_bytes)
            // Reset reused slots by zeroing their first page rather than
            // giving it back to the kernel: fewer page faults per instance.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .async_stack_keep_resident(KEEP_RESIDENT)
            // Where the kernel has PAGEMAP_SCAN (Linux 6.7), reset only the
            // pages an instance wrote, anywhere in its memory, and keep them
            // mapped: a std guest's stack top, data and heap lie past the
            // first page, and faulting them in again each time was half
            // its start (BENCHMARKS.md, 2026-11-23).
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(512 << 10)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| Error::Start(e.to_string()))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| Error::Start(e.to_string()))?;
        let transform_linker =
            transform::linker(&engine).map_err(|e| Error::Start(e.to_string()))?;
        let quota_linker = quota::linker(&engine).map_err(|e| Error::Start(e.to_string()))?;
        let connector_linker =
            connector::linker(&engine).map_err(|e| Error::Start(e.to_string()))?;
        let disk = limits.cache_dir.as_deref().and_then(|dir| {
            disk::DiskCache::open(dir, &engine)
                .inspect_err(|e| tracing::warn!("compiled components not kept on disk: {e}"))
                .ok()
        });
        Ok(Arc::new(Self {
            engine,
            limits,
            transform_linker,
            quota_linker,
            connector_linker,
            compiled: Mutex::new(HashMap::new()),
            disk,
            stats: CacheStats::default(),
        }))
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How many components were compiled, and how many read from disk.
    pub fn cache_stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Validates an upload for `world`: a component, importing only what
    /// the world grants, exporting what it must. Compiles it once; later
    /// calls with the same bytes are a hash and a lookup.
    pub fn check(&self, world: World, wasm: &[u8]) -> Result<Digest, Error> {
        let digest = Digest::of(wasm);
        self.compiled(world, &digest, wasm)?;
        Ok(digest)
    }

    fn compiled(&self, world: World, digest: &Digest, wasm: &[u8]) -> Result<Compiled, Error> {
        let key = (world, digest.clone());
        if let Some(c) = self.lock().get(&key) {
            return Ok(c.clone());
        }
        if wasm.get(..4) != Some(b"\0asm") {
            return Err(Error::Invalid("not a WebAssembly binary".into()));
        }
        // On disk, a component is named by the hash of these very bytes,
        // never by the digest the caller names them by.
        let on_disk = self.disk.as_ref().map(|d| (d, Digest::of(wasm)));
        let loaded = on_disk
            .as_ref()
            .and_then(|(d, hash)| d.load(&self.engine, hash));
        let fresh = loaded.is_none();
        let component = match loaded {
            Some(c) => {
                self.stats.loaded.fetch_add(1, Ordering::Relaxed);
                c
            }
            None => {
                let c = Component::new(&self.engine, wasm)
                    .map_err(|e| Error::Invalid(format!("{e:#}").replace('\n', " ")))?;
                self.stats.compiled.fetch_add(1, Ordering::Relaxed);
                c
            }
        };
        check_imports(&self.engine, &component, world)?;
        let invalid = |e: wasmtime::Error| Error::Invalid(format!("{e:#}"));
        let compiled = match world {
            World::Transform => Compiled::Transform(
                transform::pre(&self.transform_linker, &component).map_err(invalid)?,
            ),
            World::Quota => {
                Compiled::Quota(quota::pre(&self.quota_linker, &component).map_err(invalid)?)
            }
            World::Connector => Compiled::Connector(
                connector::pre(&self.connector_linker, &component).map_err(invalid)?,
            ),
        };
        // Kept for the next process only once accepted: a refused upload
        // takes no disk.
        if let (true, Some((d, hash))) = (fresh, &on_disk) {
            d.store(hash, &component);
        }
        let mut cache = self.lock();
        if cache.len() >= MAX_COMPILED {
            // Any one goes: instances hold their own reference, and a
            // component evicted while deployed is compiled again on use.
            if let Some(k) = cache.keys().next().cloned() {
                cache.remove(&k);
            }
        }
        cache.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// [`Runtime::compiled`], compiling (on a miss) on a blocking thread:
    /// a large component takes seconds, which must not hold one of the
    /// async runtime's threads.
    async fn compiled_off_thread(
        self: &Arc<Self>,
        world: World,
        digest: &Digest,
        wasm: &[u8],
    ) -> Result<Compiled, Error> {
        if let Some(c) = self.lock().get(&(world, digest.clone())) {
            return Ok(c.clone());
        }
        let (me, digest, wasm) = (self.clone(), digest.clone(), wasm.to_vec());
        tokio::task::spawn_blocking(move || me.compiled(world, &digest, &wasm))
            .await
            .map_err(|e| Error::Start(format!("compiling: {e}")))?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(World, Digest), Compiled>> {
        self.compiled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A running instance of a transform, initialised with `config`.
    pub async fn transform(
        self: &Arc<Self>,
        wasm: &[u8],
        config: &[(String, String)],
        labels: Labels,
    ) -> Result<Transform, Error> {
        self.transform_of(&Digest::of(wasm), wasm, config, labels)
            .await
    }

    /// [`Runtime::transform`] for a component whose digest the caller
    /// knows (it is the cache's key): no hashing on the way to an instance.
    pub async fn transform_of(
        self: &Arc<Self>,
        digest: &Digest,
        wasm: &[u8],
        config: &[(String, String)],
        labels: Labels,
    ) -> Result<Transform, Error> {
        let Compiled::Transform(pre) = self
            .compiled_off_thread(World::Transform, digest, wasm)
            .await?
        else {
            return Err(Error::Invalid("not a transform".into()));
        };
        Transform::start(&self.engine, &self.limits, pre, config, labels).await
    }

    /// A quota policy instance.
    pub async fn policy(self: &Arc<Self>, wasm: &[u8], labels: Labels) -> Result<Policy, Error> {
        self.policy_of(&Digest::of(wasm), wasm, labels).await
    }

    /// [`Runtime::policy`] for a component whose digest the caller knows:
    /// a policy is instantiated per decision, so no hashing on the way.
    pub async fn policy_of(
        self: &Arc<Self>,
        digest: &Digest,
        wasm: &[u8],
        labels: Labels,
    ) -> Result<Policy, Error> {
        let Compiled::Quota(pre) = self.compiled_off_thread(World::Quota, digest, wasm).await?
        else {
            return Err(Error::Invalid("not a quota policy".into()));
        };
        Policy::start(&self.engine, &self.limits, pre, labels).await
    }

    /// A running connector, initialised with `config`, whose requests may
    /// reach only `allow`.
    pub async fn connector_of(
        self: &Arc<Self>,
        digest: &Digest,
        wasm: &[u8],
        config: &[(String, String)],
        labels: Labels,
        allow: AllowList,
    ) -> Result<Connector, Error> {
        let Compiled::Connector(pre) = self
            .compiled_off_thread(World::Connector, digest, wasm)
            .await?
        else {
            return Err(Error::Invalid("not a connector".into()));
        };
        let limits = Limits {
            deadline: self.limits.connector_deadline,
            ..self.limits.clone()
        };
        let allow = match limits.private_egress {
            true => allow,
            false => allow.public_only(),
        };
        Connector::start(&self.engine, &limits, pre, config, labels, allow).await
    }
}
/// The interfaces a component may import: its world's own, and the WASI
/// interfaces guest toolchains link (wasm32-wasip2's std, componentize-py's
/// CPython), present but with nothing behind them: no files, environment or
/// arguments, and sockets whose every use is refused (no TCP, UDP or name
/// look-ups are permitted, see `host.rs`). Connectors may import
/// `wasi:http` too (through `egress.rs`); anything else is refused at upload.
fn allowed(world: World, import: &str) -> bool {
    let name = import.split('@').next().unwrap_or(import);
    let own: &[&str] = match world {
        World::Transform => &["floe:plugin/types", "floe:plugin/log", "floe:plugin/state"],
        World::Quota => &["floe:plugin/quota-types", "floe:plugin/log"],
        World::Connector => &[
            "floe:plugin/types",
            "floe:plugin/log",
            "floe:plugin/connector-types",
        ],
    };
    if own.contains(&name) {
        return true;
    }
    let Some(wasi) = name.strip_prefix("wasi:") else {
        return false;
    };
    let (package, _) = wasi.split_once('/').unwrap_or((wasi, ""));
    let connector = world == World::Connector;
    matches!(
        package,
        "cli" | "io" | "clocks" | "random" | "filesystem" | "sockets"
    ) || (connector && package == "http")
}

fn check_imports(engine: &Engine, component: &Component, world: World) -> Result<(), Error> {
    let refused: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .filter(|name| !allowed(world, name))
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "imports {}, which the {} world does not grant",
        refused.join(", "),
        world.name()
    )))
}

#[cfg(test)]
mod tests;
