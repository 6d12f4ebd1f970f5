//! Taking ownership of a shard, exactly as DESIGN.md's "The fenced log":
//!
//! 1. **Epoch**: create `epoch/{n+1}` with `PutMode::Create`, where n comes
//!    from a LIST (a hint only); on conflict try the next n. Epochs are unique.
//! 2. **Checkpoint**: newest `ckpt/{s}` whose `wal/{s}` carries its epoch.
//! 3. **Scan and fence**: from s+1, try to create a tombstone at each seq; an
//!    existing object is read and replayed if valid, and the first seq where
//!    our create succeeds is F. Tombstones then go at F+1..F+K. A stale owner's
//!    create anywhere in [F, F+K) fails, and since it acks in order it can
//!    never acknowledge anything at or after F.
//!
//! 4. **Check**: no newer epoch exists yet (see below).
//!
//! Validity while replaying: a tombstone raises the fence epoch; a data object
//! counts only if its epoch is at least the fence epoch seen so far.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use super::put::{self, Created};
use super::{ckpt_path, epoch_path, wal_path, LogConfig, Tail, FENCE_WINDOW};
use crate::format::{self, Writer};
use crate::state::State;
use crate::{Entry, Error};

/// Longest run of lost epoch races before giving up: each loss means another
/// owner just took the shard.
const MAX_EPOCH_RACES: u32 = 64;

pub(super) struct Opened {
    pub writer: Writer,
    pub state: State,
    /// First seq this owner writes data at (F + K).
    pub next_seq: u64,
    /// The newest replayed batches, to warm the read tail: bounded while
    /// replaying, so a long replay does not hold every object read.
    pub tail: Tail,
}

pub(super) async fn open(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    cfg: &LogConfig,
) -> Result<Opened, Error> {
    let writer = claim_epoch(&**store, prefix, cfg).await?;
    let (mut state, mut seq, mut fence_epoch) =
        match latest_checkpoint(&**store, prefix, cfg).await? {
            // A checkpoint by a newer owner means one took over while we were
            // claiming: we are the stale one, and must not write past its log.
            Some(c) if c.writer.epoch > writer.epoch || c.fence_epoch > writer.epoch => {
                return Err(Error::Fenced)
            }
            Some(c) => (c.state, c.seq + 1, c.fence_epoch),
            None => (State::default(), 0, 0),
        };
    let mut tail = Tail::new(cfg.tail_bytes);
    // Scan: replay until the first seq we can create.
    loop {
        let path = wal_path(prefix, seq);
        let tomb = PutPayload::from(format::encode_tombstone(writer, seq));
        match put::create_or_read(&**store, &path, tomb, writer, cfg).await? {
            Created::Ours => break,
            Created::Theirs(bytes) => {
                let obj = decode_at(&path, bytes, seq)?;
                if obj.writer.epoch > writer.epoch {
                    return Err(Error::Fenced);
                }
                apply(&mut state, &mut fence_epoch, &mut tail, &obj)
                    .map_err(|e| corrupt(&path, e))?;
                seq += 1;
            }
        }
    }
    let fence = seq;
    // Fence the rest of the in-flight window.
    for s in fence + 1..fence + FENCE_WINDOW {
        let path = wal_path(prefix, s);
        let tomb = PutPayload::from(format::encode_tombstone(writer, s));
        if let Created::Theirs(bytes) =
            put::create_or_read(&**store, &path, tomb, writer, cfg).await?
        {
            let w = format::object_writer(&bytes).map_err(|e| corrupt(&path, e))?;
            if w.epoch > writer.epoch {
                return Err(Error::Fenced);
            }
            // A stale owner's unacknowledged flush: below our fence, ignored.
        }
    }
    state.note_tombstone(writer.epoch, fence);
    // Nothing can exist past the window unless the scan fell into a hole a
    // sweep left (a checkpoint LIST did not show): then stop, never write.
    let past = wal_path(prefix, fence + FENCE_WINDOW);
    if put::exists(store.as_ref(), &past, cfg.put_timeout).await? {
        return Err(Error::Unavailable(format!(
            "{past} exists past a new fence: the log has a hole; not opening"
        )));
    }
    // A newer owner may have swept WAL objects this scan went past (it
    // started from an older checkpoint): a hole there would look like the
    // fence. Sweeping only follows a newer owner's claim, so seeing no newer
    // epoch now means no hole was ours to fall into.
    if put::newer_owner(store.as_ref(), prefix, writer.epoch, cfg.put_timeout).await? {
        return Err(Error::Fenced);
    }
    tracing::info!(%prefix, epoch = writer.epoch, fence, "shard opened");
    Ok(Opened {
        writer,
        state,
        next_seq: fence + FENCE_WINDOW,
        tail,
    })
}

/// The WAL object read at `seq`.
pub(super) fn decode_at(path: &Path, bytes: Bytes, seq: u64) -> Result<format::WalObject, Error> {
    let obj = format::decode_wal(bytes).map_err(|e| corrupt(path, e))?;
    if obj.seq != seq {
        return Err(corrupt(path, format::Corrupt("object names another seq")));
    }
    Ok(obj)
}

