//! A gateway's side of the RPC: [`RemoteShards`] implements
//! [`floe_worker::Shards`] by sending each call to the worker that owns the
//! tenant's shard.
//!
//! Each tenant has a *lane*: a task owning one QUIC stream to the shard's
//! current owner. Calls enter the lane in the order they were made and go
//! out on the stream in that order. When the worker answers
//! [`rpc::MOVED`], the lane stops sending, waits for every answer still due
//! on the old stream, then sends the moved calls to the new owner first, in
//! their order: so the calls of one shard reach whichever worker serves
//! them in the order sent. A shard no live worker can take (none running:
//! scaled to zero) queues its calls for up to [`UNPLACED_WAIT`], then fails
//! them as retriable.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use floe_common::batch::BatchHeader;
use floe_common::telemetry;
use floe_common::TenantId;
use floe_worker::connectors::{ConnectorSpec, ConnectorStatus};
use floe_worker::transforms::{TransformSpec, TransformStatus};
use floe_worker::{
    quota, Accepted, CommittedOffsets, ConfigChange, Described, GroupError, GroupState, Join,
    Joined, MemberRef, NewTopic, OffsetCommit, Produced, ProducerInfo, Read, Result, Shards,
    TopicMeta, TxnMeta, UsageWindow, WorkerError,
};
use object_store::ObjectStore;
use opentelemetry::metrics::Meter;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::idle::Idle;
use crate::lock;
use crate::members::View;
use crate::rpc::{self, Call, Moved, Request};
use crate::tls::SERVER_NAME;

/// How long calls for a shard no worker can take wait for one.
pub const UNPLACED_WAIT: Duration = Duration::from_secs(10);
/// Request bytes one lane (this gateway, one shard) may have in flight.
const LANE_BYTES: usize = 64 * 1024 * 1024;
/// Moves in a row before a lane gives its calls up as retriable: with
/// the waits between them, about 2.7 s for the views to agree.
const MAX_HOPS: u32 = 10;
/// A lane with nothing due this long gives its stream back (a worker
/// takes a bounded number of streams per connection).
const STREAM_IDLE: Duration = Duration::from_millis(if cfg!(test) { 500 } else { 30_000 });
/// A lane with no calls this long is forgotten.
const LANE_IDLE: Duration = Duration::from_millis(if cfg!(test) { 1_000 } else { 300_000 });
/// How long a call waits for a stream to its worker.
const OPEN_WAIT: Duration = Duration::from_secs(3);

/// Figures for `/metrics` and the autoscaler.
#[derive(Default)]
pub struct ClientStats {
    /// Calls waiting for a shard to be placed (no live worker).
    pub unplaced: AtomicI64,
    pub calls: AtomicU64,
    pub moved: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Answer bytes received from workers.
    pub bytes_in: AtomicU64,
    /// Calls answered from what an idle shard published, without loading it.
    pub idle_answers: AtomicU64,
}

pub struct RemoteShards {
    pub(crate) inner: Arc<Inner>,
    idle: Arc<Idle>,
}

pub(crate) struct Inner {
    endpoint: quinn::Endpoint,
    view: Arc<View>,
    conns: Mutex<HashMap<String, quinn::Connection>>,
    pub(crate) lanes: Mutex<HashMap<TenantId, Lane>>,
    watches: Mutex<HashMap<TenantId, watch::Sender<u64>>>,
    next_id: AtomicU64,
    stats: Arc<ClientStats>,
}

#[derive(Clone)]
pub(crate) struct Lane {
    tx: mpsc::UnboundedSender<Out>,
    budget: Arc<Semaphore>,
}

/// A call on its way.
struct Out {
    id: u64,
    frame: Bytes,
    reply: Reply,
    queued: Instant,
    _permit: OwnedSemaphorePermit,
}

enum Reply {
    /// The answer's kind and encoded value, or why none came.
    Once(oneshot::Sender<Result<(u8, Bytes)>>),
    Produced(oneshot::Sender<Result<Produced>>),
    /// A subscription: stays due, and follows the shard when it moves.
    Watch(watch::Sender<u64>),
}

