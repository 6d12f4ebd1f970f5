//! A webhook sink: POSTs each batch to `url` as JSON lines, one line per
//! record, with the batch's partition and offsets in headers
//! (`floe-partition`, `floe-offset`, `floe-last-offset`) so a receiver can
//! drop a batch it already has (a batch may come again after a crash).
//!
//! Config: `url` (required); `attempts`, tries per delivery before the
//! host's own backoff takes over (default 3): a connection error or a 5xx
//! is tried again at once, a 4xx is not.

use floe_connector::{http, Config, Record, Sink};
use serde_json::{json, Map, Value};

struct Webhook {
    url: String,
    attempts: u32,
}

impl Sink for Webhook {
    fn init(config: &Config) -> Result<Self, String> {
        let url = config.require("url")?.to_string();
        let attempts = match config.get("attempts") {
            Some(n) => n
                .parse()
                .map_err(|_| format!("attempts={n}: not a number"))?,
            None => 3,
        };
        Ok(Webhook {
            url,
            attempts: attempts.max(1),
        })
    }

    fn deliver(&mut self, batch: Vec<Record>) -> Result<(), String> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let (partition, from, to) = (first.partition, first.offset, last.offset);
        let mut body = Vec::new();
        for r in &batch {
            serde_json::to_writer(&mut body, &line(r)).map_err(|e| e.to_string())?;
            body.push(b'\n');
        }
        let mut last_error = String::new();
        for _ in 0..self.attempts {
            let sent = http::Request::post(&self.url, body.clone())
                .header("content-type", "application/x-ndjson")
                .header("floe-partition", partition.to_string())
                .header("floe-offset", from.to_string())
                .header("floe-last-offset", to.to_string())
                .send();
            match sent {
                Ok(r) if (200..300).contains(&r.status) => return Ok(()),
                Ok(r) if r.status < 500 => return r.ok().map(drop),
                Ok(r) => last_error = r.ok().err().unwrap_or_default(),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }
}

/// A record as one JSON object: text where the bytes are UTF-8, else
/// numbers (a JSON array of bytes).
fn line(r: &Record) -> Value {
    let bytes = |b: &Option<Vec<u8>>| match b {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => json!(b),
        },
    };
    let headers: Map<String, Value> = r
        .headers
        .iter()
        .map(|h| (h.key.clone(), bytes(&h.value)))
        .collect();
    json!({
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": bytes(&r.key),
        "value": bytes(&r.value),
        "headers": headers,
    })
}

floe_connector::export_sink!(Webhook);
