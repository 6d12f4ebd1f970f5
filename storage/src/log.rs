//! [`ShardLog`]: the single writer of one shard.
//!
//! Appends take offsets at once under a short lock and join the open flush.
//! A flusher task seals the open flush on the linger timer (paced: one seal
//! per linger on average, two at once after a quiet spell) or the size trigger
//! into `wal/{seq}`, keeps up to `max_in_flight` PUTs going, and acknowledges
//! flushes strictly in sequence order: an entry is acknowledged, and becomes
//! readable, only when its object and every object before it are durable.
//! A PUT that cannot be completed poisons the log: everything not yet
//! acknowledged fails, and the owner must reopen (fencing its own leftovers).
//!
//! Here: settings, the handle, appends and state. `open.rs` takes ownership,
//! `flush.rs` runs the flusher and checkpoints, `put.rs` resolves object
//! writes, `read.rs` serves reads, `cache.rs` keeps WAL objects read back.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::ObjectStore;
use tokio::sync::{oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::format::Writer;
use crate::producers::{self, AbortedTxn, Check, ProducerState};
use crate::state::{add_counts, BatchLoc, State};
use crate::{Entry, Error, StreamId};

mod cache;
mod compact;
mod flush;
mod follow;
pub use follow::Follower;
#[cfg(test)]
mod index_tests;
pub use rewrite::{Change, Rewrote};
mod open;
mod put;
mod read;
mod rewrite;

/// The log format's bound on flushes in flight. A new owner fences this many
/// sequence numbers past the first free one, so a stale owner's in-flight
/// writes can never land in the valid log. Changing it changes the format.
pub const FENCE_WINDOW: u64 = 8;

/// Settings of one shard log. Defaults suit a local directory; for S3 raise
/// `linger` (each flush is one PUT: a 5 ms linger is at most 200 PUTs/s/shard).
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The pace of flushes sealed by the timer: one per linger, with a burst
    /// of two. The first entry of a flush waits at most about this long for
    /// company, and not at all on a quiet shard. Bounds PUTs per second per
    /// shard to 1 / linger (plus one) while under the size trigger.
    pub linger: Duration,
    /// Size trigger: a flush is sealed at once when it holds this many bytes.
    pub flush_bytes: usize,
    /// PUTs in flight at once (at most [`FENCE_WINDOW`]).
    pub max_in_flight: usize,
    /// The linger timer seals a flush only while fewer than this many are in
    /// flight; beyond that, flushes grow until the size trigger. Lower values
    /// make objects larger under load (PUTs per GiB ≈ 1024 / flush MiB) at
    /// the cost of up to one more PUT's latency. On S3-like stores the PUT
    /// latency alone grows flushes (78-99 PUTs/GiB measured on SeaweedFS with
    /// 1 and 4), so the default lets every slot pipeline.
    pub timer_in_flight: usize,
    /// Appended bytes not yet durable; appends wait beyond it (backpressure).
    pub max_pending_bytes: usize,
    /// Recently written batches kept in memory for reads.
    pub tail_bytes: usize,
    /// WAL objects read back from the store, kept for further reads.
    pub read_cache_bytes: usize,
    /// One object-store call's deadline. A PUT past it is resolved by
    /// retrying the identical bytes and reading back on conflict; a GET or
    /// LIST past it is retried.
    pub put_timeout: Duration,
    /// Attempts per object before the log is poisoned.
    pub put_attempts: u32,
    /// Race a WAL PUT still unanswered after this long with an identical
    /// second one (tail latency on S3; costs at most one extra PUT each).
    pub hedge_after: Option<Duration>,
    /// A checkpoint is written every this many flushes (and on close), once
    /// the WAL written since is at least as large as the last checkpoint:
    /// a shard's index grows with every batch, and without that bound a
    /// log of small batches would write more checkpoint than data.
    pub checkpoint_every: u64,
    /// Compaction indexes a stream's batches in a data object by runs of up
    /// to this many bytes, one index entry each, so the index (in memory
    /// and in every checkpoint) grows with bytes rather than batches. Reads
    /// find a batch inside a run by its framing; retention and
    /// `retention.bytes` drop whole runs. 0: one entry per batch.
    pub index_bytes: u32,
    /// Compaction's target data-object size. WAL objects holding at least
    /// half of it are left where they are (rewriting them would double the
    /// PUTs per GiB for nothing). 0 turns compaction off.
    pub compact_bytes: usize,
    /// A backlog of small WAL objects is compacted at most this fast: a
    /// compaction due by size follows the last one after its bytes at this
    /// rate (never later than `maintain_every`). Compaction writes every
    /// byte again, so unpaced it takes a core and doubles the writes of a
    /// shard written flat out, at its producers' expense (BENCHMARKS.md,
    /// session 29). 0: back to back.
    pub compact_bytes_per_sec: u64,
    /// Compact what waits once this many WAL objects do, however small.
    pub compact_max_objects: usize,
    /// ... or once the oldest waiting object has waited this long.
    pub compact_after: Duration,
    /// How long an object outlives the entry that made it garbage, for reads
    /// already in flight. `None` never deletes anything.
    pub sweep_grace: Option<Duration>,
    /// Compaction and sweeping wake this often. Budget per wake and shard:
    /// at most one data-object PUT and one entry; deletes only of garbage.
    pub maintain_every: Duration,
    /// Garbage waiting for a checkpoint gets one once the last is older than
    /// this: at most one extra checkpoint PUT per interval and shard.
    pub checkpoint_interval: Duration,
    /// Block size of the read cache: one ranged GET each.
    pub block_bytes: usize,
    /// Idempotent producers idle this long are forgotten (Kafka's
    /// `producer.id.expiration.ms`); one that comes back must start its
    /// sequence again. `None` keeps them.
    pub producer_expiry: Option<Duration>,
    /// Where maintenance makes its store calls (compaction's loads and data
    /// objects, sweeping's deletes, checkpoints). On a local directory
    /// those calls are the copies themselves, done by the blocking thread
    /// that makes them: a runtime whose threads run at a lower CPU priority
    /// keeps them off the request path's cores. What maintenance does under
    /// the shard's lock stays on the caller's runtime, so a low-priority
    /// thread never holds that lock, and its loads are neither cached nor
    /// joined by readers, so no reader waits on one. `None`: the caller's
    /// runtime.
    pub background: Option<tokio::runtime::Handle>,
    /// Counters (cache, compaction, sweeping), shared by every log given them.
    pub stats: Arc<LogStats>,
}

