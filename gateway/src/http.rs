//! The HTTP listener: `/healthz`, Prometheus `/metrics`, the admin API
//! (`/admin/v1`, see `admin.rs`) and the tenants' own (`/v1`, basic auth).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::kafka::TLS_HANDSHAKE;
use crate::metrics::Metrics;
use floe_worker::Shards;

/// Serves HTTP/1.1 on `listener`, over TLS when given an acceptor.
pub async fn serve<W: Shards>(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    admin: Arc<Admin<W>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
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
            let http = hyper::server::conn::http1::Builder::new();
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
    admin: Arc<Admin<W>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if path.starts_with("/v1/") || path.starts_with("/v3/") {
        let ((status, body), retry_after) = admin.serve_tenant(req).await;
        let mut headers = Vec::new();
        if status == StatusCode::UNAUTHORIZED {
            headers.push(("www-authenticate", "Basic realm=\"floe\"".to_string()));
        }
        if let Some(secs) = retry_after {
            headers.push(("retry-after", secs.to_string()));
        }
        return Ok(json_response(status, body, &headers));
    }
    if path.starts_with("/admin/v1/") {
        let (status, body) = admin.serve(req).await;
        let auth = [("www-authenticate", "Bearer".to_string())];
        let headers = if status == StatusCode::UNAUTHORIZED {
            &auth[..]
        } else {
            &[]
        };
        return Ok(json_response(status, body, headers));
    }
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            Bytes::from(metrics.render()),
        ),
        (_, "/healthz" | "/metrics") => (
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
    let resp = Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body));
    Ok(resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

fn json_response(
    status: StatusCode,
    body: Bytes,
    headers: &[(&str, String)],
) -> Response<Full<Bytes>> {
    let mut resp = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        resp = resp.header(*k, v);
    }
    resp.body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
