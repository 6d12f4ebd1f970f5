//! Stateless reads: where the caller keeps its own position.
//!
//! - `GET /v1/topics/{t}/partitions/{p}/records?offset=&max_bytes=&timeout_ms=`:
//!   records from `offset`, long-polling up to `timeout_ms` for the first.
//! - `GET /v1/topics/{t}/events?offset=|from=&partition=&group=`: the
//!   topic (or one partition) as Server-Sent Events, one `record` event
//!   per record. Each batch of events ends with an `id:` naming every
//!   partition's next offset (`0:12,1:40`), so a reconnecting `EventSource`
//!   resumes exactly there (`Last-Event-ID`). With `group`, it starts at the
//!   group's committed offsets and commits as it goes, at most once a
//!   second, what was sent before the last batch (the stream is asked for
//!   its next batch once the last one is written): at least once, like a
//!   Kafka consumer's auto-commit.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use floe_worker::{Shards, WorkerError};
use futures::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, StatusCode};
use serde_json::json;
use tokio::time::Instant;

use crate::admin::Answer;
use crate::http::Reply;
use crate::rest::{
    decode, error, json_reply, poll, query_numbers, query_pairs, record_json, served_bytes,
    start_offsets, worker_error, Caller, Reset, Want, MAX_READ_BYTES,
};

/// A read's default byte budget.
const READ_BYTES: usize = 1 << 20;
/// How long an event stream waits for records before a keep-alive comment.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often an event stream with a group commits.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// `GET /v1/topics/{topic}/partitions/{p}/records`.
pub async fn read<W: Shards>(c: &Caller<W>, topic: &str, partition: &str, query: &str) -> Answer {
    let Ok(partition) = partition.parse::<i32>() else {
        return error(StatusCode::BAD_REQUEST, None, "partition must be a number");
    };
    let (mut offset, mut max_bytes, mut wait_ms) = (0i64, READ_BYTES as i64, 0i64);
    let slots = &mut [
        ("offset", &mut offset),
        ("max_bytes", &mut max_bytes),
        ("timeout_ms", &mut wait_ms),
    ];
    if let Err(a) = query_numbers(query, slots) {
        return a;
    }
    let want = Want {
        topic: topic.to_string(),
        partition,
        offset,
    };
    let max_bytes = (max_bytes as usize).clamp(1, MAX_READ_BYTES);
    let wait = Duration::from_millis(wait_ms as u64);
    let read = match poll(c, &[want], max_bytes, 1, wait).await.pop() {
        Some(Ok(r)) => r,
        Some(Err(e)) => return worker_error(&e),
        None => return worker_error(&WorkerError::UnknownTopicOrPartition),
    };
    c.served(served_bytes(&read)).await;
    let decoded = match decode(&read, offset) {
        Ok(d) => d,
        Err(m) => return error(StatusCode::INTERNAL_SERVER_ERROR, None, m),
    };
    let mut out = Vec::with_capacity(decoded.records.len());
    for r in &decoded.records {
        match record_json(r, false) {
            Ok(v) => out.push(v),
            Err(m) => return error(StatusCode::INTERNAL_SERVER_ERROR, None, m),
        }
    }
    let body = json!({
        "topic_name": topic, "partition_id": partition,
        "high_watermark": read.high_watermark, "log_start_offset": read.log_start,
        "next_offset": decoded.next, "records": out,
    });
    (StatusCode::OK, Bytes::from(body.to_string()))
}

/// An event stream's parameters.
struct Start {
    offset: Option<i64>,
    reset: Reset,
    partition: Option<i32>,
    group: Option<String>,
}

fn start(query: &str) -> Result<Start, String> {
    let mut s = Start {
        offset: None,
        reset: Reset::Latest,
        partition: None,
        group: None,
    };
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "offset" => match v.parse::<i64>() {
                Ok(o) if o >= 0 => s.offset = Some(o),
                _ => return Err("offset must be a number of at least 0".into()),
            },
            "partition" => match v.parse::<i32>() {
                Ok(p) if p >= 0 => s.partition = Some(p),
                _ => return Err("partition must be a number of at least 0".into()),
            },
            "from" => {
                s.reset = Reset::parse(&v)
                    .filter(|r| *r != Reset::None)
                    .ok_or("from is earliest or latest")?
            }
            "group" if !v.is_empty() => s.group = Some(v),
            _ => return Err(format!("unknown or empty parameter {k}")),
        }
    }
    if s.offset.is_some() && s.group.is_some() {
        return Err("offset and group are exclusive".into());
    }
    Ok(s)
}

