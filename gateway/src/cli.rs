//! The operator's commands (`floe tenant|key|quota|usage ...`): each is one call
//! of the admin API (`/admin/v1`) of a running Floe, printed as JSON. A
//! tenant's own commands (`floe transform ...`) call its data API with an
//! API key instead.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

/// Where the admin API is, and the token it takes.
#[derive(Args)]
pub struct Target {
    /// The HTTP listener of a running Floe.
    #[arg(long, env = "FLOE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin token it was started with.
    #[arg(long, env = "FLOE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
}

#[derive(Subcommand)]
pub enum TenantCmd {
    /// Create a tenant.
    Create {
        id: String,
        /// free, standard or unlimited.
        #[arg(long, default_value = "free")]
        plan: String,
    },
    /// List tenants, their limits and keys (never secrets).
    List,
    /// Delete a tenant and its keys; its connections are closed.
    Delete { id: String },
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create an API key; its secret is printed once and not kept.
    Create { tenant: String },
    /// Revoke a key; connections using it are closed within seconds.
    Revoke { tenant: String, key: String },
}

#[derive(Subcommand)]
pub enum QuotaCmd {
    /// Override a tenant's plan limits (unset ones keep the plan's).
    Set {
        tenant: String,
        #[arg(long)]
        produce_bytes_per_sec: Option<u64>,
        #[arg(long)]
        fetch_bytes_per_sec: Option<u64>,
        #[arg(long)]
        requests_per_sec: Option<u64>,
        #[arg(long)]
        storage_bytes: Option<u64>,
        #[arg(long)]
        partitions: Option<u64>,
        /// Kafka connections logged in at once, per gateway.
        #[arg(long)]
        connections: Option<u64>,
    },
}

pub async fn tenant(t: Target, cmd: TenantCmd) -> anyhow::Result<()> {
    match cmd {
        TenantCmd::Create { id, plan } => {
            let body = serde_json::json!({"id": id, "plan": plan});
            call(&t, Method::POST, "/tenants", Some(body)).await
        }
        TenantCmd::List => call(&t, Method::GET, "/tenants", None).await,
        TenantCmd::Delete { id } => call(&t, Method::DELETE, &format!("/tenants/{id}"), None).await,
    }
}

pub async fn key(t: Target, cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Create { tenant } => {
            call(&t, Method::POST, &format!("/tenants/{tenant}/keys"), None).await
        }
        KeyCmd::Revoke { tenant, key } => {
            let path = format!("/tenants/{tenant}/keys/{key}");
            call(&t, Method::DELETE, &path, None).await
        }
    }
}

pub async fn quota(t: Target, cmd: QuotaCmd) -> anyhow::Result<()> {
    let QuotaCmd::Set {
        tenant,
        produce_bytes_per_sec,
        fetch_bytes_per_sec,
        requests_per_sec,
        storage_bytes,
        partitions,
        connections,
    } = cmd;
    let quota = floe_tenants::Quota {
        produce_bytes_per_sec,
        fetch_bytes_per_sec,
        requests_per_sec,
        storage_bytes,
        partitions,
        connections,
    };
    let body = serde_json::to_value(quota)?;
    call(
        &t,
        Method::PUT,
        &format!("/tenants/{tenant}/quota"),
        Some(body),
    )
    .await
}

/// Where a tenant's data API is, and the API key it signs in with.
#[derive(Args)]
pub struct TenantTarget {
    /// The HTTP listener of a running Floe.
    #[arg(long, env = "FLOE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The tenant's API key id.
    #[arg(long, env = "FLOE_API_KEY")]
    api_key: String,
    /// Its secret.
    #[arg(long, env = "FLOE_API_SECRET", hide_env_values = true)]
    api_secret: String,
}

