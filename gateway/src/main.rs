//! The `floe` binary. `floe dev` runs gateway and worker in one process, with
//! state in a local directory (or any store `--store` names).

mod cli;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use floe_gateway::admin::Admin;
use floe_gateway::{kafka, metrics::Metrics, AuthMode, Gateway, Settings, DEFAULT_TENANT};
use floe_storage::store::{self, Counting};
use floe_storage::LogConfig;
use floe_tenants::{Plan, Registry};
use floe_worker::{LocalWorker, WorkerConfig};
use tracing_subscriber::EnvFilter;

// Reads and fetch responses allocate buffers of megabytes; glibc serves
// those with fresh mmaps, so every one page-faults and is zeroed again
// (perf: 30% of a consuming process in page faults). mimalloc reuses them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "floe",
    version,
    about = "Serverless, Kafka-compatible streaming on object storage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Run gateway and worker in one process.
    Dev(DevArgs),
    /// Tenants of a running Floe (admin API).
    Tenant {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        cmd: cli::TenantCmd,
    },
    /// API keys of a tenant (admin API).
    Key {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        cmd: cli::KeyCmd,
    },
    /// A tenant's quota (admin API).
    Quota {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        cmd: cli::QuotaCmd,
    },
    /// A tenant's metered usage per window (admin API).
    Usage {
        #[command(flatten)]
        target: cli::Target,
        #[command(flatten)]
        cmd: cli::UsageCmd,
    },
}

