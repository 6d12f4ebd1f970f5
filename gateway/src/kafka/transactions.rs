//! The transaction APIs: AddPartitionsToTxn, AddOffsetsToTxn,
//! TxnOffsetCommit, EndTxn, ListTransactions and DescribeTransactions (and
//! InitProducerId with a transactional id, in `producers.rs`). Every gateway
//! is every transactional id's coordinator: the worker owning the tenant's
//! shard 0 keeps their state.

use floe_worker::{OffsetCommit, Shards, TxnMeta};
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{self, TopicData};
use kafka_protocol::messages::list_transactions_response;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, DescribeTransactionsRequest, DescribeTransactionsResponse,
    EndTxnRequest, EndTxnResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
    TopicName, TransactionalId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::{errors, Cx};

fn code<T>(r: &floe_worker::Result<T>) -> i16 {
    r.as_ref().err().map_or(0, errors::coordinator_code)
}

/// The versions of AddPartitionsToTxn, AddOffsetsToTxn and EndTxn that know
/// PRODUCER_FENCED (KIP-588).
const FENCED_SINCE: i16 = 2;

/// Each asked partition's error code, in order: a transaction-wide error is
/// every partition's.
fn per_partition(
    outcomes: floe_worker::Result<Vec<floe_worker::Result<()>>>,
    asked: &[(TopicName, Vec<i32>)],
) -> std::vec::IntoIter<i16> {
    match outcomes {
        Ok(each) => each.iter().map(code).collect::<Vec<_>>().into_iter(),
        Err(e) => {
            let n = asked.iter().map(|(_, ps)| ps.len()).sum();
            vec![errors::coordinator_code(&e); n].into_iter()
        }
    }
}

