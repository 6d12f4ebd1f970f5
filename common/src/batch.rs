//! A view of a Kafka record batch (magic 2) header.
//!
//! Layout (big-endian): baseOffset i64 @0, batchLength i32 @8,
//! partitionLeaderEpoch i32 @12, magic i8 @16, crc u32 @17 (CRC-32C of bytes
//! 21..end), attributes i16 @21, lastOffsetDelta i32 @23, baseTimestamp i64 @27,
//! maxTimestamp i64 @35, producerId i64 @43, producerEpoch i16 @51,
//! baseSequence i32 @53, recordCount i32 @57, records @61.
//! The owner rewrites baseOffset and partitionLeaderEpoch, which the CRC does
//! not cover, so a batch is stored exactly as the client sent it otherwise;
//! under `message.timestamp.type=LogAppendTime` it also stamps attributes and
//! maxTimestamp and computes the CRC again (`set_log_append_time`).

use bytes::{Bytes, BytesMut};

pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength` counts: baseOffset and batchLength themselves.
pub const LOG_OVERHEAD: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("record set is empty")]
    Empty,
    #[error("record batch truncated")]
    Truncated,
    #[error("unsupported record batch magic {0}")]
    Magic(i8),
    #[error("record batch crc mismatch")]
    Crc,
    #[error("record batch header inconsistent: {0}")]
    Invalid(&'static str),
}

/// Header fields of one validated batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchHeader {
    pub len: usize,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Offsets the batch occupies in its partition.
    pub fn offset_count(&self) -> u32 {
        self.last_offset_delta as u32 + 1
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

/// The base offset a stored batch carries (its first 8 bytes).
pub fn base_offset(b: &[u8]) -> Option<i64> {
    (b.len() >= 8).then(|| i64_at(b, 0))
}

/// What a stored batch's framing says, read without checking its CRC: the
/// fields a log needs to find batches laid back to back (see [`frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub base_offset: i64,
    /// Bytes of the whole batch, `batchLength` plus [`LOG_OVERHEAD`].
    pub len: usize,
    /// Offsets the batch spans: `lastOffsetDelta + 1`.
    pub offsets: u32,
    pub max_timestamp: i64,
}

impl Frame {
    pub fn end_offset(&self) -> i64 {
        self.base_offset + i64::from(self.offsets)
    }
}

/// The framing of the magic-2 batch at the start of `b`, if it has a whole
/// header, a length within `b` and a non-negative `lastOffsetDelta`. Cheap:
/// no CRC, for bytes that were checked when they were produced.
pub fn frame(b: &[u8]) -> Option<Frame> {
    if b.len() < HEADER_LEN || b[16] != 2 {
        return None;
    }
    let len = usize::try_from(i32_at(b, 8)).ok()? + LOG_OVERHEAD;
    let last_delta = i32_at(b, 23);
    if len < HEADER_LEN || len > b.len() || last_delta < 0 {
        return None;
    }
    Some(Frame {
        base_offset: i64_at(b, 0),
        len,
        offsets: last_delta as u32 + 1,
        max_timestamp: i64_at(b, 35),
    })
}

/// [`frame`] of `b` when `b` is exactly one batch.
pub fn frame_whole(b: &[u8]) -> Option<Frame> {
    frame(b).filter(|f| f.len == b.len())
}

/// Parses and checks the batch at the start of `b` (magic, length, CRC-32C).
pub fn parse(b: &[u8]) -> Result<BatchHeader, BatchError> {
    if b.len() < HEADER_LEN {
        return Err(BatchError::Truncated);
    }
    let batch_len = i32_at(b, 8);
    if batch_len < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(BatchError::Invalid("batchLength below header size"));
    }
    let len = batch_len as usize + LOG_OVERHEAD;
    if b.len() < len {
        return Err(BatchError::Truncated);
    }
    let magic = b[16] as i8;
    if magic != 2 {
        return Err(BatchError::Magic(magic));
    }
    let crc = u32::from_be_bytes([b[17], b[18], b[19], b[20]]);
    if crc32c::crc32c(&b[21..len]) != crc {
        return Err(BatchError::Crc);
    }
    let header = BatchHeader {
        len,
        attributes: i16::from_be_bytes([b[21], b[22]]),
        last_offset_delta: i32_at(b, 23),
        base_timestamp: i64_at(b, 27),
        max_timestamp: i64_at(b, 35),
        producer_id: i64_at(b, 43),
        producer_epoch: i16::from_be_bytes([b[51], b[52]]),
        base_sequence: i32_at(b, 53),
        record_count: i32_at(b, 57),
    };
    if header.last_offset_delta < 0 || header.record_count < 0 {
        return Err(BatchError::Invalid(
            "negative lastOffsetDelta or recordCount",
        ));
    }
    if header.record_count > header.last_offset_delta + 1 {
        return Err(BatchError::Invalid(
            "recordCount exceeds lastOffsetDelta + 1",
        ));
    }
    Ok(header)
}