#[derive(Args)]
struct DevArgs {
    /// Kafka protocol listener.
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka_listen: SocketAddr,
    /// Host:port given to Kafka clients in metadata; defaults to the listener's.
    #[arg(long)]
    advertised_kafka: Option<String>,
    /// HTTP listener: /healthz and Prometheus /metrics.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// State directory, used when --store is not given.
    #[arg(long, default_value = "./floe-data")]
    data_dir: String,
    /// Object store: a directory, file:///dir, memory:// or s3://BUCKET[/PREFIX]
    /// (endpoint and credentials from the standard AWS environment variables).
    #[arg(long)]
    store: Option<String>,
    /// fsync every object written to a local directory before acknowledging.
    #[arg(long)]
    fsync: bool,
    /// Delay every object-store call as S3 would (benchmarks): `s3` (PUT p50
    /// 30 ms / p99 150 ms, GET 15 / 60 ms) or `PUT_P50,PUT_P99,GET_P50,GET_P99` in ms.
    #[arg(long)]
    store_latency: Option<floe_storage::latency::Model>,
    /// Create unknown topics when a client's Metadata request allows it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    auto_create_topics: bool,
    /// Partitions of an auto-created topic (Kafka's num.partitions).
    #[arg(long, default_value_t = 1)]
    default_partitions: u32,
    /// Requests larger than this close the connection (Kafka's socket.request.max.bytes).
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    max_request_bytes: u32,
    /// A Fetch response holds at most this many record bytes, whatever the
    /// client asks (Kafka's fetch.max.bytes, 55 MiB there). Smaller
    /// responses bound what one connection pins, and let clients reuse their
    /// receive buffers: librdkafka maps and faults in a fresh one for every
    /// response above 32 MiB.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    fetch_max_bytes: u32,
    /// Open Kafka connections at once; more wait in the accept queue.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Flushes sealed by the timer go at one per linger (bursts of two), so a
    /// flush waits at most about this long for more records, and not at all on
    /// a quiet shard. Each flush is one PUT: 5 ms caps a shard at 200 PUTs/s.
    #[arg(long, default_value_t = 1.0)]
    linger_ms: f64,
    /// A flush is written at once when it holds this many bytes; under load
    /// flushes grow to this size (PUTs per GiB ≈ 1024 / MiB).
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    flush_bytes: usize,
    /// Flushes in flight per shard (1 to 8); acks still go in order.
    #[arg(long, default_value_t = 4)]
    max_in_flight: usize,
    /// The linger timer seals a flush only while fewer than this many are in
    /// flight; beyond, flushes wait for the size trigger (fewer, larger PUTs,
    /// more latency). At most --max-in-flight.
    #[arg(long, default_value_t = 4)]
    timer_in_flight: usize,
    /// Race a WAL PUT unanswered after this many ms with an identical one
    /// (cuts S3 tail latency; at most one extra PUT per flush). Off when absent.
    #[arg(long)]
    hedge_after_ms: Option<u64>,
    /// Memory for blocks of objects read back from the store (beyond the
    /// in-memory tail of recent writes); one GET serves every partition in a block.
    #[arg(long, default_value_t = 1024 * 1024 * 1024)]
    read_cache_bytes: usize,
    /// Size of a read-cache block. Larger blocks mean fewer GETs on S3;
    /// smaller ones waste less cache when each partition's part of an object
    /// is small (BENCHMARKS.md: 64 partitions catching up read 15x what they
    /// used with 4 MiB blocks in 256 MiB of cache, 1.06x in 1 GiB).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    block_bytes: usize,
    /// Compaction's data-object size; WAL objects of at least half that are
    /// kept as they are. 0 turns compaction off.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    compact_bytes: usize,
    /// Compact small WAL objects once the oldest has waited this long.
    #[arg(long, default_value_t = 60_000)]
    compact_after_ms: u64,
    /// How long garbage objects stay after they stop being referenced (for
    /// reads in flight). Negative: never delete anything.
    #[arg(long, default_value_t = 30_000, allow_negative_numbers = true)]
    sweep_grace_ms: i64,
    /// Garbage waiting for a checkpoint gets one once the last is this old
    /// (at most one extra checkpoint PUT per interval and shard).
    #[arg(long, default_value_t = 30_000)]
    checkpoint_interval_ms: u64,
    /// How often compaction and sweeping look for work.
    #[arg(long, default_value_t = 1000)]
    maintain_every_ms: u64,
    /// How often each shard applies retention.ms and retention.bytes.
    #[arg(long, default_value_t = 5000)]
    retention_every_ms: u64,
    /// An idempotent producer idle this long is forgotten (Kafka's
    /// producer.id.expiration.ms); on its return it gets UNKNOWN_PRODUCER_ID
    /// and starts again under a new id. Checked every --maintain-every-ms.
    #[arg(long, default_value_t = 86_400_000)]
    producer_id_expiration_ms: u64,
    /// A transactional id without an ongoing transaction is forgotten after
    /// this long idle (Kafka's transactional.id.expiration.ms).
    #[arg(long, default_value_t = 604_800_000)]
    transactional_id_expiration_ms: u64,
    /// A consumer group formed from empty waits this long for more members
    /// before its first generation (Kafka's group.initial.rebalance.delay.ms,
    /// same default): one rebalance while a fleet starts instead of many.
    #[arg(long, default_value_t = 3000)]
    group_initial_rebalance_delay_ms: u64,
    /// Usage is metered in windows of this length; each window's record
    /// (per tenant and shard) is written once it is over.
    #[arg(long, default_value_t = 3_600_000, value_parser = clap::value_parser!(u64).range(1..))]
    usage_window_ms: u64,
    /// How often each open shard makes metered usage durable (one log
    /// append) and accrues stored bytes, partitions and connection time.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    usage_every_ms: u64,
    /// PEM certificate chain: with --tls-key, the Kafka listener speaks TLS
    /// only (SASL_SSL for clients).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<String>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<String>,
    /// The HTTP listener speaks HTTPS too, with --tls-cert and --tls-key
    /// (basic auth carries secrets).
    #[arg(long, requires = "tls_cert")]
    http_tls: bool,
    /// How long an HTTP client has to send a request's headers, and then
    /// its body (slow clients are cut off: 408 or a closed connection).
    #[arg(long, default_value_t = 30_000)]
    http_timeout_ms: u64,
    /// Whether Kafka clients must log in with SASL (PLAIN, SCRAM-SHA-256/512;
    /// an API key and its secret). With `optional`, unauthenticated
    /// connections are the `default` tenant's.
    #[arg(long, value_enum, default_value_t = AuthMode::Optional)]
    auth: AuthMode,
    /// Bearer token of the admin API (/admin/v1). When unset, one is made up
    /// and printed at start.
    #[arg(long, env = "FLOE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// On Ctrl-C, how long to wait for in-flight requests before giving up.
    #[arg(long, default_value_t = 30)]
    drain_timeout_s: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Dev(args) => rt.block_on(dev(args)),
        Command::Tenant { target, cmd } => rt.block_on(cli::tenant(target, cmd)),
        Command::Key { target, cmd } => rt.block_on(cli::key(target, cmd)),
        Command::Quota { target, cmd } => rt.block_on(cli::quota(target, cmd)),
        Command::Usage { target, cmd } => rt.block_on(cli::usage(target, cmd)),
    }
}

