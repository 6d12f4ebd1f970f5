//! Record batches for tests that talk raw protocol.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// One uncompressed batch of `n` records with `value_len`-byte values.
pub fn batch(n: usize, value_len: usize) -> Bytes {
    batch_at(n, value_len, 1_700_000_000_000)
}

/// [`batch_at`] with record timestamps from `ts` (ms) on.
pub fn batch_at(n: usize, value_len: usize, ts: i64) -> Bytes {
    encode(n, value_len, ts, (-1, -1, 0))
}

/// An idempotent producer's batch: `n` records from sequence `seq` on.
pub fn idempotent_batch(n: usize, producer_id: i64, epoch: i16, seq: i32) -> Bytes {
    encode(n, 10, 1_700_000_000_000, (producer_id, epoch, seq))
}

/// A transactional producer's batch: `n` records from sequence `seq` on.
pub fn transactional_batch(n: usize, producer_id: i64, epoch: i16, seq: i32) -> Bytes {
    encode_with(n, 10, 1_700_000_000_000, (producer_id, epoch, seq), true)
}

/// [`batch`] with the LogAppendTime attribute (bit 3, @22) set, as no
/// client should send; its CRC written again.
pub fn log_append_time_batch(n: usize, value_len: usize) -> Bytes {
    let mut b = BytesMut::from(batch(n, value_len));
    b[22] |= 0x08;
    reseal(b)
}

/// [`batch`] of `n` records whose header says it holds `count` (last offset
/// delta @23, record count @57), as no client should send; its CRC written
/// again.
pub fn miscounted_batch(n: usize, value_len: usize, count: i32) -> Bytes {
    let mut b = BytesMut::from(batch(n, value_len));
    b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    b[57..61].copy_from_slice(&count.to_be_bytes());
    reseal(b)
}

/// A changed batch with its CRC (@17, over @21 on) written again.
fn reseal(mut b: BytesMut) -> Bytes {
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

/// A commit marker, as only the transaction coordinator may write one.
pub fn control_batch(producer_id: i64, epoch: i16) -> Bytes {
    let record = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id,
        producer_epoch: epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1_700_000_000_000,
        key: Some(Bytes::from_static(&[0, 0, 0, 1])),
        value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0])),
        headers: IndexMap::new(),
    };
    let mut buf = BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, [record].iter(), &opts).expect("batch encodes");
    buf.freeze()
}

fn encode(n: usize, value_len: usize, ts: i64, producer: (i64, i16, i32)) -> Bytes {
    encode_with(n, value_len, ts, producer, false)
}

fn encode_with(
    n: usize,
    value_len: usize,
    ts: i64,
    (pid, epoch, seq): (i64, i16, i32),
    transactional: bool,
) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder groups records whose offset - sequence is constant.
            sequence: seq + i as i32,
            timestamp: ts + i as i64,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(vec![b'v'; value_len])),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, records.iter(), &opts).expect("batch encodes");
    buf.freeze()
}

/// One zstd-compressed record of `value_len` zero bytes (a few KB of zstd
/// for many MB of record), keyed or not.
pub fn zstd_record(key: Option<&'static [u8]>, value_len: usize) -> Bytes {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1_700_000_000_000,
        key: key.map(Bytes::from_static),
        value: Some(Bytes::from(vec![0u8; value_len])),
        headers: IndexMap::new(),
    };
    let mut buf = BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::Zstd,
    };
    RecordBatchEncoder::encode(&mut buf, [record].iter(), &opts).expect("batch encodes");
    buf.freeze()
}
