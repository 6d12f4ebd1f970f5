//! Wasm transforms end to end, against the real binary with librdkafka:
//! deploy over HTTP, produce, consume the outputs. Exactly-once across
//! kill -9 (stateless and stateful guests); each hostile guest stopped by
//! its limit, its batches dead-lettered with the reason, while another
//! tenant's transform carries on; uploads outside the world refused; one
//! writing keyless records to a compacted topic stops there. The
//! Rust SDK's examples, built for wasm32-wasip2, transform real records.
//! Plans' quota policies throttle and refuse by their decisions, and fail
//! open to the native limits.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use floe_e2e::tenant::{consume, produce_records, produce_with, Produced, Tenant};
use floe_e2e::{guest, temp_dir, Floe};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

const TOKEN: &str = "transform-admin-token";

/// The transform calls of the data API.
trait Transforms {
    fn deploy(&self, f: &Floe, name: &str, query: &str, wasm: &[u8]) -> (u16, serde_json::Value);
    fn status(&self, f: &Floe, name: &str) -> serde_json::Value;
    fn caught_up(&self, f: &Floe, name: &str, records: u64) -> serde_json::Value;
}

impl Transforms for Tenant {
    fn deploy(&self, f: &Floe, name: &str, query: &str, wasm: &[u8]) -> (u16, serde_json::Value) {
        self.call(f, "PUT", &format!("/v1/transforms/{name}?{query}"), wasm)
    }

