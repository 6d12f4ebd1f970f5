//! [`LocalWorker`]: owns shards in this process, opening each on first use and
//! reopening it (a new epoch, which fences its leftovers) after its log fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use floe_common::batch;
use floe_common::batch::BatchHeader;
use floe_common::{shard_prefix, TenantId};
use floe_storage::log::now_ms;
use floe_storage::{Entry, LogConfig, Producer, Read, ShardLog, StreamId, Txn};
use object_store::path::Path;
use object_store::ObjectStore;
use tokio::sync::watch;

use crate::catalog::{self, TopicMeta, MAX_PARTITIONS};
use crate::coordinator::{Coordinator, Described};
use crate::groups::{GroupError, Join, Joined, MemberRef, State as GroupState};
use crate::instances;
use crate::offsets::{self, Committed};
use crate::producer_ids::ProducerIds;
use crate::published;
use crate::quota::{Admission, Limits, LimitsFn, Meters, Usage};
use crate::transactions::{Transactions, TxnError, TxnMeta, TxnState};
use floe_tenants::usage::{Counts, Totals};
mod cleaner;
mod connector;
pub mod policy;
mod transform;
mod txn;
pub mod usage;

use crate::{
    Accepted, ConfigChange, NewTopic, OffsetCommit, Produced, ProducerInfo, Result, Shards,
    UsageWindow, WorkerError,
};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub log: LogConfig,
    /// How often each open shard applies its topics' retention. Costs no
    /// store call unless something expired (then one entry).
    pub retention_every: Duration,
    /// How often each open shard's cleaner looks at its compacted topics
    /// (Kafka's `log.cleaner.backoff.ms`).
    pub clean_every: Duration,
    /// A transactional id without an ongoing transaction is forgotten after
    /// this long idle (Kafka's `transactional.id.expiration.ms`).
    pub transactional_id_expiration: Duration,
    /// How long a group formed from Empty waits for more members before
    /// its first generation (Kafka's `group.initial.rebalance.delay.ms`):
    /// fewer rebalances while a fleet of consumers starts, at the cost of
    /// this much latency for the first one.
    pub group_initial_rebalance_delay: Duration,
    /// Usage is metered in windows of this length; a window's record is
    /// written once it is over.
    pub usage_window: Duration,
    /// How often each open shard makes its metered charges durable and
    /// accrues stored bytes and partitions (one log append each time).
    pub usage_every: Duration,
    /// Limits every Wasm call runs under.
    pub wasm: floe_runtime::Limits,
    /// Each tenant's share of CPU for its transforms: guest time per
    /// second, in milliseconds (1000 is one core).
    pub wasm_cpu_ms_per_sec: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            log: LogConfig::default(),
            retention_every: Duration::from_secs(5),
            clean_every: Duration::from_secs(15),
            transactional_id_expiration: Duration::from_secs(7 * 24 * 3600),
            group_initial_rebalance_delay: Duration::from_secs(3),
            usage_window: Duration::from_secs(3600),
            usage_every: Duration::from_secs(10),
            wasm: floe_runtime::Limits::default(),
            wasm_cpu_ms_per_sec: 250,
        }
    }
}

/// Whether a process holds a tenant's shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    No,
    Healthy,
    /// Open, but its log failed (fenced, or a write it could not make).
    Failed,
}

/// The shards this process owns.
pub struct LocalWorker {
    store: Arc<dyn ObjectStore>,
    cfg: WorkerConfig,
    /// Each tenant's limits (unlimited unless given).
    limits: LimitsFn,
    /// Open shards: every request's fast path is one read lock here.
    open: RwLock<HashMap<TenantId, Arc<Shard>>>,
    /// One opener per tenant at a time.
    opening: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
    /// Every tenant's usage since start, for `/metrics`.
    totals: Arc<Totals>,
    /// Deleted tenants: their shards never open again here.
    deleted: Mutex<std::collections::HashSet<TenantId>>,
    /// Shards this process handed over or dropped and must not open again
    /// until its owner layer claims them anew ([`LocalWorker::keep_closed`]).
    closed: Mutex<std::collections::HashSet<TenantId>>,
    /// The Wasm engine, made when a transform first needs it.
    runtime: std::sync::OnceLock<Arc<floe_runtime::Runtime>>,
    /// The quota policy of each tenant's plan (none unless given).
    policy_of: policy::PolicyFn,
    policy_stats: Arc<policy::Stats>,
    /// Policy components by SHA-256, read once from the store.
    policy_wasm: Arc<Mutex<HashMap<String, bytes::Bytes>>>,
}

/// One open shard: its log and the catalog cached from it.
struct Shard {
    tenant: TenantId,
    log: ShardLog,
    topics: RwLock<HashMap<String, Arc<TopicMeta>>>,
    /// Serialises catalog changes so check-then-write is atomic.
    catalog_lock: tokio::sync::Mutex<()>,
    /// Serialises HTTP consumer instances' swaps (compare, then write).
    instances_lock: tokio::sync::Mutex<()>,
    groups: Coordinator,
    producer_ids: ProducerIds,
    txns: Transactions,
    meters: Mutex<Meters>,
    /// The windows of the plan's quota policy, when it has one.
    policy: Mutex<policy::Windows>,
    /// Charges not yet in the log: the next usage tick appends them.
    pending: Mutex<Counts>,
    /// Closed windows whose records are written: the next tick's append
    /// lets the log forget them.
    written: Mutex<Vec<i64>>,
    usage_window_ms: i64,
    totals: Arc<Totals>,
    /// Transforms running on this shard.
    transforms: transform::Runners,
    /// Connectors running on this shard.
    connectors: transform::Runners,
}

