//! Produce: validate every batch (magic 2, sizes, CRC-32C), hand them to the
//! shard owner, and answer once the flushes holding them are durable.
//! acks=1 waits exactly like acks=-1: an ack always means "in the object store".

use std::sync::atomic::Ordering::Relaxed;

use floe_common::batch;
use floe_worker::{Accepted, Shards, WorkerError};
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::metrics::Metrics;
use crate::{errors, Cx};

/// One partition's outcome so far: accepted with its (bytes, batches), or failed.
enum Outcome {
    Accepted(Accepted, u64, u64),
    Failed(i16, Option<StrBytes>),
}

/// A produce request whose batches the log has taken, in order, waiting to
/// be durable.
pub struct Accepting {
    started: std::time::Instant,
    acks: i16,
    topics: Vec<(kafka_protocol::messages::TopicName, Vec<(i32, Outcome)>)>,
}

/// Hands every partition's batches to the shard owner. The connection's
/// reader awaits this before reading the next request, so a connection's
/// produces are appended in the order sent (Kafka's guarantee), whatever
/// order their responses' futures are later polled in.
///
/// Nothing else of the frame is kept (names are copied, the rest dropped),
/// so a request of one batch (librdkafka sends one per partition) leaves
/// the batch as its buffer's only reference, and the owner stamps its
/// leader epoch and base offset in place instead of copying it (Kafka's
/// broker does the same in its request buffer).
pub async fn accept_all<W: Shards>(gw: &Cx<W>, mut req: ProduceRequest) -> Accepting {
    let started = std::time::Instant::now();
    let acks = req.acks;
    let topic_data = std::mem::take(&mut req.topic_data);
    drop(req);
    let tenant = &gw.tenant;
    let mut topics = Vec::with_capacity(topic_data.len());
    for mut t in topic_data {
        let name = TopicName(StrBytes::from_string(t.name.to_string()));
        let partition_data = std::mem::take(&mut t.partition_data);
        drop(t);
        let mut parts = Vec::with_capacity(partition_data.len());
        for mut p in partition_data {
            let records = p.records.take();
            let index = p.index;
            drop(p);
            let outcome = if !matches!(acks, -1..=1) {
                Outcome::Failed(ResponseError::InvalidRequiredAcks.code(), None)
            } else {
                accept(gw, tenant, &name.0, index, records).await
            };
            parts.push((index, outcome));
        }
        topics.push((name, parts));
    }
    Accepting {
        started,
        acks,
        topics,
    }
}

/// Waits until every accepted partition is durable; `None` for acks=0: the
/// client expects no response. Every partition was appended before any is
/// awaited, so one request's partitions share flushes.
pub async fn finish_all<W>(gw: &Cx<W>, a: Accepting) -> Option<ProduceResponse> {
    let mut responses = Vec::with_capacity(a.topics.len());
    for (name, parts) in a.topics {
        let mut out = Vec::with_capacity(parts.len());
        for (index, outcome) in parts {
            out.push(finish(&gw.metrics, index, outcome).await);
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(out),
        );
    }
    gw.metrics
        .produce_seconds
        .record(a.started.elapsed().as_secs_f64(), &[]);
    if a.acks == 0 {
        return None;
    }
    Some(ProduceResponse::default().with_responses(responses))
}

async fn accept<W: Shards>(
    gw: &Cx<W>,
    tenant: &floe_common::TenantId,
    topic: &str,
    partition: i32,
    records: Option<bytes::Bytes>,
) -> Outcome {
    let batches = match batch::split(records.unwrap_or_default()) {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(errors::batch_code(&e), Some(e.to_string().into())),
    };
    let bytes: u64 = batches.iter().map(|(h, _)| h.len as u64).sum();
    let count = batches.len() as u64;
    match gw.worker.produce(tenant, topic, partition, batches).await {
        Ok(a) => Outcome::Accepted(a, bytes, count),
        Err(e) => Outcome::Failed(code(&e), errors::message(&e)),
    }
}

