//! Each tenant's logged-in Kafka connections and HTTP event streams on this
//! gateway: how many, within its `connections` quota, and the request bytes
//! the Kafka connections may hold together.
//! The gateway's `--max-connections` and its memory are shared by every
//! tenant; without bounds per tenant one of them could take it all and lock
//! the others out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use floe_common::TenantId;
use tokio::sync::Semaphore;

/// Open connections per tenant, and their shared bytes.
pub struct Slots {
    /// Bytes of requests a tenant's connections may have read and not yet
    /// answered, together.
    tenant_bytes: usize,
    open: Mutex<HashMap<TenantId, Tenant>>,
}

struct Tenant {
    connections: u64,
    bytes: Arc<Semaphore>,
}

/// One connection's place in its tenant's count, given back when dropped:
/// when the connection's reader has ended and its last answer is written.
pub struct Slot {
    slots: Arc<Slots>,
    tenant: TenantId,
    bytes: Arc<Semaphore>,
}

impl Slots {
    /// `tenant_bytes` is at most `u32::MAX` (what one acquire can take).
    pub fn new(tenant_bytes: usize) -> Self {
        Self {
            tenant_bytes: tenant_bytes.clamp(1, u32::MAX as usize),
            open: Mutex::default(),
        }
    }

    /// A place for one more of `tenant`'s connections, if it has fewer than
    /// `max` open; else how many it has.
    pub fn take(self: &Arc<Self>, tenant: &TenantId, max: Option<u64>) -> Result<Slot, u64> {
        let mut open = self.lock();
        let n = open.get(tenant).map_or(0, |t| t.connections);
        if max.is_some_and(|max| n >= max) {
            return Err(n);
        }
        let t = open.entry(tenant.clone()).or_insert_with(|| Tenant {
            connections: 0,
            bytes: Arc::new(Semaphore::new(self.tenant_bytes)),
        });
        t.connections += 1;
        Ok(Slot {
            slots: self.clone(),
            tenant: tenant.clone(),
            bytes: t.bytes.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Tenant>> {
        // A count is valid after any panic: each change is one statement.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Slot {
    /// The bytes the tenant's connections share.
    pub fn bytes(&self) -> &Arc<Semaphore> {
        &self.bytes
    }

    /// The most one request may take of [`Slot::bytes`]: a larger one
    /// waits until it is the only one.
    pub fn most(&self) -> usize {
        self.slots.tenant_bytes
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        if let Some(t) = open.get_mut(&self.tenant) {
            t.connections -= 1;
            // Requests still being answered hold permits of this semaphore;
            // a new one for the next connection only lets them overlap.
            if t.connections == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::new(id).expect("a valid tenant id")
    }

    fn open(slots: &Slots, tenant: &TenantId) -> u64 {
        slots.lock().get(tenant).map_or(0, |t| t.connections)
    }

    #[test]
    fn a_tenant_gets_at_most_its_quota_and_a_closed_connection_frees_its_place() {
        let slots = Arc::new(Slots::new(1 << 20));
        let (acme, globex) = (tenant("acme"), tenant("globex"));
        let a = slots.take(&acme, Some(2)).expect("within the quota");
        let b = slots.take(&acme, Some(2)).expect("within the quota");
        assert_eq!(slots.take(&acme, Some(2)).err(), Some(2));
        assert_eq!(slots.take(&tenant("initech"), Some(0)).err(), Some(0));
        // Another tenant's count is its own; no quota is no bound.
        let g: Vec<Slot> = (0..5)
            .map(|_| slots.take(&globex, None).expect("no quota"))
            .collect();
        assert_eq!(open(&slots, &globex), 5);
        drop(a);
        let c = slots.take(&acme, Some(2)).expect("within the quota");
        assert_eq!(open(&slots, &acme), 2);
        drop((b, c, g));
        assert_eq!(open(&slots, &acme), 0);
        assert!(
            slots.lock().is_empty(),
            "no entry left for a tenant with none open"
        );
    }

    #[test]
    fn a_tenants_connections_share_its_bytes_and_other_tenants_have_their_own() {
        let slots = Arc::new(Slots::new(1000));
        let (acme, globex) = (tenant("acme"), tenant("globex"));
        let a = slots.take(&acme, None).expect("no quota");
        let b = slots.take(&acme, None).expect("no quota");
        let g = slots.take(&globex, None).expect("no quota");
        let held = a.bytes().try_acquire_many(600).expect("room");
        assert!(b.bytes().try_acquire_many(600).is_err(), "shared with a");
        assert!(g.bytes().try_acquire_many(1000).is_ok(), "globex's own");
        drop(held);
        assert!(b.bytes().try_acquire_many(600).is_ok());
        assert_eq!(a.most(), 1000);
    }
}
