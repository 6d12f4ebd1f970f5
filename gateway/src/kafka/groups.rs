//! The consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, ListGroups, DescribeGroups, OffsetCommit and
//! OffsetFetch. Every gateway is every group's coordinator: it routes to the
//! worker that owns the tenant's shard 0, where groups and committed offsets
//! live. The protocol itself is the worker's (`floe_worker::groups`); here
//! is only the wire.

use std::collections::HashSet;
use std::time::Duration;

use bytes::{Buf, Bytes};
use floe_worker::{GroupError, GroupState, Join, MemberRef, OffsetCommit, Shards, WorkerError};
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, ConsumerProtocolSubscription, DeleteGroupsRequest, DeleteGroupsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError;

use crate::{errors, Cx};

/// FindCoordinator's key types: consumer groups and transactions.
const KEY_GROUP: i8 = 0;
const KEY_TRANSACTION: i8 = 1;

pub fn find_coordinator<W>(
    gw: &Cx<W>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let answer = |key: StrBytes| {
        let c = Coordinator::default().with_key(key.clone());
        if !matches!(req.key_type, KEY_GROUP | KEY_TRANSACTION) {
            return c
                .with_node_id(BrokerId(-1))
                .with_port(-1)
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(StrBytes::from_static_str("unknown key type")));
        }
        // Spread over the gateways like partitions; any of them serves it.
        let kind = if req.key_type == KEY_GROUP {
            "group"
        } else {
            "txn"
        };
        let leader = gw.leader(&format!("{}/{kind}/{key}", gw.tenant));
        let brokers = gw.brokers();
        match brokers.into_iter().find(|b| b.node_id == leader) {
            Some(b) => c
                .with_node_id(BrokerId(b.node_id))
                .with_host(StrBytes::from_string(b.host))
                .with_port(b.port),
            None => c
                .with_node_id(BrokerId(-1))
                .with_port(-1)
                .with_error_code(ResponseError::CoordinatorNotAvailable.code()),
        }
    };
    if version >= 4 {
        let coordinators = req.coordinator_keys.iter().cloned().map(answer).collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let c = answer(req.key.clone());
    FindCoordinatorResponse::default()
        .with_error_code(c.error_code)
        .with_error_message(c.error_message)
        .with_node_id(c.node_id)
        .with_host(c.host)
        .with_port(c.port)
}

pub async fn offset_commit<W: Shards>(
    gw: &Cx<W>,
    req: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let tenant = &gw.tenant;
    let commits: Vec<OffsetCommit> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| OffsetCommit {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p
                    .committed_metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            })
        })
        .collect();
    let n = commits.len();
    let outcomes = gw
        .worker
        .commit_offsets(
            tenant,
            &req.group_id.0,
            &member_ref(
                &req.member_id,
                req.group_instance_id.as_ref(),
                req.generation_id_or_member_epoch,
            ),
            commits,
        )
        .await
        .unwrap_or_else(|e| vec![Err(e); n]);
    let mut outcomes = outcomes.into_iter();
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = match outcomes.next() {
                        Some(Ok(())) => 0,
                        Some(Err(e)) => commit_code(&e),
                        None => ResponseError::UnknownServerError.code(),
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// A store that cannot take the commit is COORDINATOR_NOT_AVAILABLE, which
/// clients retry after finding the coordinator again.
fn commit_code(e: &WorkerError) -> i16 {
    match e {
        WorkerError::Unavailable(_) | WorkerError::Uncertain(_) => {
            ResponseError::CoordinatorNotAvailable.code()
        }
        other => errors::code(other),
    }
}

/// A shard error or the group protocol's, as one code.
fn outcome_code<T>(r: &Result<Result<T, GroupError>, WorkerError>) -> i16 {
    match r {
        Ok(Ok(_)) => 0,
        Ok(Err(g)) => errors::group_code(g),
        Err(e) => commit_code(e),
    }
}

fn state_name(s: GroupState) -> &'static str {
    match s {
        GroupState::Empty => "Empty",
        GroupState::PreparingRebalance => "PreparingRebalance",
        GroupState::CompletingRebalance => "CompletingRebalance",
        GroupState::Stable => "Stable",
    }
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// `client_id` is the request header's: member ids start with it, as in
/// Kafka, and DescribeGroups shows it.
pub async fn join_group<W: Shards>(
    gw: &Cx<W>,
    req: JoinGroupRequest,
    version: i16,
    client_id: &str,
) -> JoinGroupResponse {
    let join = Join {
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
        client_id: client_id.to_string(),
        client_host: String::new(),
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        session_timeout: Duration::from_millis(req.session_timeout_ms.max(0) as u64),
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout: Duration::from_millis(
            if version >= 1 {
                req.rebalance_timeout_ms
            } else {
                req.session_timeout_ms
            }
            .max(0) as u64,
        ),
        require_known_member_id: version >= 4,
    };
    let r = gw
        .worker
        .join_group(&gw.tenant, &req.group_id.0, join)
        .await;
    let resp = JoinGroupResponse::default()
        .with_error_code(outcome_code(&r))
        .with_generation_id(-1);
    match r {
        Ok(Ok(j)) => {
            let members = j
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    let m = JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(&id))
                        .with_metadata(metadata);
                    if version >= 5 {
                        m.with_group_instance_id(instance.as_deref().map(str_bytes))
                    } else {
                        m
                    }
                })
                .collect();
            let resp = resp
                .with_generation_id(j.generation)
                .with_protocol_name(Some(str_bytes(&j.protocol)))
                .with_leader(str_bytes(&j.leader))
                .with_member_id(str_bytes(&j.member_id))
                .with_members(members);
            if version >= 7 {
                resp.with_protocol_type(Some(str_bytes(&j.protocol_type)))
            } else {
                resp
            }
        }
        Ok(Err(GroupError::MemberIdRequired(id))) => resp.with_member_id(str_bytes(&id)),
        _ => resp.with_member_id(req.member_id),
    }
}

