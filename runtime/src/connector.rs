//! The `connector` world: a tenant's sources and sinks. Like a transform
//! they run under the memory cap and fuel per call; their deadline per
//! call is longer ([`Limits::connector_deadline`]) because it includes
//! network waits, and their requests go out only through `egress.rs`.

use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

use crate::egress::{AllowList, Egress};
use crate::host::{self, Host, Labels};
use crate::transform::{check_outputs, InputRecord};
use crate::{Error, Failure, FailureKind, Limits};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "connector",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "floe:plugin/log": crate::transform::bindings::floe::plugin::log,
            "floe:plugin/types": crate::transform::bindings::floe::plugin::types,
        },
    });
}

pub use bindings::floe::plugin::connector_types::Polled;

pub(crate) type Pre = bindings::ConnectorPre<Host>;

impl bindings::floe::plugin::connector_types::Host for Host {}

/// The connector world's linker: WASI, `wasi:http` (through the egress
/// check), and the world's own imports.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<Host>> {
    host::linker(engine, |l| {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(l)?;
        bindings::Connector::add_to_linker::<Host, HasSelf<Host>>(l, |h| h)
    })
}

pub(crate) fn pre(linker: &Linker<Host>, component: &Component) -> wasmtime::Result<Pre> {
    Pre::new(linker.instantiate_pre(component)?)
}

/// A connector's store: the connector deadline, and its allow-list.
fn store(engine: &Engine, limits: &Limits, labels: Labels, allow: AllowList) -> Store<Host> {
    let mut store = host::store(engine, limits, labels.clone());
    store.data_mut().egress = Egress::new(allow, labels);
    store
}

/// What a connector call did besides its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub fuel: u64,
    /// Of the call's wall time, how long its requests waited on the
    /// network: the rest was the guest's (charged to the CPU share).
    pub io_wait: Duration,
}

/// A running connector: a source is polled, a sink delivers. After a trap
/// it is poisoned: make a new one.
pub struct Connector {
    store: Store<Host>,
    bindings: bindings::Connector,
    limits: Limits,
}

impl Connector {
    pub(crate) async fn start(
        engine: &Engine,
        limits: &Limits,
        pre: Pre,
        config: &[(String, String)],
        labels: Labels,
        allow: AllowList,
    ) -> Result<Self, Error> {
        let mut store = store(engine, limits, labels, allow);
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

    pub fn poisoned(&self) -> bool {
        self.store.data().poisoned
    }

    /// Arms the store for a call; returns the network wait so far.
    fn arm(&mut self) -> Result<Duration, (Failure, Spent)> {
        let waited = self.store.data().egress.io_wait();
        host::arm(&mut self.store, &self.limits).map_err(|f| (f, Spent::default()))?;
        Ok(waited)
    }

    fn spent(&self, waited: Duration, fuel: u64) -> Spent {
        Spent {
            fuel,
            io_wait: self.store.data().egress.io_wait().saturating_sub(waited),
        }
    }

    /// A source's poll: up to `max` records after `cursor`, for `outputs`
    /// output topics. More records than asked, or an output not deployed,
    /// fails the poll (nothing of it is kept).
    pub async fn poll(
        &mut self,
        max: u32,
        cursor: Option<&[u8]>,
        outputs: usize,
    ) -> Result<(Polled, Spent), (Failure, Spent)> {
        let waited = self.arm()?;
        let result = self
            .bindings
            .floe_plugin_source()
            .call_poll(&mut self.store, max, cursor)
            .await;
        let limits = self.limits.clone();
        let (polled, fuel) = host::outcome(&mut self.store, &limits, result).map_err(|f| {
            let spent = self.spent(waited, f.fuel);
            (f, spent)
        })?;
        let spent = self.spent(waited, fuel);
        if polled.records.len() > max as usize {
            let f = Failure {
                kind: FailureKind::Outputs,
                message: format!("{} records for a poll of {max}", polled.records.len()),
                fuel,
            };
            return Err((f, spent));
        }
        check_outputs(&polled.records, outputs, fuel).map_err(|f| (f, spent))?;
        Ok((polled, spent))
    }

    /// A sink's delivery of one batch; `Ok` means the receiver has it.
    pub async fn deliver(&mut self, batch: &[InputRecord]) -> Result<Spent, (Failure, Spent)> {
        let waited = self.arm()?;
        let result = self
            .bindings
            .floe_plugin_sink()
            .call_deliver(&mut self.store, batch)
            .await;
        let limits = self.limits.clone();
        match host::outcome(&mut self.store, &limits, result) {
            Ok(((), fuel)) => Ok(self.spent(waited, fuel)),
            Err(f) => {
                let spent = self.spent(waited, f.fuel);
                Err((f, spent))
            }
        }
    }
}
