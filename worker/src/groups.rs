//! The classic consumer-group protocol as a state machine, without I/O: a
//! group takes JoinGroup, SyncGroup, Heartbeat, LeaveGroup and the passing
//! of time, and says which waiting members get which answer. The caller
//! (`coordinator.rs`) keeps one per group of the tenant's shard 0, parks
//! each JoinGroup and SyncGroup until its answer comes out, and writes
//! [`Group::record`] to the log whenever [`Group::take_store`] asks, telling
//! the group through [`Group::stored`] once it is durable: answers that
//! depend on the record (the assignment, a static member's new id) wait for
//! that.
//!
//! States and errors follow Kafka's GroupCoordinator: Empty →
//! PreparingRebalance (waiting for every member to rejoin, at most the
//! longest rebalance timeout; a group formed from Empty first waits
//! `group.initial.rebalance.delay.ms` for more members) →
//! CompletingRebalance (waiting for the leader's assignment, then for its
//! record to be durable) → Stable. The client assigns partitions (eager or
//! cooperative-sticky alike: the coordinator only relays); static members
//! (`group.instance.id`) keep their place across restarts, under a new
//! member id that fences the old one (KIP-345).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Kafka's `group.min.session.timeout.ms` and `group.max.session.timeout.ms`.
pub const MIN_SESSION: Duration = Duration::from_secs(6);
pub const MAX_SESSION: Duration = Duration::from_secs(1800);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

/// What a request gets instead of its answer; each is a Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupError {
    UnknownMemberId,
    IllegalGeneration,
    RebalanceInProgress,
    /// JoinGroup v4+: rejoin with this id (KIP-394).
    MemberIdRequired(String),
    InconsistentGroupProtocol,
    FencedInstanceId,
    InvalidSessionTimeout,
    /// The group's record could not be written; retry.
    CoordinatorNotAvailable,
    /// DeleteGroups and OffsetDelete name a group with no members, record
    /// or offsets.
    GroupIdNotFound,
    /// DeleteGroups of a group that has members.
    NonEmptyGroup,
    /// OffsetDelete of a topic the group's members subscribe to.
    GroupSubscribedToTopic,
}

/// One member as the group leader sees it in its JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    /// (protocol name, subscription metadata), in the member's preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
}

/// A JoinGroup request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Join {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// JoinGroup v4+ asks unknown members to rejoin with an id (KIP-394).
    pub require_known_member_id: bool,
}

/// A member as SyncGroup, Heartbeat and OffsetCommit name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRef {
    pub id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
}

/// A successful JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Every member with its subscription, for the leader only.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

/// Answers for members parked on a JoinGroup or SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Join(String, Result<Joined, GroupError>),
    Sync(String, Result<Bytes, GroupError>),
}

/// What a request does now: answer at once, or park until a [`Reply`] for
/// this member (named) comes out of this or a later call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Now<T> {
    Answer(Result<T, GroupError>),
    Wait(String),
}

/// What survives a restart: written to the log when the group becomes
/// Stable or Empty, read back by the next owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub members: Vec<Member>,
}

#[derive(Debug)]
struct Live {
    m: Member,
    last_heard: Instant,
    awaiting_join: bool,
    awaiting_sync: bool,
}

/// What a record being written settles once it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    /// Nothing waits on it (the group emptied).
    Nothing,
    /// The leader's assignment: the group turns Stable and every member
    /// parked on SyncGroup gets its part.
    Assignment,
    /// A static member's new id: its JoinGroup is answered, naming the
    /// leader as it was before (so a replaced leader does not assign again
    /// in a stable group: Kafka's rule).
    Replaced { member: String, leader: String },
}

/// The initial join delay of a group formed from Empty.
#[derive(Debug, Clone, Copy)]
struct Initial {
    /// How much longer the delay may be extended (the longest rebalance
    /// timeout less what has passed).
    remaining: Duration,
    /// A new member joined during this round of the delay.
    joined: bool,
}

#[derive(Debug)]
pub struct Group {
    state: State,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: String,
    members: BTreeMap<String, Live>,
    /// Static members: instance id → member id.
    instances: BTreeMap<String, String>,
    /// Ids given out with MEMBER_ID_REQUIRED, until their session would end
    /// (Kafka's pending members): only these may join as new members.
    promised: BTreeMap<String, Instant>,
    /// While PreparingRebalance: when the join phase ends regardless.
    join_deadline: Option<Instant>,
    /// `group.initial.rebalance.delay.ms`.
    initial_delay: Duration,
    initial: Option<Initial>,
    /// Record writes asked for (a counter) and what each settles, oldest
    /// first: a write holds the record as it was when asked for, so one
    /// settles every write asked for before it too.
    pending: Vec<(u64, Pending)>,
    writes: u64,
    /// The last write handed to the caller by [`Group::take_store`].
    taken: u64,
}

impl Group {
    /// An empty group; a join from Empty waits `initial_delay` for more
    /// members before the first generation forms.
    pub fn new(initial_delay: Duration) -> Self {
        Self {
            state: State::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: String::new(),
            members: BTreeMap::new(),
            instances: BTreeMap::new(),
            promised: BTreeMap::new(),
            join_deadline: None,
            initial_delay,
            initial: None,
            pending: Vec::new(),
            writes: 0,
            taken: 0,
        }
    }

