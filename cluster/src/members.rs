//! Membership and placement with no service but the object store.
//!
//! Each worker rewrites its beat, `cluster/workers/{id}`, every
//! [`Timing::beat`]: its RPC address and the shards it claims. A claim is
//! the shard's lease: it holds while the beat keeps changing, and a beat
//! nobody has seen change for [`Timing::lease`] (by the viewer's own clock,
//! so clocks need not agree) has expired. Gateways route a shard to its
//! claimant, and an unclaimed shard to the rendezvous-hash pick among live
//! workers; a worker takes an unclaimed shard only when it is that pick in
//! its own view, so gateways that briefly disagree get redirected rather
//! than moving the shard. Safety never rests on this: two owners at once
//! are fenced by the shard's log (DESIGN.md, "The fenced log").
//!
//! Store budget per viewer (every gateway and worker): one LIST per
//! [`Timing::refresh`], plus one GET per beat that changed; per worker one
//! PUT per [`Timing::beat`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::lock;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

/// Where workers' beats live.
pub const WORKERS: &str = "cluster/workers";
/// Where gateways' beats live (`gateways.rs`).
pub const GATEWAYS: &str = "cluster/gateways";

/// How often things happen. Failover takes about `lease + refresh`.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A worker rewrites its beat this often.
    pub beat: Duration,
    /// A beat unchanged this long has expired, and its claims with it. A
    /// worker whose own beat has not been written for 3/4 of this drops
    /// every shard before anyone else may take them.
    pub lease: Duration,
    /// Viewers LIST the beats this often.
    pub refresh: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            beat: Duration::from_secs(1),
            lease: Duration::from_secs(5),
            refresh: Duration::from_secs(1),
        }
    }
}

/// A worker's beat: who it is, where it listens, what it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    pub id: String,
    /// The RPC (QUIC) address gateways connect to.
    pub addr: String,
    /// Increases with every beat, so each one is a change.
    pub n: u64,
    /// Tenants whose shard this worker owns or is opening.
    pub claims: Vec<String>,
    /// Leaving: it takes no new shards.
    #[serde(default)]
    pub draining: bool,
}

pub fn beat_path(dir: &str, id: &str) -> Path {
    Path::from(format!("{dir}/{id}"))
}

/// Writes a beat under `dir` (one PUT).
pub async fn put_beat(store: &dyn ObjectStore, dir: &str, beat: &Beat) -> object_store::Result<()> {
    let body = serde_json::to_vec(beat).expect("a beat serialises");
    store
        .put(&beat_path(dir, &beat.id), PutPayload::from(body))
        .await
        .map(|_| ())
}

struct Seen {
    beat: Beat,
    /// (last modified, e-tag) of the object last read.
    version: (i64, Option<String>),
    /// When this viewer last saw it change, or first saw it.
    changed: Instant,
}

/// One process's view of the workers (or the gateways), refreshed by LIST.
pub struct View {
    store: Arc<dyn ObjectStore>,
    timing: Timing,
    dir: &'static str,
    seen: Mutex<HashMap<String, Seen>>,
    refreshed: Mutex<Option<Instant>>,
    /// Bumped on every refresh that changed who is live or what is claimed.
    changed: watch::Sender<u64>,
}

impl View {
    /// A view of the workers.
    pub fn new(store: Arc<dyn ObjectStore>, timing: Timing) -> Arc<Self> {
        Self::of(store, timing, WORKERS)
    }

