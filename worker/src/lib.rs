//! Shard owners. A worker owns shards — (tenant, shard#) — and gives them
//! Kafka's meaning: a topic catalog, partitions as streams of the shard's
//! fenced log, offsets, configs. The gateway reaches it through [`Shards`],
//! an in-process call today and an RPC in cluster mode.
//!
//! # Layout
//! - [`catalog`]: topic metadata, names and configs, as metadata keys of the log.
//! - [`offsets`]: consumer groups' committed offsets, as metadata keys of the log.
//! - [`groups`]: the classic group membership protocol as a state machine
//!   (not served yet).
//! - [`instances`]: the HTTP API's v2 consumer instances, as metadata keys.
//! - [`producer_ids`]: idempotent producers' ids, allocated in durable blocks.
//! - [`transactions`]: the transaction coordinator's state per transactional id.
//! - [`quota`]: rate quotas per tenant, metered at the shard owner.
//! - [`transforms`]: tenants' Wasm transforms as metadata keys; the
//!   runner is `local/transform.rs`.
//! - [`records`]: stored batches decoded into records.
//! - [`local`]: [`LocalWorker`], the in-process owner of every shard it is asked for.
//!
//! Each tenant has one shard today (shard 0), holding its catalog and every
//! partition; splitting partitions across shards comes with cluster mode.

pub mod catalog;
pub mod connectors;
pub mod coordinator;
pub mod groups;
pub mod inflate;
pub mod instances;
pub mod local;
pub mod offsets;
pub mod producer_ids;
pub mod published;
pub mod quota;
pub mod records;
pub mod transactions;
pub mod transforms;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use floe_common::batch::BatchHeader;
use floe_common::TenantId;
use floe_tenants::usage::{Counts, Totals};
use tokio::sync::watch;

pub use catalog::TopicMeta;
pub use coordinator::Described;
pub use floe_storage::{Appended, Read};
pub use groups::{GroupError, Join, Joined, Member, MemberRef, State as GroupState};
pub use local::usage::Window as UsageWindow;
pub use local::{Held, LocalWorker, WorkerConfig};
pub use offsets::Committed;
pub use transactions::{TxnError, TxnMeta, TxnState};

/// What a caller can act on; the gateway maps these to Kafka error codes and
/// HTTP statuses in one place.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WorkerError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    /// A topic a request names by itself (a transform's or connector's
    /// input or output), so the answer can say which.
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("{0}")]
    InvalidTopic(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    MessageTooLarge(String),
    #[error("{0}")]
    InvalidRecord(String),
    #[error("offset out of range (log start {log_start}, high watermark {high_watermark})")]
    OffsetOutOfRange { log_start: i64, high_watermark: i64 },
    #[error("invalid group id")]
    InvalidGroupId,
    /// The group protocol's answer (Kafka's error of the same name).
    #[error("group: {0:?}")]
    Group(GroupError),
    #[error("offset metadata of {0} bytes is over the limit of 4096")]
    OffsetMetadataTooLarge(usize),
    /// An idempotent batch out of its producer's sequence.
    #[error("{0}")]
    OutOfOrderSequence(String),
    /// An idempotent batch from a fenced (older) producer epoch.
    #[error("{0}")]
    InvalidProducerEpoch(String),
    /// An idempotent producer the partition does not know (expired) that
    /// did not start at sequence 0; it must bump its epoch (KIP-360).
    #[error("{0}")]
    UnknownProducerId(String),
    /// Another part of the same request failed, so this one was not tried.
    #[error("not attempted: another partition of the request failed")]
    OperationNotAttempted,
    /// A request would take the tenant beyond a limit of its plan
    /// (partitions, storage).
    #[error("{0}")]
    PolicyViolation(String),
    /// OffsetFetch with `require_stable`: an open transaction has an offset
    /// for this partition; ask again after it ends.
    #[error("an open transaction has an offset for this partition")]
    UnstableOffsetCommit,
    /// The transaction coordinator's answer (Kafka's error of the same name).
    #[error("transaction: {0:?}")]
    Txn(TxnError),
    /// The key's ACLs do not allow this on the topic.
    #[error("not authorized for this topic")]
    TopicAuthorizationFailed,
    /// The key's ACLs do not allow this on the group.
    #[error("not authorized for this group")]
    GroupAuthorizationFailed,
    /// A Wasm component was refused: not a component of the world, or it
    /// imports what the world does not grant.
    #[error("{0}")]
    InvalidPlugin(String),
    #[error("no transform named {0}")]
    UnknownTransform(String),
    #[error("no connector named {0}")]
    UnknownConnector(String),
    /// Storage is failing or the shard is changing owner; retry.
    #[error("shard unavailable: {0}")]
    Unavailable(String),
    /// The call may or may not have taken effect: its answer was lost, or
    /// its write failed with an unknown outcome. Retriable; an idempotent
    /// producer's retry is answered with the first write's offset if it
    /// landed.
    #[error("outcome unknown: {0}")]
    Uncertain(String),
}

