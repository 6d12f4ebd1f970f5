//! The fenced shard log on object storage (DESIGN.md, "The fenced log").
//!
//! A shard is a single-writer log of immutable objects below one prefix:
//! `epoch/{n}` (one per owner, created with `PutMode::Create`), `wal/{seq}`
//! (one per flush: entries of every stream of the shard, or a fence tombstone)
//! and `ckpt/{seq}` (the replayed state after `wal/{seq}`). The crate knows
//! nothing of Kafka: it stores opaque batches with offsets, and a small
//! key-value map for metadata.
//!
//! # Layout
//! - [`log`]: [`ShardLog`]: open (epoch, checkpoint, fence, replay), group-commit
//!   appends with pipelined flushes acked in sequence order, reads.
//! - `format`: the byte layout of WAL and checkpoint objects.
//! - `state`: the state entries build: streams, batch index, key-value map.
//! - [`producers`]: idempotent writers' sequence checks.
//! - [`store`]: building object stores from URLs, call counters.
//! - [`faulty`]: a seeded store wrapper that delays, fails and lies, for tests.
//! - [`latency`]: an S3 latency model, for benchmarks on a local store.
//! - [`conformance`]: the suite every object store must pass to hold a log.

pub mod conformance;
pub mod faulty;
mod format;
pub mod latency;
pub mod log;
pub mod producers;
mod state;
pub mod store;

use bytes::Bytes;

pub use log::{
    Appended, Change, Follower, LogConfig, LogStats, Read, Rewrote, ShardLog, FENCE_WINDOW,
};
pub use producers::{AbortedTxn, Producer, ProducerState, Txn};
pub use state::{BatchLoc, ObjId};

/// A stream (a Kafka partition, to the layers above) within one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u64);

/// One state change. Every change to a shard is an entry in its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A batch of `offsets` offsets. `data` must begin with an 8-byte
    /// big-endian slot that the log overwrites with the assigned base offset
    /// (a Kafka batch's `baseOffset`); `base_offset` is ignored on append.
    /// With a `producer`, the append is checked against that producer's
    /// sequence: a retry is answered with its first offset, not appended.
    Append {
        stream: StreamId,
        base_offset: i64,
        offsets: u32,
        max_timestamp: i64,
        producer: Option<Producer>,
        data: Bytes,
    },
    CreateStream {
        stream: StreamId,
    },
    /// Drops a stream and its index; its data becomes garbage.
    DeleteStream {
        stream: StreamId,
    },
    /// Raises a stream's log start offset (retention, DeleteRecords).
    Truncate {
        stream: StreamId,
        log_start: i64,
    },
    /// Sets (`Some`) or removes (`None`) a metadata key.
    Put {
        key: Bytes,
        value: Option<Bytes>,
    },
    /// Compaction's result: the batches of `runs`, each in a WAL object below
    /// `wal_below` or in one of the data objects `sources` (rewritten because
    /// retention left them mostly empty), now live in data object `object`.
    Compact {
        object: ObjId,
        wal_below: u64,
        sources: Vec<ObjId>,
        runs: Vec<Run>,
    },
    /// Garbage deleted: unreferenced WAL objects below `wal_below`, and the
    /// objects in `forget`.
    Sweep {
        wal_below: u64,
        forget: Vec<ObjId>,
    },
    /// Adds `counts` (opaque to the log: a caller's usage meters) to the
    /// window starting at `window`. Windows are keyed by the caller; one
    /// already closed passes its count to the first open one. Appended
    /// meters are summed per window into one entry per flush, so they cost
    /// nothing per request and are durable with what they count.
    Meter {
        window: i64,
        counts: Vec<u64>,
    },
    /// Closes every window before `end`: no count joins it any more, and
    /// it waits, fixed, to be written out and then forgotten (`MeterDone`).
    MeterClose {
        end: i64,
    },
    /// Forgets a closed window (it has been written out).
    MeterDone {
        window: i64,
    },
    /// Forgets every producer whose last append was accepted before
    /// `before_ms` (wall clock) and that has no open transaction: expiry,
    /// as a point in the log, so a replay forgets the same ones there.
    ExpireProducers {
        before_ms: i64,
    },
    /// A caller's rewrite of one stream's batches (Kafka's key compaction):
    /// each batch still where the rewrite read it (same base offset, object
    /// and position) now lives in data object `object`, or is gone. A batch
    /// found elsewhere (compaction moved it, retention dropped it) is left
    /// as it is, so the entry means the same live and on replay.
    Rewrite {
        object: ObjId,
        stream: StreamId,
        /// Bytes of the data object.
        size: u32,
        batches: Vec<Rewritten>,
    },
}

/// One index entry of a [`Entry::Rewrite`] (a batch, or a run of them):
/// where it was, and its new place (`pos`, `len`) in the rewrite's object,
/// or `None` when it is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub base_offset: i64,
    pub was: (ObjId, u32),
    pub now: Option<(u32, u32)>,
    /// An entry of several batches some of which went: what is left.
    /// `None`: the same offsets and batches as before.
    pub left: Option<Left>,
}

/// The batches left of an index entry after a rewrite dropped some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    pub base_offset: i64,
    pub end_offset: i64,
    pub batches: u32,
    pub max_timestamp: i64,
}

/// Batches `from..to` of one stream, back to back in a data object, the last
/// ending at byte `end`, indexed by runs of up to `index_bytes` (0: one
/// entry per batch, for batches whose framing does not say where the next
/// one starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub stream: StreamId,
    pub from: i64,
    pub to: i64,
    pub end: u32,
    pub index_bytes: u32,
}

/// What callers can act on. Detail stays in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Another owner took the shard over; reopen (a new epoch) or give it up.
    #[error("shard fenced by a newer owner")]
    Fenced,
    /// The log hit an error it cannot retry past; nothing after the last
    /// acknowledged entry is acknowledged. Reopen the shard.
    #[error("shard log unavailable: {0}")]
    Unavailable(String),
    #[error("shard log closed")]
    Closed,
    #[error("unknown stream")]
    UnknownStream,
    #[error("offset out of range (log start {log_start}, high watermark {high_watermark})")]
    OffsetOutOfRange { log_start: i64, high_watermark: i64 },
    /// An idempotent append behind its producer's sequence that is not a
    /// retry of a remembered append.
    #[error("out of order sequence: {0}")]
    OutOfOrderSequence(String),
    /// An idempotent append ahead of its producer's sequence (or a new
    /// epoch not starting at 0, or past 0 from a producer that never wrote
    /// to the stream): an earlier append is missing, still on its way or
    /// failed retriably. Retriable: the client sends that one first.
    /// Not Kafka's OUT_OF_ORDER_SEQUENCE_NUMBER, which makes librdkafka bump
    /// its epoch and renumber every unacknowledged record, duplicating any
    /// whose earlier answer was lost although it was stored.
    #[error("sequence gap: {0}")]
    SequenceGap(String),
    /// An idempotent append from an epoch older than the producer's newest.
    #[error("producer {id} epoch {epoch} is older than its current epoch {current}")]
    InvalidProducerEpoch { id: i64, epoch: i16, current: i16 },
    /// An idempotent append not starting at sequence 0 from a producer the
    /// stream may have forgotten (expired, or known to a deleted stream a
    /// re-created topic carries on).
    #[error("unknown producer {id} at sequence {seq}: start again at 0")]
    UnknownProducer { id: i64, seq: i32 },
    #[error("corrupt object {path}: {why}")]
    Corrupt { path: String, why: String },
}
