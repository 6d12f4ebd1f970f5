//! A worker in cluster mode: the QUIC server gateways call, and the leases
//! (claims in its beat) that say which shards it may serve.
//!
//! Before serving a request for a shard it does not hold, a worker takes
//! it only when no live worker claims it and it is the rendezvous pick in
//! its own view; it then writes its beat with the claim before opening the
//! shard (which fences any stale owner through the log). Otherwise it
//! answers [`rpc::MOVED`] naming where to ask. A worker whose own beat
//! could not be written for 3/4 of the lease drops every shard, before
//! anyone may consider its lease expired.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use floe_common::{telemetry, TenantId};
use floe_worker::published::Published;
use floe_worker::{Held, LocalWorker, Produced, Shards, WorkerError};
use object_store::{ObjectStore, ObjectStoreExt};
use opentelemetry::metrics::Meter;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use crate::lock;
use crate::members::{self, Beat, View};
use crate::rpc::{self, Call, Moved, Request};

/// Request bytes one gateway connection may have in flight at a worker;
/// beyond, the worker stops reading and QUIC's flow control pushes back.
const CONNECTION_BYTES: usize = 64 * 1024 * 1024;
/// A shard is handed to a newly preferred worker only after the view has
/// said so this many beats running, so a brief disagreement moves nothing.
const SETTLE_BEATS: u32 = 3;
/// How long a leaving worker waits for its lanes to deliver their answers.
const LANES_END: Duration = Duration::from_secs(10);
/// How long an ending lane waits for the gateway to acknowledge its
/// answers: closing the connection before then would lose them.
const DELIVERY_WAIT: Duration = Duration::from_secs(5);

/// Load figures for `/metrics` and the autoscaler.
#[derive(Default)]
pub struct NodeStats {
    pub requests: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub moved: AtomicU64,
    pub acquired: AtomicU64,
    pub released: AtomicU64,
    /// Releases of idle shards.
    pub unloaded: AtomicU64,
}

pub struct Node {
    pub worker: Arc<LocalWorker>,
    pub view: Arc<View>,
    pub stats: NodeStats,
    id: String,
    addr: String,
    store: Arc<dyn ObjectStore>,
    claims: Mutex<BTreeSet<String>>,
    /// One acquisition or release per tenant at a time.
    changing: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
    /// When the last beat was written.
    beat_ok: Mutex<Option<Instant>>,
    /// One beat write at a time: each carries the claims as they were when
    /// it began and lands after every one begun before it. True once the
    /// beat was removed on leaving: none is written after.
    beating: tokio::sync::Mutex<bool>,
    beat_n: AtomicU64,
    /// Beats running in which each claimed tenant had another pick.
    unsettled: Mutex<HashMap<String, u32>>,
    draining: AtomicBool,
    /// A shard with no work this long is unloaded; `None` keeps shards.
    idle_after: Option<Duration>,
    /// When each claimed shard last had work (see [`Call::is_work`]).
    worked: Mutex<HashMap<String, Instant>>,
    /// Shards this worker unloaded, until every gateway's view has seen the
    /// claim go: idle calls sent on a stale view are answered from here
    /// rather than load the shard again.
    unloaded: Mutex<HashMap<String, (Instant, Arc<Published>)>>,
    /// Calls admitted and not yet answered, per tenant, and the tenants
    /// being handed over. A call is counted only while its shard is claimed
    /// and not leaving (checked under the claims lock), so once a release
    /// has seen the count at zero no call can reopen the shard here.
    calls: Mutex<Calls>,
    /// A tenant's count of calls went to zero.
    calls_done: tokio::sync::Notify,
    /// Set when leaving: lanes stop reading (see [`Node::drain`]).
    stop: watch::Sender<bool>,
    /// Lanes open, each until its last answer was delivered.
    pub(crate) lanes: watch::Sender<usize>,
}

#[derive(Default)]
struct Calls {
    running: HashMap<String, usize>,
    leaving: std::collections::HashSet<String>,
}

