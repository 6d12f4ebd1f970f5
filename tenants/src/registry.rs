//! The registry of tenants and keys: a fenced log of its own below
//! `system/registry/` (the same log a shard has, so it is as durable and as
//! single-writer as the data), with the tenants indexed in memory. Every
//! change is durable before it is visible.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use aws_lc_rs::digest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use floe_common::TenantId;
use floe_storage::log::now_ms;
use floe_storage::{Entry, Follower, LogConfig, ShardLog};
use object_store::path::Path;
use object_store::ObjectStore;
use tokio::sync::watch;

use crate::acl::{self, Acl, AclFilter};
use crate::model::{KeyRecord, Plan, PlanPolicy, Quota, Tenant};
use crate::scram::{self, Credential, Mechanism};

const PREFIX: &str = "t/";
/// Deleted tenants' ids, with when they were deleted.
const RETIRED: &str = "d/";
/// Plans' quota policies, by plan name.
const POLICIES: &str = "p/";
/// Where the registry's log lives: beside `tenants/`, never inside one.
pub const LOG_PREFIX: &str = "system/registry";
/// Keys per tenant; an admin mistake in a loop stops here.
pub const MAX_KEYS: usize = 100;
/// ACL bindings per tenant.
pub const MAX_ACLS: usize = 1000;
/// Verified PLAIN logins remembered; the cache starts over when full.
const MAX_VERIFIED: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("tenant {0} not found")]
    NotFound(String),
    #[error("key {0} not found")]
    KeyNotFound(String),
    #[error("tenant {0} exists")]
    Exists(String),
    /// Ids of deleted tenants are not given out again: a new owner of the
    /// name must never meet anything of the old one's.
    #[error("tenant {0} was deleted; its id is not used again")]
    Retired(String),
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Storage(#[from] floe_storage::Error),
}

type Result<T> = std::result::Result<T, RegistryError>;

#[derive(Default)]
struct Index {
    tenants: BTreeMap<String, Tenant>,
    retired: std::collections::HashSet<String>,
    /// Key id → tenant id.
    keys: HashMap<String, String>,
    policies: HashMap<Plan, PlanPolicy>,
}

impl Index {
    fn of(log: &Follower) -> Self {
        let mut index = Index::default();
        for (_, v) in log.scan(PREFIX.as_bytes()) {
            if let Some(t) = decode(&v) {
                index.put(t);
            }
        }
        for (k, _) in log.scan(RETIRED.as_bytes()) {
            let id = String::from_utf8_lossy(&k[RETIRED.len()..]).into_owned();
            index.retired.insert(id);
        }
        for (_, v) in log.scan(POLICIES.as_bytes()) {
            match serde_json::from_slice::<PlanPolicy>(&v) {
                Ok(p) => {
                    index.policies.insert(p.plan, p);
                }
                Err(e) => tracing::warn!(error = %e, "unreadable plan policy; ignored"),
            }
        }
        index
    }

    fn put(&mut self, t: Tenant) {
        for k in &t.keys {
            self.keys.insert(k.id.clone(), t.id.clone());
        }
        self.tenants.insert(t.id.clone(), t);
    }
}

pub struct Registry {
    store: Arc<dyn ObjectStore>,
    cfg: LogConfig,
    /// Changes go through the log, opened on the first one (fencing any other
    /// writer: gateways take turns) and again after another process fenced
    /// it. One change at a time: each reads the log's state, then appends.
    writer: tokio::sync::Mutex<Option<ShardLog>>,
    /// Reads come from the index, which follows the log's objects whoever
    /// wrote them.
    follower: tokio::sync::Mutex<Follower>,
    index: RwLock<Index>,
    /// Key → SHA-256 of a secret that verified, for PLAIN and HTTP basic.
    verified: Mutex<HashMap<String, digest::Digest>>,
    /// Bumped whenever a key or tenant goes: connections check theirs.
    revoked: watch::Sender<u64>,
}

impl Registry {
    /// Reads every tenant back. Opening writes nothing: the log is opened
    /// for writing only when something changes.
    pub async fn open(store: Arc<dyn ObjectStore>, cfg: LogConfig) -> Result<Self> {
        let follower = Follower::open(store.clone(), Path::from(LOG_PREFIX), cfg.clone()).await?;
        let index = Index::of(&follower);
        Ok(Self {
            store,
            cfg,
            writer: tokio::sync::Mutex::new(None),
            follower: tokio::sync::Mutex::new(follower),
            index: RwLock::new(index),
            verified: Mutex::new(HashMap::new()),
            revoked: watch::Sender::new(0),
        })
    }

