//! FindCoordinator, OffsetCommit and OffsetFetch. Every gateway is every
//! group's coordinator: it routes to the worker that owns the tenant's
//! shard 0, where committed offsets live. Group membership (JoinGroup and
//! the rest) is not served yet, so only commits outside group management
//! (generation -1) are accepted; see COMPATIBILITY.md.

use floe_worker::{OffsetCommit, Shards, WorkerError};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::{errors, Gateway};

/// FindCoordinator's key types: consumer groups and transactions.
const KEY_GROUP: i8 = 0;

pub fn find_coordinator<W>(
    gw: &Gateway<W>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let answer = |key: StrBytes| {
        let c = Coordinator::default().with_key(key);
        if req.key_type != KEY_GROUP {
            // Transactions come with issue 5's coordinator.
            return c
                .with_node_id(BrokerId(-1))
                .with_port(-1)
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                .with_error_message(Some(StrBytes::from_static_str(
                    "transactions are not supported yet",
                )));
        }
        c.with_node_id(BrokerId(0))
            .with_host(StrBytes::from_string(gw.settings.advertised_host.clone()))
            .with_port(gw.settings.advertised_port)
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
    gw: &Gateway<W>,
    req: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let tenant = &gw.dev_tenant;
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
            req.generation_id_or_member_epoch,
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
        WorkerError::Unavailable(_) => ResponseError::CoordinatorNotAvailable.code(),
        other => errors::code(other),
    }
}

pub async fn offset_fetch<W: Shards>(
    gw: &Gateway<W>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(req.groups.len());
        for g in req.groups {
            let wanted = g.topics.map(|ts| {
                ts.into_iter()
                    .flat_map(|t| {
                        t.partition_indexes
                            .into_iter()
                            .map(move |p| (t.name.0.to_string(), p))
                    })
                    .collect()
            });
            let group = match fetch_group(gw, &g.group_id.0, wanted).await {
                Ok(topics) => {
                    let topics = topics
                        .into_iter()
                        .map(|(name, parts)| {
                            let parts = parts
                                .into_iter()
                                .map(|(p, offset, epoch, metadata)| {
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(epoch)
                                        .with_metadata(metadata)
                                })
                                .collect();
                            OffsetFetchResponseTopics::default()
                                .with_name(name)
                                .with_partitions(parts)
                        })
                        .collect();
                    OffsetFetchResponseGroup::default().with_topics(topics)
                }
                Err(code) => OffsetFetchResponseGroup::default().with_error_code(code),
            };
            groups.push(group.with_group_id(g.group_id));
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let wanted = req.topics.map(|ts| {
        ts.into_iter()
            .flat_map(|t| {
                t.partition_indexes
                    .into_iter()
                    .map(move |p| (t.name.0.to_string(), p))
            })
            .collect()
    });
    match fetch_group(gw, &req.group_id.0, wanted).await {
        Ok(topics) => {
            let topics = topics
                .into_iter()
                .map(|(name, parts)| {
                    let parts = parts
                        .into_iter()
                        .map(|(p, offset, epoch, metadata)| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
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

/// One partition's answer: (partition, offset or -1, leader epoch, metadata).
type PartitionOffset = (i32, i64, i32, Option<StrBytes>);

/// A group's committed offsets, grouped by topic in request order, or the
/// group-level error code.
async fn fetch_group<W: Shards>(
    gw: &Gateway<W>,
    group: &str,
    wanted: Option<Vec<(String, i32)>>,
) -> Result<Vec<(TopicName, Vec<PartitionOffset>)>, i16> {
    let found = gw
        .worker
        .committed(&gw.dev_tenant, group, wanted)
        .await
        .map_err(|e| commit_code(&e))?;
    let mut topics: Vec<(TopicName, Vec<PartitionOffset>)> = Vec::new();
    for (topic, partition, c) in found {
        let answer = match c {
            Some(c) => (
                partition,
                c.offset,
                c.leader_epoch,
                Some(StrBytes::from_string(c.metadata)),
            ),
            None => (partition, -1, -1, Some(StrBytes::default())),
        };
        match topics.last_mut() {
            Some((name, parts)) if name.0.as_str() == topic => parts.push(answer),
            _ => topics.push((TopicName(StrBytes::from_string(topic)), vec![answer])),
        }
    }
    Ok(topics)
}
