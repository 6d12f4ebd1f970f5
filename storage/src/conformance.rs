//! What a store must do to hold a shard log, as library functions every store
//! runs: memory, a local directory, and a real S3-compatible server (the
//! end-to-end harness starts one). Each check returns what broke.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::{Entry, Error, LogConfig, ShardLog, StreamId};

type Check = Result<(), String>;

fn ensure(ok: bool, what: &str) -> Check {
    if ok {
        Ok(())
    } else {
        Err(what.to_string())
    }
}

fn e2s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Runs every check below `prefix` (which should be fresh for each run).
pub async fn run_all(store: Arc<dyn ObjectStore>, prefix: &str) -> Check {
    let p = Path::from(prefix);
    objects(&*store, &p.clone().join("objects"))
        .await
        .map_err(|e| format!("objects: {e}"))?;
    create_race(store.clone(), &p.clone().join("race"))
        .await
        .map_err(|e| format!("create race: {e}"))?;
    log_round_trip(store.clone(), &p.clone().join("log"))
        .await
        .map_err(|e| format!("log round trip: {e}"))?;
    log_fencing(store.clone(), &p.clone().join("fence"))
        .await
        .map_err(|e| format!("log fencing: {e}"))?;
    log_compaction(store, &p.clone().join("compact"))
        .await
        .map_err(|e| format!("log compaction: {e}"))?;
    Ok(())
}

/// Put, get, ranged get, multi-chunk payloads, create-if-absent, list.
pub async fn objects(store: &dyn ObjectStore, p: &Path) -> Check {
    let a = p.clone().join("a");
    let payload =
        PutPayload::from_iter([Bytes::from_static(b"hello "), Bytes::from_static(b"world")]);
    store.put(&a, payload).await.map_err(e2s)?;
    let got = store
        .get(&a)
        .await
        .map_err(e2s)?
        .bytes()
        .await
        .map_err(e2s)?;
    ensure(got == "hello world", "multi-chunk put reads back whole")?;
    let r = store.get_range(&a, 6..11).await.map_err(e2s)?;
    ensure(r == "world", "ranged get")?;
    // The block cache asks for whole blocks; the last one is shorter.
    let opts = object_store::GetOptions {
        range: Some((6..4096).into()),
        ..Default::default()
    };
    let r = store
        .get_opts(&a, opts)
        .await
        .map_err(e2s)?
        .bytes()
        .await
        .map_err(e2s)?;
    ensure(
        r == "world",
        "ranged get past the end returns the remainder",
    )?;
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let again = store
        .put_opts(&a, PutPayload::from_static(b"x"), create.clone())
        .await;
    ensure(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "create over an object fails",
    )?;
    let got = store
        .get(&a)
        .await
        .map_err(e2s)?
        .bytes()
        .await
        .map_err(e2s)?;
    ensure(
        got == "hello world",
        "failed create leaves the object alone",
    )?;
    let missing = store.get(&p.clone().join("missing")).await;
    ensure(
        matches!(missing, Err(object_store::Error::NotFound { .. })),
        "get of a missing object is NotFound",
    )?;
    store
        .put_opts(&p.clone().join("b"), PutPayload::from_static(b"b"), create)
        .await
        .map_err(e2s)?;
    let mut names: Vec<String> = store
        .list(Some(p))
        .map_ok(|m| m.location.filename().unwrap_or_default().to_string())
        .try_collect()
        .await
        .map_err(e2s)?;
    names.sort();
    ensure(names == ["a", "b"], "list under a prefix")?;
    store.delete(&a).await.map_err(e2s)?;
    let gone = store.get(&a).await;
    ensure(
        matches!(gone, Err(object_store::Error::NotFound { .. })),
        "deleted object is gone",
    )?;
    let again = store.delete(&a).await;
    ensure(
        matches!(again, Ok(()) | Err(object_store::Error::NotFound { .. })),
        "deleting twice is harmless",
    )
}

/// Eight writers race to create one object: exactly one wins.
pub async fn create_race(store: Arc<dyn ObjectStore>, p: &Path) -> Check {
    for round in 0..4 {
        let path = p.clone().join(format!("r{round}"));
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let (store, path) = (store.clone(), path.clone());
                tokio::spawn(async move {
                    let opts = PutOptions {
                        mode: PutMode::Create,
                        ..Default::default()
                    };
                    store
                        .put_opts(&path, PutPayload::from(vec![i]), opts)
                        .await
                        .is_ok()
                })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            winners += usize::from(t.await.map_err(e2s)?);
        }
        ensure(
            winners == 1,
            &format!("round {round}: {winners} creators won, want exactly 1"),
        )?;
    }
    Ok(())
}

