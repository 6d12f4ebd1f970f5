//! Write Floe transforms in Rust.
//!
//! Implement [`Transform`] for a type and name it in [`export_transform!`];
//! build with `cargo build --release --target wasm32-wasip2` and upload the
//! `.wasm` from `target/wasm32-wasip2/release/`. The contract (exactly-once
//! state, limits, dead letters) is `wit/README.md`.
//!
//! ```ignore
//! use floe_guest::{Config, Out, Record, Transform};
//!
//! struct Upper;
//!
//! impl Transform for Upper {
//!     fn init(_: &Config) -> Result<Self, String> {
//!         Ok(Upper)
//!     }
//!     fn record(&mut self, mut r: Record, out: &mut Out) -> Result<(), String> {
//!         r.value = r.value.map(|v| v.to_ascii_uppercase());
//!         out.forward(0, r);
//!         Ok(())
//!     }
//! }
//!
//! floe_guest::export_transform!(Upper);
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "transform",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "::floe_guest::bindings",
    });
}

use bindings::floe::plugin;

pub use plugin::types::{Header, InputRecord as Record, OutputRecord};

/// A transform instance. One is made per instance by `init` and fed batches
/// of one input partition in offset order. Anything kept in `self` is lost
/// when the host replaces the instance; keep what must survive in [`state`].
pub trait Transform: Sized + 'static {
    /// Called once per instance with the deploy's `config` pairs. An error
    /// stops the transform and shows in its status.
    fn init(config: &Config) -> Result<Self, String>;

    /// One input record. Push its outputs to `out`; an error sends the whole
    /// batch to the dead-letter topic.
    fn record(&mut self, record: Record, out: &mut Out) -> Result<(), String>;

    /// One batch. Override to see the batch whole (to aggregate, say); the
    /// default feeds [`Transform::record`] one record at a time.
    fn batch(&mut self, batch: Vec<Record>, out: &mut Out) -> Result<(), String> {
        batch.into_iter().try_for_each(|r| self.record(r, out))
    }
}

/// The deploy's `config=k=v,...` pairs.
pub struct Config(Vec<(String, String)>);

impl Config {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or an error naming it: for `init`.
    pub fn require(&self, key: &str) -> Result<&str, String> {
        self.get(key)
            .ok_or_else(|| format!("config `{key}` is required"))
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// The records a batch produces, each for an output by index (0 = the
/// deploy's first output topic).
#[derive(Default)]
pub struct Out(Vec<OutputRecord>);

impl Out {
    /// Sends `record` unchanged (key, value, headers, timestamp) to `output`.
    pub fn forward(&mut self, output: u8, record: Record) {
        self.0.push(OutputRecord {
            output,
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp: record.timestamp,
        });
    }

    pub fn push(&mut self, record: OutputRecord) {
        self.0.push(record);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The value of the header named `key` on `record`, if it has one.
pub fn header<'r>(record: &'r Record, key: &str) -> Option<&'r [u8]> {
    record
        .headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value.as_deref())
}

/// The transform's durable key-value state: writes made while processing a
/// batch land in the same log object as the batch's outputs, or not at all.
pub mod state {
    use super::plugin::state;

    pub fn get(key: &[u8]) -> Option<Vec<u8>> {
        state::get(key)
    }

    pub fn set(key: &[u8], value: &[u8]) {
        state::set(key, value)
    }

    pub fn remove(key: &[u8]) {
        state::remove(key)
    }
}

/// Lines in the host's log, tagged with tenant and transform (rate-limited
/// by the host).
pub mod log {
    use super::plugin::log::{log, Level};

    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }

    pub fn info(message: &str) {
        log(Level::Info, message)
    }

    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }

    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

#[doc(hidden)]
pub mod __private {
    use super::*;
    use std::cell::RefCell;
    use std::thread::LocalKey;

    /// Where the guest's one transform lives: a component instance is
    /// single-threaded, and `init` runs before any `process`.
    pub type Slot<T> = LocalKey<RefCell<Option<T>>>;

    pub fn init<T: Transform>(
        slot: &'static Slot<T>,
        config: Vec<(String, String)>,
    ) -> Result<(), String> {
        let t = T::init(&Config(config))?;
        slot.with(|s| *s.borrow_mut() = Some(t));
        Ok(())
    }

    pub fn process<T: Transform>(
        slot: &'static Slot<T>,
        batch: Vec<Record>,
    ) -> Result<Vec<OutputRecord>, String> {
        slot.with(|s| {
            let mut s = s.borrow_mut();
            let t = s.as_mut().ok_or("process called before init")?;
            let mut out = Out(Vec::with_capacity(batch.len()));
            t.batch(batch, &mut out)?;
            Ok(out.0)
        })
    }
}

/// Exports a [`Transform`] as the component's `transform` world.
#[macro_export]
macro_rules! export_transform {
    ($t:ty) => {
        ::std::thread_local! {
            static __FLOE_TRANSFORM: ::std::cell::RefCell<::std::option::Option<$t>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        struct __FloeWorld;

        impl $crate::bindings::Guest for __FloeWorld {
            fn init(
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::init(&__FLOE_TRANSFORM, config)
            }

            fn process(
                batch: ::std::vec::Vec<$crate::Record>,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::OutputRecord>, ::std::string::String> {
                $crate::__private::process(&__FLOE_TRANSFORM, batch)
            }
        }

        $crate::bindings::__export_world!(__FloeWorld with_types_in $crate::bindings);
    };
}
