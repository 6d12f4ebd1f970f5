//! How many workers the load calls for: the one policy both autoscalers
//! follow. `floe cluster local` runs a [`Scaler`] over its gateway's
//! figures; `floe cluster policy` renders the same numbers, and PromQL over
//! the same series, for the Helm chart's KEDA `ScaledObject`
//! (`deploy/helm/floe/files/policy.yaml`; a test keeps that file equal to
//! [`Policy::default`]'s rendering).
//!
//! Two signals, each from series every gateway exports:
//! - **placement**: calls waiting for a shard no worker holds
//!   (`floe_gateway_unplaced_requests`) or shards live workers hold
//!   (`floe_cluster_claimed_shards`). Either means one worker at least: the
//!   first activates a cluster scaled to zero; the second keeps it until
//!   workers have unloaded their idle shards (`--idle-timeout-ms`).
//! - **throughput**: bytes per second gateways send to and get from workers;
//!   one worker per [`Policy::bytes_per_worker`].
//!
//! [`Scaler::decide`] does what KEDA and the Horizontal Pod Autoscaler do
//! with those: KEDA takes a deployment from zero to one when a signal is
//! active, and back to zero once none has been for the cooldown; between,
//! the HPA wants the most any signal asks for (each `ceil(value /
//! threshold)`), scales up at once, and down only to the most it wanted
//! within the stabilization window. Not modelled: the HPA's 10% tolerance
//! (a cluster-wide setting) and its limits on pods added per period.

use std::collections::VecDeque;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// The policy's numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub min_workers: u32,
    pub max_workers: u32,
    /// Bytes per second through gateways to and from workers that one
    /// worker should carry.
    pub bytes_per_worker: u64,
    /// Throughput above this activates a cluster at zero (placement does
    /// so already for any call; this is for traffic alone).
    pub activation_bytes: u64,
    /// How often the signals are read (KEDA's `pollingInterval`).
    pub polling: Duration,
    /// How long no signal must be active before going to zero (KEDA's
    /// `cooldownPeriod`).
    pub cooldown: Duration,
    /// Scaling down goes only to the most wanted within this window (the
    /// HPA's `scaleDown.stabilizationWindowSeconds`).
    pub scale_down_window: Duration,
    /// Throughput is a rate over this window (PromQL `rate(...[w])`).
    pub rate_window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_workers: 0,
            max_workers: 10,
            bytes_per_worker: 32 << 20,
            activation_bytes: 0,
            polling: Duration::from_secs(5),
            cooldown: Duration::from_secs(30),
            scale_down_window: Duration::from_secs(60),
            rate_window: Duration::from_secs(60),
        }
    }
}

/// Series the policy reads; every gateway exports them.
pub const UNPLACED: &str = "floe_gateway_unplaced_requests";
pub const CLAIMED: &str = "floe_cluster_claimed_shards";
pub const BYTES_SENT: &str = "floe_gateway_rpc_bytes_total";
pub const BYTES_ANSWERED: &str = "floe_gateway_rpc_answer_bytes_total";

/// One reading of the signals.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Signals {
    /// Calls waiting for a shard no worker holds, summed over gateways.
    pub unplaced: f64,
    /// Shards live workers hold (the most any gateway's view shows).
    pub claimed: f64,
    /// Bytes per second to and from workers, summed over gateways.
    pub bytes_per_sec: f64,
}

impl Policy {
    /// The placement signal: 1 while anything waits for or holds a shard.
    fn placement(s: &Signals) -> f64 {
        (s.unplaced.max(0.0) + s.claimed.max(0.0)).min(1.0)
    }

    /// Whether a signal is active (KEDA's `activationThreshold`s: above).
    pub fn active(&self, s: &Signals) -> bool {
        Self::placement(s) > 0.0 || s.bytes_per_sec > self.activation_bytes as f64
    }

