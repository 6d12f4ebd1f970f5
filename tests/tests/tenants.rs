//! SASL at the protocol level against the real binary with `--auth
//! required`: what a client that skips, interrupts or fails a login gets
//! (Kafka's errors, then a closed connection, never data), an over-long
//! token, an old client's v0 handshake with bare tokens, and a login that
//! sees only its own tenant's topics. Real clients (kafka-python, kcat) log
//! in in `tests/python/test_tenants.py`.

use bytes::{BufMut, Bytes, BytesMut};
use floe_e2e::raw::Conn;
use floe_e2e::{temp_dir, Floe};
use kafka_protocol::messages::{
    ApiVersionsRequest, MetadataRequest, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;

const TOKEN: &str = "raw-admin-token";

/// (key, secret) of a new key of a new tenant.
fn tenant_with_key(f: &Floe, tenant: &str) -> (String, String) {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let created = f
        .http(
            "POST",
            "/admin/v1/tenants",
            &[&auth],
            &format!(r#"{{"id": "{tenant}", "plan": "free"}}"#),
        )
        .expect("admin api");
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let key = f
        .http(
            "POST",
            &format!("/admin/v1/tenants/{tenant}/keys"),
            &[&auth],
            "",
        )
        .expect("admin api");
    assert!(key.starts_with("HTTP/1.1 201"), "{key}");
    let body = &key[key.find("\r\n\r\n").expect("a body") + 4..];
    let v: serde_json::Value = serde_json::from_str(body).expect("json");
    (
        v["key"].as_str().expect("key").to_string(),
        v["secret"].as_str().expect("secret").to_string(),
    )
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
