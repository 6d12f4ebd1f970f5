//! What an unloaded shard leaves behind for gateways: its catalog, each
//! partition's offsets and its stable groups, written when the shard goes
//! idle. Idle consumers (metadata refreshes, empty long-polls, heartbeats)
//! are answered from it, so they do not load the shard again (DESIGN.md
//! invariant 6).
//!
//! It is a plain object, overwritten on each unload. It is true only while
//! no newer owner has claimed the shard: readers check that `epoch/{epoch+1}`
//! does not exist before trusting it, so a late write by a stale owner, or
//! an object from before a kill -9, is never used.

use floe_common::TenantId;
use serde::{Deserialize, Serialize};

use crate::catalog::TopicMeta;
use crate::{MemberRef, Read};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Published {
    /// The log epoch of the owner that wrote it.
    pub epoch: u64,
    pub leader_epoch: i32,
    pub topics: Vec<TopicMeta>,
    pub partitions: Vec<PartitionOffsets>,
    /// Groups that were stable: their members' heartbeats need no shard.
    pub groups: Vec<StableGroup>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionOffsets {
    pub topic: String,
    pub partition: i32,
    pub log_start: i64,
    pub high_watermark: i64,
    pub last_stable: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StableGroup {
    pub name: String,
    pub generation: i32,
    pub members: Vec<String>,
}

impl Published {
    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionOffsets> {
        self.partitions
            .iter()
            .find(|p| p.partition == partition && p.topic == topic)
    }

    /// A fetch at the end of a partition (the last stable offset, for
    /// `committed`): nothing to read. `None`: the shard must answer.
    pub fn fetch_at_end(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        committed: bool,
    ) -> Option<Read> {
        let o = self.partition(topic, partition)?;
        let end = if committed {
            o.last_stable
        } else {
            o.high_watermark
        };
        (offset == end).then(|| Read {
            log_start: o.log_start,
            high_watermark: o.high_watermark,
            last_stable: o.last_stable,
            batches: Vec::new(),
            aborted: Vec::new(),
        })
    }

    /// ListOffsets for latest (-1) and earliest (-2).
    pub fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        timestamp: i64,
        committed: bool,
    ) -> Option<(i64, i64)> {
        let o = self.partition(topic, partition)?;
        let offset = match (timestamp, committed) {
            (-2, _) => o.log_start,
            (-1, true) => o.last_stable,
            (-1, false) => o.high_watermark,
            _ => return None,
        };
        Some((offset, -1))
    }

    /// Whether `member` belongs to `group`'s generation as it was stable.
    pub fn heartbeat_ok(&self, group: &str, member: &MemberRef) -> bool {
        self.groups.iter().any(|g| {
            g.name == group && g.generation == member.generation && g.members.contains(&member.id)
        })
    }
}

/// Where a tenant's published object lives: beside its shards, outside
/// every log's prefix.
pub fn path(tenant: &TenantId) -> object_store::path::Path {
    object_store::path::Path::from(format!("tenants/{}/published", tenant.as_str()))
}
