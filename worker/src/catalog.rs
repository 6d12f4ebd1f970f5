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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopicConfig {
    pub max_message_bytes: i64,
    /// Batches whose newest timestamp is older than this are dropped; -1 keeps them.
    pub retention_ms: i64,
    /// A partition keeps at most this many bytes of batches; -1 has no bound.
    pub retention_bytes: i64,
    /// `message.timestamp.type=LogAppendTime`: batches are stamped with the
    /// time they are appended.
    pub log_append_time: bool,
    /// `cleanup.policy` has `delete`: retention applies.
    pub delete: bool,
    /// `cleanup.policy` has `compact`: the cleaner keeps each key's last
    /// record (see `cleaner.rs`), and records need keys.
    pub compact: bool,
    pub min_cleanable_dirty_ratio: f64,
    pub min_compaction_lag_ms: i64,
    pub max_compaction_lag_ms: i64,
    pub delete_retention_ms: i64,
}

/// A config's type, numbered as DescribeConfigs v3 numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

/// The values a config takes.
#[derive(Debug, Clone, Copy)]
enum Valid {
    /// An integer of the config's kind in `[min, max]`.
    Range(i64, i64),
    /// A number in `[0, 1]`.
    Ratio,
    Boolean,
    OneOf(&'static [&'static str]),
    /// A comma-separated list (blanks around items ignored, as Kafka
    /// trims them) of at least one of these.
    ListOf(&'static [&'static str]),
    /// Any string.
    Any,
}

/// A topic config Floe accepts.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    /// Kafka's default.
    pub default: &'static str,
    pub kind: Kind,
    /// `None` when Floe applies the config; otherwise why it has no effect
    /// here. Kafka accepts these on every topic; tools and frameworks set
    /// them when they create topics, so Floe keeps and describes them.
    pub inert: Option<&'static str>,
    valid: Valid,
}

const fn spec(name: &'static str, default: &'static str, kind: Kind, valid: Valid) -> Spec {
    Spec {
        name,
        default,
        kind,
        inert: None,
        valid,
    }
}

const fn inert(
    name: &'static str,
    default: &'static str,
    kind: Kind,
    valid: Valid,
    why: &'static str,
) -> Spec {
    Spec {
        name,
        default,
        kind,
        inert: Some(why),
        valid,
    }
}

const I32: i64 = i32::MAX as i64;
const REPLICAS: &str =
    "Floe acknowledges a write once the object store holds it; there are no replicas";
const SEGMENTS: &str = "Floe keeps no segment files: the log is objects, sized by compaction";
const FLUSH: &str = "every acknowledged write is already in the object store";
const TIERS: &str = "all of a topic is in the object store: there is no local tier";

