//! The group coordinator of one shard: runs each group's state machine
//! ([`crate::groups`]), parks JoinGroup and SyncGroup requests until their
//! answers come out, expires sessions on a timer, and writes a group's record
//! (`g/{group}` → JSON) to the log when the group asks, telling the group
//! once it is durable, so the answers that depend on it (assignments, a
//! static member's new id) go out only then. A new owner of the shard
//! recovers every group from there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use floe_storage::{Entry, ShardLog};
use tokio::sync::{oneshot, Mutex, Notify};
use tokio::time::Instant;

use crate::groups::{
    Group, GroupError, Join, Joined, Member, MemberRef, Now, Record, Reply, State,
};

const PREFIX: &str = "g/";

/// How often the timer looks at sessions when no deadline is nearer.
const IDLE_TICK: Duration = Duration::from_secs(1);

struct Slot {
    group: Group,
    joins: Waiting<Joined>,
    syncs: Waiting<Bytes>,
}

impl Slot {
    fn new(group: Group) -> Self {
        Self {
            group,
            joins: Waiting::new(),
            syncs: Waiting::new(),
        }
    }
}

/// One group as DescribeGroups shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Described {
    pub state: State,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<Member>,
}

pub struct Coordinator {
    /// One lock for every group of the shard, held across the append of a
    /// record (not its durability), so records reach the log in the order
    /// their states were reached.
    groups: Mutex<HashMap<String, Slot>>,
    changed: Notify,
    /// `group.initial.rebalance.delay.ms` of new groups.
    initial_delay: Duration,
    /// The shard is going to another owner: parked requests were answered
    /// and new ones are not parked (see [`Coordinator::resign`]).
    resigned: AtomicBool,
}

type Waiting<T> = HashMap<String, oneshot::Sender<Result<T, GroupError>>>;

/// An answer now, or the receiver its answer will come through.
type Parked<T> = Result<Result<T, GroupError>, oneshot::Receiver<Result<T, GroupError>>>;

/// Parks a request that waits for its answer among `waiting`. Done before
/// the replies of the same call go out: they may include its own.
fn park<T>(now: Now<T>, waiting: &mut Waiting<T>) -> Parked<T> {
    match now {
        Now::Answer(r) => Ok(r),
        Now::Wait(id) => {
            let (tx, rx) = oneshot::channel();
            // A member that asks again replaces its earlier request, which
            // then answers REBALANCE_IN_PROGRESS (its sender is dropped).
            waiting.insert(id, tx);
            Err(rx)
        }
    }
}

async fn answer<T>(parked: Parked<T>) -> Result<T, GroupError> {
    match parked {
        Ok(r) => r,
        Err(rx) => rx.await.unwrap_or(Err(GroupError::RebalanceInProgress)),
    }
}

impl Coordinator {
    /// Every group the log remembers, its members given a session from now.
    pub fn load(log: &ShardLog, initial_delay: Duration) -> Self {
        let now = Instant::now();
        let groups = log
            .scan(PREFIX.as_bytes())
            .into_iter()
            .filter_map(|(k, v)| {
                let name = std::str::from_utf8(&k[PREFIX.len()..]).ok()?.to_string();
                let record: Record = serde_json::from_slice(&v).ok()?;
                Some((name, Slot::new(Group::recover(record, now, initial_delay))))
            })
            .collect();
        Self {
            groups: Mutex::new(groups),
            changed: Notify::new(),
            initial_delay,
            resigned: AtomicBool::new(false),
        }
    }

    /// The shard is leaving this process: answers every parked JoinGroup
    /// and SyncGroup with COORDINATOR_NOT_AVAILABLE at once, as Kafka's
    /// coordinator does when it resigns, so members find the new owner now
    /// rather than when their rebalance timeout ends (and so a hand-over
    /// need not wait for them). Later joins and syncs on this shard are
    /// answered the same way.
    pub async fn resign(&self) {
        self.resigned.store(true, Relaxed);
        let mut groups = self.groups.lock().await;
        for slot in groups.values_mut() {
            for (_, tx) in slot.joins.drain() {
                let _ = tx.send(Err(GroupError::CoordinatorNotAvailable));
            }
            for (_, tx) in slot.syncs.drain() {
                let _ = tx.send(Err(GroupError::CoordinatorNotAvailable));
            }
        }
    }

