//! The group coordinator of one shard: runs each group's state machine
//! ([`crate::groups`]), parks JoinGroup and SyncGroup requests until their
//! answers come out, expires sessions on a timer, and writes a group's record
//! (`g/{group}` → JSON) to the log, durably, before the answers that depend
//! on it go out. A new owner of the shard recovers every group from there.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use floe_storage::{Entry, ShardLog};
use tokio::sync::{oneshot, Mutex, Notify};
use tokio::time::Instant;

use crate::groups::{Group, GroupError, Join, Joined, Member, Now, Record, Reply, State};

const PREFIX: &str = "g/";

/// How often the timer looks at sessions when no deadline is nearer.
const IDLE_TICK: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Slot {
    group: Group,
    joins: HashMap<String, oneshot::Sender<Result<Joined, GroupError>>>,
    syncs: HashMap<String, oneshot::Sender<Result<Bytes, GroupError>>>,
}

/// One group as DescribeGroups shows it.
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
}

impl Coordinator {
    /// Every group the log remembers, its members given a session from now.
    pub fn load(log: &ShardLog) -> Self {
        let now = Instant::now();
        let groups = log
            .scan(PREFIX.as_bytes())
            .into_iter()
            .filter_map(|(k, v)| {
                let name = std::str::from_utf8(&k[PREFIX.len()..]).ok()?.to_string();
                let record: Record = serde_json::from_slice(&v).ok()?;
                Some((
                    name,
                    Slot {
                        group: Group::recover(record, now),
                        ..Slot::default()
                    },
                ))
            })
            .collect();
        Self {
            groups: Mutex::new(groups),
            changed: Notify::new(),
        }
    }

    pub async fn join(&self, log: &ShardLog, group: &str, j: Join) -> Result<Joined, GroupError> {
        let rx = {
            let mut groups = self.groups.lock().await;
            let slot = groups.entry(group.to_string()).or_default();
            let (was, mut out) = (slot.group.state(), Vec::new());
            let now = slot.group.join(j, Instant::now(), &mut out);
            let rx = match now {
                Now::Answer(r) => {
                    self.settle(log, group, slot, was, out).await;
                    return r;
                }
                Now::Wait(id) => {
                    let (tx, rx) = oneshot::channel();
                    slot.joins.insert(id, tx);
                    rx
                }
            };
            self.settle(log, group, slot, was, out).await;
            rx
        };
        self.changed.notify_one();
        rx.await.unwrap_or(Err(GroupError::RebalanceInProgress))
    }

    pub async fn sync(
        &self,
        log: &ShardLog,
        group: &str,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes, GroupError> {
        let rx = {
            let mut groups = self.groups.lock().await;
            let Some(slot) = groups.get_mut(group) else {
                return Err(GroupError::UnknownMemberId);
            };
            let (was, mut out) = (slot.group.state(), Vec::new());
            let rx =
                match slot
                    .group
                    .sync(member, generation, assignments, Instant::now(), &mut out)
                {
                    Now::Answer(r) => {
                        self.settle(log, group, slot, was, out).await;
                        return r;
                    }
                    Now::Wait(id) => {
                        let (tx, rx) = oneshot::channel();
                        slot.syncs.insert(id, tx);
                        rx
                    }
                };
            self.settle(log, group, slot, was, out).await;
            rx
        };
        rx.await.unwrap_or(Err(GroupError::RebalanceInProgress))
    }

    pub async fn heartbeat(
        &self,
        group: &str,
        member: &str,
        generation: i32,
    ) -> Result<(), GroupError> {
        let mut groups = self.groups.lock().await;
        match groups.get_mut(group) {
            Some(slot) => slot.group.heartbeat(member, generation, Instant::now()),
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
        self.settle(log, group, slot, was, out).await;
        self.changed.notify_one();
        outcomes
    }

    /// OffsetCommit's check: `Ok(true)` for a member of the current
    /// generation, `Ok(false)` for a commit outside group management.
    /// `has_offsets`: the group exists through its commits alone (an Empty
    /// group, for Kafka).
    pub async fn may_commit(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        has_offsets: bool,
    ) -> Result<bool, GroupError> {
        let groups = self.groups.lock().await;
        match groups.get(group) {
            Some(slot) => slot.group.may_commit(member, generation),
            None if has_offsets => Group::new().may_commit(member, generation),
            None if generation < 0 => Ok(false),
            None => Err(GroupError::IllegalGeneration),
        }
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

    /// Wakes the timer loop when a deadline may have moved closer.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// One pass of the timer (expired sessions leave, join phases past their
    /// deadline complete); returns when the next one is due.
    pub async fn tick(&self, log: &ShardLog) -> Instant {
        let now = Instant::now();
        let mut next = now + IDLE_TICK;
        let mut groups = self.groups.lock().await;
        for (name, slot) in groups.iter_mut() {
            let (was, mut out) = (slot.group.state(), Vec::new());
            slot.group.tick(now, &mut out);
            self.settle(log, name, slot, was, out).await;
            if let Some(d) = slot.group.next_deadline() {
                next = next.min(d.max(now + Duration::from_millis(10)));
            }
        }
        next
    }

    /// Delivers `out`, after writing the group's record when the answers
    /// depend on it (a completed SyncGroup, or the group emptied).
    async fn settle(
        &self,
        log: &ShardLog,
        group: &str,
        slot: &mut Slot,
        was: State,
        mut out: Vec<Reply>,
    ) {
        if slot.group.state() != was {
            let r = slot.group.record();
            let members: Vec<&str> = r.members.iter().map(|m| m.id.as_str()).collect();
            tracing::info!(group, from = ?was, to = ?slot.group.state(), generation = r.generation,
                leader = %r.leader, ?members, "group state");
        }
        let synced = out.iter().any(|r| matches!(r, Reply::Sync(_, Ok(_))));
        let emptied = was != State::Empty && slot.group.state() == State::Empty;
        if synced || emptied {
            let entry = Entry::Put {
                key: Bytes::from(format!("{PREFIX}{group}")),
                value: Some(Bytes::from(
                    serde_json::to_vec(&slot.group.record()).expect("a group record serializes"),
                )),
            };
            let written = match log.append(vec![entry]).await {
                Ok(appended) => appended.durable().await.is_ok(),
                Err(_) => false,
            };
            if !written {
                // The members rejoin once the shard is healthy again.
                for r in out.iter_mut() {
                    if let Reply::Sync(_, res) = r {
                        *res = Err(GroupError::CoordinatorNotAvailable);
                    }
                }
            }
        }
        for r in out {
            match r {
                Reply::Join(id, res) => {
                    if let Some(tx) = slot.joins.remove(&id) {
                        let _ = tx.send(res);
                    }
                }
                Reply::Sync(id, res) => {
                    if let Some(tx) = slot.syncs.remove(&id) {
                        let _ = tx.send(res);
                    }
                }
            }
        }
    }
}