async fn finish(metrics: &Metrics, index: i32, outcome: Outcome) -> PartitionProduceResponse {
    let resp = PartitionProduceResponse::default()
        .with_index(index)
        .with_log_append_time_ms(-1);
    match outcome {
        Outcome::Failed(code, msg) => resp
            .with_error_code(code)
            .with_base_offset(-1)
            .with_error_message(msg),
        Outcome::Accepted(a, bytes, count) => match a.durable().await {
            Ok(p) => {
                metrics.produced_bytes.fetch_add(bytes, Relaxed);
                metrics.produced_batches.fetch_add(count, Relaxed);
                resp.with_base_offset(p.base_offset)
                    .with_log_start_offset(p.log_start)
                    .with_log_append_time_ms(p.log_append_time)
            }
            Err(e) => failed(resp, &e),
        },
    }
}

/// The answer to a produce refused whole (by a plan's quota policy): every
/// partition fails with `e`; none for acks=0.
pub fn refused(req: ProduceRequest, e: &WorkerError) -> Option<ProduceResponse> {
    if req.acks == 0 {
        return None;
    }
    let topics = req
        .topic_data
        .into_iter()
        .map(|t| {
            let parts = t
                .partition_data
                .iter()
                .map(|p| {
                    let resp = PartitionProduceResponse::default()
                        .with_index(p.index)
                        .with_log_append_time_ms(-1);
                    failed(resp, e)
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(t.name)
                .with_partition_responses(parts)
        })
        .collect();
    Some(ProduceResponse::default().with_responses(topics))
}

fn failed(resp: PartitionProduceResponse, e: &WorkerError) -> PartitionProduceResponse {
    resp.with_error_code(code(e))
        .with_base_offset(-1)
        .with_error_message(errors::message(e))
}

/// A produce's error code. Records that may have been stored are
/// REQUEST_TIMED_OUT, which clients retry and librdkafka reports as possibly
/// persisted; NOT_LEADER_OR_FOLLOWER would tell it they were not.
fn code(e: &WorkerError) -> i16 {
    match e {
        WorkerError::Uncertain(_) => ResponseError::RequestTimedOut.code(),
        other => errors::code(other),
    }
}

/// The record-batch bytes a Produce request carries, as sent: what its
/// tenant's produce quota is charged.
pub fn record_bytes(req: &ProduceRequest) -> u64 {
    req.topic_data
        .iter()
        .flat_map(|t| t.partition_data.iter())
        .map(|p| p.records.as_ref().map_or(0, |r| r.len() as u64))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_worker::Produced;
    use std::sync::Arc;
    use ResponseError::*;

    /// A produce the owner accepted, answered with `answer` (none: the
    /// owner went away first).
    fn accepted(answer: Option<floe_worker::Result<Produced>>) -> Outcome {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Some(a) = answer {
            tx.send(a).expect("receiver");
        }
        Outcome::Accepted(Accepted::remote(rx), 10, 1)
    }

    /// Records that may be stored are REQUEST_TIMED_OUT (librdkafka retries
    /// them and reports them as possibly persisted); ones known not to be
    /// are NOT_LEADER_OR_FOLLOWER.
    #[tokio::test]
    async fn a_produce_of_unknown_outcome_is_answered_request_timed_out() {
        let metrics = Metrics::new(Arc::default(), Arc::default(), Arc::default());
        let uncertain = WorkerError::Uncertain("a flush failed".into());
        let unavailable = WorkerError::Unavailable("moved".into());
        for (answer, code) in [
            (None, RequestTimedOut),
            (Some(Err(uncertain)), RequestTimedOut),
            (Some(Err(unavailable)), NotLeaderOrFollower),
        ] {
            let r = finish(&metrics, 3, accepted(answer)).await;
            assert_eq!((r.index, r.error_code, r.base_offset), (3, code.code(), -1));
        }
        assert_eq!(metrics.produced_bytes.load(Relaxed), 0);
        let stored = Produced {
            base_offset: 7,
            log_start: 0,
            log_append_time: -1,
        };
        let r = finish(&metrics, 3, accepted(Some(Ok(stored)))).await;
        assert_eq!((r.error_code, r.base_offset), (0, 7));
        assert_eq!(metrics.produced_bytes.load(Relaxed), 10);
    }
}
