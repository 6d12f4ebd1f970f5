//! The read path: batches from the in-memory tail, else from blocks of WAL
//! and data objects (the block cache, else ranged GETs, several at once),
//! with read-ahead for readers the store had to serve.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::cache::{BlockCache, BlockId, Loading};
use super::{background, obj_path, put, with_base_offset, Inner, Read, ShardLog};
use crate::state::BatchLoc;
use crate::{AbortedTxn, Error, StreamId};
use floe_common::batch;

/// An index entry's bytes: one batch, or its several batches.
enum Got {
    One(Bytes),
    Several(Vec<Batch>),
}

/// One batch of an index entry.
pub(super) struct Batch {
    pub base_offset: i64,
    pub end_offset: i64,
    pub max_timestamp: i64,
    pub bytes: Bytes,
}

/// GETs one read has running at once.
const READ_CONCURRENCY: usize = 8;
/// Largest ranged GET: consecutive blocks one read needs are fetched
/// together up to this size.
const MAX_GET_BYTES: usize = 16 << 20;
/// How far past a read that missed the tail the cache is warmed, in the
/// stream's own bytes.
const READ_AHEAD_BYTES: usize = 64 << 20;
/// Blocks read-ahead may have loading at once, per shard: deep enough to
/// keep GETs going for a consumer of many partitions (each block of a WAL
/// object holds a little of every partition), bounded so that many
/// partitions' read-aheads cannot flood the cache.
const READ_AHEAD_BLOCKS: usize = 16;

impl ShardLog {
    /// Reads whole batches from `from` on, up to `max_bytes`, never past the
    /// durable high watermark. With `min_one`, the first batch comes back even
    /// when it alone exceeds `max_bytes` (Kafka's KIP-74 rule, which a fetch
    /// grants only to its first non-empty partition).
    pub async fn read(
        &self,
        stream: StreamId,
        from: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<Read, Error> {
        self.read_isolated(stream, from, max_bytes, min_one, false)
            .await
    }

    /// [`ShardLog::read`], and with `committed` only below the last stable
    /// offset, with the aborted transactions among the batches returned.
    pub async fn read_isolated(
        &self,
        stream: StreamId,
        from: i64,
        max_bytes: usize,
        min_one: bool,
        committed: bool,
    ) -> Result<Read, Error> {
        let mut out = Read::default();
        // The index entries read, and their batches where the tail has them.
        let mut entries: Vec<(BatchLoc, Option<Got>)> = Vec::new();
        let mut aborted: Vec<AbortedTxn> = Vec::new();
        let limit;
        {
            let core = self.inner.lock();
            let s = core.durable_stream(stream)?;
            out.log_start = s.log_start;
            out.high_watermark = s.next_offset;
            out.last_stable = s.last_stable();
            limit = if committed {
                out.last_stable
            } else {
                s.next_offset
            };
            if from < s.log_start || from > s.next_offset {
                return Err(Error::OffsetOutOfRange {
                    log_start: s.log_start,
                    high_watermark: s.next_offset,
                });
            }
            // Whole batches are counted here; an entry of several is taken
            // while it starts below the limit and within the bytes, and its
            // batches are picked once read (the first may hold bytes from
            // before `from`, which do not count).
            let mut total = 0usize;
            for loc in &s.locs[s.find(from)..] {
                let several = loc.batches > 1;
                if loc.base_offset >= limit || (!several && loc.end_offset() > limit) {
                    break;
                }
                let over = total + loc.len as usize > max_bytes;
                if over && (total > 0 || (!min_one && !several)) {
                    break;
                }
                if !(several && entries.is_empty()) {
                    total += loc.len as usize;
                }
                let tail = match several {
                    false => core.tail.one(stream, loc).map(Got::One),
                    true => core.tail.several(stream, loc).map(Got::Several),
                };
                entries.push((*loc, tail));
            }
            if committed && !entries.is_empty() {
                aborted.extend(s.aborted.iter().filter(|a| a.last_offset >= from));
            }
        }
        let missing: Vec<BatchLoc> = entries
            .iter()
            .filter(|(_, b)| b.is_none())
            .map(|(l, _)| *l)
            .collect();
        let mut went_to_store = false;
        if !missing.is_empty() {
            let (loaded, store) = self.load(&missing, For::Reader).await?;
            went_to_store = store;
            let mut loaded = loaded.into_iter();
            for (loc, b) in entries.iter_mut().filter(|(_, b)| b.is_none()) {
                let bytes = loaded.next().unwrap_or_default();
                *b = Some(match loc.batches {
                    1 => Got::One(bytes),
                    _ => Got::Several(self.split(loc, bytes)?),
                });
            }
        }
        let mut read_to = from;
        let mut total = 0usize;
        // The same rules as above, batch by batch: exact where an entry
        // of several was read.
        let mut take = |end: i64, b: Bytes| {
            let over = total + b.len() > max_bytes;
            if end <= from {
                return true;
            }
            if end > limit || (over && (total > 0 || !min_one)) {
                return false;
            }
            total += b.len();
            read_to = end;
            out.batches.push(b);
            true
        };
        // (Every entry has its bytes by now.)
        'entries: for (loc, got) in entries {
            match got.unwrap_or(Got::One(Bytes::new())) {
                Got::One(b) => {
                    if !take(loc.end_offset(), b) {
                        break;
                    }
                }
                Got::Several(batches) => {
                    for batch in batches {
                        if !take(batch.end_offset, batch.bytes) {
                            break 'entries;
                        }
                    }
                }
            }
        }
        if committed && read_to > from {
            aborted.retain(|a| a.first_offset < read_to);
            out.aborted = aborted;
        }
        // A reader the store had to serve is likely to continue: warm the
        // cache with the blocks holding what follows, if it can hold them.
        if went_to_store
            && self.inner.cfg.read_cache_bytes >= 4 * READ_AHEAD_BLOCKS * self.inner.cfg.block_bytes
        {
            self.read_ahead(stream, read_to, max_bytes.max(READ_AHEAD_BYTES));
        }
        Ok(out)
    }