impl Node {
    /// Registers the worker (its first beat) and serves `endpoint`.
    pub async fn start(
        worker: Arc<LocalWorker>,
        store: Arc<dyn ObjectStore>,
        timing: members::Timing,
        endpoint: quinn::Endpoint,
        advertised: SocketAddr,
        idle_after: Option<Duration>,
    ) -> anyhow::Result<Arc<Self>> {
        let id = format!("w-{}", uuid::Uuid::new_v4().simple());
        let node = Arc::new(Self {
            worker,
            view: View::new(store.clone(), timing),
            stats: NodeStats::default(),
            id,
            addr: advertised.to_string(),
            store,
            claims: Mutex::new(BTreeSet::new()),
            changing: Mutex::new(HashMap::new()),
            beat_ok: Mutex::new(None),
            beating: tokio::sync::Mutex::new(false),
            beat_n: AtomicU64::new(0),
            unsettled: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            idle_after,
            worked: Mutex::new(HashMap::new()),
            unloaded: Mutex::new(HashMap::new()),
            calls: Mutex::new(Calls::default()),
            calls_done: tokio::sync::Notify::new(),
            stop: watch::Sender::new(false),
            lanes: watch::Sender::new(0),
        });
        node.beat().await?;
        node.view.refresh().await?;
        tokio::spawn(beats(Arc::downgrade(&node)));
        tokio::spawn(accept(node.clone(), endpoint));
        tracing::info!(id = %node.id, addr = %node.addr, "worker registered");
        Ok(node)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn owned(&self) -> usize {
        lock(&self.claims).len()
    }

    /// Writes this worker's beat now: address, claims, draining. A lease
    /// that lapsed before the write, or while it was under way (another
    /// worker may have taken the shards meanwhile), drops every shard
    /// first: a late beat must not renew claims someone else now holds.
    async fn beat(&self) -> object_store::Result<()> {
        let left = self.beating.lock().await;
        if *left {
            return Ok(());
        }
        if !self.lease_holds() {
            self.drop_all("before writing the beat");
        }
        loop {
            let beat = Beat {
                id: self.id.clone(),
                addr: self.addr.clone(),
                n: self.beat_n.fetch_add(1, Relaxed) + 1,
                claims: lock(&self.claims).iter().cloned().collect(),
                draining: self.draining.load(Relaxed),
            };
            let started = Instant::now();
            members::put_beat(&*self.store, members::WORKERS, &beat).await?;
            let lapsed = !self.lease_holds();
            // The lease runs from when the write began, not when it ended.
            *lock(&self.beat_ok) = Some(started);
            if !lapsed || beat.claims.is_empty() {
                return Ok(());
            }
            // It advertises claims now dropped: say so at once, before other
            // workers take them for ours.
            self.drop_all("while the beat was written");
        }
    }

    /// Forgets every shard: the lease lapsed, so another worker may own
    /// them now (its open fenced ours; nothing more is written here).
    fn drop_all(&self, when: &str) {
        let held = {
            let mut claims = lock(&self.claims);
            // Closed while the claims are still held: a call admitted
            // before cannot open them again after (see `enter`).
            for t in claims.iter().filter_map(|t| TenantId::new(t).ok()) {
                self.worker.keep_closed(&t);
            }
            std::mem::take(&mut *claims)
        };
        if held.is_empty() {
            return;
        }
        tracing::warn!(
            shards = held.len(),
            "lease lapsed {when}: dropping every shard"
        );
        lock(&self.worked).clear();
        for t in held {
            if let Ok(t) = TenantId::new(&t) {
                self.worker.forget(&t);
            }
        }
    }

    /// Whether this worker's lease still holds by its own clock.
    fn lease_holds(&self) -> bool {
        let lease = self.view.timing().lease;
        lock(&self.beat_ok).is_some_and(|at| at.elapsed() < lease * 3 / 4)
    }

    fn gate(&self, tenant: &TenantId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.changing)
            .entry(tenant.clone())
            .or_default()
            .clone()
    }

    /// Whether this worker may serve `tenant` now (the call then counts
    /// as running until the guard drops); if not, where to ask.
    async fn admit(self: &Arc<Self>, tenant: &TenantId) -> Result<Running, Admit> {
        let name = tenant.as_str();
        // Leaving (its lease no longer renewed once its beat is gone): a
        // shard it no longer holds is another worker's to take.
        if self.draining.load(Relaxed) && !lock(&self.claims).contains(name) {
            return Err(self.moved_elsewhere(name));
        }
        if !self.lease_holds() {
            return Err(lapsed());
        }
        if self.worker.held(tenant) == Held::Healthy {
            if let Some(running) = self.enter(tenant) {
                return Ok(running);
            }
        }
        let gate = self.gate(tenant);
        let _one = gate.lock().await;
        let claimed = lock(&self.claims).contains(name);
        let held = self.worker.held(tenant);
        if claimed && held == Held::Healthy {
            return self.admit_call(tenant, false);
        }
        if held == Held::Failed || !claimed {
            // Fenced, or about to take the shard: ask the store who has it.
            self.view
                .refresh_within(Duration::from_millis(100))
                .await
                .map_err(|e| Admit::Failed(WorkerError::Unavailable(e.to_string())))?;
        }
        if let Some(other) = self.view.claimant(name, &self.id) {
            if claimed {
                tracing::info!(%tenant, owner = %other.id, "another worker took the shard");
                self.worker.keep_closed(tenant);
                self.worker.forget(tenant);
                lock(&self.claims).remove(name);
                let _ = self.beat().await;
            }
            return Err(Admit::Moved(Some(other.addr)));
        }
        if claimed {
            // Our log failed for another reason: the worker reopens it.
            return self.admit_call(tenant, false);
        }
        let mine = !self.draining.load(Relaxed)
            && members::pick(name, self.candidates().iter()).is_some_and(|b| b.id == self.id);
        if !mine {
            return Err(self.moved_elsewhere(name));
        }
        {
            // Checked again under the lock a drain takes its list under.
            let mut claims = lock(&self.claims);
            if self.draining.load(Relaxed) {
                return Err(self.moved_elsewhere(name));
            }
            claims.insert(name.to_string());
        }
        if let Err(e) = self.beat().await {
            lock(&self.claims).remove(name);
            return Err(Admit::Failed(WorkerError::Unavailable(format!(
                "writing the claim: {e}"
            ))));
        }
        // The beat may have found the lease lapsed and dropped every claim.
        let running = self.admit_call(tenant, true)?;
        self.stats.acquired.fetch_add(1, Relaxed);
        lock(&self.unloaded).remove(name);
        self.worked(tenant);
        tracing::info!(%tenant, "claimed shard");
        Ok(running)
    }