/// Applies the next WAL object by the validity rules: a tombstone raises
/// the fence epoch; a data object counts only if its epoch is at least the
/// fence epoch so far. Whether it was data that counted.
pub(super) fn apply(
    state: &mut State,
    fence_epoch: &mut u64,
    tail: &mut Tail,
    obj: &format::WalObject,
) -> Result<bool, format::Corrupt> {
    if obj.tombstone {
        *fence_epoch = (*fence_epoch).max(obj.writer.epoch);
        state.note_tombstone(obj.writer.epoch, obj.seq);
        return Ok(false);
    }
    if obj.writer.epoch < *fence_epoch {
        return Ok(false);
    }
    replay(state, tail, obj)?;
    Ok(true)
}

/// Applies a valid WAL object. Entries were checked when appended; replay
/// re-checks what would corrupt the state if an object were damaged.
fn replay(
    state: &mut State,
    tail: &mut Tail,
    obj: &format::WalObject,
) -> Result<(), format::Corrupt> {
    let mut pos = obj.positions.iter();
    for e in &obj.entries {
        let p = match e {
            Entry::Append {
                stream,
                base_offset,
                data,
                ..
            } => {
                let expected = state.streams.get(stream).map(|s| s.next_offset);
                if expected.is_some_and(|next| next != *base_offset) {
                    return Err(format::Corrupt("append offsets are not contiguous"));
                }
                if expected.is_some() {
                    tail.insert(*stream, *base_offset, data.clone());
                }
                pos.next().copied().unwrap_or(0)
            }
            _ => 0,
        };
        tail.forget_rewritten(e, state);
        state.apply(e, obj.seq, p);
    }
    Ok(())
}

async fn claim_epoch(
    store: &dyn ObjectStore,
    prefix: &Path,
    cfg: &LogConfig,
) -> Result<Writer, Error> {
    let listed = list(store, &prefix.clone().join("epoch"), cfg).await?;
    let mut epoch = listed
        .iter()
        .filter_map(|m| seq_of(&m.location))
        .max()
        .unwrap_or(0);
    let nonce = rand::random::<u64>();
    for _ in 0..MAX_EPOCH_RACES {
        epoch += 1;
        let writer = Writer { epoch, nonce };
        let body = PutPayload::from(format::encode_epoch(writer));
        if let Created::Ours =
            put::create_or_read(store, &epoch_path(prefix, epoch), body, writer, cfg).await?
        {
            return Ok(writer);
        }
    }
    Err(Error::Unavailable(format!(
        "lost {MAX_EPOCH_RACES} epoch races in a row"
    )))
}

/// The newest checkpoint whose WAL object carries its epoch. One that cannot
/// be read is an error, not skipped: WAL objects below it may be deleted, so
/// an older checkpoint could replay into a hole. (LIST must show every
/// completed checkpoint, as S3, GCS, Azure and file systems do; sweeping
/// relies on it, see `compact.rs`.)
pub(super) async fn latest_checkpoint(
    store: &dyn ObjectStore,
    prefix: &Path,
    cfg: &LogConfig,
) -> Result<Option<format::Checkpoint>, Error> {
    let listed = list(store, &prefix.clone().join("ckpt"), cfg).await?;
    let mut seqs: Vec<u64> = listed.iter().filter_map(|m| seq_of(&m.location)).collect();
    seqs.sort_unstable_by(|a, b| b.cmp(a));
    let mut skipped = 0;
    for seq in seqs {
        let path = ckpt_path(prefix, seq);
        let Some(body) = put::get(store, &path, cfg.put_timeout).await? else {
            continue;
        };
        if format::is_v1_checkpoint(&body) {
            continue;
        }
        skipped += 1;
        let ckpt = match format::decode_checkpoint(body) {
            Ok(c) if c.seq == seq => c,
            Ok(_) => {
                return Err(corrupt(
                    &path,
                    format::Corrupt("checkpoint names another seq"),
                ))
            }
            Err(e) => return Err(corrupt(&path, e)),
        };
        // Only the writer's header is needed.
        let wal =
            put::get_range(store, &wal_path(prefix, seq), Some(0..64), cfg.put_timeout).await?;
        let Some(wal) = wal else { continue };
        if format::object_writer(&wal).ok().map(|w| w.epoch) == Some(ckpt.writer.epoch) {
            return Ok(Some(ckpt));
        }
    }
    // Checkpoints exist but none is valid: WAL objects below them may be
    // gone, so replaying from seq 0 could fall into a hole. Fail closed.
    if skipped > 0 {
        return Err(Error::Unavailable(
            "no valid checkpoint among those listed; not opening".into(),
        ));
    }
    Ok(None)
}

/// LIST is a hint (its order is not guaranteed, and it may miss the newest
/// objects); callers only use it to choose where to start probing.
pub(super) async fn list(
    store: &dyn ObjectStore,
    dir: &Path,
    cfg: &LogConfig,
) -> Result<Vec<object_store::ObjectMeta>, Error> {
    match tokio::time::timeout(
        cfg.put_timeout,
        store.list(Some(dir)).try_collect::<Vec<_>>(),
    )
    .await
    {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(Error::Unavailable(format!("list {dir} timed out"))),
    }
}

fn seq_of(path: &Path) -> Option<u64> {
    path.filename()?.parse().ok()
}

fn unavailable(e: object_store::Error) -> Error {
    Error::Unavailable(e.to_string())
}

pub(super) fn corrupt(path: &Path, e: format::Corrupt) -> Error {
    Error::Corrupt {
        path: path.to_string(),
        why: e.to_string(),
    }
}
