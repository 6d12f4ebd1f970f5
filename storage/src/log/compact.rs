//! Background maintenance of a shard log: compaction and sweeping, one task
//! per log, one step at a time (bounded CPU, memory and in-flight bytes),
//! every `maintain_every`; compactions due by size follow each other sooner,
//! paced to `compact_bytes_per_sec`.
//!
//! **Compaction** moves the batches of small WAL objects, oldest first, into
//! one data object of about `compact_bytes` (grouped by stream, with a
//! per-stream index), PUTs it with `PutMode::Create`, then appends a
//! `Compact` entry that points the index at it. WAL objects holding at least
//! half a data object stay where they are. A crash at any step leaves either
//! an orphan data object (deleted by the next owner) or a finished
//! compaction. It pauses while appends wait for the produce budget. Data
//! objects that retention left less than half live are rewritten the same
//! way, so one long-kept partition does not pin a whole object.
//!
//! **Sweeping** deletes garbage, never before the entry that made it garbage
//! is durable, and after `sweep_grace` for reads in flight:
//! - data objects no batch references;
//! - WAL objects that no batch references, only below a checkpoint this
//!   owner wrote (a new owner replays from the newest checkpoint, never from
//!   before it). Before relying on checkpoint `c`, it
//!   checks that no newer epoch exists: an opener that claimed its epoch
//!   before that check is seen and sweeping stops; one that claims later
//!   LISTs checkpoints after `c` was durable, so it starts at `c` or later.
//!   This needs a LIST that shows every completed PUT (S3, GCS, Azure, file
//!   systems);
//! - each owner's fence tombstone F is never deleted (see `State::fences`);
//! - older checkpoints, under the same check, before any of the above: a
//!   LIST can then show no checkpoint older than a deleted object. An opener
//!   also fails closed when checkpoints are listed but none is valid, and
//!   when an object exists past its new fence window (it fell into a hole).
//!
//! A `Sweep` entry then records what is gone, so the next owner does not
//! redo it; redoing is harmless (deleting twice is a no-op).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::PutPayload;
use tokio::time::Instant;

use super::{background, ckpt_path, data_path, flush, obj_path, open, put, Inner, ShardLog};
use crate::format;
use crate::state::{BatchLoc, ObjId, State};
use crate::{Entry, Error, Run, StreamId};

/// Deletes one sweep issues at once.
const DELETE_CONCURRENCY: usize = 16;
/// WAL seqs one sweep round looks at, so a long backlog is taken in steps.
const SWEEP_SEQS: u64 = 4096;

pub(super) async fn maintain(inner: Arc<Inner>) {
    let mut m = Maintainer {
        log: ShardLog {
            inner: inner.clone(),
        },
        waiting_since: None,
        queue: VecDeque::new(),
        queued: HashSet::new(),
        queued_below: 0,
        checked_ckpt: None,
        retired: false,
        listed: false,
    };
    let mut stopped = inner.stopped.subscribe();
    let every = inner.cfg.maintain_every;
    drop(inner);
    // Behind: a compaction was due by size, so the next may be too. It goes
    // as soon as the pace allows, while its sources are likely still in the
    // tail, rather than a tick later, read back from the store.
    let mut next: Option<Instant> = None;
    let mut swept: Option<Instant> = None;
    loop {
        let wait = next.map_or(every, |at| at.saturating_duration_since(Instant::now()));
        if !wait.is_zero() {
            tokio::select! {
                biased;
                _ = stopped.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(wait) => {}
            }
        } else if *stopped.borrow() {
            return;
        }
        if m.log.inner.lock().closing {
            return;
        }
        let started = Instant::now();
        next = match m.compact().await {
            Ok(Some(bytes)) => {
                Some(started + pace(bytes, m.log.inner.cfg.compact_bytes_per_sec).min(every))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "compaction failed");
                None
            }
        };
        if swept.is_none_or(|t| t.elapsed() >= every) {
            if let Err(e) = m.sweep().await {
                tracing::warn!(error = %e, "sweep failed");
            }
            m.log.expire_producers().await;
            swept = Some(Instant::now());
        }
    }
}

