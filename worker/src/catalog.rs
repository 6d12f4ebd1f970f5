//! A tenant's topic catalog: names, ids, partitions and configs, stored as
//! metadata keys in the tenant's shard 0 log (`t/{name}` → JSON).
//!
//! A topic's partitions are streams of the shard; object paths never contain
//! a topic name, and a re-created topic gets new streams, so old data never
//! shows through.

use std::collections::BTreeMap;

use bytes::Bytes;
use floe_storage::StreamId;
use serde::{Deserialize, Serialize};

use crate::WorkerError;

pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// Kafka's `max.message.bytes` default: 1 MiB plus record overhead (also in
/// [`CONFIGS`], where a test keeps the two equal).
pub const DEFAULT_MAX_MESSAGE_BYTES: i64 = 1_048_588;
/// Partitions one topic may have; each costs an index and a stream.
pub const MAX_PARTITIONS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub id: u128,
    /// Stream of each partition, by partition index.
    pub streams: Vec<u64>,
    /// Only non-default values; see [`TopicConfig`].
    pub configs: BTreeMap<String, String>,
}

impl TopicMeta {
    pub fn stream(&self, partition: i32) -> Option<StreamId> {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.streams.get(p))
            .map(|&s| StreamId(s))
    }

    pub fn config(&self) -> TopicConfig {
        TopicConfig::from_map(&self.configs)
    }
}

pub fn key(name: &str) -> Bytes {
    Bytes::from(format!("t/{name}"))
}

pub const PREFIX: &[u8] = b"t/";

pub fn encode(meta: &TopicMeta) -> Bytes {
    Bytes::from(serde_json::to_vec(meta).expect("topic metadata serializes"))
}

pub fn decode(b: &[u8]) -> Option<TopicMeta> {
    serde_json::from_slice(b).ok()
}

/// Kafka's rules: 1-249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), WorkerError> {
    let bad = |why: &str| {
        Err(WorkerError::InvalidTopic(format!(
            "topic name {name:?} {why}"
        )))
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name == "." || name == ".." {
        return bad("cannot be '.' or '..'");
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return bad("is longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("may contain only ASCII alphanumerics, '.', '_' and '-'");
    }
    Ok(())
}

/// The topic configs the data path reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicConfig {
    pub max_message_bytes: i64,
    /// Batches whose newest timestamp is older than this are dropped; -1 keeps them.
    pub retention_ms: i64,
    /// A partition keeps at most this many bytes of batches; -1 has no bound.
    pub retention_bytes: i64,
}

/// (name, default) of every supported config, in the order they are described.
pub const CONFIGS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("max.message.bytes", "1048588"),
    ("retention.bytes", "-1"),
    ("retention.ms", "604800000"),
];

impl TopicConfig {
    fn from_map(m: &BTreeMap<String, String>) -> Self {
        let get = |k: &str| {
            m.get(k)
                .and_then(|v| v.parse().ok())
                .or_else(|| default(k)?.parse().ok())
        };
        Self {
            max_message_bytes: get("max.message.bytes").unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
            retention_ms: get("retention.ms").unwrap_or(-1),
            retention_bytes: get("retention.bytes").unwrap_or(-1),
        }
    }
}

fn default(name: &str) -> Option<&'static str> {
    CONFIGS.iter().find(|(c, _)| *c == name).map(|(_, v)| *v)
}

/// Whether `name` is a topic config Floe knows.
pub fn is_known(name: &str) -> bool {
    CONFIGS.iter().any(|(c, _)| *c == name)
}

/// Checks one config's name and value.
pub fn validate_config(name: &str, value: &str) -> Result<(), WorkerError> {
    let invalid = |why: String| Err(WorkerError::InvalidConfig(why));
    match name {
        "cleanup.policy" if value == "delete" => Ok(()),
        "cleanup.policy" => invalid(format!(
            "cleanup.policy={value:?} is not supported; only \"delete\" is"
        )),
        "retention.ms" | "retention.bytes" => match value.parse::<i64>() {
            Ok(v) if v >= -1 => Ok(()),
            _ => invalid(format!("{name} must be an integer >= -1, got {value:?}")),
        },
        "max.message.bytes" => match value.parse::<i32>() {
            Ok(v) if v >= 0 => Ok(()),
            _ => invalid(format!(
                "{name} must be a non-negative 32-bit integer, got {value:?}"
            )),
        },
        _ => invalid(format!("unknown topic config {name:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka() {
        for ok in ["a", "orders.v1", "A-b_c", &"x".repeat(249)] {
            assert!(validate_name(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "é", "a b", &"x".repeat(250)] {
            assert!(
                matches!(validate_name(bad), Err(WorkerError::InvalidTopic(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn configs_are_checked() {
        assert!(validate_config("retention.ms", "-1").is_ok());
        assert!(validate_config("retention.ms", "-2").is_err());
        assert!(validate_config("max.message.bytes", "x").is_err());
        assert!(validate_config("cleanup.policy", "compact").is_err());
        assert!(validate_config("segment.bytes", "1").is_err());
        let mut m = BTreeMap::new();
        m.insert("max.message.bytes".to_string(), "100".to_string());
        assert_eq!(TopicConfig::from_map(&m).max_message_bytes, 100);
        assert_eq!(
            TopicConfig::from_map(&m).retention_ms,
            604_800_000,
            "Kafka's default: 7 days"
        );
        m.insert("retention.bytes".to_string(), "4096".to_string());
        assert_eq!(TopicConfig::from_map(&m).retention_bytes, 4096);
        let default = CONFIGS
            .iter()
            .find(|(k, _)| *k == "max.message.bytes")
            .map(|(_, v)| v.parse::<i64>());
        assert_eq!(default, Some(Ok(DEFAULT_MAX_MESSAGE_BYTES)));
        assert!(is_known("retention.ms") && !is_known("segment.bytes"));
    }
}
