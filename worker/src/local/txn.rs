//! The transaction coordinator's requests on a [`Shard`]: each runs in a
//! task of its own ([`super::detached`]), so a request dropped mid-way (its
//! connection closed) cannot leave a transactional id's state in memory
//! behind what the log holds. Every change is made durable by
//! [`persist_with`], then shown in memory by [`Transactions::set`].

use std::sync::{Arc, Weak};
use std::time::Duration;

use floe_common::batch;
use floe_storage::log::now_ms;
use floe_storage::{Entry, Producer, Txn};

use super::{leader_epoch, Shard};
use crate::groups::MemberRef;
use crate::offsets;
use crate::transactions::{self, PendingOffset, TxnError, TxnMeta, TxnState};
use crate::{OffsetCommit, Result, WorkerError};

impl Shard {
    /// InitProducerId with a transactional id: a new epoch that fences
    /// every older instance (aborting an ongoing transaction under it), or
    /// the current one for a retry of the last init (KIP-588).
    pub(super) async fn init_transactional(
        self: Arc<Self>,
        id: String,
        timeout_ms: i32,
        current: Option<(i64, i16)>,
    ) -> Result<(i64, i16)> {
        if !(1..=transactions::MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(WorkerError::Txn(TxnError::InvalidTransactionTimeout));
        }
        // Expiry may drop the slot while we wait for it: take the new one.
        let mut state = loop {
            let slot = self.txns.slot(&id);
            let state = slot.clone().lock_owned().await;
            if self.txns.is_current(&id, &slot) {
                break state;
            }
        };
        let next = match state.as_ref() {
            None => {
                let now = now_ms();
                let first = TxnMeta {
                    producer_id: self.producer_ids.allocate(&self.log).await?,
                    epoch: 0,
                    last_epoch: -1,
                    timeout_ms,
                    state: TxnState::Empty,
                    partitions: Default::default(),
                    groups: Default::default(),
                    offsets: Vec::new(),
                    started_ms: now,
                    updated_ms: now,
                };
                persist(&self, &id, first).await?
            }
            Some(m) => {
                let named = current.filter(|c| c.0 >= 0);
                if let Some((producer_id, epoch)) = named {
                    if producer_id != m.producer_id {
                        return Err(WorkerError::Txn(TxnError::ProducerFenced));
                    }
                    // A retry of the init that moved the epoch on.
                    if epoch != m.epoch && epoch == m.last_epoch && m.state != TxnState::Ongoing {
                        return Ok((m.producer_id, m.epoch));
                    }
                    if epoch != m.epoch {
                        return Err(WorkerError::Txn(TxnError::ProducerFenced));
                    }
                }
                let mut m = m.clone();
                m.timeout_ms = timeout_ms;
                let fresh = fresh_identity(&self, &m).await?;
                // Kafka remembers the epoch only when the producer named it.
                let last = named.map_or(-1, |_| m.epoch);
                let rotated = fresh.0 != m.producer_id;
                let (mut next, entries) = end_and_move(&self, m, false, Some(fresh));
                next.last_epoch = if rotated { -1 } else { last };
                next.state = TxnState::Empty;
                persist_with(&self, &id, next, entries).await?
            }
        };
        let out = (next.producer_id, next.epoch);
        self.txns.set(&id, &mut state, Some(next));
        Ok(out)
    }

