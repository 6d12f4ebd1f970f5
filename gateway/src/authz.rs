//! Per-key ACLs, enforced in one place: every handler reaches the worker
//! through [`Guarded`], which checks each topic and group a call names
//! against the bindings restricting the request's key before passing the
//! call on, and leaves out of lists what the key may not describe. Kafka's
//! errors follow: TOPIC_AUTHORIZATION_FAILED and GROUP_AUTHORIZATION_FAILED,
//! per partition where a request names several.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use floe_common::batch::BatchHeader;
use floe_common::TenantId;
use floe_tenants::acl::{self, Acl, Operation, Resource};
use floe_tenants::Registry;
use floe_worker::connectors::{ConnectorSpec, ConnectorStatus, Kind};
use floe_worker::quota::Usage;
use floe_worker::transforms::{TransformSpec, TransformStatus};
use floe_worker::{
    Accepted, CommittedOffsets, ConfigChange, Described, GroupError, GroupState, Join, Joined,
    MemberRef, NewTopic, OffsetCommit, ProducerInfo, Read, Shards, TopicMeta, TxnMeta, UsageWindow,
    WorkerError,
};
use tokio::sync::watch;

type Result<T> = std::result::Result<T, WorkerError>;

/// The worker as one request's key may use it.
pub struct Guarded<W> {
    worker: Arc<W>,
    /// The bindings restricting the key; `None`: unrestricted.
    only: Option<Arc<[Acl]>>,
}

impl<W> Clone for Guarded<W> {
    fn clone(&self) -> Self {
        Self {
            worker: self.worker.clone(),
            only: self.only.clone(),
        }
    }
}

impl<W> Guarded<W> {
    pub fn new(worker: Arc<W>, only: Option<Arc<[Acl]>>) -> Self {
        Self { worker, only }
    }

    /// The worker as a request of `tenant` logged in with `key` may use it
    /// (`None`: no login, the open default tenant).
    pub fn for_key(
        worker: Arc<W>,
        registry: &Registry,
        tenant: &TenantId,
        key: Option<&str>,
    ) -> Self {
        let only = key
            .and_then(|k| registry.restrictions(tenant.as_str(), k))
            .map(Arc::from);
        Self::new(worker, only)
    }

    /// Whether the key may read and change ACLs (no binding restricts it).
    pub fn unrestricted(&self) -> bool {
        self.only.is_none()
    }

    fn may(&self, resource: Resource, name: &str, op: Operation) -> bool {
        self.only
            .as_ref()
            .is_none_or(|b| acl::allowed(b, resource, name, op))
    }

    /// TOPIC_AUTHORIZATION_FAILED unless the key may do `op` on `name`.
    pub fn topic(&self, name: &str, op: Operation) -> Result<()> {
        if self.may(Resource::Topic, name, op) {
            Ok(())
        } else {
            Err(WorkerError::TopicAuthorizationFailed)
        }
    }

    fn group(&self, name: &str, op: Operation) -> Result<()> {
        if self.may(Resource::Group, name, op) {
            Ok(())
        } else {
            Err(WorkerError::GroupAuthorizationFailed)
        }
    }
}

/// Calls `call` with the items `ok` lets through; the others are answered
/// TOPIC_AUTHORIZATION_FAILED, in their places.
async fn per_topic<T, Fut>(
    items: Vec<T>,
    ok: impl Fn(&T) -> bool,
    call: impl FnOnce(Vec<T>) -> Fut,
) -> Result<Vec<Result<()>>>
where
    Fut: Future<Output = Result<Vec<Result<()>>>>,
{
    let mask: Vec<bool> = items.iter().map(&ok).collect();
    if mask.iter().all(|&m| m) {
        return call(items).await;
    }
    let kept: Vec<T> = items
        .into_iter()
        .zip(&mask)
        .filter_map(|(t, &m)| m.then_some(t))
        .collect();
    let mut done = if kept.is_empty() {
        Vec::new()
    } else {
        call(kept).await?
    }
    .into_iter();
    Ok(mask
        .iter()
        .map(|&m| match m {
            true => done
                .next()
                .unwrap_or(Err(WorkerError::OperationNotAttempted)),
            false => Err(WorkerError::TopicAuthorizationFailed),
        })
        .collect())
}

impl<W: Shards> Shards for Guarded<W> {
    async fn topics(&self, tenant: &TenantId) -> Result<Vec<TopicMeta>> {
        let mut all = self.worker.topics(tenant).await?;
        all.retain(|t| self.may(Resource::Topic, &t.name, Operation::Describe));
        Ok(all)
    }

