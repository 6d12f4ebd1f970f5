//! What the registry stores, as JSON values of its log.

use serde::{Deserialize, Serialize};

use crate::acl::Acl;
use crate::scram::Credential;

/// Limits of a tenant; `None` is unlimited. Rates are per second.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produce_bytes_per_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_bytes_per_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u64>,
    /// Kafka connections logged in at once, per gateway: one tenant cannot
    /// take every connection a gateway has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
}

impl Quota {
    /// `self`'s limits, and `base`'s where `self` sets none.
    pub fn over(&self, base: &Quota) -> Quota {
        Quota {
            produce_bytes_per_sec: self.produce_bytes_per_sec.or(base.produce_bytes_per_sec),
            fetch_bytes_per_sec: self.fetch_bytes_per_sec.or(base.fetch_bytes_per_sec),
            requests_per_sec: self.requests_per_sec.or(base.requests_per_sec),
            storage_bytes: self.storage_bytes.or(base.storage_bytes),
            partitions: self.partitions.or(base.partitions),
            connections: self.connections.or(base.connections),
        }
    }
}

/// A plan: a name for a set of default limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    /// 1 MiB/s in, 2 MiB/s out, 100 requests/s, 1 GiB stored, 16 partitions,
    /// 100 connections per gateway.
    Free,
    /// 16 MiB/s in, 32 MiB/s out, 2,000 requests/s, 100 GiB, 1,000 partitions,
    /// 1,000 connections per gateway.
    Standard,
    /// No limits (the dev mode's `default` tenant).
    Unlimited,
}

impl Plan {
    pub fn limits(self) -> Quota {
        const MIB: u64 = 1 << 20;
        match self {
            Plan::Free => Quota {
                produce_bytes_per_sec: Some(MIB),
                fetch_bytes_per_sec: Some(2 * MIB),
                requests_per_sec: Some(100),
                storage_bytes: Some(1 << 30),
                partitions: Some(16),
                connections: Some(100),
            },
            Plan::Standard => Quota {
                produce_bytes_per_sec: Some(16 * MIB),
                fetch_bytes_per_sec: Some(32 * MIB),
                requests_per_sec: Some(2_000),
                storage_bytes: Some(100 << 30),
                partitions: Some(1_000),
                connections: Some(1_000),
            },
            Plan::Unlimited => Quota::default(),
        }
    }

    pub const ALL: [Plan; 3] = [Plan::Free, Plan::Standard, Plan::Unlimited];

    pub fn name(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Standard => "standard",
            Plan::Unlimited => "unlimited",
        }
    }

    pub fn from_name(name: &str) -> Option<Plan> {
        Plan::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// A plan's quota policy: a component of the `quota` world, kept in the
/// object store by content (`system/policies/{sha256}`) and named here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPolicy {
    pub plan: Plan,
    /// Hex SHA-256 of the component: its object's name.
    pub sha256: String,
    pub bytes: u64,
    pub deployed_ms: i64,
}

impl PlanPolicy {
    /// Where the component lives in the object store.
    pub fn path(&self) -> String {
        format!("system/policies/{}", self.sha256)
    }
}

/// An API key as stored: its SCRAM credentials, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub created_ms: i64,
    pub scram_sha_256: Credential,
    pub scram_sha_512: Credential,
}

impl KeyRecord {
    /// What may be shown of the key.
    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            key: self.id.clone(),
            created_ms: self.created_ms,
        }
    }
}

/// A key as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub key: String,
    pub created_ms: i64,
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub plan: Plan,
    /// Overrides of the plan's limits.
    #[serde(default)]
    pub quota: Quota,
    pub created_ms: i64,
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
    /// Bindings restricting some of the keys (`acl.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acls: Vec<Acl>,
}

impl Tenant {
    /// The limits in force: the overrides over the plan's.
    pub fn limits(&self) -> Quota {
        self.quota.over(&self.plan.limits())
    }
}