/// Splits a produce record set into validated batches, zero-copy.
pub fn split(mut records: Bytes) -> Result<Vec<(BatchHeader, Bytes)>, BatchError> {
    if records.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut out = Vec::with_capacity(1);
    while !records.is_empty() {
        let header = parse(&records)?;
        out.push((header, records.split_to(header.len)));
    }
    Ok(out)
}

/// Sets partitionLeaderEpoch, which the CRC does not cover. (baseOffset,
/// the other such field, is written by the log as it assigns offsets.)
pub fn set_leader_epoch(batch: Bytes, leader_epoch: i32) -> Bytes {
    let mut b = BytesMut::from(batch);
    b[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    b.freeze()
}

/// Stamps a batch as `message.timestamp.type=LogAppendTime` does in Kafka:
/// the timestamp-type attribute (bit 3) set and maxTimestamp the append
/// time, which readers take as every record's timestamp; the CRC, which
/// covers both, is computed again.
pub fn set_log_append_time(batch: Bytes, time_ms: i64) -> Bytes {
    let mut b = BytesMut::from(batch);
    let attributes = i16::from_be_bytes([b[21], b[22]]) | LOG_APPEND_TIME;
    b[21..23].copy_from_slice(&attributes.to_be_bytes());
    b[35..43].copy_from_slice(&time_ms.to_be_bytes());
    seal(&mut b);
    b.freeze()
}

/// Makes a batch CreateTime (the timestamp-type attribute cleared) with
/// maxTimestamp `time_ms`, and computes its CRC again.
pub fn set_max_timestamp(batch: Bytes, time_ms: i64) -> Bytes {
    let mut b = BytesMut::from(batch);
    let attributes = i16::from_be_bytes([b[21], b[22]]) & !LOG_APPEND_TIME;
    b[21..23].copy_from_slice(&attributes.to_be_bytes());
    b[35..43].copy_from_slice(&time_ms.to_be_bytes());
    seal(&mut b);
    b.freeze()
}

/// Writes the CRC-32C of a batch whose fields after the CRC changed.
pub fn seal(b: &mut [u8]) {
    let end = (LOG_OVERHEAD + i32_at(b, 8).max(0) as usize).min(b.len());
    let crc = crc32c::crc32c(&b[21..end]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// The attribute bit of a batch whose timestamps are the broker's.
pub const LOG_APPEND_TIME: i16 = 0x08;

/// A transaction marker: a control batch (transactional and control
/// attributes) of one record whose key is `(version 0, type)` — 0 abort,
/// 1 commit — and whose value is `(version 0, coordinator epoch)`, as
/// Kafka's coordinator writes them. baseOffset is left for the log.
pub fn control_batch(producer_id: i64, epoch: i16, commit: bool, timestamp: i64) -> Bytes {
    // length 16, attributes, timestampDelta 0, offsetDelta 0, key length 4,
    // key, value length 6, value, no headers; varints zigzag-encoded.
    let mut record = vec![32u8, 0, 0, 0, 8, 0, 0, 0, commit as u8, 12];
    record.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    record.push(0);
    let mut b = BytesMut::with_capacity(HEADER_LEN + record.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((HEADER_LEN + record.len() - LOG_OVERHEAD) as i32).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&[2, 0, 0, 0, 0]);
    b.extend_from_slice(&0x30i16.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&timestamp.to_be_bytes());
    b.extend_from_slice(&timestamp.to_be_bytes());
    b.extend_from_slice(&producer_id.to_be_bytes());
    b.extend_from_slice(&epoch.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&1i32.to_be_bytes());
    b.extend_from_slice(&record);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid batch with `count` empty-valued records.
    pub fn sample(count: i32, ts: i64) -> Vec<u8> {
        let mut records = Vec::new();
        for i in 0..count {
            // length, attributes, tsDelta, offsetDelta, keyLen=-1, valueLen=0, headers=0 (varints)
            let body = [0u8, 0, (i as u8) << 1, 1, 0, 0];
            records.push((body.len() as u8) << 1);
            records.extend_from_slice(&body);
        }
        let mut b = vec![0u8; HEADER_LEN];
        b.extend_from_slice(&records);
        let len = b.len();
        b[8..12].copy_from_slice(&((len - LOG_OVERHEAD) as i32).to_be_bytes());
        b[16] = 2;
        b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        b[27..35].copy_from_slice(&ts.to_be_bytes());
        b[35..43].copy_from_slice(&ts.to_be_bytes());
        b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        b[57..61].copy_from_slice(&count.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn parses_and_rejects() {
        let b = sample(3, 1000);
        let h = parse(&b).expect("valid");
        assert_eq!(
            (h.record_count, h.offset_count(), h.max_timestamp),
            (3, 3, 1000)
        );
        let mut bad = b.clone();
        *bad.last_mut().expect("nonempty") ^= 1;
        assert_eq!(parse(&bad), Err(BatchError::Crc));
        assert_eq!(parse(&b[..b.len() - 1]), Err(BatchError::Truncated));
        let mut m = b.clone();
        m[16] = 1;
        assert_eq!(parse(&m), Err(BatchError::Magic(1)));
        assert_eq!(split(Bytes::new()).map(|v| v.len()), Err(BatchError::Empty));
    }

    #[test]
    fn frames_read_without_the_crc() {
        let mut b = sample(3, 1000);
        b[..8].copy_from_slice(&40i64.to_be_bytes());
        let f = frame(&b).expect("framed");
        assert_eq!((f.base_offset, f.len, f.offsets), (40, b.len(), 3));
        assert_eq!((f.end_offset(), f.max_timestamp), (43, 1000));
        *b.last_mut().expect("nonempty") ^= 1;
        assert!(frame(&b).is_some(), "the CRC is not checked");
        assert_eq!(frame(&b[..b.len() - 1]), None, "cut short");
        let mut two = b.clone();
        two.extend_from_slice(&b);
        assert_eq!(frame(&two).map(|f| f.len), Some(b.len()));
        assert_eq!(frame_whole(&two), None, "more than one batch");
        assert_eq!(frame_whole(&b), frame(&b));
        b[16] = 1;
        assert_eq!(frame(&b), None, "not magic 2");
    }

    #[test]
    fn log_append_time_stamps_the_header_and_keeps_the_crc_valid() {
        let b = Bytes::from(sample(3, 1_000));
        let before = parse(&b).expect("valid");
        let stamped = set_log_append_time(b.clone(), 5_000);
        let h = parse(&stamped).expect("the CRC still holds");
        assert_eq!(h.attributes, before.attributes | LOG_APPEND_TIME);
        assert_eq!((h.base_timestamp, h.max_timestamp), (1_000, 5_000));
        assert_eq!(stamped[61..], b[61..], "the records are untouched");
        // And back to CreateTime, as on a CreateTime topic.
        let h = parse(&set_max_timestamp(stamped, 1_002)).expect("the CRC still holds");
        assert_eq!(h.attributes, before.attributes);
        assert_eq!(h.max_timestamp, 1_002);
    }

    #[test]
    fn leader_epoch_keeps_crc_valid() {
        let two: Vec<u8> = [sample(2, 5), sample(1, 6)].concat();
        let batches = split(Bytes::from(two)).expect("valid");
        assert_eq!(batches.len(), 2);
        let stored = set_leader_epoch(batches[1].1.clone(), 7);
        assert_eq!(
            i32::from_be_bytes(stored[12..16].try_into().expect("4 bytes")),
            7
        );
        assert!(parse(&stored).is_ok());
    }

    #[test]
    fn control_batches_parse_as_markers() {
        for commit in [false, true] {
            let b = control_batch(42, 3, commit, 1000);
            let h = parse(&b).expect("valid");
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (42, 3, -1)
            );
            assert_eq!((h.record_count, h.offset_count(), h.len), (1, 1, b.len()));
            // The record's key: version 0, type 1 (commit) or 0 (abort).
            assert_eq!(&b[HEADER_LEN + 5..HEADER_LEN + 9], &[0, 0, 0, commit as u8]);
        }
    }
}