    /// The group as the last owner left it: its members get a session
    /// timeout from `now` to show up again.
    pub fn recover(r: Record, now: Instant, initial_delay: Duration) -> Self {
        let mut g = Self::new(initial_delay);
        g.generation = r.generation;
        g.protocol_type = r.protocol_type;
        g.protocol = r.protocol;
        g.leader = r.leader;
        for m in r.members {
            if let Some(i) = &m.instance_id {
                g.instances.insert(i.clone(), m.id.clone());
            }
            g.members.insert(
                m.id.clone(),
                Live {
                    m,
                    last_heard: now,
                    awaiting_join: false,
                    awaiting_sync: false,
                },
            );
        }
        g.state = if g.members.is_empty() {
            State::Empty
        } else {
            State::Stable
        };
        g
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    pub fn record(&self) -> Record {
        Record {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            members: self.members.values().map(|l| l.m.clone()).collect(),
        }
    }

    /// A record write the group needs before some answer can go out, named
    /// by a number to give back to [`Group::stored`]. The caller writes
    /// [`Group::record`] as it is now.
    pub fn take_store(&mut self) -> Option<u64> {
        let (n, _) = self.pending.last()?;
        if *n == self.taken {
            return None;
        }
        self.taken = *n;
        Some(*n)
    }

    /// Write `n` is durable (`ok`) or failed: what waited on it, or on a
    /// write asked for before it, moves on.
    pub fn stored(&mut self, n: u64, ok: bool, now: Instant, out: &mut Vec<Reply>) {
        let settled = self.pending.partition_point(|(w, _)| *w <= n);
        let settled: Vec<(u64, Pending)> = self.pending.drain(..settled).collect();
        for (_, p) in settled {
            // A failed assignment rebalances: what the rest settle is moot.
            if self.state == State::PreparingRebalance {
                break;
            }
            self.settle(p, ok, now, out);
        }
    }

    fn settle(&mut self, pending: Pending, ok: bool, now: Instant, out: &mut Vec<Reply>) {
        match pending {
            Pending::Nothing => {}
            Pending::Assignment if ok => {
                self.state = State::Stable;
                for l in self.members.values_mut() {
                    if std::mem::take(&mut l.awaiting_sync) {
                        out.push(Reply::Sync(l.m.id.clone(), Ok(l.m.assignment.clone())));
                    }
                }
            }
            Pending::Assignment => {
                for l in self.members.values_mut() {
                    l.m.assignment = Bytes::new();
                    if std::mem::take(&mut l.awaiting_sync) {
                        out.push(Reply::Sync(
                            l.m.id.clone(),
                            Err(GroupError::CoordinatorNotAvailable),
                        ));
                    }
                }
                self.prepare_rebalance(now, out);
            }
            Pending::Replaced { member, leader } => {
                let joined = self.joined(&member);
                let Some(l) = self.members.get_mut(&member) else {
                    return;
                };
                if !std::mem::take(&mut l.awaiting_join) {
                    return;
                }
                let answer = if ok {
                    Ok(Joined {
                        leader,
                        members: Vec::new(),
                        ..joined
                    })
                } else {
                    Err(GroupError::CoordinatorNotAvailable)
                };
                out.push(Reply::Join(member, answer));
            }
        }
    }

    fn store(&mut self, p: Pending) {
        self.writes += 1;
        self.pending.push((self.writes, p));
    }

    /// JoinGroup. On `Wait`, the answer comes as a [`Reply::Join`] for the
    /// member, possibly already in `out`.
    pub fn join(&mut self, j: Join, now: Instant, out: &mut Vec<Reply>) -> Now<Joined> {
        if j.session_timeout < MIN_SESSION || j.session_timeout > MAX_SESSION {
            return Now::Answer(Err(GroupError::InvalidSessionTimeout));
        }
        let compatible = self.members.is_empty()
            || (j.protocol_type == self.protocol_type
                && j.protocols.iter().any(|(p, _)| {
                    self.members
                        .values()
                        .all(|l| l.m.protocols.iter().any(|(q, _)| q == p))
                }));
        if j.protocols.is_empty() || j.protocol_type.is_empty() || !compatible {
            return Now::Answer(Err(GroupError::InconsistentGroupProtocol));
        }
        let known_instance = j
            .instance_id
            .as_ref()
            .and_then(|i| self.instances.get(i))
            .cloned();
        let (id, replaced) = match (known_instance, j.member_id.is_empty()) {
            // A static member coming back gets a new member id; the old one
            // is fenced from then on.
            (Some(old), true) => (self.new_member_id(&j.client_id), Some(old)),
            (Some(old), false) if j.member_id != old => {
                return Now::Answer(Err(GroupError::FencedInstanceId));
            }
            (Some(old), false) => (old, None),
            (None, true) => {
                let id = self.new_member_id(&j.client_id);
                if j.require_known_member_id && j.instance_id.is_none() {
                    self.promised.insert(id.clone(), now + j.session_timeout);
                    return Now::Answer(Err(GroupError::MemberIdRequired(id)));
                }
                (id, None)
            }
            (None, false) if !self.members.contains_key(&j.member_id) => {
                // Only an id we gave out may join as a new member.
                if self.promised.remove(&j.member_id).is_none() {
                    return Now::Answer(Err(GroupError::UnknownMemberId));
                }
                (j.member_id.clone(), None)
            }
            (None, false) => (j.member_id.clone(), None),
        };
        let old_leader = self.leader.clone();
        if let Some(old) = &replaced {
            self.replace(old, &id, out);
        }
        let new_member = !self.members.contains_key(&id);
        let changed = self
            .members
            .get(&id)
            .is_none_or(|l| l.m.protocols != j.protocols);
        if let Some(instance) = &j.instance_id {
            self.instances.insert(instance.clone(), id.clone());
        }
        let live = self.members.entry(id.clone()).or_insert_with(|| Live {
            m: Member {
                id: id.clone(),
                instance_id: j.instance_id.clone(),
                client_id: j.client_id.clone(),
                client_host: j.client_host.clone(),
                session_timeout_ms: 0,
                rebalance_timeout_ms: 0,
                protocols: Vec::new(),
                assignment: Bytes::new(),
            },
            last_heard: now,
            awaiting_join: false,
            awaiting_sync: false,
        });
        live.m.protocols = j.protocols;
        live.m.session_timeout_ms = j.session_timeout.as_millis() as u64;
        live.m.rebalance_timeout_ms = j.rebalance_timeout.as_millis() as u64;
        live.last_heard = now;
        self.protocol_type = j.protocol_type;
        match self.state {
            // A static member replaced in a stable group keeps its
            // assignment, unless its protocols change the group's choice:
            // it gets the current generation once the new id is durable.
            State::Stable if replaced.is_some() && self.vote() == self.protocol => {
                self.park_join(&id);
                self.store(Pending::Replaced {
                    member: id.clone(),
                    leader: old_leader,
                });
                return Now::Wait(id);
            }
            // A follower rejoining unchanged (it may have missed the
            // answer) gets the current generation without a rebalance; the
            // leader always rebalances in a stable group (Kafka's rules).
            State::Stable if replaced.is_none() && !changed && id != self.leader => {
                return Now::Answer(Ok(self.joined(&id)));
            }
            State::CompletingRebalance if replaced.is_none() && !changed => {
                return Now::Answer(Ok(self.joined(&id)));
            }
            _ => {}
        }
        if new_member && self.generation == 0 {
            if let Some(i) = self.initial.as_mut() {
                i.joined = true;
            }
        }
        self.park_join(&id);
        if self.state != State::PreparingRebalance {
            self.prepare_rebalance(now, out);
        }
        self.maybe_complete_join(now, out);
        Now::Wait(id)
    }

    fn park_join(&mut self, id: &str) {
        if let Some(l) = self.members.get_mut(id) {
            l.awaiting_join = true;
        }
    }

    /// Moves a static member from its `old` member id to `new`: requests
    /// parked under the old id are answered FENCED_INSTANCE_ID.
    fn replace(&mut self, old: &str, new: &str, out: &mut Vec<Reply>) {
        let Some(mut l) = self.members.remove(old) else {
            return;
        };
        if std::mem::take(&mut l.awaiting_join) {
            out.push(Reply::Join(
                old.to_string(),
                Err(GroupError::FencedInstanceId),
            ));
        }
        if std::mem::take(&mut l.awaiting_sync) {
            out.push(Reply::Sync(
                old.to_string(),
                Err(GroupError::FencedInstanceId),
            ));
        }
        l.m.id = new.to_string();
        if self.leader == old {
            self.leader = new.to_string();
        }
        self.members.insert(new.to_string(), l);
    }

    /// SyncGroup. The leader's assignments are answered, to every member
    /// parked here, once the group's record is durable ([`Group::stored`]).
    pub fn sync(
        &mut self,
        member: &MemberRef,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Now<Bytes> {
        if let Err(e) = self.check_member(member) {
            return Now::Answer(Err(e));
        }
        let id = member.id.as_str();
        match self.state {
            State::Empty => Now::Answer(Err(GroupError::UnknownMemberId)),
            State::PreparingRebalance => Now::Answer(Err(GroupError::RebalanceInProgress)),
            State::Stable => Now::Answer(Ok(self.members[id].m.assignment.clone())),
            State::CompletingRebalance => {
                if let Some(l) = self.members.get_mut(id) {
                    l.awaiting_sync = true;
                    l.last_heard = now;
                }
                // A leader that asks again while its assignment is being
                // written waits with the others.
                let assigning = self.pending.iter().any(|(_, p)| *p == Pending::Assignment);
                if id == self.leader && !assigning {
                    let mut given: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                    for l in self.members.values_mut() {
                        l.m.assignment = given.remove(&l.m.id).unwrap_or_default();
                    }
                    self.store(Pending::Assignment);
                }
                Now::Wait(id.to_string())
            }
        }
    }

    pub fn heartbeat(&mut self, member: &MemberRef, now: Instant) -> Result<(), GroupError> {
        if self.state == State::Empty {
            return Err(GroupError::UnknownMemberId);
        }
        self.check_member(member)?;
        if let Some(l) = self.members.get_mut(&member.id) {
            l.last_heard = now;
        }
        match self.state {
            State::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// LeaveGroup for one member (by id, or by instance id for v3+).
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
        out: &mut Vec<Reply>,
    ) -> Result<(), GroupError> {
        let id = match instance_id {
            Some(i) => match self.instances.get(i) {
                Some(known) if member_id.is_empty() || known == member_id => known.clone(),
                Some(_) => return Err(GroupError::FencedInstanceId),
                None => return Err(GroupError::UnknownMemberId),
            },
            None => member_id.to_string(),
        };
        // One given an id that it never joined with (Kafka's pending member).
        if self.promised.remove(&id).is_some() {
            self.maybe_complete_join(now, out);
            return Ok(());
        }
        if !self.members.contains_key(&id) {
            return Err(GroupError::UnknownMemberId);
        }
        self.remove(&id, out);
        self.rebalance_after_removal(now, out);
        Ok(())
    }

    /// The passing of time: expired sessions leave, and a join phase past
    /// its deadline completes with the members that rejoined.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Reply>) {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|l| {
                // Parked on a Join or Sync counts as heard from (Kafka).
                !l.awaiting_join
                    && !l.awaiting_sync
                    && now >= l.last_heard + Duration::from_millis(l.m.session_timeout_ms)
            })
            .map(|l| l.m.id.clone())
            .collect();
        for id in &expired {
            self.remove(id, out);
        }
        if !expired.is_empty() {
            self.rebalance_after_removal(now, out);
        }
        let promised = self.promised.len();
        self.promised.retain(|_, until| now < *until);
        if self.promised.len() < promised {
            self.maybe_complete_join(now, out);
        }
        if self.state == State::PreparingRebalance && self.join_deadline.is_some_and(|d| now >= d) {
            // The initial delay goes on while new members keep coming, up
            // to the longest rebalance timeout.
            if let Some(i) = self.initial.take() {
                if i.joined && !i.remaining.is_zero() {
                    let delay = self.initial_delay.min(i.remaining);
                    self.join_deadline = Some(now + delay);
                    self.initial = Some(Initial {
                        remaining: i.remaining - delay,
                        joined: false,
                    });
                    return;
                }
            }
            let late: Vec<String> = self
                .members
                .values()
                // Static members keep their place until their session ends
                // (KIP-345); dynamic ones that did not rejoin are dropped.
                .filter(|l| !l.awaiting_join && l.m.instance_id.is_none())
                .map(|l| l.m.id.clone())
                .collect();
            for id in &late {
                self.remove(id, out);
            }
            self.complete_join(now, out);
        }
    }

