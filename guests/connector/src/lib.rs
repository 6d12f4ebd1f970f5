//! Write Floe connectors in Rust.
//!
//! A source implements [`Source`] and is exported with [`export_source!`];
//! a sink implements [`Sink`] and is exported with [`export_sink!`]. Build
//! with `cargo build --release --target wasm32-wasip2` and create it with
//! `floe connector create`. [`http`] is a small blocking client over
//! `wasi:http`; the host lets its requests reach only the connector's
//! `allow` list. The contract (cursor, retries, dead letters, limits) is
//! `wit/README.md`.
//!
//! ```ignore
//! use floe_connector::{http, Config, Record, Sink};
//!
//! struct Hook(String);
//!
//! impl Sink for Hook {
//!     fn init(config: &Config) -> Result<Self, String> {
//!         Ok(Hook(config.require("url")?.to_string()))
//!     }
//!     fn deliver(&mut self, batch: Vec<Record>) -> Result<(), String> {
//!         let body: Vec<u8> = batch.iter().flat_map(|r| r.value.clone().unwrap_or_default()).collect();
//!         http::Request::post(&self.0, body).send()?.ok()?;
//!         Ok(())
//!     }
//! }
//!
//! floe_connector::export_sink!(Hook);
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "connector",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "::floe_connector::bindings",
    });
}

pub mod http;

use bindings::floe::plugin;

pub use plugin::connector_types::Polled;
pub use plugin::types::{Header, InputRecord as Record, OutputRecord};

/// A source instance, made by `init` and polled. Anything kept in `self` is
/// lost when the host replaces the instance; where to go on from is the
/// cursor, stored by the host with the records of each poll.
pub trait Source: Sized + 'static {
    fn init(config: &Config) -> Result<Self, String>;

    /// Up to `max` records after `cursor` (`None` on the very first poll).
    /// Return no records when there is nothing new.
    fn poll(&mut self, max: u32, cursor: Option<Vec<u8>>) -> Result<Polled, String>;
}

/// A sink instance, made by `init` and given batches of one input
/// partition in offset order. Return `Ok` only once the receiver has the
/// batch: the input offset advances then.
pub trait Sink: Sized + 'static {
    fn init(config: &Config) -> Result<Self, String>;

    fn deliver(&mut self, batch: Vec<Record>) -> Result<(), String>;
}

/// The connector's `config` pairs.
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

/// Lines in the host's log, tagged with tenant and connector (rate-limited
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

    /// Where the guest's one connector lives: a component instance is
    /// single-threaded, and `init` runs before any other call.
    pub type Slot<T> = LocalKey<RefCell<Option<T>>>;

    pub fn init<T>(
        slot: &'static Slot<T>,
        config: Vec<(String, String)>,
        make: fn(&Config) -> Result<T, String>,
    ) -> Result<(), String> {
        let t = make(&Config(config))?;
        slot.with(|s| *s.borrow_mut() = Some(t));
        Ok(())
    }

    pub fn with<T, R>(
        slot: &'static Slot<T>,
        f: impl FnOnce(&mut T) -> Result<R, String>,
    ) -> Result<R, String> {
        slot.with(|s| {
            let mut s = s.borrow_mut();
            f(s.as_mut().ok_or("called before init")?)
        })
    }
}

/// Exports a [`Source`] as the component's `connector` world.
#[macro_export]
macro_rules! export_source {
    ($t:ty) => {
        ::std::thread_local! {
            static __FLOE_CONNECTOR: ::std::cell::RefCell<::std::option::Option<$t>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        struct __FloeWorld;

        impl $crate::bindings::Guest for __FloeWorld {
            fn init(
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::init(&__FLOE_CONNECTOR, config, <$t as $crate::Source>::init)
            }
        }

        impl $crate::bindings::exports::floe::plugin::source::Guest for __FloeWorld {
            fn poll(
                max: u32,
                cursor: ::std::option::Option<::std::vec::Vec<u8>>,
            ) -> ::std::result::Result<$crate::Polled, ::std::string::String> {
                $crate::__private::with(&__FLOE_CONNECTOR, |s| $crate::Source::poll(s, max, cursor))
            }
        }

        impl $crate::bindings::exports::floe::plugin::sink::Guest for __FloeWorld {
            fn deliver(
                _: ::std::vec::Vec<$crate::Record>,
            ) -> ::std::result::Result<(), ::std::string::String> {
                ::std::result::Result::Err("this connector is a source".into())
            }
        }

        $crate::bindings::__export_world!(__FloeWorld with_types_in $crate::bindings);
    };
}

/// Exports a [`Sink`] as the component's `connector` world.
#[macro_export]
macro_rules! export_sink {
    ($t:ty) => {
        ::std::thread_local! {
            static __FLOE_CONNECTOR: ::std::cell::RefCell<::std::option::Option<$t>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        struct __FloeWorld;

        impl $crate::bindings::Guest for __FloeWorld {
            fn init(
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::init(&__FLOE_CONNECTOR, config, <$t as $crate::Sink>::init)
            }
        }

        impl $crate::bindings::exports::floe::plugin::source::Guest for __FloeWorld {
            fn poll(
                _: u32,
                _: ::std::option::Option<::std::vec::Vec<u8>>,
            ) -> ::std::result::Result<$crate::Polled, ::std::string::String> {
                ::std::result::Result::Err("this connector is a sink".into())
            }
        }

        impl $crate::bindings::exports::floe::plugin::sink::Guest for __FloeWorld {
            fn deliver(
                batch: ::std::vec::Vec<$crate::Record>,
            ) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::with(&__FLOE_CONNECTOR, |s| $crate::Sink::deliver(s, batch))
            }
        }

        $crate::bindings::__export_world!(__FloeWorld with_types_in $crate::bindings);
    };
}
