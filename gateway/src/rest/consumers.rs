//! Confluent v2's consumer instances (`/consumers/{group}/instances/{name}/...`),
//! with the instance's state (format, subscription or assignment, positions)
//! in the tenant's shard log instead of gateway memory: any gateway serves
//! any instance, so there is no "40403 Consumer instance not found" behind a
//! load balancer that is not sticky.
//!
//! Every request reads the state fresh from the shard's owner and writes it
//! back with a compare-and-swap, so two requests for one instance racing on
//! two gateways cannot both advance it: the loser runs again on the new state.
//!
//! Instances of a group split the partitions of the topics they subscribe
//! to: each topic's partitions go round-robin over the live instances
//! subscribed to it, in name order. An instance unused for
//! [`INSTANCE_TIMEOUT`] is gone from the split. A partition that moves
//! starts at the group's committed offset, so delivery is at least once, as
//! with a Kafka consumer that commits after processing.

use std::time::Duration;

use bytes::Bytes;
use floe_storage::log::now_ms;
use floe_worker::{Shards, TopicMeta, WorkerError};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::admin::Answer;
use crate::http::Reply;
use crate::rest::{
    coded, commit, decode, error, is_json, not_allowed, poll, query_numbers, record_json, reply,
    served_bytes, start_offsets, worker_error, Caller, Reset, Want, MAX_READ_BYTES,
};

/// An instance unused this long leaves its group's split (Confluent's
/// `consumer.instance.timeout.ms` default).
pub const INSTANCE_TIMEOUT: Duration = Duration::from_secs(300);
/// Tries of a read-modify-write that keeps losing its compare-and-swap.
const ATTEMPTS: usize = 5;
const V2: &str = "application/vnd.kafka.v2+json";
const BINARY: &str = "application/vnd.kafka.binary.v2+json";
const JSON: &str = "application/vnd.kafka.json.v2+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    Binary,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Tp {
    topic: String,
    partition: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pos {
    topic: String,
    partition: i32,
    offset: i64,
}

/// One instance's state, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Instance {
    format: Format,
    reset: Reset,
    auto_commit: bool,
    /// A records request's default wait.
    request_timeout_ms: u64,
    fetch_min_bytes: u64,
    /// Last use, ms since the epoch.
    used_ms: i64,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    pattern: Option<String>,
    /// Partitions assigned by hand (exclusive with a subscription).
    #[serde(default)]
    assigned: Option<Vec<Tp>>,
    /// The next offset to read, per partition read so far.
    #[serde(default)]
    positions: Vec<Pos>,
    /// Positions as last auto-committed.
    #[serde(default)]
    committed: Vec<Pos>,
}

impl Instance {
    fn subscribes(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic)
            || self
                .pattern
                .as_deref()
                .and_then(full_match)
                .is_some_and(|re| re.is_match(topic))
    }

    fn alive(&self, now: i64) -> bool {
        now - self.used_ms <= INSTANCE_TIMEOUT.as_millis() as i64
    }

    fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.positions
            .iter()
            .find(|p| p.topic == topic && p.partition == partition)
            .map(|p| p.offset)
    }

    fn set_position(&mut self, topic: &str, partition: i32, offset: i64) {
        match self
            .positions
            .iter_mut()
            .find(|p| p.topic == topic && p.partition == partition)
        {
            Some(p) => p.offset = offset,
            None => self.positions.push(Pos {
                topic: topic.to_string(),
                partition,
                offset,
            }),
        }
    }
}

/// A Java-style subscription pattern matches whole topic names.
fn full_match(pattern: &str) -> Option<regex::Regex> {
    regex::Regex::new(&format!("^(?:{pattern})$")).ok()
}