    /// A view of the beats under `dir`.
    pub fn of(store: Arc<dyn ObjectStore>, timing: Timing, dir: &'static str) -> Arc<Self> {
        Arc::new(Self {
            store,
            timing,
            dir,
            seen: Mutex::new(HashMap::new()),
            refreshed: Mutex::new(None),
            changed: watch::Sender::new(0),
        })
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Refreshes every `refresh` until the process ends.
    pub fn spawn_refresh(self: &Arc<Self>) {
        let view = Arc::downgrade(self);
        let every = self.timing.refresh;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(view) = view.upgrade() else { return };
                if let Err(e) = view.refresh().await {
                    tracing::warn!(error = %e, "listing cluster members");
                }
            }
        });
    }

    /// Changes whenever the live set or the claims change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Refreshes unless that happened within `fresh`.
    pub async fn refresh_within(&self, fresh: Duration) -> object_store::Result<()> {
        let recent = lock(&self.refreshed).is_some_and(|at| at.elapsed() < fresh);
        if recent {
            return Ok(());
        }
        self.refresh().await
    }

    /// One LIST, and a GET of each beat that changed since the last.
    pub async fn refresh(&self) -> object_store::Result<()> {
        let before = self.summary();
        let listed: Vec<_> = self
            .store
            .list(Some(&Path::from(self.dir)))
            .try_collect()
            .await?;
        let now = Instant::now();
        let mut fresh = Vec::new();
        for meta in &listed {
            let Some(id) = meta.location.filename().map(str::to_string) else {
                continue;
            };
            let version = (meta.last_modified.timestamp_millis(), meta.e_tag.clone());
            let known = lock(&self.seen)
                .get(&id)
                .is_some_and(|s| s.version == version);
            if known {
                continue;
            }
            match self.store.get(&meta.location).await {
                Ok(got) => {
                    let body = got.bytes().await?;
                    match serde_json::from_slice::<Beat>(&body) {
                        Ok(beat) if beat.id == id => fresh.push((id, version, beat)),
                        Ok(_) | Err(_) => tracing::warn!(%id, "unreadable beat; ignored"),
                    }
                }
                // Deleted between LIST and GET: a worker that left.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        {
            let mut seen = lock(&self.seen);
            let present: std::collections::HashSet<_> = listed
                .iter()
                .filter_map(|m| m.location.filename().map(str::to_string))
                .collect();
            seen.retain(|id, _| present.contains(id));
            for (id, version, beat) in fresh {
                let changed = match seen.get(&id) {
                    Some(old) if old.beat == beat => old.changed,
                    _ => now,
                };
                seen.insert(
                    id,
                    Seen {
                        beat,
                        version,
                        changed,
                    },
                );
            }
        }
        *lock(&self.refreshed) = Some(now);
        if self.summary() != before {
            self.changed.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// Live workers and their claims, for change detection.
    fn summary(&self) -> Vec<(String, bool, Vec<String>)> {
        let mut out: Vec<_> = self
            .live()
            .into_iter()
            .map(|b| (b.id, b.draining, b.claims))
            .collect();
        out.sort();
        out
    }

    /// Whether a live worker claims `tenant`'s shard. Asked per request:
    /// looks without copying.
    pub fn claimed(&self, tenant: &str) -> bool {
        let lease = self.timing.lease;
        lock(&self.seen)
            .values()
            .any(|s| s.changed.elapsed() < lease && s.beat.claims.iter().any(|c| c == tenant))
    }

    /// Workers whose beat changed within the lease, in id order.
    pub fn live(&self) -> Vec<Beat> {
        let lease = self.timing.lease;
        let seen = lock(&self.seen);
        let mut out: Vec<Beat> = seen
            .values()
            .filter(|s| s.changed.elapsed() < lease)
            .map(|s| s.beat.clone())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Shards live workers hold (an autoscaling signal).
    pub fn claimed_shards(&self) -> usize {
        self.live().iter().map(|b| b.claims.len()).sum()
    }

    /// Every beat listed, live or not, with how long since it changed.
    pub fn all(&self) -> Vec<(Beat, Duration)> {
        let seen = lock(&self.seen);
        let mut out: Vec<_> = seen
            .values()
            .map(|s| (s.beat.clone(), s.changed.elapsed()))
            .collect();
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        out
    }

    /// Where `tenant`'s shard should be served: its live claimant (the one
    /// seen most recently, should two claim it while one learns it was
    /// fenced), else the rendezvous pick among live workers not draining.
    pub fn route(&self, tenant: &str, except: Option<&str>) -> Option<Beat> {
        let live: Vec<Beat> = self
            .live()
            .into_iter()
            .filter(|b| Some(b.id.as_str()) != except)
            .collect();
        if let Some(b) = live.iter().find(|b| b.claims.iter().any(|c| c == tenant)) {
            return Some(b.clone());
        }
        pick(tenant, live.iter().filter(|b| !b.draining)).cloned()
    }

    /// Whether the worker at `addr` is listed with its lease expired (and
    /// no live beat at that address). An address not listed is not known
    /// to be gone: it may be a worker newer than this view.
    pub fn expired(&self, addr: &str) -> bool {
        let lease = self.timing.lease;
        let seen = lock(&self.seen);
        let mut listed = seen.values().filter(|s| s.beat.addr == addr).peekable();
        listed.peek().is_some() && listed.all(|s| s.changed.elapsed() >= lease)
    }

    /// The live claimant of `tenant` other than `me`.
    pub fn claimant(&self, tenant: &str, me: &str) -> Option<Beat> {
        self.live()
            .into_iter()
            .find(|b| b.id != me && b.claims.iter().any(|c| c == tenant))
    }
}

/// Rendezvous (highest random weight) hashing: every viewer with the same
/// live set picks the same worker, and a worker joining or leaving moves
/// only the shards it wins or held.
pub fn pick<'a>(tenant: &str, workers: impl Iterator<Item = &'a Beat>) -> Option<&'a Beat> {
    workers.max_by_key(|b| (weight(&b.id, tenant), b.id.clone()))
}

/// FNV-1a over `worker \0 tenant`, then a SplitMix64 finaliser so that
/// similar names spread. Stable across processes and releases.
pub(crate) fn weight(worker: &str, tenant: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in worker.bytes().chain([0]).chain(tenant.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// `floe cluster status`: each worker, how long since its beat changed,
/// and the shards it claims.
pub fn status(view: &View) -> String {
    use std::fmt::Write;
    let lease = view.timing().lease;
    let mut out = String::new();
    let all = view.all();
    let _ = writeln!(out, "{} worker(s) listed", all.len());
    for (b, age) in all {
        let state = if age >= lease {
            "expired"
        } else if b.draining {
            "draining"
        } else {
            "live"
        };
        let _ = writeln!(
            out,
            "{}  {}  {}  beat {:.1}s ago  shards: {}",
            b.id,
            b.addr,
            state,
            age.as_secs_f64(),
            if b.claims.is_empty() {
                "-".to_string()
            } else {
                b.claims.join(",")
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(id: &str) -> Beat {
        Beat {
            id: id.into(),
            addr: String::new(),
            n: 0,
            claims: vec![],
            draining: false,
        }
    }

    #[test]
    fn rendezvous_moves_only_what_the_newcomer_wins() {
        let three: Vec<Beat> = ["w1", "w2", "w3"].into_iter().map(beat).collect();
        let four: Vec<Beat> = ["w1", "w2", "w3", "w4"].into_iter().map(beat).collect();
        let tenants: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
        let mut moved = 0;
        let mut per = HashMap::<String, usize>::new();
        for t in &tenants {
            let a = pick(t, three.iter()).expect("a pick").id.clone();
            let b = pick(t, four.iter()).expect("a pick").id.clone();
            if a != b {
                assert_eq!(b, "w4", "{t} moved between old workers");
                moved += 1;
            }
            *per.entry(a).or_default() += 1;
        }
        // About a quarter move to the newcomer; each old worker had about a third.
        assert!((150..350).contains(&moved), "{moved} moved");
        for (w, n) in per {
            assert!((250..420).contains(&n), "{w} has {n}");
        }
    }

    #[tokio::test]
    async fn a_beat_that_stops_changing_expires_and_its_claims_with_it() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let timing = Timing {
            beat: Duration::from_millis(10),
            lease: Duration::from_millis(150),
            refresh: Duration::from_millis(10),
        };
        let view = View::new(store.clone(), timing);
        let mut w1 = beat("w1");
        w1.claims = vec!["acme".into()];
        put_beat(&*store, WORKERS, &w1).await.expect("put");
        put_beat(&*store, WORKERS, &beat("w2")).await.expect("put");
        view.refresh().await.expect("refresh");
        assert_eq!(view.route("acme", None).expect("routed").id, "w1");
        assert_eq!(view.claimant("acme", "w2").expect("claimed").id, "w1");
        // w2 keeps beating, w1 stops.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(300) {
            let mut w2 = beat("w2");
            w2.n = start.elapsed().as_millis() as u64 + 1;
            put_beat(&*store, WORKERS, &w2).await.expect("put");
            tokio::time::sleep(Duration::from_millis(20)).await;
            view.refresh().await.expect("refresh");
        }
        let live: Vec<_> = view.live().into_iter().map(|b| b.id).collect();
        assert_eq!(live, ["w2"]);
        assert!(view.claimant("acme", "w2").is_none());
        assert_eq!(view.route("acme", None).expect("routed").id, "w2");
        // Deleted beats are gone from the view.
        store
            .delete(&beat_path(WORKERS, "w1"))
            .await
            .expect("delete");
        view.refresh().await.expect("refresh");
        assert_eq!(view.all().len(), 1);
    }
}
