//! An HTTP source: polls `url` for a JSON array of objects (or an object
//! whose `items` is one) and emits each item it has not emitted yet, keyed
//! by its `id` field, to output 0.
//!
//! The cursor is the largest id emitted (numbers compare as numbers,
//! strings as strings) and the response's `ETag`: the next poll sends
//! `If-None-Match`, and a 304 means nothing new. Config: `url` (required),
//! `id` (the id field's name, default `id`).

use std::cmp::Ordering;

use floe_connector::{http, Config, OutputRecord, Polled, Source};
use serde_json::{json, Value};

struct Poller {
    url: String,
    id: String,
}

impl Source for Poller {
    fn init(config: &Config) -> Result<Self, String> {
        Ok(Poller {
            url: config.require("url")?.to_string(),
            id: config.get("id").unwrap_or("id").to_string(),
        })
    }

    fn poll(&mut self, max: u32, cursor: Option<Vec<u8>>) -> Result<Polled, String> {
        let cursor: Value = cursor
            .and_then(|c| serde_json::from_slice(&c).ok())
            .unwrap_or_else(|| json!({}));
        let last = cursor.get("last").cloned().unwrap_or(Value::Null);
        let mut req = http::Request::get(&self.url).header("accept", "application/json");
        if let Some(etag) = cursor.get("etag").and_then(Value::as_str) {
            req = req.header("if-none-match", etag);
        }
        let res = req.send()?;
        let unchanged = || Polled {
            records: Vec::new(),
            cursor: serde_json::to_vec(&cursor).unwrap_or_default(),
        };
        if res.status == 304 {
            return Ok(unchanged());
        }
        let etag = res.header("etag").map(str::to_string);
        let res = res.ok()?;
        let body: Value =
            serde_json::from_slice(&res.body).map_err(|e| format!("not JSON: {e}"))?;
        let items = match body {
            Value::Array(items) => items,
            Value::Object(mut o) => match o.remove("items") {
                Some(Value::Array(items)) => items,
                _ => return Err("expected an array, or an object with `items`".into()),
            },
            _ => return Err("expected an array, or an object with `items`".into()),
        };
        let mut new: Vec<(Value, Value)> = items
            .into_iter()
            .filter_map(|item| Some((item.get(&self.id)?.clone(), item)))
            .filter(|(id, _)| last.is_null() || compare(id, &last) == Ordering::Greater)
            .collect();
        new.sort_by(|a, b| compare(&a.0, &b.0));
        let all = new.len() <= max as usize;
        new.truncate(max as usize);
        let Some((top, _)) = new.last() else {
            return Ok(unchanged());
        };
        // The ETag says "all of this", so it is kept only when all of it
        // went out; otherwise the next poll fetches again and goes on.
        let next = json!({
            "last": top,
            "etag": if all { etag.map(Value::String) } else { None },
        });
        let records = new
            .iter()
            .map(|(id, item)| OutputRecord {
                output: 0,
                key: Some(text(id).into_bytes()),
                value: Some(item.to_string().into_bytes()),
                headers: Vec::new(),
                timestamp: 0,
            })
            .collect();
        Ok(Polled {
            records,
            cursor: serde_json::to_vec(&next).map_err(|e| e.to_string())?,
        })
    }
}

fn compare(a: &Value, b: &Value) -> Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => text(a).cmp(&text(b)),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

floe_connector::export_source!(Poller);
