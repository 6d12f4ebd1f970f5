//! Wasm connectors end to end, against the real binary and real local HTTP
//! servers: the SDK's webhook sink delivers exactly once (to a receiver
//! that deduplicates by its offset headers) across a kill -9 of Floe in the
//! middle of a delivery; a target answering 500 is retried with growing
//! waits and its batch dead-lettered, and the sink carries on; requests
//! outside a connector's allow-list, or to a listed name that resolves to a
//! loopback address, are refused at the host; the SDK's HTTP source emits
//! each new item once across a kill -9, using ETags.
//!
//! These need the Rust guest examples (`FLOE_GUESTS`); without the
//! wasm32-wasip2 target they say so and do not run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use floe_e2e::tenant::{consume, produce_with, Tenant};
use floe_e2e::webhook::{Received, Webhook};
use floe_e2e::{guest, temp_dir, Floe};

const TOKEN: &str = "connector-admin-token";

fn start(name: &str) -> Floe {
    Floe::start(temp_dir(name), &["--admin-token", TOKEN])
}

/// The connector calls of the data API.
trait Connectors {
    fn create(&self, f: &Floe, name: &str, query: &str, wasm: &[u8]) -> serde_json::Value;
    fn connector(&self, f: &Floe, name: &str) -> serde_json::Value;
    fn wait_for(
        &self,
        f: &Floe,
        name: &str,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value;
}

impl Connectors for Tenant {
    fn create(&self, f: &Floe, name: &str, query: &str, wasm: &[u8]) -> serde_json::Value {
        let (status, v) = self.call(f, "PUT", &format!("/v1/connectors/{name}?{query}"), wasm);
        assert_eq!(status, 200, "{v}");
        v
    }

    fn connector(&self, f: &Floe, name: &str) -> serde_json::Value {
        let (status, v) = self.call(f, "GET", &format!("/v1/connectors/{name}"), b"");
        assert_eq!(status, 200, "{v}");
        v
    }

