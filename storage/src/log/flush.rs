//! The flusher: seals the open flush on the linger timer or the size
//! trigger, keeps up to `max_in_flight` PUTs going, acknowledges flushes
//! strictly in sequence order, poisons the log on a PUT it cannot complete,
//! and writes checkpoints.

use std::sync::Arc;

use object_store::PutPayload;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ckpt_path, put, wal_path, Core, Flush, Inner, Sealed, FENCE_WINDOW};
use crate::format::{self, WAL_HEADER_LEN};
use crate::{Entry, Error};

/// Seals the timer may make at once after a quiet spell (see `flusher`).
const PACE_BURST: u32 = 2;

/// Seals flushes, runs their PUTs and acknowledges them in sequence order.
pub(super) async fn flusher(inner: Arc<Inner>) {
    let (done_tx, mut done_rx) = mpsc::channel::<(u64, Result<(), Error>)>(FENCE_WINDOW as usize);
    // The linger paces seals rather than delaying each flush: seals sealed
    // by the timer conform to one per linger with a burst of PACE_BURST
    // (GCRA: `tat` is when the next seal would be due at the steady rate).
    // A flush on a quiet shard goes at once, one behind a burst waits; PUTs
    // per second stay at 1 / linger under the size trigger, plus the burst.
    let mut tat: Option<Instant> = None;
    let slack = inner.cfg.linger * (PACE_BURST - 1);
    loop {
        let deadline = {
            let mut core = inner.lock();
            if core.failed.is_some()
                || (core.closing && core.open.first_at.is_none() && core.in_flight.is_empty())
            {
                break;
            }
            let in_flight = core.in_flight.len();
            match core.open.first_at {
                Some(first) if in_flight < inner.cfg.max_in_flight => {
                    let due = tat.map_or(first, |t| first.max(t.checked_sub(slack).unwrap_or(t)));
                    let timer_may_seal = in_flight < inner.cfg.timer_in_flight;
                    let full = core.open.bytes >= inner.cfg.flush_bytes;
                    let now = Instant::now();
                    if core.closing || full || (timer_may_seal && now >= due) {
                        seal(&inner, &mut core, &done_tx);
                        tat = Some(tat.map_or(now, |t| t.max(now)) + inner.cfg.linger);
                        continue;
                    }
                    // Otherwise a completion, a kick (size trigger) or the
                    // timer wakes us.
                    timer_may_seal.then_some(due)
                }
                _ => None,
            }
        };
        // Biased: the simulation replays a seed with the same choices.
        tokio::select! {
            biased;
            Some((seq, res)) = done_rx.recv() => complete(&inner, seq, res),
            _ = inner.kick.notified() => {}
            _ = sleep_until(deadline) => {}
        }
    }
    let failed = inner.lock().failed.is_some();
    if failed {
        // Drain the PUTs still running so no task outlives the log unseen.
        drop(done_tx);
        while done_rx.recv().await.is_some() {}
    }
    inner.stopped.send_replace(true);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn seal(inner: &Arc<Inner>, core: &mut Core, done_tx: &mpsc::Sender<(u64, Result<(), Error>)>) {
    let mut flush = std::mem::take(&mut core.open);
    if !flush.meter.is_empty() {
        let meters = std::mem::take(&mut flush.meter)
            .into_iter()
            .map(|(window, counts)| Entry::Meter { window, counts });
        flush.entries.splice(0..0, meters);
    }
    let seq = core.next_seq;
    core.next_seq += 1;
    let chunks = format::encode_wal(inner.writer, seq, &flush.entries);
    let mut positions = Vec::with_capacity(chunks.len());
    let mut at = chunks[0].len() as u32;
    debug_assert!(chunks[0].len() >= WAL_HEADER_LEN);
    for c in &chunks[1..] {
        positions.push(at);
        at += c.len() as u32;
    }
    core.in_flight.insert(
        seq,
        Sealed {
            flush,
            positions,
            done: None,
        },
    );
    let payload = PutPayload::from_iter(chunks);
    core.wal_bytes_since_checkpoint += payload.content_length() as u64;
    let (inner, tx) = (inner.clone(), done_tx.clone());
    tokio::spawn(async move {
        let path = wal_path(&inner.prefix, seq);
        let res =
            put::create_resolved(&*inner.store, &path, payload, inner.writer, &inner.cfg).await;
        // The flusher drains this channel until every PUT has reported.
        let _ = tx.send((seq, res)).await;
    });
}

/// Records a PUT's outcome and acknowledges every flush now durable in order.
fn complete(inner: &Arc<Inner>, seq: u64, res: Result<(), Error>) {
    let mut core = inner.lock();
    if let Some(s) = core.in_flight.get_mut(&seq) {
        s.done = Some(res);
    }
    let mut advanced = false;
    let mut want_checkpoint = false;
    while let Some(mut first) = core.in_flight.first_entry() {
        let Some(res) = first.get_mut().done.take() else {
            break;
        };
        let (seq, sealed) = first.remove_entry();
        if let Err(e) = res {
            tracing::warn!(seq, error = %e, "flush failed; shard log poisoned");
            poison(&mut core, sealed, e);
            break;
        }
        let core = &mut *core;
        let mut pos = sealed.positions.iter();
        for e in &sealed.flush.entries {
            let p = if matches!(e, Entry::Append { .. }) {
                pos.next().copied().unwrap_or(0)
            } else {
                0
            };
            core.tail.forget_rewritten(e, &core.durable);
            core.durable.apply(e, seq, p);
            if let Entry::Append {
                stream,
                base_offset,
                data,
                ..
            } = e
            {
                core.tail.insert(*stream, *base_offset, data.clone());
            }
        }
        core.acked_seq = Some(seq);
        for ack in sealed.flush.acks {
            let _ = ack.send(Ok(()));
        }
        core.flushes_since_checkpoint += 1;
        if core.flushes_since_checkpoint >= inner.cfg.checkpoint_every
            && core.wal_bytes_since_checkpoint >= core.checkpoint_bytes
        {
            core.flushes_since_checkpoint = 0;
            core.wal_bytes_since_checkpoint = 0;
            want_checkpoint = true;
        }
        advanced = true;
    }
    drop(core);
    if advanced {
        inner.durable_tx.send_modify(|n| *n += 1);
    }
    if want_checkpoint {
        let inner = inner.clone();
        tokio::spawn(async move {
            if let Err(e) = checkpoint(&inner).await {
                tracing::warn!(error = %e, "checkpoint failed; replay will start further back");
            }
        });
    }
}

/// Fails `sealed`, every later flush and the open one: none of them can ever
/// be acknowledged, since acks go in sequence order.
fn poison(core: &mut Core, sealed: Sealed, e: Error) {
    let e = match e {
        Error::Fenced => Error::Fenced,
        other => Error::Unavailable(other.to_string()),
    };
    fail_pending(core, Some(sealed.flush), e);
}

/// Fails `first`, every flush in flight and the open one, in that order,
/// and poisons the log with `e`.
fn fail_pending(core: &mut Core, first: Option<Flush>, e: Error) {
    let later = std::mem::take(&mut core.in_flight)
        .into_values()
        .map(|s| s.flush);
    let open = std::mem::take(&mut core.open);
    for flush in first.into_iter().chain(later).chain(std::iter::once(open)) {
        for ack in flush.acks {
            let _ = ack.send(Err(e.clone()));
        }
    }
    core.failed = Some(e);
}

/// Poisons the log found fenced outside a flush (`ShardLog::check_owner`):
/// nothing in flight or open is acknowledged (what was written before the
/// fence may be durable; unacknowledged is allowed, the reverse is not).
pub(super) fn fence(core: &mut Core) {
    fail_pending(core, None, Error::Fenced);
}

/// Writes `ckpt/{seq}` for the newest durable flush this owner wrote. The
/// checkpoint counts only while `wal/{seq}` carries the same epoch.
pub(super) async fn checkpoint(inner: &Arc<Inner>) -> Result<(), Error> {
    // The state is copied under the lock and encoded outside it (on the
    // maintenance runtime, where the log has one): encoding a large index
    // takes milliseconds, and every append and acknowledgement waits for
    // this lock.
    let (seq, state) = {
        let core = inner.lock();
        // After a poison, objects past acked_seq may exist unacknowledged:
        // the checkpoint must name exactly the seq its state ends at.
        let Some(seq) = core.acked_seq.filter(|_| core.failed.is_none()) else {
            return Ok(());
        };
        debug_assert!(
            seq >= core.first_own_seq,
            "only own flushes are acknowledged"
        );
        (seq, core.durable.clone())
    };
    let calls = {
        let inner = inner.clone();
        async move {
            // A stale owner's checkpoint could name a state older than objects
            // a newer owner already swept; a stale owner that knows it writes
            // none.
            if inner.superseded().await? {
                return Err(Error::Fenced);
            }
            let body = format::encode_checkpoint(inner.writer, seq, inner.writer.epoch, &state);
            drop(state);
            let (path, bytes) = (ckpt_path(&inner.prefix, seq), body.len() as u64);
            put::create_checkpoint(&*inner.store, &path, body, inner.writer, &inner.cfg).await?;
            Ok(bytes)
        }
    };
    let written = super::background(inner.cfg.background.as_ref(), calls).await;
    if let Err(Error::Fenced) = written {
        // A newer epoch exists: whether its owner lives on or died before
        // fencing this one, this owner stops, so its shard is opened anew
        // (under a newer epoch still) rather than written on without
        // checkpoints or sweeps until something else reopens it.
        fence(&mut inner.lock());
    }
    let bytes = written?;
    inner
        .cfg
        .stats
        .checkpoints
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut core = inner.lock();
    core.checkpoint_bytes = bytes;
    if core.last_ckpt.is_none_or(|(s, _)| s < seq) {
        core.last_ckpt = Some((seq, Instant::now()));
    }
    if !core.own_ckpts.contains(&seq) {
        core.own_ckpts.push(seq);
    }
    Ok(())
}
