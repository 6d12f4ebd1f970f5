//! Every bad input gets the answer a Kafka client expects, the process carries
//! on, and nothing is stored. Raw protocol against the real binary.

use bytes::{BufMut, BytesMut};
use floe_e2e::raw::{produce_request, topic_name as name, Conn};
use floe_e2e::records::{batch, miscounted_batch, zstd_record};
use floe_e2e::{temp_dir, Floe};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;
use kafka_protocol::ResponseError;

const UNKNOWN_TOPIC: i16 = ResponseError::UnknownTopicOrPartition.code();

fn start(extra: &[&str]) -> Floe {
    Floe::start(temp_dir("bad-input"), extra)
}

/// The process still answers a fresh connection.
fn assert_alive(f: &mut Floe) {
    assert!(f.is_running(), "floe exited");
    let mut c = Conn::connect(&f.bootstrap());
    let v = c.call(3, &ApiVersionsRequest::default());
    assert_eq!(v.error_code, 0);
}

fn create(c: &mut Conn, topic: &str, configs: &[(&str, &str)]) -> CreatableTopicResult {
    c.try_create_topic(topic, 1, configs)
}

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;

fn produce(c: &mut Conn, topic: &str, records: bytes::Bytes) -> (i16, i64) {
    let r = c.call(9, &produce_request(topic, 0, -1, records));
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn latest(c: &mut Conn, topic: &str) -> (i16, i64) {
    let p = c.list_offset(topic, 0, -1);
    (p.error_code, p.offset)
}

fn fetch(c: &mut Conn, topic: &str, offset: i64) -> (i16, usize) {
    let (code, _, records) = c.fetch(topic, 0, offset);
    (code, records.len())
}

#[test]
fn truncated_frame_closes_only_that_connection() {
    let mut f = start(&[]);
    let mut c = Conn::connect(&f.bootstrap());
    let mut b = BytesMut::new();
    b.put_i32(100);
    b.put_slice(&[0u8; 10]);
    c.send_raw(&b).expect("send");
    drop(c); // the peer goes away mid-frame
    let mut c = Conn::connect(&f.bootstrap());
    c.send_frame(&[0, 18]).expect("send"); // a frame too short for a header
    assert!(
        c.is_closed(),
        "a frame without a header closes the connection"
    );
    assert_alive(&mut f);
}

#[test]
fn oversize_length_prefix_closes_the_connection() {
    let mut f = start(&["--max-request-bytes", "1024"]);
    let mut c = Conn::connect(&f.bootstrap());
    c.send_raw(&2048i32.to_be_bytes()).expect("send");
    assert!(c.is_closed(), "an oversize request closes its connection");
    let mut c = Conn::connect(&f.bootstrap());
    c.send_raw(&(-5i32).to_be_bytes()).expect("send");
    assert!(c.is_closed(), "a negative size closes its connection");
    assert_alive(&mut f);
    let metrics = f.http_get("/metrics").expect("metrics");
    assert!(metrics.contains("floe_bad_requests_total 2"), "{metrics}");
}

#[test]
fn unknown_api_key_and_unsupported_versions() {
    let mut f = start(&[]);
    // Unknown API key: closed, as Kafka does.
    let mut c = Conn::connect(&f.bootstrap());
    c.send_frame(&[0x03, 0xE7, 0, 0, 0, 0, 0, 1, 0xFF, 0xFF])
        .expect("send");
    assert!(c.is_closed());
    // A known API we do not serve (OffsetForLeaderEpoch): closed.
    let mut c = Conn::connect(&f.bootstrap());
    c.send_frame(&[0, 23, 0, 1, 0, 0, 0, 1, 0xFF, 0xFF])
        .expect("send");
    assert!(c.is_closed());
    // Metadata v99: closed.
    let mut c = Conn::connect(&f.bootstrap());
    c.send_frame(&[0, 3, 0, 99, 0, 0, 0, 1, 0xFF, 0xFF])
        .expect("send");
    assert!(c.is_closed());
    // ApiVersions v99: a v0 body with UNSUPPORTED_VERSION and our versions.
    let mut c = Conn::connect(&f.bootstrap());
    c.send_frame(&[0, 18, 0, 99, 0, 0, 0, 42, 0xFF, 0xFF])
        .expect("send");
    let mut resp = c.read_frame().expect("an answer");
    let header = ResponseHeader::decode(&mut resp, 0).expect("header v0");
    assert_eq!(header.correlation_id, 42);
    let body = ApiVersionsResponse::decode(&mut resp, 0).expect("body v0");
    assert_eq!(body.error_code, ResponseError::UnsupportedVersion.code());
    let produce = body
        .api_keys
        .iter()
        .find(|k| k.api_key == 0)
        .expect("Produce listed");
    assert_eq!((produce.min_version, produce.max_version), (3, 12));
    assert!(
        body.api_keys.iter().all(|k| k.api_key != 23),
        "OffsetForLeaderEpoch is not advertised"
    );
    let join = body
        .api_keys
        .iter()
        .find(|k| k.api_key == 11)
        .expect("JoinGroup listed");
    assert_eq!((join.min_version, join.max_version), (0, 7));
    assert_alive(&mut f);
}

#[test]
fn crc_mismatch_is_corrupt_message_and_nothing_is_stored() {
    let mut f = start(&[]);
    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(create(&mut c, "crc", &[]).error_code, 0);
    let mut bad = BytesMut::from(&batch(3, 10)[..]);
    let last = bad.len() - 1;
    bad[last] ^= 0xFF;
    assert_eq!(
        produce(&mut c, "crc", bad.freeze()).0,
        ResponseError::CorruptMessage.code()
    );
    let mut truncated = BytesMut::from(&batch(3, 10)[..]);
    truncated.truncate(truncated.len() - 4);
    assert_eq!(
        produce(&mut c, "crc", truncated.freeze()).0,
        ResponseError::CorruptMessage.code()
    );
    assert_eq!(latest(&mut c, "crc"), (0, 0), "nothing stored");
    assert_eq!(
        produce(&mut c, "crc", batch(3, 10)),
        (0, 0),
        "the connection still works"
    );
    assert_alive(&mut f);
}

#[test]
fn oversize_batch_is_message_too_large() {
    let mut f = start(&[]);
    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(
        create(&mut c, "small", &[("max.message.bytes", "1000")]).error_code,
        0
    );
    assert_eq!(
        produce(&mut c, "small", batch(2, 1500)).0,
        ResponseError::MessageTooLarge.code()
    );
    assert_eq!(latest(&mut c, "small"), (0, 0));
    assert_eq!(produce(&mut c, "small", batch(2, 100)).0, 0);
    assert_alive(&mut f);
}

#[test]
fn unknown_topic_is_unknown_topic_or_partition() {
    let mut f = start(&["--auto-create-topics=false"]);
    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(produce(&mut c, "nope", batch(1, 1)).0, UNKNOWN_TOPIC);
    assert_eq!(fetch(&mut c, "nope", 0).0, UNKNOWN_TOPIC);
    assert_eq!(latest(&mut c, "nope").0, UNKNOWN_TOPIC);
    let t = MetadataRequestTopic::default().with_name(Some(name("nope")));
    let md = c.call(
        12,
        &MetadataRequest::default()
            .with_topics(Some(vec![t]))
            .with_allow_auto_topic_creation(true),
    );
    assert_eq!(md.topics[0].error_code, UNKNOWN_TOPIC, "auto-create is off");
    assert_alive(&mut f);
}

#[test]
fn invalid_topic_names_never_reach_storage() {
    let mut f = start(&[]);
    let mut c = Conn::connect(&f.bootstrap());
    let long = "x".repeat(250);
    let names = ["", "..", "../x", long.as_str(), "tøpic", "a/b", "."];
    for n in names {
        let r = create(&mut c, n, &[]);
        assert_eq!(
            r.error_code,
            ResponseError::InvalidTopicException.code(),
            "create {n:?}"
        );
        let t = MetadataRequestTopic::default().with_name(Some(name(n)));
        let md = c.call(
            12,
            &MetadataRequest::default()
                .with_topics(Some(vec![t]))
                .with_allow_auto_topic_creation(true),
        );
        assert_eq!(
            md.topics[0].error_code,
            ResponseError::InvalidTopicException.code(),
            "auto-create {n:?}"
        );
    }
    let md = c.call(12, &MetadataRequest::default().with_topics(None));
    assert!(md.topics.is_empty(), "no topic was created");
    // No object path anywhere holds a user-chosen name.
    for entry in walk(&f.data_dir) {
        let p = entry.to_string_lossy().to_string();
        assert!(
            !p.contains("xxxxxxxxxx") && !p.contains("tøpic") && !p.contains("/x/"),
            "{p}"
        );
    }
    assert_alive(&mut f);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn produce_to_a_deleted_topic_and_recreate_it_empty() {
    let mut f = start(&["--auto-create-topics=false"]);
    let mut c = Conn::connect(&f.bootstrap());
    let first = create(&mut c, "gone", &[]);
    assert_eq!(produce(&mut c, "gone", batch(5, 10)), (0, 0));
    let del = DeleteTopicsRequest::default().with_topics(vec![
        DeleteTopicState::default().with_name(Some(name("gone")))
    ]);
    let r = c.call(6, &del);
    assert_eq!(r.responses[0].error_code, 0);
    assert_eq!(produce(&mut c, "gone", batch(1, 1)).0, UNKNOWN_TOPIC);
    assert_eq!(fetch(&mut c, "gone", 0).0, UNKNOWN_TOPIC);
    // Deleting again: unknown.
    assert_eq!(c.call(6, &del).responses[0].error_code, UNKNOWN_TOPIC);
    let again = create(&mut c, "gone", &[]);
    assert_eq!(again.error_code, 0);
    assert_ne!(
        again.topic_id, first.topic_id,
        "a re-created topic has a new id"
    );
    assert_eq!(latest(&mut c, "gone"), (0, 0), "and none of the old data");
    assert_eq!(fetch(&mut c, "gone", 0), (0, 0));
    // Survives a restart the same way.
    f.restart();
    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(latest(&mut c, "gone"), (0, 0));
    assert_alive(&mut f);
}

/// A compacted topic's records are decompressed to check their keys: a
/// small batch that inflates past the worker's bound (64 MiB) is refused,
/// as are a record without a key and a batch holding other than its count
/// of records, and the process carries on.
#[test]
fn a_compacted_topic_refuses_keyless_records_and_decompression_bombs() {
    let mut f = start(&[]);
    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(
        create(&mut c, "keyed", &[("cleanup.policy", "compact")]).error_code,
        0
    );
    let mut produce = |records| {
        let r: ProduceResponse = c.call(9, &produce_request("keyed", 0, -1, records));
        let p = &r.responses[0].partition_responses[0];
        (
            p.error_code,
            p.error_message.as_ref().map(|m| m.to_string()),
        )
    };
    let bomb = zstd_record(Some(b"k"), 100 << 20);
    assert!(bomb.len() < 1 << 20, "{} bytes on the wire", bomb.len());
    let (code, message) = produce(bomb);
    assert_eq!(code, ResponseError::InvalidRecord.code());
    assert!(message.is_some_and(|m| m.contains("more than")));
    let (code, message) = produce(zstd_record(None, 10));
    assert_eq!(code, ResponseError::InvalidRecord.code());
    assert!(message.is_some_and(|m| m.contains("without a key")));
    // A batch holding more records than its count says (the cleaner's map
    // bound counts by it), or fewer.
    let (code, message) = produce(miscounted_batch(3, 10, 2));
    assert_eq!(code, ResponseError::InvalidRecord.code());
    assert!(message.is_some_and(|m| m.contains("more records than the count of 2")));
    let (code, message) = produce(miscounted_batch(2, 10, 3));
    assert_eq!(code, ResponseError::InvalidRecord.code());
    assert!(message.is_some_and(|m| m.contains("2 records for a count of 3")));
    assert_eq!(produce(zstd_record(Some(b"k"), 1 << 20)).0, 0);
    assert_alive(&mut f);
}

#[test]
fn bad_acks_and_configs_are_refused() {
    let mut f = start(&[]);
    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(
        create(&mut c, "cfg", &[("cleanup.policy", "compacted")]).error_code,
        ResponseError::InvalidConfig.code()
    );
    assert_eq!(
        create(&mut c, "cfg", &[("retention.ms", "soon")]).error_code,
        ResponseError::InvalidConfig.code()
    );
    assert_eq!(
        create(&mut c, "cfg", &[("no.such.config", "1")]).error_code,
        ResponseError::InvalidConfig.code()
    );
    assert_eq!(create(&mut c, "cfg", &[]).error_code, 0);
    assert_eq!(
        create(&mut c, "cfg", &[]).error_code,
        ResponseError::TopicAlreadyExists.code()
    );
    let r = c.call(9, &produce_request("cfg", 0, 2, batch(1, 1)));
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        ResponseError::InvalidRequiredAcks.code()
    );
    assert_eq!(latest(&mut c, "cfg"), (0, 0));
    // Out-of-range fetch offsets.
    assert_eq!(
        fetch(&mut c, "cfg", 5).0,
        ResponseError::OffsetOutOfRange.code()
    );
    assert_eq!(
        fetch(&mut c, "cfg", -1).0,
        ResponseError::OffsetOutOfRange.code()
    );
    assert_alive(&mut f);
}

#[test]
fn hostile_array_length_closes_the_connection_not_the_process() {
    let mut f = start(&[]);
    // Metadata v1, client id null, then a topics array claiming 2^31-1 entries
    // and nothing else. Unpatched kafka-protocol 0.18 aborts the process here.
    let mut c = Conn::connect(&f.bootstrap());
    c.send_frame(&[0, 3, 0, 1, 0, 0, 0, 1, 0xFF, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF])
        .expect("send");
    assert!(c.is_closed());
    // The same in a flexible version: compact array length as a varint.
    let mut c = Conn::connect(&f.bootstrap());
    c.send_frame(&[
        0, 3, 0, 12, 0, 0, 0, 2, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x07,
    ])
    .expect("send");
    assert!(c.is_closed());
    assert_alive(&mut f);
}
