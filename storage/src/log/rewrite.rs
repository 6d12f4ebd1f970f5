//! Rewriting a stream's batches for a caller that knows what is in them
//! (Kafka's key compaction, in the worker). The rewritten batches go into one
//! data object, PUT with `PutMode::Create` before the `Rewrite` entry that
//! points the index at them, as compaction does; dropped batches leave the
//! index. A rewrite runs alone with compaction (the maintenance turn), so
//! neither plans on batches the other is moving; retention and appends go
//! on, and the entry leaves any batch no longer where it was read untouched.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use object_store::PutPayload;

use floe_common::batch;

use super::read::{Batch, For};
use super::{background, data_path, put, ShardLog};
use crate::format;
use crate::state::BatchLoc;
use crate::{Entry, Error, Left, Rewritten, Run, StreamId};

/// What a rewrite does with one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Keep,
    /// The batch is gone; its offsets become a gap readers skip.
    Drop,
    /// New bytes for the same offsets: the caller keeps the batch's first
    /// 8 bytes (its base offset) and the offsets it spans.
    Replace(Bytes),
}

/// What one [`ShardLog::rewrite`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewrote {
    /// Where the next call should start: the end of the last batch looked at.
    pub next: i64,
    pub batches_read: usize,
    pub bytes_read: u64,
    pub replaced: usize,
    pub dropped: usize,
    /// Bytes of the replacements.
    pub bytes_written: u64,
}

impl ShardLog {
    /// Bytes of the durable index entries of `stream` with offsets in
    /// `from..to`: whole entries, so an entry of several batches across
    /// either end counts in full.
    pub fn bytes_between(&self, stream: StreamId, from: i64, to: i64) -> u64 {
        let core = self.inner.lock();
        let Some(s) = core.durable.streams.get(&stream) else {
            return 0;
        };
        s.locs[s.find(from)..]
            .iter()
            .take_while(|l| l.base_offset < to)
            .map(|l| l.len as u64)
            .sum()
    }

    /// Base offset of the first durable index entry of `stream` whose max
    /// timestamp is at or after `t` (an entry of several batches is as young
    /// as its youngest); the stream's end if there is none.
    pub fn first_younger(&self, stream: StreamId, t: i64) -> i64 {
        let core = self.inner.lock();
        let Some(s) = core.durable.streams.get(&stream) else {
            return 0;
        };
        s.locs
            .iter()
            .find(|l| l.max_timestamp >= t)
            .map_or(s.next_offset, |l| l.base_offset)
    }

    /// Base offset of the first durable batch of `stream` compaction has
    /// not been through yet (a rewrite stops there); the stream's end if
    /// there is none.
    pub fn first_uncompacted(&self, stream: StreamId) -> i64 {
        let core = self.inner.lock();
        let compacted = core.durable.compacted_below;
        let Some(s) = core.durable.streams.get(&stream) else {
            return 0;
        };
        // Compaction takes WAL batches oldest first: those left are a suffix.
        let first = s
            .locs
            .partition_point(|l| l.obj.wal_seq().is_none_or(|q| q < compacted));
        s.locs.get(first).map_or(s.next_offset, |l| l.base_offset)
    }

    /// The aborted transactions of `stream` retention has not passed.
    pub fn aborted_txns(&self, stream: StreamId) -> Result<Vec<crate::AbortedTxn>, Error> {
        let core = self.inner.lock();
        Ok(core.durable_stream(stream)?.aborted.clone())
    }

    /// Max timestamp of the durable index entry holding `offset`, or of the
    /// first after it (of several batches: the largest of theirs).
    pub fn timestamp_at(&self, stream: StreamId, offset: i64) -> Option<i64> {
        let core = self.inner.lock();
        let s = core.durable.streams.get(&stream)?;
        s.locs.get(s.find(offset)).map(|l| l.max_timestamp)
    }