    async fn create_topic(&self, tenant: &TenantId, topic: NewTopic) -> Result<TopicMeta> {
        self.topic(&topic.name, Operation::Create)?;
        self.worker.create_topic(tenant, topic).await
    }

    async fn delete_topic(&self, tenant: &TenantId, name: &str) -> Result<TopicMeta> {
        self.topic(name, Operation::Delete)?;
        self.worker.delete_topic(tenant, name).await
    }

    async fn create_partitions(
        &self,
        tenant: &TenantId,
        name: &str,
        total: usize,
        validate_only: bool,
    ) -> Result<()> {
        self.topic(name, Operation::Alter)?;
        self.worker
            .create_partitions(tenant, name, total, validate_only)
            .await
    }

    async fn alter_configs(
        &self,
        tenant: &TenantId,
        name: &str,
        change: ConfigChange,
        validate_only: bool,
    ) -> Result<()> {
        self.topic(name, Operation::AlterConfigs)?;
        self.worker
            .alter_configs(tenant, name, change, validate_only)
            .await
    }

    async fn produce(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
        batches: Vec<(BatchHeader, Bytes)>,
    ) -> Result<Accepted> {
        self.topic(topic, Operation::Write)?;
        self.worker.produce(tenant, topic, partition, batches).await
    }