pub async fn sync_group<W: Shards>(
    gw: &Cx<W>,
    req: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let assignments = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let r = gw
        .worker
        .sync_group(
            &gw.tenant,
            &req.group_id.0,
            &member_ref(
                &req.member_id,
                req.group_instance_id.as_ref(),
                req.generation_id,
            ),
            assignments,
        )
        .await;
    let resp = SyncGroupResponse::default().with_error_code(outcome_code(&r));
    let resp = match r {
        Ok(Ok(assignment)) => resp.with_assignment(assignment),
        _ => resp.with_assignment(Bytes::new()),
    };
    if version >= 5 {
        // The client sent what it expects; Kafka echoes the group's.
        resp.with_protocol_type(req.protocol_type)
            .with_protocol_name(req.protocol_name)
    } else {
        resp
    }
}

pub async fn heartbeat<W: Shards>(gw: &Cx<W>, req: HeartbeatRequest) -> HeartbeatResponse {
    let r = gw
        .worker
        .heartbeat(
            &gw.tenant,
            &req.group_id.0,
            &member_ref(
                &req.member_id,
                req.group_instance_id.as_ref(),
                req.generation_id,
            ),
        )
        .await;
    HeartbeatResponse::default().with_error_code(outcome_code(&r))
}

pub async fn leave_group<W: Shards>(
    gw: &Cx<W>,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let r = gw
        .worker
        .leave_group(&gw.tenant, &req.group_id.0, members.clone())
        .await;
    let codes: Vec<i16> = match &r {
        Ok(outcomes) => outcomes
            .iter()
            .map(|o| o.as_ref().err().map_or(0, errors::group_code))
            .collect(),
        Err(e) => vec![commit_code(e); members.len()],
    };
    if version < 3 {
        return LeaveGroupResponse::default().with_error_code(codes.first().copied().unwrap_or(0));
    }
    let members = members
        .into_iter()
        .zip(codes)
        .map(|((id, instance), code)| {
            MemberResponse::default()
                .with_member_id(str_bytes(&id))
                .with_group_instance_id(instance.as_deref().map(str_bytes))
                .with_error_code(code)
        })
        .collect();
    let top = match r {
        Err(e) => commit_code(&e),
        Ok(_) => 0,
    };
    LeaveGroupResponse::default()
        .with_error_code(top)
        .with_members(members)
}

