//! Idempotent writers. An append may name its producer (id, epoch, first
//! sequence number); each stream remembers, per producer, its epoch and the
//! sequence ranges of its last [`KEPT_BATCHES`] appends. That is enough to
//! answer a retried append with the offset it got the first time, and to
//! refuse a gap or a stale epoch. The state is built by the log's entries like
//! everything else, so a new owner knows every producer the old one did.
//!
//! The rules are Kafka's (ProducerStateManager), except that a producer the
//! stream does not know must start at sequence 0: one whose state expired gets
//! [`Error::UnknownProducer`] and restarts its sequence (KIP-360), instead of
//! having any sequence accepted and its retries silently duplicated.

use std::collections::VecDeque;

use crate::Error;

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
}

/// One remembered append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqBatch {
    pub first_seq: i32,
    pub offsets: u32,
    pub base_offset: i64,
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
        if self.batches.len() == KEPT_BATCHES {
            self.batches.pop_front();
        }
        self.batches.push_back(SeqBatch {
            first_seq: p.first_seq,
            offsets,
            base_offset,
        });
        self.last_timestamp = max_timestamp;
        self.last_append_ms = p.time_ms;
    }

    pub fn new(p: &Producer) -> Self {
        Self {
            epoch: p.epoch,
            batches: VecDeque::with_capacity(KEPT_BATCHES),
            last_timestamp: -1,
            last_append_ms: p.time_ms,
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
    /// A retry of a remembered append: answer with its base offset.
    Duplicate(i64),
}

/// Checks an append of `offsets` offsets by `p` against the producer's state.
pub fn check(state: Option<&ProducerState>, p: &Producer, offsets: u32) -> Result<Check, Error> {
    let Some(s) = state else {
        if p.first_seq != 0 {
            return Err(Error::UnknownProducer {
                id: p.id,
                seq: p.first_seq,
            });
        }
        return Ok(Check::Append);
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
            return Ok(Check::Duplicate(b.base_offset));
        }
    }
    if p.epoch < s.epoch {
        return Err(Error::InvalidProducerEpoch {
            id: p.id,
            epoch: p.epoch,
            current: s.epoch,
        });
    }
    if p.epoch > s.epoch {
        if p.first_seq != 0 {
            return Err(Error::OutOfOrderSequence(format!(
                "producer {} starts epoch {} at sequence {}, not 0",
                p.id, p.epoch, p.first_seq
            )));
        }
        return Ok(Check::Append);
    }
    match s.last_seq() {
        Some(l) if add_seq(l, 1) == p.first_seq => Ok(Check::Append),
        // A new epoch with nothing appended yet expects 0.
        None if p.first_seq == 0 => Ok(Check::Append),
        l => Err(Error::OutOfOrderSequence(format!(
            "producer {} epoch {}: sequence {} after {}",
            p.id,
            p.epoch,
            p.first_seq,
            l.map_or("nothing".to_string(), |l| l.to_string())
        ))),
    }
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
        }
    }

    fn append(
        s: &mut Option<ProducerState>,
        pr: Producer,
        n: u32,
        base: i64,
    ) -> Result<Check, Error> {
        let c = check(s.as_ref(), &pr, n)?;
        if c == Check::Append {
            s.get_or_insert_with(|| ProducerState::new(&pr))
                .record(&pr, base, n, 0);
        }
        Ok(c)
    }

    #[test]
    fn sequences_duplicates_gaps_and_epochs() {
        let mut s = None;
        // An unknown producer must start at 0.
        assert!(matches!(
            append(&mut s, p(0, 3), 1, 0),
            Err(Error::UnknownProducer { id: 7, seq: 3 })
        ));
        assert_eq!(append(&mut s, p(0, 0), 3, 10), Ok(Check::Append));
        assert_eq!(append(&mut s, p(0, 3), 2, 13), Ok(Check::Append));
        // A retry of either is answered with its offset, not appended.
        assert_eq!(append(&mut s, p(0, 0), 3, 99), Ok(Check::Duplicate(10)));
        assert_eq!(append(&mut s, p(0, 3), 2, 99), Ok(Check::Duplicate(13)));
        // Same first sequence, different length: not a retry, out of order.
        assert!(matches!(
            append(&mut s, p(0, 3), 1, 99),
            Err(Error::OutOfOrderSequence(_))
        ));
        // A gap.
        assert!(matches!(
            append(&mut s, p(0, 6), 1, 99),
            Err(Error::OutOfOrderSequence(_))
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
        assert_eq!(append(&mut s, p(0, 10), 1, 99), Ok(Check::Duplicate(20)));
        // A new epoch starts at 0 and fences the old one.
        assert!(matches!(
            append(&mut s, p(1, 11), 1, 99),
            Err(Error::OutOfOrderSequence(_))
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
        assert_eq!(
            append(&mut s, p(0, i32::MAX - 1), 4, 9),
            Ok(Check::Duplicate(1))
        );
    }
}
