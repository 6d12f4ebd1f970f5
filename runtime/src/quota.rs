//! The `quota` world: a plan's policy, asked once per tenant, kind and
//! window; its answer is enforced natively by the caller.

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

use crate::host::{self, Host, Labels};
use crate::{Error, Failure, FailureKind, Limits};

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
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    bindings::Quota::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h)?;
    Ok(linker)
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
    poisoned: bool,
}

impl Policy {
    pub(crate) async fn start(
        engine: &Engine,
        limits: &Limits,
        pre: Pre,
        labels: Labels,
    ) -> Result<Self, Error> {
        let mut store = host::store(engine, limits, labels);
        host::arm(&mut store, limits).map_err(|e| Error::Start(e.to_string()))?;
        let bindings = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| Error::Start(format!("{e:#}")))?;
        Ok(Self {
            store,
            bindings,
            limits: limits.clone(),
            poisoned: false,
        })
    }

    pub fn poisoned(&self) -> bool {
        self.poisoned
    }

    /// The policy's decision, or why it gave none (the caller fails open).
    pub async fn decide(&mut self, query: &Query) -> Result<(Decision, u64), Failure> {
        let limits = self.limits.clone();
        if self.poisoned {
            return Err(Failure {
                kind: FailureKind::Trap,
                message: "instance trapped earlier".into(),
                fuel: 0,
            });
        }
        if let Err(e) = host::arm(&mut self.store, &limits) {
            return Err(Failure {
                kind: FailureKind::Trap,
                message: e.to_string(),
                fuel: 0,
            });
        }
        let result = self.bindings.call_decide(&mut self.store, query).await;
        let fuel = host::fuel_used(&self.store, &limits);
        match result {
            Ok(decision) => Ok((decision, fuel)),
            Err(e) => {
                self.poisoned = true;
                let (kind, message) = host::classify(&self.store, &limits, &e);
                Err(Failure {
                    kind,
                    message,
                    fuel,
                })
            }
        }
    }
}
