//! The tenants' HTTP data API (issue 9). Every request runs as the tenant
//! of its basic-auth key, through its ACLs (`authz::Guarded`), so it is
//! metered and isolated exactly as a Kafka request is. No state lives in
//! the gateway: v2 consumer instances are keys of the tenant's shard log,
//! so any gateway (behind any load balancer) serves any request.
//!
//! - [`v3`]: Confluent v3's produce (one record or a stream of them),
//!   clusters and topics.
//! - [`consumers`]: Confluent v2's consumer instances, `/consumers/{group}`.
//! - [`events`]: stateless reads: one partition's records by long-poll
//!   (`/v1/topics/{t}/partitions/{p}/records`), and a topic as a stream of
//!   Server-Sent Events from an offset or a group (`/v1/topics/{t}/events`).
//! - [`transforms`]: deploying, listing and deleting Wasm transforms.
//! - [`connectors`]: creating, listing, pausing, resuming and deleting Wasm
//!   connectors.
//! - `openapi.json`: the whole API, served at `/openapi.json`.

pub mod connectors;
pub mod consumers;
pub mod events;
pub mod transforms;
pub mod v3;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use floe_common::TenantId;
use floe_worker::quota::Usage;
use floe_worker::MemberRef;
use floe_worker::{Read, Shards, WorkerError};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use kafka_protocol::records::Record;
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};

use crate::admin::Answer;
use crate::authz::Guarded;
use crate::errors;
use crate::http::{full, Reply};

/// The document `/openapi.json` serves.
pub const OPENAPI: &str = include_str!("openapi.json");

/// A request body's limit; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// The longest a read waits for its first record.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// A read's largest byte budget.
pub const MAX_READ_BYTES: usize = 8 << 20;

/// Who is asking, and how they may reach the worker.
pub struct Caller<W> {
    pub tenant: TenantId,
    /// The worker as the caller's key may use it.
    pub worker: Guarded<W>,
    /// The tenant's meter: bytes served are charged here.
    pub meter: Arc<W>,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// `scheme://host` the caller reached us at, for v2's `base_uri`.
    pub base: String,
    /// Set when the process is shutting down: event streams end.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// The tenant's connections here: an event stream holds one.
    pub connections: Arc<crate::kafka::slots::Slots>,
    /// The tenant's `connections` quota.
    pub connection_quota: Option<u64>,
}

impl<W> Clone for Caller<W> {
    fn clone(&self) -> Self {
        Self {
            tenant: self.tenant.clone(),
            worker: self.worker.clone(),
            meter: self.meter.clone(),
            body_timeout: self.body_timeout,
            base: self.base.clone(),
            stop: self.stop.clone(),
            connections: self.connections.clone(),
            connection_quota: self.connection_quota,
        }
    }
}

impl<W: Shards> Caller<W> {
    /// Charges bytes served (record-batch bytes, as a Kafka fetch would);
    /// returns how long the tenant must now wait before it is served more.
    pub async fn served(&self, bytes: u64) -> std::time::Duration {
        let used = Usage {
            kind: floe_worker::quota::Kind::Fetch,
            fetch_bytes: bytes,
            ..Usage::default()
        };
        let admission = self.meter.charge(&self.tenant, used).await;
        admission.map(|a| a.throttle).unwrap_or_default()
    }

    /// A JSON request's body: 415 when it is not JSON.
    pub async fn json_body(&self, req: Request<Incoming>) -> Result<Bytes, Answer> {
        if !is_json(&req) {
            let m = "the body must be application/json (or a Kafka REST +json type)";
            return Err(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, None, m));
        }
        self.body(req.into_body(), MAX_BODY_BYTES).await
    }

    /// The request's body: 413 over `max`, 408 when it stalls.
    pub async fn body(&self, body: Incoming, max: usize) -> Result<Bytes, Answer> {
        crate::read_body(body, max, self.body_timeout)
            .await
            .map_err(|e| {
                let status = match e {
                    crate::BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                    crate::BodyError::TimedOut => StatusCode::REQUEST_TIMEOUT,
                    crate::BodyError::Broken => StatusCode::BAD_REQUEST,
                };
                error(status, None, e)
            })
    }
}

/// What a tenant's request is, for its quota: a produce or a fetch is held
/// to that byte rate too.
pub fn kind_of(method: &Method, path: &str) -> floe_worker::quota::Kind {
    use floe_worker::quota::Kind;
    let decoded = segments(path);
    let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match (method, parts.as_slice()) {
        (&Method::POST, ["v3", "clusters", _, "topics", _, "records"]) => Kind::Produce,
        (&Method::GET, ["v1", "topics", _, "partitions", _, "records"])
        | (&Method::GET, ["v1", "topics", _, "events"])
        | (&Method::GET, ["consumers", _, "instances", _, "records"]) => Kind::Fetch,
        _ => Kind::Other,
    }
}

