//! Cluster mode: stateless gateways in front of workers that own shards,
//! with the object store as the only shared state (DESIGN.md invariants 1,
//! 2 and 6).
//!
//! # Layout
//! - [`rpc`]: the [`floe_worker::Shards`] calls as frames on QUIC streams.
//! - [`client`]: [`RemoteShards`], the gateway's side: one ordered lane per
//!   shard, following the shard when it moves.
//! - [`server`]: [`Node`], the worker's side: the QUIC server, its beat and
//!   the leases (claims) that say which shards it serves.
//! - `idle`: the gateway's answers for unloaded shards, from what they
//!   published.
//! - [`members`]: beats in the object store, the live view, rendezvous
//!   placement.
//! - [`gateways`]: gateways' own beats, so Metadata advertises them all.
//! - [`tls`]: the cluster CA and node certificates; mutual TLS.
//! - [`autoscale`]: how many workers the load calls for (the policy both
//!   `floe cluster local` and the chart's KEDA object follow).

pub mod autoscale;
pub mod client;
pub mod gateways;
mod idle;
pub mod members;
pub mod rpc;
pub mod server;
pub mod tls;

#[cfg(test)]
mod tests;

pub use client::RemoteShards;
pub use gateways::Gateways;
pub use members::{Timing, View};
pub use server::Node;

/// A QUIC endpoint bound to `addr` that serves with `server` (workers) and
/// dials with `client` (gateways).
pub fn endpoint(
    addr: std::net::SocketAddr,
    server: Option<quinn::ServerConfig>,
    client: quinn::ClientConfig,
) -> anyhow::Result<quinn::Endpoint> {
    let mut ep = match server {
        Some(s) => quinn::Endpoint::server(s, addr)?,
        None => quinn::Endpoint::client(addr)?,
    };
    ep.set_default_client_config(client);
    Ok(ep)
}

/// A poisoned lock's data is still memory-safe to read.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