    /// Reads what other processes changed, every `every`, for as long as
    /// the registry is in use.
    pub fn follow(self: &Arc<Self>, every: std::time::Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(r) = me.upgrade() else { return };
                if let Err(e) = r.refresh().await {
                    tracing::warn!(error = %e, "reading the tenant registry");
                }
            }
        });
    }

    /// Catches the index up with the log. Keys that are gone are forgotten
    /// and connections told.
    pub async fn refresh(&self) -> Result<()> {
        let mut f = self.follower.lock().await;
        if !f.poll().await? {
            return Ok(());
        }
        let new = Index::of(&f);
        let gone: Vec<String> = {
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            let gone = index
                .keys
                .keys()
                .filter(|k| !new.keys.contains_key(*k))
                .cloned()
                .collect();
            *index = new;
            gone
        };
        if !gone.is_empty() {
            self.forget_verified(gone.iter().map(String::as_str));
            self.revoked.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` belonged to a tenant since deleted.
    pub fn is_retired(&self, id: &str) -> bool {
        self.read().retired.contains(id)
    }

    pub fn get(&self, id: &str) -> Option<Tenant> {
        self.read().tenants.get(id).cloned()
    }

    /// The limits in force for a tenant, without copying its keys: asked
    /// on every request that is metered.
    pub fn limits(&self, id: &str) -> Option<Quota> {
        self.read().tenants.get(id).map(Tenant::limits)
    }

    /// The quota policy of the tenant's plan, if its plan has one: asked
    /// on every request that is metered.
    pub fn policy_of(&self, id: &str) -> Option<PlanPolicy> {
        let index = self.read();
        let plan = index.tenants.get(id)?.plan;
        index.policies.get(&plan).cloned()
    }

    pub fn policy(&self, plan: Plan) -> Option<PlanPolicy> {
        self.read().policies.get(&plan).cloned()
    }

    /// Makes `wasm` (a component already validated, of SHA-256 `sha256` in
    /// hex) the plan's policy, replacing any other: the component is stored
    /// by content first, then named in the log.
    pub async fn set_policy(&self, plan: Plan, sha256: String, wasm: Bytes) -> Result<PlanPolicy> {
        let p = PlanPolicy {
            plan,
            bytes: wasm.len() as u64,
            sha256,
            deployed_ms: now_ms(),
        };
        object_store::ObjectStoreExt::put(&*self.store, &Path::from(p.path()), wasm.into())
            .await
            .map_err(|e| {
                RegistryError::Storage(floe_storage::Error::Unavailable(format!(
                    "storing the policy: {e}"
                )))
            })?;
        let value = serde_json::to_vec(&p).expect("a policy serializes");
        let entry = Entry::Put {
            key: policy_key(p.plan),
            value: Some(Bytes::from(value)),
        };
        self.change(|_| Ok((vec![entry.clone()], p.clone()))).await
    }

    /// Removes the plan's policy: its tenants go back to the native limits.
    /// False if it had none.
    pub async fn delete_policy(&self, plan: Plan) -> Result<bool> {
        self.change(|log| {
            if log.get(&policy_key(plan)).is_none() {
                return Ok((Vec::new(), false));
            }
            let gone = Entry::Put {
                key: policy_key(plan),
                value: None,
            };
            Ok((vec![gone], true))
        })
        .await
    }

    pub fn list(&self) -> Vec<Tenant> {
        self.read().tenants.values().cloned().collect()
    }

    pub async fn create(&self, id: &str, plan: Plan) -> Result<Tenant> {
        TenantId::new(id).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        self.change(|log| {
            if tenant_in(log, id).is_some() {
                return Err(RegistryError::Exists(id.to_string()));
            }
            if log.get(retired_key(id).as_ref()).is_some() {
                return Err(RegistryError::Retired(id.to_string()));
            }
            let t = Tenant {
                id: id.to_string(),
                plan,
                quota: Quota::default(),
                created_ms: now_ms(),
                keys: Vec::new(),
                acls: Vec::new(),
            };
            Ok((vec![put_tenant(&t)], t))
        })
        .await
    }

    /// The tenant, created with `plan` if it does not exist.
    pub async fn ensure(&self, id: &str, plan: Plan) -> Result<Tenant> {
        if let Some(t) = self.get(id) {
            return Ok(t);
        }
        match self.create(id, plan).await {
            Err(RegistryError::Exists(_)) => {
                // Another process created it; this one's index may lag.
                self.refresh().await?;
                self.get(id).ok_or(RegistryError::NotFound(id.into()))
            }
            other => other,
        }
    }

    /// Removes the tenant and its keys; connections using them are told.
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.change(|log| {
            tenant_in(log, id).ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
            let gone = Entry::Put {
                key: key_of(id),
                value: None,
            };
            let retired = Entry::Put {
                key: retired_key(id),
                value: Some(Bytes::from(now_ms().to_string())),
            };
            Ok((vec![gone, retired], ()))
        })
        .await
    }

    /// A new key: its id and secret, which is not kept and cannot be shown
    /// again.
    pub async fn create_key(&self, tenant: &str) -> Result<(String, String)> {
        self.update(tenant, |t| {
            if t.keys.len() >= MAX_KEYS {
                return Err(RegistryError::Invalid(format!(
                    "a tenant has at most {MAX_KEYS} keys"
                )));
            }
            let id = format!("fk_{}", hex(&scram::random(12)));
            let secret = URL_SAFE_NO_PAD.encode(scram::random(32));
            t.keys.push(KeyRecord {
                id: id.clone(),
                created_ms: now_ms(),
                scram_sha_256: Credential::new(Mechanism::ScramSha256, secret.as_bytes()),
                scram_sha_512: Credential::new(Mechanism::ScramSha512, secret.as_bytes()),
            });
            Ok((true, (id, secret)))
        })
        .await
    }

    pub async fn revoke_key(&self, tenant: &str, key: &str) -> Result<()> {
        self.update(tenant, |t| {
            let before = t.keys.len();
            t.keys.retain(|k| k.id != key);
            if t.keys.len() == before {
                return Err(RegistryError::KeyNotFound(key.to_string()));
            }
            Ok((true, ()))
        })
        .await
    }

    pub async fn set_quota(&self, tenant: &str, quota: Quota) -> Result<Tenant> {
        self.update(tenant, |t| {
            t.quota = quota.clone();
            Ok((true, t.clone()))
        })
        .await
    }

    /// The bindings restricting `key` of `tenant`: `None` when none names
    /// it (the key is unrestricted).
    pub fn restrictions(&self, tenant: &str, key: &str) -> Option<Vec<Acl>> {
        let index = self.read();
        let t = index.tenants.get(tenant)?;
        if t.acls.is_empty() {
            return None;
        }
        let me = acl::principal(key);
        let mine: Vec<Acl> = t
            .acls
            .iter()
            .filter(|a| a.principal == me)
            .cloned()
            .collect();
        (!mine.is_empty()).then_some(mine)
    }

    /// A tenant's bindings.
    pub fn acls(&self, tenant: &str) -> Vec<Acl> {
        self.get(tenant).map(|t| t.acls).unwrap_or_default()
    }

    /// Adds bindings (one already there is not added twice).
    pub async fn create_acls(&self, tenant: &str, new: Vec<Acl>) -> Result<()> {
        self.update(tenant, |t| {
            for a in &new {
                if !t.acls.contains(a) {
                    t.acls.push(a.clone());
                }
            }
            if t.acls.len() > MAX_ACLS {
                return Err(RegistryError::Invalid(format!(
                    "a tenant has at most {MAX_ACLS} ACL bindings"
                )));
            }
            Ok((true, ()))
        })
        .await
    }

    /// Removes the bindings each filter matches: what each one removed.
    pub async fn delete_acls(&self, tenant: &str, filters: &[AclFilter]) -> Result<Vec<Vec<Acl>>> {
        self.update(tenant, |t| {
            let removed: Vec<Vec<Acl>> = filters
                .iter()
                .map(|f| t.acls.iter().filter(|a| f.matches(a)).cloned().collect())
                .collect();
            t.acls.retain(|a| !filters.iter().any(|f| f.matches(a)));
            Ok((removed.iter().any(|r| !r.is_empty()), removed))
        })
        .await
    }

    /// The tenant a key belongs to, while the key exists.
    pub fn tenant_of(&self, key: &str) -> Option<TenantId> {
        let index = self.read();
        let id = index.keys.get(key)?;
        TenantId::new(id).ok()
    }

    /// A key's credential for a SCRAM mechanism.
    pub fn credential(&self, key: &str, mech: Mechanism) -> Option<Credential> {
        let index = self.read();
        let t = index.tenants.get(index.keys.get(key)?)?;
        let k = t.keys.iter().find(|k| k.id == key)?;
        Some(match mech {
            Mechanism::ScramSha512 => k.scram_sha_512.clone(),
            _ => k.scram_sha_256.clone(),
        })
    }

    /// PLAIN and HTTP basic: the key's tenant if `secret` is its secret. The
    /// first success per key derives (PBKDF2); later ones compare a digest.
    pub fn verify_secret(&self, key: &str, secret: &[u8]) -> Option<TenantId> {
        let tenant = self.tenant_of(key)?;
        let presented = digest::digest(&digest::SHA256, secret);
        let cached = self.lock_verified().get(key).map(|d| d.as_ref().to_vec());
        if let Some(known) = cached {
            return scram::same_secret(&known, presented.as_ref()).then_some(tenant);
        }
        let cred = self.credential(key, Mechanism::ScramSha256)?;
        if !cred.verify(Mechanism::ScramSha256, secret) {
            return None;
        }
        let mut verified = self.lock_verified();
        if verified.len() >= MAX_VERIFIED {
            verified.clear();
        }
        // A revocation may have come while we derived: only a live key is
        // remembered.
        if self.tenant_of(key).is_some() {
            verified.insert(key.to_string(), presented);
        }
        Some(tenant)
    }

    /// Changes whenever a key or tenant is removed.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revoked.subscribe()
    }

    pub async fn close(&self) -> Result<()> {
        let Some(log) = self.writer.lock().await.take() else {
            return Ok(());
        };
        match log.close().await {
            // Another process writes it now: nothing of ours is pending.
            Err(floe_storage::Error::Fenced) => Ok(()),
            res => Ok(res?),
        }
    }

    /// Changes one tenant: `f` edits it as the log has it, and says
    /// whether it changed anything and what to return.
    async fn update<T>(
        &self,
        id: &str,
        mut f: impl FnMut(&mut Tenant) -> Result<(bool, T)>,
    ) -> Result<T> {
        self.change(|log| {
            let mut t =
                tenant_in(log, id).ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
            let (changed, out) = f(&mut t)?;
            let entries = if changed {
                vec![put_tenant(&t)]
            } else {
                Vec::new()
            };
            Ok((entries, out))
        })
        .await
    }

    /// One change: `f` reads the log's state (never the index, which may
    /// lag) and returns the entries to append. A change another process
    /// fenced is tried again on the log reopened, so it never commits on a
    /// stale read; once durable, the index is caught up (read your writes).
    async fn change<T>(
        &self,
        mut f: impl FnMut(&ShardLog) -> Result<(Vec<Entry>, T)>,
    ) -> Result<T> {
        let mut writer = self.writer.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let log = match writer.as_ref() {
                Some(log) if log.failed().is_none() => log.clone(),
                _ => {
                    let log = ShardLog::open(
                        self.store.clone(),
                        Path::from(LOG_PREFIX),
                        self.cfg.clone(),
                    )
                    .await?;
                    *writer = Some(log.clone());
                    log
                }
            };
            let res = async {
                // Another gateway may have written since this one did.
                log.check_owner().await?;
                let (entries, out) = f(&log)?;
                if !entries.is_empty() {
                    log.append(entries).await?.durable().await?;
                }
                Ok(out)
            }
            .await;
            match res {
                // Abandoned, the log is reopened on the next turn.
                Err(RegistryError::Storage(floe_storage::Error::Fenced)) if attempt < 3 => {
                    log.abandon()
                }
                res => {
                    // The log may have shown more than the index has: catch up
                    // whatever the outcome.
                    drop(writer);
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "reading the tenant registry back");
                    }
                    return res;
                }
            }
        }
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, HashMap<String, digest::Digest>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget_verified<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut verified = self.lock_verified();
        for k in keys {
            verified.remove(k);
        }
    }
}

fn key_of(id: &str) -> Bytes {
    Bytes::from(format!("{PREFIX}{id}"))
}

fn policy_key(plan: Plan) -> Bytes {
    Bytes::from(format!("{POLICIES}{}", plan.name()))
}

fn retired_key(id: &str) -> Bytes {
    Bytes::from(format!("{RETIRED}{id}"))
}

/// A tenant as the log has it.
fn tenant_in(log: &ShardLog, id: &str) -> Option<Tenant> {
    decode(&log.get(&key_of(id))?)
}

fn decode(v: &[u8]) -> Option<Tenant> {
    serde_json::from_slice(v)
        .map_err(|e| tracing::warn!(error = %e, "unreadable tenant record; ignored"))
        .ok()
}

fn put_tenant(t: &Tenant) -> Entry {
    let value = serde_json::to_vec(t).expect("a tenant serializes");
    Entry::Put {
        key: key_of(&t.id),
        value: Some(Bytes::from(value)),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(store: Arc<dyn ObjectStore>) -> Registry {
        Registry::open(store, LogConfig::default())
            .await
            .expect("opens")
    }

    #[tokio::test]
    async fn tenants_and_keys_survive_a_reopen_and_revocation_is_immediate() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let r = open(store.clone()).await;
        r.create("acme", Plan::Free).await.expect("created");
        assert!(matches!(
            r.create("acme", Plan::Free).await,
            Err(RegistryError::Exists(_))
        ));
        assert!(matches!(
            r.create("no/slash", Plan::Free).await,
            Err(RegistryError::Invalid(_))
        ));
        let (key, secret) = r.create_key("acme").await.expect("key");
        assert!(key.starts_with("fk_") && secret.len() >= 40);
        let quota = Quota {
            produce_bytes_per_sec: Some(1_000_000),
            ..Quota::default()
        };
        r.set_quota("acme", quota).await.expect("quota");
        r.close().await.expect("closed");

        let r = open(store).await;
        let t = r.get("acme").expect("back");
        assert_eq!(t.limits().produce_bytes_per_sec, Some(1_000_000));
        assert_eq!(t.limits().partitions, Plan::Free.limits().partitions);
        let json = serde_json::to_string(&t).expect("json");
        assert!(!json.contains(&secret), "the secret is not stored");
        assert_eq!(
            r.verify_secret(&key, secret.as_bytes())
                .map(|t| t.as_str().to_string()),
            Some("acme".into())
        );
        assert!(r.verify_secret(&key, secret.as_bytes()).is_some(), "cached");
        assert!(r.verify_secret(&key, b"wrong").is_none());
        assert!(r.credential(&key, Mechanism::ScramSha512).is_some());
        let revoked = r.revocations();
        r.revoke_key("acme", &key).await.expect("revoked");
        assert!(revoked.has_changed().expect("open"));
        assert!(r.verify_secret(&key, secret.as_bytes()).is_none());
        assert!(r.tenant_of(&key).is_none());
        assert!(matches!(
            r.revoke_key("acme", &key).await,
            Err(RegistryError::KeyNotFound(_))
        ));
        r.delete("acme").await.expect("deleted");
        assert!(r.get("acme").is_none());
    }

    #[tokio::test]
    async fn processes_sharing_a_registry_take_turns_writing_and_see_each_other() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let a = open(store.clone()).await;
        let b = open(store.clone()).await;
        a.create("acme", Plan::Free).await.expect("created by a");
        assert!(b.get("acme").is_none(), "b has not looked yet");
        b.refresh().await.expect("b reads");
        assert!(b.get("acme").is_some());

        // b writes next, fencing a's log; a's next change reads the log
        // afresh, so b's change is kept, not overwritten from a stale read.
        let (key, secret) = b.create_key("acme").await.expect("key by b");
        let quota = Quota {
            produce_bytes_per_sec: Some(7),
            ..Quota::default()
        };
        a.set_quota("acme", quota).await.expect("quota by a");
        b.refresh().await.expect("b reads");
        let t = b.get("acme").expect("there");
        assert_eq!(t.quota.produce_bytes_per_sec, Some(7));
        assert_eq!(t.keys.len(), 1, "b's key survived a's change");
        assert!(
            a.verify_secret(&key, secret.as_bytes()).is_some(),
            "a read it back"
        );

        // A revocation elsewhere reaches a's connections at its next read.
        let revoked = a.revocations();
        b.revoke_key("acme", &key).await.expect("revoked by b");
        a.refresh().await.expect("a reads");
        assert!(revoked.has_changed().expect("open"));
        assert!(
            a.verify_secret(&key, secret.as_bytes()).is_none(),
            "a forgot the cached secret"
        );
        assert!(matches!(
            a.create("acme", Plan::Free).await,
            Err(RegistryError::Exists(_))
        ));
        b.delete("acme").await.expect("deleted by b");
        assert!(matches!(
            a.create("acme", Plan::Free).await,
            Err(RegistryError::Retired(_))
        ));
        assert!(a.get("acme").is_none() && a.is_retired("acme"));
        a.close().await.expect("closed");
        b.close().await.expect("closed");
    }
}