    pub(super) async fn add_partitions_to_txn(
        self: Arc<Self>,
        id: String,
        producer: (i64, i16),
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<Result<()>>> {
        let slot = self.txn_slot(&id)?;
        let mut state = slot.lock().await;
        let mut next = open_txn(&state, producer)?;
        let found: Vec<Result<()>> = partitions
            .iter()
            .map(|(t, p)| self.stream(t, *p).map(|_| ()))
            .collect();
        if found.iter().any(|r| r.is_err()) {
            // Kafka adds none: the others are not attempted.
            return Ok(found
                .into_iter()
                .map(|r| r.and(Err(WorkerError::OperationNotAttempted)))
                .collect());
        }
        next.partitions.extend(partitions);
        save_changed(&self, &id, &mut state, next).await?;
        Ok(found)
    }

    pub(super) async fn add_offsets_to_txn(
        self: Arc<Self>,
        id: String,
        producer: (i64, i16),
        group: String,
    ) -> Result<()> {
        let slot = self.txn_slot(&id)?;
        let mut state = slot.lock().await;
        let mut next = open_txn(&state, producer)?;
        next.groups.insert(group);
        save_changed(&self, &id, &mut state, next).await?;
        Ok(())
    }

    pub(super) async fn txn_offset_commit(
        self: Arc<Self>,
        id: String,
        producer: (i64, i16),
        group: String,
        member: MemberRef,
        commits: Vec<OffsetCommit>,
    ) -> Result<Vec<Result<()>>> {
        let slot = self.txn_slot(&id)?;
        let mut state = slot.lock().await;
        let meta = named(&state, producer)?;
        if meta.state != TxnState::Ongoing || !meta.groups.contains(&group) {
            return Err(WorkerError::Txn(TxnError::InvalidTxnState));
        }
        // Older producers send no generation: nothing to check then.
        if member.generation >= 0 {
            let has_offsets = self.log.has_prefix(&offsets::group_prefix(&group));
            match self
                .groups
                .commit(&self.log, &group, &member, has_offsets, vec![])
                .await
            {
                Err(e) => return Err(WorkerError::Group(e)),
                Ok(r) => r?,
            }
        }
        let commit_ms = now_ms();
        let mut next = meta.clone();
        let outcomes: Vec<Result<()>> = commits
            .into_iter()
            .map(|c| {
                let (topic, partition, committed) = self.checked_commit(c, commit_ms)?;
                next.offsets.retain(|o| {
                    !(o.group == group && o.topic == topic.name && o.partition == partition)
                });
                next.offsets.push(PendingOffset {
                    group: group.clone(),
                    topic: topic.name.clone(),
                    partition,
                    committed,
                });
                Ok(())
            })
            .collect();
        save_changed(&self, &id, &mut state, next).await?;
        Ok(outcomes)
    }

    pub(super) async fn end_txn(
        self: Arc<Self>,
        id: String,
        producer: (i64, i16),
        commit: bool,
    ) -> Result<()> {
        let slot = self.txn_slot(&id)?;
        let mut state = slot.lock().await;
        let meta = named(&state, producer)?;
        match (meta.state, commit) {
            (TxnState::Ongoing, _) => {}
            // A retry of an EndTxn that completed.
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => return Ok(()),
            _ => return Err(WorkerError::Txn(TxnError::InvalidTxnState)),
        }
        let (next, entries) = end_and_move(&self, meta.clone(), commit, None);
        let next = persist_with(&self, &id, next, entries).await?;
        self.txns.set(&id, &mut state, Some(next));
        Ok(())
    }

    /// The slot of an existing transactional id.
    pub(super) fn txn_slot(&self, id: &str) -> Result<transactions::Slot> {
        self.txns
            .existing(id)
            .ok_or(WorkerError::Txn(TxnError::InvalidProducerIdMapping))
    }
}

/// The transaction of a request naming `producer`, if it exists and is
/// that producer's (Kafka's checks).
fn named(current: &Option<TxnMeta>, producer: (i64, i16)) -> Result<&TxnMeta> {
    let meta = current
        .as_ref()
        .ok_or(WorkerError::Txn(TxnError::InvalidProducerIdMapping))?;
    transactions::check_producer(meta, producer.0, producer.1).map_err(WorkerError::Txn)?;
    Ok(meta)
}

/// The transaction of a request naming `producer` as it will be once the
/// request is applied: it exists, is this producer's, and is ongoing
/// (begun now if it was not). The caller persists it if it changed.
fn open_txn(current: &Option<TxnMeta>, producer: (i64, i16)) -> Result<TxnMeta> {
    let mut next = named(current, producer)?.clone();
    if next.state != TxnState::Ongoing {
        next.state = TxnState::Ongoing;
        next.partitions.clear();
        next.groups.clear();
        next.offsets.clear();
        next.started_ms = now_ms();
    }
    Ok(next)
}

/// Makes `next` the id's state, durably then in memory, unless it is what
/// `state` already holds.
async fn save_changed(
    shard: &Shard,
    id: &str,
    state: &mut Option<TxnMeta>,
    next: TxnMeta,
) -> Result<()> {
    if state.as_ref() != Some(&next) {
        let next = persist(shard, id, next).await?;
        shard.txns.set(id, state, Some(next));
    }
    Ok(())
}

/// Writes a transactional id's new state, durably.
async fn persist(shard: &Shard, id: &str, next: TxnMeta) -> Result<TxnMeta> {
    persist_with(shard, id, next, Vec::new()).await
}

/// Writes a transactional id's new state after `entries`, in one append,
/// durably: the one writer of transaction state to the log.
async fn persist_with(
    shard: &Shard,
    id: &str,
    mut next: TxnMeta,
    mut entries: Vec<Entry>,
) -> Result<TxnMeta> {
    next.updated_ms = now_ms();
    entries.push(Entry::Put {
        key: TxnMeta::key(id),
        value: Some(next.encode()),
    });
    shard.log.append(entries).await?.durable().await?;
    Ok(next)
}

/// The (producer id, epoch) that fences `meta`'s: the next epoch, or a new
/// producer id once epochs run out.
async fn fresh_identity(shard: &Shard, meta: &TxnMeta) -> Result<(i64, i16)> {
    if meta.epoch >= i16::MAX - 1 {
        return Ok((shard.producer_ids.allocate(&shard.log).await?, 0));
    }
    Ok((meta.producer_id, meta.epoch + 1))
}

/// Ends `meta`'s transaction if it is ongoing and moves it to the identity
/// `then`, if given: the new state, and the entries to write before it
/// (markers on each of its partitions and, on commit, its offsets). A new
/// epoch of the same producer id writes the markers itself, so they fence
/// the old one on every partition (Kafka's epoch fence).
fn end_and_move(
    shard: &Shard,
    mut meta: TxnMeta,
    commit: bool,
    then: Option<(i64, i16)>,
) -> (TxnMeta, Vec<Entry>) {
    if let Some((producer_id, epoch)) = then {
        if producer_id == meta.producer_id {
            meta.epoch = epoch;
        }
    }
    let now = now_ms();
    let mut entries = Vec::new();
    if meta.state == TxnState::Ongoing {
        let leader = leader_epoch(&shard.log);
        for (topic, partition) in &meta.partitions {
            // A partition of a topic deleted meanwhile has nothing to end.
            let Ok((_, stream)) = shard.stream(topic, *partition) else {
                continue;
            };
            let marker = batch::control_batch(meta.producer_id, meta.epoch, commit, now);
            entries.push(Entry::Append {
                stream,
                base_offset: 0,
                offsets: 1,
                max_timestamp: now,
                producer: Some(Producer {
                    id: meta.producer_id,
                    epoch: meta.epoch,
                    first_seq: -1,
                    time_ms: now,
                    txn: if commit { Txn::Commit } else { Txn::Abort },
                }),
                data: batch::set_leader_epoch(marker, leader),
            });
        }
        if commit {
            for o in &meta.offsets {
                let Ok(topic) = shard.topic(&o.topic) else {
                    continue;
                };
                entries.push(Entry::Put {
                    key: offsets::key(&o.group, topic.id, o.partition),
                    value: Some(offsets::encode(&o.committed)),
                });
            }
        }
        meta.state = if commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        meta.partitions.clear();
        meta.groups.clear();
        meta.offsets.clear();
    }
    if let Some((producer_id, epoch)) = then {
        meta.producer_id = producer_id;
        meta.epoch = epoch;
    }
    (meta, entries)
}

/// Aborts transactions that ran past their timeout, under a new epoch that
/// fences their producer (as Kafka's coordinator does: the producer cannot
/// re-initialise under its old epoch), and forgets transactional ids idle
/// past `expiry`; for as long as the shard is open.
pub(super) async fn txn_timers(shard: Weak<Shard>, expiry: Duration) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(shard) = shard.upgrade() else { return };
        if shard.log.failed().is_some() {
            return;
        }
        let now = now_ms();
        for (id, slot) in shard.txns.all() {
            // A busy id is looked at next round; one stuck request must not
            // hold up every other id's timeout.
            let Ok(mut state) = slot.try_lock() else {
                continue;
            };
            let Some(meta) = state.clone() else { continue };
            if meta.state == TxnState::Ongoing {
                if now < meta.started_ms + meta.timeout_ms as i64 {
                    continue;
                }
                tracing::info!(transactional_id = %id, "transaction timed out; aborting");
                match time_out(&shard, &id, meta).await {
                    Ok(next) => shard.txns.set(&id, &mut state, Some(next)),
                    Err(e) => {
                        tracing::warn!(transactional_id = %id, error = %e, "transaction timeout")
                    }
                }
            } else if now - meta.updated_ms > expiry.as_millis() as i64 {
                match forget(&shard, &id).await {
                    Ok(()) => shard.txns.forget(&id, &slot, &mut state),
                    Err(e) => {
                        tracing::warn!(transactional_id = %id, error = %e, "transactional id expiry")
                    }
                }
            }
        }
    }
}

async fn time_out(shard: &Shard, id: &str, meta: TxnMeta) -> Result<TxnMeta> {
    let fresh = fresh_identity(shard, &meta).await?;
    let (mut next, entries) = end_and_move(shard, meta, false, Some(fresh));
    next.last_epoch = -1;
    persist_with(shard, id, next, entries).await
}

async fn forget(shard: &Shard, id: &str) -> Result<()> {
    let entry = Entry::Put {
        key: TxnMeta::key(id),
        value: None,
    };
    Ok(shard.log.append(vec![entry]).await?.durable().await?)
}
