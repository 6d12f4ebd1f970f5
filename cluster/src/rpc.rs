//! The gateway ↔ worker RPC: [`floe_worker::Shards`] as messages.
//!
//! A gateway opens one bidirectional QUIC stream per shard it talks to (a
//! *lane*), so the requests of every client connection to that shard arrive
//! in the order sent. Frames both ways are `u32` length, then the body:
//!
//! - request: `u64` id, then a MessagePack [`Request`];
//! - answer: `u64` id, a kind byte, then MessagePack: the call's value
//!   ([`DONE`]), a [`WorkerError`] ([`FAILED`]), a [`Moved`] ([`MOVED`]:
//!   this worker does not own the shard), or a `u64` ([`CHANGED`]: a
//!   subscription's durable counter, sent again whenever it moves).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use floe_common::batch::BatchHeader;
use floe_common::TenantId;
use floe_worker::{quota, ConfigChange, Join, MemberRef, NewTopic, OffsetCommit, WorkerError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const DONE: u8 = 0;
pub const FAILED: u8 = 1;
pub const MOVED: u8 = 2;
pub const CHANGED: u8 = 3;

/// Frames above this close the stream: a request is at most the Kafka
/// listener's `--max-request-bytes` (100 MiB) plus a little.
pub const MAX_FRAME: usize = 128 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub tenant: TenantId,
    pub call: Call,
    /// The caller's span as a W3C `traceparent`, when traces are on: the
    /// worker's spans join the gateway's trace.
    #[serde(default)]
    pub trace: Option<String>,
}

/// The current span's context as a `traceparent`, if it is traced.
pub fn traceparent() -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// A span for serving a call, under the caller's span when it sent one.
pub fn serving_span(tenant: &TenantId, trace: Option<&str>) -> tracing::Span {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::debug_span!("rpc.serve", otel.kind = "server", %tenant);
    if let (Some(tp), false) = (trace, span.is_disabled()) {
        let carrier =
            std::collections::HashMap::from([("traceparent".to_string(), tp.to_string())]);
        let parent =
            opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(parent);
    }
    span
}

/// Where to ask instead; `None` when the worker knows no better (it is
/// leaving, or the shard is between owners): route again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Moved {
    pub addr: Option<String>,
}

/// One variant per [`floe_worker::Shards`] method, arguments owned.
#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    Topics,
    CreateTopic(NewTopic),
    DeleteTopic(String),
    CreatePartitions {
        name: String,
        total: usize,
        validate_only: bool,
    },
    AlterConfigs {
        name: String,
        change: ConfigChange,
        validate_only: bool,
    },
    Produce {
        topic: String,
        partition: i32,
        batches: Vec<(BatchHeader, Bytes)>,
    },
    Fetch {
        topic: String,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        committed: bool,
    },
    ListOffset {
        topic: String,
        partition: i32,
        timestamp: i64,
        committed: bool,
    },
    DeleteRecords {
        topic: String,
        partition: i32,
        offset: i64,
    },
    InitProducerId {
        transactional_id: Option<String>,
        timeout_ms: i32,
        current: Option<(i64, i16)>,
    },
    AddPartitionsToTxn {
        transactional_id: String,
        producer: (i64, i16),
        partitions: Vec<(String, i32)>,
    },
    AddOffsetsToTxn {
        transactional_id: String,
        producer: (i64, i16),
        group: String,
    },
    TxnOffsetCommit {
        transactional_id: String,
        producer: (i64, i16),
        group: String,
        member: MemberRef,
        offsets: Vec<OffsetCommit>,
    },
    EndTxn {
        transactional_id: String,
        producer: (i64, i16),
        commit: bool,
    },
    Transactions,
    DescribeProducers {
        topic: String,
        partition: i32,
    },
    Charge(quota::Usage),
    Usage {
        from: i64,
        to: i64,
    },
    DeleteTenant,
    LeaderEpoch,
    CommitOffsets {
        group: String,
        member: MemberRef,
        offsets: Vec<OffsetCommit>,
    },
    Committed {
        group: String,
        partitions: Option<Vec<(String, i32)>>,
        require_stable: bool,
    },
    JoinGroup {
        group: String,
        join: Join,
    },
    SyncGroup {
        group: String,
        member: MemberRef,
        assignments: Vec<(String, Bytes)>,
    },
    Heartbeat {
        group: String,
        member: MemberRef,
    },
    LeaveGroup {
        group: String,
        members: Vec<(String, Option<String>)>,
    },
    DeleteGroups(Vec<String>),
    DeleteOffsets {
        group: String,
        partitions: Vec<(String, i32)>,
    },
    ListGroups,
    DescribeGroup(String),
    Instances(String),
    SwapInstance {
        group: String,
        name: String,
        expect: Option<Bytes>,
        new: Option<Bytes>,
    },
    DeployTransform {
        spec: floe_worker::transforms::TransformSpec,
        wasm: Bytes,
    },
    Transforms,
    DeleteTransform(String),
    CreateConnector {
        spec: floe_worker::connectors::ConnectorSpec,
        wasm: Bytes,
    },
    Connectors,
    PauseConnector {
        name: String,
        paused: bool,
    },
    DeleteConnector(String),
    /// Answered with [`CHANGED`] frames until the stream ends.
    Subscribe,
}