    /// The HPA's recommendation: the most any signal asks for, within
    /// `[max(min, 1), max]` (KEDA gives the HPA a minimum of one).
    pub fn wanted(&self, s: &Signals) -> u32 {
        let by_bytes = (s.bytes_per_sec.max(0.0) / self.bytes_per_worker.max(1) as f64).ceil();
        let want = Self::placement(s).ceil().max(by_bytes);
        let floor = self.min_workers.max(1);
        let ceiling = self.max_workers.max(floor);
        (want.min(f64::from(ceiling)) as u32).clamp(floor, ceiling)
    }

    /// The KEDA settings and triggers, as the chart's `files/policy.yaml`.
    pub fn render(&self) -> String {
        let secs = |d: Duration| d.as_secs_f64().ceil().max(1.0) as u64;
        let w = secs(self.rate_window);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Rendered by `floe cluster policy` from cluster/src/autoscale.rs, the\n\
             # policy `floe cluster local` runs too. Change it there and render this\n\
             # file again (a test compares them), or override keys under\n\
             # `autoscaling.overrides` in values.yaml. The chart replaces SELECTOR\n\
             # with `autoscaling.selector` (by default, the release's namespace)."
        );
        let _ = writeln!(out, "minReplicaCount: {}", self.min_workers);
        let _ = writeln!(out, "maxReplicaCount: {}", self.max_workers);
        let _ = writeln!(out, "pollingInterval: {}", secs(self.polling));
        let _ = writeln!(out, "cooldownPeriod: {}", secs(self.cooldown));
        let _ = writeln!(
            out,
            "scaleDownStabilizationWindowSeconds: {}",
            secs(self.scale_down_window)
        );
        let _ = writeln!(out, "triggers:");
        let _ = writeln!(out, "  placement:");
        let _ = writeln!(
            out,
            "    query: clamp_max((sum({UNPLACED}{{SELECTOR}}) or vector(0)) + (max({CLAIMED}{{SELECTOR}}) or vector(0)), 1)"
        );
        let _ = writeln!(out, "    threshold: \"1\"");
        let _ = writeln!(out, "    activationThreshold: \"0\"");
        let _ = writeln!(out, "  throughput:");
        let _ = writeln!(
            out,
            "    query: (sum(rate({BYTES_SENT}{{SELECTOR}}[{w}s])) or vector(0)) + (sum(rate({BYTES_ANSWERED}{{SELECTOR}}[{w}s])) or vector(0))"
        );
        let _ = writeln!(out, "    threshold: \"{}\"", self.bytes_per_worker);
        let _ = writeln!(
            out,
            "    activationThreshold: \"{}\"",
            self.activation_bytes
        );
        out
    }
}

/// The decisions over time: KEDA's activation and cooldown, the HPA's
/// stabilization.
pub struct Scaler {
    policy: Policy,
    /// When a signal was last active.
    last_active: Option<Instant>,
    /// The HPA's recommendations within the stabilization window.
    wanted: VecDeque<(Instant, u32)>,
}

impl Scaler {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            last_active: None,
            wanted: VecDeque::new(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// How many workers to run now, with `current` running.
    pub fn decide(&mut self, now: Instant, current: u32, s: &Signals) -> u32 {
        let p = &self.policy;
        let active = p.active(s);
        if active {
            self.last_active = Some(now);
        }
        if current == 0 {
            // KEDA's activation: to one (or the minimum), then the HPA.
            self.wanted.clear();
            return if active {
                p.min_workers.max(1).min(p.max_workers.max(1))
            } else {
                p.min_workers
            };
        }
        let cooled = self
            .last_active
            .is_none_or(|t| now.saturating_duration_since(t) >= p.cooldown);
        if !active && cooled && p.min_workers == 0 {
            self.wanted.clear();
            return 0;
        }
        let want = p.wanted(s);
        self.wanted.push_back((now, want));
        while self
            .wanted
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > p.scale_down_window)
        {
            self.wanted.pop_front();
        }
        if want >= current {
            return want;
        }
        // Down only as far as the most wanted within the window.
        let stable = self.wanted.iter().map(|(_, w)| *w).max().unwrap_or(want);
        stable.min(current)
    }
}