pub async fn list_groups<W: Shards>(
    gw: &Cx<W>,
    req: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let groups = match gw.worker.list_groups(&gw.tenant).await {
        Ok(g) => g,
        Err(e) => return ListGroupsResponse::default().with_error_code(commit_code(&e)),
    };
    let wanted = |s: GroupState| {
        req.states_filter.is_empty()
            || req
                .states_filter
                .iter()
                .any(|f| f.eq_ignore_ascii_case(state_name(s)))
    };
    let listed = groups
        .into_iter()
        .filter(|(_, _, s)| wanted(*s))
        .map(|(name, protocol_type, state)| {
            let g = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&name)))
                .with_protocol_type(str_bytes(&protocol_type));
            if version >= 4 {
                g.with_group_state(str_bytes(state_name(state)))
            } else {
                g
            }
        })
        .collect();
    ListGroupsResponse::default().with_groups(listed)
}

pub async fn describe_groups<W: Shards>(
    gw: &Cx<W>,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut out = Vec::with_capacity(req.groups.len());
    for name in req.groups {
        let d = DescribedGroup::default().with_group_id(name.clone());
        out.push(match gw.worker.describe_group(&gw.tenant, &name.0).await {
            // Kafka describes an unknown group as Dead, without an error.
            Ok(None) => d.with_group_state(StrBytes::from_static_str("Dead")),
            Ok(Some(g)) => {
                let members = g
                    .members
                    .into_iter()
                    .map(|m| {
                        let metadata = m
                            .protocols
                            .iter()
                            .find(|(p, _)| *p == g.protocol)
                            .map(|(_, b)| b.clone())
                            .unwrap_or_default();
                        let dm = DescribedGroupMember::default()
                            .with_member_id(str_bytes(&m.id))
                            .with_client_id(str_bytes(&m.client_id))
                            .with_client_host(str_bytes(&m.client_host))
                            .with_member_metadata(metadata)
                            .with_member_assignment(m.assignment);
                        if version >= 4 {
                            dm.with_group_instance_id(m.instance_id.as_deref().map(str_bytes))
                        } else {
                            dm
                        }
                    })
                    .collect();
                d.with_group_state(str_bytes(state_name(g.state)))
                    .with_protocol_type(str_bytes(&g.protocol_type))
                    .with_protocol_data(str_bytes(&g.protocol))
                    .with_members(members)
            }
            Err(e) => d.with_error_code(commit_code(&e)),
        });
    }
    DescribeGroupsResponse::default().with_groups(out)
}

pub async fn offset_fetch<W: Shards>(
    gw: &Cx<W>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let wanted = req.topics.map(|ts| {
        ts.into_iter()
            .flat_map(|t| {
                t.partition_indexes
                    .into_iter()
                    .map(move |p| (t.name.0.to_string(), p))
            })
            .collect()
    });
    // v7+ (KIP-447): a partition with an open transaction's offset is
    // UNSTABLE_OFFSET_COMMIT, so the consumer waits instead of reading
    // from an offset about to move.
    let require_stable = version >= 7 && req.require_stable;
    match fetch_group(gw, &req.group_id.0, wanted, require_stable).await {
        Ok(topics) => {
            let topics = topics
                .into_iter()
                .map(|(name, parts)| {
                    let parts = parts
                        .into_iter()
                        .map(|(p, offset, epoch, metadata, code)| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(code)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(if version >= 5 { epoch } else { -1 })
                                .with_metadata(metadata)
                        })
                        .collect();
                    OffsetFetchResponseTopic::default()
                        .with_name(name)
                        .with_partitions(parts)
                })
                .collect();
            OffsetFetchResponse::default().with_topics(topics)
        }
        // v1 has no top-level error code: the error goes on no partition,
        // and the client sees no committed offsets.
        Err(code) if version >= 2 => OffsetFetchResponse::default().with_error_code(code),
        Err(_) => OffsetFetchResponse::default(),
    }
}

/// One partition's answer: (partition, offset or -1, leader epoch,
/// metadata, error code).
type PartitionOffset = (i32, i64, i32, Option<StrBytes>, i16);

