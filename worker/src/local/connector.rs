//! Connectors on the shard owner: create, list, pause, resume, delete, and
//! the runners: a sink feeds each input partition's committed records to
//! the guest's `deliver` and appends the new offset only once it succeeded;
//! a source appends what `poll` returned with its cursor in one log object
//! (see `connectors.rs`).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use floe_common::telemetry;
use floe_common::TenantId;
use floe_runtime::{AllowList, Connector, Labels, Runtime, World};
use floe_storage::log::now_ms;
use floe_storage::{Entry, StreamId};
use floe_tenants::usage::Counts;
use object_store::ObjectStore;
use tokio::sync::watch;
use tracing::Instrument;

use super::transform::{append_to, dead_letters, fetch_component, invalid, read_committed, set};
use super::{usage, LocalWorker, Shard};
use crate::catalog;
use crate::connectors::{
    self as cn, ConnectorSpec, ConnectorStatus, Created, Delivered, Kind, Polled,
};
use crate::records;
use crate::transforms::{self as tf, LastError, Out};
use crate::{Result, WorkerError};

/// Records a source is asked for per poll.
const POLL_RECORDS: u32 = 500;
/// A failed call is tried again after this long, doubled per failure up
/// to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A sink with nothing to deliver looks again at least this often.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

pub(super) fn created(shard: &Shard) -> Vec<Created> {
    shard
        .log
        .scan(cn::CREATED_PREFIX)
        .into_iter()
        .filter_map(|(_, v)| tf::decode(&v))
        .collect()
}

fn get(shard: &Shard, name: &str) -> Option<Created> {
    shard
        .log
        .get(&cn::created_key(name))
        .and_then(|v| tf::decode(&v))
}

/// The wait after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    let doubled = BACKOFF_BASE.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(BACKOFF_CAP)
}

impl LocalWorker {
    /// Starts a runner for every connector not paused on a shard just
    /// opened.
    pub(super) fn start_connectors(&self, shard: &Arc<Shard>) {
        for c in created(shard) {
            if !c.paused {
                self.start_connector(shard, &c);
            }
        }
    }

