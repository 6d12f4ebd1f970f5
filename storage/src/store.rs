//! Object stores from URLs, and the call counters every store is wrapped in.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RetryConfig,
};
use tracing::Instrument;

/// Builds a store from `memory://`, `s3://BUCKET[/PREFIX]` or a directory
/// (`file:///path` or a plain path). S3 takes endpoint and credentials from the
/// standard AWS environment variables and always uses conditional puts.
pub fn from_url(url: &str, fsync: bool) -> Result<Arc<dyn ObjectStore>, String> {
    if url == "memory://" || url == "memory:" {
        return Ok(Arc::new(InMemory::new()));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err("s3:// needs a bucket name".into());
        }
        let s3 = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            // CRC-32C guards the data; skip SHA-256 of payloads when on TLS.
            .with_unsigned_payload(true)
            // The log retries identical bytes itself and resolves unknown
            // outcomes by reading back; keep the client's own retries short.
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 2,
                retry_timeout: Duration::from_secs(5),
            })
            .build()
            .map_err(|e| e.to_string())?;
        if prefix.is_empty() {
            return Ok(Arc::new(s3));
        }
        return Ok(Arc::new(PrefixStore::new(s3, prefix)));
    }
    if url.contains("://") && !url.starts_with("file://") {
        return Err(format!(
            "unsupported store {url:?}: use a directory, file://, memory:// or s3://"
        ));
    }
    let dir = url.strip_prefix("file://").unwrap_or(url);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {dir}: {e}"))?;
    let fs = LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| e.to_string())?
        .with_fsync(fsync);
    Ok(Arc::new(fs))
}

/// Calls and bytes, per kind, since start.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
    pub lists: AtomicU64,
    pub deletes: AtomicU64,
    pub errors: AtomicU64,
}

/// The span of a call `op` on `location` (`bytes` recorded once known).
fn call_span(op: &'static str, location: &Path) -> tracing::Span {
    tracing::debug_span!(
        "store.call",
        otel.name = %format_args!("store.{op}"),
        otel.kind = "client",
        path = %location,
        bytes = tracing::field::Empty,
    )
}

/// Wraps a store and counts every call into [`StoreStats`], each in a span
/// and timed (`floe_store_call_duration_seconds`).
#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn ObjectStore>,
    pub stats: Arc<StoreStats>,
    seconds: opentelemetry::metrics::Histogram<f64>,
}

impl Counting {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            stats: Arc::default(),
            seconds: floe_common::telemetry::seconds(
                &floe_common::telemetry::meter(),
                "floe_store_call_duration_seconds",
                "Object-store calls by operation, failed ones included.",
            ),
        }
    }

    /// Runs a call of the inner store in `span`, timed as `op`, its
    /// failure counted.
    async fn call<T>(
        &self,
        op: &'static str,
        span: tracing::Span,
        call: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        let since = std::time::Instant::now();
        let r = call.instrument(span).await;
        self.seconds.record(
            since.elapsed().as_secs_f64(),
            &[opentelemetry::KeyValue::new("op", op)],
        );
        self.count(r)
    }

    /// Counts failures; an absent object or a lost conditional write is an
    /// answer the log asks for (opening a shard, fencing), not a failure.
    fn count<T>(&self, r: object_store::Result<T>) -> object_store::Result<T> {
        use object_store::Error as E;
        let answer = matches!(
            r,
            Err(E::NotFound { .. } | E::AlreadyExists { .. } | E::Precondition { .. })
        );
        if r.is_err() && !answer {
            self.stats.errors.fetch_add(1, Relaxed);
        }
        r
    }
}

impl fmt::Display for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Counting {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.stats.puts.fetch_add(1, Relaxed);
        let bytes = payload.content_length();
        self.stats.put_bytes.fetch_add(bytes as u64, Relaxed);
        let span = call_span("put", location);
        span.record("bytes", bytes);
        self.call("put", span, self.inner.put_opts(location, payload, opts))
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.stats.puts.fetch_add(1, Relaxed);
        self.count(self.inner.put_multipart_opts(location, opts).await)
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.stats.gets.fetch_add(1, Relaxed);
        let op = if options.head { "head" } else { "get" };
        let span = call_span(op, location);
        let r = self
            .call(op, span.clone(), self.inner.get_opts(location, options))
            .await?;
        span.record("bytes", r.range.end - r.range.start);
        self.stats
            .get_bytes
            .fetch_add(r.range.end - r.range.start, Relaxed);
        Ok(r)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.stats.gets.fetch_add(ranges.len() as u64, Relaxed);
        let span = call_span("get_ranges", location);
        let r = self
            .call("get_ranges", span, self.inner.get_ranges(location, ranges))
            .await?;
        self.stats
            .get_bytes
            .fetch_add(r.iter().map(|b| b.len() as u64).sum(), Relaxed);
        Ok(r)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let stats = self.stats.clone();
        self.inner
            .delete_stream(locations)
            .inspect(move |_| {
                stats.deletes.fetch_add(1, Relaxed);
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.stats.lists.fetch_add(1, Relaxed);
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.stats.lists.fetch_add(1, Relaxed);
        let span = tracing::debug_span!("store.list", otel.kind = "client", prefix = ?prefix.map(Path::as_ref));
        self.call("list", span, self.inner.list_with_delimiter(prefix))
            .await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.stats.puts.fetch_add(1, Relaxed);
        self.count(self.inner.copy_opts(from, to, options).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faulty::{Faults, Faulty};
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt as _, PutMode, PutOptions};

    #[tokio::test]
    async fn errors_count_failures_not_answers() {
        let store = Counting::new(Arc::new(InMemory::new()));
        let p = Path::from("a");
        assert!(store.get(&p).await.is_err(), "absent");
        let create = || PutOptions::from(PutMode::Create);
        store
            .put_opts(&p, "x".into(), create())
            .await
            .expect("create");
        assert!(
            store.put_opts(&p, "y".into(), create()).await.is_err(),
            "exists"
        );
        assert_eq!(store.stats.errors.load(Relaxed), 0);
        let failing = Faults {
            fail_before: 1.0,
            ..Faults::NONE
        };
        let store = Counting::new(Arc::new(Faulty::new(Arc::new(InMemory::new()), 1, failing)));
        assert!(store.put(&p, "x".into()).await.is_err());
        assert_eq!(store.stats.errors.load(Relaxed), 1);
    }
}