    /// Where a call this worker will not serve should go: where its view
    /// routes the shard, this worker aside.
    fn moved_elsewhere(&self, name: &str) -> Admit {
        let elsewhere = self.view.route(name, Some(&self.id));
        Admit::Moved(elsewhere.map(|b| b.addr))
    }

    /// Counts a call for `tenant` as running, if its shard is claimed and
    /// not being handed over.
    pub(crate) fn enter(self: &Arc<Self>, tenant: &TenantId) -> Option<Running> {
        self.admit_call(tenant, false).ok()
    }

    /// [`Node::enter`], saying why not: a shard being handed over sends the
    /// call on (as moved), one no longer claimed (the lease lapsed) fails it
    /// as retriable. `claimed_now`: the shard was just claimed, so it may be
    /// opened here again (cleared under the same lock `drop_all` closes it
    /// under).
    fn admit_call(
        self: &Arc<Self>,
        tenant: &TenantId,
        claimed_now: bool,
    ) -> Result<Running, Admit> {
        let name = tenant.as_str();
        let claims = lock(&self.claims);
        let mut calls = lock(&self.calls);
        if !claims.contains(name) {
            return Err(lapsed());
        }
        if calls.leaving.contains(name) {
            return Err(self.moved_elsewhere(name));
        }
        if claimed_now {
            self.worker.may_open(tenant);
        }
        *calls.running.entry(name.to_string()).or_default() += 1;
        Ok(Running {
            node: self.clone(),
            tenant: name.to_string(),
        })
    }

    pub(crate) fn running(&self, name: &str) -> usize {
        lock(&self.calls).running.get(name).copied().unwrap_or(0)
    }