    fn start_connector(&self, shard: &Arc<Shard>, c: &Created) {
        let runtime = match self.runtime() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "no wasm runtime; connectors stay stopped");
                return;
            }
        };
        let (status, stopped) = shard.connectors.start(&c.spec.name, c.generation);
        let runner = Runner {
            shard: Arc::downgrade(shard),
            tenant: shard.tenant.clone(),
            name: c.spec.name.clone(),
            generation: c.generation,
            runtime,
            store: self.store.clone(),
            status,
            stopped,
            cpu_us_per_sec: self.cfg.wasm_cpu_ms_per_sec * 1000,
            failures: 0,
            next_partition: 0,
        };
        tokio::spawn(runner.run());
    }

    pub(super) async fn connector_create(
        &self,
        tenant: &TenantId,
        spec: ConnectorSpec,
        wasm: Bytes,
    ) -> Result<ConnectorStatus> {
        catalog::validate_name(&spec.name)
            .map_err(|_| invalid(format!("connector name {:?} is not valid", spec.name)))?;
        let topics = match spec.kind {
            Kind::Sink => 1..=1,
            Kind::Source => 1..=floe_runtime::MAX_OUTPUTS,
        };
        if !topics.contains(&spec.topics.len()) {
            return Err(invalid(format!(
                "a {} has {} to {} topics, not {}",
                spec.kind.as_str(),
                topics.start(),
                topics.end(),
                spec.topics.len()
            )));
        }
        spec.allow()
            .parse::<AllowList>()
            .map_err(WorkerError::InvalidConfig)?;
        if spec.poll_ms == 0 || spec.poll_ms > 3_600_000 {
            return Err(invalid("poll_ms is 1 to 3600000"));
        }
        let digest = self.check_upload(World::Connector, &wasm).await?;
        let shard = self.shard(tenant).await?;
        for t in &spec.topics {
            shard.named_topic(t)?;
        }
        let dead_letter = match spec.kind {
            Kind::Source => None,
            Kind::Sink => {
                let d = spec
                    .dead_letter
                    .clone()
                    .unwrap_or_else(|| format!("{}-dlq", spec.name));
                if spec.topics.contains(&d) {
                    return Err(invalid("a sink may not dead-letter to its own input"));
                }
                self.ensure_topic(tenant, &shard, &d).await?;
                Some(d)
            }
        };
        let previous = get(&shard, &spec.name);
        if previous.is_none() && created(&shard).len() >= cn::MAX_CONNECTORS {
            return Err(WorkerError::PolicyViolation(format!(
                "at most {} connectors per tenant",
                cn::MAX_CONNECTORS
            )));
        }
        self.store_component(tenant, &digest.0, wasm).await?;
        let _catalog = shard.catalog_lock.lock().await;
        let c = Created {
            dead_letter,
            digest: digest.0,
            created_ms: now_ms(),
            generation: previous.as_ref().map_or(1, |p| p.generation + 1),
            paused: false,
            spec,
        };
        let name = c.spec.name.clone();
        let mut entries = vec![Entry::Put {
            key: cn::created_key(&name),
            value: Some(tf::encode(&c)),
        }];
        // Created again with the same kind and topics, it goes on from
        // where it was (offsets, cursor); otherwise it starts afresh.
        let same = previous
            .as_ref()
            .is_some_and(|p| p.spec.kind == c.spec.kind && p.spec.topics == c.spec.topics);
        if !same {
            entries.extend(forget(&shard, &name));
            if c.spec.kind == Kind::Sink {
                let input = shard.topic(&c.spec.topics[0])?;
                for (p, &stream) in input.streams.iter().enumerate() {
                    let (log_start, hw) = shard.log.offsets(StreamId(stream))?;
                    let at = Delivered {
                        offset: if c.spec.from_start { log_start } else { hw },
                        ..Delivered::default()
                    };
                    entries.push(Entry::Put {
                        key: cn::delivered_key(&name, p as i32),
                        value: Some(tf::encode(&at)),
                    });
                }
            }
        }
        let steps = shard.connectors.steps.lock().await;
        shard.log.append(entries).await?.durable().await?;
        drop(steps);
        drop(_catalog);
        tracing::info!(%tenant, connector = %name, kind = c.spec.kind.as_str(), digest = %c.digest, "connector created");
        self.start_connector(&shard, &c);
        status(&shard, &c)
    }

    pub(super) async fn connector_statuses(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<ConnectorStatus>> {
        let shard = self.shard(tenant).await?;
        created(&shard).iter().map(|c| status(&shard, c)).collect()
    }

    /// Pauses or resumes a connector, durably: a paused one stays paused
    /// across restarts and moves.
    pub(super) async fn connector_pause(
        &self,
        tenant: &TenantId,
        name: &str,
        paused: bool,
    ) -> Result<ConnectorStatus> {
        let shard = self.shard(tenant).await?;
        let _catalog = shard.catalog_lock.lock().await;
        let mut c =
            get(&shard, name).ok_or_else(|| WorkerError::UnknownConnector(name.to_string()))?;
        if c.paused != paused {
            c.paused = paused;
            c.generation += 1;
            let steps = shard.connectors.steps.lock().await;
            shard
                .log
                .append(vec![Entry::Put {
                    key: cn::created_key(name),
                    value: Some(tf::encode(&c)),
                }])
                .await?
                .durable()
                .await?;
            drop(steps);
            shard.connectors.stop(name);
            if !paused {
                self.start_connector(&shard, &c);
            }
            tracing::info!(%tenant, connector = %name, paused, "connector paused or resumed");
        }
        status(&shard, &c)
    }

    pub(super) async fn connector_delete(&self, tenant: &TenantId, name: &str) -> Result<()> {
        let shard = self.shard(tenant).await?;
        let _catalog = shard.catalog_lock.lock().await;
        let c = get(&shard, name).ok_or_else(|| WorkerError::UnknownConnector(name.to_string()))?;
        let mut entries = forget(&shard, name);
        entries.push(Entry::Put {
            key: cn::created_key(name),
            value: None,
        });
        let steps = shard.connectors.steps.lock().await;
        shard.log.append(entries).await?.durable().await?;
        drop(steps);
        shard.connectors.stop(name);
        self.drop_component(&shard, &c.digest).await;
        tracing::info!(%tenant, connector = %name, "connector deleted");
        Ok(())
    }
}

