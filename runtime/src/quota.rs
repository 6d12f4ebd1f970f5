//! The `quota` world: a plan's policy, asked once per tenant, kind and
//! window; its answer is enforced natively by the caller.

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

use crate::host::{self, Host, Labels};
use crate::{Error, Failure, Limits};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "quota",
        imports: { default: trappable },
        exports: { default: async },
        with: { "floe:plugin/log": crate::transform::bindings::floe::plugin::log },
    });
}

pub use bindings::floe::plugin::quota_types::{Decision, Kind, Query, Usage as RecentUsage};

pub(crate) type Pre = bindings::QuotaPre<Host>;

pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<Host>> {
    host::linker(engine, |l| {
        bindings::Quota::add_to_linker::<Host, HasSelf<Host>>(l, |h| h)
    })
}

pub(crate) fn pre(linker: &Linker<Host>, component: &Component) -> wasmtime::Result<Pre> {
    Pre::new(linker.instantiate_pre(component)?)
}

impl bindings::floe::plugin::quota_types::Host for Host {}

/// A quota policy instance. After a trap it is poisoned: make a new one.
pub struct Policy {
    store: Store<Host>,
    bindings: bindings::Quota,
    limits: Limits,
}

impl Policy {
    pub(crate) async fn start(
        engine: &Engine,
        limits: &Limits,
        pre: Pre,
        labels: Labels,
    ) -> Result<Self, Error> {
        let mut store = host::store(engine, limits, labels);
        host::arm(&mut store, limits).map_err(|f| Error::Start(f.message))?;
        let bindings = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| Error::Start(format!("{e:#}")))?;
        Ok(Self {
            store,
            bindings,
            limits: limits.clone(),
        })
    }

    pub fn poisoned(&self) -> bool {
        self.store.data().poisoned
    }

    /// The policy's decision, or why it gave none (the caller fails open).
    pub async fn decide(&mut self, query: &Query) -> Result<(Decision, u64), Failure> {
        let limits = self.limits.clone();
        host::arm(&mut self.store, &limits)?;
        let result = self.bindings.call_decide(&mut self.store, query).await;
        match result {
            Ok(decision) => Ok((decision, host::fuel_used(&self.store, &limits))),
            Err(e) => Err(host::trapped(&mut self.store, &limits, &e)),
        }
    }
}
