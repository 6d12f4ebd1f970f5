//! Idempotent writers. An append may name its producer (id, epoch, first
//! sequence number); each stream remembers, per producer, its epoch and the
//! sequence ranges of its last [`KEPT_BATCHES`] appends. That is enough to
//! answer a retried append with the offset it got the first time, and to
//! refuse a gap or a stale epoch. The state is built by the log's entries like
//! everything else, so a new owner knows every producer the old one did.
//!
//! Transactions: an append may be part of its producer's open transaction on
//! the stream ([`Txn::Data`]; the first one opens it), or a marker that ends
//! it ([`Txn::Commit`], [`Txn::Abort`]). The stream keeps each open
//! transaction's first offset (the last stable offset is the lowest) and the
//! offset ranges of aborted ones, for read-committed readers.
//!
//! The rules are Kafka's (ProducerStateManager), except in two places. A
//! producer the stream does not know must start at sequence 0: one whose
//! state may have expired gets [`Error::UnknownProducer`] and restarts its
//! sequence (KIP-360), instead of having any sequence accepted and its
//! retries silently duplicated. And an append ahead of the sequence is
//! [`Error::SequenceGap`], retriable, not out of order (see there); so is
//! one past 0 from a producer that never wrote to the stream, whose earlier
//! batch is still on its way.

use std::collections::VecDeque;

use crate::Error;

/// The metadata key under which the shard's owner of producer ids keeps
/// the end of its newest block (an `i64`, big-endian): every id it ever
/// handed out is below it.
pub const IDS_HANDED_OUT_KEY: &[u8] = b"p/next";

/// The end [`IDS_HANDED_OUT_KEY`] records, from its value; 0 without one.
pub fn ids_handed_out(value: Option<&[u8]>) -> i64 {
    value
        .and_then(|v| Some(i64::from_be_bytes(v.try_into().ok()?)))
        .unwrap_or(0)
}

/// Appends remembered per producer and stream: Kafka's bound on an
/// idempotent producer's batches in flight per partition.
pub const KEPT_BATCHES: usize = 5;

/// Who wrote an idempotent append and where it sits in the writer's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Producer {
    pub id: i64,
    pub epoch: i16,
    /// Sequence number of the append's first offset; each further offset
    /// takes the next, wrapping from `i32::MAX` to 0.
    pub first_seq: i32,
    /// Wall-clock milliseconds when the owner accepted the append, for
    /// expiry. Set by the caller so replay sees the same value.
    pub time_ms: i64,
    pub txn: Txn,
}

/// An append's part in its producer's transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Txn {
    /// Not transactional.
    No,
    /// Records of the producer's open transaction (the first opens it).
    Data,
    /// Markers ending the open transaction. Not sequence-checked; their
    /// epoch may be newer than the producer's (a coordinator fencing it).
    Commit,
    Abort,
}

impl Txn {
    pub fn is_marker(self) -> bool {
        matches!(self, Txn::Commit | Txn::Abort)
    }
}

/// An aborted transaction's records on one stream: offsets
/// `first_offset..=last_offset` of `producer_id` (the last is its marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// One remembered append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqBatch {
    pub first_seq: i32,
    pub offsets: u32,
    pub base_offset: i64,
    /// As stored: a retry is answered with it (-1 when a checkpoint from
    /// before it was kept did not say).
    pub max_timestamp: i64,
}

impl SeqBatch {
    pub fn last_seq(&self) -> i32 {
        add_seq(self.first_seq, self.offsets.saturating_sub(1))
    }
}

/// What a stream knows of one producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerState {
    pub epoch: i16,
    /// Oldest first; at most [`KEPT_BATCHES`], all of `epoch`.
    pub batches: VecDeque<SeqBatch>,
    /// The newest append's largest record timestamp.
    pub last_timestamp: i64,
    /// When the owner accepted the newest append (ms since the epoch).
    pub last_append_ms: i64,
    /// First offset of the producer's open transaction on this stream.
    pub open_txn: Option<i64>,
}

impl ProducerState {
    pub fn last_seq(&self) -> Option<i32> {
        self.batches.back().map(SeqBatch::last_seq)
    }