impl From<floe_storage::Error> for WorkerError {
    fn from(e: floe_storage::Error) -> Self {
        match e {
            floe_storage::Error::UnknownStream => WorkerError::UnknownTopicOrPartition,
            floe_storage::Error::OffsetOutOfRange {
                log_start,
                high_watermark,
            } => WorkerError::OffsetOutOfRange {
                log_start,
                high_watermark,
            },
            e @ floe_storage::Error::OutOfOrderSequence(_) => {
                WorkerError::OutOfOrderSequence(e.to_string())
            }
            e @ floe_storage::Error::InvalidProducerEpoch { .. } => {
                WorkerError::InvalidProducerEpoch(e.to_string())
            }
            e @ floe_storage::Error::UnknownProducer { .. } => {
                WorkerError::UnknownProducerId(e.to_string())
            }
            other => WorkerError::Unavailable(other.to_string()),
        }
    }
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

/// A topic to create.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewTopic {
    pub name: String,
    pub partitions: usize,
    pub configs: BTreeMap<String, String>,
    pub validate_only: bool,
}

/// One partition's offset in an OffsetCommit.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

/// How to change a topic's configs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum ConfigChange {
    /// AlterConfigs: the given set replaces all non-default values.
    Replace(BTreeMap<String, String>),
    /// IncrementalAlterConfigs: set (`Some`) or reset to default (`None`).
    Incremental(Vec<(String, Option<String>)>),
}

/// One idempotent producer a partition knows (DescribeProducers).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProducerInfo {
    pub id: i64,
    pub epoch: i16,
    /// Sequence number of its newest record; -1 when none.
    pub last_sequence: i32,
    /// First offset of its open transaction on the partition; -1 when none.
    pub txn_start_offset: i64,
    /// Largest timestamp of its newest batch.
    pub last_timestamp: i64,
}

/// A produce accepted in the order it was asked: its records are
/// acknowledged when [`Accepted::durable`] resolves.
pub struct Accepted(Pending);

enum Pending {
    /// In this process's open flush, offsets assigned.
    Local {
        produced: Produced,
        appended: Appended,
        /// Bytes in, for the tenant's totals once durable.
        counted: Option<(Arc<Totals>, TenantId, Counts)>,
    },
    /// Sent to the shard's owner, which answers once durable.
    Remote(tokio::sync::oneshot::Receiver<Result<Produced>>),
}

/// Where a durable produce's records landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Produced {
    pub base_offset: i64,
    pub log_start: i64,
    /// The time the batches were stamped with under
    /// `message.timestamp.type=LogAppendTime`, else -1. (Defaulted so that
    /// a gateway reads the answers of a worker from before the field.)
    #[serde(default = "no_time")]
    pub log_append_time: i64,
}

fn no_time() -> i64 {
    -1
}

impl Accepted {
    fn local(
        produced: Produced,
        appended: Appended,
        counted: (Arc<Totals>, TenantId, Counts),
    ) -> Self {
        Self(Pending::Local {
            produced,
            appended,
            counted: Some(counted),
        })
    }

    /// A produce another process accepted: `answer` is its outcome once durable.
    pub fn remote(answer: tokio::sync::oneshot::Receiver<Result<Produced>>) -> Self {
        Self(Pending::Remote(answer))
    }

    pub async fn durable(self) -> Result<Produced> {
        match self.0 {
            Pending::Local {
                produced,
                appended,
                counted,
            } => {
                use tracing::Instrument;
                // Whatever failed, the flush may have landed (a PUT whose
                // answer was lost, or one under way when the log was fenced).
                appended
                    .durable()
                    .instrument(tracing::debug_span!("shard.durable"))
                    .await
                    .map_err(|e| WorkerError::Uncertain(e.to_string()))?;
                if let Some((totals, tenant, c)) = counted {
                    totals.add(&tenant, &c);
                }
                Ok(produced)
            }
            Pending::Remote(answer) => answer.await.unwrap_or_else(|_| {
                Err(WorkerError::Uncertain(
                    "the shard's owner went away before answering".into(),
                ))
            }),
        }
    }
}

/// OffsetFetch's answer: (topic, partition, the committed offset if any, or
/// why it cannot be given).
pub type CommittedOffsets = Vec<(String, i32, Result<Option<Committed>>)>;

