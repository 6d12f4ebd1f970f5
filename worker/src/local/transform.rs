//! Transforms on the shard owner: deploy, list, delete, and the runner that
//! feeds each input partition's committed records to the guest and appends
//! its outputs, progress and state in one log object (see `transforms.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use floe_common::{batch, TenantId};
use floe_runtime::{Labels, Runtime, StateRead, Transform, World};
use floe_storage::log::now_ms;
use floe_storage::{Entry, StreamId};
use floe_tenants::usage::Counts;
use object_store::ObjectStore;
use tokio::sync::watch;
use tracing::Instrument;

use super::{leader_epoch, usage, LocalWorker, Shard};
use crate::catalog;
use crate::records;
use crate::transforms::TransformStatus;
use crate::transforms::{self as tf, Deployed, LastError, Out, Progress, TransformSpec};
use crate::{NewTopic, Result, WorkerError};

/// Input bytes a batch reads at most: the guest gets them in one call.
pub(super) const BATCH_BYTES: usize = 1 << 20;
/// A runner with nothing to do looks again at least this often (a topic
/// created or partitions added does not wake it).
const IDLE_RECHECK: Duration = Duration::from_secs(1);
/// A runner that cannot start its guest tries again after this long.
const RETRY: Duration = Duration::from_secs(5);

/// A runner's handle on the shard: its generation and what it says.
struct Running {
    generation: u64,
    status: Arc<Mutex<String>>,
    stop: watch::Sender<bool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A shard's transforms (or connectors) in this process.
#[derive(Default)]
pub(super) struct Runners {
    running: Mutex<HashMap<String, Running>>,
    /// Held by a runner from reading a partition's progress until its
    /// append is durable, and by deploys and deletes: an old generation's
    /// runner can never append a batch a newer one also appends.
    pub(super) steps: tokio::sync::Mutex<()>,
    /// The tenant's guest time (µs) against its CPU share: a tenant whose
    /// plugins run hot (or spin to their deadline) waits between batches,
    /// so the process's cores stay with everyone else. The transforms'
    /// one is the tenant's: connectors draw from it too.
    cpu: Mutex<crate::quota::Rate>,
}

fn lock(r: &Runners) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
    r.running.lock().unwrap_or_else(|p| p.into_inner())
}

impl Runners {
    /// Registers the runner of `name`'s `generation` (stopping any other):
    /// the status it sets, and the signal that stops it.
    pub(super) fn start(
        &self,
        name: &str,
        generation: u64,
    ) -> (Arc<Mutex<String>>, watch::Receiver<bool>) {
        let status = Arc::new(Mutex::new("starting".to_string()));
        let (stop, stopped) = watch::channel(false);
        let running = Running {
            generation,
            status: status.clone(),
            stop,
        };
        lock(self).insert(name.to_string(), running);
        (status, stopped)
    }

    /// Stops `name`'s runner, if it runs here.
    pub(super) fn stop(&self, name: &str) {
        lock(self).remove(name);
    }