/// How long `bytes` take at `per_sec` (0: no time).
fn pace(bytes: u64, per_sec: u64) -> Duration {
    if per_sec == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(bytes as f64 / per_sec as f64)
}

struct Maintainer {
    log: ShardLog,
    /// When compaction first found objects waiting but too few to compact.
    waiting_since: Option<Instant>,
    /// Garbage noticed, oldest first: (when, WAL seqs below, objects).
    queue: VecDeque<(Instant, u64, Vec<ObjId>)>,
    queued: HashSet<ObjId>,
    queued_below: u64,
    /// Newest checkpoint known to predate every newer owner's LIST.
    checked_ckpt: Option<u64>,
    /// A newer owner exists: this one deletes nothing more.
    retired: bool,
    /// Older owners' leftovers (checkpoints, orphan data objects) listed.
    listed: bool,
}

/// What one compaction moves.
struct Plan {
    wal_below: u64,
    /// Data objects being rewritten.
    sources: Vec<ObjId>,
    runs: Vec<(Run, Vec<BatchLoc>)>,
    bytes: u64,
    /// Small WAL objects made a whole data object: more may wait.
    full: bool,
}

impl Maintainer {
    /// One compaction if one is due; the bytes it moved if it took a whole
    /// data object's worth of small WAL objects (so another may be due).
    async fn compact(&mut self) -> Result<Option<u64>, Error> {
        let inner = &self.log.inner;
        let cfg = &inner.cfg;
        if cfg.compact_bytes == 0 {
            return Ok(None);
        }
        let _turn = inner.maintenance.lock().await;
        // Paused while producers wait for the shard's produce budget.
        if inner.pending.available_permits() < (cfg.max_pending_bytes >> 10) / 2 {
            return Ok(None);
        }
        let waited = self
            .waiting_since
            .is_some_and(|t| t.elapsed() >= cfg.compact_after);
        let plan = {
            let core = inner.lock();
            if core.failed.is_some() {
                return Ok(None);
            }
            let last = core.acked_seq.unwrap_or(core.first_own_seq - 1);
            plan(
                &core.durable,
                last,
                cfg.compact_bytes as u64,
                cfg.compact_max_objects as u64,
                waited,
            )
        };
        let plan = match plan {
            Ok(p) => {
                self.waiting_since = None;
                p
            }
            Err(waiting) => {
                if !waiting {
                    self.waiting_since = None;
                } else if self.waiting_since.is_none() {
                    self.waiting_since = Some(Instant::now());
                }
                let rewrite = rewrite_plan(&inner.lock().durable, cfg.compact_bytes as u64);
                let Some(p) = rewrite else { return Ok(None) };
                p
            }
        };
        let object = self.log.next_data_object()?;
        let mut runs = Vec::with_capacity(plan.runs.len());
        if !plan.runs.is_empty() {
            let mut at = format::data_header_len(plan.runs.len()) as u64;
            let mut starts = Vec::with_capacity(plan.runs.len());
            let mut chunks = vec![Bytes::new()];
            // One load for every stream's batches: a WAL object holds many
            // streams' batches, and is then read once, not once per stream.
            let wanted: Vec<(StreamId, BatchLoc)> = plan
                .runs
                .iter()
                .flat_map(|(run, locs)| locs.iter().map(|l| (run.stream, *l)))
                .collect();
            let mut batches = self.log.batches_of(&wanted).await?.into_iter();
            for (mut run, locs) in plan.runs {
                starts.push(at);
                let first = chunks.len();
                chunks.extend(batches.by_ref().take(locs.len()));
                // Indexed by runs of batches only where each batch's framing
                // agrees with its entry: reads then find them by it.
                if locs.iter().zip(&chunks[first..]).all(|(l, b)| framed(l, b)) {
                    run.index_bytes = cfg.index_bytes;
                }
                at += locs.iter().map(|l| l.len as u64).sum::<u64>();
                run.end = u32::try_from(at)
                    .map_err(|_| Error::Unavailable("data object over 4 GiB".into()))?;
                runs.push(run);
            }
            chunks[0] = format::encode_data_header(inner.writer, &runs, &starts);
            let (e, n) = object.data_parts().expect("a data object");
            let path = data_path(&inner.prefix, e, n);
            let payload = PutPayload::from_iter(chunks);
            let log = self.log.clone();
            background(cfg.background.as_ref(), async move {
                let inner = &log.inner;
                put::create_resolved(&*inner.store, &path, payload, inner.writer, &inner.cfg).await
            })
            .await?;
        }
        let entry = Entry::Compact {
            object,
            wal_below: plan.wal_below,
            sources: plan.sources,
            runs,
        };
        self.log.append(vec![entry]).await?.durable().await?;
        let stats = &cfg.stats;
        stats.compactions.fetch_add(1, Relaxed);
        stats.compacted_bytes.fetch_add(plan.bytes, Relaxed);
        Ok(plan.full.then_some(plan.bytes))
    }