    /// Waits until no call for `name` is running, for at most `limit`.
    async fn calls_end(&self, name: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let done = self.calls_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.running(name) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return false;
            }
        }
    }

    fn worked(&self, tenant: &TenantId) {
        if !lock(&self.claims).contains(tenant.as_str()) {
            return; // Released meanwhile: nothing to keep loaded.
        }
        lock(&self.worked).insert(tenant.as_str().to_string(), Instant::now());
    }

    /// The workers a shard may be placed on, by this worker's view: the
    /// live ones not draining, and this one (live by its own word).
    fn candidates(&self) -> Vec<Beat> {
        let mut live = self.view.live();
        live.retain(|b| !b.draining && b.id != self.id);
        live.push(Beat {
            id: self.id.clone(),
            addr: self.addr.clone(),
            n: 0,
            claims: vec![],
            draining: false,
        });
        live
    }

    /// Hands a shard over: flush, checkpoint, drop the claim. An idle one
    /// also publishes its offsets for gateways (`unload`), unless a call
    /// is under way, and then it stays (for the next beat to try again).
    /// A busy one takes no new calls (they wait at the gate, then go to
    /// the new owner), its parked group requests are answered, and the
    /// calls running finish first, so none reopens the shard here.
    pub(crate) async fn release(&self, tenant: &TenantId, idle: bool) {
        let gate = self.gate(tenant);
        let _one = gate.lock().await;
        let name = tenant.as_str();
        // Decided on a list read before the gate: the shard may have gone
        // meanwhile (a drain, a lapsed lease) or, if idle, had work since.
        if !lock(&self.claims).contains(name) {
            return;
        }
        let worked_since = |after: Duration| {
            lock(&self.worked)
                .get(name)
                .is_some_and(|at| at.elapsed() < after)
        };
        if idle && self.idle_after.is_some_and(worked_since) {
            return;
        }
        let done = if idle {
            {
                let mut claims = lock(&self.claims);
                if lock(&self.calls).running.contains_key(name) {
                    return;
                }
                claims.remove(name);
            }
            self.worker.keep_closed(tenant);
            self.worker.unload(tenant).await.map(|p| {
                if let Some(p) = p {
                    let entry = (Instant::now(), Arc::new(p));
                    lock(&self.unloaded).insert(name.to_string(), entry);
                }
            })
        } else {
            lock(&self.calls).leaving.insert(name.to_string());
            self.worker.resign(tenant).await;
            let limit = self.view.timing().lease / 2;
            if !self.calls_end(name, limit).await {
                tracing::warn!(%tenant, ?limit, "handing a shard over with calls still running");
            }
            self.worker.keep_closed(tenant);
            self.worker.release(tenant).await
        };
        if let Err(e) = done {
            tracing::warn!(%tenant, error = %e, "releasing shard");
        }
        lock(&self.claims).remove(name);
        lock(&self.calls).leaving.remove(name);
        lock(&self.worked).remove(name);
        self.stats.released.fetch_add(1, Relaxed);
        if idle {
            self.stats.unloaded.fetch_add(1, Relaxed);
        }
        tracing::info!(%tenant, idle, "released shard");
    }

    /// Leaving (SIGTERM): take nothing new, hand every shard over, stop
    /// the lanes, and remove the beat, so the next owners replay nothing
    /// and need not wait for a lease to expire.
    ///
    /// A stopped lane reads no more calls, delivers the answers of those it
    /// read, then ends its side of the stream: a gateway sends the calls
    /// left unanswered elsewhere, as moved, since they were never read.
    /// The beat goes last, so gateways do not take this worker for dead
    /// (and fail those calls) while its answers are on their way.
    pub async fn drain(&self) {
        self.draining.store(true, Relaxed);
        let _ = self.beat().await;
        // Every shard stops taking calls and answers its parked ones first,
        // so their running calls end together, not one shard after another.
        let held: Vec<TenantId> = {
            let claims = lock(&self.claims);
            let mut calls = lock(&self.calls);
            calls.leaving.extend(claims.iter().cloned());
            claims
                .iter()
                .filter_map(|t| TenantId::new(t).ok())
                .collect()
        };
        for t in &held {
            self.worker.resign(t).await;
        }
        for t in &held {
            self.release(t, false).await;
            // Each claim goes from the beat as its shard is handed over: the
            // next owner waits for that, and calls bounce until it sees it.
            let _ = self.beat().await;
        }
        self.stop.send_replace(true);
        let mut lanes = self.lanes.subscribe();
        if tokio::time::timeout(LANES_END, lanes.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!(
                open = *lanes.borrow(),
                "lanes still open after {LANES_END:?}"
            );
        }
        let mut left = self.beating.lock().await;
        *left = true;
        if let Err(e) = self
            .store
            .delete(&members::beat_path(members::WORKERS, &self.id))
            .await
        {
            tracing::warn!(error = %e, "removing the beat");
        }
    }

    /// Renews the lease (the beat; see [`Node::beat`] for a lapsed one).
    /// Returns whether the beat was written.
    async fn renew(&self) -> bool {
        let started = Instant::now();
        if let Err(e) = self.beat().await {
            tracing::warn!(error = %e, "writing the beat");
            return false;
        }
        let took = started.elapsed();
        if took > self.view.timing().beat {
            tracing::warn!(?took, "a slow beat write");
        }
        true
    }

    /// A beat's work besides the beat, run beside the beats so a slow
    /// unload or hand-over never delays the lease: hand over shards another
    /// worker is now the pick for, and unload idle ones.
    async fn tend(&self) {
        if let Err(e) = self.view.refresh().await {
            tracing::warn!(error = %e, "listing cluster members");
            return;
        }
        if self.draining.load(Relaxed) {
            return;
        }
        let live = self.candidates();
        let claims: Vec<String> = lock(&self.claims).iter().cloned().collect();
        let mut moving = Vec::new();
        {
            let mut unsettled = lock(&self.unsettled);
            unsettled.retain(|t, _| claims.contains(t));
            for t in claims {
                let elsewhere = members::pick(&t, live.iter()).is_some_and(|b| b.id != self.id);
                if !elsewhere {
                    unsettled.remove(&t);
                    continue;
                }
                let n = unsettled.entry(t.clone()).or_default();
                *n += 1;
                if *n >= SETTLE_BEATS {
                    moving.push(t);
                }
            }
        }
        for t in moving {
            lock(&self.unsettled).remove(&t);
            if let Ok(t) = TenantId::new(&t) {
                self.release(&t, false).await;
            }
        }
        // Past a lease and two refreshes every view has seen the claim go.
        let t = self.view.timing();
        let stale_views = t.lease + t.refresh * 2;
        lock(&self.unloaded).retain(|_, (at, _)| at.elapsed() < stale_views);
        let Some(idle_after) = self.idle_after else {
            return;
        };
        let idle: Vec<String> = lock(&self.worked)
            .iter()
            .filter(|(_, at)| at.elapsed() >= idle_after)
            .map(|(t, _)| t.clone())
            .collect();
        for t in idle {
            if let Ok(t) = TenantId::new(&t) {
                if !self.worker.settling(&t).await {
                    self.release(&t, true).await;
                }
            }
        }
        if !self.claims_empty() {
            return;
        }
        // Written now, not at the next beat: an autoscaler may stop this
        // worker as soon as the claims are gone.
        let _ = self.beat().await;
    }

    /// Answers a call that needs no shard, for a shard this worker just
    /// unloaded and nobody has taken since (a gateway's view still shows
    /// our claim). Gives the call back when the shard must answer it.
    fn answer_unloaded(
        self: &Arc<Self>,
        tenant: &TenantId,
        call: Call,
        answer: Answer,
        lane_open: &watch::Receiver<bool>,
    ) -> Option<(Call, Answer)> {
        let name = tenant.as_str();
        let p = match lock(&self.unloaded).get(name) {
            Some((_, p)) if !call.is_work() => p.clone(),
            _ => return Some((call, answer)),
        };
        if lock(&self.claims).contains(name) || self.view.claimant(name, &self.id).is_some() {
            return Some((call, answer));
        }
        let id = answer.id;
        let frame = match &call {
            Call::Topics => rpc::answer(id, rpc::DONE, &p.topics),
            Call::LeaderEpoch => rpc::answer(id, rpc::DONE, &p.leader_epoch),
            Call::Fetch {
                topic,
                partition,
                offset,
                committed,
                ..
            } => match p.fetch_at_end(topic, *partition, *offset, *committed) {
                Some(r) => rpc::answer(id, rpc::DONE, &r),
                None => return Some((call, answer)),
            },
            Call::ListOffset {
                topic,
                partition,
                timestamp,
                committed,
            } => match p.list_offset(topic, *partition, *timestamp, *committed) {
                Some(r) => rpc::answer(id, rpc::DONE, &r),
                None => return Some((call, answer)),
            },
            Call::Heartbeat { group, member } if p.heartbeat_ok(group, member) => {
                rpc::answer(id, rpc::DONE, &Ok::<(), floe_worker::GroupError>(()))
            }
            // Usage of idle calls is not metered: the meters are the shard's.
            Call::Charge(_) => {
                rpc::answer(id, rpc::DONE, &floe_worker::quota::Admission::default())
            }
            // A long-poll: ends (the gateway subscribes anew, by then on a
            // fresh view) once the view has had time to change.
            Call::Subscribe => {
                let (tx, wait) = (answer.tx.clone(), self.view.timing().refresh * 2);
                answer.owes_nothing();
                let open = lane_open.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = tx.closed() => return,
                        _ = lane_ended(open) => return,
                    }
                    let _ = tx.send(rpc::answer(id, rpc::MOVED, &Moved { addr: None }));
                });
                return None;
            }
            _ => return Some((call, answer)),
        };
        answer.send(frame);
        None
    }

    fn claims_empty(&self) -> bool {
        lock(&self.claims).is_empty()
    }
}

