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
use tokio::sync::watch;

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

/// Serves HTTP/1.1 on `listener`, over TLS when given an acceptor. A
/// client gets `timeout` to send a request's headers (and, in `rest`, its
/// body), so a slow one cannot hold a connection open for nothing.
pub async fn serve<W: Shards>(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    admin: Option<Arc<Admin<W>>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (socket, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept");
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let (metrics, admin, tls) = (metrics.clone(), admin.clone(), tls.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| route(req, metrics.clone(), admin.clone()));
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(timeout);
            let served = match tls {
                None => http.serve_connection(TokioIo::new(socket), svc).await,
                Some(tls) => match tokio::time::timeout(TLS_HANDSHAKE, tls.accept(socket)).await {
                    Ok(Ok(s)) => http.serve_connection(TokioIo::new(s), svc).await,
                    Ok(Err(e)) => return tracing::debug!(error = %e, "https handshake failed"),
                    Err(_) => return tracing::debug!("https handshake timed out"),
                },
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "http connection");
            }
        });
    }
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
