//! The classic consumer-group protocol as a state machine, without I/O: a
//! group takes JoinGroup, SyncGroup, Heartbeat, LeaveGroup and the passing
//! of time, and says which waiting members get which answer. The caller
//! (`coordinator.rs`) keeps one per group of the tenant's shard 0, parks
//! each JoinGroup and SyncGroup until its answer comes out, and writes
//! [`Group::record`] to the log before answering a SyncGroup.
//!
//! States and errors follow Kafka's GroupCoordinator: Empty →
//! PreparingRebalance (waiting for every member to rejoin, at most the
//! longest rebalance timeout) → CompletingRebalance (waiting for the leader's
//! assignment) → Stable. The client assigns partitions (eager or
//! cooperative-sticky alike: the coordinator only relays); static members
//! (`group.instance.id`) keep their place across restarts.

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone)]
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

/// A successful JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// While PreparingRebalance: when the join phase ends regardless.
    join_deadline: Option<Instant>,
}

impl Group {
    pub fn new() -> Self {
        Self {
            state: State::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: String::new(),
            members: BTreeMap::new(),
            instances: BTreeMap::new(),
            join_deadline: None,
        }
    }

    /// The group as the last owner left it: its members get a session
    /// timeout from `now` to show up again.
    pub fn recover(r: Record, now: Instant) -> Self {
        let mut g = Self::new();
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
        let id = match (&j.instance_id, j.member_id.is_empty()) {
            // A static member coming back replaces its old member id, which
            // is fenced from then on.
            (Some(instance), _) if self.instances.contains_key(instance) => {
                let old = self.instances[instance].clone();
                if !j.member_id.is_empty() && j.member_id != old {
                    return Now::Answer(Err(GroupError::FencedInstanceId));
                }
                old
            }
            (_, true) => {
                let id = self.new_member_id(&j.client_id);
                if j.require_known_member_id && j.instance_id.is_none() {
                    return Now::Answer(Err(GroupError::MemberIdRequired(id)));
                }
                id
            }
            (_, false) if !self.members.contains_key(&j.member_id) => {
                // v4+ clients rejoin with the id we gave them; older ones
                // never send an id we did not assign.
                if !j.require_known_member_id {
                    return Now::Answer(Err(GroupError::UnknownMemberId));
                }
                j.member_id.clone()
            }
            (_, false) => j.member_id.clone(),
        };
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
        // A follower rejoining a stable group unchanged gets the current
        // generation back without a rebalance, as in Kafka.
        if self.state == State::Stable && !changed && id != self.leader {
            return Now::Answer(Ok(self.joined(&id)));
        }
        if let Some(l) = self.members.get_mut(&id) {
            l.awaiting_join = true;
        }
        if self.state != State::PreparingRebalance {
            self.prepare_rebalance(now, out);
        }
        self.maybe_complete_join(now, out);
        Now::Wait(id)
    }