/// The gateway ↔ worker boundary. Every call names its tenant; nothing here
/// speaks the wire protocol.
pub trait Shards: Send + Sync + 'static {
    /// Every topic of the tenant.
    fn topics(&self, tenant: &TenantId) -> impl Future<Output = Result<Vec<TopicMeta>>> + Send;
    fn create_topic(
        &self,
        tenant: &TenantId,
        topic: NewTopic,
    ) -> impl Future<Output = Result<TopicMeta>> + Send;
    fn delete_topic(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> impl Future<Output = Result<TopicMeta>> + Send;
    fn create_partitions(
        &self,
        tenant: &TenantId,
        name: &str,
        total: usize,
        validate_only: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    fn alter_configs(
        &self,
        tenant: &TenantId,
        name: &str,
        change: ConfigChange,
        validate_only: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Appends validated batches to one partition.
    fn produce(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
        batches: Vec<(BatchHeader, Bytes)>,
    ) -> impl Future<Output = Result<Accepted>> + Send;
    /// Whole batches from `offset` on, up to `max_bytes` (the first even if
    /// larger, with `min_one`), never past the durable high watermark, and
    /// with `committed` (read_committed) not past the last stable offset.
    #[allow(clippy::too_many_arguments)]
    fn fetch(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        committed: bool,
    ) -> impl Future<Output = Result<Read>> + Send;
    /// ListOffsets: -1 latest (the last stable offset with `committed`),
    /// -2 earliest, -3 max timestamp, else the first record with a
    /// timestamp at or after it. Returns (offset, timestamp).
    fn list_offset(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
        timestamp: i64,
        committed: bool,
    ) -> impl Future<Output = Result<(i64, i64)>> + Send;
    /// DeleteRecords: raises the partition's log start to `offset` (-1: the
    /// high watermark), durably. Returns the new log start.
    fn delete_records(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> impl Future<Output = Result<i64>> + Send;
    /// InitProducerId. Without a transactional id: a producer id never
    /// handed out before, with epoch 0. With one: its producer id and a
    /// bumped epoch (fencing older instances; an ongoing transaction is
    /// aborted), after checking `current` (KIP-360) when given.
    fn init_producer_id(
        &self,
        tenant: &TenantId,
        transactional_id: Option<&str>,
        timeout_ms: i32,
        current: Option<(i64, i16)>,
    ) -> impl Future<Output = Result<(i64, i16)>> + Send;
    /// AddPartitionsToTxn: one outcome per partition; none is added unless
    /// all can be.
    fn add_partitions_to_txn(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        partitions: Vec<(String, i32)>,
    ) -> impl Future<Output = Result<Vec<Result<()>>>> + Send;
    fn add_offsets_to_txn(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        group: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// TxnOffsetCommit: offsets that become committed when the transaction
    /// commits. One outcome per offset.
    fn txn_offset_commit(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        group: &str,
        member: &MemberRef,
        offsets: Vec<OffsetCommit>,
    ) -> impl Future<Output = Result<Vec<Result<()>>>> + Send;
    /// EndTxn: markers on every partition, and on commit the offsets, in one
    /// log object; answered once durable.
    fn end_txn(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        commit: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Every transactional id and its state.
    fn transactions(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<Vec<(String, TxnMeta)>>> + Send;
    /// DescribeProducers: the idempotent producers a partition remembers.
    fn describe_producers(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
    ) -> impl Future<Output = Result<Vec<ProducerInfo>>> + Send;
    /// Charges what a request used to its tenant's rate quotas: how long
    /// the tenant must wait before its next request (zero within quota),
    /// and whether its plan's policy refuses the request.
    fn charge(
        &self,
        tenant: &TenantId,
        usage: quota::Usage,
    ) -> impl Future<Output = Result<quota::Admission>> + Send;
    /// The tenant's metered usage in windows starting in `from..to` (ms):
    /// the records of closed windows, then the durable counts of windows
    /// its open shard has not closed yet.
    fn usage(
        &self,
        tenant: &TenantId,
        from: i64,
        to: i64,
    ) -> impl Future<Output = Result<Vec<UsageWindow>>> + Send;
    /// Removes a deleted tenant's data: its shards close and their objects
    /// go (usage records stay); the tenant's shards do not open again.
    fn delete_tenant(&self, tenant: &TenantId) -> impl Future<Output = Result<()>> + Send;
    /// The leader epoch of the tenant's partitions: durable and increasing,
    /// bumped whenever the shard changes owner.
    fn leader_epoch(&self, tenant: &TenantId) -> impl Future<Output = Result<i32>> + Send;
    /// OffsetCommit for `group`: every accepted offset is durable, all in one
    /// log object, when this returns. A member of the current generation may
    /// commit; so may anyone, with a generation below 0, to a group without
    /// members (a consumer that assigns its own partitions).
    /// One outcome per offset, in order.
    fn commit_offsets(
        &self,
        tenant: &TenantId,
        group: &str,
        member: &MemberRef,
        offsets: Vec<OffsetCommit>,
    ) -> impl Future<Output = Result<Vec<Result<()>>>> + Send;
    /// OffsetFetch for `group`: the committed offset of each of `partitions`
    /// (`None` where nothing is committed), or of every partition of an
    /// existing topic the group committed, for `None`. With `require_stable`,
    /// a partition an open transaction has an offset for is
    /// [`WorkerError::UnstableOffsetCommit`] (KIP-447).
    fn committed(
        &self,
        tenant: &TenantId,
        group: &str,
        partitions: Option<Vec<(String, i32)>>,
        require_stable: bool,
    ) -> impl Future<Output = Result<CommittedOffsets>> + Send;
    /// JoinGroup: answers when the group's join phase completes. The outer
    /// error is the shard's; the inner one the group protocol's.
    fn join_group(
        &self,
        tenant: &TenantId,
        group: &str,
        join: Join,
    ) -> impl Future<Output = Result<Result<Joined, GroupError>>> + Send;
    /// SyncGroup: the member's assignment, once the leader sent them all and
    /// the group's record is durable.
    fn sync_group(
        &self,
        tenant: &TenantId,
        group: &str,
        member: &MemberRef,
        assignments: Vec<(String, Bytes)>,
    ) -> impl Future<Output = Result<Result<Bytes, GroupError>>> + Send;
    fn heartbeat(
        &self,
        tenant: &TenantId,
        group: &str,
        member: &MemberRef,
    ) -> impl Future<Output = Result<Result<(), GroupError>>> + Send;
    /// LeaveGroup for (member id, instance id)s; one outcome each.
    fn leave_group(
        &self,
        tenant: &TenantId,
        group: &str,
        members: Vec<(String, Option<String>)>,
    ) -> impl Future<Output = Result<Vec<Result<(), GroupError>>>> + Send;
    /// DeleteGroups: one outcome per group; only groups without members go.
    fn delete_groups(
        &self,
        tenant: &TenantId,
        groups: Vec<String>,
    ) -> impl Future<Output = Result<Vec<Result<()>>>> + Send;
    /// OffsetDelete: removes the committed offsets of `partitions`, durably.
    /// Whether a partition's topic is in use is the caller's to check.
    fn delete_offsets(
        &self,
        tenant: &TenantId,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> impl Future<Output = Result<Vec<Result<()>>>> + Send;
    /// (group, protocol type, state) of every group with members or a record.
    fn list_groups(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<Vec<(String, String, GroupState)>>> + Send;
    fn describe_group(
        &self,
        tenant: &TenantId,
        group: &str,
    ) -> impl Future<Output = Result<Option<Described>>> + Send;
    /// The HTTP API's consumer instances of `group`: (name, state). Read
    /// after re-checking that this worker still owns the shard (one HEAD),
    /// so that a gateway never answers from a stale owner's state.
    fn instances(
        &self,
        tenant: &TenantId,
        group: &str,
    ) -> impl Future<Output = Result<Vec<(String, Bytes)>>> + Send;
    /// Replaces instance `name`'s state if it is still `expect` (`None`:
    /// absent); `new` of `None` deletes it. True once the change is
    /// durable; false if the state was not `expect`.
    fn swap_instance(
        &self,
        tenant: &TenantId,
        group: &str,
        name: &str,
        expect: Option<Bytes>,
        new: Option<Bytes>,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Deploys (or replaces) a Wasm transform, once its component is
    /// checked and stored and its deployment durable. A redeploy on the
    /// same input keeps its progress and state.
    fn deploy_transform(
        &self,
        tenant: &TenantId,
        spec: transforms::TransformSpec,
        wasm: Bytes,
    ) -> impl Future<Output = Result<transforms::TransformStatus>> + Send;
    /// Every deployed transform and how it is doing.
    fn transforms(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<Vec<transforms::TransformStatus>>> + Send;
    /// Stops a transform and forgets its progress and state, durably.
    fn delete_transform(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Creates (or replaces) a Wasm connector, once its component is
    /// checked and stored and the connector durable. Created again with
    /// the same kind and topics, it keeps its offsets or cursor.
    fn create_connector(
        &self,
        tenant: &TenantId,
        spec: connectors::ConnectorSpec,
        wasm: Bytes,
    ) -> impl Future<Output = Result<connectors::ConnectorStatus>> + Send;
    /// Every connector and how it is doing.
    fn connectors(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<Vec<connectors::ConnectorStatus>>> + Send;
    /// Pauses (or resumes) a connector, durably.
    fn pause_connector(
        &self,
        tenant: &TenantId,
        name: &str,
        paused: bool,
    ) -> impl Future<Output = Result<connectors::ConnectorStatus>> + Send;
    /// Stops a connector and forgets its offsets or cursor, durably.
    fn delete_connector(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Changes whenever more of the tenant's data becomes durable.
    fn subscribe(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<watch::Receiver<u64>>> + Send;
}
