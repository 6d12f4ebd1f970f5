//! The `floe` binary. `floe dev` runs gateway and worker in one process, with
//! state in a local directory (or any store `--store` names).

mod cli;
mod local_cluster;
mod telemetry;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
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

// Reads and fetch responses allocate buffers of megabytes; glibc serves
// those with fresh mmaps, so every one page-faults and is zeroed again
// (perf: 30% of a consuming process in page faults). mimalloc reuses them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks for transparent huge pages on its arenas (MADV_HUGEPAGE),
/// so the first touch of a page zeroes 2 MiB, and purging part of one
/// splits it to be zeroed whole again later. In a fresh process that was
/// 68% of Floe's CPU while producing (perf, `clear_page_erms`); without
/// huge pages a first produce and a cold catch-up read on SeaweedFS went
/// about 10% and 20-40% faster (BENCHMARKS.md, session 17). Set before any
/// large allocation: the flag holds for the whole process and its children.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: PR_SET_THP_DISABLE takes integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

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
    /// Cluster mode: a stateless gateway (Kafka and HTTP) in front of workers.
    Gateway(GatewayArgs),
    /// Cluster mode: a worker owning the shards gateways send it.
    Worker(WorkerArgs),
    /// Cluster certificates and status.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
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
    /// A tenant's Wasm transforms (data API, with an API key).
    Transform {
        #[command(flatten)]
        target: cli::TenantTarget,
        #[command(subcommand)]
        cmd: cli::TransformCmd,
    },
    /// A tenant's Wasm connectors: sources and sinks (data API, with an API
    /// key).
    Connector {
        #[command(flatten)]
        target: cli::TenantTarget,
        #[command(subcommand)]
        cmd: cli::ConnectorCmd,
    },
}

/// Where state lives: every role of a cluster names the same store.
#[derive(Args)]
struct StoreArgs {
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
}

/// How shard owners write and keep their logs.
#[derive(Args)]
struct LogArgs {
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
    /// more latency). At most --max-in-flight. Default: --max-in-flight on a
    /// local directory, where PUTs are free and take a millisecond; 2
    /// elsewhere, which at full throughput keeps S3 PUTs near 1024 per GiB
    /// / --flush-bytes MiB and costs the S3 latency model nothing
    /// (BENCHMARKS.md, session 18).
    #[arg(long)]
    timer_in_flight: Option<usize>,
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
    /// A backlog of small WAL objects is compacted at most this fast per
    /// shard (compaction writes every byte again); 0: back to back.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    compact_bytes_per_sec: u64,
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
    /// How often each shard's cleaner looks at its compacted topics
    /// (cleanup.policy=compact; Kafka's log.cleaner.backoff.ms).
    #[arg(long, default_value_t = 15000)]
    clean_every_ms: u64,
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
    /// Linear memory a Wasm instance may grow to. The pool reserves
    /// address space (not memory) for 256 instances of this size.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    wasm_memory_mib: u64,
    /// Fuel per Wasm call (about one unit per instruction): a transform
    /// batch that burns it all is dead-lettered.
    #[arg(long, default_value_t = 2_000_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    wasm_fuel: u64,
    /// Wall-clock budget per Wasm call, checked every 10 ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    wasm_deadline_ms: u64,
    /// A connector's wall-clock budget per call: longer, as it includes
    /// its HTTP requests' waits (fuel still bounds its CPU).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(10..))]
    wasm_connector_deadline_ms: u64,
    /// Each tenant's CPU share for its transforms, in milliseconds of guest
    /// time per second (1000 = one core): a tenant beyond it waits between
    /// batches.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    wasm_cpu_ms_per_sec: u64,
    /// Whether a connector's allow list may open addresses that are not
    /// globally routable (loopback, private networks, link-local, where a
    /// cloud's metadata service answers). Turn it off where tenants share a
    /// network; then only public addresses are reachable, whatever is listed.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    connector_private_egress: bool,
    /// Where compiled Wasm components are kept for the next start: a local
    /// directory only this user may write [default: $XDG_CACHE_HOME/floe/wasm
    /// or ~/.cache/floe/wasm]. "" keeps them in memory only.
    #[arg(long)]
    wasm_cache_dir: Option<String>,
}