    /// Shows `f` the durable batches of `stream` from `from` on that end at
    /// or before `to`, about `max_bytes` of them (at least one index
    /// entry's), and applies what it decides, durably. Call again from
    /// [`Rewrote::next`] for more; it stops early (nothing read) at batches
    /// compaction has not been through yet. When anything changes, every
    /// index entry read moves into the new object, batches kept or not
    /// shown included. The stream's last batch is never dropped.
    pub async fn rewrite(
        &self,
        stream: StreamId,
        from: i64,
        to: i64,
        max_bytes: u64,
        mut f: impl FnMut(&Bytes) -> Change,
    ) -> Result<Rewrote, Error> {
        let _turn = self.inner.maintenance.lock().await;
        let (locs, from, stream_end) = {
            let core = self.inner.lock();
            if let Some(e) = &core.failed {
                return Err(e.clone());
            }
            // A closing log takes no entry: its object would be left behind.
            if core.closing {
                return Err(Error::Closed);
            }
            let s = core.durable_stream(stream)?;
            let from = from.max(s.log_start);
            // Only batches compaction has been through: it takes the rest,
            // oldest first, as a suffix of each stream's index.
            let compacted = core.durable.compacted_below;
            let mut total = 0u64;
            let locs: Vec<BatchLoc> = s.locs[s.find(from)..]
                .iter()
                .take_while(|l| l.base_offset < to && (l.batches > 1 || l.end_offset() <= to))
                .take_while(|l| l.obj.wal_seq().is_none_or(|q| q < compacted))
                .take_while(|l| {
                    let first = total == 0;
                    total += l.len as u64;
                    first || total <= max_bytes
                })
                .copied()
                .collect();
            (locs, from, s.next_offset)
        };
        let mut done = Rewrote {
            next: from,
            ..Rewrote::default()
        };
        if locs.is_empty() {
            return Ok(done);
        }
        let wanted: Vec<(StreamId, BatchLoc)> = locs.iter().map(|l| (stream, *l)).collect();
        let bytes = self.batches_of(&wanted).await?;
        // Each entry's batches with what becomes of them; only those ending
        // in `from..=to` are shown.
        let mut entries: Vec<(BatchLoc, Vec<(Batch, Change)>)> = Vec::with_capacity(locs.len());
        for (l, b) in locs.iter().zip(bytes) {
            let batches = self.split(l, b)?;
            let mut changes = Vec::with_capacity(batches.len());
            for batch in batches {
                let shown = batch.end_offset > from && batch.end_offset <= to;
                let change = if shown {
                    done.batches_read += 1;
                    done.bytes_read += batch.bytes.len() as u64;
                    done.next = batch.end_offset;
                    match f(&batch.bytes) {
                        // A stream never ends in a gap: a reader there would
                        // find no batch to move it on to the high watermark.
                        Change::Drop if batch.end_offset >= stream_end => Change::Keep,
                        c => c,
                    }
                } else {
                    Change::Keep
                };
                changes.push((batch, change));
            }
            entries.push((*l, changes));
        }
        if entries
            .iter()
            .flat_map(|e| &e.1)
            .all(|(_, c)| *c == Change::Keep)
        {
            return Ok(done);
        }
        let header = format::data_header_len(1) as u32;
        let mut at = header;
        let mut chunks = vec![Bytes::new()];
        let mut moved = Vec::with_capacity(entries.len());
        let too_big = || Error::Unavailable("rewrite over 4 GiB".into());
        for (l, batches) in entries {
            let pos = at;
            let mut left: Option<Left> = None;
            for (batch, change) in batches {
                let new = match change {
                    Change::Drop => {
                        done.dropped += 1;
                        continue;
                    }
                    Change::Keep => batch.bytes,
                    Change::Replace(new) if new == batch.bytes => new,
                    Change::Replace(new) => {
                        keeps_offsets(&l, &batch, &new)?;
                        done.replaced += 1;
                        done.bytes_written += new.len() as u64;
                        new
                    }
                };
                let max_timestamp = match l.batches {
                    1 => l.max_timestamp,
                    _ => batch::frame(&new).map_or(batch.max_timestamp, |f| f.max_timestamp),
                };
                let left = left.get_or_insert(Left {
                    base_offset: batch.base_offset,
                    end_offset: batch.end_offset,
                    batches: 0,
                    max_timestamp,
                });
                left.end_offset = batch.end_offset;
                left.batches += 1;
                left.max_timestamp = left.max_timestamp.max(max_timestamp);
                at = u32::try_from(new.len())
                    .ok()
                    .and_then(|n| at.checked_add(n))
                    .ok_or_else(too_big)?;
                chunks.push(new);
            }
            moved.push(Rewritten {
                base_offset: l.base_offset,
                was: (l.obj, l.pos),
                now: left.map(|_| (pos, at - pos)),
                // One batch keeps its entry's offsets and timestamp.
                left: left.filter(|_| l.batches > 1),
            });
        }
        let object = self.next_data_object()?;
        let size = if moved.iter().all(|b| b.now.is_none()) {
            // Nothing to store: the entry only drops batches.
            0
        } else {
            let inner = &self.inner;
            let first = moved.iter().find(|b| b.now.is_some());
            let run = Run {
                stream,
                from: first.map_or(from, |b| b.base_offset),
                to: locs.last().map_or(done.next, BatchLoc::end_offset),
                end: at,
                index_bytes: 0,
            };
            chunks[0] = format::encode_data_header(inner.writer, &[run], &[header as u64]);
            let (e, n) = object.data_parts().expect("a data object");
            let path = data_path(&inner.prefix, e, n);
            let payload = PutPayload::from_iter(chunks);
            let log = self.clone();
            background(inner.cfg.background.as_ref(), async move {
                let inner = &log.inner;
                put::create_resolved(&*inner.store, &path, payload, inner.writer, &inner.cfg).await
            })
            .await?;
            at
        };
        let entry = Entry::Rewrite {
            object,
            stream,
            size,
            batches: moved,
        };
        self.append(vec![entry]).await?.durable().await?;
        self.inner.cfg.stats.rewrites.fetch_add(1, Relaxed);
        Ok(done)
    }