/// `Last-Event-ID`'s positions: `partition:offset,...`.
fn resume(id: &str) -> Option<Vec<(i32, i64)>> {
    id.split(',')
        .map(|pair| {
            let (p, o) = pair.split_once(':')?;
            Some((p.trim().parse().ok()?, o.trim().parse().ok()?))
        })
        .collect()
}

/// `GET /v1/topics/{topic}/events`.
pub async fn stream<W: Shards>(
    c: &Caller<W>,
    req: &Request<Incoming>,
    topic: &str,
    query: &str,
) -> Reply {
    let s = match start(query) {
        Ok(s) => s,
        Err(m) => return json_reply(error(StatusCode::BAD_REQUEST, None, m)),
    };
    // A stream is a connection held open, like a Kafka consumer's: it
    // counts in the tenant's `connections` quota while it lasts.
    let slot = match c.connections.take(&c.tenant, c.connection_quota) {
        Ok(slot) => slot,
        Err(open) => {
            let m = format!(
                "connection quota reached: tenant {} already has {open} connections and \
                 event streams here, as many as its quota allows",
                c.tenant
            );
            // Room comes only when a stream or connection ends.
            let mut r = json_reply(error(StatusCode::TOO_MANY_REQUESTS, None, m));
            r.headers_mut().insert("retry-after", 5u64.into());
            return r;
        }
    };
    let meta = match c.worker.topics(&c.tenant).await {
        Ok(all) => all.into_iter().find(|t| t.name == topic),
        Err(e) => return json_reply(worker_error(&e)),
    };
    let Some(meta) = meta else {
        return json_reply(worker_error(&WorkerError::UnknownTopicOrPartition));
    };
    let count = meta.streams.len() as i32;
    let parts: Vec<(String, i32)> = match s.partition {
        Some(p) if p >= count => {
            return json_reply(worker_error(&WorkerError::UnknownTopicOrPartition))
        }
        Some(p) => vec![(topic.to_string(), p)],
        None => (0..count).map(|p| (topic.to_string(), p)).collect(),
    };
    let mut offsets = match s.offset {
        Some(o) => vec![o; parts.len()],
        None => match start_offsets(c, s.group.as_deref(), &parts, s.reset).await {
            Ok(o) => o,
            Err(a) => return json_reply(a),
        },
    };
    let last_id = req
        .headers()
        .get("last-event-id")
        .and_then(|h| h.to_str().ok());
    if let Some(id) = last_id {
        let Some(seen) = resume(id) else {
            let m = "Last-Event-ID is partition:offset,...";
            return json_reply(error(StatusCode::BAD_REQUEST, None, m));
        };
        for (p, o) in seen {
            if let Some(i) = parts.iter().position(|(_, q)| *q == p) {
                offsets[i] = o;
            }
        }
    }
    let wants: Vec<Want> = parts
        .into_iter()
        .zip(offsets)
        .map(|((topic, partition), offset)| Want {
            topic,
            partition,
            offset,
        })
        .collect();
    let tail = Tail {
        c: c.clone(),
        committed: wants.iter().map(|w| w.offset).collect(),
        sent: wants.iter().map(|w| w.offset).collect(),
        wants,
        group: s.group,
        last_commit: Instant::now(),
        done: false,
        wait: std::time::Duration::ZERO,
        _slot: slot,
    };
    let events = stream::unfold(tail, |mut t| async move {
        let chunk = t.next().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), t))
    });
    let mut r = Reply::new(StreamBody::new(events).boxed_unsync());
    let h = r.headers_mut();
    h.insert("content-type", "text/event-stream".parse().expect("valid"));
    h.insert("cache-control", "no-cache".parse().expect("valid"));
    r
}

/// `f`'s output, or `None` once the process is stopping: a shutdown ends
/// an event stream (the client resumes from its last id elsewhere) rather
/// than hold the drain for a keep-alive or a throttle.
async fn unless_stopped<T>(
    stop: &tokio::sync::watch::Receiver<bool>,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    let mut stop = stop.clone();
    tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => None,
        r = f => Some(r),
    }
}