/// What clients meet: the Kafka and HTTP listeners.
#[derive(Args)]
struct FrontArgs {
    /// Kafka protocol listener.
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka_listen: SocketAddr,
    /// Host:port given to Kafka clients in metadata; defaults to the listener's.
    #[arg(long)]
    advertised_kafka: Option<String>,
    /// HTTP listener: /healthz and Prometheus /metrics.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
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
    /// Open connections at once on each listener (Kafka, HTTP); more wait
    /// in the accept queue.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// A Kafka connection that has read no request and written no response
    /// for this long, with none in progress, is closed (Kafka's
    /// connections.max.idle.ms); clients reconnect when they need to. 0: never.
    #[arg(long, default_value_t = 600_000)]
    connections_max_idle_ms: u64,
    /// With --auth required, a Kafka connection that has not logged in this
    /// long after it opened is closed, so connections nobody can use do not
    /// hold the gateway's --max-connections.
    #[arg(long, default_value_t = 10_000)]
    login_timeout_ms: u64,
    /// Bytes of requests one tenant's logged-in Kafka connections to this
    /// gateway may have read and not yet answered, together (each connection
    /// also at most 64 MiB); further reads wait. A larger request waits
    /// until it is the tenant's only one.
    #[arg(long, default_value_t = 256 << 20)]
    tenant_max_pipelined_bytes: usize,
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

/// How often workers beat, and how long a beat stays live.
#[derive(Args)]
struct TimingArgs {
    /// A worker rewrites its beat (one PUT) this often; everyone LISTs the
    /// beats this often too.
    #[arg(long, default_value_t = 1000)]
    beat_ms: u64,
    /// A worker whose beat has not changed for this long has lost its
    /// shards' leases; failover takes about this plus --beat-ms.
    #[arg(long, default_value_t = 5000)]
    lease_ms: u64,
}

impl TimingArgs {
    fn timing(&self) -> floe_cluster::Timing {
        floe_cluster::Timing {
            beat: Duration::from_millis(self.beat_ms.max(1)),
            lease: Duration::from_millis(self.lease_ms.max(2 * self.beat_ms)),
            refresh: Duration::from_millis(self.beat_ms.max(1)),
        }
    }
}

/// Cluster membership and the QUIC RPC between gateways and workers.
#[derive(Args)]
struct ClusterArgs {
    /// Directory holding `ca.pem`, `node.pem` and `node.key` (written by
    /// `floe cluster init`): mutual TLS between gateways and workers.
    #[arg(long)]
    cluster_certs: std::path::PathBuf,
    #[command(flatten)]
    timing: TimingArgs,
    /// Local UDP address a gateway dials workers from.
    #[arg(long, default_value = "127.0.0.1:0")]
    quic_bind: SocketAddr,
}

impl ClusterArgs {
    fn timing(&self) -> floe_cluster::Timing {
        self.timing.timing()
    }
}

#[derive(Args)]
struct GatewayArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    front: FrontArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args)]
struct WorkerArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// UDP address of the QUIC RPC gateways call.
    #[arg(long, default_value = "127.0.0.1:7070")]
    rpc_listen: SocketAddr,
    /// The RPC address written in this worker's beat, for gateways to dial;
    /// defaults to the bound --rpc-listen.
    #[arg(long)]
    advertised_rpc: Option<SocketAddr>,
    /// HTTP listener: /healthz and Prometheus /metrics.
    #[arg(long, default_value = "127.0.0.1:8081")]
    http_listen: SocketAddr,
    /// A shard with no produce, commit, group or transaction work this long
    /// checkpoints, publishes its offsets and is released; gateways answer
    /// idle consumers from what it published. 0 keeps shards loaded.
    #[arg(long, default_value_t = 60_000)]
    idle_timeout_ms: u64,
    /// Also stop (drain, as on SIGTERM) when stdin reaches its end: how
    /// `floe cluster local` stops its workers, and how they follow it if it
    /// is killed.
    #[arg(long, hide = true)]
    stop_on_stdin_eof: bool,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum ClusterCmd {
    /// Writes a new cluster CA and node certificate into a directory.
    Init {
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Prints the workers, their leases, and where each claimed shard is.
    Status {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// A gateway, and an autoscaler starting and stopping worker processes
    /// on this machine by the policy the chart's KEDA object encodes.
    Local(local_cluster::LocalArgs),
    /// Prints the autoscaling policy as the Helm chart's
    /// `files/policy.yaml` (KEDA's settings and Prometheus queries).
    Policy(local_cluster::PolicyArgs),
}

#[derive(Args)]
struct DevArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    front: FrontArgs,
}

fn main() -> anyhow::Result<()> {
    no_huge_pages();
    let cli = Cli::parse();
    let telemetry = telemetry::init();
    let done = run(cli);
    telemetry.shutdown();
    done
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Dev(args) => {
            let bg = maintenance_runtime()?;
            rt.block_on(dev(args, bg.handle().clone()))
        }
        Command::Gateway(args) => rt.block_on(gateway(args)),
        Command::Worker(args) => {
            let bg = maintenance_runtime()?;
            rt.block_on(worker(args, bg.handle().clone()))
        }
        Command::Cluster {
            cmd: ClusterCmd::Init { out },
        } => {
            floe_cluster::tls::init(&out)?;
            println!("wrote {}/{{ca.pem,ca.key,node.pem,node.key}}; give every gateway and worker --cluster-certs with the last three", out.display());
            Ok(())
        }
        Command::Cluster {
            cmd: ClusterCmd::Status { store },
        } => rt.block_on(cluster_status(store)),
        Command::Cluster {
            cmd: ClusterCmd::Local(args),
        } => rt.block_on(local_cluster::run(args)),
        Command::Cluster {
            cmd: ClusterCmd::Policy(args),
        } => {
            print!("{}", args.policy().render());
            Ok(())
        }
        Command::Tenant { target, cmd } => rt.block_on(cli::tenant(target, cmd)),
        Command::Key { target, cmd } => rt.block_on(cli::key(target, cmd)),
        Command::Quota { target, cmd } => rt.block_on(cli::quota(target, cmd)),
        Command::Usage { target, cmd } => rt.block_on(cli::usage(target, cmd)),
        Command::Transform { target, cmd } => rt.block_on(cli::transform(target, cmd)),
        Command::Connector { target, cmd } => rt.block_on(cli::connector(target, cmd)),
    }
}

