//! Plans' quota policies, at the shard owner. A policy (a component of the
//! `quota` world) is asked once per tenant, request kind and window (one
//! second), in the background, with the tenant's use in the window before;
//! its decision is then enforced here, natively, on every request of that
//! kind until the next decision lands. A request never waits for Wasm:
//! until a tenant's first decision, and whenever a policy fails (a trap, a
//! limit, a component that cannot be read), the plan's native limits apply,
//! the failure is counted and logged, and the policy is not asked again
//! for that tenant and kind for [`FAILED_BACKOFF`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use floe_common::TenantId;
use floe_runtime::{Decision, Labels, Query, RecentUsage};
use floe_tenants::PlanPolicy;
use object_store::ObjectStoreExt;
use tokio::time::Instant;

use super::{LocalWorker, Shard};
use crate::quota::{Admission, Kind, Usage};

/// How long one decision's window lasts.
pub const WINDOW: Duration = Duration::from_secs(1);

/// After a policy fails for a tenant and kind, it is not asked again for
/// this long: a policy that spins to its deadline must not burn a core per
/// tenant while the native limits stand in.
pub const FAILED_BACKOFF: Duration = Duration::from_secs(10);

/// Where a worker learns the policy of each tenant's plan (asked on every
/// charge, so a cheap look-up).
pub type PolicyFn = Arc<dyn Fn(&TenantId) -> Option<PlanPolicy> + Send + Sync>;

/// One tenant's windows, one per kind of request.
#[derive(Default)]
pub(super) struct Windows(HashMap<Kind, Window>);

#[derive(Default)]
struct Window {
    /// When the open window began (`None` before the first request).
    start: Option<Instant>,
    /// Requests, bytes in, bytes out in the open window.
    used: (u64, u64, u64),
    /// The decision in force, the policy (SHA-256) it came from, and when
    /// it was made: it holds until the next one lands.
    decision: Option<(Decision, String, Instant)>,
    /// A decision is being made.
    asking: bool,
    /// The policy (SHA-256) that failed, not asked again before when.
    failed: Option<(String, Instant)>,
}

