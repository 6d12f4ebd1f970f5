//! Committed offsets of consumer groups, stored as metadata keys of the
//! tenant's shard 0 log: one key per (group, topic id, partition), written
//! and made durable before the commit is answered.
//!
//! Keys name the topic by id, so a deleted and re-created topic starts with
//! no committed offsets, as in Kafka. Keys are binary:
//! `o/`, group length (u16 BE), group, topic id (u128 BE), partition (i32 BE).

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::WorkerError;

pub const PREFIX: &[u8] = b"o/";

/// Kafka's `offset.metadata.max.bytes` default.
pub const MAX_METADATA_BYTES: usize = 4096;

/// What a consumer committed for one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    /// -1 when the client did not say.
    pub leader_epoch: i32,
    pub metadata: String,
    /// Milliseconds since the epoch, when the commit was made durable.
    pub commit_ms: i64,
}

/// Kafka's rules for a group id in offset APIs: any string but the empty one,
/// short enough for a key.
pub fn validate_group(group: &str) -> Result<(), WorkerError> {
    if group.is_empty() || group.len() > u16::MAX as usize {
        return Err(WorkerError::InvalidGroupId);
    }
    Ok(())
}

/// Every key of one group starts with this.
pub fn group_prefix(group: &str) -> Bytes {
    keyed_by_group(PREFIX, group)
}

/// `kind`, then the group's length (u16 BE) and name: the group's keys of
/// that kind, never sharing a prefix with a group whose name extends it.
pub fn keyed_by_group(kind: &[u8], group: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(kind.len() + 2 + group.len());
    b.put_slice(kind);
    b.put_u16(group.len() as u16);
    b.put_slice(group.as_bytes());
    b.freeze()
}

pub fn key(group: &str, topic_id: u128, partition: i32) -> Bytes {
    let mut b = BytesMut::from(&group_prefix(group)[..]);
    b.put_u128(topic_id);
    b.put_i32(partition);
    b.freeze()
}

/// The group a committed-offset key belongs to.
fn group_of(key: &[u8]) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    let (len, rest) = rest.split_at_checked(2)?;
    let name = rest.get(..u16::from_be_bytes([len[0], len[1]]) as usize)?;
    std::str::from_utf8(name).ok()
}

/// Every group with a committed offset in `kv` (a shard's metadata keys,
/// in order), once each.
pub fn groups_with_offsets<'a>(keys: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in keys {
        match group_of(k) {
            Some(g) if out.last().is_none_or(|l| l != g) => out.push(g.to_string()),
            _ => {}
        }
    }
    out
}

/// The (topic id, partition) a key of `group` names.
pub fn parse_key(group: &str, key: &[u8]) -> Option<(u128, i32)> {
    let rest = key.strip_prefix(&group_prefix(group)[..])?;
    let (id, part) = rest.split_at_checked(16)?;
    Some((
        u128::from_be_bytes(id.try_into().ok()?),
        i32::from_be_bytes(part.try_into().ok()?),
    ))
}

pub fn encode(c: &Committed) -> Bytes {
    Bytes::from(serde_json::to_vec(c).expect("an offset commit serializes"))
}

pub fn decode(b: &[u8]) -> Option<Committed> {
    serde_json::from_slice(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_stay_within_their_group() {
        let k = key("g", 7, 3);
        assert_eq!(parse_key("g", &k), Some((7, 3)));
        assert!(k.starts_with(&group_prefix("g")));
        // A group whose name extends another's never shares its keys.
        assert!(!key("g2", 7, 3).starts_with(&group_prefix("g")));
        assert_eq!(parse_key("g2", &k), None);
        assert_eq!(validate_group(""), Err(WorkerError::InvalidGroupId));
    }
}