/// What the logs did, for `/metrics`.
#[derive(Debug, Default)]
pub struct LogStats {
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub compactions: AtomicU64,
    pub compacted_bytes: AtomicU64,
    pub deleted_objects: AtomicU64,
    pub checkpoints: AtomicU64,
    pub truncations: AtomicU64,
    pub expired_producers: AtomicU64,
    /// Rewrites applied (key compaction's, see `ShardLog::rewrite`).
    pub rewrites: AtomicU64,
    pub duplicates: AtomicU64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(1),
            flush_bytes: 8 << 20,
            max_in_flight: 4,
            timer_in_flight: 4,
            max_pending_bytes: 64 << 20,
            tail_bytes: 64 << 20,
            read_cache_bytes: 1 << 30,
            put_timeout: Duration::from_secs(10),
            put_attempts: 5,
            hedge_after: None,
            checkpoint_every: 512,
            index_bytes: 256 << 10,
            compact_bytes: 8 << 20,
            // Twice the Standard plan's produce quota: a tenant within it
            // never leaves a backlog.
            compact_bytes_per_sec: 32 << 20,
            compact_max_objects: 512,
            compact_after: Duration::from_secs(60),
            sweep_grace: Some(Duration::from_secs(30)),
            maintain_every: Duration::from_secs(1),
            checkpoint_interval: Duration::from_secs(30),
            block_bytes: 4 << 20,
            producer_expiry: Some(Duration::from_secs(24 * 3600)),
            background: None,
            stats: Arc::default(),
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_in_flight == 0 || self.max_in_flight as u64 > FENCE_WINDOW {
            return Err(format!("max_in_flight must be 1..={FENCE_WINDOW}"));
        }
        if self.timer_in_flight == 0 || self.timer_in_flight > self.max_in_flight {
            return Err("timer_in_flight must be 1..=max_in_flight".into());
        }
        if self.flush_bytes == 0 || self.max_pending_bytes < self.flush_bytes {
            return Err("need 0 < flush_bytes <= max_pending_bytes".into());
        }
        if self.put_attempts == 0 || self.checkpoint_every == 0 {
            return Err("put_attempts and checkpoint_every must be positive".into());
        }
        if self.block_bytes == 0 || self.compact_max_objects == 0 || self.maintain_every.is_zero() {
            return Err(
                "block_bytes, compact_max_objects and maintain_every must be positive".into(),
            );
        }
        Ok(())
    }
}

/// The single writer of one shard. Cheap to clone.
#[derive(Clone)]
pub struct ShardLog {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    cfg: LogConfig,
    writer: Writer,
    core: Mutex<Core>,
    /// Wakes the flusher: new entries, or closing.
    kick: Notify,
    /// Bumped whenever the durable state advances; long-polls watch it.
    durable_tx: watch::Sender<u64>,
    /// Bytes appended but not yet durable, in KiB permits.
    pending: Arc<Semaphore>,
    /// Resolves when the flusher has exited.
    stopped: watch::Sender<bool>,
    /// Blocks of objects read back for batches no longer in the tail.
    cache: Mutex<cache::BlockCache>,
    /// Held by compaction and by a rewrite from plan to durable entry, so
    /// neither moves batches the other has planned on.
    maintenance: tokio::sync::Mutex<()>,
    /// Counter of this owner's data objects (named by epoch and counter).
    next_data: AtomicU64,
}

struct Core {
    /// State with every accepted entry applied (offsets, streams, keys).
    live: State,
    /// State with only durable entries applied; reads see this.
    durable: State,
    tail: Tail,
    open: Flush,
    next_seq: u64,
    /// Sealed flushes by seq, waiting for their PUT and their turn to ack.
    in_flight: BTreeMap<u64, Sealed>,
    flushes_since_checkpoint: u64,
    /// WAL bytes sealed since the last checkpoint was asked for, and the
    /// size of the last one written (see `LogConfig::checkpoint_every`).
    wal_bytes_since_checkpoint: u64,
    checkpoint_bytes: u64,
    /// Seqs below this are earlier owners' objects or our fence tombstones.
    first_own_seq: u64,
    /// Newest seq acknowledged by this owner: `durable` is the state after it.
    acked_seq: Option<u64>,
    /// Newest checkpoint this owner wrote, and when.
    last_ckpt: Option<(u64, Instant)>,
    /// Checkpoints this owner wrote, oldest first, until swept.
    own_ckpts: Vec<u64>,
    failed: Option<Error>,
    closing: bool,
}

#[derive(Default)]
struct Flush {
    entries: Vec<Entry>,
    /// `Meter` entries appended, summed per window; they lead the flush's
    /// entries when it is sealed (so a `MeterClose` after them in the same
    /// flush closes their windows with them counted).
    meter: BTreeMap<i64, Vec<u64>>,
    bytes: usize,
    acks: Vec<oneshot::Sender<Result<(), Error>>>,
    permits: Vec<OwnedSemaphorePermit>,
    first_at: Option<Instant>,
}

struct Sealed {
    flush: Flush,
    positions: Vec<u32>,
    done: Option<Result<(), Error>>,
}

/// The result of an append: offsets assigned now, durability later.
pub struct Appended {
    /// Base offset of each `Append` entry, in order.
    pub base_offsets: Vec<i64>,
    /// Max timestamp of each `Append` entry, in order: a retry's is its
    /// original's, as stored.
    pub max_timestamps: Vec<i64>,
    durable: oneshot::Receiver<Result<(), Error>>,
}

impl Appended {
    /// Waits until the entries are durable and acknowledged.
    pub async fn durable(self) -> Result<(), Error> {
        self.durable.await.unwrap_or(Err(Error::Closed))
    }
}