    /// When the next [`Group::tick`] can change something.
    pub fn next_deadline(&self) -> Option<Instant> {
        let sessions = self
            .members
            .values()
            .filter(|l| !l.awaiting_join && !l.awaiting_sync)
            .map(|l| l.last_heard + Duration::from_millis(l.m.session_timeout_ms));
        let promised = self.promised.values().copied();
        sessions.chain(self.join_deadline).chain(promised).min()
    }

    /// OffsetCommit's membership check: `Ok(true)` for a member of the
    /// current generation, `Ok(false)` for a commit outside group management.
    pub fn may_commit(&self, member: &MemberRef) -> Result<bool, GroupError> {
        if member.generation < 0 && member.id.is_empty() && self.state == State::Empty {
            return Ok(false);
        }
        // The member first: a stranger or a stale generation is told so,
        // not asked to wait (Kafka's order).
        self.check_member(member)?;
        if self.state == State::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        Ok(true)
    }

    /// Kafka's order: a static member's old id is fenced, then an unknown id
    /// or a stale generation is refused.
    fn check_member(&self, member: &MemberRef) -> Result<(), GroupError> {
        let current = member
            .instance_id
            .as_ref()
            .and_then(|i| self.instances.get(i));
        if current.is_some_and(|id| *id != member.id) {
            return Err(GroupError::FencedInstanceId);
        }
        if !self.members.contains_key(&member.id) {
            return Err(GroupError::UnknownMemberId);
        }
        if member.generation != self.generation {
            return Err(GroupError::IllegalGeneration);
        }
        Ok(())
    }