/// Every topic config Floe accepts, in the order they are described.
#[rustfmt::skip] // a table: one config a line
pub const CONFIGS: &[Spec] = &[
    spec("cleanup.policy", "delete", Kind::List, Valid::ListOf(&["delete", "compact"])),
    spec("max.message.bytes", "1048588", Kind::Int, Valid::Range(0, I32)),
    spec("message.timestamp.type", "CreateTime", Kind::String, Valid::OneOf(&["CreateTime", "LogAppendTime"])),
    spec("retention.bytes", "-1", Kind::Long, Valid::Range(-1, i64::MAX)),
    spec("retention.ms", "604800000", Kind::Long, Valid::Range(-1, i64::MAX)),
    inert("compression.type", "producer", Kind::String, Valid::OneOf(&["producer"]),
        "batches are stored as their producer compressed them; other values are refused"),
    spec("delete.retention.ms", "86400000", Kind::Long, Valid::Range(0, i64::MAX)),
    inert("file.delete.delay.ms", "60000", Kind::Long, Valid::Range(0, i64::MAX), SEGMENTS),
    inert("flush.messages", "9223372036854775807", Kind::Long, Valid::Range(1, i64::MAX), FLUSH),
    inert("flush.ms", "9223372036854775807", Kind::Long, Valid::Range(0, i64::MAX), FLUSH),
    inert("follower.replication.throttled.replicas", "", Kind::List, Valid::Any, REPLICAS),
    inert("index.interval.bytes", "4096", Kind::Int, Valid::Range(0, I32), SEGMENTS),
    inert("leader.replication.throttled.replicas", "", Kind::List, Valid::Any, REPLICAS),
    inert("local.retention.bytes", "-2", Kind::Long, Valid::Range(-2, i64::MAX), TIERS),
    inert("local.retention.ms", "-2", Kind::Long, Valid::Range(-2, i64::MAX), TIERS),
    spec("max.compaction.lag.ms", "9223372036854775807", Kind::Long, Valid::Range(1, i64::MAX)),
    inert("message.downconversion.enable", "true", Kind::Boolean, Valid::Boolean,
        "Floe answers only fetch versions that carry v2 record batches"),
    spec("min.cleanable.dirty.ratio", "0.5", Kind::Double, Valid::Ratio),
    spec("min.compaction.lag.ms", "0", Kind::Long, Valid::Range(0, i64::MAX)),
    inert("min.insync.replicas", "1", Kind::Int, Valid::Range(1, I32), REPLICAS),
    inert("preallocate", "false", Kind::Boolean, Valid::Boolean, SEGMENTS),
    inert("remote.storage.enable", "false", Kind::Boolean, Valid::Boolean, TIERS),
    inert("segment.bytes", "1073741824", Kind::Int, Valid::Range(14, I32), SEGMENTS),
    inert("segment.index.bytes", "10485760", Kind::Int, Valid::Range(4, I32), SEGMENTS),
    inert("segment.jitter.ms", "0", Kind::Long, Valid::Range(0, i64::MAX), SEGMENTS),
    inert("segment.ms", "604800000", Kind::Long, Valid::Range(1, i64::MAX), SEGMENTS),
    inert("unclean.leader.election.enable", "false", Kind::Boolean, Valid::Boolean, REPLICAS),
];

impl TopicConfig {
    /// Read on every produce: the map holds only values set, and the
    /// defaults are constants (a test keeps them equal to [`CONFIGS`]'s).
    fn from_map(m: &BTreeMap<String, String>) -> Self {
        let int = |k: &str, default: i64| m.get(k).and_then(|v| v.parse().ok()).unwrap_or(default);
        let policy = m.get("cleanup.policy").map_or("delete", String::as_str);
        Self {
            max_message_bytes: int("max.message.bytes", DEFAULT_MAX_MESSAGE_BYTES),
            retention_ms: int("retention.ms", 604_800_000),
            retention_bytes: int("retention.bytes", -1),
            log_append_time: m
                .get("message.timestamp.type")
                .is_some_and(|v| v == "LogAppendTime"),
            delete: policy.split(',').any(|p| trim(p) == "delete"),
            compact: policy.split(',').any(|p| trim(p) == "compact"),
            min_cleanable_dirty_ratio: m
                .get("min.cleanable.dirty.ratio")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.5),
            min_compaction_lag_ms: int("min.compaction.lag.ms", 0),
            max_compaction_lag_ms: int("max.compaction.lag.ms", i64::MAX),
            delete_retention_ms: int("delete.retention.ms", 86_400_000),
        }
    }
}

/// A list item without the blanks around it (ASCII ones, as Kafka trims).
fn trim(item: &str) -> &str {
    item.trim_matches(|c: char| c.is_ascii_whitespace())
}

pub fn spec_of(name: &str) -> Option<&'static Spec> {
    CONFIGS.iter().find(|c| c.name == name)
}

/// Whether `name` is a topic config Floe knows.
pub fn is_known(name: &str) -> bool {
    spec_of(name).is_some()
}