    async fn sweep(&mut self) -> Result<(), Error> {
        let inner = self.log.inner.clone();
        let cfg = &inner.cfg;
        let Some(grace) = cfg.sweep_grace else {
            return Ok(());
        };
        if self.retired {
            return Ok(());
        }
        let now = Instant::now();
        let (ckpt, want_ckpt) = {
            let core = inner.lock();
            if core.failed.is_some() {
                return Ok(());
            }
            let st = &core.durable;
            let ckpt = core.last_ckpt.map(|(c, _)| c);
            let below = ckpt.unwrap_or(0);
            // WAL objects only below our checkpoint (a new owner replays from
            // it or later), and never a fence.
            let deletable = |o: &ObjId| o.wal_seq().is_none_or(|q| q < below && !st.is_fence(q));
            let mut fresh: Vec<ObjId> = st
                .garbage
                .iter()
                .filter(|o| deletable(o) && !self.queued.contains(o))
                .copied()
                .collect();
            let from = st.swept_below.max(self.queued_below);
            let wal_below = below.min(from + SWEEP_SEQS).max(from);
            for q in from..wal_below {
                let o = ObjId::wal(q);
                if !st.refs.contains_key(&o) && deletable(&o) && !self.queued.contains(&o) {
                    fresh.push(o);
                }
            }
            if !fresh.is_empty() || wal_below > self.queued_below {
                self.queued.extend(fresh.iter().copied());
                self.queued_below = wal_below;
                self.queue.push_back((now, wal_below, fresh));
            }
            // Compacted or emptied WAL objects wait for a checkpoint past them.
            // Metadata-only objects (this task's own entries among them) never
            // ask for one: an idle shard must settle.
            let stale = core
                .last_ckpt
                .is_none_or(|(_, at)| at.elapsed() >= cfg.checkpoint_interval);
            let waiting = st.compacted_below > below
                || st
                    .garbage
                    .iter()
                    .any(|o| o.wal_seq().is_some_and(|q| q >= below));
            (ckpt, stale && waiting && core.acked_seq.is_some())
        };
        if want_ckpt {
            flush::checkpoint(&inner).await?;
        }
        let Some(ckpt) = ckpt else { return Ok(()) };
        let mut due: Vec<ObjId> = Vec::new();
        let (mut wal_below, mut first_at) = (0, None);
        while let Some((at, below, _)) = self.queue.front() {
            if now.duration_since(*at) < grace {
                break;
            }
            first_at.get_or_insert(*at);
            wal_below = wal_below.max(*below);
            due.extend(self.queue.pop_front().map(|q| q.2).unwrap_or_default());
        }
        let Some(first_at) = first_at else {
            return Ok(());
        };
        match self.delete(ckpt, &due).await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => {
                // Nothing is lost: try the same objects again next round.
                self.queue.push_front((first_at, wal_below, due));
                return Err(e);
            }
        }
        for o in &due {
            self.queued.remove(o);
        }
        let forget: Vec<ObjId> = {
            let core = inner.lock();
            due.into_iter()
                .filter(|o| core.durable.garbage.contains(o))
                .collect()
        };
        self.log
            .append(vec![Entry::Sweep { wal_below, forget }])
            .await?
            .durable()
            .await
    }

    /// Deletes older checkpoints first (so no LIST shows one older than the
    /// objects that are gone), then `due`. False when a newer owner exists.
    async fn delete(&mut self, ckpt: u64, due: &[ObjId]) -> Result<bool, Error> {
        let inner = self.log.inner.clone();
        if !self.still_owner(ckpt).await? {
            return Ok(false);
        }
        let old_ckpts = self.old_checkpoints(ckpt).await?;
        let mut first: Vec<_> = old_ckpts
            .iter()
            .map(|&s| ckpt_path(&inner.prefix, s))
            .collect();
        if !self.listed {
            first.extend(self.orphans().await?);
        }
        let then: Vec<_> = due.iter().map(|&o| obj_path(&inner.prefix, o)).collect();
        let n = (first.len() + then.len()) as u64;
        let deletes = {
            let inner = inner.clone();
            async move {
                for paths in [first, then] {
                    futures::stream::iter(paths)
                        .map(|p| {
                            let inner = &inner;
                            async move { put::delete(&*inner.store, &p, inner.cfg.put_timeout).await }
                        })
                        .buffer_unordered(DELETE_CONCURRENCY)
                        .try_collect::<Vec<()>>()
                        .await?;
                }
                Ok(())
            }
        };
        background(inner.cfg.background.as_ref(), deletes).await?;
        self.listed = true;
        inner.cfg.stats.deleted_objects.fetch_add(n, Relaxed);
        inner.lock().own_ckpts.retain(|s| !old_ckpts.contains(s));
        Ok(true)
    }

    /// Whether no newer owner has claimed the shard since checkpoint `ckpt`
    /// was durable (one HEAD per checkpoint).
    async fn still_owner(&mut self, ckpt: u64) -> Result<bool, Error> {
        if self.checked_ckpt.is_some_and(|c| c >= ckpt) {
            return Ok(true);
        }
        let inner = &self.log.inner;
        if inner.superseded().await? {
            tracing::info!(prefix = %inner.prefix, "a newer owner exists; no more deletes from this one");
            self.retired = true;
            // As a checkpoint that finds one does.
            super::flush::fence(&mut inner.lock());
            return Ok(false);
        }
        self.checked_ckpt = Some(ckpt);
        Ok(true)
    }

    /// Checkpoints older than `ckpt`: this owner's, and the first time also
    /// every older one listed.
    async fn old_checkpoints(&self, ckpt: u64) -> Result<Vec<u64>, Error> {
        let inner = &self.log.inner;
        let mut old: Vec<u64> = inner
            .lock()
            .own_ckpts
            .iter()
            .copied()
            .filter(|&s| s < ckpt)
            .collect();
        if !self.listed {
            let dir = inner.prefix.clone().join("ckpt");
            let listed = open::list(&*inner.store, &dir, &inner.cfg).await?;
            old.extend(
                listed
                    .iter()
                    .filter_map(|m| m.location.filename()?.parse::<u64>().ok())
                    .filter(|&s| s < ckpt),
            );
            old.sort_unstable();
            old.dedup();
        }
        Ok(old)
    }

    /// Data objects of older owners that no entry references: compactions
    /// that never got their entry into the valid log. One LIST per owner.
    async fn orphans(&self) -> Result<Vec<object_store::path::Path>, Error> {
        let inner = &self.log.inner;
        let listed = open::list(
            &*inner.store,
            &inner.prefix.clone().join("data"),
            &inner.cfg,
        )
        .await?;
        let core = inner.lock();
        let st = &core.durable;
        Ok(listed
            .into_iter()
            .map(|m| m.location)
            .filter(|p| {
                let Some((e, n)) = p.filename().and_then(|f| f.split_once('-')) else {
                    return false;
                };
                let (Ok(e), Ok(n)) = (e.parse::<u64>(), n.parse::<u64>()) else {
                    return false;
                };
                let o = ObjId::data(e, n);
                e < inner.writer.epoch && !st.refs.contains_key(&o) && !st.garbage.contains(&o)
            })
            .collect())
    }
}

