//! A seeded store wrapper that delays, fails, times out and lies, for the
//! deterministic simulation and fault tests. Off the data path unless asked for.
//!
//! Each call draws from the seeded generator: a delay (which also reorders
//! concurrent calls; now and then a long pause), then one of: pass, fail
//! before acting, act then report failure ("succeeded but reported failure"),
//! or act and then hang past any sensible deadline (the caller's timeout
//! fires; the write did happen). A PUT runs in its own task, so one whose
//! caller gave up still lands later, as a real request in flight would.
//! LIST answers may leave objects out (`list_omit`): the log must never need
//! LIST to be complete, except that sweeping needs it to show every completed
//! checkpoint, as real stores do; the simulation turns omission off when it
//! sweeps.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Probabilities per call, and the delay range.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub max_delay: Duration,
    pub fail_before: f64,
    pub fail_after: f64,
    pub hang_after: f64,
    pub hang: Duration,
    /// Chance of a long pause before acting (an owner stalled mid-call).
    pub long_pause: f64,
    pub long_delay: Duration,
    /// Chance that a LIST leaves out each object.
    pub list_omit: f64,
}

impl Faults {
    pub const NONE: Faults = Faults {
        max_delay: Duration::ZERO,
        fail_before: 0.0,
        fail_after: 0.0,
        hang_after: 0.0,
        hang: Duration::ZERO,
        long_pause: 0.0,
        long_delay: Duration::ZERO,
        list_omit: 0.0,
    };

    /// Faults the log must survive: about one call in ten misbehaves.
    pub fn chaos() -> Self {
        Faults {
            max_delay: Duration::from_millis(20),
            fail_before: 0.04,
            fail_after: 0.04,
            hang_after: 0.02,
            hang: Duration::from_secs(60),
            long_pause: 0.01,
            long_delay: Duration::from_secs(1),
            list_omit: 0.1,
        }
    }
}

#[derive(Clone, Copy)]
enum Fate {
    Pass,
    FailBefore,
    FailAfter,
    HangAfter,
}

pub struct Faulty {
    inner: Arc<dyn ObjectStore>,
    faults: Mutex<Faults>,
    rng: Mutex<SmallRng>,
}

impl fmt::Debug for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

impl Faulty {
    pub fn new(inner: Arc<dyn ObjectStore>, seed: u64, faults: Faults) -> Self {
        Self {
            inner,
            faults: Mutex::new(faults),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        }
    }

    /// Changes the fault rates from now on (e.g. to let a final check run clean).
    pub fn set(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    fn draw(&self) -> (Duration, Fate, Duration) {
        let f = *self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let mut delay = if f.max_delay.is_zero() {
            Duration::ZERO
        } else {
            rng.random_range(Duration::ZERO..f.max_delay)
        };
        if rng.random_bool(f.long_pause) {
            delay += f.long_delay;
        }
        let x: f64 = rng.random();
        let fate = if x < f.fail_before {
            Fate::FailBefore
        } else if x < f.fail_before + f.fail_after {
            Fate::FailAfter
        } else if x < f.fail_before + f.fail_after + f.hang_after {
            Fate::HangAfter
        } else {
            Fate::Pass
        };
        (delay, fate, f.hang)
    }

    async fn run<T>(
        &self,
        op: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        let (delay, fate, hang) = self.draw();
        act(delay, fate, hang, op).await
    }
}

async fn act<T>(
    delay: Duration,
    fate: Fate,
    hang: Duration,
    op: impl std::future::Future<Output = object_store::Result<T>>,
) -> object_store::Result<T> {
    tokio::time::sleep(delay).await;
    match fate {
        Fate::FailBefore => Err(injected("before")),
        Fate::Pass => op.await,
        Fate::FailAfter => {
            let _ = op.await;
            Err(injected("after"))
        }
        Fate::HangAfter => {
            let r = op.await;
            tokio::time::sleep(hang).await;
            r
        }
    }
}

fn injected(when: &'static str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("injected failure {when} acting").into(),
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let (delay, fate, hang) = self.draw();
        let (inner, location) = (self.inner.clone(), location.clone());
        let task = tokio::spawn(async move {
            act(delay, fate, hang, inner.put_opts(&location, payload, opts)).await
        });
        task.await.unwrap_or_else(|e| {
            Err(object_store::Error::Generic {
                store: "faulty",
                source: Box::new(e),
            })
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        // Buffer the body so a failure injected "after" covers the whole read.
        self.run(async {
            let r = self.inner.get_opts(location, options).await?;
            let (meta, range, attributes) = (r.meta.clone(), r.range.clone(), r.attributes.clone());
            let bytes = r.bytes().await?;
            let stream = futures::stream::once(async move { Ok(bytes) });
            Ok(GetResult {
                payload: object_store::GetResultPayload::Stream(Box::pin(stream)),
                meta,
                range,
                attributes,
                extensions: Default::default(),
            })
        })
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        // One fate per call, drawn now in call order like other calls (the
        // log deletes one object per call).
        let (delay, fate, hang) = self.draw();
        let inner = self.inner.clone();
        Box::pin(locations.then(move |loc| {
            let fate = fate;
            let inner = inner.clone();
            async move {
                let loc = loc?;
                let one = futures::stream::once(std::future::ready(Ok(loc.clone()))).boxed();
                let op = async move { inner.delete_stream(one).next().await.unwrap_or(Ok(loc)) };
                act(delay, fate, hang, op).await
            }
        }))
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let omit = self
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .list_omit;
        let seed: u64 = self.rng.lock().unwrap_or_else(|p| p.into_inner()).random();
        let mut rng = SmallRng::seed_from_u64(seed);
        let kept = self
            .inner
            .list(prefix)
            .filter(move |_| std::future::ready(!rng.random_bool(omit)));
        Box::pin(kept)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.run(self.inner.copy_opts(from, to, options)).await
    }
}