    /// The bytes of `locs` (each a stream's batch): from the tail, else
    /// from their objects in one load, each block read once, without
    /// filling the read cache.
    pub(super) async fn batches_of(
        &self,
        locs: &[(StreamId, BatchLoc)],
    ) -> Result<Vec<Bytes>, Error> {
        let mut out: Vec<Option<Bytes>> = {
            let core = self.inner.lock();
            locs.iter().map(|(s, l)| core.tail.one(*s, l)).collect()
        };
        let missing: Vec<BatchLoc> = locs
            .iter()
            .zip(&out)
            .filter(|(_, b)| b.is_none())
            .map(|((_, l), _)| *l)
            .collect();
        if !missing.is_empty() {
            let (mut loaded, _) = self.load(&missing, For::Maintenance).await?;
            loaded.reverse();
            for b in out.iter_mut().filter(|b| b.is_none()) {
                *b = loaded.pop();
            }
        }
        Ok(out.into_iter().map(|b| b.unwrap_or_default()).collect())
    }
}

/// A replacement keeps its batch's base offset (its first 8 bytes), and
/// inside an entry of several also the offsets its framing says it spans.
fn keeps_offsets(l: &BatchLoc, was: &Batch, new: &Bytes) -> Result<(), Error> {
    let kept = match l.batches {
        1 => new.len() >= 8 && new[..8] == was.base_offset.to_be_bytes(),
        _ => batch::frame_whole(new)
            .is_some_and(|f| f.base_offset == was.base_offset && f.end_offset() == was.end_offset),
    };
    if !kept {
        return Err(Error::Unavailable(
            "a rewritten batch must keep its base offset and the offsets it spans".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::{BufMut, BytesMut};
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::ObjectStore;

    use super::Change;
    use crate::state::{ObjId, State};
    use crate::{Entry, LogConfig, Rewritten, ShardLog, StreamId};

    const S: StreamId = StreamId(1);

    /// A "batch" of `offsets` offsets: the 8-byte base offset slot, then a
    /// tag and padding to `len` bytes.
    fn batch(tag: u8, offsets: u32, len: usize) -> Entry {
        let mut b = BytesMut::zeroed(8);
        b.put_u8(tag);
        b.resize(len, tag);
        Entry::Append {
            stream: S,
            base_offset: 0,
            offsets,
            max_timestamp: tag as i64,
            producer: None,
            data: b.freeze(),
        }
    }

    async fn read_all(log: &ShardLog, from: i64) -> Vec<(i64, u8, usize)> {
        let r = log.read(S, from, 1 << 20, true).await.expect("read");
        r.batches
            .iter()
            .map(|b| {
                let base = i64::from_be_bytes(b[..8].try_into().expect("8"));
                (base, b[8], b.len())
            })
            .collect()
    }

    async fn open(store: &Arc<dyn ObjectStore>, cfg: &LogConfig) -> ShardLog {
        ShardLog::open(store.clone(), Path::from("s"), cfg.clone())
            .await
            .expect("open")
    }

    /// Replaced, dropped and kept batches read as rewritten, from the
    /// tail, from objects after a restart, and after compaction merged them.
    #[tokio::test]
    async fn a_rewrite_replaces_and_drops_batches_durably() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cfg = LogConfig {
            maintain_every: Duration::from_millis(10),
            compact_after: Duration::from_millis(10),
            ..LogConfig::default()
        };
        let log = open(&store, &cfg).await;
        let entries = vec![
            Entry::CreateStream { stream: S },
            batch(1, 2, 100),
            batch(2, 3, 100),
            batch(3, 1, 100),
        ];
        log.append(entries)
            .await
            .expect("append")
            .durable()
            .await
            .expect("durable");
        assert_eq!(
            read_all(&log, 0).await,
            [(0, 1, 100), (2, 2, 100), (5, 3, 100)]
        );
        let stored = log.stored_bytes();
        // Compaction has not been through them: a rewrite stops there.
        let early = log.rewrite(S, 0, 6, 1 << 20, |_| Change::Drop).await;
        assert_eq!(early.expect("rewrite").batches_read, 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = log.rewrite(S, 0, 6, 1 << 20, |_| Change::Keep).await;
            if r.expect("rewrite").batches_read == 3 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no compaction");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let done = log
            .rewrite(S, 0, 6, 1 << 20, |b| match b[8] {
                1 => {
                    let mut nb = BytesMut::from(&b[..40]);
                    nb[8] = 11;
                    Change::Replace(nb.freeze())
                }
                2 => Change::Drop,
                _ => Change::Keep,
            })
            .await
            .expect("rewrite");
        assert_eq!(
            (done.next, done.batches_read, done.replaced, done.dropped),
            (6, 3, 1, 1)
        );
        let want = [(0, 11, 40), (5, 3, 100)];
        assert_eq!(read_all(&log, 0).await, want);
        // An offset in the dropped batch reads on from the next one.
        assert_eq!(read_all(&log, 3).await, [(5, 3, 100)]);
        // The kept batch moved with the replaced one: the WAL object has
        // nothing left in it.
        assert!(log
            .inner
            .lock()
            .durable
            .garbage
            .iter()
            .any(|o| o.wal_seq().is_some()));
        assert_eq!(log.stored_bytes(), stored - 160, "the live count follows");
        assert_eq!(
            log.offsets(S).expect("offsets"),
            (0, 6),
            "offsets do not move"
        );
        drop(log);

        // A new owner replays it the same way.
        let log = open(&store, &cfg).await;
        assert_eq!(read_all(&log, 0).await, want);
        assert_eq!(log.stored_bytes(), stored - 160);
        // Compaction running after it (of the batches appended below)
        // leaves the rewritten ones readable.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while log
            .inner
            .cfg
            .stats
            .compactions
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            assert!(tokio::time::Instant::now() < deadline, "no compaction");
            log.append(vec![batch(4, 1, 10)])
                .await
                .expect("append")
                .durable()
                .await
                .expect("durable");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let all = read_all(&log, 0).await;
        assert_eq!(all[..2], want);
        drop(log);
        let log = open(&store, &cfg).await;
        assert_eq!(read_all(&log, 0).await[..2], want);

        // Dropping everything leaves the stream's last batch.
        let (_, hw) = log.offsets(S).expect("offsets");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while read_all(&log, 0).await.len() > 1 {
            assert!(tokio::time::Instant::now() < deadline, "never down to one");
            let _ = log.rewrite(S, 0, hw, 1 << 20, |_| Change::Drop).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let last = read_all(&log, 0).await;
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].0 + 1, hw, "the last batch, one offset long");
    }

    /// The entry leaves a batch no longer where the rewrite read it (moved
    /// by compaction, or gone), and an object nothing kept is garbage.
    #[test]
    fn a_rewrite_of_a_moved_batch_leaves_it_alone() {
        let mut st = State::default();
        st.apply(&Entry::CreateStream { stream: S }, 1, 0);
        let at = |base: i64, e: Entry| match e {
            Entry::Append {
                stream,
                offsets,
                max_timestamp,
                producer,
                data,
                ..
            } => Entry::Append {
                stream,
                base_offset: base,
                offsets,
                max_timestamp,
                producer,
                data,
            },
            e => e,
        };
        st.apply(&at(0, batch(1, 2, 100)), 5, 61);
        st.apply(&at(2, batch(2, 1, 100)), 5, 161);
        let before = st.streams[&S].locs.clone();
        let object = ObjId::data(1, 0);
        let stale = Entry::Rewrite {
            object,
            stream: S,
            size: 500,
            batches: vec![
                // Read at another position: compaction moved it since.
                Rewritten {
                    base_offset: 0,
                    was: (ObjId::wal(5), 999),
                    now: Some((0, 50)),
                    left: None,
                },
                // Not a batch's base offset.
                Rewritten {
                    base_offset: 1,
                    was: (ObjId::wal(5), 61),
                    now: None,
                    left: None,
                },
            ],
        };
        st.apply(&stale, 6, 0);
        assert_eq!(st.streams[&S].locs, before);
        assert!(
            st.garbage.contains(&object),
            "nothing references the object"
        );
        assert_eq!(st.refs.get(&ObjId::wal(5)), Some(&2));

        let fresh = Entry::Rewrite {
            object: ObjId::data(1, 1),
            stream: S,
            size: 500,
            batches: vec![
                Rewritten {
                    base_offset: 0,
                    was: (ObjId::wal(5), 61),
                    now: Some((0, 50)),
                    left: None,
                },
                Rewritten {
                    base_offset: 2,
                    was: (ObjId::wal(5), 161),
                    now: None,
                    left: None,
                },
            ],
        };
        st.apply(&fresh, 7, 0);
        let locs = &st.streams[&S].locs;
        assert_eq!(locs.len(), 1);
        assert_eq!(
            (locs[0].obj, locs[0].pos, locs[0].len, locs[0].offsets),
            (ObjId::data(1, 1), 0, 50, 2)
        );
        assert_eq!(st.streams[&S].bytes, 50);
        assert!(
            st.garbage.contains(&ObjId::wal(5)),
            "the WAL object is unreferenced"
        );
        assert_eq!(st.streams[&S].next_offset, 3);
    }
}