async fn dev(a: DevArgs, bg: tokio::runtime::Handle) -> anyhow::Result<()> {
    let (counted, url, log) = store_and_log(&a.store, &a.log, bg)?;
    let registry = open_registry(&counted, &log, a.front.auth).await?;
    let log_stats = log.stats.clone();
    let worker = Arc::new(local_worker(&a.log, log, counted.clone(), &registry)?);
    let metrics = Metrics::new(counted.stats.clone(), log_stats, worker.totals());
    worker
        .policy_stats()
        .register(&floe_common::telemetry::meter());
    let front = Front::start(a.front, worker.clone(), registry.clone(), metrics, None).await?;
    tracing::info!(kafka = %front.kafka, http = %front.http, store = %url, "floe dev ready");
    shutdown_signal().await;
    front.drain().await;
    worker.close_all().await;
    close_registry(&registry).await;
    tracing::info!("stopped");
    Ok(())
}

/// `floe gateway`: the listeners, forwarding every call to the worker that
/// owns its tenant's shard.
async fn gateway(a: GatewayArgs) -> anyhow::Result<()> {
    let g = ClusterGateway::start(&a.store, a.front, &a.cluster).await?;
    tracing::info!(kafka = %g.front.kafka, http = %g.front.http, store = %g.url, "floe gateway ready");
    shutdown_signal().await;
    g.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// A cluster gateway: `floe gateway`, and the front of `floe cluster local`.
struct ClusterGateway {
    front: Front,
    registry: Arc<Registry>,
    /// What it sends workers and waits for: the autoscaler's signals.
    stats: Arc<floe_cluster::client::ClientStats>,
    view: Arc<floe_cluster::View>,
    url: String,
}

impl ClusterGateway {
    async fn start(
        store: &StoreArgs,
        front: FrontArgs,
        cluster: &ClusterArgs,
    ) -> anyhow::Result<Self> {
        let (counted, url) = open_store(store)?;
        // The registry's log is written by whichever gateway changes it (admin
        // API; they take turns through its fence) and followed by all.
        let log = LogConfig::default();
        let registry = open_registry(&counted, &log, front.auth).await?;
        registry.follow(cluster.timing().refresh);
        let identity = floe_cluster::tls::Identity::load(&cluster.cluster_certs)?;
        let endpoint = floe_cluster::endpoint(cluster.quic_bind, None, identity.client()?)?;
        let view = floe_cluster::View::new(counted.clone(), cluster.timing());
        view.refresh()
            .await
            .context("listing the cluster's workers")?;
        view.spawn_refresh();
        let remote = Arc::new(floe_cluster::RemoteShards::new(
            endpoint,
            view.clone(),
            counted.clone(),
        ));
        let stats = remote.stats();
        let metrics = Metrics::new(counted.stats.clone(), log.stats.clone(), Arc::default());
        floe_cluster::client::register(
            &floe_common::telemetry::meter(),
            stats.clone(),
            view.clone(),
        );
        let peers = Some((
            counted.clone() as Arc<dyn object_store::ObjectStore>,
            cluster.timing(),
        ));
        let front = Front::start(front, remote, registry.clone(), metrics, peers).await?;
        Ok(Self {
            front,
            registry,
            stats,
            view,
            url,
        })
    }

    async fn stop(self) {
        self.front.drain().await;
        close_registry(&self.registry).await;
    }
}

/// `floe worker`: owns shards the gateways send it, while it holds their
/// leases; serves /healthz and /metrics.
async fn worker(a: WorkerArgs, bg: tokio::runtime::Handle) -> anyhow::Result<()> {
    let (counted, url, log) = store_and_log(&a.store, &a.log, bg)?;
    let identity = floe_cluster::tls::Identity::load(&a.cluster.cluster_certs)?;
    let endpoint =
        floe_cluster::endpoint(a.rpc_listen, Some(identity.server()?), identity.client()?)?;
    let bound = endpoint.local_addr()?;
    let advertised = match a.advertised_rpc {
        Some(a) => a,
        None if bound.ip().is_unspecified() => {
            anyhow::bail!("--rpc-listen is a wildcard address: give --advertised-rpc")
        }
        None => bound,
    };
    let log_stats = log.stats.clone();
    // Quotas come from the registry the gateways write.
    let registry = Arc::new(
        Registry::open(counted.clone(), log.clone())
            .await
            .context("reading the tenant registry")?,
    );
    registry.follow(a.cluster.timing().refresh);
    let local = Arc::new(local_worker(&a.log, log, counted.clone(), &registry)?);
    let node = floe_cluster::Node::start(
        local.clone(),
        counted.clone(),
        a.cluster.timing(),
        endpoint.clone(),
        advertised,
        (a.idle_timeout_ms > 0).then(|| Duration::from_millis(a.idle_timeout_ms)),
    )
    .await
    .context("joining the cluster")?;
    let metrics = Metrics::new(counted.stats.clone(), log_stats, local.totals());
    let meter = floe_common::telemetry::meter();
    floe_cluster::server::register(&meter, &node);
    local.policy_stats().register(&meter);
    let http = tokio::net::TcpListener::bind(a.http_listen)
        .await
        .context("binding the HTTP listener")?;
    let http_addr = http.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_task = tokio::spawn(floe_gateway::http::serve::<LocalWorker>(
        http,
        metrics.clone(),
        None,
        None,
        Duration::from_secs(30),
        WORKER_HTTP_CONNECTIONS,
        stop_rx,
    ));
    metrics.ready.store(true, Relaxed);
    tracing::info!(id = node.id(), rpc = %advertised, http = %http_addr, store = %url, "floe worker ready");
    if a.stop_on_stdin_eof {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = stdin_closed() => tracing::info!("stdin closed"),
        }
    } else {
        shutdown_signal().await;
    }
    tracing::info!("draining: handing every shard over");
    metrics.ready.store(false, Relaxed);
    node.drain().await;
    endpoint.close(0u32.into(), b"leaving");
    stop_tx.send_replace(true);
    http_task.abort();
    tracing::info!("stopped");
    Ok(())
}

