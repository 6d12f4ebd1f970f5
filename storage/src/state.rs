//! The state a shard log's entries build: streams with their batch index, a
//! small key-value map for metadata (catalogs, committed offsets), and the
//! bookkeeping of compaction and garbage. The durable state is this, replayed
//! from a checkpoint and the valid WAL objects after it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;

use crate::producers::{AbortedTxn, ProducerState, Txn};
use crate::{Entry, Rewritten, Run, StreamId};

/// Names an object batches live in: a WAL object by seq, or a data object
/// written by compaction (top bit set; then the writer's epoch and a counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjId(pub u64);

const DATA_BIT: u64 = 1 << 63;

impl ObjId {
    pub fn wal(seq: u64) -> Self {
        Self(seq)
    }

    /// `epoch` below 2^31 and `n` below 2^32: the compactor checks.
    pub fn data(epoch: u64, n: u64) -> Self {
        Self(DATA_BIT | epoch << 32 | n)
    }

    /// The WAL seq, if this is a WAL object.
    pub fn wal_seq(self) -> Option<u64> {
        (self.0 & DATA_BIT == 0).then_some(self.0)
    }

    /// (epoch, n) of a data object.
    pub fn data_parts(self) -> Option<(u64, u64)> {
        (self.0 & DATA_BIT != 0).then_some(((self.0 & !DATA_BIT) >> 32, self.0 & 0xffff_ffff))
    }
}

/// Where batches live: `batches` of them, back to back in object `obj`,
/// bytes `pos..pos+len`. The first starts at `base_offset` and the last
/// ends at `end_offset()`; a rewrite may have left gaps between them. An
/// appended batch has an entry of its own; compaction indexes a stream's
/// batches by runs of up to `LogConfig::index_bytes` (Kafka keeps one index
/// entry per 4 KiB), so the index grows with bytes, not with batches, and
/// the batches inside an entry are found by their framing
/// (`floe_common::batch::frame`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLoc {
    pub base_offset: i64,
    pub offsets: u32,
    /// The largest timestamp of its batches.
    pub max_timestamp: i64,
    pub obj: ObjId,
    pub pos: u32,
    pub len: u32,
    pub batches: u32,
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
    /// The batch index: entries (a batch, or a run of them) in offset order.
    pub locs: Vec<BatchLoc>,
    /// Sum of the batches' lengths (derived).
    pub bytes: u64,
    /// Idempotent producers by id. Kept when retention drops their batches
    /// (as Kafka does since KIP-360), until they expire.
    pub producers: BTreeMap<i64, ProducerState>,
    /// Aborted transactions, in marker order, until retention passes them.
    pub aborted: Vec<AbortedTxn>,
    /// A producer the stream does not know with an id below this may have
    /// written to it and expired, or written to a deleted stream that this
    /// one carries on (a re-created topic of the same name, on which a
    /// client carries on its sequence); one at or above it never wrote
    /// here. The shard's `deleted_producers_below` when the stream was
    /// created, raised by expiry. `i64::MAX` when unknown.
    pub forgotten_below: i64,
    /// Open transactions: first offset → producer (derived).
    pub open_txns: BTreeMap<i64, i64>,
}

impl StreamState {
    /// Every producer the stream knows has an id below this.
    pub fn known_producers_below(&self) -> i64 {
        self.producers
            .keys()
            .next_back()
            .map_or(0, |id| id.saturating_add(1))
    }

    /// The last stable offset: below it, every transaction has ended.
    pub fn last_stable(&self) -> i64 {
        // Retention may pass an open transaction's start: never below it.
        self.open_txns
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_offset)
            .max(self.log_start)
    }

    /// Index of the first entry whose last offset is at or after `offset`.
    pub fn find(&self, offset: i64) -> usize {
        self.locs.partition_point(|l| l.end_offset() <= offset)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub next_stream: u64,
    pub streams: BTreeMap<StreamId, StreamState>,
    pub kv: BTreeMap<Bytes, Bytes>,
    /// WAL seqs below this have been through compaction: their small
    /// batches were moved to data objects; big ones stay where they are.
    pub compacted_below: u64,
    /// WAL seqs below this that no batch referenced have been deleted.
    pub swept_below: u64,
    /// Objects no batch references any more and that are not covered by
    /// `swept_below`'s range: deletable (after the grace period).
    pub garbage: BTreeSet<ObjId>,
    /// Index entries referencing each object (derived).
    pub refs: HashMap<ObjId, u32>,
    /// Record-batch bytes of every stream (derived): a storage quota's count.
    pub bytes: u64,
    /// Size of each data object until it is swept, so compaction can tell
    /// how much of one retention has emptied.
    pub data_sizes: BTreeMap<ObjId, u32>,
    /// Each owner's fence F: the seq of its first tombstone (seq → epoch).
    /// Never deleted: a paused zombie retrying a write at F would then
    /// succeed and could acknowledge it outside the valid log. The rest of a
    /// fence window may go: nothing can be acknowledged past F without F.
    pub fences: BTreeMap<u64, u64>,
    /// Meter windows before this are closed (see `Entry::MeterClose`).
    pub meter_from: i64,
    /// Meter counts by window start: closed ones until written out, then
    /// the open ones.
    pub meters: BTreeMap<i64, Vec<u64>>,
    /// Every producer that wrote to a deleted stream has an id below this.
    pub deleted_producers_below: i64,
}