/// A call admitted for a tenant, counted until it is answered.
pub(crate) struct Running {
    node: Arc<Node>,
    tenant: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut calls = lock(&self.node.calls);
        if let Some(n) = calls.running.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                calls.running.remove(&self.tenant);
                self.node.calls_done.notify_waiters();
            }
        }
    }
}

fn lapsed() -> Admit {
    Admit::Failed(WorkerError::Unavailable(
        "this worker's lease lapsed; retry".into(),
    ))
}

enum Admit {
    Moved(Option<String>),
    Failed(WorkerError),
}

async fn beats(node: std::sync::Weak<Node>) {
    let every = match node.upgrade() {
        Some(n) => n.view.timing().beat,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tending: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        if !node.renew().await {
            continue;
        }
        if tending.as_ref().is_none_or(|t| t.is_finished()) {
            tending = Some(tokio::spawn(async move {
                let started = Instant::now();
                node.tend().await;
                let took = started.elapsed();
                if took > node.view.timing().lease / 2 {
                    tracing::warn!(?took, "a slow pass tending shards");
                }
            }));
        }
    }
}

async fn accept(node: Arc<Node>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let node = node.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "a QUIC handshake failed");
                    return;
                }
            };
            let budget = Arc::new(Semaphore::new(CONNECTION_BYTES));
            loop {
                match conn.accept_bi().await {
                    Ok((send, recv)) => {
                        // Counted before it runs, so a drain waits for it.
                        let open = LaneOpen::new(&node);
                        tokio::spawn(lane(node.clone(), send, recv, budget.clone(), open));
                    }
                    Err(_) => return,
                }
            }
        });
    }
}