/// The store a shard-owning process writes to, and its logs' settings for
/// it: on a local directory maintenance runs on `bg` and the linger timer
/// keeps its local default; the latency model stands in for S3, so its PUTs
/// get S3's settings.
fn store_and_log(
    store: &StoreArgs,
    log: &LogArgs,
    bg: tokio::runtime::Handle,
) -> anyhow::Result<(Arc<Counting>, String, LogConfig)> {
    let (counted, url) = open_store(store)?;
    let local = on_local_disk(&url);
    let mut cfg = log_config(log, local && store.store_latency.is_none())?;
    cfg.background = local.then_some(bg);
    Ok((counted, url, cfg))
}

/// The log's settings from the flags; `local`: the store is a local
/// directory, PUTs taking a millisecond.
fn log_config(a: &LogArgs, local: bool) -> anyhow::Result<LogConfig> {
    let timer_in_flight = match a.timer_in_flight {
        Some(n) => n,
        None if local => a.max_in_flight,
        None => a.max_in_flight.min(2),
    };
    let log = LogConfig {
        linger: Duration::from_secs_f64(a.linger_ms / 1000.0),
        flush_bytes: a.flush_bytes,
        max_in_flight: a.max_in_flight,
        timer_in_flight,
        hedge_after: a.hedge_after_ms.map(Duration::from_millis),
        read_cache_bytes: a.read_cache_bytes,
        block_bytes: a.block_bytes,
        compact_bytes: a.compact_bytes,
        compact_bytes_per_sec: a.compact_bytes_per_sec,
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
    Ok(log)
}

fn worker_config(a: &LogArgs, log: LogConfig) -> anyhow::Result<WorkerConfig> {
    let retention_every = Duration::from_millis(a.retention_every_ms);
    anyhow::ensure!(
        !retention_every.is_zero(),
        "--retention-every-ms must be positive"
    );
    let clean_every = Duration::from_millis(a.clean_every_ms);
    anyhow::ensure!(!clean_every.is_zero(), "--clean-every-ms must be positive");
    Ok(WorkerConfig {
        log,
        retention_every,
        clean_every,
        transactional_id_expiration: Duration::from_millis(a.transactional_id_expiration_ms),
        group_initial_rebalance_delay: Duration::from_millis(a.group_initial_rebalance_delay_ms),
        usage_window: Duration::from_millis(a.usage_window_ms),
        usage_every: Duration::from_millis(a.usage_every_ms),
        wasm: floe_runtime::Limits {
            memory_bytes: (a.wasm_memory_mib << 20) as usize,
            fuel_per_call: a.wasm_fuel,
            deadline: Duration::from_millis(a.wasm_deadline_ms),
            connector_deadline: Duration::from_millis(a.wasm_connector_deadline_ms),
            cache_dir: match a.wasm_cache_dir.as_deref() {
                None => default_wasm_cache(),
                Some("") => None,
                Some(d) => Some(d.into()),
            },
            private_egress: a.connector_private_egress,
            ..floe_runtime::Limits::default()
        },
        wasm_cpu_ms_per_sec: a.wasm_cpu_ms_per_sec,
    })
}

/// The user's own cache directory: never a shared one such as /tmp, where
/// another user could make the directory first.
fn default_wasm_cache() -> Option<std::path::PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::PathBuf::from(std::env::var_os("HOME").filter(|d| !d.is_empty())?)
            .join(".cache"),
    };
    Some(base.join("floe").join("wasm"))
}

