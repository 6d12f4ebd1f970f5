//! Reading topics back with librdkafka, for the tests' checks.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Offset, TopicPartitionList};

/// A client of a tenant's key through `bootstrap`, logging in with SASL
/// PLAIN.
pub fn tenant_client(bootstrap: &str, key: &str, secret: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanisms", "PLAIN")
        .set("sasl.username", key)
        .set("sasl.password", secret);
    c
}

/// Every record of `topic` (partitions `0..partitions`) from the start,
/// read with `config` (a `group.id` of "checker" unless it has one) until
/// `want` came and a second passed with nothing more, or a minute passed.
pub fn read_from_start(
    config: &ClientConfig,
    topic: &str,
    partitions: i32,
    want: usize,
) -> Vec<OwnedMessage> {
    let mut config = config.clone();
    if config.get("group.id").is_none() {
        config.set("group.id", "checker");
    }
    let c: BaseConsumer = config
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    c.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline
        && (got.len() < want || quiet_since.elapsed() < Duration::from_secs(1))
    {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                got.push(m.detach());
                quiet_since = Instant::now();
            }
            Some(Err(e)) => eprintln!("reading {topic}: {e}"),
            None => {}
        }
    }
    got
}