    #[allow(clippy::too_many_arguments)] // the trait's
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
        self.topic(topic, Operation::Read)?;
        self.worker
            .fetch(
                tenant, topic, partition, offset, max_bytes, min_one, committed,
            )
            .await
    }

    async fn list_offset(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
        timestamp: i64,
        committed: bool,
    ) -> Result<(i64, i64)> {
        self.topic(topic, Operation::Describe)?;
        self.worker
            .list_offset(tenant, topic, partition, timestamp, committed)
            .await
    }

    async fn delete_records(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<i64> {
        self.topic(topic, Operation::Delete)?;
        self.worker
            .delete_records(tenant, topic, partition, offset)
            .await
    }

    async fn init_producer_id(
        &self,
        tenant: &TenantId,
        transactional_id: Option<&str>,
        timeout_ms: i32,
        current: Option<(i64, i16)>,
    ) -> Result<(i64, i16)> {
        self.worker
            .init_producer_id(tenant, transactional_id, timeout_ms, current)
            .await
    }

    async fn add_partitions_to_txn(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<Result<()>>> {
        // As in Kafka: one partition it may not write fails the request;
        // the rest are not attempted.
        let ok: Vec<bool> = partitions
            .iter()
            .map(|(t, _)| self.may(Resource::Topic, t, Operation::Write))
            .collect();
        if ok.iter().all(|&o| o) {
            return self
                .worker
                .add_partitions_to_txn(tenant, transactional_id, producer, partitions)
                .await;
        }
        Ok(ok
            .into_iter()
            .map(|o| match o {
                true => Err(WorkerError::OperationNotAttempted),
                false => Err(WorkerError::TopicAuthorizationFailed),
            })
            .collect())
    }

    async fn add_offsets_to_txn(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        group: &str,
    ) -> Result<()> {
        self.group(group, Operation::Read)?;
        self.worker
            .add_offsets_to_txn(tenant, transactional_id, producer, group)
            .await
    }

    #[allow(clippy::too_many_arguments)] // the trait's
    async fn txn_offset_commit(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        group: &str,
        member: &MemberRef,
        offsets: Vec<OffsetCommit>,
    ) -> Result<Vec<Result<()>>> {
        self.group(group, Operation::Read)?;
        let ok = |o: &OffsetCommit| self.may(Resource::Topic, &o.topic, Operation::Read);
        per_topic(offsets, ok, |offsets| {
            self.worker.txn_offset_commit(
                tenant,
                transactional_id,
                producer,
                group,
                member,
                offsets,
            )
        })
        .await
    }

    async fn end_txn(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        commit: bool,
    ) -> Result<()> {
        self.worker
            .end_txn(tenant, transactional_id, producer, commit)
            .await
    }

    async fn transactions(&self, tenant: &TenantId) -> Result<Vec<(String, TxnMeta)>> {
        self.worker.transactions(tenant).await
    }

    async fn describe_producers(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
    ) -> Result<Vec<ProducerInfo>> {
        self.topic(topic, Operation::Read)?;
        self.worker
            .describe_producers(tenant, topic, partition)
            .await
    }

    async fn charge(
        &self,
        tenant: &TenantId,
        usage: Usage,
    ) -> Result<floe_worker::quota::Admission> {
        self.worker.charge(tenant, usage).await
    }

    async fn usage(&self, tenant: &TenantId, from: i64, to: i64) -> Result<Vec<UsageWindow>> {
        self.worker.usage(tenant, from, to).await
    }

    async fn delete_tenant(&self, tenant: &TenantId) -> Result<()> {
        self.worker.delete_tenant(tenant).await
    }

    async fn leader_epoch(&self, tenant: &TenantId) -> Result<i32> {
        self.worker.leader_epoch(tenant).await
    }

    async fn commit_offsets(
        &self,
        tenant: &TenantId,
        group: &str,
        member: &MemberRef,
        offsets: Vec<OffsetCommit>,
    ) -> Result<Vec<Result<()>>> {
        self.group(group, Operation::Read)?;
        let ok = |o: &OffsetCommit| self.may(Resource::Topic, &o.topic, Operation::Read);
        per_topic(offsets, ok, |offsets| {
            self.worker.commit_offsets(tenant, group, member, offsets)
        })
        .await
    }

    async fn committed(
        &self,
        tenant: &TenantId,
        group: &str,
        partitions: Option<Vec<(String, i32)>>,
        require_stable: bool,
    ) -> Result<CommittedOffsets> {
        self.group(group, Operation::Describe)?;
        let mut out = self
            .worker
            .committed(tenant, group, partitions.clone(), require_stable)
            .await?;
        let describable = |t: &str| self.may(Resource::Topic, t, Operation::Describe);
        match partitions {
            // Named partitions are answered, with the error where due.
            Some(_) => {
                for (t, _, r) in &mut out {
                    if !describable(t) {
                        *r = Err(WorkerError::TopicAuthorizationFailed);
                    }
                }
            }
            // All of them: only what the key may see.
            None => out.retain(|(t, _, _)| describable(t)),
        }
        Ok(out)
    }

    async fn join_group(
        &self,
        tenant: &TenantId,
        group: &str,
        join: Join,
    ) -> Result<std::result::Result<Joined, GroupError>> {
        self.group(group, Operation::Read)?;
        self.worker.join_group(tenant, group, join).await
    }

    async fn sync_group(
        &self,
        tenant: &TenantId,
        group: &str,
        member: &MemberRef,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<std::result::Result<Bytes, GroupError>> {
        self.group(group, Operation::Read)?;
        self.worker
            .sync_group(tenant, group, member, assignments)
            .await
    }

    async fn heartbeat(
        &self,
        tenant: &TenantId,
        group: &str,
        member: &MemberRef,
    ) -> Result<std::result::Result<(), GroupError>> {
        self.group(group, Operation::Read)?;
        self.worker.heartbeat(tenant, group, member).await
    }

    async fn leave_group(
        &self,
        tenant: &TenantId,
        group: &str,
        members: Vec<(String, Option<String>)>,
    ) -> Result<Vec<std::result::Result<(), GroupError>>> {
        self.group(group, Operation::Read)?;
        self.worker.leave_group(tenant, group, members).await
    }

    async fn delete_groups(
        &self,
        tenant: &TenantId,
        groups: Vec<String>,
    ) -> Result<Vec<Result<()>>> {
        let ok: Vec<bool> = groups
            .iter()
            .map(|g| self.may(Resource::Group, g, Operation::Delete))
            .collect();
        let kept: Vec<String> = groups
            .into_iter()
            .zip(&ok)
            .filter_map(|(g, &o)| o.then_some(g))
            .collect();
        let mut done = self.worker.delete_groups(tenant, kept).await?.into_iter();
        Ok(ok
            .into_iter()
            .map(|o| match o {
                true => done
                    .next()
                    .unwrap_or(Err(WorkerError::OperationNotAttempted)),
                false => Err(WorkerError::GroupAuthorizationFailed),
            })
            .collect())
    }

    async fn delete_offsets(
        &self,
        tenant: &TenantId,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<Result<()>>> {
        self.group(group, Operation::Delete)?;
        let ok = |p: &(String, i32)| self.may(Resource::Topic, &p.0, Operation::Read);
        per_topic(partitions, ok, |partitions| {
            self.worker.delete_offsets(tenant, group, partitions)
        })
        .await
    }

    async fn list_groups(&self, tenant: &TenantId) -> Result<Vec<(String, String, GroupState)>> {
        let mut all = self.worker.list_groups(tenant).await?;
        all.retain(|(g, _, _)| self.may(Resource::Group, g, Operation::Describe));
        Ok(all)
    }

    async fn describe_group(&self, tenant: &TenantId, group: &str) -> Result<Option<Described>> {
        self.group(group, Operation::Describe)?;
        self.worker.describe_group(tenant, group).await
    }

    async fn instances(&self, tenant: &TenantId, group: &str) -> Result<Vec<(String, Bytes)>> {
        self.group(group, Operation::Describe)?;
        self.worker.instances(tenant, group).await
    }

    async fn swap_instance(
        &self,
        tenant: &TenantId,
        group: &str,
        name: &str,
        expect: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<bool> {
        self.group(group, Operation::Read)?;
        self.worker
            .swap_instance(tenant, group, name, expect, new)
            .await
    }

    /// A transform reads its input and writes its outputs and dead-letter
    /// topic as the deploying key: the key must be allowed all of it.
    async fn deploy_transform(
        &self,
        tenant: &TenantId,
        spec: TransformSpec,
        wasm: Bytes,
    ) -> Result<TransformStatus> {
        self.topic(&spec.input, Operation::Read)?;
        for o in spec.outputs.iter().chain(&spec.dead_letter) {
            self.topic(o, Operation::Write)?;
        }
        self.worker.deploy_transform(tenant, spec, wasm).await
    }

    /// The transforms whose input the key may describe.
    async fn transforms(&self, tenant: &TenantId) -> Result<Vec<TransformStatus>> {
        let mut all = self.worker.transforms(tenant).await?;
        all.retain(|t| self.may(Resource::Topic, &t.input, Operation::Describe));
        Ok(all)
    }

    /// Deleting takes what deploying took.
    async fn delete_transform(&self, tenant: &TenantId, name: &str) -> Result<()> {
        let all = self.worker.transforms(tenant).await?;
        let t = all
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| WorkerError::UnknownTransform(name.into()))?;
        self.topic(&t.input, Operation::Read)?;
        for o in t.outputs.iter().chain([&t.dead_letter]) {
            self.topic(o, Operation::Write)?;
        }
        self.worker.delete_transform(tenant, name).await
    }

    /// A connector reads (sink) or writes (source, and a sink's dead
    /// letters) its topics as the creating key: the key must be allowed
    /// all of it, and so for every change to it.
    async fn create_connector(
        &self,
        tenant: &TenantId,
        spec: ConnectorSpec,
        wasm: Bytes,
    ) -> Result<ConnectorStatus> {
        let dead_letter = (spec.kind == Kind::Sink).then(|| {
            spec.dead_letter
                .clone()
                .unwrap_or_else(|| format!("{}-dlq", spec.name))
        });
        self.connector_topics(spec.kind, &spec.topics, dead_letter.as_deref())?;
        self.worker.create_connector(tenant, spec, wasm).await
    }

    /// The connectors whose topics the key may describe.
    async fn connectors(&self, tenant: &TenantId) -> Result<Vec<ConnectorStatus>> {
        let mut all = self.worker.connectors(tenant).await?;
        all.retain(|c| {
            c.topics
                .iter()
                .all(|t| self.may(Resource::Topic, t, Operation::Describe))
        });
        Ok(all)
    }

    async fn pause_connector(
        &self,
        tenant: &TenantId,
        name: &str,
        paused: bool,
    ) -> Result<ConnectorStatus> {
        self.may_change_connector(tenant, name).await?;
        self.worker.pause_connector(tenant, name, paused).await
    }

    async fn delete_connector(&self, tenant: &TenantId, name: &str) -> Result<()> {
        self.may_change_connector(tenant, name).await?;
        self.worker.delete_connector(tenant, name).await
    }

    async fn subscribe(&self, tenant: &TenantId) -> Result<watch::Receiver<u64>> {
        self.worker.subscribe(tenant).await
    }
}

impl<W: Shards> Guarded<W> {
    fn connector_topics(
        &self,
        kind: Kind,
        topics: &[String],
        dead_letter: Option<&str>,
    ) -> Result<()> {
        let op = match kind {
            Kind::Sink => Operation::Read,
            Kind::Source => Operation::Write,
        };
        for t in topics {
            self.topic(t, op)?;
        }
        if let Some(d) = dead_letter {
            self.topic(d, Operation::Write)?;
        }
        Ok(())
    }

    /// Changing a connector takes what creating it took.
    async fn may_change_connector(&self, tenant: &TenantId, name: &str) -> Result<()> {
        let all = self.worker.connectors(tenant).await?;
        let c = all
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| WorkerError::UnknownConnector(name.into()))?;
        self.connector_topics(c.kind, &c.topics, c.dead_letter.as_deref())
    }
}