    fn new_member_id(&self, client_id: &str) -> String {
        format!("{client_id}-{}", uuid::Uuid::new_v4())
    }

    fn prepare_rebalance(&mut self, now: Instant, out: &mut Vec<Reply>) {
        // Members waiting on a SyncGroup of the generation being replaced
        // must rejoin.
        for l in self.members.values_mut() {
            if std::mem::take(&mut l.awaiting_sync) {
                out.push(Reply::Sync(
                    l.m.id.clone(),
                    Err(GroupError::RebalanceInProgress),
                ));
            }
        }
        // A record in flight settles nothing now: its syncs were just
        // answered, and a replaced static member is parked on its join.
        self.pending.clear();
        let longest = self.longest_rebalance();
        if self.state == State::Empty && !self.initial_delay.is_zero() {
            self.initial = Some(Initial {
                remaining: longest.saturating_sub(self.initial_delay),
                joined: false,
            });
            self.join_deadline = Some(now + self.initial_delay);
        } else {
            self.join_deadline = Some(now + longest);
        }
        self.state = State::PreparingRebalance;
    }

    fn longest_rebalance(&self) -> Duration {
        let ms = self.members.values().map(|l| l.m.rebalance_timeout_ms);
        Duration::from_millis(ms.max().unwrap_or(0))
    }

    fn maybe_complete_join(&mut self, now: Instant, out: &mut Vec<Reply>) {
        // The initial delay runs its course even if everyone is in, and
        // members given an id to rejoin with are waited for (Kafka).
        if self.state == State::PreparingRebalance
            && self.initial.is_none()
            && self.promised.is_empty()
            && self.members.values().all(|l| l.awaiting_join)
        {
            self.complete_join(now, out);
        }
    }

