//! SASL at the protocol level against the real binary with `--auth
//! required`: what a client that skips, interrupts or fails a login gets
//! (Kafka's errors, then a closed connection, never data), an over-long
//! token, an old client's v0 handshake with bare tokens, and a login that
//! sees only its own tenant's topics. Real clients (kafka-python, kcat) log
//! in in `tests/python/test_tenants.py`.
//!
//! Metering: bytes in equal the record-batch bytes the log holds, exactly,
//! across a kill -9 in the middle of writing, and every window's record is
//! written once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use floe_e2e::raw::{produce_request, Conn};
use floe_e2e::records::batch;
use floe_e2e::{temp_dir, Floe};
use kafka_protocol::messages::{
    ApiVersionsRequest, MetadataRequest, ProduceResponse, ResponseHeader, SaslAuthenticateRequest,
    SaslHandshakeRequest,
};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;

const TOKEN: &str = "raw-admin-token";

/// (key, secret) of a new key of a new tenant.
fn tenant_with_key(f: &Floe, tenant: &str) -> (String, String) {
    f.tenant_with_key(TOKEN, tenant)
}

fn handshake(c: &mut Conn, mechanism: &str) -> i16 {
    let r = c.call(
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_string(mechanism.into())),
    );
    assert!(r.mechanisms.iter().any(|m| m.as_str() == "SCRAM-SHA-512"));
    r.error_code
}

fn plain(c: &mut Conn, key: &str, secret: &str) -> i16 {
    let token = Bytes::from(format!("\0{key}\0{secret}"));
    c.call(
        2,
        &SaslAuthenticateRequest::default().with_auth_bytes(token),
    )
    .error_code
}

/// A connection logged in with PLAIN as `key`.
fn login(f: &Floe, key: &str, secret: &str) -> Conn {
    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(handshake(&mut c, "PLAIN"), 0);
    assert_eq!(plain(&mut c, key, secret), 0);
    c
}

/// Sets a tenant's quota overrides through the admin API.
fn set_quota(f: &Floe, tenant: &str, quota: &str) {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let path = format!("/admin/v1/tenants/{tenant}/quota");
    let set = f.http("PUT", &path, &[&auth], quota).expect("admin api");
    assert!(set.starts_with("HTTP/1.1 200"), "{set}");
}

fn metadata(c: &mut Conn) -> Vec<String> {
    let r = c.call(12, &MetadataRequest::default().with_topics(None));
    r.topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
        .collect()
}

#[test]
fn logins_that_fail_get_kafkas_errors_and_a_closed_connection() {
    let f = Floe::start(
        temp_dir("sasl-raw"),
        &["--auth", "required", "--admin-token", TOKEN],
    );
    let (key, secret) = tenant_with_key(&f, "acme");
    let (other_key, other_secret) = tenant_with_key(&f, "globex");

    // ApiVersions may come first; anything else before a login closes.
    let mut c = Conn::connect(&f.bootstrap());
    let v = c.call(3, &ApiVersionsRequest::default());
    assert!(
        v.api_keys.iter().any(|k| k.api_key == 36),
        "SaslAuthenticate listed"
    );
    c.send(12, &MetadataRequest::default().with_topics(None));
    assert!(c.is_closed(), "metadata without a login");

    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(
        handshake(&mut c, "GSSAPI"),
        E::UnsupportedSaslMechanism.code()
    );
    assert!(c.is_closed());

    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(plain(&mut c, &key, &secret), E::IllegalSaslState.code());
    assert!(c.is_closed(), "authenticate without a handshake");

    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(handshake(&mut c, "PLAIN"), 0);
    assert_eq!(
        plain(&mut c, &key, "wrong"),
        E::SaslAuthenticationFailed.code()
    );
    assert!(c.is_closed());

    // Another tenant's secret does not open this key.
    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(handshake(&mut c, "PLAIN"), 0);
    assert_eq!(
        plain(&mut c, &key, &other_secret),
        E::SaslAuthenticationFailed.code()
    );
    assert!(c.is_closed());

    // A request in the middle of an exchange closes it.
    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(handshake(&mut c, "SCRAM-SHA-256"), 0);
    c.send(12, &MetadataRequest::default().with_topics(None));
    assert!(c.is_closed(), "metadata mid-exchange");

    // Before a login, a frame beyond 512 KiB closes the connection unread.
    let mut c = Conn::connect(&f.bootstrap());
    let mut big = BytesMut::new();
    big.put_i32(600 * 1024);
    c.send_raw(&big).expect("send");
    assert!(c.is_closed(), "an over-long frame before login");

    // A login sees its own tenant's topics only.
    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(handshake(&mut c, "PLAIN"), 0);
    assert_eq!(plain(&mut c, &key, &secret), 0);
    c.create_topic("mine", 1);
    assert_eq!(metadata(&mut c), vec!["mine".to_string()]);
    assert_eq!(
        handshake(&mut c, "PLAIN"),
        E::IllegalSaslState.code(),
        "no second login"
    );
    assert!(c.is_closed());

    // An old client: SaslHandshake v0, then bare size-prefixed tokens.
    let mut c = Conn::connect(&f.bootstrap());
    let r = c.call(
        0,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    );
    assert_eq!(r.error_code, 0);
    c.send_frame(format!("\0{other_key}\0{other_secret}").as_bytes())
        .expect("send token");
    assert_eq!(c.read_frame().expect("an empty token back").len(), 0);
    assert!(metadata(&mut c).is_empty(), "globex has no topics");
    let mut f = f;
    assert!(f.is_running(), "the server carried on");
}

