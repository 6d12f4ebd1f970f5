//! Deterministic simulation of the shard log under a faulty store.
//!
//! Each seed runs owners one after another on one in-memory store wrapped in
//! [`Faulty`] (delays that reorder, failures before and after acting, hangs
//! past the PUT timeout). An owner is either closed, or abandoned while its
//! producers keep writing (a paused owner that wakes up as a zombie) when the
//! next owner takes over. Then a clean owner reads everything back and the
//! history is checked:
//! - every acknowledged batch is present exactly once, at its acknowledged offset;
//! - offsets are contiguous from 0 to the high watermark;
//! - every batch any reader ever saw has the same bytes at the same offset;
//! - the metadata key written with each batch exists exactly when the batch does;
//! - so do the meter counts appended with it: the log's meter totals are
//!   exactly those of the batches whose keys exist (windows closing now and
//!   then on the way), never a count dropped or counted twice;
//! - replaying from seq 0 (checkpoints deleted) gives the same log as replaying
//!   from the newest checkpoint.
//!
//! Owners also open concurrently (a racer beside the round's owner), and the
//! store pauses, loses LIST entries, and lands PUTs after their caller gave up.
//!
//! Compaction, sweeping and retention run concurrently with all of it, with
//! small targets so they happen often: owners compact and delete in the
//! background, and a trimmer raises the log start now and then. The checks
//! then allow exactly what retention drops (batches wholly below the final
//! log start) and no more; a batch the index references but the store lost
//! fails the final read. Replay from seq 0 is compared only for seeds that
//! delete nothing (deleted WAL objects cannot be replayed).
//!
//! Half the seeds also rewrite batches as key compaction does
//! (`ShardLog::rewrite`) while all that goes on: batches whose id is 3 mod 7
//! are dropped, those 1 mod 5 lose their filler. The checks then allow
//! exactly those: a gap readers step over only where the rewriter dropped a
//! batch (its key stays), and a batch reads as itself or its shrunk form.
//!
//! `FLOE_SIM_SEEDS=N` sets how many seeds run (default 2,000; `scripts/test`
//! runs 10,000); `FLOE_SIM_SEED=S` replays one seed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use floe_storage::faulty::{Faults, Faulty};
use floe_storage::producers::Txn;
use floe_storage::{Change, Entry, Error, LogConfig, Producer, ShardLog, StreamId};
use futures::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

const STREAM: StreamId = StreamId(0);

#[derive(Default)]
struct History {
    /// Acknowledged batches: id → base offset.
    acked: HashMap<u64, i64>,
    /// Offsets assigned to every appended batch: id → (base, offsets).
    assigned: HashMap<u64, (i64, u32)>,
    /// Every batch any read returned: base offset → bytes.
    seen: HashMap<i64, Bytes>,
    /// Bytes metered with each appended batch: id → bytes.
    metered: HashMap<u64, u64>,
    /// Batches a rewrite read and dropped: base offset → offsets.
    dropped: std::collections::BTreeMap<i64, u32>,
    violations: Vec<String>,
}

/// A batch framed as Kafka's (the fields the log reads: base offset,
/// length, magic, last offset delta, max timestamp), so compaction indexes
/// runs of them; its id in the producer id's slot.
fn batch(id: u64, offsets: u32, filler: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER + filler);
    b.put_i64(-1);
    b.put_i32((HEADER - 12 + filler) as i32);
    b.put_i32(0);
    b.put_u8(2);
    b.put_bytes(0, 6);
    b.put_i32(offsets as i32 - 1);
    b.put_i64(id as i64);
    b.put_i64(id as i64);
    b.put_u64(id);
    b.put_bytes(0, HEADER - 51);
    b.put_bytes((id % 251) as u8, filler);
    b.freeze()
}

/// Bytes of `batch`'s header.
const HEADER: usize = 61;

/// Batches a rewrite drops.
fn droppable(id: u64) -> bool {
    id % 7 == 3
}

