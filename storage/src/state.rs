//! The state a shard log's entries build: streams with their batch index, and a
//! small key-value map for metadata (catalogs, committed offsets). The durable
//! state is this, replayed from a checkpoint and the valid WAL objects after it.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::{Entry, StreamId};

/// Where one batch lives: WAL object `seq`, bytes `pos..pos+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLoc {
    pub base_offset: i64,
    pub offsets: u32,
    pub max_timestamp: i64,
    pub seq: u64,
    pub pos: u32,
    pub len: u32,
}

impl BatchLoc {
    pub fn end_offset(&self) -> i64 {
        self.base_offset + self.offsets as i64
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    /// Lowest readable offset.
    pub log_start: i64,
    /// Offset the next appended batch gets (the high watermark, once durable).
    pub next_offset: i64,
    /// Batches in offset order.
    pub locs: Vec<BatchLoc>,
}

impl StreamState {
    /// Index of the first batch whose last offset is at or after `offset`.
    pub fn find(&self, offset: i64) -> usize {
        self.locs.partition_point(|l| l.end_offset() <= offset)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub next_stream: u64,
    pub streams: BTreeMap<StreamId, StreamState>,
    pub kv: BTreeMap<Bytes, Bytes>,
}

impl State {
    /// Applies one entry of WAL object `seq`; `pos` is the byte position of an
    /// `Append`'s data in that object. Entries are validated when appended, so
    /// replay needs no checks beyond the ones that keep it from panicking.
    pub fn apply(&mut self, entry: &Entry, seq: u64, pos: u32) {
        match entry {
            Entry::Append { stream, base_offset, offsets, max_timestamp, data } => {
                let Some(s) = self.streams.get_mut(stream) else { return };
                debug_assert_eq!(*base_offset, s.next_offset, "offsets are contiguous");
                s.locs.push(BatchLoc {
                    base_offset: *base_offset,
                    offsets: *offsets,
                    max_timestamp: *max_timestamp,
                    seq,
                    pos,
                    len: data.len() as u32,
                });
                s.next_offset = base_offset + *offsets as i64;
            }
            Entry::CreateStream { stream } => {
                self.streams.entry(*stream).or_default();
                self.next_stream = self.next_stream.max(stream.0 + 1);
            }
            Entry::DeleteStream { stream } => {
                self.streams.remove(stream);
            }
            Entry::Truncate { stream, log_start } => {
                if let Some(s) = self.streams.get_mut(stream) {
                    s.log_start = s.log_start.max((*log_start).min(s.next_offset));
                    let keep_from = s.find(s.log_start);
                    s.locs.drain(..keep_from);
                }
            }
            Entry::Put { key, value } => match value {
                Some(v) => {
                    self.kv.insert(key.clone(), v.clone());
                }
                None => {
                    self.kv.remove(key);
                }
            },
        }
    }
}