/// The instance's partitions: its own assignment, or its share of its
/// subscription among the group's live subscribed instances.
fn assignment(
    name: &str,
    me: &Instance,
    all: &[(String, Instance)],
    topics: &[TopicMeta],
    now: i64,
) -> Vec<(String, i32)> {
    if let Some(a) = &me.assigned {
        return a.iter().map(|t| (t.topic.clone(), t.partition)).collect();
    }
    let mut mine = Vec::new();
    let mut topics: Vec<&TopicMeta> = topics.iter().filter(|t| me.subscribes(&t.name)).collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    for t in topics {
        let mut members: Vec<&str> = all
            .iter()
            .filter(|(n, i)| {
                n != name && i.alive(now) && i.assigned.is_none() && i.subscribes(&t.name)
            })
            .map(|(n, _)| n.as_str())
            .chain(std::iter::once(name))
            .collect();
        members.sort_unstable();
        let me_at = members.iter().position(|n| *n == name).unwrap_or(0);
        mine.extend(
            (0..t.streams.len())
                .filter(|p| p % members.len() == me_at)
                .map(|p| (t.name.clone(), p as i32)),
        );
    }
    mine
}

fn not_found(name: &str) -> Answer {
    coded(
        StatusCode::NOT_FOUND,
        40403,
        None,
        format!("Consumer instance {name} not found"),
    )
}

fn conflict(code: u32, m: impl std::fmt::Display) -> Answer {
    coded(StatusCode::CONFLICT, code, None, m)
}

fn unprocessable(m: impl std::fmt::Display) -> Answer {
    coded(StatusCode::UNPROCESSABLE_ENTITY, 42200, None, m)
}

fn no_content() -> Answer {
    (StatusCode::NO_CONTENT, Bytes::new())
}

fn ok(v: Value) -> Answer {
    (StatusCode::OK, Bytes::from(v.to_string()))
}

/// The group's instances, read fresh from the shard's owner; the named
/// one's stored bytes and state.
type Loaded = (Option<(Bytes, Instance)>, Vec<(String, Instance)>);

async fn load<W: Shards>(c: &Caller<W>, group: &str, name: &str) -> Result<Loaded, Answer> {
    let found = c
        .worker
        .instances(&c.tenant, group)
        .await
        .map_err(|e| worker_error(&e))?;
    let mut me = None;
    let mut all = Vec::with_capacity(found.len());
    for (n, raw) in found {
        let Ok(i) = serde_json::from_slice::<Instance>(&raw) else {
            continue;
        };
        if n == name {
            me = Some((raw, i.clone()));
        }
        all.push((n, i));
    }
    Ok((me, all))
}

/// Writes `new` over `old`; false when the instance changed meanwhile:
/// read it again and retry. A write whose outcome is unknown (the shard
/// changed owner under it) is resolved by reading, never guessed: if it
/// landed, true; if the state is still `old`, 503, for the client to retry
/// on the state as it is (moving on would skip what it read).
async fn store<W: Shards>(
    c: &Caller<W>,
    group: &str,
    name: &str,
    old: Option<Bytes>,
    new: Option<&Instance>,
) -> Result<bool, Answer> {
    let new = new.map(|i| Bytes::from(serde_json::to_vec(i).expect("state serializes")));
    let swapped = c
        .worker
        .swap_instance(&c.tenant, group, name, old.clone(), new.clone())
        .await;
    match swapped {
        Ok(done) => Ok(done),
        Err(e @ (WorkerError::Unavailable(_) | WorkerError::Uncertain(_))) => {
            let (now, _) = load(c, group, name).await?;
            let now = now.map(|(raw, _)| raw);
            if now == new {
                Ok(true)
            } else if now == old {
                Err(worker_error(&e))
            } else {
                Ok(false)
            }
        }
        Err(e) => Err(worker_error(&e)),
    }
}

/// The named instance (404 if there is none): its stored bytes, its
/// state, and all of its group.
async fn loaded<W: Shards>(
    c: &Caller<W>,
    group: &str,
    name: &str,
) -> Result<(Bytes, Instance, Vec<(String, Instance)>), Answer> {
    let (me, all) = load(c, group, name).await?;
    let (raw, inst) = me.ok_or_else(|| not_found(name))?;
    Ok((raw, inst, all))
}