#[derive(Subcommand)]
pub enum TransformCmd {
    /// Deploy (or replace) a Wasm transform from a component file.
    Deploy {
        #[arg(long)]
        name: String,
        /// The topic it reads.
        #[arg(long)]
        input: String,
        /// The topics it writes, comma-separated (up to 8).
        #[arg(long, value_delimiter = ',', required = true)]
        output: Vec<String>,
        /// k=v given to the transform's init; repeatable.
        #[arg(long)]
        config: Vec<String>,
        /// Where failed batches go (default: NAME-dlq).
        #[arg(long)]
        dead_letter: Option<String>,
        /// Start at the input's earliest records, not its end.
        #[arg(long)]
        from_start: bool,
        file: std::path::PathBuf,
    },
    /// List transforms and their status.
    List,
    /// One transform's status: lag, records in and out, errors, fuel.
    Status { name: String },
    /// Stop a transform and forget its progress and state.
    Delete { name: String },
}

impl TenantTarget {
    /// Sends one request to the data API, signed in with the key.
    async fn send(
        &self,
        method: Method,
        path: String,
        content_type: &str,
        body: Bytes,
    ) -> anyhow::Result<()> {
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.api_key, self.api_secret));
        send(
            &self.url,
            method,
            path,
            format!("Basic {basic}"),
            content_type,
            body,
        )
        .await
    }
}

const JSON: &str = "application/json";

/// `--config k=v` flags as query pairs.
fn config_pairs(
    q: &mut form_urlencoded::Serializer<String>,
    config: &[String],
) -> anyhow::Result<()> {
    for c in config {
        anyhow::ensure!(c.contains('='), "--config {c:?} is not k=v");
        q.append_pair("config", c);
    }
    Ok(())
}

pub async fn transform(t: TenantTarget, cmd: TransformCmd) -> anyhow::Result<()> {
    let call = |method, path: String, ctype, body| t.send(method, path, ctype, body);
    match cmd {
        TransformCmd::Deploy {
            name,
            input,
            output,
            config,
            dead_letter,
            from_start,
            file,
        } => {
            let wasm =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("input", &input);
            q.append_pair("output", &output.join(","));
            config_pairs(&mut q, &config)?;
            if let Some(d) = &dead_letter {
                q.append_pair("dead_letter", d);
            }
            q.append_pair("from", if from_start { "start" } else { "end" });
            let path = format!("/v1/transforms/{name}?{}", q.finish());
            call(Method::PUT, path, "application/wasm", Bytes::from(wasm)).await
        }
        TransformCmd::List => call(Method::GET, "/v1/transforms".into(), JSON, Bytes::new()).await,
        TransformCmd::Status { name } => {
            call(
                Method::GET,
                format!("/v1/transforms/{name}"),
                JSON,
                Bytes::new(),
            )
            .await
        }
        TransformCmd::Delete { name } => {
            call(
                Method::DELETE,
                format!("/v1/transforms/{name}"),
                JSON,
                Bytes::new(),
            )
            .await
        }
    }
}

#[derive(Subcommand)]
pub enum ConnectorCmd {
    /// Create (or replace) a connector from a component file.
    Create {
        #[arg(long)]
        name: String,
        /// source or sink.
        #[arg(long)]
        kind: String,
        /// A sink's input topic, or a source's output topics
        /// (comma-separated, up to 8).
        #[arg(long, value_delimiter = ',', required = true)]
        topic: Vec<String>,
        /// Where its requests may go: host:port entries, comma-separated
        /// (names, addresses or CIDR ranges; port or *). Loopback and
        /// private addresses only when listed as addresses or ranges.
        #[arg(long)]
        allow: Option<String>,
        /// k=v given to the connector's init; repeatable.
        #[arg(long)]
        config: Vec<String>,
        /// A sink's tries per batch before its dead-letter topic.
        #[arg(long)]
        max_retries: Option<u32>,
        /// A sink's dead-letter topic (default: NAME-dlq).
        #[arg(long)]
        dead_letter: Option<String>,
        /// A sink starts at its input's earliest records, not its end.
        #[arg(long)]
        from_start: bool,
        /// A source with nothing new is polled again after this long.
        #[arg(long)]
        poll_ms: Option<u64>,
        file: std::path::PathBuf,
    },
    /// List connectors and their status.
    List,
    /// One connector's status: state, lag, records, dead letters, fuel,
    /// the last error.
    Status {
        name: String,
    },
    /// Stop a connector until resumed (durably).
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Stop a connector and forget its offsets or cursor.
    Delete {
        name: String,
    },
}

