//! Tenants' Wasm transforms over HTTP: `/v1/transforms[/{name}]`.
//!
//! `PUT /v1/transforms/{name}?input=T&output=A,B[&config=k=v...]
//! [&dead_letter=D][&from=start|end]` with the component as the body
//! deploys (or replaces) one; `GET` lists them or shows one (status, lag,
//! records in and out, errors, fuel, the last error); `DELETE` removes one.

use floe_worker::transforms::TransformSpec;
use floe_worker::Shards;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use super::{config_pair, error, from_start, not_allowed, query_pairs, worker_error, Caller};
use crate::admin::Answer;

pub async fn route<W: Shards>(c: &Caller<W>, req: Request<Incoming>, parts: &[&str]) -> Answer {
    let ok = |v: serde_json::Value| (StatusCode::OK, bytes::Bytes::from(v.to_string()));
    match (req.method().clone(), parts) {
        (Method::GET, []) => match c.worker.transforms(&c.tenant).await {
            Ok(all) => ok(json!({ "transforms": all })),
            Err(e) => worker_error(&e),
        },
        (Method::GET, [name]) => match c.worker.transforms(&c.tenant).await {
            Ok(all) => match all.into_iter().find(|t| t.name == *name) {
                Some(t) => ok(json!(t)),
                None => worker_error(&floe_worker::WorkerError::UnknownTransform(
                    name.to_string(),
                )),
            },
            Err(e) => worker_error(&e),
        },
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
            match c.worker.deploy_transform(&c.tenant, spec, wasm).await {
                Ok(status) => ok(json!(status)),
                Err(e) => worker_error(&e),
            }
        }
        (Method::DELETE, [name]) => match c.worker.delete_transform(&c.tenant, name).await {
            Ok(()) => (StatusCode::NO_CONTENT, bytes::Bytes::new()),
            Err(e) => worker_error(&e),
        },
        (_, [] | [_]) => not_allowed(),
        _ => error(StatusCode::NOT_FOUND, None, "no such resource"),
    }
}

/// A deployment from the query string.
fn spec(name: &str, query: &str) -> Result<TransformSpec, String> {
    let mut spec = TransformSpec {
        name: name.to_string(),
        input: String::new(),
        outputs: Vec::new(),
        config: Vec::new(),
        dead_letter: None,
        from_start: false,
    };
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "input" => spec.input = v,
            "output" => spec
                .outputs
                .extend(v.split(',').filter(|o| !o.is_empty()).map(str::to_string)),
            "config" => spec.config.push(config_pair(&v)?),
            "dead_letter" => spec.dead_letter = Some(v),
            "from" => spec.from_start = from_start(&v)?,
            other => return Err(format!("unknown parameter {other}")),
        }
    }
    if spec.input.is_empty() || spec.outputs.is_empty() {
        return Err("input and output are required".into());
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::spec;

    #[test]
    fn a_deployment_is_read_from_the_query() {
        let s = spec(
            "t",
            "input=in&output=a,b&output=c&config=k%3Dv&config=x=1=2&from=start",
        )
        .expect("parses");
        assert_eq!(s.outputs, vec!["a", "b", "c"]);
        assert_eq!(
            s.config,
            vec![("k".into(), "v".into()), ("x".into(), "1=2".into())]
        );
        assert!(s.from_start);
        assert!(spec("t", "input=in").is_err());
        assert!(spec("t", "input=in&output=a&bogus=1").is_err());
        assert!(spec("t", "input=in&output=a&from=middle").is_err());
        assert!(spec("t", "input=in&output=a&config=novalue").is_err());
    }
}