/// One gateway's stream for one shard: requests in order, answers as they
/// are ready.
async fn lane(
    node: Arc<Node>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    budget: Arc<Semaphore>,
    open: LaneOpen,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let broken = Arc::new(AtomicBool::new(false));
    // The writer ends last (after every answer, even if this task panics),
    // so it holds the lane's place (`open`) in the count a drain waits on.
    let writer = tokio::spawn({
        let (node, broken) = (node.clone(), broken.clone());
        async move {
            let _open = open;
            while let Some(frame) = rx.recv().await {
                node.stats.bytes_out.fetch_add(frame.len() as u64, Relaxed);
                if send.write_chunk(frame).await.is_err() {
                    return;
                }
            }
            // The gateway takes a finished stream to mean that calls still
            // unanswered were never read, and sends them elsewhere; a frame that
            // could not be read or decoded (its call unknown, so unanswerable)
            // resets it instead.
            if broken.load(Acquire) {
                let _ = send.reset(0u32.into());
            } else if send.finish().is_ok() {
                let _ = tokio::time::timeout(DELIVERY_WAIT, send.stopped()).await;
            }
        }
    });
    // Subscriptions end with the lane's reading side, so the answers'
    // writer (which waits for them) ends too.
    let (ended, lane_open) = watch::channel(false);
    let mut stop = node.stop.subscribe();
    loop {
        let read = tokio::select! {
            r = rpc::read_frame(&mut recv) => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let body = match read {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "reading a lane");
                broken.store(true, Release);
                break;
            }
        };
        let size = body.len().min(CONNECTION_BYTES);
        let permit = tokio::select! {
            p = budget.clone().acquire_many_owned(u32::try_from(size).unwrap_or(u32::MAX)) => p.ok(),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(permit) = permit else {
            break; // Leaving: the call was not acted on.
        };
        let (
            id,
            Request {
                tenant,
                call,
                trace,
            },
        ) = match rpc::parse_request(body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "an undecodable RPC request; closing the lane");
                broken.store(true, Release);
                break;
            }
        };
        node.stats.requests.fetch_add(1, Relaxed);
        node.stats.bytes_in.fetch_add(size as u64, Relaxed);
        let answer = Answer {
            id,
            tx: tx.clone(),
            sent: false,
        };
        let Some((call, answer)) = node.answer_unloaded(&tenant, call, answer, &lane_open) else {
            continue;
        };
        let running = match node.admit(&tenant).await {
            Ok(r) => r,
            Err(Admit::Moved(addr)) => {
                node.stats.moved.fetch_add(1, Relaxed);
                answer.send(rpc::answer(id, rpc::MOVED, &Moved { addr }));
                continue;
            }
            Err(Admit::Failed(e)) => {
                answer.send(rpc::answer(id, rpc::FAILED, &e));
                continue;
            }
        };
        let work = call.is_work();
        if work {
            node.worked(&tenant);
        }
        let worker = node.worker.clone();
        let tx = tx.clone();
        let span = rpc::serving_span(&tenant, trace.as_deref());
        match call {
            // Accepted in line, so the lane's order is the log's order.
            Call::Produce {
                topic,
                partition,
                batches,
            } => match worker
                .produce(&tenant, &topic, partition, batches)
                .instrument(span.clone())
                .await
            {
                Ok(accepted) => {
                    let node = node.clone();
                    tokio::spawn(
                        async move {
                            let r = accepted.durable().await;
                            answer.send(rpc::outcome::<Produced>(id, &r));
                            node.worked(&tenant);
                            drop((permit, running));
                        }
                        .instrument(span),
                    );
                }
                Err(e) => answer.send(rpc::outcome::<Produced>(id, &Err(e))),
            },
            // Counted until subscribed (so it cannot reopen a shard
            // handed over meanwhile), not after: it follows the shard and
            // ends when the shard goes.
            Call::Subscribe => {
                answer.owes_nothing();
                let open = lane_open.clone();
                tokio::spawn(subscription(worker, tenant, id, tx, running, open));
            }
            call => {
                let node = node.clone();
                tokio::spawn(
                    async move {
                        let frame = dispatch(&*worker, &tenant, id, call).await;
                        answer.send(frame);
                        // A parked call (a join phase) is work until it ends.
                        if work {
                            node.worked(&tenant);
                        }
                        drop((permit, running));
                    }
                    .instrument(span),
                );
            }
        }
    }
    ended.send_replace(true);
    drop(tx);
    let _ = writer.await;
}

/// Counts a lane as open (see [`Node::drain`]) until it drops.
struct LaneOpen(Arc<Node>);

impl LaneOpen {
    fn new(node: &Arc<Node>) -> Self {
        node.lanes.send_modify(|n| *n += 1);
        Self(node.clone())
    }
}

impl Drop for LaneOpen {
    fn drop(&mut self) {
        self.0.lanes.send_modify(|n| *n -= 1);
    }
}

/// Where one call's answer goes. Dropped unsent (a panic), it answers
/// FAILED, retriable: every call a lane read is answered, so a finished
/// stream still means that calls left unanswered were never read.
struct Answer {
    id: u64,
    tx: mpsc::UnboundedSender<Bytes>,
    sent: bool,
}

impl Answer {
    fn send(mut self, frame: Bytes) {
        self.sent = true;
        let _ = self.tx.send(frame);
    }

    /// A subscription's answers are updates, sent as they come.
    fn owes_nothing(mut self) {
        self.sent = true;
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !self.sent {
            let e = WorkerError::Uncertain(
                "the call failed on the worker and may or may not have taken effect".into(),
            );
            let _ = self.tx.send(rpc::answer(self.id, rpc::FAILED, &e));
        }
    }
}

/// Resolves once the lane that `open` watches stopped reading.
async fn lane_ended(mut open: watch::Receiver<bool>) {
    let _ = open.wait_for(|ended| *ended).await;
}

/// Sends the shard's durable counter whenever it moves; when the shard
/// goes from this worker, says so, and the gateway subscribes anew.
async fn subscription(
    worker: Arc<LocalWorker>,
    tenant: TenantId,
    id: u64,
    tx: mpsc::UnboundedSender<Bytes>,
    running: Running,
    lane_open: watch::Receiver<bool>,
) {
    let subscribed = worker.subscribe(&tenant).await;
    drop(running);
    let mut rx = match subscribed {
        Ok(rx) => rx,
        Err(e) => {
            let _ = tx.send(rpc::answer(id, rpc::FAILED, &e));
            return;
        }
    };
    loop {
        let n = *rx.borrow_and_update();
        if tx.send(rpc::answer(id, rpc::CHANGED, &n)).is_err() {
            return;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = tx.closed() => return,
            _ = lane_ended(lane_open.clone()) => return,
        }
    }
    let _ = tx.send(rpc::answer(id, rpc::MOVED, &Moved { addr: None }));
}