    fn refuse_if_resigned(&self) -> Result<(), GroupError> {
        if self.resigned.load(Relaxed) {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        Ok(())
    }

    pub async fn join(&self, log: &ShardLog, group: &str, j: Join) -> Result<Joined, GroupError> {
        let (parked, settled) = {
            let mut groups = self.groups.lock().await;
            self.refuse_if_resigned()?;
            let created = !groups.contains_key(group);
            let slot = groups
                .entry(group.to_string())
                .or_insert_with(|| Slot::new(Group::new(self.initial_delay)));
            let (was, mut out) = (slot.group.state(), Vec::new());
            let who = j.member_id.clone();
            let now = slot.group.join(j, Instant::now(), &mut out);
            tracing::debug!(group, member = %who, state = ?was, outcome = ?now, "join");
            // A refused first join leaves no group behind (ListGroups),
            // but one asked to come back with an id keeps the promise.
            let promised = matches!(&now, Now::Answer(Err(GroupError::MemberIdRequired(_))));
            if let (true, false, Now::Answer(Err(e))) = (created, promised, &now) {
                let e = e.clone();
                groups.remove(group);
                return Err(e);
            }
            let parked = park(now, &mut slot.joins);
            (parked, self.settle(log, group, slot, was, out).await)
        };
        self.finish(log, group, settled).await;
        answer(parked).await
    }

    pub async fn sync(
        &self,
        log: &ShardLog,
        group: &str,
        member: &MemberRef,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes, GroupError> {
        let (parked, settled) = {
            let mut groups = self.groups.lock().await;
            self.refuse_if_resigned()?;
            let Some(slot) = groups.get_mut(group) else {
                return Err(GroupError::UnknownMemberId);
            };
            let was = slot.group.state();
            let now = slot.group.sync(member, assignments, Instant::now());
            tracing::debug!(group, member = %member.id, state = ?was, outcome = ?now, "sync");
            let parked = park(now, &mut slot.syncs);
            (parked, self.settle(log, group, slot, was, Vec::new()).await)
        };
        self.finish(log, group, settled).await;
        answer(parked).await
    }

    pub async fn heartbeat(&self, group: &str, member: &MemberRef) -> Result<(), GroupError> {
        let mut groups = self.groups.lock().await;
        match groups.get_mut(group) {
            Some(slot) => slot.group.heartbeat(member, Instant::now()),
            None => Err(GroupError::UnknownMemberId),
        }
    }

    /// LeaveGroup: one outcome per (member id, instance id).
    pub async fn leave(
        &self,
        log: &ShardLog,
        group: &str,
        members: Vec<(String, Option<String>)>,
    ) -> Vec<Result<(), GroupError>> {
        let (outcomes, settled) = {
            let mut groups = self.groups.lock().await;
            let Some(slot) = groups.get_mut(group) else {
                return members
                    .iter()
                    .map(|_| Err(GroupError::UnknownMemberId))
                    .collect();
            };
            let (was, mut out, now) = (slot.group.state(), Vec::new(), Instant::now());
            let outcomes = members
                .iter()
                .map(|(id, instance)| slot.group.leave(id, instance.as_deref(), now, &mut out))
                .collect();
            (outcomes, self.settle(log, group, slot, was, out).await)
        };
        self.finish(log, group, settled).await;
        outcomes
    }

    /// DeleteGroups: removes an Empty group's record and `offsets` (its
    /// committed-offset keys), durably.
    pub async fn delete(
        &self,
        log: &ShardLog,
        group: &str,
        offsets: Vec<Bytes>,
    ) -> Result<(), GroupError> {
        let appended = {
            let mut groups = self.groups.lock().await;
            let known = groups.contains_key(group);
            if !known && offsets.is_empty() {
                return Err(GroupError::GroupIdNotFound);
            }
            if groups
                .get(group)
                .is_some_and(|s| s.group.state() != State::Empty)
            {
                return Err(GroupError::NonEmptyGroup);
            }
            groups.remove(group);
            let record = Entry::Put {
                key: Bytes::from(format!("{PREFIX}{group}")),
                value: None,
            };
            let entries = std::iter::once(record).chain(
                offsets
                    .into_iter()
                    .map(|key| Entry::Put { key, value: None }),
            );
            log.append(entries.collect()).await
        };
        match appended {
            Ok(a) => a
                .durable()
                .await
                .map_err(|_| GroupError::CoordinatorNotAvailable),
            Err(_) => Err(GroupError::CoordinatorNotAvailable),
        }
    }

    /// Whether the group has a record or members.
    pub async fn exists(&self, group: &str) -> bool {
        self.groups.lock().await.contains_key(group)
    }

    /// OffsetCommit: checks the committer and appends `entries` under the
    /// group lock, so a member removed or fenced meanwhile cannot commit;
    /// durability is awaited outside it. A member of the current generation
    /// may commit, and anyone with a generation below 0 to a group without
    /// members; `has_offsets` says the group exists through its commits alone
    /// (an Empty group, for Kafka).
    pub async fn commit(
        &self,
        log: &ShardLog,
        group: &str,
        member: &MemberRef,
        has_offsets: bool,
        entries: Vec<Entry>,
    ) -> Result<Result<(), floe_storage::Error>, GroupError> {
        let appended = {
            let groups = self.groups.lock().await;
            match groups.get(group) {
                Some(slot) => {
                    let r = slot.group.may_commit(member);
                    tracing::debug!(group, member = %member.id, state = ?slot.group.state(), outcome = ?r, "commit");
                    r?
                }
                None if has_offsets => Group::new(self.initial_delay).may_commit(member)?,
                None if member.generation < 0 => false,
                None => return Err(GroupError::IllegalGeneration),
            };
            if entries.is_empty() {
                return Ok(Ok(()));
            }
            log.append(entries).await
        };
        Ok(match appended {
            Ok(a) => a.durable().await,
            Err(e) => Err(e),
        })
    }

    pub async fn list(&self) -> Vec<(String, String, State)> {
        let groups = self.groups.lock().await;
        let mut all: Vec<_> = groups
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    s.group.record().protocol_type,
                    s.group.state(),
                )
            })
            .collect();
        all.sort();
        all
    }

    pub async fn describe(&self, group: &str) -> Option<Described> {
        let groups = self.groups.lock().await;
        let slot = groups.get(group)?;
        let r = slot.group.record();
        Some(Described {
            state: slot.group.state(),
            protocol_type: r.protocol_type,
            protocol: r.protocol,
            members: r.members,
        })
    }

    /// Whether a group is between generations (members joining or
    /// syncing): its state is not all durable yet.
    pub async fn settling(&self) -> bool {
        let groups = self.groups.lock().await;
        groups.values().any(|s| {
            matches!(
                s.group.state(),
                State::PreparingRebalance | State::CompletingRebalance
            )
        })
    }

    /// Groups in the stable state: (name, generation, member ids).
    pub async fn stable(&self) -> Vec<crate::published::StableGroup> {
        let groups = self.groups.lock().await;
        groups
            .iter()
            .filter(|(_, s)| s.group.state() == State::Stable)
            .map(|(name, s)| {
                let r = s.group.record();
                crate::published::StableGroup {
                    name: name.clone(),
                    generation: r.generation,
                    members: r.members.into_iter().map(|m| m.id).collect(),
                }
            })
            .collect()
    }

    /// Wakes the timer loop when a deadline may have moved closer.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// One pass of the timer (expired sessions leave, join phases past their
    /// deadline complete); returns when the next one is due.
    pub async fn tick(&self, log: &ShardLog) -> Instant {
        let now = Instant::now();
        let mut next = now + IDLE_TICK;
        let mut settled = Vec::new();
        {
            let mut groups = self.groups.lock().await;
            for (name, slot) in groups.iter_mut() {
                let (was, mut out) = (slot.group.state(), Vec::new());
                slot.group.tick(now, &mut out);
                settled.push((name.clone(), self.settle(log, name, slot, was, out).await));
                if let Some(d) = slot.group.next_deadline() {
                    next = next.min(d.max(now + Duration::from_millis(10)));
                }
            }
        }
        for (name, s) in settled {
            self.finish(log, &name, s).await;
        }
        next
    }

    /// Takes the waiting requests `out` answers, and appends the group's
    /// record if the group asks for it. The caller lets go of the lock,
    /// then [`Coordinator::finish`]es.
    async fn settle(
        &self,
        log: &ShardLog,
        group: &str,
        slot: &mut Slot,
        was: State,
        out: Vec<Reply>,
    ) -> Settled {
        if slot.group.state() != was {
            let r = slot.group.record();
            let members: Vec<&str> = r.members.iter().map(|m| m.id.as_str()).collect();
            tracing::info!(group, from = ?was, to = ?slot.group.state(), generation = r.generation,
                leader = %r.leader, ?members, "group state");
        }
        let record = match slot.group.take_store() {
            Some(n) => {
                let value =
                    serde_json::to_vec(&slot.group.record()).expect("a group record serializes");
                let entry = Entry::Put {
                    key: Bytes::from(format!("{PREFIX}{group}")),
                    value: Some(Bytes::from(value)),
                };
                // Appended under the lock, so records reach the log in the
                // order their states were reached; waited for outside it.
                Some((n, log.append(vec![entry]).await))
            }
            None => None,
        };
        let mut joins = Vec::new();
        let mut syncs = Vec::new();
        for r in out {
            match r {
                Reply::Join(id, res) => joins.extend(slot.joins.remove(&id).map(|tx| (tx, res))),
                Reply::Sync(id, res) => syncs.extend(slot.syncs.remove(&id).map(|tx| (tx, res))),
            }
        }
        Settled {
            record,
            joins,
            syncs,
        }
    }

    /// Sends the answers taken, then, once the record written with them is
    /// durable (or failed), tells the group and sends what that settles.
    async fn finish(&self, log: &ShardLog, group: &str, mut settled: Settled) {
        loop {
            for (tx, res) in settled.joins.drain(..) {
                let _ = tx.send(res);
            }
            for (tx, res) in settled.syncs.drain(..) {
                let _ = tx.send(res);
            }
            let Some((n, appended)) = settled.record.take() else {
                break;
            };
            let ok = match appended {
                Ok(a) => a.durable().await.is_ok(),
                Err(_) => false,
            };
            let mut groups = self.groups.lock().await;
            let Some(slot) = groups.get_mut(group) else {
                break;
            };
            let (was, mut out) = (slot.group.state(), Vec::new());
            slot.group.stored(n, ok, Instant::now(), &mut out);
            settled = self.settle(log, group, slot, was, out).await;
        }
        // A deadline may have moved closer.
        self.changed.notify_one();
    }
}

/// A parked request's sender and what it will get.
type Answer<T> = (
    oneshot::Sender<Result<T, GroupError>>,
    Result<T, GroupError>,
);

/// Answers taken from their group, and the record write the group asked
/// for with them.
#[must_use = "answers go out only when finished"]
struct Settled {
    record: Option<(u64, Result<floe_storage::Appended, floe_storage::Error>)>,
    joins: Vec<Answer<Joined>>,
    syncs: Vec<Answer<Bytes>>,
}