/// v0-3: one transaction, named at the top level.
pub async fn add_partitions<W: Shards>(
    gw: &Cx<W>,
    req: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    let asked: Vec<(TopicName, Vec<i32>)> = req
        .v3_and_below_topics
        .into_iter()
        .map(|t| (t.name, t.partitions))
        .collect();
    let flat = asked
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(|&p| (t.0.to_string(), p)))
        .collect();
    let producer = (
        req.v3_and_below_producer_id.0,
        req.v3_and_below_producer_epoch,
    );
    let id = req.v3_and_below_transactional_id.0.as_str();
    let outcomes = gw
        .worker
        .add_partitions_to_txn(&gw.tenant, id, producer, flat)
        .await;
    let mut codes = per_partition(outcomes, &asked);
    let results = asked
        .into_iter()
        .map(|(name, partitions)| {
            let results_by_partition = partitions
                .into_iter()
                .map(|p| {
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(p)
                        .with_partition_error_code(errors::fenced_for(
                            codes.next().unwrap_or(0),
                            version,
                            FENCED_SINCE,
                        ))
                })
                .collect();
            AddPartitionsToTxnTopicResult::default()
                .with_name(name)
                .with_results_by_partition(results_by_partition)
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}

pub async fn add_offsets<W: Shards>(
    gw: &Cx<W>,
    req: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let r = gw
        .worker
        .add_offsets_to_txn(
            &gw.tenant,
            &req.transactional_id.0,
            (req.producer_id.0, req.producer_epoch),
            &req.group_id.0,
        )
        .await;
    AddOffsetsToTxnResponse::default().with_error_code(errors::fenced_for(
        code(&r),
        version,
        FENCED_SINCE,
    ))
}

pub async fn txn_offset_commit<W: Shards>(
    gw: &Cx<W>,
    req: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let asked: Vec<(TopicName, Vec<i32>)> = req
        .topics
        .iter()
        .map(|t| {
            let ps = t.partitions.iter().map(|p| p.partition_index).collect();
            (t.name.clone(), ps)
        })
        .collect();
    let commits = req
        .topics
        .into_iter()
        .flat_map(|t| {
            let topic = t.name.0.to_string();
            t.partitions.into_iter().map(move |p| OffsetCommit {
                topic: topic.clone(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p
                    .committed_metadata
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            })
        })
        .collect();
    let outcomes = gw
        .worker
        .txn_offset_commit(
            &gw.tenant,
            &req.transactional_id.0,
            (req.producer_id.0, req.producer_epoch),
            &req.group_id.0,
            &super::groups::member_ref(
                &req.member_id,
                req.group_instance_id.as_ref(),
                req.generation_id,
            ),
            commits,
        )
        .await;
    let mut codes = per_partition(outcomes, &asked);
    let topics = asked
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|p| {
                    TxnOffsetCommitResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(codes.next().unwrap_or(0))
                })
                .collect();
            TxnOffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

pub async fn end_txn<W: Shards>(gw: &Cx<W>, req: EndTxnRequest, version: i16) -> EndTxnResponse {
    let r = gw
        .worker
        .end_txn(
            &gw.tenant,
            &req.transactional_id.0,
            (req.producer_id.0, req.producer_epoch),
            req.committed,
        )
        .await;
    EndTxnResponse::default()
        .with_error_code(errors::fenced_for(code(&r), version, FENCED_SINCE))
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

pub async fn list<W: Shards>(gw: &Cx<W>, req: ListTransactionsRequest) -> ListTransactionsResponse {
    let all = match gw.worker.transactions(&gw.tenant).await {
        Ok(all) => all,
        Err(e) => {
            return ListTransactionsResponse::default()
                .with_error_code(errors::coordinator_code(&e))
        }
    };
    const STATES: [&str; 4] = ["Empty", "Ongoing", "CompleteCommit", "CompleteAbort"];
    let (known, unknown): (Vec<StrBytes>, Vec<StrBytes>) = req
        .state_filters
        .into_iter()
        .partition(|s| STATES.contains(&s.as_str()) || is_kafka_state(s));
    let now = floe_storage::log::now_ms();
    let states = all
        .into_iter()
        .filter(|(_, m)| known.is_empty() || known.iter().any(|s| s.as_str() == m.state.name()))
        .filter(|(_, m)| {
            req.producer_id_filters.is_empty()
                || req.producer_id_filters.contains(&ProducerId(m.producer_id))
        })
        // v1: transactions running longer than this.
        .filter(|(_, m)| {
            req.duration_filter < 0
                || (m.state == floe_worker::TxnState::Ongoing
                    && now - m.started_ms >= req.duration_filter)
        })
        .map(|(id, m)| {
            list_transactions_response::TransactionState::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(id)))
                .with_producer_id(ProducerId(m.producer_id))
                .with_transaction_state(StrBytes::from_static_str(m.state.name()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(states)
}

/// States Kafka has and Floe never shows (one log object ends a
/// transaction, so nothing is ever half done): filters on them match
/// nothing but are not unknown.
fn is_kafka_state(s: &str) -> bool {
    matches!(
        s,
        "PrepareCommit" | "PrepareAbort" | "PrepareEpochFence" | "Dead"
    )
}

pub async fn describe<W: Shards>(
    gw: &Cx<W>,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let all = gw.worker.transactions(&gw.tenant).await;
    let states = req
        .transactional_ids
        .into_iter()
        .map(|id| {
            let out = describe_transactions_response::TransactionState::default()
                .with_transactional_id(id.clone())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            match &all {
                Err(e) => out.with_error_code(errors::coordinator_code(e)),
                Ok(all) => match all.iter().find(|(k, _)| k.as_str() == id.0.as_str()) {
                    None => out.with_error_code(ResponseError::TransactionalIdNotFound.code()),
                    Some((_, m)) => described(out, m),
                },
            }
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

fn described(
    out: describe_transactions_response::TransactionState,
    m: &TxnMeta,
) -> describe_transactions_response::TransactionState {
    let mut topics: Vec<TopicData> = Vec::new();
    for (t, p) in &m.partitions {
        match topics.last_mut() {
            Some(last) if last.topic.0.as_str() == t => last.partitions.push(*p),
            _ => topics.push(
                TopicData::default()
                    .with_topic(TopicName(StrBytes::from_string(t.clone())))
                    .with_partitions(vec![*p]),
            ),
        }
    }
    let ongoing = m.state == floe_worker::TxnState::Ongoing;
    out.with_transaction_state(StrBytes::from_static_str(m.state.name()))
        .with_transaction_timeout_ms(m.timeout_ms)
        .with_transaction_start_time_ms(if ongoing { m.started_ms } else { -1 })
        .with_producer_id(ProducerId(m.producer_id))
        .with_producer_epoch(m.epoch)
        .with_topics(topics)
}
