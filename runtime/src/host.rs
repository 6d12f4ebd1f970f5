//! A store's host state, and the limits every call runs under.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use wasmtime::component::Linker;

use crate::egress::Egress;
use crate::{Error, Failure, FailureKind, Limits};

/// Who a guest runs for: its log lines and errors carry these.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    pub tenant: String,
    pub plugin: String,
}

/// Log lines a guest may write per call; the rest are counted and dropped.
const LOG_LINES_PER_CALL: u32 = 100;

pub(crate) struct Host {
    pub labels: Labels,
    wasi: WasiCtx,
    table: ResourceTable,
    pub memory: MemoryCap,
    /// When the current call must end.
    deadline: Instant,
    /// What the guest's clocks read: fixed for the length of a call.
    clock: Clock,
    logged: u32,
    /// The transform's state for the batch being processed.
    pub state: crate::transform::StateBuf,
    /// The instance trapped: calling into it again is refused.
    pub poisoned: bool,
    /// `wasi:http`, for connectors only (other worlds do not link it):
    /// requests go out through `egress`, which checks the allow-list.
    http: WasiHttpCtx,
    pub egress: Egress,
}

impl Host {
    pub fn new(labels: Labels, limits: &Limits) -> Self {
        // WASI is present so that guests built for wasm32-wasip2 link, but
        // empty: no preopens, environment or arguments, closed stdin,
        // discarded stdout/stderr, no sockets, and a seed fixed per plugin
        // so a guest's "random" choices replay the same after a restart.
        let seed = seed(&labels);
        let clock = Clock::default();
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .insecure_random_seed(u128::from_le_bytes(
                seed[..16].try_into().expect("16 bytes"),
            ))
            .secure_random(StdRng::from_seed(seed))
            .insecure_random(StdRng::from_seed(sha256(&seed)))
            .wall_clock(clock.clone())
            .monotonic_clock(clock.clone())
            .build();
        Self {
            labels,
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap {
                max_bytes: limits.memory_bytes,
                hit: false,
            },
            deadline: Instant::now(),
            clock,
            logged: 0,
            state: Default::default(),
            poisoned: false,
            http: WasiHttpCtx::new(),
            egress: Egress::default(),
        }
    }

    pub fn log(&mut self, level: &str, message: &str) {
        self.logged += 1;
        if self.logged > LOG_LINES_PER_CALL {
            return;
        }
        let (tenant, plugin) = (&self.labels.tenant, &self.labels.plugin);
        let message: String = message.chars().take(1024).collect();
        match level {
            "error" => tracing::error!(%tenant, %plugin, "guest: {message}"),
            "warn" => tracing::warn!(%tenant, %plugin, "guest: {message}"),
            "info" => tracing::info!(%tenant, %plugin, "guest: {message}"),
            _ => tracing::debug!(%tenant, %plugin, "guest: {message}"),
        }
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.egress,
        }
    }
}

