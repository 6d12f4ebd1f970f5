//! Tenants' Wasm connectors: what is created, and where each one is. The
//! runner is `local/connector.rs`.
//!
//! Everything is a metadata key of the shard's log:
//! - `k/d/{name}`: the connector ([`Created`]); the component's bytes are
//!   an object at `transforms::wasm_path`, named by their SHA-256;
//! - `k/p/{name}/{partition}`: a sink's [`Delivered`] through one input
//!   partition;
//! - `k/c/{name}`: a source's [`Polled`]: its cursor and counters;
//! - `k/e/{name}`: the last failure (`transforms::LastError`).
//!
//! A source's records and its new cursor are one log append, so a restart
//! polls from the cursor the records it already stored came with. A sink's
//! offset is appended only after `deliver` succeeded (or, after
//! `max_retries`, together with the batch's dead letters).

use bytes::Bytes;

/// The most connectors one tenant may create.
pub const MAX_CONNECTORS: usize = 64;
/// The config key that lists where a connector's requests may go.
pub const ALLOW_KEY: &str = "allow";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Source,
    Sink,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Sink => "sink",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "source" => Ok(Kind::Source),
            "sink" => Ok(Kind::Sink),
            _ => Err(format!("kind must be source or sink, not {s:?}")),
        }
    }
}

/// What a tenant creates.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorSpec {
    pub name: String,
    pub kind: Kind,
    /// A sink's input topic, or a source's output topics (1 to 8; a
    /// record's `output` indexes them).
    pub topics: Vec<String>,
    /// Given to the guest's `init`; `allow=host:port,...` also says where
    /// its requests may go.
    #[serde(default)]
    pub config: Vec<(String, String)>,
    /// A sink's tries per batch before it goes to the dead-letter topic.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// A sink's dead-letter topic; `{name}-dlq` (one partition, created
    /// if missing) when not given.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// A sink starts at its input's earliest offsets rather than its end.
    #[serde(default)]
    pub from_start: bool,
    /// A source with nothing new is polled again after this long.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

fn default_retries() -> u32 {
    5
}

fn default_poll_ms() -> u64 {
    1000
}

impl ConnectorSpec {
    /// The `allow` config value: empty means no request may go out.
    pub fn allow(&self) -> &str {
        self.config
            .iter()
            .rev()
            .find(|(k, _)| k == ALLOW_KEY)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// A connector as stored at `k/d/{name}`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Created {
    pub spec: ConnectorSpec,
    /// A sink's dead-letter topic, resolved.
    pub dead_letter: Option<String>,
    /// SHA-256 of the component, hex.
    pub digest: String,
    pub created_ms: i64,
    /// Bumped by every create, pause and resume of the name: a runner of
    /// an older one stops.
    pub generation: u64,
    pub paused: bool,
}

/// How far a sink is through one input partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Delivered {
    /// The next input offset to deliver.
    pub offset: i64,
    pub records: u64,
    /// Input records sent to the dead-letter topic.
    pub dead_lettered: u64,
    pub fuel: u64,
}

/// Where a source is: the cursor its last stored records came with.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Polled {
    /// `None` until the first poll that returned one.
    pub cursor: Option<Vec<u8>>,
    pub records: u64,
    pub polls: u64,
    pub fuel: u64,
}

/// A connector as `GET /v1/connectors` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConnectorStatus {
    pub name: String,
    pub kind: Kind,
    pub topics: Vec<String>,
    pub dead_letter: Option<String>,
    pub config: Vec<(String, String)>,
    pub digest: String,
    pub created_ms: i64,
    /// running, paused, retrying (with why), or stopped with a reason.
    pub state: String,
    /// A sink's input records not delivered yet, over all partitions.
    pub lag: i64,
    /// Records delivered (sink) or stored (source).
    pub records: u64,
    /// A sink's records sent to the dead-letter topic.
    pub dead_lettered: u64,
    pub fuel: u64,
    pub last_error: Option<crate::transforms::LastError>,
}

pub const CREATED_PREFIX: &[u8] = b"k/d/";

pub fn created_key(name: &str) -> Bytes {
    Bytes::from(format!("k/d/{name}"))
}

pub fn delivered_prefix(name: &str) -> Bytes {
    Bytes::from(format!("k/p/{name}/"))
}

pub fn delivered_key(name: &str, partition: i32) -> Bytes {
    Bytes::from(format!("k/p/{name}/{partition}"))
}

pub fn polled_key(name: &str) -> Bytes {
    Bytes::from(format!("k/c/{name}"))
}

pub fn error_key(name: &str) -> Bytes {
    Bytes::from(format!("k/e/{name}"))
}