    fn status(&self, f: &Floe, name: &str) -> serde_json::Value {
        let (status, v) = self.call(f, "GET", &format!("/v1/transforms/{name}"), b"");
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Waits until the transform has taken in `records` and has no lag.
    fn caught_up(&self, f: &Floe, name: &str, records: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.status(f, name);
            if s["lag"] == 0 && s["records_in"].as_u64() == Some(records) {
                return s;
            }
            assert!(Instant::now() < deadline, "{name} did not catch up: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn start(name: &str, extra: &[&str]) -> Floe {
    let mut args = vec!["--admin-token", TOKEN];
    args.extend_from_slice(extra);
    Floe::start(temp_dir(name), &args)
}

async fn produce(t: &Tenant, f: &Floe, topic: &str, values: impl Iterator<Item = String>) {
    produce_with(t.kafka(f), &f.bootstrap(), topic, values.collect()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_are_exactly_once_across_kill9() {
    let mut f = start("transform-eo", &[]);
    let t = Tenant::new(&f, TOKEN, "acme");
    t.create_topic(&f, "in", 2);
    // The copies are stamped with the log's time, as a produce would be.
    let (status, v) = t.call(
        &f,
        "POST",
        "/v3/clusters/floe-acme/topics",
        br#"{"topic_name": "out", "partitions_count": 2,
             "configs": [{"name": "message.timestamp.type", "value": "LogAppendTime"}]}"#,
    );
    assert_eq!(status, 201, "{v}");
    t.create_topic(&f, "counted", 1);
    let (status, v) = t.deploy(
        &f,
        "copy",
        "input=in&output=out",
        &floe_fixtures::identity(),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["dead_letter"], "copy-dlq");
    let (status, v) = t.deploy(
        &f,
        "count",
        "input=in&output=counted",
        &floe_fixtures::counter(),
    );
    assert_eq!(status, 200, "{v}");

    // Produce in rounds; in each of the first two, kill -9 the process
    // while records are arriving and the transforms are working through
    // them (the idempotent producer retries into the restarted process).
    const ROUNDS: usize = 3;
    const PER_ROUND: usize = 1000;
    for round in 0..ROUNDS {
        let values: Vec<String> = (0..PER_ROUND).map(|i| format!("r{round}-{i:04}")).collect();
        let sending = {
            let (t, bootstrap) = (t.kafka(&f), f.bootstrap());
            tokio::spawn(async move { produce_with(t, &bootstrap, "in", values).await })
        };
        if round + 1 < ROUNDS {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let lag = t.status(&f, "count")["lag"].clone();
            eprintln!("round {round}: kill -9 with the counter's lag at {lag}");
            f.restart_after_kill9();
        }
        sending.await.expect("producer task");
    }
    let total = (ROUNDS * PER_ROUND) as u64;
    for name in ["copy", "count"] {
        let s = t.caught_up(&f, name, total);
        assert_eq!(s["records_out"].as_u64(), Some(total), "{s}");
        assert_eq!(s["errors"], 0, "{s}");
        assert!(s["fuel"].as_u64().is_some_and(|f| f > 0), "{s}");
        assert_eq!(s["state"], "running", "{s}");
    }

    // Every input record once in `out`.
    let out = consume(&t, &f, "out", 2, total as usize);
    let mut copies: HashMap<Vec<u8>, usize> = HashMap::new();
    for (v, _) in &out {
        *copies.entry(v.clone()).or_default() += 1;
    }
    // One offset per record: the outputs' high watermarks add up.
    let c: BaseConsumer = t.kafka(&f).create().expect("consumer");
    let hw: i64 = (0..2)
        .map(|p| {
            c.fetch_watermarks("out", p, Duration::from_secs(5))
                .expect("watermarks")
                .1
        })
        .sum();
    assert_eq!(hw as u64, total);
    assert_eq!(out.len() as u64, total, "nothing lost or repeated");
    let stamped = floe_e2e::kafka::read_from_start(&t.kafka(&f), "out", 2, total as usize);
    assert!(stamped.iter().all(
        |m| matches!(m.timestamp(), rdkafka::Timestamp::LogAppendTime(t) if t > 1_700_000_000_000)
    ));
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND {
            let v = format!("r{round}-{i:04}").into_bytes();
            assert_eq!(copies.get(&v), Some(&1), "{}", String::from_utf8_lossy(&v));
        }
    }
    // The counter's state moved with its outputs: ordinals 1..=N, once each.
    let counted = consume(&t, &f, "counted", 1, total as usize);
    let mut ordinals: Vec<u64> = counted
        .iter()
        .map(|(v, _)| u64::from_le_bytes(v.as_slice().try_into().expect("8 bytes")))
        .collect();
    ordinals.sort_unstable();
    assert_eq!(ordinals, (1..=total).collect::<Vec<_>>());

    // Listing shows both; deleting one leaves the other.
    let (status, v) = t.call(&f, "GET", "/v1/transforms", b"");
    assert_eq!(status, 200);
    assert_eq!(v["transforms"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(t.call(&f, "DELETE", "/v1/transforms/copy", b"").0, 204);
    assert_eq!(t.call(&f, "GET", "/v1/transforms/copy", b"").0, 404);
    assert_eq!(t.call(&f, "DELETE", "/v1/transforms/copy", b"").0, 404);
    assert_eq!(t.status(&f, "count")["name"], "count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_are_stopped_by_their_limits_and_others_carry_on() {
    let f = start(
        "transform-hostile",
        &["--wasm-deadline-ms", "300", "--wasm-memory-mib", "16"],
    );
    let evil = Tenant::new(&f, TOKEN, "evil");
    let good = Tenant::new(&f, TOKEN, "good");
    good.create_topic(&f, "in", 1);
    good.create_topic(&f, "out", 1);
    let (status, v) = good.deploy(
        &f,
        "copy",
        "input=in&output=out",
        &floe_fixtures::identity(),
    );
    assert_eq!(status, 200, "{v}");
    let hostile = [
        ("spin", floe_fixtures::spin(), "deadline"),
        ("bomb", floe_fixtures::bomb(), "memory"),
        ("trap", floe_fixtures::trap(), "trap"),
        ("amplify", floe_fixtures::amplify(), "outputs"),
    ];
    evil.create_topic(&f, "in", 1);
    evil.create_topic(&f, "out", 1);
    for (name, wasm, _) in &hostile {
        let (status, v) = evil.deploy(&f, name, "input=in&output=out", wasm);
        assert_eq!(status, 200, "{name}: {v}");
    }
    // Uploads outside the world, or not components, are refused.
    let (status, v) = evil.deploy(
        &f,
        "sneaky",
        "input=in&output=out",
        &floe_fixtures::sneaky(),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("evil:net/socket")),
        "{v}"
    );
    let (status, v) = evil.deploy(&f, "junk", "input=in&output=out", b"\0asm but not really");
    assert_eq!(status, 400, "{v}");
    let (status, v) = evil.deploy(&f, "loop", "input=in&output=in", &floe_fixtures::identity());
    assert_eq!(status, 400, "{v}");
    let (status, v) = evil.deploy(
        &f,
        "nowhere",
        "input=nope&output=out",
        &floe_fixtures::identity(),
    );
    assert_eq!(status, 404, "{v}");

    let n = 20;
    produce(&evil, &f, "in", (0..n).map(|i| format!("e{i}"))).await;
    produce(&good, &f, "in", (0..n).map(|i| format!("g{i}"))).await;

    // The good tenant's transform is unaffected.
    let s = good.caught_up(&f, "copy", n as u64);
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(consume(&good, &f, "out", 1, n).len(), n);

    // Each hostile one dead-letters every record, with its limit named.
    for (name, _, kind) in &hostile {
        let s = evil.caught_up(&f, name, n as u64);
        assert_eq!(s["errors"].as_u64(), Some(n as u64), "{s}");
        assert_eq!(s["records_out"], 0, "{s}");
        assert_eq!(s["last_error"]["kind"], *kind, "{s}");
        let dead = consume(&evil, &f, &format!("{name}-dlq"), 1, n);
        assert_eq!(dead.len(), n, "{name}");
        for (_, headers) in &dead {
            let why = headers
                .iter()
                .find(|(k, _)| k == "floe-error")
                .map(|(_, v)| String::from_utf8_lossy(v).to_string())
                .expect("a floe-error header");
            assert!(why.starts_with(kind), "{name}: {why}");
        }
    }
    // Nothing reached the hostile transforms' output.
    assert!(consume(&evil, &f, "out", 1, 0).is_empty());
    // `/metrics` counts the failures by tenant and why.
    let metrics = f.http_get("/metrics").expect("/metrics");
    for (_, _, kind) in &hostile {
        let series = format!(
            "floe_wasm_failures_total{{kind=\"{kind}\",tenant=\"{}\",world=\"transform\"}} ",
            evil.name
        );
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }
    // A transform copying keyless records into a compacted topic stops
    // with the produce's reason; the topic gets none of them.
    evil.create_topic(&f, "loose", 1);
    let (status, v) = evil.call(
        &f,
        "POST",
        &format!("/v3/clusters/floe-{}/topics", evil.name),
        br#"{"topic_name": "latest", "partitions_count": 1,
             "configs": [{"name": "cleanup.policy", "value": "compact"}]}"#,
    );
    assert_eq!(status, 201, "{v}");
    let (status, v) = evil.deploy(
        &f,
        "unkeyed",
        "input=loose&output=latest",
        &floe_fixtures::identity(),
    );
    assert_eq!(status, 200, "{v}");
    let p: FutureProducer = evil.kafka(&f).create().expect("producer");
    assert_eq!(produce_one(&p, "loose", b"no key").await, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = evil.status(&f, "unkeyed");
        let state = s["state"].as_str().unwrap_or_default();
        if state.starts_with("stopped") {
            assert!(state.contains("without a key"), "{s}");
            assert_eq!(s["records_out"], 0, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "never stopped: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(consume(&evil, &f, "latest", 1, 0).is_empty());

    // And the process carries on: the good tenant still transforms.
    produce(&good, &f, "in", (n..2 * n).map(|i| format!("g{i}"))).await;
    good.caught_up(&f, "copy", 2 * n as u64);
}

fn header_of<'a>(headers: &'a [(String, Vec<u8>)], key: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_guests_built_for_wasip2_transform_real_records() {
    let f = start("transform-guests", &[]);
    let t = Tenant::new(&f, TOKEN, "acme");
    for topic in ["in", "copy", "red", "masked", "a", "b"] {
        t.create_topic(&f, topic, 1);
    }
    let Some(identity) = guest("identity") else {
        let (status, v) = t.deploy(
            &f,
            "copy",
            "input=in&output=copy",
            &floe_fixtures::identity(),
        );
        assert_eq!(status, 200, "{v}");
        produce(&t, &f, "in", (0..10).map(|i| format!("v{i}"))).await;
        t.caught_up(&f, "copy", 10);
        return;
    };
    let deploys = [
        ("copy", "input=in&output=copy", identity),
        (
            "only-red",
            "input=in&output=red&config=header=color&config=value=red",
            guest("filter_header").expect("built"),
        ),
        (
            "mask",
            "input=in&output=masked&config=fields=ssn,card",
            guest("json_mask").expect("built"),
        ),
        (
            "both",
            "input=in&output=a,b",
            guest("fan_out").expect("built"),
        ),
    ];
    for (name, query, wasm) in &deploys {
        let (status, v) = t.deploy(&f, name, query, wasm);
        assert_eq!(status, 200, "{name}: {v}");
    }
    // A filter without its config fails `init`, visibly.
    let (status, v) = t.deploy(&f, "no-config", "input=in&output=red", &deploys[1].2);
    assert_eq!(status, 200, "{v}");

    // JSON values, every third one red; then, once those are through (so it
    // is a batch of its own), one value that is not JSON.
    let n = 300;
    let records: Vec<Produced> = (0..n)
        .map(|i| {
            let value = format!(r#"{{"id":{i},"name":"n{i}","ssn":"123-45-{i:04}"}}"#);
            let color = if i % 3 == 0 { "red" } else { "blue" };
            (value, vec![("color", color.to_string())])
        })
        .collect();
    produce_records(t.kafka(&f), &f.bootstrap(), "in", records).await;
    for (name, _, _) in &deploys {
        t.caught_up(&f, name, n as u64);
    }
    let odd = vec![("not json".to_string(), vec![("color", "red".to_string())])];
    produce_records(t.kafka(&f), &f.bootstrap(), "in", odd).await;
    let total = n + 1;
    for (name, _, _) in &deploys {
        t.caught_up(&f, name, total as u64);
    }

    // identity: every record, as it was.
    let copy = consume(&t, &f, "copy", 1, total);
    assert_eq!(copy.len(), total);
    assert!(copy.iter().any(|(v, _)| v == b"not json"));
    assert!(copy.iter().all(|(_, h)| header_of(h, "color").is_some()));

    // filter-header: the red ones only.
    let red = consume(&t, &f, "red", 1, n / 3 + 1);
    assert_eq!(
        red.len(),
        n / 3 + 1,
        "every third record and the non-JSON one"
    );
    assert!(red
        .iter()
        .all(|(_, h)| header_of(h, "color") == Some(b"red".as_slice())));

    // json-mask: every JSON record masked; the non-JSON one dead-lettered
    // with the parse error.
    let s = t.status(&f, "mask");
    let masked = consume(&t, &f, "masked", 1, n);
    let dead = consume(&t, &f, "mask-dlq", 1, 1);
    assert_eq!((masked.len(), dead.len()), (n, 1), "{s}");
    assert_eq!(dead[0].0, b"not json");
    assert_eq!(s["errors"], 1, "{s}");
    let why = header_of(&dead[0].1, "floe-error").map(String::from_utf8_lossy);
    assert!(
        why.as_deref()
            .is_some_and(|w| w.starts_with("error:") && w.contains("not a JSON object")),
        "{why:?}"
    );
    for (v, _) in &masked {
        let json: serde_json::Value = serde_json::from_slice(v).expect("JSON");
        assert_eq!(json["ssn"], "***", "{json}");
        assert!(
            json["name"].as_str().is_some_and(|n| n.starts_with('n')),
            "{json}"
        );
    }

    // fan-out: everything to both outputs, the second copy marked.
    let a = consume(&t, &f, "a", 1, total);
    let b = consume(&t, &f, "b", 1, total);
    assert_eq!((a.len(), b.len()), (total, total));
    assert!(a.iter().all(|(_, h)| header_of(h, "floe-copy").is_none()));
    assert!(b
        .iter()
        .all(|(_, h)| header_of(h, "floe-copy") == Some(b"1".as_slice())));
    let s = t.status(&f, "both");
    assert_eq!(s["records_out"].as_u64(), Some(2 * total as u64), "{s}");

    // init's error shows in status.
    let s = t.status(&f, "no-config");
    assert_ne!(s["state"], "running", "{s}");
    assert!(s.to_string().contains("config `header` is required"), "{s}");
}

/// A counter's value on a `/metrics` page (0 when the series is absent).
fn metric(f: &Floe, series: &str) -> f64 {
    let page = f.http_get("/metrics").expect("/metrics");
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Produces one record and waits for its delivery: the error, if any.
async fn produce_one(p: &FutureProducer, topic: &str, value: &[u8]) -> Option<String> {
    p.send(
        FutureRecord::<(), _>::to(topic).payload(value),
        Duration::from_secs(30),
    )
    .await
    .err()
    .map(|(e, _)| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_quota_policies_throttle_and_refuse_and_fail_open() {
    let f = start("quota-policy", &["--wasm-deadline-ms", "200"]);
    let admin = format!("Authorization: Bearer {TOKEN}");
    let put = |plan: &str, wasm: &[u8]| {
        f.call_json(
            &admin,
            "PUT",
            &format!("/admin/v1/plans/{plan}/policy"),
            wasm,
        )
    };
    // Uploads are checked: the quota world only, and a known plan.
    assert_eq!(put("free", b"\0asm junk").0, 400);
    let (status, v) = put("free", &floe_fixtures::identity());
    assert_eq!(status, 400, "a transform is not a policy: {v}");
    assert_eq!(put("gold", &floe_fixtures::quota_throttle()).0, 404);
    let (status, v) = put("free", &floe_fixtures::quota_throttle());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["plan"], "free");
    let (status, shown) = f.call_json(&admin, "GET", "/admin/v1/plans/free/policy", b"");
    assert_eq!((status, &shown["sha256"]), (200, &v["sha256"]));

    // "metered" is on the free plan, so decided by the policy; "bystander"
    // is on standard, which has none.
    let metered = Tenant::new_on(&f, TOKEN, "metered", "free");
    let bystander = Tenant::new(&f, TOKEN, "bystander");
    metered.create_topic(&f, "in", 1);
    bystander.create_topic(&f, "in", 1);
    let producer = |t: &Tenant| -> FutureProducer {
        t.kafka(&f)
            .set("linger.ms", "0")
            .set("message.timeout.ms", "30000")
            .create()
            .expect("producer")
    };
    let (mp, bp) = (producer(&metered), producer(&bystander));
    let kib = vec![b'x'; 1024];

    // A window with 2 KiB in: the next window's decision throttles.
    let throttled = metric(&f, "floe_throttled_requests_total");
    for _ in 0..2 {
        assert_eq!(produce_one(&mp, "in", &kib).await, None);
    }
    // The window's first request is decided by what was in force (and
    // asks the policy); its new decision holds for the rest of the window.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(produce_one(&mp, "in", &kib).await, None);
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(produce_one(&mp, "in", &kib).await, None);
        if metric(&f, "floe_throttled_requests_total") > throttled {
            break;
        }
    }
    assert!(
        metric(&f, "floe_throttled_requests_total") > throttled,
        "the policy throttled"
    );
    assert!(metric(&f, "floe_policy_decisions_total{plan=\"free\"}") >= 2.0);

    // A window with over 100 KB in: the next one refuses produce, with the
    // policy's reason; the bystander produces throughout.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..120 {
        assert_eq!(produce_one(&mp, "in", &kib).await, None);
        assert_eq!(produce_one(&bp, "in", &kib).await, None);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _ = produce_one(&mp, "in", b"opens the window").await;
    let mut refused = None;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        refused = produce_one(&mp, "in", b"refused").await;
        if refused.is_some() {
            break;
        }
    }
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("PolicyViolation")),
        "{refused:?}"
    );
    // Over HTTP too: 429, the policy's reason, and when to retry. (Should
    // the window end meanwhile, its successor's first request is decided
    // by the refusal in force.)
    let answer = f
        .http_bytes(
            "POST",
            "/v3/clusters/floe-metered/topics/in/records",
            &[&metered.basic(), "Content-Type: application/json"],
            br#"{"partition_id":0,"value":{"type":"STRING","data":"x"}}"#,
        )
        .expect("answered");
    let head = answer.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 429"), "{answer}");
    assert!(head.contains("retry-after: 1\r\n"), "{answer}");
    assert!(answer.contains("quota policy"), "{answer}");
    assert_eq!(produce_one(&bp, "in", &kib).await, None);

    // A policy that never answers fails open: the native limits decide
    // (nothing this small is throttled by them), and the failures show.
    let (status, v) = put("free", &floe_fixtures::quota_spin());
    assert_eq!(status, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..16 {
        assert_eq!(produce_one(&mp, "in", b"fails open").await, None);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Asked once per kind in use (produce, other), then left to rest for
    // 10 s rather than spinning to its deadline every second.
    let failures = metric(&f, "floe_policy_failures_total{plan=\"free\"}");
    eprintln!("policy failures: {failures}");
    assert!((1.0..=2.0).contains(&failures), "{failures} failures");
    assert!(f.log_text().contains("quota policy failed"));

    // Removed, the plan goes back to its native limits.
    assert_eq!(
        f.call_json(&admin, "DELETE", "/admin/v1/plans/free/policy", b"")
            .0,
        204
    );
    assert_eq!(
        f.call_json(&admin, "GET", "/admin/v1/plans/free/policy", b"")
            .0,
        404
    );
    assert_eq!(
        f.call_json(&admin, "DELETE", "/admin/v1/plans/free/policy", b"")
            .0,
        404
    );
    assert_eq!(produce_one(&mp, "in", b"native again").await, None);
}