fn answer(r: Result<Answer, Answer>) -> Answer {
    r.unwrap_or_else(|a| a)
}

/// Routes `/consumers/...` (`parts` after `consumers`).
pub async fn route<W: Shards>(c: &Caller<W>, req: Request<Incoming>, parts: &[&str]) -> Reply {
    let method = req.method().clone();
    let Some(group) = parts.first().copied() else {
        return reply(error(StatusCode::NOT_FOUND, None, "no such resource"), V2);
    };
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    if let [_, "instances", name, "records"] = parts {
        if method != Method::GET {
            return reply(not_allowed(), V2);
        }
        let query = req.uri().query().unwrap_or("").to_string();
        return records_of(c, group, name, &query, &accept).await;
    }
    let body = match (&method, parts) {
        (&Method::POST, _) | (&Method::GET, [_, "instances", _, "offsets"]) => {
            match body_json(c, req).await {
                Ok(b) => b,
                Err(a) => return reply(a, V2),
            }
        }
        _ => Value::Null,
    };
    let answer = match (&method, parts) {
        (&Method::POST, [_]) => create(c, group, &body).await,
        (&Method::DELETE, [_, "instances", name]) => delete(c, group, name).await,
        (&Method::POST, [_, "instances", name, "subscription"]) => {
            subscribe(c, group, name, &body).await
        }
        (&Method::GET, [_, "instances", name, "subscription"]) => {
            subscription(c, group, name).await
        }
        (&Method::DELETE, [_, "instances", name, "subscription"]) => {
            edit(c, group, name, |i| {
                i.topics.clear();
                i.pattern = None;
                i.assigned = None;
                i.positions.clear();
                Ok(())
            })
            .await
        }
        (&Method::POST, [_, "instances", name, "assignments"]) => {
            let tps = match partitions_of(&body) {
                Ok(t) => t,
                Err(a) => return reply(a, V2),
            };
            edit(c, group, name, move |i| {
                if !i.topics.is_empty() || i.pattern.is_some() {
                    return Err(conflict(
                        40903,
                        "subscription and assignment are mutually exclusive",
                    ));
                }
                i.positions.retain(|p| {
                    tps.iter()
                        .any(|t| t.topic == p.topic && t.partition == p.partition)
                });
                i.assigned = Some(tps.clone());
                Ok(())
            })
            .await
        }
        (&Method::GET, [_, "instances", name, "assignments"]) => assignments(c, group, name).await,
        (&Method::POST, [_, "instances", name, "positions"]) => seek(c, group, name, &body).await,
        (&Method::POST, [_, "instances", name, "positions", end @ ("beginning" | "end")]) => {
            seek_to(c, group, name, &body, *end == "beginning").await
        }
        (&Method::POST, [_, "instances", name, "offsets"]) => {
            commit_offsets(c, group, name, &body).await
        }
        (&Method::GET, [_, "instances", name, "offsets"]) => committed(c, group, name, &body).await,
        (_, [_])
        | (_, [_, "instances", _])
        | (_, [_, "instances", _, "subscription" | "assignments" | "positions" | "offsets"])
        | (_, [_, "instances", _, "positions", "beginning" | "end"]) => not_allowed(),
        _ => error(StatusCode::NOT_FOUND, None, "no such resource"),
    };
    reply(answer, V2)
}

/// A JSON body; an empty one is `null` (v2 allows empty commits).
async fn body_json<W: Shards>(c: &Caller<W>, req: Request<Incoming>) -> Result<Value, Answer> {
    let has_body = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .is_none_or(|l| l.as_bytes() != b"0");
    if !has_body {
        return Ok(Value::Null);
    }
    let typed = is_json(&req);
    let body = c.body(req.into_body(), 1 << 20).await?;
    if body.is_empty() {
        return Ok(Value::Null);
    }
    if !typed {
        let m = "the body must be application/vnd.kafka.v2+json";
        return Err(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, None, m));
    }
    serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            None,
            format!("malformed JSON: {e}"),
        )
    })
}

