//! Kafka's log compaction (`cleanup.policy=compact`): every partition keeps
//! at least the last record of each key. A shard's cleaner, every
//! `clean_every`, takes each compacted partition whose dirty part (written
//! since its last clean) is at least `min.cleanable.dirty.ratio` of it, or
//! whose oldest dirty record is `max.compaction.lag.ms` old, or whose
//! tombstones may go (below):
//! 1. reads the dirty part up to the cleanable end (the last stable offset,
//!    no batch younger than `min.compaction.lag.ms`, none compaction has not
//!    moved yet), noting each key's last offset, until the map is full;
//! 2. rewrites every batch from the log start to where the map ends that
//!    holds a record a later record of its key supersedes, or a tombstone
//!    a clean first read at least `delete.retention.ms` ago, without those
//!    records; a batch left empty is dropped.
//!
//! As Kafka's cleaner, the map only covers the dirty part: the clean part
//! already holds one record per key, so a key absent from the map keeps its
//! record. The map holds a 128-bit keyed hash of each key and at most
//! [`MAP_KEYS`] of them (Kafka's dedupe buffer): a pass stops before a batch
//! that could take it past that, so a dirty part with more keys is cleaned
//! in several passes. One partition is cleaned at a time per process, so
//! one map's memory is all cleaning costs. Where the dirty part starts is a
//! metadata key of the shard (`c/{stream}`; Kafka's
//! cleaner-offset-checkpoint), so a shard opened again (a restart, a scale
//! from zero, a new owner) does not read its partitions again. Stream ids
//! are never reused, so the key never outlives its partition.
//!
//! The cleaner runs on the requests' runtime (the maintenance runtime's
//! niced thread must not hold the shard's lock, which planning takes), and
//! tells it each batch's decompressing and compressing blocks
//! (`block_in_place`), so other requests move to another thread meanwhile.
//!
//! A rewritten batch keeps its header (base offset, last offset delta,
//! timestamps, producer fields) and the bytes of the records it keeps, so
//! its offsets and its index entry's span do not change; only its record
//! count, length and CRC do, and its payload is compressed again with the
//! batch's codec. Readers see gaps in offsets, as Kafka's cleaner leaves
//! them. Storage applies the rewrite as a log entry (`ShardLog::rewrite`).
//!
//! A tombstone's `delete.retention.ms` runs from the first clean that read
//! it, as Kafka's delete horizon (KIP-534), not from its timestamp, which is
//! the client's: a tombstone sent with an old time would otherwise go
//! before consumers had their time to see it. Kafka writes the horizon into
//! the batch; here a rewrite keeps batch headers, so each partition keeps
//! when its cleans read how far (`ct/{stream}`, see [`note_clean`]). A
//! clean that keeps tombstones or commit markers only for their retention
//! notes when the newest of them may go (`cd/{stream}`), and the partition
//! is cleaned then even if nothing made it dirty, as Kafka cleans a log
//! whose latest delete horizon has passed.
//!
//! Below the last stable offset every transaction has ended: records of
//! committed ones count as any others, records of aborted ones are removed
//! (as Kafka's cleaner removes them). A commit marker goes once its
//! transaction has no record left and a tombstone in its place would go
//! (Kafka's rule); readers skip commit markers. Abort markers stay: Kafka
//! removes them with their entry in the aborted transactions a fetch
//! answers, which here is storage's, kept until retention passes it.
//!
//! Left as they are: records without a key (a compacted topic refuses new
//! ones, older ones stay); batches whose records do not read, or hold more
//! than their count (produce refuses them for a compacted topic, not for
//! others, whose records it does not read), kept whole; the stream's last
//! batch, however empty (storage keeps it, so no reader is left in a gap
//! below the high watermark).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use floe_common::batch::{self, BatchHeader, HEADER_LEN, LOG_OVERHEAD};
use floe_storage::log::now_ms;
use floe_storage::{Change, Entry, ShardLog, StreamId};
use tokio::sync::Semaphore;

use super::Shard;
use crate::catalog::{TopicConfig, TopicMeta};
use crate::inflate;

/// Bytes of batches one rewrite call takes: one data object at most.
const CHUNK: u64 = 8 << 20;

/// Keys one pass maps at most: 7/8 of 2^20 fills a hash table of 2^20
/// buckets of 24 bytes (a 16-byte hash, an offset), about 26 MB.
pub(crate) const MAP_KEYS: usize = (1 << 20) / 8 * 7;

/// Runs CPU-heavy `f` where it blocks no other task: on a multi-thread
/// runtime, other tasks move off this thread meanwhile.
fn off_the_runtime<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Where each partition's clean end (its dirty part's start) is kept.
const CLEANED_PREFIX: &[u8] = b"c/";

/// Where each partition's clean times are kept: `(end, time_ms)` pairs,
/// both increasing; a clean at `time_ms` had read every record below `end`.
const CLEAN_TIMES_PREFIX: &[u8] = b"ct/";

/// When a partition with tombstones or commit markers left by its last
/// clean, and nothing else to clean, is cleaned again to remove them: a time
/// in ms (Kafka's latest delete horizon, KIP-534), [`NOTHING_WAITS`] if
/// there are none. Without it a partition nobody writes to any more would
/// keep its tombstones for good. A partition cleaned by a build from before
/// it (a clean end, no time) is due once.
const CLEAN_DUE_PREFIX: &[u8] = b"cd/";

/// The time in [`CLEAN_DUE_PREFIX`] of a clean that left nothing waiting.
const NOTHING_WAITS: i64 = i64::MAX;

/// Clean times kept per partition beyond the ones past the horizon: one
/// per this fraction of `delete.retention.ms` at most. A tombstone read by
/// a clean whose time was not kept counts from the next kept one.
const CLEAN_TIMES: i64 = 16;

/// One partition's clean at a time in this process (see the module notes).
static CLEANING: Semaphore = Semaphore::const_new(1);

/// Runs the cleaner of `shard` every `every` for as long as it is open.
pub(crate) async fn clean(shard: Weak<Shard>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(shard) = shard.upgrade() else { return };
        if shard.log.failed().is_some() {
            return;
        }
        let topics: Vec<Arc<TopicMeta>> = shard.topics_now();
        for t in topics {
            let c = t.config();
            if !c.compact {
                continue;
            }
            for &s in &t.streams {
                let stream = StreamId(s);
                // A partition whose map filled is cleaned again at once.
                loop {
                    let done = {
                        let _turn = CLEANING.acquire().await.expect("never closed");
                        if shard.log.failed().is_some() {
                            return;
                        }
                        clean_partition(&shard.log, stream, &c, now_ms(), MAP_KEYS).await
                    };
                    let more = matches!(done, Ok(Some(Cleaned { more: true, .. })));
                    match done {
                        Ok(Some(done)) => tracing::debug!(
                            topic = %t.name,
                            stream = s,
                            removed = done.removed,
                            batches_dropped = done.dropped,
                            batches_rewritten = done.replaced,
                            "cleaned"
                        ),
                        Ok(None) => {}
                        Err(floe_storage::Error::Closed) => return,
                        Err(e) => tracing::warn!(topic = %t.name, error = %e, "cleaning failed"),
                    }
                    if !more {
                        break;
                    }
                }
            }
        }
        forget_deleted(&shard.log).await;
    }
}

