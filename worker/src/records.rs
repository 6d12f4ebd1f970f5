//! Records of stored batches, decoded (any codec): what the HTTP API
//! serves and what transforms are fed.

use floe_common::batch;
use floe_storage::Read;
use kafka_protocol::records::{Record, RecordBatchDecoder};

/// A read, decoded.
pub struct Decoded {
    /// Its records from the offset asked for on: control records and those
    /// of aborted transactions left out.
    pub records: Vec<Record>,
    /// Where the next read starts: past every batch read, control markers
    /// and aborted data included (the offset asked for, if none).
    pub next: i64,
}

/// Decodes a read from `from` (batches of any codec).
pub fn decode(read: &Read, from: i64) -> Result<Decoded, String> {
    let mut records = Vec::new();
    for b in &read.batches {
        let mut buf = b.clone();
        let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| {
            let base = batch::base_offset(b).unwrap_or(-1);
            format!("the batch at offset {base} does not decode: {e}")
        })?;
        let aborted = |r: &Record| {
            r.transactional
                && read.aborted.iter().any(|a| {
                    a.producer_id == r.producer_id
                        && (a.first_offset..=a.last_offset).contains(&r.offset)
                })
        };
        records.extend(
            set.records
                .into_iter()
                .filter(|r| !r.control && r.offset >= from && !aborted(r)),
        );
    }
    let end = read.batches.last().and_then(|b| {
        let header = batch::parse(b).ok()?;
        Some(batch::base_offset(b)? + i64::from(header.offset_count()))
    });
    Ok(Decoded {
        records,
        next: end.map_or(from, |e| e.min(read.high_watermark).max(from)),
    })
}
