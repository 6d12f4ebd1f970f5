//! Confluent v3's shapes: produce (`POST /v3/clusters/{c}/topics/{t}/records`:
//! one JSON record, or a stream of them in one body, each answered with its
//! own JSON result line, in order), and the tenant's one cluster and its
//! topics. Keys and values are `{"type": "BINARY"|"JSON"|"STRING", "data": ...}`
//! (BINARY is base64). A record without a partition goes where Kafka's
//! default partitioner puts it: murmur2 of the key, or round-robin.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use floe_common::{batch, TenantId};
use floe_worker::{records, Shards, WorkerError};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::Answer;
use crate::authz::Guarded;
use crate::errors;
use crate::rest::{error, not_allowed, worker_error, Caller};

/// Round-robin position for records without key or partition.
static NEXT: AtomicU32 = AtomicU32::new(0);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRecord {
    partition_id: Option<i32>,
    #[serde(default)]
    headers: Vec<NewHeader>,
    key: Option<Data>,
    value: Option<Data>,
    /// Milliseconds since the epoch (v3 takes an ISO time; both are read).
    timestamp: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewHeader {
    name: String,
    /// Base64, or null.
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Data {
    #[serde(rename = "type", default = "json_type")]
    kind: String,
    data: Value,
}

fn json_type() -> String {
    "JSON".into()
}

impl Data {
    fn bytes(&self) -> Result<Option<Bytes>, String> {
        match (self.kind.as_str(), &self.data) {
            (_, Value::Null) => Ok(None),
            ("BINARY", Value::String(s)) => B64
                .decode(s)
                .map(|b| Some(Bytes::from(b)))
                .map_err(|e| format!("invalid base64: {e}")),
            ("STRING", Value::String(s)) => Ok(Some(Bytes::from(s.clone()))),
            ("JSON", v) => Ok(Some(Bytes::from(v.to_string()))),
            (k @ ("BINARY" | "STRING"), _) => Err(format!("{k} data must be a string")),
            (k, _) => Err(format!("unknown type {k:?}: BINARY, JSON or STRING")),
        }
    }
}

fn timestamp_ms(v: &Option<Value>) -> Result<i64, String> {
    match v {
        None | Some(Value::Null) => Ok(floe_storage::log::now_ms()),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| "timestamp out of range".into()),
        Some(other) => Err(format!("timestamp {other}: milliseconds since the epoch")),
    }
}

/// Routes `/v3/...` (`parts` after `v3`).
pub async fn route<W: Shards>(c: &Caller<W>, req: Request<Incoming>, parts: &[&str]) -> Answer {
    let ours = crate::cluster_id(&c.tenant);
    if let ["clusters", cluster, ..] = parts {
        if *cluster != ours {
            return error(
                StatusCode::NOT_FOUND,
                None,
                format!("cluster {cluster} not found"),
            );
        }
    }
    let (worker, tenant) = (&c.worker, &c.tenant);
    let method = req.method().clone();
    match (&method, parts) {
        (&Method::GET, ["clusters"]) => clusters(&ours),
        (&Method::GET, ["clusters", _]) => cluster(&ours),
        (&Method::GET, ["clusters", _, "topics"]) => topics(worker, tenant, &ours, None).await,
        (&Method::GET, ["clusters", _, "topics", topic]) => {
            topics(worker, tenant, &ours, Some(topic)).await
        }
        (&Method::DELETE, ["clusters", _, "topics", topic]) => {
            delete_topic(worker, tenant, topic).await
        }
        (&Method::POST, ["clusters", _, "topics"]) => match c.json_body(req).await {
            Ok(body) => create_topic(worker, tenant, &ours, &body).await,
            Err(a) => a,
        },
        (&Method::POST, ["clusters", _, "topics", topic, "records"]) => {
            let body = match c.json_body(req).await {
                Ok(b) => b,
                Err(a) => return a,
            };
            // Charged before it is appended, as a Kafka produce is: a plan's
            // policy may refuse it; a throttle holds the tenant's next one.
            let produced = floe_worker::quota::Usage {
                kind: floe_worker::quota::Kind::Produce,
                produce_bytes: body.len() as u64,
                ..Default::default()
            };
            let admission = c.meter.charge(tenant, produced).await;
            if let Some(why) = admission.ok().and_then(|a| a.refused) {
                return crate::rest::policy_refused(why);
            }
            produce(worker, tenant, topic, &body).await
        }
        (_, ["clusters"] | ["clusters", _] | ["clusters", _, "topics"])
        | (_, ["clusters", _, "topics", _] | ["clusters", _, "topics", _, "records"]) => {
            not_allowed()
        }
        _ => error(StatusCode::NOT_FOUND, None, "no such resource"),
    }
}

fn cluster_view(cluster: &str) -> Value {
    json!({"kind": "KafkaCluster", "cluster_id": cluster})
}

fn topic_view(cluster: &str, t: &floe_worker::TopicMeta) -> Value {
    json!({
        "kind": "KafkaTopic", "cluster_id": cluster, "topic_name": t.name,
        "is_internal": false, "replication_factor": 1,
        "partitions_count": t.streams.len(),
    })
}

/// `GET /v3/clusters`.
pub fn clusters(cluster: &str) -> Answer {
    let body = json!({"kind": "KafkaClusterList", "data": [cluster_view(cluster)]});
    (StatusCode::OK, Bytes::from(body.to_string()))
}

/// `GET /v3/clusters/{cluster}`.
pub fn cluster(cluster: &str) -> Answer {
    (
        StatusCode::OK,
        Bytes::from(cluster_view(cluster).to_string()),
    )
}

/// `GET /v3/clusters/{cluster}/topics[/{topic}]`.
pub async fn topics<W: Shards>(
    worker: &Guarded<W>,
    tenant: &TenantId,
    cluster: &str,
    one: Option<&str>,
) -> Answer {
    let all = match worker.topics(tenant).await {
        Ok(all) => all,
        Err(e) => return worker_error(&e),
    };
    let body = match one {
        None => {
            let data: Vec<Value> = all.iter().map(|t| topic_view(cluster, t)).collect();
            json!({"kind": "KafkaTopicList", "data": data})
        }
        Some(name) => match all.iter().find(|t| t.name == name) {
            Some(t) => topic_view(cluster, t),
            None => return worker_error(&WorkerError::UnknownTopicOrPartition),
        },
    };
    (StatusCode::OK, Bytes::from(body.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTopic {
    topic_name: String,
    #[serde(default = "one")]
    partitions_count: usize,
    /// Accepted for v3 clients; every partition has one replica here.
    #[serde(default)]
    replication_factor: Option<i32>,
    #[serde(default)]
    configs: Vec<ConfigEntry>,
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigEntry {
    name: String,
    value: String,
}

/// `POST /v3/clusters/{cluster}/topics`.
pub async fn create_topic<W: Shards>(
    worker: &Guarded<W>,
    tenant: &TenantId,
    cluster: &str,
    body: &[u8],
) -> Answer {
    let new: CreateTopic = match serde_json::from_slice(body) {
        Ok(n) => n,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                None,
                format!("malformed topic: {e}"),
            )
        }
    };
    if new.replication_factor.is_some_and(|r| r != 1 && r != -1) {
        let m = "replication is the object store's: replication_factor is 1";
        return error(StatusCode::BAD_REQUEST, None, m);
    }
    let topic = floe_worker::NewTopic {
        name: new.topic_name,
        partitions: new.partitions_count,
        configs: new.configs.into_iter().map(|c| (c.name, c.value)).collect(),
        validate_only: false,
    };
    match worker.create_topic(tenant, topic).await {
        Ok(t) => (
            StatusCode::CREATED,
            Bytes::from(topic_view(cluster, &t).to_string()),
        ),
        Err(e @ WorkerError::TopicExists(_)) => {
            error(StatusCode::CONFLICT, Some(errors::code(&e)), e)
        }
        Err(e) => worker_error(&e),
    }
}

/// `DELETE /v3/clusters/{cluster}/topics/{topic}`.
pub async fn delete_topic<W: Shards>(worker: &Guarded<W>, tenant: &TenantId, name: &str) -> Answer {
    match worker.delete_topic(tenant, name).await {
        Ok(_) => (StatusCode::NO_CONTENT, Bytes::new()),
        Err(e) => worker_error(&e),
    }
}

/// `POST /v3/clusters/{cluster}/topics/{topic}/records`.
pub async fn produce<W: Shards>(
    worker: &Guarded<W>,
    tenant: &TenantId,
    topic: &str,
    body: &[u8],
) -> Answer {
    let (partitions, max_batch) = match worker.topics(tenant).await {
        Ok(all) => match all.iter().find(|t| t.name == topic) {
            // A batch stays within the topic's max.message.bytes too.
            Some(t) => {
                let max = t.config().max_message_bytes.max(0) as usize;
                let room = max.saturating_sub(batch::HEADER_LEN);
                (t.streams.len() as i32, BATCH_BYTES.min(room))
            }
            None => {
                let e = WorkerError::UnknownTopicOrPartition;
                return error(
                    StatusCode::NOT_FOUND,
                    Some(errors::code(&e)),
                    format!("topic {topic} not found"),
                );
            }
        },
        Err(e) => return worker_error(&e),
    };
    // Records are checked in order until the first bad one (those before
    // it stand, each answered; none after it is appended), then appended a
    // batch per partition (several if large), all before any is awaited.
    let mut checked = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(body).into_iter::<NewRecord>();
    let mut stopped = None;
    for next in &mut stream {
        if checked.len() == MAX_RECORDS {
            let m = format!("more than {MAX_RECORDS} records in one request");
            return error(StatusCode::PAYLOAD_TOO_LARGE, None, m);
        }
        let malformed = |e: serde_json::Error| {
            error(
                StatusCode::BAD_REQUEST,
                None,
                format!("malformed record: {e}"),
            )
        };
        match next.map_err(malformed).and_then(|r| check(r, partitions)) {
            Ok(c) => checked.push(c),
            Err(a) => {
                stopped = Some(a);
                break;
            }
        }
    }
    if checked.is_empty() {
        return stopped
            .unwrap_or_else(|| error(StatusCode::BAD_REQUEST, None, "no record in the body"));
    }
    // Each record's (batch, place in it); each batch's partition, records
    // and their bytes.
    let mut place = Vec::with_capacity(checked.len());
    let mut batches: Vec<(i32, Vec<records::Out>, usize)> = Vec::new();
    let mut open: std::collections::HashMap<i32, usize> = Default::default();
    for c in &mut checked {
        let size = c.record.size();
        let b = match open.get(&c.partition) {
            Some(&b) if batches[b].2 + size <= max_batch => b,
            _ => {
                batches.push((c.partition, Vec::new(), 0));
                open.insert(c.partition, batches.len() - 1);
                batches.len() - 1
            }
        };
        place.push((b, batches[b].1.len()));
        batches[b].1.push(std::mem::take(&mut c.record));
        batches[b].2 += size;
    }
    let mut accepted = Vec::with_capacity(batches.len());
    for (partition, recs, _) in batches {
        accepted.push(append(worker, tenant, topic, partition, recs).await);
    }
    let mut outcomes = Vec::with_capacity(accepted.len());
    for a in accepted {
        outcomes.push(match a {
            Ok(a) => a
                .durable()
                .await
                .map(|p| (p.base_offset, p.log_append_time))
                .map_err(|e| worker_error(&e)),
            Err(e) => Err(e),
        });
    }
    let cluster = crate::cluster_id(tenant);
    let mut lines = Vec::with_capacity(checked.len() + 1);
    for (c, (b, i)) in checked.iter().zip(place) {
        let line = match &outcomes[b] {
            Ok((base, appended)) => json!({
                "error_code": 200, "cluster_id": cluster, "topic_name": topic,
                "partition_id": c.partition, "offset": base + i as i64,
                // Under LogAppendTime, the time the log stamped.
                "timestamp": if *appended >= 0 { json!(appended) } else { json!(c.timestamp) },
                "key": c.key_len.map(|n| json!({"size": n})),
                "value": c.value_len.map(|n| json!({"size": n})),
            }),
            Err((_, body)) => serde_json::from_slice(body).unwrap_or(Value::Null),
        };
        lines.push(line.to_string());
    }
    if let Some((_, body)) = stopped {
        // The stream's answer for the record that could not go; none after
        // it was appended.
        lines.push(String::from_utf8_lossy(&body).into_owned());
    }
    (StatusCode::OK, Bytes::from(lines.join("\n") + "\n"))
}

/// Records one produce request may carry: each is answered with a line
/// of JSON, which bounds the answer (about 2 MB).
const MAX_RECORDS: usize = 10_000;

/// A batch's records' bytes at most (under Kafka's default
/// `max.message.bytes`, and under the topic's), unless one record alone
/// is more.
const BATCH_BYTES: usize = 512 << 10;

/// A record checked and placed, ready to append.
struct Checked {
    partition: i32,
    timestamp: i64,
    key_len: Option<usize>,
    value_len: Option<usize>,
    record: records::Out,
}

/// Reads one record of the body and picks its partition.
fn check(rec: NewRecord, partitions: i32) -> Result<Checked, Answer> {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, None, m);
    let key = rec
        .key
        .as_ref()
        .map(Data::bytes)
        .transpose()
        .map_err(bad)?
        .flatten();
    let value = rec
        .value
        .as_ref()
        .map(Data::bytes)
        .transpose()
        .map_err(bad)?
        .flatten();
    let ts = timestamp_ms(&rec.timestamp).map_err(bad)?;
    let mut headers = Vec::new();
    for h in rec.headers {
        let v = match h.value {
            Some(v) => {
                Some(Bytes::from(B64.decode(v).map_err(|e| {
                    bad(format!("header {}: invalid base64: {e}", h.name))
                })?))
            }
            None => None,
        };
        headers.push((h.name, v));
    }
    let partition = match (rec.partition_id, &key) {
        (Some(p), _) => p,
        (None, Some(k)) => floe_worker::records::partition_for_key(k, partitions),
        (None, None) => (NEXT.fetch_add(1, Relaxed) % partitions as u32) as i32,
    };
    let (key_len, value_len) = (key.as_ref().map(Bytes::len), value.as_ref().map(Bytes::len));
    Ok(Checked {
        partition,
        timestamp: ts,
        key_len,
        value_len,
        record: records::Out {
            key,
            value,
            headers,
            timestamp: ts,
        },
    })
}

/// Appends `recs` to one partition as one batch.
async fn append<W: Shards>(
    worker: &Guarded<W>,
    tenant: &TenantId,
    topic: &str,
    partition: i32,
    recs: Vec<records::Out>,
) -> Result<floe_worker::Accepted, Answer> {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, None, m);
    let data =
        records::encode_batch(recs).map_err(|e| bad(format!("records do not encode: {e}")))?;
    let batches = batch::split(data).map_err(|e| bad(e.to_string()))?;
    worker
        .produce(tenant, topic, partition, batches)
        .await
        .map_err(|e| worker_error(&e))
}
