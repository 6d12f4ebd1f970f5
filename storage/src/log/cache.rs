//! Blocks of objects read back from the store: `block_bytes`-sized, aligned
//! pieces of WAL and data objects, each one ranged GET, bounded by bytes and
//! evicted least recently used (DESIGN.md's block cache). A block holds the
//! batches of every partition stored there, so a fetch across many
//! partitions, or many consumers of one, share one GET.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};

use crate::{Error, ObjId};

/// An object and a block index within it.
pub(super) type BlockId = (ObjId, u32);

/// A GET of one block that readers (and read-ahead) share.
pub(super) type Loading = Shared<BoxFuture<'static, Result<Bytes, Error>>>;

pub(super) struct BlockCache {
    max_bytes: usize,
    bytes: usize,
    tick: u64,
    /// block → (bytes, last use).
    blocks: HashMap<BlockId, (Bytes, u64)>,
    /// last use → block, oldest first.
    by_use: BTreeMap<u64, BlockId>,
    /// Blocks being fetched now; a second reader joins the first's GET.
    pub(super) loading: HashMap<BlockId, Loading>,
}

impl BlockCache {
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            bytes: 0,
            tick: 0,
            blocks: HashMap::new(),
            by_use: BTreeMap::new(),
            loading: HashMap::new(),
        }
    }

    pub(super) fn get(&mut self, id: BlockId) -> Option<Bytes> {
        self.tick += 1;
        let (b, used) = self.blocks.get_mut(&id)?;
        self.by_use.remove(used);
        *used = self.tick;
        self.by_use.insert(self.tick, id);
        Some(b.clone())
    }

    /// Whether a block is cached, without counting as a use.
    pub(super) fn contains(&self, id: BlockId) -> bool {
        self.blocks.contains_key(&id)
    }

    /// A cached block, without counting as a use.
    pub(super) fn peek(&self, id: BlockId) -> Option<Bytes> {
        self.blocks.get(&id).map(|(b, _)| b.clone())
    }

    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn insert(&mut self, id: BlockId, b: Bytes) {
        if b.len() > self.max_bytes {
            return;
        }
        self.tick += 1;
        self.bytes += b.len();
        if let Some((old, used)) = self.blocks.insert(id, (b, self.tick)) {
            self.bytes -= old.len();
            self.by_use.remove(&used);
        }
        self.by_use.insert(self.tick, id);
        while self.bytes > self.max_bytes {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if let Some((old, _)) = self.blocks.remove(&oldest) {
                self.bytes -= old.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let id = |n| (ObjId::wal(n), 0);
        let mut c = BlockCache::new(10);
        c.insert(id(1), Bytes::from_static(b"aaaa"));
        c.insert(id(2), Bytes::from_static(b"bbbb"));
        assert!(c.get(id(1)).is_some()); // 2 is now the oldest
        c.insert(id(3), Bytes::from_static(b"cccc"));
        assert!(c.get(id(2)).is_none() && c.get(id(1)).is_some() && c.get(id(3)).is_some());
        c.insert(id(4), Bytes::from(vec![0u8; 11])); // larger than the whole cache
        assert!(c.get(id(4)).is_none() && c.get(id(1)).is_some());
    }
}