/// Removes the clean ends and times of deleted partitions.
async fn forget_deleted(log: &ShardLog) {
    let gone: Vec<Entry> = [CLEANED_PREFIX, CLEAN_TIMES_PREFIX, CLEAN_DUE_PREFIX]
        .into_iter()
        .flat_map(|prefix| {
            log.scan(prefix)
                .into_iter()
                .filter(move |(k, _)| stream_of(prefix, k).is_none_or(|s| log.offsets(s).is_err()))
        })
        .map(|(key, _)| Entry::Put { key, value: None })
        .collect();
    if gone.is_empty() {
        return;
    }
    if let Err(e) = append(log, gone).await {
        tracing::warn!(error = %e, "forgetting clean ends failed");
    }
}

async fn append(log: &ShardLog, entries: Vec<Entry>) -> Result<(), floe_storage::Error> {
    log.append(entries).await?.durable().await
}

fn stream_key(prefix: &[u8], stream: StreamId) -> Bytes {
    let mut k = BytesMut::from(prefix);
    k.put_u64(stream.0);
    k.freeze()
}

fn stream_of(prefix: &[u8], key: &[u8]) -> Option<StreamId> {
    let id = key.strip_prefix(prefix)?.try_into().ok()?;
    Some(StreamId(u64::from_be_bytes(id)))
}

/// Where `stream`'s dirty part starts, as its last clean left it.
fn clean_end(log: &ShardLog, stream: StreamId) -> Option<i64> {
    let v = log.get(&stream_key(CLEANED_PREFIX, stream))?;
    Some(i64::from_be_bytes(v.as_ref().try_into().ok()?))
}

/// `stream`'s clean times (see [`CLEAN_TIMES_PREFIX`]); none before its
/// first clean, or when a build from before them cleaned it.
fn clean_times(log: &ShardLog, stream: StreamId) -> Vec<(i64, i64)> {
    let v = log
        .get(&stream_key(CLEAN_TIMES_PREFIX, stream))
        .unwrap_or_default();
    v.chunks_exact(16)
        .map(|c| {
            let (end, time) = c.split_at(8);
            let int = |b: &[u8]| i64::from_be_bytes(b.try_into().expect("8 bytes"));
            (int(end), int(time))
        })
        .collect()
}

fn encode_clean_times(times: &[(i64, i64)]) -> Bytes {
    let mut b = BytesMut::with_capacity(times.len() * 16);
    for &(end, time) in times {
        b.put_i64(end);
        b.put_i64(time);
    }
    b.freeze()
}

/// When `stream`'s last clean asked to be cleaned again (see
/// [`CLEAN_DUE_PREFIX`]); `None` if it was never cleaned.
fn clean_due_at(log: &ShardLog, stream: StreamId) -> Option<i64> {
    match log.get(&stream_key(CLEAN_DUE_PREFIX, stream)) {
        Some(v) => Some(v.as_ref().try_into().map_or(0, i64::from_be_bytes)),
        // Cleaned by an older build, which kept no time: due now.
        None => clean_end(log, stream).map(|_| 0),
    }
}

/// When everything below `below` that waits for its `delete.retention.ms`
/// (a tombstone, a commit marker) may go: `retention` after the first clean
/// time that covers it; if none does yet, when the next clean may note a
/// time (see [`note_clean`]), which then covers it.
fn expiry_of(times: &[(i64, i64)], below: i64, retention: i64) -> i64 {
    match times.iter().find(|&&(end, _)| end >= below) {
        Some(&(_, t)) => t.saturating_add(retention),
        None => times.last().map_or(0, |&(_, t)| {
            t.saturating_add((retention / CLEAN_TIMES).max(1))
        }),
    }
}

/// Tombstones below this offset were read by a clean at or before
/// `horizon`: their `delete.retention.ms` has run.
fn tombstones_expire_below(times: &[(i64, i64)], horizon: i64) -> i64 {
    times
        .iter()
        .take_while(|&&(_, t)| t <= horizon)
        .last()
        .map_or(i64::MIN, |&(end, _)| end)
}

/// Notes a clean at `now` that read up to `end`. Of the times past the
/// horizon only the newest matters; a new time is kept only if the newest
/// is at least `retention / CLEAN_TIMES` old, else the records it would
/// cover count from a later clean (they stay longer, never shorter).
fn note_clean(times: &mut Vec<(i64, i64)>, end: i64, now: i64, retention: i64) {
    let past = times
        .iter()
        .take_while(|&&(_, t)| t <= now.saturating_sub(retention))
        .count();
    times.drain(..past.saturating_sub(1));
    match times.last() {
        Some(&(e, _)) if e >= end => {}
        Some(&(_, t)) if now.saturating_sub(t) < (retention / CLEAN_TIMES).max(1) => {}
        _ => times.push((end, now)),
    }
}

/// A key's place in the map: a 128-bit hash keyed per process, so no
/// tenant can make two of its keys collide (a collision would drop the
/// older key's last record), and chance collisions are negligible.
/// (Two `u64`s rather than a `u128`: 8-byte aligned, 24-byte buckets.)
fn key_hash(key: &[u8]) -> [u64; 2] {
    static SEEDS: OnceLock<(RandomState, RandomState)> = OnceLock::new();
    let (a, b) = SEEDS.get_or_init(|| (RandomState::new(), RandomState::new()));
    [a.hash_one(key), b.hash_one(key)]
}

/// What one partition's clean did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cleaned {
    pub removed: u64,
    pub replaced: usize,
    pub dropped: usize,
    /// The map filled before the cleanable end: more is due at once.
    pub more: bool,
}

