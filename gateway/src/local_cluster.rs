//! `floe cluster local`: a cluster gateway and an autoscaler in this
//! process, and worker processes the autoscaler starts and stops on this
//! machine by `floe_cluster::autoscale`'s policy, the one the Helm chart's
//! KEDA object encodes. Like Kubernetes, it stops the newest worker first,
//! and a stopping worker hands its shards over (its drain) before it exits
//! or its grace period ends.

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use floe_cluster::autoscale::{Policy, Rate, Scaler, Signals};
use floe_common::telemetry;

use crate::{ClusterArgs, ClusterGateway, FrontArgs, StoreArgs, TimingArgs};

/// The autoscaling policy's numbers; the defaults are the chart's.
#[derive(Args)]
pub struct PolicyArgs {
    /// Workers kept however quiet the cluster is.
    #[arg(long, default_value_t = Policy::default().min_workers)]
    min_workers: u32,
    #[arg(long, default_value_t = Policy::default().max_workers)]
    max_workers: u32,
    /// Bytes per second to and from workers one worker should carry.
    #[arg(long, default_value_t = Policy::default().bytes_per_worker)]
    bytes_per_worker: u64,
    /// Throughput above this activates a cluster at zero workers.
    #[arg(long, default_value_t = Policy::default().activation_bytes)]
    activation_bytes: u64,
    /// How often the signals are read (KEDA's pollingInterval).
    #[arg(long, default_value_t = Policy::default().polling.as_millis() as u64)]
    polling_ms: u64,
    /// Quiet this long before going to zero (KEDA's cooldownPeriod).
    #[arg(long, default_value_t = Policy::default().cooldown.as_millis() as u64)]
    cooldown_ms: u64,
    /// Scaling down goes only to the most wanted within this window.
    #[arg(long, default_value_t = Policy::default().scale_down_window.as_millis() as u64)]
    scale_down_window_ms: u64,
    /// Throughput is a rate over this window.
    #[arg(long, default_value_t = Policy::default().rate_window.as_millis() as u64)]
    rate_window_ms: u64,
}

impl PolicyArgs {
    pub fn policy(&self) -> Policy {
        Policy {
            min_workers: self.min_workers,
            max_workers: self.max_workers.max(1),
            bytes_per_worker: self.bytes_per_worker.max(1),
            activation_bytes: self.activation_bytes,
            polling: Duration::from_millis(self.polling_ms.max(10)),
            cooldown: Duration::from_millis(self.cooldown_ms),
            scale_down_window: Duration::from_millis(self.scale_down_window_ms),
            rate_window: Duration::from_millis(self.rate_window_ms.max(1)),
        }
    }
}

#[derive(Args)]
pub struct LocalArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    front: FrontArgs,
    #[command(flatten)]
    timing: TimingArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Certificates for the gateway and its workers (`floe cluster init`);
    /// made afresh in a temporary directory when not given.
    #[arg(long)]
    cluster_certs: Option<PathBuf>,
    /// Workers' --idle-timeout-ms: how long a shard without work stays
    /// loaded. Scaling to zero waits for it.
    #[arg(long, default_value_t = 60_000)]
    idle_timeout_ms: u64,
    /// How long a stopping worker may take to hand its shards over before
    /// it is killed (the chart's terminationGracePeriodSeconds).
    #[arg(long, default_value_t = 60)]
    worker_grace_s: u64,
    /// A flag for every worker, e.g. `--worker-arg=--linger-ms=5`; repeat it.
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    worker_args: Vec<String>,
}

pub async fn run(a: LocalArgs) -> anyhow::Result<()> {
    let made;
    let certs = match &a.cluster_certs {
        Some(dir) => dir.clone(),
        None => {
            made = Temp::new()?;
            floe_cluster::tls::init(&made.0)?;
            made.0.clone()
        }
    };
    let mut worker_args: Vec<String> = vec![
        "worker".into(),
        "--store".into(),
        a.store
            .store
            .clone()
            .unwrap_or_else(|| a.store.data_dir.clone()),
        "--cluster-certs".into(),
        certs.display().to_string(),
        "--rpc-listen=127.0.0.1:0".into(),
        "--http-listen=127.0.0.1:0".into(),
        format!("--beat-ms={}", a.timing.beat_ms),
        format!("--lease-ms={}", a.timing.lease_ms),
        format!("--idle-timeout-ms={}", a.idle_timeout_ms),
        "--stop-on-stdin-eof".into(),
    ];
    if a.store.fsync {
        worker_args.push("--fsync".into());
    }
    if let Some(m) = a.store.store_latency {
        worker_args.push(format!("--store-latency={m}"));
    }
    worker_args.extend(a.worker_args.iter().cloned());
    let fleet = Fleet::new(
        std::env::current_exe().context("this program's path")?,
        worker_args,
        Duration::from_secs(a.worker_grace_s),
    );
    fleet.stats.register(&floe_common::telemetry::meter());
    let cluster = ClusterArgs {
        cluster_certs: certs,
        timing: a.timing,
        quic_bind: "127.0.0.1:0".parse()?,
    };
    let g = ClusterGateway::start(&a.store, a.front, &cluster).await?;
    let policy = a.policy.policy();
    tracing::info!(kafka = %g.front.kafka, http = %g.front.http, store = %g.url, ?policy, "floe cluster local ready");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let scaler = tokio::spawn(autoscale(
        Scaler::new(policy),
        fleet,
        g.stats.clone(),
        g.view.clone(),
        stop_rx,
    ));
    crate::shutdown_signal().await;
    stop_tx.send_replace(true);
    if let Ok(mut fleet) = scaler.await {
        tracing::info!("stopping the workers");
        fleet.stop_all().await;
    }
    g.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Every polling interval: read the signals, decide, start or stop workers.
async fn autoscale(
    mut scaler: Scaler,
    mut fleet: Fleet,
    stats: Arc<floe_cluster::client::ClientStats>,
    view: Arc<floe_cluster::View>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Fleet {
    let mut rate = Rate::new(scaler.policy().rate_window);
    let mut tick = tokio::time::interval(scaler.policy().polling);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return fleet,
        }
        fleet.reap();
        let now = Instant::now();
        let bytes = stats.bytes_out.load(Relaxed) + stats.bytes_in.load(Relaxed);
        let signals = Signals {
            unplaced: stats.unplaced.load(Relaxed) as f64,
            claimed: view.claimed_shards() as f64,
            bytes_per_sec: rate.observe(now, bytes),
        };
        let running = fleet.running.len() as u32;
        let want = scaler.decide(now, running, &signals);
        fleet.stats.desired.store(u64::from(want), Relaxed);
        if want != running {
            tracing::info!(from = running, to = want, ?signals, "scaling workers");
        }
        while (fleet.running.len() as u32) < want {
            if let Err(e) = fleet.start() {
                tracing::warn!(error = %e, "starting a worker");
                break;
            }
        }
        while (fleet.running.len() as u32) > want {
            fleet.stop_newest();
        }
    }
}

