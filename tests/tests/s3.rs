//! The S3 path against a real S3-compatible server (SeaweedFS): the log
//! conformance suite, and the binary storing a topic there across a kill -9.

use std::sync::Arc;
use std::time::Duration;

use floe_e2e::s3::S3Server;
use floe_e2e::{temp_dir, Floe};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

fn server() -> S3Server {
    S3Server::start("floe").unwrap_or_else(|e| panic!("S3 server: {e}"))
}

fn store_for(s3: &S3Server) -> Arc<dyn object_store::ObjectStore> {
    // The S3 builder reads the standard AWS variables, as `floe dev` does.
    // This binary has one test, so nothing else reads the environment.
    for (k, v) in s3.env() {
        std::env::set_var(k, v);
    }
    floe_storage::store::from_url(&format!("s3://{}/conformance", s3.bucket), false)
        .expect("s3 store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_log_conformance_and_binary_round_trip() {
    let s3 = server();
    let store = store_for(&s3);
    floe_storage::conformance::run_all(store, "suite")
        .await
        .expect("SeaweedFS conforms");

    // The binary on the same server.
    let env: Vec<(&str, String)> = s3.env();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut f = Floe::start_with_env(temp_dir("s3-bin"), &["--store", "s3://floe/bin"], &env_ref);
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", f.bootstrap())
        .set("acks", "all")
        .set("compression.type", "zstd")
        .set("enable.idempotence", "false")
        .create()
        .expect("producer");
    let mut pending = Vec::new();
    for i in 0..2_000u32 {
        let v = format!("s3-{i}");
        let f = p
            .send_result(FutureRecord::<(), _>::to("on-s3").payload(&v))
            .map_err(|(e, _)| e)
            .expect("queued");
        pending.push((f, v));
    }
    let mut acked = Vec::new();
    for (f, v) in pending {
        let d = f
            .await
            .expect("delivery")
            .unwrap_or_else(|(e, _)| panic!("produce to s3: {e}"));
        acked.push((d.offset, v));
    }
    drop(p);
    f.restart_after_kill9();
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", f.bootstrap())
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("on-s3", 0, Offset::Beginning)
        .expect("tpl");
    c.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while got.len() < acked.len() && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            got.push((
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string(),
            ));
        }
    }
    assert_eq!(
        got, acked,
        "every acked record, at its offset, after kill -9"
    );
    let metrics = f.http_get("/metrics").expect("metrics");
    assert!(metrics.contains("floe_store_gets_total"), "{metrics}");
}
