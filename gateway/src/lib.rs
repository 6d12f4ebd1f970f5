//! Floe's front door: listeners, the Kafka wire codec (the `kafka-protocol`
//! crate), and routing of each request to the owner of its tenant's shard.
//!
//! # Layout
//! - [`kafka`]: the Kafka listener: framing, pipelining with in-order
//!   responses, version negotiation, and one module per group of APIs.
//! - [`http`]: `/healthz`, Prometheus `/metrics`, and the admin API
//!   ([`admin`]: tenants, keys, quotas behind a bearer token).
//! - [`metrics`]: counters, rendered in the Prometheus text format.
//! - `errors`: the one place worker errors become Kafka error codes.
//! - `main.rs`: the `floe` binary and its `dev` subcommand.

pub mod admin;
pub mod authz;
mod errors;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod rest;

use std::sync::Arc;

use floe_common::TenantId;
use floe_tenants::Registry;

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
    /// A connection with nothing read, written or in progress this long is
    /// closed.
    pub connections_max_idle: std::time::Duration,
    /// A connection that must log in and has not this long after opening is
    /// closed.
    pub login_timeout: std::time::Duration,
    /// Bytes of requests a tenant's logged-in connections may have read and
    /// not yet answered, together.
    pub tenant_max_pipelined_bytes: usize,
}

/// Who may use the Kafka listener without SASL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Unauthenticated connections are the `default` tenant's; SASL logs in
    /// as a key's tenant.
    Optional,
    /// Every connection must log in with SASL first.
    Required,
}

/// Shared by every connection.
pub struct Gateway<W> {
    pub worker: Arc<W>,
    pub settings: Settings,
    pub metrics: Arc<metrics::Metrics>,
    pub registry: Arc<Registry>,
    pub auth: AuthMode,
    /// The tenant of unauthenticated connections when `auth` is optional.
    pub default_tenant: TenantId,
    /// When set, the Kafka listener speaks TLS only.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// In cluster mode, the other gateways, advertised in Metadata.
    pub peers: Option<Arc<floe_cluster::Gateways>>,
    /// Each tenant's logged-in Kafka connections here, within its quota.
    pub(crate) connections: Arc<kafka::slots::Slots>,
}

impl<W> Gateway<W> {
    pub fn new(
        worker: Arc<W>,
        settings: Settings,
        metrics: Arc<metrics::Metrics>,
        registry: Arc<Registry>,
        auth: AuthMode,
    ) -> Self {
        let default_tenant = TenantId::new(DEFAULT_TENANT).expect("a valid tenant id");
        let connections = Arc::new(kafka::slots::Slots::new(
            settings.tenant_max_pipelined_bytes,
        ));
        Self {
            worker,
            settings,
            metrics,
            registry,
            auth,
            default_tenant,
            tls: None,
            peers: None,
            connections,
        }
    }

    /// Each tenant's connections here, for the HTTP listener's event
    /// streams to count in the same quota.
    pub fn connections(&self) -> Arc<kafka::slots::Slots> {
        self.connections.clone()
    }

    pub fn with_peers(mut self, peers: Arc<floe_cluster::Gateways>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// The brokers Metadata lists: every live gateway in cluster mode,
    /// else this one as node 0.
    pub fn brokers(&self) -> Vec<floe_cluster::gateways::Broker> {
        match &self.peers {
            Some(p) => p.brokers(),
            None => vec![floe_cluster::gateways::Broker {
                node_id: 0,
                host: self.settings.advertised_host.clone(),
                port: self.settings.advertised_port,
            }],
        }
    }

    /// This gateway's node id.
    pub fn node_id(&self) -> i32 {
        self.peers.as_ref().map_or(0, |p| p.node_id())
    }

    /// The broker that leads `key` (a tenant's partition or group): spread
    /// over the gateways in cluster mode.
    pub fn leader(&self, key: &str) -> i32 {
        self.peers.as_ref().map_or(0, |p| p.leader(key))
    }

    pub fn with_tls(mut self, tls: tokio_rustls::TlsAcceptor) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// A TLS acceptor for a PEM certificate chain and private key.
pub fn tls_acceptor(cert: &str, key: &str) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {cert}"))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {cert}"))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {key}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not fit")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// A listener's next connection, once one of its `slots` is free, with
/// that slot; `None` once `stop` is set. A failed accept (out of file
/// descriptors, most likely) is logged and tried again after a pause,
/// rather than spun on while connections close.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    slots: &Arc<tokio::sync::Semaphore>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    what: &str,
) -> Option<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.ok()?,
            _ = stop.wait_for(|s| *s) => return None,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return None,
        };
        match accepted {
            Ok((socket, _)) => return Some((socket, permit)),
            Err(e) => {
                tracing::warn!(error = %e, "{what} accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// The cluster id a tenant sees, over Kafka (Metadata, DescribeCluster) and
/// HTTP (v3 paths): each tenant is a cluster of its own.
pub fn cluster_id(tenant: &TenantId) -> String {
    format!("floe-{tenant}")
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is over the limit of this resource")]
    TooLarge,
    #[error("the body did not arrive in time")]
    TimedOut,
    #[error("the body was cut off")]
    Broken,
}

/// An HTTP request's body, at most `max` bytes, arriving within `timeout`.
pub async fn read_body(
    body: hyper::body::Incoming,
    max: usize,
    timeout: std::time::Duration,
) -> Result<bytes::Bytes, BodyError> {
    use http_body_util::BodyExt;
    let collect = http_body_util::Limited::new(body, max).collect();
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Broken),
    }
}

/// The tenant `floe dev` serves unauthenticated connections as.
pub const DEFAULT_TENANT: &str = "default";

/// One request's view of the gateway: every handler sees the tenant its
/// connection is, and only through this (one place scopes names to a
/// tenant: the worker's shards are per tenant), and reaches the worker only
/// as its key's ACLs allow (`cx.worker` is the guarded worker, see
/// `authz.rs`).
pub struct Cx<W> {
    pub gw: Arc<Gateway<W>>,
    pub tenant: TenantId,
    pub worker: authz::Guarded<W>,
}

impl<W> std::ops::Deref for Cx<W> {
    type Target = Gateway<W>;

    fn deref(&self) -> &Gateway<W> {
        &self.gw
    }
}