impl Shard {
    fn load(tenant: TenantId, log: ShardLog, cfg: &WorkerConfig, totals: Arc<Totals>) -> Self {
        let topics = log
            .scan(catalog::PREFIX)
            .into_iter()
            .filter_map(|(_, v)| catalog::decode(&v))
            .map(|t| (t.name.clone(), Arc::new(t)))
            .collect();
        Self {
            groups: Coordinator::load(&log, cfg.group_initial_rebalance_delay),
            producer_ids: ProducerIds::load(&log),
            txns: Transactions::load(&log),
            meters: Mutex::new(Meters::default()),
            policy: Mutex::default(),
            pending: Mutex::new(Counts::default()),
            written: Mutex::new(Vec::new()),
            usage_window_ms: (cfg.usage_window.as_millis() as i64).max(1),
            totals,
            transforms: Default::default(),
            connectors: Default::default(),
            tenant,
            log,
            topics: RwLock::new(topics),
            catalog_lock: tokio::sync::Mutex::new(()),
            instances_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_written(&self) -> std::sync::MutexGuard<'_, Vec<i64>> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Partitions of every topic.
    fn partitions(&self) -> usize {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        topics.values().map(|t| t.streams.len()).sum()
    }

    /// Every topic, as the catalog is now.
    fn topics_now(&self) -> Vec<Arc<TopicMeta>> {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        topics.values().cloned().collect()
    }

    fn topic(&self, name: &str) -> Result<Arc<TopicMeta>> {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        topics
            .get(name)
            .cloned()
            .ok_or(WorkerError::UnknownTopicOrPartition)
    }

    /// [`Self::topic`] for a topic the request named itself: a missing one
    /// is answered by name.
    fn named_topic(&self, name: &str) -> Result<Arc<TopicMeta>> {
        self.topic(name)
            .map_err(|_| WorkerError::UnknownTopic(name.to_string()))
    }

    fn stream(&self, name: &str, partition: i32) -> Result<(Arc<TopicMeta>, StreamId)> {
        let t = self.topic(name)?;
        let s = t
            .stream(partition)
            .ok_or(WorkerError::UnknownTopicOrPartition)?;
        Ok((t, s))
    }

    /// Makes a catalog change durable, then shows it in the cache.
    async fn commit(
        &self,
        mut entries: Vec<Entry>,
        name: &str,
        meta: Option<TopicMeta>,
    ) -> Result<()> {
        let value = meta.as_ref().map(catalog::encode);
        entries.push(Entry::Put {
            key: catalog::key(name),
            value,
        });
        self.log.append(entries).await?.durable().await?;
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        match meta {
            Some(m) => topics.insert(name.to_string(), Arc::new(m)),
            None => topics.remove(name),
        };
        Ok(())
    }

    /// An offset to commit, checked: its topic, partition and value.
    fn checked_commit(
        &self,
        c: OffsetCommit,
        commit_ms: i64,
    ) -> Result<(Arc<TopicMeta>, i32, Committed)> {
        let (topic, _) = self.stream(&c.topic, c.partition)?;
        if c.metadata.len() > offsets::MAX_METADATA_BYTES {
            return Err(WorkerError::OffsetMetadataTooLarge(c.metadata.len()));
        }
        let value = Committed {
            offset: c.offset,
            leader_epoch: c.leader_epoch,
            metadata: c.metadata,
            commit_ms,
        };
        Ok((topic, c.partition, value))
    }

    fn new_streams(&self, n: usize) -> (Vec<u64>, Vec<Entry>) {
        let ids: Vec<u64> = (0..n).map(|_| self.log.allocate_stream().0).collect();
        let entries = ids
            .iter()
            .map(|&s| Entry::CreateStream {
                stream: StreamId(s),
            })
            .collect();
        (ids, entries)
    }
}

impl LocalWorker {
    pub fn new(store: Arc<dyn ObjectStore>, cfg: WorkerConfig) -> Self {
        Self {
            store,
            cfg,
            limits: Arc::new(|_: &TenantId| Limits::default()),
            open: RwLock::new(HashMap::new()),
            opening: Mutex::new(HashMap::new()),
            totals: Arc::default(),
            deleted: Mutex::default(),
            closed: Mutex::default(),
            runtime: Default::default(),
            policy_of: Arc::new(|_: &TenantId| None),
            policy_stats: Arc::default(),
            policy_wasm: Arc::default(),
        }
    }

    /// Every tenant's usage metered by this process since it started.
    pub fn totals(&self) -> Arc<Totals> {
        self.totals.clone()
    }

    /// Takes each tenant's limits from `limits` (asked on every charge and
    /// topic change, so it should be a cheap look-up).
    pub fn with_limits(mut self, limits: LimitsFn) -> Self {
        self.limits = limits;
        self
    }

    /// Takes the quota policy of each tenant's plan from `policy_of` (asked
    /// on every charge, so it should be a cheap look-up).
    pub fn with_policies(mut self, policy_of: policy::PolicyFn) -> Self {
        self.policy_of = policy_of;
        self
    }

    /// Quota policies' decisions and failures, for `/metrics`.
    pub fn policy_stats(&self) -> Arc<policy::Stats> {
        self.policy_stats.clone()
    }

    /// A tenant may hold at most its plan's partitions.
    fn check_partitions(&self, tenant: &TenantId, shard: &Shard, more: usize) -> Result<()> {
        let Some(max) = (self.limits)(tenant).partitions else {
            return Ok(());
        };
        let have = shard.partitions();
        if (have + more) as u64 > max {
            return Err(WorkerError::PolicyViolation(format!(
                "the tenant has {have} partitions; its quota is {max}"
            )));
        }
        Ok(())
    }

    /// The tenant's shard, opened on first use and reopened under a new
    /// epoch (which fences its leftovers) after its log failed.
    async fn shard(&self, tenant: &TenantId) -> Result<Arc<Shard>> {
        if let Some(shard) = self.healthy(tenant) {
            return Ok(shard);
        }
        // Boxed: opening (replay and all) inline would make every call's
        // future as large as an open, and a request's future is allocated
        // and moved whole on the produce path.
        Box::pin(self.open_shard(tenant)).await
    }

    async fn open_shard(&self, tenant: &TenantId) -> Result<Arc<Shard>> {
        let gate = self.opener(tenant);
        let _one_opener = gate.lock().await;
        if let Some(shard) = self.healthy(tenant) {
            return Ok(shard);
        }
        if self
            .deleted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(tenant)
        {
            return Err(WorkerError::Unavailable(format!(
                "tenant {tenant} was deleted"
            )));
        }
        if self
            .closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(tenant)
        {
            return Err(WorkerError::Unavailable(
                "the shard moved to another worker; retry".into(),
            ));
        }
        if self
            .open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(tenant)
        {
            tracing::warn!(%tenant, "shard log failed; reopening under a new epoch");
        }
        let prefix = Path::from(shard_prefix(tenant, 0));
        let log = ShardLog::open(self.store.clone(), prefix, self.cfg.log.clone()).await?;
        let shard = Arc::new(Shard::load(
            tenant.clone(),
            log,
            &self.cfg,
            self.totals.clone(),
        ));
        {
            // Checked again with the open: a hand-over or a lapsed lease
            // during a slow replay closed it, and `forget` found nothing.
            let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
            if closed.contains(tenant) {
                shard.log.abandon();
                return Err(WorkerError::Unavailable(
                    "the shard moved to another worker; retry".into(),
                ));
            }
            self.open
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(tenant.clone(), shard.clone());
        }
        tokio::spawn(retention(Arc::downgrade(&shard), self.cfg.retention_every));
        tokio::spawn(cleaner::clean(Arc::downgrade(&shard), self.cfg.clean_every));
        tokio::spawn(usage::ticks(
            Arc::downgrade(&shard),
            self.store.clone(),
            self.cfg.usage_every,
        ));
        tokio::spawn(group_timers(Arc::downgrade(&shard)));
        tokio::spawn(txn::txn_timers(
            Arc::downgrade(&shard),
            self.cfg.transactional_id_expiration,
        ));
        self.start_transforms(&shard);
        self.start_connectors(&shard);
        Ok(shard)
    }

    /// The lock held while a tenant's shard opens (or is deleted).
    fn opener(&self, tenant: &TenantId) -> Arc<tokio::sync::Mutex<()>> {
        let mut opening = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        opening.entry(tenant.clone()).or_default().clone()
    }

    fn healthy(&self, tenant: &TenantId) -> Option<Arc<Shard>> {
        let open = self.open.read().unwrap_or_else(|p| p.into_inner());
        open.get(tenant)
            .filter(|s| s.log.failed().is_none())
            .cloned()
    }

    /// Whether this process has the tenant's shard open, and its log is
    /// still usable.
    pub fn held(&self, tenant: &TenantId) -> Held {
        let open = self.open.read().unwrap_or_else(|p| p.into_inner());
        match open.get(tenant) {
            None => Held::No,
            Some(s) if s.log.failed().is_none() => Held::Healthy,
            Some(_) => Held::Failed,
        }
    }

    /// Tenants whose shard is open here.
    pub fn held_tenants(&self) -> Vec<TenantId> {
        let open = self.open.read().unwrap_or_else(|p| p.into_inner());
        open.keys().cloned().collect()
    }

    /// From now on the tenant's shard is not opened here (a call that was
    /// admitted before a hand-over and reaches the worker after it would
    /// otherwise reopen it, fencing the new owner), until [`Self::may_open`].
    pub fn keep_closed(&self, tenant: &TenantId) {
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        closed.insert(tenant.clone());
    }

    /// The tenant's shard may be opened here again: it was claimed anew.
    pub fn may_open(&self, tenant: &TenantId) {
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        closed.remove(tenant);
    }

    /// Drops a shard without writing anything: another owner has it (its
    /// log is fenced, or this process's lease lapsed). What was accepted
    /// and not yet durable fails with the log.
    pub fn forget(&self, tenant: &TenantId) {
        let gone = self
            .open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
        if let Some(shard) = gone {
            shard.log.abandon();
            tokio::spawn(async move { shard.groups.resign().await });
        }
    }

    /// Answers the shard's parked group requests (they would otherwise
    /// wait out their rebalance timeout here): it is about to be handed
    /// over. The shard stays open.
    pub async fn resign(&self, tenant: &TenantId) {
        let shard = self
            .open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned();
        if let Some(shard) = shard {
            shard.groups.resign().await;
        }
    }

    /// Hands a shard over: accepted appends become durable, a checkpoint
    /// is written (so the next owner replays nothing), and the shard is
    /// dropped. Requests after this open it again.
    pub async fn release(&self, tenant: &TenantId) -> Result<()> {
        self.close(tenant).await.map(drop)
    }

    /// Takes the shard out of the open set and closes its log (flush and
    /// checkpoint), with no opener racing it: the closed shard, if any.
    async fn close(&self, tenant: &TenantId) -> Result<Option<Arc<Shard>>> {
        let _one_opener = self.opener(tenant).lock_owned().await;
        let gone = self
            .open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
        let Some(shard) = gone else { return Ok(None) };
        shard.groups.resign().await;
        shard.log.close().await?;
        Ok(Some(shard))
    }

    /// Whether the tenant's open shard has a group between generations or
    /// an ongoing transaction (whose timeout the shard enforces): it is not
    /// idle then, whatever the time since its last request.
    pub async fn settling(&self, tenant: &TenantId) -> bool {
        let Some(shard) = self.healthy(tenant) else {
            return false;
        };
        if shard.groups.settling().await || transform::lagging(&shard) || connector::busy(&shard) {
            return true;
        }
        for (_, slot) in shard.txns.all() {
            if slot
                .lock()
                .await
                .as_ref()
                .is_some_and(|m| m.state == TxnState::Ongoing)
            {
                return true;
            }
        }
        false
    }

    /// Unloads an idle shard: released as by [`LocalWorker::release`], then
    /// its offsets, catalog and stable groups are published for gateways
    /// to answer idle clients from (see `published.rs`).
    pub async fn unload(&self, tenant: &TenantId) -> Result<Option<published::Published>> {
        let Some(shard) = self.close(tenant).await? else {
            return Ok(None);
        };
        let topics: Vec<TopicMeta> = shard
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|t| (**t).clone())
            .collect();
        let mut partitions = Vec::new();
        for t in &topics {
            for (i, &stream) in t.streams.iter().enumerate() {
                let stream = floe_storage::StreamId(stream);
                let (log_start, high_watermark) = shard.log.offsets(stream)?;
                partitions.push(published::PartitionOffsets {
                    topic: t.name.clone(),
                    partition: i as i32,
                    log_start,
                    high_watermark,
                    last_stable: shard.log.last_stable(stream)?,
                });
            }
        }
        let snapshot = published::Published {
            epoch: shard.log.epoch(),
            leader_epoch: leader_epoch(&shard.log),
            topics,
            partitions,
            groups: shard.groups.stable().await,
        };
        let body = serde_json::to_vec(&snapshot).expect("serializes");
        object_store::ObjectStoreExt::put(&self.store, &published::path(tenant), body.into())
            .await
            .map_err(|e| WorkerError::Unavailable(format!("publishing offsets: {e}")))?;
        Ok(Some(snapshot))
    }

    /// Drains every shard: accepted appends become durable (or fail), then a
    /// checkpoint is written. Used on shutdown.
    pub async fn close_all(&self) {
        let shards: Vec<_> = self
            .open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect();
        for shard in shards {
            shard.groups.resign().await;
            if let Err(e) = shard.log.close().await {
                tracing::warn!(error = %e, "closing shard");
            }
        }
    }
}

fn check_configs(configs: &std::collections::BTreeMap<String, String>) -> Result<()> {
    configs
        .iter()
        .try_for_each(|(k, v)| catalog::validate_config(k, v))
}

impl Shards for LocalWorker {
    async fn topics(&self, tenant: &TenantId) -> Result<Vec<TopicMeta>> {
        let shard = self.shard(tenant).await?;
        let topics = shard.topics.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<TopicMeta> = topics.values().map(|t| (**t).clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    async fn create_topic(&self, tenant: &TenantId, topic: NewTopic) -> Result<TopicMeta> {
        catalog::validate_name(&topic.name)?;
        if topic.partitions == 0 || topic.partitions > MAX_PARTITIONS {
            return Err(WorkerError::InvalidPartitions(format!(
                "partitions must be 1..={MAX_PARTITIONS}, got {}",
                topic.partitions
            )));
        }
        check_configs(&topic.configs)?;
        let shard = self.shard(tenant).await?;
        let _guard = shard.catalog_lock.lock().await;
        if shard.topic(&topic.name).is_ok() {
            return Err(WorkerError::TopicExists(topic.name));
        }
        self.check_partitions(tenant, &shard, topic.partitions)?;
        let (streams, entries) = if topic.validate_only {
            (vec![], vec![])
        } else {
            shard.new_streams(topic.partitions)
        };
        let meta = TopicMeta {
            name: topic.name.clone(),
            id: uuid::Uuid::new_v4().as_u128(),
            streams,
            configs: topic.configs,
        };
        if !topic.validate_only {
            shard
                .commit(entries, &topic.name, Some(meta.clone()))
                .await?;
            tracing::info!(%tenant, topic = %meta.name, partitions = meta.streams.len(), "topic created");
        }
        Ok(meta)
    }

    async fn delete_topic(&self, tenant: &TenantId, name: &str) -> Result<TopicMeta> {
        let shard = self.shard(tenant).await?;
        let _guard = shard.catalog_lock.lock().await;
        let meta = shard.topic(name)?;
        let entries = meta
            .streams
            .iter()
            .map(|&s| Entry::DeleteStream {
                stream: StreamId(s),
            })
            .collect();
        shard.commit(entries, name, None).await?;
        tracing::info!(%tenant, topic = %name, "topic deleted");
        Ok((*meta).clone())
    }

    async fn create_partitions(
        &self,
        tenant: &TenantId,
        name: &str,
        total: usize,
        validate_only: bool,
    ) -> Result<()> {
        let shard = self.shard(tenant).await?;
        let _guard = shard.catalog_lock.lock().await;
        let meta = shard.topic(name)?;
        let have = meta.streams.len();
        if total <= have {
            return Err(WorkerError::InvalidPartitions(format!(
                "topic has {have} partitions; cannot go to {total}"
            )));
        }
        if total > MAX_PARTITIONS {
            return Err(WorkerError::InvalidPartitions(format!(
                "at most {MAX_PARTITIONS} partitions"
            )));
        }
        self.check_partitions(tenant, &shard, total - have)?;
        if validate_only {
            return Ok(());
        }
        let (ids, entries) = shard.new_streams(total - have);
        let mut next = (*meta).clone();
        next.streams.extend(ids);
        shard.commit(entries, name, Some(next)).await
    }

    async fn alter_configs(
        &self,
        tenant: &TenantId,
        name: &str,
        change: ConfigChange,
        validate_only: bool,
    ) -> Result<()> {
        let shard = self.shard(tenant).await?;
        let _guard = shard.catalog_lock.lock().await;
        let meta = shard.topic(name)?;
        let mut next = (*meta).clone();
        match change {
            ConfigChange::Replace(all) => next.configs = all,
            ConfigChange::Incremental(changes) => {
                for (k, v) in changes {
                    match v {
                        Some(v) => next.configs.insert(k, v),
                        None => {
                            // Resetting still names a real config.
                            if !catalog::is_known(&k) {
                                return Err(WorkerError::InvalidConfig(format!(
                                    "unknown topic config {k:?}"
                                )));
                            }
                            next.configs.remove(&k)
                        }
                    };
                }
            }
        }
        check_configs(&next.configs)?;
        if validate_only {
            return Ok(());
        }
        shard.commit(vec![], name, Some(next)).await
    }

    #[tracing::instrument(level = "debug", name = "shard.append", skip_all, fields(%tenant, %topic, partition = partition, batches = batches.len()))]
    async fn produce(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
        batches: Vec<(BatchHeader, Bytes)>,
    ) -> Result<Accepted> {
        let shard = self.shard(tenant).await?;
        let (meta, stream) = shard.stream(topic, partition)?;
        if let Some(quota) = (self.limits)(tenant).storage_bytes {
            let stored = shard.log.stored_bytes();
            if stored >= quota {
                return Err(WorkerError::PolicyViolation(format!(
                    "the tenant stores {stored} bytes; its storage quota is {quota}"
                )));
            }
        }
        let config = meta.config();
        let max = config.max_message_bytes;
        // One append time for the request's batches, as Kafka stamps them.
        let append_time = config.log_append_time.then(now_ms);
        let epoch = leader_epoch(&shard.log);
        let mut entries = Vec::with_capacity(batches.len() + 1);
        let bytes_in = Counts {
            bytes_in: batches.iter().map(|(_, d)| d.len() as u64).sum(),
            ..Counts::default()
        };
        // The transactional producer of the request, if any: (id, epoch).
        let mut txn_producer = None;
        for (h, data) in batches {
            if h.len as i64 > max {
                return Err(WorkerError::MessageTooLarge(format!(
                    "batch of {} bytes exceeds max.message.bytes {max}",
                    h.len
                )));
            }
            if h.is_control() {
                return Err(WorkerError::InvalidRecord(
                    "control batches are written by the transaction coordinator only".into(),
                ));
            }
            // As Kafka's LogValidator: one record per offset of the batch.
            if i64::from(h.record_count) != i64::from(h.offset_count()) {
                return Err(WorkerError::InvalidRecord(format!(
                    "the batch holds {} records for {} offsets",
                    h.record_count,
                    h.offset_count()
                )));
            }
            // A compacted topic needs every record's key. And Kafka sets
            // maxTimestamp from the records; clients do too, but Sarama
            // (Go) left it -1 until 2025 (its PR 3108): such a batch would
            // be older than any retention and invisible to ListOffsets by
            // time. Only those batches pay for a look at their records.
            let unset_max = append_time.is_none() && h.max_timestamp < h.base_timestamp;
            let look = if config.compact || unset_max {
                Some(cleaner::look(&data, &h).map_err(WorkerError::InvalidRecord)?)
            } else {
                None
            };
            if config.compact && look.as_ref().is_some_and(|l| !l.every_keyed) {
                return Err(WorkerError::InvalidRecord(format!(
                    "compacted topic {topic} cannot accept a record without a key"
                )));
            }
            let producer = producer_of(&h)?;
            if h.is_transactional() {
                let p = producer.ok_or_else(|| {
                    WorkerError::InvalidRecord("a transactional batch without a producer id".into())
                })?;
                if txn_producer.is_some_and(|t| t != (p.id, p.epoch)) {
                    return Err(WorkerError::InvalidRecord(
                        "transactional batches of different producers in one request".into(),
                    ));
                }
                txn_producer = Some((p.id, p.epoch));
            } else if producer.is_some_and(|p| shard.txns.of_producer(p.id).is_some()) {
                // A transactional producer's epochs are the coordinator's: a
                // stray batch must not move them and so block its markers.
                return Err(WorkerError::Txn(TxnError::InvalidTxnState));
            }
            let (data, max_timestamp) = match append_time {
                Some(t) => (batch::set_log_append_time(data, t), t),
                None => {
                    let max = match look {
                        Some(l) if unset_max => l.newest.unwrap_or(h.max_timestamp),
                        _ => h.max_timestamp,
                    };
                    // Kafka also writes the topic's timestamp type: a
                    // client's LogAppendTime bit would make readers take
                    // maxTimestamp as every record's time.
                    let append_bit = h.attributes & batch::LOG_APPEND_TIME != 0;
                    if max != h.max_timestamp || append_bit {
                        (batch::set_max_timestamp(data, max), max)
                    } else {
                        (data, max)
                    }
                }
            };
            // The log writes baseOffset when it assigns offsets.
            let data = batch::set_leader_epoch(data, epoch);
            let offsets = h.offset_count();
            entries.push(Entry::Append {
                stream,
                base_offset: 0,
                offsets,
                max_timestamp,
                producer,
                data,
            });
        }
        // Bytes in are durable in the same flush as the batches they count.
        entries.push(usage::meter(&bytes_in, shard.usage_window_ms));
        let appended = match txn_producer {
            None => shard.log.append(entries).await?,
            Some(p) => {
                // Accepted under the transaction's lock, so the batch lands
                // before the marker that ends its transaction, or not at all.
                let id = shard
                    .txns
                    .of_producer(p.0)
                    .ok_or(WorkerError::Txn(TxnError::InvalidTxnState))?;
                let slot = shard.txn_slot(&id)?;
                let guard = slot.lock().await;
                let meta = guard
                    .as_ref()
                    .ok_or(WorkerError::Txn(TxnError::InvalidTxnState))?;
                if meta.producer_id != p.0 {
                    return Err(WorkerError::Txn(TxnError::InvalidTxnState));
                }
                if p.1 < meta.epoch {
                    return Err(WorkerError::InvalidProducerEpoch(format!(
                        "producer {} epoch {} is fenced by epoch {}",
                        p.0, p.1, meta.epoch
                    )));
                }
                let added = meta.partitions.contains(&(topic.to_string(), partition));
                if p.1 != meta.epoch || meta.state != TxnState::Ongoing || !added {
                    return Err(WorkerError::Txn(TxnError::InvalidTxnState));
                }
                shard.log.append(entries).await?
            }
        };
        let base_offset = appended.base_offsets.first().copied().unwrap_or(-1);
        // The stored time: a retry's is its original's.
        let log_append_time = match append_time {
            Some(_) => appended.max_timestamps.first().copied().unwrap_or(-1),
            None => -1,
        };
        let (log_start, _) = shard.log.offsets(stream).unwrap_or((0, 0));
        Ok(Accepted::local(
            Produced {
                base_offset,
                log_start,
                log_append_time,
            },
            appended,
            (self.totals.clone(), tenant.clone(), bytes_in),
        ))
    }

    #[tracing::instrument(level = "debug", name = "shard.read", skip_all, fields(%tenant, %topic, partition = partition, offset = offset))]
    async fn fetch(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        committed: bool,
    ) -> Result<Read> {
        let shard = self.shard(tenant).await?;
        let (_, stream) = shard.stream(topic, partition)?;
        Ok(shard
            .log
            .read_isolated(stream, offset, max_bytes, min_one, committed)
            .await?)
    }

    async fn list_offset(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
        timestamp: i64,
        committed: bool,
    ) -> Result<(i64, i64)> {
        let shard = self.shard(tenant).await?;
        let (_, stream) = shard.stream(topic, partition)?;
        let (start, hw) = shard.log.offsets(stream)?;
        Ok(match timestamp {
            -1 if committed => (shard.log.last_stable(stream)?, -1),
            -1 => (hw, -1),
            -2 => (start, -1),
            -3 => shard.log.max_timestamp(stream).await?.unwrap_or((-1, -1)),
            ts => match shard.log.offset_for_timestamp(stream, ts).await? {
                None => (-1, -1),
                Some(found) => first_record_at(&shard.log, stream, ts, found, start, hw).await,
            },
        })
    }

    async fn delete_records(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<i64> {
        let shard = self.shard(tenant).await?;
        let (meta, stream) = shard.stream(topic, partition)?;
        // As Kafka: a compact-only topic's records go by key, not by offset.
        if !meta.config().delete {
            return Err(WorkerError::PolicyViolation(format!(
                "records of {topic} cannot be deleted: its cleanup.policy is compact"
            )));
        }
        let offset = if offset == -1 {
            shard.log.offsets(stream)?.1
        } else {
            offset
        };
        Ok(shard.log.truncate(stream, offset).await?)
    }

    async fn init_producer_id(
        &self,
        tenant: &TenantId,
        transactional_id: Option<&str>,
        timeout_ms: i32,
        current: Option<(i64, i16)>,
    ) -> Result<(i64, i16)> {
        let shard = self.shard(tenant).await?;
        let Some(id) = transactional_id else {
            // A producer asking to bump its epoch (KIP-360) gets a new id, as
            // from Kafka: its sequences start again at 0 on every partition.
            return Ok((shard.producer_ids.allocate(&shard.log).await?, 0));
        };
        let id = id.to_string();
        detached(shard.init_transactional(id, timeout_ms, current)).await?
    }

    async fn add_partitions_to_txn(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<Result<()>>> {
        let shard = self.shard(tenant).await?;
        let id = transactional_id.to_string();
        detached(shard.add_partitions_to_txn(id, producer, partitions)).await?
    }

    async fn add_offsets_to_txn(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        group: &str,
    ) -> Result<()> {
        offsets::validate_group(group)?;
        let shard = self.shard(tenant).await?;
        let (id, group) = (transactional_id.to_string(), group.to_string());
        detached(shard.add_offsets_to_txn(id, producer, group)).await?
    }

    async fn txn_offset_commit(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        group: &str,
        member: &MemberRef,
        commits: Vec<OffsetCommit>,
    ) -> Result<Vec<Result<()>>> {
        offsets::validate_group(group)?;
        let shard = self.shard(tenant).await?;
        let (id, group, member) = (
            transactional_id.to_string(),
            group.to_string(),
            member.clone(),
        );
        detached(shard.txn_offset_commit(id, producer, group, member, commits)).await?
    }

    async fn end_txn(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        commit: bool,
    ) -> Result<()> {
        let shard = self.shard(tenant).await?;
        let id = transactional_id.to_string();
        detached(shard.end_txn(id, producer, commit)).await?
    }

    async fn transactions(&self, tenant: &TenantId) -> Result<Vec<(String, TxnMeta)>> {
        let shard = self.shard(tenant).await?;
        let mut out = Vec::new();
        for (id, slot) in shard.txns.all() {
            if let Some(m) = slot.lock().await.as_ref() {
                out.push((id, m.clone()));
            }
        }
        Ok(out)
    }

    async fn describe_producers(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
    ) -> Result<Vec<ProducerInfo>> {
        let shard = self.shard(tenant).await?;
        let (_, stream) = shard.stream(topic, partition)?;
        Ok(shard
            .log
            .producers(stream)?
            .into_iter()
            .map(|(id, p)| ProducerInfo {
                id,
                epoch: p.epoch,
                last_sequence: p.last_seq().unwrap_or(-1),
                txn_start_offset: p.open_txn.unwrap_or(-1),
                last_timestamp: p.last_timestamp,
            })
            .collect())
    }

    async fn charge(&self, tenant: &TenantId, usage: Usage) -> Result<Admission> {
        let shard = self.shard(tenant).await?;
        shard.lock_pending().add(&Counts {
            bytes_out: usage.fetch_bytes,
            requests: usage.requests,
            connection_ms: usage.connection_ms,
            ..Counts::default()
        });
        let now = tokio::time::Instant::now();
        let limits = (self.limits)(tenant);
        // The native meters run even under a policy, so that falling back
        // to them finds them true to what the tenant did.
        let native = if limits == Limits::default() {
            Duration::ZERO
        } else {
            let mut meters = shard.meters.lock().unwrap_or_else(|p| p.into_inner());
            meters.charge(&limits, usage, now)
        };
        let decided = (self.policy_of)(tenant).and_then(|p| self.admit(&shard, p, &usage, now));
        Ok(decided.unwrap_or(Admission::throttle(native)))
    }

    async fn usage(&self, tenant: &TenantId, from: i64, to: i64) -> Result<Vec<UsageWindow>> {
        let records = floe_tenants::usage::read_records(&*self.store, tenant, from, to)
            .await
            .map_err(|e| WorkerError::Unavailable(format!("reading usage: {e}")))?;
        let mut out: Vec<UsageWindow> = records
            .into_iter()
            .map(|record| UsageWindow {
                record,
                closed: true,
            })
            .collect();
        // The open shard's windows not written yet; a shard without an
        // owner is not opened for this (its usage waits in its log).
        if let Some(shard) = self.healthy(tenant) {
            let written: std::collections::HashSet<i64> =
                out.iter().map(|w| w.record.start_ms).collect();
            out.extend(usage::windows(&shard).into_iter().filter(|w| {
                (from..to).contains(&w.record.start_ms) && !written.contains(&w.record.start_ms)
            }));
        }
        Ok(out)
    }

    async fn delete_tenant(&self, tenant: &TenantId) -> Result<()> {
        let gate = self.opener(tenant);
        // Under the opener's lock, so no request opens the shard meanwhile.
        let _one_opener = gate.lock().await;
        self.deleted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.clone());
        let open = self.healthy(tenant);
        if let Some(shard) = open {
            // The usage so far is billed first: every window closes and is
            // written (on failure the shard stays, and a retry bills it).
            usage::tick(&shard, &*self.store, true).await?;
        }
        let open = self
            .open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
        if let Some(shard) = open {
            // What was accepted settles (and is then deleted).
            let _ = shard.log.close().await;
        }
        let prefix = Path::from(floe_common::shards_prefix(tenant));
        let doomed: Vec<_> = {
            use futures::TryStreamExt;
            self.store
                .list(Some(&prefix))
                .map_ok(|m| m.location)
                .try_collect()
                .await
                .map_err(|e| WorkerError::Unavailable(format!("listing {prefix}: {e}")))?
        };
        for path in doomed.iter().chain([&published::path(tenant)]) {
            match object_store::ObjectStoreExt::delete(&*self.store, path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(WorkerError::Unavailable(format!("deleting {path}: {e}")));
                }
            }
        }
        tracing::info!(%tenant, objects = doomed.len(), "deleted tenant's data");
        Ok(())
    }

    async fn leader_epoch(&self, tenant: &TenantId) -> Result<i32> {
        Ok(leader_epoch(&self.shard(tenant).await?.log))
    }

    async fn deploy_transform(
        &self,
        tenant: &TenantId,
        spec: crate::transforms::TransformSpec,
        wasm: Bytes,
    ) -> Result<crate::transforms::TransformStatus> {
        self.deploy(tenant, spec, wasm).await
    }

    async fn transforms(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<crate::transforms::TransformStatus>> {
        self.statuses(tenant).await
    }

    async fn delete_transform(&self, tenant: &TenantId, name: &str) -> Result<()> {
        self.undeploy(tenant, name).await
    }

    async fn create_connector(
        &self,
        tenant: &TenantId,
        spec: crate::connectors::ConnectorSpec,
        wasm: Bytes,
    ) -> Result<crate::connectors::ConnectorStatus> {
        self.connector_create(tenant, spec, wasm).await
    }

    async fn connectors(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<crate::connectors::ConnectorStatus>> {
        self.connector_statuses(tenant).await
    }

    async fn pause_connector(
        &self,
        tenant: &TenantId,
        name: &str,
        paused: bool,
    ) -> Result<crate::connectors::ConnectorStatus> {
        self.connector_pause(tenant, name, paused).await
    }

    async fn delete_connector(&self, tenant: &TenantId, name: &str) -> Result<()> {
        self.connector_delete(tenant, name).await
    }

    async fn subscribe(&self, tenant: &TenantId) -> Result<watch::Receiver<u64>> {
        Ok(self.shard(tenant).await?.log.subscribe())
    }

    async fn instances(&self, tenant: &TenantId, group: &str) -> Result<Vec<(String, Bytes)>> {
        offsets::validate_group(group)?;
        let mut shard = self.shard(tenant).await?;
        if let Err(e) = shard.log.check_owner().await {
            if e != floe_storage::Error::Fenced {
                return Err(e.into());
            }
            // Another owner wrote since: reopening replays its log.
            shard = self.shard(tenant).await?;
        }
        let found = shard.log.scan(&instances::group_prefix(group));
        Ok(found
            .into_iter()
            .filter_map(|(k, v)| Some((instances::parse_name(group, &k)?, v)))
            .collect())
    }

    async fn swap_instance(
        &self,
        tenant: &TenantId,
        group: &str,
        name: &str,
        expect: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<bool> {
        offsets::validate_group(group)?;
        let shard = self.shard(tenant).await?;
        let key = instances::key(group, name);
        let _one_swap = shard.instances_lock.lock().await;
        if shard.log.get(&key) != expect {
            return Ok(false);
        }
        let put = Entry::Put { key, value: new };
        shard.log.append(vec![put]).await?.durable().await?;
        Ok(true)
    }

    #[tracing::instrument(level = "debug", name = "group.commit_offsets", skip_all, fields(%tenant))]
    async fn commit_offsets(
        &self,
        tenant: &TenantId,
        group: &str,
        member: &MemberRef,
        commits: Vec<OffsetCommit>,
    ) -> Result<Vec<Result<()>>> {
        offsets::validate_group(group)?;
        let shard = self.shard(tenant).await?;
        let has_offsets = shard.log.has_prefix(&offsets::group_prefix(group));
        let commit_ms = now_ms();
        let mut entries = Vec::with_capacity(commits.len());
        let outcomes: Vec<Result<()>> = commits
            .into_iter()
            .map(|c| {
                let (topic, partition, value) = shard.checked_commit(c, commit_ms)?;
                entries.push(Entry::Put {
                    key: offsets::key(group, topic.id, partition),
                    value: Some(offsets::encode(&value)),
                });
                Ok(())
            })
            .collect();
        let committed = shard
            .groups
            .commit(&shard.log, group, member, has_offsets, entries)
            .await;
        match committed {
            // A group error is every partition's, whatever else was wrong.
            Err(e) => {
                return Ok(outcomes
                    .iter()
                    .map(|_| Err(WorkerError::Group(e.clone())))
                    .collect())
            }
            Ok(durable) => durable?,
        }
        Ok(outcomes)
    }

    #[tracing::instrument(level = "debug", name = "group.join", skip_all, fields(%tenant))]
    async fn join_group(
        &self,
        tenant: &TenantId,
        group: &str,
        join: Join,
    ) -> Result<Result<Joined, GroupError>> {
        let shard = self.group_shard(tenant, group).await?;
        let group = group.to_string();
        detached(async move { shard.groups.join(&shard.log, &group, join).await }).await
    }

    #[tracing::instrument(level = "debug", name = "group.sync", skip_all, fields(%tenant))]
    async fn sync_group(
        &self,
        tenant: &TenantId,
        group: &str,
        member: &MemberRef,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Result<Bytes, GroupError>> {
        let shard = self.group_shard(tenant, group).await?;
        let (group, member) = (group.to_string(), member.clone());
        detached(async move {
            shard
                .groups
                .sync(&shard.log, &group, &member, assignments)
                .await
        })
        .await
    }

    #[tracing::instrument(level = "debug", name = "group.heartbeat", skip_all, fields(%tenant))]
    async fn heartbeat(
        &self,
        tenant: &TenantId,
        group: &str,
        member: &MemberRef,
    ) -> Result<Result<(), GroupError>> {
        let shard = self.group_shard(tenant, group).await?;
        Ok(shard.groups.heartbeat(group, member).await)
    }

    async fn leave_group(
        &self,
        tenant: &TenantId,
        group: &str,
        members: Vec<(String, Option<String>)>,
    ) -> Result<Vec<Result<(), GroupError>>> {
        let shard = self.group_shard(tenant, group).await?;
        let group = group.to_string();
        detached(async move { shard.groups.leave(&shard.log, &group, members).await }).await
    }

    async fn delete_groups(
        &self,
        tenant: &TenantId,
        groups: Vec<String>,
    ) -> Result<Vec<Result<()>>> {
        let shard = self.shard(tenant).await?;
        let mut outcomes = Vec::with_capacity(groups.len());
        for g in groups {
            let keys = match offsets::validate_group(&g) {
                Ok(()) => shard
                    .log
                    .scan(&offsets::group_prefix(&g))
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect(),
                Err(e) => {
                    outcomes.push(Err(e));
                    continue;
                }
            };
            outcomes.push(
                shard
                    .groups
                    .delete(&shard.log, &g, keys)
                    .await
                    .map_err(WorkerError::Group),
            );
        }
        Ok(outcomes)
    }

    async fn delete_offsets(
        &self,
        tenant: &TenantId,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<Result<()>>> {
        let shard = self.group_shard(tenant, group).await?;
        let has_offsets = shard.log.has_prefix(&offsets::group_prefix(group));
        if !has_offsets && !shard.groups.exists(group).await {
            return Err(WorkerError::Group(GroupError::GroupIdNotFound));
        }
        let mut entries = Vec::new();
        let outcomes = partitions
            .iter()
            .map(|(topic, partition)| {
                let (t, _) = shard.stream(topic, *partition)?;
                entries.push(Entry::Put {
                    key: offsets::key(group, t.id, *partition),
                    value: None,
                });
                Ok(())
            })
            .collect();
        if !entries.is_empty() {
            shard.log.append(entries).await?.durable().await?;
        }
        Ok(outcomes)
    }

    /// Every group the coordinator holds, and, as Kafka lists them, every
    /// group known only by its committed offsets (a consumer that assigns
    /// its partitions itself), as Empty with no protocol type.
    async fn list_groups(&self, tenant: &TenantId) -> Result<Vec<(String, String, GroupState)>> {
        let shard = self.shard(tenant).await?;
        let mut all = shard.groups.list().await;
        let committed = shard.log.scan(offsets::PREFIX);
        let known: std::collections::HashSet<String> = all.iter().map(|g| g.0.clone()).collect();
        for g in offsets::groups_with_offsets(committed.iter().map(|(k, _)| &k[..])) {
            if !known.contains(&g) {
                all.push((g, String::new(), GroupState::Empty));
            }
        }
        all.sort();
        Ok(all)
    }

    async fn describe_group(&self, tenant: &TenantId, group: &str) -> Result<Option<Described>> {
        let shard = self.group_shard(tenant, group).await?;
        if let Some(d) = shard.groups.describe(group).await {
            return Ok(Some(d));
        }
        // A group of committed offsets alone is Empty, not Dead (Kafka).
        let committed = shard.log.has_prefix(&offsets::group_prefix(group));
        Ok(committed.then(|| Described {
            state: GroupState::Empty,
            protocol_type: String::new(),
            protocol: String::new(),
            members: Vec::new(),
        }))
    }

    async fn committed(
        &self,
        tenant: &TenantId,
        group: &str,
        partitions: Option<Vec<(String, i32)>>,
        require_stable: bool,
    ) -> Result<crate::CommittedOffsets> {
        offsets::validate_group(group)?;
        let shard = self.shard(tenant).await?;
        let stable = |topic: &str, partition: i32, c: Option<Committed>| {
            if require_stable && shard.txns.unstable(group, topic, partition) {
                return Err(WorkerError::UnstableOffsetCommit);
            }
            Ok(c)
        };
        let Some(partitions) = partitions else {
            let names: HashMap<u128, String> = {
                let topics = shard.topics.read().unwrap_or_else(|p| p.into_inner());
                topics.values().map(|t| (t.id, t.name.clone())).collect()
            };
            // Keys of deleted topics stay behind, unseen: their ids are gone.
            return Ok(shard
                .log
                .scan(&offsets::group_prefix(group))
                .into_iter()
                .filter_map(|(k, v)| {
                    let (id, partition) = offsets::parse_key(group, &k)?;
                    let name = names.get(&id)?.clone();
                    let c = stable(&name, partition, Some(offsets::decode(&v)?));
                    Some((name, partition, c))
                })
                .collect());
        };
        Ok(partitions
            .into_iter()
            .map(|(topic, partition)| {
                let c = shard.stream(&topic, partition).ok().and_then(|(t, _)| {
                    let v = shard.log.get(&offsets::key(group, t.id, partition))?;
                    offsets::decode(&v)
                });
                let c = stable(&topic, partition, c);
                (topic, partition, c)
            })
            .collect())
    }
}

impl LocalWorker {
    async fn group_shard(&self, tenant: &TenantId, group: &str) -> Result<Arc<Shard>> {
        offsets::validate_group(group)?;
        self.shard(tenant).await
    }
}

/// Runs a coordinator change in a task of its own: a request dropped
/// mid-way (its connection closed) must not strand the answers of a group's
/// other members, nor leave state in memory behind the log's.
async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    tokio::spawn(f)
        .await
        .map_err(|e| WorkerError::Unavailable(format!("coordinator task: {e}")))
}

/// The idempotent producer a batch names, if any (producer id 0 or more).
fn producer_of(h: &BatchHeader) -> Result<Option<Producer>> {
    if h.producer_id < 0 {
        return Ok(None);
    }
    if h.producer_epoch < 0 || h.base_sequence < 0 {
        return Err(WorkerError::InvalidRecord(format!(
            "producer {} with epoch {} and base sequence {}",
            h.producer_id, h.producer_epoch, h.base_sequence
        )));
    }
    Ok(Some(Producer {
        id: h.producer_id,
        epoch: h.producer_epoch,
        first_seq: h.base_sequence,
        time_ms: now_ms(),
        txn: if h.is_transactional() {
            Txn::Data
        } else {
            Txn::No
        },
    }))
}

/// Expires group members' sessions and ends join phases, for as long as the
/// shard stays open (the task keeps a closed shard alive one tick at most).
async fn group_timers(shard: Weak<Shard>) {
    loop {
        let Some(s) = shard.upgrade() else { return };
        let next = s.groups.tick(&s.log).await;
        let s2 = s.clone();
        drop(s);
        let wake = s2.groups.changed();
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = wake => {}
        }
        drop(s2);
    }
}

/// ListOffsets by time, as Kafka answers it: the first record at or after
/// `ts` from the log start on, searching on from the first batch whose max
/// timestamp reaches it (`found`, its start and time). A cleaned batch keeps
/// its header's max timestamp, so its records may all be older: the search
/// goes on to later batches, a few at most. Falls back to `found` (within
/// the log) if the batches cannot be read.
async fn first_record_at(
    log: &floe_storage::ShardLog,
    stream: StreamId,
    ts: i64,
    found: (i64, i64),
    start: i64,
    hw: i64,
) -> (i64, i64) {
    const MAX_BATCHES: usize = 64;
    let fallback = (found.0.max(start), found.1);
    let mut at = fallback.0;
    let mut looked = 0;
    while at < hw && looked < MAX_BATCHES {
        let Ok(r) = log.read(stream, at, 1 << 20, true).await else {
            return fallback;
        };
        if r.batches.is_empty() {
            break;
        }
        for b in &r.batches {
            looked += 1;
            let Ok(h) = batch::parse(b) else {
                return fallback;
            };
            match cleaner::first_at_or_after(b, &h, ts, at) {
                Ok(Some(hit)) => return hit,
                Ok(None) => {}
                Err(_) => return fallback,
            }
            at = batch::base_offset(b).unwrap_or(at) + i64::from(h.offset_count());
        }
    }
    fallback
}

/// Applies `retention.ms` and `retention.bytes` to every partition of the
/// shard, every `every`, for as long as the shard stays open: one `Truncate`
/// entry per partition that has something to drop. Storage then deletes the
/// objects nothing references any more.
async fn retention(shard: Weak<Shard>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(shard) = shard.upgrade() else { return };
        if shard.log.failed().is_some() {
            return;
        }
        let now = now_ms();
        let mut entries = Vec::new();
        for t in shard.topics_now() {
            let c = t.config();
            // A compacted topic without `delete` keeps its data for good.
            if !c.delete {
                continue;
            }
            let older_than = (c.retention_ms >= 0).then(|| now.saturating_sub(c.retention_ms));
            let max_bytes = u64::try_from(c.retention_bytes).ok();
            if older_than.is_none() && max_bytes.is_none() {
                continue;
            }
            for &s in &t.streams {
                let stream = StreamId(s);
                if let Some(log_start) = shard.log.retention_point(stream, older_than, max_bytes) {
                    entries.push(Entry::Truncate { stream, log_start });
                }
            }
        }
        if entries.is_empty() {
            continue;
        }
        let n = entries.len();
        match shard.log.append(entries).await {
            Ok(a) => match a.durable().await {
                Ok(()) => tracing::debug!(partitions = n, "retention moved log starts"),
                Err(e) => tracing::warn!(error = %e, "retention"),
            },
            Err(e) => tracing::warn!(error = %e, "retention"),
        }
    }
}

/// The shard's epoch as Kafka's 32-bit leader epoch.
fn leader_epoch(log: &ShardLog) -> i32 {
    i32::try_from(log.epoch()).unwrap_or(i32::MAX)
}
