//! Floe's front door: listeners, the Kafka wire codec (the `kafka-protocol`
//! crate), and routing of each request to the owner of its tenant's shard.
//!
//! # Layout
//! - [`kafka`]: the Kafka listener: framing, pipelining with in-order
//!   responses, version negotiation, and one module per group of APIs.
//! - [`http`]: `/healthz` and Prometheus `/metrics`.
//! - [`metrics`]: counters, rendered in the Prometheus text format.
//! - `errors`: the one place worker errors become Kafka error codes.
//! - `main.rs`: the `floe` binary and its `dev` subcommand.

mod errors;
pub mod http;
pub mod kafka;
pub mod metrics;

use std::sync::Arc;

use floe_common::TenantId;

/// Gateway settings, validated at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub advertised_host: String,
    pub advertised_port: i32,
    pub auto_create_topics: bool,
    pub default_partitions: u32,
    pub max_request_bytes: u32,
    pub fetch_max_bytes: u32,
    pub max_connections: usize,
}

/// Shared by every connection.
pub struct Gateway<W> {
    pub worker: Arc<W>,
    pub settings: Settings,
    pub metrics: Arc<metrics::Metrics>,
    /// Until authentication arrives (SASL, API keys), every connection is
    /// this tenant's.
    pub dev_tenant: TenantId,
}

impl<W> Gateway<W> {
    pub fn new(worker: Arc<W>, settings: Settings, metrics: Arc<metrics::Metrics>) -> Self {
        let dev_tenant = TenantId::new("dev").expect("a valid tenant id");
        Self {
            worker,
            settings,
            metrics,
            dev_tenant,
        }
    }
}