/// A config value given as a string or a JSON scalar.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 249
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `POST /consumers/{group}`.
async fn create<W: Shards>(c: &Caller<W>, group: &str, body: &Value) -> Answer {
    let empty = Map::new();
    let Some(fields) = body.as_object().or(body.is_null().then_some(&empty)) else {
        return unprocessable("the body is a JSON object");
    };
    let mut inst = Instance {
        format: Format::Binary,
        reset: Reset::Latest,
        auto_commit: true,
        request_timeout_ms: 1000,
        fetch_min_bytes: 1,
        used_ms: now_ms(),
        topics: Vec::new(),
        pattern: None,
        assigned: None,
        positions: Vec::new(),
        committed: Vec::new(),
    };
    let mut name = format!("rest-consumer-{}", uuid::Uuid::new_v4());
    for (k, v) in fields {
        let Some(s) = text(v) else {
            return unprocessable(format!("{k} must be a string"));
        };
        let bad = || unprocessable(format!("invalid {k}: {s:?}"));
        match k.as_str() {
            "name" if valid_name(&s) => name = s,
            "format" => {
                inst.format = match s.as_str() {
                    "binary" => Format::Binary,
                    "json" => Format::Json,
                    _ => return unprocessable(format!("format {s:?}: binary or json")),
                }
            }
            "auto.offset.reset" => match Reset::parse(&s) {
                Some(r) => inst.reset = r,
                None => return bad(),
            },
            "auto.commit.enable" => match s.as_str() {
                "true" => inst.auto_commit = true,
                "false" => inst.auto_commit = false,
                _ => return bad(),
            },
            "fetch.min.bytes" => match s.parse::<u64>() {
                Ok(n) if n <= MAX_READ_BYTES as u64 => inst.fetch_min_bytes = n,
                _ => return bad(),
            },
            "consumer.request.timeout.ms" => match s.parse::<u64>() {
                Ok(n) if n <= crate::rest::MAX_WAIT.as_millis() as u64 => {
                    inst.request_timeout_ms = n
                }
                _ => return bad(),
            },
            _ => return bad(),
        }
    }
    if !valid_name(group) {
        return unprocessable("group names here are letters, digits, '.', '_' and '-'");
    }
    match store(c, group, &name, None, Some(&inst)).await {
        Ok(true) => ok(json!({
            "instance_id": name,
            "base_uri": format!("{}/consumers/{group}/instances/{name}", c.base),
        })),
        Ok(false) => conflict(
            40902,
            format!("consumer instance {name} already exists in group {group}"),
        ),
        Err(a) => a,
    }
}

/// Reads, changes with `f`, and swaps back the instance: 204, or `f`'s
/// error. A lost swap runs again on the new state.
async fn edit<W: Shards>(
    c: &Caller<W>,
    group: &str,
    name: &str,
    mut f: impl FnMut(&mut Instance) -> Result<(), Answer>,
) -> Answer {
    answer(
        async {
            for _ in 0..ATTEMPTS {
                let (raw, mut inst, _) = loaded(c, group, name).await?;
                f(&mut inst)?;
                inst.used_ms = now_ms();
                if store(c, group, name, Some(raw), Some(&inst)).await? {
                    return Ok(no_content());
                }
            }
            Err(busy())
        }
        .await,
    )
}

fn busy() -> Answer {
    conflict(
        40901,
        "the instance kept changing under this request; retry",
    )
}

/// `DELETE /consumers/{group}/instances/{name}`: commits its positions
/// first when it auto-commits, as a closing Kafka consumer does.
async fn delete<W: Shards>(c: &Caller<W>, group: &str, name: &str) -> Answer {
    answer(
        async {
            for _ in 0..ATTEMPTS {
                let (raw, inst, _) = loaded(c, group, name).await?;
                if inst.auto_commit {
                    auto_commit(c, group, &inst.positions, &inst.committed).await?;
                }
                if store(c, group, name, Some(raw), None).await? {
                    return Ok(no_content());
                }
            }
            Err(busy())
        }
        .await,
    )
}