/// A counter's rate over a window, from readings taken as it goes (what
/// PromQL's `rate` does with a series' samples).
pub struct Rate {
    window: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Adds a reading; returns the rate per second over the window.
    pub fn observe(&mut self, now: Instant, value: u64) -> f64 {
        self.samples.push_back((now, value));
        // Keep the newest sample at or before the window's start.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= self.window)
        {
            self.samples.pop_front();
        }
        let (Some(&(t0, v0)), Some(&(t1, v1))) = (self.samples.front(), self.samples.back()) else {
            return 0.0;
        };
        let dt = t1.saturating_duration_since(t0).as_secs_f64();
        if dt <= 0.0 {
            return 0.0;
        }
        // A counter that went down was reset: count from zero.
        let dv = if v1 >= v0 { v1 - v0 } else { v1 };
        dv as f64 / dt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn load(bytes_per_sec: f64) -> Signals {
        Signals {
            bytes_per_sec,
            claimed: 1.0,
            ..Signals::default()
        }
    }

    #[test]
    fn the_chart_holds_the_default_policy() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/helm/floe/files/policy.yaml"
        );
        let file = std::fs::read_to_string(path).expect("the chart's policy file");
        assert_eq!(
            file,
            Policy::default().render(),
            "render it again: floe cluster policy > deploy/helm/floe/files/policy.yaml"
        );
    }

    #[test]
    fn a_waiting_call_activates_a_cluster_at_zero() {
        let mut s = Scaler::new(Policy::default());
        let t = Instant::now();
        assert_eq!(s.decide(t, 0, &Signals::default()), 0);
        let waiting = Signals {
            unplaced: 3.0,
            ..Signals::default()
        };
        assert_eq!(s.decide(t, 0, &waiting), 1);
        // One worker serves any number of waiting calls.
        assert_eq!(s.decide(t + secs(5), 1, &waiting), 1);
    }

    #[test]
    fn throughput_scales_out_at_once_and_in_after_the_window() {
        let p = Policy {
            bytes_per_worker: 1000,
            max_workers: 4,
            ..Policy::default()
        };
        let window = p.scale_down_window;
        let mut s = Scaler::new(p);
        let t = Instant::now();
        assert_eq!(s.decide(t, 1, &load(2500.0)), 3);
        assert_eq!(s.decide(t, 3, &load(9000.0)), 4, "capped at the maximum");
        // Load falls: the window's most wanted holds until it has passed.
        assert_eq!(s.decide(t + secs(5), 4, &load(100.0)), 4);
        assert_eq!(s.decide(t + window + secs(1), 4, &load(100.0)), 1);
    }

    #[test]
    fn zero_only_after_the_cooldown_with_nothing_claimed() {
        let p = Policy::default();
        let cooldown = p.cooldown;
        let mut s = Scaler::new(p);
        let t = Instant::now();
        assert_eq!(s.decide(t, 1, &load(10.0)), 1);
        let quiet = Signals::default();
        assert_eq!(s.decide(t + secs(1), 1, &quiet), 1, "cooling down");
        assert_eq!(s.decide(t + cooldown, 1, &quiet), 0);
        // A shard still held keeps a worker however long it takes.
        let mut s = Scaler::new(Policy::default());
        let held = Signals {
            claimed: 1.0,
            ..quiet
        };
        assert_eq!(s.decide(t + secs(600), 1, &held), 1);
    }

    #[test]
    fn a_minimum_is_kept() {
        let mut s = Scaler::new(Policy {
            min_workers: 2,
            ..Policy::default()
        });
        let t = Instant::now();
        assert_eq!(s.decide(t, 0, &Signals::default()), 2);
        assert_eq!(s.decide(t + secs(3600), 2, &Signals::default()), 2);
    }

    #[test]
    fn rate_is_over_the_window() {
        let mut r = Rate::new(secs(10));
        let t = Instant::now();
        assert_eq!(r.observe(t, 0), 0.0);
        assert_eq!(r.observe(t + secs(5), 5000), 1000.0);
        assert_eq!(r.observe(t + secs(10), 10_000), 1000.0);
        // Older samples leave the window: only the last 10 s count.
        assert_eq!(r.observe(t + secs(20), 10_000), 0.0);
        // A restart (counter reset) counts from zero.
        assert_eq!(r.observe(t + secs(30), 500), 50.0);
    }
}
