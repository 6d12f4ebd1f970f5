//! Fetch and ListOffsets. Fetch long-polls: it answers as soon as `min_bytes`
//! are there or `max_wait_ms` has passed, woken by the shard's durable
//! appends. It never reads past the durable high watermark. Fetch sessions
//! (KIP-227) are declined: the response's session id is 0, so clients keep
//! sending full requests.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use floe_worker::{Shards, WorkerError};
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{BrokerId, FetchResponse, ListOffsetsResponse};
use kafka_protocol::ResponseError;
use tokio::time::Instant;

use crate::{errors, Gateway};

/// A long-poll never waits longer than this, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(30);

pub async fn fetch<W: Shards>(gw: &Gateway<W>, req: FetchRequest) -> FetchResponse {
    if req.session_id != 0 {
        return FetchResponse::default().with_error_code(ResponseError::FetchSessionIdNotFound.code());
    }
    let tenant = &gw.dev_tenant;
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let mut durable = gw.worker.subscribe(tenant).await.ok();
    loop {
        // Mark what we have seen before reading, so no append is missed.
        if let Some(rx) = durable.as_mut() {
            rx.borrow_and_update();
        }
        let pass = fetch_once(gw, &req).await;
        let done = pass.bytes >= req.min_bytes.max(0) as usize || pass.errored || Instant::now() >= deadline;
        let rx = match durable.as_mut() {
            Some(rx) if !done => rx,
            _ => {
                gw.metrics.fetched_bytes.fetch_add(pass.bytes as u64, Relaxed);
                return FetchResponse::default().with_responses(pass.into_responses());
            }
        };
        // Woken by an append, or the deadline: either way, read again.
        if let Ok(Err(_)) = tokio::time::timeout_at(deadline, rx.changed()).await {
            durable = None; // The shard closed; answer with what is there.
        }
    }
}

/// One pass over the requested partitions. Records stay as the stored
/// batches until the pass is the answer: a long-poll may discard it.
struct Pass {
    topics: Vec<(FetchableTopicResponse, Vec<Vec<Bytes>>)>,
    bytes: usize,
    errored: bool,
}

impl Pass {
    fn into_responses(self) -> Vec<FetchableTopicResponse> {
        self.topics
            .into_iter()
            .map(|(mut t, records)| {
                for (p, batches) in t.partitions.iter_mut().zip(records) {
                    if p.error_code == 0 {
                        p.records = Some(concat(batches));
                    }
                }
                t
            })
            .collect()
    }
}

async fn fetch_once<W: Shards>(gw: &Gateway<W>, req: &FetchRequest) -> Pass {
    let tenant = &gw.dev_tenant;
    let mut budget = req.max_bytes.max(0) as usize;
    let mut pass = Pass { topics: Vec::with_capacity(req.topics.len()), bytes: 0, errored: false };
    for t in &req.topics {
        let mut parts = Vec::with_capacity(t.partitions.len());
        let mut records = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let limit = (p.partition_max_bytes.max(0) as usize).min(budget);
            // KIP-74: only the first non-empty partition may exceed the limits.
            let min_one = pass.bytes == 0;
            let resp = PartitionData::default()
                .with_partition_index(p.partition)
                .with_preferred_read_replica(BrokerId(-1))
                .with_aborted_transactions(Some(vec![]));
            let read = gw.worker.fetch(tenant, &t.topic.0, p.partition, p.fetch_offset, limit, min_one).await;
            match read {
                Ok(r) => {
                    let n: usize = r.batches.iter().map(Bytes::len).sum();
                    pass.bytes += n;
                    budget = budget.saturating_sub(n);
                    parts.push(
                        resp.with_high_watermark(r.high_watermark)
                            .with_last_stable_offset(r.high_watermark)
                            .with_log_start_offset(r.log_start),
                    );
                    records.push(r.batches);
                }
                Err(e) => {
                    if let WorkerError::Unavailable(why) = &e {
                        tracing::warn!(topic = %t.topic.0, partition = p.partition, error = %why, "fetch failed");
                    }
                    pass.errored = true;
                    parts.push(partition_error(resp, &e));
                    records.push(Vec::new());
                }
            }
        }
        pass.topics.push((FetchableTopicResponse::default().with_topic(t.topic.clone()).with_partitions(parts), records));
    }
    pass
}

fn partition_error(resp: PartitionData, e: &WorkerError) -> PartitionData {
    let resp = resp.with_error_code(errors::code(e)).with_high_watermark(-1).with_last_stable_offset(-1);
    match e {
        WorkerError::OffsetOutOfRange { log_start, high_watermark } => resp
            .with_high_watermark(*high_watermark)
            .with_last_stable_offset(*high_watermark)
            .with_log_start_offset(*log_start),
        _ => resp.with_log_start_offset(-1),
    }
}

/// One batch is passed through as is; several are joined (one copy).
fn concat(mut batches: Vec<Bytes>) -> Bytes {
    if batches.len() == 1 {
        return batches.pop().unwrap_or_default();
    }
    let mut b = BytesMut::with_capacity(batches.iter().map(Bytes::len).sum());
    for x in batches {
        b.extend_from_slice(&x);
    }
    b.freeze()
}

pub async fn list_offsets<W: Shards>(gw: &Gateway<W>, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let tenant = &gw.dev_tenant;
    // The field exists from v4 on; the codec refuses it set on older versions.
    let epoch = match version {
        4.. => gw.worker.leader_epoch(tenant).await.unwrap_or(-1),
        _ => -1,
    };
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let resp = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            parts.push(match gw.worker.list_offset(tenant, &t.name.0, p.partition_index, p.timestamp).await {
                Ok((offset, ts)) => resp.with_offset(offset).with_timestamp(ts).with_leader_epoch(epoch),
                Err(e) => resp.with_error_code(errors::code(&e)).with_offset(-1).with_timestamp(-1),
            });
        }
        topics.push(ListOffsetsTopicResponse::default().with_name(t.name).with_partitions(parts));
    }
    ListOffsetsResponse::default().with_topics(topics)
}
