//! The operator's admin API, under `/admin/v1`, behind a bearer token:
//! tenants, their keys, quotas and metered usage, and plans' quota
//! policies. Secrets appear once, in the answer that creates a key.

use std::sync::Arc;

use bytes::Bytes;
use floe_common::TenantId;
use floe_tenants::scram::same_secret;
use floe_tenants::usage::Counts;
use floe_tenants::{Plan, Quota, Registry, RegistryError, Tenant};
use floe_worker::quota::Usage;
use floe_worker::{Shards, UsageWindow};

use crate::authz::Guarded;
use crate::http::Reply;
use crate::{read_body, rest};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::{Deserialize, Serialize};

/// Request bodies are small JSON documents, but for policy components.
const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_POLICY_BYTES: usize = floe_worker::transforms::MAX_WASM_BYTES;

pub struct Admin<W> {
    pub registry: Arc<Registry>,
    pub token: String,
    /// Where usage is read: records, and the owners' open windows.
    pub worker: Arc<W>,
    /// How long a request body may take to arrive.
    pub http_timeout: std::time::Duration,
    /// Whether the listener is HTTPS (for the URLs answers give).
    pub https: bool,
    /// Compiles uploaded policies to check them, made on the first upload.
    pub checker: std::sync::OnceLock<Arc<floe_runtime::Runtime>>,
    /// Set when the process is shutting down.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Each tenant's connections on this gateway (its event streams count).
    pub connections: Arc<crate::kafka::slots::Slots>,
}

/// An answer: status and JSON body.
pub type Answer = (StatusCode, Bytes);

/// Why usage could not be read: status, the admin API's error name, and
/// the message (each API renders it in its own error shape).
pub type UsageError = (StatusCode, &'static str, String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
    #[serde(default = "free")]
    plan: Plan,
}

fn free() -> Plan {
    Plan::Free
}

#[derive(Serialize)]
struct TenantView<'a> {
    id: &'a str,
    plan: Plan,
    quota: &'a Quota,
    limits: Quota,
    created_ms: i64,
    keys: Vec<floe_tenants::KeyInfo>,
}

fn view(t: &Tenant) -> serde_json::Value {
    let v = TenantView {
        id: &t.id,
        plan: t.plan,
        quota: &t.quota,
        limits: t.limits(),
        created_ms: t.created_ms,
        keys: t.keys.iter().map(|k| k.info()).collect(),
    };
    serde_json::to_value(v).expect("a tenant view serializes")
}

/// Usage counts as shown: raw counts, and the derived units bills use.
fn counts_view(c: &Counts) -> serde_json::Value {
    serde_json::json!({
        "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out,
        "requests": c.requests,
        "connection_seconds": c.connection_ms as f64 / 1e3,
        "stored_byte_hours": c.stored_byte_seconds as f64 / 3600.0,
        "partition_hours": c.partition_ms as f64 / 3.6e6,
        "wasm_fuel": c.wasm_fuel,
    })
}

fn usage_view(w: &UsageWindow) -> serde_json::Value {
    let r = &w.record;
    let mut v = counts_view(&r.usage);
    v["start_ms"] = r.start_ms.into();
    v["end_ms"] = r.end_ms.into();
    v["shard"] = r.shard.into();
    v["final"] = w.closed.into();
    v
}

fn policy_view(p: &floe_tenants::PlanPolicy) -> serde_json::Value {
    serde_json::json!({
        "plan": p.plan,
        "sha256": p.sha256,
        "bytes": p.bytes,
        "deployed_ms": p.deployed_ms,
    })
}

fn unknown_plan(plan: &str) -> Answer {
    let names: Vec<&str> = Plan::ALL.iter().map(|p| p.name()).collect();
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no plan {plan}; plans are {}", names.join(", ")),
    )
}

fn json(status: StatusCode, v: serde_json::Value) -> Answer {
    (status, Bytes::from(v.to_string()))
}

fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Answer {
    json(
        status,
        serde_json::json!({"error_code": code, "message": message.to_string()}),
    )
}