impl Default for State {
    fn default() -> Self {
        Self {
            next_stream: 0,
            streams: BTreeMap::new(),
            kv: BTreeMap::new(),
            compacted_below: 0,
            swept_below: 0,
            garbage: BTreeSet::new(),
            refs: HashMap::new(),
            bytes: 0,
            data_sizes: BTreeMap::new(),
            fences: BTreeMap::new(),
            meter_from: i64::MIN,
            meters: BTreeMap::new(),
            deleted_producers_below: 0,
        }
    }
}

impl State {
    /// Applies one entry of WAL object `seq`; `pos` is the byte position of an
    /// `Append`'s data in that object. Entries are validated when appended, so
    /// replay needs no checks beyond the ones that keep it from panicking.
    pub fn apply(&mut self, entry: &Entry, seq: u64, pos: u32) {
        match entry {
            Entry::Append {
                stream,
                base_offset,
                offsets,
                max_timestamp,
                producer,
                data,
            } => {
                let Some(s) = self.streams.get_mut(stream) else {
                    return;
                };
                // A marker for a producer the stream does not know (it
                // expired) ends nothing and leaves no state behind.
                if let Some(p) = producer
                    .as_ref()
                    .filter(|p| !p.txn.is_marker() || s.producers.contains_key(&p.id))
                {
                    let st = s
                        .producers
                        .entry(p.id)
                        .or_insert_with(|| ProducerState::new(p));
                    let was_open = st.open_txn;
                    st.record(p, *base_offset, *offsets, *max_timestamp);
                    match (p.txn, was_open) {
                        (Txn::Data, None) => {
                            s.open_txns.insert(*base_offset, p.id);
                        }
                        (Txn::Commit, Some(first)) => {
                            s.open_txns.remove(&first);
                        }
                        (Txn::Abort, Some(first)) => {
                            s.open_txns.remove(&first);
                            s.aborted.push(AbortedTxn {
                                producer_id: p.id,
                                first_offset: first,
                                last_offset: *base_offset,
                            });
                        }
                        _ => {}
                    }
                }
                debug_assert_eq!(*base_offset, s.next_offset, "offsets are contiguous");
                let obj = ObjId::wal(seq);
                s.locs.push(BatchLoc {
                    base_offset: *base_offset,
                    offsets: *offsets,
                    max_timestamp: *max_timestamp,
                    obj,
                    pos,
                    len: data.len() as u32,
                    batches: 1,
                });
                s.bytes += data.len() as u64;
                self.bytes += data.len() as u64;
                s.next_offset = base_offset + *offsets as i64;
                *self.refs.entry(obj).or_default() += 1;
            }
            Entry::CreateStream { stream } => {
                let forgotten_below = self.deleted_producers_below;
                self.streams.entry(*stream).or_insert_with(|| StreamState {
                    forgotten_below,
                    ..StreamState::default()
                });
                self.next_stream = self.next_stream.max(stream.0 + 1);
            }
            Entry::DeleteStream { stream } => {
                if let Some(s) = self.streams.remove(stream) {
                    self.deleted_producers_below = self
                        .deleted_producers_below
                        .max(s.forgotten_below)
                        .max(s.known_producers_below());
                    self.bytes -= s.bytes;
                    for l in &s.locs {
                        self.unref(l.obj);
                    }
                }
            }
            Entry::Truncate { stream, log_start } => {
                let Some(s) = self.streams.get_mut(stream) else {
                    return;
                };
                s.log_start = s.log_start.max((*log_start).min(s.next_offset));
                let keep_from = s.find(s.log_start);
                let dropped: Vec<BatchLoc> = s.locs.drain(..keep_from).collect();
                let start = s.log_start;
                s.aborted.retain(|a| a.last_offset >= start);
                let gone = dropped.iter().map(|l| l.len as u64).sum::<u64>();
                s.bytes -= gone;
                self.bytes -= gone;
                for l in dropped {
                    self.unref(l.obj);
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
            Entry::Compact {
                object,
                wal_below,
                sources,
                runs,
            } => {
                for run in runs {
                    self.move_run(*object, *wal_below, sources, run, seq == u64::MAX);
                }
                if let Some(size) = runs.iter().map(|r| r.end).max() {
                    self.data_sizes.insert(*object, size);
                    if !self.refs.contains_key(object) {
                        // Nothing matched (or everything was truncated meanwhile).
                        self.garbage.insert(*object);
                    }
                }
                self.compacted_below = self.compacted_below.max(*wal_below);
            }
            Entry::Sweep { wal_below, forget } => {
                self.swept_below = self.swept_below.max(*wal_below);
                for o in forget {
                    self.garbage.remove(o);
                    self.data_sizes.remove(o);
                }
            }
            Entry::Meter { window, counts } => {
                let sum = self.meters.entry(self.meter_window(*window)).or_default();
                add_counts(sum, counts);
            }
            Entry::MeterClose { end } => self.meter_from = self.meter_from.max(*end),
            Entry::MeterDone { window } => {
                if *window < self.meter_from {
                    self.meters.remove(window);
                }
            }
            Entry::Rewrite {
                object,
                stream,
                size,
                batches,
            } => self.rewrite(*object, *stream, *size, batches, seq),
            Entry::ExpireProducers { before_ms } => {
                let idle = self.idle_producers(*before_ms);
                self.forget_producers(&idle);
            }
        }
    }

    /// The window a count for `window` joins: a closed one's goes to the
    /// first open window, so a closed window never changes.
    pub fn meter_window(&self, window: i64) -> i64 {
        window.max(self.meter_from)
    }

    /// Points the batches of `run` (in WAL objects below `wal_below` or in
    /// `sources`) at `object`, laid out back to back so the
    /// run's last batch ends at `run.end`, and indexes them by runs of up to
    /// `run.index_bytes`. Positions are counted back from the end, so a run
    /// whose first batches were truncated meanwhile still lands right. A run
    /// that does not match the index is skipped whole: its batches keep
    /// their WAL objects, which stay referenced and are kept. The live
    /// state (`live`: its locations are not real) only indexes them alike,
    /// by offsets.
    fn move_run(
        &mut self,
        object: ObjId,
        wal_below: u64,
        sources: &[ObjId],
        run: &Run,
        live: bool,
    ) {
        let Some(s) = self.streams.get_mut(&run.stream) else {
            return;
        };
        let from = s.find(run.from);
        let to = s.locs.partition_point(|l| l.base_offset < run.to);
        let locs = &mut s.locs[from..to];
        let movable = |o: ObjId| o.wal_seq().is_some_and(|q| q < wal_below) || sources.contains(&o);
        let fits = locs
            .iter()
            .all(|l| l.base_offset >= run.from && (live || movable(l.obj)))
            && locs.iter().map(|l| l.len as u64).sum::<u64>() <= run.end as u64;
        if !fits || locs.is_empty() {
            return;
        }
        let mut moved = Vec::new();
        if !live {
            let mut end = run.end;
            moved.reserve(locs.len());
            for l in locs.iter_mut().rev() {
                end -= l.len;
                moved.push(l.obj);
                l.obj = object;
                l.pos = end;
            }
        }
        let fewer = merge(&mut s.locs, from..to, run.index_bytes);
        if live {
            return;
        }
        *self.refs.entry(object).or_default() += (moved.len() - fewer) as u32;
        for o in moved {
            self.unref(o);
        }
    }

    /// Applies a [`Entry::Rewrite`]: see there. The live state (`seq` is
    /// `u64::MAX`: appends applied before they are durable, for offsets and
    /// byte counts only; its locations lag the durable state's) follows the
    /// batches by base offset alone.
    fn rewrite(
        &mut self,
        object: ObjId,
        stream: StreamId,
        size: u32,
        batches: &[Rewritten],
        seq: u64,
    ) {
        let live = seq == u64::MAX;
        let mut moved = Vec::new();
        let mut kept = 0u32;
        if let Some(s) = self.streams.get_mut(&stream) {
            let mut gone = false;
            for b in batches {
                let i = s.locs.partition_point(|l| l.base_offset < b.base_offset);
                let Some(l) = s.locs.get_mut(i) else { continue };
                if l.base_offset != b.base_offset || (!live && (l.obj, l.pos) != b.was) {
                    continue;
                }
                // What is left of an entry of several batches is a span
                // within it, so the index stays in order.
                let left = b.left.filter(|_| b.now.is_some());
                if left
                    .is_some_and(|t| t.base_offset < l.base_offset || t.end_offset > l.end_offset())
                {
                    continue;
                }
                let new_len = b.now.map_or(0, |(_, len)| len);
                s.bytes = s.bytes + new_len as u64 - l.len as u64;
                self.bytes = self.bytes + new_len as u64 - l.len as u64;
                l.len = new_len;
                if !live {
                    moved.push(l.obj);
                }
                if let Some(left) = left {
                    l.offsets = (left.end_offset - left.base_offset) as u32;
                    l.base_offset = left.base_offset;
                    l.batches = left.batches;
                    l.max_timestamp = left.max_timestamp;
                }
                match b.now {
                    Some((pos, _)) if !live => {
                        l.obj = object;
                        l.pos = pos;
                        kept += 1;
                    }
                    Some(_) => {}
                    None => {
                        // Removed below, in one pass.
                        l.offsets = 0;
                        gone = true;
                    }
                }
            }
            if gone {
                s.locs.retain(|l| l.offsets > 0);
            }
        }
        if live {
            return;
        }
        if kept > 0 {
            *self.refs.entry(object).or_default() += kept;
        }
        // Size 0: the rewrite only dropped batches and wrote no object.
        if size > 0 {
            self.data_sizes.insert(object, size);
            if !self.refs.contains_key(&object) {
                self.garbage.insert(object);
            }
        }
        for o in moved {
            self.unref(o);
        }
    }

    fn unref(&mut self, obj: ObjId) {
        let Some(n) = self.refs.get_mut(&obj) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        self.refs.remove(&obj);
        self.garbage.insert(obj);
    }

    /// Producers whose newest append was accepted before `before_ms`.
    pub fn idle_producers(&self, before_ms: i64) -> Vec<(StreamId, i64)> {
        let mut idle = Vec::new();
        for (id, s) in &self.streams {
            for (&p, st) in &s.producers {
                // A producer with an open transaction waits for its marker.
                if st.last_append_ms < before_ms && st.open_txn.is_none() {
                    idle.push((*id, p));
                }
            }
        }
        idle
    }

    /// Forgets producers (see [`Entry::ExpireProducers`]).
    fn forget_producers(&mut self, which: &[(StreamId, i64)]) {
        for (stream, id) in which {
            if let Some(s) = self.streams.get_mut(stream) {
                s.producers.remove(id);
                s.forgotten_below = s.forgotten_below.max(id.saturating_add(1));
            }
        }
    }

    /// Notes a tombstone of `epoch` at `seq`; the first one of an epoch is
    /// its fence. Tombstones come in seq order, on the owner and in replay.
    pub fn note_tombstone(&mut self, epoch: u64, seq: u64) {
        if !self.fences.values().any(|&e| e == epoch) {
            self.fences.insert(seq, epoch);
        }
    }

    pub fn is_fence(&self, seq: u64) -> bool {
        self.fences.contains_key(&seq)
    }

    /// Recomputes the derived fields after loading a checkpoint.
    pub fn rebuild_derived(&mut self) {
        self.refs.clear();
        self.bytes = 0;
        for s in self.streams.values_mut() {
            s.bytes = s.locs.iter().map(|l| l.len as u64).sum();
            self.bytes += s.bytes;
            s.open_txns = s
                .producers
                .iter()
                .filter_map(|(&id, p)| Some((p.open_txn?, id)))
                .collect();
            for l in &s.locs {
                *self.refs.entry(l.obj).or_default() += 1;
            }
        }
    }
}

/// Makes the entries `range` of `locs`, back to back in one object, into
/// entries of up to `cap` bytes (0: left as they are), first to last, each
/// spanning at most `u32::MAX` offsets. Returns how many fewer there are.
fn merge(locs: &mut Vec<BatchLoc>, range: std::ops::Range<usize>, cap: u32) -> usize {
    if cap == 0 || range.len() < 2 {
        return 0;
    }
    let mut out: Vec<BatchLoc> = Vec::new();
    for l in &locs[range.clone()] {
        if let Some(c) = out.last_mut() {
            let span = u32::try_from(l.end_offset() - c.base_offset);
            let batches = c.batches.checked_add(l.batches);
            let fits = c.len as u64 + l.len as u64 <= cap as u64;
            if let (Ok(span), Some(batches), true) = (span, batches, fits) {
                c.offsets = span;
                c.len += l.len;
                c.batches = batches;
                c.max_timestamp = c.max_timestamp.max(l.max_timestamp);
                continue;
            }
        }
        out.push(*l);
    }
    let fewer = range.len() - out.len();
    locs.splice(range, out);
    fewer
}

/// Adds `more` to `sum` element by element, growing it as needed.
pub fn add_counts(sum: &mut Vec<u64>, more: &[u64]) {
    if sum.len() < more.len() {
        sum.resize(more.len(), 0);
    }
    for (s, m) in sum.iter_mut().zip(more) {
        *s = s.saturating_add(*m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(stream: u64, base_offset: i64, len: usize) -> Entry {
        Entry::Append {
            stream: StreamId(stream),
            base_offset,
            offsets: 1,
            max_timestamp: 0,
            producer: None,
            data: Bytes::from(vec![0u8; len]),
        }
    }

    #[test]
    fn the_byte_total_follows_appends_truncation_and_deletion() {
        let mut s = State::default();
        for (i, e) in [
            Entry::CreateStream {
                stream: StreamId(1),
            },
            Entry::CreateStream {
                stream: StreamId(2),
            },
            append(1, 0, 100),
            append(1, 1, 50),
            append(2, 0, 30),
        ]
        .iter()
        .enumerate()
        {
            s.apply(e, i as u64 + 1, 0);
        }
        assert_eq!(s.bytes, 180);
        s.apply(
            &Entry::Truncate {
                stream: StreamId(1),
                log_start: 1,
            },
            6,
            0,
        );
        assert_eq!(s.bytes, 80);
        s.apply(
            &Entry::DeleteStream {
                stream: StreamId(2),
            },
            7,
            0,
        );
        assert_eq!(s.bytes, 50);
        let mut again = s.clone();
        again.bytes = 0;
        again.rebuild_derived();
        assert_eq!(again.bytes, 50, "a checkpoint rebuilds the same total");
    }

    #[test]
    fn streams_bound_the_producers_they_may_have_forgotten() {
        use crate::producers::{Producer, Txn};
        let by = |id: i64, time_ms: i64, base: i64| {
            let mut e = append(1, base, 10);
            if let Entry::Append { producer, .. } = &mut e {
                *producer = Some(Producer {
                    id,
                    epoch: 0,
                    first_seq: 0,
                    time_ms,
                    txn: Txn::No,
                });
            }
            e
        };
        let create = |n| Entry::CreateStream {
            stream: StreamId(n),
        };
        let bound = |s: &State, n| s.streams[&StreamId(n)].forgotten_below;
        let mut s = State::default();
        s.apply(&create(1), 1, 0);
        assert_eq!(bound(&s, 1), 0, "a new shard's stream forgot nobody");
        s.apply(&by(5, 100, 0), 2, 0);
        s.apply(&by(3, 200, 1), 3, 0);
        assert_eq!(bound(&s, 1), 0, "appends forget nobody");
        // Nothing was deleted: a new stream carries on no other.
        s.apply(&create(2), 4, 0);
        assert_eq!(bound(&s, 2), 0);
        // Expiring producer 5 (idle since 100) raises its stream's bound.
        s.apply(&Entry::ExpireProducers { before_ms: 150 }, 5, 0);
        assert_eq!(s.streams[&StreamId(1)].producers.len(), 1);
        assert_eq!((bound(&s, 1), bound(&s, 2)), (6, 0));
        // Stream 1 deleted: what it knew or forgot bounds the streams
        // created after it (a re-created topic may carry it on).
        s.apply(
            &Entry::DeleteStream {
                stream: StreamId(1),
            },
            6,
            0,
        );
        assert_eq!(s.deleted_producers_below, 6);
        s.apply(&create(3), 7, 0);
        assert_eq!((bound(&s, 2), bound(&s, 3)), (0, 6));
    }
}