    /// What the runner of `name`'s `generation` says, if it runs here.
    pub(super) fn state(&self, name: &str, generation: u64) -> Option<String> {
        lock(self)
            .get(name)
            .filter(|r| r.generation == generation)
            .map(|r| r.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Charges a call that began at `began` to the tenant's CPU share: its
    /// wall time less `io_wait` (time waiting on the network, not the
    /// guest). How long the tenant is now beyond its share.
    pub(super) fn charge(
        &self,
        began: tokio::time::Instant,
        io_wait: Duration,
        cpu_us_per_sec: u64,
    ) -> Duration {
        let now = tokio::time::Instant::now();
        let spent = now.duration_since(began).saturating_sub(io_wait);
        self.cpu.lock().unwrap_or_else(|p| p.into_inner()).charge(
            spent.as_micros() as u64,
            Some(cpu_us_per_sec),
            now,
        )
    }
}

pub(super) fn set(status: &Mutex<String>, s: impl Into<String>) {
    *status.lock().unwrap_or_else(|p| p.into_inner()) = s.into();
}

fn deployed(shard: &Shard) -> Vec<Deployed> {
    shard
        .log
        .scan(tf::DEPLOYED_PREFIX)
        .into_iter()
        .filter_map(|(_, v)| tf::decode(&v))
        .collect()
}

impl LocalWorker {
    /// The Wasm engine, made on first use (it reserves address space for
    /// its pool).
    pub(super) fn runtime(&self) -> Result<Arc<Runtime>> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt.clone());
        }
        let rt = Runtime::new(self.cfg.wasm.clone())
            .map_err(|e| WorkerError::Unavailable(e.to_string()))?;
        Ok(self.runtime.get_or_init(|| rt).clone())
    }

    /// Starts a runner for every transform deployed on a shard just opened.
    pub(super) fn start_transforms(&self, shard: &Arc<Shard>) {
        for d in deployed(shard) {
            self.start_runner(shard, &d);
        }
    }

    fn start_runner(&self, shard: &Arc<Shard>, d: &Deployed) {
        let runtime = match self.runtime() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "no wasm runtime; transforms stay stopped");
                return;
            }
        };
        let (status, stopped) = shard.transforms.start(&d.spec.name, d.generation);
        let runner = Runner {
            shard: Arc::downgrade(shard),
            tenant: shard.tenant.clone(),
            name: d.spec.name.clone(),
            generation: d.generation,
            runtime,
            store: self.store.clone(),
            status,
            stopped,
            cpu_us_per_sec: self.cfg.wasm_cpu_ms_per_sec * 1000,
        };
        tokio::spawn(runner.run());
    }

    pub(super) async fn deploy(
        &self,
        tenant: &TenantId,
        spec: TransformSpec,
        wasm: Bytes,
    ) -> Result<TransformStatus> {
        catalog::validate_name(&spec.name)
            .map_err(|_| invalid(format!("transform name {:?} is not valid", spec.name)))?;
        if spec.outputs.is_empty() || spec.outputs.len() > floe_runtime::MAX_OUTPUTS {
            return Err(invalid(format!(
                "a transform has 1 to {} outputs, not {}",
                floe_runtime::MAX_OUTPUTS,
                spec.outputs.len()
            )));
        }
        let digest = self.check_upload(World::Transform, &wasm).await?;
        let shard = self.shard(tenant).await?;
        let input = shard.named_topic(&spec.input)?;
        for o in &spec.outputs {
            shard.named_topic(o)?;
        }
        let dead_letter = spec
            .dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}-dlq", spec.name));
        if spec.outputs.contains(&spec.input) || dead_letter == spec.input {
            return Err(invalid("a transform may not write to its own input"));
        }
        self.ensure_topic(tenant, &shard, &dead_letter).await?;
        let previous: Option<Deployed> = shard
            .log
            .get(&tf::deployed_key(&spec.name))
            .and_then(|v| tf::decode(&v));
        if previous.is_none() && deployed(&shard).len() >= tf::MAX_TRANSFORMS {
            return Err(WorkerError::PolicyViolation(format!(
                "at most {} transforms per tenant",
                tf::MAX_TRANSFORMS
            )));
        }
        self.store_component(tenant, &digest.0, wasm).await?;
        let _catalog = shard.catalog_lock.lock().await;
        let d = Deployed {
            dead_letter,
            digest: digest.0,
            deployed_ms: now_ms(),
            generation: previous.as_ref().map_or(1, |p| p.generation + 1),
            spec,
        };
        let name = d.spec.name.clone();
        let mut entries = vec![Entry::Put {
            key: tf::deployed_key(&name),
            value: Some(tf::encode(&d)),
        }];
        // A redeploy on the same input goes on from where the last one
        // was, with its state; a new input starts afresh.
        let same_input = previous
            .as_ref()
            .is_some_and(|p| p.spec.input == d.spec.input);
        if !same_input {
            entries.extend(forget(&shard, &name));
            for (p, &stream) in input.streams.iter().enumerate() {
                let (log_start, hw) = shard.log.offsets(StreamId(stream))?;
                let offset = if d.spec.from_start { log_start } else { hw };
                let progress = Progress {
                    offset,
                    ..Progress::default()
                };
                entries.push(Entry::Put {
                    key: tf::progress_key(&name, p as i32),
                    value: Some(tf::encode(&progress)),
                });
            }
        }
        let steps = shard.transforms.steps.lock().await;
        shard.log.append(entries).await?.durable().await?;
        drop(steps);
        drop(_catalog);
        tracing::info!(%tenant, transform = %name, digest = %d.digest, generation = d.generation, "transform deployed");
        self.start_runner(&shard, &d);
        status(&shard, &d)
    }

    pub(super) async fn statuses(&self, tenant: &TenantId) -> Result<Vec<TransformStatus>> {
        let shard = self.shard(tenant).await?;
        deployed(&shard).iter().map(|d| status(&shard, d)).collect()
    }

    pub(super) async fn undeploy(&self, tenant: &TenantId, name: &str) -> Result<()> {
        let shard = self.shard(tenant).await?;
        let _catalog = shard.catalog_lock.lock().await;
        let Some(d) = shard
            .log
            .get(&tf::deployed_key(name))
            .and_then(|v| tf::decode::<Deployed>(&v))
        else {
            return Err(WorkerError::UnknownTransform(name.to_string()));
        };
        let mut entries = forget(&shard, name);
        entries.push(Entry::Put {
            key: tf::deployed_key(name),
            value: None,
        });
        let steps = shard.transforms.steps.lock().await;
        shard.log.append(entries).await?.durable().await?;
        drop(steps);
        shard.transforms.stop(name);
        self.drop_component(&shard, &d.digest).await;
        tracing::info!(%tenant, transform = %name, "transform deleted");
        Ok(())
    }
}