/// Per plan: decisions made and policy failures, for `/metrics`.
#[derive(Default)]
pub struct Stats(Mutex<BTreeMap<&'static str, PlanStats>>);

#[derive(Default, Clone)]
struct PlanStats {
    decisions: u64,
    failures: u64,
}

impl Stats {
    fn count(&self, plan: &'static str, failed: bool) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let s = all.entry(plan).or_default();
        if failed {
            s.failures += 1;
        } else {
            s.decisions += 1;
        }
    }

    /// Registers the series (`/metrics`), one per plan with a policy.
    pub fn register(self: &Arc<Self>, m: &opentelemetry::metrics::Meter) {
        type Series = (&'static str, &'static str, fn(&PlanStats) -> u64);
        let series: [Series; 2] = [
            (
                "floe_policy_decisions_total",
                "Decisions made by plans' quota policies.",
                |s| s.decisions,
            ),
            (
                "floe_policy_failures_total",
                "Quota policy calls that failed (trap, limit, unreadable), answered by the native limits.",
                |s| s.failures,
            ),
        ];
        for (name, help, value) in series {
            let me = Arc::downgrade(self);
            m.u64_observable_counter(name)
                .with_description(help)
                .with_callback(move |o| {
                    let Some(me) = me.upgrade() else { return };
                    let all = me.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    // Every plan, so a plan without a policy shows 0.
                    for plan in floe_tenants::Plan::ALL.map(|p| p.name()) {
                        let s = all.get(plan).cloned().unwrap_or_default();
                        o.observe(value(&s), &[opentelemetry::KeyValue::new("plan", plan)]);
                    }
                })
                .build();
        }
    }
}

impl LocalWorker {
    /// The policy's admission for a request of `tenant`, or `None` when the
    /// native limits decide (no decision yet, or the policy failed).
    /// Opens a new window, and asks for its decision, when the last ended.
    pub(super) fn admit(
        &self,
        shard: &Arc<Shard>,
        policy: PlanPolicy,
        usage: &Usage,
        now: Instant,
    ) -> Option<Admission> {
        let mut windows = shard.policy.lock().unwrap_or_else(|p| p.into_inner());
        let w = windows.0.entry(usage.kind).or_default();
        let mut to_ask = None;
        let ended = w.start.is_none_or(|s| now.duration_since(s) >= WINDOW);
        if ended {
            let (requests, bytes_in, bytes_out) = std::mem::take(&mut w.used);
            let recent = RecentUsage {
                window_ms: w.start.map_or(0, |s| {
                    now.duration_since(s).as_millis().min(u32::MAX as u128) as u32
                }),
                requests,
                bytes_in,
                bytes_out,
            };
            w.start = Some(now);
            let resting =
                matches!(&w.failed, Some((sha, until)) if *sha == policy.sha256 && now < *until);
            if !w.asking && !resting {
                w.asking = true;
                to_ask = Some(recent);
            }
        }
        w.used.0 += usage.requests;
        w.used.1 += usage.produce_bytes;
        w.used.2 += usage.fetch_bytes;
        let admission = match &w.decision {
            // A decision of a policy since replaced does not count.
            Some((decision, sha, at)) if *sha == policy.sha256 => Some(match decision {
                Decision::Allow => Admission::default(),
                Decision::Throttle(ms) => {
                    let until = *at + Duration::from_millis(u64::from(*ms));
                    Admission::throttle(until.saturating_duration_since(now))
                }
                Decision::Reject(reason) => Admission {
                    throttle: Duration::ZERO,
                    refused: Some(reason.clone()),
                },
            }),
            _ => None,
        };
        // Asked outside the lock: the first ask in a process makes the
        // Wasm engine.
        drop(windows);
        if let Some(recent) = to_ask {
            self.ask(shard, policy, usage, recent);
        }
        admission
    }

    /// Asks the policy in the background; its decision (or, on failure, no
    /// decision: the native limits) replaces the one in force.
    fn ask(&self, shard: &Arc<Shard>, policy: PlanPolicy, usage: &Usage, recent: RecentUsage) {
        let query = Query {
            tenant: shard.tenant.to_string(),
            plan: policy.plan.name().to_string(),
            kind: match usage.kind {
                Kind::Produce => floe_runtime::Kind::Produce,
                Kind::Fetch => floe_runtime::Kind::Fetch,
                Kind::Other => floe_runtime::Kind::Other,
            },
            request_bytes: usage.produce_bytes + usage.fetch_bytes,
            recent,
        };
        let kind = usage.kind;
        let (shard, stats) = (Arc::downgrade(shard), self.policy_stats.clone());
        let (runtime, wasm) = (self.runtime(), self.policy_wasm(&policy));
        tokio::spawn(async move {
            let plan = policy.plan.name();
            let decided = async {
                let wasm = wasm.await?;
                let labels = Labels {
                    tenant: query.tenant.clone(),
                    plugin: format!("policy:{plan}"),
                };
                // The registry names the component by its SHA-256: the
                // compiled cache's key, without hashing it every decision.
                let digest = floe_runtime::Digest(policy.sha256.clone());
                let mut p = runtime
                    .map_err(|e| e.to_string())?
                    .policy_of(&digest, &wasm, labels)
                    .await
                    .map_err(|e| e.to_string())?;
                p.decide(&query)
                    .await
                    .map(|(d, _fuel)| d)
                    .map_err(|f| f.message)
            }
            .await;
            stats.count(plan, decided.is_err());
            if let Err(e) = &decided {
                tracing::warn!(tenant = %query.tenant, plan, error = %e, "quota policy failed; the plan's native limits apply");
            }
            let Some(shard) = shard.upgrade() else { return };
            let mut windows = shard.policy.lock().unwrap_or_else(|p| p.into_inner());
            let w = windows.0.entry(kind).or_default();
            w.asking = false;
            let now = Instant::now();
            w.failed = decided
                .is_err()
                .then(|| (policy.sha256.clone(), now + FAILED_BACKOFF));
            w.decision = decided.ok().map(|d| (d, policy.sha256.clone(), now));
        });
    }

    /// The policy's component: from memory, or read once from the store.
    fn policy_wasm(
        &self,
        policy: &PlanPolicy,
    ) -> impl std::future::Future<Output = Result<Bytes, String>> + Send + 'static {
        let cached = self
            .policy_wasm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&policy.sha256)
            .cloned();
        let (store, cache, policy) = (self.store.clone(), self.policy_wasm.clone(), policy.clone());
        async move {
            if let Some(w) = cached {
                return Ok(w);
            }
            let path = object_store::path::Path::from(policy.path());
            let wasm = async { store.get(&path).await?.bytes().await }
                .await
                .map_err(|e| format!("reading the policy component: {e}"))?;
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            // Policies are few (one per plan); start over if that changes.
            if cache.len() >= 16 {
                cache.clear();
            }
            cache.insert(policy.sha256.clone(), wasm.clone());
            Ok(wasm)
        }
    }
}