    pub fn sync(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
        out: &mut Vec<Reply>,
    ) -> Now<Bytes> {
        if let Err(e) = self.check_member(member_id, generation) {
            return Now::Answer(Err(e));
        }
        match self.state {
            State::Empty => Now::Answer(Err(GroupError::UnknownMemberId)),
            State::PreparingRebalance => Now::Answer(Err(GroupError::RebalanceInProgress)),
            State::Stable => Now::Answer(Ok(self.members[member_id].m.assignment.clone())),
            State::CompletingRebalance => {
                if let Some(l) = self.members.get_mut(member_id) {
                    l.awaiting_sync = true;
                    l.last_heard = now;
                }
                if member_id == self.leader {
                    let mut given: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                    for l in self.members.values_mut() {
                        l.m.assignment = given.remove(&l.m.id).unwrap_or_default();
                    }
                    self.state = State::Stable;
                    for l in self.members.values_mut() {
                        if std::mem::take(&mut l.awaiting_sync) {
                            out.push(Reply::Sync(l.m.id.clone(), Ok(l.m.assignment.clone())));
                        }
                    }
                }
                Now::Wait(member_id.to_string())
            }
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Result<(), GroupError> {
        if self.state == State::Empty {
            return Err(GroupError::UnknownMemberId);
        }
        self.check_member(member_id, generation)?;
        if let Some(l) = self.members.get_mut(member_id) {
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
        if self.state == State::PreparingRebalance && self.join_deadline.is_some_and(|d| now >= d) {
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
        sessions.chain(self.join_deadline).min()
    }

    /// OffsetCommit's membership check: `Ok(true)` for a member of the
    /// current generation, `Ok(false)` for a commit outside group management.
    pub fn may_commit(&self, member_id: &str, generation: i32) -> Result<bool, GroupError> {
        if generation < 0 && member_id.is_empty() && self.state == State::Empty {
            return Ok(false);
        }
        // The member first: a stranger or a stale generation is told so,
        // not asked to wait (Kafka's order).
        self.check_member(member_id, generation)?;
        if self.state == State::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        Ok(true)
    }

    fn check_member(&self, member_id: &str, generation: i32) -> Result<(), GroupError> {
        if !self.members.contains_key(member_id) {
            return Err(GroupError::UnknownMemberId);
        }
        if generation != self.generation {
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
        let longest = self
            .members
            .values()
            .map(|l| l.m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0);
        self.join_deadline = Some(now + Duration::from_millis(longest));
        self.state = State::PreparingRebalance;
    }

    fn maybe_complete_join(&mut self, now: Instant, out: &mut Vec<Reply>) {
        if self.state == State::PreparingRebalance && self.members.values().all(|l| l.awaiting_join)
        {
            self.complete_join(now, out);
        }
    }

    /// Ends the join phase. Every member's session starts over, as in Kafka:
    /// one that joined early must not expire while others took their time.
    fn complete_join(&mut self, now: Instant, out: &mut Vec<Reply>) {
        self.join_deadline = None;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.generation += 1;
            self.protocol.clear();
            self.leader.clear();
            return;
        }
        self.generation += 1;
        self.protocol = self.vote();
        if !self.members.contains_key(&self.leader) {
            self.leader = self.members.keys().next().cloned().unwrap_or_default();
        }
        self.state = State::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            if let Some(l) = self.members.get_mut(&id) {
                l.awaiting_join = false;
                l.last_heard = now;
            }
            out.push(Reply::Join(id.clone(), Ok(self.joined(&id))));
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

impl Default for Group {
    fn default() -> Self {
        Self::new()
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
        let mut g = Group::new();
        let mut out = Vec::new();
        let a = new_member(&mut g, now, &mut out);
        assert_eq!(joined(&mut out, &a).generation, 1);
        assert!(matches!(
            g.sync(&a, 1, vec![(a.clone(), Bytes::from("p0-3"))], now, &mut out),
            Now::Wait(_)
        ));
        assert_eq!(out, vec![Reply::Sync(a.clone(), Ok(Bytes::from("p0-3")))]);
        out.clear();
        let b = new_member(&mut g, now, &mut out);
        assert!(out.is_empty(), "b waits for a to rejoin");
        assert_eq!(
            g.heartbeat(&a, 1, now),
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
        assert!(matches!(g.sync(&b, 2, vec![], now, &mut out), Now::Wait(_)));
        let assign = vec![
            (a.clone(), Bytes::from("p0-1")),
            (b.clone(), Bytes::from("p2-3")),
        ];
        assert!(matches!(g.sync(&a, 2, assign, now, &mut out), Now::Wait(_)));
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
        assert_eq!(g.heartbeat(&a, 1, now), Err(GroupError::IllegalGeneration));
        assert_eq!(
            g.heartbeat("nobody", 2, now),
            Err(GroupError::UnknownMemberId)
        );
        assert_eq!(g.heartbeat(&b, 2, now), Ok(()));
        assert_eq!(g.may_commit(&b, 2), Ok(true));
        assert_eq!(g.may_commit(&b, 1), Err(GroupError::IllegalGeneration));
        assert_eq!(
            g.may_commit("", -1),
            Err(GroupError::UnknownMemberId),
            "a managed group takes no simple commits"
        );
        // A member leaves: the other must rejoin; syncs meanwhile are refused.
        assert_eq!(g.leave(&b, None, now, &mut out), Ok(()));
        assert_eq!(
            g.sync(&a, 2, vec![], now, &mut out),
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
        assert_eq!(g.heartbeat(&a, 2, later), Ok(()));
        g.tick(now + SESSION, &mut out);
        assert_eq!(
            g.heartbeat(&b, 2, now + SESSION),
            Err(GroupError::UnknownMemberId)
        );
        assert_eq!(
            g.heartbeat(&a, 2, now + SESSION),
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
            g.heartbeat(&a, 3, t + REBALANCE),
            Err(GroupError::UnknownMemberId)
        );
    }

    #[test]
    fn static_members_keep_their_place_and_fence_their_old_selves() {
        let now = Instant::now();
        let mut g = Group::new();
        let mut out = Vec::new();
        // Static members get their id at once (no KIP-394 round trip).
        assert!(matches!(
            g.join(join("", Some("i1"), &["range"]), now, &mut out),
            Now::Wait(_)
        ));
        let id = g.instances.get("i1").cloned().expect("i1 joined");
        let first = joined(&mut out, &id);
        let leader = first.member_id.clone();
        g.sync(
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
        g.sync(
            &leader,
            j.generation,
            vec![(follower_id.clone(), Bytes::from("half"))],
            now,
            &mut out2,
        );
        out2.clear();
        assert_eq!(g.state(), State::Stable);
        // The follower restarts: same instance, no member id: same place,
        // same generation, no rebalance.
        let again = g.join(join("", Some("i2"), &["range"]), now, &mut out2);
        match again {
            Now::Answer(Ok(j2)) => assert_eq!(
                (j2.member_id, j2.generation),
                (follower_id.clone(), j.generation)
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(g.state(), State::Stable);
        // A second process claiming i2 with another id is fenced.
        assert_eq!(
            g.join(join("someone-else", Some("i2"), &["range"]), now, &mut out2),
            Now::Answer(Err(GroupError::FencedInstanceId))
        );
        assert_eq!(
            g.leave("someone-else", Some("i2"), now, &mut out2),
            Err(GroupError::FencedInstanceId)
        );
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
            g.heartbeat(&c, 3, late),
            Ok(()),
            "c's session starts over when the join phase ends"
        );
        // A stale generation is told so even while the group completes.
        assert_eq!(g.may_commit(&b, 2), Err(GroupError::IllegalGeneration));
        assert_eq!(g.may_commit(&b, 3), Err(GroupError::RebalanceInProgress));
        // b and c wait on SyncGroup longer than a session: they stay; the
        // leader, silent, expires, and they are asked to rejoin.
        out.clear();
        assert!(matches!(
            g.sync(&b, 3, vec![], late, &mut out),
            Now::Wait(_)
        ));
        assert!(matches!(
            g.sync(&c, 3, vec![], late, &mut out),
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
            g.heartbeat(&a, 3, late + SESSION),
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
        let mut g = Group::recover(back, now + SESSION);
        assert_eq!((g.state(), g.generation()), (State::Stable, 2));
        assert_eq!(g.heartbeat(&a, 2, now + SESSION), Ok(()));
        let mut out = Vec::new();
        assert_eq!(
            g.sync(&b, 2, vec![], now + SESSION, &mut out),
            Now::Answer(Ok(Bytes::from("p2-3")))
        );
        // Members that never come back expire a session after recovery.
        g.tick(now + SESSION * 2, &mut out);
        assert_eq!(
            g.heartbeat(&b, 2, now + SESSION * 2),
            Err(GroupError::UnknownMemberId)
        );
    }
}
