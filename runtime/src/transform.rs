//! The `transform` world: an instance per deployed transform, fed batches.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

use crate::host::{self, Host, Labels};
use crate::{Error, Limits};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "transform",
        imports: { default: trappable },
        exports: { default: async },
        additional_derives: [PartialEq],
    });
}

pub use bindings::floe::plugin::types::{Header, InputRecord, OutputRecord};
use bindings::floe::plugin::{log, state};

pub(crate) type Pre = bindings::TransformPre<Host>;

/// A state key or value may be at most this long.
pub const MAX_STATE_ENTRY_BYTES: usize = 64 << 10;
/// State written by one batch: at most this many bytes of keys and values.
pub const MAX_STATE_BATCH_BYTES: usize = 4 << 20;

pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<Host>> {
    host::linker(engine, |l| {
        bindings::Transform::add_to_linker::<Host, HasSelf<Host>>(l, |h| h)
    })
}

pub(crate) fn pre(linker: &Linker<Host>, component: &Component) -> wasmtime::Result<Pre> {
    Pre::new(linker.instantiate_pre(component)?)
}

/// Reads of the transform's durable state (the shard's, as of the batch).
pub trait StateRead: Send + Sync {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
}

/// The state a batch sees: its own writes over the durable state.
#[derive(Default)]
pub(crate) struct StateBuf {
    read: Option<Arc<dyn StateRead>>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    bytes: usize,
}

impl StateBuf {
    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> wasmtime::Result<()> {
        let len = key.len() + value.as_ref().map_or(0, Vec::len);
        if key.len() > MAX_STATE_ENTRY_BYTES || len - key.len() > MAX_STATE_ENTRY_BYTES {
            wasmtime::bail!("state key or value over {MAX_STATE_ENTRY_BYTES} bytes");
        }
        self.bytes += len;
        if self.bytes > MAX_STATE_BATCH_BYTES {
            wasmtime::bail!("state writes over {MAX_STATE_BATCH_BYTES} bytes in one batch");
        }
        self.writes.insert(key, value);
        Ok(())
    }
}

impl state::Host for Host {
    fn get(&mut self, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        if let Some(v) = self.state.writes.get(&key) {
            return Ok(v.clone());
        }
        Ok(self.state.read.as_ref().and_then(|r| r.get(&key)))
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<()> {
        self.state.write(key, Some(value))
    }

    fn remove(&mut self, key: Vec<u8>) -> wasmtime::Result<()> {
        self.state.write(key, None)
    }
}

impl log::Host for Host {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        Host::log(self, level, &message);
        Ok(())
    }
}

impl bindings::floe::plugin::types::Host for Host {}

/// A batch's result: records for the outputs, and the state it wrote, to
/// be made durable together with the batch's input offset.
#[derive(Debug)]
pub struct Processed {
    pub outputs: Vec<OutputRecord>,
    /// (key, value), `None` for removed, in key order.
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub fuel: u64,
}

/// Why a batch failed. Its records go to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// `process` returned an error.
    Error,
    /// The guest trapped (or a host import refused it).
    Trap,
    Fuel,
    Deadline,
    Memory,
    /// More outputs than the limit, or an output index not deployed.
    Outputs,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Error => "error",
            FailureKind::Trap => "trap",
            FailureKind::Fuel => "fuel",
            FailureKind::Deadline => "deadline",
            FailureKind::Memory => "memory",
            FailureKind::Outputs => "outputs",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    pub fuel: u64,
}

/// Refuses records naming an output beyond the `outputs` deployed.
pub(crate) fn check_outputs(
    records: &[OutputRecord],
    outputs: usize,
    fuel: u64,
) -> Result<(), Failure> {
    match records.iter().find(|r| r.output as usize >= outputs) {
        Some(r) => Err(Failure {
            kind: FailureKind::Outputs,
            message: format!("output {} named; {outputs} deployed", r.output),
            fuel,
        }),
        None => Ok(()),
    }
}

/// A running transform instance. After a trap it is poisoned: make a new
/// one (which runs `init` again).
pub struct Transform {
    store: Store<Host>,
    bindings: bindings::Transform,
    limits: Limits,
}

impl Transform {
    pub(crate) async fn start(
        engine: &Engine,
        limits: &Limits,
        pre: Pre,
        config: &[(String, String)],
        labels: Labels,
    ) -> Result<Self, Error> {
        let mut store = host::store(engine, limits, labels);
        host::arm(&mut store, limits).map_err(|f| Error::Start(f.message))?;
        let bindings = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| Error::Start(format!("{e:#}")))?;
        let init = bindings.call_init(&mut store, config).await;
        host::init_outcome(&mut store, limits, init)?;
        Ok(Self {
            store,
            bindings,
            limits: limits.clone(),
        })
    }

    /// Whether the instance trapped and must be replaced.
    pub fn poisoned(&self) -> bool {
        self.store.data().poisoned
    }

    /// Runs one batch. `outputs` is the number of deployed output topics;
    /// `state` the durable state as of this batch.
    pub async fn process(
        &mut self,
        batch: &[InputRecord],
        outputs: usize,
        state: Arc<dyn StateRead>,
    ) -> Result<Processed, Failure> {
        let limits = self.limits.clone();
        host::arm(&mut self.store, &limits)?;
        self.store.data_mut().state = StateBuf {
            read: Some(state),
            ..Default::default()
        };
        let result = self.bindings.call_process(&mut self.store, batch).await;
        let buf = std::mem::take(&mut self.store.data_mut().state);
        let (records, fuel) = host::outcome(&mut self.store, &limits, result)?;
        let most = batch.len().max(1) * limits.outputs_per_input;
        if records.len() > most {
            return Err(Failure {
                kind: FailureKind::Outputs,
                message: format!(
                    "{} outputs for {} inputs; at most {} per input",
                    records.len(),
                    batch.len(),
                    limits.outputs_per_input
                ),
                fuel,
            });
        }
        check_outputs(&records, outputs, fuel)?;
        Ok(Processed {
            outputs: records,
            writes: buf.writes.into_iter().collect(),
            fuel,
        })
    }
}
