//! A gateway's lanes and workers' leases together, in one process: nodes
//! and a `RemoteShards` over real QUIC on loopback, sharing an in-memory
//! store that can hold chosen PUTs back.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use floe_common::TenantId;
use floe_worker::{
    GroupError, Held, Join, LocalWorker, NewTopic, Shards, WorkerConfig, WorkerError,
};
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use tokio::sync::Notify;
use tokio::time::{timeout, Instant};

use crate::members::{self, Timing};
use crate::tls::{self, Identity};
use crate::{lock, Node, RemoteShards, View};

const TIMING: Timing = Timing {
    beat: Duration::from_millis(100),
    lease: Duration::from_millis(1000),
    refresh: Duration::from_millis(100),
};

/// An in-memory store whose next PUTs under a prefix wait first.
struct Stall {
    inner: InMemory,
    /// (prefix, delay, PUTs left to hold back)
    armed: Mutex<Option<(String, Duration, usize)>>,
    /// A held-back PUT began.
    started: Notify,
}

impl Stall {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: InMemory::new(),
            armed: Mutex::new(None),
            started: Notify::new(),
        })
    }

    fn arm(&self, prefix: &str, delay: Duration, puts: usize) {
        *lock(&self.armed) = Some((prefix.to_string(), delay, puts));
    }

    fn delay_for(&self, location: &Path) -> Option<Duration> {
        let mut armed = lock(&self.armed);
        let (prefix, delay, left) = armed.as_mut()?;
        if *left == 0 || !location.as_ref().starts_with(prefix.as_str()) {
            return None;
        }
        *left -= 1;
        self.started.notify_one();
        Some(*delay)
    }
}

impl fmt::Debug for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Stall")
    }
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Stall")
    }
}

#[async_trait]
impl ObjectStore for Stall {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if let Some(d) = self.delay_for(location) {
            tokio::time::sleep(d).await;
        }
        self.inner.put_opts(location, payload, opts).await
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
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
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
        self.inner.copy_opts(from, to, options).await
    }
}

struct Cluster {
    _certs: tempfile::TempDir,
    id: Identity,
    store: Arc<Stall>,
}

impl Cluster {
    fn new() -> Self {
        let certs = tempfile::tempdir().expect("temp dir");
        tls::init(certs.path()).expect("cluster init");
        let id = Identity::load(certs.path()).expect("identity");
        Self {
            _certs: certs,
            id,
            store: Stall::new(),
        }
    }

    async fn worker(&self, cfg: WorkerConfig) -> (Arc<Node>, quinn::Endpoint) {
        let server = crate::endpoint(
            loopback(),
            Some(self.id.server().expect("server")),
            self.id.client().expect("client"),
        )
        .expect("endpoint");
        let addr = server.local_addr().expect("bound");
        let store: Arc<dyn ObjectStore> = self.store.clone();
        let worker = Arc::new(LocalWorker::new(store.clone(), cfg));
        let node = Node::start(worker, store, TIMING, server.clone(), addr, None)
            .await
            .expect("node");
        (node, server)
    }

    /// A gateway whose view refreshes only when `refreshing`.
    async fn gateway(&self, refreshing: bool) -> RemoteShards {
        let store: Arc<dyn ObjectStore> = self.store.clone();
        let view = View::new(store.clone(), TIMING);
        view.refresh().await.expect("view");
        if refreshing {
            view.spawn_refresh();
        }
        let ep =
            crate::endpoint(loopback(), None, self.id.client().expect("client")).expect("endpoint");
        RemoteShards::new(ep, view, store)
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("an address")
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("a tenant id")
}

/// A tenant whose shard the gateway's view places on `node`.
fn placed_on(gw: &RemoteShards, node: &Node) -> TenantId {
    (0..1000)
        .map(|i| tenant(&format!("t{i}")))
        .find(|t| {
            gw.view()
                .route(t.as_str(), None)
                .is_some_and(|b| b.id == node.id())
        })
        .expect("some tenant lands on each of two workers")
}

/// Workers `a` and `b`, a gateway whose view refreshes only by hand (so
/// it goes on naming a worker that left), and a tenant served by `a`.
struct Two {
    a: Arc<Node>,
    a_ep: quinn::Endpoint,
    b: Arc<Node>,
    b_ep: quinn::Endpoint,
    gw: Arc<RemoteShards>,
}

async fn two_workers(c: &Cluster) -> (Two, TenantId) {
    let (a, a_ep) = c.worker(WorkerConfig::default()).await;
    let (b, b_ep) = c.worker(WorkerConfig::default()).await;
    let gw = Arc::new(c.gateway(false).await);
    gw.view().refresh().await.expect("view");
    let t = placed_on(&gw, &a);
    gw.topics(&t).await.expect("topics");
    let two = Two {
        a,
        a_ep,
        b,
        b_ep,
        gw,
    };
    (two, t)
}

/// A new member's JoinGroup: with [`parked_config`] it waits 60 s.
fn first_join() -> Join {
    Join {
        member_id: String::new(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "h".into(),
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), bytes::Bytes::new())],
        session_timeout: Duration::from_secs(30),
        rebalance_timeout: Duration::from_secs(60),
        require_known_member_id: false,
    }
}