    /// The batches of an index entry from its bytes: one as it is, several
    /// found by their framing, which must agree with the entry.
    pub(super) fn split(&self, loc: &BatchLoc, mut b: Bytes) -> Result<Vec<Batch>, Error> {
        if loc.batches == 1 {
            return Ok(vec![Batch {
                base_offset: loc.base_offset,
                end_offset: loc.end_offset(),
                max_timestamp: loc.max_timestamp,
                bytes: b,
            }]);
        }
        let corrupt = |why: &str| Error::Corrupt {
            path: obj_path(&self.inner.prefix, loc.obj).to_string(),
            why: format!("index entry at offset {}: {why}", loc.base_offset),
        };
        // (A batch has a 61-byte header: no trust in a count read back.)
        let mut out = Vec::with_capacity((loc.batches as usize).min(b.len() / 61 + 1));
        let mut end = loc.base_offset;
        while !b.is_empty() {
            let f = batch::frame(&b).ok_or_else(|| corrupt("a batch's framing"))?;
            let first = out.is_empty();
            if (first && f.base_offset != loc.base_offset) || f.base_offset < end {
                return Err(corrupt("batches out of order"));
            }
            end = f.end_offset();
            out.push(Batch {
                base_offset: f.base_offset,
                end_offset: end,
                max_timestamp: f.max_timestamp,
                bytes: b.split_to(f.len),
            });
        }
        if out.len() != loc.batches as usize || end != loc.end_offset() {
            return Err(corrupt("batches other than the entry says"));
        }
        Ok(out)
    }