fn batch(tag: u8, len: usize) -> Bytes {
    let mut v = vec![tag; len];
    v[..8].fill(0);
    Bytes::from(v)
}

async fn append_one(log: &ShardLog, stream: StreamId, tag: u8) -> Result<i64, Error> {
    let e = Entry::Append {
        stream,
        base_offset: 0,
        offsets: 2,
        max_timestamp: tag as i64,
        producer: None,
        data: batch(tag, 100),
    };
    let a = log.append(vec![e]).await?;
    let base = a.base_offsets[0];
    a.durable().await?;
    Ok(base)
}

/// Append, close, reopen: offsets, bytes and metadata survive.
pub async fn log_round_trip(store: Arc<dyn ObjectStore>, p: &Path) -> Check {
    let cfg = LogConfig {
        checkpoint_every: 3,
        ..LogConfig::default()
    };
    let log = ShardLog::open(store.clone(), p.clone(), cfg.clone())
        .await
        .map_err(e2s)?;
    let s = log.allocate_stream();
    let put = Entry::Put {
        key: Bytes::from_static(b"k"),
        value: Some(Bytes::from_static(b"v")),
    };
    log.append(vec![Entry::CreateStream { stream: s }, put])
        .await
        .map_err(e2s)?
        .durable()
        .await
        .map_err(e2s)?;
    for tag in 1..=5u8 {
        let base = append_one(&log, s, tag).await.map_err(e2s)?;
        ensure(base == (tag as i64 - 1) * 2, "offsets are contiguous")?;
    }
    log.close().await.map_err(e2s)?;
    let log = ShardLog::open(store, p.clone(), cfg).await.map_err(e2s)?;
    ensure(
        log.get(b"k").as_deref() == Some(&b"v"[..]),
        "metadata survives reopen",
    )?;
    ensure(
        log.offsets(s).map_err(e2s)? == (0, 10),
        "high watermark survives reopen",
    )?;
    let read = log.read(s, 3, 1 << 20, true).await.map_err(e2s)?;
    ensure(
        read.batches.len() == 4,
        "read from the middle of a batch returns that batch on",
    )?;
    ensure(
        read.batches[0][8] == 2 && read.batches[0][..8] == 2i64.to_be_bytes(),
        "bytes and base offset",
    )?;
    ensure(
        append_one(&log, s, 6).await.map_err(e2s)? == 10,
        "appends continue after reopen",
    )?;
    log.close().await.map_err(e2s)
}

/// A second owner fences the first: the first's next write fails, and nothing
/// it had acknowledged is lost.
pub async fn log_fencing(store: Arc<dyn ObjectStore>, p: &Path) -> Check {
    let cfg = LogConfig::default();
    let old = ShardLog::open(store.clone(), p.clone(), cfg.clone())
        .await
        .map_err(e2s)?;
    let s = old.allocate_stream();
    old.append(vec![Entry::CreateStream { stream: s }])
        .await
        .map_err(e2s)?
        .durable()
        .await
        .map_err(e2s)?;
    append_one(&old, s, 1).await.map_err(e2s)?;
    let new = ShardLog::open(store, p.clone(), cfg).await.map_err(e2s)?;
    ensure(new.epoch() > old.epoch(), "epochs increase")?;
    let stale = append_one(&old, s, 2).await;
    ensure(
        matches!(stale, Err(Error::Fenced)),
        &format!("stale owner's write fails as fenced, got {stale:?}"),
    )?;
    ensure(
        new.offsets(s).map_err(e2s)? == (0, 2),
        "acknowledged write survives the takeover",
    )?;
    ensure(
        append_one(&new, s, 3).await.map_err(e2s)? == 2,
        "new owner continues at the next offset",
    )?;
    new.close().await.map_err(e2s)
}

