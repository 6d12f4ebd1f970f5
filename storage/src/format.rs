//! Byte layouts of the shard log's objects. Every object starts with a fixed
//! header naming the writer (epoch, nonce) so that an unknown PUT outcome can be
//! resolved by reading the object back.
//!
//! WAL object: `magic(8) epoch(8) nonce(8) seq(8) kind(1) meta_len(4) crc(4)`,
//! then `meta_len` bytes of entry metadata, then the data of every `Append`
//! entry, concatenated in entry order. The CRC-32C covers header and metadata;
//! record batches carry their own CRCs.
//!
//! Checkpoint object: `magic(8) epoch(8) nonce(8) seq(8) fence_epoch(8) crc(4)`,
//! then the encoded [`State`]; the CRC covers all of it. `FLOECKP3` added
//! each stream's producers, `FLOECKP4` their open transactions and the
//! stream's aborted ones, `FLOECKP5` the meter windows after the keys,
//! `FLOECKP6` each index entry's count of batches and each remembered
//! append's max timestamp; older versions are still read. Then an optional tail that readers
//! before it ignore, so workers of both kinds can share a shard during a
//! rolling upgrade: the shard's `deleted_producers_below` and each
//! stream's `forgotten_below`, in stream order. Without it every bound is
//! worked out from the ids ever handed out.
//!
//! Data object (compaction's output): `magic(8) epoch(8) nonce(8) runs(4)
//! crc(4)`, then per run `stream(8) from(8) to(8) start(4) end(4)` (the
//! per-partition index), then the runs' batches back to back. The CRC covers
//! header and index.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::producers::{
    ids_handed_out, AbortedTxn, Producer, ProducerState, SeqBatch, Txn, IDS_HANDED_OUT_KEY,
    KEPT_BATCHES,
};
use crate::state::{BatchLoc, ObjId, State, StreamState};
use crate::{Entry, Left, Rewritten, Run, StreamId};

const WAL_MAGIC: &[u8; 8] = b"FLOEWAL1";
const CKPT_MAGIC: &[u8; 8] = b"FLOECKP6";
const CKPT_MAGIC_V5: &[u8; 8] = b"FLOECKP5";
const CKPT_MAGIC_V4: &[u8; 8] = b"FLOECKP4";
const CKPT_MAGIC_V3: &[u8; 8] = b"FLOECKP3";
const CKPT_MAGIC_V2: &[u8; 8] = b"FLOECKP2";
const EPOCH_MAGIC: &[u8; 8] = b"FLOEEPO1";
const DATA_MAGIC: &[u8; 8] = b"FLOEDAT1";
const DATA_HEADER_LEN: usize = 8 + 8 + 8 + 4 + 4;
const DATA_RUN_LEN: usize = 8 + 8 + 8 + 4 + 4;
pub(crate) const WAL_HEADER_LEN: usize = 8 + 8 + 8 + 8 + 1 + 4 + 4;
const CKPT_HEADER_LEN: usize = 8 * 5 + 4;

const KIND_DATA: u8 = 0;
const KIND_TOMBSTONE: u8 = 1;

const TAG_APPEND: u8 = 1;
const TAG_CREATE_STREAM: u8 = 2;
const TAG_DELETE_STREAM: u8 = 3;
const TAG_PUT: u8 = 4;
const TAG_TRUNCATE: u8 = 5;
const TAG_COMPACT: u8 = 6;
const TAG_SWEEP: u8 = 7;
/// An `Append` with its producer: `TAG_APPEND`'s fields, then
/// `id(8) epoch(2) first_seq(4) time_ms(8)`.
const TAG_APPEND_PRODUCER: u8 = 8;
/// `TAG_APPEND_PRODUCER` of a transaction: then `txn(1)`: 1 records,
/// 2 commit marker, 3 abort marker.
const TAG_APPEND_TXN: u8 = 9;
/// `window(8) n(4)` then `n` counts of 8 bytes.
const TAG_METER: u8 = 10;
const TAG_METER_CLOSE: u8 = 11;
const TAG_METER_DONE: u8 = 12;
const TAG_EXPIRE_PRODUCERS: u8 = 13;
/// `object(8) stream(8) size(4) n(4)`, then per entry `base(8) obj(8)
/// pos(4) kept(1)`: when kept (1), `pos(4) len(4)`; when kept with some
/// of its batches gone (2), then also `base(8) end(8) batches(4)
/// max_timestamp(8)`.
const TAG_REWRITE: u8 = 14;
/// `TAG_COMPACT` whose runs are indexed by runs of batches: each run's
/// fields, then `index_bytes(4)`. Runs indexed one entry per batch are
/// written as `TAG_COMPACT`, which workers from before it read.
const TAG_COMPACT_INDEXED: u8 = 15;

/// Who wrote an object: the owner's epoch and its random per-open nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writer {
    pub epoch: u64,
    pub nonce: u64,
}