async fn auto_commit<W: Shards>(
    c: &Caller<W>,
    group: &str,
    positions: &[Pos],
    committed: &[Pos],
) -> Result<(), Answer> {
    let changed: Vec<(String, i32, i64)> = positions
        .iter()
        .filter(|p| !committed.contains(p))
        .map(|p| (p.topic.clone(), p.partition, p.offset))
        .collect();
    commit(c, group, changed).await
}

async fn subscribe<W: Shards>(c: &Caller<W>, group: &str, name: &str, body: &Value) -> Answer {
    let topics: Option<Vec<String>> = match body.get("topics") {
        None | Some(Value::Null) => None,
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(t) => Some(t),
            Err(_) => return unprocessable("topics is a list of names"),
        },
    };
    let pattern = match body.get("topic_pattern") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) if full_match(p).is_some() => Some(p.clone()),
        Some(_) => return unprocessable("topic_pattern is a regular expression"),
    };
    if body
        .as_object()
        .is_some_and(|o| o.keys().any(|k| k != "topics" && k != "topic_pattern"))
    {
        return unprocessable("a subscription has topics or a topic_pattern");
    }
    match (&topics, &pattern) {
        (Some(_), Some(_)) => {
            return conflict(40902, "topics and topic_pattern are mutually exclusive")
        }
        (None, None) => return unprocessable("a subscription needs topics or a topic_pattern"),
        (Some(t), None) if t.is_empty() => return unprocessable("topics is empty"),
        _ => {}
    }
    edit(c, group, name, |i| {
        if i.assigned.is_some() {
            return Err(conflict(
                40903,
                "subscription and assignment are mutually exclusive",
            ));
        }
        i.topics = topics.clone().unwrap_or_default();
        i.pattern = pattern.clone();
        Ok(())
    })
    .await
}

async fn subscription<W: Shards>(c: &Caller<W>, group: &str, name: &str) -> Answer {
    let (_, inst, _) = match loaded(c, group, name).await {
        Ok(l) => l,
        Err(a) => return a,
    };
    let mut topics = inst.topics.clone();
    if inst.pattern.is_some() {
        match c.worker.topics(&c.tenant).await {
            Ok(all) => topics.extend(
                all.into_iter()
                    .filter(|t| inst.subscribes(&t.name))
                    .map(|t| t.name),
            ),
            Err(e) => return worker_error(&e),
        }
    }
    ok(json!({ "topics": topics }))
}

async fn assignments<W: Shards>(c: &Caller<W>, group: &str, name: &str) -> Answer {
    let (_, inst, all) = match loaded(c, group, name).await {
        Ok(l) => l,
        Err(a) => return a,
    };
    let topics = match c.worker.topics(&c.tenant).await {
        Ok(t) => t,
        Err(e) => return worker_error(&e),
    };
    let mine = assignment(name, &inst, &all, &topics, now_ms());
    let list: Vec<Value> = mine
        .iter()
        .map(|(t, p)| json!({"topic": t, "partition": p}))
        .collect();
    ok(json!({ "partitions": list }))
}

fn partitions_of(body: &Value) -> Result<Vec<Tp>, Answer> {
    match body.get("partitions").cloned().map(serde_json::from_value) {
        Some(Ok(t)) => Ok(t),
        _ => Err(unprocessable(
            "partitions is a list of {\"topic\", \"partition\"}",
        )),
    }
}

fn offsets_of(body: &Value) -> Result<Vec<Pos>, Answer> {
    match body
        .get("offsets")
        .cloned()
        .map(serde_json::from_value::<Vec<Pos>>)
    {
        Some(Ok(o)) if o.iter().all(|p| p.offset >= 0) => Ok(o),
        _ => Err(unprocessable(
            "offsets is a list of {\"topic\", \"partition\", \"offset\" (at least 0)}",
        )),
    }
}

