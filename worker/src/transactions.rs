//! The transaction coordinator of one shard. Each transactional id's state
//! is a metadata key (`x/{id}`) of the shard log, written and made durable
//! before a request that changed it is answered. Every partition of a
//! transaction lives in this shard, so a transaction ends in one log
//! object: its markers on every partition, its consumer offsets (commit
//! only) and its new state land together or not at all — no prepare phase,
//! and nothing for a successor to finish.
//!
//! Each id has its own lock. A transactional produce is accepted into the
//! log while holding it, and so is the marker that ends the transaction: a
//! batch is therefore either inside its transaction, before the marker, or
//! refused (Kafka's KIP-890 part 1 check, made exact by the lock).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use floe_storage::ShardLog;
use serde::{Deserialize, Serialize};

use crate::offsets::Committed;

const PREFIX: &str = "x/";
/// Kafka's `transaction.max.timeout.ms` default.
pub const MAX_TIMEOUT_MS: i32 = 900_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    Empty,
    Ongoing,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    /// Kafka's name, as ListTransactions and DescribeTransactions show it.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }
}

/// An offset committed inside a transaction, applied when it commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOffset {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed: Committed,
}

/// One transactional id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub epoch: i16,
    /// The epoch before the last InitProducerId bumped it (-1 if none): a
    /// retry of that InitProducerId, whose answer was lost, names it and
    /// gets the current epoch back (KIP-588).
    #[serde(default = "no_epoch")]
    pub last_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// (topic, partition) written in the ongoing transaction.
    pub partitions: BTreeSet<(String, i32)>,
    pub groups: BTreeSet<String>,
    pub offsets: Vec<PendingOffset>,
    /// When the ongoing transaction began (ms since the epoch).
    pub started_ms: i64,
    pub updated_ms: i64,
}

fn no_epoch() -> i16 {
    -1
}

impl TxnMeta {
    pub fn key(id: &str) -> Bytes {
        Bytes::from(format!("{PREFIX}{id}"))
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("transaction state serializes"))
    }
}

/// Kafka's transaction errors, as the coordinator answers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnError {
    /// The producer id is not the one this transactional id has.
    InvalidProducerIdMapping,
    /// A newer epoch exists: another instance took over, or the
    /// coordinator aborted a transaction that ran past its timeout.
    ProducerFenced,
    /// The request does not fit the transaction's state.
    InvalidTxnState,
    InvalidTransactionTimeout,
    TransactionalIdNotFound,
}

/// A slot per transactional id; `None` until the id's first InitProducerId
/// is durable.
pub type Slot = Arc<tokio::sync::Mutex<Option<TxnMeta>>>;

#[derive(Default)]
pub struct Transactions {
    ids: Mutex<HashMap<String, Slot>>,
    /// Producer id → transactional id, for transactional produces.
    by_producer: Mutex<HashMap<i64, String>>,
    /// (group, topic, partition) → how many open transactions hold an
    /// offset for it: OffsetFetch's `require_stable` answer.
    unstable: Mutex<HashMap<(String, String, i32), usize>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The offsets an open transaction holds.
fn held(meta: Option<&TxnMeta>) -> impl Iterator<Item = (String, String, i32)> + '_ {
    meta.filter(|m| m.state == TxnState::Ongoing)
        .into_iter()
        .flat_map(|m| m.offsets.iter())
        .map(|o| (o.group.clone(), o.topic.clone(), o.partition))
}

impl Transactions {
    pub fn load(log: &ShardLog) -> Self {
        let t = Transactions::default();
        for (k, v) in log.scan(PREFIX.as_bytes()) {
            let Some(id) = std::str::from_utf8(&k[PREFIX.len()..]).ok() else {
                continue;
            };
            let Ok(meta) = serde_json::from_slice::<TxnMeta>(&v) else {
                tracing::warn!(id, "unreadable transaction state; ignored");
                continue;
            };
            let mut state = None;
            t.set(id, &mut state, Some(meta));
            t.lock_ids()
                .insert(id.to_string(), Arc::new(tokio::sync::Mutex::new(state)));
        }
        t
    }

    fn lock_ids(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        lock(&self.ids)
    }

    /// The one writer of an id's state in memory (`state` is its locked
    /// slot): keeps the producer map and the open offsets in step.
    pub fn set(&self, id: &str, state: &mut Option<TxnMeta>, next: Option<TxnMeta>) {
        let old = state.take();
        {
            let mut unstable = lock(&self.unstable);
            for k in held(old.as_ref()) {
                if let Some(n) = unstable.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        unstable.remove(&k);
                    }
                }
            }
            for k in held(next.as_ref()) {
                *unstable.entry(k).or_default() += 1;
            }
        }
        let mut by = lock(&self.by_producer);
        if let Some(o) = &old {
            if by.get(&o.producer_id).is_some_and(|t| t == id) {
                by.remove(&o.producer_id);
            }
        }
        if let Some(n) = &next {
            by.insert(n.producer_id, id.to_string());
        }
        *state = next;
    }

    /// Whether an open transaction holds an offset for the partition.
    pub fn unstable(&self, group: &str, topic: &str, partition: i32) -> bool {
        lock(&self.unstable).contains_key(&(group.to_string(), topic.to_string(), partition))
    }

    /// The id's slot, created empty on first use.
    pub fn slot(&self, id: &str) -> Slot {
        self.lock_ids().entry(id.to_string()).or_default().clone()
    }

    /// Whether `slot` is still the id's (expiry may have dropped it).
    pub fn is_current(&self, id: &str, slot: &Slot) -> bool {
        self.lock_ids()
            .get(id)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
    }

    /// The id's slot if it exists.
    pub fn existing(&self, id: &str) -> Option<Slot> {
        self.lock_ids().get(id).cloned()
    }

    pub fn all(&self) -> Vec<(String, Slot)> {
        let mut all: Vec<_> = self
            .lock_ids()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Drops an expired transactional id, whose locked slot is `state`.
    pub fn forget(&self, id: &str, slot: &Slot, state: &mut Option<TxnMeta>) {
        self.set(id, state, None);
        // Only this slot: one created since belongs to a newer init.
        let mut ids = self.lock_ids();
        if ids.get(id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            ids.remove(id);
        }
    }

    /// The transactional id a producer id belongs to.
    pub fn of_producer(&self, producer_id: i64) -> Option<String> {
        lock(&self.by_producer).get(&producer_id).cloned()
    }
}

/// Kafka's checks of a request naming the transaction's producer.
pub fn check_producer(meta: &TxnMeta, producer_id: i64, epoch: i16) -> Result<(), TxnError> {
    if meta.producer_id != producer_id {
        return Err(TxnError::InvalidProducerIdMapping);
    }
    if meta.epoch != epoch {
        return Err(TxnError::ProducerFenced);
    }
    Ok(())
}
