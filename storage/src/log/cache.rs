//! Whole WAL objects recently read from the store, by seq, bounded by bytes
//! and evicted least recently used. A WAL object holds every partition of one
//! flush (at most about `flush_bytes`), so a fetch across many partitions, or
//! many consumers of one, costs one GET per object instead of one per
//! partition. This is the first form of DESIGN.md's block cache.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};

use crate::Error;

/// A GET of one object that readers (and read-ahead) share.
pub(super) type Loading = Shared<BoxFuture<'static, Result<Bytes, Error>>>;

pub(super) struct ObjectCache {
    max_bytes: usize,
    bytes: usize,
    tick: u64,
    /// seq → (object, last use).
    objects: HashMap<u64, (Bytes, u64)>,
    /// last use → seq, oldest first.
    by_use: BTreeMap<u64, u64>,
    /// Objects being fetched now; a second reader joins the first's GET.
    pub(super) loading: HashMap<u64, Loading>,
}

impl ObjectCache {
    pub(super) fn new(max_bytes: usize) -> Self {
        Self { max_bytes, bytes: 0, tick: 0, objects: HashMap::new(), by_use: BTreeMap::new(), loading: HashMap::new() }
    }

    pub(super) fn get(&mut self, seq: u64) -> Option<Bytes> {
        self.tick += 1;
        let (obj, used) = self.objects.get_mut(&seq)?;
        self.by_use.remove(used);
        *used = self.tick;
        self.by_use.insert(self.tick, seq);
        Some(obj.clone())
    }

    /// Whether `seq` is cached, without counting as a use.
    pub(super) fn contains(&self, seq: u64) -> bool {
        self.objects.contains_key(&seq)
    }

    pub(super) fn insert(&mut self, seq: u64, obj: Bytes) {
        if obj.len() > self.max_bytes {
            return;
        }
        self.tick += 1;
        self.bytes += obj.len();
        if let Some((old, used)) = self.objects.insert(seq, (obj, self.tick)) {
            self.bytes -= old.len();
            self.by_use.remove(&used);
        }
        self.by_use.insert(self.tick, seq);
        while self.bytes > self.max_bytes {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            if let Some((old, _)) = self.objects.remove(&oldest) {
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
        let mut c = ObjectCache::new(10);
        c.insert(1, Bytes::from_static(b"aaaa"));
        c.insert(2, Bytes::from_static(b"bbbb"));
        assert!(c.get(1).is_some()); // 2 is now the oldest
        c.insert(3, Bytes::from_static(b"cccc"));
        assert!(c.get(2).is_none() && c.get(1).is_some() && c.get(3).is_some());
        c.insert(4, Bytes::from(vec![0u8; 11])); // larger than the whole cache
        assert!(c.get(4).is_none() && c.get(1).is_some());
    }
}