impl Call {
    /// Whether the call is work that keeps a shard loaded: anything that
    /// writes (produce, commits, groups joining, transactions, catalog
    /// changes). Reads, heartbeats and metering are not: idle consumers
    /// must not keep a shard loaded (DESIGN.md invariant 6).
    pub fn is_work(&self) -> bool {
        !matches!(
            self,
            Call::Topics
                | Call::Fetch { .. }
                | Call::ListOffset { .. }
                | Call::Transactions
                | Call::DescribeProducers { .. }
                | Call::Charge(_)
                | Call::Usage { .. }
                | Call::LeaderEpoch
                | Call::Committed { .. }
                | Call::Heartbeat { .. }
                | Call::ListGroups
                | Call::DescribeGroup(_)
                | Call::Instances(_)
                | Call::Transforms
                | Call::Connectors
                | Call::Subscribe
        )
    }
}

impl Call {
    /// Calls whose order on a lane matters are served in line by the
    /// worker; every other call runs on its own (a JoinGroup may wait
    /// seconds, and must not hold up the heartbeats behind it).
    pub fn in_order(&self) -> bool {
        matches!(self, Call::Produce { .. })
    }
}

fn encode<T: Serialize>(frame: &mut BytesMut, value: &T) {
    let mut w = frame.writer();
    rmp_serde::encode::write_named(&mut w, value).expect("RPC values serialise");
}

/// A request frame, length prefix included.
pub fn request(id: u64, req: &Request) -> Bytes {
    let mut frame = BytesMut::with_capacity(256);
    frame.put_u32(0);
    frame.put_u64(id);
    encode(&mut frame, req);
    finish(frame)
}

/// An answer frame, length prefix included.
pub fn answer<T: Serialize>(id: u64, kind: u8, value: &T) -> Bytes {
    let mut frame = BytesMut::with_capacity(256);
    frame.put_u32(0);
    frame.put_u64(id);
    frame.put_u8(kind);
    encode(&mut frame, value);
    finish(frame)
}

/// A call's outcome as an answer frame.
pub fn outcome<T: Serialize>(id: u64, r: &Result<T, WorkerError>) -> Bytes {
    match r {
        Ok(v) => answer(id, DONE, v),
        Err(e) => answer(id, FAILED, e),
    }
}

fn finish(mut frame: BytesMut) -> Bytes {
    let len = u32::try_from(frame.len() - 4).expect("frames are under 4 GiB");
    frame[..4].copy_from_slice(&len.to_be_bytes());
    frame.freeze()
}

/// The next frame's body (after the length), or `None` at a clean end.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(8..=MAX_FRAME).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("an RPC frame of {len} bytes"),
        ));
    }
    let mut body = BytesMut::zeroed(len);
    r.read_exact(&mut body).await?;
    Ok(Some(body.freeze()))
}

/// Splits a request body into its id and request.
pub fn parse_request(mut body: Bytes) -> Result<(u64, Request), String> {
    let id = body.get_u64();
    let req = rmp_serde::from_slice(&body).map_err(|e| e.to_string())?;
    Ok((id, req))
}

/// An answer body: its id, kind, and the value still encoded.
pub fn parse_answer(mut body: Bytes) -> Result<(u64, u8, Bytes), String> {
    if body.len() < 9 {
        return Err("a short answer frame".into());
    }
    let id = body.get_u64();
    let kind = body.get_u8();
    Ok((id, kind, body))
}

/// Decodes an answer's value as the caller's type.
pub fn value<T: DeserializeOwned>(kind: u8, body: &[u8]) -> Result<T, WorkerError> {
    let bad = |e: rmp_serde::decode::Error| {
        WorkerError::Unavailable(format!("an undecodable answer from the worker: {e}"))
    };
    match kind {
        DONE => rmp_serde::from_slice(body).map_err(bad),
        FAILED => Err(rmp_serde::from_slice(body).map_err(bad)?),
        k => Err(WorkerError::Unavailable(format!(
            "an answer of unexpected kind {k}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_and_its_answers_round_trip() {
        let tenant = TenantId::new("acme").expect("valid");
        let req = Request {
            trace: None,
            tenant: tenant.clone(),
            call: Call::SwapInstance {
                group: "g".into(),
                name: "i".into(),
                expect: None,
                new: Some(Bytes::from_static(b"{}")),
            },
        };
        let frame = request(7, &req);
        assert_eq!(
            u32::from_be_bytes(frame[..4].try_into().expect("4")) as usize,
            frame.len() - 4
        );
        let (id, back) = parse_request(frame.slice(4..)).expect("parses");
        assert_eq!(id, 7);
        assert_eq!(back.tenant, tenant);
        assert!(
            matches!(back.call, Call::SwapInstance { new: Some(ref b), .. } if &b[..] == b"{}")
        );

        let ok: Result<(i64, i16), WorkerError> = Ok((5, 1));
        let (id, kind, body) = parse_answer(outcome(9, &ok).slice(4..)).expect("parses");
        assert_eq!((id, kind), (9, DONE));
        assert_eq!(value::<(i64, i16)>(kind, &body), Ok((5, 1)));
        let err: Result<(i64, i16), WorkerError> = Err(WorkerError::OffsetOutOfRange {
            log_start: 1,
            high_watermark: 2,
        });
        let (_, kind, body) = parse_answer(outcome(9, &err).slice(4..)).expect("parses");
        assert_eq!(value::<(i64, i16)>(kind, &body), err);
    }

    #[test]
    fn a_tenant_id_that_is_not_one_is_refused() {
        #[derive(Serialize)]
        struct Forged {
            tenant: &'static str,
            call: &'static str,
        }
        let mut frame = BytesMut::new();
        frame.put_u64(1);
        encode(
            &mut frame,
            &Forged {
                tenant: "../other",
                call: "Topics",
            },
        );
        assert!(parse_request(frame.freeze()).is_err());
    }
}