fn registry_error(e: RegistryError) -> Answer {
    match e {
        RegistryError::NotFound(_) | RegistryError::KeyNotFound(_) => {
            error(StatusCode::NOT_FOUND, "not_found", e)
        }
        RegistryError::Exists(_) => error(StatusCode::CONFLICT, "exists", e),
        RegistryError::Retired(_) => error(StatusCode::CONFLICT, "retired", e),
        RegistryError::Invalid(_) => error(StatusCode::BAD_REQUEST, "invalid", e),
        RegistryError::Storage(_) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

impl<W: Shards> Admin<W> {
    /// Serves one `/admin/v1/...` request.
    pub async fn serve(&self, req: Request<Incoming>) -> Answer {
        let query = req.uri().query().unwrap_or("").to_string();
        if !self.authorized(&req) {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a bearer admin token is required",
            );
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let parts: Vec<&str> = path
            .trim_start_matches("/admin/v1/")
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        let max = match parts.as_slice() {
            ["plans", _, "policy"] => MAX_POLICY_BYTES,
            _ => MAX_BODY_BYTES,
        };
        let body = match read_body(req.into_body(), max, self.http_timeout).await {
            Ok(b) => b,
            Err(e @ crate::BodyError::TooLarge) => {
                return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e)
            }
            Err(e @ crate::BodyError::TimedOut) => {
                return error(StatusCode::REQUEST_TIMEOUT, "timed_out", e)
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_body", e),
        };
        let r = &self.registry;
        match (method, parts.as_slice()) {
            (Method::POST, ["tenants"]) => {
                let new: NewTenant = match serde_json::from_slice(&body) {
                    Ok(n) => n,
                    Err(e) => return error(StatusCode::BAD_REQUEST, "invalid", e),
                };
                match r.create(&new.id, new.plan).await {
                    Ok(t) => json(StatusCode::CREATED, view(&t)),
                    Err(e) => registry_error(e),
                }
            }
            (Method::GET, ["tenants"]) => {
                let all: Vec<_> = r.list().iter().map(view).collect();
                json(StatusCode::OK, serde_json::json!({ "tenants": all }))
            }
            (Method::GET, ["tenants", id]) => match r.get(id) {
                Some(t) => json(StatusCode::OK, view(&t)),
                None => registry_error(RegistryError::NotFound(id.to_string())),
            },
            (Method::DELETE, ["tenants", id]) => self.delete_tenant(id).await,
            (Method::POST, ["tenants", id, "keys"]) => match r.create_key(id).await {
                Ok((key, secret)) => json(
                    StatusCode::CREATED,
                    serde_json::json!({"key": key, "secret": secret}),
                ),
                Err(e) => registry_error(e),
            },
            (Method::DELETE, ["tenants", id, "keys", key]) => match r.revoke_key(id, key).await {
                Ok(()) => (StatusCode::NO_CONTENT, Bytes::new()),
                Err(e) => registry_error(e),
            },
            (Method::PUT, ["tenants", id, "quota"]) => {
                let quota: Quota = match serde_json::from_slice(&body) {
                    Ok(q) => q,
                    Err(e) => return error(StatusCode::BAD_REQUEST, "invalid", e),
                };
                match r.set_quota(id, quota).await {
                    Ok(t) => json(StatusCode::OK, view(&t)),
                    Err(e) => registry_error(e),
                }
            }
            (Method::GET, ["tenants", id, "usage"]) => match self.usage(id, &query).await {
                Ok(a) => a,
                Err((status, code, m)) => error(status, code, m),
            },
            (m @ (Method::PUT | Method::GET | Method::DELETE), ["plans", plan, "policy"]) => {
                self.policy(m, plan, body).await
            }
            (
                _,
                ["plans", _, "policy"]
                | ["tenants"]
                | ["tenants", _]
                | ["tenants", _, "keys" | "quota" | "usage"]
                | ["tenants", _, "keys", _],
            ) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "see the admin API's verbs",
            ),
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin resource"),
        }
    }

    /// A tenant's own API, with HTTP basic auth (key and secret), under its
    /// request quota: `GET /v1/usage?from=&to=`, its usage as the admin API
    /// shows it. Over quota the answer is 429 with the seconds to wait.
    pub async fn serve_tenant(&self, req: Request<Incoming>) -> Reply {
        let presented = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(floe_tenants::scram::parse_basic);
        let login = presented.and_then(|(key, secret)| {
            let tenant = self.registry.verify_secret(&key, &secret)?;
            Some((tenant, key))
        });
        let Some((tenant, key)) = login else {
            let e = rest::error(
                StatusCode::UNAUTHORIZED,
                None,
                "basic auth with an API key and its secret",
            );
            let mut r = rest::json_reply(e);
            r.headers_mut().insert(
                "www-authenticate",
                "Basic realm=\"floe\"".parse().expect("valid"),
            );
            return r;
        };
        // A produce or fetch is also held while its tenant runs ahead of
        // that byte rate: HTTP has no throttle field, so it is told to retry.
        let charge = Usage {
            kind: rest::kind_of(req.method(), req.uri().path()),
            requests: 1,
            ..Usage::default()
        };
        let admission = self
            .worker
            .charge(&tenant, charge)
            .await
            .unwrap_or_default();
        if let Some(reason) = admission.refused {
            return rest::json_reply(rest::policy_refused(reason));
        }
        let wait = admission.throttle;
        if !wait.is_zero() {
            let secs = wait.as_secs_f64().ceil() as u64;
            let e = rest::error(
                StatusCode::TOO_MANY_REQUESTS,
                None,
                format!("over the tenant's quota; retry in {secs} s"),
            );
            let mut r = rest::json_reply(e);
            r.headers_mut().insert("retry-after", secs.into());
            return r;
        }
        if req.method() == Method::GET && req.uri().path() == "/v1/usage" {
            let query = req.uri().query().unwrap_or("");
            // The tenant API's errors carry numeric codes, the admin API's names.
            let answer = match self.usage(tenant.as_str(), query).await {
                Ok(a) => a,
                Err((status, _, m)) => rest::error(status, None, m),
            };
            return rest::json_reply(answer);
        }
        let scheme = if self.https { "https" } else { "http" };
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let caller = rest::Caller {
            worker: Guarded::for_key(self.worker.clone(), &self.registry, &tenant, Some(&key)),
            meter: self.worker.clone(),
            body_timeout: self.http_timeout,
            base: format!("{scheme}://{host}"),
            connections: self.connections.clone(),
            connection_quota: self
                .registry
                .limits(tenant.as_str())
                .and_then(|q| q.connections),
            tenant,
            stop: self.stop.clone(),
        };
        rest::route(&caller, req).await
    }

    /// Deletes the tenant (its keys go and its connections close at once),
    /// then its data; usage records stay, for billing. Deleting a deleted
    /// tenant again finishes removing its data, should that have failed.
    /// `PUT|GET|DELETE /admin/v1/plans/{plan}/policy`.
    async fn policy(&self, method: Method, name: &str, wasm: Bytes) -> Answer {
        let Some(plan) = Plan::from_name(name) else {
            return unknown_plan(name);
        };
        let none = || {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("plan {name} has no policy"),
            )
        };
        match method {
            Method::PUT => self.put_policy(plan, wasm).await,
            Method::GET => match self.registry.policy(plan) {
                Some(p) => json(StatusCode::OK, policy_view(&p)),
                None => none(),
            },
            _ => match self.registry.delete_policy(plan).await {
                Ok(true) => (StatusCode::NO_CONTENT, Bytes::new()),
                Ok(false) => none(),
                Err(e) => registry_error(e),
            },
        }
    }

    /// Checks the component is of the `quota` world and imports nothing
    /// else, then makes it the plan's policy.
    async fn put_policy(&self, plan: Plan, wasm: Bytes) -> Answer {
        let checker = match self.checker.get() {
            Some(c) => c.clone(),
            None => {
                let limits = floe_runtime::Limits {
                    instances: 1,
                    ..floe_runtime::Limits::default()
                };
                match floe_runtime::Runtime::new(limits) {
                    Ok(c) => self.checker.get_or_init(|| c).clone(),
                    Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
                }
            }
        };
        // Compiling takes a while for a large component: off the async threads.
        let bytes = wasm.clone();
        let checked =
            tokio::task::spawn_blocking(move || checker.check(floe_runtime::World::Quota, &bytes))
                .await;
        let digest = match checked {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, "invalid_policy", e),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
        };
        match self.registry.set_policy(plan, digest.0, wasm).await {
            Ok(p) => json(StatusCode::OK, policy_view(&p)),
            Err(e) => registry_error(e),
        }
    }

    async fn delete_tenant(&self, id: &str) -> Answer {
        match self.registry.delete(id).await {
            Ok(()) => {}
            Err(RegistryError::NotFound(_)) if self.registry.is_retired(id) => {}
            Err(e) => return registry_error(e),
        }
        let Ok(tenant) = TenantId::new(id) else {
            return registry_error(RegistryError::NotFound(id.to_string()));
        };
        match self.worker.delete_tenant(&tenant).await {
            Ok(()) => (StatusCode::NO_CONTENT, Bytes::new()),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
        }
    }

    /// `GET /admin/v1/tenants/{id}/usage?from=&to=` (milliseconds since the
    /// epoch; the last 24 hours by default): each window's usage per shard,
    /// `final` once the window is closed, and the sum.
    pub(crate) async fn usage(&self, id: &str, query: &str) -> Result<Answer, UsageError> {
        let bad = |m: String| (StatusCode::BAD_REQUEST, "invalid", m);
        // A deleted tenant's usage stays readable: it is billed too.
        let Ok(tenant) = TenantId::new(id) else {
            let e = RegistryError::NotFound(id.to_string());
            return Err((StatusCode::NOT_FOUND, "not_found", e.to_string()));
        };
        let now = floe_storage::log::now_ms();
        let (mut from, mut to) = (now - 24 * 3600 * 1000, now);
        match rest::numbers(query, &mut [("from", &mut from), ("to", &mut to)]) {
            Ok(()) => {}
            Err(rest::BadParam::Unknown(k)) => return Err(bad(format!("unknown parameter {k}"))),
            Err(rest::BadParam::Value(k, v)) => {
                return Err(bad(format!(
                    "{k} must be milliseconds since the epoch, got {v:?}"
                )))
            }
        }
        if from >= to {
            return Err(bad("from must be before to".into()));
        }
        let windows = match self.worker.usage(&tenant, from, to).await {
            Ok(w) => w,
            Err(e) => {
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                ))
            }
        };
        let mut total = Counts::default();
        for w in &windows {
            total.add(&w.record.usage);
        }
        let windows: Vec<_> = windows.iter().map(usage_view).collect();
        Ok(json(
            StatusCode::OK,
            serde_json::json!({
                "tenant": id, "from_ms": from, "to_ms": to,
                "windows": windows, "total": counts_view(&total),
            }),
        ))
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let presented = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        presented.is_some_and(|p| same_secret(p.as_bytes(), self.token.as_bytes()))
    }
}