/// Refuses memory growth past the cap, and remembers that it did, so the
/// trap that follows is reported as the memory limit.
pub(crate) struct MemoryCap {
    max_bytes: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Err(wasmtime::format_err!(
                "memory limit of {} bytes reached (asked for {desired})",
                self.max_bytes
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A store with the limiter, fuel and epoch deadline wired in.
pub(crate) fn store(engine: &wasmtime::Engine, limits: &Limits, labels: Labels) -> Store<Host> {
    let mut store = Store::new(engine, Host::new(labels, limits));
    store.limiter(|h| &mut h.memory);
    // Each tick past the deadline check yields to the async runtime; past
    // the call's deadline it traps.
    store.epoch_deadline_callback(|cx: StoreContextMut<'_, Host>| {
        if Instant::now() >= cx.data().deadline {
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(UpdateDeadline::Yield(1))
    });
    store
}

/// A world's linker: WASI p2 (present, with nothing behind it; see
/// [`Host::new`]) and the world's own imports, added by `add`.
pub(crate) fn linker(
    engine: &wasmtime::Engine,
    add: impl FnOnce(&mut Linker<Host>) -> wasmtime::Result<()>,
) -> wasmtime::Result<Linker<Host>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    add(&mut linker)?;
    Ok(linker)
}

/// Arms a store for one call: full fuel, a fresh deadline, a log budget.
/// An instance that trapped is refused: it must be replaced.
pub(crate) fn arm(store: &mut Store<Host>, limits: &Limits) -> Result<(), Failure> {
    let refuse = |message: String| Failure {
        kind: FailureKind::Trap,
        message,
        fuel: 0,
    };
    if store.data().poisoned {
        return Err(refuse("instance trapped earlier".into()));
    }
    store
        .set_fuel(limits.fuel_per_call)
        .map_err(|e| refuse(e.to_string()))?;
    store.set_epoch_deadline(1);
    let host = store.data_mut();
    host.deadline = Instant::now() + limits.deadline;
    host.logged = 0;
    host.clock.set();
    host.memory.hit = false;
    Ok(())
}

/// `init`'s outcome as the instance's start: an error or a trap says why
/// the plugin cannot run.
pub(crate) fn init_outcome(
    store: &mut Store<Host>,
    limits: &Limits,
    init: wasmtime::Result<Result<(), String>>,
) -> Result<(), Error> {
    match init {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(Error::Start(format!("init failed: {reason}"))),
        Err(e) => Err(Error::Start(format!(
            "init failed: {}",
            trapped(store, limits, &e).message
        ))),
    }
}

/// A call's outcome with the fuel it burned: the guest's own error is a
/// [`FailureKind::Error`], a trap or limit poisons the instance.
pub(crate) fn outcome<T>(
    store: &mut Store<Host>,
    limits: &Limits,
    result: wasmtime::Result<Result<T, String>>,
) -> Result<(T, u64), Failure> {
    match result {
        Ok(Ok(v)) => Ok((v, fuel_used(store, limits))),
        Ok(Err(message)) => Err(Failure {
            kind: FailureKind::Error,
            message,
            fuel: fuel_used(store, limits),
        }),
        Err(e) => Err(trapped(store, limits, &e)),
    }
}

/// What a call that trapped (or hit a limit) leaves: the reason, the fuel
/// it burned, and an instance poisoned from now on.
pub(crate) fn trapped(store: &mut Store<Host>, limits: &Limits, e: &wasmtime::Error) -> Failure {
    store.data_mut().poisoned = true;
    let (kind, message) = classify(store, limits, e);
    Failure {
        kind,
        message,
        fuel: fuel_used(store, limits),
    }
}

/// Fuel the last call burned.
pub(crate) fn fuel_used(store: &Store<Host>, limits: &Limits) -> u64 {
    limits
        .fuel_per_call
        .saturating_sub(store.get_fuel().unwrap_or(0))
}

/// Why a call failed, in words a tenant can act on.
fn classify(
    store: &Store<Host>,
    limits: &Limits,
    e: &wasmtime::Error,
) -> (crate::FailureKind, String) {
    use crate::FailureKind as K;
    if store.data().memory.hit {
        return (
            K::Memory,
            format!("memory limit of {} bytes reached", limits.memory_bytes),
        );
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => (
            K::Fuel,
            format!("fuel of {} per call exhausted", limits.fuel_per_call),
        ),
        Some(wasmtime::Trap::Interrupt) => (
            K::Deadline,
            format!("deadline of {:?} per call passed", limits.deadline),
        ),
        Some(trap) => (K::Trap, format!("trap: {trap}")),
        None => (K::Trap, format!("{e:#}").replace('\n', " ")),
    }
}

/// A seed fixed per plugin.
fn seed(labels: &Labels) -> [u8; 32] {
    sha256(format!("{}/{}", labels.tenant, labels.plugin).as_bytes())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The guest's clocks, injected: both read the time the current call
/// started, so a batch sees one instant however long it runs.
#[derive(Clone, Default)]
struct Clock(Arc<Instants>);

#[derive(Default)]
struct Instants {
    wall_ns: AtomicU64,
    mono_ns: AtomicU64,
}

impl Clock {
    fn set(&self) {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.0
            .wall_ns
            .store(wall.as_nanos() as u64, Ordering::Relaxed);
        let mono = started().elapsed();
        self.0
            .mono_ns
            .store(mono.as_nanos() as u64, Ordering::Relaxed);
    }
}

fn started() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl wasmtime_wasi::HostWallClock for Clock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.wall_ns.load(Ordering::Relaxed))
    }
}

impl wasmtime_wasi::HostMonotonicClock for Clock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0.mono_ns.load(Ordering::Relaxed)
    }
}
