//! Types every part of Floe shares, so the parts need not depend on each other.
//!
//! # Layout
//! - [`TenantId`], [`shard_prefix`] and [`usage_prefix`]: the functions that
//!   turn a tenant into a storage path (DESIGN.md invariant 4).
//! - [`batch`]: a read-only view of a Kafka record batch v2 header, plus CRC-32C
//!   validation and the two fields the owner rewrites.
//! - [`telemetry`]: metrics through the OpenTelemetry API, shared helpers.

pub mod batch;
pub mod telemetry;

use std::fmt;

/// A tenant, resolved once at authentication. Only ASCII alphanumerics, `-` and
/// `_` are accepted, so the id is always safe inside an object path.
/// Deserialising checks the id too, so a peer cannot smuggle a path in.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TryFrom<String> for TenantId {
    type Error = InvalidTenantId;
    fn try_from(s: String) -> Result<Self, InvalidTenantId> {
        Self::new(&s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid tenant id {0:?}: 1-64 ASCII letters, digits, '-' or '_'")]
pub struct InvalidTenantId(pub String);

impl TenantId {
    pub fn new(id: &str) -> Result<Self, InvalidTenantId> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(InvalidTenantId(id.to_string()));
        }
        Ok(Self(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The storage prefix of one shard of one tenant. Every object a shard writes
/// lives below it; no user-chosen string (topic name, group id) is ever part of
/// an object path.
pub fn shard_prefix(tenant: &TenantId, shard: u32) -> String {
    format!("{}/{shard}", shards_prefix(tenant))
}

/// Where every shard of a tenant lives.
pub fn shards_prefix(tenant: &TenantId) -> String {
    format!("tenants/{}/shards", tenant.as_str())
}

/// Where a tenant's usage records live: beside its shards, one per window
/// and shard.
pub fn usage_prefix(tenant: &TenantId) -> String {
    format!("tenants/{}/usage", tenant.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_path_safe() {
        assert!(TenantId::new("acme-01_x").is_ok());
        for bad in ["", "..", "a/b", "é", &"x".repeat(65), "a b"] {
            assert!(TenantId::new(bad).is_err(), "{bad:?} accepted");
        }
        let t = TenantId::new("acme").expect("valid");
        assert_eq!(shard_prefix(&t, 3), "tenants/acme/shards/3");
    }
}