/// Chooses WAL objects `compacted_below..wal_below` (all durable, up to
/// `last`): a data object's worth of small batches, or everything waiting
/// once `max_objects` wait or `waited` says the oldest waited long enough.
/// `Err(waiting)` when there is nothing to do now.
fn plan(st: &State, last: u64, target: u64, max_objects: u64, waited: bool) -> Result<Plan, bool> {
    let cb = st.compacted_below;
    if cb > last {
        return Err(false);
    }
    // Live bytes per WAL object. Batches in WAL objects at or past `cb` are a
    // suffix of each stream's index: compaction only ever moves older ones.
    let mut per_seq: BTreeMap<u64, u64> = BTreeMap::new();
    for s in st.streams.values() {
        let i = s
            .locs
            .partition_point(|l| l.obj.wal_seq().is_none_or(|q| q < cb));
        for l in &s.locs[i..] {
            let q = l.obj.0;
            if q <= last {
                *per_seq.entry(q).or_default() += l.len as u64;
            }
        }
    }
    let big = target / 2;
    let (mut small, mut small_objects, mut live_objects) = (0, 0, 0);
    let mut wal_below = last + 1;
    for (&q, &bytes) in &per_seq {
        live_objects += 1;
        if bytes < big {
            small += bytes;
            small_objects += 1;
        }
        if small >= target {
            wal_below = q + 1;
            break;
        }
    }
    // Objects without live batches (fence tombstones, metadata, this task's
    // own entries) never trigger a compaction on their own: an idle shard
    // must not keep writing entries about itself.
    let due = small >= target || live_objects >= max_objects || (waited && small_objects > 0);
    if !due {
        return Err(small_objects > 0);
    }
    let mut runs = Vec::new();
    let mut bytes = 0;
    for (&stream, s) in &st.streams {
        let i = s
            .locs
            .partition_point(|l| l.obj.wal_seq().is_none_or(|q| q < cb));
        let mut run: Vec<BatchLoc> = Vec::new();
        for l in s.locs[i..].iter().take_while(|l| l.obj.0 < wal_below) {
            if per_seq.get(&l.obj.0).is_some_and(|&b| b < big) {
                bytes += l.len as u64;
                run.push(*l);
                continue;
            }
            close_run(&mut runs, stream, &mut run);
        }
        close_run(&mut runs, stream, &mut run);
    }
    Ok(Plan {
        wal_below,
        sources: Vec::new(),
        runs,
        bytes,
        full: small >= target,
    })
}