/// Checks one config's name and value, as Kafka would.
pub fn validate_config(name: &str, value: &str) -> Result<(), WorkerError> {
    let Some(spec) = spec_of(name) else {
        return Err(WorkerError::InvalidConfig(format!(
            "unknown topic config {name:?}"
        )));
    };
    let ok = match spec.valid {
        Valid::Range(min, max) => value.parse::<i64>().is_ok_and(|v| (min..=max).contains(&v)),
        Valid::Ratio => value.parse::<f64>().is_ok_and(|v| (0.0..=1.0).contains(&v)),
        Valid::Boolean => value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false"),
        Valid::OneOf(values) => values.contains(&value),
        Valid::ListOf(values) => value.split(',').all(|v| values.contains(&trim(v))),
        Valid::Any => true,
    };
    if ok {
        return Ok(());
    }
    let expected = match spec.valid {
        Valid::Range(min, max) if max == i64::MAX => format!("an integer >= {min}"),
        Valid::Range(min, max) => format!("an integer in [{min}, {max}]"),
        Valid::Ratio => "a number in [0, 1]".into(),
        Valid::Boolean => "true or false".into(),
        Valid::OneOf(values) => format!("one of {values:?}"),
        Valid::ListOf(values) => format!("a list of {values:?}"),
        Valid::Any => unreachable!("any value is valid"),
    };
    Err(WorkerError::InvalidConfig(format!(
        "{name} must be {expected}, got {value:?}{}",
        match (spec.valid, spec.inert) {
            (Valid::OneOf(_), Some(why)) => format!(" ({why})"),
            _ => String::new(),
        }
    )))
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
        assert!(validate_config("cleanup.policy", "compact").is_ok());
        assert!(validate_config("cleanup.policy", "delete,compact").is_ok());
        assert!(validate_config("cleanup.policy", "compacted").is_err());
        // Kafka trims a list's items; an empty one names no policy.
        assert!(validate_config("cleanup.policy", " compact ,  delete").is_ok());
        for bad in ["", ",", "compact,", "compact;delete", "compact\u{a0}"] {
            assert!(validate_config("cleanup.policy", bad).is_err(), "{bad:?}");
        }
        let c =
            TopicConfig::from_map(&[("cleanup.policy".into(), "delete ,compact".into())].into());
        assert!(c.compact && c.delete);
        assert!(validate_config("segment.bytes", "1").is_err());
        assert!(validate_config("segment.bytes", "1048576").is_ok());
        assert!(validate_config("min.insync.replicas", "2").is_ok());
        assert!(validate_config("min.insync.replicas", "0").is_err());
        assert!(validate_config("min.cleanable.dirty.ratio", "0.1").is_ok());
        assert!(validate_config("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(validate_config("preallocate", "TRUE").is_ok());
        assert!(validate_config("preallocate", "yes").is_err());
        assert!(validate_config("compression.type", "producer").is_ok());
        assert!(validate_config("compression.type", "lz4").is_err());
        assert!(validate_config("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate_config("message.timestamp.type", "logappendtime").is_err());
        assert!(validate_config("message.timestamp.difference.max.ms", "1").is_err());
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
        let default = spec_of("max.message.bytes").map(|s| s.default.parse::<i64>());
        assert_eq!(default, Some(Ok(DEFAULT_MAX_MESSAGE_BYTES)));
        assert!(is_known("retention.ms") && !is_known("segment.byte"));
        assert!(!TopicConfig::from_map(&m).log_append_time);
        m.insert("message.timestamp.type".into(), "LogAppendTime".into());
        assert!(TopicConfig::from_map(&m).log_append_time);
        // Every default is a valid value, and the constants the data path
        // reads are the table's defaults: setting each to its default
        // changes nothing.
        for c in CONFIGS {
            assert!(validate_config(c.name, c.default).is_ok(), "{}", c.name);
            let set = BTreeMap::from([(c.name.to_string(), c.default.to_string())]);
            assert_eq!(
                TopicConfig::from_map(&set),
                TopicConfig::from_map(&BTreeMap::new()),
                "{}",
                c.name
            );
        }
    }
}