/// An event stream's position.
struct Tail<W> {
    c: Caller<W>,
    wants: Vec<Want>,
    /// Offsets last committed for the group.
    committed: Vec<i64>,
    /// Offsets before the batch last sent: what the group may commit.
    sent: Vec<i64>,
    group: Option<String>,
    last_commit: Instant,
    done: bool,
    /// How long the tenant must wait before it is served more.
    wait: std::time::Duration,
    /// Its place among the tenant's connections, until the stream ends.
    _slot: crate::kafka::slots::Slot,
}

impl<W: Shards> Tail<W> {
    /// The next chunk of the stream; `None` ends it.
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        // Over its fetch rate: wait, a keep-alive at a time, and not
        // through a shutdown.
        if !self.wait.is_zero() {
            let nap = self.wait.min(KEEPALIVE);
            self.wait -= nap;
            unless_stopped(&self.c.stop, tokio::time::sleep(nap)).await?;
            if !self.wait.is_zero() {
                return Some(Bytes::from_static(b": keep-alive\n\n"));
            }
        }
        if let Err(a) = self.commit().await {
            return Some(self.fail(&a));
        }
        self.sent = self.wants.iter().map(|w| w.offset).collect();
        let polled = poll(&self.c, &self.wants, READ_BYTES, 1, KEEPALIVE);
        let reads = unless_stopped(&self.c.stop, polled).await?;
        let mut out = String::new();
        let mut served = 0u64;
        for (w, read) in self.wants.iter_mut().zip(reads) {
            let read = match read {
                Ok(r) => r,
                // Deleted, or out of range after retention: the client
                // decides where to go on.
                Err(e) => return Some(self.fail(&worker_error(&e))),
            };
            served += served_bytes(&read);
            let decoded = match decode(&read, w.offset) {
                Ok(d) => d,
                Err(m) => {
                    return Some(self.fail(&error(StatusCode::INTERNAL_SERVER_ERROR, None, m)))
                }
            };
            for r in &decoded.records {
                let Ok(mut v) = record_json(r, false) else {
                    continue;
                };
                v["topic"] = w.topic.clone().into();
                v["partition"] = w.partition.into();
                out.push_str("event: record\ndata: ");
                out.push_str(&v.to_string());
                out.push_str("\n\n");
            }
            w.offset = decoded.next;
        }
        if served > 0 {
            // Over its fetch rate, the stream slows to it.
            self.wait = self.c.served(served).await;
        }
        if out.is_empty() {
            return Some(Bytes::from_static(b": keep-alive\n\n"));
        }
        // The id closes the batch: a client resuming from it skips exactly
        // what it received.
        let ids: Vec<String> = self
            .wants
            .iter()
            .map(|w| format!("{}:{}", w.partition, w.offset))
            .collect();
        out.truncate(out.len() - 1);
        out.push_str(&format!("id: {}\n\n", ids.join(",")));
        Some(Bytes::from(out))
    }

    async fn commit(&mut self) -> Result<(), Answer> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        if self.last_commit.elapsed() < COMMIT_EVERY {
            return Ok(());
        }
        let changed: Vec<(String, i32, i64)> = self
            .wants
            .iter()
            .zip(self.sent.iter().zip(&self.committed))
            .filter(|(_, (sent, done))| sent != done)
            .map(|(w, (sent, _))| (w.topic.clone(), w.partition, *sent))
            .collect();
        crate::rest::commit(&self.c, group, changed).await?;
        self.committed.clone_from(&self.sent);
        self.last_commit = Instant::now();
        Ok(())
    }

    /// An `error` event, and the end of the stream.
    fn fail(&mut self, a: &Answer) -> Bytes {
        self.done = true;
        let data = String::from_utf8_lossy(&a.1);
        Bytes::from(format!("event: error\ndata: {data}\n\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_ids_round_trip() {
        assert_eq!(resume("0:12,1:40"), Some(vec![(0, 12), (1, 40)]));
        assert_eq!(resume("0:12,x"), None);
        assert_eq!(resume(""), None);
    }
}