/// Runs one call that may go out of order, as its answer frame.
async fn dispatch<W: Shards>(w: &W, t: &TenantId, id: u64, call: Call) -> Bytes {
    use rpc::outcome as o;
    match call {
        Call::Topics => o(id, &w.topics(t).await),
        Call::CreateTopic(new) => o(id, &w.create_topic(t, new).await),
        Call::DeleteTopic(name) => o(id, &w.delete_topic(t, &name).await),
        Call::CreatePartitions {
            name,
            total,
            validate_only,
        } => o(
            id,
            &w.create_partitions(t, &name, total, validate_only).await,
        ),
        Call::AlterConfigs {
            name,
            change,
            validate_only,
        } => o(id, &w.alter_configs(t, &name, change, validate_only).await),
        Call::Fetch {
            topic,
            partition,
            offset,
            max_bytes,
            min_one,
            committed,
        } => o(
            id,
            &w.fetch(t, &topic, partition, offset, max_bytes, min_one, committed)
                .await,
        ),
        Call::ListOffset {
            topic,
            partition,
            timestamp,
            committed,
        } => o(
            id,
            &w.list_offset(t, &topic, partition, timestamp, committed)
                .await,
        ),
        Call::DeleteRecords {
            topic,
            partition,
            offset,
        } => o(id, &w.delete_records(t, &topic, partition, offset).await),
        Call::InitProducerId {
            transactional_id,
            timeout_ms,
            current,
        } => o(
            id,
            &w.init_producer_id(t, transactional_id.as_deref(), timeout_ms, current)
                .await,
        ),
        Call::AddPartitionsToTxn {
            transactional_id,
            producer,
            partitions,
        } => o(
            id,
            &w.add_partitions_to_txn(t, &transactional_id, producer, partitions)
                .await,
        ),
        Call::AddOffsetsToTxn {
            transactional_id,
            producer,
            group,
        } => o(
            id,
            &w.add_offsets_to_txn(t, &transactional_id, producer, &group)
                .await,
        ),
        Call::TxnOffsetCommit {
            transactional_id,
            producer,
            group,
            member,
            offsets,
        } => o(
            id,
            &w.txn_offset_commit(t, &transactional_id, producer, &group, &member, offsets)
                .await,
        ),
        Call::EndTxn {
            transactional_id,
            producer,
            commit,
        } => o(id, &w.end_txn(t, &transactional_id, producer, commit).await),
        Call::Transactions => o(id, &w.transactions(t).await),
        Call::DescribeProducers { topic, partition } => {
            o(id, &w.describe_producers(t, &topic, partition).await)
        }
        Call::Charge(usage) => o(id, &w.charge(t, usage).await),
        Call::Usage { from, to } => o(id, &w.usage(t, from, to).await),
        Call::DeleteTenant => o(id, &w.delete_tenant(t).await),
        Call::LeaderEpoch => o(id, &w.leader_epoch(t).await),
        Call::CommitOffsets {
            group,
            member,
            offsets,
        } => o(id, &w.commit_offsets(t, &group, &member, offsets).await),
        Call::Committed {
            group,
            partitions,
            require_stable,
        } => o(
            id,
            &w.committed(t, &group, partitions, require_stable).await,
        ),
        Call::JoinGroup { group, join } => o(id, &w.join_group(t, &group, join).await),
        Call::SyncGroup {
            group,
            member,
            assignments,
        } => o(id, &w.sync_group(t, &group, &member, assignments).await),
        Call::Heartbeat { group, member } => o(id, &w.heartbeat(t, &group, &member).await),
        Call::LeaveGroup { group, members } => o(id, &w.leave_group(t, &group, members).await),
        Call::DeleteGroups(groups) => o(id, &w.delete_groups(t, groups).await),
        Call::DeleteOffsets { group, partitions } => {
            o(id, &w.delete_offsets(t, &group, partitions).await)
        }
        Call::ListGroups => o(id, &w.list_groups(t).await),
        Call::DescribeGroup(group) => o(id, &w.describe_group(t, &group).await),
        Call::Instances(group) => o(id, &w.instances(t, &group).await),
        Call::SwapInstance {
            group,
            name,
            expect,
            new,
        } => o(id, &w.swap_instance(t, &group, &name, expect, new).await),
        Call::DeployTransform { spec, wasm } => o(id, &w.deploy_transform(t, spec, wasm).await),
        Call::Transforms => o(id, &w.transforms(t).await),
        Call::DeleteTransform(name) => o(id, &w.delete_transform(t, &name).await),
        Call::CreateConnector { spec, wasm } => o(id, &w.create_connector(t, spec, wasm).await),
        Call::Connectors => o(id, &w.connectors(t).await),
        Call::PauseConnector { name, paused } => o(id, &w.pause_connector(t, &name, paused).await),
        Call::DeleteConnector(name) => o(id, &w.delete_connector(t, &name).await),
        Call::Produce { .. } | Call::Subscribe => rpc::answer(
            id,
            rpc::FAILED,
            &WorkerError::Unavailable("misrouted call".into()),
        ),
    }
}