/// Entries removing a connector's offsets, cursor and last error.
fn forget(shard: &Shard, name: &str) -> Vec<Entry> {
    let mut keys: Vec<Bytes> = shard
        .log
        .scan(&cn::delivered_prefix(name))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.push(cn::polled_key(name));
    keys.push(cn::error_key(name));
    keys.into_iter()
        .map(|key| Entry::Put { key, value: None })
        .collect()
}

fn delivered(shard: &Shard, name: &str, partition: i32, log_start: i64) -> Delivered {
    shard
        .log
        .get(&cn::delivered_key(name, partition))
        .and_then(|v| tf::decode(&v))
        // A partition added after the create starts at its beginning.
        .unwrap_or(Delivered {
            offset: log_start,
            ..Delivered::default()
        })
}

fn polled(shard: &Shard, name: &str) -> Polled {
    shard
        .log
        .get(&cn::polled_key(name))
        .and_then(|v| tf::decode(&v))
        .unwrap_or_default()
}

/// A sink's undelivered input records, and its progress added up.
fn totals(shard: &Shard, c: &Created) -> Result<(i64, Delivered)> {
    let (mut lag, mut sum) = (0, Delivered::default());
    if c.spec.kind != Kind::Sink {
        return Ok((lag, sum));
    }
    let Ok(input) = shard.topic(&c.spec.topics[0]) else {
        return Ok((lag, sum));
    };
    for (p, &stream) in input.streams.iter().enumerate() {
        let (log_start, _) = shard.log.offsets(StreamId(stream))?;
        let stable = shard.log.last_stable(StreamId(stream))?;
        let at = delivered(shard, &c.spec.name, p as i32, log_start);
        lag += (stable - at.offset.max(log_start)).max(0);
        sum.records += at.records;
        sum.dead_lettered += at.dead_lettered;
        sum.fuel += at.fuel;
    }
    Ok((lag, sum))
}

fn runner_state(shard: &Shard, c: &Created) -> Option<String> {
    shard.connectors.state(&c.spec.name, c.generation)
}

fn status(shard: &Shard, c: &Created) -> Result<ConnectorStatus> {
    let (lag, sum) = totals(shard, c)?;
    let (records, fuel) = match c.spec.kind {
        Kind::Sink => (sum.records, sum.fuel),
        Kind::Source => {
            let p = polled(shard, &c.spec.name);
            (p.records, p.fuel)
        }
    };
    let state = if c.paused {
        "paused".to_string()
    } else {
        runner_state(shard, c).unwrap_or_else(|| "stopped".into())
    };
    Ok(ConnectorStatus {
        name: c.spec.name.clone(),
        kind: c.spec.kind,
        topics: c.spec.topics.clone(),
        dead_letter: c.dead_letter.clone(),
        config: c.spec.config.clone(),
        digest: c.digest.clone(),
        created_ms: c.created_ms,
        state,
        lag,
        records,
        dead_lettered: sum.dead_lettered,
        fuel,
        last_error: shard
            .log
            .get(&cn::error_key(&c.spec.name))
            .and_then(|v| tf::decode(&v)),
    })
}

/// Whether a running connector keeps the shard busy: a source always (it
/// polls the outside), a sink while it has input to deliver.
pub(super) fn busy(shard: &Shard) -> bool {
    created(shard).iter().any(|c| {
        !c.paused
            && runner_state(shard, c).is_some_and(|s| !s.starts_with("stopped"))
            && (c.spec.kind == Kind::Source || totals(shard, c).is_ok_and(|(lag, _)| lag > 0))
    })
}