/// Cleans one partition if it is due (see the module's notes), mapping at
/// most `max_keys` keys, or one batch's.
pub(crate) async fn clean_partition(
    log: &ShardLog,
    stream: StreamId,
    c: &TopicConfig,
    now: i64,
    max_keys: usize,
) -> Result<Option<Cleaned>, floe_storage::Error> {
    let (log_start, _) = log.offsets(stream)?;
    let end = log
        .first_younger(stream, now.saturating_sub(c.min_compaction_lag_ms))
        .min(log.last_stable(stream)?)
        .min(log.first_uncompacted(stream));
    let dirty_from = clean_end(log, stream).unwrap_or(log_start).max(log_start);
    // Tombstones or markers the last clean kept may go now.
    let expiring = clean_due_at(log, stream).is_some_and(|t| t <= now);
    if dirty_from >= end && !expiring {
        return Ok(None);
    }
    let dirty = log.bytes_between(stream, dirty_from, end);
    let total = log.bytes_between(stream, log_start, end);
    let overdue = log
        .timestamp_at(stream, dirty_from)
        .is_some_and(|t| t < now.saturating_sub(c.max_compaction_lag_ms));
    let below_ratio = (dirty as f64) < c.min_cleanable_dirty_ratio * total as f64;
    if !expiring && (dirty == 0 || (below_ratio && !overdue)) {
        return Ok(None);
    }

    // 1. Each key's last offset in the dirty part. Below the last stable
    // offset every transaction has ended: a committed record counts as any
    // other, an aborted one is removed and supersedes nothing (as Kafka's
    // cleaner).
    let mut aborted: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
    for a in log.aborted_txns(stream)? {
        aborted
            .entry(a.producer_id)
            .or_default()
            .push((a.first_offset, a.last_offset));
    }
    let is_aborted = |txn: Option<i64>, offset: i64| {
        txn.and_then(|p| aborted.get(&p))
            .is_some_and(|ranges| ranges.iter().any(|&(f, l)| (f..=l).contains(&offset)))
    };
    let mut last: HashMap<[u64; 2], i64> = HashMap::new();
    let mut bad = None;
    let (mut unreadable, mut first_error) = (0, None);
    let mut batch_keys = Vec::new();
    // The end of the last batch mapped; never past `end`, beyond which
    // batches may be uncompacted, unstable or too young.
    let mut mapped = dirty_from.min(end);
    let mut full = false;
    while mapped < end && !full {
        let r = log
            .rewrite(stream, mapped, end, CHUNK, |b| {
                if full || bad.is_some() {
                    return Change::Keep;
                }
                // Stop before a batch that could fill the map past its
                // bound (unless it is the first).
                let h = match batch::parse(b) {
                    Ok(h) => h,
                    Err(e) => {
                        bad = Some(e.to_string());
                        return Change::Keep;
                    }
                };
                if !last.is_empty() && last.len() + h.record_count as usize > max_keys {
                    full = true;
                    return Change::Keep;
                }
                // The batch's keys go in the map only once all its records
                // read.
                batch_keys.clear();
                let scanned = off_the_runtime(|| {
                    scan(b, &h, |offset, key, _, txn| {
                        if let Some(k) = key.filter(|_| !is_aborted(txn, offset)) {
                            batch_keys.push((key_hash(k), offset));
                        }
                    })
                });
                match scanned {
                    Ok(batch_end) => {
                        last.extend(batch_keys.drain(..));
                        mapped = batch_end;
                    }
                    // Records that do not read (cut short, not inflating
                    // within the bound, past the count, outside the
                    // batch's offsets): the batch stays whole (the rewrite
                    // below cannot read it either), supersedes nothing,
                    // and the rest of the partition is cleaned.
                    Err(e) => {
                        unreadable += 1;
                        first_error.get_or_insert(e);
                        let base = batch::base_offset(b).unwrap_or(mapped);
                        mapped = base + i64::from(h.offset_count());
                    }
                }
                full = last.len() >= max_keys;
                Change::Keep
            })
            .await?;
        if r.batches_read == 0 || bad.is_some() {
            break;
        }
        if !full {
            mapped = r.next;
        }
    }
    if let Some(e) = bad {
        // A batch whose header does not parse: leave the partition as it is.
        return Err(floe_storage::Error::Unavailable(format!(
            "a batch does not decode: {e}"
        )));
    }
    if let Some(e) = first_error {
        tracing::warn!(?stream, batches = unreadable, error = %e, "batches kept whole: their records do not read");
    }

    // 2. Rewrite what is superseded, from the log start to the map's end.
    let mut times = clean_times(log, stream);
    let tombstones_below =
        tombstones_expire_below(&times, now.saturating_sub(c.delete_retention_ms));
    let mut done = Cleaned {
        more: full && mapped < end,
        ..Cleaned::default()
    };
    // Producers with a transaction's records kept since their last marker
    // (a producer has one transaction open at a time).
    let mut txn_kept: HashSet<i64> = HashSet::new();
    // The end of the last tombstone or commit marker kept only because its
    // delete.retention.ms has not run.
    let mut waiting_below = None;
    let mut at = log_start;
    while at < mapped {
        let r = log
            .rewrite(stream, at, mapped, CHUNK, |b| {
                let Ok(h) = batch::parse(b) else {
                    return Change::Keep;
                };
                if h.is_control() {
                    // As Kafka's cleaner: a commit marker goes once its
                    // transaction has no record left, and as late as a
                    // tombstone would. Readers skip commit markers; an
                    // abort marker ends a read_committed reader's skipping
                    // of its producer, so it stays.
                    let had_records = txn_kept.remove(&h.producer_id);
                    let offset = batch::base_offset(b).unwrap_or(i64::MAX);
                    if had_records || !is_commit(b, &h) {
                        return Change::Keep;
                    }
                    if offset < tombstones_below {
                        return Change::Drop;
                    }
                    waiting_below = Some(offset + 1);
                    return Change::Keep;
                }
                let keep = |offset: i64, key: Option<&Bytes>, tombstone: bool, txn| {
                    if is_aborted(txn, offset) {
                        return false;
                    }
                    match key {
                        None => true,
                        Some(k) => {
                            let superseded = last.get(&key_hash(k)).is_some_and(|&o| o > offset);
                            if superseded || !tombstone {
                                return !superseded;
                            }
                            if offset < tombstones_below {
                                return false;
                            }
                            waiting_below = Some(offset + 1);
                            true
                        }
                    }
                };
                let change = match off_the_runtime(|| filter(b, &h, keep)) {
                    // (Storage never drops a stream's last batch.)
                    Ok((change, removed)) => {
                        done.removed += removed;
                        change
                    }
                    Err(_) => Change::Keep,
                };
                if h.is_transactional() && change != Change::Drop {
                    txn_kept.insert(h.producer_id);
                }
                change
            })
            .await?;
        if r.batches_read == 0 {
            break;
        }
        done.replaced += r.replaced;
        done.dropped += r.dropped;
        at = r.next;
    }
    note_clean(&mut times, at, now, c.delete_retention_ms);
    let due = waiting_below.map_or(NOTHING_WAITS, |below| {
        expiry_of(&times, below, c.delete_retention_ms)
    });
    // A higher min.compaction.lag.ms can put `end` below where the last
    // clean ended; what lies between was cleaned and stays so.
    let at = at.max(dirty_from);
    append(
        log,
        vec![
            Entry::Put {
                key: stream_key(CLEANED_PREFIX, stream),
                value: Some(Bytes::copy_from_slice(&at.to_be_bytes())),
            },
            Entry::Put {
                key: stream_key(CLEAN_TIMES_PREFIX, stream),
                value: Some(encode_clean_times(&times)),
            },
            Entry::Put {
                key: stream_key(CLEAN_DUE_PREFIX, stream),
                value: Some(Bytes::copy_from_slice(&due.to_be_bytes())),
            },
        ],
    )
    .await?;
    Ok(Some(done))
}

/// What a produce needs to know of a data batch's records: whether each has
/// a key (as a compacted topic requires) and the newest timestamp (as Kafka
/// computes the batch's maxTimestamp; `None` without records). One look at
/// the records, decompressed within the bound; a batch holding other than
/// its count of records, or one claiming an offset outside it, is refused,
/// as Kafka's iterators refuse it. `h` is the batch's parsed header, here
/// and in the functions below.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Look {
    pub every_keyed: bool,
    pub newest: Option<i64>,
}

