//! Rate quotas per tenant, metered where the tenant's shard is owned (one
//! owner per shard, so the count is exact). Each rate is a virtual clock
//! (GCRA): a request's cost pushes the tenant's "theoretical arrival time"
//! forward by cost / rate; whatever lies beyond now plus a small tolerance
//! is the throttle the request's answer carries (KIP-219) and the time its
//! connection is muted. So a tenant within its rate is never throttled, and
//! one beyond it is held to it, burst or not.

use std::sync::Arc;
use std::time::Duration;

use floe_common::TenantId;
use tokio::time::Instant;

/// How far ahead of its rate a tenant may run before it is throttled: a
/// request or two of a client within its quota.
pub const TOLERANCE: Duration = Duration::from_millis(100);

/// A tenant's limits (its plan's, overridden); `None` is unlimited.
pub use floe_tenants::Quota as Limits;

/// Where a worker learns each tenant's limits.
pub type LimitsFn = Arc<dyn Fn(&TenantId) -> Limits + Send + Sync>;

/// The kind of request a charge is for, as a plan's quota policy is asked.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Kind {
    Produce,
    Fetch,
    #[default]
    Other,
}

/// What a charge decides for the request: how long its tenant must wait,
/// and whether the request is refused (a plan's policy said so) and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Admission {
    pub throttle: Duration,
    pub refused: Option<String>,
}

impl Admission {
    pub fn throttle(throttle: Duration) -> Self {
        Self {
            throttle,
            refused: None,
        }
    }
}

/// What one request used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// What the request was; counts of several requests keep the first's.
    #[serde(default)]
    pub kind: Kind,
    /// Record-batch bytes as sent.
    pub produce_bytes: u64,
    /// Record-batch bytes served.
    pub fetch_bytes: u64,
    pub requests: u64,
    /// Connection time since the connection's last charge.
    pub connection_ms: u64,
}

impl Usage {
    /// Adds `o` to this usage, field by field.
    pub fn add(&mut self, o: &Usage) {
        self.produce_bytes += o.produce_bytes;
        self.fetch_bytes += o.fetch_bytes;
        self.requests += o.requests;
        self.connection_ms += o.connection_ms;
    }
}

/// One rate's virtual clock (also the per-tenant Wasm CPU share).
#[derive(Debug, Default)]
pub(crate) struct Rate {
    /// When the tenant will have paid for everything so far.
    paid_until: Option<Instant>,
}

impl Rate {
    /// Charges `amount` against `per_sec`: how long beyond the tolerance
    /// the charges so far run ahead of the rate.
    pub(crate) fn charge(&mut self, amount: u64, per_sec: Option<u64>, now: Instant) -> Duration {
        let Some(per_sec) = per_sec.filter(|r| *r > 0) else {
            return Duration::ZERO;
        };
        if amount == 0 {
            return Duration::ZERO;
        }
        let cost = Duration::from_secs_f64(amount as f64 / per_sec as f64);
        let from = self.paid_until.map_or(now, |t| t.max(now));
        let until = from + cost;
        self.paid_until = Some(until);
        until.saturating_duration_since(now + TOLERANCE)
    }

    /// How far beyond the tolerance the charges so far run ahead of the
    /// rate, charging nothing.
    fn ahead(&self, per_sec: Option<u64>, now: Instant) -> Duration {
        match (per_sec.filter(|r| *r > 0), self.paid_until) {
            (Some(_), Some(until)) => until.saturating_duration_since(now + TOLERANCE),
            _ => Duration::ZERO,
        }
    }
}

/// One tenant's meters.
#[derive(Debug, Default)]
pub struct Meters {
    produce: Rate,
    fetch: Rate,
    requests: Rate,
}

impl Meters {
    /// Charges `u` and says how long the tenant must now wait: the longest
    /// of its rates' throttles. A produce or fetch whose bytes are not known
    /// yet (a fetch before it is served, an HTTP produce before its body is
    /// read) is told how far ahead that rate already runs.
    pub fn charge(&mut self, limits: &Limits, u: Usage, now: Instant) -> Duration {
        let (pr, fr) = (limits.produce_bytes_per_sec, limits.fetch_bytes_per_sec);
        let p = match (u.kind, u.produce_bytes) {
            (Kind::Produce, 0) => self.produce.ahead(pr, now),
            _ => self.produce.charge(u.produce_bytes, pr, now),
        };
        let f = match (u.kind, u.fetch_bytes) {
            (Kind::Fetch, 0) => self.fetch.ahead(fr, now),
            _ => self.fetch.charge(u.fetch_bytes, fr, now),
        };
        let r = self
            .requests
            .charge(u.requests, limits.requests_per_sec, now);
        p.max(f).max(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_the_rate_nothing_waits_and_beyond_it_the_rate_holds() {
        let limits = Limits {
            produce_bytes_per_sec: Some(1_000_000),
            ..Limits::default()
        };
        let start = Instant::now();
        let mut m = Meters::default();
        let produce = |b| Usage {
            produce_bytes: b,
            requests: 1,
            ..Usage::default()
        };
        // 10 KB every 20 ms is half the rate: never throttled.
        for i in 0..100 {
            let now = start + Duration::from_millis(20 * i);
            assert_eq!(m.charge(&limits, produce(10_000), now), Duration::ZERO);
        }
        // A 5 MB burst at once: the last of it waits about 5 s less the
        // tolerance, so the burst takes 5 s.
        let now = start + Duration::from_secs(10);
        let mut last = Duration::ZERO;
        for _ in 0..50 {
            last = m.charge(&limits, produce(100_000), now);
        }
        assert_eq!(last, Duration::from_secs(5) - TOLERANCE);
        // A produce whose bytes are not known yet is told the lead, and
        // pays nothing for asking; a fetch is not held by the produce rate.
        let ask = Usage {
            kind: Kind::Produce,
            ..Usage::default()
        };
        assert_eq!(
            m.charge(&limits, ask, now),
            Duration::from_secs(5) - TOLERANCE
        );
        assert_eq!(
            m.charge(&limits, ask, now),
            Duration::from_secs(5) - TOLERANCE
        );
        let fetch = Usage {
            kind: Kind::Fetch,
            ..Usage::default()
        };
        assert_eq!(m.charge(&limits, fetch, now), Duration::ZERO);
        let later = now + Duration::from_secs(5);
        assert_eq!(m.charge(&limits, ask, later), Duration::ZERO);
        // Unlimited tenants are never throttled.
        let mut free = Meters::default();
        assert_eq!(
            free.charge(&Limits::default(), produce(u64::MAX / 2), now),
            Duration::ZERO
        );
    }
}
