//! Tenants: who may connect, as whom, and within which limits.
//!
//! A tenant has an id, a plan (default limits), optional quota overrides and
//! API keys. A key's secret is shown once, when it is created; the registry
//! keeps only SCRAM credentials derived from it (RFC 5802, 4096 PBKDF2
//! iterations, a random salt per key and mechanism), which verify SASL
//! SCRAM-SHA-256/512 exchanges and, by deriving once, PLAIN and HTTP basic
//! logins. Verified PLAIN secrets are cached by digest, so a login pays the
//! key-derivation function once per key and process, not per connection.
//!
//! # Layout
//! - [`acl`]: per-key ACL bindings and their evaluation.
//! - [`model`]: tenants, plans, quotas and key records, as stored.
//! - [`scram`]: credential derivation and the server side of the SCRAM and
//!   PLAIN exchanges.
//! - [`registry`]: the registry, a fenced log in the object store
//!   (`system/registry/`) with an in-memory index; revocations are announced
//!   so open connections using a key can be closed.
//! - [`usage`]: metering: usage counts, the records of closed windows
//!   (`tenants/{id}/usage/`), and per-tenant totals for `/metrics`.

pub mod acl;
pub mod model;
pub mod registry;
pub mod scram;
pub mod usage;

pub use model::{KeyInfo, Plan, PlanPolicy, Quota, Tenant};
pub use registry::{Registry, RegistryError};
pub use scram::Mechanism;