/// Batches read from one stream.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Read {
    pub log_start: i64,
    pub high_watermark: i64,
    /// Below it every transaction has ended.
    pub last_stable: i64,
    /// Whole batches, first one holding the requested offset; stored bytes.
    pub batches: Vec<Bytes>,
    /// For a committed read: the aborted transactions with records in
    /// the batches returned, oldest first.
    pub aborted: Vec<AbortedTxn>,
}

/// Copies of the metadata keys and values under `prefix`.
fn scan_kv(kv: &BTreeMap<Bytes, Bytes>, prefix: &[u8]) -> Vec<(Bytes, Bytes)> {
    kv_from(kv, prefix)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Metadata keys from `from` on, in order.
fn kv_from<'a>(
    kv: &'a BTreeMap<Bytes, Bytes>,
    from: &[u8],
) -> impl Iterator<Item = (&'a Bytes, &'a Bytes)> {
    kv.range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
}

impl ShardLog {
    /// Takes ownership of the shard at `prefix`: a new epoch, the latest valid
    /// checkpoint, replay, and the fence. See `open.rs`.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        cfg: LogConfig,
    ) -> Result<Self, Error> {
        cfg.validate().map_err(Error::Unavailable)?;
        let opened = open::open(&store, &prefix, &cfg).await?;
        let permits = (cfg.max_pending_bytes >> 10).max(1);
        let tail = opened.tail;
        let inner = Arc::new(Inner {
            store,
            prefix,
            writer: opened.writer,
            core: Mutex::new(Core {
                live: opened.state.clone(),
                durable: opened.state,
                tail,
                open: Flush::default(),
                next_seq: opened.next_seq,
                in_flight: BTreeMap::new(),
                flushes_since_checkpoint: 0,
                wal_bytes_since_checkpoint: 0,
                checkpoint_bytes: 0,
                first_own_seq: opened.next_seq,
                acked_seq: None,
                last_ckpt: None,
                own_ckpts: Vec::new(),
                failed: None,
                closing: false,
            }),
            kick: Notify::new(),
            durable_tx: watch::channel(0).0,
            pending: Arc::new(Semaphore::new(permits)),
            stopped: watch::channel(false).0,
            cache: Mutex::new(cache::BlockCache::new(cfg.read_cache_bytes)),
            maintenance: tokio::sync::Mutex::new(()),
            next_data: AtomicU64::new(0),
            cfg,
        });
        tokio::spawn(flush::flusher(inner.clone()));
        tokio::spawn(compact::maintain(inner.clone()));
        Ok(Self { inner })
    }

    /// Whether an owner newer than `epoch` has claimed the shard at
    /// `prefix`: what an owner of `epoch` published is then out of date.
    /// One GET of the next epoch's object.
    pub async fn superseded(
        store: &dyn ObjectStore,
        prefix: &Path,
        epoch: u64,
        timeout: Duration,
    ) -> Result<bool, Error> {
        put::newer_owner(store, prefix, epoch, timeout).await
    }

    /// This owner's epoch: unique and increasing across owners of the shard.
    pub fn epoch(&self) -> u64 {
        self.inner.writer.epoch
    }

    /// Reserves a new stream id; make it real with `Entry::CreateStream`.
    pub fn allocate_stream(&self) -> StreamId {
        let mut core = self.inner.lock();
        let id = core.live.next_stream;
        core.live.next_stream += 1;
        StreamId(id)
    }

    /// Accepts entries into the open flush, in order, and assigns offsets.
    /// Waits only when `max_pending_bytes` are already waiting to be durable.
    pub async fn append(&self, entries: Vec<Entry>) -> Result<Appended, Error> {
        let bytes: usize = entries.iter().map(entry_bytes).sum();
        let kib = ((bytes >> 10).max(1))
            .min(self.inner.cfg.max_pending_bytes >> 10)
            .max(1);
        let permit = self
            .inner
            .pending
            .clone()
            .acquire_many_owned(kib as u32)
            .await
            .map_err(|_| Error::Closed)?;
        let (tx, rx) = oneshot::channel();
        let mut core = self.inner.lock();
        if let Some(e) = &core.failed {
            return Err(e.clone());
        }
        if core.closing {
            return Err(Error::Closed);
        }
        check_append(&core.live, &entries)?;
        let duplicates = check_producers(&core.live, &entries)?;
        let mut base_offsets = Vec::new();
        let mut max_timestamps = Vec::new();
        let (mut accepted, mut stored) = (0, 0);
        for (i, mut e) in entries.into_iter().enumerate() {
            if let Entry::Meter { window, counts } = &e {
                let window = core.live.meter_window(*window);
                let folded = Entry::Meter {
                    window,
                    counts: counts.clone(),
                };
                core.live.apply(&folded, u64::MAX, 0);
                add_counts(core.open.meter.entry(window).or_default(), counts);
                accepted += 1;
                continue;
            }
            if let Some(&Some((original, original_ts))) = duplicates.get(i) {
                base_offsets.push(original);
                max_timestamps.push(original_ts);
                self.inner
                    .cfg
                    .stats
                    .duplicates
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            if let Entry::Append {
                stream,
                base_offset,
                data,
                max_timestamp,
                ..
            } = &mut e
            {
                let next = core.live.streams.get(stream).map_or(0, |s| s.next_offset);
                *base_offset = next;
                *data = with_base_offset(std::mem::take(data), next);
                base_offsets.push(next);
                max_timestamps.push(*max_timestamp);
            }
            core.live.apply(&e, u64::MAX, 0);
            stored += entry_bytes(&e);
            core.open.entries.push(e);
            accepted += 1;
        }
        if accepted == 0 {
            // Only retries: they are durable when the newest flush that may
            // hold an original is (acks go in order), or already.
            let core = &mut *core;
            if !core.open.entries.is_empty() {
                core.open.acks.push(tx);
            } else if let Some(mut last) = core.in_flight.last_entry() {
                last.get_mut().flush.acks.push(tx);
            } else {
                let _ = tx.send(Ok(()));
            }
            return Ok(Appended {
                base_offsets,
                max_timestamps,
                durable: rx,
            });
        }
        let open = &mut core.open;
        open.bytes += stored;
        open.acks.push(tx);
        open.permits.push(permit);
        let first = open.first_at.is_none();
        if first {
            open.first_at = Some(Instant::now());
        }
        let full = open.bytes >= self.inner.cfg.flush_bytes;
        drop(core);
        if first || full {
            self.inner.kick.notify_one();
        }
        Ok(Appended {
            base_offsets,
            max_timestamps,
            durable: rx,
        })
    }

    /// The producers a stream knows (durable state), by id.
    pub fn producers(&self, stream: StreamId) -> Result<Vec<(i64, ProducerState)>, Error> {
        let core = self.inner.lock();
        let s = core.durable_stream(stream)?;
        Ok(s.producers.iter().map(|(&id, p)| (id, p.clone())).collect())
    }

    /// Forgets producers idle for `producer_expiry`, and counts them. An
    /// entry of the log, appended only when some are idle (so an idle shard
    /// settles): a checkpoint and a replay of the same objects agree on
    /// which producers a retry meets.
    async fn expire_producers(&self) {
        let Some(ttl) = self.inner.cfg.producer_expiry else {
            return;
        };
        let before_ms = now_ms().saturating_sub(ttl.as_millis() as i64);
        let idle = self.inner.lock().live.idle_producers(before_ms).len();
        if idle == 0 {
            return;
        }
        match self
            .append(vec![Entry::ExpireProducers { before_ms }])
            .await
        {
            Ok(_) => {
                self.inner
                    .cfg
                    .stats
                    .expired_producers
                    .fetch_add(idle as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "expiring producers"),
        }
    }

    /// The last stable offset of a stream (durable): below it every
    /// transaction has ended.
    pub fn last_stable(&self, stream: StreamId) -> Result<i64, Error> {
        let core = self.inner.lock();
        let s = core.durable_stream(stream)?;
        Ok(s.last_stable())
    }

    /// Log start and durable high watermark of a stream.
    /// Bytes of record batches the shard holds, including appends not yet
    /// durable: what a storage quota counts.
    pub fn stored_bytes(&self) -> u64 {
        self.inner.lock().live.bytes
    }

    /// The durable meter windows (start, counts), oldest first, and the
    /// start of the first open one: those before it are closed and fixed.
    pub fn meters(&self) -> (i64, Vec<(i64, Vec<u64>)>) {
        let core = self.inner.lock();
        let d = &core.durable;
        let windows = d.meters.iter().map(|(&w, c)| (w, c.clone())).collect();
        (d.meter_from, windows)
    }

    pub fn offsets(&self, stream: StreamId) -> Result<(i64, i64), Error> {
        let core = self.inner.lock();
        let s = core.durable_stream(stream)?;
        Ok((s.log_start, s.next_offset))
    }

    /// First durable batch whose max timestamp is at or after `ts`: its
    /// base offset and max timestamp, or `None` when no batch has one.
    pub async fn offset_for_timestamp(
        &self,
        stream: StreamId,
        ts: i64,
    ) -> Result<Option<(i64, i64)>, Error> {
        let mut from = 0;
        loop {
            let (loc, log_start) = {
                let core = self.inner.lock();
                let s = core.durable_stream(stream)?;
                let loc = s.locs[s.find(from.max(s.log_start))..]
                    .iter()
                    .find(|l| l.max_timestamp >= ts)
                    .copied();
                (loc, s.log_start)
            };
            let Some(loc) = loc else { return Ok(None) };
            // Of several batches, the one may be below the log start.
            let batches = self.batches_in(stream, &loc).await?;
            let found = batches
                .iter()
                .filter(|b| b.end_offset > log_start)
                .find(|b| b.max_timestamp >= ts);
            if let Some(b) = found {
                return Ok(Some((b.base_offset, b.max_timestamp)));
            }
            from = loc.end_offset();
        }
    }

    /// The largest timestamp durable in a stream, with the last offset of
    /// the first batch that has it.
    pub async fn max_timestamp(&self, stream: StreamId) -> Result<Option<(i64, i64)>, Error> {
        let (loc, log_start) = {
            let core = self.inner.lock();
            let s = core.durable_stream(stream)?;
            let loc = s
                .locs
                .iter()
                .max_by_key(|l| (l.max_timestamp, std::cmp::Reverse(l.base_offset)))
                .copied();
            (loc, s.log_start)
        };
        let Some(loc) = loc else { return Ok(None) };
        // (Of several batches, those below the log start are gone: the
        // largest timestamp left in the entry may then be smaller than
        // another entry's. Rare and small: the answer stays a batch of
        // the stream's.)
        let batches = self.batches_in(stream, &loc).await?;
        let best = batches
            .iter()
            .filter(|b| b.end_offset > log_start)
            .max_by_key(|b| (b.max_timestamp, std::cmp::Reverse(b.base_offset)));
        Ok(best.map(|b| (b.end_offset - 1, b.max_timestamp)))
    }

    /// The batches of one durable index entry: its own fields for one
    /// batch; from the tail or the store for several.
    async fn batches_in(
        &self,
        stream: StreamId,
        loc: &BatchLoc,
    ) -> Result<Vec<read::Batch>, Error> {
        if loc.batches == 1 {
            return self.split(loc, Bytes::new());
        }
        if let Some(b) = self.inner.lock().tail.several(stream, loc) {
            return Ok(b);
        }
        let (mut loaded, _) = self
            .load(std::slice::from_ref(loc), read::For::Reader)
            .await?;
        self.split(loc, loaded.pop().unwrap_or_default())
    }

    /// Where retention would move a stream's log start: past every index
    /// entry whose max timestamp is before `older_than`, and past the
    /// oldest entries while at least `max_bytes` stay (Kafka's rule for its
    /// segments; an entry of several batches goes whole). `None` when it
    /// would not move.
    pub fn retention_point(
        &self,
        stream: StreamId,
        older_than: Option<i64>,
        max_bytes: Option<u64>,
    ) -> Option<i64> {
        let core = self.inner.lock();
        let s = core.durable.streams.get(&stream)?;
        let mut k = 0;
        if let Some(t) = older_than {
            // Timestamps need not be ordered: stop at the first young entry.
            k = s
                .locs
                .iter()
                .position(|l| l.max_timestamp >= t)
                .unwrap_or(s.locs.len());
        }
        if let Some(max) = max_bytes {
            let (mut left, mut j) = (s.bytes, 0);
            while j < s.locs.len() && left - s.locs[j].len as u64 >= max {
                left -= s.locs[j].len as u64;
                j += 1;
            }
            k = k.max(j);
        }
        let start = s.locs.get(k).map_or(s.next_offset, |l| l.base_offset);
        (start > s.log_start).then_some(start)
    }

    /// Raises a stream's log start to `offset` (DeleteRecords, retention),
    /// durably. Batches wholly below it are dropped; `offset` may fall inside
    /// a batch, which then stays readable from its first offset.
    pub async fn truncate(&self, stream: StreamId, offset: i64) -> Result<i64, Error> {
        let (start, hw) = {
            let core = self.inner.lock();
            let s = core.live.streams.get(&stream).ok_or(Error::UnknownStream)?;
            (s.log_start, s.next_offset)
        };
        if offset < 0 || offset > hw {
            return Err(Error::OffsetOutOfRange {
                log_start: start,
                high_watermark: hw,
            });
        }
        if offset > start {
            self.append(vec![Entry::Truncate {
                stream,
                log_start: offset,
            }])
            .await?
            .durable()
            .await?;
            self.inner
                .cfg
                .stats
                .truncations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(self.offsets(stream)?.0)
    }

    /// A durable metadata value.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.inner.lock().durable.kv.get(key).cloned()
    }

    /// Durable metadata keys and values under a prefix.
    pub fn scan(&self, prefix: &[u8]) -> Vec<(Bytes, Bytes)> {
        scan_kv(&self.inner.lock().durable.kv, prefix)
    }

    /// Whether any durable metadata key starts with `prefix` (one lookup,
    /// where [`ShardLog::scan`] would copy them all).
    pub fn has_prefix(&self, prefix: &[u8]) -> bool {
        let core = self.inner.lock();
        let found = kv_from(&core.durable.kv, prefix)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix));
        found
    }

    /// Changes whenever more entries become durable.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.durable_tx.subscribe()
    }

    /// The error that poisoned the log, if any.
    pub fn failed(&self) -> Option<Error> {
        self.inner.lock().failed.clone()
    }

    /// DESIGN's re-check of ownership, for a read that must not answer from
    /// a stale owner's state: whether `wal/{next}` exists. A newer owner's
    /// fence tombstones cover every seq this owner could write next, so an
    /// object there that this owner did not seal means it is fenced: the log
    /// is poisoned with [`Error::Fenced`] (reopen the shard). One HEAD.
    pub async fn check_owner(&self) -> Result<(), Error> {
        let seq = {
            let core = self.inner.lock();
            if let Some(e) = &core.failed {
                return Err(e.clone());
            }
            core.next_seq
        };
        let path = wal_path(&self.inner.prefix, seq);
        match object_store::ObjectStoreExt::head(&self.inner.store, &path).await {
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::Unavailable(format!("checking ownership: {e}"))),
            Ok(_) => {
                let mut core = self.inner.lock();
                // Sealed meanwhile: the object may be ours, and that flush's
                // own create finds out whether we are fenced.
                if core.next_seq != seq || core.failed.is_some() {
                    return core.failed.clone().map_or(Ok(()), Err);
                }
                flush::fence(&mut core);
                drop(core);
                self.inner.kick.notify_one();
                Err(Error::Fenced)
            }
        }
    }

    /// Gives the shard up without writing: another owner has it or may
    /// take it (this owner's lease lapsed). Poisons the log as a fence
    /// found by [`ShardLog::check_owner`] does: nothing not yet
    /// acknowledged is acknowledged.
    pub fn abandon(&self) {
        let mut core = self.inner.lock();
        if core.failed.is_none() {
            flush::fence(&mut core);
        }
        drop(core);
        self.inner.kick.notify_one();
    }

    /// Stops accepting appends, makes everything accepted durable (or failed),
    /// writes a checkpoint and stops the flusher.
    pub async fn close(&self) -> Result<(), Error> {
        self.inner.lock().closing = true;
        self.inner.kick.notify_one();
        let mut stopped = self.inner.stopped.subscribe();
        let _ = stopped.wait_for(|s| *s).await;
        self.pending_failure()?;
        flush::checkpoint(&self.inner).await
    }

    fn pending_failure(&self) -> Result<(), Error> {
        match self.failed() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Core {
    /// A stream of the durable state: what reads see.
    fn durable_stream(&self, stream: StreamId) -> Result<&crate::state::StreamState, Error> {
        self.durable
            .streams
            .get(&stream)
            .ok_or(Error::UnknownStream)
    }
}

impl ShardLog {
    /// A new data object's id: this owner's epoch and a counter.
    fn next_data_object(&self) -> Result<crate::ObjId, Error> {
        let epoch = self.inner.writer.epoch;
        let n = self
            .inner
            .next_data
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if epoch >= 1 << 31 || n >= 1 << 32 {
            return Err(Error::Unavailable(
                "data object ids exhausted for this epoch".into(),
            ));
        }
        Ok(crate::ObjId::data(epoch, n))
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding this lock is a bug; the state is then suspect
        // anyway, but reads of it remain memory-safe.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a newer owner has claimed this shard (one GET).
    async fn superseded(&self) -> Result<bool, Error> {
        put::newer_owner(
            &*self.store,
            &self.prefix,
            self.writer.epoch,
            self.cfg.put_timeout,
        )
        .await
    }
}

/// Checks entries in order against the state they will meet, before any is
/// applied: an append is all or nothing.
fn check_append(live: &State, entries: &[Entry]) -> Result<(), Error> {
    let mut created = Vec::new();
    let mut deleted = Vec::new();
    for e in entries {
        match e {
            Entry::CreateStream { stream } => {
                created.push(*stream);
                deleted.retain(|s| s != stream);
            }
            Entry::DeleteStream { stream } => {
                deleted.push(*stream);
                created.retain(|s| s != stream);
            }
            Entry::Append {
                stream,
                data,
                offsets,
                ..
            } => {
                let exists = created.contains(stream)
                    || (live.streams.contains_key(stream) && !deleted.contains(stream));
                if !exists {
                    return Err(Error::UnknownStream);
                }
                if data.len() < 8 || *offsets == 0 {
                    return Err(Error::Unavailable(
                        "append needs an 8-byte offset slot and at least one offset".into(),
                    ));
                }
            }
            Entry::Truncate { .. }
            | Entry::Put { .. }
            | Entry::Compact { .. }
            | Entry::Sweep { .. }
            | Entry::Meter { .. }
            | Entry::MeterClose { .. }
            | Entry::MeterDone { .. }
            | Entry::ExpireProducers { .. }
            | Entry::Rewrite { .. } => {}
        }
    }
    Ok(())
}

/// For each entry, the original's base offset and max timestamp when it
/// is a retry of an idempotent append the stream remembers; empty when no
/// entry names a producer. Later entries meet the state earlier ones of
/// the call leave.
fn check_producers(live: &State, entries: &[Entry]) -> Result<Vec<Option<(i64, i64)>>, Error> {
    if !entries.iter().any(|e| {
        matches!(
            e,
            Entry::Append {
                producer: Some(_),
                ..
            }
        )
    }) {
        return Ok(Vec::new());
    }
    let mut seen: HashMap<(StreamId, i64), ProducerState> = HashMap::new();
    let mut next: HashMap<StreamId, i64> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Entry::Append {
            stream,
            offsets,
            max_timestamp,
            producer,
            ..
        } = e
        else {
            out.push(None);
            continue;
        };
        let next_offset = next
            .entry(*stream)
            .or_insert_with(|| live.streams.get(stream).map_or(0, |s| s.next_offset));
        let Some(p) = producer else {
            *next_offset += *offsets as i64;
            out.push(None);
            continue;
        };
        let key = (*stream, p.id);
        let live_stream = live.streams.get(stream);
        let current = seen.get(&key).or_else(|| live_stream?.producers.get(&p.id));
        // A stream created in this same call is not live yet: say nothing.
        let forgotten_below = live_stream.map_or(i64::MAX, |s| s.forgotten_below);
        let check = producers::check(current, forgotten_below, p, *offsets);
        // Enough to follow a producer's retries across owners in the logs.
        tracing::trace!(
            stream = stream.0,
            producer = p.id,
            epoch = p.epoch,
            seq = p.first_seq,
            offsets,
            at = *next_offset,
            ?check,
            "idempotent append"
        );
        match check? {
            Check::Duplicate {
                base_offset,
                max_timestamp,
            } => out.push(Some((base_offset, max_timestamp))),
            // As in `State::apply`: it ends nothing and leaves no state.
            Check::Append if p.txn.is_marker() && current.is_none() => {
                *next_offset += *offsets as i64;
                out.push(None);
            }
            Check::Append => {
                let mut st = current.cloned().unwrap_or_else(|| ProducerState::new(p));
                st.record(p, *next_offset, *offsets, *max_timestamp);
                seen.insert(key, st);
                *next_offset += *offsets as i64;
                out.push(None);
            }
        }
    }
    Ok(out)
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn entry_bytes(e: &Entry) -> usize {
    match e {
        Entry::Append { data, .. } => data.len() + 32,
        Entry::Put { key, value } => key.len() + value.as_ref().map_or(0, |v| v.len()) + 16,
        Entry::Compact { runs, .. } => 24 + runs.len() * 32,
        Entry::Sweep { forget, .. } => 16 + forget.len() * 8,
        Entry::Rewrite { batches, .. } => 24 + batches.len() * 57,
        Entry::Meter { counts, .. } => 16 + counts.len() * 8,
        _ => 16,
    }
}

fn with_base_offset(data: Bytes, base_offset: i64) -> Bytes {
    if data.len() >= 8 && data[..8] == base_offset.to_be_bytes() {
        return data;
    }
    let mut b = bytes::BytesMut::from(data);
    b[..8].copy_from_slice(&base_offset.to_be_bytes());
    b.freeze()
}

pub(crate) fn wal_path(prefix: &Path, seq: u64) -> Path {
    prefix.clone().join("wal").join(format!("{seq:020}"))
}

pub(crate) fn ckpt_path(prefix: &Path, seq: u64) -> Path {
    prefix.clone().join("ckpt").join(format!("{seq:020}"))
}

pub(crate) fn data_path(prefix: &Path, epoch: u64, n: u64) -> Path {
    prefix
        .clone()
        .join("data")
        .join(format!("{epoch:010}-{n:010}"))
}

/// Where an object of the log lives.
pub(crate) fn obj_path(prefix: &Path, obj: crate::ObjId) -> Path {
    match obj.data_parts() {
        Some((epoch, n)) => data_path(prefix, epoch, n),
        None => wal_path(prefix, obj.0),
    }
}

pub(crate) fn epoch_path(prefix: &Path, epoch: u64) -> Path {
    prefix.clone().join("epoch").join(format!("{epoch:020}"))
}

/// Recently written batches, bounded by bytes, evicted oldest first.
struct Tail {
    max_bytes: usize,
    bytes: usize,
    /// Per stream, by base offset.
    map: HashMap<StreamId, BTreeMap<i64, Bytes>>,
    order: VecDeque<(StreamId, i64)>,
    /// Keys in `map`.
    len: usize,
}

impl Tail {
    fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            bytes: 0,
            map: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
        }
    }

    fn insert(&mut self, stream: StreamId, base: i64, data: Bytes) {
        if self.max_bytes == 0 {
            return;
        }
        self.bytes += data.len();
        if let Some(old) = self.map.entry(stream).or_default().insert(base, data) {
            self.bytes -= old.len();
        } else {
            self.order.push_back((stream, base));
            self.len += 1;
        }
        while self.bytes > self.max_bytes {
            let Some((stream, base)) = self.order.pop_front() else {
                break;
            };
            self.remove(stream, base..base + 1);
        }
    }

    fn remove(&mut self, stream: StreamId, range: std::ops::Range<i64>) {
        let Some(m) = self.map.get_mut(&stream) else {
            return;
        };
        let keys: Vec<i64> = m.range(range).map(|(&k, _)| k).collect();
        for k in keys {
            if let Some(old) = m.remove(&k) {
                self.bytes -= old.len();
                self.len -= 1;
            }
        }
        if m.is_empty() {
            self.map.remove(&stream);
        }
    }

    /// The bytes of an index entry of one batch, if the tail has that
    /// batch as long as the entry says.
    fn one(&self, stream: StreamId, loc: &BatchLoc) -> Option<Bytes> {
        let b = self.map.get(&stream)?.get(&loc.base_offset)?;
        (loc.batches == 1 && b.len() == loc.len as usize).then(|| b.clone())
    }

    /// The batches of an index entry of several, if the tail still has
    /// every one, back to back without a gap, as many bytes as the entry
    /// (a rewrite, which leaves gaps, takes its entries' batches out of
    /// the tail).
    fn several(&self, stream: StreamId, loc: &BatchLoc) -> Option<Vec<read::Batch>> {
        let m = self.map.get(&stream)?;
        let mut out = Vec::with_capacity((loc.batches as usize).min(loc.len as usize / 61 + 1));
        let (mut at, mut len) = (loc.base_offset, 0usize);
        while out.len() < loc.batches as usize {
            let bytes = m.get(&at)?.clone();
            let f = floe_common::batch::frame_whole(&bytes).filter(|f| f.base_offset == at)?;
            len += bytes.len();
            out.push(read::Batch {
                base_offset: at,
                end_offset: f.end_offset(),
                max_timestamp: f.max_timestamp,
                bytes,
            });
            at = f.end_offset();
        }
        (at == loc.end_offset() && len == loc.len as usize).then_some(out)
    }

    /// Forgets every batch of the index entries a rewrite replaces (`st`:
    /// the state it applies to, before it does): the tail must never serve
    /// bytes the index no longer describes (compaction copies from it).
    fn forget_rewritten(&mut self, e: &Entry, st: &State) {
        let Entry::Rewrite {
            stream, batches, ..
        } = e
        else {
            return;
        };
        let locs = st.streams.get(stream).map_or(&[][..], |s| &s.locs[..]);
        for b in batches {
            let i = locs.partition_point(|l| l.base_offset < b.base_offset);
            let end = locs
                .get(i)
                .filter(|l| l.base_offset == b.base_offset)
                .map_or(b.base_offset + 1, BatchLoc::end_offset);
            self.remove(*stream, b.base_offset..end);
        }
        // Their keys stay in `order` until evicted; keep it from growing
        // while rewrites hold the bytes under the bound.
        if self.order.len() > 2 * self.len + 64 {
            let map = &self.map;
            self.order
                .retain(|(s, b)| map.get(s).is_some_and(|m| m.contains_key(b)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn meter(window: i64, n: u64) -> Entry {
        Entry::Meter {
            window,
            counts: vec![n],
        }
    }

    #[tokio::test]
    async fn meters_fold_per_window_and_a_closed_window_stays_fixed() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cfg = LogConfig {
            linger: Duration::from_millis(50),
            ..LogConfig::default()
        };
        let log = ShardLog::open(store.clone(), Path::from("s"), cfg.clone())
            .await
            .expect("open");
        // One flush: two counts for window 0, then its close, then a late
        // count for window 0, which must land in the open window 10.
        let a = log.append(vec![meter(0, 1)]).await.expect("append");
        let b = log.append(vec![meter(0, 2), Entry::MeterClose { end: 10 }]);
        let b = b.await.expect("append");
        let c = log
            .append(vec![meter(0, 4), meter(20, 8)])
            .await
            .expect("append");
        for x in [a, b, c] {
            x.durable().await.expect("durable");
        }
        let want = (10, vec![(0, vec![3]), (10, vec![4]), (20, vec![8])]);
        assert_eq!(log.meters(), want);
        log.append(vec![
            Entry::MeterDone { window: 0 },
            Entry::MeterDone { window: 10 },
        ])
        .await
        .expect("append")
        .durable()
        .await
        .expect("durable");
        // An open window is not forgotten; replay agrees.
        let want = (10, vec![(10, vec![4]), (20, vec![8])]);
        assert_eq!(log.meters(), want);
        log.close().await.expect("close");
        let again = ShardLog::open(store, Path::from("s"), cfg)
            .await
            .expect("reopen");
        assert_eq!(again.meters(), want);
    }
}

#[cfg(test)]
mod owner_tests {
    use super::*;
    use crate::producers::{Producer, Txn};
    use object_store::memory::InMemory;

    fn put(key: &str) -> Entry {
        Entry::Put {
            key: Bytes::from(key.to_string()),
            value: Some(Bytes::from_static(b"v")),
        }
    }

    #[tokio::test]
    async fn a_stale_owner_learns_it_is_fenced_without_writing() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cfg = LogConfig::default();
        let a = ShardLog::open(store.clone(), Path::from("s"), cfg.clone())
            .await
            .expect("open a");
        let appended = a.append(vec![put("k1")]).await.expect("append");
        appended.durable().await.expect("durable");
        a.check_owner().await.expect("a owns the shard");
        assert!(a.failed().is_none(), "the check does not disturb an owner");

        let b = ShardLog::open(store.clone(), Path::from("s"), cfg.clone())
            .await
            .expect("open b");
        b.append(vec![put("k2")])
            .await
            .expect("append")
            .durable()
            .await
            .expect("durable");
        // A has not written since: only the check tells it that its state
        // (no k2) is stale.
        assert!(a.get(b"k2").is_none());
        assert_eq!(a.check_owner().await, Err(Error::Fenced));
        assert_eq!(a.failed(), Some(Error::Fenced));
        assert!(a.append(vec![put("k3")]).await.is_err());
        b.check_owner().await.expect("b owns the shard");
        assert_eq!(b.get(b"k1"), Some(Bytes::from_static(b"v")));
    }

    /// Expiry is an entry of the log: an owner that replays the objects of
    /// one that expired a producer (no checkpoint since) forgets it too.
    #[tokio::test]
    async fn a_replay_forgets_the_producers_the_owner_expired() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cfg = LogConfig {
            producer_expiry: Some(Duration::from_secs(3600)),
            maintain_every: Duration::from_millis(20),
            checkpoint_every: 1_000,
            ..LogConfig::default()
        };
        let prefix = Path::from("s");
        let a = ShardLog::open(store.clone(), prefix.clone(), cfg.clone())
            .await
            .expect("open a");
        let stream = StreamId(1);
        let append = |id: i64, time_ms: i64| Entry::Append {
            stream,
            base_offset: 0,
            offsets: 1,
            max_timestamp: 0,
            producer: Some(Producer {
                id,
                epoch: 0,
                first_seq: 0,
                time_ms,
                txn: Txn::No,
            }),
            data: Bytes::from_static(&[0; 16]),
        };
        let idle_since = now_ms() - 2 * 3600 * 1000;
        let entries = vec![
            Entry::CreateStream { stream },
            append(1, idle_since),
            append(2, now_ms()),
        ];
        a.append(entries)
            .await
            .expect("append")
            .durable()
            .await
            .expect("durable");
        let ids = |log: &ShardLog| -> Vec<i64> {
            let mut ids: Vec<i64> = log
                .producers(stream)
                .expect("stream")
                .iter()
                .map(|p| p.0)
                .collect();
            ids.sort();
            ids
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while ids(&a) != [2] {
            assert!(
                Instant::now() < deadline,
                "producer 1 never expired: {:?}",
                ids(&a)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Durable before the next owner replays.
        a.append(vec![put("after")])
            .await
            .expect("append")
            .durable()
            .await
            .expect("durable");

        // No checkpoint since the expiry (A is not closed): B replays it.
        let b = ShardLog::open(
            store,
            prefix,
            LogConfig {
                producer_expiry: None,
                ..cfg
            },
        )
        .await
        .expect("open b");
        assert_eq!(ids(&b), [2], "the replay brought an expired producer back");
    }

    /// A shard's index grows with every batch. A log of small batches
    /// checkpointed every few flushes would write more checkpoint than
    /// WAL (each checkpoint holding the whole index); a checkpoint waits
    /// until the WAL written since is as large as the last one.
    #[tokio::test]
    async fn checkpoints_write_no_more_than_the_wal_behind_them() {
        use futures::TryStreamExt;
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cfg = LogConfig {
            linger: Duration::ZERO,
            checkpoint_every: 4,
            compact_bytes: 0,
            ..LogConfig::default()
        };
        let prefix = Path::from("s");
        let log = ShardLog::open(store.clone(), prefix.clone(), cfg)
            .await
            .expect("open");
        let stream = StreamId(1);
        let durable = |entry: Entry| async {
            let a = log.append(vec![entry]).await.expect("append");
            a.durable().await.expect("durable");
        };
        durable(Entry::CreateStream { stream }).await;
        for _ in 0..400 {
            durable(Entry::Append {
                stream,
                base_offset: 0,
                offsets: 1,
                max_timestamp: 0,
                producer: None,
                data: Bytes::from_static(&[7; 16]),
            })
            .await;
        }
        // Checkpoints are written behind the flushes that ask for them.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sizes = |dir: &'static str| {
            let store = store.clone();
            let dir = prefix.clone().join(dir);
            async move {
                let objects: Vec<_> = store.list(Some(&dir)).try_collect().await.expect("list");
                objects.iter().map(|o| o.size).collect::<Vec<_>>()
            }
        };
        let (wal, ckpts) = (sizes("wal").await, sizes("ckpt").await);
        let wal: u64 = wal.iter().sum();
        let largest = ckpts.iter().copied().max().unwrap_or(0);
        let written: u64 = ckpts.iter().sum();
        assert!(ckpts.len() >= 3, "checkpoints still come: {ckpts:?}");
        // Every checkpoint but the newest is followed by at least its size
        // of WAL (one more may have been asked for before its size was known).
        assert!(
            written <= wal + 2 * largest,
            "{written} bytes of checkpoints for {wal} of WAL: {ckpts:?}"
        );
    }

    /// A claimant that created `epoch/{n+1}` and died before fencing
    /// anything leaves owner n able to write but not to checkpoint: owner n
    /// stops at its next checkpoint, and the shard opens again under n+2.
    #[tokio::test]
    async fn an_owner_stops_when_a_newer_epoch_appears_even_if_nobody_fenced_it() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cfg = LogConfig {
            checkpoint_every: 2,
            ..LogConfig::default()
        };
        let prefix = Path::from("s");
        let a = ShardLog::open(store.clone(), prefix.clone(), cfg.clone())
            .await
            .expect("open a");
        let newer = epoch_path(&prefix, a.epoch() + 1);
        object_store::ObjectStoreExt::put(
            &store,
            &newer,
            Bytes::from_static(b"a claimant that died").into(),
        )
        .await
        .expect("put");
        // Its appends still succeed (no tombstone stops them), until the
        // checkpoint after the second flush finds the newer epoch.
        let mut acked = Vec::new();
        for i in 0..20 {
            let key = format!("k{i}");
            let ok = match a.append(vec![put(&key)]).await {
                Ok(x) => x.durable().await.is_ok(),
                Err(_) => false,
            };
            if ok {
                acked.push(key);
            }
            if a.failed().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(a.failed(), Some(Error::Fenced), "the owner wrote on");

        let b = ShardLog::open(store.clone(), prefix, cfg)
            .await
            .expect("open again");
        assert_eq!(b.epoch(), a.epoch() + 2);
        for key in &acked {
            assert!(b.get(key.as_bytes()).is_some(), "{key} was acknowledged");
        }
        b.append(vec![put("after")])
            .await
            .expect("append")
            .durable()
            .await
            .expect("durable");
        b.close().await.expect("checkpoints again");
    }
}

/// Runs `call` on the background runtime, if the log has one.
pub(super) async fn background<T: Send + 'static>(
    rt: Option<&tokio::runtime::Handle>,
    call: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    match rt {
        Some(rt) => rt
            .spawn(call)
            .await
            .map_err(|e| Error::Unavailable(format!("background call: {e}")))?,
        None => call.await,
    }
}
