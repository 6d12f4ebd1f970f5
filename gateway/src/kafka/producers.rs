//! Idempotent producers: InitProducerId hands out producer ids (the worker
//! allocates them durably); DescribeProducers shows what each partition
//! remembers of them. The sequence checks themselves run in the shard log,
//! under the same lock that assigns offsets.

use floe_worker::{Shards, WorkerError};
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, InitProducerIdRequest,
    InitProducerIdResponse, ProducerId,
};

use kafka_protocol::ResponseError;

use crate::{errors, Cx};

pub async fn init_producer_id<W: Shards>(
    gw: &Cx<W>,
    req: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let txn = req.transactional_id.as_ref().map(|t| t.0.as_str());
    if txn == Some("") {
        // Kafka's answer: null means "idempotent only", empty is no id.
        return InitProducerIdResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    // v3+ (KIP-360): the producer's current id and epoch, when it has them.
    let current =
        (version >= 3 && req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
    let initiated = gw
        .worker
        .init_producer_id(&gw.tenant, txn, req.transaction_timeout_ms, current)
        .await;
    match initiated {
        Ok((id, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        // PRODUCER_FENCED is v4+ (KIP-588).
        Err(e) => InitProducerIdResponse::default()
            .with_error_code(errors::fenced_for(errors::coordinator_code(&e), version, 4))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}

pub async fn describe_producers<W: Shards>(
    gw: &Cx<W>,
    req: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let mut partitions = Vec::with_capacity(t.partition_indexes.len());
        for p in t.partition_indexes {
            let resp = PartitionResponse::default().with_partition_index(p);
            let described = gw.worker.describe_producers(&gw.tenant, &t.name.0, p).await;
            partitions.push(match described {
                Ok(producers) => resp.with_active_producers(
                    producers
                        .into_iter()
                        .map(|p| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(p.id))
                                .with_producer_epoch(p.epoch as i32)
                                .with_last_sequence(p.last_sequence)
                                .with_last_timestamp(p.last_timestamp)
                                .with_coordinator_epoch(-1)
                                .with_current_txn_start_offset(p.txn_start_offset)
                        })
                        .collect(),
                ),
                Err(e) => failed(resp, &e),
            });
        }
        topics.push(
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    DescribeProducersResponse::default().with_topics(topics)
}

fn failed(resp: PartitionResponse, e: &WorkerError) -> PartitionResponse {
    resp.with_error_code(errors::code(e))
        .with_error_message(errors::message(e))
}
