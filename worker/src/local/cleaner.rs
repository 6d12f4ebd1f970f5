//! Kafka's log compaction (`cleanup.policy=compact`): every partition keeps
//! at least the last record of each key. A shard's cleaner, every
//! `clean_every`, takes each compacted partition whose dirty part (written
//! since its last clean) is at least `min.cleanable.dirty.ratio` of it, or
//! whose oldest dirty record is `max.compaction.lag.ms` old:
//! 1. reads its batches from the log start to the cleanable end (the last
//!    stable offset, and no batch younger than `min.compaction.lag.ms`),
//!    noting each key's last offset;
//! 2. rewrites every batch holding a record some later record of its key
//!    supersedes, or a tombstone older than `delete.retention.ms`, without
//!    those records; a batch left empty is dropped.
//!
//! A rewritten batch keeps its header (base offset, last offset delta,
//! timestamps, producer fields) and the bytes of the records it keeps, so
//! its offsets and its index entry's span do not change; only its record
//! count, length and CRC do, and its payload is compressed again with the
//! batch's codec. Readers see gaps in offsets, as Kafka's cleaner leaves
//! them. Storage applies the rewrite as a log entry (`ShardLog::rewrite`).
//!
//! Below the last stable offset every transaction has ended: records of
//! committed ones count as any others, records of aborted ones are removed
//! (as Kafka's cleaner removes them); markers stay.
//!
//! Left as they are: records without a key (a compacted topic refuses new
//! ones, older ones stay); batches compaction has not moved yet (they stay
//! dirty for a later pass); the stream's last batch, however empty
//! (storage keeps it, so no reader is left in a gap below the high
//! watermark).
//!
//! The key map holds every distinct key of a partition's clean range in
//! memory, once per pass; Kafka bounds its map and cleans in several passes.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use floe_common::batch::{self, BatchHeader, HEADER_LEN, LOG_OVERHEAD};
use floe_storage::log::now_ms;
use floe_storage::{Change, ShardLog, StreamId};

use super::Shard;
use crate::catalog::{TopicConfig, TopicMeta};
use crate::inflate;

/// Bytes of batches one rewrite call takes: one data object at most.
const CHUNK: u64 = 8 << 20;

/// Runs the cleaner of `shard` every `every` for as long as it is open.
pub(crate) async fn clean(shard: Weak<Shard>, every: Duration) {
    // Per partition: where its dirty part starts (its clean end last time).
    let mut cleaned: HashMap<StreamId, i64> = HashMap::new();
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
                match clean_partition(&shard.log, stream, &c, now_ms(), &mut cleaned).await {
                    Ok(Some(done)) => tracing::debug!(
                        topic = %t.name,
                        stream = s,
                        removed = done.removed,
                        batches_dropped = done.dropped,
                        batches_rewritten = done.replaced,
                        "cleaned"
                    ),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(topic = %t.name, error = %e, "cleaning failed"),
                }
            }
        }
        cleaned.retain(|s, _| shard.log.offsets(*s).is_ok());
    }
}

/// What one partition's clean did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cleaned {
    pub removed: u64,
    pub replaced: usize,
    pub dropped: usize,
}

/// Cleans one partition if it is due (see the module's notes); `cleaned`
/// keeps each partition's clean end between calls.
pub(crate) async fn clean_partition(
    log: &ShardLog,
    stream: StreamId,
    c: &TopicConfig,
    now: i64,
    cleaned: &mut HashMap<StreamId, i64>,
) -> Result<Option<Cleaned>, floe_storage::Error> {
    let (log_start, _) = log.offsets(stream)?;
    let end = log
        .first_younger(stream, now.saturating_sub(c.min_compaction_lag_ms))
        .min(log.last_stable(stream)?);
    let dirty_from = cleaned
        .get(&stream)
        .copied()
        .unwrap_or(log_start)
        .max(log_start);
    if dirty_from >= end {
        return Ok(None);
    }
    let dirty = log.bytes_between(stream, dirty_from, end);
    let total = log.bytes_between(stream, log_start, end);
    let overdue = log
        .timestamp_at(stream, dirty_from)
        .is_some_and(|t| t < now.saturating_sub(c.max_compaction_lag_ms));
    if dirty == 0 || ((dirty as f64) < c.min_cleanable_dirty_ratio * total as f64 && !overdue) {
        return Ok(None);
    }

    // 1. Each key's last offset. Below the last stable offset every
    // transaction has ended: a committed record counts as any other, an
    // aborted one is removed and supersedes nothing (as Kafka's cleaner).
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
    let mut last: HashMap<Bytes, i64> = HashMap::new();
    let mut bad = None;
    let mut at = log_start;
    while at < end {
        let r = log
            .rewrite(stream, at, end, CHUNK, |b| {
                if let Err(e) = scan(b, |offset, key, _, txn| {
                    if let Some(k) = key.filter(|_| !is_aborted(txn, offset)) {
                        last.insert(k, offset);
                    }
                }) {
                    bad = Some(e);
                }
                Change::Keep
            })
            .await?;
        if r.batches_read == 0 {
            break;
        }
        at = r.next;
    }
    if let Some(e) = bad {
        // A batch the cleaner cannot read: leave the partition as it is.
        return Err(floe_storage::Error::Unavailable(format!(
            "a batch does not decode: {e}"
        )));
    }

    // 2. Rewrite what is superseded.
    let tombstones_before = now.saturating_sub(c.delete_retention_ms);
    let mut done = Cleaned::default();
    let mut at = log_start;
    while at < end {
        let r = log
            .rewrite(stream, at, end, CHUNK, |b| {
                let keep = |offset: i64, key: Option<&Bytes>, tombstone: bool, ts: i64, txn| {
                    if is_aborted(txn, offset) {
                        return false;
                    }
                    match key {
                        None => true,
                        Some(k) => {
                            let expired = tombstone && ts < tombstones_before;
                            last.get(k) == Some(&offset) && !expired
                        }
                    }
                };
                match filter(b, keep) {
                    // (Storage never drops a stream's last batch.)
                    Ok((change, removed)) => {
                        done.removed += removed;
                        change
                    }
                    Err(_) => Change::Keep,
                }
            })
            .await?;
        if r.batches_read == 0 {
            break;
        }
        done.replaced += r.replaced;
        done.dropped += r.dropped;
        at = r.next;
    }
    // Batches compaction has not taken yet stay dirty, for a later pass.
    cleaned.insert(stream, at);
    Ok(Some(done))
}