    /// Warms the cache with the blocks holding the next `bytes` of the
    /// stream, while fewer than `READ_AHEAD_BLOCKS` blocks are loading: in
    /// multi-partition objects a partition's next bytes are spread over many
    /// blocks.
    fn read_ahead(&self, stream: StreamId, from: i64, bytes: usize) {
        let blocks = {
            let core = self.inner.lock();
            let Some(s) = core.durable.streams.get(&stream) else {
                return;
            };
            let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            let max_blocks = READ_AHEAD_BLOCKS.saturating_sub(cache.loading.len());
            if max_blocks == 0 {
                return;
            }
            let mut blocks: Vec<BlockId> = Vec::new();
            let mut total = 0usize;
            for loc in s.locs[s.find(from)..].iter().take_while(|l| {
                total += l.len as usize;
                total <= bytes
            }) {
                if core.tail.one(stream, loc).is_some() {
                    continue;
                }
                for id in self.blocks_of(loc) {
                    if !blocks.contains(&id)
                        && !cache.contains(id)
                        && !cache.loading.contains_key(&id)
                    {
                        blocks.push(id);
                    }
                }
                if blocks.len() >= max_blocks {
                    break;
                }
            }
            blocks.truncate(max_blocks);
            blocks
        };
        if blocks.is_empty() {
            return;
        }
        let log = self.clone();
        // A failure here only costs the cache a miss later.
        tokio::spawn(async move { log.blocks(blocks, For::Reader).await });
    }

    fn blocks_of(&self, loc: &BatchLoc) -> impl Iterator<Item = BlockId> {
        let b = self.inner.cfg.block_bytes as u64;
        let first = loc.pos as u64 / b;
        let last = (loc.pos as u64 + loc.len.max(1) as u64 - 1) / b;
        let obj = loc.obj;
        (first..=last).map(move |i| (obj, i as u32))
    }

    /// The bytes of batches (not looked up in the tail) from their objects'
    /// blocks: cached, else one ranged GET per block, several at once. Says
    /// whether any block had to come from the store.
    pub(super) async fn load(
        &self,
        locs: &[BatchLoc],
        by: For,
    ) -> Result<(Vec<Bytes>, bool), Error> {
        let mut wanted: Vec<BlockId> = locs.iter().flat_map(|l| self.blocks_of(l)).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let misses = {
            let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            wanted.iter().filter(|&&id| !cache.contains(id)).count()
        };
        // The cache's counters are readers': maintenance's misses could
        // never have been hits.
        if by == For::Reader {
            let stats = &self.inner.cfg.stats;
            stats
                .cache_hits
                .fetch_add((wanted.len() - misses) as u64, Relaxed);
            stats.cache_misses.fetch_add(misses as u64, Relaxed);
        }
        let blocks = self.blocks(wanted, by).await?;
        let size = self.inner.cfg.block_bytes;
        let mut out = Vec::with_capacity(locs.len());
        for l in locs {
            let (start, end) = (l.pos as usize, l.pos as usize + l.len as usize);
            let mut parts = self.blocks_of(l).map(|id| {
                let block = &blocks[&id];
                let at = id.1 as usize * size;
                let range = start.max(at) - at..end.min(at + size) - at;
                block.get(range.clone()).map(|_| block.slice(range))
            });
            let whole = if l.len as usize <= size && start / size == (end - 1) / size {
                parts.next().flatten()
            } else {
                // A batch across a block boundary: the one copy on this path.
                parts
                    .try_fold(BytesMut::with_capacity(l.len as usize), |mut acc, p| {
                        acc.extend_from_slice(&p?);
                        Some(acc)
                    })
                    .map(BytesMut::freeze)
            };
            let Some(b) = whole.filter(|b| b.len() == l.len as usize) else {
                let path = obj_path(&self.inner.prefix, l.obj).to_string();
                return Err(Error::Corrupt {
                    path,
                    why: "batch past the object's end".into(),
                });
            };
            // One batch's base offset is the index's; several carry theirs.
            out.push(if l.batches == 1 {
                with_base_offset(b, l.base_offset)
            } else {
                b
            });
        }
        Ok((out, misses > 0))
    }