impl LocalWorker {
    /// Checks an upload for `world` (size, a component, its imports),
    /// compiling it off the async threads: its digest.
    pub(super) async fn check_upload(
        &self,
        world: World,
        wasm: &Bytes,
    ) -> Result<floe_runtime::Digest> {
        if wasm.len() > tf::MAX_WASM_BYTES {
            return Err(WorkerError::InvalidPlugin(format!(
                "the component is {} bytes; at most {}",
                wasm.len(),
                tf::MAX_WASM_BYTES
            )));
        }
        let runtime = self.runtime()?;
        let bytes = wasm.clone();
        tokio::task::spawn_blocking(move || runtime.check(world, &bytes))
            .await
            .map_err(|e| WorkerError::Unavailable(e.to_string()))?
            .map_err(|e| WorkerError::InvalidPlugin(e.to_string()))
    }

    /// Stores a component beside the tenant's shards, named by content.
    pub(super) async fn store_component(
        &self,
        tenant: &TenantId,
        digest: &str,
        wasm: Bytes,
    ) -> Result<()> {
        object_store::ObjectStoreExt::put(&*self.store, &tf::wasm_path(tenant, digest), wasm.into())
            .await
            .map(drop)
            .map_err(|e| WorkerError::Unavailable(format!("storing the component: {e}")))
    }

    /// Deletes a component no transform or connector runs any more.
    pub(super) async fn drop_component(&self, shard: &Shard, digest: &str) {
        let in_use = deployed(shard).iter().any(|d| d.digest == digest)
            || super::connector::created(shard)
                .iter()
                .any(|c| c.digest == digest);
        if in_use {
            return;
        }
        let path = tf::wasm_path(&shard.tenant, digest);
        if let Err(e) = object_store::ObjectStoreExt::delete(&*self.store, &path).await {
            tracing::warn!(tenant = %shard.tenant, error = %e, "deleting an unused component");
        }
    }