/// Whether every record of a batch (any codec, transactional or not) has a
/// key, as a compacted topic requires; control batches have theirs.
pub(crate) fn every_record_has_a_key(b: &Bytes) -> Result<bool, String> {
    let h = batch::parse(b).map_err(|e| e.to_string())?;
    if h.is_control() {
        return Ok(true);
    }
    let records = payload(b, &h)?;
    for r in Records::new(&records) {
        if r?.key.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Calls `f(offset, key, is_tombstone, transaction's producer)` for each
/// record of a data batch (any codec); control batches are skipped.
pub(crate) fn scan(
    b: &Bytes,
    mut f: impl FnMut(i64, Option<Bytes>, bool, Option<i64>),
) -> Result<(), String> {
    let h = batch::parse(b).map_err(|e| e.to_string())?;
    if h.is_control() {
        return Ok(());
    }
    let base = batch::base_offset(b).unwrap_or(0);
    let records = payload(b, &h)?;
    for r in Records::new(&records) {
        let r = r?;
        let key = r.key.map(|k| records.slice(k));
        f(base + r.offset_delta, key, r.tombstone, txn(&h));
    }
    Ok(())
}

/// The producer of a transactional batch.
fn txn(h: &BatchHeader) -> Option<i64> {
    h.is_transactional().then_some(h.producer_id)
}

/// What cleaning does with one batch: `keep(offset, key, is_tombstone,
/// batch max timestamp, transaction's producer)` says which records stay;
/// the change, and how many records it removes. Control batches (markers)
/// are kept whole.
pub(crate) fn filter(
    b: &Bytes,
    keep: impl Fn(i64, Option<&Bytes>, bool, i64, Option<i64>) -> bool,
) -> Result<(Change, u64), String> {
    let h = batch::parse(b).map_err(|e| e.to_string())?;
    if h.is_control() {
        return Ok((Change::Keep, 0));
    }
    let base = batch::base_offset(b).unwrap_or(0);
    let records = payload(b, &h)?;
    let mut kept = Vec::new();
    let mut count = 0u64;
    for r in Records::new(&records) {
        let r = r?;
        count += 1;
        let key = r.key.map(|k| records.slice(k));
        if keep(
            base + r.offset_delta,
            key.as_ref(),
            r.tombstone,
            h.max_timestamp,
            txn(&h),
        ) {
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
    offset_delta: i64,
    key: Option<std::ops::Range<usize>>,
    tombstone: bool,
}

/// The records of a (decompressed) records section, in order.
struct Records<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Records<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, at: 0 }
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
        self.varint()?; // timestamp delta
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
        if self.at >= self.b.len() {
            return None;
        }
        let r = self.next_record();
        if r.is_err() {
            // Stop after the first error.
            self.at = self.b.len();
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
            scan(&b, |o, k, t, _| seen.push((o, k, t))).expect("scans");
            assert_eq!(seen.len(), 4);
            assert_eq!(seen[2], (12, Some(Bytes::from_static(b"a")), true));
            assert_eq!(seen[3].1, None);

            // Drop offset 10 and 11; keep the tombstone and the keyless one.
            let (change, removed) = filter(&b, |o, _, _, _, _| o >= 12).expect("filters");
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
                filter(&b, |_, _, _, _, _| true).expect("ok").0,
                Change::Keep
            );
            assert_eq!(
                filter(&b, |_, _, _, _, _| false).expect("ok").0,
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
        scan(&b, |_, k, _, txn| seen.push((k, txn))).expect("scans");
        assert_eq!(seen, [(Some(Bytes::from_static(b"a")), Some(7))]);
        let (change, removed) = filter(&b, |_, _, _, _, txn| txn != Some(7)).expect("ok");
        assert_eq!(
            (change, removed),
            (Change::Drop, 1),
            "an aborted record goes"
        );
        let marker = batch::control_batch(7, 0, true, 5);
        assert_eq!(
            filter(&marker, |_, _, _, _, _| false).expect("ok"),
            (Change::Keep, 0)
        );
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