/// A decoded WAL object. `entries` hold their data as slices of the object.
#[derive(Debug)]
pub struct WalObject {
    pub writer: Writer,
    pub seq: u64,
    pub tombstone: bool,
    pub entries: Vec<Entry>,
    /// Byte position of each `Append` entry's data in the object, in order.
    pub positions: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
#[error("corrupt log object: {0}")]
pub struct Corrupt(pub &'static str);

/// Encodes a WAL object as a list of chunks: one for header and metadata, then
/// each batch as it was appended (no copy of record bytes).
pub fn encode_wal(writer: Writer, seq: u64, entries: &[Entry]) -> Vec<Bytes> {
    let mut meta = BytesMut::with_capacity(entries.len() * 32);
    let mut chunks = Vec::with_capacity(entries.len() + 1);
    chunks.push(Bytes::new());
    for e in entries {
        match e {
            Entry::Append {
                stream,
                base_offset,
                offsets,
                max_timestamp,
                producer,
                data,
            } => {
                meta.put_u8(match producer {
                    Some(p) if p.txn != Txn::No => TAG_APPEND_TXN,
                    Some(_) => TAG_APPEND_PRODUCER,
                    None => TAG_APPEND,
                });
                meta.put_u64(stream.0);
                meta.put_i64(*base_offset);
                meta.put_u32(*offsets);
                meta.put_i64(*max_timestamp);
                meta.put_u32(data.len() as u32);
                if let Some(p) = producer {
                    meta.put_i64(p.id);
                    meta.put_i16(p.epoch);
                    meta.put_i32(p.first_seq);
                    meta.put_i64(p.time_ms);
                    match p.txn {
                        Txn::No => {}
                        Txn::Data => meta.put_u8(1),
                        Txn::Commit => meta.put_u8(2),
                        Txn::Abort => meta.put_u8(3),
                    }
                }
                chunks.push(data.clone());
            }
            Entry::CreateStream { stream } => {
                meta.put_u8(TAG_CREATE_STREAM);
                meta.put_u64(stream.0);
            }
            Entry::DeleteStream { stream } => {
                meta.put_u8(TAG_DELETE_STREAM);
                meta.put_u64(stream.0);
            }
            Entry::Truncate { stream, log_start } => {
                meta.put_u8(TAG_TRUNCATE);
                meta.put_u64(stream.0);
                meta.put_i64(*log_start);
            }
            Entry::Put { key, value } => {
                meta.put_u8(TAG_PUT);
                put_bytes(&mut meta, key);
                match value {
                    Some(v) => {
                        meta.put_u8(1);
                        put_bytes(&mut meta, v);
                    }
                    None => meta.put_u8(0),
                }
            }
            Entry::Compact {
                object,
                wal_below,
                sources,
                runs,
            } => {
                let indexed = runs.iter().any(|r| r.index_bytes > 0);
                meta.put_u8(if indexed {
                    TAG_COMPACT_INDEXED
                } else {
                    TAG_COMPACT
                });
                meta.put_u64(object.0);
                meta.put_u64(*wal_below);
                meta.put_u32(sources.len() as u32);
                for o in sources {
                    meta.put_u64(o.0);
                }
                meta.put_u32(runs.len() as u32);
                for r in runs {
                    meta.put_u64(r.stream.0);
                    meta.put_i64(r.from);
                    meta.put_i64(r.to);
                    meta.put_u32(r.end);
                    if indexed {
                        meta.put_u32(r.index_bytes);
                    }
                }
            }
            Entry::Sweep { wal_below, forget } => {
                meta.put_u8(TAG_SWEEP);
                meta.put_u64(*wal_below);
                meta.put_u32(forget.len() as u32);
                for o in forget {
                    meta.put_u64(o.0);
                }
            }
            Entry::Meter { window, counts } => {
                meta.put_u8(TAG_METER);
                put_counts(&mut meta, *window, counts);
            }
            Entry::MeterClose { end } => {
                meta.put_u8(TAG_METER_CLOSE);
                meta.put_i64(*end);
            }
            Entry::MeterDone { window } => {
                meta.put_u8(TAG_METER_DONE);
                meta.put_i64(*window);
            }
            Entry::ExpireProducers { before_ms } => {
                meta.put_u8(TAG_EXPIRE_PRODUCERS);
                meta.put_i64(*before_ms);
            }
            Entry::Rewrite {
                object,
                stream,
                size,
                batches,
            } => {
                meta.put_u8(TAG_REWRITE);
                meta.put_u64(object.0);
                meta.put_u64(stream.0);
                meta.put_u32(*size);
                meta.put_u32(batches.len() as u32);
                for b in batches {
                    meta.put_i64(b.base_offset);
                    meta.put_u64(b.was.0 .0);
                    meta.put_u32(b.was.1);
                    match b.now {
                        Some((pos, len)) => {
                            meta.put_u8(if b.left.is_some() { 2 } else { 1 });
                            meta.put_u32(pos);
                            meta.put_u32(len);
                            if let Some(left) = b.left {
                                meta.put_i64(left.base_offset);
                                meta.put_i64(left.end_offset);
                                meta.put_u32(left.batches);
                                meta.put_i64(left.max_timestamp);
                            }
                        }
                        None => meta.put_u8(0),
                    }
                }
            }
        }
    }
    let kind = KIND_DATA;
    chunks[0] = header(writer, seq, kind, meta.freeze());
    chunks
}

pub fn encode_tombstone(writer: Writer, seq: u64) -> Bytes {
    header(writer, seq, KIND_TOMBSTONE, Bytes::new())
}

fn header(writer: Writer, seq: u64, kind: u8, meta: Bytes) -> Bytes {
    let mut h = BytesMut::with_capacity(WAL_HEADER_LEN + meta.len());
    h.put_slice(WAL_MAGIC);
    h.put_u64(writer.epoch);
    h.put_u64(writer.nonce);
    h.put_u64(seq);
    h.put_u8(kind);
    h.put_u32(meta.len() as u32);
    let mut crc = crc32c::crc32c(&h);
    crc = crc32c::crc32c_append(crc, &meta);
    h.put_u32(crc);
    h.put_slice(&meta);
    h.freeze()
}

fn put_counts(b: &mut BytesMut, window: i64, counts: &[u64]) {
    b.put_i64(window);
    b.put_u32(counts.len() as u32);
    for &c in counts {
        b.put_u64(c);
    }
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_u32(v.len() as u32);
    b.put_slice(v);
}

/// Reads just the writer of a WAL object from its first bytes.
pub fn wal_writer(b: &[u8]) -> Result<Writer, Corrupt> {
    if b.len() < WAL_HEADER_LEN || &b[..8] != WAL_MAGIC {
        return Err(Corrupt("bad wal header"));
    }
    let mut r = &b[8..24];
    Ok(Writer {
        epoch: r.get_u64(),
        nonce: r.get_u64(),
    })
}

/// Reads the writer of any log object (WAL, checkpoint or epoch).
pub fn object_writer(b: &[u8]) -> Result<Writer, Corrupt> {
    if b.len() < 24
        || ![
            WAL_MAGIC,
            CKPT_MAGIC,
            CKPT_MAGIC_V3,
            CKPT_MAGIC_V2,
            EPOCH_MAGIC,
            DATA_MAGIC,
        ]
        .iter()
        .any(|m| &b[..8] == *m)
    {
        return Err(Corrupt("not a log object"));
    }
    let mut r = &b[8..24];
    Ok(Writer {
        epoch: r.get_u64(),
        nonce: r.get_u64(),
    })
}

/// The body of `epoch/{n}`: just its writer.
pub fn encode_epoch(writer: Writer) -> Bytes {
    let mut b = BytesMut::with_capacity(24);
    b.put_slice(EPOCH_MAGIC);
    b.put_u64(writer.epoch);
    b.put_u64(writer.nonce);
    b.freeze()
}

pub fn decode_wal(obj: Bytes) -> Result<WalObject, Corrupt> {
    let writer = wal_writer(&obj)?;
    let mut r = &obj[24..WAL_HEADER_LEN];
    let seq = r.get_u64();
    let kind = r.get_u8();
    let meta_len = r.get_u32() as usize;
    let crc = r.get_u32();
    let meta_end = WAL_HEADER_LEN
        .checked_add(meta_len)
        .filter(|&e| e <= obj.len())
        .ok_or(Corrupt("wal metadata truncated"))?;
    let want = crc32c::crc32c_append(
        crc32c::crc32c(&obj[..WAL_HEADER_LEN - 4]),
        &obj[WAL_HEADER_LEN..meta_end],
    );
    if want != crc {
        return Err(Corrupt("wal header crc"));
    }
    let tombstone = match kind {
        KIND_DATA => false,
        KIND_TOMBSTONE => true,
        _ => return Err(Corrupt("wal kind")),
    };
    let mut meta = Reader(obj.slice(WAL_HEADER_LEN..meta_end));
    let mut pos = meta_end;
    let mut entries = Vec::new();
    let mut positions = Vec::new();
    while meta.0.has_remaining() {
        let e = match meta.u8()? {
            tag @ (TAG_APPEND | TAG_APPEND_PRODUCER | TAG_APPEND_TXN) => {
                let stream = StreamId(meta.u64()?);
                let base_offset = meta.i64()?;
                let offsets = meta.u32()?;
                let max_timestamp = meta.i64()?;
                let len = meta.u32()? as usize;
                let producer = if tag == TAG_APPEND {
                    None
                } else {
                    Some(Producer {
                        id: meta.i64()?,
                        epoch: meta.i16()?,
                        first_seq: meta.i32()?,
                        time_ms: meta.i64()?,
                        txn: match tag {
                            TAG_APPEND_PRODUCER => Txn::No,
                            _ => match meta.u8()? {
                                1 => Txn::Data,
                                2 => Txn::Commit,
                                3 => Txn::Abort,
                                _ => return Err(Corrupt("wal append txn kind")),
                            },
                        },
                    })
                };
                if base_offset < 0
                    || base_offset.checked_add(offsets as i64).is_none()
                    || offsets == 0
                    || len < 8
                {
                    return Err(Corrupt("wal append header out of range"));
                }
                let end = pos.checked_add(len).filter(|&e| e <= obj.len());
                let end = end.ok_or(Corrupt("wal data truncated"))?;
                positions.push(pos as u32);
                let data = obj.slice(pos..end);
                pos = end;
                Entry::Append {
                    stream,
                    base_offset,
                    offsets,
                    max_timestamp,
                    producer,
                    data,
                }
            }
            TAG_CREATE_STREAM => Entry::CreateStream {
                stream: StreamId(meta.u64()?),
            },
            TAG_DELETE_STREAM => Entry::DeleteStream {
                stream: StreamId(meta.u64()?),
            },
            TAG_TRUNCATE => Entry::Truncate {
                stream: StreamId(meta.u64()?),
                log_start: meta.i64()?,
            },
            TAG_PUT => {
                let key = meta.bytes()?;
                let value = match meta.u8()? {
                    0 => None,
                    _ => Some(meta.bytes()?),
                };
                Entry::Put { key, value }
            }
            tag @ (TAG_COMPACT | TAG_COMPACT_INDEXED) => {
                let indexed = tag == TAG_COMPACT_INDEXED;
                let object = ObjId(meta.u64()?);
                let wal_below = meta.u64()?;
                let n = meta.u32()? as usize;
                meta.need(n.saturating_mul(8))?;
                let sources = (0..n)
                    .map(|_| meta.u64().map(ObjId))
                    .collect::<Result<_, _>>()?;
                let n = meta.u32()? as usize;
                meta.need(n.saturating_mul(28))?;
                let mut runs = Vec::with_capacity(n);
                for _ in 0..n {
                    let r = Run {
                        stream: StreamId(meta.u64()?),
                        from: meta.i64()?,
                        to: meta.i64()?,
                        end: meta.u32()?,
                        index_bytes: if indexed { meta.u32()? } else { 0 },
                    };
                    if r.from >= r.to {
                        return Err(Corrupt("compaction run out of order"));
                    }
                    runs.push(r);
                }
                Entry::Compact {
                    object,
                    wal_below,
                    sources,
                    runs,
                }
            }
            TAG_SWEEP => {
                let wal_below = meta.u64()?;
                let n = meta.u32()? as usize;
                meta.need(n.saturating_mul(8))?;
                let forget = (0..n)
                    .map(|_| meta.u64().map(ObjId))
                    .collect::<Result<_, _>>()?;
                Entry::Sweep { wal_below, forget }
            }
            TAG_METER => {
                let (window, counts) = meta.counts()?;
                Entry::Meter { window, counts }
            }
            TAG_METER_CLOSE => Entry::MeterClose { end: meta.i64()? },
            TAG_METER_DONE => Entry::MeterDone {
                window: meta.i64()?,
            },
            TAG_EXPIRE_PRODUCERS => Entry::ExpireProducers {
                before_ms: meta.i64()?,
            },
            TAG_REWRITE => {
                let object = ObjId(meta.u64()?);
                let stream = StreamId(meta.u64()?);
                let size = meta.u32()?;
                let n = meta.u32()? as usize;
                meta.need(n.saturating_mul(21))?;
                let mut batches = Vec::with_capacity(n);
                for _ in 0..n {
                    let base_offset = meta.i64()?;
                    let was = (ObjId(meta.u64()?), meta.u32()?);
                    let flag = meta.u8()?;
                    let now = match flag {
                        0 => None,
                        1 | 2 => Some((meta.u32()?, meta.u32()?)),
                        _ => return Err(Corrupt("rewrite flag")),
                    };
                    let left = if flag == 2 {
                        let left = Left {
                            base_offset: meta.i64()?,
                            end_offset: meta.i64()?,
                            batches: meta.u32()?,
                            max_timestamp: meta.i64()?,
                        };
                        let span = left.end_offset.checked_sub(left.base_offset);
                        if left.batches == 0 || !span.is_some_and(|n| n > 0 && n <= u32::MAX as i64)
                        {
                            return Err(Corrupt("rewritten entry's span"));
                        }
                        Some(left)
                    } else {
                        None
                    };
                    if now.is_some_and(|(pos, len)| pos as u64 + len as u64 > size as u64) {
                        return Err(Corrupt("rewritten batch past its object"));
                    }
                    batches.push(Rewritten {
                        base_offset,
                        was,
                        now,
                        left,
                    });
                }
                Entry::Rewrite {
                    object,
                    stream,
                    size,
                    batches,
                }
            }
            _ => return Err(Corrupt("wal entry tag")),
        };
        entries.push(e);
    }
    Ok(WalObject {
        writer,
        seq,
        tombstone,
        entries,
        positions,
    })
}

/// A decoded checkpoint: the state after applying `wal/{seq}`.
pub struct Checkpoint {
    pub writer: Writer,
    pub seq: u64,
    pub fence_epoch: u64,
    pub state: State,
}

pub fn encode_checkpoint(writer: Writer, seq: u64, fence_epoch: u64, state: &State) -> Bytes {
    // Sized for the batch index, most of a large checkpoint: 40 bytes an
    // entry.
    let locs: usize = state.streams.values().map(|s| s.locs.len()).sum();
    let mut b = BytesMut::with_capacity(1024 + 40 * locs);
    b.put_slice(CKPT_MAGIC);
    b.put_u64(writer.epoch);
    b.put_u64(writer.nonce);
    b.put_u64(seq);
    b.put_u64(fence_epoch);
    b.put_u32(0);
    b.put_u64(state.next_stream);
    b.put_u64(state.compacted_below);
    b.put_u64(state.swept_below);
    b.put_u32(state.garbage.len() as u32);
    for o in &state.garbage {
        b.put_u64(o.0);
    }
    b.put_u32(state.data_sizes.len() as u32);
    for (o, size) in &state.data_sizes {
        b.put_u64(o.0);
        b.put_u32(*size);
    }
    b.put_u32(state.fences.len() as u32);
    for (&seq, &epoch) in &state.fences {
        b.put_u64(seq);
        b.put_u64(epoch);
    }
    b.put_u32(state.streams.len() as u32);
    for (id, s) in &state.streams {
        b.put_u64(id.0);
        b.put_i64(s.log_start);
        b.put_i64(s.next_offset);
        b.put_u32(s.locs.len() as u32);
        for l in &s.locs {
            b.put_i64(l.base_offset);
            b.put_u32(l.offsets);
            b.put_i64(l.max_timestamp);
            b.put_u64(l.obj.0);
            b.put_u32(l.pos);
            b.put_u32(l.len);
            b.put_u32(l.batches);
        }
        b.put_u32(s.producers.len() as u32);
        for (&id, p) in &s.producers {
            b.put_i64(id);
            b.put_i16(p.epoch);
            b.put_i64(p.last_timestamp);
            b.put_i64(p.last_append_ms);
            b.put_u8(p.batches.len() as u8);
            for q in &p.batches {
                b.put_i32(q.first_seq);
                b.put_u32(q.offsets);
                b.put_i64(q.base_offset);
                b.put_i64(q.max_timestamp);
            }
            b.put_i64(p.open_txn.unwrap_or(-1));
        }
        b.put_u32(s.aborted.len() as u32);
        for a in &s.aborted {
            b.put_i64(a.producer_id);
            b.put_i64(a.first_offset);
            b.put_i64(a.last_offset);
        }
    }
    b.put_u32(state.kv.len() as u32);
    for (k, v) in &state.kv {
        put_bytes(&mut b, k);
        put_bytes(&mut b, v);
    }
    b.put_i64(state.meter_from);
    b.put_u32(state.meters.len() as u32);
    for (&window, counts) in &state.meters {
        put_counts(&mut b, window, counts);
    }
    b.put_i64(state.deleted_producers_below);
    for s in state.streams.values() {
        b.put_i64(s.forgotten_below);
    }
    let crc = checkpoint_crc(&b);
    b[CKPT_HEADER_LEN - 4..CKPT_HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

/// Covers the header (writer, seq, fence epoch) and the body, not the CRC slot.
fn checkpoint_crc(b: &[u8]) -> u32 {
    crc32c::crc32c_append(
        crc32c::crc32c(&b[8..CKPT_HEADER_LEN - 4]),
        &b[CKPT_HEADER_LEN..],
    )
}

/// Whether `obj` is a checkpoint of the first format, written before
/// anything was ever deleted: safe to ignore (the WAL replays from seq 0).
pub fn is_v1_checkpoint(obj: &[u8]) -> bool {
    obj.starts_with(b"FLOECKP1")
}

pub fn decode_checkpoint(obj: Bytes) -> Result<Checkpoint, Corrupt> {
    let version = match obj.get(..8) {
        Some(m) if m == CKPT_MAGIC => 6,
        Some(m) if m == CKPT_MAGIC_V5 => 5,
        Some(m) if m == CKPT_MAGIC_V4 => 4,
        Some(m) if m == CKPT_MAGIC_V3 => 3,
        Some(m) if m == CKPT_MAGIC_V2 => 2,
        _ => 0,
    };
    if obj.len() < CKPT_HEADER_LEN || version == 0 {
        return Err(Corrupt("bad checkpoint header"));
    }
    let mut h = &obj[8..CKPT_HEADER_LEN];
    let writer = Writer {
        epoch: h.get_u64(),
        nonce: h.get_u64(),
    };
    let seq = h.get_u64();
    let fence_epoch = h.get_u64();
    if checkpoint_crc(&obj) != h.get_u32() {
        return Err(Corrupt("checkpoint crc"));
    }
    let mut r = Reader(obj.slice(CKPT_HEADER_LEN..));
    let mut state = State {
        next_stream: r.u64()?,
        compacted_below: r.u64()?,
        swept_below: r.u64()?,
        ..State::default()
    };
    for _ in 0..r.u32()? {
        state.garbage.insert(ObjId(r.u64()?));
    }
    for _ in 0..r.u32()? {
        state.data_sizes.insert(ObjId(r.u64()?), r.u32()?);
    }
    for _ in 0..r.u32()? {
        state.fences.insert(r.u64()?, r.u64()?);
    }
    for _ in 0..r.u32()? {
        let id = StreamId(r.u64()?);
        let log_start = r.i64()?;
        let next_offset = r.i64()?;
        let n = r.u32()? as usize;
        let mut locs = Vec::with_capacity(n.min(1 << 20));
        for _ in 0..n {
            let l = BatchLoc {
                base_offset: r.i64()?,
                offsets: r.u32()?,
                max_timestamp: r.i64()?,
                obj: ObjId(r.u64()?),
                pos: r.u32()?,
                len: r.u32()?,
                batches: if version >= 6 { r.u32()? } else { 1 },
            };
            // Batches are at least their 8-byte offset slot, and non-empty.
            if l.len < 8 || l.offsets == 0 || l.batches == 0 {
                return Err(Corrupt("checkpoint batch out of range"));
            }
            locs.push(l);
        }
        let mut producers = std::collections::BTreeMap::new();
        let mut aborted = Vec::new();
        if version >= 3 {
            for _ in 0..r.u32()? {
                let pid = r.i64()?;
                let mut p = ProducerState {
                    epoch: r.i16()?,
                    last_timestamp: r.i64()?,
                    last_append_ms: r.i64()?,
                    batches: Default::default(),
                    open_txn: None,
                };
                let n = r.u8()? as usize;
                if n > KEPT_BATCHES {
                    return Err(Corrupt("checkpoint producer out of range"));
                }
                for _ in 0..n {
                    p.batches.push_back(SeqBatch {
                        first_seq: r.i32()?,
                        offsets: r.u32()?,
                        base_offset: r.i64()?,
                        max_timestamp: if version >= 6 { r.i64()? } else { -1 },
                    });
                }
                if version >= 4 {
                    p.open_txn = Some(r.i64()?).filter(|&o| o >= 0);
                }
                producers.insert(pid, p);
            }
        }
        if version >= 4 {
            for _ in 0..r.u32()? {
                aborted.push(AbortedTxn {
                    producer_id: r.i64()?,
                    first_offset: r.i64()?,
                    last_offset: r.i64()?,
                });
            }
        }
        state.streams.insert(
            id,
            StreamState {
                log_start,
                next_offset,
                locs,
                bytes: 0,
                producers,
                aborted,
                // From the tail, or worked out, once the keys are read.
                forgotten_below: i64::MAX,
                open_txns: Default::default(),
            },
        );
    }
    for _ in 0..r.u32()? {
        let k = r.bytes()?;
        state.kv.insert(k, r.bytes()?);
    }
    if version >= 5 {
        state.meter_from = r.i64()?;
        for _ in 0..r.u32()? {
            let (window, counts) = r.counts()?;
            state.meters.insert(window, counts);
        }
    }
    if r.0.has_remaining() {
        state.deleted_producers_below = r.i64()?;
        for s in state.streams.values_mut() {
            s.forgotten_below = r.i64()?;
        }
    } else {
        let below = ids_ever_seen_below(&state);
        state.deleted_producers_below = below;
        for s in state.streams.values_mut() {
            s.forgotten_below = below;
        }
    }
    state.rebuild_derived();
    Ok(Checkpoint {
        writer,
        seq,
        fence_epoch,
        state,
    })
}

/// For a checkpoint without the producer bounds: every producer that wrote
/// to a stream, deleted or not, got its id handed out (below the recorded
/// end), or made one up that a stream still knows. Sound only while the
/// ids of a tenant come from its one shard's log, this one.
fn ids_ever_seen_below(state: &State) -> i64 {
    let handed_out = ids_handed_out(state.kv.get(IDS_HANDED_OUT_KEY).map(|v| v.as_ref()));
    state
        .streams
        .values()
        .map(StreamState::known_producers_below)
        .fold(handed_out, i64::max)
}

/// Bytes before a data object's first batch: header and index.
pub fn data_header_len(runs: usize) -> usize {
    DATA_HEADER_LEN + DATA_RUN_LEN * runs
}

/// Header and per-partition index of a data object; the batches follow.
pub fn encode_data_header(writer: Writer, runs: &[Run], starts: &[u64]) -> Bytes {
    let mut b = BytesMut::with_capacity(DATA_HEADER_LEN + DATA_RUN_LEN * runs.len());
    b.put_slice(DATA_MAGIC);
    b.put_u64(writer.epoch);
    b.put_u64(writer.nonce);
    b.put_u32(runs.len() as u32);
    b.put_u32(0);
    for (r, &start) in runs.iter().zip(starts) {
        b.put_u64(r.stream.0);
        b.put_i64(r.from);
        b.put_i64(r.to);
        b.put_u32(start as u32);
        b.put_u32(r.end);
    }
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&b[..DATA_HEADER_LEN - 4]),
        &b[DATA_HEADER_LEN..],
    );
    b[DATA_HEADER_LEN - 4..DATA_HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

/// A data object's index: (run, start) per run. For tools and tests; reads
/// go by the log's own index.
pub fn decode_data_index(obj: &[u8]) -> Result<(Writer, Vec<(Run, u32)>), Corrupt> {
    if obj.len() < DATA_HEADER_LEN || &obj[..8] != DATA_MAGIC {
        return Err(Corrupt("bad data object header"));
    }
    let mut h = &obj[8..DATA_HEADER_LEN];
    let writer = Writer {
        epoch: h.get_u64(),
        nonce: h.get_u64(),
    };
    let n = h.get_u32() as usize;
    let crc = h.get_u32();
    let end = n
        .checked_mul(DATA_RUN_LEN)
        .and_then(|l| l.checked_add(DATA_HEADER_LEN))
        .filter(|&e| e <= obj.len());
    let end = end.ok_or(Corrupt("data index truncated"))?;
    if crc32c::crc32c_append(
        crc32c::crc32c(&obj[..DATA_HEADER_LEN - 4]),
        &obj[DATA_HEADER_LEN..end],
    ) != crc
    {
        return Err(Corrupt("data index crc"));
    }
    let mut r = &obj[DATA_HEADER_LEN..end];
    let runs = (0..n)
        .map(|_| {
            let (stream, from, to) = (StreamId(r.get_u64()), r.get_i64(), r.get_i64());
            let start = r.get_u32();
            (
                Run {
                    stream,
                    from,
                    to,
                    end: r.get_u32(),
                    index_bytes: 0,
                },
                start,
            )
        })
        .collect();
    Ok((writer, runs))
}

/// Bounds-checked reads; malformed objects become errors, never panics.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), Corrupt> {
        if self.0.remaining() < n {
            return Err(Corrupt("truncated"));
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, Corrupt> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn i16(&mut self) -> Result<i16, Corrupt> {
        self.need(2)?;
        Ok(self.0.get_i16())
    }
    fn i32(&mut self) -> Result<i32, Corrupt> {
        self.need(4)?;
        Ok(self.0.get_i32())
    }
    fn u32(&mut self) -> Result<u32, Corrupt> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn u64(&mut self) -> Result<u64, Corrupt> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }
    fn i64(&mut self) -> Result<i64, Corrupt> {
        self.need(8)?;
        Ok(self.0.get_i64())
    }
    fn bytes(&mut self) -> Result<Bytes, Corrupt> {
        let n = self.u32()? as usize;
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    /// A meter window: `window(8) n(4)` and `n` counts.
    fn counts(&mut self) -> Result<(i64, Vec<u64>), Corrupt> {
        let window = self.i64()?;
        let n = self.u32()? as usize;
        self.need(n.saturating_mul(8))?;
        let counts = (0..n).map(|_| self.u64()).collect::<Result<_, _>>()?;
        Ok((window, counts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concat(chunks: &[Bytes]) -> Bytes {
        Bytes::from(chunks.concat())
    }

    #[test]
    fn a_rewrite_whose_left_span_is_empty_is_corrupt() {
        let w = Writer { epoch: 1, nonce: 1 };
        let rewrite = |base_offset, end_offset, batches| Entry::Rewrite {
            object: ObjId::data(1, 0),
            stream: StreamId(1),
            size: 100,
            batches: vec![Rewritten {
                base_offset: 0,
                was: (ObjId::wal(1), 0),
                now: Some((0, 100)),
                left: Some(Left {
                    base_offset,
                    end_offset,
                    batches,
                    max_timestamp: 0,
                }),
            }],
        };
        let decode = |e| decode_wal(concat(&encode_wal(w, 1, &[e]))).map(|d| d.entries);
        assert!(decode(rewrite(3, 9, 2)).is_ok());
        for (base, end, batches) in [(3, 3, 1), (9, 3, 1), (3, 9, 0), (0, 1 << 33, 1)] {
            let err = decode(rewrite(base, end, batches)).expect_err("corrupt");
            assert_eq!(err.0, "rewritten entry's span", "{base}..{end}, {batches}");
        }
    }

    #[test]
    fn wal_round_trip() {
        let w = Writer {
            epoch: 3,
            nonce: 99,
        };
        let entries = vec![
            Entry::CreateStream {
                stream: StreamId(1),
            },
            Entry::Append {
                stream: StreamId(1),
                base_offset: 0,
                offsets: 2,
                max_timestamp: 7,
                producer: None,
                data: Bytes::from_static(b"abcdefgh"),
            },
            Entry::Put {
                key: Bytes::from_static(b"k"),
                value: None,
            },
            Entry::Put {
                key: Bytes::from_static(b"k2"),
                value: Some(Bytes::from_static(b"v")),
            },
            Entry::Compact {
                object: ObjId::data(2, 1),
                wal_below: 9,
                sources: vec![ObjId::data(1, 7)],
                runs: vec![Run {
                    stream: StreamId(1),
                    from: 0,
                    to: 2,
                    end: 500,
                    index_bytes: 0,
                }],
            },
            Entry::Compact {
                object: ObjId::data(2, 2),
                wal_below: 10,
                sources: vec![],
                runs: vec![
                    Run {
                        stream: StreamId(1),
                        from: 2,
                        to: 9,
                        end: 900,
                        index_bytes: 256 << 10,
                    },
                    Run {
                        stream: StreamId(2),
                        from: 0,
                        to: 1,
                        end: 1000,
                        index_bytes: 0,
                    },
                ],
            },
            Entry::Sweep {
                wal_below: 3,
                forget: vec![ObjId::wal(1), ObjId::data(1, 0)],
            },
            Entry::Meter {
                window: 3_600_000,
                counts: vec![1, u64::MAX, 0],
            },
            Entry::MeterClose { end: 7_200_000 },
            Entry::MeterDone { window: 3_600_000 },
            Entry::ExpireProducers {
                before_ms: 1_700_000_000_000,
            },
            Entry::Rewrite {
                object: ObjId::data(2, 2),
                stream: StreamId(1),
                size: 300,
                batches: vec![
                    Rewritten {
                        base_offset: 0,
                        was: (ObjId::wal(4), 61),
                        now: Some((100, 200)),
                        left: None,
                    },
                    Rewritten {
                        base_offset: 2,
                        was: (ObjId::data(1, 7), 0),
                        now: None,
                        left: None,
                    },
                    Rewritten {
                        base_offset: 5,
                        was: (ObjId::data(1, 7), 90),
                        now: Some((10, 90)),
                        left: Some(Left {
                            base_offset: 6,
                            end_offset: 9,
                            batches: 2,
                            max_timestamp: 77,
                        }),
                    },
                ],
            },
            Entry::Append {
                stream: StreamId(1),
                base_offset: 3,
                offsets: 1,
                max_timestamp: 9,
                producer: Some(Producer {
                    id: 41,
                    epoch: 3,
                    first_seq: -1,
                    time_ms: 1_700_000_000_001,
                    txn: Txn::Abort,
                }),
                data: Bytes::from_static(b"marker00"),
            },
            Entry::Append {
                stream: StreamId(1),
                base_offset: 2,
                offsets: 1,
                max_timestamp: 8,
                producer: Some(Producer {
                    id: 41,
                    epoch: 2,
                    first_seq: i32::MAX,
                    time_ms: 1_700_000_000_000,
                    txn: Txn::No,
                }),
                data: Bytes::from_static(b"xyz45678"),
            },
        ];
        let obj = concat(&encode_wal(w, 12, &entries));
        let d = decode_wal(obj.clone()).expect("decodes");
        assert_eq!((d.writer, d.seq, d.tombstone), (w, 12, false));
        assert_eq!(d.entries, entries);
        let p = d.positions[2] as usize;
        assert_eq!(ObjId::data(2, 1).data_parts(), Some((2, 1)));
        assert_eq!(ObjId::wal(9).wal_seq(), Some(9));
        assert_eq!(&obj[p..p + 8], b"xyz45678");
        // Any corruption of header or metadata is caught.
        for i in 8..WAL_HEADER_LEN + 10 {
            let mut bad = obj.to_vec();
            bad[i] ^= 0x40;
            assert!(
                decode_wal(Bytes::from(bad)).is_err(),
                "flip at {i} undetected"
            );
        }
        assert!(decode_wal(obj.slice(..obj.len() - 1)).is_err());
        let t = decode_wal(encode_tombstone(w, 5)).expect("tombstone");
        assert!(t.tombstone && t.entries.is_empty());
    }

    #[test]
    fn checkpoint_round_trip() {
        let mut state = State {
            next_stream: 4,
            ..State::default()
        };
        state
            .kv
            .insert(Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        state.compacted_below = 7;
        state.swept_below = 5;
        state.garbage.insert(ObjId::wal(2));
        state.note_tombstone(1, 0);
        state.note_tombstone(1, 1);
        state.note_tombstone(2, 20);
        assert_eq!(state.fences.len(), 2);
        state.refs.insert(ObjId::data(3, 4), 1);
        state.data_sizes.insert(ObjId::data(3, 4), 4000);
        state.bytes = 70;
        state.meter_from = 60_000;
        state.meters.insert(0, vec![5, 6]);
        state.meters.insert(60_000, vec![7]);
        state.deleted_producers_below = 10;
        state.streams.insert(
            StreamId(2),
            StreamState {
                log_start: 0,
                next_offset: 5,
                locs: vec![BatchLoc {
                    base_offset: 0,
                    offsets: 5,
                    max_timestamp: 1,
                    obj: ObjId::data(3, 4),
                    pos: 41,
                    len: 70,
                    batches: 3,
                }],
                bytes: 70,
                producers: [(
                    9,
                    ProducerState {
                        epoch: 3,
                        batches: [
                            SeqBatch {
                                first_seq: 0,
                                offsets: 2,
                                base_offset: 0,
                                max_timestamp: 40,
                            },
                            SeqBatch {
                                first_seq: 2,
                                offsets: 3,
                                base_offset: 2,
                                max_timestamp: 44,
                            },
                        ]
                        .into(),
                        last_timestamp: 44,
                        last_append_ms: 55,
                        open_txn: Some(3),
                    },
                )]
                .into(),
                aborted: vec![AbortedTxn {
                    producer_id: 8,
                    first_offset: 0,
                    last_offset: 2,
                }],
                forgotten_below: 6,
                open_txns: [(3, 9)].into(),
            },
        );
        let w = Writer { epoch: 1, nonce: 2 };
        let obj = encode_checkpoint(w, 9, 1, &state);
        let c = decode_checkpoint(obj.clone()).expect("decodes");
        assert_eq!((c.writer, c.seq, c.fence_epoch), (w, 9, 1));
        assert_eq!(c.state, state);
        for i in 8..obj.len() {
            let mut bad = obj.to_vec();
            bad[i] ^= 0x10;
            assert!(
                decode_checkpoint(Bytes::from(bad)).is_err(),
                "flip at {i} undetected"
            );
        }
    }

    #[test]
    fn reads_checkpoints_of_older_versions() {
        let mut state = State::default();
        state.streams.insert(
            StreamId(1),
            StreamState {
                log_start: 2,
                next_offset: 9,
                forgotten_below: 3,
                ..StreamState::default()
            },
        );
        state.deleted_producers_below = 7;
        let w = Writer { epoch: 4, nonce: 5 };
        let now = encode_checkpoint(w, 3, 4, &state).to_vec();
        // The end: the stream's producers(4) aborted(4), kv(4)
        // meter_from(8) meters(4), all counts 0; then the tail's
        // deleted_producers_below(8) and forgotten_below(8).
        let n = now.len();
        let rewrite = |magic: &[u8; 8], mut obj: Vec<u8>| {
            obj[..8].copy_from_slice(magic);
            let crc = checkpoint_crc(&obj);
            obj[CKPT_HEADER_LEN - 4..CKPT_HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
            decode_checkpoint(Bytes::from(obj)).map(|c| c.state)
        };
        // Written without the tail.
        let before_tail = now[..n - 16].to_vec();
        // v2 had no producers, aborted transactions or meters.
        let mut v2 = now[..n - 40].to_vec();
        v2.extend_from_slice(&[0; 4]);
        // Without the bounds, from the ids handed out: none, none known.
        let mut old = state.clone();
        old.deleted_producers_below = 0;
        old.streams
            .get_mut(&StreamId(1))
            .expect("stream")
            .forgotten_below = 0;
        assert_eq!(rewrite(CKPT_MAGIC, before_tail).expect("decodes"), old);
        assert_eq!(rewrite(CKPT_MAGIC_V2, v2).expect("decodes"), old);
        // A tail cut short is corrupt, not ignored.
        assert!(rewrite(CKPT_MAGIC, now[..n - 4].to_vec()).is_err());
        assert_eq!(
            decode_checkpoint(Bytes::from(now)).expect("decodes").state,
            state
        );

        // v5 had no batch count in an index entry: each was one batch.
        let loc = BatchLoc {
            base_offset: 2,
            offsets: 7,
            max_timestamp: 5,
            obj: ObjId::wal(1),
            pos: 61,
            len: 100,
            batches: 1,
        };
        let s = state.streams.get_mut(&StreamId(1)).expect("stream");
        s.locs.push(loc);
        state.rebuild_derived();
        let mut v5 = encode_checkpoint(w, 3, 4, &state).to_vec();
        // Header, the shard's counters and empty sets, the stream's id,
        // offsets and count, then the entry's 36 bytes before the count.
        let at = CKPT_HEADER_LEN + 3 * 8 + 3 * 4 + 4 + 3 * 8 + 4 + 36;
        assert_eq!(v5[at..at + 4], 1u32.to_be_bytes());
        v5.drain(at..at + 4);
        assert_eq!(rewrite(CKPT_MAGIC_V5, v5).expect("decodes"), state);
    }

    #[test]
    fn without_the_bounds_ids_handed_out_or_known_bound_the_deleted_streams() {
        let mut state = State::default();
        assert_eq!(ids_ever_seen_below(&state), 0);
        state.kv.insert(
            Bytes::from_static(IDS_HANDED_OUT_KEY),
            Bytes::copy_from_slice(&2_000i64.to_be_bytes()),
        );
        assert_eq!(ids_ever_seen_below(&state), 2_000);
        // A made-up id a stream still knows.
        let p = Producer {
            id: 2_500,
            epoch: 0,
            first_seq: 0,
            time_ms: 0,
            txn: Txn::No,
        };
        let mut s = StreamState::default();
        s.producers.insert(p.id, ProducerState::new(&p));
        state.streams.insert(StreamId(1), s);
        assert_eq!(ids_ever_seen_below(&state), 2_501);
    }
}