impl Out {
    fn fail(self, e: WorkerError) {
        match self.reply {
            Reply::Once(tx) => {
                let _ = tx.send(Err(e));
            }
            Reply::Produced(tx) => {
                let _ = tx.send(Err(e));
            }
            Reply::Watch(_) => {}
        }
    }

    fn is_watch(&self) -> bool {
        matches!(self.reply, Reply::Watch(_))
    }
}

impl RemoteShards {
    /// `store` holds what idle shards published.
    pub fn new(endpoint: quinn::Endpoint, view: Arc<View>, store: Arc<dyn ObjectStore>) -> Self {
        let stats = Arc::<ClientStats>::default();
        Self {
            idle: Idle::new(store, view.clone(), stats.clone()),
            inner: Arc::new(Inner {
                endpoint,
                view,
                conns: Mutex::new(HashMap::new()),
                lanes: Mutex::new(HashMap::new()),
                watches: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                stats,
            }),
        }
    }

    pub fn stats(&self) -> Arc<ClientStats> {
        self.inner.stats.clone()
    }

    pub fn view(&self) -> &Arc<View> {
        &self.inner.view
    }

    fn lane(&self, tenant: &TenantId) -> Lane {
        let mut lanes = lock(&self.inner.lanes);
        if let Some(l) = lanes.get(tenant).filter(|l| !l.tx.is_closed()) {
            return l.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let lane = Lane {
            tx,
            budget: Arc::new(Semaphore::new(LANE_BYTES)),
        };
        lanes.insert(tenant.clone(), lane.clone());
        tokio::spawn(run_lane(Arc::downgrade(&self.inner), tenant.clone(), rx));
        lane
    }

    /// Queues a call on its tenant's lane. Callers are served in the order
    /// they first poll this (the lane's byte budget is a fair semaphore).
    async fn send(&self, tenant: &TenantId, call: Call, reply: Reply) -> Result<()> {
        self.idle.forget(tenant);
        let id = self.inner.next_id.fetch_add(1, Relaxed);
        let frame = rpc::request(
            id,
            &Request {
                tenant: tenant.clone(),
                call,
                trace: rpc::traceparent(),
            },
        );
        let lane = self.lane(tenant);
        let n = u32::try_from(frame.len().min(LANE_BYTES)).unwrap_or(u32::MAX);
        let permit = lane
            .budget
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| WorkerError::Unavailable("the lane closed".into()))?;
        self.inner.stats.calls.fetch_add(1, Relaxed);
        self.inner
            .stats
            .bytes_out
            .fetch_add(frame.len() as u64, Relaxed);
        let out = Out {
            id,
            frame,
            reply,
            queued: Instant::now(),
            _permit: permit,
        };
        lane.tx
            .send(out)
            .map_err(|_| WorkerError::Unavailable("the lane closed".into()))
    }

    async fn call<T: DeserializeOwned>(&self, tenant: &TenantId, call: Call) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(tenant, call, Reply::Once(tx)).await?;
        let (kind, body) = rx
            .await
            .map_err(|_| WorkerError::Unavailable("the lane closed".into()))??;
        rpc::value(kind, &body)
    }
}