    /// Ends the join phase. Every member's session starts over, as in Kafka:
    /// one that joined early must not expire while others took their time.
    fn complete_join(&mut self, now: Instant, out: &mut Vec<Reply>) {
        // The leader is one who rejoined (Kafka's maybeElectNewJoinedLeader):
        // a static member that did not keeps its place, not the lead, or
        // nobody would assign. If none rejoined, the phase goes on until
        // sessions expire the absent.
        let rejoined = |id: &String| self.members.get(id).is_some_and(|l| l.awaiting_join);
        if !self.members.is_empty() && !rejoined(&self.leader) {
            match self.members.values().find(|l| l.awaiting_join) {
                Some(l) => self.leader = l.m.id.clone(),
                None => {
                    self.join_deadline = Some(now + self.longest_rebalance());
                    self.initial = None;
                    return;
                }
            }
        }
        self.join_deadline = None;
        self.initial = None;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.generation += 1;
            self.protocol.clear();
            self.leader.clear();
            self.store(Pending::Nothing);
            return;
        }
        self.generation += 1;
        self.protocol = self.vote();
        self.state = State::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let Some(l) = self.members.get_mut(&id) else {
                continue;
            };
            let waiting = std::mem::take(&mut l.awaiting_join);
            l.last_heard = now;
            if waiting {
                out.push(Reply::Join(id.clone(), Ok(self.joined(&id))));
            }
        }
    }

    /// The protocol every member supports that ranks best across members'
    /// preferences (Kafka: each member votes for its first supported one).
    fn vote(&self) -> String {
        let common: Vec<&String> = match self.members.values().next() {
            Some(first) => first
                .m
                .protocols
                .iter()
                .map(|(p, _)| p)
                .filter(|p| {
                    self.members
                        .values()
                        .all(|l| l.m.protocols.iter().any(|(q, _)| q == *p))
                })
                .collect(),
            None => return String::new(),
        };
        let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
        for l in self.members.values() {
            if let Some((p, _)) = l.m.protocols.iter().find(|(p, _)| common.contains(&p)) {
                *votes.entry(p).or_default() += 1;
            }
        }
        // Most votes; ties go to the first member's preference order.
        let rank =
            |i: usize, p: &&String| (votes.get(*p).copied().unwrap_or(0), std::cmp::Reverse(i));
        common
            .iter()
            .enumerate()
            .max_by_key(|(i, p)| rank(*i, p))
            .map(|(_, p)| (*p).clone())
            .unwrap_or_default()
    }

    fn joined(&self, id: &str) -> Joined {
        let members = if id == self.leader {
            self.members
                .values()
                .map(|l| {
                    let meta =
                        l.m.protocols
                            .iter()
                            .find(|(p, _)| *p == self.protocol)
                            .map(|(_, m)| m.clone())
                            .unwrap_or_default();
                    (l.m.id.clone(), l.m.instance_id.clone(), meta)
                })
                .collect()
        } else {
            Vec::new()
        };
        Joined {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            member_id: id.to_string(),
            members,
        }
    }

    fn remove(&mut self, id: &str, out: &mut Vec<Reply>) {
        if let Some(l) = self.members.remove(id) {
            if let Some(i) = &l.m.instance_id {
                self.instances.remove(i);
            }
            if l.awaiting_join {
                out.push(Reply::Join(
                    id.to_string(),
                    Err(GroupError::UnknownMemberId),
                ));
            }
            if l.awaiting_sync {
                out.push(Reply::Sync(
                    id.to_string(),
                    Err(GroupError::UnknownMemberId),
                ));
            }
        }
    }

    fn rebalance_after_removal(&mut self, now: Instant, out: &mut Vec<Reply>) {
        match self.state {
            State::Stable | State::CompletingRebalance => {
                if self.members.is_empty() {
                    self.complete_join(now, out);
                } else {
                    self.prepare_rebalance(now, out);
                }
            }
            State::PreparingRebalance => self.maybe_complete_join(now, out),
            State::Empty => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_secs(10);
    const REBALANCE: Duration = Duration::from_secs(30);

    fn join(member_id: &str, instance: Option<&str>, protocols: &[&str]) -> Join {
        Join {
            member_id: member_id.to_string(),
            instance_id: instance.map(str::to_string),
            client_id: "c".to_string(),
            client_host: "/127.0.0.1".to_string(),
            protocol_type: "consumer".to_string(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("sub-{p}"))))
                .collect(),
            session_timeout: SESSION,
            rebalance_timeout: REBALANCE,
            require_known_member_id: true,
        }
    }

    fn m(id: &str, generation: i32) -> MemberRef {
        MemberRef {
            id: id.to_string(),
            instance_id: None,
            generation,
        }
    }

    /// SyncGroup, with the record it asks for written at once.
    fn sync(
        g: &mut Group,
        id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
        out: &mut Vec<Reply>,
    ) -> Now<Bytes> {
        let r = g.sync(&m(id, generation), assignments, now);
        if let Some(n) = g.take_store() {
            g.stored(n, true, now, out);
        }
        r
    }

    /// Joins through KIP-394's round trip; returns the member id.
    fn new_member(g: &mut Group, now: Instant, out: &mut Vec<Reply>) -> String {
        let Now::Answer(Err(GroupError::MemberIdRequired(id))) =
            g.join(join("", None, &["range"]), now, out)
        else {
            panic!("an unknown member is asked to rejoin with an id");
        };
        assert_eq!(
            g.join(join(&id, None, &["range"]), now, out),
            Now::Wait(id.clone())
        );
        id
    }

    fn joined(out: &mut Vec<Reply>, id: &str) -> Joined {
        let at = out
            .iter()
            .position(|r| matches!(r, Reply::Join(m, _) if m == id))
            .expect("a join answer");
        match out.remove(at) {
            Reply::Join(_, Ok(j)) => j,
            other => panic!("{other:?}"),
        }
    }

    /// A stable group of two, `a` leading, at generation 2.
    fn stable_pair(now: Instant) -> (Group, String, String) {
        let mut g = Group::new(Duration::ZERO);
        let mut out = Vec::new();
        let a = new_member(&mut g, now, &mut out);
        assert_eq!(joined(&mut out, &a).generation, 1);
        assert!(matches!(
            sync(
                &mut g,
                &a,
                1,
                vec![(a.clone(), Bytes::from("p0-3"))],
                now,
                &mut out
            ),
            Now::Wait(_)
        ));
        assert_eq!(out, vec![Reply::Sync(a.clone(), Ok(Bytes::from("p0-3")))]);
        out.clear();
        let b = new_member(&mut g, now, &mut out);
        assert!(out.is_empty(), "b waits for a to rejoin");
        assert_eq!(
            g.heartbeat(&m(&a, 1), now),
            Err(GroupError::RebalanceInProgress)
        );
        assert!(matches!(
            g.join(join(&a, None, &["range"]), now, &mut out),
            Now::Wait(_)
        ));
        let (ja, jb) = (joined(&mut out, &a), joined(&mut out, &b));
        assert_eq!(
            (ja.generation, jb.generation, ja.leader.as_str()),
            (2, 2, a.as_str())
        );
        assert_eq!(ja.members.len(), 2, "the leader sees every member");
        assert!(jb.members.is_empty());
        assert!(matches!(
            sync(&mut g, &b, 2, vec![], now, &mut out),
            Now::Wait(_)
        ));
        let assign = vec![
            (a.clone(), Bytes::from("p0-1")),
            (b.clone(), Bytes::from("p2-3")),
        ];
        assert!(matches!(
            sync(&mut g, &a, 2, assign, now, &mut out),
            Now::Wait(_)
        ));
        out.sort_by_key(|r| format!("{r:?}"));
        let mut want = vec![
            Reply::Sync(a.clone(), Ok(Bytes::from("p0-1"))),
            Reply::Sync(b.clone(), Ok(Bytes::from("p2-3"))),
        ];
        want.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(out, want);
        assert_eq!(g.state(), State::Stable);
        (g, a, b)
    }

    #[test]
    fn members_join_sync_and_rebalance_when_one_arrives() {
        stable_pair(Instant::now());
    }

    #[test]
    fn stale_and_unknown_members_get_kafkas_errors() {
        let now = Instant::now();
        let (mut g, a, b) = stable_pair(now);
        let mut out = Vec::new();
        assert_eq!(
            g.heartbeat(&m(&a, 1), now),
            Err(GroupError::IllegalGeneration)
        );
        assert_eq!(
            g.heartbeat(&m("nobody", 2), now),
            Err(GroupError::UnknownMemberId)
        );
        assert_eq!(g.heartbeat(&m(&b, 2), now), Ok(()));
        assert_eq!(g.may_commit(&m(&b, 2)), Ok(true));
        assert_eq!(g.may_commit(&m(&b, 1)), Err(GroupError::IllegalGeneration));
        assert_eq!(
            g.may_commit(&m("", -1)),
            Err(GroupError::UnknownMemberId),
            "a managed group takes no simple commits"
        );
        // A member leaves: the other must rejoin; syncs meanwhile are refused.
        assert_eq!(g.leave(&b, None, now, &mut out), Ok(()));
        assert_eq!(
            sync(&mut g, &a, 2, vec![], now, &mut out),
            Now::Answer(Err(GroupError::RebalanceInProgress))
        );
        assert!(matches!(
            g.join(join(&a, None, &["range"]), now, &mut out),
            Now::Wait(_)
        ));
        assert_eq!(joined(&mut out, &a).generation, 3);
        // Another protocol type, or no protocol in common, is refused.
        let mut other = join("", None, &["range"]);
        other.protocol_type = "connect".to_string();
        assert_eq!(
            g.join(other, now, &mut out),
            Now::Answer(Err(GroupError::InconsistentGroupProtocol))
        );
        assert_eq!(
            g.join(join("", None, &["sticky"]), now, &mut out),
            Now::Answer(Err(GroupError::InconsistentGroupProtocol))
        );
        let mut short = join("", None, &["range"]);
        short.session_timeout = Duration::from_secs(1);
        assert_eq!(
            g.join(short, now, &mut out),
            Now::Answer(Err(GroupError::InvalidSessionTimeout))
        );
    }

    #[test]
    fn silent_members_expire_and_late_ones_miss_the_rebalance() {
        let now = Instant::now();
        let (mut g, a, b) = stable_pair(now);
        let mut out = Vec::new();
        // a heartbeats, b goes silent past its session: b is out.
        let later = now + SESSION / 2;
        assert_eq!(g.heartbeat(&m(&a, 2), later), Ok(()));
        g.tick(now + SESSION, &mut out);
        assert_eq!(
            g.heartbeat(&m(&b, 2), now + SESSION),
            Err(GroupError::UnknownMemberId)
        );
        assert_eq!(
            g.heartbeat(&m(&a, 2), now + SESSION),
            Err(GroupError::RebalanceInProgress)
        );
        assert!(matches!(
            g.join(join(&a, None, &["range"]), now + SESSION, &mut out),
            Now::Wait(_)
        ));
        assert_eq!(joined(&mut out, &a).generation, 3);

        // Rebalance timeout: a newcomer waits; a, which never rejoins, is
        // dropped when the join phase ends.
        let t = now + SESSION;
        let c = new_member(&mut g, t, &mut out);
        assert!(g.next_deadline().is_some_and(|d| d <= t + REBALANCE));
        g.tick(t + REBALANCE, &mut out);
        let jc = joined(&mut out, &c);
        assert_eq!(
            (jc.generation, jc.leader.as_str(), jc.members.len()),
            (4, c.as_str(), 1)
        );
        assert_eq!(
            g.heartbeat(&m(&a, 3), t + REBALANCE),
            Err(GroupError::UnknownMemberId)
        );
    }

    #[test]
    fn static_members_keep_their_place_and_fence_their_old_selves() {
        let now = Instant::now();
        let mut g = Group::new(Duration::ZERO);
        let mut out = Vec::new();
        // Static members get their id at once (no KIP-394 round trip).
        assert!(matches!(
            g.join(join("", Some("i1"), &["range"]), now, &mut out),
            Now::Wait(_)
        ));
        let id = g.instances.get("i1").cloned().expect("i1 joined");
        let first = joined(&mut out, &id);
        let leader = first.member_id.clone();
        sync(
            &mut g,
            &leader,
            1,
            vec![(leader.clone(), Bytes::from("all"))],
            now,
            &mut out,
        );
        out.clear();
        let mut out2 = Vec::new();
        assert!(matches!(
            g.join(join("", Some("i2"), &["range"]), now, &mut out2),
            Now::Wait(_)
        ));
        let follower_id = match g.instances.get("i2") {
            Some(id) => id.clone(),
            None => panic!("i2 joined"),
        };
        g.join(join(&leader, Some("i1"), &["range"]), now, &mut out2);
        let j = joined(&mut out2, &follower_id);
        sync(
            &mut g,
            &leader,
            j.generation,
            vec![(follower_id.clone(), Bytes::from("half"))],
            now,
            &mut out2,
        );
        out2.clear();
        assert_eq!(g.state(), State::Stable);
        let generation = j.generation;
        // The follower restarts: same instance, no member id. It gets a new
        // id, the same generation and no rebalance, once the new id is
        // durable.
        let Now::Wait(renewed) = g.join(join("", Some("i2"), &["range"]), now, &mut out2) else {
            panic!("a replaced static member waits for its record");
        };
        assert_ne!(renewed, follower_id);
        assert!(out2.is_empty());
        let n = g.take_store().expect("the new id is written first");
        assert_eq!(g.take_store(), None, "one write asked for once");
        g.stored(n, true, now, &mut out2);
        let j2 = joined(&mut out2, &renewed);
        assert_eq!(
            (j2.generation, j2.leader.as_str(), j2.members.len()),
            (generation, leader.as_str(), 0)
        );
        assert_eq!(g.state(), State::Stable);
        assert_eq!(
            g.sync(&m(&renewed, generation), vec![], now),
            Now::Answer(Ok(Bytes::from("half"))),
            "the new id keeps the old one's assignment"
        );
        // The old id is fenced when it names its instance, unknown if not.
        let old = MemberRef {
            instance_id: Some("i2".to_string()),
            ..m(&follower_id, generation)
        };
        assert_eq!(g.heartbeat(&old, now), Err(GroupError::FencedInstanceId));
        assert_eq!(g.may_commit(&old), Err(GroupError::FencedInstanceId));
        assert_eq!(
            g.heartbeat(&m(&follower_id, generation), now),
            Err(GroupError::UnknownMemberId)
        );
        // A second process claiming i2 with another id is fenced.
        assert_eq!(
            g.join(join("someone-else", Some("i2"), &["range"]), now, &mut out2),
            Now::Answer(Err(GroupError::FencedInstanceId))
        );
        assert_eq!(
            g.leave("someone-else", Some("i2"), now, &mut out2),
            Err(GroupError::FencedInstanceId)
        );
        // The leader restarts: it is told the old leader id, so it does not
        // assign again in a stable group, yet leads from now on.
        let Now::Wait(new_leader) = g.join(join("", Some("i1"), &["range"]), now, &mut out2) else {
            panic!("a replaced static member waits for its record");
        };
        let n = g.take_store().expect("written");
        g.stored(n, true, now, &mut out2);
        let j3 = joined(&mut out2, &new_leader);
        assert_eq!(
            (j3.generation, j3.leader.as_str()),
            (generation, leader.as_str())
        );
        assert_eq!(g.record().leader, new_leader);
        assert_eq!(g.state(), State::Stable);
    }

    #[test]
    fn a_static_member_replaced_mid_rebalance_rebalances() {
        let now = Instant::now();
        let mut g = Group::new(Duration::ZERO);
        let mut out = Vec::new();
        g.join(join("", Some("i1"), &["range"]), now, &mut out);
        let first = g.instances["i1"].clone();
        assert_eq!(joined(&mut out, &first).generation, 1);
        assert_eq!(g.state(), State::CompletingRebalance);
        // The old id is parked on SyncGroup when its successor arrives.
        assert!(matches!(g.sync(&m(&first, 1), vec![], now), Now::Wait(_)));
        let Now::Wait(second) = g.join(join("", Some("i1"), &["range"]), now, &mut out) else {
            panic!("waits for the rebalance");
        };
        assert!(out.contains(&Reply::Sync(
            first.clone(),
            Err(GroupError::FencedInstanceId)
        )));
        assert_eq!(joined(&mut out, &second).generation, 2);
    }

    #[test]
    fn only_ids_given_out_may_join_and_unchanged_members_rejoin_in_place() {
        let now = Instant::now();
        let mut g = Group::new(Duration::ZERO);
        let mut out = Vec::new();
        assert_eq!(
            g.join(join("made-up", None, &["range"]), now, &mut out),
            Now::Answer(Err(GroupError::UnknownMemberId))
        );
        let a = new_member(&mut g, now, &mut out);
        joined(&mut out, &a);
        // A promised id not used within a session is forgotten.
        let Now::Answer(Err(GroupError::MemberIdRequired(late))) =
            g.join(join("", None, &["range"]), now, &mut out)
        else {
            panic!("asked for an id");
        };
        g.tick(now + SESSION, &mut out);
        assert_eq!(
            g.join(join(&late, None, &["range"]), now + SESSION, &mut out),
            Now::Answer(Err(GroupError::UnknownMemberId))
        );
        // The leader lost its JoinGroup answer and asks again, unchanged,
        // while the group completes: the same generation, with the members.
        let mut g = Group::new(Duration::ZERO);
        let a = new_member(&mut g, now, &mut out);
        out.clear();
        assert_eq!(g.state(), State::CompletingRebalance);
        match g.join(join(&a, None, &["range"]), now, &mut out) {
            Now::Answer(Ok(j)) => assert_eq!((j.generation, j.members.len()), (1, 1)),
            other => panic!("{other:?}"),
        }
        // With other protocols it rebalances.
        assert!(matches!(
            g.join(join(&a, None, &["range", "sticky"]), now, &mut out),
            Now::Wait(_)
        ));
        assert_eq!(joined(&mut out, &a).generation, 2);
    }

    #[test]
    fn the_assignment_is_answered_once_durable() {
        let now = Instant::now();
        let mut g = Group::new(Duration::ZERO);
        let mut out = Vec::new();
        let a = new_member(&mut g, now, &mut out);
        joined(&mut out, &a);
        let b = new_member(&mut g, now, &mut out);
        assert!(out.is_empty());
        g.join(join(&a, None, &["range"]), now, &mut out);
        let generation = joined(&mut out, &a).generation;
        joined(&mut out, &b);
        let assign = vec![(a.clone(), Bytes::from("x")), (b.clone(), Bytes::from("y"))];
        assert!(matches!(
            g.sync(&m(&a, generation), assign, now),
            Now::Wait(_)
        ));
        let n = g.take_store().expect("the assignment is written");
        // A follower arriving while it is written waits: not Stable yet.
        assert_eq!(g.state(), State::CompletingRebalance);
        assert!(matches!(
            g.sync(&m(&b, generation), vec![], now),
            Now::Wait(_)
        ));
        g.stored(n, false, now, &mut out);
        out.sort_by_key(|r| format!("{r:?}"));
        let mut want = vec![
            Reply::Sync(a.clone(), Err(GroupError::CoordinatorNotAvailable)),
            Reply::Sync(b.clone(), Err(GroupError::CoordinatorNotAvailable)),
        ];
        want.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(out, want, "a failed write answers nobody's assignment");
        assert_eq!(g.state(), State::PreparingRebalance);
        // A write the group no longer waits for settles nothing.
        out.clear();
        g.stored(n, true, now, &mut out);
        assert!(out.is_empty());
        assert_eq!(g.state(), State::PreparingRebalance);
    }

    #[test]
    fn a_new_group_waits_the_initial_delay_for_more_members() {
        let delay = Duration::from_secs(3);
        let now = Instant::now();
        let mut g = Group::new(delay);
        let mut out = Vec::new();
        let a = new_member(&mut g, now, &mut out);
        assert!(out.is_empty(), "everyone is in, yet the delay runs");
        assert_eq!(g.next_deadline(), Some(now + delay));
        let t1 = now + Duration::from_secs(1);
        let b = new_member(&mut g, t1, &mut out);
        // b came during the delay: one more round of it.
        g.tick(now + delay, &mut out);
        assert!(out.is_empty());
        assert_eq!(g.next_deadline(), Some(now + delay * 2));
        g.tick(now + delay * 2, &mut out);
        let (ja, jb) = (joined(&mut out, &a), joined(&mut out, &b));
        assert_eq!((ja.generation, jb.generation), (1, 1));
        assert_eq!(ja.members.len() + jb.members.len(), 2);
        // Later rebalances of the group do not wait.
        g.tick(now + delay * 2, &mut out);
        let leader = if ja.members.is_empty() { &b } else { &a };
        sync(&mut g, leader, 1, vec![], now + delay * 2, &mut out);
        out.clear();
        let c = new_member(&mut g, now + delay * 2, &mut out);
        g.join(join(&a, None, &["range"]), now + delay * 2, &mut out);
        g.join(join(&b, None, &["range"]), now + delay * 2, &mut out);
        assert_eq!(joined(&mut out, &c).generation, 2);
    }

    #[test]
    fn a_slow_rebalance_expires_nobody_who_waited() {
        let now = Instant::now();
        let (mut g, a, b) = stable_pair(now);
        let mut out = Vec::new();
        // c joins and waits; b rejoins at once; a takes longer than a
        // session, within its rebalance timeout.
        let c = new_member(&mut g, now, &mut out);
        assert!(matches!(
            g.join(join(&b, None, &["range"]), now, &mut out),
            Now::Wait(_)
        ));
        let late = now + SESSION * 2;
        assert!(matches!(
            g.join(join(&a, None, &["range"]), late, &mut out),
            Now::Wait(_)
        ));
        assert_eq!(joined(&mut out, &c).generation, 3);
        g.tick(late, &mut out);
        assert_eq!(
            g.heartbeat(&m(&c, 3), late),
            Ok(()),
            "c's session starts over when the join phase ends"
        );
        // A stale generation is told so even while the group completes.
        assert_eq!(g.may_commit(&m(&b, 2)), Err(GroupError::IllegalGeneration));
        assert_eq!(
            g.may_commit(&m(&b, 3)),
            Err(GroupError::RebalanceInProgress)
        );
        // b and c wait on SyncGroup longer than a session: they stay; the
        // leader, silent, expires, and they are asked to rejoin.
        out.clear();
        assert!(matches!(
            sync(&mut g, &b, 3, vec![], late, &mut out),
            Now::Wait(_)
        ));
        assert!(matches!(
            sync(&mut g, &c, 3, vec![], late, &mut out),
            Now::Wait(_)
        ));
        g.tick(late + SESSION, &mut out);
        out.sort_by_key(|r| format!("{r:?}"));
        let mut want = vec![
            Reply::Sync(b.clone(), Err(GroupError::RebalanceInProgress)),
            Reply::Sync(c.clone(), Err(GroupError::RebalanceInProgress)),
        ];
        want.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(out, want);
        assert_eq!(
            g.heartbeat(&m(&a, 3), late + SESSION),
            Err(GroupError::UnknownMemberId)
        );
    }

    #[test]
    fn a_recovered_group_carries_on_at_its_generation() {
        let now = Instant::now();
        let (g, a, b) = stable_pair(now);
        let record = g.record();
        let json = serde_json::to_vec(&record).expect("serializes");
        let back: Record = serde_json::from_slice(&json).expect("parses");
        let mut g = Group::recover(back, now + SESSION, Duration::ZERO);
        assert_eq!((g.state(), g.generation()), (State::Stable, 2));
        assert_eq!(g.heartbeat(&m(&a, 2), now + SESSION), Ok(()));
        let mut out = Vec::new();
        assert_eq!(
            sync(&mut g, &b, 2, vec![], now + SESSION, &mut out),
            Now::Answer(Ok(Bytes::from("p2-3")))
        );
        // Members that never come back expire a session after recovery.
        g.tick(now + SESSION * 2, &mut out);
        assert_eq!(
            g.heartbeat(&m(&b, 2), now + SESSION * 2),
            Err(GroupError::UnknownMemberId)
        );
    }

    /// A stable group of static members `i1` (leading) and `i2`, with their
    /// member ids, at generation 2; `i1`'s session is `session`.
    fn stable_static(now: Instant, session: Duration) -> (Group, String, String) {
        let mut g = Group::new(Duration::ZERO);
        let mut out = Vec::new();
        let mut j1 = join("", Some("i1"), &["range"]);
        j1.session_timeout = session;
        g.join(j1.clone(), now, &mut out);
        let a = g.instances["i1"].clone();
        sync(&mut g, &a, 1, vec![], now, &mut out);
        g.join(join("", Some("i2"), &["range"]), now, &mut out);
        let b = g.instances["i2"].clone();
        j1.member_id = a.clone();
        g.join(j1, now, &mut out);
        assert_eq!(joined(&mut out, &a).leader, a);
        sync(&mut g, &b, 2, vec![], now, &mut out);
        sync(&mut g, &a, 2, vec![], now, &mut out);
        assert_eq!(g.state(), State::Stable);
        (g, a, b)
    }

    #[test]
    fn a_leader_that_does_not_rejoin_leads_no_more() {
        let now = Instant::now();
        let (mut g, a, b) = stable_static(now, Duration::from_secs(60));
        let mut out = Vec::new();
        // c arrives and b rejoins; a, static with a long session, is away.
        let c = new_member(&mut g, now, &mut out);
        g.join(join(&b, Some("i2"), &["range"]), now, &mut out);
        assert!(out.is_empty(), "the phase waits for a until its deadline");
        g.tick(now + REBALANCE, &mut out);
        let (jb, jc) = (joined(&mut out, &b), joined(&mut out, &c));
        assert!(out.is_empty(), "a, not waiting, gets no answer");
        assert_eq!(jb.leader, jc.leader);
        assert_ne!(jb.leader, a, "a member that rejoined leads");
        let leading = if jb.leader == b { &jb } else { &jc };
        assert_eq!(leading.members.len(), 3, "a keeps its place");

        // Nobody rejoins: the phase waits on, until sessions end it.
        let (mut g, _, _) = stable_static(now, Duration::from_secs(60));
        let c = new_member(&mut g, now, &mut out);
        g.leave(&c, None, now, &mut out).expect("c leaves");
        out.clear();
        g.tick(now + REBALANCE, &mut out);
        assert!(out.is_empty());
        assert_eq!(g.state(), State::PreparingRebalance);
        g.tick(now + REBALANCE * 3, &mut out);
        assert_eq!(g.state(), State::Empty, "the absent expired");
    }

    #[test]
    fn static_members_replaced_at_once_are_all_answered() {
        let now = Instant::now();
        let (mut g, a, b) = stable_static(now, SESSION);
        let mut out = Vec::new();
        // Both restart while the first one's new id is being written.
        let Now::Wait(a2) = g.join(join("", Some("i1"), &["range"]), now, &mut out) else {
            panic!("waits for its record");
        };
        let n1 = g.take_store().expect("a write");
        let Now::Wait(b2) = g.join(join("", Some("i2"), &["range"]), now, &mut out) else {
            panic!("waits for its record");
        };
        let n2 = g.take_store().expect("another write");
        assert!(n2 > n1);
        g.stored(n1, true, now, &mut out);
        assert_eq!(joined(&mut out, &a2).leader, a);
        assert!(out.is_empty(), "b2 waits for its own record");
        g.stored(n2, true, now, &mut out);
        assert_eq!(joined(&mut out, &b2).leader, a2);
        // A later write settles an earlier one whose answer it overtook.
        let Now::Wait(b3) = g.join(join("", Some("i2"), &["range"]), now, &mut out) else {
            panic!("waits for its record");
        };
        let n3 = g.take_store().expect("a write");
        let Now::Wait(a3) = g.join(join("", Some("i1"), &["range"]), now, &mut out) else {
            panic!("waits for its record");
        };
        let n4 = g.take_store().expect("a write");
        g.stored(n4, true, now, &mut out);
        joined(&mut out, &a3);
        joined(&mut out, &b3);
        g.stored(n3, true, now, &mut out);
        assert!(out.is_empty());
        assert_ne!(b, b3);
        assert_eq!(g.state(), State::Stable);
    }

    #[test]
    fn members_told_to_rejoin_with_an_id_are_waited_for_or_may_leave() {
        let now = Instant::now();
        let mut g = Group::new(Duration::ZERO);
        let mut out = Vec::new();
        let a = new_member(&mut g, now, &mut out);
        sync(&mut g, &a, 1, vec![], now, &mut out);
        out.clear();
        let ask = |g: &mut Group, out: &mut Vec<Reply>| match g.join(
            join("", None, &["range"]),
            now,
            out,
        ) {
            Now::Answer(Err(GroupError::MemberIdRequired(id))) => id,
            other => panic!("{other:?}"),
        };
        let (b, c) = (ask(&mut g, &mut out), ask(&mut g, &mut out));
        g.join(join(&b, None, &["range"]), now, &mut out);
        g.join(join(&a, None, &["range"]), now, &mut out);
        assert!(out.is_empty(), "c was given an id: the phase waits for it");
        g.join(join(&c, None, &["range"]), now, &mut out);
        let ja = joined(&mut out, &a);
        assert_eq!((ja.generation, ja.members.len()), (2, 3));
        joined(&mut out, &b);
        joined(&mut out, &c);

        // One given an id may leave before using it, and is not waited for.
        sync(&mut g, &a, 2, vec![], now, &mut out);
        out.clear();
        let (d, e) = (ask(&mut g, &mut out), ask(&mut g, &mut out));
        g.join(join(&d, None, &["range"]), now, &mut out);
        for id in [&a, &b, &c] {
            g.join(join(id, None, &["range"]), now, &mut out);
        }
        assert!(out.is_empty());
        assert_eq!(g.leave(&e, None, now, &mut out), Ok(()));
        assert_eq!(joined(&mut out, &d).generation, 3);
        assert_eq!(
            g.leave(&e, None, now, &mut out),
            Err(GroupError::UnknownMemberId),
            "once"
        );
    }
}
