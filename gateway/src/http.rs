//! The HTTP listener: `/healthz` (alive), `/readyz` (serving, not
//! draining), Prometheus `/metrics`, the admin API
//! (`/admin/v1`, see `admin.rs`), the tenants' own (`/v1`, `/v3` and
//! `/consumers`, basic auth; see `rest/`) and `/openapi.json`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::admin::Admin;
use crate::kafka::TLS_HANDSHAKE;
use crate::metrics::Metrics;
use floe_worker::Shards;

/// A response body: whole, or streamed (Server-Sent Events).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;
pub type Reply = Response<Body>;

pub fn full(b: Bytes) -> Body {
    Full::new(b).boxed_unsync()
}

/// Serves HTTP/1.1 on `listener`, over TLS when given an acceptor, at most
/// `max_connections` at once (more wait in the accept queue). A client gets
/// `timeout` to send a request's headers (and, in `rest`, its body), so a
/// slow one cannot hold a connection open for nothing. On `stop`, accepts no
/// more, lets requests in flight finish (idle keep-alive connections close)
/// and returns once every connection has.
pub async fn serve<W: Shards>(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    admin: Option<Arc<Admin<W>>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    timeout: Duration,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    while let Some((socket, permit)) = crate::accept(&listener, &slots, &mut stop, "http").await {
        let (metrics, admin, tls, stop) =
            (metrics.clone(), admin.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            let io: Box<dyn Io> = match tls {
                None => Box::new(socket),
                Some(tls) => match tokio::time::timeout(TLS_HANDSHAKE, tls.accept(socket)).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => return tracing::debug!(error = %e, "https handshake failed"),
                    Err(_) => return tracing::debug!("https handshake timed out"),
                },
            };
            let svc =
                hyper::service::service_fn(move |req| route(req, metrics.clone(), admin.clone()));
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(timeout);
            if let Err(e) = until_stopped(http.serve_connection(TokioIo::new(io), svc), stop).await
            {
                tracing::debug!(error = %e, "http connection");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = slots.acquire_many(max_connections as u32).await;
}

/// A connection's socket, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Serves `conn` to its end; on `stop`, finishes the request in flight and
/// closes.
async fn until_stopped<S>(
    conn: hyper::server::conn::http1::Connection<TokioIo<Box<dyn Io>>, S>,
    mut stop: watch::Receiver<bool>,
) -> hyper::Result<()>
where
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

async fn route<W: Shards>(
    req: Request<Incoming>,
    metrics: Arc<Metrics>,
    admin: Option<Arc<Admin<W>>>,
) -> Result<Reply, Infallible> {
    let path = req.uri().path();
    // A worker has no admin: it serves /healthz and /metrics only.
    if let Some(admin) = &admin {
        if ["/v1/", "/v3/", "/consumers/"]
            .iter()
            .any(|p| path.starts_with(p))
        {
            return Ok(admin.serve_tenant(req).await);
        }
        if path.starts_with("/admin/v1/") {
            let (status, body) = admin.serve(req).await;
            let mut r = crate::rest::json_reply((status, body));
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut()
                    .insert("www-authenticate", "Bearer".parse().expect("valid"));
            }
            return Ok(r);
        }
    }
    Ok(static_page(&req, &metrics, admin.is_some()))
}

/// `/healthz`, `/readyz`, `/metrics`, and with the data API
/// `/openapi.json`: GET only.
fn static_page(req: &Request<Incoming>, metrics: &Metrics, openapi: bool) -> Reply {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        (&Method::GET, "/readyz") => match metrics.ready.load(std::sync::atomic::Ordering::Relaxed)
        {
            true => (StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n")),
            false => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                Bytes::from_static(b"not ready\n"),
            ),
        },
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            Bytes::from(crate::metrics::exposition()),
        ),
        (&Method::GET, "/openapi.json") if openapi => (
            StatusCode::OK,
            "application/json",
            Bytes::from_static(crate::rest::OPENAPI.as_bytes()),
        ),
        (_, "/healthz" | "/readyz" | "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"GET only\n"),
        ),
        (_, "/openapi.json") if openapi => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"GET only\n"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ),
    };
    crate::rest::reply((status, body), ctype)
}
