//! The HTTP listener: `/healthz`, Prometheus `/metrics`, and the admin API
//! (`/admin/v1`, see `admin.rs`).

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
use crate::metrics::Metrics;
use floe_worker::Shards;

pub async fn serve<W: Shards>(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    admin: Arc<Admin<W>>,
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
        let (metrics, admin) = (metrics.clone(), admin.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| route(req, metrics.clone(), admin.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), svc);
            if let Err(e) = conn.await {
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
    if req.uri().path().starts_with("/admin/v1/") {
        let (status, body) = admin.serve(req).await;
        let mut resp = Response::builder()
            .status(status)
            .header("content-type", "application/json");
        if status == StatusCode::UNAUTHORIZED {
            resp = resp.header("www-authenticate", "Bearer");
        }
        return Ok(resp
            .body(Full::new(body))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))));
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