/// Data objects that retention left mostly empty (less than half live),
/// oldest first, up to a data object's worth of live batches: moving those
/// into a new object frees the rest. A multi-partition object otherwise lives
/// as long as its longest-kept partition. Only when it frees at least a
/// quarter of a data object.
fn rewrite_plan(st: &State, target: u64) -> Option<Plan> {
    let mut live: HashMap<ObjId, u64> = HashMap::new();
    for s in st.streams.values() {
        for l in s.locs.iter().filter(|l| l.obj.data_parts().is_some()) {
            *live.entry(l.obj).or_default() += l.len as u64;
        }
    }
    let (mut sources, mut keep, mut freed) = (Vec::new(), 0, 0);
    for (&o, &size) in &st.data_sizes {
        let Some(&l) = live.get(&o) else { continue };
        if l * 2 >= size as u64 {
            continue;
        }
        if keep + l > target && !sources.is_empty() {
            break;
        }
        sources.push(o);
        keep += l;
        freed += size as u64 - l;
    }
    if freed < target / 4 {
        return None;
    }
    let mut runs = Vec::new();
    for (&stream, s) in &st.streams {
        let mut run: Vec<BatchLoc> = Vec::new();
        for l in &s.locs {
            if sources.contains(&l.obj) {
                run.push(*l);
            } else {
                close_run(&mut runs, stream, &mut run);
            }
        }
        close_run(&mut runs, stream, &mut run);
    }
    Some(Plan {
        wal_below: st.compacted_below,
        sources,
        runs,
        bytes: keep,
        full: false,
    })
}