    /// Creates topic `name` with one partition unless it exists: a
    /// dead-letter topic.
    pub(super) async fn ensure_topic(
        &self,
        tenant: &TenantId,
        shard: &Shard,
        name: &str,
    ) -> Result<()> {
        if shard.topic(name).is_ok() {
            return Ok(());
        }
        let topic = NewTopic {
            name: name.to_string(),
            partitions: 1,
            configs: Default::default(),
            validate_only: false,
        };
        match crate::Shards::create_topic(self, tenant, topic).await {
            Ok(_) | Err(WorkerError::TopicExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A component's bytes, from the store.
pub(super) async fn fetch_component(
    store: &dyn ObjectStore,
    tenant: &TenantId,
    digest: &str,
) -> std::result::Result<Bytes, String> {
    let path = tf::wasm_path(tenant, digest);
    let got = object_store::ObjectStoreExt::get(store, &path)
        .await
        .map_err(|e| format!("fetching the component: {e}"))?;
    got.bytes()
        .await
        .map_err(|e| format!("fetching the component: {e}"))
}

/// Up to [`BATCH_BYTES`] of a partition's committed records from
/// `offset`; `None` when there is nothing there (yet, or any more).
pub(super) async fn read_committed(
    shard: &Shard,
    stream: StreamId,
    offset: i64,
    topic: &str,
) -> std::result::Result<Option<records::Decoded>, String> {
    let read = match shard
        .log
        .read_isolated(stream, offset, BATCH_BYTES, true, true)
        .await
    {
        Ok(r) => r,
        Err(floe_storage::Error::OffsetOutOfRange { .. }) => return Ok(None),
        Err(e) => return Err(format!("reading {topic}: {e}")),
    };
    if read.batches.is_empty() {
        return Ok(None);
    }
    records::decode(&read, offset).map(Some)
}

/// A failed batch's entries: its records, with the reason in a header, as
/// one append to the dead-letter `topic`, and the failure as the last error
/// (at `error_key`).
pub(super) fn dead_letters(
    shard: &Shard,
    topic: &str,
    partition: i32,
    records: &[kafka_protocol::records::Record],
    f: floe_runtime::Failure,
    error_key: Bytes,
) -> std::result::Result<Vec<Entry>, String> {
    let reason = format!("{}: {}", f.kind.as_str(), f.message);
    let dead = records
        .iter()
        .map(|r| tf::dead_letter(r, &reason))
        .collect();
    let mut entries: Vec<Entry> = append_to(shard, topic, partition, dead)?
        .into_iter()
        .collect();
    let last = LastError {
        at_ms: now_ms(),
        partition,
        offset: records.first().map_or(-1, |r| r.offset),
        kind: f.kind.as_str().into(),
        message: f.message,
    };
    entries.push(Entry::Put {
        key: error_key,
        value: Some(tf::encode(&last)),
    });
    Ok(entries)
}

/// Records as one append to `topic`'s partition `partition` (modulo its
/// partitions); `None` for no records.
pub(super) fn append_to(
    shard: &Shard,
    topic: &str,
    partition: i32,
    records: Vec<Out>,
) -> std::result::Result<Option<Entry>, String> {
    if records.is_empty() {
        return Ok(None);
    }
    let meta = shard
        .topic(topic)
        .map_err(|_| format!("output topic {topic} does not exist"))?;
    let p = partition.rem_euclid(meta.streams.len().max(1) as i32);
    let stream = meta
        .stream(p)
        .ok_or_else(|| format!("output topic {topic} has no partitions"))?;
    let config = meta.config();
    // As for a produce: a compacted topic takes keyed records only.
    if config.compact && records.iter().any(|r| r.key.is_none()) {
        return Err(format!(
            "compacted topic {topic} cannot accept a record without a key"
        ));
    }
    let data = tf::encode_batch(records)?;
    let h = batch::parse(&data).map_err(|e| e.to_string())?;
    // The topic's timestamps may be the log's, as for a produce.
    let (data, max_timestamp) = if config.log_append_time {
        let t = now_ms();
        (batch::set_log_append_time(data, t), t)
    } else {
        (data, h.max_timestamp)
    };
    Ok(Some(Entry::Append {
        stream,
        base_offset: 0,
        offsets: h.offset_count(),
        max_timestamp,
        producer: None,
        data: batch::set_leader_epoch(data, leader_epoch(&shard.log)),
    }))
}

pub(super) fn invalid(m: impl Into<String>) -> WorkerError {
    WorkerError::InvalidConfig(m.into())
}

/// Entries removing a transform's progress, state and last error.
fn forget(shard: &Shard, name: &str) -> Vec<Entry> {
    let mut keys: Vec<Bytes> = shard
        .log
        .scan(&tf::progress_prefix(name))
        .into_iter()
        .chain(shard.log.scan(&tf::state_prefix(name)))
        .map(|(k, _)| k)
        .collect();
    keys.push(tf::error_key(name));
    keys.into_iter()
        .map(|key| Entry::Put { key, value: None })
        .collect()
}

fn progress(shard: &Shard, name: &str, partition: i32, log_start: i64) -> Progress {
    shard
        .log
        .get(&tf::progress_key(name, partition))
        .and_then(|v| tf::decode(&v))
        // A partition added after the deploy starts at its beginning.
        .unwrap_or(Progress {
            offset: log_start,
            ..Progress::default()
        })
}

/// What this deployment's runner says, if it runs here.
fn runner_state(shard: &Shard, d: &Deployed) -> Option<String> {
    shard.transforms.state(&d.spec.name, d.generation)
}

/// Input records not processed yet, and the progress of every input
/// partition added up (its `offset` unused).
fn totals(shard: &Shard, d: &Deployed) -> Result<(i64, Progress)> {
    let (mut lag, mut sum) = (0, Progress::default());
    let Ok(input) = shard.topic(&d.spec.input) else {
        return Ok((lag, sum));
    };
    for (p, &stream) in input.streams.iter().enumerate() {
        let (log_start, _) = shard.log.offsets(StreamId(stream))?;
        let stable = shard.log.last_stable(StreamId(stream))?;
        let pr = progress(shard, &d.spec.name, p as i32, log_start);
        lag += (stable - pr.offset).max(0);
        sum.records_in += pr.records_in;
        sum.records_out += pr.records_out;
        sum.errors += pr.errors;
        sum.fuel += pr.fuel;
    }
    Ok((lag, sum))
}

fn status(shard: &Shard, d: &Deployed) -> Result<TransformStatus> {
    let (lag, sum) = totals(shard, d)?;
    Ok(TransformStatus {
        name: d.spec.name.clone(),
        input: d.spec.input.clone(),
        outputs: d.spec.outputs.clone(),
        dead_letter: d.dead_letter.clone(),
        config: d.spec.config.clone(),
        digest: d.digest.clone(),
        deployed_ms: d.deployed_ms,
        state: runner_state(shard, d).unwrap_or_else(|| "stopped".into()),
        lag,
        records_in: sum.records_in,
        records_out: sum.records_out,
        errors: sum.errors,
        fuel: sum.fuel,
        last_error: shard
            .log
            .get(&tf::error_key(&d.spec.name))
            .and_then(|v| tf::decode(&v)),
    })
}

/// Whether a running transform has input it has not processed: the shard
/// is not idle then.
pub(super) fn lagging(shard: &Shard) -> bool {
    deployed(shard).iter().any(|d| {
        runner_state(shard, d).is_some_and(|s| s == "running")
            && totals(shard, d).is_ok_and(|(lag, _)| lag > 0)
    })
}

/// The guest's durable state, read from the shard as of the batch.
struct Durable {
    shard: Weak<Shard>,
    name: String,
}

impl StateRead for Durable {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let shard = self.shard.upgrade()?;
        shard
            .log
            .get(&tf::state_key(&self.name, key))
            .map(|v| v.to_vec())
    }
}

/// Why a runner pauses.
enum Pause {
    /// Nothing to do until the log changes.
    Idle,
    /// Cannot go on (shown in the status); retried after [`RETRY`].
    Stuck(String),
    /// The shard's log failed or closed: the runner ends; the shard's next
    /// owner (or reopening) starts a new one.
    Gone,
}

struct Runner {
    shard: Weak<Shard>,
    tenant: TenantId,
    name: String,
    generation: u64,
    runtime: Arc<Runtime>,
    store: Arc<dyn ObjectStore>,
    status: Arc<Mutex<String>>,
    stopped: watch::Receiver<bool>,
    /// The tenant's CPU share: guest time per second, in µs.
    cpu_us_per_sec: u64,
}

impl Runner {
    async fn run(mut self) {
        let mut wasm: Option<Bytes> = None;
        let mut guest: Option<Transform> = None;
        loop {
            if *self.stopped.borrow() {
                return;
            }
            let Some(shard) = self.shard.upgrade() else {
                return;
            };
            let mut changed = shard.log.subscribe();
            let pause = match self.deployment(&shard) {
                None => return,
                Some(d) => match self.step(&shard, &d, &mut wasm, &mut guest).await {
                    Ok(over) if over.is_zero() => continue,
                    Ok(over) => {
                        // Beyond the tenant's CPU share: sit it out.
                        drop(shard);
                        tokio::select! {
                            _ = self.stopped.changed() => {}
                            _ = tokio::time::sleep(over) => {}
                        }
                        continue;
                    }
                    Err(p) => p,
                },
            };
            drop(shard);
            let wait = match pause {
                Pause::Gone => return,
                Pause::Idle => {
                    set(&self.status, "running");
                    IDLE_RECHECK
                }
                Pause::Stuck(why) => {
                    tracing::warn!(tenant = %self.tenant, transform = %self.name, "{why}");
                    set(&self.status, format!("stopped: {why}"));
                    RETRY
                }
            };
            tokio::select! {
                _ = changed.changed() => {}
                _ = self.stopped.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// This runner's deployment, unless it was replaced or deleted.
    fn deployment(&self, shard: &Shard) -> Option<Deployed> {
        shard
            .log
            .get(&tf::deployed_key(&self.name))
            .and_then(|v| tf::decode::<Deployed>(&v))
            .filter(|d| d.generation == self.generation)
    }

    /// Processes one batch of the first partition with input waiting.
    /// Returns how long the tenant is now beyond its CPU share.
    async fn step(
        &self,
        shard: &Arc<Shard>,
        d: &Deployed,
        wasm: &mut Option<Bytes>,
        guest: &mut Option<Transform>,
    ) -> Result<Duration, Pause> {
        if shard.log.failed().is_some() {
            return Err(Pause::Gone);
        }
        let _one_step = shard.transforms.steps.lock().await;
        if self.deployment(shard).is_none() {
            return Err(Pause::Gone);
        }
        let input = shard
            .topic(&d.spec.input)
            .map_err(|_| Pause::Stuck(format!("input topic {} does not exist", d.spec.input)))?;
        for (p, &stream) in input.streams.iter().enumerate() {
            let p = p as i32;
            let stream = StreamId(stream);
            let (log_start, _) = shard.log.offsets(stream).map_err(|_| Pause::Gone)?;
            let mut at = progress(shard, &self.name, p, log_start);
            if at.offset < log_start {
                // Retention got there first: what was deleted is skipped.
                at.offset = log_start;
            }
            let Some(decoded) = read_committed(shard, stream, at.offset, &d.spec.input)
                .await
                .map_err(Pause::Stuck)?
            else {
                continue;
            };
            let mut over = Duration::ZERO;
            let mut entries = Vec::new();
            let mut counts = Counts::default();
            if !decoded.records.is_empty() {
                let g = self.guest(d, wasm, guest).await?;
                let batch = tf::inputs(&decoded.records, p);
                let state = Arc::new(Durable {
                    shard: self.shard.clone(),
                    name: self.name.clone(),
                });
                at.records_in += batch.len() as u64;
                let began = tokio::time::Instant::now();
                let span = tracing::debug_span!("transform.process", tenant = %shard.tenant, transform = %self.name, records = batch.len());
                let processed = g
                    .process(&batch, d.spec.outputs.len(), state)
                    .instrument(span)
                    .await;
                over = shard
                    .transforms
                    .charge(began, Duration::ZERO, self.cpu_us_per_sec);
                match processed {
                    Ok(done) => {
                        at.records_out += done.outputs.len() as u64;
                        at.fuel += done.fuel;
                        counts.wasm_fuel = done.fuel;
                        entries.extend(self.outputs(shard, d, p, done.outputs)?);
                        entries.extend(done.writes.into_iter().map(|(k, v)| Entry::Put {
                            key: tf::state_key(&self.name, &k),
                            value: v.map(Bytes::from),
                        }));
                    }
                    Err(f) => {
                        floe_common::telemetry::wasm_failure(
                            self.tenant.as_str(),
                            "transform",
                            f.kind.as_str(),
                        );
                        if g.poisoned() {
                            *guest = None;
                        }
                        at.errors += batch.len() as u64;
                        at.fuel += f.fuel;
                        counts.wasm_fuel = f.fuel;
                        tracing::debug!(tenant = %self.tenant, transform = %self.name, partition = p, "batch dead-lettered: {}", f.message);
                        let key = tf::error_key(&self.name);
                        let dead = dead_letters(shard, &d.dead_letter, p, &decoded.records, f, key);
                        entries.extend(dead.map_err(Pause::Stuck)?);
                    }
                }
            }
            at.offset = decoded.next;
            entries.push(Entry::Put {
                key: tf::progress_key(&self.name, p),
                value: Some(tf::encode(&at)),
            });
            entries.push(usage::meter(&counts, shard.usage_window_ms));
            let appended = shard.log.append(entries).await.map_err(|_| Pause::Gone)?;
            appended.durable().await.map_err(|_| Pause::Gone)?;
            if !counts.is_zero() {
                shard.totals.add(&self.tenant, &counts);
            }
            return Ok(over);
        }
        Err(Pause::Idle)
    }

    /// The guest instance, started (or restarted after a trap) as needed.
    async fn guest<'a>(
        &self,
        d: &Deployed,
        wasm: &mut Option<Bytes>,
        guest: &'a mut Option<Transform>,
    ) -> Result<&'a mut Transform, Pause> {
        if wasm.is_none() {
            let bytes = fetch_component(&*self.store, &self.tenant, &d.digest)
                .await
                .map_err(Pause::Stuck)?;
            *wasm = Some(bytes);
        }
        if guest.is_none() {
            let labels = Labels {
                tenant: self.tenant.to_string(),
                plugin: self.name.clone(),
            };
            let code = wasm.as_ref().expect("fetched above");
            let t = self
                .runtime
                .transform(code, &d.spec.config, labels)
                .await
                .map_err(|e| Pause::Stuck(e.to_string()))?;
            *guest = Some(t);
            set(&self.status, "running");
        }
        Ok(guest.as_mut().expect("started above"))
    }

    /// The guest's records as appends to its output topics: one batch per
    /// output, in the partition of the input's number (modulo).
    fn outputs(
        &self,
        shard: &Shard,
        d: &Deployed,
        partition: i32,
        records: Vec<floe_runtime::OutputRecord>,
    ) -> Result<Vec<Entry>, Pause> {
        let mut by_output: Vec<Vec<Out>> = d.spec.outputs.iter().map(|_| Vec::new()).collect();
        for r in records {
            by_output[r.output as usize].push(Out::from(r));
        }
        let mut entries = Vec::new();
        for (topic, records) in d.spec.outputs.iter().zip(by_output) {
            entries.extend(append_to(shard, topic, partition, records).map_err(Pause::Stuck)?);
        }
        Ok(entries)
    }
}
