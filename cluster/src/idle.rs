//! A gateway's answers for unloaded shards, so idle consumers do not load
//! them again (DESIGN.md invariant 6).
//!
//! While no live worker claims a tenant's shard, its metadata, leader epoch,
//! fetches at the end of a partition, latest and earliest offsets and the
//! heartbeats of stable groups' members are answered from what the shard
//! published when it was unloaded (`floe_worker::published`). The object is
//! trusted only after checking that no newer owner has claimed the shard
//! since; it is dropped as soon as this gateway forwards anything for the
//! tenant or the view shows a claim. Long-polls on an idle shard wake then,
//! and read again from the new owner. Usage charged while idle is kept and
//! sent with the tenant's next forwarded charge.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use floe_common::TenantId;
use floe_storage::ShardLog;
use floe_worker::published::{self, Published};
use floe_worker::quota::Usage;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::watch;

use crate::client::ClientStats;
use crate::lock;
use crate::members::View;

/// One check of the published object's store calls.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Idle {
    store: Arc<dyn ObjectStore>,
    view: Arc<View>,
    known: Mutex<HashMap<TenantId, Arc<Published>>>,
    /// When a look found nothing to trust (no object, or a newer owner):
    /// calls for a shard being placed or moved do not repeat the GETs
    /// within a refresh.
    missed: Mutex<HashMap<TenantId, std::time::Instant>>,
    /// Long-polls on idle shards: the sender drops when the shard loads.
    watches: Mutex<HashMap<TenantId, watch::Sender<u64>>>,
    deferred: Mutex<HashMap<TenantId, Usage>>,
    stats: Arc<ClientStats>,
}

impl Idle {
    pub fn new(store: Arc<dyn ObjectStore>, view: Arc<View>, stats: Arc<ClientStats>) -> Arc<Self> {
        let idle = Arc::new(Self {
            store,
            view,
            known: Mutex::default(),
            missed: Mutex::default(),
            watches: Mutex::default(),
            deferred: Mutex::default(),
            stats,
        });
        tokio::spawn(watch_claims(Arc::downgrade(&idle)));
        idle
    }

    /// What the tenant's shard published, while no worker holds it and no
    /// newer owner has had it since.
    pub async fn published(&self, tenant: &TenantId) -> Option<Arc<Published>> {
        if self.view.claimed(tenant.as_str()) {
            self.forget(tenant);
            return None;
        }
        if let Some(p) = lock(&self.known).get(tenant) {
            self.stats.idle_answers.fetch_add(1, Relaxed);
            return Some(p.clone());
        }
        let refresh = self.view.timing().refresh;
        if lock(&self.missed)
            .get(tenant)
            .is_some_and(|at| at.elapsed() < refresh)
        {
            return None;
        }
        let Some(p) = self.look(tenant).await else {
            lock(&self.missed).insert(tenant.clone(), std::time::Instant::now());
            return None;
        };
        lock(&self.missed).remove(tenant);
        let p = Arc::new(p);
        lock(&self.known).insert(tenant.clone(), p.clone());
        self.stats.idle_answers.fetch_add(1, Relaxed);
        Some(p)
    }

    /// The tenant's published object, if it exists and no newer owner has
    /// claimed the shard since it was written.
    async fn look(&self, tenant: &TenantId) -> Option<Published> {
        let body =
            match tokio::time::timeout(STORE_TIMEOUT, self.store.get(&published::path(tenant)))
                .await
            {
                Ok(Ok(r)) => tokio::time::timeout(STORE_TIMEOUT, r.bytes())
                    .await
                    .ok()?
                    .ok()?,
                _ => return None,
            };
        let p: Published = serde_json::from_slice(&body).ok()?;
        let prefix = object_store::path::Path::from(floe_common::shard_prefix(tenant, 0));
        match ShardLog::superseded(&*self.store, &prefix, p.epoch, STORE_TIMEOUT).await {
            Ok(false) => Some(p),
            _ => None,
        }
    }

    /// The shard is (being) loaded: nothing published holds any more.
    pub fn forget(&self, tenant: &TenantId) {
        if lock(&self.known).remove(tenant).is_some() {
            lock(&self.watches).remove(tenant);
        }
    }

    /// A long-poll on an idle shard: closes when the shard loads.
    pub fn subscribe(&self, tenant: &TenantId) -> watch::Receiver<u64> {
        lock(&self.watches)
            .entry(tenant.clone())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// Keeps an idle tenant's usage for its next forwarded charge: true if
    /// the shard is idle here (answered from what it published).
    pub fn defer(&self, tenant: &TenantId, usage: &Usage) -> bool {
        if !lock(&self.known).contains_key(tenant) {
            return false;
        }
        lock(&self.deferred)
            .entry(tenant.clone())
            .or_default()
            .add(usage);
        true
    }

    /// `usage` plus what was kept while the tenant was idle.
    pub fn with_deferred(&self, tenant: &TenantId, mut usage: Usage) -> Usage {
        if let Some(d) = lock(&self.deferred).remove(tenant) {
            usage.add(&d);
        }
        usage
    }
}

/// Drops what is published for shards the view shows claimed (another
/// gateway's traffic loaded them), waking their long-polls.
async fn watch_claims(idle: Weak<Idle>) {
    let Some(mut changed) = idle.upgrade().map(|i| i.view.watch()) else {
        return;
    };
    while changed.changed().await.is_ok() {
        let Some(idle) = idle.upgrade() else { return };
        // A claim that went may be an unload: look again at once.
        lock(&idle.missed).clear();
        let known: Vec<TenantId> = lock(&idle.known).keys().cloned().collect();
        for t in known {
            if idle.view.claimed(t.as_str()) {
                idle.forget(&t);
            }
        }
    }
}