    fn wait_for(
        &self,
        f: &Floe,
        name: &str,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.connector(f, name);
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{name}: {what}: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `config=` pairs for a query string, percent-encoded.
fn config(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("config={}", encode(&format!("{k}={v}"))))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The records a webhook received, one per JSON line: (partition, offset)
/// to value, counting how many lines came in all.
fn lines(received: &[Received]) -> (BTreeMap<(i64, i64), String>, usize) {
    let (mut unique, mut all) = (BTreeMap::new(), 0);
    for r in received {
        for line in r.body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).expect("a JSON line");
            let at = (
                v["partition"].as_i64().expect("partition"),
                v["offset"].as_i64().expect("offset"),
            );
            unique.insert(at, v["value"].as_str().expect("value").to_string());
            all += 1;
        }
    }
    (unique, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_sink_is_exactly_once_across_kill9_mid_delivery() {
    let Some(sink) = guest("http_sink") else {
        return;
    };
    let mut f = start("conn-eo");
    let t = Tenant::new(&f, TOKEN, "acme");
    t.create_topic(&f, "orders", 2);
    let values: Vec<String> = (0..200).map(|i| format!("order-{i}")).collect();
    produce_with(t.kafka(&f), &f.bootstrap(), "orders", values.clone()).await;

    // The receiver holds its first answer back until Floe is dead: that
    // batch is delivered, but the sink never hears so.
    let hook = Webhook::start();
    let (arrived, released) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    {
        let (arrived, released) = (arrived.clone(), released.clone());
        hook.set(move |r| {
            // The receiver dedups by the batch's headers.
            assert!(r.header("floe-partition").is_some() && r.header("floe-offset").is_some());
            if arrived.fetch_add(1, Ordering::SeqCst) == 0 {
                while !released.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            (200, vec![], vec![])
        });
    }
    let port = hook.port.to_string();
    let q = format!(
        "kind=sink&topic=orders&from=start&{}",
        config(&[
            ("url", &hook.url("/orders")),
            ("allow", &format!("127.0.0.1:{port}")),
        ])
    );
    let created = t.create(&f, "hook", &q, &sink);
    assert_eq!(created["kind"], "sink");
    assert_eq!(created["dead_letter"], "hook-dlq");
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrived.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no delivery began");
        std::thread::sleep(Duration::from_millis(10));
    }
    f.kill9();
    released.store(true, Ordering::SeqCst);
    f.restart_after_kill9();

    let s = t.wait_for(&f, "hook", "delivers everything", |s| {
        s["lag"] == 0 && s["records"].as_u64() == Some(200)
    });
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(s["dead_lettered"], 0, "{s}");
    assert!(s["fuel"].as_u64().is_some_and(|n| n > 0), "{s}");
    let (unique, all) = lines(&hook.received());
    let got: BTreeSet<&String> = unique.values().collect();
    let want: BTreeSet<&String> = values.iter().collect();
    assert_eq!(got, want, "every record, once by offset");
    assert_eq!(unique.len(), 200);
    // The held batch came twice: without the receiver's dedup it would
    // have been a duplicate.
    assert!(
        all > 200,
        "the batch in flight at the kill was delivered again"
    );
    eprintln!(
        "200 records, {all} lines received, {} duplicates",
        all - 200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_is_retried_with_backoff_then_dead_lettered() {
    let Some(sink) = guest("http_sink") else {
        return;
    };
    let f = start("conn-dlq");
    let t = Tenant::new(&f, TOKEN, "acme");
    t.create_topic(&f, "events", 1);
    let values: Vec<String> = (0..5).map(|i| format!("event-{i}")).collect();
    produce_with(t.kafka(&f), &f.bootstrap(), "events", values.clone()).await;

    let hook = Webhook::start();
    hook.set(|_| (500, vec![], b"down for maintenance".to_vec()));
    let port = hook.port.to_string();
    let q = format!(
        "kind=sink&topic=events&from=start&max_retries=2&{}",
        config(&[
            ("url", &hook.url("/events")),
            ("allow", &format!("127.0.0.1:{port}")),
            // One try per delivery: the host's retries are what is tested.
            ("attempts", "1"),
        ])
    );
    t.create(&f, "flaky", &q, &sink);
    let s = t.wait_for(&f, "flaky", "dead-letters the batch", |s| {
        s["dead_lettered"].as_u64() == Some(5)
    });
    assert_eq!(s["lag"], 0, "{s}");
    assert_eq!(s["records"], 0, "{s}");
    let last = &s["last_error"];
    assert!(
        last["message"]
            .as_str()
            .is_some_and(|m| m.contains("HTTP 500")),
        "{s}"
    );
    // One try and two retries, each after a longer wait.
    let tries: Vec<Instant> = hook.received().iter().map(|r| r.at).collect();
    assert_eq!(tries.len(), 3, "{tries:?}");
    let (first, second) = (tries[1] - tries[0], tries[2] - tries[1]);
    assert!(
        first >= Duration::from_millis(150) && second > first,
        "waits {first:?} then {second:?}"
    );
    let dead = consume(&t, &f, "flaky-dlq", 1, 5);
    assert_eq!(dead.len(), 5);
    // Every record, whatever order the producer's tasks sent them in.
    let mut got: Vec<&[u8]> = dead.iter().map(|(v, _)| v.as_slice()).collect();
    let mut want: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    for (_, headers) in &dead {
        let why = headers
            .iter()
            .find(|(k, _)| k == "floe-error")
            .map(|(_, v)| String::from_utf8_lossy(v).to_string())
            .expect("floe-error header");
        assert!(why.contains("HTTP 500"), "{why}");
    }

    // The target is back: the sink carries on with what comes next.
    hook.set(|_| (204, vec![], vec![]));
    produce_with(t.kafka(&f), &f.bootstrap(), "events", vec!["later".into()]).await;
    t.wait_for(&f, "flaky", "delivers again", |s| s["records"] == 1);
    let (unique, _) = lines(&hook.received()[3..]);
    assert_eq!(unique.values().collect::<Vec<_>>(), vec!["later"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_the_allow_list_are_refused_at_the_host() {
    let Some(sink) = guest("http_sink") else {
        return;
    };
    let f = start("conn-allow");
    let t = Tenant::new(&f, TOKEN, "acme");
    t.create_topic(&f, "events", 1);
    let hook = Webhook::start();
    let port = hook.port;
    let sneaky = [
        // Another port of the same address.
        (
            "wrong-port",
            hook.url("/x"),
            format!("127.0.0.1:{}", port + 1),
        ),
        // Nothing listed at all.
        ("no-list", hook.url("/x"), String::new()),
        // A listed name that resolves to loopback: only an address entry
        // may reach it.
        (
            "by-name",
            format!("http://localhost:{port}/x"),
            format!("localhost:{port}"),
        ),
    ];
    for (name, url, allow) in &sneaky {
        let q = format!(
            "kind=sink&topic=events&from=start&max_retries=0&{}",
            config(&[("url", url), ("allow", allow), ("attempts", "1")])
        );
        t.create(&f, name, &q, &sink);
    }
    // An honest one beside them delivers.
    let q = format!(
        "kind=sink&topic=events&from=start&{}",
        config(&[
            ("url", &hook.url("/ok")),
            ("allow", &format!("127.0.0.1:{port}"))
        ])
    );
    t.create(&f, "honest", &q, &sink);
    // A body of many writes: the host's refusal lands mid-body, and the
    // guest still reports the refusal, not the body it could not finish.
    let value = "e".repeat(256 << 10);
    produce_with(t.kafka(&f), &f.bootstrap(), "events", vec![value]).await;

    for (name, why) in [
        ("wrong-port", "HttpRequestDenied"),
        ("no-list", "HttpRequestDenied"),
        ("by-name", "DestinationIpProhibited"),
    ] {
        let s = t.wait_for(&f, name, "is refused", |s| s["dead_lettered"] == 1);
        let message = s["last_error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{name}: {s}");
    }
    t.wait_for(&f, "honest", "delivers", |s| s["records"] == 1);
    let paths: Vec<String> = hook.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        vec!["/ok"],
        "only the honest sink reached the server"
    );
    let log = f.log_text();
    assert!(
        log.contains("connector request refused"),
        "refusals are logged"
    );
}

/// With `--connector-private-egress false` (a shared deployment), a
/// loopback address the tenant lists is refused like one it did not list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_private_egress_off_listed_private_addresses_are_refused() {
    let Some(sink) = guest("http_sink") else {
        return;
    };
    let f = Floe::start(
        temp_dir("conn-public"),
        &[
            "--admin-token",
            TOKEN,
            "--connector-private-egress",
            "false",
        ],
    );
    let t = Tenant::new(&f, TOKEN, "acme");
    t.create_topic(&f, "events", 1);
    let hook = Webhook::start();
    let q = format!(
        "kind=sink&topic=events&from=start&max_retries=0&{}",
        config(&[
            ("url", &hook.url("/x")),
            ("allow", &format!("127.0.0.1:{}", hook.port)),
            ("attempts", "1")
        ])
    );
    t.create(&f, "listed", &q, &sink);
    produce_with(t.kafka(&f), &f.bootstrap(), "events", vec!["e".into()]).await;
    let s = t.wait_for(&f, "listed", "is refused", |s| s["dead_lettered"] == 1);
    let message = s["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("HttpRequestDenied"), "{s}");
    assert!(hook.received().is_empty(), "nothing reached the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_source_emits_each_new_item_once_across_kill9() {
    let Some(source) = guest("http_source") else {
        return;
    };
    let mut f = start("conn-source");
    let t = Tenant::new(&f, TOKEN, "acme");
    t.create_topic(&f, "items", 3);
    // The endpoint: the first `n` items, with an ETag that changes with n.
    let hook = Webhook::start();
    let n = Arc::new(AtomicUsize::new(10));
    {
        let n = n.clone();
        hook.set(move |r| {
            let n = n.load(Ordering::SeqCst);
            let etag = format!("\"v{n}\"");
            if r.header("if-none-match") == Some(etag.as_str()) {
                return (304, vec![("etag".into(), etag)], vec![]);
            }
            let items: Vec<serde_json::Value> = (1..=n)
                .map(|i| serde_json::json!({ "id": i, "name": format!("item-{i}") }))
                .collect();
            let body = serde_json::to_vec(&items).expect("JSON");
            (200, vec![("etag".into(), etag)], body)
        });
    }
    let q = format!(
        "kind=source&topic=items&poll_ms=100&{}",
        config(&[
            ("url", &hook.url("/items")),
            ("allow", &format!("127.0.0.1:{}", hook.port)),
        ])
    );
    let created = t.create(&f, "feed", &q, &source);
    assert_eq!(created["kind"], "source");
    t.wait_for(&f, "feed", "emits 10", |s| s["records"] == 10);
    n.store(15, Ordering::SeqCst);
    t.wait_for(&f, "feed", "emits 15", |s| s["records"] == 15);
    f.kill9();
    n.store(20, Ordering::SeqCst);
    f.restart_after_kill9();
    t.wait_for(&f, "feed", "emits 20", |s| s["records"] == 20);

    let read = consume(&t, &f, "items", 3, 20);
    let mut ids: Vec<i64> = read
        .iter()
        .map(|(v, _)| {
            let item: serde_json::Value = serde_json::from_slice(v).expect("JSON item");
            item["id"].as_i64().expect("id")
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (1..=20).collect::<Vec<_>>(), "each item exactly once");
    // Between changes it asked with the ETag and was told nothing changed.
    let asked = hook.received();
    assert!(asked.iter().any(|r| r.header("if-none-match").is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_pause_resume_and_delete() {
    let Some(sink) = guest("http_sink") else {
        return;
    };
    let f = start("conn-pause");
    let t = Tenant::new(&f, TOKEN, "acme");
    t.create_topic(&f, "events", 1);
    let hook = Webhook::start();
    let q = format!(
        "kind=sink&topic=events&{}",
        config(&[
            ("url", &hook.url("/e")),
            ("allow", &format!("127.0.0.1:{}", hook.port)),
        ])
    );
    t.create(&f, "hook", &q, &sink);
    let (status, v) = t.call(&f, "POST", "/v1/connectors/hook/pause", b"");
    assert_eq!((status, v["state"].as_str()), (200, Some("paused")), "{v}");
    produce_with(t.kafka(&f), &f.bootstrap(), "events", vec!["a".into()]).await;
    let s = t.wait_for(&f, "hook", "shows its lag", |s| s["lag"] == 1);
    assert_eq!(s["state"], "paused");
    std::thread::sleep(Duration::from_millis(500));
    assert!(hook.received().is_empty(), "a paused sink delivers nothing");
    let (status, _) = t.call(&f, "POST", "/v1/connectors/hook/resume", b"");
    assert_eq!(status, 200);
    t.wait_for(&f, "hook", "delivers after resuming", |s| s["records"] == 1);

    // Bad input gets the errors a client expects.
    let (status, v) = t.call(&f, "PUT", "/v1/connectors/x?kind=pipe&topic=events", &sink);
    assert_eq!(status, 400, "{v}");
    let (status, v) = t.call(
        &f,
        "PUT",
        "/v1/connectors/x?kind=sink&topic=events&config=allow%3Dnot%20a%20host",
        &sink,
    );
    assert_eq!(status, 400, "{v}");
    let (status, v) = t.call(&f, "PUT", "/v1/connectors/x?kind=sink&topic=nope", &sink);
    assert_eq!(status, 404, "{v}");
    let (status, v) = t.call(
        &f,
        "PUT",
        "/v1/connectors/x?kind=sink&topic=events",
        b"junk",
    );
    assert_eq!(status, 400, "{v}");
    let (status, _) = t.call(&f, "POST", "/v1/connectors/ghost/pause", b"");
    assert_eq!(status, 404);

    let (status, _) = t.call(&f, "DELETE", "/v1/connectors/hook", b"");
    assert_eq!(status, 204);
    let (status, v) = t.call(&f, "GET", "/v1/connectors", b"");
    assert_eq!(status, 200);
    assert_eq!(v["connectors"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connectors_are_stopped_by_their_limits_and_others_carry_on() {
    let Some(sink) = guest("http_sink") else {
        return;
    };
    let f = Floe::start(
        temp_dir("conn-limits"),
        &[
            "--admin-token",
            TOKEN,
            "--wasm-connector-deadline-ms",
            "300",
            "--wasm-memory-mib",
            "16",
        ],
    );
    let evil = Tenant::new(&f, TOKEN, "evil");
    let good = Tenant::new(&f, TOKEN, "good");
    for t in [&evil, &good] {
        t.create_topic(&f, "events", 1);
    }
    for (name, wasm) in [
        ("spin", floe_fixtures::connector_spin()),
        ("bomb", floe_fixtures::connector_bomb()),
    ] {
        evil.create(&f, name, "kind=sink&topic=events&max_retries=1", &wasm);
    }
    let hook = Webhook::start();
    let q = format!(
        "kind=sink&topic=events&{}",
        config(&[
            ("url", &hook.url("/good")),
            ("allow", &format!("127.0.0.1:{}", hook.port)),
        ])
    );
    good.create(&f, "hook", &q, &sink);
    let values: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
    produce_with(evil.kafka(&f), &f.bootstrap(), "events", values.clone()).await;
    produce_with(good.kafka(&f), &f.bootstrap(), "events", values.clone()).await;

    for (name, kinds) in [
        ("spin", &["deadline", "fuel"][..]),
        ("bomb", &["memory"][..]),
    ] {
        let s = evil.wait_for(&f, name, "is stopped by its limit", |s| {
            s["dead_lettered"] == 20 && s["lag"] == 0
        });
        let kind = s["last_error"]["kind"].as_str().unwrap_or_default();
        assert!(kinds.contains(&kind), "{name}: {s}");
        assert!(s["fuel"].as_u64().is_some_and(|n| n > 0), "{name}: {s}");
    }
    good.wait_for(&f, "hook", "delivers beside them", |s| s["records"] == 20);
    let (unique, _) = lines(&hook.received());
    assert_eq!(unique.len(), 20);
    assert_eq!(f.log_text().matches("panicked").count(), 0);
}