/// The admin API's JSON answer to a GET.
fn admin_get(f: &Floe, path: &str) -> serde_json::Value {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let r = f.http("GET", path, &[&auth], "").expect("admin api");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    serde_json::from_str(&r[r.find("\r\n\r\n").expect("a body") + 4..]).expect("json")
}

/// Record-batch bytes a partition holds, read from offset 0.
fn stored_bytes(c: &mut Conn, topic: &str, partition: i32) -> u64 {
    let end = c.list_offset(topic, partition, -1).offset;
    let (mut at, mut total) = (0i64, 0u64);
    while at < end {
        let (_, _, b) = c.fetch(topic, partition, at);
        let mut pos = 0;
        while pos + 61 <= b.len() {
            let len = 12 + i32::from_be_bytes(b[pos + 8..pos + 12].try_into().expect("4")) as usize;
            let base = i64::from_be_bytes(b[pos..pos + 8].try_into().expect("8"));
            let last_delta = i32::from_be_bytes(b[pos + 23..pos + 27].try_into().expect("4"));
            total += len as u64;
            at = base + last_delta as i64 + 1;
            pos += len;
        }
    }
    total
}

#[test]
fn usage_counts_exactly_the_bytes_stored_across_a_kill_9() {
    let dir = temp_dir("usage");
    let args = [
        "--admin-token",
        TOKEN,
        "--usage-window-ms",
        "1000",
        "--usage-every-ms",
        "100",
    ];
    let mut f = Floe::start(dir.clone(), &args);
    let mut c = Conn::connect(&f.bootstrap());
    c.create_topic("metered", 2);
    // Producers write until the process dies under them.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|partition| {
            let (bootstrap, acked, stop) = (f.bootstrap(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Conn::connect(&bootstrap);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let records = batch(1 + i % 7, 100 + 37 * (i % 11));
                    let len = records.len() as u64;
                    let frame = c.encode(9, &produce_request("metered", partition, -1, records));
                    if c.send_frame(&frame).is_err() {
                        return;
                    }
                    let Some(mut frame) = c.read_frame() else {
                        return;
                    };
                    ResponseHeader::decode(&mut frame, 1).expect("header");
                    let r = ProduceResponse::decode(&mut frame, 9).expect("produce response");
                    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
                    acked.fetch_add(len, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    f.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    let acked_before = acked.load(Ordering::Relaxed);
    assert!(
        acked_before > 0,
        "something was acknowledged before the kill"
    );

    f.restart_after_kill9();
    let mut c = Conn::connect(&f.bootstrap());
    let mut after = 0;
    for i in 0..20 {
        let records = batch(3, 200 + i);
        after += records.len() as u64;
        let r = c.call(9, &produce_request("metered", (i % 2) as i32, -1, records));
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    let stored = stored_bytes(&mut c, "metered", 0) + stored_bytes(&mut c, "metered", 1);
    assert!(
        stored >= acked_before + after,
        "nothing acknowledged is lost"
    );
    // Bytes in count the log at once (they are durable with the batches)...
    let usage = admin_get(&f, "/admin/v1/tenants/default/usage?from=0");
    assert_eq!(usage["total"]["bytes_in"], stored, "{usage}");
    // ... and once the windows have closed, every one has its record,
    // written once, with the same sum.
    std::thread::sleep(Duration::from_millis(2500));
    let usage = admin_get(&f, "/admin/v1/tenants/default/usage?from=0");
    let windows = usage["windows"].as_array().expect("windows");
    let finals: Vec<_> = windows.iter().filter(|w| w["final"] == true).collect();
    assert!(finals.len() >= 2, "{usage}");
    // The current window, and the last one if its tick has not come yet.
    assert!(windows.iter().filter(|w| w["final"] == false).count() <= 2);
    assert_eq!(usage["total"]["bytes_in"], stored, "{usage}");
    assert!(usage["total"]["requests"].as_u64() > Some(20), "{usage}");
    assert!(usage["total"]["partition_hours"].as_f64() > Some(0.0));
    assert!(usage["total"]["stored_byte_hours"].as_f64() > Some(0.0));
    let mut on_disk = 0;
    for w in std::fs::read_dir(dir.join("tenants/default/usage")).expect("records") {
        let w = w.expect("entry").path();
        let names: Vec<_> = std::fs::read_dir(&w).expect("window").collect();
        assert_eq!(names.len(), 1, "one record per window and shard in {w:?}");
        let rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(w.join("0")).expect("record")).expect("json");
        let shown = finals
            .iter()
            .find(|f| f["start_ms"] == rec["start_ms"])
            .unwrap_or_else(|| panic!("record {rec} is a final window"));
        assert_eq!(shown["bytes_in"], rec["bytes_in"]);
        on_disk += 1;
    }
    // At most the newest closed window may still be on its way to disk.
    assert!(on_disk + 1 >= finals.len(), "{on_disk} records, {usage}");
    // The Prometheus series of this process (restarted) count what it saw.
    let metrics = f.http_get("/metrics").expect("metrics");
    assert!(
        metrics.contains(&format!(
            "floe_tenant_bytes_in_total{{tenant=\"default\"}} {after}"
        )),
        "{metrics}"
    );
    // Bad ranges get 400, another tenant's usage is its own.
    let auth = format!("Authorization: Bearer {TOKEN}");
    for bad in ["?from=x", "?from=5&to=1", "?until=3"] {
        let r = f
            .http(
                "GET",
                &format!("/admin/v1/tenants/default/usage{bad}"),
                &[&auth],
                "",
            )
            .expect("admin api");
        assert!(r.starts_with("HTTP/1.1 400"), "{bad}: {r}");
    }
    let other = admin_get(&f, "/admin/v1/tenants/nobody/usage?from=0");
    assert_eq!(other["total"]["bytes_in"], 0);
}

/// A revocation (of any key) arrives while a logged-in connection is in
/// the middle of reading a frame: the frame is read on, not lost.
#[test]
fn a_revocation_does_not_cut_a_frame_in_half() {
    let f = Floe::start(
        temp_dir("sasl-midframe"),
        &["--auth", "required", "--admin-token", TOKEN],
    );
    let (key, secret) = tenant_with_key(&f, "acme");
    let (other, _) = tenant_with_key(&f, "globex");
    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(handshake(&mut c, "PLAIN"), 0);
    assert_eq!(plain(&mut c, &key, &secret), 0);
    c.create_topic("halves", 1);
    let body = c.encode(9, &produce_request("halves", 0, -1, batch(5, 100)));
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.put_slice(&body);
    let (first, rest) = frame.split_at(frame.len() / 2);
    c.send_raw(first).expect("first half");
    std::thread::sleep(Duration::from_millis(200));
    let auth = format!("Authorization: Bearer {TOKEN}");
    let revoked = f
        .http(
            "DELETE",
            &format!("/admin/v1/tenants/globex/keys/{other}"),
            &[&auth],
            "",
        )
        .expect("admin api");
    assert!(revoked.starts_with("HTTP/1.1 204"), "{revoked}");
    std::thread::sleep(Duration::from_millis(200));
    c.send_raw(rest).expect("second half");
    let r = c.recv::<kafka_protocol::messages::ProduceRequest>(9);
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
}

/// A request-rate quota throttles every kind of answer (KIP-219), not only
/// Produce and Fetch: Metadata answers beyond the rate carry the throttle.
#[test]
fn a_request_quota_throttles_any_answer() {
    let f = Floe::start(
        temp_dir("sasl-rate"),
        &["--auth", "required", "--admin-token", TOKEN],
    );
    let (key, secret) = tenant_with_key(&f, "acme");
    set_quota(&f, "acme", r#"{"requests_per_sec": 10}"#);
    let mut c = login(&f, &key, &secret);
    let throttles: Vec<i32> = (0..6)
        .map(|_| {
            c.call(12, &MetadataRequest::default().with_topics(None))
                .throttle_time_ms
        })
        .collect();
    // 10 per second with 100 ms of tolerance: the second request is
    // already ahead of the rate.
    assert_eq!(throttles[0], 0, "{throttles:?}");
    assert!(throttles[5] > 0, "{throttles:?}");
}

/// Deleting a tenant closes its connections, deletes its data but not its
/// usage records (its last window is closed and written first), and its id
/// is never given to a new tenant, who could otherwise meet the old data.
#[test]
fn a_deleted_tenants_data_goes_and_its_id_is_not_reused() {
    let dir = temp_dir("tenant-delete");
    let f = Floe::start(dir.clone(), &["--auth", "required", "--admin-token", TOKEN]);
    let (key, secret) = tenant_with_key(&f, "acme");
    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(handshake(&mut c, "PLAIN"), 0);
    assert_eq!(plain(&mut c, &key, &secret), 0);
    c.create_topic("doomed", 1);
    let records = batch(10, 100);
    let sent = records.len() as u64;
    let r = c.call(9, &produce_request("doomed", 0, -1, records));
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    let files = |p: &std::path::Path| -> usize {
        fn walk(p: &std::path::Path) -> usize {
            std::fs::read_dir(p).map_or(0, |d| {
                d.map(|e| e.expect("entry").path())
                    .map(|p| if p.is_dir() { walk(&p) } else { 1 })
                    .sum()
            })
        }
        walk(p)
    };
    assert!(files(&dir.join("tenants/acme/shards")) > 0);

    let auth = format!("Authorization: Bearer {TOKEN}");
    let deleted = f
        .http("DELETE", "/admin/v1/tenants/acme", &[&auth], "")
        .expect("admin api");
    assert!(deleted.starts_with("HTTP/1.1 204"), "{deleted}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(c.is_closed(), "the tenant's connection is closed");
    assert_eq!(
        files(&dir.join("tenants/acme/shards")),
        0,
        "its data is gone"
    );
    // The usage is billed: the record of the last window holds the bytes.
    let usage = admin_get(&f, "/admin/v1/tenants/acme/usage?from=0");
    assert_eq!(usage["total"]["bytes_in"], sent, "{usage}");
    assert!(usage["windows"]
        .as_array()
        .expect("windows")
        .iter()
        .all(|w| w["final"] == true));
    assert!(files(&dir.join("tenants/acme/usage")) > 0);
    // The id stays retired, across a restart too.
    let again = f
        .http("POST", "/admin/v1/tenants", &[&auth], r#"{"id": "acme"}"#)
        .expect("admin api");
    assert!(again.starts_with("HTTP/1.1 409"), "{again}");
    let mut f = f;
    f.restart();
    let again = f
        .http("POST", "/admin/v1/tenants", &[&auth], r#"{"id": "acme"}"#)
        .expect("admin api");
    assert!(
        again.starts_with("HTTP/1.1 409") && again.contains("retired"),
        "{again}"
    );
}

/// A client that ignores throttle_time_ms and keeps sending is delayed,
/// not served: its connection is not read while its tenant is over quota,
/// so 3 MB sent at once at 1 MB/s are answered over about 3 s. (A lower
/// bound only: the server must hold the client back.)
#[test]
fn a_client_ignoring_the_throttle_is_delayed() {
    let f = Floe::start(
        temp_dir("sasl-ignore"),
        &["--auth", "required", "--admin-token", TOKEN],
    );
    let (key, secret) = tenant_with_key(&f, "acme");
    set_quota(&f, "acme", r#"{"produce_bytes_per_sec": 1000000}"#);
    let mut c = login(&f, &key, &secret);
    c.create_topic("greedy", 1);
    let start = std::time::Instant::now();
    let n = 30;
    for _ in 0..n {
        // About 100 KB each, all sent before any answer is read.
        c.send(9, &produce_request("greedy", 0, -1, batch(100, 1000)));
    }
    let mut throttled = 0;
    for _ in 0..n {
        let r = c.recv::<kafka_protocol::messages::ProduceRequest>(9);
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        throttled += (r.throttle_time_ms > 0) as usize;
    }
    let took = start.elapsed();
    assert!(throttled > 0, "the answers carry the throttle");
    assert!(
        took >= Duration::from_secs(2),
        "3 MB at 1 MB/s answered in {took:?}"
    );
}

/// A tenant's logged-in connections to a gateway are bounded by its
/// `connections` quota, so one tenant cannot take every connection the
/// gateway has: one more login fails with SASL_AUTHENTICATION_FAILED, saying
/// why, and is closed, whatever the mechanism's framing; the tenant's open
/// connections and other tenants carry on; a closed connection's place goes
/// to the next login. kafka-python over SCRAM: `tests/python/test_tenants.py`.
#[test]
fn a_tenants_connections_are_bounded_by_its_quota() {
    let f = Floe::start(
        temp_dir("sasl-conns"),
        &["--auth", "required", "--admin-token", TOKEN],
    );
    let (key, secret) = tenant_with_key(&f, "acme");
    let (other_key, other_secret) = tenant_with_key(&f, "globex");
    set_quota(&f, "acme", r#"{"connections": 2}"#);
    let mut a = login(&f, &key, &secret);
    let b = login(&f, &key, &secret);

    let refused = |c: &mut Conn| {
        assert_eq!(handshake(c, "PLAIN"), 0);
        let token = Bytes::from(format!("\0{key}\0{secret}"));
        let r = c.call(
            2,
            &SaslAuthenticateRequest::default().with_auth_bytes(token),
        );
        assert_eq!(r.error_code, E::SaslAuthenticationFailed.code());
        let why = r.error_message.map(|m| m.to_string()).unwrap_or_default();
        assert!(why.contains("Connection quota reached"), "{why}");
        assert!(c.is_closed(), "a refused login's connection is closed");
    };
    refused(&mut Conn::connect(&f.bootstrap()));
    // An old client's bare token after a v0 handshake: closed unanswered.
    let mut c = Conn::connect(&f.bootstrap());
    let r = c.call(
        0,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    );
    assert_eq!(r.error_code, 0);
    c.send_frame(format!("\0{key}\0{secret}").as_bytes())
        .expect("send token");
    assert!(c.read_frame().is_none(), "no token back over the quota");

    // The open ones and another tenant carry on.
    a.create_topic("mine", 1);
    assert_eq!(metadata(&mut a), vec!["mine".to_string()]);
    let mut g = login(&f, &other_key, &other_secret);
    assert!(metadata(&mut g).is_empty());

    // Closing one gives its place back once the gateway sees the close;
    // the refused logins took none.
    drop(b);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let c = loop {
        let mut c = Conn::connect(&f.bootstrap());
        assert_eq!(handshake(&mut c, "PLAIN"), 0);
        if plain(&mut c, &key, &secret) == 0 {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no place after a close"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    refused(&mut Conn::connect(&f.bootstrap()));

    // A connection that stops sending still counts until its last answer
    // is written: a fetch long-polling 2 s, then the client's end closed.
    let mut c = c;
    let fetch = kafka_protocol::messages::FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(2000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            kafka_protocol::messages::fetch_request::FetchTopic::default()
                .with_topic(floe_e2e::raw::topic_name("mine"))
                .with_partitions(vec![
                    kafka_protocol::messages::fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    c.send(12, &fetch);
    c.shut_write();
    std::thread::sleep(Duration::from_millis(300));
    refused(&mut Conn::connect(&f.bootstrap()));
    let r = c.recv::<kafka_protocol::messages::FetchRequest>(12);
    assert_eq!(r.error_code, 0);

    // A raised quota lets the next one in.
    set_quota(&f, "acme", r#"{"connections": 3}"#);
    let _d = login(&f, &key, &secret);
    drop(c);
    let mut f = f;
    assert!(f.is_running(), "the server carried on");
}

/// Kafka's connections.max.idle.ms: a connection with nothing read, written
/// or in progress that long is closed, and a request in progress (a fetch
/// long-polling past it) keeps it open. With `--auth required`, a connection
/// that has not logged in within `--login-timeout-ms` is closed however
/// busy, so connections nobody can use do not hold the gateway's
/// `--max-connections`; one that logged in is not.
#[test]
fn idle_connections_and_ones_that_never_log_in_are_closed() {
    let f = Floe::start(
        temp_dir("conn-idle"),
        &[
            "--auth",
            "required",
            "--admin-token",
            TOKEN,
            "--connections-max-idle-ms",
            "2000",
            "--login-timeout-ms",
            "300",
        ],
    );
    let (key, secret) = tenant_with_key(&f, "acme");
    let mut c = login(&f, &key, &secret);
    c.create_topic("t", 1);

    // Busy without a login: ApiVersions every 100 ms, each answered, until
    // the login deadline closes it (never the idle timeout: it is active).
    let mut anonymous = Conn::connect(&f.bootstrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        anonymous.send(3, &ApiVersionsRequest::default());
        if anonymous.read_frame().is_none() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never closed");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The logged-in one is past the login deadline and still served.
    assert_eq!(metadata(&mut c), vec!["t".to_string()]);
    // A fetch waiting 3 s for records, longer than the idle timeout.
    let p = kafka_protocol::messages::fetch_request::FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(0)
        .with_partition_max_bytes(1 << 20);
    let t = kafka_protocol::messages::fetch_request::FetchTopic::default()
        .with_topic(floe_e2e::raw::topic_name("t"))
        .with_partitions(vec![p]);
    let req = kafka_protocol::messages::FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(3000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![t]);
    let r = c.call(12, &req);
    assert_eq!(r.responses[0].partitions[0].error_code, 0);
    // Still open after it (a closing reader would have written the answer
    // and then closed).
    assert_eq!(metadata(&mut c), vec!["t".to_string()]);
    // Then idle: closed.
    assert!(c.closes_within(Duration::from_secs(10)), "idle, still open");
    let mut f = f;
    assert!(f.is_running(), "the server carried on");
}

/// Idleness as Kafka counts it: bytes read or written. A client that stops
/// reading its answers, or stops sending in the middle of a frame, is idle
/// and closed, and its place among its tenant's connections goes to the
/// next login; one that sends a frame slowly, a byte at a time, is not.
#[test]
fn a_client_stalled_mid_frame_or_not_reading_is_idle() {
    let f = Floe::start(
        temp_dir("conn-stalled"),
        &[
            "--auth",
            "required",
            "--admin-token",
            TOKEN,
            "--connections-max-idle-ms",
            "1000",
        ],
    );
    let (key, secret) = tenant_with_key(&f, "acme");
    set_quota(&f, "acme", r#"{"connections": 1}"#);
    // The next login, once the one before it is closed.
    let next_login = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let mut c = Conn::connect(&f.bootstrap());
            assert_eq!(handshake(&mut c, "PLAIN"), 0);
            if plain(&mut c, &key, &secret) == 0 {
                return c;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the stalled connection still holds its place"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // 4.2 MB stored, then fetched twelve times over, never read: far more
    // than the two sockets' buffers hold, so the server's writes stall.
    let mut a = login(&f, &key, &secret);
    a.create_topic("t", 1);
    for _ in 0..6 {
        let r = a.call(9, &produce_request("t", 0, -1, batch(7, 100_000)));
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    let p = kafka_protocol::messages::fetch_request::FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(0)
        .with_partition_max_bytes(8 << 20);
    let fetch = kafka_protocol::messages::FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_bytes(8 << 20)
        .with_topics(vec![
            kafka_protocol::messages::fetch_request::FetchTopic::default()
                .with_topic(floe_e2e::raw::topic_name("t"))
                .with_partitions(vec![p]),
        ]);
    for _ in 0..12 {
        a.send(12, &fetch);
    }
    let mut b = next_login();

    // Half a frame, then nothing.
    let mut frame = BytesMut::new();
    frame.put_i32(500_000);
    frame.put_slice(&[0u8; 100]);
    b.send_raw(&frame).expect("half a frame");
    let mut c = next_login();

    // A frame a byte every 200 ms, 2.4 s in all: read, and answered.
    let body = c.encode(3, &ApiVersionsRequest::default());
    let mut slow = BytesMut::new();
    slow.put_i32(body.len() as i32);
    slow.put_slice(&body);
    let step = Duration::from_millis(2400) / slow.len() as u32;
    for byte in slow.iter() {
        c.send_raw(&[*byte]).expect("a byte");
        std::thread::sleep(step);
    }
    let r = c.recv::<ApiVersionsRequest>(3);
    assert_eq!(r.error_code, 0);
    drop((a, b));
    let mut f = f;
    assert!(f.is_running(), "the server carried on");
}

/// A tenant's logged-in connections share one bound on the request bytes
/// they hold (`--tenant-max-pipelined-bytes`), so one tenant cannot fill the
/// gateway's memory through many connections: past it, another of its
/// connections is not read until room frees, while another tenant's are
/// read at once. A frame half sent holds its room from its length on.
#[test]
fn a_tenants_connections_share_a_bound_on_request_bytes() {
    let f = Floe::start(
        temp_dir("tenant-bytes"),
        &[
            "--auth",
            "required",
            "--admin-token",
            TOKEN,
            "--tenant-max-pipelined-bytes",
            "1000000",
        ],
    );
    let (key, secret) = tenant_with_key(&f, "acme");
    let (other_key, other_secret) = tenant_with_key(&f, "globex");
    let (mut a1, mut a2) = (login(&f, &key, &secret), login(&f, &key, &secret));
    let mut g = login(&f, &other_key, &other_secret);
    a1.create_topic("t", 1);
    g.create_topic("t", 1);
    // 700 KB each: two of acme's do not fit in 1 MB together.
    let produce = |c: &mut Conn| {
        let body = c.encode(9, &produce_request("t", 0, -1, batch(7, 100_000)));
        let mut frame = BytesMut::new();
        frame.put_i32(body.len() as i32);
        frame.put_slice(&body);
        frame
    };
    let first = produce(&mut a1);
    let (head, rest) = first.split_at(first.len() / 2);
    a1.send_raw(head).expect("half a frame");
    std::thread::sleep(Duration::from_millis(200));
    let second = produce(&mut a2);
    a2.send_raw(&second).expect("a whole frame");
    assert!(
        !a2.answers_within(Duration::from_secs(1)),
        "acme's second connection was read past its bound"
    );
    // Another tenant is not held back by acme's bound.
    let other = produce(&mut g);
    g.send_raw(&other).expect("a whole frame");
    let r = g.recv::<kafka_protocol::messages::ProduceRequest>(9);
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    // The rest of the first frame: both of acme's are stored, in turn.
    a1.send_raw(rest).expect("the rest");
    for c in [&mut a1, &mut a2] {
        let r = c.recv::<kafka_protocol::messages::ProduceRequest>(9);
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    let mut f = f;
    assert!(f.is_running(), "the server carried on");
}
