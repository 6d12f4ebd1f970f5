//! Fetch and ListOffsets. Fetch long-polls: it answers as soon as `min_bytes`
//! are there or `max_wait_ms` has passed, woken by the shard's durable
//! appends. It never reads past the durable high watermark. Fetch sessions
//! (KIP-227) are declined: the response's session id is 0, so clients keep
//! sending full requests.
//!
//! The response is encoded by [`wire`], not by the codec: the codec wants
//! each partition's records as one buffer and copies it into the response,
//! two copies of every byte served. `wire` emits the stored batches as they
//! are, as chunks for one vectored write.

mod wire;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use floe_common::batch;
use floe_worker::{Shards, WorkerError};
use futures::stream::FuturesOrdered;
use futures::{Future, StreamExt};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::ListOffsetsResponse;
use kafka_protocol::ResponseError;
use tokio::time::Instant;

use crate::{errors, Cx};

pub use wire::{encode, Partition, Response, Topic};

/// A long-poll never waits longer than this, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Partitions of one request read concurrently: a partition waiting on a
/// ranged GET must not hold up the ones behind it.
const READS_AT_ONCE: usize = 16;

pub async fn fetch<W: Shards>(gw: &Cx<W>, req: FetchRequest) -> Response {
    if req.session_id != 0 {
        return Response {
            throttle_time_ms: 0,
            error_code: ResponseError::FetchSessionIdNotFound.code(),
            topics: Vec::new(),
        };
    }
    let tenant = &gw.tenant;
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let mut durable = gw.worker.subscribe(tenant).await.ok();
    loop {
        // Mark what we have seen before reading, so no append is missed.
        if let Some(rx) = durable.as_mut() {
            rx.borrow_and_update();
        }
        let pass = fetch_once(gw, &req).await;
        let done = pass.bytes >= req.min_bytes.max(0) as usize
            || pass.errored
            || Instant::now() >= deadline;
        let rx = match durable.as_mut() {
            Some(rx) if !done => rx,
            _ => {
                gw.metrics
                    .fetched_bytes
                    .fetch_add(pass.bytes as u64, Relaxed);
                return Response {
                    throttle_time_ms: 0,
                    error_code: 0,
                    topics: pass.topics,
                };
            }
        };
        // Woken by an append, or the deadline: either way, read again.
        if let Ok(Err(_)) = tokio::time::timeout_at(deadline, rx.changed()).await {
            durable = None; // The shard closed; answer with what is there.
        }
    }
}

/// One pass over the requested partitions. Records stay as the stored
/// batches, never copied: a long-poll may discard the pass.
struct Pass {
    topics: Vec<Topic>,
    bytes: usize,
    errored: bool,
}

async fn fetch_once<W: Shards>(gw: &Cx<W>, req: &FetchRequest) -> Pass {
    let max_bytes = (req.max_bytes.max(0) as u32).min(gw.settings.fetch_max_bytes) as usize;
    let order: Vec<(&FetchTopic, &FetchPartition)> = req
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
        .collect();
    // Partitions are read READS_AT_ONCE at a time, each up to its own limit
    // and to what was left of the request's budget when its read began,
    // then trimmed to what is left once the reads before it are in: a
    // trimmed read equals the sequential read with the smaller limit. A
    // read begins only as one ends, so a fetch reads at most READS_AT_ONCE
    // partitions past the one that spent its budget, not every partition
    // up to its own limit.
    let mut reads = FuturesOrdered::new();
    let mut budget = max_bytes;
    let mut pass = Pass {
        topics: Vec::with_capacity(req.topics.len()),
        bytes: 0,
        errored: false,
    };
    let mut i = 0;
    for t in &req.topics {
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            while reads.len() < READS_AT_ONCE && i + reads.len() < order.len() {
                let (t, p) = order[i + reads.len()];
                // Only the first non-empty partition may exceed the limits (KIP-74).
                reads.push_back(read(gw, req, t, p, budget, pass.bytes == 0));
            }
            i += 1;
            let Some(result) = reads.next().await else {
                break;
            };
            parts.push(match result {
                Ok(mut r) => {
                    let limit = (p.partition_max_bytes.max(0) as usize).min(budget);
                    let n = keep_within(&mut r.batches, limit, pass.bytes == 0);
                    pass.bytes += n;
                    budget -= n.min(budget);
                    Partition {
                        index: p.partition,
                        error_code: 0,
                        high_watermark: r.high_watermark,
                        last_stable_offset: r.last_stable,
                        log_start_offset: r.log_start,
                        // Only those among the batches kept.
                        aborted: aborted_within(&r.aborted, &r.batches),
                        records: Some(r.batches),
                    }
                }
                Err(e) => {
                    if let WorkerError::Unavailable(why) | WorkerError::Uncertain(why) = &e {
                        tracing::warn!(topic = %t.topic.0, partition = p.partition, error = %why, "fetch failed");
                    }
                    pass.errored = true;
                    partition_error(p.partition, &e)
                }
            });
        }
        pass.topics.push(Topic {
            name: t.topic.0.clone(),
            partitions: parts,
        });
    }
    pass
}