    /// Blocks from the cache, from GETs already running (joined), else from
    /// the store: consecutive missing blocks of one object are fetched by one
    /// ranged GET of up to `MAX_GET_BYTES` (fewer round trips on S3) and
    /// cached block by block (for a reader).
    async fn blocks(
        &self,
        mut ids: Vec<BlockId>,
        by: For,
    ) -> Result<HashMap<BlockId, Bytes>, Error> {
        ids.sort_unstable();
        ids.dedup();
        let span = (MAX_GET_BYTES / self.inner.cfg.block_bytes).max(1);
        let mut ready = HashMap::with_capacity(ids.len());
        let mut waits: Vec<(BlockId, Loading)> = Vec::new();
        {
            let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            let mut run: Vec<BlockId> = Vec::new();
            for id in ids {
                let hit = match by {
                    For::Reader => cache.get(id),
                    // Not a use: these blocks are about to be superseded.
                    For::Maintenance => cache.peek(id),
                };
                if let Some(b) = hit {
                    ready.insert(id, b);
                    continue;
                }
                if let Some(l) = cache.loading.get(&id) {
                    waits.push((id, l.clone()));
                    continue;
                }
                let extends = run
                    .last()
                    .is_some_and(|l: &BlockId| l.0 == id.0 && l.1 + 1 == id.1 && run.len() < span);
                if !extends {
                    self.start_get(&mut cache, std::mem::take(&mut run), by, &mut waits);
                }
                run.push(id);
            }
            self.start_get(&mut cache, run, by, &mut waits);
        }
        let loads: Vec<_> = waits
            .into_iter()
            .map(|(id, l)| l.map(move |r| r.map(|b| (id, b))))
            .collect();
        let loaded = futures::stream::iter(loads)
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        ready.extend(loaded);
        Ok(ready)
    }

    /// Starts one ranged GET for consecutive blocks `run`. A reader's is
    /// made here and registered block by block, so other readers join it;
    /// maintenance's is made where its store calls go and registered
    /// nowhere.
    fn start_get(
        &self,
        cache: &mut BlockCache,
        run: Vec<BlockId>,
        by: For,
        waits: &mut Vec<(BlockId, Loading)>,
    ) {
        if run.is_empty() {
            return;
        }
        let size = self.inner.cfg.block_bytes;
        let inner = self.inner.clone();
        let whole = match by {
            For::Reader => load_range(inner, run.clone()).boxed().shared(),
            For::Maintenance => {
                let (rt, run) = (inner.cfg.background.clone(), run.clone());
                async move { background(rt.as_ref(), get_run(inner, run)).await }
                    .boxed()
                    .shared()
            }
        };
        for (i, id) in run.into_iter().enumerate() {
            let block: Loading = whole
                .clone()
                .map(move |r| {
                    r.map(|b| b.slice((i * size).min(b.len())..((i + 1) * size).min(b.len())))
                })
                .boxed()
                .shared();
            if by == For::Reader {
                cache.loading.insert(id, block.clone());
            }
            waits.push((id, block));
        }
    }
}

/// Who blocks are loaded for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum For {
    /// A reader: what it loads is cached, and other readers join its loads.
    Reader,
    /// Maintenance: it joins readers' loads, but makes its own where its
    /// other store calls go (`LogConfig::background`), unregistered and
    /// uncached, so no reader waits on a niced thread, and blocks about to
    /// be compacted away evict nothing.
    Maintenance,
}

/// GETs consecutive blocks of one object in one ranged GET.
async fn get_run(inner: Arc<Inner>, run: Vec<BlockId>) -> Result<Bytes, Error> {
    let (obj, first) = run[0];
    let path = obj_path(&inner.prefix, obj);
    let size = inner.cfg.block_bytes as u64;
    let range = first as u64 * size..(first as u64 + run.len() as u64) * size;
    match put::get_range(&*inner.store, &path, Some(range), inner.cfg.put_timeout).await? {
        Some(b) => Ok(b),
        None => Err(Error::Unavailable(format!(
            "{path} is in the index but not in the store"
        ))),
    }
}

/// [`get_run`] into the cache, for a reader.
async fn load_range(inner: Arc<Inner>, run: Vec<BlockId>) -> Result<Bytes, Error> {
    let got = get_run(inner.clone(), run.clone()).await;
    let size = inner.cfg.block_bytes;
    let mut cache = inner.cache.lock().unwrap_or_else(|p| p.into_inner());
    for id in &run {
        cache.loading.remove(id);
    }
    let b = got?;
    for (i, id) in run.iter().enumerate() {
        let (start, end) = ((i * size).min(b.len()), ((i + 1) * size).min(b.len()));
        if start < end {
            cache.insert(*id, b.slice(start..end));
        }
    }
    Ok(b)
}