/// A new group's first join waits out this delay: a parked call.
fn parked_config() -> WorkerConfig {
    WorkerConfig {
        group_initial_rebalance_delay: Duration::from_secs(60),
        ..WorkerConfig::default()
    }
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_answers_parked_joins_and_waits_for_running_calls() {
    let c = Cluster::new();
    let (a, _ep) = c.worker(parked_config()).await;
    let gw = Arc::new(c.gateway(true).await);
    let t = tenant("acme");
    gw.topics(&t).await.expect("topics");

    let join = first_join();
    let joining = tokio::spawn({
        let (gw, t) = (gw.clone(), t.clone());
        async move { gw.join_group(&t, "g", join).await }
    });
    eventually("the join is parked", || a.running(t.as_str()) == 1).await;

    // A call under way holds the hand-over back; a parked join does not.
    let call = a.enter(&t).expect("claimed");
    let releasing = tokio::spawn({
        let (a, t) = (a.clone(), t.clone());
        async move { a.release(&t, false).await }
    });
    let joined = timeout(Duration::from_secs(5), joining)
        .await
        .expect("the parked join is answered at once, not after 60 s")
        .expect("task");
    assert!(
        matches!(joined, Ok(Err(GroupError::CoordinatorNotAvailable))),
        "{joined:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!releasing.is_finished(), "released under a running call");
    assert_eq!(a.worker.held(&t), Held::Healthy);
    assert!(a.enter(&t).is_none(), "a call admitted during a hand-over");

    drop(call);
    timeout(Duration::from_secs(5), releasing)
        .await
        .expect("released once the call ended")
        .expect("task");
    assert_eq!(a.worker.held(&t), Held::No);
    assert_eq!(a.owned(), 0);
    // A call that reaches the worker late does not open the shard again;
    // one admitted anew (the shard claimed again) does.
    assert!(
        a.worker.topics(&t).await.is_err(),
        "reopened after the hand-over"
    );
    assert_eq!(a.worker.held(&t), Held::No);
    gw.topics(&t).await.expect("claimed again");
    assert_eq!(a.worker.held(&t), Held::Healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beat_written_after_the_lease_lapsed_renews_no_claim() {
    let c = Cluster::new();
    let (a, _ep) = c.worker(WorkerConfig::default()).await;
    let gw = Arc::new(c.gateway(true).await);
    let (first, second) = (tenant("first"), tenant("second"));
    gw.topics(&first).await.expect("topics");
    assert_eq!(a.worker.held(&first), Held::Healthy);

    // The next beat takes longer than the lease: other workers may take
    // this one's shards while it is under way.
    let stall = TIMING.lease * 3 / 2;
    c.store.arm(members::WORKERS, stall, 1);
    timeout(Duration::from_secs(5), c.store.started.notified())
        .await
        .expect("a beat began");
    let began = Instant::now();
    // A claim made meanwhile waits for that beat, then writes its own (or,
    // on a slow machine, finds the lease already lapsed and is refused).
    let claimed = timeout(Duration::from_secs(10), gw.topics(&second))
        .await
        .expect("answered");
    // Once the slow beat has landed:
    tokio::time::sleep_until(began + stall + Duration::from_millis(300)).await;

    assert_eq!(
        a.worker.held(&first),
        Held::No,
        "a shard kept across a lapsed lease"
    );
    for t in [&first, &second] {
        if a.worker.held(t) == Held::Healthy {
            assert!(a.enter(t).is_some(), "{t} is open but not claimed");
        }
    }
    if claimed.is_err() {
        // Refused as retriable; a retry claims it afresh.
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw.topics(&second).await.is_err() {
            assert!(Instant::now() < deadline, "never claimed again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_lane_gives_its_stream_back_and_is_forgotten() {
    let c = Cluster::new();
    let (a, _ep) = c.worker(WorkerConfig::default()).await;
    let gw = c.gateway(true).await;
    let t = tenant("acme");
    gw.topics(&t).await.expect("topics");
    assert_eq!(*a.lanes.borrow(), 1);
    eventually("the stream is given back", || *a.lanes.borrow() == 0).await;
    eventually("the lane is forgotten", || lock(&gw.inner.lanes).is_empty()).await;
    gw.topics(&t).await.expect("served again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_finding_no_stream_free_fails_as_retriable_instead_of_hanging() {
    let c = Cluster::new();
    // Each tenant's first join is parked, holding its lane's stream: as
    // many tenants as the worker takes streams fill them all.
    let (a, _ep) = c.worker(parked_config()).await;
    let gw = Arc::new(c.gateway(true).await);
    let mut parked = Vec::new();
    for i in 0..crate::tls::MAX_STREAMS {
        let t = tenant(&format!("busy{i}"));
        gw.topics(&t).await.expect("topics");
        let join = first_join();
        let gw = gw.clone();
        parked.push(tokio::spawn(
            async move { gw.join_group(&t, "g", join).await },
        ));
    }
    eventually("every stream is taken", || {
        (0..crate::tls::MAX_STREAMS).all(|i| a.running(&format!("busy{i}")) == 1)
    })
    .await;
    let answer = timeout(Duration::from_secs(10), gw.topics(&tenant("one-more")))
        .await
        .expect("answered, not left waiting for a stream");
    assert!(
        matches!(&answer, Err(floe_worker::WorkerError::Unavailable(_))),
        "{answer:?}"
    );
    for p in parked {
        p.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_worker_delivers_what_it_answered_and_moves_the_rest() {
    let c = Cluster::new();
    let (
        Two {
            a,
            a_ep,
            b,
            b_ep: _b_ep,
            gw,
        },
        t,
    ) = two_workers(&c).await;

    // A write under way when the worker is told to leave.
    let wal = format!("{}/wal/", floe_common::shard_prefix(&t, 0));
    c.store.arm(&wal, Duration::from_millis(500), 1);
    let creating = tokio::spawn({
        let (gw, t) = (gw.clone(), t.clone());
        async move {
            let topic = NewTopic {
                name: "events".into(),
                partitions: 1,
                configs: Default::default(),
                validate_only: false,
            };
            gw.create_topic(&t, topic).await
        }
    });
    timeout(Duration::from_secs(5), c.store.started.notified())
        .await
        .expect("the write began");
    a.drain().await;
    // As `floe worker` does once drained.
    a_ep.close(0u32.into(), b"leaving");
    let created = timeout(Duration::from_secs(5), creating)
        .await
        .expect("answered")
        .expect("task");
    assert!(created.is_ok(), "an answer lost on leaving: {created:?}");
    // Its beat is gone and stays gone.
    tokio::time::sleep(TIMING.beat * 3).await;
    let beat = members::beat_path(members::WORKERS, a.id());
    assert!(c.store.head(&beat).await.is_err(), "the beat came back");

    // The next owner has it.
    gw.view().refresh().await.expect("view");
    let topics = gw.topics(&t).await.expect("topics");
    assert!(topics.iter().any(|m| m.name == "events"));
    assert_eq!(b.worker.held(&t), Held::Healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_a_stopped_lane_never_read_goes_on_to_the_next_owner() {
    let c = Cluster::new();
    let (
        Two {
            a,
            a_ep: _a_ep,
            b,
            b_ep: _b_ep,
            gw,
        },
        t,
    ) = two_workers(&c).await;

    // Drained, its endpoint still up, and the gateway's view not yet
    // refreshed: the next call goes to it, on a lane that reads nothing.
    a.drain().await;
    let asking = tokio::spawn({
        let (gw, t) = (gw.clone(), t.clone());
        async move { gw.topics(&t).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    gw.view().refresh().await.expect("view");
    let answer = timeout(Duration::from_secs(5), asking)
        .await
        .expect("answered")
        .expect("task");
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(b.worker.held(&t), Held::Healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_under_way_when_its_worker_vanishes_is_of_unknown_outcome() {
    let c = Cluster::new();
    let (
        Two {
            a: _a,
            a_ep,
            b: _b,
            b_ep: _b_ep,
            gw,
        },
        t,
    ) = two_workers(&c).await;
    let topic = NewTopic {
        name: "events".into(),
        partitions: 1,
        configs: Default::default(),
        validate_only: false,
    };
    gw.create_topic(&t, topic).await.expect("created");

    // The worker read the produce and is writing it when its connection
    // goes, without a drain: the record may or may not be stored.
    let wal = format!("{}/wal/", floe_common::shard_prefix(&t, 0));
    c.store.arm(&wal, Duration::from_secs(3), 1);
    let record = floe_worker::records::Out {
        key: None,
        value: Some(bytes::Bytes::from_static(b"maybe")),
        headers: Vec::new(),
        timestamp: 0,
    };
    let batch = floe_worker::records::encode_batch(vec![record]).expect("encoded");
    let batches = floe_common::batch::split(batch).expect("one batch");
    let producing = tokio::spawn({
        let (gw, t) = (gw.clone(), t.clone());
        async move { gw.produce(&t, "events", 0, batches).await?.durable().await }
    });
    timeout(Duration::from_secs(5), c.store.started.notified())
        .await
        .expect("the write began");
    a_ep.close(0u32.into(), b"gone");
    let produced = timeout(Duration::from_secs(10), producing)
        .await
        .expect("answered")
        .expect("task");
    // Not Unavailable, which a Kafka client takes to mean "not stored"
    // (REQUEST_TIMED_OUT on Produce; see gateway/src/kafka/produce.rs).
    assert!(
        matches!(produced, Err(WorkerError::Uncertain(_))),
        "{produced:?}"
    );
}