    /// Records an accepted append (the caller checked it).
    pub fn record(&mut self, p: &Producer, base_offset: i64, offsets: u32, max_timestamp: i64) {
        if p.epoch != self.epoch {
            self.epoch = p.epoch;
            self.batches.clear();
        }
        self.last_append_ms = p.time_ms;
        match p.txn {
            Txn::Commit | Txn::Abort => {
                self.open_txn = None;
                return;
            }
            Txn::Data => {
                self.open_txn.get_or_insert(base_offset);
            }
            Txn::No => {}
        }
        if self.batches.len() == KEPT_BATCHES {
            self.batches.pop_front();
        }
        self.batches.push_back(SeqBatch {
            first_seq: p.first_seq,
            offsets,
            base_offset,
            max_timestamp,
        });
        self.last_timestamp = max_timestamp;
    }

    pub fn new(p: &Producer) -> Self {
        Self {
            epoch: p.epoch,
            batches: VecDeque::with_capacity(KEPT_BATCHES),
            last_timestamp: -1,
            last_append_ms: p.time_ms,
            open_txn: None,
        }
    }
}

/// `seq` advanced by `n`, wrapping from `i32::MAX` to 0 as Kafka does.
pub fn add_seq(seq: i32, n: u32) -> i32 {
    let room = (i32::MAX - seq) as u32;
    if n > room {
        (n - room - 1) as i32
    } else {
        seq + n as i32
    }
}

/// How an idempotent append relates to what the stream has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Next in sequence (or the first of a new epoch): append it.
    Append,
    /// A retry of a remembered append: answer with its base offset and
    /// max timestamp.
    Duplicate {
        base_offset: i64,
        max_timestamp: i64,
    },
}

/// Checks an append of `offsets` offsets by `p` against the producer's state.
/// `forgotten_below` is the stream's bound on the ids of producers it may
/// have forgotten (`StreamState::forgotten_below`).
pub fn check(
    state: Option<&ProducerState>,
    forgotten_below: i64,
    p: &Producer,
    offsets: u32,
) -> Result<Check, Error> {
    if p.txn.is_marker() {
        return match state {
            Some(s) if p.epoch < s.epoch => Err(Error::InvalidProducerEpoch {
                id: p.id,
                epoch: p.epoch,
                current: s.epoch,
            }),
            _ => Ok(Check::Append),
        };
    }
    let Some(s) = state else {
        if p.first_seq == 0 {
            return Ok(Check::Append);
        }
        // (A bound of i64::MAX says nothing: any producer may have been
        // forgotten.)
        if p.id >= forgotten_below && forgotten_below < i64::MAX {
            // Never wrote here: its first batch is still on its way.
            return Err(Error::SequenceGap(format!(
                "producer {} epoch {}: sequence {}, expected 0 (new to the stream)",
                p.id, p.epoch, p.first_seq
            )));
        }
        return Err(Error::UnknownProducer {
            id: p.id,
            seq: p.first_seq,
        });
    };
    let last = add_seq(p.first_seq, offsets.saturating_sub(1));
    // Retries first, as Kafka does: a remembered append of the current
    // epoch is answered before any sequence check.
    if p.epoch == s.epoch {
        if let Some(b) = s
            .batches
            .iter()
            .find(|b| b.first_seq == p.first_seq && b.last_seq() == last)
        {
            return Ok(Check::Duplicate {
                base_offset: b.base_offset,
                max_timestamp: b.max_timestamp,
            });
        }
    }
    if p.epoch < s.epoch {
        return Err(Error::InvalidProducerEpoch {
            id: p.id,
            epoch: p.epoch,
            current: s.epoch,
        });
    }
    // A new epoch, or one with nothing appended yet, expects 0.
    let expected = match s.last_seq() {
        Some(l) if p.epoch == s.epoch => add_seq(l, 1),
        _ => 0,
    };
    if p.first_seq == expected {
        return Ok(Check::Append);
    }
    let why = format!(
        "producer {} epoch {}: sequence {}, expected {expected}",
        p.id, p.epoch, p.first_seq
    );
    if ahead(expected, p.first_seq) {
        Err(Error::SequenceGap(why))
    } else {
        Err(Error::OutOfOrderSequence(why))
    }
}

