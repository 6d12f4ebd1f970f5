//! Tenants' Wasm connectors over HTTP: `/v1/connectors[/{name}[/pause|/resume]]`.
//!
//! `PUT /v1/connectors/{name}?kind=source|sink&topic=T[,U...]
//! [&config=k=v...][&dead_letter=D][&max_retries=N][&from=start|end]
//! [&poll_ms=N]` with the component as the body creates (or replaces) one
//! (`config=allow=host:port,...` says where its requests may go); `GET`
//! lists them or shows one (state, lag, records, dead letters, fuel, the
//! last error); `POST .../pause` and `.../resume`; `DELETE` removes one.

use floe_worker::connectors::{ConnectorSpec, Kind};
use floe_worker::{Shards, WorkerError};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use super::{config_pair, error, from_start, not_allowed, query_pairs, worker_error, Caller};
use crate::admin::Answer;

pub async fn route<W: Shards>(c: &Caller<W>, req: Request<Incoming>, parts: &[&str]) -> Answer {
    let ok = |v: serde_json::Value| (StatusCode::OK, bytes::Bytes::from(v.to_string()));
    let answer = |r: Result<_, WorkerError>| match r {
        Ok(status) => ok(json!(status)),
        Err(e) => worker_error(&e),
    };
    match (req.method().clone(), parts) {
        (Method::GET, []) => match c.worker.connectors(&c.tenant).await {
            Ok(all) => ok(json!({ "connectors": all })),
            Err(e) => worker_error(&e),
        },
        (Method::GET, [name]) => answer(c.worker.connectors(&c.tenant).await.and_then(|all| {
            all.into_iter()
                .find(|s| s.name == *name)
                .ok_or_else(|| WorkerError::UnknownConnector(name.to_string()))
        })),
        (Method::PUT, [name]) => {
            let spec = match spec(name, req.uri().query().unwrap_or("")) {
                Ok(s) => s,
                Err(m) => return error(StatusCode::BAD_REQUEST, None, m),
            };
            let wasm = match c
                .body(req.into_body(), floe_worker::transforms::MAX_WASM_BYTES)
                .await
            {
                Ok(b) => b,
                Err(a) => return a,
            };
            answer(c.worker.create_connector(&c.tenant, spec, wasm).await)
        }
        (Method::POST, [name, verb @ ("pause" | "resume")]) => {
            let paused = *verb == "pause";
            answer(c.worker.pause_connector(&c.tenant, name, paused).await)
        }
        (Method::DELETE, [name]) => match c.worker.delete_connector(&c.tenant, name).await {
            Ok(()) => (StatusCode::NO_CONTENT, bytes::Bytes::new()),
            Err(e) => worker_error(&e),
        },
        (_, [] | [_] | [_, "pause" | "resume"]) => not_allowed(),
        _ => error(StatusCode::NOT_FOUND, None, "no such resource"),
    }
}

/// A connector from the query string.
fn spec(name: &str, query: &str) -> Result<ConnectorSpec, String> {
    let mut kind = None;
    let mut spec = ConnectorSpec {
        name: name.to_string(),
        kind: Kind::Sink,
        topics: Vec::new(),
        config: Vec::new(),
        max_retries: 5,
        dead_letter: None,
        from_start: false,
        poll_ms: 1000,
    };
    let number = |k: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("{k}={v}: not a number"))
    };
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "kind" => kind = Some(v.parse::<Kind>()?),
            "topic" => spec
                .topics
                .extend(v.split(',').filter(|t| !t.is_empty()).map(str::to_string)),
            "config" => spec.config.push(config_pair(&v)?),
            "dead_letter" => spec.dead_letter = Some(v),
            "max_retries" => {
                spec.max_retries = u32::try_from(number(&k, &v)?)
                    .map_err(|_| format!("max_retries={v}: too large"))?
            }
            "poll_ms" => spec.poll_ms = number(&k, &v)?,
            "from" => spec.from_start = from_start(&v)?,
            other => return Err(format!("unknown parameter {other}")),
        }
    }
    spec.kind = kind.ok_or("kind (source or sink) is required")?;
    if spec.topics.is_empty() {
        return Err("topic is required".into());
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connector_is_read_from_the_query() {
        let s = spec(
            "hook",
            "kind=sink&topic=orders&config=url%3Dhttp://h/x&config=allow=h:80,10.0.0.0/8:*&max_retries=2&from=start",
        )
        .expect("parses");
        assert_eq!(s.kind, Kind::Sink);
        assert_eq!(s.topics, vec!["orders"]);
        assert_eq!(s.allow(), "h:80,10.0.0.0/8:*");
        assert_eq!(s.max_retries, 2);
        assert!(s.from_start);
        let s = spec("feed", "kind=source&topic=a,b&poll_ms=250").expect("parses");
        assert_eq!((s.kind, s.topics.len(), s.poll_ms), (Kind::Source, 2, 250));
        for bad in [
            "topic=a",
            "kind=pipe&topic=a",
            "kind=sink",
            "kind=sink&topic=a&bogus=1",
            "kind=sink&topic=a&max_retries=-1",
            "kind=sink&topic=a&config=novalue",
        ] {
            assert!(spec("c", bad).is_err(), "{bad}");
        }
    }
}