/// The lane of one tenant: see the module's comment.
async fn run_lane(inner: Weak<Inner>, tenant: TenantId, mut rx: mpsc::UnboundedReceiver<Out>) {
    let mut queue: VecDeque<Out> = VecDeque::new();
    let mut hint: Option<String> = None;
    let mut hops = 0u32;
    loop {
        if queue.is_empty() {
            match tokio::time::timeout(LANE_IDLE, rx.recv()).await {
                Ok(Some(o)) => queue.push_back(o),
                Ok(None) => return,
                Err(_) if forget_lane(&inner, &tenant, &rx) => return,
                Err(_) => continue,
            }
        }
        let Some(me) = inner.upgrade() else { return };
        let hinted = hint.take();
        let moved = hinted.is_some();
        let target = hinted.or_else(|| me.view.route(tenant.as_str(), None).map(|b| b.addr));
        let Some(target) = target else {
            wait_for_placement(&me, &mut queue, &mut rx).await;
            continue;
        };
        let view = me.view.clone();
        let moved_to = match open(&me, &target).await {
            Ok(stream) => {
                let stats = me.stats.clone();
                drop(me);
                pump(
                    stream,
                    &mut queue,
                    &mut rx,
                    &stats,
                    &mut hops,
                    (&view, &target),
                )
                .await
            }
            // A worker named by another's older view may have just left:
            // route by our own view next, as after any move.
            Err(e) if moved => {
                tracing::debug!(%tenant, %target, error = %e, "the worker named is unreachable");
                drop(me);
                Some(None)
            }
            Err(e) => {
                tracing::debug!(%tenant, %target, error = %e, "no stream to the worker");
                fail_calls(
                    &mut queue,
                    &format!("the shard's worker at {target} is unreachable: {e}"),
                );
                drop(me);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if let Some(to) = moved_to {
            hops += 1;
            // A worker whose view is older than ours may name one whose
            // lease we have seen expire: route by our view instead.
            let to = to.filter(|addr| !view.expired(addr));
            if hops > MAX_HOPS {
                fail_calls(&mut queue, "the shard is moving between workers; retry");
                hops = 0;
                tokio::time::sleep(Duration::from_millis(200)).await;
            } else if to.is_none() || hops > 1 {
                // Route again once the views have had a chance to change.
                // Moves named in a row are two workers whose views disagree
                // (one released the shard, the other still sees its claim):
                // asking again at once would only bounce.
                tokio::time::sleep(Duration::from_millis(50 * u64::from(hops))).await;
            }
            hint = to;
        }
    }
}

/// Removes an idle lane from the map, unless a call is on its way to it:
/// senders exist only in the map and, briefly, in calls being queued, and
/// no new one is taken while the map is locked.
fn forget_lane(inner: &Weak<Inner>, tenant: &TenantId, rx: &mpsc::UnboundedReceiver<Out>) -> bool {
    let Some(me) = inner.upgrade() else {
        return true;
    };
    let mut lanes = lock(&me.lanes);
    if rx.sender_strong_count() > 1 || !rx.is_empty() {
        return false;
    }
    lanes.remove(tenant);
    drop(lanes);
    let mut watches = lock(&me.watches);
    if watches.get(tenant).is_some_and(|w| w.sender_count() == 1) {
        watches.remove(tenant);
    }
    true
}

/// Holds calls for a shard no live worker can take, until one can or
/// their wait is over.
async fn wait_for_placement(
    me: &Arc<Inner>,
    queue: &mut VecDeque<Out>,
    rx: &mut mpsc::UnboundedReceiver<Out>,
) {
    let mut changed = me.view.watch();
    let waiting = queue.len() as i64;
    me.stats.unplaced.fetch_add(waiting, Relaxed);
    let oldest = queue.front().map_or_else(Instant::now, |o| o.queued);
    tokio::select! {
        _ = changed.changed() => {}
        _ = tokio::time::sleep_until(oldest + UNPLACED_WAIT) => {}
        o = rx.recv() => if let Some(o) = o { queue.push_back(o) },
        // The view refreshes on its own; look again now and then.
        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
    me.stats.unplaced.fetch_sub(waiting, Relaxed);
    let now = Instant::now();
    while queue
        .front()
        .is_some_and(|o| !o.is_watch() && now.duration_since(o.queued) >= UNPLACED_WAIT)
    {
        if let Some(o) = queue.pop_front() {
            o.fail(WorkerError::Unavailable(
                "no worker is available for the shard yet; retry".into(),
            ));
        }
    }
}

fn fail_calls(queue: &mut VecDeque<Out>, why: &str) {
    let keep: VecDeque<Out> = std::mem::take(queue)
        .into_iter()
        .filter_map(|o| {
            if o.is_watch() {
                Some(o)
            } else {
                o.fail(WorkerError::Unavailable(why.to_string()));
                None
            }
        })
        .collect();
    *queue = keep;
}

async fn open(me: &Inner, addr: &str) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
    let cached = lock(&me.conns)
        .get(addr)
        .filter(|c| c.close_reason().is_none())
        .cloned();
    let conn = match cached {
        Some(c) => c,
        None => {
            let sock: std::net::SocketAddr = addr.parse()?;
            let conn = tokio::time::timeout(
                Duration::from_secs(3),
                me.endpoint.connect(sock, SERVER_NAME)?,
            )
            .await
            .map_err(|_| anyhow::anyhow!("connecting timed out"))??;
            lock(&me.conns).insert(addr.to_string(), conn.clone());
            conn
        }
    };
    // Past the worker's limit of streams, opening waits for one to close.
    tokio::time::timeout(OPEN_WAIT, conn.open_bi())
        .await
        .map_err(|_| anyhow::anyhow!("no stream free on the connection"))?
        .map_err(Into::into)
}

/// Sends the lane's calls on one stream and delivers its answers, until
/// the stream ends, idles, or the shard moved (`Some(where)`). Calls the
/// worker moved, and subscriptions, are then back in `queue` in order.
/// A worker that ends its side of the stream has answered every call it
/// read, so the calls still due were never read: they count as moved.
/// Calls due on a broken stream fail, since they may or may not have been
/// served (clients retry; idempotent producers make that safe).
async fn pump(
    (mut send, mut recv): (quinn::SendStream, quinn::RecvStream),
    queue: &mut VecDeque<Out>,
    rx: &mut mpsc::UnboundedReceiver<Out>,
    stats: &ClientStats,
    hops: &mut u32,
    (view, target): (&View, &str),
) -> Option<Option<String>> {
    // A killed worker sends nothing: its lease expiring in the view ends the
    // stream well before QUIC's idle timeout would. It may have expired
    // already (a MOVED from a worker with an older view named it).
    let mut members = view.watch();
    let mut ended = view.expired(target);
    // `Ok(None)`: the worker ended the stream; `Err`: it broke.
    let (ev_tx, mut events) = mpsc::unbounded_channel::<Result<Option<Bytes>, ()>>();
    let reader = tokio::spawn(async move {
        loop {
            let frame = rpc::read_frame(&mut recv).await.map_err(drop);
            let more = matches!(frame, Ok(Some(_)));
            if ev_tx.send(frame).is_err() || !more {
                return;
            }
        }
    });
    let mut due: BTreeMap<u64, Out> = BTreeMap::new();
    let mut moved: Vec<Out> = Vec::new();
    let mut moved_to: Option<Option<String>> = None;
    // The lane's sender goes only with the gateway; then finish what is due.
    let mut open = true;
    let mut active = Instant::now();
    // The worker stopped taking calls on this stream (it stopped reading,
    // or the connection went): nothing more is sent, but the answers and
    // the end of the stream still say which calls were served.
    let mut refused = false;
    while !ended {
        if moved_to.is_none() && !refused {
            while let Some(o) = queue.pop_front() {
                if send.write_chunk(o.frame.clone()).await.is_err() {
                    queue.push_front(o);
                    refused = true;
                    break;
                }
                due.insert(o.id, o);
            }
        }
        if (moved_to.is_some() || refused) && due.values().all(Out::is_watch) {
            // A worker that stopped taking calls: route again, after a pause.
            moved_to.get_or_insert(None);
            break;
        }
        if !open && due.is_empty() {
            break;
        }
        tokio::select! {
            // Nothing due but subscriptions nobody waits on: the stream goes.
            _ = tokio::time::sleep_until(active + STREAM_IDLE), if moved_to.is_none() => {
                let unwatched = |o: &Out| matches!(&o.reply, Reply::Watch(w) if w.receiver_count() == 0);
                if due.values().all(unwatched) {
                    // A long-poll that subscribed meanwhile wakes and asks
                    // again, on a new subscription.
                    for o in std::mem::take(&mut due).into_values() {
                        if let Reply::Watch(w) = o.reply {
                            w.send_modify(|n| *n += 1);
                        }
                    }
                    break;
                }
                active = Instant::now();
            }
            _ = members.changed() => {
                if !view.live().iter().any(|b| b.addr == target) {
                    ended = true;
                    break;
                }
            }
            o = rx.recv(), if open && moved_to.is_none() => match o {
                Some(o) => {
                    active = Instant::now();
                    queue.push_back(o);
                }
                None => open = false,
            },
            ev = events.recv() => {
                active = Instant::now();
                let body = match ev {
                    Some(Ok(Some(body))) => body,
                    Some(Ok(None)) => {
                        moved_to.get_or_insert(None);
                        let unread: Vec<u64> =
                            due.iter().filter(|(_, o)| !o.is_watch()).map(|(id, _)| *id).collect();
                        moved.extend(unread.iter().filter_map(|id| due.remove(id)));
                        break;
                    }
                    _ => {
                        ended = true;
                        break;
                    }
                };
                stats.bytes_in.fetch_add(body.len() as u64, Relaxed);
                let Ok((id, kind, value)) = rpc::parse_answer(body) else {
                    ended = true;
                    break;
                };
                match kind {
                    rpc::MOVED => {
                        if let Some(o) = due.remove(&id) {
                            stats.moved.fetch_add(1, Relaxed);
                            let to = rmp_serde::from_slice::<Moved>(&value).ok().and_then(|m| m.addr);
                            // The worker let the shard go: a subscription ends
                            // (its long-polls wake and read again; the next
                            // subscribe starts another) rather than load the
                            // shard elsewhere: it may have gone idle.
                            if let (None, Reply::Watch(w)) = (&to, &o.reply) {
                                w.send_modify(|n| *n += 1);
                                continue;
                            }
                            moved_to.get_or_insert(to);
                            moved.push(o);
                        }
                    }
                    rpc::CHANGED => {
                        if let (Some(Out { reply: Reply::Watch(w), .. }), Ok(n)) =
                            (due.get(&id), rmp_serde::from_slice::<u64>(&value))
                        {
                            w.send_replace(n);
                        }
                    }
                    _ => {
                        let Some(o) = due.remove(&id) else { continue };
                        *hops = 0;
                        match o.reply {
                            Reply::Once(tx) => { let _ = tx.send(Ok((kind, value))); }
                            Reply::Produced(tx) => { let _ = tx.send(rpc::value(kind, &value)); }
                            // A subscription the worker refused: its
                            // long-polls wake, and the next subscribe
                            // starts another.
                            Reply::Watch(w) => w.send_modify(|n| *n += 1),
                        }
                    }
                }
            }
        }
    }
    reader.abort();
    let _ = send.finish();
    tracing::debug!(
        %target, ended, moved = moved.len(), due = due.len(), ?moved_to,
        "a lane's stream ended"
    );
    // Order: moved calls by id, then calls still due (subscriptions, or all
    // of them if the stream broke), then what was never sent.
    let mut back: Vec<Out> = moved;
    if ended {
        for (_, o) in std::mem::take(&mut due) {
            if o.is_watch() {
                back.push(o);
            } else {
                o.fail(WorkerError::Uncertain(
                    "the connection to the shard's worker broke with the call under way".into(),
                ));
            }
        }
    } else {
        back.extend(due.into_values());
    }
    back.sort_by_key(|o| o.id);
    for o in back.into_iter().rev() {
        queue.push_front(o);
    }
    moved_to
}

impl Shards for RemoteShards {
    async fn topics(&self, tenant: &TenantId) -> Result<Vec<TopicMeta>> {
        if let Some(p) = self.idle.published(tenant).await {
            return Ok(p.topics.clone());
        }
        self.call(tenant, Call::Topics).await
    }

    async fn create_topic(&self, tenant: &TenantId, topic: NewTopic) -> Result<TopicMeta> {
        self.call(tenant, Call::CreateTopic(topic)).await
    }

    async fn delete_topic(&self, tenant: &TenantId, name: &str) -> Result<TopicMeta> {
        self.call(tenant, Call::DeleteTopic(name.into())).await
    }

    async fn create_partitions(
        &self,
        tenant: &TenantId,
        name: &str,
        total: usize,
        validate_only: bool,
    ) -> Result<()> {
        let call = Call::CreatePartitions {
            name: name.into(),
            total,
            validate_only,
        };
        self.call(tenant, call).await
    }

    async fn alter_configs(
        &self,
        tenant: &TenantId,
        name: &str,
        change: ConfigChange,
        validate_only: bool,
    ) -> Result<()> {
        let call = Call::AlterConfigs {
            name: name.into(),
            change,
            validate_only,
        };
        self.call(tenant, call).await
    }

    async fn produce(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
        batches: Vec<(BatchHeader, Bytes)>,
    ) -> Result<Accepted> {
        let (tx, rx) = oneshot::channel();
        let call = Call::Produce {
            topic: topic.into(),
            partition,
            batches,
        };
        self.send(tenant, call, Reply::Produced(tx)).await?;
        Ok(Accepted::remote(rx))
    }

    async fn fetch(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        committed: bool,
    ) -> Result<Read> {
        // At the end of an idle partition: nothing to read, no need to load.
        if let Some(p) = self.idle.published(tenant).await {
            if let Some(r) = p.fetch_at_end(topic, partition, offset, committed) {
                return Ok(r);
            }
        }
        let call = Call::Fetch {
            topic: topic.into(),
            partition,
            offset,
            max_bytes,
            min_one,
            committed,
        };
        self.call(tenant, call).await
    }

    async fn list_offset(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
        timestamp: i64,
        committed: bool,
    ) -> Result<(i64, i64)> {
        if let Some(p) = self.idle.published(tenant).await {
            if let Some(r) = p.list_offset(topic, partition, timestamp, committed) {
                return Ok(r);
            }
        }
        let call = Call::ListOffset {
            topic: topic.into(),
            partition,
            timestamp,
            committed,
        };
        self.call(tenant, call).await
    }

    async fn delete_records(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<i64> {
        let call = Call::DeleteRecords {
            topic: topic.into(),
            partition,
            offset,
        };
        self.call(tenant, call).await
    }

    async fn init_producer_id(
        &self,
        tenant: &TenantId,
        transactional_id: Option<&str>,
        timeout_ms: i32,
        current: Option<(i64, i16)>,
    ) -> Result<(i64, i16)> {
        let call = Call::InitProducerId {
            transactional_id: transactional_id.map(str::to_string),
            timeout_ms,
            current,
        };
        self.call(tenant, call).await
    }

    async fn add_partitions_to_txn(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<Result<()>>> {
        let call = Call::AddPartitionsToTxn {
            transactional_id: transactional_id.into(),
            producer,
            partitions,
        };
        self.call(tenant, call).await
    }

    async fn add_offsets_to_txn(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        group: &str,
    ) -> Result<()> {
        let call = Call::AddOffsetsToTxn {
            transactional_id: transactional_id.into(),
            producer,
            group: group.into(),
        };
        self.call(tenant, call).await
    }

    async fn txn_offset_commit(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        group: &str,
        member: &MemberRef,
        offsets: Vec<OffsetCommit>,
    ) -> Result<Vec<Result<()>>> {
        let call = Call::TxnOffsetCommit {
            transactional_id: transactional_id.into(),
            producer,
            group: group.into(),
            member: member.clone(),
            offsets,
        };
        self.call(tenant, call).await
    }

    async fn end_txn(
        &self,
        tenant: &TenantId,
        transactional_id: &str,
        producer: (i64, i16),
        commit: bool,
    ) -> Result<()> {
        let call = Call::EndTxn {
            transactional_id: transactional_id.into(),
            producer,
            commit,
        };
        self.call(tenant, call).await
    }

    async fn transactions(&self, tenant: &TenantId) -> Result<Vec<(String, TxnMeta)>> {
        self.call(tenant, Call::Transactions).await
    }

    async fn describe_producers(
        &self,
        tenant: &TenantId,
        topic: &str,
        partition: i32,
    ) -> Result<Vec<ProducerInfo>> {
        let call = Call::DescribeProducers {
            topic: topic.into(),
            partition,
        };
        self.call(tenant, call).await
    }

    async fn charge(&self, tenant: &TenantId, usage: quota::Usage) -> Result<quota::Admission> {
        if self.idle.defer(tenant, &usage) {
            return Ok(quota::Admission::default());
        }
        let usage = self.idle.with_deferred(tenant, usage);
        self.call(tenant, Call::Charge(usage)).await
    }

    async fn usage(&self, tenant: &TenantId, from: i64, to: i64) -> Result<Vec<UsageWindow>> {
        self.call(tenant, Call::Usage { from, to }).await
    }

    async fn delete_tenant(&self, tenant: &TenantId) -> Result<()> {
        self.call(tenant, Call::DeleteTenant).await
    }

    async fn leader_epoch(&self, tenant: &TenantId) -> Result<i32> {
        if let Some(p) = self.idle.published(tenant).await {
            return Ok(p.leader_epoch);
        }
        self.call(tenant, Call::LeaderEpoch).await
    }

    async fn commit_offsets(
        &self,
        tenant: &TenantId,
        group: &str,
        member: &MemberRef,
        offsets: Vec<OffsetCommit>,
    ) -> Result<Vec<Result<()>>> {
        let call = Call::CommitOffsets {
            group: group.into(),
            member: member.clone(),
            offsets,
        };
        self.call(tenant, call).await
    }

    async fn committed(
        &self,
        tenant: &TenantId,
        group: &str,
        partitions: Option<Vec<(String, i32)>>,
        require_stable: bool,
    ) -> Result<CommittedOffsets> {
        let call = Call::Committed {
            group: group.into(),
            partitions,
            require_stable,
        };
        self.call(tenant, call).await
    }

    async fn join_group(
        &self,
        tenant: &TenantId,
        group: &str,
        join: Join,
    ) -> Result<Result<Joined, GroupError>> {
        let call = Call::JoinGroup {
            group: group.into(),
            join,
        };
        self.call(tenant, call).await
    }

    async fn sync_group(
        &self,
        tenant: &TenantId,
        group: &str,
        member: &MemberRef,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Result<Bytes, GroupError>> {
        let call = Call::SyncGroup {
            group: group.into(),
            member: member.clone(),
            assignments,
        };
        self.call(tenant, call).await
    }

    async fn heartbeat(
        &self,
        tenant: &TenantId,
        group: &str,
        member: &MemberRef,
    ) -> Result<Result<(), GroupError>> {
        // A member of a group that was stable when the shard unloaded.
        if let Some(p) = self.idle.published(tenant).await {
            if p.heartbeat_ok(group, member) {
                return Ok(Ok(()));
            }
        }
        let call = Call::Heartbeat {
            group: group.into(),
            member: member.clone(),
        };
        self.call(tenant, call).await
    }

    async fn leave_group(
        &self,
        tenant: &TenantId,
        group: &str,
        members: Vec<(String, Option<String>)>,
    ) -> Result<Vec<Result<(), GroupError>>> {
        let call = Call::LeaveGroup {
            group: group.into(),
            members,
        };
        self.call(tenant, call).await
    }

    async fn delete_groups(
        &self,
        tenant: &TenantId,
        groups: Vec<String>,
    ) -> Result<Vec<Result<()>>> {
        self.call(tenant, Call::DeleteGroups(groups)).await
    }

    async fn delete_offsets(
        &self,
        tenant: &TenantId,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<Result<()>>> {
        let call = Call::DeleteOffsets {
            group: group.into(),
            partitions,
        };
        self.call(tenant, call).await
    }

    async fn list_groups(&self, tenant: &TenantId) -> Result<Vec<(String, String, GroupState)>> {
        self.call(tenant, Call::ListGroups).await
    }

    async fn describe_group(&self, tenant: &TenantId, group: &str) -> Result<Option<Described>> {
        self.call(tenant, Call::DescribeGroup(group.into())).await
    }

    async fn instances(&self, tenant: &TenantId, group: &str) -> Result<Vec<(String, Bytes)>> {
        self.call(tenant, Call::Instances(group.into())).await
    }

    async fn swap_instance(
        &self,
        tenant: &TenantId,
        group: &str,
        name: &str,
        expect: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<bool> {
        let call = Call::SwapInstance {
            group: group.into(),
            name: name.into(),
            expect,
            new,
        };
        self.call(tenant, call).await
    }

    async fn deploy_transform(
        &self,
        tenant: &TenantId,
        spec: TransformSpec,
        wasm: Bytes,
    ) -> Result<TransformStatus> {
        self.call(tenant, Call::DeployTransform { spec, wasm })
            .await
    }

    async fn transforms(&self, tenant: &TenantId) -> Result<Vec<TransformStatus>> {
        self.call(tenant, Call::Transforms).await
    }

    async fn delete_transform(&self, tenant: &TenantId, name: &str) -> Result<()> {
        self.call(tenant, Call::DeleteTransform(name.into())).await
    }

    async fn create_connector(
        &self,
        tenant: &TenantId,
        spec: ConnectorSpec,
        wasm: Bytes,
    ) -> Result<ConnectorStatus> {
        self.call(tenant, Call::CreateConnector { spec, wasm })
            .await
    }

    async fn connectors(&self, tenant: &TenantId) -> Result<Vec<ConnectorStatus>> {
        self.call(tenant, Call::Connectors).await
    }

    async fn pause_connector(
        &self,
        tenant: &TenantId,
        name: &str,
        paused: bool,
    ) -> Result<ConnectorStatus> {
        let call = Call::PauseConnector {
            name: name.into(),
            paused,
        };
        self.call(tenant, call).await
    }

    async fn delete_connector(&self, tenant: &TenantId, name: &str) -> Result<()> {
        self.call(tenant, Call::DeleteConnector(name.into())).await
    }

    async fn subscribe(&self, tenant: &TenantId) -> Result<watch::Receiver<u64>> {
        if self.idle.published(tenant).await.is_some() {
            return Ok(self.idle.subscribe(tenant));
        }
        let fresh = {
            let mut watches = lock(&self.inner.watches);
            match watches.get(tenant) {
                // Alive while its lane still holds the sender.
                Some(w) if w.sender_count() > 1 => return Ok(w.subscribe()),
                _ => {
                    let w = watch::Sender::new(0);
                    watches.insert(tenant.clone(), w.clone());
                    w
                }
            }
        };
        let rx = fresh.subscribe();
        self.send(tenant, Call::Subscribe, Reply::Watch(fresh))
            .await?;
        Ok(rx)
    }
}

/// The gateway's cluster series (`/metrics`; the autoscaler's signals).
pub fn register(m: &Meter, stats: Arc<ClientStats>, view: Arc<View>) {
    let counters: [telemetry::Series<ClientStats>; 5] = [
        (
            "floe_gateway_idle_answers_total",
            "Calls answered from what an unloaded shard published.",
            |s| &s.idle_answers,
        ),
        (
            "floe_gateway_rpc_calls_total",
            "Calls sent to workers.",
            |s| &s.calls,
        ),
        (
            "floe_gateway_rpc_moved_total",
            "Calls a worker redirected (the shard was elsewhere).",
            |s| &s.moved,
        ),
        (
            crate::autoscale::BYTES_SENT,
            "Request bytes sent to workers.",
            |s| &s.bytes_out,
        ),
        (
            crate::autoscale::BYTES_ANSWERED,
            "Answer bytes received from workers.",
            |s| &s.bytes_in,
        ),
    ];
    telemetry::counters(m, &stats, &counters);
    let s = stats.clone();
    telemetry::gauge(
        m,
        crate::autoscale::UNPLACED,
        "Calls queued for a shard no worker holds yet.",
        move || s.unplaced.load(Relaxed),
    );
    let v = Arc::downgrade(&view);
    telemetry::gauge(
        m,
        crate::autoscale::CLAIMED,
        "Shards that live workers hold, in this gateway's view.",
        move || v.upgrade().map_or(0, |v| v.claimed_shards() as i64),
    );
    let v = Arc::downgrade(&view);
    telemetry::gauge(
        m,
        "floe_cluster_live_workers",
        "Workers whose beat is live in this gateway's view.",
        move || v.upgrade().map_or(0, |v| v.live().len() as i64),
    );
}