/// A batch as a rewrite leaves it: shrinkable ones without their filler.
fn canonical(b: &Bytes) -> Bytes {
    if id_of(b) % 5 == 1 {
        let mut short = BytesMut::from(&b[..HEADER]);
        short[8..12].copy_from_slice(&(HEADER as i32 - 12).to_be_bytes());
        short.freeze()
    } else {
        b.clone()
    }
}

/// Whether `from..to` is covered by batches a rewrite dropped: a gap it
/// may have left.
fn dropped_gap(dropped: &std::collections::BTreeMap<i64, u32>, from: i64, to: i64) -> bool {
    // `from` may be inside the first (a log start raised into it).
    let mut at = from;
    while at < to {
        match dropped.range(..=at).next_back() {
            Some((&base, &n)) if base + n as i64 > at => at = base + n as i64,
            _ => return false,
        }
    }
    true
}

/// Key compaction's stand-in: now and then, rewrites the stream as
/// `droppable` and `canonical` say.
async fn rewrite(log: ShardLog, h: Arc<Mutex<History>>, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
        let Ok((start, hw)) = log.offsets(STREAM) else {
            continue;
        };
        let mut at = start;
        while at < hw {
            let r = log
                .rewrite(STREAM, at, hw, rng.random_range(50..4000), |b| {
                    if droppable(id_of(b)) {
                        let base = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                        let mut h = h.lock().expect("history");
                        h.dropped.insert(base, offsets_of(b));
                        Change::Drop
                    } else if canonical(b).len() < b.len() {
                        Change::Replace(canonical(b))
                    } else {
                        Change::Keep
                    }
                })
                .await;
            match r {
                Ok(r) if r.batches_read > 0 => at = r.next,
                _ => return,
            }
        }
    }
}

fn id_of(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[43..51].try_into().expect("8 bytes"))
}

fn offsets_of(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[23..27].try_into().expect("4 bytes")) + 1
}

async fn open(store: Arc<dyn ObjectStore>, cfg: &LogConfig) -> Option<ShardLog> {
    for _ in 0..20 {
        match ShardLog::open(store.clone(), Path::from("shard"), cfg.clone()).await {
            Ok(log) => return Some(log),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    None
}

async fn ensure_stream(log: &ShardLog) -> Result<(), Error> {
    if log.offsets(STREAM).is_ok() {
        return Ok(());
    }
    log.append(vec![Entry::CreateStream { stream: STREAM }])
        .await?
        .durable()
        .await
}

async fn produce(log: ShardLog, h: Arc<Mutex<History>>, ids: Vec<u64>, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    for id in ids {
        let offsets = rng.random_range(1..5);
        let data = batch(id, offsets, rng.random_range(0..300));
        let e = Entry::Append {
            stream: STREAM,
            base_offset: 0,
            offsets,
            max_timestamp: id as i64,
            producer: None,
            data,
        };
        // The key commits with the batch, or neither does.
        let put = Entry::Put {
            key: key_of(id),
            value: Some(Bytes::from(id.to_be_bytes().to_vec())),
        };
        // So do the meters counting it.
        let counted = offsets as u64 * 1000 + id;
        let mut entries = vec![
            e,
            put,
            Entry::Meter {
                window: id as i64 * 10,
                counts: vec![counted, 1],
            },
        ];
        if id % 5 == 0 {
            entries.push(Entry::MeterClose {
                end: id as i64 * 10,
            });
        }
        h.lock().expect("history").metered.insert(id, counted);
        let Ok(appended) = log.append(entries).await else {
            return;
        };
        let base = appended.base_offsets[0];
        h.lock()
            .expect("history")
            .assigned
            .insert(id, (base, offsets));
        if appended.durable().await.is_err() {
            return;
        }
        h.lock().expect("history").acked.insert(id, base);
        if rng.random_bool(0.3) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..5))).await;
        }
    }
}