/// A path's segments, percent-decoded: what routes match on.
fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|p| !p.is_empty())
        .map(|p| percent_decode_str(p).decode_utf8_lossy().into_owned())
        .collect()
}

/// Routes a tenant's request (past authentication and the request quota).
pub async fn route<W: Shards>(c: &Caller<W>, req: Request<Incoming>) -> Reply {
    let decoded = segments(req.uri().path());
    let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match parts.first() {
        Some(&"consumers") => return consumers::route(c, req, &parts[1..]).await,
        Some(&"v3") => return json_reply(v3::route(c, req, &parts[1..]).await),
        Some(&"v1") if parts.get(1) == Some(&"transforms") => {
            return json_reply(transforms::route(c, req, &parts[2..]).await)
        }
        Some(&"v1") if parts.get(1) == Some(&"connectors") => {
            return json_reply(connectors::route(c, req, &parts[2..]).await)
        }
        _ => {}
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let answer = match (req.method(), parts.as_slice()) {
        (&Method::GET, ["v1", "topics", topic, "partitions", p, "records"]) => {
            events::read(c, topic, p, &query).await
        }
        (&Method::GET, ["v1", "topics", topic, "events"]) => {
            return events::stream(c, &req, topic, &query).await
        }
        (_, ["v1", "topics", _, "partitions", _, "records"] | ["v1", "topics", _, "events"]) => {
            not_allowed()
        }
        _ => error(StatusCode::NOT_FOUND, None, "no such resource"),
    };
    json_reply(answer)
}

pub fn json_reply(answer: Answer) -> Reply {
    reply(answer, "application/json")
}

pub fn reply(answer: Answer, content_type: &'static str) -> Reply {
    let mut r = Reply::new(full(answer.1));
    *r.status_mut() = answer.0;
    if answer.0 != StatusCode::NO_CONTENT {
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
    }
    // Unavailable means a shard is moving or its store is failing, and a
    // 429 made here is a quota policy's refusal, which lasts the rest of its
    // one-second window: both are worth another try soon, and clients that
    // honour Retry-After wait that long. (A throttle's 429 says how long.)
    if matches!(
        answer.0,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) {
        r.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
    }
    r
}

/// A request a plan's quota policy refused.
pub fn policy_refused(why: impl std::fmt::Display) -> Answer {
    let m = format!("refused by the plan's quota policy: {why}");
    error(StatusCode::TOO_MANY_REQUESTS, None, m)
}

pub fn not_allowed() -> Answer {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        None,
        "method not allowed here; see /openapi.json",
    )
}

/// Whether the request's body is JSON (`application/json`, or a Kafka
/// REST vendor type such as `application/vnd.kafka.v2+json`).
pub fn is_json(req: &Request<Incoming>) -> bool {
    let ctype = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    ctype.is_some_and(|c| {
        c == "application/json" || (c.starts_with("application/vnd.kafka.") && c.ends_with("+json"))
    })
}

/// Why a query string was refused: an unknown parameter, or a value that
/// is not a number of at least 0.
pub enum BadParam<'a> {
    Unknown(&'a str),
    Value(&'a str, &'a str),
}

/// Reads `k=v&...` into the named slots: each value a number of at least 0.
pub fn numbers<'a>(query: &'a str, slots: &mut [(&str, &mut i64)]) -> Result<(), BadParam<'a>> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = slots
            .iter_mut()
            .find(|(name, _)| *name == k)
            .ok_or(BadParam::Unknown(k))?;
        match v.parse::<i64>() {
            Ok(n) if n >= 0 => *slot.1 = n,
            _ => return Err(BadParam::Value(k, v)),
        }
    }
    Ok(())
}

/// [`numbers`], answering 400 for a bad query.
pub fn query_numbers(query: &str, slots: &mut [(&str, &mut i64)]) -> Result<(), Answer> {
    numbers(query, slots).map_err(|e| {
        let m = match e {
            BadParam::Unknown(k) => format!("unknown parameter {k}"),
            BadParam::Value(k, _) => format!("{k} must be a number of at least 0"),
        };
        error(StatusCode::BAD_REQUEST, None, m)
    })
}

/// An error answer: HTTP status, and Kafka's error code where there is one.
pub fn error(
    status: StatusCode,
    kafka_code: Option<i16>,
    message: impl std::fmt::Display,
) -> Answer {
    coded(status, status.as_u16() as u32, kafka_code, message)
}

/// An error answer with a REST proxy's own code (status × 100 + a subcode,
/// such as 40403 for an unknown consumer instance).
pub fn coded(
    status: StatusCode,
    code: u32,
    kafka_code: Option<i16>,
    message: impl std::fmt::Display,
) -> Answer {
    let mut v = json!({"error_code": code, "message": message.to_string()});
    if let Some(c) = kafka_code {
        v["kafka_error_code"] = c.into();
    }
    (status, Bytes::from(v.to_string()))
}

