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
use floe_storage::{Entry, LogConfig, ShardLog};
use object_store::path::Path;
use object_store::ObjectStore;
use tokio::sync::watch;

use crate::acl::{self, Acl, AclFilter};
use crate::model::{KeyRecord, Plan, Quota, Tenant};
use crate::scram::{self, Credential, Mechanism};

const PREFIX: &str = "t/";
/// Deleted tenants' ids, with when they were deleted.
const RETIRED: &str = "d/";
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
}

impl Index {
    fn put(&mut self, t: Tenant) {
        self.remove(&t.id);
        for k in &t.keys {
            self.keys.insert(k.id.clone(), t.id.clone());
        }
        self.tenants.insert(t.id.clone(), t);
    }

    fn remove(&mut self, id: &str) -> Option<Tenant> {
        let old = self.tenants.remove(id)?;
        for k in &old.keys {
            self.keys.remove(&k.id);
        }
        Some(old)
    }
}

pub struct Registry {
    log: ShardLog,
    index: RwLock<Index>,
    /// One change at a time: each reads a tenant, changes it, writes it.
    writer: tokio::sync::Mutex<()>,
    /// Key → SHA-256 of a secret that verified, for PLAIN and HTTP basic.
    verified: Mutex<HashMap<String, digest::Digest>>,
    /// Bumped whenever a key or tenant goes: connections check theirs.
    revoked: watch::Sender<u64>,
}

impl Registry {
    /// Opens the registry's log (fencing any other writer) and reads every
    /// tenant back.
    pub async fn open(store: Arc<dyn ObjectStore>, cfg: LogConfig) -> Result<Self> {
        let log = ShardLog::open(store, Path::from(LOG_PREFIX), cfg).await?;
        let mut index = Index::default();
        for (_, v) in log.scan(PREFIX.as_bytes()) {
            match serde_json::from_slice::<Tenant>(&v) {
                Ok(t) => index.put(t),
                Err(e) => tracing::warn!(error = %e, "unreadable tenant record; ignored"),
            }
        }
        for (k, _) in log.scan(RETIRED.as_bytes()) {
            let id = String::from_utf8_lossy(&k[RETIRED.len()..]).into_owned();
            index.retired.insert(id);
        }
        Ok(Self {
            log,
            index: RwLock::new(index),
            writer: tokio::sync::Mutex::new(()),
            verified: Mutex::new(HashMap::new()),
            revoked: watch::Sender::new(0),
        })
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

    pub fn list(&self) -> Vec<Tenant> {
        self.read().tenants.values().cloned().collect()
    }

    pub async fn create(&self, id: &str, plan: Plan) -> Result<Tenant> {
        TenantId::new(id).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let _w = self.writer.lock().await;
        if self.get(id).is_some() {
            return Err(RegistryError::Exists(id.to_string()));
        }
        if self.is_retired(id) {
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
        self.write(t.clone()).await?;
        Ok(t)
    }

    /// The tenant, created with `plan` if it does not exist.
    pub async fn ensure(&self, id: &str, plan: Plan) -> Result<Tenant> {
        if let Some(t) = self.get(id) {
            return Ok(t);
        }
        match self.create(id, plan).await {
            Err(RegistryError::Exists(_)) => self.get(id).ok_or(RegistryError::NotFound(id.into())),
            other => other,
        }
    }

    /// Removes the tenant and its keys; connections using them are told.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let _w = self.writer.lock().await;
        let old = self
            .get(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        let gone = Entry::Put {
            key: key_of(id),
            value: None,
        };
        let retired = Entry::Put {
            key: Bytes::from(format!("{RETIRED}{id}")),
            value: Some(Bytes::from(now_ms().to_string())),
        };
        self.log
            .append(vec![gone, retired])
            .await?
            .durable()
            .await?;
        {
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            index.remove(id);
            index.retired.insert(id.to_string());
        }
        self.forget_verified(old.keys.iter().map(|k| k.id.as_str()));
        self.revoked.send_modify(|n| *n += 1);
        Ok(())
    }

    /// A new key: its id and secret, which is not kept and cannot be shown
    /// again.
    pub async fn create_key(&self, tenant: &str) -> Result<(String, String)> {
        let _w = self.writer.lock().await;
        let mut t = self
            .get(tenant)
            .ok_or_else(|| RegistryError::NotFound(tenant.to_string()))?;
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
        self.write(t).await?;
        Ok((id, secret))
    }

    pub async fn revoke_key(&self, tenant: &str, key: &str) -> Result<()> {
        let _w = self.writer.lock().await;
        let mut t = self
            .get(tenant)
            .ok_or_else(|| RegistryError::NotFound(tenant.to_string()))?;
        let before = t.keys.len();
        t.keys.retain(|k| k.id != key);
        if t.keys.len() == before {
            return Err(RegistryError::KeyNotFound(key.to_string()));
        }
        self.write(t).await?;
        self.forget_verified([key]);
        self.revoked.send_modify(|n| *n += 1);
        Ok(())
    }

    pub async fn set_quota(&self, tenant: &str, quota: Quota) -> Result<Tenant> {
        let _w = self.writer.lock().await;
        let mut t = self
            .get(tenant)
            .ok_or_else(|| RegistryError::NotFound(tenant.to_string()))?;
        t.quota = quota;
        self.write(t.clone()).await?;
        Ok(t)
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
        let _w = self.writer.lock().await;
        let mut t = self
            .get(tenant)
            .ok_or_else(|| RegistryError::NotFound(tenant.to_string()))?;
        for a in new {
            if !t.acls.contains(&a) {
                t.acls.push(a);
            }
        }
        if t.acls.len() > MAX_ACLS {
            return Err(RegistryError::Invalid(format!(
                "a tenant has at most {MAX_ACLS} ACL bindings"
            )));
        }
        self.write(t).await
    }

    /// Removes the bindings each filter matches: what each one removed.
    pub async fn delete_acls(&self, tenant: &str, filters: &[AclFilter]) -> Result<Vec<Vec<Acl>>> {
        let _w = self.writer.lock().await;
        let mut t = self
            .get(tenant)
            .ok_or_else(|| RegistryError::NotFound(tenant.to_string()))?;
        let removed: Vec<Vec<Acl>> = filters
            .iter()
            .map(|f| t.acls.iter().filter(|a| f.matches(a)).cloned().collect())
            .collect();
        t.acls.retain(|a| !filters.iter().any(|f| f.matches(a)));
        if removed.iter().any(|r| !r.is_empty()) {
            self.write(t).await?;
        }
        Ok(removed)
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
        Ok(self.log.close().await?)
    }

    async fn write(&self, t: Tenant) -> Result<()> {
        let value = serde_json::to_vec(&t).expect("a tenant serializes");
        let entry = Entry::Put {
            key: key_of(&t.id),
            value: Some(Bytes::from(value)),
        };
        self.log.append(vec![entry]).await?.durable().await?;
        self.index.write().unwrap_or_else(|p| p.into_inner()).put(t);
        Ok(())
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
}
