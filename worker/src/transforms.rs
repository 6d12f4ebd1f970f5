//! Tenants' Wasm transforms: what is deployed, where it is, and the records
//! crossing the Wasm boundary. The runner is `local/transform.rs`.
//!
//! Everything is a metadata key of the shard's log:
//! - `w/d/{name}`: the deployment ([`Deployed`]); the component's bytes are
//!   an object at [`wasm_path`], named by their SHA-256;
//! - `w/p/{name}/{partition}`: [`Progress`] through one input partition;
//! - `w/s/{name}/{key}`: the guest's state (`floe:plugin/state`);
//! - `w/e/{name}`: the last failure ([`LastError`]).
//!
//! A batch's output records, its progress and its state writes are one log
//! append, so they land in one object or not at all: after a crash the
//! runner resumes at the durable progress with the durable state, and each
//! input record is in the outputs exactly once.

use bytes::{Bytes, BytesMut};
use floe_common::TenantId;
use floe_runtime::{Header, InputRecord, OutputRecord};
use kafka_protocol::records::Record;

pub use crate::records::{encode_batch, Out};

/// The header a dead-lettered record carries: why its batch failed.
pub const ERROR_HEADER: &str = "floe-error";
/// The most transforms one tenant may deploy.
pub const MAX_TRANSFORMS: usize = 64;
/// The largest component accepted: room for an interpreter (a
/// componentize-py guest carries CPython, about 18 MB).
pub const MAX_WASM_BYTES: usize = 32 << 20;

/// What a tenant deploys.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    pub name: String,
    pub input: String,
    /// 1 to 8 topics; a record's `output` indexes this list.
    pub outputs: Vec<String>,
    #[serde(default)]
    pub config: Vec<(String, String)>,
    /// Where failed batches go; `{name}-dlq` (created with one partition if
    /// missing) when not given.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Start at the input's earliest offsets rather than its end.
    #[serde(default)]
    pub from_start: bool,
}

/// A deployment as stored at `w/d/{name}`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Deployed {
    pub spec: TransformSpec,
    /// The dead-letter topic, resolved.
    pub dead_letter: String,
    /// SHA-256 of the component, hex.
    pub digest: String,
    pub deployed_ms: i64,
    /// Bumped by every deploy of the name: a runner of an older one stops.
    pub generation: u64,
}

/// How far a transform is through one input partition, and what it did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// The next input offset to process.
    pub offset: i64,
    pub records_in: u64,
    pub records_out: u64,
    /// Input records sent to the dead-letter topic.
    pub errors: u64,
    pub fuel: u64,
}

/// The last batch that failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastError {
    pub at_ms: i64,
    pub partition: i32,
    /// The failed batch's first input offset.
    pub offset: i64,
    /// error, trap, fuel, deadline, memory or outputs.
    pub kind: String,
    pub message: String,
}

/// A transform as `GET /v1/transforms` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TransformStatus {
    pub name: String,
    pub input: String,
    pub outputs: Vec<String>,
    pub dead_letter: String,
    pub config: Vec<(String, String)>,
    pub digest: String,
    pub deployed_ms: i64,
    /// running, or stopped with a reason (init failed, input deleted...).
    pub state: String,
    /// Input records not processed yet, over all partitions.
    pub lag: i64,
    pub records_in: u64,
    pub records_out: u64,
    pub errors: u64,
    pub fuel: u64,
    pub last_error: Option<LastError>,
}

pub fn deployed_key(name: &str) -> Bytes {
    Bytes::from(format!("w/d/{name}"))
}

pub const DEPLOYED_PREFIX: &[u8] = b"w/d/";

pub fn progress_prefix(name: &str) -> Bytes {
    Bytes::from(format!("w/p/{name}/"))
}

pub fn progress_key(name: &str, partition: i32) -> Bytes {
    Bytes::from(format!("w/p/{name}/{partition}"))
}

pub fn state_prefix(name: &str) -> Bytes {
    Bytes::from(format!("w/s/{name}/"))
}

pub fn state_key(name: &str, key: &[u8]) -> Bytes {
    let mut k = BytesMut::from(&state_prefix(name)[..]);
    k.extend_from_slice(key);
    k.freeze()
}

pub fn error_key(name: &str) -> Bytes {
    Bytes::from(format!("w/e/{name}"))
}

/// Where a component's bytes live: beside the tenant's shards (so deleting
/// the tenant deletes them), named by content.
pub fn wasm_path(tenant: &TenantId, digest: &str) -> object_store::path::Path {
    object_store::path::Path::from(format!(
        "{}/wasm/{digest}",
        floe_common::shards_prefix(tenant)
    ))
}

pub fn encode<T: serde::Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("transform metadata serializes"))
}

pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Option<T> {
    serde_json::from_slice(b).ok()
}

/// Stored records as the guest sees them.
pub fn inputs(records: &[Record], partition: i32) -> Vec<InputRecord> {
    records
        .iter()
        .map(|r| InputRecord {
            key: r.key.as_ref().map(|k| k.to_vec()),
            value: r.value.as_ref().map(|v| v.to_vec()),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| Header {
                    key: k.to_string(),
                    value: v.as_ref().map(|v| v.to_vec()),
                })
                .collect(),
            timestamp: r.timestamp,
            offset: r.offset,
            partition,
        })
        .collect()
}

impl From<OutputRecord> for Out {
    fn from(o: OutputRecord) -> Self {
        Out {
            key: o.key.map(Bytes::from),
            value: o.value.map(Bytes::from),
            headers: o
                .headers
                .into_iter()
                .map(|h| (h.key, h.value.map(Bytes::from)))
                .collect(),
            timestamp: o.timestamp,
        }
    }
}

/// A dead-lettered copy of an input record, with the reason in a header.
pub fn dead_letter(r: &Record, reason: &str) -> Out {
    let mut headers: Vec<(String, Option<Bytes>)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    headers.push((
        ERROR_HEADER.into(),
        Some(Bytes::copy_from_slice(reason.as_bytes())),
    ));
    Out {
        key: r.key.clone(),
        value: r.value.clone(),
        headers,
        timestamp: r.timestamp,
    }
}