/// A group's committed offsets, grouped by topic in request order, or the
/// group-level error code.
async fn fetch_group<W: Shards>(
    gw: &Cx<W>,
    group: &str,
    wanted: Option<Vec<(String, i32)>>,
    require_stable: bool,
) -> Result<Vec<(TopicName, Vec<PartitionOffset>)>, i16> {
    let found = gw
        .worker
        .committed(&gw.tenant, group, wanted, require_stable)
        .await
        .map_err(|e| commit_code(&e))?;
    let mut topics: Vec<(TopicName, Vec<PartitionOffset>)> = Vec::new();
    for (topic, partition, c) in found {
        let answer = match c {
            Ok(Some(c)) => (
                partition,
                c.offset,
                c.leader_epoch,
                Some(StrBytes::from_string(c.metadata)),
                0,
            ),
            Ok(None) => (partition, -1, -1, Some(StrBytes::default()), 0),
            Err(e) => (
                partition,
                -1,
                -1,
                Some(StrBytes::default()),
                commit_code(&e),
            ),
        };
        match topics.last_mut() {
            Some((name, parts)) if name.0.as_str() == topic => parts.push(answer),
            _ => topics.push((TopicName(StrBytes::from_string(topic)), vec![answer])),
        }
    }
    Ok(topics)
}

pub async fn delete_groups<W: Shards>(
    gw: &Cx<W>,
    req: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let names: Vec<String> = req.groups_names.iter().map(|g| g.0.to_string()).collect();
    let codes: Vec<i16> = match gw.worker.delete_groups(&gw.tenant, names).await {
        Ok(outcomes) => outcomes
            .iter()
            .map(|o| o.as_ref().err().map_or(0, commit_code))
            .collect(),
        Err(e) => vec![commit_code(&e); req.groups_names.len()],
    };
    let results = req
        .groups_names
        .into_iter()
        .zip(codes)
        .map(|(g, code)| {
            DeletableGroupResult::default()
                .with_group_id(g)
                .with_error_code(code)
        })
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}

/// OffsetDelete: a topic the group's members subscribe to keeps its
/// offsets (GROUP_SUBSCRIBED_TO_TOPIC), as in Kafka; the others go.
pub async fn offset_delete<W: Shards>(
    gw: &Cx<W>,
    req: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let tenant = &gw.tenant;
    let subscribed = match gw.worker.describe_group(tenant, &req.group_id.0).await {
        Ok(Some(g)) if g.state != GroupState::Empty && g.protocol_type == "consumer" => {
            subscriptions(&g)
        }
        Ok(_) => HashSet::new(),
        Err(e) => return OffsetDeleteResponse::default().with_error_code(commit_code(&e)),
    };
    let wanted: Vec<(String, i32)> = req
        .topics
        .iter()
        .filter(|t| !subscribed.contains(t.name.0.as_str()))
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.partition_index))
        })
        .collect();
    let mut outcomes = match gw
        .worker
        .delete_offsets(tenant, &req.group_id.0, wanted)
        .await
    {
        Ok(o) => o.into_iter(),
        Err(e) => return OffsetDeleteResponse::default().with_error_code(commit_code(&e)),
    };
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let in_use = subscribed.contains(t.name.0.as_str());
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = if in_use {
                        ResponseError::GroupSubscribedToTopic.code()
                    } else {
                        match outcomes.next() {
                            Some(Ok(())) => 0,
                            Some(Err(e)) => commit_code(&e),
                            None => ResponseError::UnknownServerError.code(),
                        }
                    };
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}

/// The topics a consumer group's members subscribe to, from their
/// subscriptions (ConsumerProtocolSubscription, version-prefixed). One that
/// does not decode counts for nothing.
fn subscriptions(g: &floe_worker::Described) -> HashSet<String> {
    let mut topics = HashSet::new();
    for m in &g.members {
        let Some((_, meta)) = m.protocols.iter().find(|(p, _)| *p == g.protocol) else {
            continue;
        };
        let mut b = meta.clone();
        if b.len() < 2 {
            continue;
        }
        let version = b.get_i16();
        if let Ok(s) = ConsumerProtocolSubscription::decode(&mut b, version) {
            topics.extend(s.topics.iter().map(|t| t.to_string()));
        }
    }
    topics
}

/// A member as SyncGroup, Heartbeat, OffsetCommit and TxnOffsetCommit name
/// it (the instance id only in the versions that carry one).
pub fn member_ref(id: &StrBytes, instance_id: Option<&StrBytes>, generation: i32) -> MemberRef {
    MemberRef {
        id: id.to_string(),
        instance_id: instance_id.map(|i| i.to_string()),
        generation,
    }
}