/// The worker's cluster series (`/metrics`).
pub fn register(m: &Meter, node: &Arc<Node>) {
    let n = Arc::downgrade(node);
    telemetry::gauge(
        m,
        "floe_worker_idle",
        "1 when this worker holds no shard: it can be scaled away.",
        move || n.upgrade().map_or(1, |n| i64::from(n.owned() == 0)),
    );
    let n = Arc::downgrade(node);
    telemetry::gauge(
        m,
        "floe_worker_shards_owned",
        "Shards this worker holds the lease of (0: idle, can be scaled away).",
        move || n.upgrade().map_or(0, |n| n.owned() as i64),
    );
    let counters: [telemetry::Series<Node>; 7] = [
        (
            "floe_worker_shards_unloaded_total",
            "Shards released after --idle-timeout-ms without work.",
            |n| &n.stats.unloaded,
        ),
        (
            "floe_worker_rpc_requests_total",
            "Calls received from gateways.",
            |n| &n.stats.requests,
        ),
        (
            "floe_worker_rpc_bytes_in_total",
            "Request bytes received from gateways.",
            |n| &n.stats.bytes_in,
        ),
        (
            "floe_worker_rpc_bytes_out_total",
            "Answer bytes sent to gateways.",
            |n| &n.stats.bytes_out,
        ),
        (
            "floe_worker_rpc_moved_total",
            "Calls answered with where the shard is instead.",
            |n| &n.stats.moved,
        ),
        (
            "floe_worker_shards_acquired_total",
            "Shards this worker took.",
            |n| &n.stats.acquired,
        ),
        (
            "floe_worker_shards_released_total",
            "Shards this worker handed over.",
            |n| &n.stats.released,
        ),
    ];
    telemetry::counters(m, node, &counters);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{self, Identity, SERVER_NAME};
    use object_store::memory::InMemory;

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().expect("an address")
    }

    /// An answer to `call`, or why there was none.
    async fn ask(conn: &quinn::Connection, id: u64, call: Call) -> anyhow::Result<(u64, u8)> {
        let (mut send, mut recv) = conn.open_bi().await?;
        let tenant = TenantId::new("acme").expect("valid");
        send.write_all(&rpc::request(
            id,
            &Request {
                tenant,
                call,
                trace: None,
            },
        ))
        .await?;
        let body = rpc::read_frame(&mut recv)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended unanswered"))?;
        let (id, kind, _) = rpc::parse_answer(body).map_err(anyhow::Error::msg)?;
        Ok((id, kind))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_frames_close_only_their_stream_and_strangers_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        tls::init(dir.path()).expect("cluster init");
        let id = Identity::load(dir.path()).expect("identity");
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let server = crate::endpoint(
            local(),
            Some(id.server().expect("server")),
            id.client().expect("client"),
        )
        .expect("endpoint");
        let addr = server.local_addr().expect("bound");
        let worker = Arc::new(LocalWorker::new(
            store.clone(),
            floe_worker::WorkerConfig::default(),
        ));
        let _node = Node::start(
            worker,
            store,
            members::Timing::default(),
            server,
            addr,
            None,
        )
        .await
        .expect("node");
        let client =
            crate::endpoint(local(), None, id.client().expect("client")).expect("endpoint");
        let conn = client
            .connect(addr, SERVER_NAME)
            .expect("connect")
            .await
            .expect("handshake");

        let mut garbage = 16u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xc1; 16]); // 0xc1: never valid MessagePack
        let bad: [(&str, Vec<u8>); 3] = [
            ("a frame shorter than its id", 3u32.to_be_bytes().to_vec()),
            (
                "a frame over the limit",
                (rpc::MAX_FRAME as u32 + 1).to_be_bytes().to_vec(),
            ),
            ("an undecodable request", garbage),
        ];
        for (what, frame) in bad {
            let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
            send.write_all(&frame).await.expect("sent");
            let answer = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
                .await
                .unwrap_or_else(|_| panic!("{what}: the stream stayed open"));
            // Reset, not finished: a finished stream would tell the gateway
            // that its calls were never read, and it would send them again.
            assert!(answer.is_err(), "{what}: answered {answer:?}");
        }
        // The connection and the worker carry on.
        assert_eq!(
            ask(&conn, 7, Call::Topics).await.expect("an answer"),
            (7, rpc::DONE)
        );

        // Another cluster's certificate gets nothing.
        let other = tempfile::tempdir().expect("temp dir");
        tls::init(other.path()).expect("cluster init");
        let stranger = Identity::load(other.path()).expect("identity");
        let ep =
            crate::endpoint(local(), None, stranger.client().expect("client")).expect("endpoint");
        let refused = match ep.connect(addr, SERVER_NAME).expect("connect").await {
            Err(_) => true,
            Ok(c) => ask(&c, 8, Call::Topics).await.is_err(),
        };
        assert!(refused, "a stranger was served");
    }
}