/// Whether `b`, the bytes of index entry `l`, can join a run of batches
/// found by their framing: an entry of several already is one; one batch
/// must say, in its framing, the offsets, length and timestamp its entry
/// does.
fn framed(l: &BatchLoc, b: &Bytes) -> bool {
    l.batches > 1
        || floe_common::batch::frame_whole(b).is_some_and(|f| {
            f.base_offset == l.base_offset
                && f.offsets == l.offsets
                && f.max_timestamp == l.max_timestamp
        })
}

fn close_run(runs: &mut Vec<(Run, Vec<BatchLoc>)>, stream: StreamId, run: &mut Vec<BatchLoc>) {
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return;
    };
    let r = Run {
        stream,
        from: first.base_offset,
        to: last.end_offset(),
        end: 0,
        index_bytes: 0,
    };
    runs.push((r, std::mem::take(run)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogConfig, LogStats};
    use crate::store::Counting;
    use object_store::memory::InMemory;
    use object_store::path::Path;

    /// A log on an in-memory store that counts its calls, with `n` streams.
    async fn open_counted(cfg: LogConfig, n: usize) -> (Arc<Counting>, ShardLog, Vec<StreamId>) {
        let store = Arc::new(Counting::new(Arc::new(InMemory::new())));
        let log = ShardLog::open(store.clone(), Path::from("s"), cfg)
            .await
            .expect("open");
        let streams: Vec<StreamId> = (0..n).map(|_| log.allocate_stream()).collect();
        let create = streams.iter().map(|&stream| Entry::CreateStream { stream });
        durable(&log, create.collect()).await;
        (store, log, streams)
    }

    /// Appends `entries` (one WAL object, with no linger) and waits until
    /// they are durable.
    async fn durable(log: &ShardLog, entries: Vec<Entry>) {
        let a = log.append(entries).await.expect("append");
        a.durable().await.expect("durable");
    }

    /// A batch of `stream`: 1,500 bytes of `i`.
    fn batch(stream: StreamId, i: u8) -> Entry {
        Entry::Append {
            stream,
            base_offset: 0,
            offsets: 1,
            max_timestamp: 0,
            producer: None,
            data: Bytes::from(vec![i; 1500]),
        }
    }

    async fn first_compaction(stats: &LogStats, within: Duration) {
        let deadline = Instant::now() + within;
        while stats.compactions.load(Relaxed) == 0 {
            assert!(Instant::now() < deadline, "no compaction within {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A WAL object holds batches of many streams (a flush takes what every
    /// partition was sent meanwhile): compaction reads each source object
    /// once, not once per stream in it.
    #[tokio::test]
    async fn compaction_reads_each_source_once_whatever_its_streams() {
        let cfg = LogConfig {
            linger: Duration::ZERO,
            // One compaction, of all ten objects below, once they are there.
            compact_bytes: 10 * 8 * 1500,
            compact_after: Duration::from_secs(600),
            maintain_every: Duration::from_millis(10),
            // Nothing in memory: compaction must load every source.
            tail_bytes: 0,
            ..LogConfig::default()
        };
        let stats = cfg.stats.clone();
        let (store, log, streams) = open_counted(cfg, 8).await;
        let got = store.stats.get_bytes.load(Relaxed);
        // Ten WAL objects of 8 streams' batches, 12 KB each.
        for i in 0..10u8 {
            durable(&log, streams.iter().map(|&s| batch(s, i)).collect()).await;
        }
        first_compaction(&stats, Duration::from_secs(10)).await;
        // (Other GETs, e.g. sweeping's look for a newer epoch, find nothing.)
        let read = store.stats.get_bytes.load(Relaxed) - got;
        let compacted = stats.compacted_bytes.load(Relaxed);
        assert_eq!(compacted, 10 * 8 * 1500);
        assert!(
            (compacted..2 * compacted).contains(&read),
            "{read} bytes read for {compacted} compacted"
        );
        log.close().await.expect("close");
    }

    /// Writes 40 WAL objects of a quarter of a data object each (ten
    /// compactions due) before the first tick, then waits for the ten,
    /// which must all come before the next tick, at `per_sec`. Returns the
    /// log's counters and the time from seeing the first compaction to
    /// seeing the tenth.
    async fn compact_a_backlog(per_sec: u64) -> (Arc<LogStats>, Duration) {
        // Long enough that all 40 writes below land before the first tick,
        // even on a loaded machine.
        let every = Duration::from_secs(4);
        let cfg = LogConfig {
            linger: Duration::ZERO,
            compact_bytes: 4 * 1500,
            compact_bytes_per_sec: per_sec,
            compact_after: Duration::from_secs(600),
            maintain_every: every,
            ..LogConfig::default()
        };
        let stats = cfg.stats.clone();
        let (_, log, streams) = open_counted(cfg, 1).await;
        for i in 0..40u8 {
            durable(&log, vec![batch(streams[0], i)]).await;
        }
        first_compaction(&stats, 3 * every).await;
        let first = Instant::now();
        let next_tick = first + every * 3 / 4;
        while stats.compactions.load(Relaxed) < 10 && Instant::now() < next_tick {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = first.elapsed();
        assert_eq!(
            stats.compactions.load(Relaxed),
            10,
            "all before the next tick"
        );
        log.close().await.expect("close");
        (stats, took)
    }

    /// A backlog of small WAL objects is compacted one data object after
    /// another, not one per maintenance tick: at 1 / tick a shard written
    /// faster than a data object a tick would never catch up. (At the
    /// default pace, ten data objects this small take well under a tick.)
    #[tokio::test]
    async fn a_backlog_is_compacted_back_to_back() {
        let (stats, _) = compact_a_backlog(LogConfig::default().compact_bytes_per_sec).await;
        assert_eq!(stats.compacted_bytes.load(Relaxed), 40 * 1500);
    }

    /// A backlog is compacted no faster than `compact_bytes_per_sec`: ten
    /// data objects of 6,000 bytes at 30,000 bytes a second start 200 ms
    /// apart, all still before the next tick.
    #[tokio::test]
    async fn a_backlog_is_compacted_at_its_pace() {
        let (_, took) = compact_a_backlog(30_000).await;
        // Nine gaps of 200 ms from the first's start; the first's own time
        // and the polls come off that, so the bound leaves them 300 ms.
        // Unpaced, the ten take a few milliseconds.
        assert!(
            took >= Duration::from_millis(1500),
            "nine compactions in {took:?}"
        );
    }

    /// Compaction reads its sources on the background runtime without
    /// caching blocks it is about to supersede, or counting as a reader in
    /// the cache's counters. (That its loads are registered nowhere, so no
    /// reader joins one, this test does not see.)
    #[tokio::test]
    async fn compaction_loads_neither_fill_nor_count_in_the_cache() {
        let bg = crate::conformance::Background::new().expect("runtime");
        let cfg = LogConfig {
            background: Some(bg.handle()),
            linger: Duration::ZERO,
            compact_bytes: 32 << 10,
            compact_after: Duration::from_millis(50),
            maintain_every: Duration::from_millis(10),
            // Nothing in memory: compaction must load every source.
            tail_bytes: 0,
            block_bytes: 4096,
            ..LogConfig::default()
        };
        let stats = cfg.stats.clone();
        let (store, log, streams) = open_counted(cfg, 1).await;
        for i in 0..40u8 {
            durable(&log, vec![batch(streams[0], i)]).await;
        }
        let gets = store.stats.gets.load(Relaxed);
        first_compaction(&stats, Duration::from_secs(10)).await;
        assert!(
            store.stats.gets.load(Relaxed) > gets,
            "sources came from the store"
        );
        let counted = stats.cache_hits.load(Relaxed) + stats.cache_misses.load(Relaxed);
        assert_eq!(counted, 0, "compaction counted as a reader");
        let cached = log.inner.cache.lock().expect("cache").bytes();
        assert_eq!(cached, 0, "compaction cached its sources");
        log.close().await.expect("close");
    }
}