/// The instance's current partitions, for checks against them.
async fn current<W: Shards>(
    c: &Caller<W>,
    name: &str,
    inst: &Instance,
    all: &[(String, Instance)],
) -> Result<Vec<(String, i32)>, Answer> {
    let topics = c
        .worker
        .topics(&c.tenant)
        .await
        .map_err(|e| worker_error(&e))?;
    Ok(assignment(name, inst, all, &topics, now_ms()))
}

fn unassigned(topic: &str, partition: i32) -> Answer {
    conflict(
        40903,
        format!("{topic}-{partition} is not assigned to this instance"),
    )
}

/// `POST .../positions`: the next offsets to read (Kafka's seek).
async fn seek<W: Shards>(c: &Caller<W>, group: &str, name: &str, body: &Value) -> Answer {
    answer(
        async {
            let wanted = offsets_of(body)?;
            for _ in 0..ATTEMPTS {
                let (raw, mut inst, all) = loaded(c, group, name).await?;
                let mine = current(c, name, &inst, &all).await?;
                for p in &wanted {
                    if !mine.iter().any(|(t, q)| *t == p.topic && *q == p.partition) {
                        return Err(unassigned(&p.topic, p.partition));
                    }
                    inst.set_position(&p.topic, p.partition, p.offset);
                }
                inst.used_ms = now_ms();
                if store(c, group, name, Some(raw), Some(&inst)).await? {
                    return Ok(no_content());
                }
            }
            Err(busy())
        }
        .await,
    )
}

/// `POST .../positions/beginning|end`.
async fn seek_to<W: Shards>(
    c: &Caller<W>,
    group: &str,
    name: &str,
    body: &Value,
    beginning: bool,
) -> Answer {
    let tps = match partitions_of(body) {
        Ok(t) => t,
        Err(a) => return a,
    };
    let reset = if beginning {
        Reset::Earliest
    } else {
        Reset::Latest
    };
    let parts: Vec<(String, i32)> = tps.iter().map(|t| (t.topic.clone(), t.partition)).collect();
    let offsets = match start_offsets(c, None, &parts, reset).await {
        Ok(o) => o,
        Err(a) => return a,
    };
    let wanted = parts
        .into_iter()
        .zip(offsets)
        .map(|((topic, partition), offset)| Pos {
            topic,
            partition,
            offset,
        })
        .collect::<Vec<_>>();
    seek(c, group, name, &json!({ "offsets": wanted })).await
}