/// Many small flushes across streams, then compaction and sweeping: every
/// batch reads back byte-identical (from the cache, and from the store by a
/// new owner), WAL objects are deleted, the data object's index describes
/// it, and retention drops whole objects.
pub async fn log_compaction(store: Arc<dyn ObjectStore>, p: &Path) -> Check {
    use std::time::Duration;
    // Compaction's store calls go to a runtime of their own, as `floe`
    // does on a local directory.
    let bg = Background::new().map_err(e2s)?;
    let cfg = LogConfig {
        background: Some(bg.handle()),
        linger: Duration::ZERO,
        compact_bytes: 48 << 10,
        compact_max_objects: 1000,
        compact_after: Duration::from_millis(100),
        sweep_grace: Some(Duration::from_millis(50)),
        maintain_every: Duration::from_millis(20),
        checkpoint_interval: Duration::ZERO,
        // Small blocks: batches cross block boundaries.
        block_bytes: 5000,
        tail_bytes: 0,
        ..LogConfig::default()
    };
    let stats = cfg.stats.clone();
    let log = ShardLog::open(store.clone(), p.clone(), cfg.clone())
        .await
        .map_err(e2s)?;
    let streams: Vec<StreamId> = (0..3).map(|_| log.allocate_stream()).collect();
    let creates = streams
        .iter()
        .map(|&stream| Entry::CreateStream { stream })
        .collect();
    log.append(creates)
        .await
        .map_err(e2s)?
        .durable()
        .await
        .map_err(e2s)?;
    for i in 0..120u32 {
        let stream = streams[i as usize % 3];
        let data = batch(i as u8, 100 + (i as usize * 97) % 2900);
        let e = Entry::Append {
            stream,
            base_offset: 0,
            offsets: 1 + i % 3,
            max_timestamp: i as i64,
            producer: None,
            data,
        };
        log.append(vec![e])
            .await
            .map_err(e2s)?
            .durable()
            .await
            .map_err(e2s)?;
    }
    let before = read_streams(&log, &streams).await?;
    let wal_before = count(&*store, &p.clone().join("wal")).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stats.compactions.load(std::sync::atomic::Ordering::Relaxed) < 2
        || count(&*store, &p.clone().join("wal")).await? * 2 > wal_before
    {
        ensure(
            tokio::time::Instant::now() < deadline,
            "compaction and sweeping within 20 s",
        )?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure(
        read_streams(&log, &streams).await? == before,
        "reads after compaction are byte-identical",
    )?;
    let data: Vec<Path> = store
        .list(Some(&p.clone().join("data")))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(e2s)?;
    ensure(!data.is_empty(), "compaction wrote data objects")?;
    let obj = store
        .get(&data[0])
        .await
        .map_err(e2s)?
        .bytes()
        .await
        .map_err(e2s)?;
    let (_, runs) = crate::format::decode_data_index(&obj).map_err(e2s)?;
    ensure(
        !runs.is_empty()
            && runs.iter().all(|(r, start)| {
                (*start as usize) < r.end as usize && r.end as usize <= obj.len()
            }),
        "data object index",
    )?;
    log.close().await.map_err(e2s)?;
    // A new owner, with a cold cache, reads the same bytes from the store.
    let log = ShardLog::open(store.clone(), p.clone(), cfg)
        .await
        .map_err(e2s)?;
    ensure(
        read_streams(&log, &streams).await? == before,
        "a new owner reads the same bytes",
    )?;
    // Retention: dropping every stream's data drops the data objects.
    for &s in &streams {
        let hw = log.offsets(s).map_err(e2s)?.1;
        log.truncate(s, hw).await.map_err(e2s)?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count(&*store, &p.clone().join("data")).await? > 0 {
        ensure(
            tokio::time::Instant::now() < deadline,
            "truncated data objects deleted within 20 s",
        )?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read = log.read(streams[0], 0, 1 << 20, true).await;
    ensure(
        matches!(read, Err(Error::OffsetOutOfRange { .. })),
        "reads below the log start are out of range",
    )?;
    log.close().await.map_err(e2s)
}

async fn read_streams(log: &ShardLog, streams: &[StreamId]) -> Result<Vec<Vec<Bytes>>, String> {
    let mut all = Vec::new();
    for &s in streams {
        let (start, hw) = log.offsets(s).map_err(e2s)?;
        let read = log.read(s, start, 1 << 30, true).await.map_err(e2s)?;
        ensure(
            read.high_watermark == hw,
            "one read reaches the high watermark",
        )?;
        all.push(read.batches);
    }
    Ok(all)
}

async fn count(store: &dyn ObjectStore, dir: &Path) -> Result<usize, String> {
    store
        .list(Some(dir))
        .try_collect::<Vec<_>>()
        .await
        .map(|v| v.len())
        .map_err(e2s)
}

/// A one-worker runtime standing in for `floe`'s maintenance runtime,
/// dropped without waiting, as one must inside another's task (also when a
/// test fails).
pub(crate) struct Background(Option<tokio::runtime::Runtime>);

impl Background {
    pub(crate) fn new() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        Ok(Self(Some(rt)))
    }

    pub(crate) fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("running until dropped")
            .handle()
            .clone()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_conforms() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        run_all(store, "conformance").await.expect("memory store");
    }

    #[tokio::test]
    async fn local_directory_conforms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            crate::store::from_url(dir.path().to_str().expect("utf-8"), true).expect("store");
        run_all(store, "conformance")
            .await
            .expect("local directory");
    }
}