pub(crate) fn look(b: &Bytes, h: &BatchHeader) -> Result<Look, String> {
    let records = payload(b, h)?;
    let mut out = Look {
        every_keyed: true,
        newest: None,
    };
    for r in Records::checked(&records, h) {
        let r = r?;
        out.every_keyed &= r.key.is_some();
        out.newest = out
            .newest
            .max(Some(h.base_timestamp.saturating_add(r.timestamp_delta)));
    }
    Ok(out)
}

/// The first record of a batch at or after offset `from` whose timestamp is
/// at or after `ts`: its offset and timestamp, as Kafka's ListOffsets
/// answers (every record of a LogAppendTime batch has the batch's time).
/// Records claiming offsets outside the batch are skipped.
pub(crate) fn first_at_or_after(
    b: &Bytes,
    h: &BatchHeader,
    ts: i64,
    from: i64,
) -> Result<Option<(i64, i64)>, String> {
    let base = batch::base_offset(b).unwrap_or(0);
    let span = 0..i64::from(h.offset_count());
    let records = payload(b, h)?;
    for r in Records::new(&records) {
        let r = r?;
        if !span.contains(&r.offset_delta) || base + r.offset_delta < from {
            continue;
        }
        let t = if h.attributes & batch::LOG_APPEND_TIME != 0 {
            h.max_timestamp
        } else {
            h.base_timestamp.saturating_add(r.timestamp_delta)
        };
        if t >= ts {
            return Ok(Some((base + r.offset_delta, t)));
        }
    }
    Ok(None)
}

/// Calls `f(offset, key, is_tombstone, transaction's producer)` for each
/// record of a data batch (any codec); control batches are skipped. Gives
/// the offset after the batch.
pub(crate) fn scan(
    b: &Bytes,
    h: &BatchHeader,
    mut f: impl FnMut(i64, Option<&[u8]>, bool, Option<i64>),
) -> Result<i64, String> {
    let base = batch::base_offset(b).unwrap_or(0);
    let end = base + i64::from(h.offset_count());
    if h.is_control() {
        return Ok(end);
    }
    let records = payload(b, h)?;
    // Checked: the map's bound counts a batch by its header's count.
    for r in Records::checked(&records, h) {
        let r = r?;
        let key = r.key.map(|k| &records[k]);
        f(base + r.offset_delta, key, r.tombstone, txn(h));
    }
    Ok(end)
}

/// Whether a control batch is a commit marker: its record's key is a
/// version, then the type, 1 for commit (0 for abort).
fn is_commit(b: &Bytes, h: &BatchHeader) -> bool {
    let Ok(records) = payload(b, h) else {
        return false;
    };
    let first = Records::new(&records).next();
    let key = first.and_then(|r| r.ok()?.key).and_then(|k| records.get(k));
    key.is_some_and(|k| k.len() >= 4 && k[2..4] == [0, 1])
}

/// The producer of a transactional batch.
fn txn(h: &BatchHeader) -> Option<i64> {
    h.is_transactional().then_some(h.producer_id)
}

/// What cleaning does with one batch: `keep(offset, key, is_tombstone,
/// transaction's producer)` says which records stay;
/// the change, and how many records it removes. Control batches (markers)
/// are kept whole.
pub(crate) fn filter(
    b: &Bytes,
    h: &BatchHeader,
    mut keep: impl FnMut(i64, Option<&Bytes>, bool, Option<i64>) -> bool,
) -> Result<(Change, u64), String> {
    if h.is_control() {
        return Ok((Change::Keep, 0));
    }
    let base = batch::base_offset(b).unwrap_or(0);
    let records = payload(b, h)?;
    let mut kept = Vec::new();
    let mut count = 0u64;
    for r in Records::checked(&records, h) {
        let r = r?;
        count += 1;
        let key = r.key.map(|k| records.slice(k));
        if keep(base + r.offset_delta, key.as_ref(), r.tombstone, txn(h)) {
            kept.push(r.span);
        }
    }
    let removed = count - kept.len() as u64;
    if removed == 0 {
        return Ok((Change::Keep, 0));
    }
    if kept.is_empty() {
        return Ok((Change::Drop, removed));
    }
    let mut plain = BytesMut::new();
    for s in &kept {
        plain.put_slice(&records[s.clone()]);
    }
    let body = inflate::compress(h.attributes & 7, &plain)?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    out.put_slice(&b[..HEADER_LEN]);
    out.put_slice(&body);
    let batch_len = i32::try_from(out.len() - LOG_OVERHEAD).map_err(|_| "batch too large")?;
    out[8..12].copy_from_slice(&batch_len.to_be_bytes());
    out[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    batch::seal(&mut out);
    Ok((Change::Replace(out.freeze()), removed))
}

/// The batch's records section, uncompressed (within the bound).
fn payload(b: &Bytes, h: &BatchHeader) -> Result<Bytes, String> {
    let body = b.slice(HEADER_LEN..h.len.min(b.len()));
    match h.attributes & 7 {
        0 => Ok(body),
        codec => inflate::decompress(codec, &body, inflate::MAX_INFLATED),
    }
}

/// One record of a batch: its bytes (length prefix included), offset delta,
/// key (a range of the records section) and whether its value is null.
struct RecordSpan {
    span: std::ops::Range<usize>,
    timestamp_delta: i64,
    offset_delta: i64,
    key: Option<std::ops::Range<usize>>,
    tombstone: bool,
}

/// The records of a (decompressed) records section, in order.
struct Records<'a> {
    b: &'a [u8],
    at: usize,
    /// For [`Records::checked`]: the records the batch says it holds, its
    /// last offset delta, and the records read so far.
    check: Option<(i32, i64)>,
    read: i32,
}

impl<'a> Records<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self {
            b,
            at: 0,
            check: None,
            read: 0,
        }
    }

    /// The records of a batch with header `h`, which must be as many as
    /// its count, each at an offset of the batch; the first that is not
    /// is an error, before it is seen.
    fn checked(b: &'a [u8], h: &BatchHeader) -> Self {
        Self {
            check: Some((h.record_count, i64::from(h.last_offset_delta))),
            ..Self::new(b)
        }
    }

    fn next_record(&mut self) -> Result<RecordSpan, String> {
        let start = self.at;
        let len = self.varint()?;
        let body_start = self.at;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| body_start.checked_add(l))
            .filter(|&e| e <= self.b.len())
            .ok_or("record length past its batch")?;
        self.at += 1; // attributes
        let timestamp_delta = self.varint()?;
        let offset_delta = self.varint()?;
        let key_len = self.varint()?;
        let key = match key_len {
            -1 => None,
            n if n >= 0 => {
                let k = self.at..self.at + n as usize;
                self.at = k.end;
                Some(k)
            }
            _ => return Err("negative key length".into()),
        };
        let value_len = self.varint()?;
        if self.at > end {
            return Err("record fields past its length".into());
        }
        self.at = end;
        Ok(RecordSpan {
            span: start..end,
            timestamp_delta,
            offset_delta,
            key,
            tombstone: value_len == -1,
        })
    }

    /// A zigzag varint (varlong), as Kafka's records encode them.
    fn varint(&mut self) -> Result<i64, String> {
        let mut raw = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at).ok_or("a varint past its record")?;
            self.at += 1;
            raw |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err("a varint over 10 bytes".into())
    }
}