fn local_worker(
    a: &LogArgs,
    log: LogConfig,
    store: Arc<Counting>,
    registry: &Arc<Registry>,
) -> anyhow::Result<LocalWorker> {
    let limits_of = registry.clone();
    let limits: floe_worker::quota::LimitsFn =
        Arc::new(move |t: &floe_common::TenantId| limits_of.limits(t.as_str()).unwrap_or_default());
    let policy_of = registry.clone();
    let policies: floe_worker::local::policy::PolicyFn =
        Arc::new(move |t: &floe_common::TenantId| policy_of.policy_of(t.as_str()));
    Ok(LocalWorker::new(store, worker_config(a, log)?)
        .with_limits(limits)
        .with_policies(policies))
}

/// The runtime maintenance makes its store calls on (compaction, sweeping,
/// checkpoints): one worker and its blocking threads, all at nice 10. A
/// compaction step on a local directory
/// copies about 8 MiB in and out once a second; at normal priority that
/// took produce p99 at 230,000 records/s from 3-4 ms to 7-20 ms
/// (BENCHMARKS.md, session 17).
fn maintenance_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("floe-maintain")
        .on_thread_start(|| {
            #[cfg(target_os = "linux")]
            #[allow(unsafe_code)]
            // SAFETY: setpriority takes integers and touches no memory of
            // ours. On Linux, PRIO_PROCESS with 0 is the calling thread only.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            }
        })
        .enable_all()
        .build()
}