pub async fn connector(t: TenantTarget, cmd: ConnectorCmd) -> anyhow::Result<()> {
    let at = |name: &str, verb: &str| format!("/v1/connectors/{name}{verb}");
    match cmd {
        ConnectorCmd::Create {
            name,
            kind,
            topic,
            allow,
            config,
            max_retries,
            dead_letter,
            from_start,
            poll_ms,
            file,
        } => {
            let wasm =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("kind", &kind);
            q.append_pair("topic", &topic.join(","));
            config_pairs(&mut q, &config)?;
            if let Some(a) = &allow {
                q.append_pair("config", &format!("allow={a}"));
            }
            if let Some(n) = max_retries {
                q.append_pair("max_retries", &n.to_string());
            }
            if let Some(d) = &dead_letter {
                q.append_pair("dead_letter", d);
            }
            if let Some(ms) = poll_ms {
                q.append_pair("poll_ms", &ms.to_string());
            }
            q.append_pair("from", if from_start { "start" } else { "end" });
            let path = format!("{}?{}", at(&name, ""), q.finish());
            t.send(Method::PUT, path, "application/wasm", Bytes::from(wasm))
                .await
        }
        ConnectorCmd::List => {
            t.send(Method::GET, "/v1/connectors".into(), JSON, Bytes::new())
                .await
        }
        ConnectorCmd::Status { name } => {
            t.send(Method::GET, at(&name, ""), JSON, Bytes::new()).await
        }
        ConnectorCmd::Pause { name } => {
            t.send(Method::POST, at(&name, "/pause"), JSON, Bytes::new())
                .await
        }
        ConnectorCmd::Resume { name } => {
            t.send(Method::POST, at(&name, "/resume"), JSON, Bytes::new())
                .await
        }
        ConnectorCmd::Delete { name } => {
            t.send(Method::DELETE, at(&name, ""), JSON, Bytes::new())
                .await
        }
    }
}

/// A tenant's metered usage in windows starting in `from..to`.
#[derive(Args)]
pub struct UsageCmd {
    tenant: String,
    /// Milliseconds since the epoch (default: 24 hours ago).
    #[arg(long)]
    from: Option<i64>,
    /// Milliseconds since the epoch (default: now).
    #[arg(long)]
    to: Option<i64>,
}

pub async fn usage(t: Target, cmd: UsageCmd) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(f) = cmd.from {
        query.push(format!("from={f}"));
    }
    if let Some(to) = cmd.to {
        query.push(format!("to={to}"));
    }
    let path = format!("/tenants/{}/usage?{}", cmd.tenant, query.join("&"));
    call(&t, Method::GET, &path, None).await
}

/// One admin API request; prints the answer, and fails on an error status.
async fn call(
    t: &Target,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let body = Bytes::from(body.map(|b| b.to_string()).unwrap_or_default());
    let auth = format!("Bearer {}", t.admin_token);
    let path = format!("/admin/v1{path}");
    send(&t.url, method, path, auth, "application/json", body).await
}

/// One request to `url`; prints the answer, and fails on an error status.
async fn send(
    url: &str,
    method: Method,
    path: String,
    authorization: String,
    content_type: &str,
    body: Bytes,
) -> anyhow::Result<()> {
    let authority = url
        .strip_prefix("http://")
        .context("--url must be http://HOST:PORT")?
        .trim_end_matches('/');
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .header("authorization", authorization)
        .header("content-type", content_type)
        .body(Full::new(body))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let json = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
    if !status.is_success() {
        // The server's reason, on stderr with the status: what to fix.
        let reason = match json.as_ref().and_then(|v| v["message"].as_str()) {
            Some(m) => m.to_string(),
            None => String::from_utf8_lossy(&bytes).trim().to_string(),
        };
        bail!("{status}: {reason}");
    }
    match json {
        Some(v) => println!("{}", serde_json::to_string_pretty(&v)?),
        None if !bytes.is_empty() => println!("{}", String::from_utf8_lossy(&bytes)),
        None => {}
    }
    Ok(())
}