async fn dev(a: DevArgs) -> anyhow::Result<()> {
    let log = LogConfig {
        linger: Duration::from_secs_f64(a.linger_ms / 1000.0),
        flush_bytes: a.flush_bytes,
        max_in_flight: a.max_in_flight,
        timer_in_flight: a.timer_in_flight,
        hedge_after: a.hedge_after_ms.map(Duration::from_millis),
        read_cache_bytes: a.read_cache_bytes,
        block_bytes: a.block_bytes,
        compact_bytes: a.compact_bytes,
        compact_after: Duration::from_millis(a.compact_after_ms),
        sweep_grace: u64::try_from(a.sweep_grace_ms)
            .ok()
            .map(Duration::from_millis),
        checkpoint_interval: Duration::from_millis(a.checkpoint_interval_ms),
        maintain_every: Duration::from_millis(a.maintain_every_ms),
        producer_expiry: Some(Duration::from_millis(a.producer_id_expiration_ms)),
        ..LogConfig::default()
    };
    log.validate()
        .map_err(anyhow::Error::msg)
        .context("invalid log settings")?;
    anyhow::ensure!(
        a.default_partitions >= 1,
        "--default-partitions must be at least 1"
    );
    let url = a.store.clone().unwrap_or_else(|| a.data_dir.clone());
    let mut raw = store::from_url(&url, a.fsync)
        .map_err(anyhow::Error::msg)
        .context("opening the object store")?;
    if let Some(model) = a.store_latency {
        tracing::warn!(?model, "object-store calls are delayed by a latency model");
        raw = Arc::new(floe_storage::latency::Latency::new(raw, model, 0x5eed));
    }
    let counted = Arc::new(Counting::new(raw));
    let registry = Arc::new(
        Registry::open(counted.clone(), log.clone())
            .await
            .context("opening the tenant registry")?,
    );
    if a.auth == AuthMode::Optional {
        registry
            .ensure(DEFAULT_TENANT, Plan::Unlimited)
            .await
            .context("creating the default tenant")?;
    }
    let admin_token = match a.admin_token.clone() {
        Some(t) if !t.is_empty() => t,
        _ => {
            let t = uuid::Uuid::new_v4().simple().to_string();
            // Printed, not logged: it is for the person who started dev.
            eprintln!("admin token (set FLOE_ADMIN_TOKEN to choose one): {t}");
            t
        }
    };
    let (store_stats, log_stats) = (counted.stats.clone(), log.stats.clone());
    let retention_every = Duration::from_millis(a.retention_every_ms);
    anyhow::ensure!(
        !retention_every.is_zero(),
        "--retention-every-ms must be positive"
    );
    let limits_of = registry.clone();
    let limits: floe_worker::quota::LimitsFn =
        Arc::new(move |t: &floe_common::TenantId| limits_of.limits(t.as_str()).unwrap_or_default());
    let worker = Arc::new(
        LocalWorker::new(
            counted,
            WorkerConfig {
                log,
                retention_every,
                transactional_id_expiration: Duration::from_millis(
                    a.transactional_id_expiration_ms,
                ),
                group_initial_rebalance_delay: Duration::from_millis(
                    a.group_initial_rebalance_delay_ms,
                ),
                usage_window: Duration::from_millis(a.usage_window_ms),
                usage_every: Duration::from_millis(a.usage_every_ms),
            },
        )
        .with_limits(limits),
    );
    let metrics = Arc::new(Metrics::new(store_stats, log_stats, worker.totals()));

    let kafka_listener = tokio::net::TcpListener::bind(a.kafka_listen)
        .await
        .context("binding the Kafka listener")?;
    let http_listener = tokio::net::TcpListener::bind(a.http_listen)
        .await
        .context("binding the HTTP listener")?;
    let kafka_addr = kafka_listener.local_addr()?;
    let advertised = a.advertised_kafka.unwrap_or_else(|| kafka_addr.to_string());
    let (host, port) = advertised
        .rsplit_once(':')
        .context("--advertised-kafka is host:port")?;
    let settings = Settings {
        advertised_host: host.to_string(),
        advertised_port: port.parse().context("advertised port")?,
        auto_create_topics: a.auto_create_topics,
        default_partitions: a.default_partitions,
        max_request_bytes: a.max_request_bytes,
        fetch_max_bytes: a.fetch_max_bytes,
        max_connections: a.max_connections,
    };
    let mut gateway = Gateway::new(
        worker.clone(),
        settings,
        metrics.clone(),
        registry.clone(),
        a.auth,
    );
    let mut http_tls = None;
    if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
        let tls = floe_gateway::tls_acceptor(cert, key)?;
        http_tls = a.http_tls.then(|| tls.clone());
        gateway = gateway.with_tls(tls);
    }
    let gateway = Arc::new(gateway);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let kafka_task = tokio::spawn(kafka::serve(
        gateway.clone(),
        kafka_listener,
        stop_rx.clone(),
    ));
    let http_timeout = Duration::from_millis(a.http_timeout_ms);
    let admin = Arc::new(Admin {
        registry: registry.clone(),
        token: admin_token,
        worker: worker.clone(),
        http_timeout,
        https: http_tls.is_some(),
    });
    let http_task = tokio::spawn(floe_gateway::http::serve(
        http_listener,
        metrics,
        admin,
        http_tls,
        http_timeout,
        stop_rx,
    ));
    tracing::info!(kafka = %kafka_addr, http = %a.http_listen, store = %url, "floe dev ready");

    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    stop_tx.send_replace(true);
    let drained = tokio::time::timeout(Duration::from_secs(a.drain_timeout_s), kafka_task).await;
    if drained.is_err() {
        tracing::warn!("drain timed out; unacknowledged requests fail with the connection");
    }
    worker.close_all().await;
    if let Err(e) = registry.close().await {
        tracing::warn!(error = %e, "closing the tenant registry");
    }
    http_task.abort();
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::mem::drop(ctrl_c.await),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
