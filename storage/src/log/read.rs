//! The read path: batches from the in-memory tail, else from whole WAL
//! objects (the object cache, else the store, several at once), with
//! read-ahead for readers the store had to serve.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::{put, wal_path, with_base_offset, Inner, Read, ShardLog};
use crate::state::BatchLoc;
use crate::{Error, StreamId};

/// WAL objects one read fetches from the store at once.
const READ_CONCURRENCY: usize = 8;
/// How far past a read that missed the tail the cache is warmed.
const READ_AHEAD_BYTES: usize = 16 << 20;

impl ShardLog {
    /// Reads whole batches from `from` on, up to `max_bytes`, never past the
    /// durable high watermark. With `min_one`, the first batch comes back even
    /// when it alone exceeds `max_bytes` (Kafka's KIP-74 rule, which a fetch
    /// grants only to its first non-empty partition).
    pub async fn read(&self, stream: StreamId, from: i64, max_bytes: usize, min_one: bool) -> Result<Read, Error> {
        let mut out = Read::default();
        let mut missing: Vec<(usize, BatchLoc)> = Vec::new();
        let mut read_to = from;
        {
            let core = self.inner.lock();
            let s = core.durable.streams.get(&stream).ok_or(Error::UnknownStream)?;
            out.log_start = s.log_start;
            out.high_watermark = s.next_offset;
            if from < s.log_start || from > s.next_offset {
                return Err(Error::OffsetOutOfRange { log_start: s.log_start, high_watermark: s.next_offset });
            }
            let mut total = 0usize;
            for loc in &s.locs[s.find(from)..] {
                let over = total + loc.len as usize > max_bytes;
                if over && (total > 0 || !min_one) {
                    break;
                }
                total += loc.len as usize;
                read_to = loc.end_offset();
                match core.tail.get(stream, loc.base_offset) {
                    Some(b) => out.batches.push(b),
                    None => {
                        missing.push((out.batches.len(), *loc));
                        out.batches.push(Bytes::new());
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let went_to_store = self.fetch_missing(&mut out.batches, &missing).await?;
        // A reader the store had to serve is likely to continue: warm the
        // cache with the objects holding what follows, if it can hold them.
        if went_to_store && self.inner.cfg.read_cache_bytes >= self.inner.cfg.flush_bytes {
            self.read_ahead(stream, read_to, max_bytes.max(READ_AHEAD_BYTES));
        }
        Ok(out)
    }

    fn read_ahead(&self, stream: StreamId, from: i64, bytes: usize) {
        let seqs = {
            let core = self.inner.lock();
            let Some(s) = core.durable.streams.get(&stream) else { return };
            let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            let mut seqs: Vec<u64> = Vec::new();
            let mut total = 0usize;
            for loc in s.locs[s.find(from)..].iter().take_while(|l| {
                total += l.len as usize;
                total <= bytes
            }) {
                let known = seqs.last() == Some(&loc.seq) || cache.contains(loc.seq);
                if !known && core.tail.get(stream, loc.base_offset).is_none() {
                    seqs.push(loc.seq);
                }
            }
            seqs
        };
        if seqs.is_empty() {
            return;
        }
        let log = self.clone();
        tokio::spawn(async move {
            let loads = seqs.into_iter().map(|seq| {
                let log = log.clone();
                async move { log.object(seq).await }
            });
            // A failure here only costs the cache a miss later.
            let _ = futures::stream::iter(loads).buffer_unordered(READ_CONCURRENCY).collect::<Vec<_>>().await;
        });
    }

    /// Fills batches that fell out of the tail from whole WAL objects: from
    /// the object cache, else one GET per object, several at once. Says
    /// whether any object had to come from the store.
    async fn fetch_missing(&self, batches: &mut [Bytes], missing: &[(usize, BatchLoc)]) -> Result<bool, Error> {
        let mut by_seq: BTreeMap<u64, Vec<(usize, BatchLoc)>> = BTreeMap::new();
        for m in missing {
            by_seq.entry(m.1.seq).or_default().push(*m);
        }
        let cached: Vec<bool> = {
            let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            by_seq.keys().map(|&seq| cache.contains(seq)).collect()
        };
        let objects = futures::stream::iter(by_seq.keys().copied())
            .map(|seq| async move { self.object(seq).await.map(|o| (seq, o)) })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect::<HashMap<u64, Bytes>>()
            .await?;
        for (seq, locs) in by_seq {
            let obj = &objects[&seq];
            for (i, l) in locs {
                let range = l.pos as usize..l.pos as usize + l.len as usize;
                let Some(b) = obj.get(range) else {
                    return Err(Error::Corrupt { path: wal_path(&self.inner.prefix, seq).to_string(), why: "batch past the object's end".into() });
                };
                batches[i] = with_base_offset(obj.slice_ref(b), l.base_offset);
            }
        }
        Ok(cached.contains(&false))
    }

    /// A whole WAL object: cached, already being loaded (joined), or one GET.
    async fn object(&self, seq: u64) -> Result<Bytes, Error> {
        let load = {
            let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(o) = cache.get(seq) {
                return Ok(o);
            }
            match cache.loading.get(&seq) {
                Some(l) => l.clone(),
                None => {
                    let inner = self.inner.clone();
                    let l = load_object(inner, seq).boxed().shared();
                    cache.loading.insert(seq, l.clone());
                    l
                }
            }
        };
        load.await
    }

}

/// GETs `wal/{seq}` into the object cache.
async fn load_object(inner: Arc<Inner>, seq: u64) -> Result<Bytes, Error> {
    let path = wal_path(&inner.prefix, seq);
    let got = put::get(&*inner.store, &path, inner.cfg.put_timeout).await;
    let mut cache = inner.cache.lock().unwrap_or_else(|p| p.into_inner());
    cache.loading.remove(&seq);
    match got? {
        Some(obj) => {
            cache.insert(seq, obj.clone());
            Ok(obj)
        }
        None => Err(Error::Unavailable(format!("{path} is in the index but not in the store"))),
    }
}