/// An idempotent producer that outlives owners: a batch whose outcome it
/// did not learn goes again, with the same sequence number, to the next
/// owner, which must answer a retry of a stored batch with its offset
/// rather than store it twice (the final check finds any id stored twice).
async fn idempotent(
    mut owner: watch::Receiver<Option<ShardLog>>,
    h: Arc<Mutex<History>>,
    ids: Vec<u64>,
    seed: u64,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut seq = 0i32;
    for id in ids {
        let offsets = rng.random_range(1..5);
        let filler = rng.random_range(0..300);
        loop {
            let log = owner.borrow_and_update().clone();
            let tried = match log {
                Some(log) => {
                    let e = Entry::Append {
                        stream: STREAM,
                        base_offset: 0,
                        offsets,
                        max_timestamp: id as i64,
                        producer: Some(Producer {
                            id: 1,
                            epoch: 0,
                            first_seq: seq,
                            time_ms: floe_storage::log::now_ms(),
                            txn: Txn::No,
                        }),
                        data: batch(id, offsets, filler),
                    };
                    let put = Entry::Put {
                        key: key_of(id),
                        value: Some(Bytes::from(id.to_be_bytes().to_vec())),
                    };
                    match log.append(vec![e, put]).await {
                        Ok(a) => {
                            let base = a.base_offsets[0];
                            h.lock()
                                .expect("history")
                                .assigned
                                .insert(id, (base, offsets));
                            a.durable().await.map(|()| base)
                        }
                        Err(e) => Err(e),
                    }
                }
                None => Err(Error::Closed),
            };
            match tried {
                Ok(base) => {
                    h.lock().expect("history").acked.insert(id, base);
                    break;
                }
                Err(
                    e @ (Error::OutOfOrderSequence(_)
                    | Error::SequenceGap(_)
                    | Error::UnknownProducer { .. }),
                ) => {
                    h.lock()
                        .expect("history")
                        .violations
                        .push(format!("idempotent retry of {id} refused: {e}"));
                    return;
                }
                // The owner failed or is stale: wait for the next one.
                Err(_) => {
                    if owner.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        seq += offsets as i32;
    }
}

/// The final owner runs its maintenance for a while, read by a reader.
async fn tasks_quiet(log: &ShardLog, h: &Arc<Mutex<History>>, seed: u64) {
    let reader = tokio::spawn(read_some(log.clone(), h.clone(), seed ^ 0xf1a1, 20));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = reader.await;
}

/// Retention: raises the log start to a random offset now and then.
async fn trim(log: ShardLog, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
        let Ok((start, hw)) = log.offsets(STREAM) else {
            continue;
        };
        let to = rng.random_range(start..=hw);
        if log.truncate(STREAM, to).await.is_err() {
            return;
        }
    }
}

fn key_of(id: u64) -> Bytes {
    Bytes::from(format!("k/{id:08}"))
}

/// An owner that opens while another is opening or writing, and produces.
async fn racer(
    store: Arc<dyn ObjectStore>,
    cfg: LogConfig,
    h: Arc<Mutex<History>>,
    ids: Vec<u64>,
    seed: u64,
) {
    let Ok(log) = ShardLog::open(store, Path::from("shard"), cfg).await else {
        return;
    };
    if ensure_stream(&log).await.is_ok() {
        produce(log, h, ids, seed).await;
    }
}

/// Everything a clean owner reads back: batches by base offset, and the keys.
async fn read_all(
    log: &ShardLog,
    violations: &mut Vec<String>,
    gap_ok: &dyn Fn(i64, i64) -> bool,
) -> Result<(HashMap<i64, Bytes>, Vec<Bytes>), String> {
    let mut out = HashMap::new();
    if let Ok((start, hw)) = log.offsets(STREAM) {
        let mut at = start;
        while at < hw {
            let read = log
                .read(STREAM, at, 1 << 20, true)
                .await
                .map_err(|e| format!("final read: {e}"))?;
            if read.batches.is_empty() {
                // Only a rewrite's dropped batches may end the log early.
                if !gap_ok(at, hw) {
                    violations.push(format!("final log: nothing at {at} below {hw}"));
                }
                break;
            }
            for b in read.batches {
                let base = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                // The first batch may begin below a log start inside it.
                if base != at && !(at == start && base < at) && !(base > at && gap_ok(at, base)) {
                    violations.push(format!("final log: batch at {base}, expected {at}"));
                }
                at = base + offsets_of(&b) as i64;
                out.insert(base, b);
            }
        }
    }
    let keys: Vec<Bytes> = log.scan(b"k/").into_iter().map(|(k, _)| k).collect();
    if log.has_prefix(b"k/") == keys.is_empty() || log.has_prefix(b"j/") {
        violations.push(format!(
            "has_prefix disagrees with scan ({} keys)",
            keys.len()
        ));
    }
    Ok((out, keys))
}

async fn read_some(log: ShardLog, h: Arc<Mutex<History>>, seed: u64, reads: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    for _ in 0..reads {
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
        let Ok((start, hw)) = log.offsets(STREAM) else {
            continue;
        };
        let from = rng.random_range(start..=hw);
        let Ok(read) = log
            .read(STREAM, from, rng.random_range(1..2000), true)
            .await
        else {
            continue;
        };
        let mut h = h.lock().expect("history");
        let mut expect = None;
        for b in read.batches {
            let base = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
            if expect.is_some_and(|e| e != base && !(e < base && dropped_gap(&h.dropped, e, base)))
            {
                h.violations
                    .push(format!("read gap: batch at {base}, expected {expect:?}"));
            }
            if base + offsets_of(&b) as i64 > read.high_watermark {
                h.violations.push(format!(
                    "read past high watermark {} at {base}",
                    read.high_watermark
                ));
            }
            expect = Some(base + offsets_of(&b) as i64);
            if let Some(prev) = h.seen.insert(base, canonical(&b)) {
                if prev != canonical(&b) {
                    h.violations
                        .push(format!("offset {base} read as two different batches"));
                }
            }
        }
    }
}

async fn sim(seed: u64) -> Result<(), String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = Arc::new(Faulty::new(mem.clone(), seed, Faults::chaos()));
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let max_in_flight = rng.random_range(1..=8);
    let cfg = LogConfig {
        linger: Duration::from_millis(rng.random_range(0..3)),
        flush_bytes: rng.random_range(100..3000),
        max_in_flight,
        timer_in_flight: rng.random_range(1..=max_in_flight),
        max_pending_bytes: 64 << 10,
        tail_bytes: if rng.random_bool(0.5) { 0 } else { 4096 },
        read_cache_bytes: if rng.random_bool(0.5) { 0 } else { 8192 },
        put_timeout: Duration::from_millis(200),
        put_attempts: rng.random_range(1..4),
        hedge_after: rng
            .random_bool(0.5)
            .then(|| Duration::from_millis(rng.random_range(1..30))),
        checkpoint_every: rng.random_range(1..8),
        compact_bytes: if rng.random_bool(0.2) {
            0
        } else {
            rng.random_range(200..4000)
        },
        compact_max_objects: rng.random_range(1..12),
        compact_after: Duration::from_millis(rng.random_range(0..50)),
        sweep_grace: rng
            .random_bool(0.7)
            .then(|| Duration::from_millis(rng.random_range(0..40))),
        maintain_every: Duration::from_millis(rng.random_range(1..15)),
        checkpoint_interval: Duration::from_millis(rng.random_range(0..60)),
        block_bytes: rng.random_range(64..4096),
        index_bytes: if rng.random_bool(0.2) {
            0
        } else {
            rng.random_range(100..3000)
        },
        ..LogConfig::default()
    };
    let sweeps = cfg.sweep_grace.is_some();
    if std::env::var("FLOE_SIM_VERBOSE").is_ok() {
        println!("seed {seed}: {cfg:?}");
    }
    let trims = rng.random_bool(0.5);
    let rewrites = rng.random_bool(0.5);
    if sweeps {
        // Sweeping relies on LIST showing every completed checkpoint.
        faulty.set(Faults {
            list_omit: 0.0,
            ..Faults::chaos()
        });
    }
    let history = Arc::new(Mutex::new(History::default()));
    let mut tasks = Vec::new();
    let mut next_id = 0u64;
    let (owner_tx, owner_rx) = watch::channel(None);
    if rng.random_bool(0.5) {
        let n = rng.random_range(5..30);
        tasks.push(tokio::spawn(idempotent(
            owner_rx,
            history.clone(),
            (next_id..next_id + n).collect(),
            seed ^ 0x1de,
        )));
        next_id += n;
    }
    let rounds = rng.random_range(2..6);
    for round in 0..rounds {
        if rng.random_bool(0.3) {
            let ids: Vec<u64> = (next_id..next_id + 5).collect();
            next_id += 5;
            tasks.push(tokio::spawn(racer(
                store.clone(),
                cfg.clone(),
                history.clone(),
                ids,
                seed ^ 0xbeef ^ round,
            )));
        }
        let Some(log) = open(store.clone(), &cfg).await else {
            continue;
        };
        if ensure_stream(&log).await.is_err() {
            continue;
        }
        owner_tx.send_replace(Some(log.clone()));
        for p in 0..rng.random_range(1..4) {
            let n = rng.random_range(1..12);
            let ids: Vec<u64> = (next_id..next_id + n).collect();
            next_id += n;
            let t = tokio::spawn(produce(
                log.clone(),
                history.clone(),
                ids,
                seed ^ (round << 8 | p),
            ));
            tasks.push(t);
        }
        tasks.push(tokio::spawn(read_some(
            log.clone(),
            history.clone(),
            seed ^ 0xabc ^ round,
            4,
        )));
        if trims {
            tasks.push(tokio::spawn(trim(log.clone(), seed ^ 0x7717 ^ round)));
        }
        if rewrites {
            tasks.push(tokio::spawn(rewrite(
                log.clone(),
                history.clone(),
                seed ^ 0x4e3 ^ round,
            )));
        }
        if rng.random_bool(0.5) {
            // Graceful hand-over: drain what was accepted, then close.
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
            let _ = log.close().await;
        } else {
            // Abandon the owner mid-write; it lives on as a zombie.
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
        }
    }
    faulty.set(Faults::NONE);
    // The idempotent producer gives up on what the last owner left unacked.
    drop(owner_tx);
    for t in tasks {
        t.await.map_err(|e| format!("task panicked: {e}"))?;
    }
    // A clean owner reads the whole history back.
    let log = open(store.clone(), &cfg)
        .await
        .ok_or("final open failed with faults off")?;
    // Let it compact and sweep a while, with a reader racing the deletes.
    tasks_quiet(&log, &history, seed).await;
    // Every task is done: the history is ours alone now.
    let mut h = std::mem::take(&mut *history.lock().expect("history"));
    let assigned = std::mem::take(&mut h.assigned);
    let dropped_map = std::mem::take(&mut h.dropped);
    let gap_ok = |from: i64, to: i64| dropped_gap(&dropped_map, from, to);
    let (final_bytes, keys) = read_all(&log, &mut h.violations, &gap_ok).await?;
    let (log_start, hw) = log.offsets(STREAM).unwrap_or((0, 0));
    let meters = log.meters();
    drop(log);
    let (mut counted, mut batches) = (0, 0);
    for (_, c) in &meters.1 {
        counted += c[0];
        batches += c[1];
    }
    let (want, want_batches) = h.metered.iter().fold((0, 0), |(sum, n), (&id, &c)| {
        if keys.contains(&key_of(id)) {
            (sum + c, n + 1)
        } else {
            (sum, n)
        }
    });
    if (counted, batches) != (want, want_batches) {
        h.violations.push(format!(
            "meters count {counted} over {batches} appends; the batches stored hold {want} over {want_batches}"
        ));
    }
    if !sweeps {
        // Replaying the whole log, without checkpoints, must agree.
        let ckpts: Vec<_> = mem
            .list(Some(&Path::from("shard/ckpt")))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        for c in &ckpts {
            mem.delete(c).await.map_err(|e| e.to_string())?;
        }
        let scratch = open(store, &cfg).await.ok_or("scratch open failed")?;
        let (scratch_bytes, scratch_keys) = read_all(&scratch, &mut h.violations, &gap_ok).await?;
        if scratch.meters() != meters {
            h.violations
                .push("replay from seq 0 meters differently from the checkpoint".into());
        }
        if scratch_bytes != final_bytes || scratch_keys != keys {
            h.violations.push(format!(
                "replay from seq 0 differs from replay from the checkpoint ({} vs {} batches, {} vs {} keys)",
                scratch_bytes.len(), final_bytes.len(), scratch_keys.len(), keys.len()
            ));
        }
    }
    // Retention drops exactly the batches wholly below the log start; a
    // rewrite, exactly the droppable ones.
    let dropped = |id: u64| rewrites && droppable(id);
    let trimmed = |id: u64| {
        assigned
            .get(&id)
            .is_some_and(|&(base, n)| base + n as i64 <= log_start)
    };
    let stored_ids: std::collections::HashSet<u64> =
        final_bytes.values().map(|b| id_of(b)).collect();
    for id in 0..next_id {
        let key = keys.contains(&key_of(id));
        if stored_ids.contains(&id) != key && !(key && (trimmed(id) || dropped(id))) {
            h.violations
                .push(format!("batch {id} and its key did not commit together"));
        }
    }
    let mut ids_seen = HashMap::new();
    for (base, b) in &final_bytes {
        if let Some(other) = ids_seen.insert(id_of(b), *base) {
            h.violations.push(format!(
                "batch id {} stored twice, at {other} and {base}",
                id_of(b)
            ));
        }
    }
    let acked: Vec<_> = h.acked.iter().map(|(id, base)| (*id, *base)).collect();
    for (id, base) in acked {
        match final_bytes.get(&base) {
            Some(b) if id_of(b) == id => {}
            Some(b) => h.violations.push(format!(
                "acked id {id} at {base}; final log has id {}",
                id_of(b)
            )),
            None if trimmed(id) || dropped(id) => {}
            None => h.violations.push(format!(
                "acked id {id} at {base} lost (log start {log_start}, hw {hw})"
            )),
        }
    }
    let seen: Vec<_> = h.seen.iter().map(|(k, v)| (*k, v.clone())).collect();
    for (base, b) in seen {
        let gone = (base + offsets_of(&b) as i64 <= log_start || dropped(id_of(&b)))
            && !final_bytes.contains_key(&base);
        if final_bytes.get(&base).map(canonical) != Some(b) && !gone {
            h.violations.push(format!(
                "offset {base} was read, and is different or gone after restarts"
            ));
        }
    }
    if std::env::var("FLOE_SIM_VERBOSE").is_ok() {
        let st = &cfg.stats;
        println!(
            "seed {seed}: {rounds} owners, {} acked, {} reads, log {log_start}..{hw}, {} compactions, {} deleted, {} objects left",
            h.acked.len(),
            h.seen.len(),
            st.compactions.load(std::sync::atomic::Ordering::Relaxed),
            st.deleted_objects.load(std::sync::atomic::Ordering::Relaxed),
            mem.list(None).count().await
        );
    }
    if h.violations.is_empty() {
        Ok(())
    } else {
        Err(h.violations.join("; "))
    }
}

fn run_seed(seed: u64) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    let run = std::panic::AssertUnwindSafe(|| rt.block_on(sim(seed)));
    std::panic::catch_unwind(run).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or(p.downcast_ref::<&str>().map(|s| s.to_string()));
        Err(format!("panicked: {}", msg.unwrap_or_default()))
    })
}

#[test]
fn shard_log_survives_faults_and_zombies() {
    if let Ok(one) = std::env::var("FLOE_SIM_SEED") {
        let seed: u64 = one.parse().expect("FLOE_SIM_SEED is a number");
        if std::env::var("FLOE_SIM_VERBOSE").is_ok() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("floe_storage=debug")
                .with_test_writer()
                .try_init();
        }
        run_seed(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        return;
    }
    let seeds: u64 = std::env::var("FLOE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000);
    let threads = 2;
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (0..seeds)
                        .filter(|seed| seed % threads == t)
                        .filter_map(|seed| {
                            run_seed(seed).err().map(|e| format!("seed {seed}: {e}"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("sim thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed; first: {}",
        failures.len(),
        failures[0]
    );
    println!("simulated {seeds} seeds");
}