#[derive(Default)]
struct FleetStats {
    running: AtomicU64,
    desired: AtomicU64,
    started: AtomicU64,
    stopped: AtomicU64,
    /// Workers that ended without being asked to.
    exited: AtomicU64,
}

impl FleetStats {
    fn register(self: &Arc<Self>, m: &opentelemetry::metrics::Meter) {
        type Field = fn(&FleetStats) -> &AtomicU64;
        let gauges: [(&'static str, &'static str, Field); 2] = [
            (
                "floe_autoscaler_workers",
                "Worker processes running (not counting those stopping).",
                |s| &s.running,
            ),
            (
                "floe_autoscaler_desired_workers",
                "Workers the policy wants.",
                |s| &s.desired,
            ),
        ];
        for (name, help, field) in gauges {
            let s = self.clone();
            telemetry::gauge(m, name, help, move || field(&s).load(Relaxed) as i64);
        }
        let counters: [telemetry::Series<FleetStats>; 3] = [
            (
                "floe_autoscaler_workers_started_total",
                "Worker processes started.",
                |s| &s.started,
            ),
            (
                "floe_autoscaler_workers_stopped_total",
                "Worker processes asked to stop.",
                |s| &s.stopped,
            ),
            (
                "floe_autoscaler_workers_exited_total",
                "Worker processes that ended without being asked to.",
                |s| &s.exited,
            ),
        ];
        telemetry::counters(m, self, &counters);
    }
}

/// The worker processes.
struct Fleet {
    exe: PathBuf,
    args: Vec<String>,
    grace: Duration,
    /// Oldest first. Closing a worker's stdin asks it to stop.
    running: Vec<(Child, ChildStdin)>,
    /// Asked to stop: killed if still there when their grace is over.
    stopping: Vec<(Child, Instant)>,
    stats: Arc<FleetStats>,
}

impl Fleet {
    fn new(exe: PathBuf, args: Vec<String>, grace: Duration) -> Self {
        Self {
            exe,
            args,
            grace,
            running: Vec::new(),
            stopping: Vec::new(),
            stats: Arc::default(),
        }
    }

    fn start(&mut self) -> anyhow::Result<()> {
        // Its output goes where ours does.
        let mut child = Command::new(&self.exe)
            .args(&self.args)
            .stdin(Stdio::piped())
            .spawn()
            .context("spawning a worker")?;
        let stdin = child.stdin.take().context("a worker's stdin")?;
        tracing::info!(pid = child.id(), "started a worker");
        self.running.push((child, stdin));
        self.stats.started.fetch_add(1, Relaxed);
        self.count();
        Ok(())
    }

    fn stop_newest(&mut self) {
        if let Some((child, stdin)) = self.running.pop() {
            drop(stdin);
            tracing::info!(pid = child.id(), "stopping a worker");
            self.stopping.push((child, Instant::now()));
            self.stats.stopped.fetch_add(1, Relaxed);
            self.count();
        }
    }

    /// Forgets workers that ended; kills those past their grace.
    fn reap(&mut self) {
        let before = self.running.len();
        self.running.retain_mut(|(c, _)| match c.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                tracing::warn!(pid = c.id(), %status, "a worker ended unasked");
                false
            }
            Err(_) => false,
        });
        let gone = before - self.running.len();
        self.stats.exited.fetch_add(gone as u64, Relaxed);
        let grace = self.grace;
        self.stopping.retain_mut(|(c, since)| {
            if !matches!(c.try_wait(), Ok(None)) {
                return false;
            }
            if since.elapsed() >= grace {
                tracing::warn!(
                    pid = c.id(),
                    "a worker outlived its grace period: killing it"
                );
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            true
        });
        self.count();
    }

    fn count(&self) {
        self.stats.running.store(self.running.len() as u64, Relaxed);
    }

    /// Stops every worker and waits for them (each at most its grace).
    async fn stop_all(&mut self) {
        while !self.running.is_empty() {
            self.stop_newest();
        }
        while !self.stopping.is_empty() {
            self.reap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Dropping the stdins asks the workers to stop; they drain alone.
        self.running.clear();
    }
}

/// A temporary directory, removed when dropped.
struct Temp(PathBuf);

impl Temp {
    fn new() -> anyhow::Result<Self> {
        let p = std::env::temp_dir().join(format!("floe-local-{}", std::process::id()));
        std::fs::create_dir_all(&p).context("a directory for the cluster's certificates")?;
        Ok(Self(p))
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