/// Why a runner pauses.
enum Pause {
    /// Nothing to do for this long (or until the log changes).
    Idle(Duration),
    /// A call failed: tried again after this long; the status says why.
    Retry(Duration, String),
    /// Cannot go on (shown in the status); retried after the cap.
    Stuck(String),
    /// The shard's log failed or closed, or the connector changed: the
    /// runner ends.
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
    cpu_us_per_sec: u64,
    /// Failed calls in a row: the backoff, and a sink's dead-letter count.
    failures: u32,
    /// Where a sink's next look for input starts, so every partition gets
    /// its turn.
    next_partition: usize,
}

impl Runner {
    async fn run(mut self) {
        let mut guest: Option<Connector> = None;
        let mut wasm: Option<Bytes> = None;
        loop {
            if *self.stopped.borrow() {
                return;
            }
            let Some(shard) = self.shard.upgrade() else {
                return;
            };
            let mut changed = shard.log.subscribe();
            let Some(c) = self.current(&shard) else {
                return;
            };
            let stepped = self.step(&shard, &c, &mut wasm, &mut guest).await;
            drop(shard);
            let (wait, wake_on_log) = match stepped {
                Ok(over) if over.is_zero() => continue,
                // Beyond the tenant's CPU share: sit it out.
                Ok(over) => (over, false),
                Err(Pause::Gone) => return,
                Err(Pause::Idle(d)) => {
                    set(&self.status, "running");
                    (d, c.spec.kind == Kind::Sink)
                }
                Err(Pause::Retry(d, why)) => {
                    set(
                        &self.status,
                        format!("retrying in {d:?} (failure {}): {why}", self.failures),
                    );
                    (d, false)
                }
                Err(Pause::Stuck(why)) => {
                    tracing::warn!(tenant = %self.tenant, connector = %self.name, "{why}");
                    set(&self.status, format!("stopped: {why}"));
                    (BACKOFF_CAP, false)
                }
            };
            tokio::select! {
                _ = changed.changed(), if wake_on_log => {}
                _ = self.stopped.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// This runner's connector, unless it was replaced, paused or deleted.
    fn current(&self, shard: &Shard) -> Option<Created> {
        get(shard, &self.name).filter(|c| c.generation == self.generation && !c.paused)
    }

    async fn step(
        &mut self,
        shard: &Arc<Shard>,
        c: &Created,
        wasm: &mut Option<Bytes>,
        guest: &mut Option<Connector>,
    ) -> std::result::Result<Duration, Pause> {
        if shard.log.failed().is_some() {
            return Err(Pause::Gone);
        }
        if guest.is_none() {
            if wasm.is_none() {
                let bytes = fetch_component(&*self.store, &self.tenant, &c.digest)
                    .await
                    .map_err(Pause::Stuck)?;
                *wasm = Some(bytes);
            }
            let labels = Labels {
                tenant: self.tenant.to_string(),
                plugin: self.name.clone(),
            };
            let allow = c.spec.allow().parse().map_err(Pause::Stuck)?;
            let code = wasm.as_ref().expect("fetched above");
            let digest = floe_runtime::Digest(c.digest.clone());
            let g = self
                .runtime
                .connector_of(&digest, code, &c.spec.config, labels, allow)
                .await
                .map_err(|e| Pause::Stuck(e.to_string()))?;
            *guest = Some(g);
            set(&self.status, "running");
        }
        let g = guest.as_mut().expect("started above");
        let stepped = match c.spec.kind {
            Kind::Sink => self.deliver(shard, c, g).await,
            Kind::Source => self.poll(shard, c, g).await,
        };
        if guest.as_ref().is_some_and(Connector::poisoned) {
            *guest = None;
        }
        stepped
    }

    /// A failure: recorded as the last error, and a wait before the next
    /// try.
    async fn failed(
        &mut self,
        shard: &Shard,
        partition: i32,
        offset: i64,
        kind: &str,
        why: String,
    ) -> Pause {
        self.failures += 1;
        let _one_step = shard.connectors.steps.lock().await;
        if self.current(shard).is_none() {
            return Pause::Gone;
        }
        let last = LastError {
            at_ms: now_ms(),
            partition,
            offset,
            kind: kind.to_string(),
            message: why.clone(),
        };
        let put = Entry::Put {
            key: cn::error_key(&self.name),
            value: Some(tf::encode(&last)),
        };
        let Ok(appended) = shard.log.append(vec![put]).await else {
            return Pause::Gone;
        };
        if appended.durable().await.is_err() {
            return Pause::Gone;
        }
        Pause::Retry(backoff(self.failures), format!("{kind}: {why}"))
    }

    /// Delivers one batch of the next partition with input waiting.
    async fn deliver(
        &mut self,
        shard: &Arc<Shard>,
        c: &Created,
        g: &mut Connector,
    ) -> std::result::Result<Duration, Pause> {
        let topic = &c.spec.topics[0];
        let input = shard
            .topic(topic)
            .map_err(|_| Pause::Stuck(format!("input topic {topic} does not exist")))?;
        let n = input.streams.len();
        for i in 0..n {
            let p = (self.next_partition + i) % n;
            let stream = StreamId(input.streams[p]);
            let p = p as i32;
            let (log_start, _) = shard.log.offsets(stream).map_err(|_| Pause::Gone)?;
            let key = cn::delivered_key(&self.name, p);
            let stored = shard.log.get(&key);
            let mut at = delivered(shard, &self.name, p, log_start);
            // Retention got there first: what was deleted is skipped.
            at.offset = at.offset.max(log_start);
            let Some(decoded) = read_committed(shard, stream, at.offset, topic)
                .await
                .map_err(Pause::Stuck)?
            else {
                continue;
            };
            let mut entries = Vec::new();
            let mut counts = Counts::default();
            let mut over = Duration::ZERO;
            if let Some(first) = decoded.records.first() {
                let batch = tf::inputs(&decoded.records, p);
                let began = tokio::time::Instant::now();
                let span = tracing::debug_span!("connector.deliver", tenant = %shard.tenant, connector = %self.name, records = batch.len());
                let outcome = g.deliver(&batch).instrument(span).await;
                let (failure, spent) = match outcome {
                    Ok(spent) => (None, spent),
                    Err((f, spent)) => {
                        telemetry::wasm_failure(self.tenant.as_str(), "connector", f.kind.as_str());
                        (Some(f), spent)
                    }
                };
                over = shard
                    .transforms
                    .charge(began, spent.io_wait, self.cpu_us_per_sec);
                at.fuel += spent.fuel;
                counts.wasm_fuel = spent.fuel;
                match failure {
                    None => {
                        self.failures = 0;
                        at.records += batch.len() as u64;
                    }
                    Some(f) if self.failures < c.spec.max_retries => {
                        let first = first.offset;
                        return Err(self
                            .failed(shard, p, first, f.kind.as_str(), f.message)
                            .await);
                    }
                    Some(f) => {
                        // Out of retries: the batch goes to the dead
                        // letters, in the same append as the new offset.
                        self.failures = 0;
                        at.dead_lettered += batch.len() as u64;
                        tracing::debug!(tenant = %self.tenant, connector = %self.name, partition = p, "batch dead-lettered: {}", f.message);
                        let dlq = c.dead_letter.as_deref().unwrap_or_default();
                        let key = cn::error_key(&self.name);
                        let dead = dead_letters(shard, dlq, p, &decoded.records, f, key);
                        entries.extend(dead.map_err(Pause::Stuck)?);
                    }
                }
            }
            at.offset = decoded.next;
            entries.push(Entry::Put {
                key: key.clone(),
                value: Some(tf::encode(&at)),
            });
            entries.push(usage::meter(&counts, shard.usage_window_ms));
            // Delivery waited on the network without the lock (so it holds
            // up no create, pause or delete): append only if this is still
            // the connector and its offset is as read.
            let _one_step = shard.connectors.steps.lock().await;
            if self.current(shard).is_none() {
                return Err(Pause::Gone);
            }
            if shard.log.get(&key) != stored {
                return Ok(Duration::ZERO);
            }
            let appended = shard.log.append(entries).await.map_err(|_| Pause::Gone)?;
            appended.durable().await.map_err(|_| Pause::Gone)?;
            if !counts.is_zero() {
                shard.totals.add(&self.tenant, &counts);
            }
            self.next_partition = (p as usize + 1) % n;
            return Ok(over);
        }
        Err(Pause::Idle(IDLE_RECHECK))
    }

    /// Polls the source once and stores what it returned with its cursor.
    async fn poll(
        &mut self,
        shard: &Arc<Shard>,
        c: &Created,
        g: &mut Connector,
    ) -> std::result::Result<Duration, Pause> {
        let mut at = polled(shard, &self.name);
        let began = tokio::time::Instant::now();
        let span =
            tracing::debug_span!("connector.poll", tenant = %shard.tenant, connector = %self.name);
        let outcome = g
            .poll(POLL_RECORDS, at.cursor.as_deref(), c.spec.topics.len())
            .instrument(span)
            .await;
        let (result, spent) = match outcome {
            Ok((p, spent)) => (Ok(p), spent),
            Err((f, spent)) => {
                telemetry::wasm_failure(self.tenant.as_str(), "connector", f.kind.as_str());
                (Err(f), spent)
            }
        };
        let over = shard
            .transforms
            .charge(began, spent.io_wait, self.cpu_us_per_sec);
        let got = match result {
            Ok(got) => got,
            Err(f) => return Err(self.failed(shard, -1, -1, f.kind.as_str(), f.message).await),
        };
        self.failures = 0;
        let _one_step = shard.connectors.steps.lock().await;
        if self.current(shard).is_none() {
            return Err(Pause::Gone);
        }
        let nothing = got.records.is_empty();
        if nothing && at.cursor.as_deref() == Some(&got.cursor[..]) {
            return Err(Pause::Idle(Duration::from_millis(c.spec.poll_ms)));
        }
        let now = now_ms();
        let mut by_output: Vec<Vec<Out>> = c.spec.topics.iter().map(|_| Vec::new()).collect();
        for r in got.records {
            let output = r.output as usize;
            let mut out = Out::from(r);
            if out.timestamp <= 0 {
                out.timestamp = now;
            }
            by_output[output].push(out);
        }
        let mut entries = Vec::new();
        for (topic, records) in c.spec.topics.iter().zip(by_output) {
            at.records += records.len() as u64;
            entries.extend(self.partitioned(shard, topic, records)?);
        }
        at.cursor = Some(got.cursor);
        at.polls += 1;
        at.fuel += spent.fuel;
        let counts = Counts {
            wasm_fuel: spent.fuel,
            ..Counts::default()
        };
        entries.push(Entry::Put {
            key: cn::polled_key(&self.name),
            value: Some(tf::encode(&at)),
        });
        entries.push(usage::meter(&counts, shard.usage_window_ms));
        let appended = shard.log.append(entries).await.map_err(|_| Pause::Gone)?;
        appended.durable().await.map_err(|_| Pause::Gone)?;
        shard.totals.add(&self.tenant, &counts);
        if nothing {
            return Err(Pause::Idle(Duration::from_millis(c.spec.poll_ms)));
        }
        Ok(over)
    }

    /// A source's records for `topic`, one append per partition: keyed
    /// records where Kafka's default partitioner puts them, others in
    /// partition 0.
    fn partitioned(
        &self,
        shard: &Shard,
        topic: &str,
        records: Vec<Out>,
    ) -> std::result::Result<Vec<Entry>, Pause> {
        let n = shard
            .topic(topic)
            .map_err(|_| Pause::Stuck(format!("output topic {topic} does not exist")))?
            .streams
            .len()
            .max(1);
        let mut by_partition: Vec<Vec<Out>> = (0..n).map(|_| Vec::new()).collect();
        for r in records {
            let p = r
                .key
                .as_deref()
                .map_or(0, |k| records::partition_for_key(k, n as i32) as usize);
            by_partition[p].push(r);
        }
        let mut entries = Vec::new();
        for (p, records) in by_partition.into_iter().enumerate() {
            entries.extend(append_to(shard, topic, p as i32, records).map_err(Pause::Stuck)?);
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        assert_eq!(backoff(1), BACKOFF_BASE);
        assert_eq!(backoff(2), BACKOFF_BASE * 2);
        assert_eq!(backoff(4), BACKOFF_BASE * 8);
        assert_eq!(backoff(40), BACKOFF_CAP);
    }
}
