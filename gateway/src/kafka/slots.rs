//! Each tenant's logged-in Kafka connections on this gateway, bounded by its
//! `connections` quota: the gateway's `--max-connections` is shared by every
//! tenant, and without a bound per tenant one of them could hold it all and
//! lock the others out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use floe_common::TenantId;

/// Open connections per tenant.
#[derive(Default)]
pub struct Slots {
    open: Mutex<HashMap<TenantId, u64>>,
}

/// One connection's place in its tenant's count, given back when dropped
/// (when the connection's reader ends).
pub struct Slot {
    slots: Arc<Slots>,
    tenant: TenantId,
}

impl Slots {
    /// A place for one more of `tenant`'s connections, if it has fewer than
    /// `max` open; else how many it has.
    pub fn take(self: &Arc<Self>, tenant: &TenantId, max: Option<u64>) -> Result<Slot, u64> {
        let mut open = self.lock();
        let n = open.get(tenant).copied().unwrap_or(0);
        if max.is_some_and(|max| n >= max) {
            return Err(n);
        }
        open.insert(tenant.clone(), n + 1);
        Ok(Slot {
            slots: self.clone(),
            tenant: tenant.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, u64>> {
        // A count is valid after any panic: each change is one statement.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        if let Some(n) = open.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
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
        slots.lock().get(tenant).copied().unwrap_or(0)
    }

    #[test]
    fn a_tenant_gets_at_most_its_quota_and_a_closed_connection_frees_its_place() {
        let slots = Arc::new(Slots::default());
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
}
