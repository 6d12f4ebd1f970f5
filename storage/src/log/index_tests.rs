//! Compaction's sparse index: entries for runs of batches, found inside
//! by their framing, read, looked up by time and rewritten like single ones.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{Change, LogConfig, ShardLog};
use crate::{Entry, StreamId};

/// One appended batch as the log stores it.
#[derive(Clone)]
struct Want {
    base: i64,
    end: i64,
    ts: i64,
    bytes: Bytes,
}

/// A batch framed as Kafka's: base offset, length, magic 2, last offset
/// delta and max timestamp are what the log reads; then `filler` bytes.
fn framed(offsets: u32, ts: i64, filler: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(61 + filler);
    b.put_i64(0);
    b.put_i32((49 + filler) as i32);
    b.put_i32(0);
    b.put_u8(2);
    b.put_bytes(0, 6);
    b.put_i32(offsets as i32 - 1);
    b.put_i64(ts);
    b.put_i64(ts);
    b.put_bytes(0, 18);
    b.put_bytes((ts % 251) as u8, filler);
    b.freeze()
}

fn with_base(b: &Bytes, base: i64) -> Bytes {
    let mut b = BytesMut::from(&b[..]);
    b[..8].copy_from_slice(&base.to_be_bytes());
    b.freeze()
}

/// What a read from `from` of up to `max_bytes` returns (at least one
/// batch), by the rules of `ShardLog::read`.
fn expected(want: &[Want], from: i64, max_bytes: usize) -> Vec<Bytes> {
    let mut total = 0;
    let mut out = Vec::new();
    for w in want.iter().filter(|w| w.end > from) {
        if total > 0 && total + w.bytes.len() > max_bytes {
            break;
        }
        total += w.bytes.len();
        out.push(w.bytes.clone());
    }
    out
}

/// Reads from every offset at three sizes, looks up timestamps, and
/// compares each answer with `want`.
async fn check_reads(log: &ShardLog, s: StreamId, want: &[Want]) {
    let end = want.last().expect("batches").end;
    for from in 0..end {
        for max in [1, 700, 1 << 20] {
            let got = log.read(s, from, max, true).await.expect("read");
            assert_eq!(
                got.batches,
                expected(want, from, max),
                "from {from}, {max} bytes"
            );
        }
    }
    let none = log.read(s, 0, 1, false).await.expect("read");
    assert!(none.batches.is_empty(), "without min_one a big batch waits");
    for ts in [-5, 0, 17, 333, 1_000, 1_999, 5_000] {
        let first = want.iter().find(|w| w.ts >= ts).map(|w| (w.base, w.ts));
        let got = log.offset_for_timestamp(s, ts).await.expect("by time");
        assert_eq!(got, first, "first batch at or after {ts}");
    }
    let best = want
        .iter()
        .max_by_key(|w| (w.ts, std::cmp::Reverse(w.base)))
        .map(|w| (w.end - 1, w.ts));
    assert_eq!(log.max_timestamp(s).await.expect("max"), best);
}