/// `POST .../offsets`: commits the given offsets (each the last record
/// processed, so the group resumes after it, as Confluent's proxy does),
/// or with no body every position the instance has read to.
async fn commit_offsets<W: Shards>(c: &Caller<W>, group: &str, name: &str, body: &Value) -> Answer {
    let (_, inst, _) = match loaded(c, group, name).await {
        Ok(l) => l,
        Err(a) => return a,
    };
    let next: Vec<(String, i32, i64)> = if body.is_null() {
        inst.positions
            .iter()
            .map(|p| (p.topic.clone(), p.partition, p.offset))
            .collect()
    } else {
        let after = offsets_of(body).and_then(|o| {
            o.into_iter()
                .map(|p| Some((p.topic, p.partition, p.offset.checked_add(1)?)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| unprocessable("an offset to commit must be below 2^63 - 1"))
        });
        match after {
            Ok(o) => o,
            Err(a) => return a,
        }
    };
    match commit(c, group, next).await {
        Ok(()) => no_content(),
        Err(a) => a,
    }
}

/// `GET .../offsets`: the group's committed offsets of the named
/// partitions (or of the instance's own).
async fn committed<W: Shards>(c: &Caller<W>, group: &str, name: &str, body: &Value) -> Answer {
    let (_, inst, all) = match loaded(c, group, name).await {
        Ok(l) => l,
        Err(a) => return a,
    };
    let parts: Vec<(String, i32)> = if body.is_null() {
        match current(c, name, &inst, &all).await {
            Ok(m) => m,
            Err(a) => return a,
        }
    } else {
        match partitions_of(body) {
            Ok(t) => t.into_iter().map(|t| (t.topic, t.partition)).collect(),
            Err(a) => return a,
        }
    };
    if parts.is_empty() {
        return ok(json!({ "offsets": [] }));
    }
    let found = match c
        .worker
        .committed(&c.tenant, group, Some(parts), false)
        .await
    {
        Ok(f) => f,
        Err(e) => return worker_error(&e),
    };
    let mut list = Vec::new();
    for (topic, partition, r) in found {
        match r {
            Ok(Some(done)) => list.push(json!({
                "topic": topic, "partition": partition,
                "offset": done.offset, "metadata": done.metadata,
            })),
            Ok(None) => {}
            Err(e) => return worker_error(&e),
        }
    }
    ok(json!({ "offsets": list }))
}

/// `GET .../records?timeout=&max_bytes=`.
async fn records_of<W: Shards>(
    c: &Caller<W>,
    group: &str,
    name: &str,
    query: &str,
    accept: &str,
) -> Reply {
    let (mut timeout, mut max_bytes) = (-1i64, (1 << 20) as i64);
    if let Err(a) = query_numbers(
        query,
        &mut [("timeout", &mut timeout), ("max_bytes", &mut max_bytes)],
    ) {
        return reply(a, V2);
    }
    let max_bytes = (max_bytes as usize).clamp(1, MAX_READ_BYTES);
    let read = async {
        for _ in 0..ATTEMPTS {
            let (raw, mut inst, all) = loaded(c, group, name).await?;
            let ctype = match (inst.format, accepts(accept)) {
                (Format::Binary, Some(None | Some(Format::Binary))) => BINARY,
                (Format::Json, Some(None | Some(Format::Json))) => JSON,
                _ => {
                    let m = format!(
                        "this instance's records are {}; Accept that type",
                        if inst.format == Format::Json {
                            JSON
                        } else {
                            BINARY
                        }
                    );
                    return Err(coded(StatusCode::NOT_ACCEPTABLE, 40601, None, m));
                }
            };
            let wait = u64::try_from(timeout).unwrap_or(inst.request_timeout_ms);
            let (list, served) = fetch(c, group, name, &mut inst, &all, max_bytes, wait).await?;
            inst.used_ms = now_ms();
            if store(c, group, name, Some(raw), Some(&inst)).await? {
                c.served(served).await;
                return Ok((ctype, Bytes::from(Value::Array(list).to_string())));
            }
        }
        Err(busy())
    };
    match read.await {
        Ok((ctype, body)) => reply((StatusCode::OK, body), ctype),
        Err(a) => reply(a, V2),
    }
}

/// What an Accept header asks for: `Some(None)` for any format, `None`
/// for nothing this API serves.
fn accepts(accept: &str) -> Option<Option<Format>> {
    let types: Vec<&str> = accept
        .split(',')
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .collect();
    if accept.trim().is_empty()
        || types
            .iter()
            .any(|t| matches!(*t, "*/*" | "application/*" | "application/json" | V2))
    {
        return Some(None);
    }
    if types.contains(&BINARY) {
        return Some(Some(Format::Binary));
    }
    if types.contains(&JSON) {
        return Some(Some(Format::Json));
    }
    None
}

/// One records request on the instance's state: settles its partitions
/// and their positions, auto-commits what earlier requests returned, and
/// reads. Advances `inst`'s positions; the caller stores them.
async fn fetch<W: Shards>(
    c: &Caller<W>,
    group: &str,
    name: &str,
    inst: &mut Instance,
    all: &[(String, Instance)],
    max_bytes: usize,
    wait_ms: u64,
) -> Result<(Vec<Value>, u64), Answer> {
    let mine = current(c, name, inst, all).await?;
    inst.positions
        .retain(|p| mine.iter().any(|(t, q)| *t == p.topic && *q == p.partition));
    let missing: Vec<(String, i32)> = mine
        .iter()
        .filter(|(t, p)| inst.position(t, *p).is_none())
        .cloned()
        .collect();
    let starts = start_offsets(c, Some(group), &missing, inst.reset).await?;
    for ((t, p), o) in missing.iter().zip(starts) {
        inst.set_position(t, *p, o);
    }
    if inst.auto_commit {
        auto_commit(c, group, &inst.positions, &inst.committed).await?;
        inst.committed = inst.positions.clone();
    }
    let wants: Vec<Want> = inst
        .positions
        .iter()
        .map(|p| Want {
            topic: p.topic.clone(),
            partition: p.partition,
            offset: p.offset,
        })
        .collect();
    let wait = Duration::from_millis(wait_ms);
    let min = inst.fetch_min_bytes as usize;
    let reads = poll(c, &wants, max_bytes, min, wait).await;
    let mut out = Vec::new();
    let mut served = 0u64;
    for (w, read) in wants.iter().zip(reads) {
        let read = match read {
            Ok(r) => r,
            Err(WorkerError::OffsetOutOfRange { .. }) if inst.reset != Reset::None => {
                // Kafka's auto.offset.reset: out of range starts over.
                let at =
                    start_offsets(c, None, &[(w.topic.clone(), w.partition)], inst.reset).await?;
                inst.set_position(&w.topic, w.partition, at[0]);
                continue;
            }
            Err(e) => return Err(worker_error(&e)),
        };
        served += served_bytes(&read);
        let decoded = decode(&read, w.offset)
            .map_err(|m| error(StatusCode::INTERNAL_SERVER_ERROR, None, m))?;
        let json_data = inst.format == Format::Json;
        for r in &decoded.records {
            let mut v = record_json(r, json_data).map_err(unprocessable)?;
            v["topic"] = w.topic.clone().into();
            v["partition"] = w.partition.into();
            out.push(v);
        }
        inst.set_position(&w.topic, w.partition, decoded.next);
    }
    Ok((out, served))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn instance(topics: &[&str], used_ms: i64) -> Instance {
        Instance {
            format: Format::Binary,
            reset: Reset::Earliest,
            auto_commit: false,
            request_timeout_ms: 0,
            fetch_min_bytes: 1,
            used_ms,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            pattern: None,
            assigned: None,
            positions: Vec::new(),
            committed: Vec::new(),
        }
    }

    fn topic(name: &str, partitions: u64) -> TopicMeta {
        TopicMeta {
            name: name.into(),
            id: 1,
            streams: (0..partitions).collect(),
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn live_instances_split_each_topic_and_the_dead_drop_out() {
        let now = 1_000_000;
        let topics = [topic("a", 4), topic("b", 1)];
        let all = vec![
            ("x".to_string(), instance(&["a", "b"], now)),
            ("y".to_string(), instance(&["a"], now)),
            ("z".to_string(), instance(&["a"], 0)),
        ];
        let x = assignment("x", &all[0].1, &all, &topics, now);
        let y = assignment("y", &all[1].1, &all, &topics, now);
        let a = |p| ("a".to_string(), p);
        assert_eq!(x, vec![a(0), a(2), ("b".to_string(), 0)]);
        assert_eq!(y, vec![a(1), a(3)]);
        // Every partition once: z has been idle past the timeout.
        let mut pattern = instance(&[], now);
        pattern.pattern = Some("b|c".into());
        assert!(pattern.subscribes("b") && !pattern.subscribes("bb"));
    }

    #[test]
    fn accept_headers_pick_the_format() {
        assert_eq!(accepts(""), Some(None));
        assert_eq!(accepts(BINARY), Some(Some(Format::Binary)));
        assert_eq!(accepts(&format!("{JSON}; q=1")), Some(Some(Format::Json)));
        assert_eq!(accepts("text/html"), None);
    }
}