impl Iterator for Records<'_> {
    type Item = Result<RecordSpan, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let done = self.at >= self.b.len();
        let r = match self.check {
            None if done => return None,
            None => self.next_record(),
            Some((count, _)) if done => {
                if self.read == count {
                    return None;
                }
                Err(format!("{} records for a count of {count}", self.read))
            }
            Some((count, _)) if self.read == count => {
                Err(format!("more records than the count of {count}"))
            }
            Some((_, last_delta)) => self.next_record().and_then(|r| {
                if (0..=last_delta).contains(&r.offset_delta) {
                    Ok(r)
                } else {
                    Err(format!(
                        "a record at offset delta {}, outside its batch",
                        r.offset_delta
                    ))
                }
            }),
        };
        self.read += 1;
        if r.is_err() {
            // Stop after the first error.
            self.at = self.b.len();
            self.check = None;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    fn record(offset: i64, key: Option<&str>, value: Option<&str>) -> Record {
        Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            // One batch: the encoder groups records whose offset minus
            // sequence agree.
            sequence: offset as i32,
            timestamp: 1_000 + offset,
            delete_horizon: false,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: [(
                StrBytes::from_static_str("h"),
                Some(Bytes::from_static(b"x")),
            )]
            .into_iter()
            .collect(),
        }
    }

    fn encode(records: &[Record], compression: Compression) -> Bytes {
        let mut b = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut b,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encodes");
        b.freeze()
    }

    fn decode(b: &Bytes) -> Vec<Record> {
        let mut buf = b.clone();
        RecordBatchDecoder::decode(&mut buf)
            .expect("decodes")
            .records
    }

    const S: StreamId = StreamId(1);

    fn compacted() -> TopicConfig {
        TopicConfig {
            max_message_bytes: 1 << 20,
            retention_ms: -1,
            retention_bytes: -1,
            log_append_time: false,
            delete: false,
            compact: true,
            min_cleanable_dirty_ratio: 0.0,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            delete_retention_ms: i64::MAX,
        }
    }

    async fn open(store: &Arc<dyn object_store::ObjectStore>) -> ShardLog {
        let cfg = floe_storage::LogConfig {
            maintain_every: Duration::from_millis(10),
            compact_after: Duration::from_millis(10),
            ..floe_storage::LogConfig::default()
        };
        ShardLog::open(store.clone(), object_store::path::Path::from("s"), cfg)
            .await
            .expect("open")
    }

    /// A log in a new in-memory store, with stream `S` created.
    async fn with_stream() -> (Arc<dyn object_store::ObjectStore>, ShardLog) {
        let store: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::memory::InMemory::new());
        let log = open(&store).await;
        append(&log, vec![Entry::CreateStream { stream: S }])
            .await
            .expect("create");
        (store, log)
    }

    /// A record of each of `keys` at the log's next offsets, whose values
    /// are their offsets.
    fn next_records(log: &ShardLog, keys: &[impl AsRef<str>]) -> Vec<Record> {
        let (_, next) = log.offsets(S).expect("stream");
        let at = |i: usize| next + i as i64;
        keys.iter()
            .enumerate()
            .map(|(i, k)| record(at(i), Some(k.as_ref()), Some(&at(i).to_string())))
            .collect()
    }

    /// Appends one batch of `keys`, one record each at the next offsets,
    /// whose values are their offsets.
    async fn append_keys(log: &ShardLog, keys: &[String]) {
        let rs = next_records(log, keys);
        let entry = Entry::Append {
            stream: S,
            base_offset: 0,
            offsets: keys.len() as u32,
            max_timestamp: 1_000,
            producer: None,
            data: encode(&rs, Compression::Lz4),
        };
        append(log, vec![entry]).await.expect("append");
    }

    /// A log whose stream holds "a", "b" and a tombstone of "a" (offsets 0
    /// to 2), and a compacted topic's config keeping tombstones 10 s.
    async fn with_a_tombstone() -> (Arc<dyn object_store::ObjectStore>, ShardLog, TopicConfig) {
        let (store, log) = with_stream().await;
        append_keys(&log, &["a".into(), "b".into()]).await;
        append_tombstone(&log, "a").await;
        let c = TopicConfig {
            delete_retention_ms: 10_000,
            ..compacted()
        };
        (store, log, c)
    }

    /// Appends a tombstone of `key` at the next offset, stamped 1,002 ms
    /// (1970: its age must not count).
    async fn append_tombstone(log: &ShardLog, key: &str) {
        let (_, at) = log.offsets(S).expect("stream");
        let entry = Entry::Append {
            stream: S,
            base_offset: 0,
            offsets: 1,
            max_timestamp: 1_002,
            producer: None,
            data: encode(&[record(at, Some(key), None)], Compression::None),
        };
        append(log, vec![entry]).await.expect("append");
    }

    async fn wait_compacted(log: &ShardLog) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while log.first_uncompacted(S) < log.offsets(S).expect("stream").1 {
            assert!(tokio::time::Instant::now() < deadline, "no compaction");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A clean at `now` once compaction moved every batch; it must be due.
    async fn clean_due(log: &ShardLog, c: &TopicConfig, now: i64, max_keys: usize) -> Cleaned {
        wait_compacted(log).await;
        clean_partition(log, S, c, now, max_keys)
            .await
            .expect("clean")
            .expect("due")
    }

    /// Each key's record, by reading the whole partition: key → offsets.
    async fn records(log: &ShardLog) -> std::collections::BTreeMap<String, Vec<i64>> {
        let (out, tombstones) = records_and_tombstones(log).await;
        assert!(tombstones.is_empty(), "tombstones at {tombstones:?}");
        out
    }

    /// Every batch of the partition, in order.
    async fn read_all(log: &ShardLog) -> Vec<Bytes> {
        let mut out = Vec::new();
        let (mut at, end) = log.offsets(S).expect("stream");
        while at < end {
            let r = log.read(S, at, 1 << 20, true).await.expect("read");
            for b in r.batches {
                let h = batch::parse(&b).expect("batch");
                at = batch::base_offset(&b).expect("offset") + i64::from(h.offset_count());
                out.push(b);
            }
        }
        out
    }

    /// [`records`], with tombstones apart: (keys with values, tombstones'
    /// offsets). Markers are skipped.
    async fn records_and_tombstones(
        log: &ShardLog,
    ) -> (std::collections::BTreeMap<String, Vec<i64>>, Vec<i64>) {
        let mut out = std::collections::BTreeMap::<String, Vec<i64>>::new();
        let mut tombstones = Vec::new();
        for b in read_all(log).await {
            if batch::parse(&b).expect("batch").is_control() {
                continue;
            }
            for rec in decode(&b) {
                let Some(v) = rec.value.as_deref() else {
                    tombstones.push(rec.offset);
                    continue;
                };
                let v = std::str::from_utf8(v).expect("utf-8");
                assert_eq!(v, rec.offset.to_string(), "a record keeps its offset");
                let k = String::from_utf8(rec.key.expect("keyed").to_vec()).expect("utf-8");
                out.entry(k).or_default().push(rec.offset);
            }
        }
        (out, tombstones)
    }

    /// A map smaller than the partition's keys cleans it in passes, each
    /// from the log start to where its map ended; the end is kept, so the
    /// shard opened again has nothing due, and a later clean maps only the
    /// new records yet leaves older keys' last records alone.
    #[tokio::test]
    async fn a_partition_cleans_in_passes_and_remembers_where_its_dirty_part_starts() {
        let (store, log) = with_stream().await;
        // 40 batches of 5 records over 30 keys.
        let key = |o: i64| format!("k{}", (o * 7) % 30);
        for b in 0..40 {
            let keys: Vec<String> = (b * 5..b * 5 + 5).map(key).collect();
            append_keys(&log, &keys).await;
        }
        wait_compacted(&log).await;
        let mut want = std::collections::BTreeMap::new();
        for o in 0..200 {
            want.insert(key(o), vec![o]);
        }

        let c = compacted();
        let mut passes = 0;
        let mut removed = 0;
        loop {
            let done = clean_due(&log, &c, now_ms(), 12).await;
            passes += 1;
            removed += done.removed;
            if !done.more {
                break;
            }
        }
        assert!(passes > 5, "a map of 12 keys takes passes: {passes}");
        assert_eq!(removed, 170);
        assert_eq!(records(&log).await, want, "each key's last record, only");
        assert_eq!(clean_end(&log, S), Some(200));
        drop(log);

        let log = open(&store).await;
        assert_eq!(clean_end(&log, S), Some(200), "the clean end is durable");
        let nothing = clean_partition(&log, S, &c, now_ms(), 12).await;
        assert_eq!(nothing.expect("clean"), None, "nothing is dirty");

        // Five keys again: their older records go; the other 25 keys are
        // not in the map and keep theirs.
        let again: Vec<String> = (0..5).map(key).collect();
        append_keys(&log, &again).await;
        let done = clean_due(&log, &c, now_ms(), 12).await;
        assert_eq!((done.removed, done.more), (5, false));
        for (i, k) in again.iter().enumerate() {
            want.insert(k.clone(), vec![200 + i as i64]);
        }
        assert_eq!(records(&log).await, want);
        assert_eq!(log.offsets(S).expect("stream"), (0, 205));
    }

    /// A tombstone's delete.retention.ms runs from the first clean that
    /// read it, whatever its (client's) timestamp: here from 1970.
    #[tokio::test]
    async fn a_tombstone_stays_its_retention_after_the_clean_that_first_read_it() {
        let (store, log, c) = with_a_tombstone().await;
        let t0 = now_ms();
        // Read first at t0: "a"'s record goes, its tombstone stays.
        assert_eq!(clean_due(&log, &c, t0, MAP_KEYS).await.removed, 1);
        let mut want = std::collections::BTreeMap::new();
        want.insert("b".to_string(), vec![1]);
        assert_eq!(records_and_tombstones(&log).await, (want.clone(), vec![2]));
        // 5 s on, with the partition dirty again: still there.
        append_keys(&log, &["c".into()]).await;
        assert_eq!(clean_due(&log, &c, t0 + 5_000, MAP_KEYS).await.removed, 0);
        want.insert("c".to_string(), vec![3]);
        assert_eq!(records_and_tombstones(&log).await, (want.clone(), vec![2]));
        // Past t0 + 10 s: gone, by a clean that kept its time, also across
        // a reopen.
        drop(log);
        let log = open(&store).await;
        append_keys(&log, &["d".into()]).await;
        let done = clean_due(&log, &c, t0 + 10_001, MAP_KEYS).await;
        assert_eq!(done.removed, 1, "the tombstone");
        want.insert("d".to_string(), vec![4]);
        assert_eq!(records_and_tombstones(&log).await, (want, vec![]));
    }

    /// A partition nobody writes to any more is cleaned again once the
    /// tombstones and commit markers its last clean kept may go (Kafka's
    /// KIP-534: when the newest of them may), and not before; the time is
    /// durable, and a partition cleaned by a build that kept no time is
    /// cleaned once.
    #[tokio::test]
    async fn a_quiet_partition_loses_its_tombstones_and_commit_markers_when_they_expire() {
        let (store, log, c) = with_a_tombstone().await;
        let t0 = now_ms();
        // "a" at 0 goes; its tombstone waits for t0 + 10 s.
        assert_eq!(clean_due(&log, &c, t0, MAP_KEYS).await.removed, 1);
        assert_eq!(clean_due_at(&log, S), Some(t0 + 10_000));
        // A transaction's "x", superseded: its marker waits for t0 + 15 s.
        append_txn(&log, 7, &["x"], true).await; // 3; marker 4
        append_keys(&log, &["x".into()]).await; // 5
        assert_eq!(clean_due(&log, &c, t0 + 5_000, MAP_KEYS).await.removed, 1);
        let mut want = std::collections::BTreeMap::new();
        want.insert("b".to_string(), vec![1]);
        want.insert("x".to_string(), vec![5]);
        assert_eq!(records_and_tombstones(&log).await, (want.clone(), vec![2]));
        assert_eq!(markers(&log).await, [4]);
        // One pass for both, when the newer may go.
        let not_yet = clean_partition(&log, S, &c, t0 + 14_999, MAP_KEYS).await;
        assert_eq!(not_yet.expect("clean"), None, "nothing dirty, not due");

        drop(log);
        let log = open(&store).await;
        let done = clean_partition(&log, S, &c, t0 + 15_000, MAP_KEYS)
            .await
            .expect("clean")
            .expect("due: the marker's retention has run");
        assert_eq!(done.removed, 1, "the tombstone");
        assert_eq!(records_and_tombstones(&log).await, (want, vec![]));
        assert_eq!(markers(&log).await, Vec::<i64>::new());
        assert_eq!(clean_due_at(&log, S), Some(NOTHING_WAITS));
        let again = clean_partition(&log, S, &c, t0 + 60_000, MAP_KEYS).await;
        assert_eq!(again.expect("clean"), None);

        // Cleaned by an older build: no time kept, so due once.
        let forget = Entry::Put {
            key: stream_key(CLEAN_DUE_PREFIX, S),
            value: None,
        };
        append(&log, vec![forget]).await.expect("append");
        let once = clean_partition(&log, S, &c, t0 + 60_000, MAP_KEYS).await;
        assert!(once.expect("clean").is_some(), "due once");
        let again = clean_partition(&log, S, &c, t0 + 60_000, MAP_KEYS).await;
        assert_eq!(again.expect("clean"), None);
    }

    #[test]
    fn what_waits_goes_a_retention_after_the_first_time_that_covers_it() {
        let r = 16_000;
        let times = [(10, 1_000), (20, 5_000)];
        assert_eq!(expiry_of(&times, 10, r), 17_000);
        assert_eq!(expiry_of(&times, 11, r), 21_000);
        assert_eq!(expiry_of(&times, 20, r), 21_000);
        // Not covered yet: when the next clean may note a time.
        assert_eq!(expiry_of(&times, 21, r), 6_000);
    }

    /// Appends a transaction's records of `keys` (values their offsets) by
    /// producer `pid`, then its marker.
    async fn append_txn(log: &ShardLog, pid: i64, keys: &[&str], commit: bool) {
        let mut rs = next_records(log, keys);
        for (i, r) in rs.iter_mut().enumerate() {
            r.transactional = true;
            r.producer_id = pid;
            r.producer_epoch = 0;
            r.sequence = i as i32;
        }
        let producer = |first_seq, txn| {
            Some(floe_storage::Producer {
                id: pid,
                epoch: 0,
                first_seq,
                time_ms: 1_000,
                txn,
            })
        };
        let data = Entry::Append {
            stream: S,
            base_offset: 0,
            offsets: keys.len() as u32,
            max_timestamp: 1_000,
            producer: producer(0, floe_storage::Txn::Data),
            data: encode(&rs, Compression::None),
        };
        let txn = if commit {
            floe_storage::Txn::Commit
        } else {
            floe_storage::Txn::Abort
        };
        let marker = Entry::Append {
            stream: S,
            base_offset: 0,
            offsets: 1,
            max_timestamp: 1_000,
            producer: producer(-1, txn),
            data: batch::control_batch(pid, 0, commit, 1_000),
        };
        append(log, vec![data, marker]).await.expect("append");
    }

    /// The partition's batches: (base offset, whether a control batch).
    async fn batches(log: &ShardLog) -> Vec<(i64, bool)> {
        let all = read_all(log).await;
        all.iter()
            .map(|b| {
                let h = batch::parse(b).expect("batch");
                (batch::base_offset(b).expect("offset"), h.is_control())
            })
            .collect()
    }

    /// The offsets of the partition's control batches (markers).
    async fn markers(log: &ShardLog) -> Vec<i64> {
        let all = batches(log).await;
        all.into_iter().filter(|b| b.1).map(|b| b.0).collect()
    }

    /// A commit marker goes once its transaction has no record left and a
    /// clean read it `delete.retention.ms` ago; one whose transaction still
    /// has records stays, as do abort markers (read_committed readers stop
    /// skipping their producer there).
    #[tokio::test]
    async fn a_commit_marker_goes_after_its_records_and_its_retention() {
        let (_store, log) = with_stream().await;
        append_txn(&log, 7, &["a", "b"], true).await; // 0, 1; marker 2
        append_txn(&log, 8, &["c"], false).await; // 3; marker 4
        append_txn(&log, 9, &["d"], true).await; // 5; marker 6
        append_keys(&log, &["a".into(), "b".into()]).await; // 7, 8
        let c = TopicConfig {
            delete_retention_ms: 10_000,
            ..compacted()
        };
        let t0 = now_ms();
        // Read first at t0: 7's records are superseded and 8's aborted;
        // every marker stays.
        assert_eq!(clean_due(&log, &c, t0, MAP_KEYS).await.removed, 3);
        assert_eq!(markers(&log).await, [2, 4, 6]);
        // Past t0 + 10 s, with the partition dirty again: 7's goes.
        append_keys(&log, &["e".into()]).await; // 9
        clean_due(&log, &c, t0 + 10_001, MAP_KEYS).await;
        assert_eq!(markers(&log).await, [4, 6]);
        let mut want = std::collections::BTreeMap::new();
        for (k, o) in [("d", 5), ("a", 7), ("b", 8), ("e", 9)] {
            want.insert(k.to_string(), vec![o]);
        }
        assert_eq!(records(&log).await, want);
        // "d" superseded too: 9's marker goes with its last record.
        append_keys(&log, &["d".into()]).await; // 10
        clean_due(&log, &c, t0 + 10_002, MAP_KEYS).await;
        assert_eq!(markers(&log).await, [4]);
    }

    #[test]
    fn clean_times_are_few_and_only_ever_late() {
        let r = 16_000;
        let mut times = Vec::new();
        // A clean every 100 ms for 40 s, each reading 10 more offsets.
        for i in 0..400 {
            note_clean(&mut times, 10 * (i + 1), 100 * i, r);
            assert!(times.len() <= CLEAN_TIMES as usize + 2, "{}", times.len());
        }
        assert!(times.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        // What expires at 40 s: read by 24 s at the latest, and no more
        // than retention / CLEAN_TIMES after.
        let below = tombstones_expire_below(&times, 40_000 - r);
        assert!(below <= 10 * 241, "{below}");
        assert!(below >= 10 * (241 - (r / CLEAN_TIMES) / 100), "{below}");
        assert_eq!(tombstones_expire_below(&[], 40_000), i64::MIN);
        assert_eq!(tombstones_expire_below(&[(5, 10)], 9), i64::MIN);
        assert_eq!(tombstones_expire_below(&[(5, 10), (9, 20)], 10), 5);
        // Nothing new read: nothing noted.
        let mut same = vec![(5, 10)];
        note_clean(&mut same, 5, 1_000_000, r);
        assert_eq!(same, [(5, 10)]);
    }

    #[test]
    fn a_filtered_batch_keeps_its_offsets_header_and_the_kept_records() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let rs = [
                record(10, Some("a"), Some("1")),
                record(11, Some("b"), Some("2")),
                record(12, Some("a"), None),
                record(13, None, Some("3")),
            ];
            let b = encode(&rs, compression);
            let before = batch::parse(&b).expect("valid");
            let mut seen = Vec::new();
            let end = scan(&b, &before, |o, k, t, _| {
                seen.push((o, k.map(<[u8]>::to_vec), t))
            })
            .expect("scans");
            assert_eq!(end, 14, "the offset after the batch");
            // The records' newest timestamp, whatever the header says.
            let unset = batch::set_max_timestamp(b.clone(), -1);
            let unset_h = batch::parse(&unset).expect("valid");
            assert_eq!(
                look(&unset, &unset_h),
                Ok(Look {
                    every_keyed: false,
                    newest: Some(1_013)
                }),
                "{compression:?}"
            );
            // ListOffsets by time: the first record at or after it, from
            // the log start on.
            assert_eq!(
                first_at_or_after(&b, &before, 1_012, 0),
                Ok(Some((12, 1_012)))
            );
            assert_eq!(first_at_or_after(&b, &before, 0, 0), Ok(Some((10, 1_010))));
            assert_eq!(first_at_or_after(&b, &before, 0, 11), Ok(Some((11, 1_011))));
            assert_eq!(first_at_or_after(&b, &before, 1_014, 0), Ok(None));
            let stamped = batch::set_log_append_time(b.clone(), 5_000);
            assert_eq!(
                first_at_or_after(&stamped, &batch::parse(&stamped).expect("valid"), 1_012, 0),
                Ok(Some((10, 5_000)))
            );
            assert_eq!(seen.len(), 4);
            assert_eq!(seen[2], (12, Some(b"a".to_vec()), true));
            assert_eq!(seen[3].1, None);

            // Drop offset 10 and 11; keep the tombstone and the keyless one.
            let (change, removed) = filter(&b, &before, |o, _, _, _| o >= 12).expect("filters");
            assert_eq!(removed, 2, "{compression:?}");
            let Change::Replace(out) = change else {
                panic!("{compression:?}: {change:?}")
            };
            let after = batch::parse(&out).expect("a valid batch, CRC included");
            assert_eq!(out[..8], b[..8], "base offset");
            assert_eq!(after.last_offset_delta, before.last_offset_delta);
            assert_eq!(after.base_timestamp, before.base_timestamp);
            assert_eq!(after.max_timestamp, before.max_timestamp);
            assert_eq!(after.attributes, before.attributes);
            assert_eq!(after.record_count, 2);
            let got = decode(&out);
            assert_eq!(got.len(), 2);
            assert_eq!((got[0].offset, got[0].value.clone()), (12, None));
            assert_eq!(got[1].offset, 13);
            assert_eq!(got[1].value.as_deref(), Some(&b"3"[..]));
            assert_eq!(got[1].timestamp, rs[3].timestamp);
            assert_eq!(got[1].headers, rs[3].headers);

            assert_eq!(
                filter(&b, &before, |_, _, _, _| true).expect("ok").0,
                Change::Keep
            );
            assert_eq!(
                filter(&b, &before, |_, _, _, _| false).expect("ok").0,
                Change::Drop
            );
        }
    }

    #[test]
    fn transactional_records_carry_their_producer_and_markers_stay_whole() {
        let mut r = record(0, Some("a"), Some("1"));
        r.transactional = true;
        r.producer_id = 7;
        r.producer_epoch = 0;
        let b = encode(&[r], Compression::None);
        let mut seen = Vec::new();
        let h = batch::parse(&b).expect("valid");
        scan(&b, &h, |_, k, _, txn| {
            seen.push((k.map(<[u8]>::to_vec), txn))
        })
        .expect("scans");
        assert_eq!(seen, [(Some(b"a".to_vec()), Some(7))]);
        let (change, removed) = filter(&b, &h, |_, _, _, txn| txn != Some(7)).expect("ok");
        assert_eq!(
            (change, removed),
            (Change::Drop, 1),
            "an aborted record goes"
        );
        let marker = batch::control_batch(7, 0, true, 5);
        let mh = batch::parse(&marker).expect("valid");
        assert_eq!(
            filter(&marker, &mh, |_, _, _, _| false).expect("ok"),
            (Change::Keep, 0)
        );
    }

    /// `rs` encoded as one batch whose header then says `last_delta` and
    /// `count` instead.
    fn miscounted(rs: &[Record], last_delta: i32, count: i32) -> (Bytes, BatchHeader) {
        let mut b = BytesMut::from(encode(rs, Compression::Lz4));
        b[23..27].copy_from_slice(&last_delta.to_be_bytes());
        b[57..61].copy_from_slice(&count.to_be_bytes());
        batch::seal(&mut b);
        let b = b.freeze();
        let h = batch::parse(&b).expect("a valid header");
        (b, h)
    }

    /// A batch must hold its count of records, each at one of its offsets:
    /// the cleaner's map bound counts a batch by its header.
    #[test]
    fn a_batch_holding_other_than_its_count_of_records_is_refused() {
        let rs: Vec<Record> = (0..3).map(|o| record(o, Some("k"), Some("v"))).collect();
        let cases = [
            (miscounted(&rs, 1, 2), "more records than the count of 2"),
            (miscounted(&rs[..2], 2, 3), "2 records for a count of 3"),
            (
                miscounted(&[rs[0].clone(), record(5, Some("k"), None)], 1, 2),
                "offset delta 5, outside its batch",
            ),
        ];
        for ((b, h), why) in cases {
            let mut seen = 0;
            let scanned = scan(&b, &h, |_, _, _, _| seen += 1);
            assert!(scanned.is_err_and(|e| e.contains(why)), "{why}");
            assert!(seen <= h.record_count, "{why}: the map saw {seen}");
            assert!(look(&b, &h).is_err_and(|e| e.contains(why)), "{why}");
            assert!(filter(&b, &h, |_, _, _, _| false).is_err(), "{why}");
        }
        // Whole, the same records pass.
        let b = encode(&rs, Compression::Lz4);
        let h = batch::parse(&b).expect("valid");
        assert_eq!(scan(&b, &h, |_, _, _, _| {}), Ok(3));
        // A cleaned batch holds fewer records than offsets, and says so.
        let (change, _) = filter(&b, &h, |o, _, _, _| o == 1).expect("filters");
        let Change::Replace(cleaned) = change else {
            panic!("{change:?}")
        };
        let ch = batch::parse(&cleaned).expect("valid");
        assert_eq!((ch.record_count, ch.offset_count()), (1, 3));
        assert_eq!(scan(&cleaned, &ch, |_, _, _, _| {}), Ok(3));
    }

    /// A batch in the log whose records do not read (here one past its
    /// count) is kept whole and supersedes nothing, and the partition is
    /// cleaned around it: in one pass, and in passes of a map of 2 keys
    /// that fills at the batch.
    #[tokio::test]
    async fn a_batch_whose_records_do_not_read_stays_whole_and_the_rest_is_cleaned() {
        for max_keys in [MAP_KEYS, 2] {
            let (_store, log) = with_stream().await;
            append_keys(&log, &["a".into(), "b".into()]).await; // 0, 1
            let rs = [
                record(2, Some("a"), Some("2")),
                record(3, Some("c"), Some("3")),
                record(4, Some("d"), Some("4")),
            ];
            let (bad, _) = miscounted(&rs, 1, 2); // 2, 3
            let entry = Entry::Append {
                stream: S,
                base_offset: 0,
                offsets: 2,
                max_timestamp: 1_000,
                producer: None,
                data: bad,
            };
            append(&log, vec![entry]).await.expect("append");
            append_keys(&log, &["b".into()]).await; // 4
            let (mut passes, mut removed) = (0, 0);
            loop {
                let done = clean_due(&log, &compacted(), now_ms(), max_keys).await;
                passes += 1;
                removed += done.removed;
                assert!(
                    passes < 5,
                    "{max_keys} keys: still more after {passes} passes"
                );
                if !done.more {
                    break;
                }
            }
            assert_eq!(removed, 1, "{max_keys} keys: b@1 only");
            assert_eq!(
                batches(&log).await,
                [(0, false), (2, false), (4, false)],
                "{max_keys} keys"
            );
            assert_eq!(clean_end(&log, S), Some(5), "{max_keys} keys");
        }
    }

    #[test]
    fn a_truncated_record_is_an_error_not_a_panic() {
        let b = encode(&[record(0, Some("key"), Some("value"))], Compression::None);
        let h = batch::parse(&b).expect("valid");
        let records = payload(&b, &h).expect("plain");
        for cut in 0..records.len() {
            let r: Result<Vec<_>, _> = Records::new(&records[..cut]).collect();
            assert!(r.is_err() || cut == 0, "cut at {cut}");
        }
    }
}
