//! A tenant of a running Floe, as the plugin tests use one: its API key,
//! its HTTP calls, its Kafka client, and producing and reading records.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{basic_auth, Floe};

pub struct Tenant {
    pub name: String,
    pub key: String,
    pub secret: String,
}

impl Tenant {
    /// A new tenant on the standard plan, made with the admin `token`.
    pub fn new(f: &Floe, token: &str, name: &str) -> Self {
        Self::new_on(f, token, name, "standard")
    }

    pub fn new_on(f: &Floe, token: &str, name: &str, plan: &str) -> Self {
        let (key, secret) = f.tenant_on_plan(token, name, plan);
        Tenant {
            name: name.into(),
            key,
            secret,
        }
    }

    pub fn basic(&self) -> String {
        basic_auth(&self.key, &self.secret)
    }

    pub fn kafka(&self, f: &Floe) -> ClientConfig {
        crate::kafka::tenant_client(&f.bootstrap(), &self.key, &self.secret)
    }

    /// An HTTP call as this tenant: status and JSON body.
    pub fn call(
        &self,
        f: &Floe,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        f.call_json(&self.basic(), method, path, body)
    }

    pub fn create_topic(&self, f: &Floe, topic: &str, partitions: usize) {
        let path = format!("/v3/clusters/floe-{}/topics", self.name);
        let body = format!(r#"{{"topic_name": "{topic}", "partitions_count": {partitions}}}"#);
        let (status, v) = self.call(f, "POST", &path, body.as_bytes());
        assert_eq!(status, 201, "{v}");
    }
}

/// Produces `values` (each its own key too), acks=all, idempotent.
pub async fn produce_with(config: ClientConfig, bootstrap: &str, topic: &str, values: Vec<String>) {
    let records = values.into_iter().map(|v| (v, Vec::new())).collect();
    produce_records(config, bootstrap, topic, records).await
}

/// A record to produce: its value (also its key), and its headers.
pub type Produced = (String, Vec<(&'static str, String)>);

pub async fn produce_records(
    mut config: ClientConfig,
    bootstrap: &str,
    topic: &str,
    records: Vec<Produced>,
) {
    let p: FutureProducer = config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    let mut pending = Vec::new();
    // Paced, so the records keep arriving for as long as there are any.
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    for (v, headers) in records {
        pace.tick().await;
        let (p, topic) = (p.clone(), topic.to_string());
        pending.push(tokio::spawn(async move {
            let headers = headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(value),
                })
            });
            p.send(
                FutureRecord::to(&topic)
                    .key(&v)
                    .payload(&v)
                    .headers(headers),
                Duration::from_secs(60),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce {v}: {e}"));
        }));
    }
    for h in pending {
        h.await.expect("delivery task");
    }
}

/// A record read back: its value, and its headers.
pub type Consumed = (Vec<u8>, Vec<(String, Vec<u8>)>);

/// Every record of `topic` (all `partitions`), as (value, headers).
pub fn consume(t: &Tenant, f: &Floe, topic: &str, partitions: i32, want: usize) -> Vec<Consumed> {
    crate::kafka::read_from_start(&t.kafka(f), topic, partitions, want)
        .iter()
        .map(|m| {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            (m.payload().unwrap_or_default().to_vec(), headers)
        })
        .collect()
}