pub fn worker_error(e: &WorkerError) -> Answer {
    let (status, code) = match e {
        WorkerError::UnknownTopicOrPartition | WorkerError::UnknownTopic(_) => {
            (StatusCode::NOT_FOUND, 40401)
        }
        WorkerError::UnknownTransform(_) | WorkerError::UnknownConnector(_) => {
            (StatusCode::NOT_FOUND, 40406)
        }
        WorkerError::TopicAuthorizationFailed | WorkerError::GroupAuthorizationFailed => {
            (StatusCode::FORBIDDEN, 403)
        }
        WorkerError::PolicyViolation(_) => (StatusCode::FORBIDDEN, 403),
        WorkerError::Unavailable(_) | WorkerError::Uncertain(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, 503)
        }
        WorkerError::OffsetOutOfRange { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, 416),
        WorkerError::Group(_) => (StatusCode::CONFLICT, 409),
        _ => (StatusCode::BAD_REQUEST, 400),
    };
    coded(status, code, Some(errors::code(e)), e)
}

/// One partition to read, from `offset`.
#[derive(Debug, Clone)]
pub struct Want {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Reads `wants` in turn (read_committed) within `max_bytes` in all, and
/// waits up to `wait` until at least `min_bytes` are there. One result per
/// want, in order; a partition's error does not stop the others.
pub async fn poll<W: Shards>(
    c: &Caller<W>,
    wants: &[Want],
    max_bytes: usize,
    min_bytes: usize,
    wait: Duration,
) -> Vec<Result<Read, WorkerError>> {
    let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
    let mut durable = c.worker.subscribe(&c.tenant).await.ok();
    loop {
        if let Some(rx) = durable.as_mut() {
            rx.borrow_and_update();
        }
        let mut out = Vec::with_capacity(wants.len());
        let mut got = 0usize;
        for w in wants {
            let budget = max_bytes.saturating_sub(got).max(1);
            let first = got == 0;
            let read = c
                .worker
                .fetch(
                    &c.tenant,
                    &w.topic,
                    w.partition,
                    w.offset,
                    budget,
                    first,
                    true,
                )
                .await;
            if let Ok(r) = &read {
                got += r.batches.iter().map(Bytes::len).sum::<usize>();
            }
            out.push(read);
        }
        let failed = out.iter().any(|r| r.is_err());
        let Some(rx) = durable
            .as_mut()
            .filter(|_| got < min_bytes.max(1) && !failed)
        else {
            return out;
        };
        if tokio::time::Instant::now() >= deadline {
            return out;
        }
        if let Ok(Err(_)) = tokio::time::timeout_at(deadline, rx.changed()).await {
            durable = None;
        }
    }
}

pub use floe_worker::records::{decode, Decoded};

/// Record-batch bytes a read served, as the meter counts them.
pub fn served_bytes(read: &Read) -> u64 {
    read.batches.iter().map(|b| b.len() as u64).sum()
}

pub fn b64(b: &Option<Bytes>) -> Value {
    b.as_ref().map_or(Value::Null, |b| B64.encode(b).into())
}

/// A record's headers: `[{"name", "value" (base64 or null)}]`.
pub fn headers(r: &Record) -> Value {
    r.headers
        .iter()
        .map(|(k, v)| json!({"name": k.to_string(), "value": b64(v)}))
        .collect()
}

/// Where a reader with no committed offset starts (Kafka's
/// `auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reset {
    Earliest,
    Latest,
    /// No default: a partition without a committed offset is an error.
    None,
}

impl Reset {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "earliest" | "smallest" => Some(Reset::Earliest),
            "latest" | "largest" => Some(Reset::Latest),
            "none" => Some(Reset::None),
            _ => None,
        }
    }
}

