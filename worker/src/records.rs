//! Records of stored batches, decoded (any codec): what the HTTP API
//! serves and what transforms are fed; and records encoded as a batch, as
//! the HTTP API and transforms write them.

use bytes::{Bytes, BytesMut};
use floe_common::batch;
use floe_storage::Read;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

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
        // A client's batch may decompress to far more than it is: bounded.
        let bounded = |body: &mut Bytes, c: Compression| {
            let codec = match c {
                Compression::None => 0,
                Compression::Gzip => 1,
                Compression::Snappy => 2,
                Compression::Lz4 => 3,
                Compression::Zstd => 4,
            };
            crate::inflate::decompress(codec, body, crate::inflate::MAX_INFLATED)
                .map_err(anyhow::Error::msg)
        };
        let set = RecordBatchDecoder::decode_with_custom_compression(&mut buf, Some(bounded))
            .map_err(|e| {
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
        // Under LogAppendTime every record's time is the batch's max
        // timestamp, as Kafka's clients read it (the decoder gives the
        // producer's).
        let appended = batch::parse(b)
            .ok()
            .filter(|h| h.attributes & batch::LOG_APPEND_TIME != 0)
            .map(|h| h.max_timestamp);
        records.extend(
            set.records
                .into_iter()
                .filter(|r| !r.control && r.offset >= from && !aborted(r))
                .map(|mut r| {
                    if let Some(t) = appended {
                        r.timestamp = t;
                        r.timestamp_type = TimestampType::LogAppend;
                    }
                    r
                }),
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

/// One record to write: what a batch encodes.
#[derive(Default)]
pub struct Out {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp: i64,
}

impl Out {
    /// At most the bytes it takes in a batch: its data and the most its
    /// varint lengths, deltas and attributes can take.
    pub fn size(&self) -> usize {
        let len = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + len(v) + 10)
            .sum();
        len(&self.key) + len(&self.value) + headers + 36
    }
}

/// Records as one uncompressed Kafka batch (magic 2), offsets from 0; the
/// log assigns the real base offset.
pub fn encode_batch(records: Vec<Out>) -> Result<Bytes, String> {
    let n = records.len();
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, o)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch wherever offset - sequence
            // changes; this keeps it constant and the base sequence -1
            // (no producer), so all records share one batch.
            sequence: i as i32 - 1,
            timestamp: o.timestamp,
            key: o.key,
            value: o.value,
            headers: o
                .headers
                .into_iter()
                .map(|(k, v)| (StrBytes::from_string(k), v))
                .collect(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, records.iter(), &opts).map_err(|e| e.to_string())?;
    let data = buf.freeze();
    let batches = batch::split(data.clone()).map_err(|e| e.to_string())?;
    match batches.as_slice() {
        [(h, _)] if h.offset_count() as usize == n => Ok(data),
        _ => Err(format!("{n} records did not encode as one batch")),
    }
}

/// Kafka's default partitioner for a keyed record (murmur2, positive).
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    let h = murmur2::murmur2(key, 0x9747_b28c) & 0x7fff_ffff;
    (h % partitions.max(1) as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_go_where_kafkas_default_partitioner_puts_them() {
        // Kafka's UtilsTest: murmur2 of these strings, as Java ints.
        for (key, java) in [("21", -973_932_308i32), ("foobar", -790_332_482)] {
            assert_eq!(
                murmur2::murmur2(key.as_bytes(), 0x9747_b28c) as i32,
                java,
                "{key}"
            );
        }
        assert_eq!(
            partition_for_key(b"21", 7),
            ((-973_932_308i32 as u32 & 0x7fff_ffff) % 7) as i32
        );
    }
    use floe_common::batch;

    fn out(v: &str) -> Out {
        Out {
            key: None,
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: vec![("h".into(), None)],
            timestamp: 1_000,
        }
    }

    #[test]
    fn a_batch_spans_one_offset_per_record() {
        let data = encode_batch(vec![out("a"), out("b"), out("c")]).expect("encodes");
        let h = batch::parse(&data).expect("parses");
        assert_eq!(h.offset_count(), 3);
        let mut buf = data.clone();
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).expect("decodes");
        let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![0, 1, 2]);
    }
}
