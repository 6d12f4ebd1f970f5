//! Metering at the shard owner (`floe_tenants::usage` has the whole story).
//!
//! Produce counts its bytes in a `Meter` entry of the very append that
//! holds its batches. Charges (bytes out, requests, connection time) wait in
//! memory for the shard's usage tick, which also integrates stored bytes
//! and partitions over the time since the last tick: one append carries it
//! all, with the time it accrued up to (the key `u/accrued`, so a new owner
//! goes on from there, also counting the time the shard had no owner). The
//! tick then closes the windows that are over and writes their records.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use floe_storage::log::now_ms;
use floe_storage::Entry;
use floe_tenants::usage::{self, Counts, Record};
use object_store::ObjectStore;

use super::Shard;
use crate::Result;

/// When the integrals were last accrued to (ms since the epoch).
const ACCRUED: &[u8] = b"u/accrued";

/// A shard's usage in one window, and whether the window is closed (its
/// counts are final; its record is written or about to be).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    pub record: Record,
    pub closed: bool,
}

/// The window `at` falls in.
pub(super) fn window_of(at: i64, len: i64) -> i64 {
    at - at.rem_euclid(len)
}

/// The `Meter` entry counting `c` now.
pub(super) fn meter(c: &Counts, len: i64) -> Entry {
    Entry::Meter {
        window: window_of(now_ms(), len),
        counts: c.to_counts(),
    }
}

/// Meters the shard every `every` for as long as it stays open.
pub(super) async fn ticks(shard: Weak<Shard>, store: Arc<dyn ObjectStore>, every: Duration) {
    loop {
        let Some(s) = shard.upgrade() else { return };
        if s.log.failed().is_some() {
            return;
        }
        if let Err(e) = tick(&s, &*store, false).await {
            tracing::warn!(tenant = %s.tenant, error = %e, "metering");
        }
        drop(s);
        tokio::time::sleep(every).await;
    }
}

/// Counts what waited and what accrued, closes the windows that are over,
/// and writes the records of closed windows. Costs an append only when
/// there were charges or a window ended: stored bytes and partitions accrue
/// from the recorded time whenever the next append comes, so an idle
/// shard writes once per window. `last` closes the current window too (the
/// shard's data is about to go).
pub(super) async fn tick(shard: &Shard, store: &dyn ObjectStore, last: bool) -> Result<()> {
    let len = shard.usage_window_ms;
    let now = now_ms();
    let over = window_of(now, len) + if last { len } else { 0 };
    let close = over > shard.log.meters().0;
    let charged = std::mem::take(&mut *shard.lock_pending());
    let done = std::mem::take(&mut *shard.lock_written());
    if charged.is_zero() && !close && done.is_empty() {
        return write_closed(shard, store).await;
    }
    let from = shard
        .log
        .get(ACCRUED)
        .and_then(|v| Some(i64::from_be_bytes(v.as_ref().try_into().ok()?)))
        .unwrap_or(now)
        .min(now);
    let stored = shard.log.stored_bytes();
    let partitions = shard.partitions() as u64;
    let mut entries: Vec<Entry> = done
        .iter()
        .map(|&window| Entry::MeterDone { window })
        .collect();
    let mut total = charged;
    let mut t = from;
    while t < now {
        let w = window_of(t, len);
        let end = (w + len).min(now);
        let ms = (end - t) as u64;
        let c = Counts {
            stored_byte_seconds: (stored as u128 * ms as u128 / 1000) as u64,
            partition_ms: partitions * ms,
            ..Counts::default()
        };
        if !c.is_zero() {
            total.add(&c);
            entries.push(Entry::Meter {
                window: w,
                counts: c.to_counts(),
            });
        }
        t = end;
    }
    if !charged.is_zero() {
        entries.push(meter(&charged, len));
    }
    entries.push(Entry::Put {
        key: Bytes::from_static(ACCRUED),
        value: Some(Bytes::copy_from_slice(&now.to_be_bytes())),
    });
    if close {
        entries.push(Entry::MeterClose { end: over });
    }
    let appended = match shard.log.append(entries).await {
        Ok(a) => a,
        Err(e) => {
            // Nothing was accepted: all of it waits for the next tick.
            shard.lock_pending().add(&charged);
            shard.lock_written().extend(done);
            return Err(e.into());
        }
    };
    appended.durable().await?;
    shard.totals.add(&shard.tenant, &total);
    write_closed(shard, store).await
}

/// Writes the record of every closed window not written yet. The log
/// forgets them with the next tick's append (a new owner before then
/// finds the records already there).
async fn write_closed(shard: &Shard, store: &dyn ObjectStore) -> Result<()> {
    for w in windows(shard).into_iter().filter(|w| w.closed) {
        let r = &w.record;
        if shard.lock_written().contains(&r.start_ms) {
            continue;
        }
        usage::write_record(store, &shard.tenant, r)
            .await
            .map_err(|e| crate::WorkerError::Unavailable(format!("writing usage: {e}")))?;
        tracing::debug!(tenant = %shard.tenant, start_ms = r.start_ms, "usage record written");
        shard.lock_written().push(r.start_ms);
    }
    Ok(())
}

/// The shard's durable windows: closed ones not yet forgotten, and open ones.
pub(super) fn windows(shard: &Shard) -> Vec<Window> {
    let len = shard.usage_window_ms;
    let (open_from, windows) = shard.log.meters();
    windows
        .into_iter()
        .map(|(start_ms, counts)| Window {
            record: Record {
                tenant: shard.tenant.to_string(),
                shard: 0,
                start_ms,
                end_ms: start_ms + len,
                usage: Counts::from_counts(&counts),
            },
            closed: start_ms < open_from,
        })
        .collect()
}