/// Only on a local directory are maintenance's store calls CPU-bound copies
/// done by the calling runtime's threads. On S3 they are transfers on
/// pooled connections, which two runtimes would share: a request on the
/// produce path could then wait on a low-priority thread.
fn on_local_disk(url: &str) -> bool {
    !url.starts_with("s3://") && !url.starts_with("memory:")
}

fn open_store(a: &StoreArgs) -> anyhow::Result<(Arc<Counting>, String)> {
    let url = a.store.clone().unwrap_or_else(|| a.data_dir.clone());
    let mut raw = store::from_url(&url, a.fsync)
        .map_err(anyhow::Error::msg)
        .context("opening the object store")?;
    if let Some(model) = a.store_latency {
        tracing::warn!(?model, "object-store calls are delayed by a latency model");
        raw = Arc::new(floe_storage::latency::Latency::new(raw, model, 0x5eed));
    }
    Ok((Arc::new(Counting::new(raw)), url))
}

async fn open_registry(
    store: &Arc<Counting>,
    log: &LogConfig,
    auth: AuthMode,
) -> anyhow::Result<Arc<Registry>> {
    let registry = Arc::new(
        Registry::open(store.clone(), log.clone())
            .await
            .context("opening the tenant registry")?,
    );
    if auth == AuthMode::Optional {
        registry
            .ensure(DEFAULT_TENANT, Plan::Unlimited)
            .await
            .context("creating the default tenant")?;
    }
    Ok(registry)
}

async fn close_registry(registry: &Registry) {
    if let Err(e) = registry.close().await {
        tracing::warn!(error = %e, "closing the tenant registry");
    }
}

/// The Kafka and HTTP listeners over some `Shards`.
struct Front {
    kafka: SocketAddr,
    http: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    kafka_task: tokio::task::JoinHandle<()>,
    http_task: tokio::task::JoinHandle<()>,
    drain_timeout: Duration,
    peers: Option<Arc<floe_cluster::Gateways>>,
    metrics: Arc<Metrics>,
}

