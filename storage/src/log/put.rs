//! Object writes whose outcome is resolved, never guessed.
//!
//! Every log object is created with `PutMode::Create` and names its writer
//! (epoch, nonce) in its first bytes. On `AlreadyExists` the object is read
//! back: ours means an earlier attempt landed (success); anyone else's means
//! we were fenced. Errors and timeouts retry the identical bytes at the same
//! path, so a retry can never leave a hole or a second version.

use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::format::{self, Writer};
use crate::log::LogConfig;
use crate::Error;

/// What sits at a path we tried to create.
pub(crate) enum Created {
    Ours,
    /// Someone else's object; its bytes are returned for replay.
    Theirs(Bytes),
}

/// Creates `path` with `payload` (a WAL object or tombstone of `writer`),
/// resolving conflicts and unknown outcomes by reading back.
pub(crate) async fn create_or_read(
    store: &dyn ObjectStore,
    path: &Path,
    payload: PutPayload,
    writer: Writer,
    cfg: &LogConfig,
) -> Result<Created, Error> {
    let mut last = String::new();
    for attempt in 0..cfg.put_attempts {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match tokio::time::timeout(cfg.put_timeout, store.put_opts(path, payload.clone(), opts))
            .await
        {
            Ok(Ok(_)) => return Ok(Created::Ours),
            Ok(Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            )) => match read_back(store, path, writer, cfg.put_timeout).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            },
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("put timed out after {:?}", cfg.put_timeout),
        }
        tracing::debug!(%path, attempt, error = %last, "put attempt failed; retrying identical bytes");
    }
    Err(Error::Unavailable(format!("{path}: {last}")))
}

/// A WAL object write that must be ours: someone else's object means fenced.
/// With `hedge_after` set, a PUT still unanswered by then is raced by a second
/// identical one; safe because a create that loses to our own bytes reads
/// them back as ours.
pub(crate) async fn create_resolved(
    store: &dyn ObjectStore,
    path: &Path,
    payload: PutPayload,
    writer: Writer,
    cfg: &LogConfig,
) -> Result<(), Error> {
    let created = match cfg.hedge_after {
        None => create_or_read(store, path, payload, writer, cfg).await?,
        Some(after) => hedged(store, path, payload, writer, cfg, after).await?,
    };
    match created {
        Created::Ours => Ok(()),
        Created::Theirs(_) => Err(Error::Fenced),
    }
}

async fn hedged(
    store: &dyn ObjectStore,
    path: &Path,
    payload: PutPayload,
    writer: Writer,
    cfg: &LogConfig,
    after: Duration,
) -> Result<Created, Error> {
    let first = create_or_read(store, path, payload.clone(), writer, cfg);
    tokio::pin!(first);
    tokio::select! {
        r = &mut first => return r,
        _ = tokio::time::sleep(after) => {}
    }
    let second = create_or_read(store, path, payload, writer, cfg);
    tokio::pin!(second);
    // The first definitive answer wins; an error from one waits for the other.
    tokio::select! {
        r = &mut first => match r {
            Ok(c) => Ok(c),
            Err(_) => second.await,
        },
        r = &mut second => match r {
            Ok(c) => Ok(c),
            Err(_) => first.await,
        },
    }
}

/// Checkpoints are written once per seq; one already there with our writer is
/// ours, anyone else's is a zombie's and harmless (it fails validation).
pub(crate) async fn create_checkpoint(
    store: &dyn ObjectStore,
    path: &Path,
    body: Bytes,
    writer: Writer,
    cfg: &LogConfig,
) -> Result<(), Error> {
    create_resolved(store, path, PutPayload::from(body), writer, cfg).await
}

async fn read_back(
    store: &dyn ObjectStore,
    path: &Path,
    writer: Writer,
    timeout: Duration,
) -> Result<Created, String> {
    let got = tokio::time::timeout(timeout, async { store.get(path).await?.bytes().await }).await;
    let bytes = match got {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(format!("read-back: {e}")),
        Err(_) => return Err("read-back timed out".into()),
    };
    match writer_of(&bytes) {
        Some(w) if w == writer => Ok(Created::Ours),
        Some(_) => Ok(Created::Theirs(bytes)),
        None => Err("read-back: object has no writer header".into()),
    }
}

/// The writer named by a WAL object, epoch object or checkpoint.
pub(crate) fn writer_of(b: &[u8]) -> Option<Writer> {
    format::object_writer(b).ok()
}

/// Attempts per read; reads are idempotent, so retrying is always safe.
const GET_ATTEMPTS: u32 = 5;

/// GET with a deadline per attempt and bounded retries; `None` if absent.
pub(crate) async fn get(
    store: &dyn ObjectStore,
    path: &Path,
    timeout: Duration,
) -> Result<Option<Bytes>, Error> {
    get_range(store, path, None, timeout).await
}

/// GET of `range` (the object's remainder if it ends past it), or the whole
/// object; retried like [`get`].
pub(crate) async fn get_range(
    store: &dyn ObjectStore,
    path: &Path,
    range: Option<std::ops::Range<u64>>,
    timeout: Duration,
) -> Result<Option<Bytes>, Error> {
    let mut last = String::new();
    for attempt in 0..GET_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let opts = GetOptions {
            range: range.clone().map(Into::into),
            ..Default::default()
        };
        let got = tokio::time::timeout(timeout, async {
            store.get_opts(path, opts).await?.bytes().await
        })
        .await;
        match got {
            Ok(Ok(b)) => return Ok(Some(b)),
            Ok(Err(object_store::Error::NotFound { .. })) => return Ok(None),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("timed out after {timeout:?}"),
        }
    }
    Err(Error::Unavailable(format!("get {path}: {last}")))
}

/// Whether an object exists, retried like [`get`]: a HEAD, done as a GET of
/// its first bytes (every log object has a header).
pub(crate) async fn exists(
    store: &dyn ObjectStore,
    path: &Path,
    timeout: Duration,
) -> Result<bool, Error> {
    Ok(get_range(store, path, Some(0..8), timeout).await?.is_some())
}

/// Whether an owner newer than `epoch` has claimed the shard at `prefix`.
/// Epochs are claimed in order, so looking at `epoch + 1` is enough.
pub(crate) async fn newer_owner(
    store: &dyn ObjectStore,
    prefix: &Path,
    epoch: u64,
    timeout: Duration,
) -> Result<bool, Error> {
    exists(store, &super::epoch_path(prefix, epoch + 1), timeout).await
}

/// DELETE, retried; an object already gone counts as deleted.
pub(crate) async fn delete(
    store: &dyn ObjectStore,
    path: &Path,
    timeout: Duration,
) -> Result<(), Error> {
    let mut last = String::new();
    for attempt in 0..GET_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        match tokio::time::timeout(timeout, store.delete(path)).await {
            Ok(Ok(()) | Err(object_store::Error::NotFound { .. })) => return Ok(()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("timed out after {timeout:?}"),
        }
    }
    Err(Error::Unavailable(format!("delete {path}: {last}")))
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(10u64 << attempt.min(6))
}