/// Whether `seq` is ahead of `expected` (by less than half the sequence
/// space, as sequences wrap from `i32::MAX` to 0).
fn ahead(expected: i32, seq: i32) -> bool {
    let distance = if seq >= expected {
        seq - expected
    } else {
        (i32::MAX - expected) + seq + 1
    };
    distance > 0 && distance <= i32::MAX / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(epoch: i16, first_seq: i32) -> Producer {
        Producer {
            id: 7,
            epoch,
            first_seq,
            time_ms: 0,
            txn: Txn::No,
        }
    }

    fn append(
        s: &mut Option<ProducerState>,
        pr: Producer,
        n: u32,
        base: i64,
    ) -> Result<Check, Error> {
        let c = check(s.as_ref(), 8, &pr, n)?;
        if c == Check::Append {
            s.get_or_insert_with(|| ProducerState::new(&pr))
                .record(&pr, base, n, base + 1000);
        }
        Ok(c)
    }

    /// What a retry of the append at `base_offset` is answered with.
    fn dup(base_offset: i64) -> Check {
        Check::Duplicate {
            base_offset,
            max_timestamp: base_offset + 1000,
        }
    }

    #[test]
    fn sequences_duplicates_gaps_and_epochs() {
        let mut s = None;
        // An unknown producer must start at 0. Past 0, one the stream may
        // have forgotten (id 7 below the bound 8) must start again; one it
        // never knew is ahead of its first batch.
        assert!(matches!(
            append(&mut s, p(0, 3), 1, 0),
            Err(Error::UnknownProducer { id: 7, seq: 3 })
        ));
        assert!(matches!(
            check(None, 7, &p(0, 3), 1),
            Err(Error::SequenceGap(_))
        ));
        assert_eq!(append(&mut s, p(0, 0), 3, 10), Ok(Check::Append));
        assert_eq!(append(&mut s, p(0, 3), 2, 13), Ok(Check::Append));
        // A retry of either is answered with its offset, not appended.
        assert_eq!(append(&mut s, p(0, 0), 3, 99), Ok(dup(10)));
        assert_eq!(append(&mut s, p(0, 3), 2, 99), Ok(dup(13)));
        // Same first sequence, different length: not a retry, out of order.
        assert!(matches!(
            append(&mut s, p(0, 3), 1, 99),
            Err(Error::OutOfOrderSequence(_))
        ));
        // A gap: retriable, an earlier append is on its way.
        assert!(matches!(
            append(&mut s, p(0, 6), 1, 99),
            Err(Error::SequenceGap(_))
        ));
        assert_eq!(append(&mut s, p(0, 5), 1, 15), Ok(Check::Append));
        // Only the last five are remembered.
        for i in 0..5 {
            assert_eq!(
                append(&mut s, p(0, 6 + i), 1, 16 + i as i64),
                Ok(Check::Append)
            );
        }
        assert!(matches!(
            append(&mut s, p(0, 5), 1, 99),
            Err(Error::OutOfOrderSequence(_))
        ));
        assert_eq!(append(&mut s, p(0, 10), 1, 99), Ok(dup(20)));
        // A new epoch starts at 0 and fences the old one.
        assert!(matches!(
            append(&mut s, p(1, 11), 1, 99),
            Err(Error::SequenceGap(_))
        ));
        assert_eq!(append(&mut s, p(1, 0), 1, 21), Ok(Check::Append));
        assert!(matches!(
            append(&mut s, p(0, 11), 1, 99),
            Err(Error::InvalidProducerEpoch {
                epoch: 0,
                current: 1,
                ..
            })
        ));
        // Old-epoch retries are fenced too, not answered.
        assert!(matches!(
            append(&mut s, p(0, 10), 1, 99),
            Err(Error::InvalidProducerEpoch { .. })
        ));
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        assert_eq!(add_seq(i32::MAX, 1), 0);
        assert_eq!(add_seq(i32::MAX - 1, 3), 1);
        assert_eq!(add_seq(5, 0), 5);
        let mut s = None;
        append(&mut s, p(0, 0), 1, 0).expect("first");
        // Jump the state to just before the wrap.
        let st = s.as_mut().expect("state");
        st.batches.back_mut().expect("one batch").first_seq = i32::MAX - 2;
        assert_eq!(append(&mut s, p(0, i32::MAX - 1), 4, 1), Ok(Check::Append));
        // MAX-1, MAX, 0, 1.
        assert_eq!(s.as_ref().and_then(ProducerState::last_seq), Some(1));
        assert_eq!(append(&mut s, p(0, 2), 1, 5), Ok(Check::Append));
        assert_eq!(append(&mut s, p(0, i32::MAX - 1), 4, 9), Ok(dup(1)));
        // Ahead and behind, across the wrap.
        assert!(ahead(i32::MAX, 0) && ahead(i32::MAX - 1, 1) && ahead(3, 10));
        assert!(!ahead(3, 3) && !ahead(3, 2) && !ahead(0, i32::MAX) && !ahead(3, i32::MAX));
        assert!(matches!(
            append(&mut s, p(0, 9), 1, 9),
            Err(Error::SequenceGap(_))
        ));
        assert!(matches!(
            append(&mut s, p(0, i32::MAX), 1, 9),
            Err(Error::OutOfOrderSequence(_))
        ));
    }

    #[test]
    fn transactions_set_the_last_stable_offset_and_record_aborts() {
        use crate::state::State;
        use crate::{Entry, StreamId};
        let stream = StreamId(0);
        let mut st = State::default();
        st.apply(&Entry::CreateStream { stream }, 0, 0);
        let mut next = 0;
        let mut append = |st: &mut State, id: i64, txn: Txn, seq: i32, n: u32| {
            let e = Entry::Append {
                stream,
                base_offset: next,
                offsets: n,
                max_timestamp: 0,
                producer: Some(Producer {
                    id,
                    epoch: 0,
                    first_seq: seq,
                    time_ms: 0,
                    txn,
                }),
                data: bytes::Bytes::from_static(b"12345678"),
            };
            next += n as i64;
            st.apply(&e, 1, 0);
        };
        let s = |st: &State| st.streams[&stream].clone();
        append(&mut st, 1, Txn::No, 0, 2); // 0..2, not transactional
        assert_eq!(s(&st).last_stable(), 2);
        append(&mut st, 2, Txn::Data, 0, 3); // 2..5 opens producer 2's
        append(&mut st, 3, Txn::Data, 0, 1); // 5 opens producer 3's
        append(&mut st, 2, Txn::Data, 3, 1); // 6
        assert_eq!(s(&st).last_stable(), 2);
        append(&mut st, 2, Txn::Abort, -1, 1); // marker at 7
        assert_eq!(s(&st).last_stable(), 5, "producer 3's is still open");
        assert_eq!(
            s(&st).aborted,
            vec![AbortedTxn {
                producer_id: 2,
                first_offset: 2,
                last_offset: 7
            }]
        );
        append(&mut st, 3, Txn::Commit, -1, 1); // marker at 8
        assert_eq!(s(&st).last_stable(), 9);
        assert_eq!(s(&st).aborted.len(), 1, "commits are not recorded");
        assert_eq!(s(&st).producers[&3].open_txn, None);
        // The derived index comes back from the producers (checkpoints).
        let mut open = st.clone();
        append(&mut open, 1, Txn::Data, 2, 1); // 9 opens producer 1's
        let want = s(&open).open_txns;
        open.rebuild_derived();
        assert_eq!(s(&open).open_txns, want);
        assert_eq!(s(&open).last_stable(), 9);
        // Retention forgets aborted transactions wholly below the log start.
        st.apply(
            &Entry::Truncate {
                stream,
                log_start: 8,
            },
            2,
            0,
        );
        assert!(s(&st).aborted.is_empty());
    }

    #[test]
    fn markers_are_not_sequence_checked_but_fence_older_epochs() {
        let mut s = None;
        append(&mut s, p(1, 0), 2, 0).expect("data");
        let marker = |epoch| Producer {
            txn: Txn::Commit,
            ..p(epoch, -1)
        };
        assert_eq!(check(s.as_ref(), 0, &marker(1), 1), Ok(Check::Append));
        assert_eq!(check(s.as_ref(), 0, &marker(2), 1), Ok(Check::Append));
        assert!(matches!(
            check(s.as_ref(), 0, &marker(0), 1),
            Err(Error::InvalidProducerEpoch { .. })
        ));
        assert_eq!(check(None, 0, &marker(0), 1), Ok(Check::Append));
    }
}