impl Front {
    async fn start<W: floe_worker::Shards>(
        a: FrontArgs,
        worker: Arc<W>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        // Cluster mode: the store the gateways beat in, and how often.
        cluster: Option<(Arc<dyn object_store::ObjectStore>, floe_cluster::Timing)>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            a.default_partitions >= 1,
            "--default-partitions must be at least 1"
        );
        let admin_token = match a.admin_token.clone() {
            Some(t) if !t.is_empty() => t,
            _ => {
                let t = uuid::Uuid::new_v4().simple().to_string();
                // Printed, not logged: it is for the person who started it.
                eprintln!("admin token (set FLOE_ADMIN_TOKEN to choose one): {t}");
                t
            }
        };
        let kafka_listener = tokio::net::TcpListener::bind(a.kafka_listen)
            .await
            .context("binding the Kafka listener")?;
        let http_listener = tokio::net::TcpListener::bind(a.http_listen)
            .await
            .context("binding the HTTP listener")?;
        let kafka = kafka_listener.local_addr()?;
        let http = http_listener.local_addr()?;
        let advertised = a.advertised_kafka.unwrap_or_else(|| kafka.to_string());
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
            connections_max_idle: Duration::from_millis(a.connections_max_idle_ms),
            login_timeout: Duration::from_millis(a.login_timeout_ms),
            tenant_max_pipelined_bytes: a.tenant_max_pipelined_bytes,
        };
        let mut gateway = Gateway::new(
            worker.clone(),
            settings,
            metrics.clone(),
            registry.clone(),
            a.auth,
        );
        let mut peers = None;
        if let Some((store, timing)) = cluster {
            let p = floe_cluster::Gateways::start(store, timing, advertised.clone())
                .await
                .context("registering the gateway")?;
            gateway = gateway.with_peers(p.clone());
            peers = Some(p);
        }
        let mut http_tls = None;
        if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
            let tls = floe_gateway::tls_acceptor(cert, key)?;
            http_tls = a.http_tls.then(|| tls.clone());
            gateway = gateway.with_tls(tls);
        }
        let gateway = Arc::new(gateway);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let kafka_task = tokio::spawn(kafka::serve(
            gateway.clone(),
            kafka_listener,
            stop_rx.clone(),
        ));
        let http_timeout = Duration::from_millis(a.http_timeout_ms);
        let admin = Arc::new(Admin {
            registry,
            token: admin_token,
            worker,
            http_timeout,
            https: http_tls.is_some(),
            checker: Default::default(),
            stop: stop_rx.clone(),
            connections: gateway.connections(),
        });
        let http_task = tokio::spawn(floe_gateway::http::serve(
            http_listener,
            metrics.clone(),
            Some(admin),
            http_tls,
            http_timeout,
            a.max_connections,
            stop_rx,
        ));
        metrics.ready.store(true, Relaxed);
        Ok(Self {
            kafka,
            http,
            stop,
            kafka_task,
            http_task,
            drain_timeout: Duration::from_secs(a.drain_timeout_s),
            peers,
            metrics,
        })
    }

    /// Stops accepting, and waits (up to the drain timeout) for requests
    /// in flight.
    async fn drain(self) {
        tracing::info!("shutting down: draining in-flight requests");
        self.metrics.ready.store(false, Relaxed);
        if let Some(p) = &self.peers {
            p.leave().await;
        }
        self.stop.send_replace(true);
        // Both listeners finish what they took in; an event stream runs
        // until the timeout.
        let http = self.http_task.abort_handle();
        let both = async {
            let _ = tokio::join!(self.kafka_task, self.http_task);
        };
        if tokio::time::timeout(self.drain_timeout, both)
            .await
            .is_err()
        {
            tracing::warn!("drain timed out; unacknowledged requests fail with the connection");
        }
        http.abort();
    }
}

/// A worker's HTTP listener serves health checks and metrics only.
const WORKER_HTTP_CONNECTIONS: usize = 256;

/// One look at the beats: who is live, what each claims.
async fn cluster_status(a: StoreArgs) -> anyhow::Result<()> {
    let (counted, _) = open_store(&a)?;
    let timing = floe_cluster::Timing::default();
    let view = floe_cluster::View::new(counted, timing);
    view.refresh()
        .await
        .context("listing the cluster's workers")?;
    // A beat's age is unknown from one look; look again a lease later.
    tokio::time::sleep(timing.lease / 2).await;
    view.refresh().await?;
    print!("{}", floe_cluster::members::status(&view));
    Ok(())
}

/// Resolves when stdin reaches its end (or cannot be read).
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send(());
    });
    let _ = rx.await;
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
