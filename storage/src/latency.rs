//! An S3 latency model: a store wrapper that delays every call by a draw from
//! a log-normal distribution fitted to a p50 and a p99, so the S3 path can be
//! measured on a local directory or in memory. Off unless asked for
//! (`floe dev --store-latency`); never on the data path otherwise.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// z-score of the 99th percentile of a standard normal.
const Z99: f64 = 2.326_348;

/// A log-normal delay with the given median and 99th percentile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dist {
    pub p50: Duration,
    pub p99: Duration,
}

impl Dist {
    fn sample(&self, rng: &mut SmallRng) -> Duration {
        let mu = self.p50.as_secs_f64().ln();
        let sigma = (self.p99.as_secs_f64() / self.p50.as_secs_f64())
            .ln()
            .max(0.0)
            / Z99;
        // Box-Muller: one standard normal from two uniforms.
        let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        Duration::from_secs_f64((mu + sigma * z).exp())
    }
}

/// PUT and GET delays; LIST and DELETE use the GET distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    pub put: Dist,
    pub get: Dist,
}

impl Model {
    /// The issue-3 model of S3 Standard: PUT p50 30 ms / p99 150 ms, GET 15 / 60 ms.
    pub const S3: Model = Model {
        put: Dist {
            p50: Duration::from_millis(30),
            p99: Duration::from_millis(150),
        },
        get: Dist {
            p50: Duration::from_millis(15),
            p99: Duration::from_millis(60),
        },
    };
}

impl FromStr for Model {
    type Err = String;

    /// `s3`, or `PUT_P50,PUT_P99,GET_P50,GET_P99` in milliseconds.
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "s3" {
            return Ok(Model::S3);
        }
        let ms: Vec<f64> = s
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let [pp50, pp99, gp50, gp99] = ms[..] else {
            return Err("want `s3` or four numbers: put_p50,put_p99,get_p50,get_p99 (ms)".into());
        };
        if ms.iter().any(|&x| x <= 0.0) || pp99 < pp50 || gp99 < gp50 {
            return Err("latencies must be positive, each p99 at least its p50".into());
        }
        let d = |x: f64| Duration::from_secs_f64(x / 1000.0);
        Ok(Model {
            put: Dist {
                p50: d(pp50),
                p99: d(pp99),
            },
            get: Dist {
                p50: d(gp50),
                p99: d(gp99),
            },
        })
    }
}

impl fmt::Display for Model {
    /// The form `from_str` reads back: four latencies in milliseconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "{},{},{},{}",
            ms(self.put.p50),
            ms(self.put.p99),
            ms(self.get.p50),
            ms(self.get.p99)
        )
    }
}

pub struct Latency {
    inner: Arc<dyn ObjectStore>,
    model: Model,
    rng: Mutex<SmallRng>,
}

impl Latency {
    pub fn new(inner: Arc<dyn ObjectStore>, model: Model, seed: u64) -> Self {
        Self {
            inner,
            model,
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        }
    }

    async fn delay(&self, d: Dist) {
        let t = d.sample(&mut self.rng.lock().unwrap_or_else(|p| p.into_inner()));
        tokio::time::sleep(t).await;
    }
}

impl fmt::Debug for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Latency({:?}, {})", self.model, self.inner)
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Latency({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Latency {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.delay(self.model.put).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.delay(self.model.put).await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.delay(self.model.get).await;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.delay(self.model.get).await;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let d = self
            .model
            .get
            .sample(&mut self.rng.lock().unwrap_or_else(|p| p.into_inner()));
        let inner = self.inner.list(prefix);
        futures::stream::once(tokio::time::sleep(d))
            .flat_map(move |_| futures::stream::empty())
            .chain(inner)
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.delay(self.model.get).await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.delay(self.model.put).await;
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_reads_back_as_written() {
        let m: Model = "30,150,15.5,60".parse().expect("a model");
        assert_eq!(m.to_string().parse::<Model>(), Ok(m));
        assert_eq!(Model::S3.to_string().parse::<Model>(), Ok(Model::S3));
    }

    #[test]
    fn samples_fit_the_model() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut xs: Vec<Duration> = (0..100_000)
            .map(|_| Model::S3.put.sample(&mut rng))
            .collect();
        xs.sort();
        let (p50, p99) = (
            xs[50_000].as_secs_f64() * 1e3,
            xs[99_000].as_secs_f64() * 1e3,
        );
        assert!((27.0..33.0).contains(&p50), "p50 {p50} ms");
        assert!((135.0..165.0).contains(&p99), "p99 {p99} ms");
    }

    #[test]
    fn parses_models() {
        assert_eq!("s3".parse::<Model>(), Ok(Model::S3));
        let m: Model = "30,150,15,60".parse().expect("valid");
        assert_eq!(m, Model::S3);
        assert!("1,2,3".parse::<Model>().is_err());
        assert!("5,1,1,1".parse::<Model>().is_err());
    }
}