/// One partition's read, up to its own limit and `left` of the request's.
fn read<'a, W: Shards>(
    gw: &'a Cx<W>,
    req: &FetchRequest,
    t: &'a FetchTopic,
    p: &FetchPartition,
    left: usize,
    min_one: bool,
) -> impl Future<Output = Result<floe_storage::Read, WorkerError>> + 'a {
    let limit = (p.partition_max_bytes.max(0) as usize).min(left);
    gw.worker.fetch(
        &gw.tenant,
        &t.topic.0,
        p.partition,
        p.fetch_offset,
        limit,
        min_one,
        req.isolation_level == 1,
    )
}

/// Keeps the batches that fit in `limit` (at least one if `min_one`), as the
/// log's own read does; returns their size.
fn keep_within(batches: &mut Vec<Bytes>, limit: usize, min_one: bool) -> usize {
    let mut total = 0;
    let mut keep = 0;
    for b in batches.iter() {
        if total + b.len() > limit && (keep > 0 || !min_one) {
            break;
        }
        total += b.len();
        keep += 1;
    }
    batches.truncate(keep);
    total
}

/// The aborted transactions (producer id, first offset) that begin before
/// the end of `batches`.
fn aborted_within(aborted: &[floe_storage::AbortedTxn], batches: &[Bytes]) -> Vec<(i64, i64)> {
    let Some(last) = batches.last().filter(|b| b.len() >= batch::HEADER_LEN) else {
        return Vec::new();
    };
    let base = i64::from_be_bytes(last[..8].try_into().unwrap_or_default());
    let delta = i32::from_be_bytes(last[23..27].try_into().unwrap_or_default());
    let end = base + delta as i64 + 1;
    aborted
        .iter()
        .filter(|a| a.first_offset < end)
        .map(|a| (a.producer_id, a.first_offset))
        .collect()
}

/// The answer to a fetch refused whole (by a plan's quota policy): every
/// partition fails with `e`.
pub fn refused(req: FetchRequest, e: &WorkerError) -> Response {
    Response {
        throttle_time_ms: 0,
        error_code: 0,
        topics: req
            .topics
            .into_iter()
            .map(|t| Topic {
                name: t.topic.0,
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| partition_error(p.partition, e))
                    .collect(),
            })
            .collect(),
    }
}

fn partition_error(index: i32, e: &WorkerError) -> Partition {
    let (log_start, high_watermark) = match e {
        WorkerError::OffsetOutOfRange {
            log_start,
            high_watermark,
        } => (*log_start, *high_watermark),
        _ => (-1, -1),
    };
    Partition {
        index,
        error_code: errors::code(e),
        high_watermark,
        last_stable_offset: high_watermark,
        log_start_offset: log_start,
        aborted: Vec::new(),
        records: None,
    }
}

pub async fn list_offsets<W: Shards>(
    gw: &Cx<W>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let tenant = &gw.tenant;
    // The field exists from v4 on; the codec refuses it set on older versions.
    let epoch = match version {
        4.. => gw.worker.leader_epoch(tenant).await.unwrap_or(-1),
        _ => -1,
    };
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let resp =
                ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            parts.push(
                match gw
                    .worker
                    .list_offset(
                        tenant,
                        &t.name.0,
                        p.partition_index,
                        p.timestamp,
                        req.isolation_level == 1,
                    )
                    .await
                {
                    Ok((offset, ts)) => resp
                        .with_offset(offset)
                        .with_timestamp(ts)
                        .with_leader_epoch(epoch),
                    Err(e) => resp
                        .with_error_code(errors::code(&e))
                        .with_offset(-1)
                        .with_timestamp(-1),
                },
            );
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// The record-batch bytes a Fetch response serves: what its tenant's fetch
/// quota is charged.
pub fn record_bytes(r: &Response) -> u64 {
    r.topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .flat_map(|p| p.records.iter().flatten())
        .map(|b| b.len() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(v: &[Bytes]) -> Vec<usize> {
        v.iter().map(Bytes::len).collect()
    }

    #[test]
    fn keep_within_keeps_whole_batches_that_fit() {
        let batches = || [300, 500, 200].map(|n| Bytes::from(vec![0u8; n])).to_vec();
        let cases = [
            (1000, false, vec![300, 500, 200]),
            (999, false, vec![300, 500]),
            (799, true, vec![300]),
        ];
        for (limit, min_one, want) in cases {
            let mut b = batches();
            assert_eq!(
                keep_within(&mut b, limit, min_one),
                want.iter().sum::<usize>()
            );
            assert_eq!(sizes(&b), want, "limit {limit}");
        }
        // The first batch alone goes over: kept only for the first non-empty partition.
        let mut b = batches();
        assert_eq!(keep_within(&mut b, 100, true), 300);
        let mut b = batches();
        assert_eq!((keep_within(&mut b, 100, false), b.len()), (0, 0));
    }
}