/// Where each of `parts` starts: `group`'s committed offset, else `reset`.
pub async fn start_offsets<W: Shards>(
    c: &Caller<W>,
    group: Option<&str>,
    parts: &[(String, i32)],
    reset: Reset,
) -> Result<Vec<i64>, Answer> {
    let mut committed = vec![None; parts.len()];
    if let Some(g) = group.filter(|_| !parts.is_empty()) {
        let found = c
            .worker
            .committed(&c.tenant, g, Some(parts.to_vec()), false)
            .await
            .map_err(|e| worker_error(&e))?;
        for (slot, (_, _, r)) in committed.iter_mut().zip(found) {
            *slot = r.map_err(|e| worker_error(&e))?.map(|c| c.offset);
        }
    }
    let mut out = Vec::with_capacity(parts.len());
    for ((topic, p), known) in parts.iter().zip(committed) {
        let at = match (known, reset) {
            (Some(o), Reset::None) => o,
            // A committed offset retention or DeleteRecords has passed (or
            // beyond the end) is reset as if there were none (Kafka's
            // consumer on OFFSET_OUT_OF_RANGE).
            (Some(o), r) => {
                // In range up to the high watermark: an offset past the
                // last stable one is not out of range (Kafka).
                let start = listed_offset(c, topic, *p, -2, true).await?;
                let end = listed_offset(c, topic, *p, -1, false).await?;
                match (start..=end).contains(&o) {
                    true => o,
                    false if r == Reset::Earliest => start,
                    false => listed_offset(c, topic, *p, -1, true).await?,
                }
            }
            (None, Reset::None) => {
                let m =
                    format!("{topic}-{p} has no committed offset and auto.offset.reset is none");
                return Err(error(StatusCode::CONFLICT, None, m));
            }
            (None, r) => {
                let ts = if r == Reset::Earliest { -2 } else { -1 };
                listed_offset(c, topic, *p, ts, true).await?
            }
        };
        out.push(at);
    }
    Ok(out)
}

/// ListOffsets for one partition: -2 its start, -1 its end (the last
/// stable offset when `committed`, else the high watermark).
async fn listed_offset<W: Shards>(
    c: &Caller<W>,
    topic: &str,
    p: i32,
    ts: i64,
    committed: bool,
) -> Result<i64, Answer> {
    let found = c
        .worker
        .list_offset(&c.tenant, topic, p, ts, committed)
        .await;
    found.map(|o| o.0).map_err(|e| worker_error(&e))
}

/// Commits next offsets for `group` as a consumer that assigns its own
/// partitions (generation -1: allowed while no Kafka member is in the
/// group). Durable when it returns.
pub async fn commit<W: Shards>(
    c: &Caller<W>,
    group: &str,
    offsets: Vec<(String, i32, i64)>,
) -> Result<(), Answer> {
    if offsets.is_empty() {
        return Ok(());
    }
    let simple = MemberRef {
        id: String::new(),
        instance_id: None,
        generation: -1,
    };
    let commits = offsets
        .into_iter()
        .map(|(topic, partition, offset)| floe_worker::OffsetCommit {
            topic,
            partition,
            offset,
            leader_epoch: -1,
            metadata: String::new(),
        })
        .collect();
    let outcomes = c
        .worker
        .commit_offsets(&c.tenant, group, &simple, commits)
        .await
        .map_err(|e| worker_error(&e))?;
    match outcomes.into_iter().find_map(Result::err) {
        Some(e) => Err(worker_error(&e)),
        None => Ok(()),
    }
}

/// A query string's `k=v` pairs, percent-decoded.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A plugin's `config=k=v` query value as its pair.
pub fn config_pair(v: &str) -> Result<(String, String), String> {
    let (k, v) = v
        .split_once('=')
        .ok_or_else(|| format!("config {v:?} is not k=v"))?;
    Ok((k.to_string(), v.to_string()))
}

/// A plugin's `from=start|end` query value: whether it starts at its
/// input's earliest offsets.
pub fn from_start(v: &str) -> Result<bool, String> {
    match v {
        "start" => Ok(true),
        "end" => Ok(false),
        _ => Err(format!("from must be start or end, not {v:?}")),
    }
}

/// A record as JSON: offset, timestamp, headers, and key and value as the
/// caller asked: base64, or for `json` the JSON document they hold (bytes
/// that are not JSON but UTF-8, such as a plain string key, as a string).
pub fn record_json(r: &Record, json_data: bool) -> Result<Value, String> {
    let data = |b: &Option<Bytes>, what: &str| -> Result<Value, String> {
        match (b, json_data) {
            (None, _) => Ok(Value::Null),
            (Some(b), true) => serde_json::from_slice(b).or_else(|e| {
                std::str::from_utf8(b)
                    .map(|s| Value::String(s.to_string()))
                    .map_err(|_| format!("the {what} at offset {} is not JSON: {e}", r.offset))
            }),
            (Some(_), false) => Ok(b64(b)),
        }
    };
    Ok(json!({
        "offset": r.offset, "timestamp": r.timestamp,
        "key": data(&r.key, "key")?, "value": data(&r.value, "value")?,
        "headers": headers(r),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_answer_says_when_to_retry() {
        let r = json_reply(error(StatusCode::SERVICE_UNAVAILABLE, Some(15), "moving"));
        assert_eq!(r.headers()[hyper::header::RETRY_AFTER], "1");
        let r = json_reply(error(StatusCode::BAD_REQUEST, None, "bad"));
        assert!(r.headers().get(hyper::header::RETRY_AFTER).is_none());
    }
}