#[tokio::test]
async fn compaction_indexes_runs_of_batches_and_reads_still_find_each() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let cfg = LogConfig {
        linger: Duration::ZERO,
        compact_max_objects: 8,
        compact_after: Duration::ZERO,
        maintain_every: Duration::from_millis(10),
        index_bytes: 2_000,
        block_bytes: 4096,
        ..LogConfig::default()
    };
    let log = ShardLog::open(store.clone(), Path::from("s"), cfg.clone())
        .await
        .expect("open");
    let s = log.allocate_stream();
    let other = log.allocate_stream();
    let create = [s, other].map(|stream| Entry::CreateStream { stream });
    let a = log.append(create.to_vec()).await.expect("create");
    a.durable().await.expect("durable");

    // 200 batches in 25 WAL objects, each with a batch of another stream;
    // 1-3 offsets and 100-400 bytes each, timestamps out of order.
    let mut want = Vec::new();
    for o in 0..25i64 {
        let mut entries = Vec::new();
        let mut made = Vec::new();
        for i in 0..8i64 {
            let n = o * 8 + i;
            let (offsets, ts) = ((n % 3 + 1) as u32, (n * 37) % 2_000);
            let data = framed(offsets, ts, 40 + (n as usize * 71) % 300);
            made.push((offsets, ts, data.clone()));
            entries.push(Entry::Append {
                stream: s,
                base_offset: 0,
                offsets,
                max_timestamp: ts,
                producer: None,
                data,
            });
        }
        entries.push(Entry::Append {
            stream: other,
            base_offset: 0,
            offsets: 1,
            max_timestamp: 0,
            producer: None,
            data: Bytes::from(vec![9u8; 100]),
        });
        let a = log.append(entries).await.expect("append");
        for ((offsets, ts, data), &base) in made.iter().zip(&a.base_offsets) {
            want.push(Want {
                base,
                end: base + *offsets as i64,
                ts: *ts,
                bytes: with_base(data, base),
            });
        }
        a.durable().await.expect("durable");
    }
    let end = want.last().expect("batches").end;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while log.first_uncompacted(s) < end {
        assert!(tokio::time::Instant::now() < deadline, "not compacted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    {
        let core = log.inner.lock();
        let d = &core.durable;
        let locs = &d.streams[&s].locs;
        let total: u64 = want.iter().map(|w| w.bytes.len() as u64).sum();
        // Each entry but a run's last holds over 2,000 - 400 bytes.
        let runs = cfg.stats.compactions.load(Relaxed) as usize;
        assert!(
            locs.len() <= (total / 1_600) as usize + runs,
            "{} entries for {total} bytes in {runs} compactions",
            locs.len()
        );
        assert!(locs.iter().all(|l| l.batches == 1 || l.len <= 2_000));
        assert_eq!(locs.iter().map(|l| l.batches).sum::<u32>(), 200);
        // Batches without Kafka's framing keep an entry each.
        assert_eq!(d.streams[&other].locs.len(), 25);
        let mut rebuilt = d.clone();
        rebuilt.rebuild_derived();
        assert_eq!((&rebuilt.refs, rebuilt.bytes), (&d.refs, d.bytes));
    }
    // The tail still has every batch: entries of several are served from it.
    check_reads(&log, s, &want).await;
    // retention.bytes drops whole entries while that many bytes stay.
    let total: u64 = want.iter().map(|w| w.bytes.len() as u64).sum();
    assert_eq!(log.retention_point(s, None, Some(total)), None);
    assert_eq!(log.retention_point(s, None, Some(total - 1)), None);
    assert_eq!(log.retention_point(s, None, Some(0)), Some(end));

    // A rewrite drops every fifth batch (not the last) and shortens every
    // seventh, inside entries of several, while the tail holds them all.
    let mut after = Vec::new();
    let (mut at, mut calls) = (0, 0);
    while at < end {
        let r = log
            .rewrite(s, at, end, 3_000, |b| {
                let base = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                let i = want.iter().position(|w| w.base == base).expect("a batch");
                let mut w = want[i].clone();
                if i % 5 == 2 {
                    return Change::Drop;
                }
                if i % 7 == 3 {
                    let mut short = BytesMut::from(&b[..61]);
                    short[8..12].copy_from_slice(&49i32.to_be_bytes());
                    w.bytes = short.freeze();
                    after.push(w.clone());
                    return Change::Replace(w.bytes);
                }
                after.push(w);
                Change::Keep
            })
            .await
            .expect("rewrite");
        assert!(r.batches_read > 0);
        at = r.next;
        calls += 1;
    }
    assert!(calls > 1, "a call takes about max_bytes");
    check_reads(&log, s, &after).await;
    log.close().await.expect("close");

    // A new owner, from the checkpoint and the WAL, with nothing in memory.
    let cfg = LogConfig {
        tail_bytes: 0,
        read_cache_bytes: 0,
        compact_bytes: 0,
        ..cfg
    };
    let log = ShardLog::open(store.clone(), Path::from("s"), cfg.clone())
        .await
        .expect("reopen");
    check_reads(&log, s, &after).await;
    log.close().await.expect("close");

    // A data object whose batches no longer frame as their entry says
    // (here: one batch's offset span changed) is corrupt, not misread.
    let loc = {
        let log = ShardLog::open(store.clone(), Path::from("s"), cfg.clone())
            .await
            .expect("reopen");
        let loc = log.inner.lock().durable.streams[&s].locs[1];
        log.close().await.expect("close");
        loc
    };
    assert!(loc.batches > 1);
    let path = super::obj_path(&Path::from("s"), loc.obj);
    let mut obj = BytesMut::from(
        &store
            .get(&path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes")[..],
    );
    let at = loc.pos as usize + 23;
    let delta = i32::from_be_bytes(obj[at..at + 4].try_into().expect("4 bytes"));
    obj[at..at + 4].copy_from_slice(&(delta + 1).to_be_bytes());
    store.put(&path, obj.freeze().into()).await.expect("put");
    let log = ShardLog::open(store, Path::from("s"), cfg)
        .await
        .expect("reopen");
    let err = log
        .read(s, loc.base_offset, 1 << 20, true)
        .await
        .expect_err("corrupt");
    assert!(matches!(err, crate::Error::Corrupt { .. }), "{err}");
    let other = log
        .read(s, loc.end_offset(), 1, true)
        .await
        .expect("the entries after it read");
    assert!(!other.batches.is_empty());
    log.close().await.expect("close");
}
